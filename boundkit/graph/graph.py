"""The typed node graph that every bound method walks.

A :class:`Graph` is a topologically ordered list of :class:`Node` objects, one per tensor
operation of the captured model, each with its kind (``op``), its inputs, its parameters
(as float64 tensors) and the shapes it consumes and produces (without the batch
dimension). The graph also keeps a float64 copy of the traced model so that any set of
intermediate activations can be recomputed exactly for a batch.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx

from boundkit.graph.arithmetic import Arithmetic, input_dtype, model_arithmetic
from boundkit.graph.ops import evaluate
from boundkit.graph.optable import ops_where

_null = contextlib.nullcontext

#: monotone squashes of the logits, skipped by :attr:`Graph.logits`
OUTPUT_SQUASH_OPS = ops_where("output_squash")


@dataclass
class Node:
    """One tensor operation of the model.

    Attributes:
        name: unique name (the torch.fx node name, e.g. ``"conv1"`` or ``"relu_2"``).
        op: the node kind: a key of :data:`boundkit.graph.optable.OPS`, ``"unknown"`` (a
            call boundkit cannot read, refused by name unless a rule is registered), or the
            op name of a user's module registered with ``boundkit.register_rule``.
        inputs: names of the nodes whose outputs this node consumes (tensor inputs only).
        target: the module path (for modules) or the function/method name.
        module: the float64 copy of the ``nn.Module`` that implements the node, if any.
        params: float64 parameters the rules need (``weight``, ``bias``, ``running_mean``...).
        attrs: hyper-parameters (stride, padding, kernel size, p, LRN constants, dims...).
        in_shapes: input shapes without the batch dimension.
        out_shape: output shape without the batch dimension.
    """

    name: str
    op: str
    inputs: list[str]
    target: str
    module: torch.nn.Module | None = None
    params: dict[str, torch.Tensor] = field(default_factory=dict)
    attrs: dict[str, Any] = field(default_factory=dict)
    in_shapes: list[tuple[int, ...]] = field(default_factory=list)
    out_shape: tuple[int, ...] = ()

    @property
    def in_numel(self) -> int:
        """Number of scalar entries of the (first) input."""
        return int(torch.Size(self.in_shapes[0]).numel()) if self.in_shapes else 0

    @property
    def out_numel(self) -> int:
        """Number of scalar entries of the output."""
        return int(torch.Size(self.out_shape).numel())

    def describe(self) -> str:
        """A one-line human-readable summary, used in traces and error messages."""
        shapes = ", ".join("x".join(map(str, s)) for s in self.in_shapes)
        out = "x".join(map(str, self.out_shape))
        return f"{self.name} [{self.op}] ({shapes}) -> ({out})"


class Graph:
    """A captured model: typed nodes in topological order plus a float64 evaluator.

    Build one with :func:`boundkit.graph.capture`.
    """

    def __init__(
        self,
        nodes: list[Node],
        gm: torch.fx.GraphModule,
        input_shape: tuple[int, ...],
        output: str,
        model_dtype: torch.dtype,
        *,
        fingerprint: str = "",
        model_dtypes: frozenset[torch.dtype] = frozenset(),
        model_on_cuda: bool = False,
    ) -> None:
        self.nodes = nodes
        self._by_name = {n.name: n for n in nodes}
        self.gm = gm
        self.input_shape = tuple(input_shape)
        self.output = output
        self.model_dtype = model_dtype
        #: every floating dtype among the model's parameters and buffers (none: the model
        #: runs in its inputs' dtype), and whether any lives on a GPU
        #: (:attr:`model_arithmetic`)
        self.model_dtypes = frozenset(model_dtypes)
        self.model_on_cuda = model_on_cuda
        #: :func:`~boundkit.graph.fingerprint.model_fingerprint` of the model at capture
        self.fingerprint = fingerprint
        self._consumers: dict[str, list[str]] = {n.name: [] for n in nodes}
        for n in nodes:
            for i in n.inputs:
                self._consumers[i].append(n.name)
        self.cache: dict[str, Any] = {}  # per-model quantities cached by the rules
        self._upstream: dict[str, set[str]] = {}

    # ------------------------------------------------------------------ structure
    def __iter__(self) -> Iterator[Node]:
        return iter(self.nodes)

    def __len__(self) -> int:
        return len(self.nodes)

    def __getitem__(self, name: str) -> Node:
        return self._by_name[name]

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    @property
    def run_dtype(self) -> torch.dtype:
        """The dtype the model runs in: :attr:`model_dtype`, or for a model without
        floating parameters or buffers, that of the inputs being certified
        (:func:`boundkit.graph.arithmetic.inputs_in`)."""
        return self.model_dtype if self.model_dtypes else input_dtype()

    @property
    def model_arithmetic(self) -> Arithmetic:
        """The arithmetic the model itself runs in
        (:func:`boundkit.graph.arithmetic.model_arithmetic`, read with the current global
        precision flags): certificates charge its rounding at every node."""
        return model_arithmetic(set(self.model_dtypes), self.model_on_cuda)

    @property
    def input(self) -> Node:
        """The input (placeholder) node."""
        return self.nodes[0]

    def consumers(self, name: str) -> list[str]:
        """Names of the nodes that read the output of ``name``."""
        return self._consumers[name]

    def producer(self, node: Node) -> Node:
        """The single tensor input of ``node``."""
        return self._by_name[node.inputs[0]]

    @property
    def logits(self) -> Node:
        """The node whose output is the logit vector: the output node, skipping a final
        softmax / log-softmax (monotone, so the argmax and the class changes are the same)
        and plain identities; an identity that adds a constant (``logits + c``, a class
        prior) changes the margins and is kept."""
        node = self._by_name[self.output]
        while node.op in OUTPUT_SQUASH_OPS or (
                node.op == "identity" and node.attrs.get("shift") is None):
            if node.op in OUTPUT_SQUASH_OPS:
                dim = node.attrs.get("dim")
                if dim not in (1, -1, None) and len(node.out_shape) == 1:
                    break
            node = self.producer(node)
        return node

    @property
    def num_classes(self) -> int:
        """Number of logits."""
        return self.logits.out_numel

    def is_chain(self) -> bool:
        """True when every node up to the logits has one tensor input and one consumer."""
        chain = self.path_to_logits()
        return chain is not None

    def path_to_logits(self) -> list[Node] | None:
        """The nodes from the input to the logits as a chain, or ``None`` for a DAG."""
        path = [self.logits]
        while path[-1].op != "input":
            n = path[-1]
            if len(n.inputs) != 1:
                return None
            prev = self._by_name[n.inputs[0]]
            if len([c for c in self._consumers[prev.name] if c in self._upstream_of_logits()]) != 1:
                return None
            path.append(prev)
        return list(reversed(path))

    def _upstream_of_logits(self) -> set[str]:
        return self._upstream_of(self.logits.name)

    def _upstream_of(self, name: str) -> set[str]:
        """The names of the nodes ``name`` depends on (itself included)."""
        if name not in self._upstream:
            seen: set[str] = set()
            stack = [name]
            while stack:
                s = stack.pop()
                if s in seen:
                    continue
                seen.add(s)
                stack.extend(self._by_name[s].inputs)
            self._upstream[name] = seen
        return self._upstream[name]

    def upstream(self) -> list[Node]:
        """The nodes the logits depend on, in topological order."""
        up = self._upstream_of_logits()
        return [n for n in self.nodes if n.name in up]

    # ------------------------------------------------------------------ evaluation
    def activations(
        self, x: torch.Tensor, names: Iterable[str] | None = None
    ) -> dict[str, torch.Tensor]:
        """Evaluate the model in float64 on ``x`` and return the outputs of ``names``
        (all nodes if ``None``). ``x`` is cast to float64 on the graph's device."""
        values, _ = self.activations_and_norms(x, names, norms=False)
        return values

    def activations_and_norms(
        self,
        x: torch.Tensor,
        names: Iterable[str] | None = None,
        *,
        norms: bool = True,
        peaks: dict[str, torch.Tensor] | None = None,
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Like :meth:`activations`, plus the per-sample L2 norm of every node's output
        (and, into ``peaks`` if given, the per-sample largest magnitude).

        Values are computed node by node from the nodes' own fields
        (:func:`boundkit.graph.ops.evaluate`): what the bound methods read is what is
        evaluated."""
        keep = set(names) if names is not None else {n.name for n in self.nodes}
        keep |= {self.logits.name, self.output}
        xb = x.to(device=self.device, dtype=torch.float64)
        values, all_norms = self.evaluate({self.input.name: xb}, keep, norms=norms, peaks=peaks)
        return values, all_norms

    def evaluate(
        self,
        env: dict[str, torch.Tensor],
        keep: Iterable[str],
        *,
        norms: bool = False,
        peaks: dict[str, torch.Tensor] | None = None,
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Evaluate the nodes upstream of the logits, starting from the values in ``env``
        (node name -> batch; the nodes they stand for are not recomputed, nor what only
        they depend on). Returns the values of ``keep`` and, with ``norms``, the per-sample
        L2 norm of every computed node's output."""
        keep = set(keep)
        up = self._upstream_of_logits() | self._upstream_of(self.output)
        last_use = {}
        for i, n in enumerate(self.nodes):
            for src in n.inputs:
                last_use[src] = i
        values = dict(env)
        out: dict[str, torch.Tensor] = {k: v for k, v in env.items() if k in keep}
        out_norms: dict[str, torch.Tensor] = {}
        with torch.no_grad() if not any(v.requires_grad for v in env.values()) else _null():
            for i, n in enumerate(self.nodes):
                if n.name not in up:
                    continue
                if n.name not in values:
                    if any(src not in values for src in n.inputs) or not n.inputs:
                        continue  # upstream of a value given in env only
                    values[n.name] = evaluate(n, [values[src] for src in n.inputs])
                v = values[n.name]
                if norms:
                    out_norms[n.name] = v.reshape(v.shape[0], -1).norm(dim=1)
                if peaks is not None:
                    peaks[n.name] = v.reshape(v.shape[0], -1).abs().amax(dim=1)
                if n.name in keep:
                    out[n.name] = v
                for src in n.inputs:  # free what no later node reads
                    if last_use.get(src) == i and src not in keep:
                        values.pop(src, None)
        return out, out_norms

    def to(self, device: torch.device | str) -> Graph:
        """Move the float64 evaluator and the node parameters to ``device`` (in place)."""
        self.gm.to(device)
        for n in self.nodes:
            n.params = {k: v.to(device) for k, v in n.params.items()}
            if isinstance(n.attrs.get("shift"), torch.Tensor):
                n.attrs["shift"] = n.attrs["shift"].to(device)
        self.cache.clear()
        return self

    @property
    def device(self) -> torch.device:
        for p in self.gm.parameters():
            return p.device
        for b in self.gm.buffers():
            return b.device
        return torch.device("cpu")

    def summary(self) -> str:
        """A multi-line description of the graph."""
        return "\n".join(n.describe() for n in self.nodes)

    def __repr__(self) -> str:
        return (
            f"Graph({len(self.nodes)} nodes, input {self.input_shape}, "
            f"logits {self.logits.name})"
        )
