r"""``alpha``: CROWN with the lower slopes of unstable ReLUs optimised (alpha-CROWN).

Every slope :math:`\alpha\in[0,1]` gives a valid lower line :math:`\alpha z\le\mathrm{ReLU}(z)`
on :math:`[l,u]` with :math:`l<0<u` (``docs/theory/linear_relaxation.md`` §ReLU), so the
slopes are free parameters of the bound: for each margin :math:`f_y-f_j` and each ReLU of
the final backward walk, one slope per neuron, chosen by projected gradient ascent (Adam)
on the margin's bound :math:`c_j-\varepsilon\nu_j` at the radius being tried (Xu et al.,
*Fast and Complete*, ICLR 2021). Whatever the optimiser does, the bound returned is
recomputed without gradients from slopes clamped to :math:`[0,1]`, with the rounding
margins of ``crown``: the optimisation changes tightness, never validity.

The search starts from the ``crown`` radius (itself from the ``sound`` one) and runs the
same per-sample search with the optimised relaxation; the slopes of a sample are kept
from one radius to the next (warm start) and the best iterate per sample and margin is
the one used. Intermediate bounds are those of ``crown``.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass, field
from typing import Any

import torch

from boundkit.bounds.activation import ReLURelaxation
from boundkit.bounds.crown import (
    CrownMethod,
    CrownPlan,
    CrownRun,
    RadiusSearch,
    RadiusStep,
    Samples,
    Scratch,
    check_rtol,
    radius_step,
    search_radius,
)
from boundkit.bounds.method import register_method
from boundkit.bounds.relaxation import FINAL_SPEC, Interval, RelaxContext, SlopeKey
from boundkit.graph.graph import Graph, Node

#: the tolerance of the ``crown`` search whose radius starts the optimised search (looser
#: than the default rtol: it only needs a good start)
START_RTOL = 1e-2

#: the most slopes (per sample) one (refined node, ReLU) pair may hold: 2 M_node M_relu
INTERMEDIATE_SLOPES = 1 << 20


@dataclass
class AlphaSamples(Samples):
    """``crown``'s per-sample state and the slopes found so far."""

    #: slopes per walk and ReLU ([N, S, *shape] for the final walk, [N, 2M, *shape] for a
    #: refined node's) in [s, 1]; NaN rows were never optimised (warm start across radii)
    params: dict[SlopeKey, torch.Tensor] = field(default_factory=dict)


@dataclass
class AlphaScratch(Scratch):
    """``crown``'s scratch and the live (gradient-carrying) slopes of the iteration running."""

    live: dict[SlopeKey, torch.Tensor] = field(default_factory=dict)


class AlphaRun(CrownRun):
    """A :class:`CrownRun` whose backward walks use optimised ReLU lower slopes (once
    :attr:`optimise` is set): the final walk's (one slope per margin and neuron) and those
    of the walks refining intermediate bounds (one per bounded neuron, side and ReLU
    neuron) where that pair holds at most :data:`INTERMEDIATE_SLOPES` per sample."""

    samples_type = AlphaSamples
    samples: AlphaSamples
    scratch: AlphaScratch

    def __init__(self, graph: Graph, plan: CrownPlan, x0: torch.Tensor,
                 box: tuple[float, float] | None, iterations: int, lr: float) -> None:
        super().__init__(graph, plan, x0, box)
        self.iterations, self.lr = iterations, lr
        self.optimise = False
        #: each slope's floor (the ReLU's negative slope), shared by derived runs
        self._floor: dict[SlopeKey, float] = {}

    def new_scratch(self) -> AlphaScratch:
        return AlphaScratch()

    def absorb(self, sub: CrownRun, idx: torch.Tensor) -> None:
        assert isinstance(sub, AlphaRun)
        super().absorb(sub, idx)
        params = self.samples.params
        for k, v in sub.samples.params.items():
            mine = params.get(k)
            if mine is None:
                # rows never optimised stay NaN: they start from crown's choice
                mine = torch.full((self.n, *v.shape[1:]), math.nan, dtype=v.dtype,
                                  device=v.device)
                params[k] = mine
            mine[idx] = v

    def _start(self, key: SlopeKey, relu: Node, ctx: RelaxContext, rows: int) -> torch.Tensor:
        """The first slopes of a walk's ReLU: the warm start, else crown's choice (1 where
        u > -l, else the negative slope) [N, rows, *shape], as a leaf to optimise."""
        rule = self.plan.rules[relu.name]
        assert isinstance(rule, ReLURelaxation)
        self._floor[key] = rule.slope(relu)
        iv = ctx.intervals[relu.inputs[0]]
        start = torch.where(iv.hi > -iv.lo, torch.ones_like(iv.hi),
                            torch.full_like(iv.hi, self._floor[key])).unsqueeze(1).expand(
            self.n, rows, *iv.hi.shape[1:])
        warm = self.samples.params.get(key)
        if warm is not None:
            start = torch.where(torch.isnan(warm), start, warm)
        return start.detach().clone().requires_grad_(True)

    def walk_slopes(self, node: Node, idx: torch.Tensor, ctx: RelaxContext,
                    windows: dict[str, tuple[tuple[int, int], tuple[int, int]]] | None = None
                    ) -> dict[SlopeKey, torch.Tensor]:
        if not self.optimise:
            return {}
        m = math.prod(node.out_shape)
        rows = torch.cat([idx, idx + m], 1)  # lower bounds, then upper bounds
        out = {}
        for relu in self._relus():
            key = SlopeKey(node.name, relu.name)
            size = math.prod(relu.out_shape)
            if relu.name not in self._upstream(node) or 2 * m * size > INTERMEDIATE_SLOPES:
                continue
            p = self.scratch.live.get(key)
            if p is None:
                p = self.scratch.live[key] = self._start(key, relu, ctx, 2 * m)
            index = rows.reshape(*rows.shape, *([1] * len(relu.out_shape)))
            if windows is not None and relu.name in windows:  # the walk's window only
                lo, hi = windows[relu.name]
                p = p[..., lo[0]:hi[0], lo[1]:hi[1]]
            out[key] = p.gather(1, index.expand(-1, -1, *p.shape[2:]))
        return out

    def _relus(self) -> list[Node]:
        return [n for n in self.plan.nodes if isinstance(self.plan.rules.get(n.name),
                                                         ReLURelaxation)]

    def _upstream(self, node: Node) -> set[str]:
        """The nodes before ``node`` in the plan's topological order."""
        order = [n.name for n in self.plan.nodes]
        return set(order[:order.index(node.name)])

    def _bound(self, eps: torch.Tensor, spec: torch.Tensor) -> tuple[RelaxContext, torch.Tensor]:
        """One pass with the live slopes: intervals, then the margins' bound at ``eps``."""
        ctx = self.intervals(eps)
        s = spec.shape[1]
        for relu in self._relus():
            key = SlopeKey(FINAL_SPEC, relu.name)
            if key not in self.scratch.live:
                self.scratch.live[key] = self._start(key, relu, ctx, s)
            ctx.slopes[key] = self.scratch.live[key]
        return ctx, self.backward(self.graph.logits, spec, ctx).at(eps)

    def evaluate(self, eps: torch.Tensor, label: torch.Tensor) -> RadiusStep:
        if not self.optimise or not self._relus():
            return super().evaluate(eps, label)
        spec = self.margin_spec(label)
        own = torch.nn.functional.one_hot(label, spec.shape[1]).bool()
        self.scratch.live = {}
        self.scratch.frozen = {}
        with torch.enable_grad():
            # a first pass creates the slopes; intervals no slope reaches are kept as they are
            _, val = self._bound(eps, spec)
            self.scratch.frozen = self._unaffected(eps)
            params = self.scratch.live
            opt = torch.optim.Adam(list(params.values()), lr=self.lr)
            best_val = torch.full((self.n,), -math.inf, dtype=spec.dtype, device=spec.device)
            best = {k: v.detach().clone() for k, v in params.items()}
            for it in range(self.iterations + 1):
                if it > 0:
                    _, val = self._bound(eps, spec)
                    # a walk first needed now (the slopes moved an interval across 0):
                    # its slopes start where a first pass would have started them
                    for k in params.keys() - best.keys():
                        best[k] = params[k].detach().clone()
                        opt.add_param_group({"params": [params[k]]})
                with torch.no_grad():
                    score = torch.where(own, math.inf, val).min(1).values
                    better = score > best_val
                    best_val = torch.where(better, score, best_val)
                    for k, p in params.items():
                        m = better.reshape(-1, *([1] * (p.dim() - 1)))
                        best[k] = torch.where(m, p.detach(), best[k])
                if it == self.iterations:
                    break
                loss = -torch.where(torch.isfinite(val) & ~own, val, torch.zeros_like(val)).sum()
                if not loss.requires_grad:  # no slope reaches the bound (all stable, or cut)
                    break
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                with torch.no_grad():
                    for k, p in params.items():
                        p.clamp_(self._floor[k], 1.0)
        # the bound used: recomputed without gradients from each sample's best slopes (the
        # rule clamps them into [s, 1] again)
        self.samples.params = {k: v.clamp(self._floor[k], 1.0) for k, v in best.items()}
        self.scratch.live = dict(self.samples.params)
        self.scratch.frozen = {}
        with torch.no_grad():
            ctx, _ = self._bound(eps, spec)
            conc = self.backward(self.graph.logits, spec, ctx)
        self.scratch.live = {}
        return radius_step(conc, eps, label)

    def _unaffected(self, eps: torch.Tensor) -> dict[str, Interval]:
        """The intervals of the nodes before the first one whose refinement uses slopes,
        computed once without gradients."""
        keyed = {k.spec for k in self.scratch.live if k.spec != FINAL_SPEC}
        order = [n.name for n in self.plan.nodes if n.op != "input"]
        first = min((order.index(n) for n in keyed), default=len(order))
        if first == 0:
            return {}
        with torch.no_grad():
            live, self.scratch.live = self.scratch.live, {}
            optimise, self.optimise = self.optimise, False
            try:
                ctx = self.intervals(eps)
            finally:
                self.scratch.live, self.optimise = live, optimise
        return {n: ctx.intervals[n] for n in order[:first]}


class AlphaMethod(CrownMethod):
    """``crown`` with optimised ReLU lower slopes; radius by the same per-sample search,
    started from the ``crown`` radius."""

    name = "alpha"
    is_guarantee = True
    description = ("crown with the ReLU lower slopes optimised per margin "
                   "(alpha-CROWN; iterations, lr)")

    def options(self) -> tuple[str, ...]:
        return ("box", "rtol", "iterations", "lr")

    def make_run(self, graph: Graph, plan: CrownPlan, x0: torch.Tensor,
                 box: tuple[float, float] | None, options: dict[str, Any]) -> CrownRun:
        return AlphaRun(graph, plan, x0, box, _check_iterations(options.get("iterations", 20)),
                        _check_lr(options.get("lr", 0.1)))

    def search(self, run: CrownRun, label: torch.Tensor, lo: torch.Tensor,
               margin: torch.Tensor, options: dict[str, Any]) -> RadiusSearch:
        """The ``crown`` search to ``min(rtol, START_RTOL)``, then the optimised one to rtol,
        from the radius the first had certified when its bracket first closed to
        ``START_RTOL`` (``RadiusSearch.coarse``) and without the bounds the first kept from
        its failed steps; the larger of the two radii. The radii either search tries do not
        depend on rtol, nor does the state the second starts from, so the radius never
        shrinks as rtol tightens, and it is never below ``crown``'s."""
        assert isinstance(run, AlphaRun)
        rtol = check_rtol(options.get("rtol", 1e-3))
        crown = search_radius(run, label, lo, margin, min(rtol, START_RTOL), reach=run.reach,
                              coarse=START_RTOL)
        run.optimise = True
        # the kept bounds depend on how far the crown search went (on rtol): start afresh
        run.samples.kept = {}
        found = search_radius(run, label, torch.maximum(crown.coarse, lo), margin, rtol,
                              first=1.05, reach=run.reach)
        return RadiusSearch(torch.maximum(found.radius, crown.radius),
                            found.fail,
                            found.evaluations + crown.evaluations,
                            found.capped | crown.capped, crown.coarse)


#: the largest accepted ``iterations`` and ``lr`` (slopes live in [s, 1]: larger steps only
#: jump between the ends)
MAX_ITERATIONS = 10_000
MAX_LR = 10.0


def _check_iterations(value: Any) -> int:
    try:
        if isinstance(value, bool):
            raise TypeError
        n = operator.index(value)
    except TypeError:
        raise ValueError(f"iterations must be an integer in [1, {MAX_ITERATIONS}], got "
                         f"{value!r}") from None
    if not 1 <= n <= MAX_ITERATIONS:
        raise ValueError(f"iterations must be an integer in [1, {MAX_ITERATIONS}], got {n}")
    return n


def _check_lr(value: Any) -> float:
    message = f"lr must be a number in (0, {MAX_LR:g}], got {value!r}"
    if isinstance(value, bool):
        raise ValueError(message)
    try:
        lr = float(value)
    except (TypeError, ValueError):
        raise ValueError(message) from None
    if not 0.0 < lr <= MAX_LR:
        raise ValueError(message)
    return lr


register_method(AlphaMethod())
