r"""Softmax inside the network (attention weights) and per-sample axis permutations.

A softmax that is the model's last node is an output squash (monotone: the graph's logits
skip it); one inside the network (``torch.softmax(scores, dim=-1)`` in attention) is bounded
here. Per group (all indices but the softmax axis fixed), :math:`x\in\mathbb{R}^K`,
:math:`y_i=e^{x_i}/\sum_j e^{x_j}` (``docs/theory/softmax.md``):

* ``sound``: the Jacobian :math:`J=\mathrm{diag}(y)-yy^\top` is symmetric with Gershgorin
  discs inside :math:`[0,\,2y_i(1-y_i)]\subseteq[0,\tfrac12]`, so the node is
  :math:`\tfrac12`-Lipschitz in L2 (softmax §1);
* ``crown`` interval: :math:`y_i\in[1/(1+\sum_{j\ne i}e^{u_j-l_i}),\;
  1/(1+\sum_{j\ne i}e^{l_j-u_i})]` (monotone in each argument, softmax §2);
* ``crown`` lines: the first-order Taylor plane at the box centre :math:`c` with a proven
  bound on the Lagrange remainder over the box,
  :math:`|R_i|\le\tfrac12\,Y_i\,(s_i^2+\sum_jY_jr_js_j)`,
  :math:`s_i=\sum_jY_jr_j+(1-\ell_i-Y_i)r_i` (:math:`[\ell,Y]` the interval of :math:`y`,
  :math:`r` the box's half-widths; softmax §3); in the backward step the remainder is
  charged per coefficient row, the smaller of that per-coordinate band and the row's charge
  from the exact split :math:`R_i=y_i\eta_i-y_i(y\cdot\eta)-ty_i(e^{\delta_i}-1)+
  t^2y_i(x)` (:func:`softmax_taylor`, :func:`softmax_remainder_charge`, softmax §3b), with
  the rounding of the plane's own computation; where the band is wider than the interval,
  the constant interval bound is used instead (softmax §4).

``permute`` (``x.transpose``, ``x.permute``) moves entries without arithmetic: an isometry
(``sound``), relaxed exactly by permuting the coefficients back (``crown``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from boundkit.bounds.numerics import UNIT_ROUNDOFF, gamma
from boundkit.bounds.registry import LipschitzRule, register_rule
from boundkit.bounds.relaxation import (
    Interval,
    LinearBounds,
    RelaxationRule,
    RelaxContext,
    dot,
)
from boundkit.errors import UnsupportedLayerError
from boundkit.graph.graph import Graph, Node

#: the smallest positive quantity added to bounds of values that may underflow
_TINY = 1e-300


def softmax_axis(node: Node) -> int:
    """The per-sample axis (batch excluded) a ``softmax`` node normalises over; refused
    (one line) for the batch axis or an implicit ``dim``."""
    dim = node.attrs.get("dim")
    rank = len(node.out_shape) + 1
    if not isinstance(dim, int) or isinstance(dim, bool) or not -rank <= dim < rank \
            or dim % rank == 0:
        raise UnsupportedLayerError(
            node.name, "softmax", why=f"dim={dim!r}: an in-network softmax needs an explicit "
            "dim other than the batch axis")
    return dim % rank - 1


def _eval_error(y: torch.Tensor, k: int) -> torch.Tensor:
    r"""A bound on :math:`|\hat y-y|` of torch's float64 softmax over ``k`` entries,
    element-wise: :math:`4\gamma_{2k+8}(\hat y+1)` (softmax §5: the shift by the maximum, the
    exponentials at 1 ulp, the sum and the division)."""
    return 4 * float(gamma(2 * k + 8)) * (y.abs() + 1.0)


class SoftmaxRule(LipschitzRule):
    r"""``sound``: :math:`\tfrac12`-Lipschitz (module docstring); rounding
    :math:`4\gamma_{2K+8}(\|y\|+\sqrt{n})` for ``n`` output entries (softmax §5)."""

    def compute_lipschitz(self, node: Node, graph: Graph) -> float:
        softmax_axis(node)
        return 0.5

    def rounding(self, node: Node, graph: Graph, in_norm: torch.Tensor,
                 out_norm: torch.Tensor) -> torch.Tensor:
        k = node.out_shape[softmax_axis(node)]
        return 4 * float(gamma(2 * k + 8)) * (out_norm + math.sqrt(node.out_numel))


def softmax_interval(lo: torch.Tensor, hi: torch.Tensor) -> Interval:
    r"""Sound bounds of softmax over the last axis on the box ``[lo, hi]`` (``[..., K]``):
    :math:`1/(1+\sum_{j\ne i}e^{u_j-l_i})\le y_i\le 1/(1+\sum_{j\ne i}e^{l_j-u_i})`, rounding
    charged (softmax §2, §5)."""
    k = lo.shape[-1]
    off = ~torch.eye(k, dtype=torch.bool, device=lo.device)
    # [..., i, j] = exp(u_j - l_i), exp(l_j - u_i), the diagonal excluded
    up = torch.where(off, torch.exp(hi.unsqueeze(-2) - lo.unsqueeze(-1)), 0.0).sum(-1)
    dn = torch.where(off, torch.exp(lo.unsqueeze(-2) - hi.unsqueeze(-1)), 0.0).sum(-1)
    y_lo, y_hi = 1.0 / (1.0 + up), 1.0 / (1.0 + dn)
    # each exponent d = u_j - l_i (or l_j - u_i) is rounded by u|d| <= u * span: a relative
    # error of about u * span in its exponential, on top of the libm's ulp and the sum
    span = (hi.amax(-1, keepdim=True) - lo.amin(-1, keepdim=True)).clamp(min=0)
    g = 2 * (float(gamma(2 * k + 8)) + (span + 2) * UNIT_ROUNDOFF)
    out_lo = (y_lo * (1 - g) - _TINY).clamp(0.0, 1.0)
    out_hi = (y_hi * (1 + g) + _TINY).clamp(0.0, 1.0)
    # an unbounded or NaN input interval: the trivial bounds
    return Interval(torch.nan_to_num(out_lo, nan=0.0), torch.nan_to_num(out_hi, nan=1.0))


@dataclass
class SoftmaxTaylor:
    r"""The Taylor plane of softmax at the box centre :math:`c` and what bounds its error
    (``docs/theory/softmax.md`` §3, §3b), per group ``[..., K]``:
    :math:`y(x)=\hat y+G(x-c)+R+\text{rounding}`, with per coordinate
    :math:`|R_i|\le` ``rem`` and, exactly,
    :math:`R_i=y_{c,i}\eta_i-y_{c,i}(y_c\cdot\eta)-t\,y_{c,i}(e^{\delta_i}-1)+t^2y_i`
    (:math:`\delta=x-c`, :math:`\eta_j=e^{\delta_j}-1-\delta_j\in[0,H_j]`,
    :math:`t=\sum_jy_{c,j}(e^{\delta_j}-1)`, :math:`|t|\le T`)."""

    #: slope [..., K, K]
    slope: torch.Tensor
    #: intercept [..., K]: plane = mid + slope x
    mid: torch.Tensor
    #: rounding of the plane (value, slopes, intercept) [..., K]
    comp: torch.Tensor
    #: the per-coordinate remainder bound [..., K]
    rem: torch.Tensor
    #: the computed softmax at c [..., K] and its error bound
    y: torch.Tensor
    eta: torch.Tensor
    #: H_j >= e^{r_j} - 1 - r_j, E_j >= e^{r_j} - 1 [..., K]
    h: torch.Tensor
    e: torch.Tensor
    #: T >= |t| and (y_c . H) upper bound [..., 1]
    t: torch.Tensor
    yh: torch.Tensor


def softmax_taylor(lo: torch.Tensor, hi: torch.Tensor, iv: Interval | None = None
                   ) -> SoftmaxTaylor:
    r"""The Taylor plane of softmax over the last axis on the box ``[lo, hi]`` and its error
    bounds (:class:`SoftmaxTaylor`; softmax §3, §3b, §5)."""
    k = lo.shape[-1]
    u = UNIT_ROUNDOFF
    c = (lo + hi) / 2
    # covers the box from c: the subtraction and this product round by at most 1 ulp each
    r = torch.maximum(hi - c, c - lo) * (1 + 4 * u) + _TINY
    y = torch.softmax(c, -1)
    eye = torch.eye(k, dtype=lo.dtype, device=lo.device)
    g = y.unsqueeze(-1) * (eye - y.unsqueeze(-2))  # [..., i, j] = y_i (d_ij - y_j)
    if iv is None:
        iv = softmax_interval(lo, hi)
    ly, uy = iv.lo, iv.hi
    yr = uy * r
    tot = yr.sum(-1, keepdim=True)
    s = tot + (1 - ly - uy).clamp(min=0) * r  # s_i >= sum_j D_ij r_j
    g_k = float(gamma(2 * k + 8))
    rem = 0.5 * uy * (s * s + (yr * s).sum(-1, keepdim=True)) * (1 + g_k)
    # the computed plane differs from the exact one at c: value eta_i, slopes 2(eta_i+eta_j)+2u
    eta = _eval_error(y, k)
    rsum = r.sum(-1, keepdim=True)
    dg = 2 * eta * rsum + 2 * (eta * r).sum(-1, keepdim=True) + 2 * u * rsum
    comp = (eta + dg) * (1 + g_k) + _TINY
    gc = (g * c.unsqueeze(-2)).sum(-1)  # sum_j G_ij c_j
    round_b = float(gamma(k + 4)) * ((g * c.unsqueeze(-2)).abs().sum(-1) + y + comp + rem)
    comp = comp + round_b
    # the split remainder's pieces, rounded up: e^r - 1 (expm1 within 1 ulp), and
    # e^r - 1 - r <= min(expm1(r) - r + 4u expm1(r), r^2 e^r / 2)
    em1 = torch.expm1(r) * (1 + 4 * u)
    h = torch.minimum(em1 - r + 4 * u * em1, 0.5 * r * r * torch.exp(r) * (1 + 8 * u))
    h = h.clamp(min=0) + _TINY
    yu = y + eta
    t = (yu * em1).sum(-1, keepdim=True) * (1 + g_k)
    yh = (yu * h).sum(-1, keepdim=True) * (1 + g_k)
    return SoftmaxTaylor(g, y - gc, comp, rem, y, eta, h, em1, t, yh)


def softmax_planes(lo: torch.Tensor, hi: torch.Tensor, iv: Interval | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""Taylor planes of softmax over the last axis on the box ``[lo, hi]`` (``[..., K]``):
    ``(G [..., K, K], b_lo [..., K], b_hi [..., K])`` with, for every x in the box,

    .. math:: b_{lo,i}+\sum_j G_{ij}x_j\;\le\;y_i(x)\;\le\;b_{hi,i}+\sum_j G_{ij}x_j

    in real arithmetic (the per-coordinate remainder and the plane's own rounding inside the
    offsets; softmax §3, §5)."""
    t = softmax_taylor(lo, hi, iv)
    band = t.comp + t.rem
    return t.slope, t.mid - band, t.mid + band


def softmax_remainder_charge(a: torch.Tensor, t: SoftmaxTaylor, keep: torch.Tensor,
                             y_lo: torch.Tensor, y_hi: torch.Tensor) -> torch.Tensor:
    r"""Per coefficient row and group, an upper bound on :math:`-\sum_{i\in\text{keep}}a_iR_i`
    (softmax §3b): the smaller of :math:`\sum|a_i|\,\mathrm{rem}_i` and
    :math:`-[\sum_i\min(a_i,0)\bar y_iH_i-\max(0,a\cdot y_c)(\bar y\cdot H)-T\sum_i|a_i|\bar y_i
    E_i+\min(0,T^2\sum_i\min(a_iY^{lo}_i,a_iY^{hi}_i))]`, :math:`\bar y=\hat y+\eta\ge y_c`.
    ``a`` [N, S, G, K], the group tensors [N, G, K(, 1)]; -> [N, S, G]."""
    k = a.shape[-1]
    an = torch.where(keep.unsqueeze(1), a, torch.zeros_like(a))
    aa = an.abs()
    yu = (t.y + t.eta).unsqueeze(1)
    old = (aa * t.rem.unsqueeze(1)).sum(-1)
    l1 = (an.clamp(max=0) * yu * t.h.unsqueeze(1)).sum(-1)
    ayc = (an * t.y.unsqueeze(1)).sum(-1) + (aa * (t.eta.unsqueeze(1) + float(gamma(k + 2))
                                                   * t.y.unsqueeze(1))).sum(-1)
    l2 = -ayc.clamp(min=0) * t.yh.squeeze(-1).unsqueeze(1)
    l3 = -t.t.squeeze(-1).unsqueeze(1) * (aa * yu * t.e.unsqueeze(1)).sum(-1)
    ay = torch.minimum(an * y_lo.unsqueeze(1), an * y_hi.unsqueeze(1)).sum(-1)
    l4 = ((t.t * t.t).squeeze(-1).unsqueeze(1) * ay).clamp(max=0)
    new = torch.nan_to_num(-(l1 + l2 + l3 + l4), nan=math.inf)
    charge = torch.minimum(old, new) * (1 + float(gamma(2 * k + 8))) + _TINY
    return torch.nan_to_num(charge, nan=math.inf)


class SoftmaxRelaxation(RelaxationRule):
    r"""``crown``: per output the Taylor plane (:meth:`split_lines`) or, where its
    per-coordinate band is wider than the interval, the interval's constant bound (softmax
    §4); the backward step charges each coefficient row the smaller of the band and its
    split-remainder charge (:func:`softmax_remainder_charge`, softmax §3b)."""

    nonlinear = True

    def supports(self, node: Node) -> bool:
        try:
            softmax_axis(node)
        except UnsupportedLayerError:
            return False
        return len(node.inputs) == 1

    @staticmethod
    def _last(node: Node, t: torch.Tensor, lead: int) -> torch.Tensor:
        """``t`` [*lead, *shape] with the softmax axis moved last."""
        return t.movedim(lead + softmax_axis(node), -1)

    @staticmethod
    def _back(node: Node, t: torch.Tensor, lead: int) -> torch.Tensor:
        return t.movedim(-1, lead + softmax_axis(node))

    def evaluation_error(self, node: Node, ctx: RelaxContext, out: Interval
                         ) -> torch.Tensor | None:
        r"""The model's :math:`e^{z_i-m}/\sum_je^{z_j-m}` (:math:`m=\max_jz_j`): the
        difference :math:`t_i=z_i-m` is rounded to a relative :math:`u`, which
        :math:`e^t` turns into a relative :math:`|t|ue^{|t|u}\le3u\,\Delta_i` (while
        :math:`\Delta_iu\le1`; both values lie in :math:`[0,1]`, so the error never exceeds 1)
        (:math:`\Delta_i=\max_ju_j-l_i\ge|t_i|`); libm's exponential, the sum of :math:`k`
        terms and the division add :math:`\gamma_{k+12}`: :math:`(\gamma_{k+12}+3u\Delta_i)
        |y_i|+(k+12)\eta` (``docs/theory/numerics.md`` §4)."""
        ar = ctx.model_arith
        x = ctx.interval_in(node)
        lo, hi = self._last(node, x.lo, 1), self._last(node, x.hi, 1)
        k = lo.shape[-1]
        spread = hi.amax(-1, keepdim=True) - lo
        rel = ar.gamma(k + 12) + 3 * ar.unit * spread
        rho = rel * self._last(node, out.mag, 1) + (k + 12) * ar.eta
        return self._back(node, rho.clamp(max=1.0), 1)

    def interval(self, node: Node, ctx: RelaxContext, ins: list[Interval]) -> Interval:
        iv = self._intervals(node, ctx, ins[0])
        return Interval(self._back(node, iv.lo, 1), self._back(node, iv.hi, 1))

    def _intervals(self, node: Node, ctx: RelaxContext, x: Interval) -> Interval:
        return softmax_interval(self._last(node, x.lo, 1), self._last(node, x.hi, 1))

    def lines(self, node: Node, ctx: RelaxContext, x: Interval
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(G_lo, b_lo, G_hi, b_hi)`` in the softmax-last layout [N, ..., K(, K)], the
        per-coordinate remainder inside the offsets (:func:`softmax_planes`)."""
        sl = self.split_lines(node, x)
        band = torch.where(sl.flat, torch.zeros_like(sl.taylor.rem), sl.taylor.rem)
        return (sl.slope, sl.b_lo - band, sl.slope, sl.b_hi + band)

    def split_lines(self, node: Node, x: Interval) -> SoftmaxLines:
        """The relaxation over the input box ``x`` with its remainder left to the rows
        (:class:`SoftmaxLines`), in the softmax-last layout."""
        lo, hi = self._last(node, x.lo, 1), self._last(node, x.hi, 1)
        iv = softmax_interval(lo, hi)
        t = softmax_taylor(lo, hi, iv)
        band = t.comp + t.rem
        flat = ~(2 * band < (iv.hi - iv.lo))  # the interval is narrower (or NaN)
        g_use = torch.where(flat.unsqueeze(-1), torch.zeros_like(t.slope), t.slope)
        return SoftmaxLines(g_use, torch.where(flat, iv.lo, t.mid - t.comp),
                            torch.where(flat, iv.hi, t.mid + t.comp), flat, t, iv)

    def backward(self, node: Node, ctx: RelaxContext, lb: LinearBounds) -> list[LinearBounds]:
        x = ctx.interval_in(node)
        sl = ctx.derived(f"softmax:{node.name}", x, lambda: self.split_lines(node, x))
        a = self._last(node, lb.A, 2)  # [N, S, ..., K(i)]
        n, s, k = a.shape[0], a.shape[1], a.shape[-1]
        shape = a.shape
        a = a.reshape(n, s, -1, k)  # [N, S, G, K]: G groups
        gs = sl.slope.reshape(n, -1, k, k)
        pos, neg = a.clamp(min=0), a.clamp(max=0)
        a_in = torch.einsum("nsgi,ngij->nsgj", a, gs)  # one slope matrix per group
        terms = pos * sl.b_lo.reshape(n, 1, -1, k) + neg * sl.b_hi.reshape(n, 1, -1, k)
        add = terms.flatten(2).sum(2)
        mag = self._last(node, x.mag, 1).reshape(n, -1, k)
        # sum_j (sum_i |a_i| |G_ij|) |x_j|  =  sum_i |a_i| (|G| |x|)_i
        gx = torch.einsum("ngij,ngj->ngi", gs.abs(), mag)
        t = sl.taylor

        def grp(v: torch.Tensor) -> torch.Tensor:
            return v.reshape(n, -1, v.shape[-1])

        tg = SoftmaxTaylor(t.slope, t.mid, t.comp, grp(t.rem), grp(t.y), grp(t.eta), grp(t.h),
                           grp(t.e), grp(t.t), grp(t.yh))
        charge = softmax_remainder_charge(a, tg, ~grp(sl.flat), grp(sl.iv.lo), grp(sl.iv.hi))
        err = (float(gamma(2 * k + 2)) * (1 + float(gamma(k + 1)))
               * (a.abs() * gx.unsqueeze(1)).flatten(2).sum(2)
               + float(gamma(terms[0, 0].numel() + 2)) * terms.abs().flatten(2).sum(2)
               + charge.sum(2) * (1 + float(gamma(charge.shape[2] + 1))))
        a_in = self._back(node, a_in.reshape(shape), 2)
        return [lb.then(a_in, add, err, ctx.intervals[node.name].mag)]


@dataclass
class SoftmaxLines:
    """A softmax node's relaxation in the softmax-last layout: the slope (zero where the
    interval is used), the offsets with the plane's rounding only (the interval's ends where
    ``flat``), the Taylor pieces whose remainder the rows are charged
    (:func:`softmax_remainder_charge`), and the output interval."""

    slope: torch.Tensor
    b_lo: torch.Tensor
    b_hi: torch.Tensor
    flat: torch.Tensor
    taylor: SoftmaxTaylor
    iv: Interval


class PermuteRule(LipschitzRule):
    """``sound``: a permutation of entries is an isometry, evaluated exactly."""

    exact_arithmetic = True

    def compute_lipschitz(self, node: Node, graph: Graph) -> float:
        return 1.0


class PermuteRelaxation(RelaxationRule):
    r"""``crown``: :math:`\langle A, P(z)\rangle=\langle P^{-1}(A), z\rangle` (exact)."""

    #: computed exactly by the model: a permutation moves entries without arithmetic (numerics §4)
    exact_arithmetic = True

    def error_transfer(self, node: Node, ctx: RelaxContext, errs: list[torch.Tensor]
                       ) -> torch.Tensor:
        """A permutation moves the bounds with the entries."""
        return errs[0].permute(0, *(d + 1 for d in node.attrs["dims"]))

    def interval(self, node: Node, ctx: RelaxContext, ins: list[Interval]) -> Interval:
        p = (0, *(d + 1 for d in node.attrs["dims"]))
        return Interval(ins[0].lo.permute(p), ins[0].hi.permute(p))

    def backward(self, node: Node, ctx: RelaxContext, lb: LinearBounds) -> list[LinearBounds]:
        dims = node.attrs["dims"]
        inv = [0] * len(dims)
        for out_axis, in_axis in enumerate(dims):
            inv[in_axis] = out_axis
        a_in = lb.A.permute(0, 1, *(d + 2 for d in inv))
        return [lb.then(a_in, 0.0, 0.0, ctx.intervals[node.name].mag)]


register_rule("softmax", "sound", SoftmaxRule())
register_rule("softmax", "crown", SoftmaxRelaxation())
register_rule("permute", "sound", PermuteRule())
register_rule("permute", "crown", PermuteRelaxation())

__all__ = ["PermuteRelaxation", "PermuteRule", "SoftmaxLines", "SoftmaxRelaxation",
           "SoftmaxRule", "SoftmaxTaylor", "dot", "softmax_axis", "softmax_interval",
           "softmax_planes", "softmax_remainder_charge", "softmax_taylor"]
