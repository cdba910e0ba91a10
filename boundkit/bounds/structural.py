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
from boundkit.bounds.relaxation import (
    Interval,
    LinearBounds,
    RelaxationRule,
    RelaxContext,
    _dot,
)
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


# ------------------------------------------------------------------ linear relaxations
class ReshapeRelaxation(RelaxationRule):
    """``crown``: flatten / reshape / identity move entries without arithmetic: the
    coefficients are reshaped back (exact)."""

    def supports(self, node: Node) -> bool:
        return not node.attrs.get("shift") and len(node.inputs) == 1

    def interval(self, node: Node, ctx: RelaxContext, ins: list[Interval]) -> Interval:
        n = ins[0].lo.shape[0]
        return Interval(ins[0].lo.reshape(n, *node.out_shape),
                        ins[0].hi.reshape(n, *node.out_shape))

    def backward(self, node: Node, ctx: RelaxContext, lb: LinearBounds) -> list[LinearBounds]:
        n, s = lb.A.shape[:2]
        a_in = lb.A.reshape(n, s, *node.in_shapes[0])
        return [lb.then(a_in, 0.0, 0.0, ctx.intervals[node.name].mag)]


class MergeRelaxation(RelaxationRule):
    r"""``crown``: ``add`` (:math:`h=a+\alpha b`) passes :math:`A` and :math:`\alpha A` to its
    inputs; ``cat`` splits :math:`A` along the concatenated axis. The backward walk sums
    the contributions where the branches fork."""

    def supports(self, node: Node) -> bool:
        return len(node.inputs) == 2 if node.op == "add" else len(node.inputs) >= 1

    def _dim(self, node: Node) -> int:
        d = int(node.attrs.get("dim", 0))
        return d - 1 if d > 0 else d + len(node.out_shape)  # without the batch axis

    def interval(self, node: Node, ctx: RelaxContext, ins: list[Interval]) -> Interval:
        if node.op == "cat":
            d = self._dim(node) + 1
            return Interval(torch.cat([i.lo for i in ins], d), torch.cat([i.hi for i in ins], d))
        alpha = float(node.attrs.get("alpha", 1.0))
        a, b = ins
        lo = a.lo + (alpha * b.lo if alpha >= 0 else alpha * b.hi)
        hi = a.hi + (alpha * b.hi if alpha >= 0 else alpha * b.lo)
        e = 4 * UNIT_ROUNDOFF * (a.mag + abs(alpha) * b.mag)
        return Interval(lo - e, hi + e)

    def backward(self, node: Node, ctx: RelaxContext, lb: LinearBounds) -> list[LinearBounds]:
        mag_out = ctx.intervals[node.name].mag
        zero = torch.zeros_like(lb.err)
        if node.op == "cat":
            d = self._dim(node) + 2
            sizes = [s[d - 2] for s in node.in_shapes]
            parts = torch.split(lb.A, sizes, dim=d)
            first = lb.then(parts[0].contiguous(), 0.0, 0.0, mag_out)
            return [first] + [LinearBounds(p.contiguous(), zero, zero) for p in parts[1:]]
        alpha = float(node.attrs.get("alpha", 1.0))
        first = lb.then(lb.A, 0.0, 0.0, mag_out)
        scaled = lb.A * alpha
        err = zero if alpha == 1.0 else UNIT_ROUNDOFF * _dot(
            scaled.abs(), ctx.interval_in(node, 1).mag)
        return [first, LinearBounds(scaled, zero, err)]


for _op in ("flatten", "reshape", "identity"):
    register_rule(_op, "crown", ReshapeRelaxation())
for _op in ("add", "cat"):
    register_rule(_op, "crown", MergeRelaxation())
