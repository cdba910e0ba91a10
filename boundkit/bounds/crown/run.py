r"""One batch of ``crown`` (and ``alpha``): intervals, refinement walks, the final walk.

For the margins :math:`f_y - f_j` of the predicted class :math:`y`, a backward walk
(:func:`boundkit.bounds.walk.backward`) carries :math:`\langle A, h\rangle + b - e` from the
logits to the input through every node's :class:`~boundkit.bounds.relaxation.RelaxationRule`
(CROWN, Zhang et al. 2018). The relaxations of ReLUs and smooth activations need bounds on
their inputs: an interval pass over the whole graph, refined at the input of every ReLU (its
unstable neurons) and smooth activation (all neurons) by a backward walk of its own. A node
without a linear relaxation (LRN, a user's rule) is bounded through its own ``sound`` modulus
over its input's interval, plus its rounding (:meth:`CrownRun._fallback_interval`), and the
walk stops there, so ``crown`` accepts every model ``sound`` accepts. Every interval and
every walk charges the model's own rounding of each node it passes
(:func:`~boundkit.bounds.relaxation.model_rounding`): the bounds hold for what the model
computes in its own dtype.

At the input the bound is concretised over the L2 ball intersected with the box
(``concrete.py``); the radius is searched per sample over the relaxations built for the
radii tried (``search.py``). All of it in float64 with the rounding margins of
``docs/theory/linear_relaxation.md``.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import torch

from boundkit.bounds import walk
from boundkit.bounds.crown import plan as planning
from boundkit.bounds.crown.concrete import Concrete, RadiusStep, concretise, radius_step
from boundkit.bounds.crown.kept import KEPT, Remembered
from boundkit.bounds.crown.liveness import live_neurons
from boundkit.bounds.crown.patches import PATCHES
from boundkit.bounds.crown.plan import CrownPlan, Refine
from boundkit.bounds.crown.units import UNITS
from boundkit.bounds.crown.windows import WINDOWS
from boundkit.bounds.numerics import UNIT_ROUNDOFF, gamma
from boundkit.bounds.output import squash_charge
from boundkit.bounds.registry import SoundRule, require_rule
from boundkit.bounds.relaxation import (
    FINAL_SPEC,
    AffineRelaxation,
    Interval,
    LinearBounds,
    RelaxContext,
    SlopeKey,
    Splits,
    dot,
    entering,
    model_rounding,
)
from boundkit.bounds.sound import sound_pass
from boundkit.graph.graph import Graph, Node

#: default input box: pixels in [0, 1]
DEFAULT_BOX = (0.0, 1.0)
#: single-input nodes that only move values (the first-layer closed form looks through them)
_EXACT_RESHAPES = ("flatten", "reshape", "identity")


def _moves_values_only(node: Node) -> bool:
    """A single-input flatten, reshape or identity without a constant shift (``x - mean``
    is captured as an identity with ``attrs["shift"]``: it changes values)."""
    return (node.op in _EXACT_RESHAPES and len(node.inputs) == 1
            and node.attrs.get("shift") is None)


def take_rows(value: Any, idx: torch.Tensor) -> Any:
    """Rows ``idx`` of a piece of per-sample state: a tensor, a dict of such pieces, an
    object with ``rows(idx)``, or ``None``."""
    if value is None:
        return None
    if isinstance(value, torch.Tensor):
        return value[idx]
    if isinstance(value, dict):
        return {k: take_rows(v, idx) for k, v in value.items()}
    return value.rows(idx)


@dataclass
class Samples:
    """The per-sample state of a run: every field holds one row per sample, so a subset is
    every field's rows (:meth:`rows`), and a field added here cannot be forgotten there."""

    #: the centres [N, *in], float64
    x0: torch.Tensor
    #: [N] bool: the centre lies in the box (the box constrains only those samples)
    in_box: torch.Tensor
    #: the float64 activations at the centres, by node
    acts: dict[str, torch.Tensor]
    #: the rounding bounds [N] of the sound pass, by node (the fallback's intervals)
    errors: dict[str, torch.Tensor]
    #: refined bounds kept from failed steps (``kept.py``), by node
    kept: dict[str, Remembered] = field(default_factory=dict)
    #: branch-and-bound split constraints: all bounds then hold on the part of the ball
    #: satisfying them (``relaxation.Splits``)
    splits: Splits | None = None

    def rows(self, idx: torch.Tensor) -> Samples:
        return dataclasses.replace(self, **{f.name: take_rows(getattr(self, f.name), idx)
                                            for f in dataclasses.fields(self)})


@dataclass
class Scratch:
    """State of one evaluation, never carried to a subset."""

    #: intervals to reuse as they are (set by ``alpha`` for one radius at a time)
    frozen: dict[str, Interval] = field(default_factory=dict)
    #: the last evaluation's refined bounds, until :meth:`CrownRun.remember` keeps them
    pending: dict[str, Remembered] = field(default_factory=dict)


class CrownRun:
    """One batch: intervals and backward walks for per-sample radii ``eps`` [N].

    Its state comes in three parts: the model's (graph, plan, box, the sound pass's
    moduli), shared with every run derived from it; the samples' (:class:`Samples`), sliced
    as a whole by :meth:`subset`; and one evaluation's (:class:`Scratch`), fresh in a derived
    run. The accelerations (``kept.py``, ``windows.py``, ``units.py``) each say when they
    apply, split constraints included."""

    samples_type: type[Samples] = Samples

    def __init__(self, graph: Graph, plan: CrownPlan, x0: torch.Tensor,
                 box: tuple[float, float] | None, splits: Splits | None = None) -> None:
        self.graph, self.plan, self.box = graph, plan, box
        n = x0.shape[0]
        if box is not None:
            flat = x0.flatten(1)
            in_box = (flat >= box[0]).all(1) & (flat <= box[1]).all(1)
        else:
            in_box = torch.zeros(n, dtype=torch.bool, device=x0.device)
        fallback = {name for name, r in plan.rules.items() if r is None}
        keep = fallback | {i for name in fallback for i in graph[name].inputs}
        sp = sound_pass(graph, x0, plan.sound, False, keep)
        #: the sound pass of the whole batch (its result is the method's floor)
        self.sound = sp
        #: nodes bounded through their ``sound`` modulus (per-sample moduli: a run with
        #: them is not split into subsets)
        self.fallback = fallback
        self.samples = self.samples_type(x0, in_box, sp.acts, sp.errors.per_node,
                                         splits=splits)
        self.scratch = self.new_scratch()

    # the per-sample state, by name
    @property
    def x0(self) -> torch.Tensor:
        return self.samples.x0

    @property
    def in_box(self) -> torch.Tensor:
        return self.samples.in_box

    @property
    def n(self) -> int:
        return int(self.samples.x0.shape[0])

    @property
    def splits(self) -> Splits | None:
        return self.samples.splits

    @splits.setter
    def splits(self, value: Splits | None) -> None:
        self.samples.splits = value

    @property
    def reach(self) -> torch.Tensor:
        r"""Per sample [N], a radius whose ball holds the whole box: the distance from
        :math:`x_0` to the box's farthest corner, rounded up (``inf`` without the box or for
        a sample outside it). A relaxation that passes at a radius this large certifies
        every point of the box."""
        if self.box is None:
            return torch.full((self.n,), math.inf, dtype=self.x0.dtype, device=self.x0.device)
        flat = self.x0.flatten(1)
        far = torch.maximum(flat - self.box[0], self.box[1] - flat)
        d = flat.shape[1]
        # the subtractions round up by the factor (1 + u), the norm by gamma_{d+2}
        r = torch.linalg.vector_norm(far, dim=1) * (1 + 2 * float(gamma(d + 4))) + 1e-300
        return torch.where(self.in_box, r, torch.full_like(r, math.inf))

    def subset(self, idx: torch.Tensor) -> CrownRun | None:
        """The same run restricted to samples ``idx``, split constraints included (``None``
        when it cannot be split: per-sample moduli of fallback nodes)."""
        if self.fallback:
            return None
        return self.derive(self.samples.rows(idx))

    def derive(self, samples: Samples) -> CrownRun:
        """A run sharing this one's model state, with ``samples`` and a fresh scratch."""
        sub = copy.copy(self)
        sub.samples, sub.scratch = samples, self.new_scratch()
        return sub

    def new_scratch(self) -> Scratch:
        """Hook: a subclass with scratch state of its own returns its own."""
        return Scratch()

    def absorb(self, sub: CrownRun, idx: torch.Tensor) -> None:
        """Take back the per-sample state ``sub`` (rows ``idx`` of this run) updated, so a
        sample's state does not depend on which subsets it was evaluated in (a subclass
        extends it for its own state)."""
        KEPT.absorb(self, sub, idx)

    def remember(self, keep: torch.Tensor) -> None:
        """Keep the last evaluation's refined bounds for the samples ``keep`` [N] (bool)
        whose step failed (``kept.py``)."""
        KEPT.remember(self, keep)

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

    def _fallback_interval(self, node: Node, ctx: RelaxContext, eps: torch.Tensor) -> Interval:
        r"""A node without a relaxation (one input :math:`z`): what the model computes lies
        within :math:`\omega(r)+e+\rho` of the float64 value :math:`h_0` at the centre, with
        :math:`\omega` the node's own ``sound`` modulus at :math:`z_0`, :math:`r` the largest
        distance from :math:`z_0` to the input's interval (which holds the model's input),
        :math:`e` the rounding of :math:`h_0` and :math:`\rho` the model's own rounding of the
        node (:meth:`SoundRule.model_rounding`); all in L2, so per entry. Without an input
        interval or a modulus of the node alone (a merge): an infinite interval, and crown
        falls back on ``sound`` for the sample."""
        h0 = self.samples.acts[node.name]
        mod = self.sound.moduli.get(node.name)
        src = node.inputs[0] if len(node.inputs) == 1 else None
        if mod is None or src is None or src not in ctx.intervals or src not in self.samples.acts:
            inf = torch.full_like(h0, math.inf)
            return Interval(-inf, inf)
        iv, z0 = ctx.intervals[src], self.samples.acts[src]
        d = z0[0].numel()
        far = torch.maximum(iv.hi - z0, z0 - iv.lo).flatten(1)
        r = torch.linalg.vector_norm(far, dim=1) * (1 + 2 * float(gamma(d + 2))) + 1e-300
        spread = mod(r) * (1 + 1e-9) + self.samples.errors[node.name] * (1 + 1e-9)
        out_norm = torch.linalg.vector_norm(h0.flatten(1), dim=1) + spread
        in_norm = torch.linalg.vector_norm(iv.mag.flatten(1), dim=1)
        rule = require_rule(node, "sound")
        assert isinstance(rule, SoundRule)
        rho = rule.model_rounding(node, self.graph, in_norm, out_norm, ctx.model_arith)
        s = ((spread + rho) * (1 + 1e-9)).reshape(-1, *([1] * (h0.dim() - 1)))
        return Interval(h0 - s, h0 + s)

    def intervals(self, eps: torch.Tensor) -> RelaxContext:
        ctx = RelaxContext(self.graph, self.samples.acts, splits=self.splits)
        ctx.intervals[self.graph.input.name] = self._input_interval(eps)
        for node in self.plan.nodes:
            if node.op == "input":
                continue
            kept = self.scratch.frozen.get(node.name)
            if kept is not None:  # computed before for this very eps (alpha's iterations)
                ctx.intervals[node.name] = kept
                continue
            rule = self.plan.rules[node.name]
            if rule is None:
                iv = self._fallback_interval(node, ctx, eps)
            else:  # what the model computes: the exact value of its inputs, plus its rounding
                iv = rule.interval(node, ctx, [ctx.intervals[i] for i in node.inputs])
                iv = iv.widen(model_rounding(rule, node, ctx, iv))
            ctx.intervals[node.name] = iv
            mode = self.plan.refine.get(node.name)
            if mode is not None:
                iv = KEPT.recall(self, node.name, eps, iv)  # of a failed step, larger radius
                ctx.intervals[node.name] = self._refine(node, ctx, eps, iv, mode)
        return ctx

    def _first_layer(self, node: Node, eps: torch.Tensor) -> Interval | None:
        r"""Closed-form bounds of an affine node reading the input (directly or through
        reshapes, which move no value): the backward walk from
        :math:`\pm e_j` would end at :math:`\pm L_j` at once, so
        :math:`h_j\in(Lx_0+c)_j\pm\varepsilon\|\mu_j\|` with :math:`\|\mu_j\|^2` the sum of
        :math:`L_{ji}^2` over the coordinates the box does not block (the concretisation of
        ``docs/theory/linear_relaxation.md``), each side with its own mask."""
        rule = self.plan.rules[node.name]
        if not isinstance(rule, AffineRelaxation) or len(node.inputs) != 1:
            return None
        src = self.graph[node.inputs[0]]
        while _moves_values_only(src):
            src = self.graph[src.inputs[0]]  # a flatten before the first linear layer
        if src.name != self.graph.input.name:
            return None
        in_shape = (self.n, *self.graph[node.inputs[0]].out_shape)
        x0 = self.x0.reshape(in_shape)
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
        err = rule.rounding_bound(node, x0.abs()) * (1 + 1e-8) + 1e-15 * centre.abs() + 1e-300
        e = eps.reshape(-1, *([1] * (centre.dim() - 1)))
        return Interval(centre - e * nu_up - err, centre + e * nu_dn + err)

    def _refine(self, node: Node, ctx: RelaxContext, eps: torch.Tensor, iv: Interval,
                mode: Refine) -> Interval:
        closed = self._first_layer(node, eps)
        if closed is not None:
            rule = self.plan.rules[node.name]
            assert rule is not None
            return iv.meet(closed.widen(model_rounding(rule, node, ctx, iv)))
        lo, hi = iv.lo.flatten(1), iv.hi.flatten(1)
        if mode is Refine.UNSTABLE:
            mask = (lo < 0) & (hi > 0)
        elif mode in (Refine.LIVE, Refine.POOL):
            mask = live_neurons(self.graph, node, iv,
                                through_relu=mode is Refine.LIVE).flatten(1)
        else:
            mask = torch.ones_like(lo, dtype=torch.bool)
        if not bool(mask.any()):
            return iv
        chain = WINDOWS.chain(self, node)
        if chain is None:
            k = int(mask.sum(1).max())
            idx = mask.to(torch.int8).topk(k, dim=1, sorted=False).indices  # [N, K]
            per = self.per_walk(self.widest)
            pieces = [(idx[:, j:j + per], self.neuron_bounds(node, ctx, eps, idx[:, j:j + per]))
                      for j in range(0, k, per)]
        else:
            pieces = WINDOWS.tile_bounds(self, node, chain, ctx, eps, mask)
        # each piece's bounds are [N, 2 k_piece]: its lower bounds, then its upper bounds
        idx = torch.cat([i for i, _ in pieces], 1)
        k = idx.shape[1]
        valid = mask.gather(1, idx)
        halves = [(p, p.c.shape[1] // 2) for _, p in pieces]
        c = torch.cat([p.c[:, :h] for p, h in halves] + [p.c[:, h:] for p, h in halves], 1)
        nu = torch.cat([p.nu[:, :h] for p, h in halves] + [p.nu[:, h:] for p, h in halves], 1)
        walked = Concrete(c, nu).at(eps)  # [N, 2K]: lower bounds of h, then of -h
        new_lo, new_hi = walked[:, :k], -walked[:, k:]
        old_lo, old_hi = lo.gather(1, idx), hi.gather(1, idx)
        win_lo = valid & (new_lo > old_lo)
        win_hi = valid & (new_hi < old_hi)
        lo2 = lo.scatter(1, idx, torch.where(win_lo, new_lo, old_lo))
        hi2 = hi.scatter(1, idx, torch.where(win_hi, new_hi, old_hi))
        KEPT.hold(self, node.name, eps, lo2, hi2, idx, win_lo, win_hi, c, nu)
        return Interval(lo2.reshape(iv.lo.shape), hi2.reshape(iv.hi.shape))

    def per_walk(self, widest: int) -> int:
        """Neurons per refinement walk: its coefficient tensors are [N, 2 * chunk, widest]
        at most, kept under CHUNK_ELEMENTS (memory; the same bounds in any chunks)."""
        return max(1, planning.CHUNK_ELEMENTS // (2 * self.n * max(1, widest)))

    @property
    def widest(self) -> int:
        """The largest node (elements per sample) a backward walk passes (not the input
        where the walks end at a patch embedding's output: ``patches.py``)."""
        skip = self.graph.input.name if PATCHES.head(self) is not None else None
        return max(math.prod(n.out_shape) for n in self.plan.nodes if n.name != skip)

    def at_input(self, lb: LinearBounds, x0: torch.Tensor) -> Concrete:
        r"""A bound reaching the input (``x0``: the input, or the window of it ``lb`` is on),
        its pending fork additions charged, concretised over the ball.

        The additions that formed ``A`` at forks round each entry by at most
        :math:`\gamma_{k+1}|A|`, so over the ball the bound moves by at most
        :math:`\gamma_{k+1}\langle|A|,|x_0+\delta|\rangle\le\gamma_{k+1}(\langle|A|,|x_0|\rangle
        +\varepsilon\|A\|_2)` (Cauchy-Schwarz): the first term goes into the constant, the
        second, doubled for the rounding of the norm itself, into :math:`\nu`."""
        conc = concretise(LinearBounds(lb.A, lb.bias, lb.err + lb.charge_forks(x0.abs())), x0,
                          self.box, self.in_box)
        if lb.forks:
            norm = torch.linalg.vector_norm(lb.A.flatten(2), dim=2)
            conc.nu = conc.nu + 2 * float(gamma(lb.forks + 1)) * norm
        return conc

    def unit_spec(self, idx: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        r"""The specifications :math:`+e_j` then :math:`-e_j` for the flat positions ``idx``
        [N, K] of a tensor of ``shape``: [N, 2K, *shape]."""
        eye = torch.zeros(self.n, idx.shape[1], math.prod(shape), dtype=self.x0.dtype,
                          device=self.x0.device)
        eye.scatter_(2, idx.unsqueeze(2), 1.0)
        return torch.cat([eye, -eye], 1).reshape(self.n, 2 * idx.shape[1], *shape)

    def neuron_bounds(self, node: Node, ctx: RelaxContext, eps: torch.Tensor,
                       idx: torch.Tensor) -> Concrete:
        r"""Bounds of the neurons ``idx`` [N, K] of ``node`` over the balls, as functions of
        the radius [N, 2K] (lower bounds of :math:`h_j`, then of :math:`-h_j`): one backward
        walk from :math:`\pm e_j`."""
        ctx.spec = node.name
        installed = self.walk_slopes(node, idx, ctx)
        ctx.slopes.update(installed)
        try:
            if self.plan.rules[node.name] is not None and len(node.inputs) == 1:
                return self.walk_from(self.graph[node.inputs[0]],
                                      self.unit_step(node, ctx, idx), ctx)
            return self.backward(node, self.unit_spec(idx, node.out_shape), ctx)
        finally:
            ctx.spec = FINAL_SPEC
            for key in installed:
                del ctx.slopes[key]

    def unit_step(self, node: Node, ctx: RelaxContext, idx: torch.Tensor) -> LinearBounds:
        r"""The first step of the walks from :math:`\pm e_j` (``j`` in ``idx`` [N, K]):
        through the node's own rule (it has one, and one input) to the bound at its input,
        read off the node's unit table where there is one."""
        rule = self.plan.rules[node.name]
        assert rule is not None
        # the node's own rounding by the model (unless its rule charges it): |+-e_j| picks rho_j
        rho = None if rule.charges_model_rounding else model_rounding(rule, node, ctx)
        charge = None
        if rho is not None:
            rj = rho.flatten(1).expand(idx.shape[0], -1).gather(1, idx) * (1 + 1e-15)
            charge = torch.cat([rj, rj], 1)
        table = UNITS.table(self, node)
        if table is not None:
            assert isinstance(rule, AffineRelaxation)
            lb = rule.unit_backward(node, ctx, idx, table)
        else:
            zero = torch.zeros((self.n, 2 * idx.shape[1]), dtype=self.x0.dtype,
                               device=self.x0.device)
            (lb,) = rule.backward(node, ctx, LinearBounds(self.unit_spec(idx, node.out_shape),
                                                          zero, zero))
        if charge is None:
            return lb
        return LinearBounds(lb.A, lb.bias, lb.err + charge, lb.forks)

    def walk_slopes(self, node: Node, idx: torch.Tensor, ctx: RelaxContext,
                    windows: dict[str, tuple[tuple[int, int], tuple[int, int]]] | None = None
                    ) -> dict[SlopeKey, torch.Tensor]:
        """Hook: ReLU lower slopes for the walk bounding neurons ``idx`` [N, K] of ``node``
        (keys ``SlopeKey(node, relu)``, values [N, 2K, *relu shape]: the K lower then the K upper
        bounds; with ``windows``, relu name -> (start, end), cut to those spatial windows);
        none for ``crown``."""
        return {}

    # ------------------------------------------------------------------ backward
    def backward(self, target: Node, spec: torch.Tensor, ctx: RelaxContext) -> Concrete:
        """Concretised lower bounds of ``<spec_s, target(x)>`` over the ball; at the logits,
        minus what the model's final softmax may take from a margin
        (:func:`~boundkit.bounds.output.squash_charge`)."""
        zero = torch.zeros(spec.shape[:2], dtype=spec.dtype, device=spec.device)
        err = zero
        if target.name == self.graph.logits.name and target.name != self.graph.output:
            iv = ctx.intervals[target.name]
            charge = squash_charge(self.graph, iv.lo.flatten(1), iv.hi.flatten(1),
                                   ctx.model_arith)
            err = zero + charge.unsqueeze(1)
        return self.walk_from(target, LinearBounds(spec, zero, err), ctx)

    def walk_from(self, target: Node, seed: LinearBounds, ctx: RelaxContext) -> Concrete:
        """Concretised lower bounds of ``<seed.A_s, target(x)> + seed.bias_s`` over the ball
        (``seed.err`` charged): the walk from ``target`` (the input itself too) to the
        input."""
        zero = torch.zeros_like(seed.bias)
        cut_bias, cut_err = zero.clone(), zero.clone()
        order = [n for n in self.plan.nodes if n.op != "input"]
        steps = order[:order.index(target) + 1] if target.op != "input" else []
        rules = self.plan.rules

        def transfer(node: Node, lb: LinearBounds) -> list[LinearBounds | None]:
            nonlocal cut_bias, cut_err
            rule = rules[node.name]
            if rule is None:  # bounded through the sound modulus: constants
                iv = ctx.intervals[node.name]
                pos, neg = lb.A.clamp(min=0), lb.A.clamp(max=0)
                add = dot(pos, iv.lo) + dot(neg, iv.hi)
                d = lb.A[0, 0].numel()
                cut_bias = cut_bias + lb.bias + add
                cut_err = (cut_err + lb.err + lb.charge_forks(iv.mag)
                           + float(gamma(d + 2)) * dot(lb.A.abs(), iv.mag)
                           + UNIT_ROUNDOFF * (cut_bias.abs() + lb.bias.abs()))
                return [None] * len(node.inputs)
            return list(rule.backward(node, ctx, entering(rule, node, ctx, lb)))

        # through a patch embedding, the bound is concretised at its output (patches.py)
        head = PATCHES.head(self) if target.op != "input" else None
        state = walk.backward(steps, {target.name: seed}, transfer,
                              None if head is None else lambda st: st.name == head.node.name)
        if head is not None and head.node.name in state:
            head_rule = rules[head.node.name]
            assert head_rule is not None
            lb_h = entering(head_rule, head.node, ctx, state[head.node.name])
            conc = PATCHES.concretise(self, head, LinearBounds(
                lb_h.A, lb_h.bias + cut_bias,
                lb_h.err + cut_err + UNIT_ROUNDOFF * cut_bias.abs(), lb_h.forks), ctx)
            if conc is not None:
                return conc
            (state[self.graph.input.name],) = head_rule.backward(head.node, ctx, lb_h)
        lb_in = state.get(self.graph.input.name)
        if lb_in is None:
            lb_in = LinearBounds(torch.zeros((*seed.bias.shape, *self.x0.shape[1:]),
                                             dtype=zero.dtype, device=zero.device), zero, zero)
        return self.at_input(LinearBounds(
            lb_in.A, lb_in.bias + cut_bias, lb_in.err + cut_err + UNIT_ROUNDOFF * cut_bias.abs(),
            lb_in.forks), self.x0)

    def margin_spec(self, label: torch.Tensor) -> torch.Tensor:
        c = self.graph.num_classes
        eye = torch.eye(c, dtype=torch.float64, device=self.x0.device)
        spec = eye[label].unsqueeze(1) - eye.unsqueeze(0)  # [N, C, C]: e_y - e_j
        return spec.reshape(self.n, c, *self.graph.logits.out_shape)

    def evaluate(self, eps: torch.Tensor, label: torch.Tensor) -> RadiusStep:
        """Build the relaxation for the balls of radii ``eps`` and read it (:class:`RadiusStep`)."""
        ctx = self.intervals(eps)
        return radius_step(self.backward(self.graph.logits, self.margin_spec(label), ctx),
                           eps, label)
