r"""Exact linear views: a concatenation with constants (``cat_constant``, the class token
``torch.cat([cls.expand(N, -1, -1), x], 1)``) and basic indexing (``select``, ``z[:, 0]``).

Both are affine maps :math:`h=Px+c` whose linear part :math:`P` copies each input entry to at
most one output entry and each output entry from at most one input entry (a partial
permutation): ``cat_constant`` places :math:`x` in a slot of the constant :math:`c` (zero in
the slot), ``select`` keeps a subset of the entries (:math:`c=0`).

**Sound** (``docs/theory/slicing.md``): :math:`\|P\|_2=1` when some entry is copied (and
:math:`\|h(x)-h(y)\|=\|P(x-y)\|\le\|x-y\|`), with no rounding: every output is an input entry
or an entry of :math:`c`, copied.

**crown**: :math:`\langle A,h\rangle=\langle P^\top A,x\rangle+\langle A,c\rangle`;
:math:`P^\top A` is the slot of :math:`A` (``narrow``) or :math:`A` scattered back into zeros
(``select``); :math:`|P|=P`, each output has fan-in 1.
"""

from __future__ import annotations

import torch

from boundkit.bounds.registry import LipschitzRule, register_rule
from boundkit.bounds.relaxation import AffineRelaxation
from boundkit.graph.graph import Graph, Node
from boundkit.graph.ops import place


class CopyRule(LipschitzRule):
    """Sound: a partial permutation plus a constant is 1-Lipschitz and exact in floating
    point."""

    def compute_lipschitz(self, node: Node, graph: Graph) -> float:
        return 1.0

    def rounding(
        self, node: Node, graph: Graph, in_norm: torch.Tensor, out_norm: torch.Tensor
    ) -> torch.Tensor:
        return torch.zeros_like(out_norm)  # copies: no arithmetic


class ConstantCatRelaxation(AffineRelaxation):
    """``crown`` for ``cat_constant``: :math:`P` places the input in its slot,
    :math:`P^\\top` takes the slot back, :math:`c` the constant parts."""

    #: computed exactly by the model: a concatenation with constants copies entries (numerics §4)
    exact_arithmetic = True

    def apply(self, node: Node, z: torch.Tensor) -> torch.Tensor:
        return place(node, z, None)

    def transpose(self, node: Node, a: torch.Tensor) -> torch.Tensor:
        return a.narrow(node.attrs["dim"], node.attrs["start"], node.attrs["length"])

    def abs_apply(self, node: Node, m: torch.Tensor) -> torch.Tensor:
        return self.apply(node, m)

    def const(self, node: Node) -> torch.Tensor | None:
        return node.params["const"]

    def fan(self, node: Node) -> int:
        return 1


class SelectRelaxation(AffineRelaxation):
    """``crown`` for ``select``: :math:`P` keeps the indexed entries, :math:`P^\\top`
    scatters :math:`A` back into zeros (basic indexing never repeats an entry)."""

    #: computed exactly by the model: a selection copies entries without arithmetic (numerics §4)
    exact_arithmetic = True

    def apply(self, node: Node, z: torch.Tensor) -> torch.Tensor:
        return z[(slice(None), *node.attrs["index"])]

    def transpose(self, node: Node, a: torch.Tensor) -> torch.Tensor:
        out = torch.zeros((a.shape[0], *node.in_shapes[0]), dtype=a.dtype, device=a.device)
        out[(slice(None), *node.attrs["index"])] = a
        return out

    def abs_apply(self, node: Node, m: torch.Tensor) -> torch.Tensor:
        return self.apply(node, m)

    def fan(self, node: Node) -> int:
        return 1


for _op in ("cat_constant", "select"):
    register_rule(_op, "sound", CopyRule())
register_rule("cat_constant", "crown", ConstantCatRelaxation())
register_rule("select", "crown", SelectRelaxation())
