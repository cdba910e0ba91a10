r"""``crown`` and ``alpha``: linear relaxation bounds propagated backwards over the graph.

For the margins :math:`f_y - f_j` of the predicted class :math:`y`, a backward walk
(:func:`boundkit.bounds.walk.backward`) carries :math:`\langle A, h\rangle + b - e` from the
logits to the input through every node's :class:`~boundkit.bounds.relaxation.RelaxationRule`
(CROWN, Zhang et al. 2018). The relaxations of ReLUs and smooth activations need bounds on
their inputs: an interval pass over the whole graph, refined at the input of every ReLU (its
unstable neurons) and smooth activation (all neurons) by a backward walk of its own. A node
without a linear relaxation (LRN, a user's rule) is bounded through the ``sound`` modulus of
the same inputs: :math:`|h_i(x)-h_i(x_0)|\le\omega_{x\to h}(\|x-x_0\|)` plus its rounding,
and the walk stops there, so ``crown`` accepts every model ``sound`` accepts.

At the input the bound is concretised over the L2 ball intersected with the box: for any
split :math:`A=(A-\mu)+\mu`, :math:`\min_{B\cap\text{box}}\langle A,x\rangle\ge
\min_{\text{box}}\langle A-\mu,x\rangle+\langle\mu,x_0\rangle-\varepsilon\|\mu\|_2`; with
:math:`\mu` equal to :math:`A` except at coordinates where :math:`x_0` sits on the face of the
box that blocks the descent direction, this is :math:`\langle A,x_0\rangle-\varepsilon\|\mu\|`.

The radius is searched per sample: every step bounds the margins on a ball of radius
:math:`\varepsilon_k` as :math:`c_j-\varepsilon\nu_j` (valid for every
:math:`\varepsilon\le\varepsilon_k`, since the relaxation holds on the larger ball), so each
step *certifies* :math:`\min(\varepsilon_k,\min_j c_j/\nu_j)`; the search brackets from the
``sound`` radius (a certificate too) and stops at 1e-3 relative. The returned radius is the
larger of the two certificates, and ``Certificate.info["from_sound"]`` says where
``sound`` won. All of it in float64 with the rounding margins of
``docs/theory/linear_relaxation.md``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from boundkit.bounds import walk
from boundkit.bounds.method import BatchResult, Method, register_method
from boundkit.bounds.modulus import Modulus
from boundkit.bounds.numerics import UNIT_ROUNDOFF, gamma, round_down
from boundkit.bounds.output import margins
from boundkit.bounds.relaxation import (
    AffineRelaxation,
    Interval,
    LinearBounds,
    RelaxationRule,
    RelaxContext,
    Splits,
    _dot,
    relaxation_rule,
)
from boundkit.bounds.sound import SoundPlan, compose_moduli, plan_sound, sound_pass
from boundkit.graph.graph import Graph, Node

#: default input box: pixels in [0, 1]
DEFAULT_BOX = (0.0, 1.0)


@dataclass
class CrownPlan:
    """Per-model plan: the nodes up to the logits, their rules (``None``: bounded through
    the ``sound`` modulus) and the nodes whose bounds a backward walk refines."""

    sound: SoundPlan
    nodes: list[Node]
    rules: dict[str, RelaxationRule | None]
    refine: dict[str, str]  # node -> "unstable" (ReLU input) or "all" (smooth input)


def plan_crown(graph: Graph) -> CrownPlan:
    sp = plan_sound(graph)  # raises UnsupportedLayerError exactly where sound does
    nodes = graph.upstream()
    rules = {n.name: relaxation_rule(n) for n in nodes if n.op != "input"}
    refine: dict[str, str] = {}
    for n in nodes:
        r = rules.get(n.name)
        if r is None or not r.nonlinear or n.op == "maxpool2d":
            continue
        src = n.inputs[0]
        if graph[src].op == "input":
            continue
        # a ReLU's stable neurons need no better bounds, unless a max pooling reads its
        # output (its relaxation uses the bounds of every input)
        feeds_max = any(graph[c].op == "maxpool2d" for c in graph.consumers(n.name))
        mode = "unstable" if n.op == "relu" and not feeds_max else "all"
        if refine.get(src) != "all":
            refine[src] = mode
    return CrownPlan(sp, nodes, rules, refine)


@dataclass
class SubsetPass:
    """The activations of a sample subset (what :class:`CrownRun` reads of the sound pass
    when no node needs the sound fallback)."""

    acts: dict[str, torch.Tensor]


@dataclass
class Concrete:
    """A concretised bound family: ``f_s >= c_s - eps * nu_s`` for every eps up to the
    radius the relaxation was built for ([N, S] each)."""

    c: torch.Tensor
    nu: torch.Tensor

    def at(self, eps: torch.Tensor) -> torch.Tensor:
        return self.c - eps.unsqueeze(1) * self.nu


def concretise(lb: LinearBounds, x0: torch.Tensor, box: tuple[float, float] | None,
               in_box: torch.Tensor) -> Concrete:
    """The dual-norm concretisation of ``lb`` at the input (module docstring), with the
    rounding of every step charged (docs/theory/linear_relaxation.md §Concretisation)."""
    A = lb.A
    ax0 = _dot(A, x0)
    if box is not None:
        x = x0.unsqueeze(1)
        blocked = ((x <= box[0]) & (A > 0)) | ((x >= box[1]) & (A < 0))
        blocked = blocked & in_box.reshape(-1, *([1] * (A.dim() - 1)))
        mu = torch.where(blocked, torch.zeros_like(A), A)
    else:
        mu = A
    d = A[0, 0].numel()
    nu = mu.flatten(2).norm(dim=2) * (1 + float(gamma(d + 2)) + 1e-15)
    dot_err = float(gamma(d + 1)) * _dot(A.abs(), x0.abs())
    c = (ax0 + lb.bias - lb.err * (1 + 1e-8) - dot_err * (1 + 1e-8)
         - 1e-15 * (ax0.abs() + lb.bias.abs()) - 1e-300)
    return Concrete(c, nu)


class CrownRun:
    """One batch: intervals and backward walks for per-sample radii ``eps`` [N]."""

    #: optional branch-and-bound split constraints on ReLU nodes, one row per sample: all
    #: bounds then hold on the part of the ball satisfying them (``relaxation.Splits``);
    #: set on the run (or on a :meth:`subset`, which does not inherit them) by the caller
    splits: Splits | None = None

    def __init__(self, graph: Graph, plan: CrownPlan, x0: torch.Tensor,
                 box: tuple[float, float] | None) -> None:
        self.graph, self.plan, self.x0, self.box = graph, plan, x0, box
        self.n = x0.shape[0]
        if box is not None:
            flat = x0.flatten(1)
            self.in_box = (flat >= box[0]).all(1) & (flat <= box[1]).all(1)
        else:
            self.in_box = torch.zeros(self.n, dtype=torch.bool, device=x0.device)
        fallback = {name for name, r in plan.rules.items() if r is None}
        sp = sound_pass(graph, x0, plan.sound, False, fallback)
        self.sound = sp
        self.omega: dict[str, Modulus] = (
            compose_moduli(graph, plan.sound.stages, sp.moduli, graph.input.name)
            if fallback else {})
        self.fallback = fallback
        self.slopes: dict[str, torch.Tensor] = {}

    def subset(self, idx: torch.Tensor) -> CrownRun | None:
        """The same run restricted to samples ``idx`` (``None`` when it cannot be split:
        per-sample moduli of fallback nodes)."""
        if self.omega:
            return None
        sub = object.__new__(CrownRun)
        sub.graph, sub.plan, sub.box = self.graph, self.plan, self.box
        sub.x0, sub.in_box, sub.n = self.x0[idx], self.in_box[idx], int(idx.numel())
        sub.sound = SubsetPass({k: v[idx] for k, v in self.sound.acts.items()})
        sub.omega, sub.fallback, sub.slopes = {}, self.fallback, {}
        return sub

    # ------------------------------------------------------------------ intervals
    def _input_interval(self, eps: torch.Tensor) -> Interval:
        e = eps.reshape(-1, *([1] * (self.x0.dim() - 1)))
        lo, hi = self.x0 - e, self.x0 + e
        lo, hi = lo - UNIT_ROUNDOFF * lo.abs(), hi + UNIT_ROUNDOFF * hi.abs()
        if self.box is not None:
            m = self.in_box.reshape(e.shape)
            lo = torch.where(m, lo.clamp(min=self.box[0]), lo)
            hi = torch.where(m, hi.clamp(max=self.box[1]), hi)
        return Interval(lo, hi)

    def _fallback_interval(self, node: Node, eps: torch.Tensor) -> Interval:
        h0 = self.sound.acts[node.name]
        om = self.omega.get(node.name)
        # a node without a modulus from the input (none was composed up to it) is bounded
        # by nothing: an infinite interval, so crown falls back on sound for that sample
        spread = om(eps) * (1 + 1e-9) if om is not None else torch.full_like(eps, math.inf)
        spread = spread + self.sound.errors[node.name] * (1 + 1e-9)
        s = spread.reshape(-1, *([1] * (h0.dim() - 1)))
        return Interval(h0 - s, h0 + s)

    def intervals(self, eps: torch.Tensor) -> RelaxContext:
        ctx = RelaxContext(self.graph, self.sound.acts, slopes=self.slopes,
                           splits=self.splits)
        ctx.intervals[self.graph.input.name] = self._input_interval(eps)
        for node in self.plan.nodes:
            if node.op == "input":
                continue
            rule = self.plan.rules[node.name]
            if rule is None:
                iv = self._fallback_interval(node, eps)
            else:
                iv = rule.interval(node, ctx, [ctx.intervals[i] for i in node.inputs])
            ctx.intervals[node.name] = iv
            mode = self.plan.refine.get(node.name)
            if mode is not None:
                ctx.intervals[node.name] = self._refine(node, ctx, eps, iv, mode)
        return ctx

    def _first_layer(self, node: Node, eps: torch.Tensor) -> Interval | None:
        r"""Closed-form bounds of an affine node reading the input: the backward walk from
        :math:`\pm e_j` would end at :math:`\pm L_j` at once, so
        :math:`h_j\in(Lx_0+c)_j\pm\varepsilon\|\mu_j\|` with :math:`\|\mu_j\|^2` the sum of
        :math:`L_{ji}^2` over the coordinates the box does not block (the concretisation of
        ``docs/theory/linear_relaxation.md``), each side with its own mask."""
        rule = self.plan.rules[node.name]
        if not isinstance(rule, AffineRelaxation) or node.inputs != [self.graph.input.name]:
            return None
        x0 = self.x0
        ones = torch.ones_like(x0)
        if self.box is not None:
            inb = self.in_box.reshape(-1, *([1] * (x0.dim() - 1)))
            free_lo = torch.where(inb & (x0 <= self.box[0]), 0.0, 1.0).to(x0.dtype)
            free_hi = torch.where(inb & (x0 >= self.box[1]), 0.0, 1.0).to(x0.dtype)
        else:
            free_lo = free_hi = ones
        sq = [rule.square_apply(node, v, sg) for v, sg in
              ((free_lo, 1), (free_hi, -1), (free_lo, -1), (free_hi, 1))]
        if any(t is None for t in sq):
            return None
        k = rule.fan(node)
        grow = 1 + float(gamma(k + 4)) + 1e-15
        nu_up = torch.sqrt((sq[0] + sq[1]).clamp(min=0)) * grow  # spec +e_j: lower bound
        nu_dn = torch.sqrt((sq[2] + sq[3]).clamp(min=0)) * grow  # spec -e_j: upper bound
        c = rule.const(node)
        centre = rule.apply(node, x0) + (c if c is not None else 0.0)
        err = rule._rounding(node, x0.abs()) * (1 + 1e-8) + 1e-15 * centre.abs() + 1e-300
        e = eps.reshape(-1, *([1] * (centre.dim() - 1)))
        return Interval(centre - e * nu_up - err, centre + e * nu_dn + err)

    def _refine(self, node: Node, ctx: RelaxContext, eps: torch.Tensor, iv: Interval,
                mode: str) -> Interval:
        closed = self._first_layer(node, eps)
        if closed is not None:
            return iv.meet(closed)
        lo, hi = iv.lo.flatten(1), iv.hi.flatten(1)
        mask = (lo < 0) & (hi > 0) if mode == "unstable" else torch.ones_like(lo, dtype=torch.bool)
        k = int(mask.sum(1).max()) if mask.numel() else 0
        if k == 0:
            return iv
        idx = mask.to(torch.int8).topk(k, dim=1, sorted=False).indices  # [N, K]
        valid = mask.gather(1, idx)
        m = lo.shape[1]
        eye = torch.zeros(self.n, k, m, dtype=lo.dtype, device=lo.device)
        eye.scatter_(2, idx.unsqueeze(2), 1.0)
        spec = torch.cat([eye, -eye], 1).reshape(self.n, 2 * k, *node.out_shape)
        ctx.spec = node.name
        conc = self.backward(node, spec, ctx)
        ctx.spec = "final"
        bound = conc.at(eps)
        new_lo, new_hi = bound[:, :k], -bound[:, k:]
        lo2 = lo.scatter(1, idx, torch.where(valid, torch.maximum(lo.gather(1, idx), new_lo),
                                             lo.gather(1, idx)))
        hi2 = hi.scatter(1, idx, torch.where(valid, torch.minimum(hi.gather(1, idx), new_hi),
                                             hi.gather(1, idx)))
        return Interval(lo2.reshape(iv.lo.shape), hi2.reshape(iv.hi.shape))

    # ------------------------------------------------------------------ backward
    def backward(self, target: Node, spec: torch.Tensor, ctx: RelaxContext) -> Concrete:
        """Concretised lower bounds of ``<spec_s, target(x)>`` over the ball."""
        zero = torch.zeros(spec.shape[:2], dtype=spec.dtype, device=spec.device)
        cut_bias, cut_err = zero.clone(), zero.clone()
        order = [n for n in self.plan.nodes if n.op != "input"]
        stop = order.index(target) + 1
        rules = self.plan.rules

        def transfer(node: Node, lb: LinearBounds) -> list[LinearBounds | None]:
            nonlocal cut_bias, cut_err
            rule = rules[node.name]
            if rule is None:  # bounded through the sound modulus: constants
                iv = ctx.intervals[node.name]
                pos, neg = lb.A.clamp(min=0), lb.A.clamp(max=0)
                add = _dot(pos, iv.lo) + _dot(neg, iv.hi)
                d = lb.A[0, 0].numel()
                cut_bias = cut_bias + lb.bias + add
                cut_err = (cut_err + lb.err + lb.charge_forks(iv.mag)
                           + float(gamma(d + 2)) * _dot(lb.A.abs(), iv.mag)
                           + UNIT_ROUNDOFF * (cut_bias.abs() + lb.bias.abs()))
                return [None] * len(node.inputs)
            return list(rule.backward(node, ctx, lb))

        seed = LinearBounds(spec, zero, zero)
        state = walk.backward(order[:stop], {target.name: seed}, transfer)
        lb_in = state.get(self.graph.input.name)
        if lb_in is None:
            lb_in = LinearBounds(torch.zeros((*spec.shape[:2], *self.x0.shape[1:]),
                                             dtype=spec.dtype, device=spec.device), zero, zero)
        lb_in = LinearBounds(lb_in.A, lb_in.bias + cut_bias,
                             lb_in.err + cut_err + UNIT_ROUNDOFF * cut_bias.abs(),
                             lb_in.forks)
        lb_in.err = lb_in.err + lb_in.charge_forks(self.x0.abs())
        return concretise(lb_in, self.x0, self.box, self.in_box)

    def margin_spec(self, label: torch.Tensor) -> torch.Tensor:
        c = self.graph.num_classes
        eye = torch.eye(c, dtype=torch.float64, device=self.x0.device)
        spec = eye[label].unsqueeze(1) - eye.unsqueeze(0)  # [N, C, C]: e_y - e_j
        return spec.reshape(self.n, c, *self.graph.logits.out_shape)

    def certified(self, eps: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        """A radius certified by the relaxation built for ``eps`` (<= eps) [N]."""
        ctx = self.intervals(eps)
        conc = self.backward(self.graph.logits, self.margin_spec(label), ctx)
        own = torch.nn.functional.one_hot(label, conc.c.shape[1]).bool()
        ratio = torch.where(conc.c > 0, torch.where(conc.nu > 0, conc.c / conc.nu,
                                                    torch.full_like(conc.c, math.inf)),
                            torch.zeros_like(conc.c))
        ratio = torch.where(own, torch.full_like(ratio, math.inf), ratio)
        r = round_down(ratio.min(1).values, 8)
        return torch.minimum(r, eps)


def search_radius(run: CrownRun, label: torch.Tensor, lo: torch.Tensor, margin: torch.Tensor,
                  rtol: float = 1e-3, max_steps: int = 40) -> torch.Tensor:
    """Per-sample monotone search (module docstring): ``lo`` is certified on entry and only
    grows; ``hi`` is the smallest radius at which the relaxation failed."""
    lo = lo.clone()
    hi = torch.full_like(lo, math.inf)
    active = margin > 0
    eps = torch.where(lo > 0, lo * 2.0, torch.full_like(lo, 1e-2))
    for _ in range(max_steps):
        todo = active & ~(hi <= lo * (1 + rtol))
        if not bool(todo.any()):
            break
        idx = torch.nonzero(todo).flatten()
        sub = run.subset(idx) if idx.numel() < lo.numel() else None
        if sub is None:
            eps = torch.where(todo, eps, lo)  # finished samples re-check their radius
            r = run.certified(eps, label)
        else:
            r = lo.clone()
            r[idx] = sub.certified(eps[idx], label[idx])
        full = r >= eps
        lo = torch.where(todo, torch.maximum(lo, r), lo)
        hi = torch.where(todo & ~full, torch.minimum(hi, eps), hi)
        grow = torch.where(lo > 0, lo * 4.0, eps * 4.0)
        eps = torch.where(torch.isinf(hi), grow, torch.where(
            hi > lo * 2, torch.sqrt(lo * hi).clamp(min=lo * 1.0001), (lo + hi) / 2))
        eps = torch.where(lo > 0, eps, torch.where(torch.isinf(hi), eps, hi / 8))
    return lo


class CrownMethod(Method):
    """Linear relaxation bounds (CROWN) over the graph, radius by a per-sample search."""

    name = "crown"
    is_guarantee = True
    description = "linear relaxation bounds (CROWN) backwards over the graph, L2 ball and box"

    def options(self) -> tuple[str, ...]:
        return ("box", "rtol")

    def prepare(self, graph: Graph) -> CrownPlan:
        return plan_crown(graph)

    def run(self, graph: Graph, x: torch.Tensor, plan: Any, *, trace: bool,
            **options: Any) -> BatchResult:
        box = options.get("box", DEFAULT_BOX)
        box = _check_box(box)
        x0 = x.to(device=graph.device, dtype=torch.float64)
        run = CrownRun(graph, plan, x0, box)
        base = run.sound.result
        sound_r = torch.nan_to_num(base.radius, nan=0.0).clamp_min(0.0)
        label, m = margins(run.sound.acts[graph.logits.name])
        margin = m.min(1).values
        r = self.search(run, label, sound_r, margin, options)
        radius = torch.maximum(r, sound_r)
        res = BatchResult(radius, base.label, base.runner_up, base.margin,
                          {graph.input.name: radius} if trace else {},
                          {"from_sound": sound_r >= r}, outputs=base.outputs, unsafe=base.unsafe)
        return res

    def search(self, run: CrownRun, label: torch.Tensor, lo: torch.Tensor,
               margin: torch.Tensor, options: dict[str, Any]) -> torch.Tensor:
        return search_radius(run, label, lo, margin, float(options.get("rtol", 1e-3)))


def _check_box(box: Any) -> tuple[float, float] | None:
    if box is None:
        return None
    try:
        lo, hi = (float(v) for v in box)
    except (TypeError, ValueError):
        raise ValueError(f"box must be a pair (low, high) or None, got {box!r}") from None
    if not (lo < hi) or math.isnan(lo) or math.isnan(hi):
        raise ValueError(f"box must satisfy low < high, got {box!r}")
    return lo, hi


register_method(CrownMethod())
