r"""Branch and bound on the ReLUs that can switch: ``bk.verify`` and the ``bab`` method.

A *domain* is a sample with split constraints on some of its unstable ReLU neurons
(:class:`~boundkit.bounds.relaxation.Splits`: :math:`y_i\ge0` or :math:`y_i\le0` on the
neuron's input) and the set :math:`\mathcal{B}\cap S` of the ball's points that satisfy
them. A domain is bounded on the ``crown`` engine (:class:`~boundkit.bounds.crown.CrownRun`)
under its splits: every interval and linear bound then holds on
:math:`\mathcal{B}\cap S` (the split neuron's interval is clamped to its side, so it is
relaxed exactly), and a domain whose constraints contradict the sound interval of their
neuron is empty: proven. On top of that, the final walk carries

* optimised lower slopes :math:`\alpha\in[s,1]` of the unstable ReLUs (alpha-CROWN), and
* beta multipliers :math:`\beta_i\ge0` of the split constraints (beta-CROWN, Wang et al.
  2021): on :math:`S`, :math:`\sigma_i y_i\ge0` (:math:`\sigma_i=\pm1` the split's side), so
  any bound :math:`f\ge\langle a,y\rangle+c` also gives
  :math:`f\ge\langle a-\beta\odot\sigma,y\rangle+c` there, with the rounding of the
  subtraction charged (``docs/theory/branch_and_bound.md``).

Both are parameters of the bound, chosen by projected gradient ascent; every iterate is a
valid bound, and per margin the best iterate is kept. A domain is proven when every margin
:math:`f_y-f_j`, :math:`j\ne y`, has a positive lower bound (margins proven in an ancestor
stay proven: the child's set is a subset). Otherwise one unstable neuron is split, chosen by
a BaBSR-style score (Bunel et al. 2020): the bound loses
:math:`|a_i^-|\,\frac{-l_iu_i}{u_i-l_i}` to the intercept of the neuron's upper line
(:math:`a_i^-` the negative part of its backward coefficient for the margins still open),
which the split removes. The domains of all samples are bounded together in batches
(one engine call per batch, no per-domain loop).

``verify`` says per sample: *verified* (every domain proven: no perturbation of L2 norm
below the radius, inside the box, changes the class), *falsified* (a counterexample inside
the ball and the box, checked by re-running the model in its own dtype) or *unknown*
(budget spent, with the reason).
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from boundkit.bounds.activation import ReLURelaxation
from boundkit.bounds.crown import DEFAULT_BOX, CrownPlan, CrownRun, plan_crown
from boundkit.bounds.method import BatchResult, Method, register_method
from boundkit.bounds.numerics import UNIT_ROUNDOFF, round_down
from boundkit.bounds.output import margins
from boundkit.bounds.relaxation import (
    FINAL_SPEC,
    Interval,
    LinearBounds,
    RelaxContext,
    SlopeKey,
    Splits,
    dot,
)
from boundkit.errors import BadArgumentError, UnsupportedLayerError
from boundkit.graph.graph import Graph, Node
from boundkit.margin import label_margin

VERIFIED, FALSIFIED, UNKNOWN = "verified", "falsified", "unknown"

#: the clock the time budgets are charged on (wall seconds; a benchmark on a shared
#: machine may set ``time.process_time``, this process's CPU seconds)
CLOCK = time.perf_counter


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


def plan_bab(graph: Graph) -> BabPlan:
    """The plan, refusing (naming the node) a model with a nonlinearity branch and bound
    cannot split, or a node bounded through the ``sound`` modulus (its bound is no linear
    function the splits could refine)."""
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
            if not isinstance(r, ReLURelaxation):
                raise UnsupportedLayerError(n.name, n.op, "bab",
                                            "branch and bound splits ReLU and LeakyReLU "
                                            "neurons only")
            rules[n.name] = rule
            relus.append(n)
    return BabPlan(dataclasses.replace(base, rules=rules), rule, relus, base)


@dataclass
class Domains:
    """A batch of domains (D rows): the sample each belongs to, its split sides per ReLU
    (relu name -> int8 [D, *shape]), the margins proven in an ancestor (bool [D, C]) and the
    warm start of its slopes and multipliers (relu name -> [D, C, *shape], or empty)."""

    sample: torch.Tensor
    signs: dict[str, torch.Tensor]
    done: torch.Tensor
    alpha: dict[str, torch.Tensor] = field(default_factory=dict)
    beta: dict[str, torch.Tensor] = field(default_factory=dict)
    #: bounds of the ReLU inputs known so far (an ancestor's, valid on a superset of the
    #: domain's set): node name -> [D, *shape] each, or empty
    lo: dict[str, torch.Tensor] = field(default_factory=dict)
    hi: dict[str, torch.Tensor] = field(default_factory=dict)
    #: splits made since the intermediate bounds were last recomputed [D], or None (0)
    age: torch.Tensor | None = None
    #: a radius each domain's set is proven for (an ancestor's bound), or None
    radius: torch.Tensor | None = None
    #: the one competing class each domain is about ([D]; then ``done`` is [D, 1]), or
    #: None: every margin of the sample
    cls: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.sample.numel())

    def rows(self, idx: torch.Tensor) -> Domains:
        def sel(d: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            return {k: v[idx] for k, v in d.items()}
        return Domains(self.sample[idx], sel(self.signs), self.done[idx], sel(self.alpha),
                       sel(self.beta), sel(self.lo), sel(self.hi),
                       None if self.age is None else self.age[idx],
                       None if self.radius is None else self.radius[idx],
                       None if self.cls is None else self.cls[idx])

    def slice(self, a: int, b: int) -> Domains:
        """Rows ``a:b`` as views (no copy)."""
        def sel(d: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            return {k: v[a:b] for k, v in d.items()}
        return Domains(self.sample[a:b], sel(self.signs), self.done[a:b], sel(self.alpha),
                       sel(self.beta), sel(self.lo), sel(self.hi),
                       None if self.age is None else self.age[a:b],
                       None if self.radius is None else self.radius[a:b],
                       None if self.cls is None else self.cls[a:b])

    @staticmethod
    def cat(parts: list[Domains]) -> Domains:
        """The domains of ``parts`` in order. Split sides and multipliers missing from a
        part are zeros (no split, no term); warm slopes are kept only where every part has
        them."""
        parts = [p for p in parts if len(p)]

        def join(key: str, fill: bool) -> dict[str, torch.Tensor]:
            ds = [getattr(p, key) for p in parts]
            keys = set().union(*ds)
            if not fill and any(set(d) != keys for d in ds):
                return {}
            out = {}
            for k in keys:
                like = next(d[k] for d in ds if k in d)
                out[k] = torch.cat([d[k] if k in d else like.new_zeros(len(p), *like.shape[1:])
                                    for d, p in zip(ds, parts)])
            return out
        ages = [p.age if p.age is not None else torch.zeros_like(p.sample) for p in parts]
        rads = [p.radius if p.radius is not None else torch.zeros(len(p), dtype=torch.float64,
                                                                  device=p.sample.device)
                for p in parts]
        cls = None if any(p.cls is None for p in parts) else torch.cat([p.cls for p in parts])
        return Domains(torch.cat([p.sample for p in parts]), join("signs", True),
                       torch.cat([p.done for p in parts]), join("alpha", False),
                       join("beta", True), join("lo", False), join("hi", False),
                       torch.cat(ages), torch.cat(rads), cls)


def domain_radius(c: torch.Tensor, nu: torch.Tensor, closed: torch.Tensor, eps: torch.Tensor
                  ) -> torch.Tensor:
    r"""The radius a domain's bounds :math:`c_j-\varepsilon'\nu_j` (relaxation built for
    radius ``eps`` [D]) certify, over the margins not ``closed`` [D, C]:
    :math:`\min(\varepsilon,\min_j c_j/\nu_j)`, the quotient rounded down by 8 ulps
    (its one rounding), 0 where negative (as :func:`boundkit.bounds.crown.radius_step`)."""
    safe = torch.where(nu > 0, nu, torch.ones_like(nu))
    inf = torch.full_like(nu, math.inf)
    r = torch.where(nu > 0, c / safe, torch.where(c > 0, inf, -inf))
    phi = torch.where(closed, inf, r).min(1).values
    return torch.minimum(round_down(phi.clamp(min=0.0), 8), eps)


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


#: optimisation steps on a domain with no neuron left to split before it is given up
STUCK_ITERATIONS = 30

#: ``refresh`` value meaning "never recompute the intermediate bounds below the root"
NEVER = 1 << 20


@dataclass(frozen=True)
class BabOptions:
    """Typed options of the search (checked at the boundary by :func:`check_options`)."""

    #: seconds of bounding per sample (the batch's wall time is charged to its samples in
    #: proportion to their domains in it)
    time_budget: float = 5.0
    #: domains bounded per sample, at most
    max_domains: int = 20_000
    #: domains per engine call
    batch: int = 512
    #: gradient steps on the slopes and multipliers per batch (0: crown with splits: on
    #: the MNIST MLP at 2 s per sample, the domains this buys outweigh the tighter bounds)
    iterations: int = 0
    lr_alpha: float = 0.1
    lr_beta: float = 0.05
    #: keep the slopes and multipliers of a domain for its children while the kept
    #: tensors hold at most this many elements
    warm_elements: int = 1 << 26
    #: recompute the intermediate bounds (the refinement walks, under the splits) once a
    #: domain is this many splits from its last recomputation (1: always; else the
    #: ancestor's bounds are reused, valid on the larger set; the default: the root's)
    refresh: int = NEVER
    #: one domain per (sample, competing class): a one-row final walk each, and splits
    #: chosen for that margin alone
    per_class: bool = True


def check_options(time_budget: Any, max_domains: Any, batch: Any, iterations: Any,
                  refresh: Any = NEVER) -> BabOptions:
    """:class:`BabOptions` from user values (a one-line ``BadArgumentError`` otherwise)."""
    from boundkit.validate import check_int, check_positive

    t = check_positive("time_budget", time_budget, maximum=1e7)
    d = check_int("max_domains", max_domains)
    b = check_int("batch", batch, maximum=1 << 16)
    i = check_int("iterations", iterations, minimum=0, maximum=10_000)
    f = check_int("refresh", refresh, maximum=NEVER)
    assert t is not None and d is not None and b is not None and i is not None
    assert f is not None
    return BabOptions(time_budget=t, max_domains=d, batch=b, iterations=i, refresh=f)


class BranchAndBound:
    """The search for one batch of samples at radii ``eps`` [N] (the samples' labels
    ``label`` [N]), on a :class:`CrownRun` built with the plan's rules."""

    def __init__(self, graph: Graph, plan: BabPlan, run: CrownRun, label: torch.Tensor,
                 eps: torch.Tensor, options: BabOptions) -> None:
        self.graph, self.plan, self.run, self.label, self.eps = graph, plan, run, label, eps
        self.opt = options
        self.n = run.n
        self.shapes = {r.name: tuple(r.in_shapes[0]) for r in plan.relus}

    # ------------------------------------------------------------------ bounding
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
        pre = [r.inputs[0] for r in self.plan.relus]
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
        scores = self._scores(ctx, splits, dom, record, ~(done | own))
        return Bounded(best, proven, done, scores, best_a, best_b,
                       {k: ctx.intervals[k].lo for k in pre}, {k: ctx.intervals[k].hi for k in pre},
                       fresh, radius)

    def _scores(self, ctx: RelaxContext, splits: Splits, dom: Domains,
                record: dict[str, torch.Tensor], open_: torch.Tensor
                ) -> dict[str, torch.Tensor]:
        r"""BaBSR-style score per neuron [D, M]: :math:`\sum_j|a_{ji}^-|\frac{-l_iu_i}
        {u_i-l_i}` over the open margins :math:`j`, plus a small
        :math:`10^{-3}\sum_j|a_{ji}|(u_i-l_i)` to rank neurons the intercepts do not reach;
        ``-inf`` on stable or already split neurons."""
        out = {}
        w = open_.to(ctx.acts[self.graph.logits.name].dtype).unsqueeze(2)  # [D, C, 1]
        for relu in self.plan.relus:
            iv = splits.constrain(relu.name, ctx.interval_in(relu))
            lo, hi = iv.lo.flatten(1), iv.hi.flatten(1)
            s = dom.signs.get(relu.name)
            free = (lo < 0) & (hi > 0)
            if s is not None:
                free &= s.flatten(1) == 0
            a = record.get(relu.name)
            if a is None:
                out[relu.name] = torch.full_like(lo, -math.inf)
                continue
            a = a.flatten(2)
            width = torch.where(free, hi - lo, torch.ones_like(hi))
            inter = torch.where(free, -lo * hi / width, torch.zeros_like(hi)).unsqueeze(1)
            sc = (w * ((-a).clamp(min=0) * inter + 1e-3 * a.abs() * width.unsqueeze(1))).sum(1)
            out[relu.name] = torch.where(free, sc + 1e-300, torch.full_like(sc, -math.inf))
        return out

    # ------------------------------------------------------------------ branching
    def branch(self, dom: Domains, b: Bounded) -> tuple[Domains, torch.Tensor]:
        """Two children per domain of ``dom`` (every domain here unproven), split on its
        best-scored neuron; and the domains [D] with no neuron left to split."""
        names = list(b.scores)
        flat = torch.cat([b.scores[k] for k in names], 1)
        best, pos = flat.max(1)
        stuck = ~torch.isfinite(best)
        sizes = [b.scores[k].shape[1] for k in names]
        starts = torch.tensor([0, *sizes], device=pos.device).cumsum(0)
        dev = dom.sample.device
        keep = torch.nonzero(~stuck).flatten()
        d = int(keep.numel())
        signs = {}
        for i, k in enumerate(names):
            shape = self.shapes[k]
            s = dom.signs.get(k)
            s = (torch.zeros(len(dom), math.prod(shape), dtype=torch.int8, device=dev)
                 if s is None else s.flatten(1))[keep]
            local = pos[keep] - starts[i]
            hit = (local >= 0) & (local < sizes[i])
            rows = torch.nonzero(hit).flatten()
            plus, minus = s.clone(), s.clone()
            plus[rows, local[rows]] = 1
            minus[rows, local[rows]] = -1
            signs[k] = torch.cat([plus, minus]).reshape(2 * d, *shape)
        warm = 4 * sum(v[keep].numel() for v in b.alpha.values())  # alpha and beta, x2
        alpha: dict[str, torch.Tensor] = {}
        beta: dict[str, torch.Tensor] = {}
        if b.alpha and warm <= self.opt.warm_elements:
            alpha = {k: v[keep].repeat(2, *([1] * (v.dim() - 1))) for k, v in b.alpha.items()}
            for k in names:  # every ReLU with a split gets multipliers (zeros where new)
                old = b.beta.get(k)
                if old is None:
                    old = torch.zeros_like(b.alpha[k])
                beta[k] = old[keep].repeat(2, *([1] * (old.dim() - 1)))
            beta = {k: v for k, v in beta.items() if bool((signs[k] != 0).any())}
        two = lambda t: t[keep].repeat(2, *([1] * (t.dim() - 1)))  # noqa: E731
        age = (torch.zeros_like(dom.sample) if b.fresh or dom.age is None else dom.age) + 1
        return Domains(two(dom.sample), signs, two(b.done), alpha, beta,
                       {k: two(v) for k, v in b.lo.items()}, {k: two(v) for k, v in b.hi.items()},
                       two(age), None if b.radius is None else two(b.radius),
                       None if dom.cls is None else two(dom.cls)), stuck

    # ------------------------------------------------------------------ the loop
    def solve(self, active: torch.Tensor, budget: torch.Tensor | None = None) -> Solved:
        """Run the search on the samples ``active`` [N] (bool), each with ``budget`` [N]
        seconds (default: the options' ``time_budget``), from their root domains; domains
        are bounded smallest certified radius first."""
        dev = self.eps.device
        n = self.n
        if budget is None:
            budget = torch.full((n,), self.opt.time_budget, dtype=torch.float64)
        budget = budget.to(device="cpu", dtype=torch.float64)
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

        while pool:
            t0 = CLOCK()
            # a batch from the chunks with the smallest keys
            pool.sort(key=lambda kv: kv[0])
            parts, size = [], 0
            while pool and size < self.opt.batch:
                key, chunk = pool.pop(0)
                need = self.opt.batch - size
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
            dt = CLOCK() - t0
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
            over_d = (count >= self.opt.max_domains) & ~closed
            close(torch.nonzero(over_t).flatten().tolist(), front,
                  "the time budget was spent")
            close(torch.nonzero(over_d & ~over_t).flatten().tolist(), front,
                  f"{self.opt.max_domains} subproblems bounded")
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


# ---------------------------------------------------------------------- counterexamples
def pgd_counterexample(model: nn.Module, x: torch.Tensor, label: torch.Tensor,
                       radius: torch.Tensor, box: tuple[float, float] | None,
                       steps: int = 40, restarts: int = 2, seed: int = 0
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""Projected gradient ascent on the largest competing margin
    :math:`\max_{j\ne y}f_j-f_y` inside the L2 ball of radius ``radius`` [N] (shrunk by
    :math:`10^{-6}` relative so the point lies strictly inside) and the box, in the model's
    own dtype (Madry et al. 2018). Returns ``(found [N], x_adv, norm [N])``: ``found`` only
    where the model, re-run on exactly ``x_adv``, predicts another class and the float64
    norm of ``x_adv - x`` is below the radius (:func:`boundkit.attacks.base.verify`)."""
    from boundkit.attacks.base import Misclassification
    from boundkit.attacks.base import verify as check_adv

    dtype = next((p.dtype for p in model.parameters()), x.dtype)
    dev = next((p.device for p in model.parameters()), x.device)
    x = x.to(device=dev, dtype=dtype)
    label = label.to(dev)
    r = radius.to(device=dev, dtype=torch.float64) * (1 - 1e-6)
    crit = Misclassification(label)
    found = torch.zeros(x.shape[0], dtype=torch.bool, device=dev)
    best = x.clone()
    norm = torch.full((x.shape[0],), math.inf, dtype=torch.float64, device=dev)
    view = (-1, *([1] * (x.dim() - 1)))
    rr = r.to(dtype).reshape(view)
    gen = torch.Generator(device="cpu").manual_seed(seed)

    def project(d: torch.Tensor) -> torch.Tensor:
        nrm = d.flatten(1).norm(dim=1).reshape(view)
        d = d * torch.clamp(rr / nrm.clamp_min(1e-30), max=1.0)
        if box is not None:
            d = (x + d).clamp(box[0], box[1]) - x
        return d

    for rs in range(restarts):
        noise = torch.randn(x.shape, generator=gen).to(device=dev, dtype=dtype)
        delta = project(noise * rr * (0.5 if rs else 0.0))
        step = rr * 2.5 / steps
        for _ in range(steps):
            delta = delta.detach().requires_grad_(True)
            logits = model(x + delta)
            (-label_margin(logits, label)).sum().backward()
            g = delta.grad
            assert g is not None
            gn = g.flatten(1).norm(dim=1).reshape(view).clamp_min(1e-30)
            with torch.no_grad():
                delta = project(delta + step * g / gn)
                cand = x + delta
                ok, nm, _ = check_adv(model, x, cand, crit, box)
                ok &= nm < radius.to(dev)
                new = ok & ~found
                best[new] = cand[new]
                norm[new] = nm[new]
                found |= ok
            if bool(found.all()):
                break
    return found, best, norm


# ---------------------------------------------------------------------- bk.verify
@dataclass
class VerifyResult:
    """Per sample: ``status`` (``"verified"``: no perturbation of L2 norm below ``radius``
    inside the box changes the class; ``"falsified"``: ``counterexample`` does, checked on
    the model; ``"unknown"``), the ``reason``, the class ``label``, the counterexample (in
    the model's dtype) and its float64 norm (the clean input and ``inf`` where none), the
    subproblems bounded, the seconds charged and the radius certified on the way."""

    radius: torch.Tensor
    label: torch.Tensor
    status: list[str]
    reason: list[str]
    counterexample: torch.Tensor
    counterexample_norm: torch.Tensor
    domains: torch.Tensor
    seconds: torch.Tensor
    #: per sample, a radius proven on the way: ``radius`` where verified; where unknown,
    #: the smallest radius the open subproblems certify (their bounds hold on every
    #: smaller ball), possibly 0; 0 where falsified
    certified: torch.Tensor = field(default_factory=lambda: torch.zeros(0))

    @property
    def verified(self) -> torch.Tensor:
        return torch.tensor([s == VERIFIED for s in self.status])

    @property
    def falsified(self) -> torch.Tensor:
        return torch.tensor([s == FALSIFIED for s in self.status])


def bab_plan(graph: Graph) -> BabPlan:
    """The graph's :class:`BabPlan`, cached on the graph."""
    plan = graph.cache.get("bab_plan")
    if plan is None:
        plan = graph.cache["bab_plan"] = plan_bab(graph)
    return plan


def verify_graph(model: nn.Module | None, graph: Graph, x: torch.Tensor, radius: torch.Tensor,
                 box: tuple[float, float] | None, options: BabOptions,
                 attack_steps: int = 40, budget: torch.Tensor | None = None,
                 plan: BabPlan | None = None) -> VerifyResult:
    """:func:`verify` on a captured graph (inputs checked by the caller). Without
    ``model`` no counterexample is searched (and the labels are the graph's)."""
    plan = bab_plan(graph) if plan is None else plan
    x0 = x.to(device=graph.device, dtype=torch.float64)
    radius = radius.to(device=graph.device, dtype=torch.float64)
    n = x0.shape[0]
    run = CrownRun(graph, plan.crown, x0, box)
    label, _ = margins(run.sound.acts[graph.logits.name])
    model_label = label
    if model is not None:
        with torch.no_grad():
            model_label = model(x.to(next((p.device for p in model.parameters()), x.device),
                                    next((p.dtype for p in model.parameters()), x.dtype))
                                ).argmax(1).to(label.device)
    status = ["" for _ in range(n)]
    reason = ["" for _ in range(n)]
    # counterexamples in the model's dtype: the very points the model was re-run on
    mdtype = x.dtype if model is None else next((p.dtype for p in model.parameters()), x.dtype)
    cex = x.detach().to(mdtype).clone()
    cex_norm = torch.full((n,), math.inf, dtype=torch.float64)
    domains = torch.zeros(n, dtype=torch.long)
    seconds = torch.zeros(n, dtype=torch.float64)
    certified = torch.zeros(n, dtype=torch.float64)
    disagree = (model_label != label).cpu()
    outside = torch.zeros(n, dtype=torch.bool)
    if box is not None:
        flat = x0.flatten(1)
        outside = ~((flat >= box[0]) & (flat <= box[1])).all(1).cpu()
    for i in range(n):
        if disagree[i]:
            status[i], reason[i] = UNKNOWN, ("the float64 graph and the model disagree on "
                                             "the class at x (a near tie)")
        elif outside[i]:
            status[i], reason[i] = UNKNOWN, "x lies outside the box"
        elif float(radius[i]) == 0.0:
            status[i], reason[i] = VERIFIED, "radius 0: the ball of smaller norms is {x}"
    todo = torch.tensor([s == "" for s in status])
    if model is not None and attack_steps > 0 and bool(todo.any()):
        t0 = CLOCK()
        sel = torch.nonzero(todo).flatten()
        found, xa, nm = pgd_counterexample(model, x[sel], label[sel.to(label.device)],
                                           radius[sel.to(radius.device)], box, steps=attack_steps)
        dt = (CLOCK() - t0) / max(1, sel.numel())
        for j, i in enumerate(sel.tolist()):
            seconds[i] += dt
            if bool(found[j]):
                status[i], reason[i] = FALSIFIED, "projected gradient attack inside the ball"
                cex[i] = xa[j].to(cex.device)
                cex_norm[i] = float(nm[j])
    todo = torch.tensor([s == "" for s in status])
    if bool(todo.any()):
        bb = BranchAndBound(graph, plan, run, label, radius, options)
        sol = bb.solve(todo.to(radius.device), budget)
        for i in torch.nonzero(todo).flatten().tolist():
            status[i], reason[i] = sol.status[i], sol.reason[i] or "every subproblem proven"
            certified[i] = sol.certified[i]
        domains += sol.domains
        seconds += sol.seconds
    return VerifyResult(radius.cpu(), label.cpu(), status, reason, cex, cex_norm, domains,
                        seconds, certified)


def verify(model: nn.Module, x: torch.Tensor, radius: float | torch.Tensor, *,
           box: tuple[float, float] | None = (0.0, 1.0), time_budget: float = 5.0,
           max_domains: int = 20_000, batch: int = 512, iterations: int = 0,
           refresh: int = NEVER, device: torch.device | str | None = None) -> VerifyResult:
    r"""Is every input within L2 distance ``radius`` of ``x`` classified like ``x``?

    Per sample: ``"verified"`` (no perturbation of norm below ``radius`` inside ``box``
    changes the class: every subproblem of the branch and bound proven), ``"falsified"``
    (a counterexample inside the ball and the box, checked by re-running the model in its
    own dtype) or ``"unknown"`` (budget spent; ``reason`` says which). ``radius``: a number
    or one per sample [N], finite and >= 0. ``time_budget``: seconds of bounding per sample
    (samples are bounded together; each batch's time is charged to its samples);
    ``max_domains``: subproblems per sample; ``batch``: subproblems per engine call;
    ``iterations``: gradient steps on the slopes and beta multipliers per batch;
    ``refresh``: recompute the intermediate bounds under the splits every ``refresh``
    splits (1: every subproblem; larger reuses an ancestor's, cheaper and looser; the
    default: only the root's).

    Models: ReLU / LeakyReLU networks of any affine layers (linear, convolution, batch
    norm, average pooling, residual additions); a node branch and bound cannot split (max
    pooling, smooth activations, nodes without a linear relaxation) is refused by name.
    """
    from boundkit.bounds.engine import graph_for
    from boundkit.validate import check_batch, check_box, check_call

    box = check_box(box)
    check_call(model, x, device=device, box=box)
    opts = check_options(time_budget, max_domains, batch, iterations, refresh)
    n = x.shape[0]
    r = _check_radius(radius, n)
    graph = graph_for(model, x, device)
    check_batch(x, shape=graph.input_shape)
    return verify_graph(model, graph, x, r, box, opts)


def _check_radius(radius: Any, n: int) -> torch.Tensor:
    """``radius`` as float64 [n]: a finite number >= 0, or one per sample."""
    if isinstance(radius, bool):
        raise BadArgumentError("radius must be a number or a tensor [N], got a bool")
    if isinstance(radius, (int, float)):
        r = torch.full((n,), float(radius), dtype=torch.float64)
    elif isinstance(radius, torch.Tensor):
        r = radius.detach().to(device="cpu", dtype=torch.float64).flatten()
        if r.numel() == 1:
            r = r.expand(n).clone()
        if r.numel() != n:
            raise BadArgumentError(f"radius has {r.numel()} values for {n} samples")
    else:
        raise BadArgumentError(f"radius must be a number or a tensor [N], got "
                               f"{type(radius).__name__}")
    if not bool(torch.isfinite(r).all()) or bool((r < 0).any()):
        raise BadArgumentError("radius must be finite and >= 0")
    return r


# ---------------------------------------------------------------------- the bab method
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


#: the search stops where the bracket is this tight, relative
BAB_RTOL = 1e-2
#: the first radius tried lies this fraction of the way from the start radius to the
#: upper end (with a third of the budget); then bisection with half of what is left
FIRST_STEP = 0.3


class BabMethod(Method):
    r"""The largest radius :func:`verify` proves, searched per sample between a start radius
    (``crown``'s, or ``alpha``'s) and an upper end (``upper``: e.g. the norms of verified
    adversarial examples; default the ``best`` attack's on the graph): each step one
    branch and bound for all samples together, first at ``FIRST_STEP`` of the way with a
    third of the time, then at the midpoint with half of the time left; a verified radius,
    or the radius an unknown answer's open subproblems certify, raises the lower end.
    ``time_budget`` (seconds per sample) covers the start radius and the search, not the
    attack run when no ``upper`` is given.
    Anytime: the radius returned is the largest one proven (or the start's), a certificate
    whatever the budget. ``info``: ``upper`` (the end searched against), ``ratio``
    (certified / upper), ``domains``."""

    name = "bab"
    is_guarantee = True
    description = ("branch and bound on ReLU splits (beta-CROWN style) raising the crown "
                   "radius toward the attack norm (time_budget per sample)")
    default_box = DEFAULT_BOX

    def options(self) -> tuple[str, ...]:
        return ("box", "time_budget", "upper", "start", "max_domains", "batch", "iterations",
                "refresh", "rtol")

    def prepare(self, graph: Graph) -> BabPlan:
        return bab_plan(graph)

    def run(self, graph: Graph, x: torch.Tensor, plan: Any, *, trace: bool,
            **options: Any) -> BatchResult:
        from boundkit.bounds.method import get_method
        from boundkit.validate import check_box, check_positive

        assert isinstance(plan, BabPlan)
        box = check_box(options.get("box", self.default_box))
        opts = check_options(options.get("time_budget", 2.0), options.get("max_domains", 20_000),
                             options.get("batch", 512), options.get("iterations", 0),
                             options.get("refresh", NEVER))
        rtol = check_positive("rtol", options.get("rtol", BAB_RTOL), maximum=0.5)
        assert rtol is not None
        start = options.get("start", "crown")
        if start not in ("crown", "alpha"):
            raise BadArgumentError(f"start must be 'crown' or 'alpha', got {start!r}")
        t_start = CLOCK()
        x0 = x.to(device=graph.device, dtype=torch.float64)
        n = x0.shape[0]
        base = get_method(start).run(graph, x0, plan.base, trace=False, box=box)
        t_base = CLOCK() - t_start
        lo = base.radius.to(torch.float64).clone()
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
        domains = torch.zeros(n, dtype=torch.long)
        top = hi.clone()  # the smallest radius not proven (unknown or falsified)
        first = True
        while True:
            active = (torch.isfinite(lo) & (lo < top / (1 + rtol))
                      & (budget > 0.02 * opts.time_budget) & (base.margin > 0).to(lo.device))
            if not bool(active.any()):
                break
            frac = FIRST_STEP if first else 0.5
            eps = torch.where(torch.isfinite(top), lo + frac * (top - lo),
                              torch.where(lo > 0, lo * 1.5, torch.full_like(lo, 1e-3)))
            eps = torch.where(active, eps, torch.zeros_like(eps))
            share = torch.where(budget < 0.1 * opts.time_budget, budget,
                                budget / (3 if first else 2))
            first = False
            t0 = CLOCK()
            res = verify_graph(None, graph, x0, eps, box, opts, budget=share, plan=plan)
            wall = CLOCK() - t0
            ok = res.verified.to(lo.device) & active
            # a verified radius, or the radius the open subproblems certify
            got = torch.where(ok, eps, res.certified.to(lo.device))
            lo = torch.where(active, torch.maximum(lo, got), lo)
            top = torch.where(active & ~ok, torch.minimum(top, eps), top)
            domains += res.domains
            # every active sample pays at least its share of the step's wall time
            spent = torch.maximum(res.seconds, torch.full_like(res.seconds,
                                                             wall / max(1, int(active.sum()))))
            budget -= torch.where(active.cpu(), spent, torch.zeros_like(spent))
        ratio = torch.where((searched > 0) & torch.isfinite(searched), lo / searched,
                            torch.full_like(lo, math.nan))
        return BatchResult(lo, base.label, base.runner_up, base.margin,
                           {graph.input.name: lo} if trace else {},
                           {"upper": searched, "ratio": ratio, "domains": domains,
                            "from_start": lo <= base.radius},
                           outputs=base.outputs, unsafe=base.unsafe)


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
