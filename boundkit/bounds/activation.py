r"""Element-wise activations: ReLU, tanh, sigmoid, softplus.

Derivative bounds (thesis Table 4.1) are *derived* here with sympy, not typed in:
:math:`A=\sup|g'|` and :math:`B=\sup|g''|`.

* sigmoid: A = 1/4, B = 1/(6 sqrt 3) = 0.0962; printed (5 - 3 sqrt 3)/(30 sqrt 3 - 54),
  the same value in an odd form.
* tanh: A = 1, B = 4/(3 sqrt 3) = 0.770; printed sinh(u)/cosh(u)^3 = 2/(3 sqrt 3) = 0.385,
  half the true supremum (the factor 2 of tanh'' = -2 sinh/cosh^3 is lost).
* softplus: A = 1, B = beta/4; printed 1/4 (beta = 1).
* ReLU: A = 1, not twice differentiable; printed 0, replaced by 1 in the thesis.

with :math:`u=\tfrac12\ln(2+\sqrt3)`, where :math:`|\tanh''|=2\sinh u/\cosh^3u` peaks.

Sound rules: each activation is Lipschitz with constant :math:`A` (mean value theorem);
ReLU is 1-Lipschitz and exactly evaluated. ``docs/theory/activations.md``.
peck2017: a ReLU on its own (not inside a convolution or fully-connected block) keeps the
bound, :math:`\|\mathrm{ReLU}(X)\|_F\le\|X\|_F` (thesis Lemma A.2(4)).
"""

from __future__ import annotations

import math
from abc import abstractmethod
from dataclasses import dataclass
from functools import cache

import torch

from boundkit.bounds.numerics import UNIT_ROUNDOFF, gamma
from boundkit.bounds.registry import BackwardRule, LipschitzRule, register_rule
from boundkit.bounds.relaxation import (
    Interval,
    LinearBounds,
    RelaxationRule,
    RelaxContext,
    SlopeKey,
    dot,
)
from boundkit.graph.graph import Graph, Node


@cache
def derived_bounds(name: str) -> tuple[float, float]:
    r"""``(sup|g'|, sup|g''|)`` of a smooth activation, derived symbolically with sympy.

    The suprema are found at the real critical points of the next derivative, plus the
    limits at :math:`\pm\infty` (all these functions have bounded derivatives that vanish
    or settle at infinity). ``softplus`` is the :math:`\beta=1` case; scale by
    :math:`\beta` for general :math:`\beta` (:math:`g_\beta''(z)=\beta g_1''(\beta z)`).
    """
    import sympy as sp

    z = sp.symbols("z", real=True)
    funcs = {
        "sigmoid": 1 / (1 + sp.exp(-z)),
        "tanh": sp.tanh(z),
        "softplus": sp.log(1 + sp.exp(z)),
    }
    if name not in funcs:
        raise KeyError(f"no smooth activation {name!r}")
    g = funcs[name]
    out = []
    for order in (1, 2):
        d = sp.simplify(sp.diff(g, z, order))
        # critical points of d: solve in the variable w = exp(z) > 0 (all three functions are
        # rational in exp(z)), which sympy handles exactly
        w = sp.symbols("w", positive=True)
        dd = sp.simplify(sp.diff(d, z).rewrite(sp.exp).subs(sp.exp(z), w))
        num = sp.numer(sp.together(dd))
        cands = [sp.log(r) for r in sp.solve(sp.Eq(num, 0), w) if r.is_positive]
        vals = [abs(float(sp.N(d.subs(z, c), 30))) for c in cands]
        vals += [abs(float(sp.limit(d, z, sp.oo))), abs(float(sp.limit(d, z, -sp.oo)))]
        out.append(max(vals))
    return out[0], out[1]


def thesis_table_4_1() -> dict[str, tuple[float, float]]:
    r"""Thesis Table 4.1 exactly as printed (first-order, second-order bounds).

    The tanh entry :math:`\sinh u/\cosh^3u` with :math:`u=\tfrac12\ln(2+\sqrt3)` equals
    :math:`2/(3\sqrt3)`, half of :math:`\sup|\tanh''|`; ReLU's second-order 0 is replaced by
    1 as the thesis chooses in Section 4.3.1.
    """
    s3 = math.sqrt(3.0)
    u = 0.5 * math.log(2.0 + s3)
    return {
        "sigmoid": (0.25, (5.0 - 3.0 * s3) / (30.0 * s3 - 54.0)),
        "tanh": (1.0, math.sinh(u) / math.cosh(u) ** 3),
        "softplus": (1.0, 0.25),
        "relu": (1.0, 1.0),
    }


def sound_bounds(node: Node) -> tuple[float, float | None]:
    """``(A, B)`` for the node's activation with its own parameters (B None for ReLU)."""
    if node.op == "relu":
        return 1.0, None
    if node.op == "softplus":
        beta = float(node.attrs.get("beta", 1.0))
        a, b = derived_bounds("softplus")
        return a, b * beta
    return derived_bounds(node.op)


def softplus_threshold_jump(node: Node) -> float:
    r"""torch's softplus returns :math:`z` once :math:`\beta z>` threshold, where the smooth
    function is :math:`z+\log(1+e^{-\beta z})/\beta`: a jump of at most
    :math:`\log(1+e^{-\mathrm{threshold}})/\beta` per element."""
    beta = float(node.attrs.get("beta", 1.0))
    thr = float(node.attrs.get("threshold", 20.0))
    return math.log1p(math.exp(-thr)) / beta


class ReLURule(LipschitzRule):
    """ReLU is 1-Lipschitz, :math:`|\\max(a,0)-\\max(b,0)|\\le|a-b|`; evaluation is exact."""

    exact_arithmetic = True

    def compute_lipschitz(self, node: Node, graph: Graph) -> float:
        return 1.0


class LeakyReLURule(LipschitzRule):
    r"""LeakyReLU :math:`g(z)=z` for :math:`z\ge0`, :math:`sz` otherwise, is piecewise linear
    with slopes 1 and :math:`s`, hence :math:`\max(1,|s|)`-Lipschitz (on a segment crossing 0
    split at 0); one rounded product per negative entry: error :math:`\le u|g(z)|`."""

    def compute_lipschitz(self, node: Node, graph: Graph) -> float:
        return max(1.0, abs(float(node.attrs["negative_slope"])))

    def rounding(
        self, node: Node, graph: Graph, in_norm: torch.Tensor, out_norm: torch.Tensor
    ) -> torch.Tensor:
        return UNIT_ROUNDOFF * out_norm


class SmoothActivationRule(LipschitzRule):
    """tanh, sigmoid, softplus: Lipschitz with :math:`A=\\sup|g'|` (mean value theorem)."""

    def compute_lipschitz(self, node: Node, graph: Graph) -> float:
        # A is 1 or 1/4 exactly; no rounding to account for
        return sound_bounds(node)[0]

    def deviation(self, node: Node, graph: Graph) -> float:
        """Softplus as torch computes it deviates from the smooth function by its
        threshold jump; counted twice (at x and at x + r) over all elements."""
        if node.op != "softplus":
            return 0.0
        return 2.0 * math.sqrt(node.out_numel) * softplus_threshold_jump(node)


class ReLUKeepRule(BackwardRule):
    """peck2017: a stand-alone ReLU keeps kappa (thesis Lemma A.2(4):
    :math:`\\|\\mathrm{ReLU}(X)\\|_F\\le\\|X\\|_F`, used in the proof of Theorem 5.1)."""

    def backward(
        self, node: Node, graph: Graph, kappa: torch.Tensor, acts: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        return kappa


register_rule("relu", "sound", ReLURule())
register_rule("leaky_relu", "sound", LeakyReLURule())
for _op in ("tanh", "sigmoid", "softplus"):
    register_rule(_op, "sound", SmoothActivationRule())
register_rule("relu", "peck2017", ReLUKeepRule())


# ------------------------------------------------------------------ linear relaxations
class ReLURelaxation(RelaxationRule):
    r"""``crown``/``alpha``: ReLU and LeakyReLU :math:`g(z)=\max(z,sz)` with negative slope
    :math:`s\le1` (:math:`s=0` for ReLU), a convex function. On :math:`[l,u]` with
    :math:`l<0<u`, :math:`\alpha z\le g(z)\le g(l)+\frac{u-sl}{u-l}(z-l)` for any
    :math:`\alpha\in[s,1]` (CROWN, Zhang et al. 2018: the lower line is a supporting line
    at 0, the upper line the chord; ``docs/theory/linear_relaxation.md`` §ReLU). ``crown``
    takes :math:`\alpha=1` when :math:`u>-l`, else :math:`s`; ``alpha`` optimises it per
    neuron and specification. Stable neurons are exact (slope 1 or :math:`s`).
    With ``ctx.splits`` (:class:`~boundkit.bounds.relaxation.Splits`) the input interval is
    first intersected with the node's splits: forced-active neurons are then the identity,
    forced-inactive ones the line :math:`sz`."""

    nonlinear = True

    def slope(self, node: Node) -> float:
        """The negative slope :math:`s` (0 for ReLU)."""
        return float(node.attrs.get("negative_slope", 0.0)) if node.op == "leaky_relu" else 0.0

    def supports(self, node: Node) -> bool:
        return self.slope(node) <= 1.0  # above 1 the function is concave (sound modulus)

    def evaluation_error(self, node: Node, ctx: RelaxContext, out: Interval
                         ) -> torch.Tensor | None:
        """ReLU is exact; LeakyReLU rounds one product by a slope the model holds in its own
        dtype (rounded once): :math:`2u|y|+\\eta` (``docs/theory/numerics.md`` §4)."""
        if self.slope(node) == 0.0:
            return None
        ar = ctx.model_arith
        return 2 * ar.unit * out.mag + ar.eta

    def interval(self, node: Node, ctx: RelaxContext, ins: list[Interval]) -> Interval:
        s = self.slope(node)
        iv = ins[0] if ctx.splits is None else ctx.splits.constrain(node.name, ins[0])
        lo, hi = iv.lo, iv.hi
        if s == 0.0:
            return Interval(lo.clamp(min=0), hi.clamp(min=0))
        # g is increasing for s >= 0; for s < 0 its minimum over [l, u] is g(0) = 0 when
        # l < 0 < u; each product s*z is one rounding, widened by u|s z|
        g_lo, g_hi = torch.maximum(lo, s * lo), torch.maximum(hi, s * hi)
        if s < 0:
            new_lo = torch.where(hi <= 0, g_hi, torch.where(lo >= 0, g_lo, torch.zeros_like(lo)))
            new_hi = torch.maximum(g_lo, g_hi)
        else:
            new_lo, new_hi = g_lo, g_hi
        e = UNIT_ROUNDOFF * torch.maximum(new_lo.abs(), new_hi.abs()) + 1e-300
        return Interval(new_lo - e, new_hi + e)

    def lines(self, node: Node, iv: Interval) -> ReLULines:
        """The relaxation's lines on the input interval ``iv`` (split constraints applied
        by the caller)."""
        s = self.slope(node)
        lo, hi = iv.lo.unsqueeze(1), iv.hi.unsqueeze(1)
        on, off = lo >= 0, hi <= 0
        unstable = ~(on | off)
        denom = torch.where(unstable, hi - lo, torch.ones_like(hi))
        # upper slope: the chord's on unstable neurons, 1 or s on stable ones
        # slopes as float64 tensors: torch.where of two Python scalars would round s to
        # float32 (a slope of 0.0099999998 for 0.01: an invalid line)
        one, sv = torch.ones_like(hi), torch.full_like(hi, s)
        up = torch.where(unstable, (hi - s * lo) / denom, torch.where(on, one, sv))
        # the rounded chord lies above g once lifted by delta (endpoint check, §ReLU)
        lift = 8.0 if s == 0.0 else 20.0 * max(1.0, abs(s))
        delta = torch.where(unstable, lift * UNIT_ROUNDOFF * (hi - lo), torch.zeros_like(hi))
        up_off = torch.where(unstable, (s - up) * lo + delta, torch.zeros_like(hi))
        return ReLULines(
            up=up, up_off=up_off.squeeze(1),
            low=torch.where(on | ~(off | (hi <= -lo)), one, sv),
            fixed=torch.where(on, one, torch.where(off, sv, torch.zeros_like(hi))),
            unstable=unstable.to(hi.dtype), mag=iv.mag)

    def backward(self, node: Node, ctx: RelaxContext, lb: LinearBounds) -> list[LinearBounds]:
        s = self.slope(node)
        raw = ctx.interval_in(node)

        def make() -> ReLULines:
            # branch-and-bound splits (relaxation.Splits) first
            iv = raw if ctx.splits is None else ctx.splits.constrain(node.name, raw)
            return self.lines(node, iv)
        ln = ctx.derived(f"relu-lines:{node.name}", raw, make)
        slope = ctx.slopes.get(SlopeKey(ctx.spec, node.name))
        if slope is None:  # one lower slope per neuron: [N, 1, *shape]
            low = ln.low
        else:  # per specification [N, S, *shape], any value in [s, 1] is valid: the
            # stable neurons' slope, plus the free slope times 1 on the unstable ones (one
            # of the two terms is an exact zero)
            low = torch.addcmul(ln.fixed, slope.to(ln.up.dtype).clamp(min=s, max=1.0),
                                ln.unstable)
        A = lb.A
        # slope * a with the lower slope where a > 0, the upper one where a < 0: one of the
        # two products is an exact zero, so each coefficient is one rounded product (and
        # no element-wise select over [N, S, ...], which is slow on CPU)
        pos, neg = torch.clamp_min(A, 0), torch.clamp_max(A, 0)
        a_in = torch.addcmul(pos * low, neg, ln.up)
        # the chord's offsets enter through the negative coefficients; every term is <= 0,
        # so the sum of their magnitudes is |add| up to the sum's own rounding
        add = dot(neg, ln.up_off)
        k = A[0, 0].numel()
        err = (2 * UNIT_ROUNDOFF * dot(a_in.abs(), ln.mag)
               + 2 * float(gamma(k + 2)) * add.abs())
        return [lb.then(a_in, add, err, ctx.intervals[node.name].mag)]


@dataclass
class ReLULines:
    """The lines of a ReLU relaxation on one input interval, per neuron: the upper slope
    and offset (``up`` [N, 1, *shape], ``up_off`` [N, *shape]), ``crown``'s lower slope
    (``low``), the lower slope of stable neurons (``fixed``, 0 on unstable ones), 1.0 on
    unstable neurons (``unstable``) and the bound on ``|z|`` (``mag`` [N, *shape])."""

    up: torch.Tensor
    up_off: torch.Tensor
    low: torch.Tensor
    fixed: torch.Tensor
    unstable: torch.Tensor
    mag: torch.Tensor


def _smooth(node: Node, z: torch.Tensor) -> torch.Tensor:
    if node.op == "tanh":
        return torch.tanh(z)
    if node.op == "sigmoid":
        return torch.sigmoid(z)
    beta = float(node.attrs.get("beta", 1.0))
    return torch.nn.functional.softplus(beta * z) / beta  # the smooth function (no threshold)


def _critical_points(node: Node, k: torch.Tensor) -> list[torch.Tensor]:
    """All z with g'(z) = k (NaN where none)."""
    if node.op == "tanh":
        t = torch.sqrt(1 - k)
        return [torch.atanh(t), torch.atanh(-t)]
    if node.op == "sigmoid":
        r = torch.sqrt(1 - 4 * k)
        s1, s2 = (1 + r) / 2, (1 - r) / 2
        return [torch.log(s1 / (1 - s1)), torch.log(s2 / (1 - s2))]
    beta = float(node.attrs.get("beta", 1.0))
    return [torch.log(k / (1 - k)) / beta]


def smooth_relaxation(node: Node, lo: torch.Tensor, hi: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""``(k, b_lo, b_hi)`` with :math:`kz+b_{lo}\le g(z)\le kz+b_{hi}` on :math:`[lo,hi]`:
    :math:`k` the chord slope, the offsets the extremes of :math:`g(z)-kz`, attained at an
    end point or where :math:`g'=k` (all such points are enumerated in closed form), widened
    by a margin covering libm and the rounding of the candidates (§Smooth activations)."""
    width = hi - lo
    flat = width <= 1e-9 * (1 + lo.abs())
    mid = (lo + hi) / 2
    safe_w = torch.where(flat, torch.ones_like(width), width)
    k = torch.where(flat, torch.zeros_like(width), (_smooth(node, hi) - _smooth(node, lo)) / safe_w)
    # any slope is valid: the offsets are exact extremes for the slope actually used
    cands = [lo, hi] + [torch.nan_to_num(c, nan=0.0).clamp(lo, hi) for c in _critical_points(
        node, k.clamp(1e-300, 1.0 if node.op != "sigmoid" else 0.25))]
    g = torch.stack([_smooth(node, z) - k * z for z in cands])
    b_lo, b_hi = g.amin(0), g.amax(0)
    scale = torch.stack([_smooth(node, z).abs() + (k * z).abs() for z in cands]).amax(0)
    margin = 1e-12 * scale + 1e-300
    if node.op == "softplus":
        margin = margin + softplus_threshold_jump(node)
    del mid
    return k, b_lo - margin, b_hi + margin


@dataclass
class Lines:
    r"""Sound lines of an activation :math:`g` on its input interval, per neuron:
    :math:`k_{lo}z+b_{lo}\le g(z)\le k_{hi}z+b_{hi}` for every :math:`z` in the interval
    (``[N, *shape]`` tensors; ``k_hi is k_lo`` for parallel lines)."""

    k_lo: torch.Tensor
    b_lo: torch.Tensor
    k_hi: torch.Tensor
    b_hi: torch.Tensor


class LinesRelaxation(RelaxationRule):
    r"""Base of the element-wise activations that *state their lines*: a subclass gives
    :meth:`lines` (sound lower and upper lines over the input interval, rounding of their
    own computation included) and :meth:`interval`; this class turns them into the
    backward step with its rounding charge (auto_LiRPA's ``BoundActivation`` pattern;
    ``docs/theory/linear_relaxation.md`` §Activations that state their lines).

    For a coefficient :math:`a` on :math:`g(z)`: :math:`a\,g(z)\ge a^+(k_{lo}z+b_{lo})
    +a^-(k_{hi}z+b_{hi})`, so the new coefficient is :math:`a^+k_{lo}+a^-k_{hi}` (one rounded
    product: the other term is an exact zero) and the constant
    :math:`\sum a^+b_{lo}+a^-b_{hi}`; charged :math:`2u\langle|a'|,|z|\rangle` (``u`` with
    parallel lines, one product) and :math:`\gamma_{k+2}` of the constant's terms."""

    nonlinear = True

    @abstractmethod
    def lines(self, node: Node, iv: Interval) -> Lines:
        """Sound lines on the input interval ``iv`` (``[N, *shape]``)."""

    def backward(self, node: Node, ctx: RelaxContext, lb: LinearBounds) -> list[LinearBounds]:
        iv = ctx.interval_in(node)
        ln = ctx.derived(f"lines:{node.name}", iv, lambda: self.lines(node, iv))
        k_lo, b_lo = ln.k_lo.unsqueeze(1), ln.b_lo.unsqueeze(1)
        k_hi, b_hi = ln.k_hi.unsqueeze(1), ln.b_hi.unsqueeze(1)
        pos, neg = lb.A.clamp(min=0), lb.A.clamp(max=0)
        if ln.k_hi is ln.k_lo:
            a_in, ulps = lb.A * k_lo, 1
        else:
            a_in, ulps = torch.addcmul(pos * k_lo, neg, k_hi), 2
        terms = pos * b_lo + neg * b_hi
        add = terms.flatten(2).sum(2)
        kk = lb.A[0, 0].numel()
        err = (ulps * UNIT_ROUNDOFF * (a_in.abs() * iv.mag.unsqueeze(1)).flatten(2).sum(2)
               + float(gamma(kk + 2)) * terms.abs().flatten(2).sum(2))
        return [lb.then(a_in, add, err, ctx.intervals[node.name].mag)]


class SmoothRelaxation(LinesRelaxation):
    """``crown``: tanh, sigmoid, softplus by parallel lines around the chord (see
    :func:`smooth_relaxation`)."""

    def interval(self, node: Node, ctx: RelaxContext, ins: list[Interval]) -> Interval:
        lo, hi = _smooth(node, ins[0].lo), _smooth(node, ins[0].hi)
        e = 8 * UNIT_ROUNDOFF * torch.maximum(lo.abs(), hi.abs()) + 1e-300
        if node.op == "softplus":
            e = e + softplus_threshold_jump(node)
        return Interval(lo - e, hi + e)

    def lines(self, node: Node, iv: Interval) -> Lines:
        k, b_lo, b_hi = smooth_relaxation(node, iv.lo, iv.hi)
        return Lines(k, b_lo, k, b_hi)


register_rule("relu", "crown", ReLURelaxation())
register_rule("leaky_relu", "crown", ReLURelaxation())
for _op in ("tanh", "sigmoid", "softplus"):
    register_rule(_op, "crown", SmoothRelaxation())
