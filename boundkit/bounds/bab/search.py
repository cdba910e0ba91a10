r"""The search loop: per sample, domains are bounded in batches of the smallest certified
radius first (relative to the sample's radius), the unproven ones branched, until every
domain of a sample is proven (verified), a domain with nothing left to split stays
unproven, or the sample's budget in time or subproblems is spent (unknown, with the
radius its open domains certify: a certificate too)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from boundkit.bounds.bab import options as _clock
from boundkit.bounds.bab.bounding import Bounded, Bounder
from boundkit.bounds.bab.branching import branch
from boundkit.bounds.bab.domains import Domains
from boundkit.bounds.bab.options import STUCK_ITERATIONS, BabOptions

VERIFIED, FALSIFIED, UNKNOWN = "verified", "falsified", "unknown"



def search_limits(n: int, opt: BabOptions, budget: torch.Tensor | None,
                  max_domains: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample seconds (float64) and subproblems (long) of a search, on the CPU: the
    given ones, or the options' ``time_budget`` / ``max_domains`` for every sample."""
    if budget is None:
        budget = torch.full((n,), opt.time_budget, dtype=torch.float64)
    if max_domains is None:
        max_domains = torch.full((n,), opt.max_domains, dtype=torch.long)
    return (budget.to(device="cpu", dtype=torch.float64),
            max_domains.to(device="cpu", dtype=torch.long))

class BranchAndBound(Bounder):
    """The search for one batch of samples at radii ``eps`` [N] (the samples' labels
    ``label`` [N]), on a :class:`CrownRun` built with the plan's rules."""

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

    def solve(self, active: torch.Tensor, budget: torch.Tensor | None = None,
              tick: Callable[[float], None] | None = None,
              max_domains: torch.Tensor | None = None) -> Solved:
        """Run the search on the samples ``active`` [N] (bool), each with ``budget`` [N]
        seconds (default: the options' ``time_budget``) and ``max_domains`` [N] subproblems
        (default: the options' ``max_domains``), from their root domains; domains are
        bounded smallest certified radius first. ``tick``: called after every batch with
        the seconds it took (for progress bars)."""
        dev = self.eps.device
        n = self.n
        budget, max_domains = search_limits(n, self.opt, budget, max_domains)
        status = ["" for _ in range(n)]
        reason = ["" for _ in range(n)]
        count = torch.zeros(n, dtype=torch.long)
        spent = torch.zeros(n, dtype=torch.float64)
        eps = self.eps.to(device="cpu", dtype=torch.float64)
        certified = torch.zeros(n, dtype=torch.float64)
        closed = ~active.cpu()
        c = self.graph.num_classes
        idx = torch.nonzero(active).flatten().to(dev)
        root = Domains(idx, {}, torch.zeros(idx.numel(), c, dtype=torch.bool, device=dev))
        if self.opt.per_class:  # one domain per competing class
            lab = self.label[idx]
            cls = torch.arange(c, device=dev).repeat(idx.numel())
            smp = idx.repeat_interleave(c)
            other = cls != lab.repeat_interleave(c)
            root = Domains(smp[other], {}, torch.zeros(int(other.sum()), 1, dtype=torch.bool,
                                                       device=dev), cls=cls[other])
        root = self.with_root_intervals(root, idx)
        # the open domains: chunks (one per branching round) with a priority key each, the
        # smallest certified radius relative to its sample's eps (popped smallest first,
        # by slicing: no copy of the pool per round)
        pool: list[tuple[float, Domains]] = [(0.0, root)]
        left = torch.bincount(root.sample.cpu(), minlength=n)

        def close(samples: list[int], front: list[Domains], why: str | None) -> None:
            """Close ``samples`` as unknown (``why``) or verified (None); their certified
            radius: the smallest over the open domains ``front``, capped at eps."""
            if not samples:
                return
            low = torch.full((n,), math.inf, dtype=torch.float64)
            for f in front:
                if not len(f):
                    continue
                r = (f.radius if f.radius is not None
                     else torch.zeros(len(f), dtype=torch.float64))
                low = low.scatter_reduce(0, f.sample.cpu(), r.cpu().to(torch.float64), "amin")
            sel = torch.tensor(samples)
            certified[sel] = torch.minimum(eps[sel], low[sel]).clamp(min=0.0)
            for s_ in samples:
                closed[s_] = True
                status[s_], reason[s_] = (VERIFIED, "") if why is None else (UNKNOWN, why)

        rate = 0.0  # seconds per domain of the last batch
        while pool:
            t0 = _clock.now()
            # a batch from the chunks with the smallest keys, no larger than the open
            # samples' budget left affords at the last batch's rate (a long batch would
            # otherwise overrun the budget: it is charged when it ends)
            cap = self.opt.batch
            if rate > 0:
                left_s = float((budget - spent).clamp(min=0.0)[~closed].sum())
                cap = max(1, min(cap, int(left_s / rate) + 1))
            pool.sort(key=lambda kv: kv[0])
            parts, size = [], 0
            while pool and size < cap:
                key, chunk = pool.pop(0)
                need = cap - size
                if len(chunk) > need:
                    pool.insert(0, (key, chunk.slice(need, len(chunk))))
                    chunk = chunk.slice(0, need)
                parts.append(chunk)
                size += len(chunk)
            batch = parts[0] if len(parts) == 1 else Domains.cat(parts)
            b = self.bound(batch)
            per = torch.bincount(batch.sample.cpu(), minlength=n)
            count += per
            left -= per
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
                if len(kids):
                    rel = kids.radius.cpu() / eps[kids.sample.cpu()] if kids.radius is not None \
                        else torch.zeros(1)
                    pool.append((float(rel.min()), kids))
                    left += torch.bincount(kids.sample.cpu(), minlength=n)
            # the whole round's wall time, charged to the batch's samples by their share
            dt = _clock.now() - t0
            rate = dt / len(batch)
            if tick is not None:
                tick(dt)
            spent += dt * per.to(torch.float64) / len(batch)
            front = [d for _, d in pool] + ([] if stuck_rows is None else [stuck_rows])
            if stuck_rows is not None:
                close(sorted(set(stuck_rows.sample.tolist()) - set(
                    torch.nonzero(closed).flatten().tolist())), front,
                    "a subproblem with every ReLU on the ball split or stable was not proven "
                    "(the relaxation of its affine pieces is not tight enough)")
            # samples with no domain left are proven (before any budget closes them)
            close(torch.nonzero((left <= 0) & ~closed).flatten().tolist(), [], None)
            over_t = (spent >= budget) & ~closed
            over_d = (count >= max_domains) & ~closed
            close(torch.nonzero(over_t).flatten().tolist(), front,
                  "the time budget was spent")
            close(torch.nonzero(over_d & ~over_t).flatten().tolist(), front,
                  "the subproblem budget was spent")
            # drop the domains of closed samples
            gone = closed.to(dev)
            kept = []
            for key, d in pool:
                alive = ~gone[d.sample]
                if not bool(alive.all()):
                    left -= torch.bincount(d.sample[~alive].cpu(), minlength=n)
                    d = d.rows(torch.nonzero(alive).flatten())
                if len(d):
                    kept.append((key, d))
            pool = kept
        return Solved(status, reason, count, spent, certified)


@dataclass
class Solved:
    """What :meth:`BranchAndBound.solve` found, per sample [N]: ``status``
    (``VERIFIED``/``UNKNOWN``, ``""`` for samples not searched), ``reason``, the domains
    bounded, the seconds charged, the ``certified`` radius (``eps`` where verified; else
    the smallest radius certified by the open domains, capped at eps: a certificate
    too)."""

    status: list[str]
    reason: list[str]
    domains: torch.Tensor
    seconds: torch.Tensor
    certified: torch.Tensor


