"""Certification methods as objects, and their registry.

A :class:`Method` turns a captured graph and a batch of inputs into per-sample radii. The
engine (:func:`boundkit.certify`), the CLI's ``--method`` choices, the reports' "not a
guarantee" labels and :mod:`boundkit.crosschecking` read this registry and name no method:
a method registered with :func:`register_method` works end to end.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from boundkit.graph.graph import Graph


@dataclass
class BatchResult:
    """What a method returns for one batch (all tensors [N]).

    Attributes:
        radius: float64 radii.
        label: predicted class at x.
        runner_up: the most threatening competitor class.
        margin: logit margin at x.
        trace: node name -> per-sample bound at that node (method-specific meaning).
        info: per-batch extras (e.g. which bound each sample's radius came from).
        outputs: the graph's float64 output at x [N, C] (what the fidelity check compares
            with the model's own forward; the engine computes it when a method leaves it).
        unsafe: bool [N], samples whose values left float64's analysed range
            (:func:`~boundkit.bounds.numerics.unsafe_range`; their radius becomes 0).
        outside_box: bool [N], samples outside the method's input box (their radius is
            the method's bound without the box; the certificate says so per sample), or
            None for a method without a box.
    """

    radius: torch.Tensor
    label: torch.Tensor
    runner_up: torch.Tensor
    margin: torch.Tensor
    trace: dict[str, torch.Tensor] = field(default_factory=dict)
    info: dict[str, torch.Tensor] = field(default_factory=dict)
    outputs: torch.Tensor | None = None
    unsafe: torch.Tensor | None = None
    outside_box: torch.Tensor | None = None

    @staticmethod
    def cat(parts: list[BatchResult]) -> BatchResult:
        """The results of consecutive sample groups as one batch."""
        def opt(ts: list[torch.Tensor | None]) -> torch.Tensor | None:
            return None if any(t is None for t in ts) else torch.cat(ts)  # type: ignore[arg-type]

        first = parts[0]
        return BatchResult(
            torch.cat([p.radius for p in parts]), torch.cat([p.label for p in parts]),
            torch.cat([p.runner_up for p in parts]), torch.cat([p.margin for p in parts]),
            {k: torch.cat([p.trace[k] for p in parts]) for k in first.trace},
            {k: torch.cat([p.info[k] for p in parts]) for k in first.info},
            opt([p.outputs for p in parts]), opt([p.unsafe for p in parts]),
            opt([p.outside_box for p in parts]))


class Method(ABC):
    """A certification method.

    Subclasses set :attr:`name`, :attr:`is_guarantee` and :attr:`description`, and implement
    :meth:`prepare` (per-model work: planning, rule look-ups, raising
    :class:`~boundkit.errors.UnsupportedLayerError` for a node it cannot handle) and
    :meth:`run` (one batch)."""

    #: the name users pass as ``method=``
    name: str = ""
    #: True when the radius is a proven lower bound on the minimal class-changing L2
    #: perturbation (a violation is a bug); False for published-but-unsound formulas
    is_guarantee: bool = True
    #: one line for ``--help`` and the docs
    description: str = ""
    #: for a method with a ``box`` option: the input box used when none is passed
    default_box: tuple[float, float] | None = None

    def prepare(self, graph: Graph) -> Any:
        """Per-model state (a plan), computed once per graph and cached by the engine."""
        return None

    @abstractmethod
    def run(self, graph: Graph, x: torch.Tensor, plan: Any, *, trace: bool,
            **options: Any) -> BatchResult:
        """Certify one batch ``x`` (float64, on the graph's device)."""

    def options(self) -> tuple[str, ...]:
        """Names of the keyword options :meth:`run` accepts (``box``, ``steps``...)."""
        return ()


_METHODS: dict[str, Method] = {}


def register_method(method: Method, *, replace: bool = False) -> None:
    """Make ``method`` available to :func:`boundkit.certify`, the CLI and the reports."""
    if not isinstance(method, Method):
        raise TypeError("register_method expects a boundkit Method instance")
    if not method.name:
        raise ValueError("a Method needs a non-empty name")
    if method.name in _METHODS and not replace:
        raise ValueError(f"a method named {method.name!r} exists; pass replace=True")
    _METHODS[method.name] = method


def unregister_method(name: str) -> None:
    """Remove a registered method (built-in ones come back on the next import)."""
    _METHODS.pop(name, None)


def _load_builtin_methods() -> None:
    from boundkit.bounds import alpha, bab, crown, local, peck2017, sound  # noqa: F401  (register)


def get_method(name: str) -> Method:
    """The method called ``name`` (a clear ``ValueError`` naming the choices otherwise)."""
    _load_builtin_methods()
    if not isinstance(name, str) or name not in _METHODS:
        raise ValueError(f"unknown method {name!r}; choose one of {', '.join(method_names())}")
    return _METHODS[name]


def method_names() -> tuple[str, ...]:
    """Names of the registered methods, in registration order."""
    _load_builtin_methods()
    return tuple(_METHODS)


def is_guarantee(name: str) -> bool:
    """True for a registered method whose radius is a certificate (unknown names: False)."""
    _load_builtin_methods()
    m = _METHODS.get(name)
    return bool(m is not None and m.is_guarantee)
