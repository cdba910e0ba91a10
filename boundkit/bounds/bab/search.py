r"""The ReLU-splitting search: the roots of a batch of samples (one domain per competing
class, the root's intervals computed once per sample) and one batch's bounding and
branching, on the loop of :mod:`~boundkit.bounds.bab.loop` (batches, priorities, budgets,
the per-sample answer)."""

from __future__ import annotations

import dataclasses

import torch

from boundkit.bounds.bab.bounding import Bounded, Bounder
from boundkit.bounds.bab.branching import branch
from boundkit.bounds.bab.domains import Domains
from boundkit.bounds.bab.loop import Expansion, Reason, Search, Solved, Verdict
from boundkit.bounds.bab.options import STUCK_ITERATIONS

#: the words of ``VerifyResult.status`` (:attr:`Verdict.word`)
VERIFIED, FALSIFIED, UNKNOWN = (Verdict.VERIFIED.word, Verdict.FALSIFIED.word,
                                Verdict.UNKNOWN.word)

__all__ = ["FALSIFIED", "UNKNOWN", "VERIFIED", "BranchAndBound", "Solved"]


class BranchAndBound(Bounder, Search[Domains]):
    """The search for one batch of samples at radii ``eps`` [N] (the samples' labels
    ``label`` [N]), on a :class:`CrownRun` built with the plan's rules; :meth:`solve` (the
    loop's) returns a :class:`~boundkit.bounds.bab.loop.Solved`."""

    stuck_reason = Reason.STUCK_RELU

    def branch(self, dom: Domains, b: Bounded) -> tuple[Domains, torch.Tensor]:
        """:func:`~boundkit.bounds.bab.branching.branch` with this search's shapes and
        warm-start limit."""
        return branch(dom, b, self.shapes, self.opt.warm_elements)

    def with_root_intervals(self, root: Domains, idx: torch.Tensor) -> Domains:
        """``root`` (domains without splits of the samples ``idx``, sorted, unique) with the
        intervals of the plan's kept nodes computed once per sample, not once per domain
        (with one domain per competing class the root otherwise refines every sample's
        intermediate bounds C - 1 times, the same bounds each time)."""
        if not len(root):
            return root
        sub = self.run.subset(idx)
        if sub is None:  # plan_bab refuses the nodes that would prevent it
            raise AssertionError("branch and bound needs a run that can be subset")
        with torch.no_grad():
            ctx = sub.intervals(self.eps[idx])
        pos = torch.searchsorted(idx, root.sample)
        lo = {k: ctx.intervals[k].lo[pos] for k in self.plan.kept}
        hi = {k: ctx.intervals[k].hi[pos] for k in self.plan.kept}
        return dataclasses.replace(root, lo=lo, hi=hi, age=torch.zeros_like(root.sample))

    def roots(self, idx: torch.Tensor) -> Domains:
        """The samples' root domains (no split): one per competing class (``per_class``)
        or one per sample, with the intervals of the plan's kept nodes."""
        dev = self.eps.device
        c = self.graph.num_classes
        root = Domains(idx, {}, torch.zeros(idx.numel(), c, dtype=torch.bool, device=dev))
        if self.opt.per_class:  # one domain per competing class
            lab = self.label[idx]
            cls = torch.arange(c, device=dev).repeat(idx.numel())
            smp = idx.repeat_interleave(c)
            other = cls != lab.repeat_interleave(c)
            root = Domains(smp[other], {}, torch.zeros(int(other.sum()), 1, dtype=torch.bool,
                                                       device=dev), cls=cls[other])
        return self.with_root_intervals(root, idx)

    def expand(self, batch: Domains) -> Expansion[Domains]:
        """Bound ``batch``, split its unproven domains; a domain with nothing left to split
        gets :data:`STUCK_ITERATIONS` steps on its multipliers before it is given up."""
        b = self.bound(batch)
        open_ = torch.nonzero(~b.proven).flatten()
        kids, stuck_rows = None, None
        if open_.numel():
            kids, stuck = self.branch(batch.rows(open_), dataclasses.replace(
                b, scores={k: v[open_] for k, v in b.scores.items()},
                alpha={k: v[open_] for k, v in b.alpha.items()},
                beta={k: v[open_] for k, v in b.beta.items()}, done=b.done[open_],
                lo={k: v[open_] for k, v in b.lo.items()},
                hi={k: v[open_] for k, v in b.hi.items()},
                radius=None if b.radius is None else b.radius[open_]))
            if bool(stuck.any()):
                # nothing left to split: the multipliers of the splits are what can
                # still prove it (the network is affine on the domain's set)
                rows = open_[stuck]
                sd = batch.rows(rows)
                b2 = self.bound(sd, max(self.opt.iterations, STUCK_ITERATIONS))
                still = torch.nonzero(~b2.proven).flatten()
                if still.numel():
                    rad = torch.maximum(b.radius[rows], b2.radius)
                    stuck_rows = dataclasses.replace(sd.rows(still), radius=rad[still])
        return Expansion(kids, stuck_rows)
