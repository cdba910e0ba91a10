"""The operator table: every node kind boundkit knows, declared once.

An :class:`OpSpec` says everything the rest of the toolkit needs to know about one node
kind (``Node.op``):

* how capture recognises it: the ``nn.Module`` classes (:attr:`OpSpec.modules`), the
  functions (:attr:`OpSpec.functions`) and tensor methods (:attr:`OpSpec.methods`) that
  produce it, each with its signature and torch's defaults (:class:`Sig`), and how their
  arguments become the node's ``params``/``attrs`` (:attr:`OpSpec.module_attrs`,
  :attr:`OpSpec.call_attrs`);
* what it computes (:attr:`OpSpec.evaluate`, from the node's fields alone; see
  :mod:`boundkit.graph.ops`) and the input ranks its rules assume (:attr:`OpSpec.input_ranks`);
* what kind of operation it is (:attr:`OpSpec.kind` and the flags the engine reads);
* which families of bound rules it has and which module registers them
  (:attr:`OpSpec.rules`). The graph package knows no bound method: rule families are data
  here (``"sound"``, ``"crown"``, ``"peck2017"``) and module names are strings that
  :mod:`boundkit.bounds.registry` imports. A test checks that every declared family has a
  registered rule, and that every built-in rule is declared.

Adding an operator is one entry in :data:`OPS` (plus its evaluation and its rule module);
``docs/extending.md`` walks through it.
"""

from __future__ import annotations

import importlib
import math
import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cache
from typing import Any, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from boundkit.errors import UnsupportedLayerError
from boundkit.graph import ops

#: what an operation is, for readers of the graph (documentation and summaries; the engine
#: reads the flags below)
OpKind = Literal["input", "affine", "activation", "pool", "normalisation", "merge",
                 "product", "structural", "squash"]
#: rule families a node kind may declare (the rule kinds of :func:`boundkit.register_rule`)
RuleFamily = Literal["sound", "crown", "peck2017"]


# ------------------------------------------------------------------ call signatures
class _Required:
    def __repr__(self) -> str:
        return "<required>"


REQUIRED = _Required()
_R = REQUIRED


@dataclass(frozen=True)
class Sig:
    """A call's parameters in order, with torch's defaults (:data:`REQUIRED` when none).

    ``form`` names the call form when an op has several that capture reads differently
    (``"sub"`` for ``add``, ``"relu6"`` for ``hardtanh``...); ``op`` is the spec's name,
    filled in by the table."""

    names: tuple[str, ...]
    defaults: tuple[Any, ...]
    inplace: bool = False  # the call itself is in place (``relu_``, ``add_``)
    form: str = ""
    op: str = ""

    def bind(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> dict[str, Any]:
        """The arguments by name, defaults filled in; ``ValueError`` for a call that does
        not fit the signature."""
        if len(args) > len(self.names):
            raise ValueError(f"{len(args)} positional arguments, at most {len(self.names)}")
        out = dict(zip(self.names, self.defaults))
        out.update(zip(self.names, args))
        for k, v in kwargs.items():
            if k not in out:
                raise ValueError(f"unknown keyword argument {k!r}")
            out[k] = v
        missing = [k for k, v in out.items() if v is REQUIRED]
        if missing:
            raise ValueError(f"missing argument(s) {missing}")
        return out


def sig(spec: str, *defaults: Any, inplace: bool = False, form: str = "") -> Sig:
    """A :class:`Sig` from space-separated parameter names and the defaults of the last
    ones: ``sig("input negative_slope inplace", 0.01, False)``."""
    names = tuple(spec.split())
    pad = (_R,) * (len(names) - len(defaults))
    return Sig(names, pad + tuple(defaults), inplace, form)


@dataclass(frozen=True)
class Call:
    """A function or method call as capture hands it to :attr:`OpSpec.call_attrs`: the node's
    name, the call's target (for messages), its form and its arguments bound by name."""

    node: str
    target: str
    form: str
    args: Mapping[str, Any]


ModuleAttrs = Callable[[str, nn.Module], tuple[dict[str, torch.Tensor], dict[str, Any]]]
#: the node's attrs from a call, or ``None`` to capture the call as an ``unknown`` node
CallAttrs = Callable[[Call], "dict[str, Any] | None"]


@dataclass(frozen=True)
class OpSpec:
    """One node kind, declared once (see the module docstring).

    Attributes:
        name: the node kind (``Node.op``).
        kind: what it is (:data:`OpKind`).
        evaluate: its float64 semantics from the node's fields (``None``: the node's module
            is its semantics, or it is the input).
        modules: ``nn.Module`` classes captured as this op (a ``"module:Class"`` string
            for a class imported when first needed).
        functions: functions (``F.relu``, ``operator.add``...) and their signatures.
        methods: tensor methods (``"relu"``, ``"add_"``...) and their signatures.
        module_attrs: ``(node name, module) -> (params, attrs)`` for a module form.
        call_attrs: the attrs of a function or method form (:class:`Call`); ops whose
            capture needs the graph around them (which operands are computed and which are
            constants, shapes) name a context reader instead (``reader``), and
            ``layernorm``, ``mean``, ``sum`` and the functional forms of ``linear``,
            ``conv2d``, ``conv_transpose2d`` (constant weights) are read by
            ``_Capture.call_function`` in :mod:`boundkit.graph.capture`.
        reader: the context reader of the op's call forms: the name of a ``_Capture`` method
            ``(fx_node, form, args)`` that reads the call against the graph captured so far
            and adds its node(s) (``"multiply"`` for ``mul``: a product of two computed
            operands is ``mul``, one with a constant the affine ``scale``).
        input_ranks: the ranks (without the batch) its rules support; ``None``: any.
        finish: a check or completion of the node once its shapes are known.
        rules: rule family -> the module (dotted name) that registers that rule.
        output_tail: a constant affine map the sound output stage folds into the tail's
            Jacobian (:mod:`boundkit.bounds.output`, which charges its rounding).
        output_squash: a monotone squash of the logits (softmax), skipped by
            :attr:`~boundkit.graph.graph.Graph.logits`.
        smooth: twice differentiable with bounded :math:`g', g''` (the smooth blocks of
            :mod:`boundkit.bounds.mlp`).
        fc_activation: an activation of the fully connected blocks of ``peck2017`` (thesis
            Table 4.1 has its constants).
        nonnegative: its outputs are never negative (an odd-``p`` LP pooling may read it:
            :mod:`boundkit.bounds.pooling`).
    """

    name: str
    kind: OpKind
    evaluate: ops.Evaluator | None = None
    modules: tuple[type[nn.Module] | str, ...] = ()
    functions: Mapping[Any, Sig] = field(default_factory=dict)
    methods: Mapping[str, Sig] = field(default_factory=dict)
    module_attrs: ModuleAttrs | None = None
    call_attrs: CallAttrs | None = None
    input_ranks: tuple[int, ...] | None = None
    finish: Callable[[Any], None] | None = None
    reader: str = ""
    rules: Mapping[str, str] = field(default_factory=dict)
    output_tail: bool = False
    output_squash: bool = False
    smooth: bool = False
    fc_activation: bool = False
    nonnegative: bool = False


def _rules(module: str, *families: str) -> dict[str, str]:
    return {f: f"boundkit.bounds.{module}" for f in families}


# ------------------------------------------------------------------ attribute readers
def pair(v: Any) -> tuple[int, int]:
    """An int or a one/two-element sequence as a pair of ints."""
    if isinstance(v, (tuple, list)):
        if len(v) not in (1, 2):
            raise ValueError(f"expected one or two integers, got {v!r}")
        return (int(v[0]), int(v[-1]))
    return (int(v), int(v))


def pool_attrs(kernel: Any, stride: Any, padding: Any, ceil: Any) -> dict[str, Any]:
    """A 2-d pooling's window: ``kernel_size``, ``stride`` (the kernel when absent),
    ``padding``, ``ceil_mode``."""
    ks = pair(kernel)
    no_stride = stride is None or (isinstance(stride, (list, tuple)) and len(stride) == 0)
    return dict(
        kernel_size=ks,
        stride=ks if no_stride else pair(stride),
        padding=pair(padding),
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


def positive_eps(node: str, eps: Any) -> float:
    """A normalisation's ``eps``, refused unless finite and positive."""
    eps = float(eps)
    if not (eps > 0 and math.isfinite(eps)):
        raise UnsupportedLayerError(node, "layernorm", why=f"eps={eps!r}: must be positive")
    return eps


def softplus_attrs(node: str, beta: Any, threshold: Any) -> dict[str, float]:
    """Softplus's ``beta`` (finite, positive) and ``threshold`` (finite)."""
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


def _weight_bias(m: nn.Module) -> dict[str, torch.Tensor]:
    p = {"weight": m.weight.detach().double()}
    if m.bias is not None:
        p["bias"] = m.bias.detach().double()
    return p


def _linear_module(node: str, m: nn.Module) -> tuple[dict, dict]:
    return _weight_bias(m), {}


def _conv2d_module(node: str, m: nn.Module) -> tuple[dict, dict]:
    if isinstance(m.padding, str):  # "valid": 0; "same": half of d(k - 1) where it is even
        padding = pair(same_or_valid_padding(node, m.padding, pair(m.kernel_size),
                                             pair(m.dilation)))
    else:
        padding = pair(m.padding)
    if m.padding_mode != "zeros":
        raise UnsupportedLayerError(
            node, "conv2d", why=f"padding_mode={m.padding_mode!r}; only zero padding is supported")
    return _weight_bias(m), dict(
        stride=pair(m.stride), padding=padding, dilation=pair(m.dilation),
        groups=int(m.groups), kernel_size=pair(m.kernel_size),
    )


def same_or_valid_padding(node: str, padding: str, kernel: Sequence[int],
                          dilation: Sequence[int]) -> list[int]:
    """A convolution's string padding per spatial axis as integers: ``"valid"`` is 0,
    ``"same"`` is half of :math:`d(k-1)` where that is even (else torch pads one side more
    than the other: refused by name)."""
    if padding == "valid":
        return [0] * len(kernel)
    out = []
    for k, d in zip(kernel, dilation):
        total = int(d) * (int(k) - 1)
        if total % 2:
            raise UnsupportedLayerError(
                node, "conv", why=f"padding='same' with kernel {k} and dilation {d} pads one "
                "side more than the other; use explicit integers")
        out.append(total // 2)
    return out


def _conv_transpose2d_module(node: str, m: nn.Module) -> tuple[dict, dict]:
    if isinstance(m.padding, str) or m.padding_mode != "zeros":
        raise UnsupportedLayerError(
            node, "conv_transpose2d", why=f"padding={m.padding!r}, padding_mode="
            f"{m.padding_mode!r}: only explicit zero padding is supported")
    return _weight_bias(m), dict(
        stride=pair(m.stride), padding=pair(m.padding), dilation=pair(m.dilation),
        output_padding=pair(m.output_padding), groups=int(m.groups),
    )


def _maxpool2d_module(node: str, m: nn.Module) -> tuple[dict, dict]:
    if m.return_indices:
        raise UnsupportedLayerError(node, "maxpool2d", why="return_indices=True")
    a = pool_attrs(m.kernel_size, m.stride, m.padding, m.ceil_mode)
    a["dilation"] = pair(m.dilation)
    return {}, a


def _squash_call(name: str) -> CallAttrs:
    """``softmax`` / ``log_softmax`` (``name``) from a call: the axis; ``dtype=`` (the
    function then computes in another dtype than the model's, which a certificate would not
    charge) is refused."""
    def attrs(c: Call) -> dict[str, Any]:
        if c.args.get("dtype") is not None:
            raise UnsupportedLayerError(c.node, name,
                                        why=f"dtype={c.args['dtype']!r}: it computes in "
                                            "another dtype than the model; cast the model "
                                            "instead")
        return {"dim": c.args["dim"]}
    return attrs


def _maxpool2d_call(c: Call) -> dict[str, Any]:
    a = c.args
    if a["return_indices"]:
        raise UnsupportedLayerError(c.node, "maxpool2d", why="return_indices=True")
    attrs = pool_attrs(a["kernel_size"], a["stride"], a["padding"], a["ceil_mode"])
    attrs["dilation"] = pair(a["dilation"])
    return attrs


def _avgpool2d_module(node: str, m: nn.Module) -> tuple[dict, dict]:
    a = pool_attrs(m.kernel_size, m.stride, m.padding, m.ceil_mode)
    a.update(count_include_pad=bool(m.count_include_pad), divisor_override=m.divisor_override)
    return {}, a


def _avgpool2d_call(c: Call) -> dict[str, Any]:
    a = c.args
    attrs = pool_attrs(a["kernel_size"], a["stride"], a["padding"], a["ceil_mode"])
    attrs.update(count_include_pad=bool(a["count_include_pad"]),
                 divisor_override=a["divisor_override"])
    return attrs


def _lppool2d_module(node: str, m: nn.Module) -> tuple[dict, dict]:
    a = pool_attrs(m.kernel_size, m.stride, 0, m.ceil_mode)
    a["p"] = float(m.norm_type)
    return {}, a


def _batchnorm_module(node: str, m: nn.Module) -> tuple[dict, dict]:
    if m.running_mean is None or m.running_var is None:
        raise UnsupportedLayerError(
            node, "batchnorm", why="track_running_stats=False: eval statistics are unknown")
    c = m.running_mean.numel()
    w = m.weight if m.weight is not None else torch.ones(c)
    b = m.bias if m.bias is not None else torch.zeros(c)
    p = {"running_mean": m.running_mean.detach().double(),
         "running_var": m.running_var.detach().double(),
         "weight": w.detach().double(), "bias": b.detach().double()}
    return p, {"eps": float(m.eps)}


def _lrn_module(node: str, m: nn.Module) -> tuple[dict, dict]:
    return {}, dict(size=int(m.size), alpha=float(m.alpha), beta=float(m.beta), k=float(m.k))


def _layernorm_module(node: str, m: nn.Module) -> tuple[dict, dict]:
    shape = tuple(int(d) for d in m.normalized_shape)
    w = m.weight if m.weight is not None else torch.ones(shape)
    b = m.bias if m.bias is not None else torch.zeros(shape)
    return ({"weight": w.detach().double(), "bias": b.detach().double()},
            dict(normalized_shape=shape, eps=positive_eps(node, m.eps)))


def _resize_module(node: str, m: nn.Module) -> tuple[dict, dict]:
    return {}, resize_attrs(node, {
        "size": m.size, "scale_factor": m.scale_factor, "mode": m.mode,
        "align_corners": m.align_corners,
        "recompute_scale_factor": m.recompute_scale_factor, "antialias": False})


def _groupsort_module(node: str, m: nn.Module) -> tuple[dict, dict]:
    if m.layout not in ("consecutive", "strided") or int(m.group_size) < 1:
        raise UnsupportedLayerError(node, "groupsort",
                                    why=f"group_size={m.group_size!r}, layout={m.layout!r}")
    return {}, dict(group_size=int(m.group_size), layout=str(m.layout), dim=int(m.dim))


def _groupsort_finish(node: Any) -> None:
    """A GroupSort's ``dim`` as an index of the batched tensor (only the features' axis,
    1, is supported)."""
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


def _adaptive_finish(node: Any) -> None:
    """An adaptive pooling's ``output_size`` as torch resolved it (an int, a pair, a
    ``None`` entry keeping the input's size): read off the propagated output shape."""
    node.attrs["output_size"] = tuple(int(s) for s in node.out_shape[-2:])


def _attrs_of(*names: str, conv: Callable[[Any], Any] = lambda v: v
              ) -> Callable[[str, nn.Module], tuple[dict, dict]]:
    """A module reader copying the named attributes."""
    def read(node: str, m: nn.Module) -> tuple[dict, dict]:
        return {}, {k: conv(getattr(m, k)) for k in names}
    return read


def _stated(op: str) -> tuple[ModuleAttrs, CallAttrs]:
    """Readers of the activations with checked parameters (:func:`activation_attrs`)."""
    return ((lambda node, m: ({}, activation_attrs(node, op, vars(m)))),
            (lambda c: activation_attrs(c.node, op, c.args)))


def _hardtanh_call(c: Call) -> dict[str, Any] | None:
    if c.form == "relu6":
        return {"min_val": 0.0, "max_val": 6.0}
    if c.form == "clamp":  # two bounds (capture reads one as max / min: one_sided_clamp)
        return activation_attrs(c.node, "hardtanh",
                                {"min_val": c.args["min"], "max_val": c.args["max"]})
    return activation_attrs(c.node, "hardtanh", c.args)


def _dropout_call(c: Call) -> dict[str, Any]:
    a = c.args
    if "training" in a and a["training"] is not False and a["p"] != 0:
        raise UnsupportedLayerError(
            c.node, c.target,
            why=f"training={a['training']!r}: dropout is applied at evaluation too "
            "(pass training=self.training)",
        )
    return {}


_POOL_MAX = "input kernel_size stride padding dilation ceil_mode return_indices"
_POOL_AVG = "input kernel_size stride padding ceil_mode count_include_pad divisor_override"
_DROPOUT = "input p training inplace"
_RESIZE = "input size scale_factor mode align_corners recompute_scale_factor antialias"
_CONV = "input weight bias stride padding dilation groups"
_CONV_T = "input weight bias stride padding output_padding groups dilation"
# torch.sum / torch.mean: ``dtype`` is keyword-only and ``axis`` is torch's NumPy alias of
# ``dim`` (keyword-only too: no valid call binds either by position)
_REDUCE = "input dim keepdim dtype axis"
_REDUCE_M = "self dim keepdim dtype axis"


def _unary(name: str) -> dict[str, Sig]:
    """The tensor methods ``name`` and ``name_`` (in place) of a parameterless activation."""
    return {name: sig("self"), f"{name}_": sig("self", inplace=True)}


_GELU, _ELU, _HARDTANH = _stated("gelu"), _stated("elu"), _stated("hardtanh")

#: SELU's constants as torch states them (``torch.nn.SELU``): :math:`\lambda\,\mathrm{ELU}_\alpha`
SELU_ALPHA, SELU_SCALE = ops.SELU_ALPHA, ops.SELU_SCALE
#: the ``elu`` node's attributes for SELU
_SELU_ATTRS = {"alpha": SELU_ALPHA, "scale": SELU_SCALE, "input_scale": 1.0}


def _celu_attrs(node: str, alpha: Any) -> dict[str, Any]:
    r"""CELU :math:`\max(0,z)+\min(0,\alpha(e^{z/\alpha}-1))` as the scaled ELU of
    :func:`boundkit.graph.ops.elu` (``alpha`` = ``input_scale`` = :math:`\alpha`), for a
    finite :math:`\alpha>0`."""
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not (
            math.isfinite(alpha) and alpha > 0):
        raise UnsupportedLayerError(node, "elu", why=f"CELU alpha={alpha!r}: a finite number "
                                    "> 0 is supported")
    return {"alpha": float(alpha), "scale": 1.0, "input_scale": float(alpha)}


def _elu_module(node: str, m: nn.Module) -> tuple[dict, dict]:
    r"""ELU, SELU and CELU modules as one op: :math:`\lambda` ELU with parameter
    :math:`\alpha` of :math:`z/c` (``scale`` :math:`\lambda`, ``input_scale`` :math:`c`)."""
    if isinstance(m, nn.SELU):
        return {}, dict(_SELU_ATTRS)
    if isinstance(m, nn.CELU):
        return {}, _celu_attrs(node, m.alpha)
    return _ELU[0](node, m)


def _elu_call(c: Call) -> dict[str, Any] | None:
    if c.form == "selu":
        return dict(_SELU_ATTRS)
    if c.form == "celu":
        return _celu_attrs(c.node, c.args["alpha"])
    return _ELU[1](c)


def _leaky_module(node: str, m: nn.Module) -> tuple[dict, dict]:
    """LeakyReLU, and PReLU with one slope (its learned ``weight``; capture reads one slope
    per channel as an exact composition: ``_Capture.prelu``)."""
    if isinstance(m, nn.PReLU):
        slope = float(m.weight.detach().reshape(()))
        if not math.isfinite(slope):
            raise UnsupportedLayerError(node, "leaky_relu", why=f"PReLU slope {slope!r}")
        return {}, {"negative_slope": slope}
    return {}, {"negative_slope": float(m.negative_slope)}

_SPECS: tuple[OpSpec, ...] = (
    OpSpec("input", "input"),
    # on vectors, or on tokens [T, D] / [.., T, D] (the map acts on the last axis)
    # the functional forms of the weighted layers read constant weights (module attributes
    # or values computed from them alone): capture's ``_Capture.weighted``
    OpSpec("linear", "affine", ops.linear, (nn.Linear,),
           functions={F.linear: sig("input weight bias", None)}, module_attrs=_linear_module,
           input_ranks=(1, 2, 3, 4), rules=_rules("linear", "sound", "crown"),
           output_tail=True),
    OpSpec("conv2d", "affine", ops.conv2d, (nn.Conv2d,),
           functions={F.conv2d: sig(_CONV, None, 1, 0, 1, 1),
                      torch.conv2d: sig(_CONV, None, 1, 0, 1, 1),
                      # zero padding of an image: a one-hot depthwise convolution
                      # (``_Capture.zero_pad2d``)
                      F.pad: sig("input pad mode value", "constant", None, form="pad"),
                      F.conv1d: sig(_CONV, None, 1, 0, 1, 1, form="conv1d")},
           module_attrs=_conv2d_module,
           input_ranks=(3,), rules=_rules("conv", "sound", "peck2017", "crown"),
           output_tail=True),
    OpSpec("conv_transpose2d", "affine", ops.conv_transpose2d, (nn.ConvTranspose2d,),
           functions={F.conv_transpose2d: sig(_CONV_T, None, 1, 0, 0, 1, 1),
                      torch.conv_transpose2d: sig(_CONV_T, None, 1, 0, 0, 1, 1)},
           module_attrs=_conv_transpose2d_module, input_ranks=(3,),
           rules=_rules("upsampling", "sound", "crown"), output_tail=True),
    OpSpec("resize", "affine", ops.resize, (nn.Upsample,),
           functions={F.interpolate: sig(_RESIZE, None, None, "nearest", None, None, False),
                      F.upsample: sig(_RESIZE, None, None, "nearest", None, None, False)},
           module_attrs=_resize_module, call_attrs=lambda c: resize_attrs(c.node, c.args),
           rules=_rules("upsampling", "sound", "crown"), output_tail=True),
    OpSpec("layernorm", "normalisation", ops.layernorm, (nn.LayerNorm,),
           functions={F.group_norm: sig("input num_groups weight bias eps", None, None,
                                        1e-5, form="group_norm"),
                      F.layer_norm: sig("input normalized_shape weight bias eps",
                                        None, None, 1e-5)},
           module_attrs=_layernorm_module, rules=_rules("layernorm", "sound", "crown")),
    # LayerNorm's centring x - mean(x), captured before every layernorm (its own node, so
    # that crown bounds the centred input by a backward walk: docs/theory/layernorm.md)
    OpSpec("center", "affine", ops.center, rules=_rules("layernorm", "sound", "crown")),
    OpSpec("maxpool2d", "pool", ops.maxpool2d, (nn.MaxPool2d,),
           functions={F.max_pool2d: sig(_POOL_MAX, None, 0, 1, False, False),
                      # compositions read by capture (``_Capture.composite_call``)
                      F.max_pool1d: sig(_POOL_MAX, None, 0, 1, False, False,
                                        form="max_pool1d"),
                      F.adaptive_max_pool2d: sig("input output_size return_indices", False,
                                                 form="adaptive_max_pool2d")},
           module_attrs=_maxpool2d_module, call_attrs=_maxpool2d_call, input_ranks=(3,),
           rules=_rules("pooling", "sound", "peck2017", "crown")),
    OpSpec("avgpool2d", "pool", ops.avgpool2d, (nn.AvgPool2d,),
           functions={F.avg_pool2d: sig(_POOL_AVG, None, 0, False, True, None),
                      F.avg_pool1d: sig("input kernel_size stride padding ceil_mode "
                                        "count_include_pad", None, 0, False, True,
                                        form="avg_pool1d")},
           module_attrs=_avgpool2d_module, call_attrs=_avgpool2d_call, input_ranks=(3,),
           rules=_rules("pooling", "sound", "peck2017", "crown"), output_tail=True),
    OpSpec("adaptive_avgpool2d", "pool", ops.adaptive_avgpool2d, (nn.AdaptiveAvgPool2d,),
           functions={F.adaptive_avg_pool2d: sig("input output_size")},
           call_attrs=lambda c: {}, input_ranks=(3,), finish=_adaptive_finish,
           rules=_rules("average", "sound", "crown"), output_tail=True),
    OpSpec("lppool2d", "pool", ops.lppool2d, (nn.LPPool2d,), module_attrs=_lppool2d_module,
           input_ranks=(3,), rules=_rules("pooling", "sound", "peck2017")),
    # reductions over per-sample dimensions, read by capture (``_Capture.reduction_attrs``:
    # ``dim``/``axis`` int, tuple or negative, ``keepdim``, a floating ``dtype``)
    OpSpec("mean", "affine", ops.mean,
           functions={torch.mean: sig(_REDUCE, None, False, None, None)},
           methods={"mean": sig(_REDUCE_M, None, False, None, None)},
           rules=_rules("average", "sound", "crown"), output_tail=True),
    # a sum is ``n`` times the mean over the same dimensions (docs/theory/averages.md)
    OpSpec("sum", "affine", ops.sum_,
           functions={torch.sum: sig(_REDUCE, None, False, None, None)},
           methods={"sum": sig(_REDUCE_M, None, False, None, None)},
           rules=_rules("average", "sound", "crown"), output_tail=True),
    OpSpec("batchnorm", "normalisation", ops.batchnorm, (nn.BatchNorm1d, nn.BatchNorm2d),
           module_attrs=_batchnorm_module, input_ranks=(1, 2, 3),
           rules=_rules("batchnorm", "sound", "peck2017", "crown"), output_tail=True),
    OpSpec("lrn", "normalisation", ops.lrn, (nn.LocalResponseNorm,), module_attrs=_lrn_module,
           input_ranks=(3,), rules=_rules("lrn", "sound", "peck2017")),
    OpSpec("relu", "activation", ops.relu, (nn.ReLU,),
           functions={F.relu: sig("input inplace", False), torch.relu: sig("input"),
                      torch.relu_: sig("input", inplace=True),
                      F.relu_: sig("input", inplace=True)},
           methods=_unary("relu"), call_attrs=lambda c: {},
           rules=_rules("activation", "sound", "peck2017", "crown"), fc_activation=True,
           nonnegative=True),
    OpSpec("leaky_relu", "activation", ops.leaky_relu, (nn.LeakyReLU, nn.PReLU),
           functions={F.leaky_relu: sig("input negative_slope inplace", 0.01, False),
                      F.prelu: sig("input weight", form="prelu"),
                      torch.prelu: sig("input weight", form="prelu")},
           module_attrs=_leaky_module, reader="slope_activation",
           rules=_rules("activation", "sound", "crown")),
    OpSpec("tanh", "activation", ops.tanh, (nn.Tanh,),
           functions={torch.tanh: sig("input"), F.tanh: sig("input"),
                      F.tanhshrink: sig("input", form="tanhshrink")},
           methods=_unary("tanh"), call_attrs=lambda c: {},
           rules=_rules("activation", "sound", "crown"), smooth=True, fc_activation=True),
    OpSpec("sigmoid", "activation", ops.sigmoid, (nn.Sigmoid,),
           functions={torch.sigmoid: sig("input"), F.sigmoid: sig("input"),
                      F.glu: sig("input dim", -1, form="glu")},
           methods=_unary("sigmoid"), call_attrs=lambda c: {},
           rules=_rules("activation", "sound", "crown"), smooth=True, fc_activation=True,
           nonnegative=True),
    OpSpec("softplus", "activation", ops.softplus, (nn.Softplus,),
           functions={F.softplus: sig("input beta threshold", 1.0, 20.0)},
           module_attrs=lambda node, m: ({}, softplus_attrs(node, m.beta, m.threshold)),
           call_attrs=lambda c: softplus_attrs(c.node, c.args["beta"], c.args["threshold"]),
           rules=_rules("activation", "sound", "crown"), smooth=True, fc_activation=True,
           nonnegative=True),
    OpSpec("gelu", "activation", ops.gelu, (nn.GELU,),
           functions={F.gelu: sig("input approximate", "none")},
           module_attrs=_GELU[0], call_attrs=_GELU[1],
           rules=_rules("modern_activations", "sound", "crown")),
    OpSpec("silu", "activation", ops.silu, (nn.SiLU,),
           functions={F.silu: sig("input inplace", False)}, call_attrs=lambda c: {},
           rules=_rules("modern_activations", "sound", "crown")),
    # ELU, SELU and CELU: lambda * ELU_alpha(z / c) (attrs alpha, scale, input_scale)
    OpSpec("elu", "activation", ops.elu, (nn.ELU, nn.SELU, nn.CELU),
           functions={F.elu: sig("input alpha inplace", 1.0, False),
                      F.selu: sig("input inplace", False, form="selu"),
                      torch.selu: sig("input", form="selu"),
                      F.celu: sig("input alpha inplace", 1.0, False, form="celu"),
                      torch.celu: sig("input alpha", 1.0, form="celu")},
           module_attrs=_elu_module, call_attrs=_elu_call,
           rules=_rules("modern_activations", "sound", "crown")),
    OpSpec("hardtanh", "activation", ops.hardtanh, (nn.Hardtanh,),
           functions={F.hardtanh: sig("input min_val max_val inplace", -1.0, 1.0, False),
                      F.relu6: sig("input inplace", False, form="relu6"),
                      torch.clamp: sig("input min max", None, None, form="clamp"),
                      torch.clip: sig("input min max", None, None, form="clamp")},
           methods={"clamp": sig("self min max", None, None, form="clamp"),
                    "clip": sig("self min max", None, None, form="clamp")},
           module_attrs=_HARDTANH[0], call_attrs=_hardtanh_call,
           rules=_rules("modern_activations", "sound", "crown")),
    OpSpec("hardswish", "activation", lambda node, xs: F.hardswish(xs[0]), (nn.Hardswish,),
           functions={F.hardswish: sig("input inplace", False)},
           rules=_rules("modern_activations", "sound", "crown")),
    # |z|, softsign z / (1 + |z|) and log-sigmoid -log(1 + e^{-z}): torch's own kernels
    OpSpec("abs", "activation", lambda node, xs: torch.abs(xs[0]),
           functions={torch.abs: sig("input"), torch.absolute: sig("input"),
                      operator.abs: sig("input")},
           methods={**_unary("abs"), **_unary("absolute")}, call_attrs=lambda c: {},
           rules=_rules("modern_activations", "sound", "crown"), nonnegative=True),
    OpSpec("softsign", "activation", lambda node, xs: F.softsign(xs[0]), (nn.Softsign,),
           functions={F.softsign: sig("input")}, call_attrs=lambda c: {},
           rules=_rules("modern_activations", "sound", "crown")),
    OpSpec("logsigmoid", "activation", lambda node, xs: F.logsigmoid(xs[0]), (nn.LogSigmoid,),
           functions={F.logsigmoid: sig("input")}, call_attrs=lambda c: {},
           rules=_rules("modern_activations", "sound", "crown")),
    OpSpec("hardsigmoid", "activation", lambda node, xs: F.hardsigmoid(xs[0]),
           (nn.Hardsigmoid,), functions={F.hardsigmoid: sig("input inplace", False)},
           rules=_rules("hardsigmoid", "sound", "crown")),
    OpSpec("groupsort", "activation", ops.groupsort, ("boundkit.models.layers:GroupSort",),
           module_attrs=_groupsort_module, finish=_groupsort_finish,
           rules=_rules("groupsort", "sound", "crown")),
    OpSpec("flatten", "structural", ops.reshape, (nn.Flatten,),
           functions={torch.flatten: sig("input start_dim end_dim", 0, -1)},
           methods={"flatten": sig("self start_dim end_dim", 0, -1)},
           module_attrs=_attrs_of("start_dim", "end_dim", conv=int),
           call_attrs=lambda c: {"start_dim": int(c.args["start_dim"]),
                                 "end_dim": int(c.args["end_dim"])},
           rules=_rules("structural", "sound", "peck2017", "crown"), output_tail=True),
    # ``view``, ``reshape`` and ``unflatten`` are read by capture from the propagated shape
    # (which must keep the batch: checked for every node)
    OpSpec("reshape", "structural", ops.reshape, (nn.Unflatten,),
           functions={torch.unflatten: sig("input dim sizes")},
           rules=_rules("structural", "sound", "peck2017", "crown"), output_tail=True),
    # an exact permutation of the per-sample axes (``attrs["dims"]``), read by capture
    # (``x.permute(0, 2, 1)`` packs its varargs into ``dims``; ``x.mT`` is a ``getattr``)
    OpSpec("permute", "structural", ops.permute,
           functions={torch.transpose: sig("input dim0 dim1", form="transpose"),
                      torch.swapaxes: sig("input axis0 axis1", form="transpose"),
                      torch.permute: sig("input dims", form="permute"),
                      getattr: sig("input name", form="getattr")},
           methods={"transpose": sig("self dim0 dim1", form="transpose"),
                    "swapaxes": sig("self axis0 axis1", form="transpose"),
                    "permute": sig("self dims", form="permute")},
           reader="permute", rules=_rules("softmax", "sound", "crown")),
    OpSpec("identity", "structural", ops.identity,
           (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Identity),
           functions={F.dropout: sig(_DROPOUT, 0.5, True, False),
                      F.dropout1d: sig(_DROPOUT, 0.5, True, False),
                      F.dropout2d: sig(_DROPOUT, 0.5, True, False)},
           methods={"contiguous": sig("self memory_format", None),
                    "clone": sig("self memory_format", None)},
           call_attrs=_dropout_call,
           rules=_rules("structural", "sound", "peck2017", "crown"), output_tail=True),
    # a product or quotient with one constant operand (its ``mul`` forms are ``mul``'s,
    # whose reader hands a constant operand here), and a negation (a product by -1)
    OpSpec("scale", "affine", ops.scale,
           functions={operator.truediv: sig("input other", form="div"),
                      operator.neg: sig("input", form="neg"),
                      torch.neg: sig("input", form="neg"),
                      torch.negative: sig("input", form="neg"),
                      torch.div: sig("input other rounding_mode", None, form="div"),
                      torch.divide: sig("input other rounding_mode", None, form="div"),
                      torch.true_divide: sig("input other", form="div")},
           methods={"div": sig("self other rounding_mode", None, form="div"),
                    "div_": sig("self other rounding_mode", None, inplace=True, form="div"),
                    "divide": sig("self other rounding_mode", None, form="div"),
                    "true_divide": sig("self other", form="div"),
                    "neg": sig("self", form="neg"),
                    "negative": sig("self", form="neg"),
                    "neg_": sig("self", inplace=True, form="neg")},
           reader="scale", rules=_rules("scale", "sound", "peck2017", "crown")),
    # at the output a squash the logits skip; inside the network (attention weights) a
    # node with rules of its own (docs/theory/softmax.md)
    OpSpec("softmax", "squash", ops.softmax, (nn.Softmax,),
           functions={F.softmin: sig("input dim _stacklevel dtype", None, 3, None,
                                     form="softmin"),
                      F.softmax: sig("input dim _stacklevel dtype", None, 3, None),
                      torch.softmax: sig("input dim dtype", None)},
           methods={"softmax": sig("self dim dtype", None)},
           module_attrs=_attrs_of("dim"), call_attrs=_squash_call("softmax"),
           rules=_rules("softmax", "sound", "crown"), output_squash=True),
    OpSpec("log_softmax", "squash", ops.log_softmax, (nn.LogSoftmax,),
           functions={F.log_softmax: sig("input dim _stacklevel dtype", None, 3, None),
                      torch.log_softmax: sig("input dim dtype", None)},
           methods={"log_softmax": sig("self dim dtype", None)},
           module_attrs=_attrs_of("dim"), call_attrs=_squash_call("log_softmax"),
           output_squash=True),
    OpSpec("add", "merge", ops.add,
           functions={operator.add: sig("input other", form="add"),
                      torch.add: sig("input other alpha", 1, form="add"),
                      operator.sub: sig("input other", form="sub"),
                      torch.sub: sig("input other alpha", 1, form="sub"),
                      torch.subtract: sig("input other alpha", 1, form="sub"),
                      # max(a, b) = a + relu(b - a), min(a, b) = a - relu(a - b): an add,
                      # a relu and an add (``_Capture.extremum``)
                      torch.maximum: sig("input other", form="maximum"),
                      torch.minimum: sig("input other", form="minimum")},
           methods={"add": sig("self other alpha", 1, form="add"),
                    "add_": sig("self other alpha", 1, inplace=True, form="add"),
                    "sub": sig("self other alpha", 1, form="sub"),
                    "sub_": sig("self other alpha", 1, inplace=True, form="sub"),
                    "maximum": sig("self other", form="maximum"),
                    "minimum": sig("self other", form="minimum")},
           reader="arith", rules=_rules("structural", "sound", "crown")),
    # products of two values computed from the input (docs/theory/products.md); its reader
    # (``_Capture.multiply``) makes a product with a constant operand the affine ``scale``
    OpSpec("mul", "product", ops.mul,
           functions={operator.mul: sig("input other", form="mul"),
                      torch.mul: sig("input other", form="mul"),
                      torch.multiply: sig("input other", form="mul")},
           methods={"mul": sig("self other", form="mul"),
                    "mul_": sig("self other", inplace=True, form="mul"),
                    "multiply": sig("self other", form="mul")},
           reader="multiply", rules=_rules("products", "sound", "crown")),
    # ``x @ W`` with a constant 2-d ``W`` is captured as ``linear`` (weight W^T)
    OpSpec("matmul", "product", ops.matmul,
           functions={torch.matmul: sig("input other", form="matmul"),
                      operator.matmul: sig("input other", form="matmul"),
                      torch.bmm: sig("input mat2", form="bmm")},
           methods={"matmul": sig("self other", form="matmul"),
                    "bmm": sig("self mat2", form="bmm")},
           reader="matmul", rules=_rules("products", "sound", "crown")),
    # a concatenation with constants broadcast over the batch (a class token), and basic
    # indexing of the per-sample axes (``z[:, 0]``): exact linear views read by capture
    # (``_Capture.cat``, ``_Capture.select``; docs/theory/slicing.md)
    OpSpec("cat_constant", "affine", ops.cat_constant,
           rules=_rules("slicing", "sound", "crown")),
    OpSpec("select", "structural", ops.select,
           functions={operator.getitem: sig("input index", form="getitem")},
           reader="select", rules=_rules("slicing", "sound", "crown")),
    OpSpec("cat", "merge", ops.cat,
           functions={torch.cat: sig("tensors dim", 0), torch.concat: sig("tensors dim", 0),
                      torch.concatenate: sig("tensors dim", 0)},
           reader="cat", rules=_rules("structural", "sound", "crown")),
)

#: every node kind by name (``"unknown"``, a node boundkit cannot read, has no entry)
OPS: Mapping[str, OpSpec] = {s.name: s for s in _SPECS}


def spec(op: str) -> OpSpec | None:
    """The :class:`OpSpec` of a node kind, or ``None`` (``unknown``, a user's own op)."""
    return OPS.get(op)


#: the boolean fields of :class:`OpSpec` that name a set of ops
Flag = Literal["output_tail", "output_squash", "smooth", "fc_activation", "nonnegative"]


def ops_where(flag: Flag) -> frozenset[str]:
    """The names of the ops whose boolean field ``flag`` is set
    (``ops_where("output_tail")``)."""
    return frozenset(s.name for s in _SPECS if getattr(s, flag))


def _resolve(cls: type[nn.Module] | str) -> type[nn.Module]:
    if isinstance(cls, type):
        return cls
    module, _, name = cls.partition(":")
    return getattr(importlib.import_module(module), name)


@cache
def module_ops() -> dict[type[nn.Module], str]:
    """Module class -> op, over the table (classes named by string imported now: call it
    once the package is loaded). Classes imported by the table come first."""
    direct = {c: s.name for s in _SPECS for c in s.modules if isinstance(c, type)}
    late = {_resolve(c): s.name for s in _SPECS for c in s.modules if not isinstance(c, type)}
    return {**direct, **late}


def _forms(attr: str) -> dict[Any, Sig]:
    out: dict[Any, Sig] = {}
    for s in _SPECS:
        for key, sg in getattr(s, attr).items():
            if key in out and out[key].op != s.name:  # an alias (F.tanh is torch.tanh) is fine
                raise RuntimeError(f"{key!r} is a capture form of {out[key].op!r} and {s.name!r}")
            out[key] = replace(sg, op=s.name, form=sg.form or s.name)
    return out


#: function -> its signature (``op``: the node kind, ``form``: the call form)
FUNCTION_SIGS: Mapping[Any, Sig] = _forms("functions")
#: tensor method name -> its signature
METHOD_SIGS: Mapping[str, Sig] = _forms("methods")


def rule_modules() -> tuple[str, ...]:
    """The modules that register the built-in rules (each imported once by
    :mod:`boundkit.bounds.registry`), sorted."""
    return tuple(sorted({m for s in _SPECS for m in s.rules.values()}))
