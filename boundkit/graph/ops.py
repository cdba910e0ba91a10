"""What each node kind computes: the graph's own semantics, read from the node alone.

Every bound method reads a node through its ``op``, ``params`` and ``attrs``. This module
evaluates a node from exactly those fields (never from the module or the traced code it was
captured from), so that the values the bound methods see are the values of the function
they bound. :mod:`boundkit.graph.fidelity` compares this evaluation with the model's own
forward: a hook, an overridden ``forward``, a keyword argument lost in capture or any other
difference between the captured graph and the model shows up there as a mismatch.

Merges follow torch's broadcasting: ``add`` computes :math:`\\sum_i c_i\\,x_i + s` with the
inputs broadcast to the output shape (batch dimension excluded), ``cat`` concatenates along
``dim``; ``scale`` multiplies its input by the constant ``params["factor"]``, or divides by it
(``attrs["divide"]``), broadcasting as torch does. Products of two computed values: ``mul``
(``x * y``, torch broadcasting) and ``matmul`` (``torch.matmul`` of
``[..., m, k]`` and ``[..., k, n]``, leading axes broadcast); both operands have the same
batched rank (capture refuses others), so torch's broadcasting is per sample.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from boundkit.errors import UnsupportedLayerError

if TYPE_CHECKING:
    from boundkit.graph.graph import Node

Evaluator = Callable[["Node", Sequence[torch.Tensor]], torch.Tensor]


def linear(node: Node, xs: Sequence[torch.Tensor]) -> torch.Tensor:
    return F.linear(xs[0], node.params["weight"], node.params.get("bias"))


def conv2d(node: Node, xs: Sequence[torch.Tensor]) -> torch.Tensor:
    a = node.attrs
    return F.conv2d(
        xs[0], node.params["weight"], node.params.get("bias"),
        stride=a["stride"], padding=a["padding"], dilation=a["dilation"], groups=a["groups"],
    )


def conv_transpose2d(node: Node, xs: Sequence[torch.Tensor]) -> torch.Tensor:
    a = node.attrs
    return F.conv_transpose2d(
        xs[0], node.params["weight"], node.params.get("bias"), a["stride"], a["padding"],
        a["output_padding"], a["groups"], a["dilation"],
    )


def resize(node: Node, xs: Sequence[torch.Tensor]) -> torch.Tensor:
    a = node.attrs
    return F.interpolate(xs[0], a["size"], a["scale_factor"], a["mode"], a["align_corners"],
                         a["recompute_scale_factor"])


def layernorm(node: Node, xs: Sequence[torch.Tensor]) -> torch.Tensor:
    p = node.params
    return F.layer_norm(xs[0], node.attrs["normalized_shape"], p["weight"], p["bias"],
                        node.attrs["eps"])


def center(node: Node, xs: Sequence[torch.Tensor]) -> torch.Tensor:
    r"""``center``: :math:`d = x - \mathrm{mean}(x)` over the last
    ``len(attrs["normalized_shape"])`` axes (LayerNorm's centring, captured as its own node
    before the ``layernorm`` that reads it; ``docs/theory/layernorm.md``)."""
    dims = tuple(range(-len(node.attrs["normalized_shape"]), 0))
    return xs[0] - xs[0].mean(dim=dims, keepdim=True)


def batchnorm(node: Node, xs: Sequence[torch.Tensor]) -> torch.Tensor:
    p = node.params
    return F.batch_norm(
        xs[0], p["running_mean"], p["running_var"], p["weight"], p["bias"],
        training=False, eps=node.attrs["eps"],
    )


def maxpool2d(node: Node, xs: Sequence[torch.Tensor]) -> torch.Tensor:
    a = node.attrs
    return F.max_pool2d(
        xs[0], a["kernel_size"], a["stride"], a["padding"], a["dilation"], a["ceil_mode"]
    )


def avgpool2d(node: Node, xs: Sequence[torch.Tensor]) -> torch.Tensor:
    a = node.attrs
    return F.avg_pool2d(
        xs[0], a["kernel_size"], a["stride"], a["padding"], a["ceil_mode"],
        a["count_include_pad"], a["divisor_override"],
    )


def adaptive_avgpool2d(node: Node, xs: Sequence[torch.Tensor]) -> torch.Tensor:
    return F.adaptive_avg_pool2d(xs[0], node.attrs["output_size"])


def mean(node: Node, xs: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.mean(xs[0], dim=node.attrs["dims"], keepdim=node.attrs["keepdim"])


def sum_(node: Node, xs: Sequence[torch.Tensor]) -> torch.Tensor:
    """``sum``: :math:`z_w=\\sum_{i\\in I_w}a_i` over ``attrs["dims"]`` (indices of the
    batched tensor, never 0), keeping them as size 1 with ``attrs["keepdim"]``."""
    return torch.sum(xs[0], dim=node.attrs["dims"], keepdim=node.attrs["keepdim"])


def lppool2d(node: Node, xs: Sequence[torch.Tensor]) -> torch.Tensor:
    a = node.attrs
    return F.lp_pool2d(xs[0], a["p"], a["kernel_size"], a["stride"], a["ceil_mode"])


def lrn(node: Node, xs: Sequence[torch.Tensor]) -> torch.Tensor:
    a = node.attrs
    return F.local_response_norm(xs[0], a["size"], a["alpha"], a["beta"], a["k"])


def softplus(node: Node, xs: Sequence[torch.Tensor]) -> torch.Tensor:
    return F.softplus(xs[0], node.attrs["beta"], node.attrs["threshold"])


def leaky_relu(node: Node, xs: Sequence[torch.Tensor]) -> torch.Tensor:
    return F.leaky_relu(xs[0], node.attrs["negative_slope"])


def gelu(node: Node, xs: Sequence[torch.Tensor]) -> torch.Tensor:
    return F.gelu(xs[0], approximate=node.attrs["approximate"])


#: SELU's constants as torch states them (``torch.nn.SELU``)
SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946


def elu(node: Node, xs: Sequence[torch.Tensor]) -> torch.Tensor:
    r""":math:`\lambda\,\mathrm{ELU}_\alpha(z/c)`: :math:`\lambda z` for :math:`z>0`,
    :math:`\lambda\alpha(e^{z/c}-1)` else (ELU: :math:`\lambda=c=1`; SELU: torch's
    :math:`\lambda,\alpha`, :math:`c=1`; CELU: :math:`\lambda=1`, :math:`c=\alpha`)."""
    lam, c = node.attrs.get("scale", 1.0), node.attrs.get("input_scale", 1.0)
    alpha = node.attrs["alpha"]
    if lam == 1.0 and c == 1.0:
        return F.elu(xs[0], alpha)
    if lam == 1.0 and c == alpha:  # torch's own kernels, bit for bit
        return F.celu(xs[0], alpha)
    if c == 1.0 and (lam, alpha) == (SELU_SCALE, SELU_ALPHA):
        return F.selu(xs[0])
    z = xs[0]
    return lam * torch.where(z > 0, z, alpha * torch.expm1(z / c))


def hardtanh(node: Node, xs: Sequence[torch.Tensor]) -> torch.Tensor:
    return F.hardtanh(xs[0], node.attrs["min_val"], node.attrs["max_val"])


def groupsort(node: Node, xs: Sequence[torch.Tensor]) -> torch.Tensor:
    from boundkit.models.layers import group_sort

    a = node.attrs
    return group_sort(xs[0], a["group_size"], a["layout"], 1)


def reshape(node: Node, xs: Sequence[torch.Tensor]) -> torch.Tensor:
    return xs[0].reshape(xs[0].shape[0], *node.out_shape)


def identity(node: Node, xs: Sequence[torch.Tensor]) -> torch.Tensor:
    shift = node.attrs.get("shift")
    return xs[0] if shift is None else xs[0] + shift.to(xs[0])


def per_sample_constant(c: torch.Tensor, rank: int) -> torch.Tensor:
    """A constant operand as it acts on one sample of ``rank`` dimensions: its leading axes
    of size 1 beyond ``rank`` dropped (a buffer shaped ``(1, C, 1, 1)`` acts on a sample
    ``[C, H, W]`` as ``(C, 1, 1)``)."""
    while c.dim() > rank and c.shape[0] == 1:
        c = c[0]
    return c


def broadcast_constant(c: torch.Tensor, out_shape: Sequence[int]) -> torch.Tensor:
    """A constant operand broadcast to one sample's output shape ``[*out_shape]``."""
    return per_sample_constant(c, len(out_shape)).broadcast_to(tuple(out_shape))


def scale(node: Node, xs: Sequence[torch.Tensor]) -> torch.Tensor:
    c = node.params["factor"].to(xs[0])
    return xs[0] / c if node.attrs.get("divide") else xs[0] * c


def softmax(node: Node, xs: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.softmax(xs[0], node.attrs["dim"])


def log_softmax(node: Node, xs: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.log_softmax(xs[0], node.attrs["dim"])


def add(node: Node, xs: Sequence[torch.Tensor]) -> torch.Tensor:
    coeffs = node.attrs["coeffs"]
    out = xs[0] if coeffs[0] == 1 else coeffs[0] * xs[0]
    for c, x in zip(coeffs[1:], xs[1:]):
        out = out + (x if c == 1 else c * x)
    shift = node.attrs.get("shift")
    return out if shift is None else out + shift.to(out)


def cat(node: Node, xs: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.cat(list(xs), dim=node.attrs["dim"])


def place(node: Node, z: torch.Tensor, const: torch.Tensor | None) -> torch.Tensor:
    """``z`` [N, *in] placed in the slot ``[start, start + length)`` along ``attrs["dim"]``
    (an index of the batched tensor) of ``const`` [*out] broadcast over the batch (zeros
    when ``const`` is ``None``): the concatenation ``cat_constant`` computes."""
    a = node.attrs
    d, start, length = a["dim"] - 1, a["start"], a["length"]
    full = tuple(node.out_shape)
    c = const.to(z) if const is not None else torch.zeros(full, dtype=z.dtype, device=z.device)
    before = c.narrow(d, 0, start)
    after = c.narrow(d, start + length, full[d] - start - length)
    n = z.shape[0]
    return torch.cat([before.expand(n, *before.shape), z, after.expand(n, *after.shape)],
                     dim=a["dim"])


def cat_constant(node: Node, xs: Sequence[torch.Tensor]) -> torch.Tensor:
    """``cat_constant``: ``torch.cat`` of one per-sample tensor with constants broadcast over
    the batch (a class token ``cls.expand(N, -1, -1)``): :math:`h=Px+c`, :math:`P` the
    placement of :func:`place`, ``c = params["const"]`` [*out] (zero in the slot)."""
    return place(node, xs[0], node.params["const"])


def select(node: Node, xs: Sequence[torch.Tensor]) -> torch.Tensor:
    """``select``: basic indexing of the per-sample axes, ``x[:, *attrs["index"]]`` (ints,
    slices with a positive step, ``None``): each output entry is one distinct input entry."""
    return xs[0][(slice(None), *node.attrs["index"])]


def mul(node: Node, xs: Sequence[torch.Tensor]) -> torch.Tensor:
    """``mul``: the element-wise product of two per-sample operands (torch broadcasting;
    both batched operands have the same rank, so the batch axes align)."""
    return xs[0] * xs[1]


def matmul(node: Node, xs: Sequence[torch.Tensor]) -> torch.Tensor:
    """``matmul``: ``torch.matmul`` of two per-sample operands ``[..., m, k] @ [..., k, n]``
    (leading axes broadcast; both batched operands have the same rank >= 3)."""
    return torch.matmul(xs[0], xs[1])


def permute(node: Node, xs: Sequence[torch.Tensor]) -> torch.Tensor:
    """``permute``: the per-sample axes in the order ``attrs["dims"]`` (batch first)."""
    return xs[0].permute(0, *(d + 1 for d in node.attrs["dims"]))


def relu(node: Node, xs: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.relu(xs[0])


def tanh(node: Node, xs: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.tanh(xs[0])


def sigmoid(node: Node, xs: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.sigmoid(xs[0])


def silu(node: Node, xs: Sequence[torch.Tensor]) -> torch.Tensor:
    return F.silu(xs[0])


def module(node: Node, xs: Sequence[torch.Tensor]) -> torch.Tensor:
    """A user's own module with a registered rule: the module is the semantics."""
    if node.module is None:
        raise UnsupportedLayerError(
            node.name, node.attrs.get("module_type", node.target),
            why="boundkit does not know what this operation computes",
        )
    return node.module(*xs)


def evaluate(node: Node, xs: Sequence[torch.Tensor]) -> torch.Tensor:
    """The output of ``node`` on the batch inputs ``xs`` (one per entry of
    ``node.inputs``), computed from the node's fields alone."""
    from boundkit.graph.optable import OPS  # the table reads this module's functions

    spec = OPS.get(node.op)
    fn = spec.evaluate if spec is not None and spec.evaluate is not None else module
    return fn(node, xs)
