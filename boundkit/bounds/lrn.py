r"""Local response normalisation (``nn.LocalResponseNorm``).

torch computes, at every spatial position and channel :math:`c`,
:math:`b_c=a_c\,D_c^{-\beta}`, :math:`D_c=k+\tfrac{\alpha}{n}S_c`,
:math:`S_c=\sum_{j\in W(c)}a_j^2`, with :math:`W(c)` the :math:`n` channels around :math:`c`
(zero padded). The thesis writes :math:`\alpha` for torch's :math:`\alpha/n`.

**Sound rule** (``docs/theory/lrn.md``). The Jacobian at one position is
:math:`J=\mathrm{diag}(D^{-\beta})-P`,
:math:`P_{cj}=2\beta\tfrac{\alpha}{n}a_ca_jD_c^{-\beta-1}[j\in W(c)]`. With
:math:`|a_c|\le\sqrt{S_c}`, Cauchy-Schwarz and the fact that each channel lies in at most
:math:`n` windows,

.. math:: \|J\|_2\le k^{-\beta}+2\beta\sqrt n\,\max_c\varphi(u_c),\qquad
          \varphi(u)=\frac{u}{(k+u)^{\beta+1}},\quad u_c=\tfrac{\alpha}{n}S_c .

Globally :math:`\varphi\le\varphi(k/\beta)=k^{-\beta}\beta^\beta/(\beta+1)^{\beta+1}`.
Locally, on the ball of radius :math:`s` around the input :math:`a`,
:math:`\sqrt{S_c}\le\sqrt{S_c(a)}+s` and :math:`\varphi(u)\le u/k^{\beta+1}`, so every point
of a segment from :math:`a` of length :math:`t\le s` has

.. math:: \|b(a+r)-b(a)\|\le t\Big(k^{-\beta}+\tfrac{2\beta\alpha}{\sqrt n\,k^{\beta+1}}
          (\sqrt{S_{\max}(a)}+t)^2\Big),

a cubic modulus with non-negative coefficients. The rule returns the minimum of the local
cubic and the global Lipschitz line; the engine inverts it per sample (the "monotone
search" over the radius the certificate covers).

**peck2017** (thesis Theorem 5.9 with :math:`M_a` from Lemma 5.11). Lemma 5.8 / Theorem
5.9 take a maximum over all components where only one component must satisfy (5.12), and
Lemma 5.11 bounds the second derivatives with :math:`x_{\max}` taken at :math:`X`, not
over the segment from :math:`X` to :math:`X+R` (``docs/theory/peck2017.md``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from boundkit.bounds.modulus import Modulus
from boundkit.bounds.numerics import ELEMENTWISE_ULPS, UNIT_ROUNDOFF, inflate
from boundkit.bounds.registry import BackwardRule, LipschitzRule, register_rule
from boundkit.bounds.state import rounding_error
from boundkit.errors import UnsupportedLayerError
from boundkit.graph.graph import Graph, Node


def window_sum_sq(x: torch.Tensor, size: int) -> torch.Tensor:
    """:math:`S_c=\\sum_{j\\in W(c)}x_j^2` over channel windows exactly as torch pads them
    (``size // 2`` before, ``(size - 1) // 2`` after)."""
    sq = (x * x).unsqueeze(1)  # [N, 1, C, *spatial]
    sq = sq.reshape(sq.shape[0], 1, sq.shape[2], -1)
    sq = F.pad(sq, (0, 0, size // 2, (size - 1) // 2))
    s = F.avg_pool2d(sq, (size, 1), stride=1) * size
    return s.reshape(x.shape)


def lrn_global_lipschitz(size: int, alpha: float, beta: float, k: float) -> float:
    """:math:`k^{-\\beta}(1+2\\sqrt n\\,\\beta^{\\beta+1}/(\\beta+1)^{\\beta+1})`."""
    if beta <= 0:
        # b = a * D^(-beta) with beta <= 0 grows with |a|: no global constant
        return math.inf
    phi_max = k ** (-beta) * beta**beta / (beta + 1) ** (beta + 1)
    return float(inflate(k ** (-beta) + 2 * beta * math.sqrt(size) * phi_max))


class LRNRule(LipschitzRule):
    """Sound: the minimum of the local cubic modulus and the global Lipschitz line."""

    def needs(self, node: Node, graph: Graph) -> set[str]:
        return {node.inputs[0]}

    def compute_lipschitz(self, node: Node, graph: Graph) -> float:
        a = node.attrs
        return lrn_global_lipschitz(a["size"], a["alpha"], a["beta"], a["k"])

    def modulus(self, node: Node, graph: Graph, acts: dict[str, torch.Tensor]) -> Modulus:
        a = node.attrs
        n, alpha, beta, k = a["size"], a["alpha"], a["beta"], a["k"]
        if not (beta > 0 and alpha >= 0 and k > 0):
            raise UnsupportedLayerError(
                node.name, node.op, "sound",
                f"the LRN bound needs beta > 0, alpha >= 0, k > 0 (got beta={beta}, "
                f"alpha={alpha}, k={k})",
            )
        x = acts[node.inputs[0]]
        smax = window_sum_sq(x, n).reshape(x.shape[0], -1).max(dim=1).values
        # the computed input differs from the exact one by at most its rounding bound e
        # (in L2, hence in every window): sqrt(S) <= sqrt(S_hat) + e
        e_in = rounding_error(acts, node.inputs[0])
        root = torch.sqrt(smax) * (1 + 1e-12) + (e_in if e_in is not None else 0.0)
        c = float(inflate(2 * beta * alpha / (math.sqrt(n) * k ** (beta + 1))))
        base = float(inflate(k ** (-beta)))
        # t * (base + c (root + t)^2) = c t^3 + 2 c root t^2 + (base + c root^2) t
        lin = inflate(base + c * root * root)
        poly = torch.stack(
            [torch.zeros_like(root), lin, inflate(2 * c * root), torch.full_like(root, c)], 1
        )
        local = Modulus([poly])
        glob = self.lipschitz(node, graph)
        if math.isfinite(glob):
            return local.minimum(Modulus.lipschitz(glob))
        return local

    def rounding(
        self, node: Node, graph: Graph, in_norm: torch.Tensor, out_norm: torch.Tensor
    ) -> torch.Tensor:
        n = node.attrs["size"]
        return (n + 4 * ELEMENTWISE_ULPS) * UNIT_ROUNDOFF * out_norm

    def local_lipschitz_at(self, node: Node, x: torch.Tensor) -> torch.Tensor:
        """Upper bound of the Jacobian norm at x itself (radius-0 case), per sample."""
        a = node.attrs
        u = a["alpha"] / a["size"] * window_sum_sq(x, a["size"])
        phi = u / (a["k"] + u) ** (a["beta"] + 1)
        phimax = phi.reshape(x.shape[0], -1).max(1).values
        return a["k"] ** (-a["beta"]) + 2 * a["beta"] * math.sqrt(a["size"]) * phimax


class LRNPeck(BackwardRule):
    """peck2017: thesis Theorem 5.9 with Lemma 5.11, as published."""

    def needs(self, node: Node, graph: Graph) -> set[str]:
        return {node.inputs[0], node.name}

    def backward(
        self, node: Node, graph: Graph, kappa: torch.Tensor, acts: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        a = node.attrs
        n = a["size"]
        alpha, beta, k = a["alpha"] / n, a["beta"], a["k"]  # the thesis's alpha
        x = acts[node.inputs[0]]
        y = acts[node.name]
        bsz = x.shape[0]
        flat = (bsz, -1)
        s = window_sum_sq(x, n)
        d = k + alpha * s
        g_sq = 4 * x**2 * alpha**2 * beta**2 * d ** (-2 * beta - 2) * (s - x**2).clamp_min(0) + (
            d ** (-beta) - 2 * x**2 * alpha * beta * d ** (-beta - 1)
        ) ** 2
        xmax = x.reshape(flat).abs().max(1).values
        m = 4 * xmax * alpha * beta * (xmax**2 * alpha * (beta + 1) * k ** (-beta - 2) + k ** (
            -beta - 1
        )) + 2 * xmax * alpha * beta * k ** (-beta - 1)
        numel = x[0].numel()
        ynorm = y.reshape(flat).norm(dim=1)
        delta = y.reshape(flat).abs() - ((ynorm + kappa) / math.sqrt(numel)).unsqueeze(1)
        g = torch.sqrt(g_sq.reshape(flat))
        mm = m.unsqueeze(1)
        lam = (torch.sqrt(g * g - 2 * mm * delta) - g) / mm
        lam = torch.where(delta < 0, lam, torch.full_like(lam, -math.inf))
        return lam.max(1).values.clamp_min(0.0)


register_rule("lrn", "sound", LRNRule())
register_rule("lrn", "peck2017", LRNPeck())
