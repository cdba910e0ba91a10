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

**Reference data** (``reference=``, or :meth:`BestEnsemble.using_reference`): for each
sample the nearest reference point in a class satisfying its criterion, bisected onto the
boundary, is the first candidate (``"reference"``): an upper bound at once, which the members
(FMN's warm start first) shrink.

**Random restarts** (``restarts`` directions, inputs of at most ``restart_max_dim``
elements): around each sample's best norm ``rho``,
adversarial points on spheres of radius ``rho``, ``1.5 rho``, ``2.5 rho`` are bisected onto
the boundary and refined (``"restart"``); FMN continues from the promising ones
(``"restart+fmn"``): other pieces of the boundary than the one the members converged to.

**Rescue** (``rescue=True``) for the samples no member broke (gradient members that start at
a zero gradient never move): starts found without gradients (reference data, the uniform pool
``fallback_pool``, rays along class gradients and random directions, Carlini-Wagner as the
last resort), bisected onto the boundary (``"start"``), then the decision-based
:class:`~boundkit.attacks.boundary_walk.BoundaryWalk` (``"boundary"``) and FMN
(``"start+fmn"``).  Where nothing is found, :meth:`BestEnsemble.outcomes` says why
(:class:`~boundkit.attacks.base.Outcome`).  See ``docs/attacks.md`` (issue #25).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from boundkit.attacks.base import (
    Attack,
    Box,
    Criterion,
    Outcome,
    TargetedMisclassification,
    atleast_kd,
    clip_to_box,
    keep_best,
    problem_scale,
    verify,
    zero_gradient,
)
from boundkit.attacks.boundary_walk import BoundaryWalk
from boundkit.attacks.cw import CarliniWagner
from boundkit.attacks.fmn import FMN
from boundkit.attacks.refine import BoundaryRefiner
from boundkit.attacks.starts import (
    bisect_to_boundary,
    line_search_starts,
    nearest_reference,
    reference_predictions,
    sphere_starts,
)

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
    fallback_pool: start points of the rescue for samples no member broke: a tensor
        ``[P, ...]``, ``"uniform"`` (``fallback_pool_size`` points uniform in the box, drawn
        with seed ``fallback_seed``; nothing without a box) or None.
    fallback_steps: FMN steps of the rescue (1000; ``budget`` overrides it), a third of it
        for the restarts' FMN, and the steps per constant of its Carlini-Wagner last resort.
    reference: reference data ``[P, ...]`` (see the module docstring); None by default.
    rescue: run the rescue (True); without it a failure is ``ZERO_GRADIENT`` where the
        gradient at ``x`` vanishes, else ``BUDGET_SPENT``.
    walk_steps: iterations of the rescue's boundary walk (40; ``budget // 8`` with a budget).
    restarts: random directions of the sphere restarts (64; 0 disables them).
    restart_window: FMN continues from a restart within this factor of the best (1.1).
    restart_max_dim: the restarts run only for inputs of at most this many elements (64):
        random directions cover the sphere only in low dimension (on 50 MNIST digits of the
        MLP they won no sample and cost 15 % of the ensemble's time).
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
        reference: Tensor | None = None,
        rescue: bool = True,
        walk_steps: int = 40,
        restarts: int = 64,
        restart_window: float = 1.1,
        restart_max_dim: int = 64,
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
        self.reference = reference
        self.rescue = bool(rescue)
        self.restarts = int(restarts)
        self.restart_window = float(restart_window)
        self.restart_max_dim = int(restart_max_dim)
        self.walk_steps = int(walk_steps if budget is None
                              else BoundaryWalk.budget_to_options(budget)["steps"])
        self.report: list[MemberReport] = []
        self._sources: list[str] = []
        self._outcome: list[Outcome] = []
        self._ref_cache: tuple[Any, ...] | None = None

    @contextlib.contextmanager
    def using_reference(self, reference: Tensor | None) -> Iterator[BestEnsemble]:
        """Within the block, use ``reference`` (``[P, ...]`` inputs, e.g. the other test
        images a caller holds) as start points; the previous setting is restored after."""
        old, self.reference = self.reference, reference
        try:
            yield self
        finally:
            self.reference = old
            self._ref_cache = None

    def _reference_pred(self, model: nn.Module, box: Box) -> Tensor:
        """Classes of the reference points (computed once per model, data and box)."""
        assert self.reference is not None
        key = (id(model), id(self.reference), box)
        if self._ref_cache is None or self._ref_cache[0] != key:
            self._ref_cache = (key, reference_predictions(model, self.reference, box))
        return self._ref_cache[1]

    def outcomes(self, model: nn.Module, x: Tensor, x_raw: Tensor, criterion: Criterion,
                 success: Tensor) -> list[Outcome]:
        """What the last run knew: ``FOUND`` where verified, else the reason the rescue
        stage recorded (:meth:`_rescue`)."""
        known = self._outcome if len(self._outcome) == x.shape[0] else None
        if known is None:
            return super().outcomes(model, x, x_raw, criterion, success)
        return [Outcome.FOUND if ok else (o if not o.has_example else Outcome.BUDGET_SPENT)
                for ok, o in zip(success.tolist(), known)]

    def _sphere_restarts(self, model: nn.Module, x: Tensor, criterion: Criterion, box: Box,
                         seed: int, best: Tensor, best_norm: Tensor,
                         consider: Callable[..., Tensor], refine: Callable[..., Tensor],
                         report: list[MemberReport]) -> None:
        """Random restarts of the shrinking on other pieces of the boundary.

        The members can all converge to the same local optimum of the distance (a piece
        of the boundary facing away from the nearest one).  Around each sample's best
        norm ``rho``, :func:`~boundkit.attacks.starts.sphere_starts` draws ``restarts``
        random directions on spheres of radius ``rho``, ``1.5 rho`` and ``2.5 rho``; up to
        four adversarial ones per sample are bisected onto the boundary and refined
        (``"restart"``); where a refined restart comes within ``restart_window`` of the best
        so far, FMN warm-started from it continues (``"restart+fmn"``).
        """
        have_best = torch.isfinite(best_norm)
        if not bool(have_best.any()):
            return
        t0 = time.perf_counter()
        k = x.ndim
        idx = have_best.nonzero().squeeze(1)
        rep = MemberReport("restart", samples_run=int(idx.numel()))
        with torch.enable_grad():
            unit = problem_scale(model, x[idx], criterion.subset(idx), box)
        pts, have = sphere_starts(model, x[idx], criterion.subset(idx), best_norm[idx],
                                  box=box, unit=unit, seed=seed, directions=self.restarts)
        starts = x.clone()
        start_norm = torch.full_like(best_norm, float("inf"))
        for r in range(pts.shape[0]):
            hi = have[r].nonzero().squeeze(1)
            if hi.numel() == 0:
                continue
            sel = idx[hi]
            cand = x.clone()
            cand[sel] = bisect_to_boundary(model, x[sel], pts[r, hi], criterion.subset(sel))
            norm = consider(cand, "restart", rep)
            rnorm, ref_cand = refine(cand, norm, "restart", rep, float("inf"))
            # the refined point (or the bisected one) is this restart's start for FMN
            both = torch.minimum(norm, rnorm)
            use = both < start_norm
            pick = torch.where(atleast_kd(rnorm <= norm, k), ref_cand, cand)
            starts = torch.where(atleast_kd(use, k), pick, starts)
            start_norm = torch.where(use, both, start_norm)
        promising = torch.isfinite(start_norm) & (start_norm <= best_norm * self.restart_window)
        rep.seconds = time.perf_counter() - t0
        report.append(rep)
        pidx = promising.nonzero().squeeze(1)
        if pidx.numel():
            t0 = time.perf_counter()
            rep = MemberReport("restart+fmn", samples_run=int(pidx.numel()))
            cand = x.clone()
            cand[pidx] = FMN(steps=self.fallback_steps // 3, init=starts[pidx])(
                model, x[pidx], criterion.subset(pidx), box=box, seed=seed)
            refine(cand, consider(cand, "restart+fmn", rep), "restart+fmn", rep,
                   self.refine_window)
            rep.seconds = time.perf_counter() - t0
            report.append(rep)

    def _rescue(self, model: nn.Module, x: Tensor, criterion: Criterion, box: Box, seed: int,
                best: Tensor, best_norm: Tensor, consider: Callable[..., Tensor],
                refine: Callable[..., Tensor], report: list[MemberReport]) -> list[Outcome]:
        """Samples no member broke: start points that need no gradient, then a
        decision-based walk and FMN from there.  Returns each sample's :class:`Outcome`.

        1. starts: the nearest point of the reference data or of the uniform pool
           (:meth:`pool`) in a class satisfying the criterion, and the nearest adversarial
           point on rays along the class gradients and random directions
           (:func:`~boundkit.attacks.starts.line_search_starts`); the nearer of the two,
           bisected onto the boundary, is an upper bound at once (``"start"``); where
           neither exists, Carlini-Wagner (5 constants from 10, ``fallback_steps`` each) is
           the last resort: its Adam steps, normalised per coordinate, cross nearly flat
           margins where normalised-gradient steps crawl;
        2. the gradient-free :class:`~boundkit.attacks.boundary_walk.BoundaryWalk` from
           there (``"boundary"``): it moves where every gradient is zero;
        3. FMN warm-started from the best point so far (``"start+fmn"``), then the
           boundary refinement: on the boundary the gradient is there again.

        A gradient member whose gradient vanished at ``x`` never moved: it is restarted
        here from a start found without gradients instead of being taken as converged.
        Failures: ``NO_OTHER_CLASS`` where no start was found and a gradient was seen,
        ``ZERO_GRADIENT`` where every gradient looked at was zero, ``BUDGET_SPENT`` where
        starts existed but nothing verified (or the rescue is off and the gradient at ``x``
        is not zero).
        """
        n, k = x.shape[0], x.ndim
        outcome = [Outcome.FOUND] * n
        failed = ~torch.isfinite(best_norm)
        if not bool(failed.any()):
            return outcome
        fidx = failed.nonzero().squeeze(1)
        xs, crit = x[fidx], criterion.subset(fidx)
        if not self.rescue:
            flat = zero_gradient(model, xs, crit)
            for i, z in zip(fidx.tolist(), flat.tolist()):
                outcome[i] = Outcome.ZERO_GRADIENT if z else Outcome.BUDGET_SPENT
            return outcome
        t0 = time.perf_counter()
        rep = MemberReport("start", samples_run=int(fidx.numel()))
        m = xs.shape[0]
        start = xs.clone()
        sdist = torch.full((m,), float("inf"), dtype=torch.float64, device=x.device)
        pool = self.pool(x, box)
        for data in (self.reference, pool):
            if data is None:
                continue
            pred = (self._reference_pred(model, box) if data is self.reference
                    else reference_predictions(model, data.to(x), box))
            pts, have = nearest_reference(xs, crit, data, pred, k=1)
            d = (pts[0].double() - xs.double()).flatten(1).norm(dim=1)
            d = torch.where(have[0], d, torch.full_like(d, float("inf")))
            take = d < sdist
            start = torch.where(atleast_kd(take, k), pts[0], start)
            sdist = torch.where(take, d, sdist)
        with torch.enable_grad():
            unit = problem_scale(model, xs, crit, box)
        ls = line_search_starts(model, xs, crit, box=box, unit=unit, seed=seed)
        d = (ls.start.double() - xs.double()).flatten(1).norm(dim=1)
        d = torch.where(ls.found, d, torch.full_like(d, float("inf")))
        take = d < sdist
        start = torch.where(atleast_kd(take, k), ls.start, start)
        sdist = torch.where(take, d, sdist)
        have = torch.isfinite(sdist)
        # (not where every gradient looked at was zero: CW would not move either)
        nidx = (~have & ls.gradient_seen).nonzero().squeeze(1)
        if nidx.numel() and self.fallback_steps > 0:
            # last resort where no ray and no data point is adversarial: Carlini-Wagner, whose
            # Adam steps (per-coordinate normalised) move where normalised-gradient steps
            # crawl (a nearly flat margin); its successes are starts like the others
            cw = CarliniWagner(steps=max(10, self.fallback_steps), binary_search_steps=5,
                               initial_const=10.0)
            got = cw(model, xs[nidx], crit.subset(nidx), box=box, seed=seed)
            with torch.no_grad():
                ok = crit.subset(nidx).is_adversarial(model(got))
            if box is not None:
                fl = got.flatten(1)
                ok &= ((fl >= box[0]) & (fl <= box[1])).all(1)
            rows = nidx[ok]
            start[rows] = got[ok]
            have[rows] = True
        cand = x.clone()
        if bool(have.any()):
            # a start can sit on the boundary (CW's points do): pushed 25 % further out where
            # that is adversarial too, the bisection brackets the crossing instead of
            # starting at a point another batch may classify differently
            far = clip_to_box(xs + 1.25 * (start - xs), box)
            with torch.no_grad():
                push = have & crit.is_adversarial(model(far))
            start = torch.where(atleast_kd(push, k), far, start)
            start = torch.where(atleast_kd(have, k), bisect_to_boundary(model, xs, start, crit),
                                xs)
            cand[fidx] = start
            consider(cand, "start", rep)
        rep.seconds = time.perf_counter() - t0
        report.append(rep)
        hidx = have.nonzero().squeeze(1)
        if hidx.numel():
            sel, xh, ch = fidx[hidx], xs[hidx], crit.subset(hidx)
            if self.walk_steps > 0:
                t0 = time.perf_counter()
                rep = MemberReport("boundary", samples_run=int(hidx.numel()))
                cand = x.clone()
                cand[sel] = BoundaryWalk(steps=self.walk_steps, init=start[hidx])(
                    model, xh, ch, box=box, seed=seed)
                consider(cand, "boundary", rep)
                rep.seconds = time.perf_counter() - t0
                report.append(rep)
            t0 = time.perf_counter()
            rep = MemberReport("start+fmn", samples_run=int(hidx.numel()))
            cand = x.clone()
            init = torch.where(atleast_kd(torch.isfinite(best_norm[sel]), k), best[sel],
                               start[hidx])
            cand[sel] = FMN(steps=self.fallback_steps, init=init)(
                model, xh, ch, box=box, seed=seed)
            refine(cand, consider(cand, "start+fmn", rep), "start+fmn", rep, float("inf"))
            rep.seconds = time.perf_counter() - t0
            report.append(rep)
        still = ~torch.isfinite(best_norm[fidx])
        for j in still.nonzero().squeeze(1).tolist():
            outcome[int(fidx[j])] = (Outcome.BUDGET_SPENT if bool(have[j])
                                     else Outcome.NO_OTHER_CLASS if bool(ls.gradient_seen[j])
                                     else Outcome.ZERO_GRADIENT)
        return outcome

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
        n, k0 = x.shape[0], x.ndim
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
            before = best_norm.clone()
            best_norm[:] = keep_best(best, best_norm, cand, norm, ok)
            better = best_norm < before
            names.append(name)
            owner.append(len(report))
            source = torch.where(better, torch.full_like(source, len(names) - 1), source)
            return norm

        def refine(cand: Tensor, norm: Tensor, name: str, rep: MemberReport,
                   window: float) -> tuple[Tensor, Tensor]:
            """Boundary refinement where it can still win: only candidates within
            ``window`` of the best norm so far are refined; returns the verified norms of
            the refined points (``inf`` where none was made) and the points."""
            none = torch.full_like(norm, float("inf"))
            if self.refine_boundary_steps <= 0:
                return none, cand
            idx = (norm <= best_norm * window).nonzero().squeeze(1)
            if idx.numel() == 0:
                return none, cand
            out = cand.clone()
            out[idx] = refiner(model, x[idx], cand[idx], criterion.subset(idx), box)
            return consider(out, name + "+refine", rep), out

        if self.reference is not None:
            # an upper bound at once: the nearest reference point of another class,
            # bisected onto the boundary (the members, FMN's warm start first, shrink it)
            t0 = time.perf_counter()
            rep = MemberReport("reference", samples_run=n)
            pts, have = nearest_reference(x, criterion, self.reference,
                                          self._reference_pred(model, box), k=1)
            cand = torch.where(atleast_kd(have[0], k0), bisect_to_boundary(
                model, x, pts[0], criterion), x)
            consider(cand, "reference", rep)
            rep.seconds = time.perf_counter() - t0
            report.append(rep)
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
                own = torch.minimum(own, refine(cand, norm, member.label, rep, window)[0])
            if not member.warm_start:
                member_norms.append(own)
            own_norms.append(own)
            rep.seconds = time.perf_counter() - t0
            report.append(rep)
        self._outcome = self._rescue(model, x, criterion, box, seed, best, best_norm,
                                     consider, refine, report)
        # after the rescue, so that rescued samples get restarts too
        if self.restarts > 0 and x[0].numel() <= self.restart_max_dim:
            self._sphere_restarts(model, x, criterion, box, seed, best, best_norm, consider,
                                  refine, report)
        # wins per member (refined or not)
        for i, o in enumerate(owner):
            report[o].samples_won += int((source == i).sum())
        self.report = report
        self._member_norms = own_norms
        self._sources = [names[i] if i >= 0 else "" for i in source.tolist()]
        return best
