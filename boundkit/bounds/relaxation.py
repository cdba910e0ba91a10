r"""Linear relaxation bounds: the state and the rule interface of ``crown`` and ``alpha``.

For a scalar function of the network (a logit margin, or one neuron for an intermediate
bound) the backward walk carries a :class:`LinearBounds` at node :math:`h`:

.. math::  f(x) \ge \langle A, h(x)\rangle + b - e \qquad\text{for every } x \in \mathcal{B},

where :math:`\mathcal{B}` is the L2 ball around :math:`x_0` (intersected with the input box),
:math:`b` the constant gathered so far and :math:`e\ge0` a proven bound on all rounding errors
committed so far (``docs/theory/linear_relaxation.md``). Each node's
:class:`RelaxationRule` maps the bound at its output to one at each input; at a fork the
contributions add (:func:`boundkit.bounds.walk.backward`). At the input the bound is
concretised over :math:`\mathcal{B}` by the dual norm.

Every rule also gives an interval transfer (``interval``) used for the cheap intermediate
bounds, refined by backward passes at the inputs of ReLUs and smooth activations.
"""

from __future__ import annotations

import math
from abc import abstractmethod
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, NamedTuple, TypeVar

import torch

from boundkit.bounds.numerics import UNIT_ROUNDOFF, gamma
from boundkit.bounds.registry import Rule
from boundkit.graph.ops import evaluate

if TYPE_CHECKING:
    from boundkit.graph.graph import Graph, Node

T = TypeVar("T")


def dot(a: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``<a[n, s], v[n]>`` over the node dimensions: [N, S, *shape] x [N, *shape] -> [N, S].

    Written as the row vector ``v^T`` times ``a^T``: float64 ``bmm`` against a column
    vector is up to 8x slower on CPU (a sum of the same products: the same rounding bound)."""
    return torch.bmm(v.flatten(1).unsqueeze(1), a.flatten(2).transpose(1, 2)).squeeze(1)


@dataclass
class Interval:
    """Element-wise bounds ``lo <= h(x) <= hi`` [N, *shape] valid on the whole ball."""

    lo: torch.Tensor
    hi: torch.Tensor

    @property
    def mag(self) -> torch.Tensor:
        """An upper bound on ``|h(x)|``."""
        return torch.maximum(self.lo.abs(), self.hi.abs())

    def meet(self, other: Interval) -> Interval:
        return Interval(torch.maximum(self.lo, other.lo), torch.minimum(self.hi, other.hi))


@dataclass
class LinearBounds:
    r"""``f >= <A, h> + bias - err`` over the ball (A [N, S, *shape]; bias, err [N, S]).

    ``forks`` counts the floating-point additions that produced ``A`` at a fork; the next
    rule charges :math:`\gamma_{\text{forks}}\langle|A|, |h|\rangle` for them."""

    A: torch.Tensor
    bias: torch.Tensor
    err: torch.Tensor
    forks: int = 0

    def __add__(self, other: LinearBounds) -> LinearBounds:
        bias = self.bias + other.bias
        err = self.err + other.err + 2 * UNIT_ROUNDOFF * (self.bias.abs() + other.bias.abs())
        return LinearBounds(self.A + other.A, bias, err, self.forks + other.forks + 1)

    def charge_forks(self, mag: torch.Tensor) -> torch.Tensor:
        """Rounding of the additions that formed ``A`` at a fork: [N, S]."""
        if self.forks == 0:
            return torch.zeros_like(self.err)
        return float(gamma(self.forks + 1)) * dot(self.A.abs(), mag)

    def then(self, A: torch.Tensor, add_bias: torch.Tensor | float,
             add_err: torch.Tensor | float, mag_out: torch.Tensor) -> LinearBounds:
        """The bound at the input of a node: new coefficients ``A``, the node's constant
        ``add_bias`` and rounding ``add_err``; charges the pending fork additions."""
        bias = self.bias + add_bias
        err = (self.err + add_err + self.charge_forks(mag_out)
               + UNIT_ROUNDOFF * (self.bias.abs() + torch.as_tensor(add_bias).abs()))
        return LinearBounds(A, bias, err)


#: ``RelaxContext.spec`` of the walk bounding the margins (not a valid node name)
FINAL_SPEC: Final = "<final>"


class SlopeKey(NamedTuple):
    """Where a ReLU's optimisable lower slopes live in :attr:`RelaxContext.slopes`: the walk
    they serve (``spec``: :data:`FINAL_SPEC` for the margins, else the refined node's name)
    and the ReLU node."""

    spec: str
    relu: str


@dataclass
class RelaxContext:
    """What rules read during one bound computation (one batch, one epsilon per sample)."""

    graph: Graph
    acts: dict[str, torch.Tensor]
    intervals: dict[str, Interval] = field(default_factory=dict)
    #: optimisable lower slopes of unstable ReLUs (``alpha``) [N, S, *shape], by walk and ReLU
    slopes: dict[SlopeKey, torch.Tensor] = field(default_factory=dict)
    #: which backward walk is running: FINAL_SPEC (the margins) or a refined node's name
    spec: str = FINAL_SPEC
    #: branch-and-bound split constraints on ReLU nodes (:class:`Splits`), or ``None``
    splits: Splits | None = None
    #: what rules derive from an interval, reused by later walks of the same pass
    #: (:meth:`derived`)
    #: keys: a string naming the rule and node, or a typed key (``TwoOperandKey``)
    memo: dict[Hashable, tuple[Interval, Any]] = field(default_factory=dict)

    def interval_in(self, node: Node, i: int = 0) -> Interval:
        return self.intervals[node.inputs[i]]

    def derived(self, key: Hashable, iv: Interval, make: Callable[[], T]) -> T:
        """``make()``, computed once per ``key`` while ``iv`` is the very interval object
        it was computed from (a refined interval is a new object: computed again)."""
        hit = self.memo.get(key)
        if hit is not None and hit[0] is iv:
            return hit[1]
        value = make()
        self.memo[key] = (iv, value)
        return value


@dataclass
class Splits:
    r"""Split constraints of a branch-and-bound node on ReLU neurons.

    ``signs`` maps a ReLU node's name to a tensor [N, *shape] (the ReLU's input shape, one
    row per sample of the batch): ``+1`` forces the neuron active (its input :math:`y\ge0`),
    ``-1`` inactive (:math:`y\le0`), ``0`` leaves it free. ReLU nodes not in the map are
    unconstrained. With splits in the :class:`RelaxContext`, every interval and linear bound
    holds on :math:`\mathcal{B}\cap S`, :math:`S` the set of inputs satisfying all the
    splits (not on the whole ball): the ReLU's input interval is intersected with the
    split (:meth:`constrain`), so a forced-active neuron is relaxed exactly by the identity
    and a forced-inactive one by zero, and every later interval is bounded over
    :math:`\mathcal{B}\cap S` only. Where the intersection is empty (:meth:`empty`),
    :math:`\mathcal{B}\cap S=\emptyset` and every bound of that sample holds vacuously.
    """

    signs: dict[str, torch.Tensor]

    def rows(self, idx: torch.Tensor) -> Splits:
        """The constraints of samples ``idx``."""
        return Splits({k: v[idx] for k, v in self.signs.items()})

    def constrain(self, relu: str, iv: Interval) -> Interval:
        """The input interval ``iv`` of ReLU node ``relu`` intersected with its splits."""
        s = self.signs.get(relu)
        if s is None:
            return iv
        s = s.reshape(iv.lo.shape)
        return Interval(torch.where(s > 0, iv.lo.clamp(min=0), iv.lo),
                        torch.where(s < 0, iv.hi.clamp(max=0), iv.hi))

    def empty(self, ctx: RelaxContext) -> torch.Tensor:
        """[N] bool: samples whose constrained set is proven empty (a split contradicts the
        sound interval of its neuron over the ball)."""
        out: torch.Tensor | None = None
        for name in self.signs:
            iv = self.constrain(name, ctx.interval_in(ctx.graph[name]))
            e = (iv.lo > iv.hi).flatten(1).any(1)
            out = e if out is None else out | e
        if out is None:
            raise ValueError("Splits.empty needs at least one split ReLU node")
        return out


class RelaxationRule(Rule):
    """One node's linear relaxation (a ``"crown"`` rule, used by ``crown`` and ``alpha``)."""

    #: True for nodes whose relaxation depends on the bounds of their input (ReLU, tanh...):
    #: the engine refines those input bounds by backward passes
    nonlinear: bool = False

    def supports(self, node: Node) -> bool:
        """False for a configuration this rule does not relax (the node then goes through
        the ``sound`` modulus, like a node without a rule)."""
        return True

    @abstractmethod
    def interval(self, node: Node, ctx: RelaxContext, ins: list[Interval]) -> Interval:
        """Sound element-wise bounds of the output from bounds of the inputs."""

    @abstractmethod
    def backward(self, node: Node, ctx: RelaxContext, lb: LinearBounds) -> list[LinearBounds]:
        """The bound at the output -> one bound per input (docs/theory/linear_relaxation.md)."""


class AffineRelaxation(RelaxationRule):
    r"""Base of affine nodes :math:`h = L(z) + c` (linear, convolution, batch norm,
    average pooling): :math:`\langle A, h\rangle = \langle L^\top A, z\rangle +
    \langle A, c\rangle`, exact in real arithmetic. Subclasses give :math:`L` (``apply``),
    :math:`L^\top` (``transpose``), :math:`c` (``const``, [*out] or ``None``),
    :math:`|L|` (``abs_apply``) and the fan-in of one output (``fan``)."""

    @abstractmethod
    def apply(self, node: Node, z: torch.Tensor) -> torch.Tensor: ...

    @abstractmethod
    def transpose(self, node: Node, a: torch.Tensor) -> torch.Tensor:
        """[M, *out] -> [M, *in]."""

    @abstractmethod
    def abs_apply(self, node: Node, m: torch.Tensor) -> torch.Tensor:
        """:math:`|L|\\,m` for m >= 0: [N, *in] -> [N, *out]."""

    def const(self, node: Node) -> torch.Tensor | None:
        return None

    def const_error(self, node: Node) -> float:
        """Relative error of the computed parameters of ``L`` and ``c`` (default: none, they
        are the model's own float64 values)."""
        return 0.0

    def const_mag(self, node: Node) -> torch.Tensor | None:
        """An upper bound on ``|c|`` and on the terms ``c`` was computed from."""
        c = self.const(node)
        return None if c is None else c.abs()

    @abstractmethod
    def fan(self, node: Node) -> int: ...

    def square_apply(self, node: Node, v: torch.Tensor, sign: int) -> torch.Tensor | None:
        r""":math:`(L^{\pm})^{\circ 2}v` (the squared positive (``sign=1``) or negative part of
        ``L``, applied to ``v``), or ``None`` when not available: lets a node reading the
        network input be bounded in closed form."""
        return None

    def rounding_bound(self, node: Node, mag_in: torch.Tensor) -> torch.Tensor:
        r""":math:`\gamma_{k+2}(|L||z| + |c|)` element-wise [N, *out] (Higham 2002, eq. 3.13),
        plus the error of the computed parameters."""
        c = self.const_mag(node)
        absval = self.abs_apply(node, mag_in)
        if c is not None:
            absval = absval + c
        return (float(gamma(self.fan(node) + 2)) + self.const_error(node)) * absval

    def interval(self, node: Node, ctx: RelaxContext, ins: list[Interval]) -> Interval:
        iv = ins[0]
        mid, rad = (iv.lo + iv.hi) / 2, (iv.hi - iv.lo) / 2
        c = self.const(node)
        centre = self.apply(node, mid) + (c if c is not None else 0.0)
        radius = self.abs_apply(node, rad)
        e = self.rounding_bound(node, iv.mag) * 2 + float(gamma(4)) * (centre.abs() + radius)
        return Interval(centre - radius - e, centre + radius + e)

    def _charges(self, node: Node, ctx: RelaxContext) -> torch.Tensor:
        r"""Per output [N, *out]: the rounding a coefficient :math:`a` is charged,
        :math:`|a|` times this (the node's own rounding, and that of :math:`\langle A,
        c\rangle`, :math:`\gamma_{|c|+1}|c|`)."""
        weight = self.rounding_bound(node, ctx.interval_in(node).mag)
        c = self.const(node)
        if c is not None:
            weight = weight + float(gamma(c.numel() + 1)) * c.abs()
        return weight

    def backward(self, node: Node, ctx: RelaxContext, lb: LinearBounds) -> list[LinearBounds]:
        n, s = lb.A.shape[:2]
        a_in = self.transpose(node, lb.A.reshape(n * s, *lb.A.shape[2:]))
        a_in = a_in.reshape(n, s, *a_in.shape[1:])
        c = self.const(node)
        add: torch.Tensor | float = 0.0
        if c is not None:
            add = dot(lb.A, c.expand(n, *c.shape))
        err = dot(lb.A.abs(), self._charges(node, ctx))
        mag_out = ctx.intervals[node.name].mag
        return [lb.then(a_in, add, err, mag_out)]

    def unit_rows(self, node: Node, rows: slice, dtype: torch.dtype,
                  device: torch.device) -> torch.Tensor:
        r""":math:`L^\top e_j` for the flat outputs ``j`` in ``rows``: [len, *in] (exact:
        every entry is one parameter of :math:`L`, times 1, plus zeros)."""
        m = math.prod(node.out_shape)
        j = torch.arange(m, device=device)[rows]
        eye = torch.zeros(j.numel(), m, dtype=dtype, device=device)
        eye[torch.arange(j.numel(), device=device), j] = 1.0
        return self.transpose(node, eye.reshape(j.numel(), *node.out_shape))

    def unit_backward(self, node: Node, ctx: RelaxContext, idx: torch.Tensor,
                      table: torch.Tensor) -> LinearBounds:
        r"""What :meth:`backward` gives for the specifications :math:`+e_j` then
        :math:`-e_j` (``j`` in ``idx`` [N, K]), read off ``table`` (:meth:`unit_rows` of
        every output) with no transpose: :math:`A'=\pm L^\top e_j`, bias :math:`\pm c_j`,
        rounding the charge of output :math:`j` (the dot products with a unit vector are
        exact)."""
        rows = table[idx]  # [N, K, *in]
        charge = self._charges(node, ctx).flatten(1)
        charge = charge.expand(idx.shape[0], -1).gather(1, idx)
        c = self.const(node)
        if c is None:
            bias = torch.zeros(idx.shape[0], 2 * idx.shape[1], dtype=rows.dtype,
                               device=rows.device)
        else:
            cj = c.flatten()[idx]
            bias = torch.cat([cj, -cj], 1)
        err = torch.cat([charge, charge], 1) + UNIT_ROUNDOFF * bias.abs()
        return LinearBounds(torch.cat([rows, -rows], 1), bias, err)


class NonNegativeLinearRelaxation(AffineRelaxation):
    r"""Base of linear nodes with non-negative weights and no constant (averages, resizes):
    :math:`L` is the node's own evaluation, :math:`L^\top` its input gradient (autograd of
    that evaluation: each entry a sum of the same products), and :math:`|L|=L`. Subclasses
    give the fan-in (``fan``)."""

    def apply(self, node: Node, z: torch.Tensor) -> torch.Tensor:
        return evaluate(node, [z])

    def transpose(self, node: Node, a: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            z = torch.zeros((a.shape[0], *node.in_shapes[0]), dtype=a.dtype, device=a.device,
                            requires_grad=True)
            (g,) = torch.autograd.grad(evaluate(node, [z]), z, a)
        return g

    def abs_apply(self, node: Node, m: torch.Tensor) -> torch.Tensor:
        return self.apply(node, m)


def relaxation_rule(node: Node) -> RelaxationRule | None:
    """The ``crown`` rule of a node, or ``None`` when it has none (or does not support this
    configuration): the node is then bounded through the ``sound`` modulus."""
    from boundkit.bounds.registry import get_rule

    rule = get_rule(node.op, "crown")
    if isinstance(rule, RelaxationRule) and rule.supports(node):
        return rule
    return None
