r"""GroupSort and MaxMin (:mod:`boundkit.models.layers`).

**Sound** (``docs/theory/groupsort.md``): sorting a group is 1-Lipschitz in L2. For
vectors :math:`a,b` of one group, :math:`\|s(a)-s(b)\|^2=\|a\|^2+\|b\|^2-2\langle s(a),
s(b)\rangle` and :math:`\langle s(a),s(b)\rangle\ge\langle a,b\rangle` (rearrangement
inequality: similarly ordered sequences maximise the sum of products), so
:math:`\|s(a)-s(b)\|\le\|a-b\|`; groups are disjoint, so the layer is 1-Lipschitz.
Comparisons and moves are exact in floating point.

**crown** (groups of two): for a pair :math:`(a,b)` with intervals, if
:math:`l_a\ge u_b` the output is :math:`(a,b)`, if :math:`l_b\ge u_a` it is :math:`(b,a)`;
otherwise, with :math:`d=a-b\in[d_l,d_u]`, :math:`d_l=l_a-u_b<0<d_u=u_a-l_b`:
:math:`\max(a,b)=b+\mathrm{relu}(d)`, :math:`\min(a,b)=a-\mathrm{relu}(d)`, and the ReLU's
lines :math:`\lambda d\le\mathrm{relu}(d)\le sd+t` (:math:`\lambda\in\{0,1\}`, :math:`s` the
chord slope, :math:`t=\max(-sd_l,(1-s)d_u)` the exact offset for that slope: valid for any
:math:`s`, ``relu(d) - sd`` is convex). Larger groups go through the ``sound`` modulus.
"""

from __future__ import annotations

import torch

from boundkit.bounds.numerics import UNIT_ROUNDOFF, gamma
from boundkit.bounds.registry import LipschitzRule, register_rule
from boundkit.bounds.relaxation import Interval, LinearBounds, RelaxationRule, RelaxContext
from boundkit.graph.graph import Graph, Node


class GroupSortRule(LipschitzRule):
    """Sound: a permutation within each group, 1-Lipschitz (module docstring); exact."""

    exact_arithmetic = True

    def compute_lipschitz(self, node: Node, graph: Graph) -> float:
        return 1.0


def pair_views(node: Node, t: torch.Tensor, axis: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The two members ``(a, b)`` of every pair of a groups-of-two node, as views of ``t``
    whose features are on ``axis`` (the output has the same arrangement: max at ``a``'s
    place, min at ``b``'s)."""
    c = t.shape[axis]
    if node.attrs["layout"] == "strided":
        u = t.unflatten(axis, (2, c // 2))
        return u.select(axis, 0), u.select(axis, 1)
    u = t.unflatten(axis, (c // 2, 2))
    return u.select(axis + 1, 0), u.select(axis + 1, 1)


def _merge(node: Node, a: torch.Tensor, b: torch.Tensor, axis: int) -> torch.Tensor:
    """Inverse of :func:`pair_views`."""
    if node.attrs["layout"] == "strided":
        return torch.stack([a, b], axis).flatten(axis, axis + 1)
    return torch.stack([a, b], axis + 1).flatten(axis, axis + 1)


def pair_lines(la: torch.Tensor, ua: torch.Tensor, lb: torch.Tensor, ub: torch.Tensor
               ) -> tuple[torch.Tensor, ...]:
    r"""The lines of :math:`(\max(a,b),\min(a,b))` for :math:`a\in[l_a,u_a]`,
    :math:`b\in[l_b,u_b]`: weights :math:`w` of lines :math:`wa+(1-w)b` (plus
    :math:`t` for the max's upper line, minus :math:`t` for the min's lower line), returned
    as ``(max_lo, max_hi, min_lo, min_hi, t)`` (module docstring)."""
    lb_ = lb
    # d = a - b in [dl, du], rounded outwards
    dl, du = la - ub, ua - lb_
    dl = dl - 2 * UNIT_ROUNDOFF * dl.abs() - 1e-300
    du = du + 2 * UNIT_ROUNDOFF * du.abs() + 1e-300
    a_wins, b_wins = dl >= 0, du <= 0
    unstable = ~(a_wins | b_wins)
    width = torch.where(unstable, du - dl, torch.ones_like(du))
    s = torch.where(unstable, du / width, torch.zeros_like(du)).clamp(0.0, 1.0)
    # relu(d) <= s d + t on [dl, du] for this s: the convex relu(d) - s d peaks at an end
    t = torch.maximum(-s * dl, (1 - s) * du)
    # plus the rounding of the weights 1 - s, 1 - lam used for b (a few ulps of |a|, |b|)
    mags = la.abs() + ua.abs() + lb.abs() + ub.abs()
    t = torch.where(unstable, t + 4 * UNIT_ROUNDOFF * (t.abs() + (s * dl).abs() + du.abs()
                                                       + mags), torch.zeros_like(t))
    lam = (du > -dl).to(du.dtype)
    one = torch.ones_like(du)
    # max = b + relu(d) = wa * a + (1 - wa) * b (+ const), min = a - relu(d)
    # lower line of max: lam a + (1-lam) b; upper: s a + (1-s) b + t
    # lower line of min: (1-s) a + s b - t; upper: (1-lam) a + lam b
    max_lo = torch.where(a_wins, one, torch.where(b_wins, 0 * one, lam))
    max_hi = torch.where(a_wins, one, torch.where(b_wins, 0 * one, s))
    min_lo = torch.where(a_wins, 0 * one, torch.where(b_wins, one, 1 - s))
    min_hi = torch.where(a_wins, 0 * one, torch.where(b_wins, one, 1 - lam))
    return max_lo, max_hi, min_lo, min_hi, t


class MaxMinRelaxation(RelaxationRule):
    """``crown``: groups of two, the max-of-two relaxation of the module docstring."""

    nonlinear = True

    def supports(self, node: Node) -> bool:
        return node.attrs["group_size"] == 2

    #: computed exactly by the model: a maximum or minimum is one of the inputs (numerics §4)
    exact_arithmetic = True

    def interval(self, node: Node, ctx: RelaxContext, ins: list[Interval]) -> Interval:
        la, lb_ = pair_views(node, ins[0].lo, 1)
        ua, ub = pair_views(node, ins[0].hi, 1)
        lo = _merge(node, torch.maximum(la, lb_), torch.minimum(la, lb_), 1)
        hi = _merge(node, torch.maximum(ua, ub), torch.minimum(ua, ub), 1)
        return Interval(lo, hi)

    def backward(self, node: Node, ctx: RelaxContext, lb: LinearBounds) -> list[LinearBounds]:
        iv = ctx.interval_in(node)
        la, lb_ = pair_views(node, iv.lo, 1)
        ua, ub = pair_views(node, iv.hi, 1)
        max_lo, max_hi, min_lo, min_hi, t = pair_lines(la, ua, lb_, ub)
        A = lb.A
        am, an = pair_views(node, A, 2)  # coefficients on the max and on the min
        amp, amn = am.clamp(min=0), am.clamp(max=0)
        anp, ann = an.clamp(min=0), an.clamp(max=0)
        u = lambda w: w.unsqueeze(1)  # noqa: E731  [N, ...] -> [N, 1, ...]
        coef_a = amp * u(max_lo) + amn * u(max_hi) + anp * u(min_lo) + ann * u(min_hi)
        coef_b = (amp * u(1 - max_lo) + amn * u(1 - max_hi) + anp * u(1 - min_lo)
                  + ann * u(1 - min_hi))
        const = amn * u(t) - anp * u(t)  # both terms <= 0
        a_in = _merge(node, coef_a, coef_b, 2)
        add = const.flatten(2).sum(2)
        # each coefficient: four products and three sums (gamma_5 of the magnitudes), the
        # 1 - w weights one more rounding each; the constant's sum gamma_{k+1}
        mag_a, mag_b = pair_views(node, iv.mag, 1)
        mags = (am.abs() + an.abs()) * (u(mag_a) + u(mag_b))
        k = A[0, 0].numel()
        err = (float(gamma(8)) * mags.flatten(2).sum(2)
               + float(gamma(k + 2)) * const.abs().flatten(2).sum(2))
        return [lb.then(a_in, add, err, ctx.intervals[node.name].mag)]


register_rule("groupsort", "sound", GroupSortRule())
register_rule("groupsort", "crown", MaxMinRelaxation())
