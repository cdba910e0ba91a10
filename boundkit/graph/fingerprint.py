"""A fingerprint of everything a captured graph depends on.

A graph captured from a model is reused only while the model is still the model it was
captured from. Tensor version counters are not enough (``p.data.copy_(w)`` writes through a
view with a version counter of its own), so the fingerprint hashes:

* every parameter and buffer: name, dtype, shape, device and the bytes of its values;
* every submodule: its path, its class (module and qualified name), its plain attributes
  (``eps``, ``k``, ``alpha``, ``inplace``, ``training``, ...), and whether it carries hooks
  or an instance-level ``forward``;
* the global forward hooks.

Hashing costs one pass over the weights (about a millisecond per million parameters),
far below one forward pass over a batch.
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch
import torch.nn as nn

_PLAIN = (bool, int, float, str, type(None))


def _plain(v: Any) -> Any:
    """A hashable, printable form of a plain attribute value, or ``None`` to skip it."""
    if isinstance(v, _PLAIN):
        return v
    if isinstance(v, (tuple, list)) and all(isinstance(e, _PLAIN) for e in v):
        return tuple(v)
    if isinstance(v, torch.dtype | torch.device):
        return str(v)
    return None


def _tensor_bytes(t: torch.Tensor) -> bytes:
    flat = t.detach().reshape(-1).contiguous()
    if flat.device.type == "meta":
        return b"meta"
    return flat.cpu().view(torch.uint8).numpy().tobytes()


def model_fingerprint(model: nn.Module) -> str:
    """A hex digest that changes whenever anything a captured graph depends on changes."""
    from torch.nn.modules import module as module_mod

    h = hashlib.blake2b(digest_size=20)
    for kind in ("_global_forward_hooks", "_global_forward_pre_hooks"):
        h.update(f"{kind}:{sorted(map(id, getattr(module_mod, kind, {}).values()))}".encode())
    for name, m in model.named_modules(remove_duplicate=False):
        t = type(m)
        attrs = sorted(
            (k, _plain(v)) for k, v in vars(m).items()
            if not k.startswith("_") and _plain(v) is not None
        )
        hooks = (
            tuple(id(f) for f in m._forward_hooks.values()),
            tuple(id(f) for f in m._forward_pre_hooks.values()),
            id(m.__dict__["forward"]) if "forward" in m.__dict__ else None,
        )
        h.update(f"{name}|{t.__module__}.{t.__qualname__}|{id(m)}|{attrs}|{hooks}\n".encode())
    for kind, items in (
        ("param", model.named_parameters(remove_duplicate=False)),
        ("buffer", model.named_buffers(remove_duplicate=False)),
    ):
        for name, t in items:
            h.update(f"{kind}:{name}:{t.dtype}:{tuple(t.shape)}:{t.device}:".encode())
            h.update(_tensor_bytes(t))
    return h.hexdigest()
