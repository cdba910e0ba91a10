r"""The anytime radius method ``bab``: the largest radius :func:`verify` proves, searched per
sample between a start radius (``crown``'s or ``alpha``'s) and an upper end (an attack's
norm); every radius returned on the way is a certificate."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from boundkit.bounds.bab import options as _clock
from boundkit.bounds.bab.bounding import BabPlan, bab_plan
from boundkit.bounds.bab.inputsplit import (
    INPUT_SPLIT_MAX_DIM,
    InputSplitPlan,
    RegionRun,
    input_split_plan,
    resolve_split,
)
from boundkit.bounds.bab.options import NEVER, BabOptions, Split, check_options
from boundkit.bounds.bab.verifying import verify_graph
from boundkit.bounds.crown import DEFAULT_BOX, CrownRun
from boundkit.bounds.method import BatchResult, Method, register_method
from boundkit.errors import BadArgumentError, UnsupportedLayerError
from boundkit.graph.graph import Graph


class _GraphModel(nn.Module):
    """The captured graph as a module (float64 logits), for the attack giving the upper
    end of the search when the user gives none (the model itself is not at hand in a
    :class:`~boundkit.bounds.method.Method`)."""

    def __init__(self, graph: Graph) -> None:
        super().__init__()
        self.graph = graph
        self.register_buffer("_anchor", torch.zeros((), dtype=torch.float64,
                                                    device=graph.device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.graph.activations(x, [self.graph.logits.name])[self.graph.logits.name]


#: the search of a sample stops where its lower end is this close, relative, to its upper
#: end (the attack norm, or the user's ``upper``): the one proven end of the bracket
#: besides the certificate (option ``rtol``)
BAB_RTOL = 1e-3
#: a bracket (lower end, smallest unknown radius) this tight, relative, is reopened
#: towards the upper end: an unknown answer is no upper bound, only a radius the budget
#: of its step did not settle; the retries then climb from the lower end in small steps
#: with twice the time of the last unknown step (while the sample's budget lasts)
REOPEN_RTOL = 1e-2
#: the first radius tried lies this fraction of the way from the start radius to the
#: upper end (with a third of the budget); then bisection with half of what is left
FIRST_STEP = 0.3
#: ... but at most this far above the lower end, relative (a climb where the bracket is
#: wide: doubled after every verified step, halved after every other); on the MNIST MLP
#: the bracket is narrow and the cap does not bind at first, on the small CNN (the
#: start radius about 8% of the attack norm) the first steps would otherwise aim at 4x
#: the start radius and prove nothing
FIRST_GROWTH = 0.1
#: points kept per sample in the anytime trace (``info["trace_seconds"]`` /
#: ``info["trace_radius"]``, a fixed width so that chunks of samples concatenate); past it
#: the point of the smallest gain is dropped, which only lowers the curve between two kept
#: points (to a radius proven earlier: still a certificate at every time)
TRACE_POINTS = 128


@dataclass(frozen=True)
class RadiusTrace:
    r"""The anytime curve of ``bab``, per sample: after :math:`s_{ik}` seconds charged to
    sample :math:`i` (its share of the start radius and of every step of the search, on the
    budget's clock: what its ``time_budget`` is counted against), the certified radius
    :math:`r_{ik}` was proven; points in time order, one where the radius grew (the first:
    the start radius), unused slots NaN. The curve at a budget :math:`b` is the radius of
    the last point with :math:`s_{ik} \le b` (:meth:`at`): the certificate that run held
    once it had spent :math:`b`, a step function rising with :math:`b`. A run with budget
    :math:`b` searches differently (the steps' shares of time are fractions of the budget),
    so its radius can differ from the curve's value at :math:`b`.

    ``seconds`` / ``radius``: float64 [N, ``TRACE_POINTS``] (``info["trace_seconds"]`` and
    ``info["trace_radius"]`` of a ``bab`` certificate)."""

    seconds: torch.Tensor
    radius: torch.Tensor

    @staticmethod
    def from_info(info: dict[str, Any]) -> RadiusTrace:
        """The trace of a ``bab`` certificate's ``info``."""
        if "trace_seconds" not in info or "trace_radius" not in info:
            raise BadArgumentError("no bab trace in this info (a bab certificate's info has "
                                   "trace_seconds and trace_radius)")
        return RadiusTrace(info["trace_seconds"], info["trace_radius"])

    def at(self, budget: float) -> torch.Tensor:
        """Per sample [N], the radius proven once ``budget`` seconds were spent (0 before
        the start radius was)."""
        reached = self.seconds <= budget  # NaN slots compare False
        r = torch.where(reached, self.radius, torch.zeros_like(self.radius))
        return r.max(1).values  # the radius only grows along a trace

    @staticmethod
    def empty(n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Blank storage for ``n`` samples: seconds, radii (NaN) and points used [N]."""
        blank = torch.full((n, TRACE_POINTS), math.nan, dtype=torch.float64)
        return blank, blank.clone(), torch.zeros(n, dtype=torch.long)

    @staticmethod
    def record(seconds: torch.Tensor, radius: torch.Tensor, used: torch.Tensor,
               rows: torch.Tensor, at: torch.Tensor, value: torch.Tensor) -> None:
        """Append the point (``at[i]``, ``value[i]``) to every sample ``i`` where ``rows``
        (bool [N]) holds, in place; a full trace first drops, per row, its point (after the
        first) of the smallest gain :math:`r_k - r_{k-1}`."""
        full = rows & (used >= TRACE_POINTS)
        if bool(full.any()):
            sel = torch.nonzero(full).flatten()
            r = radius[sel]
            drop = (r[:, 1:] - r[:, :-1]).argmin(1) + 1
            k = torch.arange(TRACE_POINTS).expand(sel.numel(), TRACE_POINTS)
            keep = (k + (k >= drop[:, None]).long()).clamp(max=TRACE_POINTS - 1)
            seconds[sel] = seconds[sel].gather(1, keep)
            radius[sel] = r.gather(1, keep)
            used[sel] = TRACE_POINTS - 1
        sel = torch.nonzero(rows).flatten()
        seconds[sel, used[sel]] = at[sel].to(torch.float64)
        radius[sel, used[sel]] = value[sel].to(torch.float64)
        used[sel] += 1


class BabMethod(Method):
    r"""The largest radius :func:`verify` proves, searched per sample between a start radius
    (``crown``'s, or ``alpha``'s) and an upper end (``upper``: e.g. the norms of verified
    adversarial examples; default the ``best`` attack's on the graph): each step one
    branch and bound for all samples together, first at ``FIRST_STEP`` of the way with a
    third of the time, then at the midpoint with half of the time left, each step at most
    a relative growth :math:`\delta` above the lower end (``FIRST_GROWTH``, doubled after
    a verified step, halved after another, at least ``rtol``); a verified radius, or the
    radius an unknown answer's open subproblems certify, raises the lower end. An unknown
    answer is no upper bound: once the lower end is within ``REOPEN_RTOL`` of the smallest
    unknown radius, the bracket reopens to the upper end and the search climbs on from the
    lower end, each retry with twice the time of the last unknown step. A sample stops
    only when its lower end :math:`l` meets the upper end :math:`u`,
    :math:`l \ge u / (1 + \mathrm{rtol})` (``rtol``, default ``BAB_RTOL`` = 0.1%), or
    its budget is spent: ``time_budget`` (seconds per sample; covers the start radius and
    the search, not the attack run when no ``upper`` is given) or ``max_domains``
    (subproblems per sample over the whole search, shared among the steps like the time;
    default: no limit but the time, at most ``BabOptions.max_domains`` per step).
    Anytime: the radius returned is the largest one proven (or the start's), a certificate whatever
    the budget. With the box no radius above the distance to the box's farthest corner
    (:attr:`~boundkit.bounds.crown.CrownRun.reach`) is tried: a ball that large holds the
    whole box, so proving it proves the class constant on the box and the radius is
    ``inf``, as ``crown`` reports it. ``info``: ``upper`` (the end searched against,
    lowered to the norm of any counterexample found on the way), ``ratio`` (certified /
    upper), ``domains``, ``trace_seconds`` / ``trace_radius`` (the radius over the seconds charged:
    :class:`RadiusTrace`). ``progress``: a
    callable given the samples' worth of budget spent since its last call (``time_budget`` seconds =
    one sample), after the start radius and every batch of the search; the calls of one run sum to
    its samples (budget left unused by samples that close early is given at the end): a CLI progress
    bar counting samples."""

    name = "bab"
    is_guarantee = True
    description = ("branch and bound on ReLU splits (beta-CROWN style) raising the crown "
                   "radius toward the attack norm (time_budget per sample)")
    default_box = DEFAULT_BOX

    def options(self) -> tuple[str, ...]:
        return ("box", "time_budget", "upper", "start", "max_domains", "batch", "iterations",
                "refresh", "rtol", "progress", "split")

    def prepare(self, graph: Graph) -> BabPlan:
        try:
            return bab_plan(graph)
        except UnsupportedLayerError:
            # no ReLU splitting: input splitting where the input is small (the plan is
            # made before the options are read: the model is supported as split="auto"
            # would run it, so --method auto never picks a bab that then refuses)
            if math.prod(graph.input_shape) > INPUT_SPLIT_MAX_DIM:
                raise
            return input_split_plan(graph)

    def run(self, graph: Graph, x: torch.Tensor, plan: Any, *, trace: bool,
            **options: Any) -> BatchResult:
        from boundkit.bounds.method import get_method
        from boundkit.validate import check_box, check_positive

        assert isinstance(plan, BabPlan)
        box = check_box(options.get("box", self.default_box))
        default = BabOptions()
        opts = check_options(options.get("time_budget", 2.0),
                             (default.max_domains if options.get("max_domains") is None
                              else options["max_domains"]),
                             options.get("batch", default.batch),
                             options.get("iterations", default.iterations),
                             options.get("refresh", NEVER),
                             options.get("split", default.split))
        by_input = resolve_split(opts.split, graph) == Split.INPUT
        if not by_input and isinstance(plan, InputSplitPlan):
            plan = bab_plan(graph)  # ReLU splitting: refuses the model, naming the node
        elif by_input and not isinstance(plan, InputSplitPlan):
            plan = input_split_plan(graph)
        # subproblems per sample over the whole search (None: the time budget alone binds;
        # each step then bounds at most the options' default per verify call)
        total = (math.inf if options.get("max_domains") is None else float(opts.max_domains))
        rtol = check_positive("rtol", options.get("rtol", BAB_RTOL), maximum=0.5)
        assert rtol is not None
        start = options.get("start", "crown")
        if start not in ("crown", "alpha"):
            raise BadArgumentError(f"start must be 'crown' or 'alpha', got {start!r}")
        progress = options.get("progress")
        if progress is not None and not callable(progress):
            raise BadArgumentError(f"progress must be a callable or None, got "
                                   f"{type(progress).__name__}")
        t_start = _clock.now()
        x0 = x.to(device=graph.device, dtype=torch.float64)
        n = x0.shape[0]
        base = get_method(start).run(graph, x0, plan.base, trace=False, box=box)
        # one sound pass for every step
        run = (RegionRun if by_input else CrownRun)(graph, plan.crown, x0, box)
        t_base = _clock.now() - t_start
        lo = base.radius.to(torch.float64).clone()
        reach = run.reach.to(device=lo.device, dtype=torch.float64)
        upper = options.get("upper")
        if upper is None:
            from boundkit.attacks import attack

            hi = attack(_GraphModel(graph).eval(), x0, "best", box=box).norm.to(lo.device)
        else:
            hi = _check_upper(upper, n).to(lo.device)
        hi = hi.to(torch.float64)
        searched = hi.clone()
        budget = torch.full((n,), opts.time_budget, dtype=torch.float64)
        budget -= t_base / n  # the start radius counts, the attack does not
        bar = _Progress(progress, n, opts.time_budget)
        bar.spent(t_base)
        tr_s, tr_r, tr_n = RadiusTrace.empty(n)
        RadiusTrace.record(tr_s, tr_r, tr_n, torch.ones(n, dtype=torch.bool),
                           opts.time_budget - budget, lo.cpu())
        domains = torch.zeros(n, dtype=torch.long)
        top = hi.clone()  # the smallest radius not proven (unknown), or the upper end
        first = True
        growth = torch.full_like(lo, FIRST_GROWTH)
        # per sample: the seconds of its last unknown step (0: none since the last verified
        # one), and whether its bracket was reopened (then retries double that time)
        last_unknown = torch.zeros(n, dtype=torch.float64)
        last_unknown_domains = torch.zeros(n, dtype=torch.long)
        reopened = torch.zeros(n, dtype=torch.bool)
        while True:
            # an unknown point within REOPEN_RTOL of the lower end proves nothing: the
            # bracket reopens towards the upper end, the sample keeps its budget
            shut = torch.isfinite(lo) & (lo >= top / (1 + REOPEN_RTOL)) & (top < hi)
            top = torch.where(shut, hi, top)
            reopened |= shut.cpu()
            active = (torch.isfinite(lo) & (lo < hi / (1 + rtol)) & (lo < top)
                      & (budget > 0.02 * opts.time_budget) & (domains < total)
                      & (base.margin > 0).to(lo.device))
            if not bool(active.any()):
                break
            frac = FIRST_STEP if first else 0.5
            eps = torch.where(torch.isfinite(top), lo + frac * (top - lo),
                              torch.where(lo > 0, lo * 1.5, torch.full_like(lo, 1e-3)))
            eps = torch.where(lo > 0, torch.minimum(eps, lo * (1 + growth)), eps)
            # no ball larger than one holding the whole box is needed: proving that one
            # proves the class constant on the box (verify's certified radius is then inf)
            eps = torch.minimum(eps, reach)
            eps = torch.where(active, eps, torch.zeros_like(eps))
            share = torch.where(budget < 0.1 * opts.time_budget, budget,
                                budget / (3 if first else 2))
            # a retry after a reopened bracket: twice the time of the last unknown step
            share = torch.where(reopened & (last_unknown > 0),
                                torch.minimum(budget, torch.maximum(share, 2 * last_unknown)),
                                share)
            # the subproblems of the step: the same fraction of those left as of the time;
            # without a total, the per-step cap, and for a retry after a reopened bracket
            # twice the subproblems of the last unknown step, as with its time (a step
            # stopped by the cap, retried with the same cap, repeats itself exactly: on the
            # boxed MNIST MLP the radius stopped moving within a minute, docs/results/bab.md)
            dshare = torch.where(reopened & (last_unknown_domains > 0),
                                 torch.clamp(2 * last_unknown_domains, min=opts.max_domains),
                                 torch.full((n,), opts.max_domains, dtype=torch.long))
            if math.isfinite(total):
                frac_t = (share / budget.clamp(min=1e-12)).clamp(max=1.0)
                dshare = ((total - domains) * frac_t).ceil().clamp(min=1).to(torch.long)
            first = False
            t0 = _clock.now()
            res = verify_graph(None, graph, x0, eps, box, opts, budget=share, plan=plan,
                               tick=bar.spent, max_domains=dshare, run=run)
            wall = _clock.now() - t0
            ok = res.verified.to(lo.device) & active
            # a verified radius, or the radius the open subproblems certify (inf: a ball
            # holding the whole box)
            cert = res.certified.to(lo.device)
            got = torch.where(ok, torch.maximum(eps, cert), cert)
            grew = (active & (got > lo)).cpu()
            lo = torch.where(active, torch.maximum(lo, got), lo)
            top = torch.where(active & ~ok, torch.minimum(top, eps), top)
            # a counterexample (checked on the model) is a real upper end: the bracket
            # never reopens past it
            cex = res.falsified.to(lo.device) & active
            hi = torch.where(cex, torch.minimum(hi, res.counterexample_norm.to(hi)), hi)
            growth = torch.where(active, torch.where(ok, growth * 2, growth / 2), growth)
            growth = growth.clamp(min=rtol)
            domains += res.domains
            # every active sample pays its own search time plus an equal share of the
            # step's time outside the searches (the steps' charges add up to their wall
            # time; charging each sample at least wall / active instead would bill a
            # sample closed early for the longest sample's search and leave its budget
            # unused)
            act = active.cpu()
            own = torch.where(act, res.seconds, torch.zeros_like(res.seconds))
            rest = max(0.0, wall - float(own.sum())) / max(1, int(act.sum()))
            spent = own + rest
            last_unknown = torch.where(act & ~ok.cpu(), spent,
                                       torch.where(act, torch.zeros_like(spent), last_unknown))
            last_unknown_domains = torch.where(
                act & ~ok.cpu(), res.domains,
                torch.where(act, torch.zeros_like(res.domains), last_unknown_domains))
            budget -= torch.where(act, spent, torch.zeros_like(spent))
            RadiusTrace.record(tr_s, tr_r, tr_n, grew, opts.time_budget - budget, lo.cpu())
        bar.finish()
        searched = torch.minimum(searched, hi)  # with the counterexamples found on the way
        ratio = torch.where((searched > 0) & torch.isfinite(searched), lo / searched,
                            torch.full_like(lo, math.nan))
        return BatchResult(lo, base.label, base.runner_up, base.margin,
                           {graph.input.name: lo} if trace else {},
                           {"upper": searched, "ratio": ratio, "domains": domains,
                            "from_start": lo <= base.radius,
                            "trace_seconds": tr_s, "trace_radius": tr_r},
                           outputs=base.outputs, unsafe=base.unsafe)


class _Progress:
    """The ``progress`` callback of :class:`BabMethod` in units of samples: seconds spent
    divided by the per-sample budget, the running sum capped at the samples ``n``."""

    def __init__(self, callback: Callable[[float], None] | None, n: int, per: float) -> None:
        self.callback, self.n, self.per, self.done = callback, float(n), per, 0.0

    def spent(self, seconds: float) -> None:
        """Report ``seconds`` of search (all samples together)."""
        if self.callback is None:
            return
        k = min(self.n - self.done, max(0.0, seconds) / self.per)
        if k > 0:
            self.done += k
            self.callback(k)

    def finish(self) -> None:
        """Report what is left of the samples (budget the closed samples did not use)."""
        if self.callback is not None and self.done < self.n:
            self.callback(self.n - self.done)
            self.done = self.n


def _check_upper(upper: Any, n: int) -> torch.Tensor:
    """The upper ends of the search, float64 [n], each > 0 (``inf`` allowed)."""
    if isinstance(upper, bool) or not isinstance(upper, (int, float, torch.Tensor)):
        raise BadArgumentError("upper must be a number or a tensor [N] of radii")
    u = torch.as_tensor(upper, dtype=torch.float64).detach().cpu().flatten()
    if u.numel() == 1:
        u = u.expand(n).clone()
    if u.numel() != n:
        raise BadArgumentError(f"upper has {u.numel()} values for {n} samples")
    if bool(torch.isnan(u).any()) or bool((u <= 0).any()):
        raise BadArgumentError("upper must be > 0 (inf allowed) for every sample")
    return u


register_method(BabMethod())
