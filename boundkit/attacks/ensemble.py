"""The ``best`` attack: an ensemble keeping, per sample, the smallest verified perturbation.

Members run one after the other (:class:`Member`, default :data:`DEFAULT_MEMBERS`), cheap
ones first.  Each member's candidates are verified (model re-run in its dtype) and, when
``refine_boundary_steps > 0``, shrunk by the :class:`~boundkit.attacks.refine.BoundaryRefiner`
and verified again; for every sample the smallest verified norm wins and :meth:`sources`
names the winner (``+refine`` when the refined point won).  A member with ``warm_start``
starts from the ensemble's best point so far (its ``init``), so it continues where the
previous members stopped instead of starting over; a member with ``target_rank`` ``r`` runs
*targeted* at the ``r``-th most likely other class (FAB-T-like: a targeted success is an
untargeted one).  ``report`` holds, per member, the samples it ran on, the samples it won and
its wall time (:class:`MemberReport`).

Default members (chosen on undefended MNIST networks against the previous ensemble, about
4x more expensive, see ``docs/attacks.md`` and ``benchmarks/attacks_best_vs_old.py``): the
cheap linearisation-based members first, whose refined points seed the warm-started FMN,
then cold-started searches on other trajectories:

* ``deepfool`` (all classes, 50 steps, overshoot 0.02);
* ``deepfool`` targeted at the second and at the third most likely other class (a few
  linearisation steps each: after the refinement, the local optimum on those classes'
  boundaries, which the untargeted members miss on a few samples);
* ``alma`` 300 steps targeted at the most likely other class (first step 0.1 x unit);
* ``fmn`` 300 steps warm-started from the best point so far;
* ``alma`` 200 steps targeted at the second most likely other class;
* ``ddn`` 300 steps and untargeted ``alma`` 300 steps (cold starts: other trajectories for
  the samples where the previous members share a poor local optimum);

the ALMA and DDN members with per-sample convergence stopping
(:class:`~boundkit.attacks.base.Plateau`; per sample, so batch-independent): a sample leaves
the member once its best norm has not decreased by 1e-4 (relative) over 50 steps, or, for
the last two members, by 1e-3 over 30 steps; each member
followed by the boundary refinement (10 iterations, 3 candidate classes, a sample stops
when two iterations in a row shrink it by less than 1e-4): for the untargeted members only
on the samples where the member's result is within ``refine_window`` (1.1) of the best so
far.  The final bisection along ``x -> x_adv`` takes 12 steps (10 for the single attacks):
it leaves at most 2.4e-4 of the norm above the boundary instead of 1e-3, and stays well
clear of the float32 rounding of the boundary (a 16-step bisection lands points that a
float64 re-check can reject).  ``budget`` (gradient steps per
sample per member) replaces the members' own step counts.  Every member is scale-free
(:func:`~boundkit.attacks.base.problem_scale`), so the ensemble is too.

**Fallback from a pool of start points** (``fallback_pool``): gradient-based members can all
fail on a sample whose neighbourhood has zero gradients (dead ReLUs, saturated units, a
constant region).  For every sample no member made adversarial, :func:`start_from_pool`
takes the nearest point of the pool that already satisfies that sample's criterion
(untargeted: a point the model assigns another class; targeted: one it assigns the target),
optionally only among pool points of the sample's own group, bisects the segment onto the
decision boundary and lets FMN shrink it.  The pool is explicit so that a sample's result
never depends on the batch it is attacked in: a tensor given by the caller (e.g. training
inputs), or by default (``"uniform"``) ``fallback_pool_size`` points drawn uniformly from the
box by their own generator (seed ``fallback_seed``); without a box and without a pool there
is no fallback.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from boundkit.attacks.base import (
    Attack,
    Box,
    Criterion,
    TargetedMisclassification,
    keep_best,
    verify,
)
from boundkit.attacks.refine import BoundaryRefiner

__all__ = ["BestEnsemble", "DEFAULT_MEMBERS", "Member", "MemberReport", "start_from_pool"]


@dataclass(frozen=True)
class Member:
    """One member of the ensemble.

    ``attack``: registry name; ``options``: its constructor options; ``target_rank``: run
    targeted at the ``r``-th most likely other class (untargeted criteria only); ``warm_start``:
    start from the ensemble's best point so far (attacks with an ``init`` option); ``gated``:
    run only on the samples that are not *settled* yet (see :class:`BestEnsemble`).
    """

    attack: str
    options: dict[str, Any] = field(default_factory=dict)
    target_rank: int | None = None
    warm_start: bool = False
    gated: bool = False

    @property
    def label(self) -> str:
        s = self.attack + (f"-t{self.target_rank}" if self.target_rank else "")
        return s + ("-warm" if self.warm_start else "")


@dataclass
class MemberReport:
    """What one member did in the last run: samples it ran on, samples it won (smallest
    verified norm, ties to the earlier member), wall time in seconds."""

    name: str
    samples_run: int = 0
    samples_won: int = 0
    seconds: float = 0.0


_ALMA = {"init_lr_distance": 0.1}
#: per-sample convergence stopping of the cold-started iterative members (base.Plateau):
#: tight for those whose points seed FMN or that win only after long runs, loose for the
#: last two, which only need to reach another local optimum's basin (the refinement
#: finishes the job)
_STOP = {"stop_window": 50, "stop_tolerance": 1e-4}
_STOP_LOOSE = {"stop_window": 30, "stop_tolerance": 1e-3}
DEFAULT_MEMBERS: tuple[Member, ...] = (
    Member("deepfool"),
    Member("deepfool", target_rank=2),
    Member("deepfool", target_rank=3),
    Member("alma", {"steps": 300, **_ALMA, **_STOP}, target_rank=1),
    Member("fmn", {"steps": 300}, warm_start=True),
    Member("alma", {"steps": 200, **_ALMA, **_STOP}, target_rank=2),
    Member("ddn", {"steps": 300, **_STOP_LOOSE}),
    Member("alma", {"steps": 300, **_ALMA, **_STOP_LOOSE}),
)


def start_from_pool(
    model: nn.Module,
    x: Tensor,
    criterion: Criterion,
    pool: Tensor,
    *,
    box: Box,
    steps: int = 1000,
    groups: Tensor | None = None,
    pool_groups: Tensor | None = None,
    seed: int = 0,
) -> Tensor:
    """FMN from the nearest pool point that satisfies each sample's criterion.

    For sample ``i`` the start is the point ``pool[j]`` nearest to ``x[i]`` (L2) among those
    the model puts in a class satisfying ``criterion`` for ``i`` (inside the box, and with
    ``pool_groups[j] == groups[i]`` when groups are given: e.g. the classifier a sample belongs
    to in a stack of classifiers); FMN (``steps``) then shrinks the perturbation from that
    point brought onto the boundary by bisection.  Samples without such a point get ``x``
    itself (a failure for the verification).  Returns raw candidates like ``x``.
    """
    from boundkit.attacks.fmn import FMN

    n = x.shape[0]
    pool = pool.to(device=x.device, dtype=x.dtype)
    with torch.no_grad():
        logits = model(pool)
        p = pool.shape[0]
        rep = type(criterion)(criterion.labels.repeat_interleave(p))
        ok = rep.is_adversarial(logits.repeat(n, 1)).reshape(n, p)
        if box is not None:
            flat = pool.flatten(1)
            ok &= ((flat >= box[0]) & (flat <= box[1])).all(1)[None, :]
        if groups is not None:
            if pool_groups is None:
                raise ValueError("groups= needs pool_groups= (the group of each pool point)")
            ok &= groups.to(x.device)[:, None] == pool_groups.to(x.device)[None, :]
        dist = torch.cdist(x.flatten(1).double(), pool.flatten(1).double())
        dmin, j = dist.masked_fill(~ok, float("inf")).min(1)
    have = torch.isfinite(dmin)
    out = x.clone()
    if not bool(have.any()):
        return out
    sel = have.nonzero().squeeze(1)
    atk = FMN(steps=steps, init=pool[j[sel]])
    out[sel] = atk(model, x[sel], criterion.subset(sel), box=box, seed=seed)
    return out


class BestEnsemble(Attack):
    """Run several attacks and keep, per sample, the smallest verified perturbation.

    Parameters
    ----------
    members: :class:`Member` specs, attack names, or ``(name, options)`` pairs
        (default :data:`DEFAULT_MEMBERS`).
    refine_boundary_steps: iterations of the boundary refinement applied to each member's
        verified result (10; 0 disables it).
    refine_candidates: classes linearised per refinement iteration (3).
    refine_window: an untargeted member's candidate is refined only where its norm is
        within this factor of the best norm so far (1.1; ``inf`` refines every candidate):
        elsewhere the refinement, which shrinks such points by a few per cent, cannot win.
        Targeted members' candidates (on another class's boundary, which the refinement
        can leave for a much closer one) are always refined.
    refine_stop_tolerance: the refinement stops on a sample once its norm decreased by less
        than this (relative) in two consecutive iterations (1e-4; 0 runs every iteration):
        most samples reach their local optimum in two or three iterations.
    settle_members, settle_tolerance: a sample is *settled* when at least ``settle_members``
        (2) different cold-started members (no ``warm_start``: independent searches)
        reached, each with its own or its refined candidate, a norm
        within ``settle_tolerance`` (1e-3, relative) of the best so far: independent
        searches from different starts agree, so the sample sits at a local optimum they
        all find.  Gated members run only on the samples not settled.
    refine_steps: bisection steps of the final boundary bisection (12).
    budget: if given, the ``steps``-like options of every member implied by this budget
        (overrides the member's own step options).
    fallback_pool: start points for samples no member broke (see :func:`start_from_pool`):
        a tensor ``[P, ...]``, ``"uniform"`` (``fallback_pool_size`` points uniform in the
        box, drawn with seed ``fallback_seed``; nothing without a box) or None (no fallback).
    fallback_steps: FMN steps of that fallback (1000; ``budget`` overrides it).
    """

    name = "best"

    def __init__(
        self,
        *,
        members: Sequence[Member | str | tuple[str, dict[str, Any]]] | None = None,
        refine_boundary_steps: int = 10,
        refine_candidates: int = 3,
        refine_window: float = 1.1,
        refine_stop_tolerance: float = 1e-4,
        settle_members: int = 2,
        settle_tolerance: float = 1e-3,
        budget: int | None = None,
        refine_steps: int = 12,
        fallback_pool: Tensor | str | None = "uniform",
        fallback_pool_size: int = 256,
        fallback_seed: int = 0,
        fallback_steps: int = 1000,
    ) -> None:
        super().__init__(refine_steps=refine_steps)
        specs = DEFAULT_MEMBERS if members is None else members
        self.members: list[Member] = [
            m if isinstance(m, Member) else Member(m) if isinstance(m, str)
            else Member(m[0], dict(m[1])) for m in specs
        ]
        if not self.members:
            raise ValueError("the ensemble needs at least one member attack")
        if isinstance(fallback_pool, str) and fallback_pool != "uniform":
            raise ValueError(f"fallback_pool must be a tensor, 'uniform' or None, "
                             f"not {fallback_pool!r}")
        self.refine_boundary_steps = int(refine_boundary_steps)
        self.refine_candidates = int(refine_candidates)
        self.refine_window = float(refine_window)
        self.refine_stop_tolerance = float(refine_stop_tolerance)
        self.settle_members = int(settle_members)
        self.settle_tolerance = float(settle_tolerance)
        self.budget = budget
        self.fallback_pool = fallback_pool
        self.fallback_pool_size = int(fallback_pool_size)
        self.fallback_seed = int(fallback_seed)
        self.fallback_steps = int(fallback_steps if budget is None else budget)
        self.report: list[MemberReport] = []
        self._sources: list[str] = []

    @classmethod
    def budget_to_options(cls, budget: int) -> dict[str, Any]:
        return {"budget": int(budget)}

    def build(self, member: Member, init: Tensor | None = None) -> Attack:
        from boundkit.attacks import ATTACKS

        if member.attack not in ATTACKS or member.attack == self.name:
            raise ValueError(f"unknown ensemble member {member.attack!r}; known: "
                             f"{sorted(k for k in ATTACKS if k != self.name)}")
        cls = ATTACKS[member.attack]
        o = dict(member.options)
        if self.budget is not None:
            o.update(cls.budget_to_options(self.budget))
        if init is not None:
            o["init"] = init
        return cls(**o)

    def pool(self, x: Tensor, box: Box) -> Tensor | None:
        """The fallback's start points (see the class docstring), independent of ``x``'s
        values: only its shape, dtype and device are used."""
        if self.fallback_pool is None:
            return None
        if isinstance(self.fallback_pool, Tensor):
            return self.fallback_pool
        if box is None:
            return None
        g = torch.Generator().manual_seed(self.fallback_seed)
        u = torch.rand((self.fallback_pool_size, *x.shape[1:]), generator=g,
                       dtype=torch.float64)
        return (box[0] + (box[1] - box[0]) * u).to(device=x.device, dtype=x.dtype)

    def sources(self, n: int) -> list[str]:
        return list(self._sources) if len(self._sources) == n else [self.name] * n

    def run(
        self,
        model: nn.Module,
        x: Tensor,
        criterion: Criterion,
        *,
        box: Box,
        seed: int = 0,
    ) -> Tensor:
        n = x.shape[0]
        best = x.clone()
        best_norm = torch.full((n,), float("inf"), dtype=torch.float64, device=x.device)
        source = torch.full((n,), -1, dtype=torch.long, device=x.device)
        names: list[str] = []
        owner: list[int] = []  # index into report of each candidate set in names
        report: list[MemberReport] = []
        refiner = BoundaryRefiner(steps=self.refine_boundary_steps,
                                  candidates=self.refine_candidates,
                                  stop_tolerance=self.refine_stop_tolerance)

        def consider(cand: Tensor, name: str, rep: MemberReport) -> Tensor:
            """Verify, keep what improves; return the verified norms of ``cand``."""
            nonlocal best_norm, source
            ok, norm, _ = verify(model, x, cand, criterion, box)
            before = best_norm
            best_norm = keep_best(best, best_norm, cand, norm, ok)
            better = best_norm < before
            names.append(name)
            owner.append(len(report))
            source = torch.where(better, torch.full_like(source, len(names) - 1), source)
            return norm

        def refine(cand: Tensor, norm: Tensor, name: str, rep: MemberReport,
                   window: float) -> Tensor:
            """Boundary refinement where it can still win: only candidates within
            ``window`` of the best norm so far are refined; returns the verified norms of
            the refined points (``inf`` where none was made)."""
            none = torch.full_like(norm, float("inf"))
            if self.refine_boundary_steps <= 0:
                return none
            idx = (norm <= best_norm * window).nonzero().squeeze(1)
            if idx.numel() == 0:
                return none
            out = cand.clone()
            out[idx] = refiner(model, x[idx], cand[idx], criterion.subset(idx), box)
            return consider(out, name + "+refine", rep)

        clean_logits: Tensor | None = None
        member_norms: list[Tensor] = []  # per cold member: its best verified norm per sample
        own_norms: list[Tensor] = []  # per member: its best verified norm per sample
        k = x.ndim
        for member in self.members:
            t0 = time.perf_counter()
            if member.gated and member_norms:
                # only cold-started members are independent searches (a warm start returns
                # at most its start's norm, so it always "agrees")
                near = torch.stack(member_norms) <= best_norm * (1 + self.settle_tolerance)
                settled = near.sum(0) >= self.settle_members
                idx = (~settled).nonzero().squeeze(1)
            else:
                idx = torch.arange(n, device=x.device)
            rep = MemberReport(member.label, samples_run=int(idx.numel()))
            own = torch.full_like(best_norm, float("inf"))
            if idx.numel():
                xs, crit = x[idx], criterion.subset(idx)
                if member.target_rank is not None and not criterion.targeted:
                    if clean_logits is None:
                        with torch.no_grad():
                            clean_logits = model(x)
                    masked = clean_logits[idx].scatter(1, crit.labels[:, None], float("-inf"))
                    r = min(int(member.target_rank), masked.shape[1] - 1)
                    crit = TargetedMisclassification(masked.topk(r, dim=1).indices[:, r - 1])
                init = None
                if member.warm_start:
                    have = torch.isfinite(best_norm[idx]).reshape(-1, *[1] * (k - 1))
                    init = torch.where(have, best[idx], xs)
                cand = x.clone()
                cand[idx] = self.build(member, init)(model, xs, crit, box=box, seed=seed)
                # a targeted candidate sits on another class's boundary: the refinement
                # (which linearises the closest classes) can move it far, so it is always
                # refined
                window = self.refine_window if member.target_rank is None else float("inf")
                norm = consider(cand, member.label, rep)
                own = torch.minimum(own, norm)
                own = torch.minimum(own, refine(cand, norm, member.label, rep, window))
            if not member.warm_start:
                member_norms.append(own)
            own_norms.append(own)
            rep.seconds = time.perf_counter() - t0
            report.append(rep)
        failed = ~torch.isfinite(best_norm)
        pool = self.pool(x, box) if bool(failed.any()) else None
        if pool is not None:
            t0 = time.perf_counter()
            fidx = failed.nonzero().squeeze(1)
            rep = MemberReport("pool-start+fmn", samples_run=int(fidx.numel()))
            cand = x.clone()
            cand[fidx] = start_from_pool(model, x[fidx], criterion.subset(fidx), pool, box=box,
                                         steps=self.fallback_steps, seed=seed)
            refine(cand, consider(cand, "pool-start+fmn", rep), "pool-start+fmn", rep,
                   float("inf"))
            rep.seconds = time.perf_counter() - t0
            report.append(rep)
        # wins per member (refined or not)
        for i, o in enumerate(owner):
            report[o].samples_won += int((source == i).sum())
        self.report = report
        self._member_norms = own_norms
        self._sources = [names[i] if i >= 0 else "" for i in source.tolist()]
        return best
