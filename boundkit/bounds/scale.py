r"""Multiplication and division by a constant: the ``scale`` node (``h * w``, ``w * h``,
``h / c``, ``torch.mul``, ``torch.div``; the constant a number, per channel, per element,
any shape torch broadcasts, a batch axis of 1 included).

The node computes :math:`h=B(x)\odot w` with :math:`B` the broadcast of the input to the
output shape (each input entry copied to the outputs that read it) and :math:`w` the
factor, or :math:`1/c` for a division by :math:`c` (refused at capture when :math:`c` can be
0, is not finite, or its reciprocal overflows). Proofs: ``docs/theory/scale.md``.

* **sound** (and ``sound-local``, which reads the same rules): the operator norm of
  :math:`q\mapsto B(q)\odot w` is exactly
  :math:`\max_i\big(\sum_{o\leftarrow i}w_o^2\big)^{1/2}` over the input entries :math:`i`
  (the outputs :math:`o` copying entry :math:`i`); :math:`\max_i|w_i|` without broadcast.
  One rounded operation per output: :math:`u\|h\|`.
* **peck2017**: :math:`\kappa_\text{in}=\kappa/L` with :math:`L` that norm (an output change
  of norm :math:`\kappa` needs an input change of at least :math:`\kappa/L`).
* **crown** / **alpha**: an affine node (:class:`~boundkit.bounds.relaxation.AffineRelaxation`)
  with :math:`L=\mathrm{diag}(w)B`, no constant; the transpose multiplies by :math:`w` and
  sums the copies; a division's computed reciprocal errs by at most :math:`u|1/c|`, and so
  does a factor capture computed (``attrs["rounded"]``) (``const_error``).
"""

from __future__ import annotations

import math

import torch

from boundkit.bounds.numerics import UNIT_ROUNDOFF, inflate, round_down
from boundkit.bounds.registry import BackwardRule, LipschitzRule, register_rule
from boundkit.bounds.relaxation import AffineRelaxation
from boundkit.bounds.structural import MergeRelaxation
from boundkit.graph.graph import Graph, Node
from boundkit.graph.ops import per_sample_constant


def scale_factor(node: Node) -> torch.Tensor:
    """The factor :math:`w` of a ``scale`` node, float64, shaped to broadcast against one
    sample's output (``1 / c`` for a division, rounded to nearest: within ``u |1/c|``)."""
    c = per_sample_constant(node.params["factor"].to(torch.float64), len(node.out_shape))
    return 1.0 / c if node.attrs.get("divide") else c


def factor_is_rounded(node: Node) -> bool:
    """Whether the computed factor differs from the intended one by a rounding (at most
    ``u |w|``): a division's reciprocal, or a factor capture computed (``attrs["rounded"]``:
    the ``1 - a`` of a PReLU with one slope per channel)."""
    return bool(node.attrs.get("divide") or node.attrs.get("rounded"))


def _copies(node: Node) -> int:
    """How many outputs read each input entry (the broadcast's repetition)."""
    return max(math.prod(node.out_shape) // max(math.prod(node.in_shapes[0]), 1), 1)


def scale_norm(node: Node) -> float:
    r"""The operator norm of :math:`q\mapsto B(q)\odot w`, an upper bound in float64:
    :math:`\max_i(\sum_{o\leftarrow i}w_o^2)^{1/2}`, inflated (the squares, the sums and
    the root each round by at most a few ulps; a division's reciprocal by one)."""
    w = scale_factor(node)
    out, shape = tuple(node.out_shape), tuple(node.in_shapes[0])
    sq = (w * w).broadcast_to(out).unsqueeze(0).unsqueeze(0)  # [1, 1, *out]
    per_input = MergeRelaxation._reduce(sq, shape, out)  # [1, 1, *in]
    top = float(per_input.max()) if per_input.numel() else 0.0
    k = _copies(node)
    return float(inflate(math.sqrt(top) * (1 + (k + 4) * UNIT_ROUNDOFF)))


class ScaleRule(LipschitzRule):
    """sound: the exact operator norm (:func:`scale_norm`); one rounded product or quotient
    per output."""

    def compute_lipschitz(self, node: Node, graph: Graph) -> float:
        return scale_norm(node)

    def rounding(
        self, node: Node, graph: Graph, in_norm: torch.Tensor, out_norm: torch.Tensor
    ) -> torch.Tensor:
        # a factor rounded once (capture's 1 - a of a PReLU) is off by u|w|: one more u|h|
        ulps = 2 if node.attrs.get("rounded") else 1
        return ulps * UNIT_ROUNDOFF * out_norm * (1 + 1e-9)


class ScalePeck(BackwardRule):
    """peck2017: :math:`\\kappa/L`, :math:`L` the operator norm (docs/theory/scale.md)."""

    def backward(
        self, node: Node, graph: Graph, kappa: torch.Tensor, acts: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        lip = ScaleRule().lipschitz(node, graph)
        if lip == 0.0:
            return torch.full_like(kappa, math.inf)
        return round_down(kappa / lip)


class ScaleRelaxation(AffineRelaxation):
    r"""``crown``: :math:`h=\mathrm{diag}(w)Bx` is its own linear bound; :math:`L^\top A`
    multiplies by :math:`w` and sums the copies of each input entry (``fan``: their
    number); a division's reciprocal is charged as a parameter error of :math:`2u`."""

    def apply(self, node: Node, z: torch.Tensor) -> torch.Tensor:
        return z * scale_factor(node).to(z)

    def transpose(self, node: Node, a: torch.Tensor) -> torch.Tensor:
        aw = a * scale_factor(node).to(a)
        out, shape = tuple(node.out_shape), tuple(node.in_shapes[0])
        return MergeRelaxation._reduce(aw.unsqueeze(0), shape, out)[0]

    def abs_apply(self, node: Node, m: torch.Tensor) -> torch.Tensor:
        return m * scale_factor(node).abs().to(m)

    def const_error(self, node: Node) -> float:
        return 2 * UNIT_ROUNDOFF if factor_is_rounded(node) else 0.0

    def fan(self, node: Node) -> int:
        return _copies(node)

    def square_apply(self, node: Node, v: torch.Tensor, sign: int) -> torch.Tensor | None:
        w = scale_factor(node).to(v)
        part = w.clamp(min=0) if sign > 0 else w.clamp(max=0)
        return v * (part * part)


register_rule("scale", "sound", ScaleRule())
register_rule("scale", "peck2017", ScalePeck())
register_rule("scale", "crown", ScaleRelaxation())
