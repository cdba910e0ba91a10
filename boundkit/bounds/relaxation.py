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

from boundkit.bounds.numerics import ELEMENTWISE_ULPS, UNIT_ROUNDOFF, gamma
from boundkit.bounds.registry import Rule
from boundkit.graph.arithmetic import OVERFLOW_CHARGE, model_arithmetic
from boundkit.graph.ops import evaluate

if TYPE_CHECKING:
    from boundkit.graph.arithmetic import Arithmetic
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

    def widen(self, e: torch.Tensor | None) -> Interval:
        """``[lo - e, hi + e]`` (itself when ``e`` is ``None``)."""
        return self if e is None else Interval(self.lo - e, self.hi + e)


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

    def charged(self, rho: torch.Tensor | None) -> LinearBounds:
        r"""The same bound for a value known only to within ``rho`` [N, *shape] (the
        model's own rounding of the node, :func:`model_rounding`):
        :math:`\langle A,\hat h\rangle\ge\langle A,h\rangle-\langle|A|,\rho\rangle`, the
        dot product rounded up by :math:`1+\gamma_{k+1}`."""
        if rho is None:
            return self
        k = self.A[0, 0].numel()
        add = dot(self.A.abs(), rho.expand(self.A.shape[0], *self.A.shape[2:]))
        return LinearBounds(self.A, self.bias, self.err + add * (1 + 2 * float(gamma(k + 2))),
                            self.forks)


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
    #: the arithmetic the model runs in (its rounding is charged at every node:
    #: :func:`model_rounding`); the graph's by default (float64 without a graph)
    arithmetic: Arithmetic | None = None

    def __post_init__(self) -> None:
        if self.arithmetic is None:  # a rule used on its own, without a graph: float64
            self.arithmetic = (model_arithmetic({torch.float64}, False) if self.graph is None
                               else self.graph.model_arithmetic)

    @property
    def model_arith(self) -> Arithmetic:
        """:attr:`arithmetic` (set)."""
        assert self.arithmetic is not None
        return self.arithmetic

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
    #: True when the model computes the node exactly (its result is one of its inputs:
    #: moves, maxima), so :meth:`evaluation_error` is ``None`` (as ``SoundRule``'s)
    exact_arithmetic: bool = False
    #: True when :meth:`backward` itself charges the model's rounding of the node
    #: (:func:`model_rounding`) with its own: the walks then do not (:func:`entering`)
    charges_model_rounding: bool = False

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

    def error_transfer(self, node: Node, ctx: RelaxContext, errs: list[torch.Tensor]
                       ) -> torch.Tensor:
        r"""From element-wise bounds ``errs`` ([N, *in] per input) on how far what the model
        computed for each input lies from the exact network's value (anywhere on the ball,
        both in the input intervals of ``ctx``), a bound [N, *out] on
        :math:`|g(\hat z)-g(z)|` (``docs/theory/numerics.md`` §4, ``sound``).

        Default: an element-wise node moves by at most its slope bound :math:`\lambda` (its
        ``sound`` rule's Lipschitz constant, which bounds :math:`|g'|`) times :math:`e`; any
        other node by its ``sound`` rule's L2 carry of the inputs' :math:`\|e\|_2` (at the
        norms of the intervals' magnitudes), a bound on every entry."""
        from boundkit.bounds.registry import SoundRule, require_rule

        rule = require_rule(node, "sound")
        assert isinstance(rule, SoundRule)
        if len(node.inputs) == 1 and tuple(node.in_shapes[0]) == tuple(node.out_shape):
            return errs[0] * (rule.lipschitz(node, ctx.graph) * (1 + 1e-9))
        l2 = [torch.linalg.vector_norm(e.flatten(1), dim=1) for e in errs]
        norms = {i: torch.linalg.vector_norm(ctx.intervals[i].mag.flatten(1), dim=1)
                 for i in node.inputs}
        carry = rule.carry_error_at(node, ctx.graph, l2, norms) * (1 + 1e-9)
        return carry.reshape(-1, *([1] * len(node.out_shape))).expand(-1, *node.out_shape)

    def evaluation_error(self, node: Node, ctx: RelaxContext, out: Interval
                         ) -> torch.Tensor | None:
        r"""A bound [N, *out] on the model's own rounding of this node anywhere on the ball:
        :math:`|\hat h-g(\hat z)|`, with :math:`\hat z\in` the input intervals what the model
        computed for the inputs, :math:`\hat h` what it computes for the node, in
        ``ctx.arithmetic``; ``out`` holds :math:`g(\hat z)`. ``None``: the node computes
        exactly (moves, maxima, ReLU). ``docs/theory/numerics.md`` §4.

        Default, for an element-wise function computed by a library routine (a few
        rounded steps, cancellation in forms like :math:`x\,\sigma(x)` or
        :math:`e^x-1` included): :math:`8u(|y|+|z|+1)+8\eta`. A rule of another kind of
        node overrides it (:func:`model_rounding` skips :attr:`exact_arithmetic` rules)."""
        ar = ctx.model_arith
        mag = out.mag + 1.0
        if len(node.inputs) == 1 and tuple(node.in_shapes[0]) == tuple(node.out_shape):
            mag = mag + ctx.interval_in(node).mag
        return ELEMENTWISE_ULPS * (ar.unit * mag + ar.eta)


class AffineRelaxation(RelaxationRule):
    r"""Base of affine nodes :math:`h = L(z) + c` (linear, convolution, batch norm,
    average pooling): :math:`\langle A, h\rangle = \langle L^\top A, z\rangle +
    \langle A, c\rangle`, exact in real arithmetic. Subclasses give :math:`L` (``apply``),
    :math:`L^\top` (``transpose``), :math:`c` (``const``, [*out] or ``None``),
    :math:`|L|` (``abs_apply``) and the fan-in of one output (``fan``). The model's rounding
    of the node is charged with the node's own, in one product with :math:`|A|`."""

    charges_model_rounding = True

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

    def evaluation_error(self, node: Node, ctx: RelaxContext, out: Interval
                         ) -> torch.Tensor | None:
        r""":math:`\gamma_{k+8}(|L||\hat z|+|c|)+(k+8)\eta` in the model's arithmetic: any
        order of the :math:`k` products and sums (Higham 2002, eq. 3.13), with
        :data:`EXTRA_OPS` rounded steps more on every term's path for what capture folded
        into :math:`L` and :math:`c` (a batch norm's subtract, divide, scale and shift; a
        division by a constant)."""
        ar = ctx.model_arith
        k = self.fan(node) + EXTRA_OPS
        terms = self.abs_terms(node, ctx)
        rho = ar.gamma(k) * terms + k * ar.eta
        # a partial sum of the terms past the dtype's range overflows
        return torch.where(ar.overflows(terms), torch.full_like(rho, OVERFLOW_CHARGE), rho)

    def error_transfer(self, node: Node, ctx: RelaxContext, errs: list[torch.Tensor]
                       ) -> torch.Tensor:
        """:math:`|L|e` (exact for a linear map)."""
        return self.abs_apply(node, errs[0]) * (1 + 1e-9)

    def abs_terms(self, node: Node, ctx: RelaxContext) -> torch.Tensor:
        r""":math:`|L|(|z|+\eta'/\gamma'_{k+8})+|c|` [N, *out] on the input's interval
        (computed once while the interval is the same object: the node's rounding and the
        model's read it). The :math:`\eta'/\gamma'` makes :math:`\gamma'` times it charge
        :math:`\eta'|L|\mathbf 1`: inputs below the smallest normal number read as zero
        (``torch.set_flush_denormal``)."""
        iv = ctx.interval_in(node)
        ar = ctx.model_arith
        daz = ar.eta / ar.gamma(self.fan(node) + EXTRA_OPS)

        def make() -> torch.Tensor:
            mag = self.abs_apply(node, iv.mag + daz)
            c = self.const_mag(node)
            return mag if c is None else mag + c
        return ctx.derived(("affine-terms", node.name), iv, make)

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
        if type(self).rounding_bound is AffineRelaxation.rounding_bound:  # the same terms
            weight = ((float(gamma(self.fan(node) + 2)) + self.const_error(node))
                      * self.abs_terms(node, ctx))
        else:
            weight = self.rounding_bound(node, ctx.interval_in(node).mag)
        c = self.const(node)
        if c is not None:
            weight = weight + float(gamma(c.numel() + 1)) * c.abs()
        rho = model_rounding(self, node, ctx)
        return weight if rho is None else weight + rho

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


#: rounded steps the model may take on an affine node's term beyond its dot product
EXTRA_OPS: Final = 8


def model_rounding(rule: RelaxationRule, node: Node, ctx: RelaxContext,
                   out: Interval | None = None) -> torch.Tensor | None:
    r"""The model's own rounding of ``node`` (:meth:`RelaxationRule.evaluation_error`) on the
    current intervals (``out``: the node's output interval, by default its interval in
    ``ctx``), computed once per node while its input and output intervals are the same
    objects. Every bound charges it where it passes the node: a walk as
    :meth:`LinearBounds.charged`, an interval by :meth:`Interval.widen`; so every interval
    holds what the model computes, and the relaxations downstream hold for it."""
    if out is None:
        out = ctx.intervals[node.name]
    ins = tuple(ctx.intervals.get(i) for i in node.inputs)
    key = ("model-rounding", node.name)
    hit = ctx.memo.get(key)
    if hit is not None and hit[0] is out and all(a is b for a, b in zip(hit[1][0], ins)):
        return hit[1][1]
    rho = None if rule.exact_arithmetic else rule.evaluation_error(node, ctx, out)
    if rho is not None:
        rho = rho * (1 + 1e-9)  # the bound's own float64 computation (fan-ins up to 1e6)
        # where the model's value may reach its dtype's largest number it is infinite, and
        # where no bound holds (k u >= 1/2: gamma_k infinite) nothing is claimed
        bad = ~torch.isfinite(rho) | ctx.model_arith.overflows(out.mag + rho)
        rho = torch.where(bad, torch.full_like(rho, OVERFLOW_CHARGE), rho)
    ctx.memo[key] = (out, (ins, rho))
    return rho


def entering(rule: RelaxationRule, node: Node, ctx: RelaxContext, lb: LinearBounds
             ) -> LinearBounds:
    """The bound ``lb`` on ``node``'s output as its backward step receives it: the model's
    rounding of the node charged (:meth:`LinearBounds.charged`), unless the rule charges it
    itself (:attr:`RelaxationRule.charges_model_rounding`)."""
    if rule.charges_model_rounding:
        return lb
    return lb.charged(model_rounding(rule, node, ctx))


def relaxation_rule(node: Node) -> RelaxationRule | None:
    """The ``crown`` rule of a node, or ``None`` when it has none (or does not support this
    configuration): the node is then bounded through the ``sound`` modulus."""
    from boundkit.bounds.registry import get_rule

    rule = get_rule(node.op, "crown")
    if isinstance(rule, RelaxationRule) and rule.supports(node):
        return rule
    return None
