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
the centre of the box of :math:`d=Px`, its remainder split exactly as :math:`c\,e+\delta\,
\Delta\rho` and charged per coefficient row (``docs/theory/layernorm.md``). Capture puts the
centring :math:`d=Px` before every LayerNorm as its own exact linear node ``center``
(:class:`CenterRule`, :class:`CenterRelaxation`), so that a backward walk bounds :math:`d`
itself rather than :math:`x`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

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
@dataclass
class TaylorPlanes:
    r"""The Taylor plane of :math:`g(d)=d/\sqrt{\|d\|^2/n+\epsilon}` at an anchor :math:`c`
    of the box of :math:`d`, as a function of the node's input (``[..., n]`` per group), and
    what bounds its error on the box (``docs/theory/layernorm.md``):

    .. math:: g(d)=\underbrace{g(c)+J(c)(d-c)}_{\text{plane}}+c\,e+\delta\,\Delta\rho,\qquad
              \delta=d-c,

    with the scalars :math:`e=\rho(d)-\rho(c)-\nabla\rho(c)\cdot\delta\in[e_{lo},e_{hi}]` and
    :math:`|\Delta\rho|=|\rho(d)-\rho(c)|\le D` (:math:`\rho=s^{-1/2}`), or, per coordinate,
    :math:`|R_i|\le` ``rem`` (the entrywise Hessian bound). ``comp`` bounds the rounding of the
    plane's computation."""

    #: slope on the node's input, [..., n, n]
    slope: torch.Tensor
    #: intercept: plane = mid + slope x, [..., n]
    mid: torch.Tensor
    #: rounding of the plane's computation, [..., n]
    comp: torch.Tensor
    #: the entrywise-Hessian remainder bound, [..., n]
    rem: torch.Tensor
    #: the anchor c, [..., n]
    anchor: torch.Tensor
    #: r >= |d - c| on the box, [..., n]
    half: torch.Tensor
    #: bounds on the scalar second-order remainder e of rho, [..., 1]
    e_lo: torch.Tensor
    e_hi: torch.Tensor
    #: D >= |rho(d) - rho(c)| on the box, [..., 1]
    drho: torch.Tensor

    def band(self) -> torch.Tensor:
        r"""Per coordinate, :math:`|g_i-\text{plane}_i|\le` ``comp`` :math:`+\min(`
        ``rem``, :math:`|c_i|\max(-e_{lo},e_{hi})+r_iD)`."""
        split = (self.anchor.abs() * torch.maximum(-self.e_lo, self.e_hi)
                 + self.half * self.drho) * (1 + 4 * UNIT_ROUNDOFF)
        return self.comp + torch.minimum(self.rem, split)


def layernorm_planes(lo: torch.Tensor, hi: torch.Tensor, eps: float, centred: bool = False
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""Parallel planes of :math:`f(x)=Px/\sqrt{\|Px\|^2/n+\epsilon}` (LayerNorm without its
    affine part) over the box ``[lo, hi]`` (``[..., n]``, normalised over the last axis):
    ``(G [..., n, n], b_lo, b_hi)`` with :math:`b_{lo}+Gx\le f(x)\le b_{hi}+Gx` on the box, in
    real arithmetic: :func:`layernorm_taylor` with its per-coordinate band
    (:meth:`TaylorPlanes.band`).

    ``centred``: the input is itself a centred vector (the output of a ``center`` node, so
    :math:`Px=x` in real arithmetic): the box of :math:`d` is ``[lo, hi]`` itself, and the
    planes are those of :math:`g` on it (slope :math:`J`, no :math:`P`), valid for
    :math:`f` at every centred point of the box (``docs/theory/layernorm.md`` §Centred input).
    """
    t = layernorm_taylor(lo, hi, eps, centred)
    band = t.band()
    return t.slope, t.mid - band, t.mid + band


def layernorm_taylor(lo: torch.Tensor, hi: torch.Tensor, eps: float, centred: bool = False
                     ) -> TaylorPlanes:
    r"""The Taylor plane of LayerNorm's normalisation over the box ``[lo, hi]`` of its input
    and the bounds on its error (:class:`TaylorPlanes`; ``docs/theory/layernorm.md``).

    Without ``centred``, the box of :math:`d=Px` is derived from the input's by interval
    arithmetic, :math:`(1-\frac1n)l_i-\frac1n\sum_{j\ne i}u_j\le d_i\le\dots`, and the slope on
    :math:`x` is :math:`JP=J-(J\mathbf 1)\mathbf 1^\top/n`; with it, the box is the input's
    and the slope :math:`J`."""
    if centred:
        return _centred_taylor(lo, hi, eps)
    n = lo.shape[-1]
    u = UNIT_ROUNDOFF
    g_n = float(gamma(n + 10))
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
    rem, e_lo, e_hi, drho = _remainders(d_lo, d_hi, c, r, eps, g_n)
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
    err = e_f + (e_j * r.unsqueeze(-2)).sum(-1) + (jab * slack_c.unsqueeze(-2)).sum(-1)
    # coefficients on x: G = J P = J - (J 1) 1^T / n; constant f(c) - J c (d = P x exactly)
    gx = jac - jac.sum(-1, keepdim=True) / n
    gxc = (jac * c.unsqueeze(-2)).sum(-1)
    # rounding of G (|G - JP| <= gamma (|J| + |J|1/n)) applied to |x| <= mx, and of the constant
    e_g = g_n * ((jab * mx.unsqueeze(-2)).sum(-1)
                 + (jab.sum(-1) / n) * mx.sum(-1, keepdim=True))
    e_b = g_n * ((jac * c.unsqueeze(-2)).abs().sum(-1) + f.abs())
    comp = (err + e_g + e_b) * (1 + g_n) + 1e-300
    return TaylorPlanes(gx, f - gxc, comp, rem * (1 + g_n), c, r, e_lo, e_hi, drho)


def _remainders(d_lo: torch.Tensor, d_hi: torch.Tensor, c: torch.Tensor, r: torch.Tensor,
                eps: float, g_n: float
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""On the box ``[d_lo, d_hi]`` holding the anchor ``c``, with :math:`r\ge|d-c|`
    (``docs/theory/layernorm.md`` §The Taylor plane and its remainder), each rounded outwards:

    * ``rem`` [..., n]: :math:`\tfrac12[(2r_i\,m\cdot r+m_i\|r\|^2)/(ns_{\min}^{3/2})+
      3m_i(m\cdot r)^2/(n^2s_{\min}^{5/2})]` (the entrywise Hessian bound);
    * ``e_lo``, ``e_hi`` [..., 1]: :math:`-\|r\|^2/(2ns_{\min}^{3/2})` and
      :math:`\tfrac12\min(2\|r\|^2/(ns_{\min}^{3/2}),3(m\cdot r)^2/(n^2s_{\min}^{5/2}))`;
    * ``drho`` [..., 1]: :math:`\min(\max(\rho(s_{\min})-\rho(c),\rho(c)-\rho(s_{\max})),
      \|r\|/(\sqrt n\,s_{\min}))`.

    :math:`m_k\ge|d_k|`, :math:`s_{\min}\le s(d)\le s_{\max}` on the box."""
    n = d_lo.shape[-1]
    u = UNIT_ROUNDOFF
    up = 1 + g_n
    m = torch.maximum(d_lo.abs(), d_hi.abs())  # |d_k| <= m_k on the box
    dmin = torch.where((d_lo <= 0) & (d_hi >= 0), torch.zeros_like(d_lo),
                       torch.minimum(d_lo.abs(), d_hi.abs()))
    s_min = ((dmin * dmin).sum(-1, keepdim=True) / n) * (1 - g_n) + eps * (1 - 2 * u)
    s_max = ((m * m).sum(-1, keepdim=True) / n) * up + eps * (1 + 2 * u)
    mr = (m * r).sum(-1, keepdim=True) * up
    rr = (r * r).sum(-1, keepdim=True) * up
    s15, s25 = s_min ** 1.5 * (1 - g_n), s_min ** 2.5 * (1 - g_n)
    rem = 0.5 * ((2 * r * mr + m * rr) / (n * s15) + 3 * m * mr * mr / (n * n * s25)) * up
    e_lo = -0.5 * rr / (n * s15) * up
    e_hi = 0.5 * torch.minimum(2 * rr / (n * s15), 3 * mr * mr / (n * n * s25)) * up
    # rho(c) to within a relative gamma_{n+10}; rho(s_min) up, rho(s_max) down
    rho_c = 1 / torch.sqrt((c * c).sum(-1, keepdim=True) / n + eps)
    rho_hi = 1 / torch.sqrt(s_min) * up
    rho_lo = 1 / torch.sqrt(s_max) * (1 - g_n)
    d_range = torch.maximum(rho_hi - rho_c * (1 - g_n), rho_c * up - rho_lo)
    d_grad = torch.sqrt(rr) / (math.sqrt(n) * s_min)
    drho = torch.minimum(d_range, d_grad) * up
    return rem, e_lo, e_hi, drho


def _centred_taylor(lo: torch.Tensor, hi: torch.Tensor, eps: float) -> TaylorPlanes:
    r""":func:`layernorm_taylor` for a centred input: the Taylor plane of :math:`g` at the
    box's midpoint :math:`c` (any point of the box), with the rounding of :math:`\hat g(c)`,
    :math:`\hat J` (:math:`2\gamma_{n+10}` of their terms, moved by :math:`|d-c|\le r`) and
    of the intercept's sums charged (``docs/theory/layernorm.md`` §Centred input)."""
    n = lo.shape[-1]
    u = UNIT_ROUNDOFF
    g_n = float(gamma(n + 10))
    c = (lo + hi) / 2
    d_lo, d_hi = torch.minimum(lo, c), torch.maximum(hi, c)
    r = torch.maximum(d_hi - c, c - d_lo) * (1 + 4 * u) + 1e-300
    rem, e_lo, e_hi, drho = _remainders(d_lo, d_hi, c, r, eps, g_n)
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
    comp = (e_f + (e_j * r.unsqueeze(-2)).sum(-1) + e_b) * (1 + g_n) + 1e-300
    return TaylorPlanes(jac, f - gxc, comp, rem, c, r, e_lo, e_hi, drho)


def reads_centred(node: Node, graph: Graph) -> bool:
    """``node`` (a ``layernorm``) reads a ``center`` node over the same axes: its input is
    centred in real arithmetic (capture puts one before every LayerNorm)."""
    src = graph[node.inputs[0]]
    return (src.op == "center" and tuple(src.attrs["normalized_shape"])
            == tuple(node.attrs["normalized_shape"]))


@dataclass
class LayerNormLines:
    r"""A LayerNorm node's relaxation in the grouped layout ``[N, G, n]``: per output
    :math:`y_i=\gamma_if_i+\beta_i`, the plane ``k`` [N, G, n, n] (zero where the constant
    bounds are used), its offsets ``y_lo``/``y_hi`` with the rounding only (the interval's
    ends where flat), and the remainder, charged per coefficient row by
    :meth:`LayerNormRelaxation.backward`: ``rem_w`` (:math:`|\gamma_i|` ``rem``),
    ``wc`` (:math:`\gamma_ic_i`), ``wr`` (:math:`|\gamma_i|r_i`), all zero where flat, with
    ``e_lo``, ``e_hi``, ``drho`` [N, G, 1]; and the output interval ``lo``/``hi``."""

    k: torch.Tensor
    y_lo: torch.Tensor
    y_hi: torch.Tensor
    rem_w: torch.Tensor
    wc: torch.Tensor
    wr: torch.Tensor
    e_lo: torch.Tensor
    e_hi: torch.Tensor
    drho: torch.Tensor
    lo: torch.Tensor
    hi: torch.Tensor


def remainder_charge(a: torch.Tensor, ln: LayerNormLines) -> torch.Tensor:
    r"""Per coefficient row and group, an upper bound on :math:`-\sum_ia_i\gamma_iR_i` (the
    part of :math:`\langle a,y\rangle` below its planes): the smaller of the entrywise charge
    :math:`\sum_i|a_i\gamma_i|\,\mathrm{rem}_i` and the split one
    :math:`\max(-b\,e_{lo},-b\,e_{hi})+D\sum_i|a_i\gamma_i|r_i`, :math:`b=\sum_ia_i\gamma_ic_i`
    taken at the end of its rounding interval that maximises it
    (``docs/theory/layernorm.md`` §Backward step). ``a`` [N, S, G, n] -> [N, S, G]."""
    nn_ = a.shape[-1]
    aa = a.abs()
    old = (aa * ln.rem_w.unsqueeze(1)).sum(-1)
    b = (a * ln.wc.unsqueeze(1)).sum(-1)
    b_err = float(gamma(nn_ + 2)) * (aa * ln.wc.abs().unsqueeze(1)).sum(-1)
    e_lo, e_hi = ln.e_lo.squeeze(-1).unsqueeze(1), ln.e_hi.squeeze(-1).unsqueeze(1)
    new = (torch.maximum(-(b + b_err) * e_lo, -(b - b_err) * e_hi)
           + ln.drho.squeeze(-1).unsqueeze(1) * (aa * ln.wr.unsqueeze(1)).sum(-1))
    charge = torch.minimum(old, new) * (1 + float(gamma(nn_ + 4))) + 1e-300
    return torch.nan_to_num(charge, nan=math.inf)


class LayerNormRelaxation(RelaxationRule):
    r"""``crown``: per normalised group, :math:`\gamma\odot f(x)+\beta` with the Taylor plane of
    :func:`layernorm_taylor` (one slope matrix, scaled by :math:`\gamma`), its remainder charged
    per coefficient row :math:`a` as the smaller of :math:`\sum_i|a_i\gamma_i|\,\mathrm{rem}_i`
    and :math:`\max(-b\,e_{lo},-b\,e_{hi})+D\sum_i|a_i\gamma_i|r_i`, :math:`b=\sum_ia_i\gamma_ic_i`
    (``docs/theory/layernorm.md`` §Backward step); or the constant bounds (the planes' range
    met with :math:`\beta\pm|\gamma|\sqrt n`) on the outputs where those are narrower than the
    planes' band."""

    nonlinear = True

    def supports(self, node: Node) -> bool:
        return len(node.inputs) == 1

    @staticmethod
    def _groups(node: Node, t: torch.Tensor, lead: int) -> torch.Tensor:
        n = math.prod(node.attrs["normalized_shape"])
        return t.reshape(*t.shape[:lead], -1, n)

    def lines(self, node: Node, iv: Interval, centred: bool = False) -> LayerNormLines:
        """The relaxation over the input box ``iv`` (``centred``: the input is a ``center``
        node's, :func:`layernorm_taylor`)."""
        lo, hi = self._groups(node, iv.lo, 1), self._groups(node, iv.hi, 1)
        n = lo.shape[-1]
        t = layernorm_taylor(lo, hi, float(node.attrs["eps"]), centred)
        w = node.params["weight"].reshape(-1).to(lo)
        beta = node.params["bias"].reshape(-1).to(lo)
        u3 = float(gamma(3))
        k = w.unsqueeze(-1) * t.slope  # rows scaled by gamma_i
        mx = torch.maximum(lo.abs(), hi.abs())
        e_k = UNIT_ROUNDOFF * (k.abs() * mx.unsqueeze(-2)).sum(-1)

        def offsets(band: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            b_lo, b_hi = t.mid - band, t.mid + band
            wp, wn = w.clamp(min=0), w.clamp(max=0)
            e_b = u3 * ((w * b_lo).abs() + (w * b_hi).abs() + beta.abs()) + e_k
            return (wp * b_lo + wn * b_hi + beta - e_b, wp * b_hi + wn * b_lo + beta + e_b)

        y_lo, y_hi = offsets(t.comp)  # the plane with its rounding: remainder per row
        f_lo, f_hi = offsets(t.band())  # with the per-coordinate remainder
        # interval: the planes' range over the box, met with beta +- |gamma| sqrt(n)
        mid, rad = (lo + hi) / 2, (hi - lo) / 2
        kc = (k * mid.unsqueeze(-2)).sum(-1)
        kr = (k.abs() * rad.unsqueeze(-2)).sum(-1)
        e_i = float(gamma(n + 3)) * ((k * mid.unsqueeze(-2)).abs().sum(-1) + kr
                                     + f_lo.abs() + f_hi.abs())
        cap = w.abs() * math.sqrt(n) * (1 + u3)
        lo_y = torch.maximum(f_lo + kc - kr - e_i, beta - cap - u3 * beta.abs())
        hi_y = torch.minimum(f_hi + kc + kr + e_i, beta + cap + u3 * beta.abs())
        flat = ~((f_hi - f_lo) < (hi_y - lo_y))  # constant bounds narrower (or NaN)
        k = torch.where(flat.unsqueeze(-1), torch.zeros_like(k), k)
        lo_y = torch.nan_to_num(lo_y, nan=-math.inf)
        hi_y = torch.nan_to_num(hi_y, nan=math.inf)
        zero = torch.zeros_like(lo)
        up = 1 + 2 * UNIT_ROUNDOFF
        return LayerNormLines(
            k, torch.where(flat, lo_y, y_lo), torch.where(flat, hi_y, y_hi),
            torch.where(flat, zero, w.abs() * t.rem * up),
            torch.where(flat, zero, w * t.anchor),
            torch.where(flat, zero, w.abs() * t.half * up),
            t.e_lo, t.e_hi, t.drho, lo_y, hi_y)

    def evaluation_error(self, node: Node, ctx: RelaxContext, out: Interval
                         ) -> torch.Tensor | None:
        r"""The model's rounding of :math:`\gamma\odot d/\sigma+\beta`,
        :math:`\sigma=\sqrt{\mathrm{var}+\epsilon}`, computed from the raw input :math:`x`
        (:math:`|x|\le M`) by any summation of the mean and variance: the variance to a
        relative :math:`\gamma_{2n+16}\kappa`, :math:`\kappa=1+M/\sigma` (the updating
        algorithm's condition number, Chan, Golub & LeVeque 1983), so the normalised value
        :math:`f` to :math:`\gamma_{2n+16}(1+M/\sigma)|f|`; the centring to
        :math:`\gamma_{n+2}2M/\sigma`; the scale and shift to :math:`\gamma_3`. With
        :math:`\sigma\ge\sqrt{s_{\min}}` on the box and :math:`|f|\le\min(m/\sigma,\sqrt n)`
        (``docs/theory/numerics.md`` §4)."""
        ar = ctx.model_arith
        x = ctx.interval_in(node)
        centred = reads_centred(node, ctx.graph)
        raw = ctx.intervals[ctx.graph[node.inputs[0]].inputs[0]] if centred else x
        lo, hi = self._groups(node, x.lo, 1), self._groups(node, x.hi, 1)
        n = lo.shape[-1]
        big = self._groups(node, raw.mag, 1).amax(-1, keepdim=True)  # M >= |x|, |mean|
        if not centred:  # the box of d = x - mean(x), widened by twice its rounding
            s_lo, s_hi = lo.sum(-1, keepdim=True), hi.sum(-1, keepdim=True)
            slack = 2 * float(gamma(n + 4)) * big
            lo, hi = ((1 - 1 / n) * lo - (s_hi - hi) / n - slack,
                      (1 - 1 / n) * hi - (s_lo - lo) / n + slack)
        dmin = torch.where((lo <= 0) & (hi >= 0), torch.zeros_like(lo),
                           torch.minimum(lo.abs(), hi.abs()))
        g = float(gamma(n + 4))
        s_min = (dmin * dmin).sum(-1, keepdim=True) / n * (1 - g) + float(node.attrs["eps"]) * (
            1 - 2 * UNIT_ROUNDOFF)
        sig = torch.sqrt(s_min) * (1 - g)
        m = torch.maximum(lo.abs(), hi.abs())
        f = torch.minimum(m / sig, torch.full_like(m, math.sqrt(n)))
        w = node.params["weight"].reshape(-1).to(lo).abs()
        b = node.params["bias"].reshape(-1).to(lo).abs()
        rel = ar.gamma(2 * n + 16) * (1 + big / sig)
        rho = (w * (f * rel + ar.gamma(n + 2) * 2 * big / sig) + ar.gamma(3) * (w * f + b)
               + (2 * n + 16) * ar.eta)
        return rho.reshape(x.lo.shape[0], *node.out_shape) * (1 + 4 * g)

    def interval(self, node: Node, ctx: RelaxContext, ins: list[Interval]) -> Interval:
        ln = self.lines(node, ins[0], reads_centred(node, ctx.graph))
        n = ins[0].lo.shape[0]
        return Interval(ln.lo.reshape(n, *node.out_shape), ln.hi.reshape(n, *node.out_shape))

    def backward(self, node: Node, ctx: RelaxContext, lb: LinearBounds) -> list[LinearBounds]:
        x = ctx.interval_in(node)
        ln = ctx.derived(f"layernorm:{node.name}", x,
                         lambda: self.lines(node, x, reads_centred(node, ctx.graph)))
        a = self._groups(node, lb.A, 2)  # [N, S, G, n]
        nn_ = a.shape[-1]
        pos, neg = a.clamp(min=0), a.clamp(max=0)
        a_in = torch.einsum("nsgi,ngij->nsgj", a, ln.k)  # one slope matrix per group
        terms = pos * ln.y_lo.unsqueeze(1) + neg * ln.y_hi.unsqueeze(1)
        add = terms.flatten(2).sum(2)
        mag = self._groups(node, x.mag, 1)
        kx = torch.einsum("ngij,ngj->ngi", ln.k.abs(), mag)
        # the remainder, per row and group: the smaller of the entrywise charge and the split
        # one, max(-b e_lo, -b e_hi) + D sum |a| |gamma| r with b = sum a gamma c (+- its
        # rounding, which moves the max by at most that much times max(-e_lo, e_hi))
        aa = a.abs()
        charge = remainder_charge(a, ln)
        err = (float(gamma(nn_ + 2)) * (1 + float(gamma(nn_ + 1)))
               * (aa * kx.unsqueeze(1)).flatten(2).sum(2)
               + float(gamma(terms[0, 0].numel() + 2)) * terms.abs().flatten(2).sum(2)
               + charge.sum(2) * (1 + float(gamma(charge.shape[2] + 1))))
        a_in = a_in.reshape(lb.A.shape[0], lb.A.shape[1], *node.in_shapes[0])
        return [lb.then(a_in, add, err, ctx.intervals[node.name].mag)]


register_rule("layernorm", "crown", LayerNormRelaxation())
