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
from boundkit.bounds.numerics import underflow_error, unsafe_range
from boundkit.bounds.output import SoundOutput
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
    if target == source:
        radius = kappa
    elif target in omega:
        radius = omega[target].inverse(kappa)
    else:  # the logits do not depend on the input
        radius = torch.full_like(kappa, math.inf)
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
    return SoundPass(result, acts, err, mods)


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
