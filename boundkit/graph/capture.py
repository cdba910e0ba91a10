"""Capture an ``nn.Module`` as a :class:`~boundkit.graph.graph.Graph` of typed nodes.

The model is traced with ``torch.fx`` (``nn.Sequential`` traces like any other module),
shapes are propagated with an example input, and every fx node that produces a tensor
becomes a :class:`Node` whose ``op`` names its kind. Nodes boundkit does not know are kept
with ``op="unknown"`` so that each bound method can refuse them by name.
"""

from __future__ import annotations

import contextlib
import copy
import io
import math
import operator
from collections.abc import Mapping
from typing import Any

import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F
from torch.fx.passes.shape_prop import ShapeProp

from boundkit.errors import (
    InputShapeError,
    ModelError,
    NonFiniteParameterError,
    TrainingModeError,
    UnsupportedLayerError,
)
from boundkit.graph.graph import Graph, Node

_MODULE_OPS: dict[type[nn.Module], str] = {
    nn.Linear: "linear",
    nn.Conv2d: "conv2d",
    nn.MaxPool2d: "maxpool2d",
    nn.AvgPool2d: "avgpool2d",
    nn.LPPool2d: "lppool2d",
    nn.BatchNorm1d: "batchnorm",
    nn.BatchNorm2d: "batchnorm",
    nn.LocalResponseNorm: "lrn",
    nn.ReLU: "relu",
    nn.Tanh: "tanh",
    nn.Sigmoid: "sigmoid",
    nn.Softplus: "softplus",
    nn.Flatten: "flatten",
    nn.Dropout: "identity",
    nn.Dropout2d: "identity",
    nn.Identity: "identity",
    nn.Softmax: "softmax",
    nn.LogSoftmax: "log_softmax",
}

_FUNCTION_OPS: dict[Any, str] = {
    F.relu: "relu",
    torch.relu: "relu",
    torch.tanh: "tanh",
    F.tanh: "tanh",
    torch.sigmoid: "sigmoid",
    F.sigmoid: "sigmoid",
    F.softplus: "softplus",
    torch.flatten: "flatten",
    F.dropout: "identity",
    F.softmax: "softmax",
    torch.softmax: "softmax",
    F.log_softmax: "log_softmax",
    torch.log_softmax: "log_softmax",
    operator.add: "add",
    torch.add: "add",
    torch.cat: "cat",
    torch.concat: "cat",
    F.max_pool2d: "maxpool2d",
    F.avg_pool2d: "avgpool2d",
}

_METHOD_OPS: dict[str, str] = {
    "relu": "relu",
    "tanh": "tanh",
    "sigmoid": "sigmoid",
    "view": "reshape",
    "reshape": "reshape",
    "flatten": "flatten",
    "softmax": "softmax",
    "log_softmax": "log_softmax",
    "contiguous": "identity",
    "add": "add",
}


def check_model(model: nn.Module) -> None:
    """Refuse models that cannot give a meaningful certificate.

    Raises:
        TrainingModeError: if the model or any submodule is in training mode (batch norm
            would use batch statistics and dropout would be random).
        NonFiniteParameterError: if any parameter or buffer holds NaN or infinity.
    """
    if not isinstance(model, nn.Module):
        raise ModelError(f"expected a torch.nn.Module, got {type(model).__name__}")
    training = [name or type(model).__name__ for name, m in model.named_modules() if m.training]
    if training:
        raise TrainingModeError(
            f"the model is in training mode (submodules {training[:5]}"
            f"{'...' if len(training) > 5 else ''}); call model.eval() first: batch norm and "
            "dropout behave differently in training mode, so no certificate would hold"
        )
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        if t.is_floating_point() and not torch.isfinite(t).all():
            bad = int((~torch.isfinite(t)).sum())
            raise NonFiniteParameterError(
                f"parameter {name!r} holds {bad} non-finite value(s) (NaN or inf)"
            )


def _pair(v: Any) -> tuple[int, int]:
    if isinstance(v, (tuple, list)):
        return (int(v[0]), int(v[-1]))
    return (int(v), int(v))


def _module_params(op: str, m: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Float64 parameters and hyper-parameters of a module node."""
    p: dict[str, torch.Tensor] = {}
    a: dict[str, Any] = {}
    if op == "linear":
        p["weight"] = m.weight.detach().double()
        if m.bias is not None:
            p["bias"] = m.bias.detach().double()
    elif op == "conv2d":
        if isinstance(m.padding, str):
            raise UnsupportedLayerError(
                "conv2d", "conv2d", why=f"string padding {m.padding!r}: use explicit integers"
            )
        if m.padding_mode != "zeros":
            a["padding_mode"] = m.padding_mode
        p["weight"] = m.weight.detach().double()
        if m.bias is not None:
            p["bias"] = m.bias.detach().double()
        a.update(
            stride=_pair(m.stride),
            padding=_pair(m.padding),
            dilation=_pair(m.dilation),
            groups=int(m.groups),
            kernel_size=_pair(m.kernel_size),
        )
    elif op in ("maxpool2d", "avgpool2d", "lppool2d"):
        ks = _pair(m.kernel_size)
        a.update(
            kernel_size=ks,
            stride=_pair(m.stride if m.stride is not None else ks),
            ceil_mode=bool(getattr(m, "ceil_mode", False)),
        )
        if op == "maxpool2d":
            a.update(padding=_pair(m.padding), dilation=_pair(m.dilation))
            if m.return_indices:
                raise UnsupportedLayerError("maxpool2d", op, why="return_indices=True")
        elif op == "avgpool2d":
            a.update(
                padding=_pair(m.padding),
                count_include_pad=bool(m.count_include_pad),
                divisor_override=m.divisor_override,
            )
        else:
            a.update(p=float(m.norm_type), padding=(0, 0))
    elif op == "batchnorm":
        if m.running_mean is None or m.running_var is None:
            raise UnsupportedLayerError(
                "batchnorm", op, why="track_running_stats=False: eval statistics are unknown"
            )
        c = m.running_mean.numel()
        p["running_mean"] = m.running_mean.detach().double()
        p["running_var"] = m.running_var.detach().double()
        w = m.weight if m.weight is not None else torch.ones(c)
        b = m.bias if m.bias is not None else torch.zeros(c)
        p["weight"] = w.detach().double()
        p["bias"] = b.detach().double()
        a["eps"] = float(m.eps)
    elif op == "lrn":
        a.update(size=int(m.size), alpha=float(m.alpha), beta=float(m.beta), k=float(m.k))
    elif op == "softplus":
        a.update(beta=float(m.beta), threshold=float(m.threshold))
    elif op == "flatten":
        a.update(start_dim=int(m.start_dim), end_dim=int(m.end_dim))
    elif op in ("softmax", "log_softmax"):
        a["dim"] = m.dim
    return p, a


def capture(
    model: nn.Module,
    example: torch.Tensor | tuple[int, ...],
    *,
    device: torch.device | str | None = None,
    leaf_modules: Mapping[type[nn.Module], str] | None = None,
) -> Graph:
    """Trace ``model`` into a :class:`Graph`.

    Args:
        model: a classifier in eval mode mapping ``[N, *input_shape]`` to logits ``[N, C]``
            (a final softmax / log-softmax is allowed and ignored for the argmax).
        example: an example batch ``[N, *input_shape]`` or the input shape without batch.
        device: where the float64 evaluator lives (default: the model's device).
        leaf_modules: extra module classes captured as one node each, with their op name
            (the bound rules' registry passes the classes users registered rules for; the
            graph itself knows no bound method).

    Raises:
        TrainingModeError, NonFiniteParameterError: see :func:`check_model`.
        InputShapeError: if the model cannot run on an input of this shape, or the output
            is not a ``[N, C]`` logit matrix.
        UnsupportedLayerError: if torch.fx cannot trace the model.
    """
    check_model(model)
    if isinstance(example, torch.Tensor):
        if example.dim() < 2:
            raise InputShapeError(
                f"expected a batch [N, ...] with at least 2 dimensions, got shape "
                f"{tuple(example.shape)}"
            )
        input_shape = tuple(example.shape[1:])
    else:
        input_shape = tuple(int(s) for s in example)
    model_dtype = next((p.dtype for p in model.parameters()), torch.float32)
    if device is None:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
    model64 = copy.deepcopy(model).to(device=device, dtype=torch.float64).eval()
    if type(model64) in _MODULE_OPS:  # a bare layer: trace it as a one-layer model
        model64 = nn.Sequential(model64)
    try:
        gm = torch.fx.symbolic_trace(model64)
    except Exception as exc:  # torch.fx raises many exception types
        raise UnsupportedLayerError(
            type(model).__name__,
            "trace",
            why=f"torch.fx could not trace the model ({type(exc).__name__}: {exc}); "
            "data-dependent control flow is not supported",
        ) from exc
    probe = torch.zeros((2, *input_shape), dtype=torch.float64, device=device)
    try:
        with torch.no_grad(), contextlib.redirect_stderr(io.StringIO()):
            ShapeProp(gm).propagate(probe)
    except Exception as exc:
        raise InputShapeError(
            f"the model cannot run on inputs of shape [N, {', '.join(map(str, input_shape))}]: "
            f"{type(exc).__name__}: {exc}"
        ) from exc

    extra_ops = dict(leaf_modules or {})
    modules = dict(gm.named_modules())
    nodes: list[Node] = []
    names: set[str] = set()
    output_name = None
    for fx_node in gm.graph.nodes:
        meta = fx_node.meta.get("tensor_meta")
        if fx_node.op == "output":
            arg = fx_node.args[0]
            if not isinstance(arg, torch.fx.Node) or arg.name not in names:
                raise InputShapeError(
                    "the model must return a single logit tensor [N, C], not a tuple or dict"
                )
            output_name = arg.name
            continue
        if meta is None or not hasattr(meta, "shape"):
            continue  # non-tensor values such as x.size(0)
        shape = tuple(meta.shape)
        tensor_inputs = [a.name for a in fx_node.all_input_nodes if a.name in names]
        in_shapes = [
            tuple(a.meta["tensor_meta"].shape[1:])
            for a in fx_node.all_input_nodes
            if a.name in names
        ]
        params: dict[str, torch.Tensor] = {}
        attrs: dict[str, Any] = {}
        module = None
        if fx_node.op == "placeholder":
            op = "input"
            target = "input"
        elif fx_node.op == "call_module":
            module = modules[fx_node.target]
            op = _MODULE_OPS.get(type(module)) or extra_ops.get(type(module), "unknown")
            target = str(fx_node.target)
            if op != "unknown":
                try:
                    params, attrs = _module_params(op, module)
                except UnsupportedLayerError as exc:
                    raise UnsupportedLayerError(fx_node.name, op, why=str(exc)) from None
            else:
                attrs["module_type"] = type(module).__name__
        elif fx_node.op == "call_function":
            op = _FUNCTION_OPS.get(fx_node.target, "unknown")
            target = getattr(fx_node.target, "__name__", str(fx_node.target))
            attrs = _function_attrs(op, fx_node)
        elif fx_node.op == "call_method":
            op = _METHOD_OPS.get(str(fx_node.target), "unknown")
            target = str(fx_node.target)
            attrs = _function_attrs(op, fx_node)
        else:  # get_attr: a parameter used as a value
            op = "unknown"
            target = str(fx_node.target)
        if op == "add":
            # x + constant is an affine shift; x + y of two tensors is a residual merge
            if len(tensor_inputs) == 1:
                op = "identity"
                attrs["shift"] = True
        if op in ("flatten", "reshape"):
            op = "reshape" if op == "reshape" else "flatten"
        node = Node(
            name=fx_node.name,
            op=op,
            inputs=tensor_inputs,
            target=target,
            module=module,
            params=params,
            attrs=attrs,
            in_shapes=in_shapes,
            out_shape=shape[1:],
        )
        nodes.append(node)
        names.add(fx_node.name)
    assert output_name is not None
    graph = Graph(nodes, gm, input_shape, output_name, model_dtype)
    out = graph[output_name]
    if len(out.out_shape) != 1:
        raise InputShapeError(
            f"the model's output has shape [N, {', '.join(map(str, out.out_shape))}]; "
            "a classifier must return logits of shape [N, C]"
        )
    if graph.num_classes < 2:
        raise InputShapeError("the model has fewer than two classes: nothing to certify")
    return graph


def _function_attrs(op: str, fx_node: torch.fx.Node) -> dict[str, Any]:
    """Hyper-parameters of functional calls the rules need."""
    args, kwargs = fx_node.args, fx_node.kwargs
    attrs: dict[str, Any] = {}
    if op in ("softmax", "log_softmax"):
        attrs["dim"] = kwargs.get("dim", args[1] if len(args) > 1 else None)
    elif op == "cat":
        attrs["dim"] = kwargs.get("dim", args[1] if len(args) > 1 else 0)
    elif op == "softplus":
        attrs["beta"] = float(kwargs.get("beta", args[1] if len(args) > 1 else 1.0))
        attrs["threshold"] = float(kwargs.get("threshold", args[2] if len(args) > 2 else 20.0))
    elif op == "maxpool2d" or op == "avgpool2d":
        ks = _pair(kwargs.get("kernel_size", args[1]))
        stride = kwargs.get("stride", args[2] if len(args) > 2 else None)
        attrs.update(
            kernel_size=ks,
            stride=_pair(stride) if stride not in (None, [], ()) else ks,
            padding=_pair(kwargs.get("padding", args[3] if len(args) > 3 else 0)),
            ceil_mode=bool(kwargs.get("ceil_mode", False)),
        )
        if op == "maxpool2d":
            attrs["dilation"] = _pair(kwargs.get("dilation", args[4] if len(args) > 4 else 1))
        else:
            attrs["count_include_pad"] = bool(kwargs.get("count_include_pad", True))
            attrs["divisor_override"] = kwargs.get("divisor_override")
    elif op == "add":
        alpha = kwargs.get("alpha", 1)
        if alpha != 1:
            attrs["alpha"] = alpha
    return attrs


def numel(shape: tuple[int, ...]) -> int:
    """Number of entries of a tensor of this shape."""
    return int(math.prod(shape))
