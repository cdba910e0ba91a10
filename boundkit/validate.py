"""Argument checks shared by every public entry point (one function per concept).

Each public function (``certify``, ``attack``, ``crosscheck``, ``exact_radius``, the loaders,
the CLI) calls these with one line each, so that a bad argument gets the same one-line
error naming the bad thing wherever it is passed, never a traceback from deep inside torch
and never a meaningless number (``inf`` radii from a NaN weight, an attack with budget 0).

* :func:`check_device`  -- a torch device that exists on this machine (``cuda`` without CUDA
  is a :class:`~boundkit.errors.DeviceError`, not an ``AssertionError``).
* :func:`check_model`   -- an ``nn.Module`` in eval mode with finite, real (not meta)
  parameters and buffers.
* :func:`check_batch`   -- a floating, finite, non-empty batch ``[N, ...]`` (optionally inside
  a box, optionally of a given per-sample shape).
* :func:`check_logits`  -- what the model returned is logits ``[N, C]`` with ``C >= 2``.
* :func:`check_positive`, :func:`check_int` -- numbers: positive, finite, below a ceiling.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import torch
from torch import nn

from boundkit.errors import (
    BadArgumentError,
    DeviceError,
    InputShapeError,
    ModelError,
    NonFiniteParameterError,
    TrainingModeError,
)

__all__ = [
    "check_batch",
    "check_device",
    "check_int",
    "check_logits",
    "check_model",
    "check_positive",
    "check_box",
    "check_call",
    "check_runs",
]

#: the largest count (samples, steps, budget...) accepted: above it a typo is more likely
#: than an intent, and the run would not finish.
MAX_COUNT = 10**9


def check_device(device: Any) -> torch.device | None:
    """A usable ``torch.device`` (or None): refuse names torch does not know, accelerators
    this machine does not have, indices past the last GPU, and the data-less ``meta``."""
    if device is None:
        return None
    if not isinstance(device, (str, torch.device)):
        raise DeviceError(f"device must be a string such as 'cpu' or 'cuda', or a torch.device; "
                          f"got {type(device).__name__}")
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise DeviceError(f"device {str(device)!r} is not a torch device ({first})") from None
    if dev.type == "cpu":
        return dev
    if dev.type == "meta":
        raise DeviceError("device 'meta' holds no data: nothing can be computed there; "
                          "use 'cpu' or 'cuda'")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"device {str(device)!r} requested but CUDA is not available on "
                              f"this machine (torch {torch.__version__}); use device='cpu'")
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise DeviceError(f"device {str(device)!r} requested but this machine has {count} "
                              f"CUDA device(s) (cuda:0..cuda:{count - 1})")
        return dev
    if dev.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise DeviceError(f"device {str(device)!r} requested but MPS is not available on "
                              "this machine; use device='cpu'")
        return dev
    mod = getattr(torch, dev.type, None)
    avail = getattr(mod, "is_available", None)
    if callable(avail) and not avail():
        raise DeviceError(f"device {str(device)!r} requested but it is not available on this "
                          "machine; use device='cpu'")
    return dev


def check_model(model: Any, *, what: str = "model", finite: bool = True) -> nn.Module:
    """An ``nn.Module`` in eval mode whose parameters and buffers are real and finite.

    Raises :class:`~boundkit.errors.ModelError` (not a module, meta tensors),
    :class:`~boundkit.errors.TrainingModeError` or
    :class:`~boundkit.errors.NonFiniteParameterError` naming the tensor.
    """
    if not isinstance(model, nn.Module):
        kind = "a TorchScript function" if isinstance(model, torch.jit.ScriptFunction) else (
            type(model).__name__)
        raise ModelError(f"{what} must be a torch.nn.Module, got {kind}")
    training = [name or "<root>" for name, m in model.named_modules() if m.training]
    if training:
        more = "..." if len(training) > 5 else ""
        raise TrainingModeError(
            f"{what} is in training mode (submodules {training[:5]}{more}); call "
            f"{what}.eval() first: boundkit never changes the model's mode"
        )
    tensors = list(model.named_parameters()) + list(model.named_buffers())
    for name, t in tensors:
        if t.is_meta:
            raise ModelError(f"{what} tensor {name!r} is on the 'meta' device (it holds no "
                             "values); load real weights first")
    if finite:
        for name, t in tensors:
            if (t.is_floating_point() or t.is_complex()) and t.numel():
                bad = ~torch.isfinite(t)
                if bool(bad.any()):
                    n_nan = int(torch.isnan(t).sum())
                    raise NonFiniteParameterError(
                        f"{what} tensor {name!r} holds {int(bad.sum())} non-finite value(s) "
                        f"({n_nan} NaN, {int(bad.sum()) - n_nan} inf)"
                    )
    return model


def check_box(box: Any) -> tuple[float, float] | None:
    """``None`` or ``(lo, hi)`` with finite ``lo < hi``."""
    if box is None:
        return None
    if isinstance(box, (str, bytes)) or not hasattr(box, "__len__") or len(box) != 2:
        raise BadArgumentError(f"box must be (lo, hi) or None, got {box!r}")
    try:
        lo, hi = (float(v) for v in box)
    except (TypeError, ValueError):
        raise BadArgumentError(f"box must be (lo, hi) or None, got {box!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise BadArgumentError(f"box must satisfy finite lo < hi, got {box!r}")
    return lo, hi


def check_batch(
    x: Any,
    *,
    name: str = "x",
    shape: tuple[int, ...] | None = None,
    box: tuple[float, float] | None = None,
    allow_empty: bool = False,
) -> torch.Tensor:
    """A floating, finite batch ``[N, ...]`` (``N >= 1`` unless ``allow_empty``).

    ``shape`` is the per-sample shape the model expects; ``box`` the ``(lo, hi)`` every
    value must lie in. Raises :class:`~boundkit.errors.InputShapeError` naming the problem.
    """
    if not isinstance(x, torch.Tensor):
        raise InputShapeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.is_meta:
        raise InputShapeError(f"{name} is on the 'meta' device (it holds no values)")
    if x.is_complex() or not x.is_floating_point():
        raise InputShapeError(f"{name} must be a real floating-point tensor, got dtype {x.dtype}")
    if x.dim() < 2:
        raise InputShapeError(
            f"{name} must be a batch [N, ...] with at least 2 dims, got shape {tuple(x.shape)}"
        )
    if x.shape[0] == 0 and not allow_empty:
        raise InputShapeError(f"{name} is an empty batch (shape {tuple(x.shape)})")
    if x.shape[0] and any(s == 0 for s in x.shape[1:]):
        raise InputShapeError(f"{name} has samples of size 0 (shape {tuple(x.shape)})")
    if shape is not None and tuple(x.shape[1:]) != tuple(shape):
        raise InputShapeError(
            f"{name} has shape {tuple(x.shape)}, the model expects [N, "
            f"{', '.join(map(str, shape))}]"
        )
    x_ = x.detach()
    if x.numel():
        bad = ~torch.isfinite(x_)
        if bool(bad.any()):
            raise InputShapeError(f"{name} contains {int(bad.sum())} NaN or infinite value(s)")
    if box is not None and x.numel():
        lo, hi = box
        xmin, xmax = float(x_.min()), float(x_.max())
        if xmin < lo or xmax > hi:
            raise InputShapeError(
                f"{name} has values in [{xmin:.4g}, {xmax:.4g}], outside the box {tuple(box)}; "
                "scale the data, or pass box=None (or the right box)"
            )
    return x


def check_logits(out: Any, n: int, *, what: str = "model") -> torch.Tensor:
    """The output of the model on a batch of ``n``: floating logits ``[n, C]``, ``C >= 2``."""
    if isinstance(out, (tuple, list)):
        raise InputShapeError(
            f"{what} returns a {type(out).__name__} of {len(out)} items, not a logits tensor "
            "[N, C]; wrap it so that forward returns the logits only"
        )
    if isinstance(out, dict):
        raise InputShapeError(f"{what} returns a dict (keys {sorted(map(str, out))[:5]}), not a "
                              "logits tensor [N, C]; wrap it so that forward returns the logits")
    if not isinstance(out, torch.Tensor):
        raise InputShapeError(f"{what} returns a {type(out).__name__}, not a logits tensor [N, C]")
    if out.dim() != 2 or out.shape[0] != n:
        raise InputShapeError(
            f"{what} output for a batch of {n} has shape {tuple(out.shape)}; expected logits "
            f"[{n}, C]"
        )
    if out.shape[1] < 2:
        raise InputShapeError(
            f"{what} returns {out.shape[1]} logit(s) per sample; a classifier needs >= 2 "
            "classes (for a binary model with one output, return [-z, z])"
        )
    if not out.is_floating_point():
        raise InputShapeError(f"{what} returns logits of dtype {out.dtype}, not floating point")
    return out


def check_positive(
    name: str,
    value: Any,
    *,
    allow_zero: bool = False,
    allow_none: bool = False,
    maximum: float | None = None,
) -> float | None:
    """A finite real number ``> 0`` (``>= 0`` with ``allow_zero``), below ``maximum``."""
    if value is None:
        if allow_none:
            return None
        raise BadArgumentError(f"{name} must be a number, got None")
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise BadArgumentError(f"{name} must be a number, got {type(value).__name__}")
    v = float(value)
    if not math.isfinite(v):
        raise BadArgumentError(f"{name} must be finite, got {value}")
    if v < 0 or (v == 0 and not allow_zero):
        raise BadArgumentError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value}")
    if maximum is not None and v > maximum:
        raise BadArgumentError(f"{name} must be at most {maximum:g}, got {value}")
    return v


def check_int(
    name: str,
    value: Any,
    *,
    minimum: int = 1,
    maximum: int = MAX_COUNT,
    allow_none: bool = False,
) -> int | None:
    """An integer in ``[minimum, maximum]`` (a bool or a float is refused)."""
    if value is None:
        if allow_none:
            return None
        raise BadArgumentError(f"{name} must be an integer, got None")
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        if isinstance(value, torch.Tensor) and value.numel() == 1 and not (
            value.is_floating_point() or value.dtype == torch.bool
        ):
            value = int(value)
        else:
            raise BadArgumentError(f"{name} must be an integer, got {type(value).__name__} "
                                   f"{value!r}")
    v = int(value)
    if v < minimum:
        raise BadArgumentError(f"{name} must be >= {minimum}, got {v}")
    if v > maximum:
        raise BadArgumentError(f"{name} must be <= {maximum}, got {v}")
    return v


def check_runs(model: nn.Module, x: torch.Tensor, *, what: str = "model") -> torch.Tensor:
    """Run ``model`` on the first two samples of ``x`` (cast to the model's device and
    floating dtype) and check that it returns logits ``[2, C]``; a model that cannot take
    inputs of this shape gets an :class:`~boundkit.errors.InputShapeError` naming the shape
    and torch's reason (first line), not a traceback from a matmul. Returns the logits."""
    p = next((t for t in list(model.parameters()) + list(model.buffers())
              if t.is_floating_point()), None)
    probe = x[:2].detach()
    if p is not None:
        probe = probe.to(device=p.device, dtype=p.dtype)
    try:
        with torch.no_grad():
            out = model(probe)
    except (RuntimeError, ValueError, TypeError, IndexError, AttributeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputShapeError(
            f"{what} cannot run on inputs of shape {list(x.shape)}: {first}") from None
    return check_logits(out, probe.shape[0], what=what)


def check_call(
    model: Any,
    x: Any,
    *,
    device: Any = None,
    box: Any = None,
    counts: dict[str, Any] | None = None,
    run: bool = True,
) -> torch.Tensor:
    """The checks every public entry point starts with, in one line: the device exists, the
    model is an eval-mode module with finite weights, ``x`` is a finite non-empty float batch
    (inside ``box`` when given), every entry of ``counts`` is None or an integer >= 1, and
    (``run=True``) the model maps ``x`` to logits ``[N, C]``. Returns ``x`` as data: detached
    where it carries a gradient (no result then has a ``grad_fn``, and an attack's own
    differentiation cannot reach back into the caller's graph), ``x`` itself otherwise."""
    check_device(device)
    for name, value in (counts or {}).items():
        check_int(name, value, allow_none=True)
    check_model(model)
    check_batch(x, box=check_box(box))
    if run:
        check_runs(model, x)
    return x.detach() if x.requires_grad else x
