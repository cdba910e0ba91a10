r"""Averages and sums: adaptive average pooling (``nn.AdaptiveAvgPool2d``,
``F.adaptive_avg_pool2d``), means over dimensions (``x.mean(dim=(2, 3))``,
``torch.mean(x, dim, keepdim)``) and sums over dimensions (``x.sum(-1)``,
``torch.sum(x, dim, keepdim)``).

All are linear maps with non-negative weights: every output is the plain average of a set
:math:`I_w` of :math:`n_w` inputs, :math:`z_w=\frac1{n_w}\sum_{i\in I_w}a_i`, or (``sum``)
:math:`n_w` times it, :math:`z_w=\sum_{i\in I_w}a_i`.

**Sound** (``docs/theory/averages.md``): by Cauchy-Schwarz
:math:`|z_w(a)-z_w(b)|\le n_w^{-1/2}\|a_{I_w}-b_{I_w}\|_2`, so the window argument of
:mod:`boundkit.bounds.pooling` gives
:math:`L^2\le\max_i\sum_{w\ni i}1/n_w`. Adaptive pooling's windows are torch's
:math:`[\lfloor iH/o\rfloor,\lceil (i+1)H/o\rceil)` per axis, separable, so the maximum is a
product of two one-axis maxima; they overlap when :math:`o` does not divide :math:`H`. A mean
over :math:`n` entries has disjoint sets: :math:`L=n^{-1/2}`; a sum over them, :math:`n` times
the mean, :math:`L=n^{1/2}`.

**crown**: an affine node (:class:`~boundkit.bounds.relaxation.AffineRelaxation`) with
:math:`|L|=L`; the transpose is the gradient of the average or sum (autograd), the rounding
of a sum of :math:`n_w` terms and one division is :math:`\gamma_{n_w+2}` of the sum of
magnitudes.
"""

from __future__ import annotations

import math

import torch

from boundkit.bounds.numerics import inflate
from boundkit.bounds.registry import LipschitzRule, register_rule
from boundkit.bounds.relaxation import NonNegativeLinearRelaxation
from boundkit.graph.graph import Graph, Node


def adaptive_windows(size: int, out: int) -> list[tuple[int, int]]:
    """torch's adaptive pooling windows along one axis: ``[floor(i*size/out),
    ceil((i+1)*size/out))`` for each output index ``i``."""
    return [((i * size) // out, -((-(i + 1) * size) // out)) for i in range(out)]


def _axis_sum(size: int, wins: list[tuple[int, int]]) -> tuple[float, int]:
    """``max_i sum_{w ni i} 1/n_w`` along one axis, and the largest window."""
    acc = [0.0] * size
    for s, e in wins:
        for i in range(s, e):
            acc[i] += 1.0 / (e - s)
    return max(acc), max(e - s for s, e in wins)


def average_lipschitz(node: Node) -> float:
    """Sound Lipschitz constant of an adaptive average pooling, a mean or a sum (module
    docstring), rounded up."""
    return float(inflate(math.sqrt(_square_and_window(node)[0])))


def _square_and_window(node: Node) -> tuple[float, int]:
    """(:math:`L^2` before rounding up, the largest number of inputs of one output)."""
    if node.op in ("mean", "sum"):
        n = math.prod(node.in_shapes[0][d - 1] for d in node.attrs["dims"])
        return (1.0 / n if node.op == "mean" else float(n)), n
    _, h, w = node.in_shapes[0]
    oh, ow = node.attrs["output_size"]
    sh, kh = _axis_sum(h, adaptive_windows(h, oh))
    sw, kw = _axis_sum(w, adaptive_windows(w, ow))
    return sh * sw, kh * kw


def window_size(node: Node) -> int:
    """The largest number of inputs one output averages."""
    return _square_and_window(node)[1]


class AverageRule(LipschitzRule):
    """Sound: the window bound of the module docstring."""

    def compute_lipschitz(self, node: Node, graph: Graph) -> float:
        return average_lipschitz(node)

    def rounding(
        self, node: Node, graph: Graph, in_norm: torch.Tensor, out_norm: torch.Tensor
    ) -> torch.Tensor:
        # each output: a sum of n_w terms and one division, |error| <= gamma_{n+1} times the
        # average (sum) of magnitudes; in norm at most gamma_{n+1} (||z|| + L ||a||)
        k = window_size(node)
        return (k + 8) * 2.0**-53 * (out_norm + in_norm * self.lipschitz(node, graph))


class AverageRelaxation(NonNegativeLinearRelaxation):
    """``crown``: an average or a sum is linear with non-negative weights
    (:math:`|L|=L`)."""

    def fan(self, node: Node) -> int:
        return window_size(node) + 2


for _op in ("adaptive_avgpool2d", "mean", "sum"):
    register_rule(_op, "sound", AverageRule())
    register_rule(_op, "crown", AverageRelaxation())
