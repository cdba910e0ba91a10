"""The bound engine: ``certify(model, x, method)``.

Captures the model (cached per model), checks the input, asks the method registry
(:mod:`boundkit.bounds.method`) for the method, and runs it chunk by chunk. The engine names
no method: each lives in its own module (``sound``, ``local``, ``peck2017``, ``crown``) on the
generic walkers of :mod:`boundkit.bounds.walk`.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from boundkit.bounds.certificate import Certificate, SampleStatus
from boundkit.bounds.method import BatchResult, Method, get_method, method_names
from boundkit.bounds.registry import custom_module_ops
from boundkit.errors import UnsupportedLayerError
from boundkit.graph.arithmetic import inputs_in
from boundkit.graph.cache import check_graph
from boundkit.graph.cache import graph_for as cached_graph
from boundkit.graph.capture import capture as capture_graph
from boundkit.graph.fidelity import check_fidelity
from boundkit.graph.graph import Graph
from boundkit.validate import check_batch, check_call


def graph_for(model: nn.Module, x: torch.Tensor, device: torch.device | str | None) -> Graph:
    """The graph of ``model`` (:func:`boundkit.graph.cache.graph_for`: reused while the
    model's fingerprint is unchanged), with the module classes users registered rules for
    captured as single nodes."""
    return cached_graph(model, x, device, leaf_modules=custom_module_ops())


def capture(
    model: nn.Module, example: torch.Tensor | tuple[int, ...], *,
    device: torch.device | str | None = None,
) -> Graph:
    """:func:`boundkit.graph.capture.capture` with the module classes users registered
    rules for (:func:`boundkit.register_rule`) as leaf nodes."""
    return capture_graph(model, example, device=device, leaf_modules=custom_module_ops())


def certify(
    model: nn.Module,
    x: torch.Tensor,
    method: str | Method = "sound",
    *,
    device: torch.device | str | None = None,
    batch_size: int = 1024,
    trace: bool = True,
    graph: Graph | None = None,
    executor: Any = None,
    **options: Any,
) -> Certificate:
    """Certify the L2 robustness of ``model`` at every sample of ``x``.

    Args:
        model: a classifier in eval mode returning logits ``[N, C]`` (a final softmax or
            log-softmax is allowed).
        x: inputs ``[N, *input_shape]`` (any float dtype; computations are float64).
        method: a registered method name (``boundkit.available_methods()``) or a
            :class:`~boundkit.bounds.method.Method`. Built in: ``"sound"`` (default; proven
            moduli of continuity), ``"sound-local"`` (``sound`` refined by ReLU stability on
            the ball), ``"crown"`` (linear relaxation bounds propagated backwards, radius by
            a per-sample search), ``"alpha"`` (``crown`` with optimised ReLU lower slopes)
            and ``"peck2017"`` (the thesis's formulas, not a guarantee).
        device: where to compute (default: the model's device).
        batch_size: samples per chunk (bounds memory). A radius depends on it only through
            the order of floating-point sums in the matrix and convolution kernels (a few
            ulps; every value is a certificate: docs/distributed.md, "per sample").
        trace: keep the per-node bounds (``Certificate.trace``).
        graph: a graph from :func:`boundkit.capture` to reuse.
        executor: run on a cluster instead, e.g. a
            :class:`boundkit.distributed.RayExecutor` (identical radii and traces).
        **options: method options (e.g. ``box=(0.0, 1.0)`` or ``box=None`` for ``crown``);
            an option the method does not know is an error.

    Returns:
        a :class:`~boundkit.Certificate`: its radii are about the model as it runs in its
        own dtype, its rounding charged at every node (:attr:`Certificate.radius`).

    Raises:
        UnsupportedLayerError: a node without a rule for ``method`` (named in the message).
        TrainingModeError, NonFiniteParameterError, InputShapeError: bad model or input.
    """
    x = check_call(model, x, device=device, counts={"batch_size": batch_size}, run=graph is None)
    if executor is not None:
        return executor.certify(model, x, method, device=device, **options)
    if graph is None:
        graph = graph_for(model, x, device)
    else:
        check_graph(graph, model)
        if device is not None and graph.device != torch.device(device):
            graph.to(device)
    check_batch(x, shape=graph.input_shape)
    meth, plan = _method_plan(graph, method, options)
    parts: list[BatchResult] = []
    statuses: list[torch.Tensor] = []
    model_labels: list[torch.Tensor] = []
    with inputs_in(x.dtype):  # a model without parameters runs in its inputs' dtype
        for s in range(0, x.shape[0], batch_size):
            xb = x[s : s + batch_size].to(graph.device)
            part = meth.run(graph, xb, plan, trace=trace, **options)
            status, model_label = _sample_status(model, graph, xb, part)
            parts.append(part)
            statuses.append(status)
            model_labels.append(model_label)
        return _certificate(graph, meth, options, parts, torch.cat(statuses),
                            torch.cat(model_labels), trace)


def _method_plan(graph: Graph, method: str | Method, options: dict[str, Any]
                 ) -> tuple[Method, Any]:
    """The method object (options checked against it) and its plan for ``graph``, prepared
    once per graph and method object."""
    meth = method if isinstance(method, Method) else get_method(method)
    unknown = set(options) - set(meth.options())
    if unknown:
        raise TypeError(
            f"method {meth.name!r} takes no option(s) {sorted(unknown)}; "
            f"it accepts {list(meth.options()) or 'none'}"
        )
    plans = graph.cache.setdefault(_PLANS, {})
    if meth.name not in plans or plans[meth.name][0] is not meth:
        try:
            plans[meth.name] = (meth, meth.prepare(graph))
        except UnsupportedLayerError as exc:
            raise exc.for_method(meth.name) from None
    return meth, plans[meth.name][1]


def _certificate(graph: Graph, meth: Method, options: dict[str, Any],
                 parts: list[BatchResult], status: torch.Tensor, model_label: torch.Tensor,
                 trace: bool) -> Certificate:
    """The batches' results as one :class:`Certificate`: radius 0 wherever the sample's
    status says so (:meth:`SampleStatus.zeroed`), the trace in graph order."""
    radius = torch.cat([p.radius for p in parts]).to(torch.float64)
    radius = torch.where(SampleStatus.zeroed(status).to(radius.device), 0.0, radius)
    tr: dict[str, torch.Tensor] = {}
    if trace:
        for name in parts[0].trace:
            tr[name] = torch.cat([p.trace[name] for p in parts])
        order = {n.name: i for i, n in enumerate(graph.nodes)}
        tr = dict(sorted(tr.items(), key=lambda kv: order.get(kv[0], 0)))
    info: dict[str, Any] = {"nodes": len(graph), "num_classes": graph.num_classes,
                            "guarantee": meth.is_guarantee,
                            # whose rounding the radii are charged (docs/theory/numerics.md)
                            "arithmetic": graph.model_arithmetic.name}
    if "box" in meth.options():  # the box the samples were checked against (reasons())
        box = options.get("box", meth.default_box)
        info["box"] = None if box is None else (float(box[0]), float(box[1]))
    for key in parts[0].info:
        info[key] = torch.cat([p.info[key] for p in parts])
    return Certificate(
        radius=radius,
        label=torch.cat([p.label for p in parts]),
        runner_up=torch.cat([p.runner_up for p in parts]),
        margin=torch.cat([p.margin for p in parts]),
        trace=tr,
        method=meth.name,
        node_ops={n: graph[n].op for n in tr},
        info=info,
        status=status,
        model_label=model_label,
        is_guarantee=meth.is_guarantee,
    )


def _sample_status(
    model: nn.Module, graph: Graph, xb: torch.Tensor, part: BatchResult
) -> tuple[torch.Tensor, torch.Tensor]:
    """The fidelity check (:func:`boundkit.graph.fidelity.check_fidelity`, raising on a
    mismatch) and the per-sample :class:`SampleStatus` of one batch, with the model's own
    labels."""
    outputs = part.outputs
    if outputs is None:
        outputs = graph.activations(xb, ())[graph.output]
    fid = check_fidelity(model, graph, xb, outputs)
    status = torch.full(fid.model_label.shape, int(SampleStatus.OK), dtype=torch.int8)
    status[fid.near_tie.cpu()] = SampleStatus.MODEL_NEAR_TIE
    status[~fid.agrees.cpu()] = SampleStatus.MODEL_DISAGREES
    status[fid.overflows.cpu()] = SampleStatus.MODEL_OVERFLOWS
    if part.unsafe is not None:
        status[part.unsafe.cpu()] = SampleStatus.UNSAFE_NUMERICS
    if part.outside_box is not None:  # reported, radius kept (the ball without the box)
        status[part.outside_box.cpu() & (status == SampleStatus.OK)] = SampleStatus.OUTSIDE_BOX
    return status, fid.model_label.cpu()


#: key of the per-graph plan cache (method name -> (method object, plan))
_PLANS = "method_plans"
__all__ = ["capture", "certify", "graph_for", "method_names"]
