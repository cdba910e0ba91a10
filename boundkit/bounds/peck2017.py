"""``peck2017``: the thesis's backward pass (Algorithm 5.1) with its formulas as published.

A backward chain of :class:`~boundkit.bounds.registry.BackwardRule` (output: Lemma 3.5;
fully-connected block: Theorem 4.2; convolution 5.1; pooling 5.3; batch norm 5.6; LRN 5.9;
flatten 5.2.5). Several do not hold (``docs/theory/peck2017.md``): these numbers are *not*
certificates.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from boundkit.bounds import walk
from boundkit.bounds.method import BatchResult, Method, register_method
from boundkit.bounds.mlp import FC_ACTIVATIONS, PeckBlock, find_blocks
from boundkit.bounds.output import PeckOutput
from boundkit.bounds.registry import require_rule
from boundkit.bounds.sound import NodeStage
from boundkit.errors import UnsupportedLayerError
from boundkit.graph.graph import Graph


@dataclass
class PeckPlan:
    output: PeckOutput
    stages: list[Any]


class Peck2017Method(Method):
    """The thesis's formulas as published (not a guarantee)."""

    name = "peck2017"
    is_guarantee = False
    description = "Peck (2017) formulas as published (not a guarantee)"

    def prepare(self, graph: Graph) -> PeckPlan:
        chain = graph.path_to_logits()
        if chain is None:
            merge = next((n for n in graph.upstream() if len(n.inputs) > 1), graph.logits)
            raise UnsupportedLayerError(
                merge.name, merge.op, "peck2017",
                "the thesis's backward pass (Algorithm 5.1) handles chains only; "
                "use method='sound' for residual or concatenating graphs",
            )
        out = PeckOutput(graph)
        body = chain[1:-1]  # without input and the output linear
        stages: list[Any] = []
        blocks = find_blocks(body, FC_ACTIVATIONS)
        tail_block = blocks[-1] if blocks and blocks[-1][-1] is body[-1] else None
        rest = body[: len(body) - len(tail_block)] if tail_block else body
        for n in rest:
            stages.append(NodeStage(n, require_rule(n, "peck2017")))
        if tail_block:
            stages.append(PeckBlock(tail_block))
        return PeckPlan(out, stages)

    def run(self, graph: Graph, x: torch.Tensor, plan: Any, *, trace: bool,
            **options: Any) -> BatchResult:
        needs: set[str] = set()
        for st in plan.stages:
            needs |= st.needs(graph)
        acts = graph.activations(x, needs)
        kappa, label, runner, margin = plan.output.kappa(graph, acts[graph.logits.name])

        def transfer(st: Any, k: torch.Tensor) -> list[torch.Tensor]:
            if isinstance(st, PeckBlock):
                return [st.backward(graph, k, acts)]
            return [st.rule.backward(st.node, graph, k, acts)]

        start = plan.output.start.name
        kappas = walk.backward(plan.stages, {start: kappa}, transfer)
        source = plan.stages[0].inputs[0] if plan.stages else start
        return BatchResult(kappas[source], label, runner, margin, kappas if trace else {},
                           outputs=acts[graph.output])


register_method(Peck2017Method())
