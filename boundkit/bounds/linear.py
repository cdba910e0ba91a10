r"""Fully-connected (``nn.Linear``) layers on their own.

Sound rule: :math:`\|W(z+q)+b-(Wz+b)\|=\|Wq\|\le\|W\|_2\|q\|`, with :math:`\|W\|_2` the exact
largest singular value (float64 SVD, inflated by :data:`~boundkit.bounds.numerics.CONSTANT_RTOL`),
computed once per model (on tokens ``[T, D]`` the map is :math:`I_T\otimes W`, the same
norm). Rounding at x: :math:`\gamma_{k+1}(\||W|\|_2\|z\|+\sqrt T\|b\|)`.

Inside a run of linear layers and smooth activations the sound method uses the quadratic
block bound instead (:mod:`boundkit.bounds.mlp`), and for the last affine layers before the
logits the per-class-pair margin bound (:mod:`boundkit.bounds.output`). peck2017 handles
linear layers only inside those two thesis constructions (Theorems 3.6 and 4.2).
"""

from __future__ import annotations

import math

import torch

from boundkit.bounds.numerics import gamma, inflate
from boundkit.bounds.registry import LipschitzRule, register_rule
from boundkit.bounds.relaxation import EXTRA_OPS, AffineRelaxation
from boundkit.graph.arithmetic import OVERFLOW_CHARGE, Arithmetic
from boundkit.graph.graph import Graph, Node


def spectral_norm(w: torch.Tensor) -> float:
    """Largest singular value of a matrix, float64, inflated to an upper bound.

    Computed as the square root of the largest eigenvalue of the smaller Gram matrix
    (symmetric eigensolver, backward stable); the Gram product adds at most
    ``gamma(k) ||W||^2`` relative error (Higham 2002, Sec. 3.5), covered by the inflation
    plus an explicit ``gamma(k)`` term."""
    w = w.to(torch.float64)
    if w.numel() == 0:
        return 0.0
    top = float(w.abs().max())
    if top == 0.0:
        return 0.0
    # scale by a power of two (exact) so that the Gram matrix neither overflows nor underflows
    scale = 2.0 ** math.ceil(math.log2(top))
    ws = w / scale
    gram = ws @ ws.T if ws.shape[0] <= ws.shape[1] else ws.T @ ws
    try:
        lam = float(torch.linalg.eigvalsh(gram)[-1].clamp_min(0.0))
    except torch.linalg.LinAlgError:  # no convergence: the Frobenius norm bounds it above
        lam = float(gram.diagonal().sum())
    k = max(w.shape)
    return float(inflate(math.sqrt(lam * (1.0 + float(gamma(k)) * 2.0)) * scale))


def schur_bound(w: torch.Tensor) -> float:
    r"""Schur test: :math:`\||W|\|_2\le\sqrt{\|W\|_1\|W\|_\infty}` (cheap, used only to
    size rounding margins)."""
    a = w.abs().to(torch.float64)
    return float(inflate(math.sqrt(float(a.sum(0).max()) * float(a.sum(1).max()))))


class LinearRule(LipschitzRule):
    """Lipschitz constant :math:`\\|W\\|_2` (exact spectral norm)."""

    def compute_lipschitz(self, node: Node, graph: Graph) -> float:
        return spectral_norm(node.params["weight"])

    def rounding(
        self, node: Node, graph: Graph, in_norm: torch.Tensor, out_norm: torch.Tensor
    ) -> torch.Tensor:
        key = ("abs_norms", node.name)
        if key not in graph.cache:
            w = node.params["weight"]
            b = node.params.get("bias")
            # on tokens [T, D] the bias is added to every token: sqrt(T) ||b|| in L2
            tokens = node.out_numel // max(int(w.shape[0]), 1)
            graph.cache[key] = (
                schur_bound(w),
                0.0 if b is None else float(b.norm()) * (
                    math.sqrt(tokens) * (1 + 1e-15) if tokens > 1 else 1.0),
                float(gamma(w.shape[1] + 1)),
            )
        absw, bnorm, g = graph.cache[key]
        return g * (absw * in_norm + bnorm) * (1 + 1e-6)

    def model_rounding(self, node: Node, graph: Graph, in_norm: torch.Tensor,
                       out_norm: torch.Tensor, arithmetic: Arithmetic) -> torch.Tensor:
        """:meth:`rounding` in the model's arithmetic (:func:`dot_model_rounding`)."""
        self.rounding(node, graph, in_norm, out_norm)  # fills the cache
        return dot_model_rounding(node, graph, int(node.params["weight"].shape[1]), in_norm,
                                  arithmetic)


def dot_model_rounding(node: Node, graph: Graph, fan: int, in_norm: torch.Tensor,
                       arithmetic: Arithmetic) -> torch.Tensor:
    r"""The model's rounding of a linear or convolution node with ``fan`` products per
    output, in L2 (``docs/theory/numerics.md`` §4): the float64 bound
    :math:`\gamma_{k+1}(\||W|\|\|z\|+\|b\|)` (its terms cached by the rule's ``rounding``
    under ``("abs_norms", name)``) with :math:`\gamma'_{k+1+8}`, the underflow terms, and
    inputs below the smallest normal read as zero,
    :math:`\eta'\||W|\mathbf 1\|\le\eta'\||W|\|\sqrt n`; ``OVERFLOW_CHARGE`` where the
    terms may reach the dtype's largest number."""
    absw, bnorm, _ = graph.cache[("abs_norms", node.name)]
    k = fan + 1 + EXTRA_OPS
    root = math.sqrt(node.out_numel)
    terms = absw * in_norm + bnorm
    daz = arithmetic.eta * absw * math.sqrt(sum(math.prod(s) for s in node.in_shapes))
    out = (arithmetic.gamma(k) * terms * (1 + 1e-6) + 2 * k * arithmetic.eta * root + daz)
    return torch.where(arithmetic.overflows(terms), torch.full_like(out, OVERFLOW_CHARGE), out)


register_rule("linear", "sound", LinearRule())


class LinearRelaxation(AffineRelaxation):
    """``crown``: :math:`h = Wz + b` is its own linear bound (docs/theory/linear_relaxation.md
    §Affine nodes)."""

    def apply(self, node: Node, z: torch.Tensor) -> torch.Tensor:
        return z @ node.params["weight"].T

    def transpose(self, node: Node, a: torch.Tensor) -> torch.Tensor:
        return a @ node.params["weight"]

    def abs_apply(self, node: Node, m: torch.Tensor) -> torch.Tensor:
        return m @ node.params["weight"].abs().T

    def const(self, node: Node) -> torch.Tensor | None:
        """The bias as it acts on one output ``[*out]`` (on tokens ``[T, D]``: per token)."""
        b = node.params.get("bias")
        return None if b is None else b.expand(node.out_shape)

    def fan(self, node: Node) -> int:
        return int(node.params["weight"].shape[1])

    def square_apply(self, node: Node, v: torch.Tensor, sign: int) -> torch.Tensor | None:
        w = node.params["weight"]
        part = w.clamp(min=0) if sign > 0 else w.clamp(max=0)
        return v @ (part * part).T


register_rule("linear", "crown", LinearRelaxation())
