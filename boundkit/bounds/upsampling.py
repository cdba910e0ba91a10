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
from boundkit.bounds.relaxation import (
    AffineRelaxation,
    Interval,
    NonNegativeLinearRelaxation,
    RelaxContext,
)
from boundkit.graph.arithmetic import Arithmetic
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

    def model_rounding(self, node: Node, graph: Graph, in_norm: torch.Tensor,
                       out_norm: torch.Tensor, arithmetic: Arithmetic) -> torch.Tensor:
        r"""The default, plus the model's own weights (:meth:`ResizeRelaxation.
        evaluation_error`): :math:`\||\hat L-L|\|_2\le\sum_a\prod_{b<a}\|W_b\|
        \,\||\hat W_a-W_a|\|\prod_{b>a}\|\hat W_b\|` (Schur bounds of the axes'
        matrices), times the input's norm."""
        out = super().model_rounding(node, graph, in_norm, out_norm, arithmetic)
        mats = _axis_matrices(node, graph)
        if mats is None:
            return out
        norms = [(_schur(w64), _schur(wm), _schur(diff)) for w64, wm, diff in mats]
        total = 0.0
        for a in range(len(norms)):
            term = 1.0
            for b, (n64, nm, nd) in enumerate(norms):
                term *= n64 if b < a else (nd if b == a else nm)
            total += term
        return out + float(inflate(total)) * in_norm


def _plane(node: Node) -> int:
    """Inputs of one channel: a bound on the terms of one output of a resize."""
    return math.prod(node.in_shapes[0][1:])


class ResizeRelaxation(NonNegativeLinearRelaxation):
    """``crown``: a resize is linear with non-negative weights (:math:`|L|=L`)."""

    def fan(self, node: Node) -> int:
        return _plane(node) + 2

    def evaluation_error(self, node: Node, ctx: RelaxContext, out: Interval
                         ) -> torch.Tensor | None:
        r"""The affine charge, plus the model's own *weights*: torch computes a resize's
        source indices and interpolation weights in the model's dtype, so its matrix
        :math:`\hat L` differs from the float64 graph's :math:`L` by more than a rounding of
        :math:`L`'s entries (a weight that is 0 in float64 can be 2e-6 in float32; a nearest
        index can move by one). The resize is separable, :math:`L=\bigotimes_aW_a`; each
        axis's matrix is computed by torch itself in both dtypes (a 1-d resize of the
        identity), and :math:`|\hat L-L|\le\sum_a(\bigotimes_{b<a}W_b)\otimes|\hat W_a-W_a|
        \otimes(\bigotimes_{b>a}|\hat W_b|)`, applied to :math:`|\hat z|`
        (``docs/theory/numerics.md`` §4)."""
        rho = super().evaluation_error(node, ctx, out)
        mats = _axis_matrices(node, ctx.graph)
        if mats is None or rho is None:
            return rho
        mag = ctx.interval_in(node).mag
        extra = torch.zeros_like(out.lo)
        for a in range(len(mats)):
            t = mag
            for b, (w64, w_model, diff) in enumerate(mats):
                m = w64 if b < a else (diff if b == a else w_model)
                t = torch.movedim(torch.tensordot(t, m, dims=([2 + b], [0])), -1, 2 + b)
            extra = extra + t
        return rho + extra * (1 + 1e-9)


def _schur(w: torch.Tensor) -> float:
    r""":math:`\sqrt{\|W\|_1\|W\|_\infty}\ge\|W\|_2` of a non-negative matrix."""
    return math.sqrt(float(w.sum(0).max()) * float(w.sum(1).max())) * (1 + 1e-9)


def _axis_matrices(node: Node, graph: Graph
                   ) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] | None:
    r"""Per spatial axis of a resize, its 1-d matrix [in, out] as torch computes it in float64
    and in ``dtype`` (the model's), and their difference :math:`|\hat W-W|`; ``None`` for a
    float64 model (no difference). Computed by torch's own 1-d resize of the identity with
    the node's size / scale factor on that axis, cached per node and dtype."""
    dtype = graph.run_dtype
    if dtype == torch.float64:
        return None
    spatial = tuple(node.in_shapes[0][1:])
    key = ("resize-axes", node.name, spatial, dtype)
    if key not in graph.cache:
        graph.cache[key] = _compute_axis_matrices(node, spatial, dtype, graph.device)
    return graph.cache[key]


def _compute_axis_matrices(node: Node, spatial: tuple[int, ...], dtype: torch.dtype,
                           device: torch.device
                           ) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] | None:
    a = node.attrs
    d = len(spatial)
    mode = {"bilinear": "linear", "trilinear": "linear"}.get(a["mode"], a["mode"])
    size, sf = a["size"], a["scale_factor"]
    out: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    for axis, n in enumerate(spatial):
        kw: dict = {"mode": mode, "recompute_scale_factor": a["recompute_scale_factor"]}
        if mode in ("linear",):
            kw["align_corners"] = a["align_corners"]
        if size is not None:
            kw["size"] = size[axis] if isinstance(size, (tuple, list)) else size
        else:
            kw["scale_factor"] = sf[axis] if isinstance(sf, (tuple, list)) else sf
        eye = torch.eye(n, dtype=torch.float64, device=device).reshape(n, 1, n)
        w64 = F.interpolate(eye, **kw).reshape(n, -1)
        wm = F.interpolate(eye.to(dtype), **kw).reshape(n, -1).to(torch.float64)
        out.append((w64, wm.abs(), (wm - w64).abs()))
    if len(out) != d:
        return None
    return out


register_rule("conv_transpose2d", "sound", ConvTransposeRule())
register_rule("conv_transpose2d", "crown", ConvTransposeRelaxation())
register_rule("resize", "sound", ResizeRule())
register_rule("resize", "crown", ResizeRelaxation())
