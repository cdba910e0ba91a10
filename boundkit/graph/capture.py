"""Capture an ``nn.Module`` as a :class:`~boundkit.graph.graph.Graph` of typed nodes.

The model is traced with ``torch.fx``; shapes are propagated with an example batch; every fx
node that computes a per-sample tensor becomes a :class:`Node` whose ``op`` names its kind
and whose ``params``/``attrs`` hold *everything* the node computes with
(:mod:`boundkit.graph.ops` evaluates a node from these fields alone).

Capture says no instead of guessing. Every argument of a supported call is read with its
real semantics (positional or keyword, defaults as torch has them); a call boundkit cannot
read exactly is refused with an :class:`~boundkit.errors.UnsupportedLayerError` naming the
node and the reason:

* forward hooks and pre-hooks (on any module, or global), a ``forward`` assigned to a module
  instance, a model class overriding ``__call__``: code the trace never sees;
* a subclass of a known layer that defines methods of its own (it is traced through, so its
  code is seen, or refused where it calls something unsupported);
* functional calls whose result depends on a training flag (``F.dropout`` with its default
  ``training=True``); in-place operations whose input is read again afterwards;
* operations that mix or drop samples of the batch (a view folding the batch, ``cat`` along
  dimension 0), ``Linear`` on an input that is not a vector, ``Softplus`` with
  ``beta <= 0``, max pooling returning indices.

Unknown operations are kept as ``op="unknown"`` so that a bound method refuses them by name
(or uses a rule registered for them). What capture cannot see at all (an in-place update
visible only through aliasing, a value baked into the trace) is caught by the run-time
fidelity check (:mod:`boundkit.graph.fidelity`).
"""

from __future__ import annotations

import contextlib
import copy
import io
import math
import operator
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F
from torch.fx.passes.shape_prop import ShapeProp

from boundkit.errors import (
    InputShapeError,
    ModelError,
    UnsupportedLayerError,
)
from boundkit.graph.fingerprint import model_fingerprint
from boundkit.graph.graph import Graph, Node
from boundkit.graph.ops import per_sample_constant
from boundkit.validate import check_model

_MODULE_OPS: dict[type[nn.Module], str] = {
    nn.Linear: "linear",
    nn.Conv2d: "conv2d",
    nn.ConvTranspose2d: "conv_transpose2d",
    nn.Upsample: "resize",
    nn.LayerNorm: "layernorm",
    nn.MaxPool2d: "maxpool2d",
    nn.AvgPool2d: "avgpool2d",
    nn.AdaptiveAvgPool2d: "adaptive_avgpool2d",
    nn.LPPool2d: "lppool2d",
    nn.BatchNorm1d: "batchnorm",
    nn.BatchNorm2d: "batchnorm",
    nn.LocalResponseNorm: "lrn",
    nn.ReLU: "relu",
    nn.LeakyReLU: "leaky_relu",
    nn.Tanh: "tanh",
    nn.Sigmoid: "sigmoid",
    nn.Softplus: "softplus",
    nn.GELU: "gelu",
    nn.SiLU: "silu",
    nn.ELU: "elu",
    nn.Hardtanh: "hardtanh",
    nn.Flatten: "flatten",
    nn.Dropout: "identity",
    nn.Dropout1d: "identity",
    nn.Dropout2d: "identity",
    nn.Identity: "identity",
    nn.Softmax: "softmax",
    nn.LogSoftmax: "log_softmax",
}

# methods a subclass of a known layer may define without changing what the layer computes
_HARMLESS_METHODS = frozenset(
    {"__init__", "extra_repr", "__repr__", "reset_parameters", "__setstate__", "_get_name"}
)

#: the batch size of the shape-propagation probe (odd, so that a view hard-coding a batch
#: of 1 or 2 is caught)
PROBE_BATCH = 3


@dataclass(frozen=True)
class _Sig:
    """A call's parameters in order, with torch's defaults (``_REQUIRED`` when none)."""

    op: str
    names: tuple[str, ...]
    defaults: tuple[Any, ...]
    inplace: bool = False  # the call itself is in place (``relu_``, ``add_``)

    def bind(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> dict[str, Any]:
        if len(args) > len(self.names):
            raise ValueError(f"{len(args)} positional arguments, at most {len(self.names)}")
        out = dict(zip(self.names, self.defaults))
        out.update(zip(self.names, args))
        for k, v in kwargs.items():
            if k not in out:
                raise ValueError(f"unknown keyword argument {k!r}")
            out[k] = v
        missing = [k for k, v in out.items() if v is _REQUIRED]
        if missing:
            raise ValueError(f"missing argument(s) {missing}")
        return out


class _Required:
    def __repr__(self) -> str:
        return "<required>"


_REQUIRED = _Required()
_R = _REQUIRED


def _sig(op: str, spec: str, *defaults: Any, inplace: bool = False) -> _Sig:
    names = tuple(spec.split())
    pad = (_R,) * (len(names) - len(defaults))
    return _Sig(op, names, pad + tuple(defaults), inplace)


_POOL_MAX = "input kernel_size stride padding dilation ceil_mode return_indices"
_POOL_AVG = "input kernel_size stride padding ceil_mode count_include_pad divisor_override"
_DROPOUT = "input p training inplace"
_RESIZE = "input size scale_factor mode align_corners recompute_scale_factor antialias"
_CONV = "input weight bias stride padding dilation groups"
_CONV_T = "input weight bias stride padding output_padding groups dilation"

_FUNCTION_SIGS: dict[Any, _Sig] = {
    F.relu: _sig("relu", "input inplace", False),
    torch.relu: _sig("relu", "input"),
    torch.relu_: _sig("relu", "input", inplace=True),
    F.relu_: _sig("relu", "input", inplace=True),
    F.leaky_relu: _sig("leaky_relu", "input negative_slope inplace", 0.01, False),
    torch.tanh: _sig("tanh", "input"),
    F.tanh: _sig("tanh", "input"),
    torch.sigmoid: _sig("sigmoid", "input"),
    F.sigmoid: _sig("sigmoid", "input"),
    F.softplus: _sig("softplus", "input beta threshold", 1.0, 20.0),
    torch.flatten: _sig("flatten", "input start_dim end_dim", 0, -1),
    F.gelu: _sig("gelu", "input approximate", "none"),
    F.silu: _sig("silu", "input inplace", False),
    F.elu: _sig("elu", "input alpha inplace", 1.0, False),
    F.hardtanh: _sig("hardtanh", "input min_val max_val inplace", -1.0, 1.0, False),
    F.relu6: _sig("relu6", "input inplace", False),
    F.interpolate: _sig("resize", _RESIZE, None, None, "nearest", None, None, False),
    F.upsample: _sig("resize", _RESIZE, None, None, "nearest", None, None, False),
    F.layer_norm: _sig("layernorm", "input normalized_shape weight bias eps", None, None, 1e-5),
    torch.clamp: _sig("clamp", "input min max", None, None),
    torch.clip: _sig("clamp", "input min max", None, None),
    F.dropout: _sig("identity", _DROPOUT, 0.5, True, False),
    F.dropout1d: _sig("identity", _DROPOUT, 0.5, True, False),
    F.dropout2d: _sig("identity", _DROPOUT, 0.5, True, False),
    F.softmax: _sig("softmax", "input dim _stacklevel dtype", None, 3, None),
    torch.softmax: _sig("softmax", "input dim dtype", None),
    F.log_softmax: _sig("log_softmax", "input dim _stacklevel dtype", None, 3, None),
    torch.log_softmax: _sig("log_softmax", "input dim dtype", None),
    operator.add: _sig("add", "input other"),
    torch.add: _sig("add", "input other alpha", 1),
    operator.sub: _sig("sub", "input other"),
    torch.sub: _sig("sub", "input other alpha", 1),
    torch.subtract: _sig("sub", "input other alpha", 1),
    operator.mul: _sig("mul", "input other"),
    torch.mul: _sig("mul", "input other"),
    torch.multiply: _sig("mul", "input other"),
    operator.truediv: _sig("div", "input other"),
    torch.div: _sig("div", "input other rounding_mode", None),
    torch.divide: _sig("div", "input other rounding_mode", None),
    torch.true_divide: _sig("div", "input other"),
    torch.cat: _sig("cat", "tensors dim", 0),
    torch.concat: _sig("cat", "tensors dim", 0),
    torch.concatenate: _sig("cat", "tensors dim", 0),
    F.max_pool2d: _sig("maxpool2d", _POOL_MAX, None, 0, 1, False, False),
    F.avg_pool2d: _sig("avgpool2d", _POOL_AVG, None, 0, False, True, None),
    F.adaptive_avg_pool2d: _sig("adaptive_avgpool2d", "input output_size"),
    torch.mean: _sig("mean", "input dim keepdim dtype", None, False, None),
    F.linear: _sig("linear", "input weight bias", None),
    F.conv2d: _sig("conv2d", _CONV, None, 1, 0, 1, 1),
    torch.conv2d: _sig("conv2d", _CONV, None, 1, 0, 1, 1),
    F.conv_transpose2d: _sig("conv_transpose2d", _CONV_T, None, 1, 0, 0, 1, 1),
    torch.conv_transpose2d: _sig("conv_transpose2d", _CONV_T, None, 1, 0, 0, 1, 1),
}

_METHOD_SIGS: dict[str, _Sig] = {
    "relu": _sig("relu", "self"),
    "relu_": _sig("relu", "self", inplace=True),
    "tanh": _sig("tanh", "self"),
    "tanh_": _sig("tanh", "self", inplace=True),
    "sigmoid": _sig("sigmoid", "self"),
    "sigmoid_": _sig("sigmoid", "self", inplace=True),
    "flatten": _sig("flatten", "self start_dim end_dim", 0, -1),
    "softmax": _sig("softmax", "self dim dtype", None),
    "log_softmax": _sig("log_softmax", "self dim dtype", None),
    "add": _sig("add", "self other alpha", 1),
    "add_": _sig("add", "self other alpha", 1, inplace=True),
    "sub": _sig("sub", "self other alpha", 1),
    "sub_": _sig("sub", "self other alpha", 1, inplace=True),
    "mul": _sig("mul", "self other"),
    "mul_": _sig("mul", "self other", inplace=True),
    "multiply": _sig("mul", "self other"),
    "div": _sig("div", "self other rounding_mode", None),
    "div_": _sig("div", "self other rounding_mode", None, inplace=True),
    "divide": _sig("div", "self other rounding_mode", None),
    "true_divide": _sig("div", "self other"),
    "contiguous": _sig("identity", "self memory_format", None),
    "clone": _sig("identity", "self memory_format", None),
    "mean": _sig("mean", "self dim keepdim dtype", None, False, None),
    "clamp": _sig("clamp", "self min max", None, None),
    "clip": _sig("clamp", "self min max", None, None),
}
_RESHAPE_METHODS = frozenset({"view", "reshape"})


def check_hidden_code(model: nn.Module) -> None:
    """Refuse code that runs when the model is called but that a trace does not see.

    Raises:
        UnsupportedLayerError: a forward hook or pre-hook (on a module or global), a
            ``forward`` assigned to a module instance, or a model class whose ``__call__``
            is not ``nn.Module``'s.
    """
    from torch.nn.modules import module as module_mod

    if isinstance(model, torch.jit.ScriptModule):
        raise UnsupportedLayerError(
            type(model).__name__, "torchscript",
            why="a TorchScript module cannot be traced by torch.fx: certify the nn.Module it "
            "was scripted from (attacks run on TorchScript)",
        )
    for kind in ("_global_forward_hooks", "_global_forward_pre_hooks"):
        if getattr(module_mod, kind, None):
            raise UnsupportedLayerError(
                "<global>", "hook",
                why=f"a global forward hook is registered ({kind}); its effect on the "
                "outputs is invisible to a trace: remove it before certifying",
            )
    # a GraphModule's class wraps __call__ only to report errors in the generated code
    if type(model).__call__ is not nn.Module.__call__ and not isinstance(
        model, torch.fx.GraphModule
    ):
        raise UnsupportedLayerError(
            type(model).__name__, "__call__",
            why="the model class overrides __call__, which a trace of forward does not see",
        )
    for name, m in model.named_modules():
        where = name or type(model).__name__
        if m._forward_hooks or m._forward_pre_hooks:
            raise UnsupportedLayerError(
                where, type(m).__name__,
                why="the module has a forward hook or pre-hook, which can change its output "
                "invisibly to a trace: remove it (handle.remove()) before certifying",
            )
        if "forward" in m.__dict__:
            raise UnsupportedLayerError(
                where, type(m).__name__,
                why="a forward function is assigned to this module instance; it is not the "
                "code of the layer's class: define a subclass instead",
            )


def module_op(m: nn.Module, leaf_modules: Mapping[type[nn.Module], str]) -> str | None:
    """The op kind of a module boundkit treats as one node, or ``None`` to trace through.

    ``leaf_modules`` are user classes with a rule of their own (captured as one node).
    A subclass of a known layer counts as that layer only when it defines no method that
    could change what the layer computes.
    """
    t = type(m)
    if t in leaf_modules:
        return leaf_modules[t]
    if t in _MODULE_OPS:
        return _MODULE_OPS[t]
    for base, op in {**_MODULE_OPS, **_layer_ops()}.items():
        if isinstance(m, base):
            for cls in t.__mro__:
                if cls is base:
                    return op
                own = {k for k, v in vars(cls).items() if callable(v) or isinstance(v, property)}
                if own - _HARMLESS_METHODS:
                    return None
    return None


def _layer_ops() -> dict[type[nn.Module], str]:
    """boundkit's own layers (:mod:`boundkit.models.layers`), imported when first asked
    (the package is loaded by then)."""
    from boundkit.models.layers import GroupSort

    return {GroupSort: "groupsort"}


class _Tracer(torch.fx.Tracer):
    """Leaves are exactly the modules boundkit knows (or the user registered)."""

    def __init__(self, leaf_modules: Mapping[type[nn.Module], str]) -> None:
        super().__init__()
        self.leaf_modules = leaf_modules

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if module_op(m, self.leaf_modules) is not None:
            return True
        # other torch.nn layers stay one (unknown) node, named by their class; containers
        # and the user's own classes are traced through
        containers = (nn.Sequential, nn.ModuleList, nn.ModuleDict)
        return type(m).__module__.startswith("torch.nn") and not isinstance(m, containers)


def _pair(v: Any) -> tuple[int, int]:
    if isinstance(v, (tuple, list)):
        if len(v) not in (1, 2):
            raise ValueError(f"expected one or two integers, got {v!r}")
        return (int(v[0]), int(v[-1]))
    return (int(v), int(v))


def _module_params(node: str, op: str, m: nn.Module) -> tuple[dict[str, torch.Tensor], dict]:
    """Float64 parameters and hyper-parameters of a module node."""
    p: dict[str, torch.Tensor] = {}
    a: dict[str, Any] = {}

    def refuse(why: str) -> UnsupportedLayerError:
        return UnsupportedLayerError(node, op, why=why)

    if op == "linear":
        p["weight"] = m.weight.detach().double()
        if m.bias is not None:
            p["bias"] = m.bias.detach().double()
    elif op == "conv2d":
        if isinstance(m.padding, str):
            raise refuse(f"string padding {m.padding!r}: use explicit integers")
        if m.padding_mode != "zeros":
            raise refuse(f"padding_mode={m.padding_mode!r}; only zero padding is supported")
        p["weight"] = m.weight.detach().double()
        if m.bias is not None:
            p["bias"] = m.bias.detach().double()
        a.update(
            stride=_pair(m.stride), padding=_pair(m.padding), dilation=_pair(m.dilation),
            groups=int(m.groups), kernel_size=_pair(m.kernel_size),
        )
    elif op == "maxpool2d":
        if m.return_indices:
            raise refuse("return_indices=True")
        a.update(_pool_attrs(op, m.kernel_size, m.stride, m.padding, m.ceil_mode))
        a["dilation"] = _pair(m.dilation)
    elif op == "avgpool2d":
        a.update(_pool_attrs(op, m.kernel_size, m.stride, m.padding, m.ceil_mode))
        a.update(count_include_pad=bool(m.count_include_pad), divisor_override=m.divisor_override)
    elif op == "lppool2d":
        a.update(_pool_attrs(op, m.kernel_size, m.stride, 0, m.ceil_mode))
        a["p"] = float(m.norm_type)
    elif op == "batchnorm":
        if m.running_mean is None or m.running_var is None:
            raise refuse("track_running_stats=False: eval statistics are unknown")
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
        a.update(_softplus_attrs(node, m.beta, m.threshold))
    elif op == "leaky_relu":
        a["negative_slope"] = float(m.negative_slope)
    elif op in ("gelu", "elu", "hardtanh"):
        a.update(activation_attrs(node, op, vars(m)))
    elif op == "conv_transpose2d":
        if isinstance(m.padding, str) or m.padding_mode != "zeros":
            raise refuse(f"padding={m.padding!r}, padding_mode={m.padding_mode!r}: only "
                         "explicit zero padding is supported")
        p["weight"] = m.weight.detach().double()
        if m.bias is not None:
            p["bias"] = m.bias.detach().double()
        a.update(
            stride=_pair(m.stride), padding=_pair(m.padding), dilation=_pair(m.dilation),
            output_padding=_pair(m.output_padding), groups=int(m.groups),
        )
    elif op == "resize":
        a.update(resize_attrs(node, {
            "size": m.size, "scale_factor": m.scale_factor, "mode": m.mode,
            "align_corners": m.align_corners,
            "recompute_scale_factor": m.recompute_scale_factor, "antialias": False}))
    elif op == "layernorm":
        shape = tuple(int(d) for d in m.normalized_shape)
        w = m.weight if m.weight is not None else torch.ones(shape)
        b = m.bias if m.bias is not None else torch.zeros(shape)
        p["weight"], p["bias"] = w.detach().double(), b.detach().double()
        a.update(normalized_shape=shape, eps=_positive_eps(node, m.eps))
    elif op == "groupsort":
        if m.layout not in ("consecutive", "strided") or int(m.group_size) < 1:
            raise refuse(f"group_size={m.group_size!r}, layout={m.layout!r}")
        a.update(group_size=int(m.group_size), layout=str(m.layout), dim=int(m.dim))
    elif op == "flatten":
        a.update(start_dim=int(m.start_dim), end_dim=int(m.end_dim))
    elif op in ("softmax", "log_softmax"):
        a["dim"] = m.dim
    return p, a


def _pool_attrs(op: str, kernel: Any, stride: Any, padding: Any, ceil: Any) -> dict[str, Any]:
    ks = _pair(kernel)
    no_stride = stride is None or (isinstance(stride, (list, tuple)) and len(stride) == 0)
    return dict(
        kernel_size=ks,
        stride=ks if no_stride else _pair(stride),
        padding=_pair(padding),
        ceil_mode=bool(ceil),
    )


def activation_attrs(node: str, op: str, a: Mapping[str, Any]) -> dict[str, Any]:
    """The parameters of GELU (``approximate``), ELU (``alpha``) and Hardtanh
    (``min_val``, ``max_val``), checked: what boundkit has a proven rule for."""
    def refuse(why: str) -> UnsupportedLayerError:
        return UnsupportedLayerError(node, op, why=why)

    if op == "gelu":
        if a["approximate"] not in ("none", "tanh"):
            raise refuse(f"approximate={a['approximate']!r}")
        return {"approximate": a["approximate"]}
    if op == "elu":
        alpha = a["alpha"]
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(
                alpha):
            raise refuse(f"alpha={alpha!r}: a finite number is supported")
        return {"alpha": float(alpha)}
    lo, hi = a["min_val"], a["max_val"]
    for v in (lo, hi):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise refuse(f"min_val={lo!r}, max_val={hi!r}: finite numbers are supported")
    if lo > hi:
        raise refuse(f"min_val={lo!r} > max_val={hi!r}")
    return {"min_val": float(lo), "max_val": float(hi)}


#: resize modes whose weights are all non-negative (``bicubic`` has negative lobes)
RESIZE_MODES = frozenset({"nearest", "nearest-exact", "linear", "bilinear", "trilinear", "area"})


def resize_attrs(node: str, a: Mapping[str, Any]) -> dict[str, Any]:
    """``F.interpolate``'s arguments, kept as given (the evaluation calls it with them), for
    the modes with non-negative weights and without antialiasing."""
    if a["mode"] not in RESIZE_MODES:
        raise UnsupportedLayerError(
            node, "resize", why=f"mode={a['mode']!r}: supported modes are "
            f"{sorted(RESIZE_MODES)} (non-negative interpolation weights)")
    if a["antialias"]:
        raise UnsupportedLayerError(node, "resize", why="antialias=True")
    for k in ("size", "scale_factor"):
        if isinstance(a[k], torch.fx.Node):
            raise UnsupportedLayerError(node, "resize", why=f"{k} computed in forward")
    size, sf = a["size"], a["scale_factor"]
    return {"size": tuple(size) if isinstance(size, list) else size,
            "scale_factor": tuple(sf) if isinstance(sf, list) else sf, "mode": a["mode"],
            "align_corners": a["align_corners"],
            "recompute_scale_factor": a["recompute_scale_factor"]}


def _positive_eps(node: str, eps: Any) -> float:
    eps = float(eps)
    if not (eps > 0 and math.isfinite(eps)):
        raise UnsupportedLayerError(node, "layernorm", why=f"eps={eps!r}: must be positive")
    return eps


def _softplus_attrs(node: str, beta: Any, threshold: Any) -> dict[str, float]:
    beta, threshold = float(beta), float(threshold)
    if not (beta > 0 and math.isfinite(beta)):
        raise UnsupportedLayerError(
            node, "softplus",
            why=f"beta={beta:g}: only a finite positive beta is supported (with beta <= 0 "
            "torch's threshold switch makes the function discontinuous)",
        )
    if not math.isfinite(threshold):
        raise UnsupportedLayerError(node, "softplus", why=f"threshold={threshold:g}")
    return {"beta": beta, "threshold": threshold}


class _Capture:
    """One capture: the traced module, its shapes, and the nodes built so far."""

    def __init__(self, gm: torch.fx.GraphModule, leaf_modules: Mapping[type, str]) -> None:
        self.gm = gm
        self.leaf_modules = leaf_modules
        self.modules = dict(gm.named_modules())
        self.nodes: list[Node] = []
        self.names: set[str] = set()  # fx nodes that are graph nodes (per-sample tensors)
        self.by_name: dict[str, Node] = {}
        self.order = {n: i for i, n in enumerate(gm.graph.nodes)}

    # ------------------------------------------------------------------ helpers
    def tensor_inputs(self, values: list[Any]) -> list[str]:
        """Names of the per-sample tensor operands among ``values``, in order, repeats kept."""
        return [v.name for v in values if isinstance(v, torch.fx.Node) and v.name in self.names]

    def shape(self, n: torch.fx.Node) -> tuple[int, ...]:
        return tuple(n.meta["tensor_meta"].shape)

    def constant(self, fx_node: torch.fx.Node, v: Any) -> torch.Tensor:
        """A constant operand as a float64 tensor: a number, a module attribute, or a value
        computed inside ``forward`` from those alone (``1 / self.std``)."""
        if isinstance(v, bool) or v is None:
            raise UnsupportedLayerError(fx_node.name, str(fx_node.target), why=f"operand {v!r}")
        if isinstance(v, (int, float)):
            return torch.tensor(float(v), dtype=torch.float64)
        if isinstance(v, torch.fx.Node) and v.name not in self.names:
            t = self.constant_value(fx_node, v)
            if isinstance(t, (int, float)) and not isinstance(t, bool):
                return torch.tensor(float(t), dtype=torch.float64)
            if isinstance(t, torch.Tensor) and t.is_floating_point():
                return t.detach().to(torch.float64).clone()
        raise UnsupportedLayerError(
            fx_node.name, str(fx_node.target),
            why="an operand is neither the model's data nor a floating-point constant (a "
            "number, a module attribute, or a value computed from those alone)",
        )

    def constant_value(self, fx_node: torch.fx.Node, v: Any) -> Any:
        """The value of ``v``, an fx node computed from module attributes and numbers alone
        (evaluated once, in the float64 copy of the model); random draws are refused."""
        if not isinstance(v, torch.fx.Node):
            return v
        cache = self.__dict__.setdefault("_constants", {})
        if v.name in cache:
            return cache[v.name]
        if v.name in self.names or v.op == "placeholder":
            raise UnsupportedLayerError(fx_node.name, str(fx_node.target),
                                        why="an operand depends on the input")
        target = str(getattr(v.target, "__name__", v.target))
        if v.op == "get_attr":
            t: Any = self.gm
            for part in str(v.target).split("."):
                t = getattr(t, part)
        elif v.op in ("call_function", "call_method") and not any(
                w in target for w in ("rand", "normal", "bernoulli", "multinomial", "dropout",
                                      "poisson", "empty")):
            args = torch.fx.node.map_arg(v.args, lambda n: self.constant_value(fx_node, n))
            kwargs = torch.fx.node.map_arg(v.kwargs, lambda n: self.constant_value(fx_node, n))
            with torch.no_grad():
                if v.op == "call_function":
                    t = v.target(*args, **kwargs)  # type: ignore[operator]
                else:
                    t = getattr(args[0], str(v.target))(*args[1:], **kwargs)
        else:
            raise UnsupportedLayerError(
                fx_node.name, str(fx_node.target),
                why=f"an operand is computed by {target!r} without the input; only numbers, "
                "module attributes and deterministic functions of them are constants",
            )
        cache[v.name] = t
        return t

    def sample_constant(self, fx_node: torch.fx.Node, op: str, c: torch.Tensor,
                        out: tuple[int, ...]) -> torch.Tensor:
        """A constant operand as it acts on one sample ``[*out]``: leading axes of size 1
        (a batch axis of 1, as in buffers shaped ``(1, C, 1, 1)``) dropped, so that it
        broadcasts against ``out`` (torch's rules); refused when it differs between samples."""
        shape = list(c.shape)
        c = per_sample_constant(c, len(out))
        try:
            ok = c.dim() <= len(out) and tuple(torch.broadcast_shapes(c.shape, out)) == out
        except RuntimeError:
            ok = False
        if not ok:
            raise UnsupportedLayerError(
                fx_node.name, op,
                why=f"a constant of shape {shape} does not broadcast to one sample's shape "
                f"{list(out)} (a constant with a batch axis must have size 1 there)",
            )
        return c

    def refuse_inplace_alias(self, fx_node: torch.fx.Node, target: torch.fx.Node) -> None:
        """An in-place op on ``target`` is fine only if nothing reads ``target`` later."""
        at = self.order[fx_node]
        later = [u for u in target.users if u is not fx_node and self.order[u] > at]
        if later:
            raise UnsupportedLayerError(
                fx_node.name, str(fx_node.target),
                why=f"an in-place operation on {target.name!r}, which {later[0].name!r} reads "
                "afterwards: the trace would read the value before the update",
            )

    # ------------------------------------------------------------------ nodes
    def add_node(self, fx_node: torch.fx.Node, op: str, inputs: list[str], **kw: Any) -> None:
        shape = self.shape(fx_node)
        if len(shape) < 2 or shape[0] != PROBE_BATCH:
            raise UnsupportedLayerError(
                fx_node.name, op,
                why=f"it changes the batch dimension (a batch of {PROBE_BATCH} became shape "
                f"{list(shape)}): operations must act on each sample separately",
            )
        in_shapes = [self._sample_shape(i) for i in inputs]
        node = Node(
            name=fx_node.name, op=op, inputs=inputs,
            target=kw.pop("target", str(getattr(fx_node.target, "__name__", fx_node.target))),
            in_shapes=in_shapes, out_shape=shape[1:], **kw,
        )
        self.nodes.append(node)
        self.names.add(fx_node.name)
        self.by_name[node.name] = node

    def _sample_shape(self, name: str) -> tuple[int, ...]:
        return self.by_name[name].out_shape

    def placeholder(self, fx_node: torch.fx.Node) -> None:
        self.add_node(fx_node, "input", [], target="input")

    def call_module(self, fx_node: torch.fx.Node) -> None:
        m = self.modules[str(fx_node.target)]
        op = module_op(m, self.leaf_modules) or "unknown"
        inputs = self.tensor_inputs(list(fx_node.args) + list(fx_node.kwargs.values()))
        params: dict[str, torch.Tensor] = {}
        attrs: dict[str, Any] = {}
        if op == "unknown":
            attrs["module_type"] = type(m).__name__
        elif type(m) in self.leaf_modules:
            pass  # a user's own layer: its module is its semantics
        else:
            if len(fx_node.args) != 1 or fx_node.kwargs or len(inputs) != 1:
                raise UnsupportedLayerError(
                    fx_node.name, op, why="a layer must be called on exactly one tensor"
                )
            params, attrs = _module_params(fx_node.name, op, m)
            if getattr(m, "inplace", False):
                self.refuse_inplace_alias(fx_node, fx_node.args[0])
        self.add_node(
            fx_node, op, inputs, target=str(fx_node.target), module=m, params=params, attrs=attrs
        )
        self.check_input_rank(self.nodes[-1])
        self.resolve_output_size(self.nodes[-1])

    @staticmethod
    def resolve_output_size(node: Node) -> None:
        """An adaptive pooling's ``output_size`` as torch resolved it (an int, a pair, a
        ``None`` entry keeping the input's size): read off the propagated output shape; a
        GroupSort's ``dim`` as an index of the batched tensor (only the features' axis, 1,
        is supported)."""
        if node.op == "adaptive_avgpool2d":
            node.attrs["output_size"] = tuple(int(s) for s in node.out_shape[-2:])
        if node.op == "groupsort":
            rank = len(node.in_shapes[0]) + 1
            dim = node.attrs["dim"]
            dim = dim + rank if dim < 0 else dim
            if dim != 1:
                raise UnsupportedLayerError(
                    node.name, "groupsort",
                    why=f"dim={node.attrs['dim']}: groups along the features' axis (dim=1) "
                    "are supported",
                )
            node.attrs["dim"] = 1

    def check_input_rank(self, node: Node) -> None:
        """Layers whose rules assume a vector or an image get exactly that."""
        need = {"linear": (1,), "conv2d": (3,), "maxpool2d": (3,), "avgpool2d": (3,),
                "lppool2d": (3,), "lrn": (3,), "batchnorm": (1, 2, 3),
                "adaptive_avgpool2d": (3,), "conv_transpose2d": (3,)}.get(node.op)
        if need is None or not node.in_shapes:
            return
        rank = len(node.in_shapes[0])
        if rank not in need:
            raise UnsupportedLayerError(
                node.name, node.op,
                why=f"its input has shape [N, {', '.join(map(str, node.in_shapes[0]))}]; "
                f"boundkit supports {node.op} on inputs of rank {' or '.join(map(str, need))} "
                "(besides the batch)",
            )

    def call_function(self, fx_node: torch.fx.Node, sig: _Sig | None) -> None:
        if sig is None:
            inputs = self.tensor_inputs(list(fx_node.all_input_nodes))
            self.add_node(fx_node, "unknown", inputs)
            return
        try:
            a = sig.bind(tuple(fx_node.args), fx_node.kwargs)
        except ValueError as exc:
            raise UnsupportedLayerError(fx_node.name, sig.op, why=str(exc)) from None
        first = a.get("input", a.get("self"))
        if sig.inplace or a.get("inplace"):
            if isinstance(first, torch.fx.Node):
                self.refuse_inplace_alias(fx_node, first)
        op = sig.op
        attrs: dict[str, Any] = {}
        if op in ("add", "sub"):
            self.arith(fx_node, op, a)
            return
        if op in ("mul", "div"):
            self.scale(fx_node, op, a)
            return
        if op == "cat":
            tensors = a["tensors"]
            if not isinstance(tensors, (list, tuple)):
                raise UnsupportedLayerError(fx_node.name, op, why="tensors is not a list")
            inputs = self.tensor_inputs(list(tensors))
            if len(inputs) != len(tensors):
                raise UnsupportedLayerError(
                    fx_node.name, op, why="a concatenated operand is a constant tensor"
                )
            rank = len(self.shape(fx_node))
            dim = int(a["dim"])
            dim = dim + rank if dim < 0 else dim
            if dim == 0:
                raise UnsupportedLayerError(
                    fx_node.name, op, why="it concatenates along the batch dimension"
                )
            self.add_node(fx_node, op, inputs, attrs={"dim": dim})
            return
        inputs = self.tensor_inputs([first])
        if len(inputs) != 1:
            raise UnsupportedLayerError(fx_node.name, op, why="its input is not the model's data")
        if op == "identity" and "training" in a:  # dropout
            if a["training"] is not False and a["p"] != 0:
                raise UnsupportedLayerError(
                    fx_node.name, str(fx_node.target),
                    why=f"training={a['training']!r}: dropout is applied at evaluation too "
                    "(pass training=self.training)",
                )
        elif op == "softplus":
            attrs = _softplus_attrs(fx_node.name, a["beta"], a["threshold"])
        elif op == "leaky_relu":
            attrs = {"negative_slope": float(a["negative_slope"])}
        elif op == "relu6":
            op, attrs = "hardtanh", {"min_val": 0.0, "max_val": 6.0}
        elif op == "clamp":
            if a["min"] is None or a["max"] is None:
                inputs = self.tensor_inputs(list(fx_node.all_input_nodes))
                self.add_node(fx_node, "unknown", inputs)
                return
            op, attrs = "hardtanh", activation_attrs(
                fx_node.name, "hardtanh", {"min_val": a["min"], "max_val": a["max"]})
        elif op in ("gelu", "elu", "hardtanh"):
            attrs = activation_attrs(fx_node.name, op, a)
        elif op == "resize":
            attrs = resize_attrs(fx_node.name, a)
        elif op == "layernorm":
            self.layer_norm(fx_node, a, inputs)
            return
        elif op in ("linear", "conv2d", "conv_transpose2d"):
            self.weighted(fx_node, op, a, inputs)
            return
        elif op in ("softmax", "log_softmax"):
            attrs = {"dim": a["dim"]}
        elif op == "flatten":
            attrs = {"start_dim": int(a["start_dim"]), "end_dim": int(a["end_dim"])}
        elif op == "mean":
            attrs = self.mean_attrs(fx_node, a)
        elif op == "maxpool2d":
            if a["return_indices"]:
                raise UnsupportedLayerError(fx_node.name, op, why="return_indices=True")
            attrs = _pool_attrs(op, a["kernel_size"], a["stride"], a["padding"], a["ceil_mode"])
            attrs["dilation"] = _pair(a["dilation"])
        elif op == "avgpool2d":
            attrs = _pool_attrs(op, a["kernel_size"], a["stride"], a["padding"], a["ceil_mode"])
            attrs.update(
                count_include_pad=bool(a["count_include_pad"]),
                divisor_override=a["divisor_override"],
            )
        self.add_node(fx_node, op, inputs, attrs=attrs)
        self.check_input_rank(self.nodes[-1])
        self.resolve_output_size(self.nodes[-1])

    def layer_norm(self, fx_node: torch.fx.Node, a: dict[str, Any], inputs: list[str]) -> None:
        """``F.layer_norm`` with constant (module attribute or absent) weight and bias."""
        ns = a["normalized_shape"]
        shape = (int(ns),) if isinstance(ns, int) else tuple(int(d) for d in ns)
        params = {}
        for k, default in (("weight", 1.0), ("bias", 0.0)):
            v = a[k]
            t = torch.full(shape, default, dtype=torch.float64) if v is None else (
                self.constant(fx_node, v))
            params[k] = t.expand(shape).clone()
        attrs = {"normalized_shape": shape, "eps": _positive_eps(fx_node.name, a["eps"])}
        self.add_node(fx_node, "layernorm", inputs, params=params, attrs=attrs)

    def weighted(self, fx_node: torch.fx.Node, op: str, a: dict[str, Any],
                 inputs: list[str]) -> None:
        """``F.linear``, ``F.conv2d`` and ``F.conv_transpose2d`` (and ``torch.conv2d``,
        ``torch.conv_transpose2d``) with a constant weight and bias (module attributes, or
        values computed from them alone; a weight shared with a layer is read as it is): the
        same node, ``params`` and ``attrs`` as the module form."""
        def refuse(why: str) -> UnsupportedLayerError:
            return UnsupportedLayerError(fx_node.name, op, why=why)

        for k in ("weight", "bias"):
            v = a[k]
            if isinstance(v, torch.fx.Node) and v.name in self.names:
                raise refuse(f"its {k} depends on the input (not affine)")
        params = {"weight": self.constant(fx_node, a["weight"])}
        if a["bias"] is not None:
            params["bias"] = self.constant(fx_node, a["bias"])
        attrs: dict[str, Any] = {}
        if op != "linear":
            for k in ("stride", "padding", "dilation", "groups", "output_padding"):
                if isinstance(a.get(k), (torch.fx.Node, str)):
                    raise refuse(f"{k}={a[k]!r}: explicit integers are supported")
            if params["weight"].dim() != 4:
                raise refuse(f"a weight of shape {list(params['weight'].shape)}; a 2-d "
                             "convolution's weight has 4 dimensions")
            attrs = dict(stride=_pair(a["stride"]), padding=_pair(a["padding"]),
                         dilation=_pair(a["dilation"]), groups=int(a["groups"]))
            if op == "conv2d":
                attrs["kernel_size"] = tuple(int(k) for k in params["weight"].shape[2:])
            else:
                attrs["output_padding"] = _pair(a["output_padding"])
        self.add_node(fx_node, op, inputs, params=params, attrs=attrs)
        self.check_input_rank(self.nodes[-1])

    def mean_attrs(self, fx_node: torch.fx.Node, a: dict[str, Any]) -> dict[str, Any]:
        """``torch.mean(input, dim, keepdim)``: the reduced dimensions as non-negative
        indices of the batched tensor (never the batch dimension), and ``keepdim``."""
        src = a.get("input", a.get("self"))
        rank = len(self.shape(src)) if isinstance(src, torch.fx.Node) else 0
        dim = a["dim"]
        if a["dtype"] is not None:
            raise UnsupportedLayerError(fx_node.name, "mean", why=f"dtype={a['dtype']!r}")
        if dim is None or (isinstance(dim, (list, tuple)) and len(dim) == 0):
            raise UnsupportedLayerError(
                fx_node.name, "mean",
                why="it averages over every dimension, the batch included: pass dim=",
            )
        dims = dim if isinstance(dim, (list, tuple)) else (dim,)
        if not all(isinstance(d, int) and not isinstance(d, bool) for d in dims):
            raise UnsupportedLayerError(fx_node.name, "mean", why=f"dim={dim!r}")
        norm = sorted({d + rank if d < 0 else d for d in dims})
        if len(norm) != len(dims) or any(not 0 <= d < rank for d in norm):
            raise UnsupportedLayerError(fx_node.name, "mean", why=f"dim={dim!r}")
        if 0 in norm:
            raise UnsupportedLayerError(
                fx_node.name, "mean", why="it averages over the batch dimension"
            )
        keepdim = a["keepdim"]
        if not isinstance(keepdim, bool):
            raise UnsupportedLayerError(fx_node.name, "mean", why=f"keepdim={keepdim!r}")
        return {"dims": tuple(norm), "keepdim": keepdim}

    def arith(self, fx_node: torch.fx.Node, op: str, a: dict[str, Any]) -> None:
        r"""``input + alpha * other`` (``-`` for ``sub``): :math:`\sum_i c_i x_i + s` over the
        per-sample operands, broadcast to the output, with the constant operands in ``s``."""
        alpha = a.get("alpha", 1)
        if isinstance(alpha, torch.fx.Node) or isinstance(alpha, bool):
            raise UnsupportedLayerError(fx_node.name, op, why=f"alpha={alpha!r}")
        sign = -1.0 if op == "sub" else 1.0
        terms = [(a.get("input", a.get("self")), 1.0), (a["other"], sign * float(alpha))]
        inputs: list[str] = []
        coeffs: list[float] = []
        shift: torch.Tensor | None = None
        for v, c in terms:
            if isinstance(v, torch.fx.Node) and v.name in self.names:
                inputs.append(v.name)
                coeffs.append(c)
            else:
                k = c * self.constant(fx_node, v)
                shift = k if shift is None else shift + k
        if not inputs:
            raise UnsupportedLayerError(fx_node.name, op, why="no operand depends on the input")
        out = self.shape(fx_node)[1:]
        if shift is not None:
            shift = self.sample_constant(fx_node, op, shift, out)
        in_numels = [math.prod(self._sample_shape(i)) for i in inputs]
        out_numel = math.prod(out)
        if len(inputs) == 1 and coeffs == [1.0] and in_numels[0] == out_numel:
            attrs: dict[str, Any] = {}
            if shift is not None:
                attrs["shift"] = shift
            self.add_node(fx_node, "identity", inputs, attrs=attrs)
            return
        repeat = []
        for i, n_in in zip(inputs, in_numels):
            if out_numel % n_in:
                raise UnsupportedLayerError(fx_node.name, op, why=f"operand {i!r} broadcast")
            repeat.append(out_numel // n_in)
        self.add_node(
            fx_node, "add", inputs,
            attrs={"coeffs": tuple(coeffs), "repeat": tuple(repeat), "shift": shift},
        )

    def scale(self, fx_node: torch.fx.Node, op: str, a: dict[str, Any]) -> None:
        r"""``input * other`` or ``input / other`` with exactly one operand computed from the
        model's data and the other a constant (scalar, per channel, per element, any shape
        torch broadcasts): the node ``scale``, :math:`h=B(x)\odot w` (``mul``) or
        :math:`h=B(x)/c` (``div``), :math:`B` the broadcast to the output. The constant is
        ``params["factor"]``; ``attrs["divide"]`` says which. A divisor that is 0 or not
        finite, or whose reciprocal overflows, is refused."""
        rounding = a.get("rounding_mode")
        if rounding is not None:
            raise UnsupportedLayerError(fx_node.name, op,
                                        why=f"rounding_mode={rounding!r}: not affine")
        x, y = a.get("input", a.get("self")), a["other"]
        live = [isinstance(v, torch.fx.Node) and v.name in self.names for v in (x, y)]
        if all(live):
            raise UnsupportedLayerError(
                fx_node.name, op,
                why="both operands depend on the input: a product or quotient of two such "
                "tensors is not affine and has no rule",
            )
        if not any(live):
            raise UnsupportedLayerError(fx_node.name, op, why="no operand depends on the input")
        if op == "div" and live[1]:
            raise UnsupportedLayerError(
                fx_node.name, op, why="it divides by a tensor that depends on the input (not "
                "affine)")
        tensor, const = (x, y) if live[0] else (y, x)
        out = self.shape(fx_node)[1:]
        c = self.sample_constant(fx_node, op, self.constant(fx_node, const), out)
        what = "divisor" if op == "div" else "factor"
        if not bool(torch.isfinite(c).all()):
            raise UnsupportedLayerError(fx_node.name, op, why=f"a constant {what} is not finite")
        if op == "div" and not bool(torch.isfinite(1.0 / c).all()):
            raise UnsupportedLayerError(
                fx_node.name, op,
                why="it divides by a constant that is 0 (or so small its reciprocal overflows)",
            )
        self.add_node(fx_node, "scale", [tensor.name], params={"factor": c},
                      attrs={"divide": op == "div"})

    def call_method(self, fx_node: torch.fx.Node) -> None:
        name = str(fx_node.target)
        if name in _RESHAPE_METHODS:
            inputs = self.tensor_inputs([fx_node.args[0]])
            if len(inputs) != 1:
                raise UnsupportedLayerError(fx_node.name, name, why="not a per-sample tensor")
            self.add_node(fx_node, "reshape", inputs, target=name)
            return
        self.call_function(fx_node, _METHOD_SIGS.get(name))
        self.nodes[-1].target = name


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
        device: where the float64 graph lives (default: the model's device).
        leaf_modules: user module classes to capture as one node each (with the op name
            given), for which a rule exists; their ``forward`` is the node's semantics.

    Raises:
        TrainingModeError, NonFiniteParameterError: see :func:`check_model`.
        InputShapeError: the model cannot run on an input of this shape, or the output is not
            a ``[N, C]`` logit matrix.
        UnsupportedLayerError: code the trace cannot see, a call whose arguments cannot be
            read exactly, or a model torch.fx cannot trace (see the module docstring).
    """
    check_model(model)
    check_hidden_code(model)
    leaf_modules = dict(leaf_modules or {})
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
    fingerprint = model_fingerprint(model)
    try:
        model64 = copy.deepcopy(model).to(device=device, dtype=torch.float64).eval()
    except Exception as exc:  # deepcopy runs arbitrary __deepcopy__ / __reduce__ code
        raise ModelError(
            f"the model cannot be copied to float64: {type(exc).__name__}: {exc}"
        ) from exc
    if module_op(model64, leaf_modules) is not None:  # a bare layer: a one-layer model
        model64 = nn.Sequential(model64)
    tracer = _Tracer(leaf_modules)
    try:
        fx_graph = tracer.trace(model64)
    except Exception as exc:  # torch.fx raises many exception types
        raise UnsupportedLayerError(
            type(model).__name__, "trace",
            why=f"torch.fx could not trace the model ({type(exc).__name__}: {exc}); "
            "data-dependent control flow is not supported",
        ) from exc
    gm = torch.fx.GraphModule(tracer.root, fx_graph)
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if len(placeholders) != 1:
        raise InputShapeError(
            f"the model's forward takes {len(placeholders)} tensor arguments; a classifier "
            "takes one batch"
        )
    probe = torch.zeros((PROBE_BATCH, *input_shape), dtype=torch.float64, device=device)
    try:
        with torch.no_grad(), contextlib.redirect_stderr(io.StringIO()):
            ShapeProp(gm).propagate(probe)
    except Exception as exc:
        raise InputShapeError(
            f"the model cannot run on inputs of shape [N, {', '.join(map(str, input_shape))}]: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    cap = _Capture(gm, leaf_modules)
    output_name = None
    for fx_node in gm.graph.nodes:
        if fx_node.op == "output":
            arg = fx_node.args[0]
            if not isinstance(arg, torch.fx.Node) or arg.name not in cap.names:
                raise InputShapeError(
                    "the model must return a single logit tensor [N, C] computed from its "
                    "input, not a tuple, a dict or a constant"
                )
            output_name = arg.name
            continue
        meta = fx_node.meta.get("tensor_meta")
        if meta is None or not hasattr(meta, "shape"):
            continue  # non-tensor values such as x.size(0)
        if fx_node.op == "placeholder":
            cap.placeholder(fx_node)
        elif fx_node.op == "get_attr":
            continue  # a constant: read where it is used
        elif not any(a.name in cap.names for a in fx_node.all_input_nodes):
            continue  # computed from constants alone: a constant
        elif fx_node.op == "call_module":
            cap.call_module(fx_node)
        elif fx_node.op == "call_function":
            cap.call_function(fx_node, _FUNCTION_SIGS.get(fx_node.target))
        else:
            cap.call_method(fx_node)
    assert output_name is not None
    graph = Graph(cap.nodes, gm, input_shape, output_name, model_dtype, fingerprint=fingerprint)
    out = graph[output_name]
    if len(out.out_shape) != 1:
        raise InputShapeError(
            f"the model's output has shape [N, {', '.join(map(str, out.out_shape))}]; "
            "a classifier must return logits of shape [N, C]"
        )
    if graph.num_classes < 2:
        raise InputShapeError("the model has fewer than two classes: nothing to certify")
    return graph


def numel(shape: tuple[int, ...]) -> int:
    """Number of entries of a tensor of this shape."""
    return int(math.prod(shape))
