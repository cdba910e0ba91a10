"""Captured graphs, reused only while the model is unchanged.

:func:`graph_for` keeps one graph per model object (weakly) under a key made of the model's
:func:`~boundkit.graph.fingerprint.model_fingerprint`, the input shape, the device and the
user leaf classes; any change to the weights (also through ``.data``), to a module's
hyper-parameters, to the module tree or to the hooks changes the fingerprint, and the model
is captured again. :func:`check_graph` applies the same test to a graph the user passes in.
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping

import torch
import torch.nn as nn

from boundkit.errors import ModelError
from boundkit.graph.capture import capture
from boundkit.graph.fingerprint import model_fingerprint
from boundkit.graph.graph import Graph

_GRAPHS: weakref.WeakKeyDictionary[nn.Module, tuple[tuple, Graph]] = weakref.WeakKeyDictionary()


def graph_for(
    model: nn.Module,
    x: torch.Tensor,
    device: torch.device | str | None = None,
    leaf_modules: Mapping[type[nn.Module], str] | None = None,
) -> Graph:
    """The graph of ``model`` for inputs shaped like ``x`` (captured, or reused while the
    model's fingerprint, the input shape, the device and ``leaf_modules`` are unchanged)."""
    leaf_modules = dict(leaf_modules or {})
    if not isinstance(model, nn.Module):
        return capture(model, x, device=device, leaf_modules=leaf_modules)  # refuses it
    if device is None:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
    key = (
        model_fingerprint(model),
        tuple(x.shape[1:]),
        str(torch.device(device)),
        tuple(sorted((f"{t.__module__}.{t.__qualname__}", op) for t, op in leaf_modules.items())),
    )
    hit = _GRAPHS.get(model)
    if hit is not None and hit[0] == key:
        return hit[1]
    graph = capture(model, x, device=device, leaf_modules=leaf_modules)
    try:
        _GRAPHS[model] = (key, graph)
    except TypeError:  # a module that cannot be weakly referenced
        pass
    return graph


def check_graph(graph: Graph, model: nn.Module) -> None:
    """Refuse a user-supplied graph that was not captured from ``model`` as it is now.

    Raises:
        ModelError: the fingerprints differ (another model, or the model changed since).
    """
    if not isinstance(graph, Graph):
        raise ModelError(f"graph must be a boundkit Graph, got {type(graph).__name__}")
    if graph.fingerprint != model_fingerprint(model):
        raise ModelError(
            "the graph passed in was captured from another model, or the model changed "
            "since (weights, hyper-parameters, modules or hooks): capture it again"
        )
