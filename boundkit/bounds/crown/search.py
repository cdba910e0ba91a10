"""The per-sample radius search of ``crown`` and ``alpha`` over the margins' bound of the
relaxation built for each radius tried (docs/theory/linear_relaxation.md §The radius)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from boundkit.bounds.crown.run import CrownRun


#: before any failure the next radius goes this fraction of the way from the last pass to
#: the extrapolated root (m is concave in practice: the chord overshoots)
EXTRAPOLATE = 0.8
#: a radius that closes the bracket on one outcome is tried when the root estimate lies at
#: least this many rtol inside it
CLOSE_MARGIN = 0.25


def search_radius(run: CrownRun, label: torch.Tensor, lo: torch.Tensor, margin: torch.Tensor,
                  rtol: float = 1e-3, max_steps: int = 40, first: float = 2.0,
                  reach: torch.Tensor | None = None) -> torch.Tensor:
    r"""Per-sample radius search for the root of :math:`m(\varepsilon)`, the margin bound of
    the relaxation built for radius :math:`\varepsilon` (:class:`RadiusStep`; decreasing in
    practice, piecewise smooth with jumps where a neuron's relaxation changes, :math:`m(0)`
    the margin at :math:`x_0`).

    Every step certifies :math:`\min(\varepsilon,\varphi(\varepsilon))`, so ``lo``
    (certified on entry, e.g. the ``sound`` radius) only grows whatever :math:`m` does;
    ``hi`` is the smallest radius whose relaxation failed. The root is estimated by the
    secant through the last two radii tried, kept if it falls inside the bracket of the
    largest pass and the smallest failure, else by regula falsi on those two; before any
    failure, the step goes ``EXTRAPOLATE`` of the way to the secant's root, capped by
    :math:`\varphi` of the last pass (the root lies below it). The radius tried next:
    one that closes the bracket on one outcome (``lo (1 + rtol)``, closed by a failure, or
    ``hi / (1 + rtol)``, closed by a pass) when the estimate lies ``CLOSE_MARGIN`` rtol
    inside it, else just above the estimate (a failure there still certifies
    :math:`\varphi`, close below the root) or, once ``hi`` is close above it, just below.
    Outside the bracket: the geometric mean, or growth by 4x while nothing failed. Stops
    at ``hi <= lo (1 + rtol)`` per sample; ``first``: the first radius tried is
    ``first * lo``. ``reach`` [N] (:attr:`CrownRun.reach`): no larger radius is tried, and a
    pass at it certifies the whole box: the radius is then ``inf``."""
    n = lo.numel()
    lo = lo.clone()
    hi = torch.full_like(lo, math.inf)
    active = margin > 0
    nan = torch.full_like(lo, math.nan)
    # the last radius tried and its margin bound ((0, m(0)) before any), the pass end a
    # (m >= 0) and the fail end b
    x1, y1 = torch.zeros_like(lo), margin.clone()
    ea, ma, eb, mb = torch.zeros_like(lo), margin.clone(), nan.clone(), nan.clone()
    phia = torch.full_like(lo, math.inf)
    if reach is None:
        reach = torch.full_like(lo, math.inf)
    eps = torch.where(lo > 0, lo * first, torch.full_like(lo, 1e-2)).minimum(reach)
    for _ in range(max_steps):
        todo = active & ~(hi <= lo * (1 + rtol))
        if not bool(todo.any()):
            break
        idx = torch.nonzero(todo).flatten()
        sub = run.subset(idx) if idx.numel() < n else None
        if sub is None:
            st = run.evaluate(torch.where(todo, eps, lo.clamp(min=1e-300)), label)
            run.remember(todo & (st.certified < st.eps))
            phi, m, cert = st.phi[idx], st.bound[idx], st.certified[idx]
        else:
            st = sub.evaluate(eps[idx], label[idx])
            sub.remember(st.certified < st.eps)
            run.absorb(sub, idx)
            phi, m, cert = st.phi, st.bound, st.certified
        e = eps[idx]
        ok = cert >= e
        # a pass on a ball holding the whole box certifies every radius
        cert = torch.where(ok & (e >= reach[idx]), math.inf, cert)
        lo[idx] = torch.maximum(lo[idx], cert)
        hi[idx] = torch.where(ok, hi[idx], torch.minimum(hi[idx], e))
        p, q = x1[idx], y1[idx]  # the secant runs through (p, q) and (e, m)
        x1[idx], y1[idx] = e, m
        a_e, a_m = torch.where(ok, e, ea[idx]), torch.where(ok, m, ma[idx])
        b_e, b_m = torch.where(ok, eb[idx], e), torch.where(ok, mb[idx], m)
        ph = torch.where(ok, phi, phia[idx])
        ea[idx], ma[idx], eb[idx], mb[idx], phia[idx] = a_e, a_m, b_e, b_m, ph
        # root estimate
        secant = torch.where(q != m, e - m * (e - p) / (m - q), torch.full_like(e, math.nan))
        bracketed = torch.isfinite(b_e)
        inside = torch.isfinite(secant) & (secant > a_e) & (secant < b_e)
        falsi = a_e + a_m * (b_e - a_e) / (a_m - b_m)
        ahead = a_e + EXTRAPOLATE * (secant - a_e)
        est = torch.where(bracketed, torch.where(inside, secant, falsi),
                          torch.where(torch.isfinite(ahead) & (ahead > a_e),
                                      torch.minimum(ahead, ph), torch.full_like(e, math.inf)))
        l, h = lo[idx], hi[idx]
        below = h <= est * (1 + 0.75 * rtol)
        target = torch.where(below, est * (1 - 0.25 * rtol), est * (1 + 0.5 * rtol))
        close_fail = l * (1 + rtol) * (1 - 1e-9)  # a failure at or below it closes
        close_pass = h / (1 + rtol) * (1 + 1e-9)  # a pass at or above it closes
        target = torch.where(close_fail >= est * (1 + CLOSE_MARGIN * rtol), close_fail,
                             torch.where(close_pass <= est * (1 - CLOSE_MARGIN * rtol),
                                         close_pass, target))
        usable = torch.isfinite(target) & (target > l * (1 + 0.1 * rtol)) & (target < h)
        fallback = torch.where(torch.isinf(h), torch.where(l > 0, l * 4, e * 4),
                               torch.where(l > 0, torch.sqrt(l * h), h / 8))
        eps[idx] = torch.where(usable, target, fallback).minimum(reach[idx])
    return lo
