"""The bound engine: ``certify`` and the per-layer rules of each method.

One module per layer family (``linear``, ``conv``, ``pooling``, ``batchnorm``, ``lrn``,
``activation``, ``mlp`` for fully-connected blocks, ``output`` for the margin stage,
``structural`` for reshapes and merges); each rule's docstring gives its formula and the
theorem it implements, and ``docs/theory/`` has the proofs.
"""

from boundkit.bounds.certificate import Certificate
from boundkit.bounds.engine import certify
from boundkit.bounds.modulus import Modulus
from boundkit.bounds.registry import (
    BackwardRule,
    LipschitzRule,
    SoundRule,
    available_methods,
    register_rule,
    unregister_rule,
)

__all__ = [
    "BackwardRule",
    "Certificate",
    "LipschitzRule",
    "Modulus",
    "SoundRule",
    "available_methods",
    "certify",
    "register_rule",
    "unregister_rule",
]
