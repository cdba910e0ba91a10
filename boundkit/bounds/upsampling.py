r"""Upsampling layers: transposed convolution (``nn.ConvTranspose2d``) and resizing
(``nn.Upsample``, ``F.interpolate`` with a mode whose weights are non-negative: nearest,
nearest-exact, (bi/tri)linear, area).

**Sound** (``docs/theory/upsampling.md``):

* a transposed convolution is the adjoint of the convolution with the same weight, stride,
  padding, dilation and groups on an input of its output's size (torch defines it as that
  convolution's input gradient), and an operator and its adjoint have the same norm: the
  convolution's FFT/polyphase bound (:func:`~boundkit.bounds.conv.conv_norm_upper_bound`)
  on that size.
* a resize is linear with non-negative weights :math:`T\ge0`; by the Schur test
  :math:`\|T\|_2^2\le\max_i\sum_jT_{ij}\cdot\max_j\sum_iT_{ij}`, the row sums being
  :math:`T\mathbf 1` and the column sums :math:`T^\top\mathbf 1` (both computed with torch's
  own resize and its gradient, then rounded up). Nearest upsampling: row sums 1, column sums
  the copies of an input, :math:`L=\sqrt{\max\text{copies}}`, exact.

**crown**: both are affine nodes (:class:`~boundkit.bounds.relaxation.AffineRelaxation`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from boundkit.bounds.conv import conv_norm_upper_bound, schur_bound_conv
from boundkit.bounds.numerics import gamma, inflate
from boundkit.bounds.registry import LipschitzRule, register_rule
from boundkit.bounds.relaxation import AffineRelaxation, NonNegativeLinearRelaxation
from boundkit.graph.graph import Graph, Node
from boundkit.graph.ops import evaluate


def _adjoint_conv(node: Node, a: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    at = node.attrs
    return F.conv2d(a, weight, None, at["stride"], at["padding"], at["dilation"], at["groups"])


class ConvTransposeRule(LipschitzRule):
    """Sound: the norm bound of the adjoint convolution (module docstring)."""

    def compute_lipschitz(self, node: Node, graph: Graph) -> float:
        a = node.attrs
        return conv_norm_upper_bound(node.params["weight"], node.out_shape[1:], a["stride"],
                                     a["padding"], a["dilation"], a["groups"])

    def rounding(self, node: Node, graph: Graph, in_norm: torch.Tensor,
                 out_norm: torch.Tensor) -> torch.Tensor:
        w = node.params["weight"]
        b = node.params.get("bias")
        bnorm = float(b.norm()) * math.sqrt(math.prod(node.out_shape[1:])) if b is not None else 0
        fan = w.shape[0] * w.shape[2] * w.shape[3] + 1
        return float(gamma(fan + 1)) * (schur_bound_conv(w) * in_norm + bnorm) * (1 + 1e-6)


class ConvTransposeRelaxation(AffineRelaxation):
    """``crown``: :math:`L` the transposed convolution, :math:`L^\\top` the convolution."""

    def apply(self, node: Node, z: torch.Tensor) -> torch.Tensor:
        return self._t(node, z, node.params["weight"])

    def _t(self, node: Node, z: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        a = node.attrs
        return F.conv_transpose2d(z, w, None, a["stride"], a["padding"], a["output_padding"],
                                  a["groups"], a["dilation"])

    def transpose(self, node: Node, a: torch.Tensor) -> torch.Tensor:
        return _adjoint_conv(node, a, node.params["weight"])

    def abs_apply(self, node: Node, m: torch.Tensor) -> torch.Tensor:
        return self._t(node, m, node.params["weight"].abs())

    def const(self, node: Node) -> torch.Tensor | None:
        b = node.params.get("bias")
        return None if b is None else b.reshape(-1, 1, 1).expand(node.out_shape)

    def fan(self, node: Node) -> int:
        w = node.params["weight"]
        return (w.shape[0] + w.shape[1]) * w.shape[2] * w.shape[3] + 1


def _sums(node: Node) -> tuple[float, float]:
    """(max row sum, max column sum) of a resize's non-negative matrix."""
    shape = (1, *node.in_shapes[0])
    ones = torch.ones(shape, dtype=torch.float64, requires_grad=True)
    with torch.enable_grad():
        out = evaluate(node, [ones])
        (col,) = torch.autograd.grad(out.sum(), ones)
    return float(out.detach().max()), float(col.max())


class ResizeRule(LipschitzRule):
    """Sound: the Schur test on the resize's non-negative matrix (module docstring)."""

    def compute_lipschitz(self, node: Node, graph: Graph) -> float:
        row, col = _sums(node)
        k = math.prod(node.in_shapes[0]) + math.prod(node.out_shape) + 4
        return float(inflate(math.sqrt(row * col) * (1 + 2 * float(gamma(k)))))

    def rounding(self, node: Node, graph: Graph, in_norm: torch.Tensor,
                 out_norm: torch.Tensor) -> torch.Tensor:
        k = _plane(node) + 8
        return float(gamma(k)) * (out_norm + in_norm * self.lipschitz(node, graph))


def _plane(node: Node) -> int:
    """Inputs of one channel: a bound on the terms of one output of a resize."""
    return math.prod(node.in_shapes[0][1:])


class ResizeRelaxation(NonNegativeLinearRelaxation):
    """``crown``: a resize is linear with non-negative weights (:math:`|L|=L`)."""

    def fan(self, node: Node) -> int:
        return _plane(node) + 2


register_rule("conv_transpose2d", "sound", ConvTransposeRule())
register_rule("conv_transpose2d", "crown", ConvTransposeRelaxation())
register_rule("resize", "sound", ResizeRule())
register_rule("resize", "crown", ResizeRelaxation())
