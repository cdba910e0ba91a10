r"""Layer normalisation (``nn.LayerNorm``, ``F.layer_norm``): ``sound`` only.

:math:`\mathrm{LN}(x)=\gamma\odot\frac{Px}{\sqrt{\|Px\|^2/n+\epsilon}}+\beta` per position,
:math:`P` the centring projection over the normalised dimensions (:math:`n` entries).
The map :math:`f(y)=y/\sqrt{\|y\|^2/n+\epsilon}` has Jacobian
:math:`I/s-yy^\top/(ns^3)`, :math:`s=\sqrt{\|y\|^2/n+\epsilon}`, with eigenvalues :math:`1/s`
(orthogonal to :math:`y`) and :math:`\epsilon/s^3` (along :math:`y`), both at most
:math:`1/\sqrt\epsilon` (at :math:`y=0`); :math:`\|P\|=1`. Hence the global constant
:math:`L=\max|\gamma|/\sqrt\epsilon` (``docs/theory/layernorm.md``), sound but large
(316 max|gamma| for torch's default eps): the division by a data-dependent standard deviation
has no useful global bound. There is no linear relaxation: ``crown`` and ``alpha`` bound the
node through this modulus.
"""

from __future__ import annotations

import math

import torch

from boundkit.bounds.numerics import gamma, inflate
from boundkit.bounds.registry import LipschitzRule, register_rule
from boundkit.graph.graph import Graph, Node


class LayerNormRule(LipschitzRule):
    """Sound: :math:`\\max|\\gamma|/\\sqrt\\epsilon` (module docstring)."""

    def compute_lipschitz(self, node: Node, graph: Graph) -> float:
        g = float(node.params["weight"].abs().max())
        return float(inflate(g / math.sqrt(node.attrs["eps"]), 1e-9))

    def rounding(self, node: Node, graph: Graph, in_norm: torch.Tensor,
                 out_norm: torch.Tensor) -> torch.Tensor:
        # mean (gamma_n), centring, variance (gamma_{n+2}), sqrt and division (a few ulps),
        # scale and shift: gamma_{2n+8} of (L |x|, |out|, |beta|), four times over
        n = math.prod(node.attrs["normalized_shape"])
        reps = math.prod(node.out_shape) // n
        beta = float(node.params["bias"].norm()) * math.sqrt(reps)
        lip = self.lipschitz(node, graph)
        return 4 * float(gamma(2 * n + 8)) * (lip * in_norm + out_norm + beta)


register_rule("layernorm", "sound", LayerNormRule())
