"""The per-model plan of ``crown``: each node's relaxation rule and which nodes' bounds a
backward walk refines, decided once per captured graph."""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from boundkit.bounds.relaxation import RelaxationRule, relaxation_rule
from boundkit.bounds.sound import SoundPlan, plan_sound
from boundkit.graph.graph import Graph, Node

if TYPE_CHECKING:
    from boundkit.bounds.crown.patches import PatchHead

#: the most elements (per tensor) a refinement's backward walk holds: 2^19 float64, 4 MiB
#: (larger tensors are mmapped fresh on every allocation: page faults cost more than the sums)
CHUNK_ELEMENTS = 1 << 19


class Refine(enum.Enum):
    """Which neurons of a node a refinement walk bounds
    (docs/theory/linear_relaxation.md §Refined neurons)."""

    #: those that can change sign (the input of a ReLU)
    UNSTABLE = "unstable"
    #: those that can reach a max pooling window's maximum through the ReLU reading them
    LIVE = "live"
    #: those that can reach the maximum of the max pooling reading the node itself
    POOL = "pool"
    #: every neuron (a smooth activation's input, or two consumers asking differently)
    ALL = "all"

    def merge(self, other: Refine | None) -> Refine:
        """The refinement two consumers ask for: the same mode, else every neuron."""
        return self if other is None or other is self else Refine.ALL


#: activations whose every output depends on several inputs (a group): the image of their
#: input box is not what a backward walk gives for their outputs (the box forgets how the
#: group's inputs move together), so a product reading one refines it too
COUPLED_ACTIVATIONS = ("softmax", "layernorm")

#: a window chain's cache key: (refined node, tile side, window gain)
WindowKey = tuple[str, int, float]
#: a unit table's cache key: (node, out shape, in shape, padding)
UnitKey = tuple[str, tuple[int, ...], tuple[int, ...], str]


@dataclass
class CrownPlan:
    """Per-model plan: the nodes up to the logits, their rules (``None``: bounded through
    the ``sound`` modulus) and the nodes whose bounds a backward walk refines, with the
    caches the accelerations fill when first asked (window chains, unit tables)."""

    sound: SoundPlan
    nodes: list[Node]
    rules: dict[str, RelaxationRule | None]
    refine: dict[str, Refine]
    #: the chain a refined node's walks follow on windows, or None (``windows.py``)
    windows: dict[WindowKey, list[Node] | None] = dataclasses.field(default_factory=dict)
    #: a node's unit transposes, or None (``units.py``; window copies have their own)
    units: dict[UnitKey, torch.Tensor | None] = dataclasses.field(default_factory=dict)
    #: the patch embedding the input is read through, or None, by device (``patches.py``)
    patch_heads: dict[str, PatchHead | None] = dataclasses.field(default_factory=dict)


def plan_crown(graph: Graph) -> CrownPlan:
    """The plan of ``graph``: raises ``UnsupportedLayerError`` exactly where ``sound`` does."""
    sp = plan_sound(graph)
    nodes = graph.upstream()
    rules = {n.name: relaxation_rule(n) for n in nodes if n.op != "input"}
    refine: dict[str, Refine] = {}
    for n in nodes:
        r = rules.get(n.name)
        if r is None or not r.nonlinear:
            continue
        if len(n.inputs) > 1:  # a product: both operands, unless an element-wise activation's
            # output (its image of a refined input interval is what a walk would give, or
            # better); a coupled one's (softmax) is refined
            for src in n.inputs:
                prod = rules.get(src)
                if graph[src].op == "input" or (
                        prod is not None and prod.nonlinear and len(graph[src].inputs) == 1
                        and graph[src].op not in COUPLED_ACTIVATIONS):
                    continue
                refine[src] = Refine.ALL.merge(refine.get(src))
            continue
        src = n.inputs[0]
        if graph[src].op == "input":
            continue
        if n.op == "maxpool2d":
            # a max pooling reading a ReLU: that ReLU's input is refined (below); reading
            # anything else (a convolution, as in LeNet-5): its live inputs are refined
            if graph[src].op in ("relu", "leaky_relu"):
                continue
            mode = Refine.POOL if graph.consumers(src) == [n.name] else Refine.ALL
            refine[src] = mode.merge(refine.get(src))
            continue
        # a ReLU's stable neurons need no better bounds, unless a max pooling reads its
        # output (its relaxation uses the bounds of every input); when max poolings are all
        # that read it, only the neurons that can reach a window's maximum ("live")
        outs = graph.consumers(n.name)
        pools = [c for c in outs if graph[c].op == "maxpool2d"]
        if n.op not in ("relu", "leaky_relu"):
            mode = Refine.ALL
        elif not pools:
            mode = Refine.UNSTABLE
        elif (n.op == "relu" and len(pools) == len(outs) == 1
              and graph.consumers(src) == [n.name]):
            mode = Refine.LIVE
        else:
            mode = Refine.ALL
        refine[src] = mode.merge(refine.get(src))
    return CrownPlan(sp, nodes, rules, refine)
