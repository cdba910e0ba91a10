r"""Bounding a batch of domains with beta: the split ReLU rule (``crown``'s ReLU plus the
beta terms of the split constraints), the plan that puts it on every ReLU, and
:class:`Bounder`, which bounds every domain of a batch in one engine call under its splits
and then optimises the slopes :math:`\alpha` and multipliers :math:`\beta` of the final
walk by projected gradient ascent (every iterate a valid bound; per margin the best kept).
Proofs: ``docs/theory/branch_and_bound.md``."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch

from boundkit.bounds.activation import ReLURelaxation
from boundkit.bounds.bab.branching import neuron_scores
from boundkit.bounds.bab.domains import Domains, domain_radius
from boundkit.bounds.bab.options import BabOptions
from boundkit.bounds.crown import CrownPlan, CrownRun, plan_crown
from boundkit.bounds.numerics import UNIT_ROUNDOFF
from boundkit.bounds.pooling import MaxPoolRelaxation
from boundkit.bounds.relaxation import (
    FINAL_SPEC,
    Interval,
    LinearBounds,
    RelaxContext,
    SlopeKey,
    Splits,
    dot,
)
from boundkit.errors import UnsupportedLayerError
from boundkit.graph.graph import Graph, Node


class SplitReLU(ReLURelaxation):
    r"""The ``crown`` ReLU rule plus, on the final walk only, the beta terms of the split
    constraints: :math:`a' = a-\beta\odot\sigma` at the ReLU's input, :math:`\beta\ge0`,
    :math:`\sigma\in\{-1,0,1\}` the split sides (0: no split, no term). The subtraction
    rounds by at most :math:`u|a'|(1+2u)` per entry; :math:`2u\langle|a'|,|y|\rangle`
    (computed, its own rounding included) is charged. The walk's coefficients at the ReLU's
    output are recorded for the branching score. One instance per branch-and-bound plan."""

    def __init__(self) -> None:
        #: relu name -> (beta [D, C, *shape] (clamped to >= 0 here), sides [D, 1, *shape])
        self.beta: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        #: relu name -> the final walk's coefficients at the ReLU's output [D, C, *shape]
        self.record: dict[str, torch.Tensor] = {}

    def backward(self, node: Node, ctx: RelaxContext, lb: LinearBounds) -> list[LinearBounds]:
        (out,) = super().backward(node, ctx, lb)
        if ctx.spec != FINAL_SPEC:
            return [out]
        self.record[node.name] = lb.A.detach()
        term = self.beta.get(node.name)
        if term is None:
            return [out]
        beta, side = term
        A = out.A - beta.clamp(min=0.0) * side  # beta * (+-1 or 0): exact
        mag = ctx.interval_in(node).mag
        charge = 2 * UNIT_ROUNDOFF * dot(A.abs(), mag)
        return [LinearBounds(A, out.bias, out.err + charge, out.forks)]


@dataclass
class BabPlan:
    """Per-model plan: the ``crown`` plan with this plan's own :class:`SplitReLU` rule on
    every ReLU, and the ReLU nodes that can be split."""

    crown: CrownPlan
    rule: SplitReLU
    relus: list[Node]
    #: the plain ``crown`` plan (for the ``crown`` / ``alpha`` start of the radius search)
    base: CrownPlan
    #: the nodes whose intervals a domain inherits from its parent (valid on the parent's
    #: larger set): every ReLU's input and every node the ``crown`` plan refines (a max
    #: pooling's input)
    kept: list[str] = dataclasses.field(default_factory=list)


def plan_bab(graph: Graph) -> BabPlan:
    """The plan, refusing (naming the node) a model with a nonlinearity branch and bound
    neither splits nor keeps relaxed, or a node bounded through the ``sound`` modulus (its
    bound is no linear function the splits could refine). Max poolings keep ``crown``'s
    relaxation, built on each domain from its own input intervals (valid on the domain's
    set, so sound there: ``docs/theory/branch_and_bound.md`` §Max pooling); only the ReLUs
    are split."""
    base = plan_crown(graph)
    rule = SplitReLU()
    rules = dict(base.rules)
    relus = []
    for n in base.nodes:
        if n.op == "input":
            continue
        r = base.rules[n.name]
        if r is None:
            raise UnsupportedLayerError(n.name, n.op, "bab",
                                        "no linear relaxation (bounded through the sound "
                                        "modulus), so it cannot be branched on")
        if r.nonlinear:
            if isinstance(r, MaxPoolRelaxation):
                continue
            if not isinstance(r, ReLURelaxation):
                raise UnsupportedLayerError(n.name, n.op, "bab",
                                            "branch and bound splits ReLU and LeakyReLU "
                                            "neurons and keeps max poolings relaxed, "
                                            "nothing else")
            rules[n.name] = rule
            relus.append(n)
    kept = list(dict.fromkeys([r.inputs[0] for r in relus] + list(base.refine)))
    return BabPlan(dataclasses.replace(base, rules=rules), rule, relus, base, kept)



def bab_plan(graph: Graph) -> BabPlan:
    """The graph's :class:`BabPlan`, cached on the graph."""
    plan = graph.cache.get("bab_plan")
    if plan is None:
        plan = graph.cache["bab_plan"] = plan_bab(graph)
    return plan


class _Adam:
    """Adam (Kingma and Ba 2015) on a few leaf tensors, each with its learning rate
    (``torch.optim.Adam`` imports ``torch._dynamo`` on first use: seconds)."""

    def __init__(self, groups: list[tuple[torch.Tensor, float]], b1: float = 0.9,
                 b2: float = 0.999) -> None:
        self.groups, self.b1, self.b2, self.t = groups, b1, b2, 0
        self.m = [torch.zeros_like(p) for p, _ in groups]
        self.v = [torch.zeros_like(p) for p, _ in groups]

    def step(self, loss: torch.Tensor) -> None:
        ps = [p for p, _ in self.groups]
        grads = torch.autograd.grad(loss, ps, allow_unused=True)
        self.t += 1
        with torch.no_grad():
            for i, ((p, lr), g) in enumerate(zip(self.groups, grads)):
                if g is None:
                    continue
                self.m[i].mul_(self.b1).add_(g, alpha=1 - self.b1)
                self.v[i].mul_(self.b2).addcmul_(g, g, value=1 - self.b2)
                mh = self.m[i] / (1 - self.b1 ** self.t)
                vh = self.v[i] / (1 - self.b2 ** self.t)
                p.sub_(lr * mh / (vh.sqrt() + 1e-8))


@dataclass
class Bounded:
    """What bounding a batch of domains gives: the best lower bound per margin [D, C]
    (``+inf`` at the own class), the proven domains [D] (every margin positive, or empty),
    the branching score per ReLU (name -> [D, M], ``-inf`` where the neuron cannot be
    split) and the optimised slopes and multipliers (warm start of the children)."""

    lower: torch.Tensor
    proven: torch.Tensor
    done: torch.Tensor
    scores: dict[str, torch.Tensor]
    alpha: dict[str, torch.Tensor]
    beta: dict[str, torch.Tensor]
    #: the ReLU inputs' bounds used (node name -> [D, *shape])
    lo: dict[str, torch.Tensor]
    hi: dict[str, torch.Tensor]
    #: whether the intermediate bounds were recomputed
    fresh: bool = True
    #: per domain, a radius up to which its set holds no class change [D] (its own
    #: bound's, or an ancestor's)
    radius: torch.Tensor | None = None



class Bounder:
    """Bounds batches of domains of one batch of samples at radii ``eps`` [N] (labels
    ``label`` [N]) on a :class:`CrownRun` built with the plan's rules."""

    def __init__(self, graph: Graph, plan: BabPlan, run: CrownRun, label: torch.Tensor,
                 eps: torch.Tensor, options: BabOptions) -> None:
        self.graph, self.plan, self.run, self.label, self.eps = graph, plan, run, label, eps
        self.opt = options
        self.n = run.n
        self.shapes = {r.name: tuple(r.in_shapes[0]) for r in plan.relus}

    def bound(self, dom: Domains, iterations: int | None = None) -> Bounded:
        """Bound every domain of ``dom`` (one engine call, then ``iterations`` (default:
        the options') optimisation steps on the final walk's slopes and multipliers)."""
        iters = self.opt.iterations if iterations is None else iterations
        sub = self.run.subset(dom.sample)
        if sub is None:  # plan_bab refuses the nodes that would prevent it
            raise AssertionError("branch and bound needs a run that can be subset")
        splits = Splits(dom.signs)
        sub.splits = splits
        eps = self.eps[dom.sample]
        label = self.label[dom.sample]
        pre = self.plan.kept
        fresh = (not dom.lo or dom.age is None
                 or bool((dom.age >= self.opt.refresh).any()))
        if not fresh:  # an ancestor's bounds hold on this domain's (smaller) set
            sub.scratch.frozen = {k: Interval(dom.lo[k], dom.hi[k]) for k in pre}
        with torch.no_grad():
            ctx = sub.intervals(eps)
            if fresh and dom.lo:  # both hold: keep the tighter of each
                for k in pre:
                    ctx.intervals[k] = ctx.intervals[k].meet(Interval(dom.lo[k], dom.hi[k]))
            empty = splits.empty(ctx) if dom.signs else torch.zeros(
                len(dom), dtype=torch.bool, device=eps.device)
        if dom.cls is None:
            spec = sub.margin_spec(label)
            own = torch.nn.functional.one_hot(label, spec.shape[1]).bool()
        else:  # the one margin f_y - f_cls
            eye = torch.eye(self.graph.num_classes, dtype=torch.float64, device=eps.device)
            spec = (eye[label] - eye[dom.cls]).reshape(len(dom), 1,
                                                       *self.graph.logits.out_shape)
            own = torch.zeros(len(dom), 1, dtype=torch.bool, device=eps.device)
        open_ = ~(own | dom.done)
        rule = self.plan.rule
        d, c = spec.shape[:2]
        alphas: dict[str, torch.Tensor] = {}
        betas: dict[str, torch.Tensor] = {}
        sides: dict[str, torch.Tensor] = {}
        # without optimisation steps the walk uses crown's own slopes and no multiplier
        # (no per-margin parameters to hold)
        for relu in self.plan.relus if iters > 0 else []:
            iv = ctx.interval_in(relu)
            shape = iv.lo.shape[1:]
            start = torch.where(iv.hi > -iv.lo, 1.0, 0.0).to(iv.lo.dtype).unsqueeze(1)
            warm = dom.alpha.get(relu.name)
            a0 = warm if warm is not None else start.expand(d, c, *shape)
            alphas[relu.name] = a0.detach().clone().requires_grad_(iters > 0)
            s = dom.signs.get(relu.name)
            if s is not None and bool((s != 0).any()):
                sides[relu.name] = s.to(iv.lo.dtype).unsqueeze(1)
                wb = dom.beta.get(relu.name)
                b0 = wb if wb is not None else torch.zeros(d, c, *shape, dtype=iv.lo.dtype,
                                                            device=iv.lo.device)
                betas[relu.name] = b0.detach().clone().requires_grad_(iters > 0)
        floor = {r.name: rule.slope(r) for r in self.plan.relus}
        best = torch.full((d, c), -math.inf, dtype=spec.dtype, device=spec.device)
        best_c, best_nu = torch.full_like(best, -math.inf), torch.zeros_like(best)
        best_a = {k: v.detach().clone() for k, v in alphas.items()}
        best_b = {k: v.detach().clone() for k, v in betas.items()}
        params = list(alphas.values()) + list(betas.values())
        optim = None
        if iters > 0 and params:
            optim = _Adam([(a, self.opt.lr_alpha) for a in alphas.values()]
                          + [(b, self.opt.lr_beta) for b in betas.values()])
        try:
            for it in range(iters + 1):
                rule.beta = {k: (betas[k], sides[k]) for k in betas}
                for k, a in alphas.items():
                    ctx.slopes[SlopeKey(FINAL_SPEC, k)] = a
                with torch.set_grad_enabled(optim is not None and it < iters):
                    conc = sub.backward(self.graph.logits, spec, ctx)
                    val = conc.at(eps)
                with torch.no_grad():
                    v = torch.where(own, math.inf, val.detach())
                    # every iterate is a valid bound: keep the best per margin
                    better = v > best
                    best = torch.where(better, v, best)
                    best_c = torch.where(better, conc.c.detach(), best_c)
                    best_nu = torch.where(better, conc.nu.detach(), best_nu)
                    # warm start of the children: the iterate best on the worst open margin
                    score = torch.where(open_, v, math.inf).min(1).values
                    prev = torch.where(open_, best, math.inf).min(1).values
                    take = (score >= prev).reshape(-1, 1)
                    for k, a in alphas.items():
                        t = take.reshape(-1, *([1] * (a.dim() - 1)))
                        best_a[k] = torch.where(t, a.detach(), best_a[k])
                    for k, b in betas.items():
                        t = take.reshape(-1, *([1] * (b.dim() - 1)))
                        best_b[k] = torch.where(t, b.detach(), best_b[k])
                if optim is None or it == iters:
                    break
                # push the open margins that are not proven yet
                w = open_ & (v <= 0) & torch.isfinite(val)
                loss = -torch.where(w, val, torch.zeros_like(val)).sum()
                if not loss.requires_grad:
                    break
                optim.step(loss)
                with torch.no_grad():
                    for k, a in alphas.items():
                        a.clamp_(floor[k], 1.0)
                    for b in betas.values():
                        b.clamp_(min=0.0)
            record = dict(rule.record)
        finally:
            rule.beta, rule.record = {}, {}
        done = dom.done | (best > 0)
        proven = empty | (done | own).all(1)
        # the radius each domain certifies on its own (docs/theory: the radius): the
        # margins still open, from the iterate kept for each
        radius = torch.where(empty | proven, eps,
                             domain_radius(best_c, best_nu, done | own, eps))
        radius = torch.maximum(radius, dom.radius) if dom.radius is not None else radius
        scores = neuron_scores(self.plan.relus, ctx, splits, dom, record, ~(done | own))
        return Bounded(best, proven, done, scores, best_a, best_b,
                       {k: ctx.intervals[k].lo for k in pre}, {k: ctx.intervals[k].hi for k in pre},
                       fresh, radius)

