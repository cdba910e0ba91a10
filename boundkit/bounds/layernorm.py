r"""Layer normalisation (``nn.LayerNorm``, ``F.layer_norm``).

:math:`\mathrm{LN}(x)=\gamma\odot\frac{Px}{\sqrt{\|Px\|^2/n+\epsilon}}+\beta` per position,
:math:`P` the centring projection over the normalised dimensions (:math:`n` entries).
The map :math:`f(y)=y/\sqrt{\|y\|^2/n+\epsilon}` has Jacobian
:math:`I/s-yy^\top/(ns^3)`, :math:`s=\sqrt{\|y\|^2/n+\epsilon}`, with eigenvalues :math:`1/s`
(orthogonal to :math:`y`) and :math:`\epsilon/s^3` (along :math:`y`), both at most
:math:`1/\sqrt\epsilon` (at :math:`y=0`); :math:`\|P\|=1`. Hence the global constant
:math:`L=\max|\gamma|/\sqrt\epsilon` (``docs/theory/layernorm.md``), sound but large
(316 max|gamma| for torch's default eps): the division by a data-dependent standard deviation
has no useful global bound. ``crown`` and ``alpha`` use a linear relaxation instead
(:class:`LayerNormRelaxation`): per normalised group, the Taylor plane of the normalisation at
the centre of the input box, shifted by a proven bound on its Lagrange remainder over the box
(``docs/theory/softmax.md`` §LayerNorm).
"""

from __future__ import annotations

import math

import torch

from boundkit.bounds.numerics import UNIT_ROUNDOFF, gamma, inflate
from boundkit.bounds.registry import LipschitzRule, register_rule
from boundkit.bounds.relaxation import (
    AffineRelaxation,
    Interval,
    LinearBounds,
    RelaxationRule,
    RelaxContext,
)
from boundkit.graph.graph import Graph, Node


class LayerNormRule(LipschitzRule):
    """Sound: :math:`\\max|\\gamma|/\\sqrt\\epsilon` (module docstring)."""

    def compute_lipschitz(self, node: Node, graph: Graph) -> float:
        g = float(node.params["weight"].abs().max())
        return float(inflate(g / math.sqrt(node.attrs["eps"]), 1e-9))

    def rounding(self, node: Node, graph: Graph, in_norm: torch.Tensor,
                 out_norm: torch.Tensor) -> torch.Tensor:
        # mean (gamma_n), centring, variance (gamma_{n+2}), sqrt and division (a few ulps),
        # scale and shift: gamma_{2n+8} of (L |x|, |out|, |beta|), four times over
        n = math.prod(node.attrs["normalized_shape"])
        reps = math.prod(node.out_shape) // n
        beta = float(node.params["bias"].norm()) * math.sqrt(reps)
        lip = self.lipschitz(node, graph)
        return 4 * float(gamma(2 * n + 8)) * (lip * in_norm + out_norm + beta)


register_rule("layernorm", "sound", LayerNormRule())


# ------------------------------------------------------------------ the centring node
def _centre_groups(node: Node, t: torch.Tensor, lead: int) -> torch.Tensor:
    """``t`` [*lead, *shape] with the normalised axes flattened last: [*lead, -1, n]."""
    n = math.prod(node.attrs["normalized_shape"])
    return t.reshape(*t.shape[:lead], -1, n)


class CenterRule(LipschitzRule):
    r"""``sound``: :math:`d=Px`, :math:`P=I-\mathbf 1\mathbf 1^\top/n` per group, an
    orthogonal projection, so :math:`L=\|P\|=1`; computed as :math:`x_i-\mathrm{fl}(\bar
    x)` with :math:`|\hat d_i-d_i|\le\gamma_{n+2}(|x_i|+\overline{|x|})`, whose L2 norm
    over a sample is at most :math:`2\gamma_{n+2}\|x\|` (``docs/theory/layernorm.md``
    §Centring)."""

    def compute_lipschitz(self, node: Node, graph: Graph) -> float:
        return 1.0

    def rounding(self, node: Node, graph: Graph, in_norm: torch.Tensor,
                 out_norm: torch.Tensor) -> torch.Tensor:
        n = math.prod(node.attrs["normalized_shape"])
        return 2 * float(gamma(n + 2)) * in_norm * (1 + 1e-12)


class CenterRelaxation(AffineRelaxation):
    r"""``crown``: the exact linear map :math:`P` (symmetric): :math:`L^\top A=A-\bar A` per
    group; :math:`|P|m=(1-\tfrac2n)m+\tfrac1n\sum m`. The computed :math:`P^\top A` (or
    :math:`Px`) is within :math:`\gamma_{n+2}(|A_i|+\sum_j|A_j|/n)` of the exact one, so a
    coefficient :math:`A_j` is charged :math:`|A_j|\,\gamma_{n+2}(m_j+\bar m)` for
    :math:`|x|\le m` (``docs/theory/layernorm.md`` §Centring)."""

    def apply(self, node: Node, z: torch.Tensor) -> torch.Tensor:
        g = _centre_groups(node, z, 1)
        return (g - g.mean(-1, keepdim=True)).reshape(z.shape)

    def transpose(self, node: Node, a: torch.Tensor) -> torch.Tensor:
        return self.apply(node, a)

    def abs_apply(self, node: Node, m: torch.Tensor) -> torch.Tensor:
        g = _centre_groups(node, m, 1)
        n = g.shape[-1]
        return ((1 - 2 / n) * g + g.sum(-1, keepdim=True) / n).reshape(m.shape)

    def fan(self, node: Node) -> int:
        return math.prod(node.attrs["normalized_shape"]) + 1

    def rounding_bound(self, node: Node, mag_in: torch.Tensor) -> torch.Tensor:
        g = _centre_groups(node, mag_in, 1)
        n = g.shape[-1]
        return (float(gamma(n + 2)) * (g + g.mean(-1, keepdim=True))
                * (1 + 4 * UNIT_ROUNDOFF)).reshape(mag_in.shape)


register_rule("center", "sound", CenterRule())
register_rule("center", "crown", CenterRelaxation())


# ------------------------------------------------------------------ crown (issue 24, vit)
def layernorm_planes(lo: torch.Tensor, hi: torch.Tensor, eps: float, centred: bool = False
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""Parallel planes of :math:`f(x)=Px/\sqrt{\|Px\|^2/n+\epsilon}` (LayerNorm without its
    affine part) over the box ``[lo, hi]`` (``[..., n]``, normalised over the last axis):
    ``(G [..., n, n], b_lo, b_hi)`` with :math:`b_{lo}+Gx\le f(x)\le b_{hi}+Gx` on the box, in
    real arithmetic (``docs/theory/layernorm.md``: the Taylor plane of
    :math:`g(d)=d/\sqrt{\|d\|^2/n+\epsilon}` at the centre of the box of :math:`d=Px`, a
    proven bound on its Lagrange remainder, and the rounding of its computation).

    ``centred``: the input is itself a centred vector (the output of a ``center`` node, so
    :math:`Px=x` in real arithmetic): the box of :math:`d` is ``[lo, hi]`` itself, and the
    planes are those of :math:`g` on it (slope :math:`J`, no :math:`P`), valid for
    :math:`f` at every centred point of the box (``docs/theory/layernorm.md`` §Centred input).

    With :math:`s=\|d\|^2/n+\epsilon`: :math:`\partial g_i/\partial d_j=\delta_{ij}s^{-1/2}-
    d_id_j/(ns^{3/2})` and :math:`|\partial^2g_i/\partial d_j\partial d_k|\le(\delta_{ij}m_k+
    \delta_{ik}m_j+\delta_{jk}m_i)/(ns_{\min}^{3/2})+3m_im_jm_k/(n^2s_{\min}^{5/2})`, so
    :math:`|R_i|\le\tfrac12[(2r_i\,m\cdot r+m_i\|r\|^2)/(ns_{\min}^{3/2})+
    3m_i(m\cdot r)^2/(n^2s_{\min}^{5/2})]`."""
    n = lo.shape[-1]
    u = UNIT_ROUNDOFF
    g_n = float(gamma(n + 10))
    if centred:
        return _centred_planes(lo, hi, eps)
    mx = torch.maximum(lo.abs(), hi.abs())
    # the box of d = x - mean(x): d_i = (1 - 1/n) x_i - (1/n) sum_{j != i} x_j
    s_lo, s_hi = lo.sum(-1, keepdim=True), hi.sum(-1, keepdim=True)
    d_lo = (1 - 1 / n) * lo - (s_hi - hi) / n
    d_hi = (1 - 1 / n) * hi - (s_lo - lo) / n
    slack = g_n * (mx + mx.sum(-1, keepdim=True) / n) + 1e-300
    d_lo, d_hi = d_lo - slack, d_hi + slack
    c_x = (lo + hi) / 2
    c = c_x - c_x.mean(-1, keepdim=True)  # the anchor (any point of the d box)
    d_lo, d_hi = torch.minimum(d_lo, c), torch.maximum(d_hi, c)
    r = torch.maximum(d_hi - c, c - d_lo) * (1 + 4 * u) + 1e-300
    rem = _remainder(d_lo, d_hi, r, eps, g_n)
    # the plane at c: value f = c / sigma, Jacobian J = I / sigma - c c^T / (n sigma^3)
    sig = torch.sqrt((c * c).sum(-1, keepdim=True) / n + eps)
    f = c / sig
    eye = torch.eye(n, dtype=lo.dtype, device=lo.device)
    jac = eye / sig.unsqueeze(-1) - c.unsqueeze(-1) * c.unsqueeze(-2) / (
        n * sig.unsqueeze(-1) ** 3)
    # rounding of f and J at c (relative gamma_{n+10} of their terms, doubled), and of the
    # centring of c (|c - P c_x| <= slack_c per entry, moved by the Jacobian)
    e_f = 2 * g_n * f.abs()
    e_j = 2 * g_n * (eye / sig.unsqueeze(-1) + c.abs().unsqueeze(-1) * c.abs().unsqueeze(-2) / (
        n * sig.unsqueeze(-1) ** 3))
    slack_c = g_n * (c_x.abs() + c_x.abs().sum(-1, keepdim=True) / n)
    jab = jac.abs() + e_j
    err = rem + e_f + (e_j * r.unsqueeze(-2)).sum(-1) + (jab * slack_c.unsqueeze(-2)).sum(-1)
    # coefficients on x: G = J P = J - (J 1) 1^T / n; constant f(c) - J c (d = P x exactly)
    gx = jac - jac.sum(-1, keepdim=True) / n
    gxc = (jac * c.unsqueeze(-2)).sum(-1)
    # rounding of G (|G - JP| <= gamma (|J| + |J|1/n)) applied to |x| <= mx, and of the constant
    e_g = g_n * ((jab * mx.unsqueeze(-2)).sum(-1)
                 + (jab.sum(-1) / n) * mx.sum(-1, keepdim=True))
    e_b = g_n * ((jac * c.unsqueeze(-2)).abs().sum(-1) + f.abs())
    err = (err + e_g + e_b) * (1 + g_n) + 1e-300
    return gx, f - gxc - err, f - gxc + err


def _remainder(d_lo: torch.Tensor, d_hi: torch.Tensor, r: torch.Tensor, eps: float,
               g_n: float) -> torch.Tensor:
    r"""The Lagrange remainder bound of :math:`g` on the box ``[d_lo, d_hi]`` around an anchor
    with half-widths ``r`` (``docs/theory/layernorm.md`` §Remainder)."""
    n = d_lo.shape[-1]
    m = torch.maximum(d_lo.abs(), d_hi.abs())  # |d_k| <= m_k on the box
    dmin = torch.where((d_lo <= 0) & (d_hi >= 0), torch.zeros_like(d_lo),
                       torch.minimum(d_lo.abs(), d_hi.abs()))
    s_min = ((dmin * dmin).sum(-1, keepdim=True) / n) * (1 - g_n) + eps * (1 - 2 * UNIT_ROUNDOFF)
    mr = (m * r).sum(-1, keepdim=True)
    rr = (r * r).sum(-1, keepdim=True)
    return 0.5 * ((2 * r * mr + m * rr) / (n * s_min ** 1.5)
                  + 3 * m * mr * mr / (n * n * s_min ** 2.5))


def _centred_planes(lo: torch.Tensor, hi: torch.Tensor, eps: float
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r""":func:`layernorm_planes` for a centred input: the Taylor plane of
    :math:`g(d)=d/\sqrt{\|d\|^2/n+\epsilon}` at the box's midpoint :math:`c` (any point of
    the box), :math:`g(d)\in g(c)+J(c)(d-c)\pm R` on the box, with the rounding of
    :math:`\hat g(c)`, :math:`\hat J` (:math:`2\gamma_{n+10}` of their terms, moved by
    :math:`|d-c|\le r`) and of the intercept's sums charged (``docs/theory/layernorm.md``
    §Centred input)."""
    n = lo.shape[-1]
    u = UNIT_ROUNDOFF
    g_n = float(gamma(n + 10))
    c = (lo + hi) / 2
    d_lo, d_hi = torch.minimum(lo, c), torch.maximum(hi, c)
    r = torch.maximum(d_hi - c, c - d_lo) * (1 + 4 * u) + 1e-300
    rem = _remainder(d_lo, d_hi, r, eps, g_n)
    sig = torch.sqrt((c * c).sum(-1, keepdim=True) / n + eps)
    f = c / sig
    eye = torch.eye(n, dtype=lo.dtype, device=lo.device)
    jac = eye / sig.unsqueeze(-1) - c.unsqueeze(-1) * c.unsqueeze(-2) / (
        n * sig.unsqueeze(-1) ** 3)
    e_f = 2 * g_n * f.abs()
    e_j = 2 * g_n * (eye / sig.unsqueeze(-1) + c.abs().unsqueeze(-1) * c.abs().unsqueeze(-2) / (
        n * sig.unsqueeze(-1) ** 3))
    gxc = (jac * c.unsqueeze(-2)).sum(-1)
    e_b = g_n * ((jac * c.unsqueeze(-2)).abs().sum(-1) + f.abs())
    err = (rem + e_f + (e_j * r.unsqueeze(-2)).sum(-1) + e_b) * (1 + g_n) + 1e-300
    return jac, f - gxc - err, f - gxc + err


def reads_centred(node: Node, graph: Graph) -> bool:
    """``node`` (a ``layernorm``) reads a ``center`` node over the same axes: its input is
    centred in real arithmetic (capture puts one before every LayerNorm)."""
    src = graph[node.inputs[0]]
    return (src.op == "center" and tuple(src.attrs["normalized_shape"])
            == tuple(node.attrs["normalized_shape"]))


class LayerNormRelaxation(RelaxationRule):
    r"""``crown``: per normalised group, :math:`\gamma\odot f(x)+\beta` with
    :func:`layernorm_planes` (parallel planes scaled by :math:`\gamma`, lower and upper swapped
    where :math:`\gamma<0`), or the constant bounds :math:`\beta\pm|\gamma|\sqrt n` where
    those are narrower (:math:`|f_i|\le\sqrt n`)."""

    nonlinear = True

    def supports(self, node: Node) -> bool:
        return len(node.inputs) == 1

    @staticmethod
    def _groups(node: Node, t: torch.Tensor, lead: int) -> torch.Tensor:
        n = math.prod(node.attrs["normalized_shape"])
        return t.reshape(*t.shape[:lead], -1, n)

    def lines(self, node: Node, iv: Interval, centred: bool = False
              ) -> tuple[torch.Tensor, ...]:
        """``(K [N, G, n, n], b_lo [N, G, n], b_hi, lo, hi)``: the planes of the output and
        its interval, in the grouped layout (``centred``: the input is a ``center`` node's,
        :func:`layernorm_planes`)."""
        lo, hi = self._groups(node, iv.lo, 1), self._groups(node, iv.hi, 1)
        n = lo.shape[-1]
        g, b_lo, b_hi = layernorm_planes(lo, hi, float(node.attrs["eps"]), centred)
        w = node.params["weight"].reshape(-1).to(lo)
        beta = node.params["bias"].reshape(-1).to(lo)
        u3 = float(gamma(3))
        k = w.unsqueeze(-1) * g  # rows scaled by gamma_i
        mx = torch.maximum(lo.abs(), hi.abs())
        e_k = UNIT_ROUNDOFF * (k.abs() * mx.unsqueeze(-2)).sum(-1)
        wp, wn = w.clamp(min=0), w.clamp(max=0)
        y_lo = wp * b_lo + wn * b_hi + beta
        y_hi = wp * b_hi + wn * b_lo + beta
        e_b = u3 * ((w * b_lo).abs() + (w * b_hi).abs() + beta.abs()) + e_k
        y_lo, y_hi = y_lo - e_b, y_hi + e_b
        # interval: the planes' range over the box, met with beta +- |gamma| sqrt(n)
        mid, rad = (lo + hi) / 2, (hi - lo) / 2
        kc = (k * mid.unsqueeze(-2)).sum(-1)
        kr = (k.abs() * rad.unsqueeze(-2)).sum(-1)
        e_i = float(gamma(n + 3)) * ((k * mid.unsqueeze(-2)).abs().sum(-1) + kr
                                     + y_lo.abs() + y_hi.abs())
        cap = w.abs() * math.sqrt(n) * (1 + u3)
        lo_y = torch.maximum(y_lo + kc - kr - e_i, beta - cap - u3 * beta.abs())
        hi_y = torch.minimum(y_hi + kc + kr + e_i, beta + cap + u3 * beta.abs())
        flat = ~((y_hi - y_lo) < (hi_y - lo_y))  # constant bounds narrower (or NaN)
        k = torch.where(flat.unsqueeze(-1), torch.zeros_like(k), k)
        lo_y = torch.nan_to_num(lo_y, nan=-math.inf)
        hi_y = torch.nan_to_num(hi_y, nan=math.inf)
        return (k, torch.where(flat, lo_y, y_lo), torch.where(flat, hi_y, y_hi), lo_y, hi_y)

    def interval(self, node: Node, ctx: RelaxContext, ins: list[Interval]) -> Interval:
        *_, lo, hi = self.lines(node, ins[0], reads_centred(node, ctx.graph))
        n = ins[0].lo.shape[0]
        return Interval(lo.reshape(n, *node.out_shape), hi.reshape(n, *node.out_shape))

    def backward(self, node: Node, ctx: RelaxContext, lb: LinearBounds) -> list[LinearBounds]:
        x = ctx.interval_in(node)
        k, b_lo, b_hi, _, _ = ctx.derived(f"layernorm:{node.name}", x,
                                          lambda: self.lines(node, x, reads_centred(
                                              node, ctx.graph)))
        a = self._groups(node, lb.A, 2)  # [N, S, G, n]
        nn_ = a.shape[-1]
        pos, neg = a.clamp(min=0), a.clamp(max=0)
        a_in = torch.einsum("nsgi,ngij->nsgj", a, k)  # parallel planes: one slope matrix
        terms = pos * b_lo.unsqueeze(1) + neg * b_hi.unsqueeze(1)
        add = terms.flatten(2).sum(2)
        mag = self._groups(node, x.mag, 1)
        kx = torch.einsum("ngij,ngj->ngi", k.abs(), mag)
        err = (float(gamma(nn_ + 2)) * (1 + float(gamma(nn_ + 1)))
               * (a.abs() * kx.unsqueeze(1)).flatten(2).sum(2)
               + float(gamma(terms[0, 0].numel() + 2)) * terms.abs().flatten(2).sum(2))
        a_in = a_in.reshape(lb.A.shape[0], lb.A.shape[1], *node.in_shapes[0])
        return [lb.then(a_in, add, err, ctx.intervals[node.name].mag)]


register_rule("layernorm", "crown", LayerNormRelaxation())
