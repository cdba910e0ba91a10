r"""``sound``: moduli of continuity composed forward over the graph.

Every stage contributes a proven modulus of continuity (:mod:`boundkit.bounds.modulus`);
moduli compose forward over the graph with the generic walker (merges combine their
inputs' moduli in their own rule: sums over a residual ``add``, quadrature over ``cat``), and
the radius is :math:`\sup\{t:\omega_{x\to h}(t)<\kappa_h\}` with :math:`\kappa_h` the
per-class-pair margin bound at the input :math:`h` of the affine tail
(:mod:`boundkit.bounds.output`). Float64 rounding is bounded and subtracted
(:mod:`boundkit.bounds.numerics`, ``docs/theory/engine.md``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from boundkit.bounds import walk
from boundkit.bounds.method import BatchResult, Method, register_method
from boundkit.bounds.mlp import SMOOTH_OPS, SmoothBlock, Stage
from boundkit.bounds.modulus import Modulus
from boundkit.bounds.numerics import UNIT_ROUNDOFF, gamma, underflow_error, unsafe_range
from boundkit.bounds.output import SoundOutput, squash_charge
from boundkit.bounds.registry import SoundRule, require_rule
from boundkit.bounds.state import Activations
from boundkit.graph.graph import Graph, Node


class NodeStage(Stage):
    """A single node with its rule."""

    def __init__(self, node: Node, rule: Any) -> None:
        super().__init__([node])
        self.node = node
        self.rule = rule

    def needs(self, graph: Graph) -> set[str]:
        return self.rule.needs(self.node, graph)


@dataclass
class SoundPlan:
    """Per-model plan of ``sound``: the output stage and the stages before it."""

    output: SoundOutput
    stages: list[Any]


@dataclass
class RoundingErrors:
    """Per-node upper bounds [N] on the L2 error of the float64 forward pass at x."""

    per_node: dict[str, torch.Tensor]

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.per_node[name]


@dataclass
class SoundPass:
    """Everything one ``sound`` pass computed on a batch (read by refinements such as
    ``sound-local`` and by ``crown``'s fallback for nodes without a relaxation)."""

    result: BatchResult
    acts: dict[str, torch.Tensor]
    errors: RoundingErrors
    moduli: dict[str, Modulus]
    #: the per-sample L2 norms of every node's output at x (:func:`model_error`)
    norms: dict[str, torch.Tensor]


def plan_sound(graph: Graph) -> SoundPlan:
    """Group the graph into stages: (Linear, smooth activation) runs along single-consumer
    chains become one :class:`SmoothBlock`; every other node is a :class:`NodeStage`."""
    out = SoundOutput(graph)
    covered = {n.name for n in out.tail}
    upstream = [n for n in graph.upstream() if n.name not in covered and n.op != "input"]
    blocks: list[list[Node]] = []
    i = 0
    while i < len(upstream):
        run: list[Node] = []
        j = i
        while j + 1 < len(upstream):
            lin, act = upstream[j], upstream[j + 1]
            ok = (
                lin.op == "linear"
                and len(lin.in_shapes[0]) == 1  # the block's Jacobian is of vectors
                and act.op in SMOOTH_OPS
                and act.inputs == [lin.name]
                and graph.consumers(lin.name) == [act.name]
                and (not run or lin.inputs == [run[-1].name])
                and (not run or graph.consumers(run[-1].name) == [lin.name])
            )
            if not ok:
                break
            run += [lin, act]
            j += 2
        if run:
            blocks.append(run)
            i = j
        else:
            i += 1
    in_block = {n.name: b for b in blocks for n in b}
    stages: list[Any] = []
    seen: set[str] = set()
    for n in upstream:
        if n.name in seen:
            continue
        if n.name in in_block:
            b = in_block[n.name]
            stages.append(SmoothBlock(b))
            seen.update(x.name for x in b)
        else:
            stages.append(NodeStage(n, require_rule(n, "sound")))
            seen.add(n.name)
    for n in upstream:  # nodes inside smooth blocks still need their own rule (rounding)
        require_rule(n, "sound")
    return SoundPlan(out, stages)


def rounding_errors(graph: Graph, norms: dict[str, torch.Tensor], bsz: int) -> RoundingErrors:
    """Forward walk: each node carries its inputs' errors (its rule's ``carry_error``) and
    adds its own rounding (``rounding``) and deviation from the model (``deviation``)."""
    dev = graph.device
    zero = torch.zeros(bsz, dtype=torch.float64, device=dev)

    def transfer(n: Node, ins: list[torch.Tensor | None]) -> torch.Tensor:
        rule = require_rule(n, "sound")
        assert isinstance(rule, SoundRule)
        given = [e for e in ins if e is not None]
        carried = rule.carry_error_at(n, graph, given, norms) if given else zero.clone()
        in_norm = rule.input_norm(n, graph, norms) if n.inputs else torch.zeros_like(carried)
        inj = rule.rounding(n, graph, in_norm, norms[n.name]) + underflow_error(n)
        return (carried + inj + rule.deviation(n, graph)) * (1 + 1e-6)

    nodes = [n for n in graph.upstream() if n.op != "input"]
    return RoundingErrors(walk.forward(nodes, {graph.input.name: zero}, transfer))


def model_error(graph: Graph, norms: dict[str, torch.Tensor], radius: torch.Tensor,
                logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    r"""Per sample [N], what the margins at the logits must be reduced by (divided by
    :math:`\sqrt2`, as the ``rounding`` of :meth:`SoundOutput.kappa`) for the model itself,
    run in its own arithmetic (:attr:`Graph.model_arithmetic`), to keep the class wherever
    the exact network does in the ball of ``radius`` [N] around ``x``
    (``docs/theory/numerics.md`` §4): the smaller of :func:`norm_model_error` and, where
    every node has a relaxation, :func:`elementwise_model_error`. Its value at a radius
    bounds it at every smaller one."""
    out = norm_model_error(graph, norms, radius, logits)
    fine = elementwise_model_error(graph, x, radius, logits.argmax(1))
    return out if fine is None else torch.minimum(out, fine)


def elementwise_model_error(graph: Graph, x: torch.Tensor, radius: torch.Tensor,
                            label: torch.Tensor) -> torch.Tensor | None:
    r""":func:`model_error` element-wise, or ``None`` where a node has no relaxation: the
    intervals of every node on the ball (each rule's ``interval``, widened by the model's
    rounding, :func:`~boundkit.bounds.relaxation.model_rounding`), then
    :math:`e_v\ge|\hat h_v-h_v|` forward: each rule's ``error_transfer`` of its inputs'
    :math:`e` (at most the width of the node's interval, which holds both values) plus its
    own rounding. At the logits the pair :math:`(y,j)` margin moves by at
    most :math:`e_y+e_j`; the final softmax's charge is added."""
    from boundkit.bounds.relaxation import Interval, RelaxContext, model_rounding, relaxation_rule

    x = x.to(device=graph.device, dtype=torch.float64)
    r = torch.nan_to_num(radius.to(x), nan=math.inf, posinf=math.inf)
    if not bool(torch.isfinite(r).any()):
        return None
    r = torch.where(torch.isfinite(r), r, torch.zeros_like(r))  # inf below, per sample
    rr = r.reshape(-1, *([1] * (x.dim() - 1)))
    lo, hi = x - rr, x + rr
    ctx = RelaxContext(graph, {})
    ctx.intervals[graph.input.name] = Interval(lo - UNIT_ROUNDOFF * lo.abs(),
                                               hi + UNIT_ROUNDOFF * hi.abs())
    errs = {graph.input.name: torch.zeros_like(x)}
    for node in graph.upstream():
        if node.op == "input":
            continue
        rule = relaxation_rule(node)
        if rule is None:
            return None
        first = _first_affine(graph, node, rule, x, r)
        if first is not None:  # reads the ball itself: in closed form
            ctx.intervals[node.name], errs[node.name] = first
            continue
        iv = rule.interval(node, ctx, [ctx.intervals[i] for i in node.inputs])
        rho = model_rounding(rule, node, ctx, iv)
        ctx.intervals[node.name] = iv.widen(rho)
        # g of the model's inputs and of the exact ones both lie in iv (the inputs' intervals
        # hold both): they differ by at most its width (0 past a ReLU that is off throughout)
        e = torch.minimum(rule.error_transfer(node, ctx, [errs[i] for i in node.inputs]),
                          (iv.hi - iv.lo) * (1 + 1e-9))
        errs[node.name] = e if rho is None else e + rho
    name = graph.logits.name
    e = errs[name].flatten(1)
    pair = (e.gather(1, label.unsqueeze(1)) + e).amax(1)  # e_y + e_j, the largest pair
    out = pair / math.sqrt(2.0) * (1 + 1e-9)
    iv = ctx.intervals[name]
    out = out + squash_charge(graph, iv.lo.flatten(1), iv.hi.flatten(1),
                              graph.model_arithmetic) / math.sqrt(2.0)
    out = torch.nan_to_num(out, nan=math.inf)
    return torch.where(torch.isfinite(radius.to(out)), out, torch.full_like(out, math.inf))


def _first_affine(graph: Graph, node: Node, rule: Any, x: torch.Tensor, r: torch.Tensor
                  ) -> tuple[Any, torch.Tensor] | None:
    r"""An affine node reading the input (through moves only) on the L2 ball of radii ``r``:
    its interval :math:`Lx+c\pm r\|L_j\|_2` and the model's rounding of it,
    :math:`\gamma'_{k+8}(|L||x|+r\|L_j\|_2+|c|)+(k+8)\eta'+\eta'|L|\mathbf 1` (Cauchy-Schwarz:
    :math:`|L||x'|\le|L||x|+r\|L_j\|_2`), both widened by the float64 rounding of their
    computation; ``None`` for any other node (or a rule without ``square_apply``)."""
    from boundkit.bounds.relaxation import EXTRA_OPS, AffineRelaxation, Interval
    from boundkit.graph.arithmetic import OVERFLOW_CHARGE

    if not isinstance(rule, AffineRelaxation) or len(node.inputs) != 1:
        return None
    src = graph[node.inputs[0]]
    while src.op in ("flatten", "reshape", "identity") and src.attrs.get("shift") is None \
            and len(src.inputs) == 1:
        src = graph[src.inputs[0]]
    if src.name != graph.input.name:
        return None
    z = x.reshape(x.shape[0], *node.in_shapes[0])
    ones = torch.ones_like(z)
    sq = [rule.square_apply(node, ones, sign) for sign in (1, -1)]
    if any(t is None for t in sq):
        return None
    k = rule.fan(node)
    grow = 1 + float(gamma(k + 4)) + 1e-15
    spread = torch.sqrt((sq[0] + sq[1]).clamp(min=0)) * grow  # ||L_j||_2
    c = rule.const(node)
    centre = rule.apply(node, z) + (c if c is not None else 0.0)
    own = rule.rounding_bound(node, z.abs()) * (1 + 1e-8) + 1e-15 * centre.abs() + 1e-300
    rb = r.reshape(-1, *([1] * (centre.dim() - 1)))
    mag = rule.abs_apply(node, z.abs()) + rb * spread
    cm = rule.const_mag(node)
    if cm is not None:
        mag = mag + cm
    ar = graph.model_arithmetic
    daz = ar.eta * rule.abs_apply(node, ones)  # inputs below the smallest normal read as 0
    rho = (ar.gamma(k + EXTRA_OPS) * mag + (k + EXTRA_OPS) * ar.eta + daz) * (1 + 1e-9)
    rho = torch.where(ar.overflows(mag), torch.full_like(rho, OVERFLOW_CHARGE), rho)
    half = rb * spread + own + rho
    return Interval(centre - half, centre + half), rho


def norm_model_error(graph: Graph, norms: dict[str, torch.Tensor], radius: torch.Tensor,
                     logits: torch.Tensor) -> torch.Tensor:
    r""":func:`model_error` in L2 norms (every model):

    1. the ball's spread :math:`\Delta_v\ge\|h_v(x')-h_v(x)\|` at every node: ``radius`` at
       the input, carried forward like an error (each rule's ``carry_error_at``: a Lipschitz
       constant, a product's :math:`\|y\|e_x+\|x\|e_y+e_xe_y`);
    2. the model's rounding :math:`E_v` at norms up to :math:`\|h_v(x)\|+\Delta_v`: each
       node's :meth:`~boundkit.bounds.registry.SoundRule.model_rounding` plus its inputs'
       errors carried through it;
    3. :math:`E_{\text{logits}}` plus the final softmax's charge
       (:func:`~boundkit.bounds.output.squash_charge`) over :math:`\sqrt2`.

    Its value at a radius bounds it at every smaller one (every step is monotone)."""
    arithmetic = graph.model_arithmetic
    zero = torch.zeros_like(radius)
    nodes = [n for n in graph.upstream() if n.op != "input"]

    def carried(n: Node, ins: list[torch.Tensor | None], at: dict[str, torch.Tensor]
                ) -> tuple[SoundRule, torch.Tensor]:
        rule = require_rule(n, "sound")
        assert isinstance(rule, SoundRule)
        given = [e for e in ins if e is not None]
        return rule, (rule.carry_error_at(n, graph, given, at) if given else zero.clone())

    def spread(n: Node, ins: list[torch.Tensor | None]) -> torch.Tensor:
        return carried(n, ins, norms)[1] * (1 + 1e-6)

    delta = walk.forward(nodes, {graph.input.name: radius}, spread)
    ball = {k: v + delta[k] if k in delta else v for k, v in norms.items()}

    def rounding(n: Node, ins: list[torch.Tensor | None]) -> torch.Tensor:
        rule, carry = carried(n, ins, ball)
        in_norm = rule.input_norm(n, graph, ball) if n.inputs else zero
        inj = rule.model_rounding(n, graph, in_norm, ball[n.name], arithmetic)
        return (carry + inj) * (1 + 1e-6)

    errs = walk.forward(nodes, {graph.input.name: zero}, rounding)
    e = errs.get(graph.logits.name, zero)
    reach = (delta.get(graph.logits.name, zero) + e).unsqueeze(1)
    charge = squash_charge(graph, logits - reach, logits + reach, arithmetic)
    return torch.nan_to_num(e + charge / math.sqrt(2.0), nan=math.inf) * (1 + 1e-9)


def stage_modulus(stage: Any, graph: Graph, acts: dict[str, torch.Tensor]) -> Modulus:
    if isinstance(stage, SmoothBlock):
        return stage.modulus(graph, acts)
    return stage.rule.modulus(stage.node, graph, acts)


def compose_moduli(
    graph: Graph, stages: list[Any], mods: dict[str, Modulus], source: str,
    acts: dict[str, torch.Tensor] | None = None,
) -> dict[str, Modulus]:
    """Forward walk: moduli from the output of ``source`` to every stage output, moving
    ``source`` alone (merges combine their inputs' moduli in their rule, products with the
    activations ``acts`` at x)."""

    def transfer(st: Any, ins: list[Modulus | None]) -> Modulus | None:
        if isinstance(st, NodeStage) and st.rule.merges:
            if all(p is None for p in ins):
                return None
            parts = [p if p is not None else Modulus.zero() for p in ins]
            return st.rule.combine_at(st.node, graph, parts, acts)
        if ins[0] is None:
            return None
        return mods[st.name].compose(ins[0])

    return walk.forward(stages, {source: Modulus.identity()}, transfer)


def _is_merge(st: Any) -> bool:
    return isinstance(st, NodeStage) and bool(st.rule.merges)


def sound_pass(
    graph: Graph, xb: torch.Tensor, plan: SoundPlan, want_trace: bool,
    extra_needs: set[str] | None = None,
) -> SoundPass:
    """One ``sound`` pass on a batch; ``extra_needs``: activations to keep for the caller."""
    out = plan.output
    stages = plan.stages
    needs: set[str] = set(extra_needs or ())
    for st in stages:
        needs |= st.needs(graph)
    peaks: dict[str, torch.Tensor] = {}
    acts, norms = graph.activations_and_norms(xb, needs | {out.start.name}, peaks=peaks)
    bsz = xb.shape[0]
    err = rounding_errors(graph, norms, bsz)
    unsafe = unsafe_range(graph, peaks)
    acts = Activations(acts, err.per_node)
    logits = acts[graph.logits.name]
    kappa, label, runner, margin = out.kappa(graph, logits, err[graph.logits.name])
    mods = {st.name: stage_modulus(st, graph, acts) for st in stages if not _is_merge(st)}
    source = graph.input.name
    omega = compose_moduli(graph, stages, mods, source, acts)
    target = out.start.name

    def invert(k: torch.Tensor) -> torch.Tensor:
        if target == source:
            return k
        if target in omega:
            return omega[target].inverse(k)
        return torch.full_like(k, math.inf)  # the logits do not depend on the input

    if target == source or target in omega:
        # the model's own rounding over the ball of the exact network's radius bounds it
        # over every smaller ball: the margins reduced by it give a radius below that one
        extra = model_error(graph, norms, invert(kappa), logits, xb)
        kappa, label, runner, margin = out.kappa(graph, logits,
                                                 err[graph.logits.name] + extra)
    radius = invert(kappa)
    trace: dict[str, torch.Tensor] = {}
    if want_trace:
        trace[source] = radius
        if graph.path_to_logits() is not None and not any(map(_is_merge, stages)):
            # backward: kappa at a stage's input = inverse of its modulus at its output's kappa
            k = kappa
            trace_rev = [(target, kappa)]
            for st in reversed(stages):
                k = mods[st.name].inverse(k)
                trace_rev.append((st.inputs[0], k))
            for name, val in reversed(trace_rev):
                if name != source:
                    trace[name] = val
        else:
            for st in stages:
                v = st.name
                om = compose_moduli(graph, stages, mods, v, acts)
                trace[v] = om[target].inverse(kappa) if target in om else kappa
            trace[target] = kappa
    result = BatchResult(radius, label, runner, margin, trace,
                         outputs=acts[graph.output], unsafe=unsafe)
    return SoundPass(result, acts, err, mods, norms)


class SoundMethod(Method):
    """Proven moduli of continuity composed over the graph (the default guarantee)."""

    name = "sound"
    is_guarantee = True
    description = "proven moduli of continuity composed over the graph"

    def prepare(self, graph: Graph) -> SoundPlan:
        return plan_sound(graph)

    def run(self, graph: Graph, x: torch.Tensor, plan: Any, *, trace: bool,
            **options: Any) -> BatchResult:
        return finalize_radius(sound_pass(graph, x, plan, trace).result)


def finalize_radius(res: BatchResult) -> BatchResult:
    """NaN radii (degenerate inputs) become 0, negative ones 0."""
    res.radius = torch.nan_to_num(res.radius, nan=0.0).clamp_min(0.0)
    return res


register_method(SoundMethod())
