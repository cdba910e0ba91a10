r"""Batch normalisation in eval mode (``BatchNorm1d``, ``BatchNorm2d``).

In eval mode the layer is the affine map
:math:`y_j=\gamma_j(x_j-\mu_j)/\sqrt{\sigma_j^2+\epsilon}+\beta_j` with running statistics.

**Sound rule** (``docs/theory/batchnorm.md``): a diagonal linear part, so its operator norm
is exactly :math:`\max_j|\gamma_j|/\sqrt{\sigma_j^2+\epsilon}`.

**peck2017** (thesis Theorem 5.6): :math:`\|r\|\ge\max_j\delta_j` with :math:`\delta_j` the
smaller root magnitude of the per-component quadratic (5.10). The step from eq. (5.9) to
"for all j" (Lemma 5.4) does not hold: (5.9) forces *some* component to carry its share,
not every one, so the maximum over j does not follow (``docs/theory/peck2017.md``).
Components with :math:`\gamma_j=0` (constant outputs) cannot move and are left out of the
maximum, where the published formula would divide by zero.
"""

from __future__ import annotations

import math

import torch

from boundkit.bounds.numerics import UNIT_ROUNDOFF, inflate
from boundkit.bounds.registry import BackwardRule, LipschitzRule, register_rule
from boundkit.bounds.relaxation import AffineRelaxation
from boundkit.graph.graph import Graph, Node


def bn_scale_shift(node: Node) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel ``scale = gamma / sqrt(var + eps)`` and ``shift = beta - mu * scale``."""
    p = node.params
    scale = p["weight"] / torch.sqrt(p["running_var"] + node.attrs["eps"])
    return scale, p["bias"] - p["running_mean"] * scale


def _per_element(node: Node, v: torch.Tensor) -> torch.Tensor:
    """Broadcast a per-channel vector [C] against a batch of this node's inputs."""
    extra = len(node.in_shapes[0]) - 1
    return v.reshape(1, -1, *([1] * extra))


class BatchNormRule(LipschitzRule):
    """Sound: :math:`\\max_j|\\gamma_j|/\\sqrt{\\sigma_j^2+\\epsilon}` (exact operator norm)."""

    def compute_lipschitz(self, node: Node, graph: Graph) -> float:
        scale, _ = bn_scale_shift(node)
        return float(inflate(scale.abs().max()))

    def rounding(
        self, node: Node, graph: Graph, in_norm: torch.Tensor, out_norm: torch.Tensor
    ) -> torch.Tensor:
        key = ("bn_norms", node.name)
        if key not in graph.cache:
            spatial = math.prod(node.in_shapes[0][1:]) if len(node.in_shapes[0]) > 1 else 1
            p = node.params
            graph.cache[key] = (
                float(p["running_mean"].norm()) * math.sqrt(spatial),
                float(p["bias"].norm()) * math.sqrt(spatial),
            )
        mu, beta = graph.cache[key]
        lip = self.lipschitz(node, graph)
        # (x - mu) / sqrt(var + eps) * gamma + beta: at most 6 rounded operations per entry
        return 6 * UNIT_ROUNDOFF * (lip * (in_norm + mu) + beta + out_norm)


class BatchNormPeck(BackwardRule):
    """peck2017: thesis Theorem 5.6, as published."""

    def needs(self, node: Node, graph: Graph) -> set[str]:
        return {node.inputs[0], node.name}

    def backward(
        self, node: Node, graph: Graph, kappa: torch.Tensor, acts: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        x = acts[node.inputs[0]]
        y = acts[node.name]
        n = x.shape[0]
        p = node.params
        var_eps = _per_element(node, p["running_var"] + node.attrs["eps"])
        gam = _per_element(node, p["weight"])
        bet = _per_element(node, p["bias"])
        mu = _per_element(node, p["running_mean"])
        d = x[0].numel()
        phi = gam / var_eps
        chi = 2 * gam * (x - mu) + 2 * bet * torch.sqrt(var_eps)
        ynorm = y.reshape(n, -1).norm(dim=1)
        psi = ((2 * kappa * ynorm + kappa**2) / d).reshape(n, *([1] * (x.dim() - 1)))
        a = phi * gam
        disc = torch.sqrt(phi**2 * chi**2 + 4 * a * psi)
        rho1 = -(disc + phi * chi) / (2 * a)
        rho2 = (disc - phi * chi) / (2 * a)
        delta = torch.minimum(rho1.abs(), rho2.abs())
        delta = torch.where((gam != 0).expand_as(delta), delta, torch.zeros_like(delta))
        return delta.reshape(n, -1).max(dim=1).values


register_rule("batchnorm", "sound", BatchNormRule())
register_rule("batchnorm", "peck2017", BatchNormPeck())


class BatchNormRelaxation(AffineRelaxation):
    r"""``crown``: eval-mode batch norm is the per-channel affine map
    :math:`h = s z + t`, :math:`s=\gamma/\sqrt{\sigma^2+\epsilon}`,
    :math:`t=\beta-\mu s`. The computed :math:`\hat s,\hat t` err by at most
    :math:`4u|s|` and :math:`4u(|\beta|+|\mu s|)` (a handful of rounded operations), charged
    through ``const_error`` and ``const_mag``."""

    def apply(self, node: Node, z: torch.Tensor) -> torch.Tensor:
        return z * _per_element(node, bn_scale_shift(node)[0])

    def transpose(self, node: Node, a: torch.Tensor) -> torch.Tensor:
        return a * _per_element(node, bn_scale_shift(node)[0])

    def abs_apply(self, node: Node, m: torch.Tensor) -> torch.Tensor:
        return m * _per_element(node, bn_scale_shift(node)[0].abs())

    def const(self, node: Node) -> torch.Tensor | None:
        return _per_element(node, bn_scale_shift(node)[1])[0].expand(node.out_shape)

    def const_mag(self, node: Node) -> torch.Tensor | None:
        scale, _ = bn_scale_shift(node)
        mag = node.params["bias"].abs() + (node.params["running_mean"] * scale).abs()
        return _per_element(node, mag)[0].expand(node.out_shape)

    def const_error(self, node: Node) -> float:
        return 8 * UNIT_ROUNDOFF

    def fan(self, node: Node) -> int:
        return 2


register_rule("batchnorm", "crown", BatchNormRelaxation())
