"""boundkit: how far must an input move (in L2) before a classifier changes its mind?

From below, with certificates (:func:`certify`); from above, with minimum-norm attacks
(:func:`attack`); and both at once, checked against each other (:func:`crosscheck`).

The public names are imported lazily so that ``import boundkit`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    # certificates
    "certify": "boundkit.bounds.engine",
    "Certificate": "boundkit.bounds.certificate",
    "register_rule": "boundkit.bounds.registry",
    "available_methods": "boundkit.bounds.registry",
    "Method": "boundkit.bounds.method",
    "register_method": "boundkit.bounds.method",
    # graph
    "capture": "boundkit.bounds.engine",
    "Graph": "boundkit.graph.graph",
    "Node": "boundkit.graph.graph",
    # attacks
    "attack": "boundkit.attacks",
    "AttackResult": "boundkit.attacks.base",
    # cross-check
    "crosscheck": "boundkit.crosschecking",
    "CrosscheckResult": "boundkit.crosschecking",
    # exact ground truth
    "exact_radius": "boundkit.exact",
    "verify": "boundkit.bounds.bab",
    "VerifyResult": "boundkit.bounds.bab",
    # models and data
    "load_model": "boundkit.models.io",
    "save_model": "boundkit.models.io",
    "load_dataset": "boundkit.data",
}

__all__ = sorted(_LAZY) + ["__version__"]


_SUBMODULES = frozenset(
    {"attacks", "bounds", "data", "errors", "exact", "graph", "models", "report", "testing"}
)


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"boundkit.{name}")
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'boundkit' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
