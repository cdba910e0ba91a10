"""Rules, per node kind and per method, and the registry that maps one to the other.

A *rule* tells the engine what one node does to the robustness bound:

* ``method="sound"`` rules are :class:`SoundRule` objects. Their :meth:`~SoundRule.modulus`
  returns a modulus of continuity of the node at the current activations
  (``||h(z + q) - h(z)|| <= omega(||q||)``), proven in ``docs/theory/``. Most are Lipschitz
  constants computed once per model (:class:`LipschitzRule`).
* ``method="peck2017"`` rules are :class:`BackwardRule` objects mapping the bound kappa on
  the node's output perturbation to a bound on its input perturbation, with the thesis's
  formula (``docs/theory/peck2017.md`` lists which of them fail).

Users add rules for their own layers with :func:`register_rule`; see ``docs/extending.md``.
"""

from __future__ import annotations

import importlib
import math
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING

import torch
import torch.nn as nn

from boundkit.bounds.modulus import Modulus
from boundkit.bounds.numerics import ELEMENTWISE_ULPS, UNIT_ROUNDOFF
from boundkit.graph.arithmetic import OVERFLOW_CHARGE

if TYPE_CHECKING:
    from boundkit.graph.arithmetic import Arithmetic
    from boundkit.graph.graph import Graph, Node

#: factor on a float64 rounding bound for the steps capture folded into one node (an affine
#: node's :math:`\gamma_{k+1}` against the model's :math:`\gamma_{k+8}`, ``numerics.md`` §4)
FOLDED_STEPS = 9.0


class Rule(ABC):  # noqa: B024 (abstract methods live in the subclasses)
    """Base class of every rule. ``needs`` lists the node names whose float64 activations
    the rule reads (by default none); ``prepare`` computes per-model constants once."""

    def needs(self, node: Node, graph: Graph) -> set[str]:
        return set()

    def prepare(self, node: Node, graph: Graph) -> None:
        return None


class SoundRule(Rule):
    """A proven modulus of continuity for one node (see :mod:`boundkit.bounds.modulus`)."""

    #: True when the node's float64 evaluation is exact (no rounding: ReLU, max, reshape)
    exact_arithmetic: bool = False

    def modulus(self, node: Node, graph: Graph, acts: dict[str, torch.Tensor]) -> Modulus:
        return Modulus.lipschitz(self.lipschitz(node, graph))

    @abstractmethod
    def lipschitz(self, node: Node, graph: Graph) -> float:
        """A global Lipschitz constant of the node (an upper bound, float64); used to carry
        rounding errors through the node, and as its modulus unless ``modulus`` is
        overridden."""

    def rounding(
        self, node: Node, graph: Graph, in_norm: torch.Tensor, out_norm: torch.Tensor
    ) -> torch.Tensor:
        """An upper bound on the L2 norm of the error that float64 evaluation of this node
        adds to its output at the current point (``in_norm``, ``out_norm``: per-sample L2
        norms of the node's input and output). Default: element-wise libm accuracy."""
        if self.exact_arithmetic:
            return torch.zeros_like(out_norm)
        return ELEMENTWISE_ULPS * UNIT_ROUNDOFF * out_norm

    def model_rounding(self, node: Node, graph: Graph, in_norm: torch.Tensor,
                       out_norm: torch.Tensor, arithmetic: Arithmetic) -> torch.Tensor:
        r"""An upper bound on the L2 norm of the error the *model's* evaluation of this node
        adds to its output, in ``arithmetic`` (its own dtype), for inputs and outputs of
        norms up to ``in_norm`` and ``out_norm`` (``docs/theory/numerics.md`` §4):
        :meth:`rounding`'s float64 bound rescaled to the arithmetic's unit :math:`u'`
        (every :math:`\gamma_k` with :math:`k\le n_{in}+16` grows by at most
        :math:`(u'/u)/(1-ku')`), times :data:`FOLDED_STEPS` for the steps capture folded
        into the node, plus :math:`8u'(\|y\|+\|z\|+\sqrt{n_{out}})` for a library
        routine's cancellation on an element-wise node (one input of the output's shape), and
        the absolute terms of gradual underflow (:math:`2k\eta'\sqrt{n_{out}}+\eta'`). Zero
        for exact nodes: ``exact_arithmetic``, or a :meth:`rounding` that is zero on unit
        norms (moves, maxima)."""
        ones = torch.ones_like(out_norm)
        if self.exact_arithmetic or not bool(self.rounding(node, graph, ones, ones).any()):
            return torch.zeros_like(out_norm)
        n_in = sum(math.prod(s) for s in node.in_shapes)
        k = n_in + 16
        ku = k * arithmetic.unit
        if ku >= 0.5:  # no bound holds: nothing is claimed
            return torch.full_like(out_norm, OVERFLOW_CHARGE)
        scale = FOLDED_STEPS * (arithmetic.unit / UNIT_ROUNDOFF) / (1 - ku)
        root = math.sqrt(node.out_numel)
        out = (self.rounding(node, graph, in_norm, out_norm) * scale
               + 2 * k * arithmetic.eta * root + arithmetic.eta)
        if len(node.inputs) == 1 and tuple(node.in_shapes[0]) == tuple(node.out_shape):
            out = out + ELEMENTWISE_ULPS * arithmetic.unit * (out_norm + in_norm + root)
        # an entry of the input or output may reach the dtype's largest number: infinite
        return torch.where(arithmetic.overflows(out_norm + in_norm),
                           torch.full_like(out, OVERFLOW_CHARGE), out)

    def deviation(self, node: Node, graph: Graph) -> float:
        """An upper bound on the L2 distance between what torch computes for this node and
        the function the rule bounds, counted at x and at x + r (default: 0, they are the
        same function; softplus's threshold jump is not)."""
        return 0.0

    def input_norm(self, node: Node, graph: Graph, norms: dict[str, torch.Tensor]) -> torch.Tensor:
        """The per-sample input magnitude :meth:`rounding` is given (default: the L2 norm of
        the first input; merges override)."""
        return norms[node.inputs[0]]

    def carry_error(self, node: Node, graph: Graph, ins: list[torch.Tensor]) -> torch.Tensor:
        """Bound on the output error caused by errors ``ins`` [N] already in the inputs
        (default: the Lipschitz constant times the first input's; merges override)."""
        return self.lipschitz(node, graph) * ins[0]

    def carry_error_at(self, node: Node, graph: Graph, ins: list[torch.Tensor],
                       norms: dict[str, torch.Tensor]) -> torch.Tensor:
        """:meth:`carry_error` for a rule that also reads the per-sample L2 norms of the
        computed values (``norms``, by node): a product's carried error grows with the size
        of its other operand. Default: :meth:`carry_error`."""
        return self.carry_error(node, graph, ins)

    #: True for rules of merge nodes (``add``, ``cat``) that combine input moduli
    merges: bool = False

    def combine_at(self, node: Node, graph: Graph, parts: list[Modulus],
                   acts: dict[str, torch.Tensor] | None) -> Modulus:
        """:meth:`combine` for a merge whose modulus depends on the point: ``acts`` are the
        float64 activations at x (with their rounding bounds, ``Activations.errors``), the
        values of :meth:`needs` among them. Default: :meth:`combine`."""
        return self.combine(node, graph, parts)

    def combine(self, node: Node, graph: Graph, parts: list[Modulus]) -> Modulus:
        """For a merge node (``merges = True``): the modulus of its output from the moduli
        of its inputs. Only merge rules are asked; a merge rule must define it."""
        raise TypeError(f"{type(self).__name__} sets merges = True but does not define "
                        "combine(node, graph, parts)")


class LipschitzRule(SoundRule):
    """A rule given by a global Lipschitz constant computed once per model."""

    def lipschitz(self, node: Node, graph: Graph) -> float:
        key = ("lipschitz", node.name)
        if key not in graph.cache:
            graph.cache[key] = float(self.compute_lipschitz(node, graph))
        return graph.cache[key]

    @abstractmethod
    def compute_lipschitz(self, node: Node, graph: Graph) -> float:
        """The constant itself (called once per model and node)."""


class BackwardRule(Rule):
    """A thesis-style rule: kappa at the node's output -> kappa at its input."""

    @abstractmethod
    def backward(
        self, node: Node, graph: Graph, kappa: torch.Tensor, acts: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        """kappa [N] at the node's output -> kappa [N] at its input."""


_RULES: dict[tuple[str, str], Rule] = {}
_MODULE_OPS: dict[type[nn.Module], str] = {}


def register_rule(
    node_type: str | type[nn.Module], method: str, rule: Rule, *, replace: bool = False
) -> None:
    """Register ``rule`` for nodes of ``node_type`` under ``method``.

    Args:
        node_type: an op kind (``"relu"``, ``"conv2d"``...) or an ``nn.Module`` subclass.
            A module class is captured as a node whose op is the class name in lower case,
            so a model using it can be certified once a rule exists.
        method: the rule kind a method reads: ``"sound"`` (a :class:`SoundRule`, also
            used by ``sound-local``, and by ``crown``/``alpha`` for nodes without a linear
            relaxation), ``"peck2017"`` (a :class:`BackwardRule`), ``"crown"`` (a
            :class:`~boundkit.bounds.relaxation.RelaxationRule`), or the rule kind of a
            method you registered with :func:`boundkit.register_method`.
        rule: a :class:`SoundRule` for sound-style methods, a :class:`BackwardRule` for
            thesis-style ones.
        replace: allow overriding an existing rule.
    """
    if isinstance(node_type, type):
        if not issubclass(node_type, nn.Module):
            raise TypeError("node_type must be an op name or an nn.Module subclass")
        op = node_type.__name__.lower()
        _MODULE_OPS[node_type] = op
    else:
        op = str(node_type)
    if method == "sound" and not isinstance(rule, SoundRule):
        raise TypeError("a rule for method 'sound' must be a SoundRule")
    if method == "peck2017" and not isinstance(rule, BackwardRule):
        raise TypeError("a rule for method 'peck2017' must be a BackwardRule")
    key = (op, method)
    if key in _RULES and not replace:
        raise ValueError(f"a rule for ({op!r}, {method!r}) exists; pass replace=True")
    _RULES[key] = rule


def unregister_rule(node_type: str | type[nn.Module], method: str) -> None:
    """Remove a rule (and, for a module class, its capture mapping)."""
    if isinstance(node_type, type):
        op = _MODULE_OPS.pop(node_type, node_type.__name__.lower())
    else:
        op = node_type
    _RULES.pop((op, method), None)


def get_rule(op: str, method: str) -> Rule | None:
    """The rule for ``(op, method)``, or ``None``."""
    _load_builtin_rules()
    return _RULES.get((op, method))


def require_rule(node: Node, method: str) -> Rule:
    """The rule for ``node`` under ``method``, or an :class:`UnsupportedLayerError` naming
    the node."""
    from boundkit.errors import UnsupportedLayerError

    rule = get_rule(node.op, method)
    if rule is None:
        what = node.attrs.get("module_type", node.target)
        raise UnsupportedLayerError(
            node.name, node.op if node.op != "unknown" else what, method,
            f"module path {node.target!r}: no rule for this node kind; register one with "
            "boundkit.register_rule",
        )
    return rule


def custom_module_ops() -> dict[type[nn.Module], str]:
    """Module classes registered by users, with the op name they are captured as."""
    return dict(_MODULE_OPS)


def available_methods() -> tuple[str, ...]:
    """Names of the registered certification methods (:mod:`boundkit.bounds.method`)."""
    from boundkit.bounds.method import method_names

    return method_names()


_LOADED = False


def _load_builtin_rules() -> None:
    """Import the rule modules the operator table names (:attr:`OpSpec.rules`): importing
    one registers its rules. ``tests/graph/test_optable.py`` checks that every declared
    family has a rule and every built-in rule is declared."""
    global _LOADED
    if _LOADED:
        return
    _LOADED = True
    from boundkit.graph.optable import rule_modules

    for name in rule_modules():
        importlib.import_module(name)


#: the rule class each family's rules must be (``crown``'s is checked by name: the
#: relaxation module imports this one)
_FAMILY_BASES: dict[str, type[Rule]] = {"sound": SoundRule, "peck2017": BackwardRule}


def table_mismatches() -> list[str]:
    """Disagreements between the operator table (:data:`boundkit.graph.optable.OPS`) and
    the registered built-in rules, one line each (empty when they agree): a declared rule
    family with no rule, or a rule of the wrong class, or from another module than the
    table names; a built-in rule (its class defined in ``boundkit.bounds``) the table does
    not declare."""
    from boundkit.bounds.relaxation import RelaxationRule
    from boundkit.graph.optable import OPS

    _load_builtin_rules()
    bases = {**_FAMILY_BASES, "crown": RelaxationRule}
    out = []
    for spec in OPS.values():
        for family, module in spec.rules.items():
            rule = _RULES.get((spec.name, family))
            if rule is None:
                out.append(f"{spec.name!r} declares a {family!r} rule in {module}, which "
                           "registers none")
            elif family in bases and not isinstance(rule, bases[family]):
                out.append(f"{spec.name!r}: the {family!r} rule is a {type(rule).__name__}, "
                           f"not a {bases[family].__name__}")
            elif type(rule).__module__ != module:
                out.append(f"{spec.name!r}: the {family!r} rule comes from "
                           f"{type(rule).__module__}, the table names {module}")
    for (op, family), rule in _RULES.items():
        builtin = type(rule).__module__.startswith("boundkit.bounds.")
        spec = OPS.get(op)
        if builtin and (spec is None or family not in spec.rules):
            out.append(f"{type(rule).__module__} registers a {family!r} rule for {op!r}, "
                       "which the table does not declare")
    return out
