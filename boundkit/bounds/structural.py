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

from boundkit.bounds.modulus import Modulus
from boundkit.bounds.numerics import UNIT_ROUNDOFF, gamma
from boundkit.bounds.registry import BackwardRule, LipschitzRule, register_rule
from boundkit.bounds.relaxation import (
    Interval,
    LinearBounds,
    RelaxationRule,
    RelaxContext,
    dot,
)
from boundkit.graph.graph import Graph, Node
from boundkit.graph.ops import broadcast_constant


class IdentityRule(LipschitzRule):
    """Reshape, flatten, identity: an isometry (or, for a constant shift, 1-Lipschitz)."""

    def compute_lipschitz(self, node: Node, graph: Graph) -> float:
        return 1.0

    def rounding(
        self, node: Node, graph: Graph, in_norm: torch.Tensor, out_norm: torch.Tensor
    ) -> torch.Tensor:
        if node.attrs.get("shift") is not None:
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
    factors = [abs(float(c)) * math.sqrt(r) for c, r in zip(coeffs, repeat)]
    # |c| sqrt(r) is one rounded product and square root: 4 ulps up covers it (1 is exact)
    return [f if f == 1.0 else f * (1.0 + 4 * UNIT_ROUNDOFF) for f in factors]


class MergeRule(LipschitzRule):
    """``add`` / ``cat``: combines the moduli and rounding errors of its inputs with
    :func:`merge_factors` (``add``: weighted sum; ``cat``: quadrature); its Lipschitz
    constant in each input is the largest factor."""

    def compute_lipschitz(self, node: Node, graph: Graph) -> float:
        return max(merge_factors(node))

    merges = True

    def input_norm(self, node: Node, graph: Graph, norms: dict[str, torch.Tensor]) -> torch.Tensor:
        r""":math:`\sum_i|c_i|\sqrt{r_i}\|x_i\|+\|s\|`, the magnitude of the summed terms."""
        total = sum(f * norms[i] for f, i in zip(merge_factors(node), node.inputs))
        shift = node.attrs.get("shift")
        if shift is not None:
            total = total + float(broadcast_constant(shift, node.out_shape).norm())
        return total

    def rounding(
        self, node: Node, graph: Graph, in_norm: torch.Tensor, out_norm: torch.Tensor
    ) -> torch.Tensor:
        r"""``add`` of :math:`k` scaled terms and a shift errs by at most
        :math:`\gamma_{k+2}` times the sum of the terms' magnitudes (``in_norm``, Higham
        2002, eq. 4.4); ``cat`` copies."""
        if node.op == "cat":
            return torch.zeros_like(out_norm)
        return gamma(len(node.inputs) + 2) * in_norm

    def carry_error(self, node: Node, graph: Graph, ins: list[torch.Tensor]) -> torch.Tensor:
        """``cat``: errors add in quadrature; ``add``: weighted by :func:`merge_factors`."""
        if node.op == "cat":
            return torch.sqrt(sum(e * e for e in ins))  # type: ignore[return-value]
        return sum(f * e for f, e in zip(merge_factors(node), ins))  # type: ignore[return-value]

    def combine(self, node: Node, graph: Graph, parts: list[Modulus]) -> Modulus:
        """``add``: moduli add, scaled by :func:`merge_factors`; ``cat``: in quadrature
        (``docs/theory/engine.md``)."""
        if node.op == "cat":
            return Modulus.euclid(parts)
        scaled = [p.scale(f) for p, f in zip(parts, merge_factors(node))]
        total = scaled[0]
        for p in scaled[1:]:
            total = total + p
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
    coefficients are reshaped back (exact); a constant shift :math:`h=x+s` adds
    :math:`\\langle A,s\rangle` to the bias (its rounding charged)."""

    def supports(self, node: Node) -> bool:
        return len(node.inputs) == 1

    def evaluation_error(self, node: Node, ctx: RelaxContext, out: Interval
                         ) -> torch.Tensor | None:
        r"""Exact moves; a constant shift :math:`c`, held by the model in its own dtype (off
        by :math:`u|c|`) and added once: :math:`2u(|y|+|c|)+\eta`
        (``docs/theory/numerics.md`` §4)."""
        shift = node.attrs.get("shift")
        if shift is None:
            return None
        ar = ctx.model_arith
        c = broadcast_constant(shift.to(out.lo), node.out_shape).abs()
        return 2 * ar.unit * (out.mag + c) + ar.eta

    def error_transfer(self, node: Node, ctx: RelaxContext, errs: list[torch.Tensor]
                       ) -> torch.Tensor:
        """A move moves the bounds with the entries (a constant shift moves nothing)."""
        return errs[0].reshape(errs[0].shape[0], *node.out_shape)

    def interval(self, node: Node, ctx: RelaxContext, ins: list[Interval]) -> Interval:
        n = ins[0].lo.shape[0]
        lo = ins[0].lo.reshape(n, *node.out_shape)
        hi = ins[0].hi.reshape(n, *node.out_shape)
        shift = node.attrs.get("shift")
        if shift is None:
            return Interval(lo, hi)
        s = broadcast_constant(shift.to(lo), node.out_shape)
        lo, hi = lo + s, hi + s
        e = UNIT_ROUNDOFF * torch.maximum(lo.abs(), hi.abs())
        return Interval(lo - e, hi + e)

    def backward(self, node: Node, ctx: RelaxContext, lb: LinearBounds) -> list[LinearBounds]:
        n, s = lb.A.shape[:2]
        a_in = lb.A.reshape(n, s, *node.in_shapes[0])
        shift = node.attrs.get("shift")
        if shift is None:
            return [lb.then(a_in, 0.0, 0.0, ctx.intervals[node.name].mag)]
        sh = broadcast_constant(shift.to(lb.A), node.out_shape).expand(n, *node.out_shape)
        bias = dot(lb.A, sh)
        err = float(gamma(node.out_numel + 1)) * dot(lb.A.abs(), sh.abs())
        return [lb.then(a_in, bias, err, ctx.intervals[node.name].mag)]


class MergeRelaxation(RelaxationRule):
    r"""``crown``: ``add`` (:math:`h=\sum_ic_iB_i(x_i)+s`, :math:`B_i` broadcasting input
    :math:`i` to the output) passes :math:`c_iB_i^\top A` to input :math:`i` (the
    coefficients of the broadcast copies summed) and :math:`\langle A,s\rangle` to the bias;
    ``cat`` splits :math:`A` along the concatenated axis. The backward walk sums the
    contributions where the branches fork (an input used twice receives both)."""

    def _dim(self, node: Node) -> int:
        d = int(node.attrs.get("dim", 0))
        return d - 1 if d > 0 else d + len(node.out_shape)  # without the batch axis

    @staticmethod
    def _terms(node: Node) -> list[tuple[float, tuple[int, ...]]]:
        coeffs = node.attrs.get("coeffs", (1.0,) * len(node.inputs))
        return [(float(c), tuple(s)) for c, s in zip(coeffs, node.in_shapes)]

    @staticmethod
    def _expand(v: torch.Tensor, shape: tuple[int, ...], out: tuple[int, ...]) -> torch.Tensor:
        """``v`` [N, *shape] broadcast to [N, *out] (torch's rules, batch axis kept)."""
        pad = (1,) * (len(out) - len(shape))
        return v.reshape(v.shape[0], *pad, *shape).expand(v.shape[0], *out)

    @staticmethod
    def _reduce(a: torch.Tensor, shape: tuple[int, ...], out: tuple[int, ...]) -> torch.Tensor:
        """Sum the coefficients ``a`` [N, S, *out] of the broadcast copies: [N, S, *shape]."""
        pad = (1,) * (len(out) - len(shape))
        full = (*pad, *shape)
        dims = [2 + k for k, (f, o) in enumerate(zip(full, out)) if f == 1 and o != 1]
        if dims:
            a = a.sum(dim=dims, keepdim=True)
        return a.reshape(*a.shape[:2], *shape)

    def evaluation_error(self, node: Node, ctx: RelaxContext, out: Interval
                         ) -> torch.Tensor | None:
        r"""``cat`` is exact; ``add`` sums :math:`n` scaled terms and the shift in some order:
        :math:`\gamma_{2n+2}(\sum_i|c_i|B_i(|\hat z_i|)+|s|)+(2n+2)\eta`
        (``docs/theory/numerics.md`` §4)."""
        if node.op == "cat":
            return None
        ar = ctx.model_arith
        out_shape = tuple(node.out_shape)
        mag: torch.Tensor | float = 0.0
        for (c, shape), name in zip(self._terms(node), node.inputs):
            mag = mag + abs(c) * self._expand(ctx.intervals[name].mag, shape, out_shape)
        shift = node.attrs.get("shift")
        if shift is not None:
            mag = mag + broadcast_constant(shift.to(out.lo), node.out_shape).abs()
        k = 2 * len(node.inputs) + 2
        return ar.gamma(k) * mag + k * ar.eta

    def error_transfer(self, node: Node, ctx: RelaxContext, errs: list[torch.Tensor]
                       ) -> torch.Tensor:
        """``cat``: the inputs' bounds side by side; ``add``: :math:`\\sum_i|c_i|B_i(e_i)`."""
        if node.op == "cat":
            return torch.cat(errs, self._dim(node) + 1)
        out = tuple(node.out_shape)
        total: torch.Tensor | float = 0.0
        for (c, shape), e in zip(self._terms(node), errs):
            total = total + abs(c) * self._expand(e, shape, out)
        assert isinstance(total, torch.Tensor)
        return total * (1 + 1e-9)

    def interval(self, node: Node, ctx: RelaxContext, ins: list[Interval]) -> Interval:
        if node.op == "cat":
            d = self._dim(node) + 1
            return Interval(torch.cat([i.lo for i in ins], d), torch.cat([i.hi for i in ins], d))
        out = tuple(node.out_shape)
        lo = hi = mag = 0.0
        for (c, shape), iv in zip(self._terms(node), ins):
            a, b = self._expand(iv.lo, shape, out), self._expand(iv.hi, shape, out)
            lo = lo + (c * a if c >= 0 else c * b)
            hi = hi + (c * b if c >= 0 else c * a)
            mag = mag + abs(c) * torch.maximum(a.abs(), b.abs())
        shift = node.attrs.get("shift")
        if shift is not None:
            s = broadcast_constant(shift.to(lo), out)
            lo, hi, mag = lo + s, hi + s, mag + s.abs()
        e = float(gamma(len(node.inputs) + 2)) * mag
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
        out = tuple(node.out_shape)
        shift = node.attrs.get("shift")
        bias: torch.Tensor | float = 0.0
        err = zero
        if shift is not None:
            s = broadcast_constant(shift.to(lb.A), out)
            bias = dot(lb.A, s.expand(lb.A.shape[0], *out))
            # <A, s> summed over numel(out) terms: gamma_numel <|A|, |s|>
            err = err + float(gamma(math.prod(out) + 1)) * dot(
                lb.A.abs(), s.abs().expand(lb.A.shape[0], *out))
        coeffs: list[torch.Tensor] = []
        for k, (c, shape) in enumerate(self._terms(node)):
            reduced = self._reduce(lb.A, shape, out)
            a_k = reduced if c == 1.0 else reduced * c
            reps = max(math.prod(out) // max(math.prod(shape), 1), 1)
            if c != 1.0 or reps > 1:
                # summing reps copies and scaling by c: gamma_{reps+1} |c| <B^T|A|, |x_k|>
                mag_k = self._reduce(lb.A.abs(), shape, out)
                err = err + float(gamma(reps + 1)) * abs(c) * dot(
                    mag_k, ctx.interval_in(node, k).mag)
            coeffs.append(a_k)
        first = lb.then(coeffs[0], bias, err, mag_out)
        return [first] + [LinearBounds(a, zero, zero) for a in coeffs[1:]]


for _op in ("flatten", "reshape", "identity"):
    register_rule(_op, "crown", ReshapeRelaxation())
for _op in ("add", "cat"):
    register_rule(_op, "crown", MergeRelaxation())
