r"""Hardsigmoid :math:`g(z)=\min(\max(z/6+1/2,\,0),\,1)` (``nn.Hardsigmoid``,
``F.hardsigmoid``; MobileNetV3's gate), proofs in ``docs/theory/hardsigmoid.md``.

**Sound**: :math:`g` is piecewise linear with slopes :math:`0` and :math:`1/6`, so it is
:math:`1/6`-Lipschitz (mean value theorem on each piece); the constant is rounded up. Rounding:
whatever order torch evaluates :math:`z/6+1/2` or :math:`(z+3)/6` in, each element errs by at
most :math:`2u(|z|+|g(z)|)`; the rule charges :math:`16u(\|z\|+\|g(z)\|)`.

**crown**: the lines are stated (:class:`~boundkit.bounds.modern_activations.StatedActivation`):
for a slope :math:`k`, :math:`h(z)=g(z)-kz` is piecewise linear on :math:`[l,u]`, so its
extremes lie at :math:`l`, :math:`u` or a kink :math:`\pm3` clamped into :math:`[l,u]`
(clamping only adds points of the interval); the offsets are those extremes widened by the
evaluation margin :math:`10^{-12}(|g|+|kz|+|z|)`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from boundkit.bounds.modern_activations import EVAL_MARGIN, StatedActivation, StatedLipschitz
from boundkit.bounds.registry import register_rule
from boundkit.graph.graph import Graph, Node

#: :math:`1/6` rounded up: an upper bound on the slope
SLOPE = math.nextafter(1.0 / 6.0, math.inf)
#: the kinks of :math:`g`
KINKS = (-3.0, 3.0)


class HardsigmoidLipschitz(StatedLipschitz):
    """Sound: Lipschitz constant :math:`1/6` (rounded up), rounding
    :math:`16u(\\|g\\|+\\|z\\|)` (inherited)."""

    def compute_lipschitz(self, node: Node, graph: Graph) -> float:
        return SLOPE


class HardsigmoidRelaxation(StatedActivation):
    """crown: lines from the extremes of :math:`g(z)-kz` over :math:`\\{l,u,-3,3\\}\\cap[l,u]`
    (module docstring)."""

    def value(self, node: Node, z: torch.Tensor) -> torch.Tensor:
        return F.hardsigmoid(z)

    def slope_at(self, node: Node, z: torch.Tensor) -> torch.Tensor:
        inside = (z > KINKS[0]) & (z < KINKS[1])
        return torch.where(inside, torch.full_like(z, 1.0 / 6.0), torch.zeros_like(z))

    def extremes(self, node: Node, k: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        cands = [lo, hi] + [torch.clamp(torch.full_like(lo, c), lo, hi) for c in KINKS]
        m = mx = None
        for z in cands:
            g, kz = self.value(node, z), k * z
            h = g - kz
            e = EVAL_MARGIN * (g.abs() + kz.abs() + z.abs()) + 1e-300
            m = h - e if m is None else torch.minimum(m, h - e)
            mx = h + e if mx is None else torch.maximum(mx, h + e)
        assert m is not None and mx is not None
        return m, mx


register_rule("hardsigmoid", "sound", HardsigmoidLipschitz())
register_rule("hardsigmoid", "crown", HardsigmoidRelaxation())
