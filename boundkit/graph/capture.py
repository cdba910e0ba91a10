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
  dimension 0), ``Linear`` on an input of rank above 4, ``Softplus`` with
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
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.fx
import torch.nn as nn
from torch.fx.passes.shape_prop import ShapeProp

from boundkit.errors import (
    InputShapeError,
    ModelError,
    UnsupportedLayerError,
)
from boundkit.graph.attention import cancel_batch_swaps, decompose_attention
from boundkit.graph.compositions import COMPOSITE_FORMS, Compositions
from boundkit.graph.fingerprint import model_fingerprint
from boundkit.graph.graph import Graph, Node
from boundkit.graph.ops import per_sample_constant
from boundkit.graph.optable import (
    FUNCTION_SIGS,
    METHOD_SIGS,
    OPS,
    Call,
    Sig,
    module_ops,
    pair,
    positive_eps,
)
from boundkit.validate import check_model

# methods a subclass of a known layer may define without changing what the layer computes
_HARMLESS_METHODS = frozenset(
    {"__init__", "extra_repr", "__repr__", "reset_parameters", "__setstate__", "_get_name"}
)

#: the batch size of the shape-propagation probe (odd, so that a view hard-coding a batch
#: of 1 or 2 is caught)
PROBE_BATCH = 3


_RESHAPE_METHODS = frozenset({"view", "reshape", "unflatten"})

#: calls whose value is a random draw (or uninitialised memory): never a constant
_RANDOM_WORDS = ("rand", "normal", "bernoulli", "multinomial", "dropout", "poisson", "empty")


def _target_name(fx_node: torch.fx.Node) -> str:
    """A call's target as messages name it (``cat``, not ``<built-in method cat ...>``)."""
    return str(getattr(fx_node.target, "__name__", fx_node.target))


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
    known = module_ops()
    if t in known:
        return known[t]
    for base, op in known.items():
        if isinstance(m, base):
            for cls in t.__mro__:
                if cls is base:
                    return op
                own = {k for k, v in vars(cls).items() if callable(v) or isinstance(v, property)}
                if own - _HARMLESS_METHODS:
                    return None
    return None


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


class _Capture(Compositions):
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
        computed inside ``forward`` from those alone (``1 / self.std``) or from them and the
        shapes of per-sample tensors (:meth:`batch_constant`: one sample's value)."""
        if isinstance(v, bool) or v is None:
            raise UnsupportedLayerError(fx_node.name, _target_name(fx_node), why=f"operand {v!r}")
        if isinstance(v, (int, float)):
            return torch.tensor(float(v), dtype=torch.float64)
        if isinstance(v, torch.fx.Node) and v.name not in self.names:
            try:
                t = self.constant_value(fx_node, v)
            except UnsupportedLayerError:
                # computed from shapes too (``self.pos.expand(x.shape[0], -1, -1)``): one
                # sample's value of a constant broadcast over the batch
                t = self.batch_constant(fx_node, v)[0]
            if isinstance(t, (int, float)) and not isinstance(t, bool):
                return torch.tensor(float(t), dtype=torch.float64)
            if isinstance(t, torch.Tensor) and t.is_floating_point():
                return t.detach().to(torch.float64).clone()
        raise UnsupportedLayerError(
            fx_node.name, _target_name(fx_node),
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
            raise UnsupportedLayerError(fx_node.name, _target_name(fx_node),
                                        why="an operand depends on the input")
        target = str(getattr(v.target, "__name__", v.target))
        if v.op == "get_attr":
            t: Any = self.gm
            for part in str(v.target).split("."):
                t = getattr(t, part)
        elif v.op in ("call_function", "call_method") and not any(
                w in target for w in _RANDOM_WORDS):
            t = _call_fx(v, lambda n: self.constant_value(fx_node, n))
        else:
            raise UnsupportedLayerError(
                fx_node.name, _target_name(fx_node),
                why=f"an operand is computed by {target!r} without the input; only numbers, "
                "module attributes and deterministic functions of them are constants",
            )
        cache[v.name] = t
        return t

    def batch_constant(self, fx_node: torch.fx.Node, v: torch.fx.Node
                       ) -> tuple[torch.Tensor, bool]:
        """An operand computed from constants and the *shapes* of per-sample tensors alone
        (``self.cls.expand(x.shape[0], -1, -1)``, ``self.cls.repeat(x.size(0), 1, 1)``):
        ``(value, batched)``. It is evaluated for two batch sizes; when it does not depend on
        the batch size it is returned as is (``batched`` false); when its first axis is the
        batch and every sample's slice is the same, one sample's slice is returned
        (``batched`` true). Anything else (a value that changes with the batch size, samples
        that differ, a random draw, a value read off the input's entries) is refused."""
        vals = []
        for b in (PROBE_BATCH, PROBE_BATCH + 2):
            t = self._at_batch(fx_node, v, b, {})
            if isinstance(t, (int, float)) and not isinstance(t, bool):
                t = torch.tensor(float(t), dtype=torch.float64)
            if not (isinstance(t, torch.Tensor) and t.is_floating_point()):
                raise UnsupportedLayerError(
                    fx_node.name, _target_name(fx_node),
                    why="an operand is neither the model's data nor a floating-point constant")
            vals.append(t.detach().to(torch.float64))
        a, b = vals
        if a.shape == b.shape and torch.equal(a, b):
            return a.clone(), False
        if (a.dim() >= 1 and a.shape[0] == PROBE_BATCH and b.shape[0] == PROBE_BATCH + 2
                and torch.equal(a, a[:1].expand_as(a)) and torch.equal(b, b[:1].expand_as(b))
                and torch.equal(a[0], b[0])):
            return a[0].clone(), True
        raise UnsupportedLayerError(
            fx_node.name, _target_name(fx_node),
            why="a constant operand changes with the batch size beyond a broadcast over the "
            "batch (its samples differ, or its values depend on the batch size)")

    def _at_batch(self, fx_node: torch.fx.Node, v: Any, b: int, memo: dict[str, Any]) -> Any:
        """The value of ``v`` at batch size ``b``: constants as :meth:`constant_value`, the
        shape of a per-sample tensor (``x.shape``, ``x.size(d)``, ``x.dim()``, ``len(x)``)
        from the propagated shapes with the batch axis ``b``."""
        if not isinstance(v, torch.fx.Node):
            return v
        if v.name in memo:
            return memo[v.name]

        def live(n: Any) -> bool:
            return isinstance(n, torch.fx.Node) and (n.name in self.names
                                                     or n.op == "placeholder")

        def shape_of(n: torch.fx.Node) -> torch.Size:
            return torch.Size((b, *self.shape(n)[1:]))

        if live(v):
            raise UnsupportedLayerError(fx_node.name, _target_name(fx_node),
                                        why="an operand depends on the input's values")
        target = str(getattr(v.target, "__name__", v.target))
        args = v.args
        t: Any
        if v.op == "get_attr":
            t = self.constant_value(fx_node, v)
        elif v.op == "call_function" and v.target is getattr and live(args[0]) \
                and args[1] in ("shape", "ndim", "dtype"):
            t = {"shape": lambda: shape_of(args[0]), "ndim": lambda: len(shape_of(args[0])),
                 "dtype": lambda: args[0].meta["tensor_meta"].dtype}[args[1]]()
        elif v.op == "call_method" and target in ("size", "dim") and live(args[0]):
            shape = shape_of(args[0])
            d = args[1] if len(args) > 1 else v.kwargs.get("dim")
            t = len(shape) if target == "dim" else (shape if d is None else shape[d])
        elif v.op == "call_function" and v.target is len and live(args[0]):
            t = b
        elif v.op in ("call_function", "call_method") and not any(
                w in target for w in _RANDOM_WORDS):
            t = _call_fx(v, lambda n: self._at_batch(fx_node, n, b, memo))
        else:
            raise UnsupportedLayerError(
                fx_node.name, _target_name(fx_node),
                why=f"an operand is computed by {target!r}; only numbers, module attributes, "
                "shapes and deterministic functions of them are constants",
            )
        memo[v.name] = t
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
                fx_node.name, _target_name(fx_node),
                why=f"an in-place operation on {target.name!r}, which {later[0].name!r} reads "
                "afterwards: the trace would read the value before the update",
            )

    # ------------------------------------------------------------------ nodes
    def add_node(self, fx_node: torch.fx.Node, op: str, inputs: list[str], **kw: Any) -> None:
        shape = self.shape(fx_node)
        if shape == (PROBE_BATCH,):
            raise UnsupportedLayerError(
                fx_node.name, op,
                why="it leaves one number per sample (shape [N]); boundkit's nodes keep a "
                "per-sample axis: reduce with keepdim=True, or reshape to [N, 1] in the call",
            )
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

    def centre_first(self, fx_node: torch.fx.Node, inputs: list[str],
                     normalized_shape: tuple[int, ...]) -> list[str]:
        r"""LayerNorm's centring as its own node before it: a ``center`` node
        :math:`d=x-\mathrm{mean}(x)` over the normalised axes, named after the layer
        (``<name>_centre``, made unique), whose output the ``layernorm`` node reads
        (:math:`\mathrm{LN}(d)=\mathrm{LN}(x)` as :math:`d` is centred; crown then bounds
        :math:`d` by a backward walk: ``docs/theory/layernorm.md``). Returns its name as the
        layer's input list."""
        (src,) = inputs
        shape = self._sample_shape(src)
        if tuple(shape[len(shape) - len(normalized_shape):]) != tuple(normalized_shape):
            raise UnsupportedLayerError(
                fx_node.name, "layernorm", why=f"normalized_shape {list(normalized_shape)} "
                f"is not the trailing shape of its input [N, {', '.join(map(str, shape))}]")
        return [self.aux_node(fx_node, "centre", "center", [src], shape,
                              target="layernorm centring",
                              attrs={"normalized_shape": tuple(normalized_shape)})]

    def aux_node(self, fx_node: torch.fx.Node, suffix: str, op: str, inputs: list[str],
                 shape: tuple[int, ...], *, target: str | None = None,
                 attrs: dict[str, Any] | None = None,
                 params: dict[str, torch.Tensor] | None = None) -> str:
        """A node of its own that a call's capture adds before the call's node, named
        ``<name>_<suffix>`` (made unique; ``shape``: per sample): LayerNorm's centring and
        the inner nodes of the layers captured as compositions (``maximum`` / ``minimum``,
        a PReLU with a slope per channel, :meth:`composite_module`). Returns its name."""
        taken = {n.name for n in self.order} | set(self.by_name)
        name = f"{fx_node.name}_{suffix}"
        while name in taken:
            name += "_"
        node = Node(name=name, op=op, inputs=list(inputs), target=target or f"{fx_node.name}",
                    attrs=dict(attrs or {}), params=dict(params or {}),
                    in_shapes=[self._sample_shape(i) for i in inputs], out_shape=tuple(shape))
        self.nodes.append(node)
        self.by_name[name] = node
        return name

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
            if (len(inputs) == 1 and len(fx_node.args) == 1 and not fx_node.kwargs
                    and self.composite_module(fx_node, m, inputs[0])):
                return
            attrs["module_type"] = type(m).__name__
        elif type(m) in self.leaf_modules:
            pass  # a user's own layer: its module is its semantics
        else:
            if len(fx_node.args) != 1 or fx_node.kwargs or len(inputs) != 1:
                raise UnsupportedLayerError(
                    fx_node.name, op, why="a layer must be called on exactly one tensor"
                )
            if isinstance(m, nn.PReLU) and m.weight.numel() != 1:  # one slope per channel
                self.prelu(fx_node, inputs[0], m.weight)
                return
            read = OPS[op].module_attrs
            if read is not None:
                params, attrs = read(fx_node.name, m)
            if op == "layernorm":
                inputs = self.centre_first(fx_node, inputs, attrs["normalized_shape"])
            if getattr(m, "inplace", False):
                self.refuse_inplace_alias(fx_node, fx_node.args[0])
        self.add_node(
            fx_node, op, inputs, target=str(fx_node.target), module=m, params=params, attrs=attrs
        )
        self.check_input_rank(self.nodes[-1])
        self.finish(self.nodes[-1])

    @staticmethod
    def finish(node: Node) -> None:
        """The node's own completion once its shapes are known (:attr:`OpSpec.finish`)."""
        spec = OPS.get(node.op)
        if spec is not None and spec.finish is not None:
            spec.finish(node)

    def check_input_rank(self, node: Node) -> None:
        """Layers whose rules assume a vector or an image get exactly that
        (:attr:`OpSpec.input_ranks`)."""
        spec = OPS.get(node.op)
        need = spec.input_ranks if spec is not None else None
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

    def call_function(self, fx_node: torch.fx.Node, sig: Sig | None) -> None:
        if sig is None:
            inputs = self.tensor_inputs(list(fx_node.all_input_nodes))
            self.add_node(fx_node, "unknown", inputs)
            return
        try:
            a = sig.bind(tuple(fx_node.args), fx_node.kwargs)
        except ValueError as exc:
            raise UnsupportedLayerError(fx_node.name, sig.form, why=str(exc)) from None
        first = a.get("input", a.get("self"))
        if sig.inplace or a.get("inplace"):
            if isinstance(first, torch.fx.Node):
                self.refuse_inplace_alias(fx_node, first)
        op = sig.op
        if OPS[op].reader:  # a context reader (OpSpec.reader)
            getattr(self, OPS[op].reader)(fx_node, sig.form, a)
            return
        inputs = self.tensor_inputs([first])
        if len(inputs) != 1:
            raise UnsupportedLayerError(fx_node.name, sig.form,
                                        why="its input is not the model's data")
        spec = OPS[op]
        attrs: dict[str, Any] | None = {}
        if sig.form in COMPOSITE_FORMS:
            self.composite_call(fx_node, sig.form, a, inputs[0])
            return
        if op == "layernorm":
            self.layer_norm(fx_node, a, inputs)
            return
        if op in ("linear", "conv2d", "conv_transpose2d"):
            self.weighted(fx_node, op, a, inputs)
            return
        if op == "hardtanh" and sig.form == "clamp" and (a["min"] is None) != (a["max"] is None):
            self.one_sided_clamp(fx_node, a)
            return
        if op in ("mean", "sum"):
            attrs = self.reduction_attrs(fx_node, op, a)
        elif spec.call_attrs is not None:
            attrs = spec.call_attrs(Call(fx_node.name, str(fx_node.target), sig.form, a))
        if attrs is None:  # a form of the op that it cannot read: kept as unknown
            self.add_node(fx_node, "unknown", self.tensor_inputs(list(fx_node.all_input_nodes)))
            return
        self.add_node(fx_node, op, inputs, attrs=attrs)
        self.check_input_rank(self.nodes[-1])
        self.finish(self.nodes[-1])

    def cat(self, fx_node: torch.fx.Node, op: str, a: dict[str, Any]) -> None:
        """``torch.cat(tensors, dim)`` along a dimension other than the batch's: of
        per-sample tensors, the merge ``cat``; with constants broadcast over the batch among
        them (a class token, :meth:`batch_constant`), each run of constants goes with the
        per-sample tensor after it (the last one takes the trailing run) as an exact affine
        ``cat_constant`` node, and those are merged by ``cat``."""
        tensors = a["tensors"]
        if not isinstance(tensors, (list, tuple)):
            raise UnsupportedLayerError(fx_node.name, op, why="tensors is not a list")
        rank = len(self.shape(fx_node))
        dim = int(a["dim"])
        dim = dim + rank if dim < 0 else dim
        if dim == 0:
            raise UnsupportedLayerError(
                fx_node.name, op, why="it concatenates along the batch dimension"
            )
        parts: list[str | torch.Tensor] = []
        for v in tensors:
            if isinstance(v, torch.fx.Node) and v.name in self.names:
                parts.append(v.name)
                continue
            if not isinstance(v, torch.fx.Node):
                raise UnsupportedLayerError(fx_node.name, op, why=f"an operand {v!r}")
            c, batched = self.batch_constant(fx_node, v)
            if not batched:
                raise UnsupportedLayerError(
                    fx_node.name, op,
                    why="a concatenated constant has no batch axis that follows the batch "
                    "size: broadcast it over the batch (c.expand(x.shape[0], ...))",
                )
            parts.append(c)
        if not any(isinstance(p, str) for p in parts):
            raise UnsupportedLayerError(fx_node.name, op, why="no operand depends on the input")
        groups: list[list[str | torch.Tensor]] = []
        pending: list[str | torch.Tensor] = []
        for p in parts:
            if isinstance(p, str):
                groups.append([*pending, p])
                pending = []
            else:
                pending.append(p)
        groups[-1].extend(pending)
        if len(groups) == 1 and len(groups[0]) > 1:
            self.constant_cat(fx_node, fx_node.name, groups[0], dim)
            return
        names = []
        for i, g in enumerate(groups):
            if len(g) == 1:
                names.append(str(g[0]))
                continue
            name = f"{fx_node.name}__constant{i}"
            while name in self.by_name:
                name += "_"
            names.append(self.constant_cat(fx_node, name, g, dim))
        self.add_node(fx_node, op, names, attrs={"dim": dim})

    def constant_cat(self, fx_node: torch.fx.Node, name: str,
                     group: list[str | torch.Tensor], dim: int) -> str:
        """The node ``cat_constant`` (named ``name``): the one per-sample tensor of ``group``
        in its slot along ``dim`` (an index of the batched tensor), the constants (one
        sample's value each) around it in ``params["const"]``, zero in the slot."""
        (live,) = [p for p in group if isinstance(p, str)]
        in_shape = self._sample_shape(live)
        d = dim - 1
        pieces, start = [], 0
        for p in group:
            if isinstance(p, str):
                start = sum(q.shape[d] for q in pieces)
                pieces.append(torch.zeros(in_shape, dtype=torch.float64))
            else:
                pieces.append(p)
        const = torch.cat(pieces, dim=d)
        attrs = {"dim": dim, "start": start, "length": in_shape[d]}
        if name == fx_node.name:
            self.add_node(fx_node, "cat_constant", [live], params={"const": const},
                          attrs=attrs)
            return name
        node = Node(name=name, op="cat_constant", inputs=[live], target=str(fx_node.target),
                    params={"const": const}, attrs=attrs, in_shapes=[in_shape],
                    out_shape=tuple(const.shape))
        self.nodes.append(node)
        self.names.add(name)
        self.by_name[name] = node
        return name

    def select(self, fx_node: torch.fx.Node, op: str, a: dict[str, Any]) -> None:
        """``x[index]``: basic indexing that keeps the batch axis whole (``x[:, 0]``,
        ``x[:, 1:, ::2]``, ``x[..., 0]``, ``x[:, None]``): the node ``select`` with
        ``attrs["index"]`` the index of the per-sample axes (ints, slices with a positive
        step, ``None``; an ``...`` expanded). A computed, tensor or boolean index, or one
        that indexes the batch axis, is refused."""
        x, index = a["input"], a["index"]
        if not (isinstance(x, torch.fx.Node) and x.name in self.names):
            raise UnsupportedLayerError(fx_node.name, op, why="its input is not the model's data")
        idx = list(index) if isinstance(index, tuple) else [index]

        def plain(v: Any) -> bool:
            return v is None or (isinstance(v, int) and not isinstance(v, bool))

        for v in idx:
            ok = (v is None or v is Ellipsis or (plain(v) and v is not None)
                  or (isinstance(v, slice) and all(plain(e) for e in (v.start, v.stop, v.step))
                      and (v.step is None or v.step > 0)))
            if not ok:
                raise UnsupportedLayerError(
                    fx_node.name, op,
                    why=f"index {index!r}: only ints, slices with a positive step, None and "
                    "... are supported (no computed, tensor or boolean index)")
        rank = len(self.shape(x))
        if idx.count(Ellipsis) > 1:
            raise UnsupportedLayerError(fx_node.name, op, why=f"index {index!r}")
        if Ellipsis in idx:
            used = sum(v is not None and v is not Ellipsis for v in idx)
            k = idx.index(Ellipsis)
            idx[k:k + 1] = [slice(None)] * (rank - used)
        first = idx[0] if idx else slice(None)
        if not (isinstance(first, slice) and first.start in (None, 0) and first.stop is None
                and first.step in (None, 1)):
            raise UnsupportedLayerError(
                fx_node.name, op, why=f"index {index!r} indexes the batch dimension: keep it "
                "whole (x[:, ...])")
        self.add_node(fx_node, "select", [x.name], attrs={"index": tuple(idx[1:])})

    def layer_norm(self, fx_node: torch.fx.Node, a: dict[str, Any], inputs: list[str]) -> None:
        """``F.layer_norm`` with constant (module attribute or absent) weight and bias."""
        ns = a["normalized_shape"]
        dims = [ns] if isinstance(ns, int) else ns
        if not isinstance(dims, (list, tuple)) or not all(
                isinstance(d, int) and not isinstance(d, bool) for d in dims):
            raise UnsupportedLayerError(
                fx_node.name, "layernorm", why="normalized_shape must be written as constant "
                "sizes (e.g. (D,)); one read from a tensor's shape (x.shape[-1:]) is not "
                "supported")
        shape = tuple(int(d) for d in dims)
        params = {}
        for k, default in (("weight", 1.0), ("bias", 0.0)):
            v = a[k]
            t = torch.full(shape, default, dtype=torch.float64) if v is None else (
                self.constant(fx_node, v))
            params[k] = t.expand(shape).clone()
        attrs = {"normalized_shape": shape, "eps": positive_eps(fx_node.name, a["eps"])}
        inputs = self.centre_first(fx_node, inputs, shape)
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
        if op == "linear" and params["weight"].dim() != 2:
            raise refuse(f"a weight of shape {list(params['weight'].shape)}; a linear "
                         "layer's weight has 2 dimensions")
        if op != "linear":
            for k in ("stride", "padding", "dilation", "groups", "output_padding"):
                if isinstance(a.get(k), (torch.fx.Node, str)):
                    raise refuse(f"{k}={a[k]!r}: explicit integers are supported")
            if params["weight"].dim() != 4:
                raise refuse(f"a weight of shape {list(params['weight'].shape)}; a 2-d "
                             "convolution's weight has 4 dimensions")
            attrs = dict(stride=pair(a["stride"]), padding=pair(a["padding"]),
                         dilation=pair(a["dilation"]), groups=int(a["groups"]))
            if op == "conv2d":
                attrs["kernel_size"] = tuple(int(k) for k in params["weight"].shape[2:])
            else:
                attrs["output_padding"] = pair(a["output_padding"])
        self.add_node(fx_node, op, inputs, params=params, attrs=attrs)
        self.check_input_rank(self.nodes[-1])

    def reduction_attrs(self, fx_node: torch.fx.Node, op: str,
                        a: dict[str, Any]) -> dict[str, Any]:
        r"""``torch.mean`` / ``torch.sum`` (and their methods) over per-sample dimensions:
        ``attrs["dims"]``, the reduced dimensions as sorted non-negative indices of the
        batched tensor (never the batch, 0), and ``keepdim``, as torch reads them: ``dim``
        (or its NumPy alias ``axis``) an int, a negative int, a tuple or a list; ``dtype``
        ``None`` or a floating type of at least single precision (the graph evaluates in
        float64; a half-precision or integer accumulation is refused)."""
        src = a.get("input", a.get("self"))
        rank = len(self.shape(src)) if isinstance(src, torch.fx.Node) else 0
        dim, axis = a["dim"], a["axis"]
        if axis is not None:
            if dim is not None:
                raise UnsupportedLayerError(fx_node.name, op, why="both dim= and axis= given")
            dim = axis
        dtype = a["dtype"]
        if dtype not in (None, torch.float32, torch.float64):
            raise UnsupportedLayerError(
                fx_node.name, op, why=f"dtype={dtype!r}: only float32 or float64 "
                "accumulation is supported (a half-precision or integer result is not the "
                "float64 function boundkit certifies)")
        verb = "averages" if op == "mean" else "sums"
        if dim is None or (isinstance(dim, (list, tuple)) and len(dim) == 0):
            raise UnsupportedLayerError(
                fx_node.name, op,
                why=f"it {verb} over every dimension, the batch included: pass dim= "
                "(the per-sample dimensions, e.g. dim=tuple(range(1, x.dim())))",
            )
        dims = dim if isinstance(dim, (list, tuple)) else (dim,)
        if not all(isinstance(d, int) and not isinstance(d, bool) for d in dims):
            raise UnsupportedLayerError(fx_node.name, op, why=f"dim={dim!r}")
        norm = sorted({d + rank if d < 0 else d for d in dims})
        if len(norm) != len(dims) or any(not 0 <= d < rank for d in norm):
            raise UnsupportedLayerError(fx_node.name, op, why=f"dim={dim!r}")
        if 0 in norm:
            raise UnsupportedLayerError(
                fx_node.name, op, why=f"it {verb} over the batch dimension"
            )
        keepdim = a["keepdim"]
        if not isinstance(keepdim, bool):
            raise UnsupportedLayerError(fx_node.name, op, why=f"keepdim={keepdim!r}")
        return {"dims": tuple(norm), "keepdim": keepdim}

    def arith(self, fx_node: torch.fx.Node, op: str, a: dict[str, Any]) -> None:
        r"""``input + alpha * other`` (``-`` for ``sub``): :math:`\sum_i c_i x_i + s` over the
        per-sample operands, broadcast to the output, with the constant operands in ``s``."""
        if op in ("maximum", "minimum"):
            self.extremum(fx_node, op, a)
            return
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
        finite, or whose reciprocal overflows, is refused. A negation (``-h``,
        ``torch.neg``, ``h.neg()``, ``negative``) is the product by -1 (exact)."""
        if op == "neg":
            a, op = {"input": a.get("input", a.get("self")), "other": -1.0}, "mul"
        rounding = a.get("rounding_mode")
        if rounding is not None:
            raise UnsupportedLayerError(fx_node.name, op,
                                        why=f"rounding_mode={rounding!r}: not affine")
        x, y = a.get("input", a.get("self")), a["other"]
        live = [isinstance(v, torch.fx.Node) and v.name in self.names for v in (x, y)]
        if all(live):
            raise UnsupportedLayerError(
                fx_node.name, op,
                why="both operands depend on the input: a quotient of two such tensors has "
                "no rule",
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

    def multiply(self, fx_node: torch.fx.Node, op: str, a: dict[str, Any]) -> None:
        """The reader of ``mul``'s forms (``a * b``, ``torch.mul``, ``a.mul(b)``,
        ``multiply``, in place or not): of two per-sample operands, the product ``mul``
        (:meth:`product`); with one constant operand, the affine ``scale``
        (:meth:`scale`)."""
        x, y = a.get("input", a.get("self")), a["other"]
        if all(isinstance(v, torch.fx.Node) and v.name in self.names for v in (x, y)):
            self.product(fx_node, "mul", [x, y])
            return
        self.scale(fx_node, op, a)

    def product(self, fx_node: torch.fx.Node, op: str, operands: list[torch.fx.Node]) -> None:
        """A product of two per-sample operands: ``mul`` (element-wise, torch broadcasting)
        or ``matmul`` (``[..., m, k] @ [..., k, n]``, leading axes broadcast). Both batched
        operands must have the same rank, so that torch aligns their batch axes (with
        different ranks, torch would align one operand's batch axis with a per-sample axis
        of the other: samples would mix)."""
        shapes = [self.shape(v) for v in operands]
        if len(shapes[0]) != len(shapes[1]):
            raise UnsupportedLayerError(
                fx_node.name, op,
                why=f"its operands have shapes {list(shapes[0])} and {list(shapes[1])} "
                "(batch included): torch would align the batch axis of one with a per-sample "
                "axis of the other; give both operands the same number of dimensions",
            )
        if op == "matmul" and len(shapes[0]) < 3:
            raise UnsupportedLayerError(
                fx_node.name, op,
                why="a product of two vectors per sample (operands [N, k]) mixes samples in "
                "torch.matmul; use (a * b).sum(-1, keepdim=True) or unsqueeze to [N, 1, k]",
            )
        self.add_node(fx_node, op, [v.name for v in operands])

    def matmul(self, fx_node: torch.fx.Node, op: str, a: dict[str, Any]) -> None:
        """``torch.matmul`` / ``@`` / ``torch.bmm``: of two per-sample operands, the node
        ``matmul`` (:meth:`product`); ``x @ W`` with a constant 2-D ``W``, the affine node
        ``linear`` with weight :math:`W^\top` and no bias (exact, not bilinear). A constant
        on the left (``W @ x``) or of another rank is refused."""
        x = a.get("input", a.get("self"))
        y = a["mat2"] if op == "bmm" else a["other"]
        live = [isinstance(v, torch.fx.Node) and v.name in self.names for v in (x, y)]
        if all(live):
            self.product(fx_node, "matmul", [x, y])
            return
        if not any(live):
            raise UnsupportedLayerError(fx_node.name, op, why="no operand depends on the input")
        if not live[0]:
            raise UnsupportedLayerError(
                fx_node.name, op,
                why="a constant matrix on the left (W @ x) acts on a per-sample axis other "
                "than the last; write it as x @ W (transposed) or as a Linear layer",
            )
        w = self.constant(fx_node, y)
        if op == "bmm" or w.dim() != 2 or len(self.shape(x)) < 2:
            raise UnsupportedLayerError(
                fx_node.name, op,
                why=f"a constant operand of shape {list(w.shape)}: only x @ W with a "
                "2-D constant W (an affine map of the last axis) is supported",
            )
        if not bool(torch.isfinite(w).all()):
            raise UnsupportedLayerError(fx_node.name, op, why="a constant weight is not finite")
        self.add_node(fx_node, "linear", [x.name], params={"weight": w.T.contiguous()})
        self.check_input_rank(self.nodes[-1])

    def permute(self, fx_node: torch.fx.Node, op: str, a: dict[str, Any]) -> None:
        r"""``x.transpose(d0, d1)``, ``x.permute(*dims)``, ``torch.permute``, ``x.mT``: the
        node ``permute`` with ``attrs["dims"]`` the permutation of the per-sample axes
        (:math:`h_{i_0 \ldots} = x_{i_{p(0)} \ldots}`, as ``torch.permute``); one that moves
        the batch axis is refused."""
        x = a.get("input", a.get("self"))
        if not (isinstance(x, torch.fx.Node) and x.name in self.names):
            raise UnsupportedLayerError(fx_node.name, op, why="its input is not the model's data")
        rank = len(self.shape(x))
        if op == "getattr":
            if a["name"] != "mT":
                raise UnsupportedLayerError(fx_node.name, f"getattr {a['name']!r}",
                                            why="only the attribute .mT of a tensor is read")
            perm = list(range(rank - 2)) + [rank - 1, rank - 2]
        elif op == "transpose":
            d = [a.get("dim0", a.get("axis0")), a.get("dim1", a.get("axis1"))]
            if not all(isinstance(v, int) and not isinstance(v, bool) and -rank <= v < rank
                       for v in d):
                raise UnsupportedLayerError(fx_node.name, op, why=f"dims {d}")
            perm = list(range(rank))
            i, j = (v % rank for v in d)
            perm[i], perm[j] = perm[j], perm[i]
        else:
            dims = a["dims"]
            dims = list(dims) if isinstance(dims, (list, tuple)) else [dims]
            if not all(isinstance(v, int) and not isinstance(v, bool) and -rank <= v < rank
                       for v in dims) or sorted(v % rank for v in dims) != list(range(rank)):
                raise UnsupportedLayerError(fx_node.name, op, why=f"dims {dims} are not a "
                                            f"permutation of the {rank} axes")
            perm = [v % rank for v in dims]
        if perm[0] != 0:
            raise UnsupportedLayerError(fx_node.name, op, why="it moves the batch dimension")
        self.add_node(fx_node, "permute", [x.name],
                      attrs={"dims": tuple(p - 1 for p in perm[1:])})

    def call_method(self, fx_node: torch.fx.Node) -> None:
        name = str(fx_node.target)
        if name == "permute":  # x.permute(0, 2, 1) or x.permute((0, 2, 1)) or dims=
            args = fx_node.args[1:]
            dims = fx_node.kwargs.get("dims", args[0] if len(args) == 1 else list(args))
            self.permute(fx_node, "permute", {"self": fx_node.args[0], "dims": dims})
            self.nodes[-1].target = name
            return
        if name in _RESHAPE_METHODS:
            inputs = self.tensor_inputs([fx_node.args[0]])
            if len(inputs) != 1:
                raise UnsupportedLayerError(fx_node.name, name, why="not a per-sample tensor")
            self.add_node(fx_node, "reshape", inputs, target=name)
            return
        self.call_function(fx_node, METHOD_SIGS.get(name))
        self.nodes[-1].target = name


#: the reductions whose ``dtype=`` the float64 copy evaluates in float64
_REDUCTIONS = frozenset({torch.sum, torch.mean, "sum", "mean"})


def lift_reduction_dtypes(gm: torch.fx.GraphModule) -> None:
    """In the float64 trace, a reduction's ``dtype=torch.float32`` (a float32 model's
    ``x.sum(1, dtype=torch.float32)``) accumulates in float64, as every other operation of
    the float64 copy does: the cast would otherwise hand float32 values to float64 layers.
    Other dtypes are left as written (capture refuses them by name)."""
    for n in gm.graph.nodes:
        if n.op in ("call_function", "call_method") and n.target in _REDUCTIONS \
                and n.kwargs.get("dtype") is torch.float32:
            n.kwargs = {**n.kwargs, "dtype": torch.float64}
    gm.recompile()


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
    model64 = decompose_attention(model64)
    if module_op(model64, leaf_modules) is not None:  # a bare layer: a one-layer model
        model64 = nn.Sequential(model64)
    tracer = _Tracer(leaf_modules)
    try:
        fx_graph = tracer.trace(model64)
    except UnsupportedLayerError:
        raise  # a layer refused by name while tracing (an attention mask)
    except Exception as exc:  # torch.fx raises many exception types
        raise UnsupportedLayerError(
            type(model).__name__, "trace",
            why=f"torch.fx could not trace the model ({type(exc).__name__}: {exc}); "
            "data-dependent control flow is not supported",
        ) from exc
    gm = torch.fx.GraphModule(tracer.root, fx_graph)
    lift_reduction_dtypes(gm)
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
        cause = exc.__cause__ if exc.__cause__ is not None else exc  # ShapeProp wraps it
        first = (str(cause).strip().splitlines() or [""])[0]
        raise InputShapeError(
            f"the model cannot run on inputs of shape [N, {', '.join(map(str, input_shape))}]: "
            f"{type(cause).__name__}: {first}"
        ) from exc
    cancel_batch_swaps(gm)
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
            cap.call_function(fx_node, FUNCTION_SIGS.get(fx_node.target))
        else:
            cap.call_method(fx_node)
    assert output_name is not None
    tensors = [*model.parameters(), *model.buffers()]
    graph = Graph(cap.nodes, gm, input_shape, output_name, model_dtype, fingerprint=fingerprint,
                  model_dtypes=frozenset(t.dtype for t in tensors if t.is_floating_point()),
                  model_on_cuda=any(t.is_cuda for t in tensors))
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


def _call_fx(v: torch.fx.Node, value: Callable[[torch.fx.Node], Any]) -> Any:
    """The value of the fx call (``call_function`` / ``call_method``) ``v``, its node
    arguments replaced by ``value(node)``, without autograd."""
    args = torch.fx.node.map_arg(v.args, value)
    kwargs = torch.fx.node.map_arg(v.kwargs, value)
    with torch.no_grad():
        if v.op == "call_function":
            return v.target(*args, **kwargs)  # type: ignore[operator]
        return getattr(args[0], str(v.target))(*args[1:], **kwargs)
