"""Structural nodes: flatten / reshape / identity / dropout, and the residual merges.

* Flatten and reshape permute nothing and drop nothing: :math:`\\|\\bar X\\|=\\|X\\|_F`
  (thesis Section 5.2.5, Lemma A.2(3)); both methods keep the bound. Dropout in eval mode
  is the identity. ``x + c`` with a constant is a shift, 1-Lipschitz.
* ``add`` and ``cat`` merge branches. The sound engine composes their inputs' moduli
  (sum for ``add``, :math:`\\sqrt{\\sum\\omega_i^2}` for ``cat``); the thesis has no rule for
  them, so peck2017 refuses graphs that contain them.
"""

from __future__ import annotations

import torch

from boundkit.bounds.modulus import Modulus
from boundkit.bounds.numerics import UNIT_ROUNDOFF
from boundkit.bounds.registry import BackwardRule, LipschitzRule, register_rule
from boundkit.graph.graph import Graph, Node


class IdentityRule(LipschitzRule):
    """Reshape, flatten, identity: an isometry (or, for a constant shift, 1-Lipschitz)."""

    def compute_lipschitz(self, node: Node, graph: Graph) -> float:
        return 1.0

    def rounding(
        self, node: Node, graph: Graph, in_norm: torch.Tensor, out_norm: torch.Tensor
    ) -> torch.Tensor:
        if node.attrs.get("shift"):
            return UNIT_ROUNDOFF * out_norm  # one rounded addition per element
        return torch.zeros_like(out_norm)


class MergeRule(LipschitzRule):
    """``add`` / ``cat``: Lipschitz 1 in each input (``|alpha|`` for the scaled summand);
    combines the moduli and rounding errors of its inputs."""

    def compute_lipschitz(self, node: Node, graph: Graph) -> float:
        return float(abs(node.attrs.get("alpha", 1.0))) if node.op == "add" else 1.0

    merges = True

    def rounding(
        self, node: Node, graph: Graph, in_norm: torch.Tensor, out_norm: torch.Tensor
    ) -> torch.Tensor:
        if node.op == "cat":
            return torch.zeros_like(out_norm)
        return 2 * UNIT_ROUNDOFF * out_norm

    def carry_error(self, node: Node, graph: Graph, ins: list[torch.Tensor]) -> torch.Tensor:
        """``cat``: errors add in quadrature; ``add`` (``a + alpha b``): ``e_a + |alpha| e_b``."""
        if node.op == "cat":
            return torch.sqrt(sum(e * e for e in ins))  # type: ignore[return-value]
        lip = self.lipschitz(node, graph)
        return ins[0] + (lip * ins[1] if len(ins) > 1 else 0.0)

    def combine(self, node: Node, graph: Graph, parts: list[Modulus]) -> Modulus:
        """``add``: moduli add (the second scaled by ``|alpha|``); ``cat``: in quadrature
        (``docs/theory/engine.md``)."""
        if node.op == "cat":
            return Modulus.euclid(parts)
        alpha = abs(float(node.attrs.get("alpha", 1.0)))
        total = parts[0]
        for p in parts[1:]:
            total = total + p.scale(alpha)
        return total


class IdentityBackward(BackwardRule):
    """peck2017: flattening keeps the bound (thesis Section 5.2.5)."""

    def backward(
        self, node: Node, graph: Graph, kappa: torch.Tensor, acts: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        return kappa


for _op in ("flatten", "reshape", "identity"):
    register_rule(_op, "sound", IdentityRule())
    register_rule(_op, "peck2017", IdentityBackward())
for _op in ("add", "cat"):
    register_rule(_op, "sound", MergeRule())
