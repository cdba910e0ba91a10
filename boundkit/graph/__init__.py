"""Capture a model as a graph of typed nodes (``capture``) and walk it (``Graph``); the
operators it knows are declared once, in :mod:`boundkit.graph.optable`."""

from boundkit.graph.capture import capture, check_model
from boundkit.graph.graph import Graph, Node
from boundkit.graph.optable import OPS, OpSpec

__all__ = [
    "OPS",
    "Graph",
    "Node",
    "OpSpec",
    "capture",
    "check_model",
]
