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

import dataclasses
import math
import warnings
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from boundkit.bounds import walk
from boundkit.bounds.method import BatchResult, Method, register_method
from boundkit.bounds.modulus import Modulus
from boundkit.bounds.numerics import UNIT_ROUNDOFF, gamma, round_down
from boundkit.bounds.output import margins
from boundkit.bounds.relaxation import (
    FINAL_SPEC,
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
#: the most elements (per tensor) a refinement's backward walk holds: 2^19 float64, 4 MiB
#: (larger tensors are mmapped fresh on every allocation: page faults cost more than the sums)
CHUNK_ELEMENTS = 1 << 19
#: single-input nodes that only move values (the first-layer closed form looks through them)
_EXACT_RESHAPES = ("flatten", "reshape", "identity")
#: ops a refinement walk can follow on a spatial window of its coefficients (every neuron
#: of a tile depends on a window of each upstream node only)
_WINDOWED = ("conv2d", "relu", "leaky_relu", "maxpool2d", "batchnorm", "identity")
#: output positions per side of a tile: its neurons are refined by walks on one window
TILE = 2
#: windows are used where a tile's walk holds at most this fraction of a whole walk
WINDOW_GAIN = 0.5
#: the most elements of a node's table of unit transposes (``CrownRun._unit_table``):
#: 2^21 float64, 16 MiB
UNIT_TABLE = 1 << 21


@dataclass
class CrownPlan:
    """Per-model plan: the nodes up to the logits, their rules (``None``: bounded through
    the ``sound`` modulus) and the nodes whose bounds a backward walk refines."""

    sound: SoundPlan
    nodes: list[Node]
    rules: dict[str, RelaxationRule | None]
    #: node -> "unstable" (ReLU input), "live" (ReLU into a max pooling), "pool" (read by a
    #: max pooling) or "all"
    refine: dict[str, str]
    #: (refined node, TILE, WINDOW_GAIN) -> the chain its walks follow on windows, or None
    #: (filled when first asked)
    windows: dict[tuple[str, int, float], list[Node] | None] = dataclasses.field(
        default_factory=dict)
    #: (node, out shape, in shape, padding) -> its unit transposes, or None (filled when
    #: first asked; window copies of a node have their own)
    units: dict[tuple[str, tuple[int, ...], tuple[int, ...], str], torch.Tensor | None] = (
        dataclasses.field(default_factory=dict))


def plan_crown(graph: Graph) -> CrownPlan:
    sp = plan_sound(graph)  # raises UnsupportedLayerError exactly where sound does
    nodes = graph.upstream()
    rules = {n.name: relaxation_rule(n) for n in nodes if n.op != "input"}
    refine: dict[str, str] = {}
    for n in nodes:
        r = rules.get(n.name)
        if r is None or not r.nonlinear:
            continue
        src = n.inputs[0]
        if graph[src].op == "input":
            continue
        if n.op == "maxpool2d":
            # a max pooling reading a ReLU: that ReLU's input is refined (below); reading
            # anything else (a convolution, as in LeNet-5): its live inputs are refined
            if graph[src].op in ("relu", "leaky_relu"):
                continue
            mode = "pool" if graph.consumers(src) == [n.name] else "all"
            refine[src] = _merge_modes(refine.get(src), mode)
            continue
        # a ReLU's stable neurons need no better bounds, unless a max pooling reads its
        # output (its relaxation uses the bounds of every input); when max poolings are all
        # that read it, only the neurons that can reach a window's maximum ("live")
        outs = graph.consumers(n.name)
        pools = [c for c in outs if graph[c].op == "maxpool2d"]
        if n.op not in ("relu", "leaky_relu"):
            mode = "all"
        elif not pools:
            mode = "unstable"
        elif (n.op == "relu" and len(pools) == len(outs) == 1
              and graph.consumers(src) == [n.name]):
            mode = "live"
        else:
            mode = "all"
        refine[src] = _merge_modes(refine.get(src), mode)
    return CrownPlan(sp, nodes, rules, refine)


def _merge_modes(prev: str | None, mode: str) -> str:
    """The refinement of a node two consumers ask for: the same mode, else all neurons."""
    return mode if prev is None or prev == mode else "all"


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
        r"""A lower bound of :math:`c_s-\varepsilon\nu_s` as a float64 number: the product
        and the difference each round by at most :math:`u` relative, covered by
        :math:`4u(|c|+\varepsilon\nu)`."""
        t = eps.unsqueeze(1) * self.nu
        return self.c - t - 4 * UNIT_ROUNDOFF * (self.c.abs() + t)

    def rows(self, idx: torch.Tensor) -> Concrete:
        return Concrete(self.c[idx], self.nu[idx])

    def where(self, take: torch.Tensor, other: Concrete) -> Concrete:
        """``other``'s rows where ``take`` [N], this one's elsewhere."""
        t = take.unsqueeze(1)
        return Concrete(torch.where(t, other.c, self.c), torch.where(t, other.nu, self.nu))

    def put(self, idx: torch.Tensor, other: Concrete) -> None:
        """Rows ``idx`` replaced by ``other``'s, in place."""
        self.c[idx], self.nu[idx] = other.c, other.nu


def concretise(lb: LinearBounds, x0: torch.Tensor, box: tuple[float, float] | None,
               in_box: torch.Tensor) -> Concrete:
    r"""The dual-norm concretisation of ``lb`` at the input (module docstring), with the
    rounding of every step charged (docs/theory/linear_relaxation.md §Concretisation).

    :math:`\mu` is :math:`A` clamped to :math:`(-\infty,0]` where :math:`x_{0,i}` sits on
    the lower face of the box (a positive coefficient is blocked there) and to
    :math:`[0,\infty)` on the upper face: one pass over :math:`A`, then two norms."""
    A = lb.A.flatten(2)
    x = x0.flatten(1)
    ax0 = _dot(A, x)
    a_norm = torch.linalg.vector_norm(A, dim=2)
    if box is not None and bool(in_box.any()):
        inb = in_box.unsqueeze(1)
        inf = torch.full_like(x, math.inf)
        cap_hi = torch.where((x <= box[0]) & inb, torch.zeros_like(x), inf).unsqueeze(1)
        cap_lo = torch.where((x >= box[1]) & inb, torch.zeros_like(x), -inf).unsqueeze(1)
        mu_norm = torch.linalg.vector_norm(torch.clamp(A, min=cap_lo, max=cap_hi), dim=2)
    else:
        mu_norm = a_norm
    d = A.shape[2]
    # the rounding of <A, x0> is at most gamma_{d+1} <|A|, |x0|> <= gamma_{d+1} |A| |x0|
    # (Cauchy-Schwarz; the norms' own rounding is covered by the factor)
    # (and the floor for squares that underflow inside the norm, below)
    dot_err = (float(gamma(d + 1)) * (a_norm + math.sqrt(d) * 2.0 ** -537)
               * torch.linalg.vector_norm(x, dim=1).unsqueeze(1))
    # gamma_{d+2}: d products and sums, the root; the floor covers squares that underflow
    # (each loses at most 2^-1074, so the norm at most sqrt(d) 2^-537)
    nu = mu_norm * (1 + float(gamma(d + 2)) + 1e-15) + math.sqrt(d) * 2.0 ** -537
    c = (ax0 + lb.bias - lb.err * (1 + 1e-8) - dot_err * (1 + 1e-6)
         - 1e-15 * (ax0.abs() + lb.bias.abs()) - 1e-300)
    # an overflow anywhere (huge weights) leaves no bound: -inf, which always holds
    bad = ~(torch.isfinite(c) & torch.isfinite(nu))
    if bool(bad.any()):
        c = torch.where(bad, -math.inf, c)
        nu = torch.where(bad, torch.zeros_like(nu), nu)
    return Concrete(c, nu)


@dataclass
class Remembered:
    r"""Bounds of a refined node that hold on every ball of radius up to ``radius`` [N]
    (``-inf`` rows: none): :math:`h\ge` ``lo.at(eps)`` and :math:`-h\ge` ``neg_hi.at(eps)``
    for every :math:`\varepsilon\le` ``radius`` ([N, M] each; a relaxation built for a ball
    holds on every smaller one, docs/theory/linear_relaxation.md §The radius)."""

    radius: torch.Tensor
    lo: Concrete
    neg_hi: Concrete

    def rows(self, idx: torch.Tensor) -> Remembered:
        return Remembered(self.radius[idx], self.lo.rows(idx), self.neg_hi.rows(idx))

    def recall(self, eps: torch.Tensor, shape: torch.Size) -> Interval:
        """The remembered bounds at radii ``eps`` [N], infinite where they do not hold."""
        ok = (eps <= self.radius).unsqueeze(1)
        inf = torch.full_like(self.lo.c, math.inf)
        lo = torch.where(ok, self.lo.at(eps), -inf)
        hi = torch.where(ok, -self.neg_hi.at(eps), inf)
        return Interval(lo.reshape(shape), hi.reshape(shape))


def _moves_values_only(node: Node) -> bool:
    """A single-input flatten, reshape or identity without a constant shift (``x - mean``
    is captured as an identity with ``attrs["shift"]``: it changes values)."""
    return (node.op in _EXACT_RESHAPES and len(node.inputs) == 1
            and node.attrs.get("shift") is None)


def _cut(iv: Interval, lo: tuple[int, int], hi: tuple[int, int]) -> Interval:
    """The window ``[lo, hi)`` of the last two (spatial) dimensions of ``iv``."""
    return Interval(iv.lo[..., lo[0]:hi[0], lo[1]:hi[1]], iv.hi[..., lo[0]:hi[0], lo[1]:hi[1]])


def _tiles(h: int, w: int) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """The TILE x TILE output windows ``((r0, c0), (r1, c1))`` covering an h x w map, row by
    row (the last ones cut at the border)."""
    return [((r, c), (min(r + TILE, h), min(c + TILE, w)))
            for r in range(0, h, TILE) for c in range(0, w, TILE)]


@dataclass(frozen=True)
class WindowStep:
    """One node of a window walk: its output window ``[lo, hi)`` and its input window,
    ``[start, end)`` before clipping to the input (a convolution's padding lies outside)
    and ``[clo, chi)`` after."""

    node: Node
    lo: tuple[int, int]
    hi: tuple[int, int]
    start: tuple[int, int]
    end: tuple[int, int]
    clo: tuple[int, int]
    chi: tuple[int, int]

    @property
    def widest(self) -> int:
        """The most elements per row the walk holds at this node."""
        n = self.node
        return max(n.out_shape[0] * (self.hi[0] - self.lo[0]) * (self.hi[1] - self.lo[1]),
                   n.in_shapes[0][0] * (self.end[0] - self.start[0])
                   * (self.end[1] - self.start[1]))

    @property
    def pad(self) -> tuple[int, int, int, int]:
        """The padding inside the unclipped input window (left, right, top, bottom)."""
        return (self.clo[1] - self.start[1], self.end[1] - self.chi[1],
                self.clo[0] - self.start[0], self.end[0] - self.chi[0])


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
        #: intervals to reuse as they are (set by a subclass for one radius at a time)
        self.frozen: dict[str, Interval] = {}
        #: refined nodes' bounds kept from a failed step, valid on every smaller ball
        self.memory: dict[str, Remembered] = {}
        #: the last evaluation's refined bounds, until :meth:`remember` keeps them
        self.pending: dict[str, Remembered] = {}

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
        """The same run restricted to samples ``idx`` (``None`` when it cannot be split:
        per-sample moduli of fallback nodes)."""
        if self.omega:
            return None
        sub = object.__new__(type(self))
        sub.graph, sub.plan, sub.box = self.graph, self.plan, self.box
        sub.x0, sub.in_box, sub.n = self.x0[idx], self.in_box[idx], int(idx.numel())
        sub.sound = SubsetPass({k: v[idx] for k, v in self.sound.acts.items()})
        sub.omega, sub.fallback, sub.frozen = {}, self.fallback, {}
        sub.memory = {k: m.rows(idx) for k, m in self.memory.items()}
        sub.pending = {}
        self._subset_state(sub, idx)
        return sub

    def _subset_state(self, sub: CrownRun, idx: torch.Tensor) -> None:
        """Hook: a subclass copies its own per-sample state to ``sub`` (rows ``idx``)."""

    def absorb(self, sub: CrownRun, idx: torch.Tensor) -> None:
        """Take back the per-sample state ``sub`` (rows ``idx`` of this run) updated, so a
        sample's state does not depend on which subsets it was evaluated in (a subclass
        extends it for its own state)."""
        for k, m in sub.memory.items():
            mine = self.memory.get(k)
            if mine is None:  # nothing kept for the other rows: radius -inf
                shape = (self.n, *m.lo.c.shape[1:])
                mine = self.memory[k] = Remembered(
                    m.radius.new_full((self.n,), -math.inf),
                    Concrete(m.lo.c.new_zeros(shape), m.lo.c.new_zeros(shape)),
                    Concrete(m.lo.c.new_zeros(shape), m.lo.c.new_zeros(shape)))
            mine.radius[idx] = m.radius
            mine.lo.put(idx, m.lo)
            mine.neg_hi.put(idx, m.neg_hi)

    def remember(self, keep: torch.Tensor) -> None:
        """Keep the last evaluation's refined bounds for the samples ``keep`` [N] (bool):
        those whose step failed, so every later radius tried lies below it. Kept bounds
        only ever serve radii up to the one they were built for."""
        for k, p in self.pending.items():
            m = self.memory.get(k)
            if m is None:
                r = torch.where(keep, p.radius, torch.full_like(p.radius, -math.inf))
                self.memory[k] = Remembered(r, p.lo, p.neg_hi)
                continue
            take = keep & (p.radius < m.radius) | keep & ~torch.isfinite(m.radius)
            m.radius = torch.where(take, p.radius, m.radius)
            m.lo, m.neg_hi = m.lo.where(take, p.lo), m.neg_hi.where(take, p.neg_hi)
        self.pending = {}

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
        ctx = RelaxContext(self.graph, self.sound.acts, splits=self.splits)
        ctx.intervals[self.graph.input.name] = self._input_interval(eps)
        for node in self.plan.nodes:
            if node.op == "input":
                continue
            kept = self.frozen.get(node.name)
            if kept is not None:  # computed before for this very eps (alpha's iterations)
                ctx.intervals[node.name] = kept
                continue
            rule = self.plan.rules[node.name]
            if rule is None:
                iv = self._fallback_interval(node, eps)
            else:
                iv = rule.interval(node, ctx, [ctx.intervals[i] for i in node.inputs])
            ctx.intervals[node.name] = iv
            mode = self.plan.refine.get(node.name)
            if mode is not None:
                kept = self.memory.get(node.name) if self.splits is None else None
                if kept is not None:  # bounds of a failed step at a larger radius
                    iv = iv.meet(kept.recall(eps, iv.lo.shape))
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
        err = rule._rounding(node, x0.abs()) * (1 + 1e-8) + 1e-15 * centre.abs() + 1e-300
        e = eps.reshape(-1, *([1] * (centre.dim() - 1)))
        return Interval(centre - e * nu_up - err, centre + e * nu_dn + err)

    def _refine(self, node: Node, ctx: RelaxContext, eps: torch.Tensor, iv: Interval,
                mode: str) -> Interval:
        closed = self._first_layer(node, eps)
        if closed is not None:
            return iv.meet(closed)
        lo, hi = iv.lo.flatten(1), iv.hi.flatten(1)
        if mode == "unstable":
            mask = (lo < 0) & (hi > 0)
        elif mode in ("live", "pool"):
            mask = self._live(node, iv, through_relu=mode == "live").flatten(1)
        else:
            mask = torch.ones_like(lo, dtype=torch.bool)
        if not bool(mask.any()):
            return iv
        chain = self._window_chain(node)
        if chain is None:
            k = int(mask.sum(1).max())
            idx = mask.to(torch.int8).topk(k, dim=1, sorted=False).indices  # [N, K]
            per = self._per_walk(self._widest())
            pieces = [(idx[:, j:j + per], self._neuron_bounds(node, ctx, eps, idx[:, j:j + per]))
                      for j in range(0, k, per)]
        else:
            pieces = self._tile_bounds(node, chain, ctx, eps, mask)
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
        if self.splits is None:
            self._keep_pending(node, eps, lo2, hi2, idx, win_lo, win_hi, c, nu)
        return Interval(lo2.reshape(iv.lo.shape), hi2.reshape(iv.hi.shape))

    def _keep_pending(self, node: Node, eps: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor,
                      idx: torch.Tensor, win_lo: torch.Tensor, win_hi: torch.Tensor,
                      c: torch.Tensor, nu: torch.Tensor) -> None:
        """The refined bounds of ``node`` as functions of the radius, for :meth:`remember`:
        a walk's :math:`c-\varepsilon\nu` where it won, else the bound at ``eps`` itself (a
        constant, valid on every smaller ball)."""
        k = idx.shape[1]
        lo_c, hi_c = lo.detach().clone(), (-hi).detach().clone()
        lo_nu, hi_nu = torch.zeros_like(lo_c), torch.zeros_like(hi_c)
        c, nu = c.detach(), nu.detach()
        lo_c.scatter_(1, idx, torch.where(win_lo, c[:, :k], lo_c.gather(1, idx)))
        lo_nu.scatter_(1, idx, torch.where(win_lo, nu[:, :k], lo_nu.gather(1, idx)))
        hi_c.scatter_(1, idx, torch.where(win_hi, c[:, k:], hi_c.gather(1, idx)))
        hi_nu.scatter_(1, idx, torch.where(win_hi, nu[:, k:], hi_nu.gather(1, idx)))
        self.pending[node.name] = Remembered(eps.detach().clone(), Concrete(lo_c, lo_nu),
                                             Concrete(hi_c, hi_nu))

    def _window_chain(self, node: Node) -> list[Node] | None:
        """The nodes from ``node`` back to the input (excluded) when the walks refining
        ``node`` can run on spatial windows: a chain of single-input ``_WINDOWED`` nodes
        with [C, H, W] outputs, max poolings without padding, no split constraints."""
        if self.splits is not None:
            return None
        key = (node.name, TILE, WINDOW_GAIN)
        if key not in self.plan.windows:
            self.plan.windows[key] = self._plan_window_chain(node)
        return self.plan.windows[key]

    def _plan_window_chain(self, node: Node) -> list[Node] | None:
        if len(node.out_shape) != 3:
            return None
        chain: list[Node] = []
        cur = node
        while cur.op != "input":
            if (cur.op not in _WINDOWED or len(cur.inputs) != 1 or len(cur.out_shape) != 3
                    or self.plan.rules.get(cur.name) is None
                    or cur.attrs.get("shift") is not None
                    or (cur.op == "maxpool2d" and any(cur.attrs["padding"]))):
                return None
            chain.append(cur)
            cur = self.graph[cur.inputs[0]]
        if len(cur.out_shape) != 3:
            return None
        # worth it only where a tile's walk is much smaller than a whole one: the work of
        # all tiles' walks against the whole walk's, per neuron
        _, h, w = node.out_shape
        full = self._window_steps(chain, (0, 0), (h, w))
        if full is None:
            return None
        whole = max(st.widest for st in full)

        def widest(lo: tuple[int, int], hi: tuple[int, int]) -> int:
            steps = self._window_steps(chain, lo, hi)  # None: walked whole
            return whole if steps is None else max(st.widest for st in steps)
        windowed = sum(widest(a, b) * (b[0] - a[0]) * (b[1] - a[1])
                       for a, b in _tiles(h, w)) / (h * w)
        return chain if windowed <= WINDOW_GAIN * whole else None

    @staticmethod
    def _span(node: Node, lo: tuple[int, int], hi: tuple[int, int]
              ) -> tuple[tuple[int, int], tuple[int, int]]:
        """The input window (start, end) of ``node``'s output window ``[lo, hi)``, before
        clipping to the input (a convolution's padding lies outside)."""
        if node.op not in ("conv2d", "maxpool2d"):
            return lo, hi
        a = node.attrs
        k = (node.params["weight"].shape[2:] if node.op == "conv2d" else a["kernel_size"])
        s, d = a["stride"], a["dilation"]
        p = a["padding"] if node.op == "conv2d" else (0, 0)
        start = tuple(lo[i] * s[i] - p[i] for i in range(2))
        end = tuple((hi[i] - 1) * s[i] - p[i] + d[i] * (int(k[i]) - 1) + 1 for i in range(2))
        return start, end  # type: ignore[return-value]

    def _tile_bounds(self, node: Node, chain: list[Node], ctx: RelaxContext,
                     eps: torch.Tensor, mask: torch.Tensor
                     ) -> list[tuple[torch.Tensor, Concrete]]:
        """Bounds of the neurons ``mask`` [N, M] of ``node``, tile by tile: the neurons of
        TILE x TILE output positions (all channels) by walks on the windows they depend on
        (docs/theory/linear_relaxation.md §Refined neurons)."""
        c_out, h_out, w_out = node.out_shape
        dev = mask.device
        ch = torch.arange(c_out, device=dev).reshape(-1, 1, 1) * (h_out * w_out)
        pieces = []
        for (r0, c0), (r1, c1) in _tiles(h_out, w_out):
            rr = torch.arange(r0, r1, device=dev).reshape(1, -1, 1)
            cc = torch.arange(c0, c1, device=dev).reshape(1, 1, -1)
            flat = (ch + rr * w_out + cc).flatten()  # the tile's neurons
            local = mask[:, flat]
            k = int(local.sum(1).max())
            if k == 0:
                continue
            sel = local.to(torch.int8).topk(k, dim=1, sorted=False).indices
            idx = flat[sel]  # [N, k], distinct per row
            steps = self._window_steps(chain, (r0, c0), (r1, c1))
            per = self._per_walk(max(st.widest for st in steps) if steps else self._widest())
            for j in range(0, k, per):
                part = idx[:, j:j + per]
                pieces.append((part, self._neuron_bounds(node, ctx, eps, part)
                               if steps is None else self._window_bounds(node, steps, ctx, part)))
        return pieces

    def _per_walk(self, widest: int) -> int:
        """Neurons per refinement walk: its coefficient tensors are [N, 2 * chunk, widest]
        at most, kept under CHUNK_ELEMENTS (memory; the same bounds in any chunks)."""
        return max(1, CHUNK_ELEMENTS // (2 * self.n * max(1, widest)))

    def _window_steps(self, chain: list[Node], lo: tuple[int, int], hi: tuple[int, int]
                      ) -> list[WindowStep] | None:
        """The windows of a walk along ``chain`` from the output window ``[lo, hi)`` of its
        first node, or ``None`` where a window lies wholly in a convolution's padding (the
        tile's neurons are constants on the ball: the whole walk handles them)."""
        steps = []
        for v in chain:
            start, end = self._span(v, lo, hi)
            in_hw = v.in_shapes[0][1:]
            clo = (max(start[0], 0), max(start[1], 0))
            chi = (min(end[0], in_hw[0]), min(end[1], in_hw[1]))
            if chi[0] <= clo[0] or chi[1] <= clo[1]:
                return None
            steps.append(WindowStep(v, lo, hi, start, end, clo, chi))
            lo, hi = clo, chi
        return steps

    def _window_bounds(self, node: Node, steps: list[WindowStep], ctx: RelaxContext,
                       idx: torch.Tensor) -> Concrete:
        r"""As :meth:`_neuron_bounds` for neurons ``idx`` [N, K] of ``node`` inside the
        output window of ``steps[0]``: the walk carries coefficients on windows only. Every
        node of the chain is replaced by a copy of window shape (a convolution or pooling
        without padding, reading its input window; padding positions are zeros, so their
        coefficients are dropped, exactly), with the intervals and slopes cut to the
        windows; the bound is concretised on the input window."""
        _, h_out, w_out = node.out_shape
        lo, hi = steps[0].lo, steps[0].hi
        h, w = hi[0] - lo[0], hi[1] - lo[1]
        ch, rem = idx // (h_out * w_out), idx % (h_out * w_out)
        loc = ch * (h * w) + (rem // w_out - lo[0]) * w + (rem % w_out - lo[1])
        ctx.spec = node.name
        installed = self.walk_slopes(node, idx, ctx,
                                     {st.node.name: (st.lo, st.hi) for st in steps})
        lb: LinearBounds | None = None  # the unit specifications, then the walk's bound
        try:
            for st in steps:
                v, lo, hi, start, end, pad = st.node, st.lo, st.hi, st.start, st.end, st.pad
                out_iv = _cut(ctx.intervals[v.name], lo, hi)
                in_iv = _cut(ctx.intervals[v.inputs[0]], st.clo, st.chi)
                if any(pad):  # a convolution's zero padding inside the window
                    in_iv = Interval(F.pad(in_iv.lo, pad), F.pad(in_iv.hi, pad))
                attrs = dict(v.attrs)
                if v.op == "conv2d":
                    attrs["padding"] = (0, 0)
                src = f"{v.name}<window"
                vv = dataclasses.replace(
                    v, inputs=[src], attrs=attrs,
                    in_shapes=[(v.in_shapes[0][0], end[0] - start[0], end[1] - start[1])],
                    out_shape=(v.out_shape[0], hi[0] - lo[0], hi[1] - lo[1]))
                sub = RelaxContext(self.graph, {}, {v.name: out_iv, src: in_iv}, spec=ctx.spec)
                key = f"{ctx.spec}:{v.name}"
                if key in installed:  # already cut to the window
                    sub.slopes[key] = installed[key]
                elif key in ctx.slopes:
                    sub.slopes[key] = ctx.slopes[key][..., lo[0]:hi[0], lo[1]:hi[1]]
                rule = self.plan.rules[v.name]
                assert rule is not None
                if lb is None:
                    lb = self._unit_step(vv, sub, loc)
                else:
                    (lb,) = rule.backward(vv, sub, lb)
                if any(pad):  # drop the coefficients of the padding (constant zeros)
                    lb = LinearBounds(lb.A[..., pad[2]:lb.A.shape[-2] - pad[3],
                                           pad[0]:lb.A.shape[-1] - pad[1]],
                                      lb.bias, lb.err, lb.forks)
            lo, hi = steps[-1].clo, steps[-1].chi
        finally:
            ctx.spec = FINAL_SPEC
        assert lb is not None
        return self._at_input(LinearBounds(lb.A.contiguous(), lb.bias, lb.err, lb.forks),
                              self.x0[..., lo[0]:hi[0], lo[1]:hi[1]])

    def _at_input(self, lb: LinearBounds, x0: torch.Tensor) -> Concrete:
        """A bound reaching the input (``x0``: the input, or the window of it ``lb`` is on),
        its pending fork additions charged, concretised over the ball."""
        lb = LinearBounds(lb.A, lb.bias, lb.err + lb.charge_forks(x0.abs()))
        return concretise(lb, x0, self.box, self.in_box)

    def _unit_spec(self, idx: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        r"""The specifications :math:`+e_j` then :math:`-e_j` for the flat positions ``idx``
        [N, K] of a tensor of ``shape``: [N, 2K, *shape]."""
        eye = torch.zeros(self.n, idx.shape[1], math.prod(shape), dtype=self.x0.dtype,
                          device=self.x0.device)
        eye.scatter_(2, idx.unsqueeze(2), 1.0)
        return torch.cat([eye, -eye], 1).reshape(self.n, 2 * idx.shape[1], *shape)

    def _unit_table(self, node: Node) -> torch.Tensor | None:
        r""":math:`L^\top e_j` for every output :math:`j` of an affine single-input node
        (as it stands: a window copy has its own) [M, *in], so the first step of a walk
        from :math:`\pm e_j` is a gather (planned once per model and shape); ``None`` for
        other nodes and past ``UNIT_TABLE`` elements."""
        rule = self.plan.rules.get(node.name)
        if not isinstance(rule, AffineRelaxation) or len(node.inputs) != 1:
            return None
        key = (node.name, tuple(node.out_shape), tuple(node.in_shapes[0]),
               repr(node.attrs.get("padding")))
        if key not in self.plan.units:
            m, k = math.prod(node.out_shape), math.prod(node.in_shapes[0])
            table = None
            if m * k <= UNIT_TABLE:
                per = max(1, CHUNK_ELEMENTS // max(m, k))
                table = torch.cat([rule.unit_rows(node, slice(j, j + per), self.x0.dtype,
                                                  self.x0.device) for j in range(0, m, per)])
            self.plan.units[key] = table
        return self.plan.units[key]

    def _widest(self) -> int:
        """The largest node (elements per sample) a backward walk passes."""
        return max(math.prod(n.out_shape) for n in self.plan.nodes)

    def _neuron_bounds(self, node: Node, ctx: RelaxContext, eps: torch.Tensor,
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
                                      self._unit_step(node, ctx, idx), ctx)
            return self.backward(node, self._unit_spec(idx, node.out_shape), ctx)
        finally:
            ctx.spec = FINAL_SPEC
            for key in installed:
                del ctx.slopes[key]

    def _unit_step(self, node: Node, ctx: RelaxContext, idx: torch.Tensor) -> LinearBounds:
        r"""The first step of the walks from :math:`\pm e_j` (``j`` in ``idx`` [N, K]):
        through the node's own rule (it has one, and one input) to the bound at its input,
        read off the node's unit table where there is one."""
        rule = self.plan.rules[node.name]
        assert rule is not None
        table = self._unit_table(node)
        if table is not None:
            assert isinstance(rule, AffineRelaxation)
            return rule.unit_backward(node, ctx, idx, table)
        zero = torch.zeros((self.n, 2 * idx.shape[1]), dtype=self.x0.dtype,
                           device=self.x0.device)
        (lb,) = rule.backward(node, ctx, LinearBounds(self._unit_spec(idx, node.out_shape),
                                                      zero, zero))
        return lb

    def walk_slopes(self, node: Node, idx: torch.Tensor, ctx: RelaxContext,
                    windows: dict[str, tuple[tuple[int, int], tuple[int, int]]] | None = None
                    ) -> dict[str, torch.Tensor]:
        """Hook: ReLU lower slopes for the walk bounding neurons ``idx`` [N, K] of ``node``
        (keys ``"node:relu"``, values [N, 2K, *relu shape]: the K lower then the K upper
        bounds; with ``windows``, relu name -> (start, end), cut to those spatial windows);
        none for ``crown``."""
        return {}

    def _live(self, node: Node, iv: Interval, through_relu: bool = True) -> torch.Tensor:
        r"""The neurons of ``node`` (read by one ReLU read by one max pooling, or, without
        ``through_relu``, read by the max pooling itself: relu below is then the identity
        and no neuron is dead) whose bounds can change the pooling's relaxation: not dead
        (:math:`u>0`) and not dominated,
        :math:`\mathrm{relu}(u_i)\ge\min_{w\ni i}\max_{i'\in w}\mathrm{relu}(l_{i'})`. A
        dominated neuron is never a window's maximum, nor its best lower bound, nor its
        largest upper bound, and refining bounds only raises the right-hand side and lowers
        :math:`u_i` (docs/theory/linear_relaxation.md §Refined neurons)."""
        graph = self.graph
        if through_relu:
            relu = graph[graph.consumers(node.name)[0]]
            pool = graph[graph.consumers(relu.name)[0]]
            lo_r, hi_r = iv.lo.clamp(min=0), iv.hi.clamp(min=0)
        else:  # the pooling reads the node itself
            pool = graph[graph.consumers(node.name)[0]]
            lo_r, hi_r = iv.lo, iv.hi
        a = pool.attrs
        best = F.max_pool2d(lo_r, a["kernel_size"], a["stride"], a["padding"], a["dilation"])
        p = a["padding"]
        n, c, h, w = lo_r.shape
        padded = (h + 2 * p[0], w + 2 * p[1])
        pos = torch.arange(padded[0] * padded[1], dtype=lo_r.dtype, device=lo_r.device)
        pos_w = F.unfold(pos.reshape(1, 1, *padded), a["kernel_size"], dilation=a["dilation"],
                         stride=a["stride"])[0].long()  # [k, L]
        k, nw = pos_w.shape
        vals = (-best.reshape(n, c, 1, nw)).expand(n, c, k, nw).reshape(n, c, k * nw)
        neg_thr = torch.full((n, c, padded[0] * padded[1]), -math.inf, dtype=lo_r.dtype,
                             device=lo_r.device)
        neg_thr.scatter_reduce_(2, pos_w.reshape(1, 1, -1).expand(n, c, -1), vals, "amax")
        thr = -neg_thr.reshape(n, c, *padded)[..., p[0]:p[0] + h, p[1]:p[1] + w]
        live = hi_r >= thr
        return live & (iv.hi > 0) if through_relu else live

    # ------------------------------------------------------------------ backward
    def backward(self, target: Node, spec: torch.Tensor, ctx: RelaxContext) -> Concrete:
        """Concretised lower bounds of ``<spec_s, target(x)>`` over the ball."""
        zero = torch.zeros(spec.shape[:2], dtype=spec.dtype, device=spec.device)
        return self.walk_from(target, LinearBounds(spec, zero, zero), ctx)

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
                add = _dot(pos, iv.lo) + _dot(neg, iv.hi)
                d = lb.A[0, 0].numel()
                cut_bias = cut_bias + lb.bias + add
                cut_err = (cut_err + lb.err + lb.charge_forks(iv.mag)
                           + float(gamma(d + 2)) * _dot(lb.A.abs(), iv.mag)
                           + UNIT_ROUNDOFF * (cut_bias.abs() + lb.bias.abs()))
                return [None] * len(node.inputs)
            return list(rule.backward(node, ctx, lb))

        state = walk.backward(steps, {target.name: seed}, transfer)
        lb_in = state.get(self.graph.input.name)
        if lb_in is None:
            lb_in = LinearBounds(torch.zeros((*seed.bias.shape, *self.x0.shape[1:]),
                                             dtype=zero.dtype, device=zero.device), zero, zero)
        return self._at_input(LinearBounds(
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

    def certified(self, eps: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        """A radius certified by the relaxation built for ``eps`` (<= eps) [N]."""
        return self.evaluate(eps, label).certified


@dataclass
class RadiusStep:
    r"""What one relaxation, built for the balls of radii ``eps`` [N], says: the margins
    :math:`f_y-f_j\ge c_j-\varepsilon'\nu_j` for every :math:`\varepsilon'\le\varepsilon`.

    ``phi``: :math:`\min_{j\ne y}c_j/\nu_j`, unrounded, possibly negative; ``bound``: the
    margin bound at ``eps`` itself, :math:`\min_{j\ne y}(c_j-\varepsilon\nu_j)`; ``certified``:
    :math:`\min(\varepsilon,\varphi)` with the quotient rounded down (8 ulps cover its one
    rounding), 0 where :math:`\varphi\le0`."""

    eps: torch.Tensor
    phi: torch.Tensor
    bound: torch.Tensor
    certified: torch.Tensor


def radius_step(conc: Concrete, eps: torch.Tensor, label: torch.Tensor) -> RadiusStep:
    own = torch.nn.functional.one_hot(label, conc.c.shape[1]).bool()
    nu = conc.nu
    safe = torch.where(nu > 0, nu, torch.ones_like(nu))
    inf = torch.full_like(nu, math.inf)
    r = torch.where(nu > 0, conc.c / safe, torch.where(conc.c > 0, inf, -inf))
    phi = torch.where(own, inf, r).min(1).values
    bound = torch.where(own, inf, conc.at(eps)).min(1).values
    cert = torch.minimum(round_down(phi.clamp(min=0.0), 8), eps)
    return RadiusStep(eps, phi, bound, cert)


#: before any failure the next radius goes this fraction of the way from the last pass to
#: the extrapolated root (m is concave in practice: the chord overshoots)
EXTRAPOLATE = 0.8
#: a radius that closes the bracket on one outcome is tried when the root estimate lies at
#: least this many aim widths inside it
CLOSE_MARGIN = 0.25
#: the relative width the search aims to close the bracket to in one step (AIM while the
#: bracket is wider, then a quarter of its width): it does not depend on rtol, so the radii
#: tried are the same for every rtol and a tighter rtol only searches longer
#: (docs/theory/linear_relaxation.md §The radius)
AIM = 1e-3
#: an interpolation step that leaves more than this fraction of the bracket's log-width
#: stalls: after three stalls in a row, or one that passed with m hardly below the last
#: pass's (more than FLAT of it: m is flat, then falls off a cliff, and regula falsi keeps
#: landing next to the pass end), the next step bisects in log space, so the log-width at
#: least halves every four steps, every two on a cliff
SHRINK = 0.5
FLAT = 0.5
STALLS = 3
#: the most relaxations the search evaluates per sample; a sample stopped by it before its
#: bracket closed to rtol is reported (``RadiusSearch.capped``)
MAX_EVALUATIONS = 64


@dataclass
class RadiusSearch:
    """What :func:`search_radius` found, per sample [N]: ``radius`` certified (the largest
    radius certified by any step, at least the ``lo`` it started from); ``fail`` the smallest
    radius whose relaxation failed (``inf``: none tried; the search stops once ``fail <=
    radius (1 + rtol)``); ``evaluations`` the relaxations evaluated; ``capped`` where the
    evaluation limit stopped the search before the bracket closed to rtol."""

    radius: torch.Tensor
    fail: torch.Tensor
    evaluations: torch.Tensor
    capped: torch.Tensor
    #: the radius certified when the bracket first closed to the ``coarse`` tolerance (the
    #: final radius where it never did): the same for every rtol up to ``coarse``
    coarse: torch.Tensor


def search_radius(run: CrownRun, label: torch.Tensor, lo: torch.Tensor, margin: torch.Tensor,
                  rtol: float = 1e-3, max_evaluations: int = MAX_EVALUATIONS,
                  first: float = 2.0, reach: torch.Tensor | None = None,
                  coarse: float = 1e-2) -> RadiusSearch:
    r"""Per-sample radius search for the root of :math:`m(\varepsilon)`, the margin bound of
    the relaxation built for radius :math:`\varepsilon` (:class:`RadiusStep`; decreasing in
    practice but not always, piecewise smooth with jumps where a neuron's relaxation
    changes, on deep networks a cliff of several orders of magnitude; :math:`m(0)` the
    margin at :math:`x_0`).

    Every step certifies :math:`\min(\varepsilon,\varphi(\varepsilon))`, so ``lo``
    (certified on entry, e.g. the ``sound`` radius) only grows whatever :math:`m` does;
    ``hi`` is the smallest radius whose relaxation failed. Before any failure the step goes
    ``EXTRAPOLATE`` of the way to the secant's root (else grows 4x). Once bracketed, the
    root is estimated by the secant through the last two radii tried where it falls inside
    ``(lo, hi)``, else by regula falsi on the pass and fail ends with the Illinois rule (the
    value of an end kept twice in a row is halved), capped by :math:`\varphi` of the pass
    end (the root lies below it where :math:`m` decreases). The radius tried: one that
    closes the bracket to the aim width :math:`\tau` (``AIM`` while the bracket's relative
    width w exceeds it, then w/4) on one outcome when the estimate lies ``CLOSE_MARGIN``
    :math:`\tau` inside it, else just above the estimate (a failure there still certifies
    :math:`\varphi`) or, once ``hi`` is close above it, just below. An interpolation step
    that leaves more than ``SHRINK`` of the bracket's log-width stalls; a stall whose pass
    has :math:`m` above ``FLAT`` times the last pass's (a flat :math:`m` before a cliff:
    regula falsi lands next to the pass end again and again), or ``STALLS`` stalls in a
    row (single stalls are normal: a pass just above the last, next to an accurate
    estimate, before the step that closes the bracket), is followed by a bisection in log
    space, so the log-width at least halves every four steps (two on a cliff); an unusable
    estimate bisects at once.

    The radii tried do not depend on ``rtol``: it only decides when a sample stops
    (``hi <= lo (1 + rtol)``), so a tighter rtol continues the same sequence and never
    returns a smaller radius. A sample stops after ``max_evaluations`` evaluations at the
    latest (``RadiusSearch.capped``). ``first``: the first radius tried is ``first * lo``
    (1e-2 where ``lo`` is 0). ``reach`` [N] (:attr:`CrownRun.reach`): no larger radius is
    tried, and a pass at it certifies the whole box: the radius is then ``inf``.
    ``coarse``: the tolerance of ``RadiusSearch.coarse``."""
    n = lo.numel()
    lo = lo.clone()
    hi = torch.full_like(lo, math.inf)
    active = margin > 0
    nan = torch.full_like(lo, math.nan)
    evals = torch.zeros(n, dtype=torch.long, device=lo.device)
    # the last radius tried and its margin bound ((0, m(0)) before any); the pass end a
    # (the largest radius that passed, its m and phi) and the fail end b (the smallest that
    # failed); fa, fb: the ends' values as regula falsi uses them (Illinois-halved)
    x1, y1 = torch.zeros_like(lo), margin.clone()
    ea, fa, eb, fb = torch.zeros_like(lo), margin.clone(), nan.clone(), nan.clone()
    phia = torch.full_like(lo, math.inf)
    side = torch.zeros(n, dtype=torch.int8, device=lo.device)  # end replaced last: +1 a, -1 b
    stalls = torch.zeros(n, dtype=torch.int8, device=lo.device)
    ma = margin.clone()  # m at the pass end, not halved
    at_coarse = torch.full_like(lo, math.nan)
    if reach is None:
        reach = torch.full_like(lo, math.inf)
    eps = torch.where(lo > 0, lo * first, torch.full_like(lo, 1e-2)).minimum(reach)
    while True:
        open_ = active & ~(hi <= lo * (1 + rtol))
        todo = open_ & (evals < max_evaluations)
        if not bool(todo.any()):
            break
        idx = torch.nonzero(todo).flatten()
        sub = run.subset(idx) if idx.numel() < n else None
        if sub is None:
            st = run.evaluate(torch.where(todo, eps, lo.clamp(min=1e-300)), label)
            run.remember(todo & (st.certified < st.eps))
            phi, m, cert = st.phi[idx], st.bound[idx], st.certified[idx]
        else:
            st = sub.evaluate(eps[idx], label[idx])
            sub.remember(st.certified < st.eps)
            run.absorb(sub, idx)
            phi, m, cert = st.phi, st.bound, st.certified
        evals[idx] += 1
        e = eps[idx]
        l0, h0 = lo[idx], hi[idx]
        width0 = torch.log(h0 / l0)  # inf while unbracketed or lo = 0
        ok = cert >= e
        # a pass on a ball holding the whole box certifies every radius
        cert = torch.where(ok & (e >= reach[idx]), math.inf, cert)
        l, h = torch.maximum(l0, cert), torch.where(ok, h0, torch.minimum(h0, e))
        lo[idx], hi[idx] = l, h
        at_coarse[idx] = torch.where(torch.isnan(at_coarse[idx]) & (h <= l * (1 + coarse)), l,
                                     at_coarse[idx])
        # the ends, with the Illinois rule: an end kept on two steps in a row is halved
        sd = side[idx]
        a_e, b_e = torch.where(ok, e, ea[idx]), torch.where(ok, eb[idx], e)
        a_f = torch.where(ok, m, torch.where(sd == -1, 0.5 * fa[idx], fa[idx]))
        b_f = torch.where(ok, torch.where(sd == 1, 0.5 * fb[idx], fb[idx]), m)
        ph = torch.where(ok, phi, phia[idx])
        ea[idx], fa[idx], eb[idx], fb[idx], phia[idx] = a_e, a_f, b_e, b_f, ph
        side[idx] = torch.where(ok, 1, -1).to(torch.int8)
        # the rate guarantee: interpolation steps that did not shrink the log-width enough
        # are followed by a bisection (at once where m is flat, else after STALLS)
        width = torch.log(h / l)
        stall = torch.isfinite(width0) & (width > SHRINK * width0)
        flat = stall & ok & (ma[idx] > 0) & (m > FLAT * ma[idx])
        ma[idx] = torch.where(ok, m, ma[idx])
        st_n = torch.where(stall, stalls[idx] + 1, torch.zeros_like(stalls[idx]))
        bisect = flat | (st_n >= STALLS)
        stalls[idx] = torch.where(bisect, 0, st_n).to(torch.int8)
        # root estimate
        p, q = x1[idx], y1[idx]  # the secant runs through (p, q) and (e, m)
        x1[idx], y1[idx] = e, m
        secant = torch.where(q != m, e - m * (e - p) / (m - q), torch.full_like(e, math.nan))
        bracketed = torch.isfinite(h)
        inside = torch.isfinite(secant) & (secant > l) & (secant < h)
        falsi = a_e + a_f * (b_e - a_e) / (a_f - b_f)
        ahead = a_e + EXTRAPOLATE * (secant - a_e)
        est = torch.where(bracketed, torch.where(inside, secant, falsi),
                          torch.where(torch.isfinite(ahead) & (ahead > a_e), ahead,
                                      torch.full_like(e, math.inf))).minimum(ph)
        w = torch.where(bracketed & (l > 0), h / l - 1, torch.full_like(l, math.inf))
        tau = torch.where(w > AIM, torch.full_like(l, AIM), w / 4)
        below = h <= est * (1 + 0.75 * tau)
        target = torch.where(below, est * (1 - 0.25 * tau), est * (1 + 0.5 * tau))
        close_fail = l * (1 + tau) * (1 - 0.01 * tau)  # a failure at or below it closes
        close_pass = h / (1 + tau) * (1 + 0.01 * tau)  # a pass at or above it closes
        target = torch.where(close_fail >= est * (1 + CLOSE_MARGIN * tau), close_fail,
                             torch.where(close_pass <= est * (1 - CLOSE_MARGIN * tau),
                                         close_pass, target))
        usable = (torch.isfinite(target) & (target > l * (1 + 0.1 * tau)) & (target < h)
                  & ~bisect)
        fallback = torch.where(torch.isinf(h), torch.where(l > 0, l * 4, e * 4),
                               torch.where(l > 0, torch.sqrt(l * h), h / 8))
        eps[idx] = torch.where(usable, target, fallback).minimum(reach[idx])
    return RadiusSearch(lo, hi, evals, open_, torch.where(torch.isnan(at_coarse), lo, at_coarse))


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
        # samples in groups small enough that one neuron's walk fits in CHUNK_ELEMENTS
        # (each sample's radius does not depend on its group)
        group = max(1, CHUNK_ELEMENTS // (2 * max(math.prod(n.out_shape) for n in plan.nodes)))
        if x0.shape[0] > group:
            return BatchResult.cat([self._run_group(graph, x0[s:s + group], plan, box, trace,
                                                    options)
                                    for s in range(0, x0.shape[0], group)])
        return self._run_group(graph, x0, plan, box, trace, options)

    def _run_group(self, graph: Graph, x0: torch.Tensor, plan: CrownPlan,
                   box: tuple[float, float] | None, trace: bool, options: dict[str, Any]
                   ) -> BatchResult:
        run = self.make_run(graph, plan, x0, box, options)
        base = run.sound.result
        sound_r = torch.nan_to_num(base.radius, nan=0.0).clamp_min(0.0)
        label, m = margins(run.sound.acts[graph.logits.name])
        margin = m.min(1).values
        found = self.search(run, label, sound_r, margin, options)
        r = found.radius
        capped = int(found.capped.sum())
        if capped:
            warnings.warn(f"{self.name}: the radius search stopped at its limit of "
                          f"{MAX_EVALUATIONS} relaxations on {capped} sample(s) before "
                          "closing to rtol; their radii are certified, but may lie further "
                          "below what the relaxation certifies (info['search_capped'])",
                          RuntimeWarning, stacklevel=2)
        radius = torch.maximum(r, sound_r)
        res = BatchResult(radius, base.label, base.runner_up, base.margin,
                          {graph.input.name: radius} if trace else {},
                          {"from_sound": sound_r >= r, "search_capped": found.capped,
                           "search_evaluations": found.evaluations},
                          outputs=base.outputs, unsafe=base.unsafe)
        return res

    def make_run(self, graph: Graph, plan: CrownPlan, x0: torch.Tensor,
                 box: tuple[float, float] | None, options: dict[str, Any]) -> CrownRun:
        return CrownRun(graph, plan, x0, box)

    def search(self, run: CrownRun, label: torch.Tensor, lo: torch.Tensor,
               margin: torch.Tensor, options: dict[str, Any]) -> RadiusSearch:
        return search_radius(run, label, lo, margin, check_rtol(options.get("rtol", 1e-3)),
                             reach=run.reach)


def check_rtol(rtol: Any) -> float:
    """The search's relative tolerance: a number in (0, 1)."""
    try:
        if isinstance(rtol, bool):
            raise TypeError
        value = float(rtol)
    except (TypeError, ValueError):
        raise ValueError(f"rtol must be a number in (0, 1), got {rtol!r}") from None
    if not 0.0 < value < 1.0:
        raise ValueError(f"rtol must be a number in (0, 1), got {rtol!r}")
    return value


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
