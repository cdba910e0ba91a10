r"""The search loop both branch-and-bound searches share (ReLU splitting,
:class:`~boundkit.bounds.bab.search.BranchAndBound`; input splitting,
:class:`~boundkit.bounds.bab.inputsplit.InputSplit`) and its typed per-sample answer.

Per sample, domains are bounded in batches of the smallest certified radius first
(relative to the sample's radius), the unproven ones branched, until every domain of the
sample is proven (verified), a domain with nothing left to split stays unproven, or the
sample's budget in time or subproblems is spent (unknown, with the radius its open domains
certify: a certificate too). A search states only its roots and what bounding and
branching one batch gives (:meth:`Search.roots`, :meth:`Search.expand`); the batches, the
budgets and the per-sample answers live here, kept as tensors (:class:`Verdict` and
:class:`Reason` codes, masks), with no per-sample loop."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from typing import Generic, Protocol, TypeVar

import torch

from boundkit.bounds.bab import options as _clock
from boundkit.bounds.bab.options import BabOptions


class Verdict(IntEnum):
    """A sample's answer (``Solved.verdict``, ``VerifyResult.verdict``: int8 codes)."""

    #: not decided (not searched)
    OPEN = 0
    #: no perturbation of L2 norm below the radius, inside the box, changes the class
    VERIFIED = 1
    #: a counterexample inside the ball and the box, checked on the model
    FALSIFIED = 2
    #: the budget ended first (the reason says which)
    UNKNOWN = 3

    @property
    def word(self) -> str:
        """The verdict as ``VerifyResult.status`` spells it (``"verified"``, ...)."""
        return self.name.lower()


class Reason(IntEnum):
    """Why a sample's verdict is what it is (``Solved.reason``, ``VerifyResult.why``: int8
    codes; :meth:`describe` is the text of ``VerifyResult.reason``)."""

    NONE = 0
    #: verified: every domain proven
    PROVEN = 1
    #: unknown: a ReLU domain with nothing left to split stayed unproven
    STUCK_RELU = 2
    #: unknown: a sub-box of the input could not be halved in float64 and stayed unproven
    STUCK_BOX = 3
    TIME = 4
    DOMAINS = 5
    #: unknown without a search: the model and its float64 graph disagree on the class
    NEAR_TIE = 6
    #: unknown without a search: the sample lies outside the box
    OUTSIDE_BOX = 7
    #: verified without a search: radius 0
    RADIUS_ZERO = 8
    #: falsified: the attack inside the ball found a counterexample
    ATTACK = 9

    def describe(self) -> str:
        return _REASONS[self]


_REASONS = {
    Reason.NONE: "",
    Reason.PROVEN: "every subproblem proven",
    Reason.STUCK_RELU: ("a subproblem with every ReLU on the ball split or stable was not "
                        "proven (the relaxation of its affine pieces is not tight enough)"),
    Reason.STUCK_BOX: "a sub-box reached the float64 resolution unproven",
    Reason.TIME: "the time budget was spent",
    Reason.DOMAINS: "the subproblem budget was spent",
    Reason.NEAR_TIE: "the float64 graph and the model disagree on the class at x (a near tie)",
    Reason.OUTSIDE_BOX: "x lies outside the box",
    Reason.RADIUS_ZERO: "radius 0: the ball of smaller norms is {x}",
    Reason.ATTACK: "projected gradient attack inside the ball",
}


@dataclass
class Solved:
    """What :meth:`Search.solve` found, per sample [N] (on the CPU): the ``verdict``
    (int8 :class:`Verdict` codes, ``OPEN`` for samples not searched) and its ``reason``
    (int8 :class:`Reason` codes), the domains bounded, the seconds charged, the
    ``certified`` radius (``eps`` where verified; else the smallest radius certified by the
    open domains, capped at eps: a certificate too)."""

    verdict: torch.Tensor
    reason: torch.Tensor
    domains: torch.Tensor
    seconds: torch.Tensor
    certified: torch.Tensor


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


_B = TypeVar("_B", bound="DomainBatch")


class DomainBatch(Protocol):
    """What the loop needs of a batch of domains (rows): the sample of each row [D], the
    radius each row's set is proven for [D] (or None: 0), row selection and views."""

    sample: torch.Tensor

    @property
    def radius(self) -> torch.Tensor | None: ...

    def __len__(self) -> int: ...

    def rows(self: _B, idx: torch.Tensor) -> _B: ...

    def slice(self: _B, a: int, b: int) -> _B: ...

    @staticmethod
    def cat(parts: list[_B]) -> _B: ...


@dataclass
class Expansion(Generic[_B]):
    """What bounding and branching one batch gives: the children to search (``None`` or
    empty: none) and the unproven domains with nothing left to split, each with the radius
    its set is proven for (``None``: none); their samples close as unknown."""

    kids: _B | None
    stuck: _B | None


class Search(ABC, Generic[_B]):
    """The loop of a branch-and-bound search for one batch of ``n`` samples at radii
    ``eps`` [N] with options ``opt``; a subclass states its roots and one batch's
    expansion, and why a sample with a stuck domain closes (``stuck_reason``)."""

    n: int
    eps: torch.Tensor
    opt: BabOptions
    stuck_reason: Reason

    @abstractmethod
    def roots(self, idx: torch.Tensor) -> _B:
        """The root domains of the samples ``idx`` (sorted, unique, on the device)."""

    @abstractmethod
    def expand(self, batch: _B) -> Expansion[_B]:
        """Bound every domain of ``batch`` and branch the unproven ones."""

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
        verdict = torch.full((n,), Verdict.OPEN, dtype=torch.int8)
        reason = torch.full((n,), Reason.NONE, dtype=torch.int8)
        count = torch.zeros(n, dtype=torch.long)
        spent = torch.zeros(n, dtype=torch.float64)
        eps = self.eps.to(device="cpu", dtype=torch.float64)
        certified = torch.zeros(n, dtype=torch.float64)
        closed = ~active.cpu()
        root = self.roots(torch.nonzero(active).flatten().to(dev))
        # the open domains: chunks (one per branching round) with a priority key each, the
        # smallest certified radius relative to its sample's eps (popped smallest first,
        # by slicing: no copy of the pool per round)
        pool: list[tuple[float, _B]] = [(0.0, root)] if len(root) else []
        left = torch.bincount(root.sample.cpu(), minlength=n)

        def close(samples: torch.Tensor, front: list[_B], why: Reason) -> None:
            """Close the open ``samples`` (bool [N]) as verified (``why`` PROVEN) or unknown;
            their certified radius: the smallest over the open domains ``front``, capped
            at eps."""
            samples = samples & ~closed
            if not bool(samples.any()):
                return
            low = torch.full((n,), math.inf, dtype=torch.float64)
            for f in front:
                if not len(f):
                    continue
                r = (f.radius if f.radius is not None
                     else torch.zeros(len(f), dtype=torch.float64))
                low = low.scatter_reduce(0, f.sample.cpu(), r.cpu().to(torch.float64), "amin")
            certified[samples] = torch.minimum(eps[samples], low[samples]).clamp(min=0.0)
            closed[samples] = True
            verdict[samples] = Verdict.VERIFIED if why == Reason.PROVEN else Verdict.UNKNOWN
            reason[samples] = why

        # a search whose roots give an active sample no domain leaves it nothing to prove
        # (capture refuses fewer than two classes, so the searches here always give one)
        close(left <= 0, [], Reason.PROVEN)
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
            batch = parts[0] if len(parts) == 1 else type(parts[0]).cat(parts)
            step = self.expand(batch)
            per = torch.bincount(batch.sample.cpu(), minlength=n)
            count += per
            left -= per
            kids = step.kids
            if kids is not None and len(kids):
                rel = (kids.radius.cpu() / eps[kids.sample.cpu()] if kids.radius is not None
                       else torch.zeros(1))
                pool.append((float(rel.min()), kids))
                left += torch.bincount(kids.sample.cpu(), minlength=n)
            # the whole round's wall time, charged to the batch's samples by their share
            dt = _clock.now() - t0
            rate = dt / len(batch)
            if tick is not None:
                tick(dt)
            spent += dt * per.to(torch.float64) / len(batch)
            front = [d for _, d in pool] + ([] if step.stuck is None else [step.stuck])
            if step.stuck is not None:
                stuck = torch.zeros(n, dtype=torch.bool)
                stuck[step.stuck.sample.cpu()] = True
                close(stuck, front, self.stuck_reason)
            # samples with no domain left are proven (before any budget closes them)
            close(left <= 0, [], Reason.PROVEN)
            over_t = (spent >= budget) & ~closed
            over_d = (count >= max_domains) & ~closed
            close(over_t, front, Reason.TIME)
            close(over_d & ~over_t, front, Reason.DOMAINS)
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
        return Solved(verdict, reason, count, spent, certified)
