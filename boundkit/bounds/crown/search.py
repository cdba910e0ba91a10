"""The per-sample radius search of ``crown`` and ``alpha`` over the margins' bound of the
relaxation built for each radius tried (docs/theory/linear_relaxation.md §The radius)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from boundkit.bounds.crown.run import CrownRun


#: before any failure the next radius goes this fraction of the way from the last pass to
#: the extrapolated root (m is concave in practice: the chord overshoots)
EXTRAPOLATE = 0.8
#: a radius that closes the bracket on one outcome is tried when the root estimate lies at
#: least this many aim widths inside it
CLOSE_MARGIN = 0.25
#: the relative width the search aims to close the bracket to in one step (AIM while the
#: bracket is wider, then a quarter of its width): it does not depend on rtol, so the radii
#: tried are the same for every rtol and a tighter rtol only searches longer
#: (docs/theory/linear_relaxation.md §The radius)
AIM = 1e-3
#: an interpolation step that leaves more than this fraction of the bracket's log-width
#: stalls: after three stalls in a row, or one that passed with m hardly below the last
#: pass's (more than FLAT of it: m is flat, then falls off a cliff, and regula falsi keeps
#: landing next to the pass end), the next step bisects in log space, so the log-width at
#: least halves every four steps, every two on a cliff
SHRINK = 0.5
FLAT = 0.5
STALLS = 3
#: the most relaxations the search evaluates per sample; a sample stopped by it before its
#: bracket closed to rtol is reported (``RadiusSearch.capped``)
MAX_EVALUATIONS = 64


@dataclass
class RadiusSearch:
    """What :func:`search_radius` found, per sample [N]: ``radius`` certified (the largest
    radius certified by any step, at least the ``lo`` it started from); ``fail`` the smallest
    radius whose relaxation failed (``inf``: none tried; the search stops once ``fail <=
    radius (1 + rtol)``); ``evaluations`` the relaxations evaluated; ``capped`` where the
    evaluation limit stopped the search before the bracket closed to rtol."""

    radius: torch.Tensor
    fail: torch.Tensor
    evaluations: torch.Tensor
    capped: torch.Tensor
    #: the radius certified when the bracket first closed to the ``coarse`` tolerance (the
    #: final radius where it never did): the same for every rtol up to ``coarse``
    coarse: torch.Tensor


def search_radius(run: CrownRun, label: torch.Tensor, lo: torch.Tensor, margin: torch.Tensor,
                  rtol: float = 1e-3, max_evaluations: int = MAX_EVALUATIONS,
                  first: float = 2.0, reach: torch.Tensor | None = None,
                  coarse: float = 1e-2) -> RadiusSearch:
    r"""Per-sample radius search for the root of :math:`m(\varepsilon)`, the margin bound of
    the relaxation built for radius :math:`\varepsilon` (:class:`RadiusStep`; decreasing in
    practice but not always, piecewise smooth with jumps where a neuron's relaxation
    changes, on deep networks a cliff of several orders of magnitude; :math:`m(0)` the
    margin at :math:`x_0`).

    Every step certifies :math:`\min(\varepsilon,\varphi(\varepsilon))`, so ``lo``
    (certified on entry, e.g. the ``sound`` radius) only grows whatever :math:`m` does;
    ``hi`` is the smallest radius whose relaxation failed. Before any failure the step goes
    ``EXTRAPOLATE`` of the way to the secant's root (else grows 4x). Once bracketed, the
    root is estimated by the secant through the last two radii tried where it falls inside
    ``(lo, hi)``, else by regula falsi on the pass and fail ends with the Illinois rule (the
    value of an end kept twice in a row is halved), capped by :math:`\varphi` of the pass
    end (the root lies below it where :math:`m` decreases). The radius tried: one that
    closes the bracket to the aim width :math:`\tau` (``AIM`` while the bracket's relative
    width w exceeds it, then w/4) on one outcome when the estimate lies ``CLOSE_MARGIN``
    :math:`\tau` inside it, else just above the estimate (a failure there still certifies
    :math:`\varphi`) or, once ``hi`` is close above it, just below. An interpolation step
    that leaves more than ``SHRINK`` of the bracket's log-width stalls; a stall whose pass
    has :math:`m` above ``FLAT`` times the last pass's (a flat :math:`m` before a cliff:
    regula falsi lands next to the pass end again and again), or ``STALLS`` stalls in a
    row (single stalls are normal: a pass just above the last, next to an accurate
    estimate, before the step that closes the bracket), is followed by a bisection in log
    space, so the log-width at least halves every four steps (two on a cliff); an unusable
    estimate bisects at once.

    The radii tried do not depend on ``rtol``: it only decides when a sample stops
    (``hi <= lo (1 + rtol)``), so a tighter rtol continues the same sequence and never
    returns a smaller radius. A sample stops after ``max_evaluations`` evaluations at the
    latest (``RadiusSearch.capped``). ``first``: the first radius tried is ``first * lo``
    (1e-2 where ``lo`` is 0); a sample with nothing certified whose failures reach 1e-9 of
    that first radius stops at 0. ``reach`` [N] (:attr:`CrownRun.reach`): no larger radius is
    tried, and a pass at it certifies the whole box: the radius is then ``inf``.
    ``coarse``: the tolerance of ``RadiusSearch.coarse``."""
    n = lo.numel()
    lo = lo.clone()
    hi = torch.full_like(lo, math.inf)
    active = margin > 0
    nan = torch.full_like(lo, math.nan)
    evals = torch.zeros(n, dtype=torch.long, device=lo.device)
    # the last radius tried and its margin bound ((0, m(0)) before any); the pass end a
    # (the largest radius that passed, its m and phi) and the fail end b (the smallest that
    # failed); fa, fb: the ends' values as regula falsi uses them (Illinois-halved)
    x1, y1 = torch.zeros_like(lo), margin.clone()
    ea, fa, eb, fb = torch.zeros_like(lo), margin.clone(), nan.clone(), nan.clone()
    phia = torch.full_like(lo, math.inf)
    side = torch.zeros(n, dtype=torch.int8, device=lo.device)  # end replaced last: +1 a, -1 b
    stalls = torch.zeros(n, dtype=torch.int8, device=lo.device)
    ma = margin.clone()  # m at the pass end, not halved
    at_coarse = torch.full_like(lo, math.nan)
    if reach is None:
        reach = torch.full_like(lo, math.inf)
    eps = torch.where(lo > 0, lo * first, torch.full_like(lo, 1e-2)).minimum(reach)
    # nothing certified and failures down to 1e-9 of the first radius tried: the margin is
    # within the charged rounding at x itself; the radius is 0 (closed, not capped)
    floor = eps * 1e-9
    while True:
        open_ = active & ~(hi <= lo * (1 + rtol)) & ~((lo == 0) & (hi <= floor))
        todo = open_ & (evals < max_evaluations)
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
        evals[idx] += 1
        e = eps[idx]
        l0, h0 = lo[idx], hi[idx]
        width0 = torch.log(h0 / l0)  # inf while unbracketed or lo = 0
        ok = cert >= e
        # a pass on a ball holding the whole box certifies every radius
        cert = torch.where(ok & (e >= reach[idx]), math.inf, cert)
        l, h = torch.maximum(l0, cert), torch.where(ok, h0, torch.minimum(h0, e))
        lo[idx], hi[idx] = l, h
        at_coarse[idx] = torch.where(torch.isnan(at_coarse[idx]) & (h <= l * (1 + coarse)), l,
                                     at_coarse[idx])
        # the ends, with the Illinois rule: an end kept on two steps in a row is halved
        sd = side[idx]
        a_e, b_e = torch.where(ok, e, ea[idx]), torch.where(ok, eb[idx], e)
        a_f = torch.where(ok, m, torch.where(sd == -1, 0.5 * fa[idx], fa[idx]))
        b_f = torch.where(ok, torch.where(sd == 1, 0.5 * fb[idx], fb[idx]), m)
        ph = torch.where(ok, phi, phia[idx])
        ea[idx], fa[idx], eb[idx], fb[idx], phia[idx] = a_e, a_f, b_e, b_f, ph
        side[idx] = torch.where(ok, 1, -1).to(torch.int8)
        # the rate guarantee: interpolation steps that did not shrink the log-width enough
        # are followed by a bisection (at once where m is flat, else after STALLS)
        width = torch.log(h / l)
        stall = torch.isfinite(width0) & (width > SHRINK * width0)
        flat = stall & ok & (ma[idx] > 0) & (m > FLAT * ma[idx])
        ma[idx] = torch.where(ok, m, ma[idx])
        st_n = torch.where(stall, stalls[idx] + 1, torch.zeros_like(stalls[idx]))
        bisect = flat | (st_n >= STALLS)
        stalls[idx] = torch.where(bisect, 0, st_n).to(torch.int8)
        # root estimate
        p, q = x1[idx], y1[idx]  # the secant runs through (p, q) and (e, m)
        x1[idx], y1[idx] = e, m
        secant = torch.where(q != m, e - m * (e - p) / (m - q), torch.full_like(e, math.nan))
        bracketed = torch.isfinite(h)
        inside = torch.isfinite(secant) & (secant > l) & (secant < h)
        falsi = a_e + a_f * (b_e - a_e) / (a_f - b_f)
        ahead = a_e + EXTRAPOLATE * (secant - a_e)
        est = torch.where(bracketed, torch.where(inside, secant, falsi),
                          torch.where(torch.isfinite(ahead) & (ahead > a_e), ahead,
                                      torch.full_like(e, math.inf))).minimum(ph)
        w = torch.where(bracketed & (l > 0), h / l - 1, torch.full_like(l, math.inf))
        tau = torch.where(w > AIM, torch.full_like(l, AIM), w / 4)
        below = h <= est * (1 + 0.75 * tau)
        target = torch.where(below, est * (1 - 0.25 * tau), est * (1 + 0.5 * tau))
        close_fail = l * (1 + tau) * (1 - 0.01 * tau)  # a failure at or below it closes
        close_pass = h / (1 + tau) * (1 + 0.01 * tau)  # a pass at or above it closes
        target = torch.where(close_fail >= est * (1 + CLOSE_MARGIN * tau), close_fail,
                             torch.where(close_pass <= est * (1 - CLOSE_MARGIN * tau),
                                         close_pass, target))
        usable = (torch.isfinite(target) & (target > l * (1 + 0.1 * tau)) & (target < h)
                  & ~bisect)
        fallback = torch.where(torch.isinf(h), torch.where(l > 0, l * 4, e * 4),
                               torch.where(l > 0, torch.sqrt(l * h), h / 8))
        eps[idx] = torch.where(usable, target, fallback).minimum(reach[idx])
    return RadiusSearch(lo, hi, evals, open_, torch.where(torch.isnan(at_coarse), lo, at_coarse))
