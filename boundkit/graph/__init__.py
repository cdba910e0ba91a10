"""Capture a model as a graph of typed nodes (``capture``) and walk it (``Graph``)."""

from boundkit.graph.capture import capture, check_model
from boundkit.graph.graph import (
    ACTIVATION_OPS,
    AFFINE_OPS,
    KNOWN_OPS,
    MERGE_OPS,
    POOL_OPS,
    Graph,
    Node,
)

__all__ = [
    "ACTIVATION_OPS",
    "AFFINE_OPS",
    "KNOWN_OPS",
    "MERGE_OPS",
    "POOL_OPS",
    "Graph",
    "Node",
    "capture",
    "check_model",
]
