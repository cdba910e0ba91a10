r"""Acceleration: refined bounds kept across the radii of one search.

A relaxation built for a ball holds on every smaller one (docs/theory/linear_relaxation.md
§The radius), so the refined bounds of a step that failed at radius :math:`\varepsilon_k`
are valid for every later radius tried (all below it) and are met with the fresh ones.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from boundkit.bounds.crown.concrete import Concrete
from boundkit.bounds.relaxation import Interval

if TYPE_CHECKING:
    from boundkit.bounds.crown.run import CrownRun


@dataclass
class Remembered:
    r"""Bounds of a refined node that hold on every ball of radius up to ``radius`` [N]
    (``-inf`` rows: none): :math:`h\ge` ``lo.at(eps)`` and :math:`-h\ge` ``neg_hi.at(eps)``
    for every :math:`\varepsilon\le` ``radius`` ([N, M] each; a relaxation built for a ball
    holds on every smaller one, docs/theory/linear_relaxation.md §The radius)."""

    radius: torch.Tensor
    lo: Concrete
    neg_hi: Concrete

    def rows(self, idx: torch.Tensor) -> Remembered:
        return Remembered(self.radius[idx], self.lo.rows(idx), self.neg_hi.rows(idx))

    def recall(self, eps: torch.Tensor, shape: torch.Size) -> Interval:
        """The remembered bounds at radii ``eps`` [N], infinite where they do not hold."""
        ok = (eps <= self.radius).unsqueeze(1)
        inf = torch.full_like(self.lo.c, math.inf)
        lo = torch.where(ok, self.lo.at(eps), -inf)
        hi = torch.where(ok, -self.neg_hi.at(eps), inf)
        return Interval(lo.reshape(shape), hi.reshape(shape))

    @staticmethod
    def none(n: int, like: torch.Tensor) -> Remembered:
        """Nothing kept for ``n`` samples (radius ``-inf``), shaped as ``like`` [*, M]."""
        shape = (n, *like.shape[1:])
        return Remembered(like.new_full((n,), -math.inf),
                          Concrete(like.new_zeros(shape), like.new_zeros(shape)),
                          Concrete(like.new_zeros(shape), like.new_zeros(shape)))


class KeptBounds:
    """The acceleration: where it applies, what a refinement meets its fresh bounds with,
    what it keeps, and how kept bounds move between a run and a subset of it. The kept
    bounds themselves are per-sample state (``Samples.kept``); the bounds of the step being
    evaluated wait in ``Scratch.pending`` until the search says the step failed."""

    @staticmethod
    def applies(run: CrownRun) -> bool:
        """Not under split constraints: bounds built there hold on the ball's part that
        satisfies the splits only, so they are neither kept nor (for simplicity of that
        invariant) used."""
        return run.splits is None

    def recall(self, run: CrownRun, name: str, eps: torch.Tensor, iv: Interval) -> Interval:
        """``iv`` met with the bounds kept for node ``name`` at radii ``eps``."""
        kept = run.samples.kept.get(name) if self.applies(run) else None
        return iv if kept is None else iv.meet(kept.recall(eps, iv.lo.shape))

    def hold(self, run: CrownRun, name: str, eps: torch.Tensor, lo: torch.Tensor,
             hi: torch.Tensor, idx: torch.Tensor, win_lo: torch.Tensor, win_hi: torch.Tensor,
             c: torch.Tensor, nu: torch.Tensor) -> None:
        r"""The refined bounds of node ``name`` as functions of the radius, pending until
        :meth:`remember`: a walk's :math:`c-\varepsilon\nu` where it won, else the bound at
        ``eps`` itself (a constant, valid on every smaller ball)."""
        if not self.applies(run):
            return
        k = idx.shape[1]
        lo_c, hi_c = lo.detach().clone(), (-hi).detach().clone()
        lo_nu, hi_nu = torch.zeros_like(lo_c), torch.zeros_like(hi_c)
        c, nu = c.detach(), nu.detach()
        lo_c.scatter_(1, idx, torch.where(win_lo, c[:, :k], lo_c.gather(1, idx)))
        lo_nu.scatter_(1, idx, torch.where(win_lo, nu[:, :k], lo_nu.gather(1, idx)))
        hi_c.scatter_(1, idx, torch.where(win_hi, c[:, k:], hi_c.gather(1, idx)))
        hi_nu.scatter_(1, idx, torch.where(win_hi, nu[:, k:], hi_nu.gather(1, idx)))
        run.scratch.pending[name] = Remembered(eps.detach().clone(), Concrete(lo_c, lo_nu),
                                               Concrete(hi_c, hi_nu))

    @staticmethod
    def remember(run: CrownRun, keep: torch.Tensor) -> None:
        """Keep the last evaluation's refined bounds for the samples ``keep`` [N] (bool):
        those whose step failed, so every later radius tried lies below it. Kept bounds
        only ever serve radii up to the one they were built for."""
        memory = run.samples.kept
        for k, p in run.scratch.pending.items():
            m = memory.get(k)
            if m is None:
                r = torch.where(keep, p.radius, torch.full_like(p.radius, -math.inf))
                memory[k] = Remembered(r, p.lo, p.neg_hi)
                continue
            take = keep & (p.radius < m.radius) | keep & ~torch.isfinite(m.radius)
            m.radius = torch.where(take, p.radius, m.radius)
            m.lo, m.neg_hi = m.lo.where(take, p.lo), m.neg_hi.where(take, p.neg_hi)
        run.scratch.pending = {}

    @staticmethod
    def absorb(run: CrownRun, sub: CrownRun, idx: torch.Tensor) -> None:
        """Take back the kept bounds of ``sub`` (rows ``idx`` of ``run``)."""
        memory = run.samples.kept
        for k, m in sub.samples.kept.items():
            mine = memory.get(k)
            if mine is None:  # nothing kept for the other rows: radius -inf
                mine = memory[k] = Remembered.none(run.n, m.lo.c)
            mine.radius[idx] = m.radius
            mine.lo.put(idx, m.lo)
            mine.neg_hi.put(idx, m.neg_hi)


#: the one instance the engine uses
KEPT = KeptBounds()
