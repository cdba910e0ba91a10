r"""``nn.MultiheadAttention`` decomposed into the graph's own ops for capture.

Before tracing, :func:`decompose_attention` replaces every ``nn.MultiheadAttention`` of the
float64 copy by a :class:`DecomposedMultiheadAttention` holding the same weights, whose
``forward`` is torch's computation written with the ops boundkit captures (no masks, no
dropout at evaluation; torch, ``F.multi_head_attention_forward``):

.. math::
    Q_h = (X_q W_q^\top + b_q)_h,\quad K_h = (X_k W_k^\top + b_k)_h,\quad
    V_h = (X_v W_v^\top + b_v)_h\quad(\text{head } h\text{ of width } d=E/H),

.. math::
    O = \big[\mathrm{softmax}\big(Q_h K_h^\top / \sqrt d\big) V_h\big]_{h=1..H}\,
    W_o^\top + b_o,

i.e. ``linear``, ``reshape``, ``permute``, ``matmul``, ``scale``, ``softmax``, ``matmul``,
``permute``, ``reshape``, ``linear`` nodes, each with its own rules. The returned attention
weights (``need_weights=True``) are the softmax averaged over heads (``mean``) or per head,
as torch returns them. With ``batch_first=False`` the module reads ``[T, N, E]``: it swaps
the first two axes on entry and on exit, and capture cancels those swaps against the
model's own (:func:`cancel_batch_swaps`), so that no node moves the batch axis.

Refused with a one-line :class:`~boundkit.errors.UnsupportedLayerError` naming the module:
``key_padding_mask``, ``attn_mask``, ``is_causal=True``, ``add_bias_kv``, ``add_zero_attn``,
``kdim``/``vdim`` different from ``embed_dim``, dropout > 0 in training mode. The fidelity
check compares the captured graph with the model's own ``nn.MultiheadAttention``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.fx
import torch.nn as nn

from boundkit.errors import UnsupportedLayerError


class DecomposedMultiheadAttention(nn.Module):
    """The computation of an ``nn.MultiheadAttention`` (its weights, copied) in ops boundkit
    captures (module docstring)."""

    def __init__(self, name: str, m: nn.MultiheadAttention) -> None:
        super().__init__()

        def refuse(why: str) -> UnsupportedLayerError:
            return UnsupportedLayerError(name, "MultiheadAttention", why=why)

        if not m._qkv_same_embed_dim or m.kdim != m.embed_dim or m.vdim != m.embed_dim:
            raise refuse(f"kdim={m.kdim}, vdim={m.vdim} differ from embed_dim={m.embed_dim}")
        if m.bias_k is not None or m.bias_v is not None:
            raise refuse("add_bias_kv=True (learned key/value tokens) is not supported")
        if m.add_zero_attn:
            raise refuse("add_zero_attn=True is not supported")
        if m.training and m.dropout > 0:
            raise refuse(f"dropout={m.dropout} in training mode: call model.eval()")
        self.name = name
        self.heads, self.head_dim = int(m.num_heads), int(m.head_dim)
        self.batch_first = bool(m.batch_first)
        w = m.in_proj_weight.detach()
        b = m.in_proj_bias.detach() if m.in_proj_bias is not None else None
        e = int(m.embed_dim)
        self.q, self.k, self.v = (nn.Linear(e, e, bias=b is not None) for _ in range(3))
        self.out = nn.Linear(e, e, bias=m.out_proj.bias is not None)
        with torch.no_grad():
            for i, lin in enumerate((self.q, self.k, self.v)):
                lin.weight.copy_(w[i * e:(i + 1) * e])
                if b is not None:
                    lin.bias.copy_(b[i * e:(i + 1) * e])
            self.out.weight.copy_(m.out_proj.weight.detach())
            if m.out_proj.bias is not None:
                self.out.bias.copy_(m.out_proj.bias.detach())
        self.to(dtype=w.dtype, device=w.device)
        self.train(m.training)

    def split(self, t: torch.Tensor) -> torch.Tensor:
        """``[N, T, E] -> [N, H, T, d]``."""
        return t.reshape(t.shape[0], t.shape[1], self.heads, self.head_dim).transpose(1, 2)

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                key_padding_mask: Any = None, need_weights: bool = True,
                attn_mask: Any = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        if key_padding_mask is not None or attn_mask is not None or is_causal is not False:
            raise UnsupportedLayerError(
                self.name, "MultiheadAttention",
                why="key_padding_mask, attn_mask and is_causal are not supported (attention "
                "over every token only)")
        if not self.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        q, k, v = self.split(self.q(query)), self.split(self.k(key)), self.split(self.v(value))
        att = torch.softmax((q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(self.head_dim)), -1)
        o = (att @ v).transpose(1, 2)
        o = self.out(o.reshape(o.shape[0], o.shape[1], self.heads * self.head_dim))
        if not self.batch_first:
            o = o.transpose(0, 1)
        weights = None
        if need_weights is not False:
            weights = att.mean(dim=1) if average_attn_weights is not False else att
        return o, weights


def decompose_attention(model: nn.Module) -> nn.Module:
    """Replace, in place, every ``nn.MultiheadAttention`` of ``model`` (a float64 copy) by
    its :class:`DecomposedMultiheadAttention`; a bare one becomes a one-module model."""
    if isinstance(model, nn.MultiheadAttention):
        raise UnsupportedLayerError(
            "MultiheadAttention", "MultiheadAttention",
            why="a bare attention layer returns a tuple, not logits: wrap it in a classifier")
    for name, m in list(model.named_modules()):
        for child_name, child in list(m.named_children()):
            if type(child) is nn.MultiheadAttention:
                full = f"{name}.{child_name}" if name else child_name
                setattr(m, child_name, DecomposedMultiheadAttention(full, child))
    return model


def _swap_dims(n: torch.fx.Node) -> bool:
    """Whether ``n`` swaps the first two axes of a tensor (``transpose(0, 1)``,
    ``swapaxes(1, 0)``, ``permute(1, 0, ...)``, ``torch.transpose``), from its propagated
    shape."""
    if n.op not in ("call_method", "call_function") or not n.args:
        return False
    src = n.args[0]
    meta = src.meta.get("tensor_meta") if isinstance(src, torch.fx.Node) else None
    if meta is None or not hasattr(meta, "shape"):
        return False
    rank = len(meta.shape)
    name = n.target if n.op == "call_method" else getattr(n.target, "__name__", "")
    rest = list(n.args[1:]) + list(n.kwargs.values())
    if name in ("transpose", "swapaxes", "swapdims") and len(rest) == 2:
        if not all(isinstance(d, int) and not isinstance(d, bool) for d in rest):
            return False
        return sorted(d % rank for d in rest) == [0, 1]
    if name == "permute":
        dims = rest[0] if len(rest) == 1 and isinstance(rest[0], (list, tuple)) else rest
        if not all(isinstance(d, int) and not isinstance(d, bool) for d in dims):
            return False
        return [d % rank for d in dims] == [1, 0, *range(2, rank)]
    return False


def cancel_batch_swaps(gm: torch.fx.GraphModule) -> None:
    """Remove pairs of consecutive swaps of the first two axes (the identity): the model's
    ``x.transpose(0, 1)`` into a ``batch_first=False`` attention and the attention's own
    swap back, and the same on its output. A swap whose result is read elsewhere stays (and
    capture refuses it: it moves the batch axis)."""
    for n in list(gm.graph.nodes):
        if not _swap_dims(n):
            continue
        src = n.args[0]
        if not (isinstance(src, torch.fx.Node) and _swap_dims(src)):
            continue
        n.replace_all_uses_with(src.args[0])
        gm.graph.erase_node(n)
        if not src.users:
            gm.graph.erase_node(src)
    gm.recompile()
