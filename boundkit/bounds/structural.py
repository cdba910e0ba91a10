"""Structural nodes: flatten / reshape / identity / dropout, and the residual merges.

* Flatten and reshape permute nothing and drop nothing: :math:`\\|\\bar X\\|=\\|X\\|_F`
  (thesis Section 5.2.5, Lemma A.2(3)); both methods keep the bound. Dropout in eval mode
  is the identity. ``x + c`` with a constant is a shift, 1-Lipschitz.
* ``add`` and ``cat`` merge branches. The sound engine composes their inputs' moduli
  (sum for ``add``, :math:`\\sqrt{\\sum\\omega_i^2}` for ``cat``); the thesis has no rule for
  them, so peck2017 refuses graphs that contain them.
"""

from __future__ import annotations

import math

import torch

from boundkit.bounds.numerics import UNIT_ROUNDOFF, gamma, inflate
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


def merge_factors(node: Node) -> list[float]:
    r"""Per input of a merge, the factor its perturbation is multiplied by in the output.

    ``add`` computes :math:`\sum_i c_i\,B_i(x_i)+s` where :math:`B_i` broadcasts input
    :math:`i` to the output shape, repeating each entry :math:`r_i` times, so
    :math:`\|c_iB_i(q)\|_2=|c_i|\sqrt{r_i}\,\|q\|_2`; the triangle inequality sums the
    terms (an input that appears twice appears twice). ``cat`` keeps each input's entries
    once: the terms add in quadrature, with factor 1 each."""
    if node.op == "cat":
        return [1.0] * len(node.inputs)
    coeffs = node.attrs.get("coeffs", (1.0,) * len(node.inputs))
    repeat = node.attrs.get("repeat", (1,) * len(node.inputs))
    return [float(inflate(abs(c) * math.sqrt(r))) for c, r in zip(coeffs, repeat)]


class MergeRule(LipschitzRule):
    """``add`` / ``cat``: the engine combines the input moduli with :func:`merge_factors`
    (``add``: weighted sum; ``cat``: quadrature); the Lipschitz constant is the largest
    factor."""

    def compute_lipschitz(self, node: Node, graph: Graph) -> float:
        return max(merge_factors(node))

    def rounding(
        self, node: Node, graph: Graph, in_norm: torch.Tensor, out_norm: torch.Tensor
    ) -> torch.Tensor:
        r"""For a merge, ``in_norm`` is :math:`\sum_i|c_i|\sqrt{r_i}\|x_i\|+\|s\|` (the
        engine passes it): ``add`` of :math:`k` scaled terms and a shift errs by at most
        :math:`\gamma_{k+1}` times the sum of the terms' magnitudes (Higham 2002, eq. 4.4);
        ``cat`` copies."""
        if node.op == "cat":
            return torch.zeros_like(out_norm)
        return gamma(len(node.inputs) + 2) * in_norm


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
