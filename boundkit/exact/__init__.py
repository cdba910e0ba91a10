"""Exact ground truth: the minimal L2 perturbation that changes a small classifier's decision.

``exact_radius(model, x)`` returns ``rho(x) = min { ||r||_2 : argmax f(x + r) != argmax f(x) }``
(ties count as a change) for linear classifiers (closed form) and ReLU networks
(branch and bound: ``bab``'s domains and linear bounds for the lower end, one convex QP per
activation region for leaves and witnessed upper ends).  See ``docs/exact.md``.
"""

from __future__ import annotations

from boundkit.exact.convert import AffineReluNet, to_affine_relu
from boundkit.exact.core import (
    DEFAULT_MAX_NEURONS,
    DEFAULT_MAX_REGIONS,
    ExactResult,
    ExactSizeError,
    exact_radius,
    exact_radius_linear,
)
from boundkit.exact.qp import MinNorm, min_norm, min_norm_point
from boundkit.exact.search import ray_first_crossing

__all__ = [
    "DEFAULT_MAX_NEURONS",
    "DEFAULT_MAX_REGIONS",
    "AffineReluNet",
    "ExactResult",
    "ExactSizeError",
    "MinNorm",
    "exact_radius",
    "exact_radius_linear",
    "min_norm",
    "min_norm_point",
    "ray_first_crossing",
    "to_affine_relu",
]
