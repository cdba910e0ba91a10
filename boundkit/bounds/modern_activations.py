r"""GELU (both ``approximate`` modes), SiLU, ELU (SELU and CELU: scaled ELUs), Hardtanh
(ReLU6 included) and Hardswish.

**Sound** (``docs/theory/modern_activations.md``): each is Lipschitz with
:math:`A=\sup|g'|` (mean value theorem; ELU and Hardtanh piecewise, on a segment crossing a
kink split at the kink).

* GELU (erf): :math:`g'=\Phi+z\varphi`, :math:`g''=\varphi(z)(2-z^2)`,
  :math:`g'''=z\varphi(z)(z^2-4)`: the critical points are known exactly, so
  :math:`A=g'(\sqrt2)=\Phi(\sqrt2)+\sqrt2\varphi(\sqrt2)=1.1289`,
  :math:`B=\sup|g''|=g''(0)=\sqrt{2/\pi}`.
* GELU (tanh) and SiLU: :math:`A` and :math:`B` certified on a grid (:func:`certified_sup`)
  from a proven cell-wise bound of the next derivative, plus proven tails.
* ELU :math:`\lambda\,\mathrm{ELU}_\alpha(z/c)`: :math:`A=\lambda\max(1,|\alpha|/c)`;
  Hardtanh: :math:`A=1`, evaluation exact; Hardswish: :math:`A=\tfrac32` (:math:`g'(3^-)`).

**crown**: each states its lines (:class:`~boundkit.bounds.activation.LinesRelaxation`):
for any slope :math:`k`, the offsets are certified extremes of :math:`g(z)-kz` over
:math:`[l,u]` (:meth:`StatedActivation.extremes`): exact candidate enumeration for the
piecewise ELU and Hardtanh, and for GELU and SiLU (no closed form for :math:`g'=k`) the
minimum over a grid of :math:`M` points minus :math:`B\delta^2/8` (a function with
:math:`|h''|\le B` deviates from its chord on a cell of width :math:`\delta` by at most
:math:`B\delta^2/8`). Slopes are chosen among the chord and the tangents at
:math:`l`, the midpoint and :math:`u` (tangent and secant lines on convex and concave
parts) by the larger (lower line) or smaller (upper line) mean over :math:`[l,u]`; any
slope is valid, so the choice is a heuristic and soundness rests on the offsets alone.
"""

from __future__ import annotations

import math
from abc import abstractmethod
from functools import cache

import torch
import torch.nn.functional as F

from boundkit.bounds.activation import Lines, LinesRelaxation
from boundkit.bounds.numerics import ELEMENTWISE_ULPS, UNIT_ROUNDOFF, inflate
from boundkit.bounds.registry import LipschitzRule, register_rule
from boundkit.bounds.relaxation import Interval, RelaxContext
from boundkit.graph import ops
from boundkit.graph.graph import Graph, Node

_C = math.sqrt(2.0 / math.pi)
_A3 = 0.044715
#: grid points per interval of the sampled extremes (GELU, SiLU)
SAMPLES = 33
#: relative margin on an evaluation of g(z) - k z (libm and the products: a few ulps)
EVAL_MARGIN = 1e-12


# ------------------------------------------------------------------ the functions
def _phi(z: torch.Tensor) -> torch.Tensor:
    return torch.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)


def gelu_tanh_parts(z: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``(t, S, u', u'')`` of GELU's tanh form :math:`\\tfrac12z(1+\\tanh u)`,
    :math:`u=c(z+az^3)`, :math:`S=1-\\tanh^2u`."""
    u = _C * (z + _A3 * z**3)
    t = torch.tanh(u)
    return t, 1 - t * t, _C * (1 + 3 * _A3 * z * z), 6 * _A3 * _C * z


def value(op: str, z: torch.Tensor, approximate: str = "none") -> torch.Tensor:
    """g(z) as torch computes it (float64)."""
    if op == "gelu":
        return F.gelu(z, approximate=approximate)
    if op == "silu":
        return F.silu(z)
    raise KeyError(op)


def derivative(op: str, z: torch.Tensor, approximate: str = "none", order: int = 1
               ) -> torch.Tensor:
    """g'(z) (``order=1``) or g''(z) (``order=2``) of GELU / SiLU in closed form."""
    if op == "gelu" and approximate == "none":
        phi = _phi(z)
        if order == 1:
            return 0.5 * (1 + torch.erf(z / math.sqrt(2.0))) + z * phi
        return phi * (2 - z * z)
    if op == "gelu":
        t, s, du, ddu = gelu_tanh_parts(z)
        if order == 1:
            return 0.5 * (1 + t) + 0.5 * z * s * du
        return s * du - z * t * s * du * du + 0.5 * z * s * ddu
    sg = torch.sigmoid(z)
    d1 = sg * (1 - sg)
    if order == 1:
        return sg + z * d1
    return d1 * (2 + z * (1 - 2 * sg))


def _crude_second(op: str, approximate: str, r_lo: torch.Tensor, r_hi: torch.Tensor
                  ) -> torch.Tensor:
    r"""A proven bound of :math:`|g''|` on the cells :math:`|z|\in[r_{lo},r_{hi}]`
    (``docs/theory/modern_activations.md`` §Certified constants).

    GELU (tanh): :math:`|g''|\le S(u)\,(u'+|z|u'^2+\tfrac12|z|u'')`, :math:`S=\mathrm{sech}^2`
    decreasing in :math:`|u|`, :math:`|u|` increasing in :math:`|z|`, the bracket increasing
    in :math:`|z|`: at most :math:`S(u(r_{lo}))P(r_{hi})`. SiLU:
    :math:`|g''|\le2\sigma'+|z|\sigma'` with :math:`\sigma'` decreasing in :math:`|z|`:
    at most :math:`(2+r_{hi})\sigma'(r_{lo})`. GELU (erf): :math:`\varphi(r_{lo})(2+r_{hi}^2)`."""
    if op == "gelu" and approximate == "tanh":
        _, s, _, _ = gelu_tanh_parts(r_lo)
        _, _, du, ddu = gelu_tanh_parts(r_hi)
        return s * (du + r_hi * du * du + 0.5 * r_hi * ddu)
    if op == "gelu":
        return _phi(r_lo) * (2 + r_hi * r_hi)
    sg = torch.sigmoid(r_lo)
    return (2 + r_hi) * sg * (1 - sg)


#: |z| beyond which the tails of g' and g'' are bounded in closed form (see the doc)
TAIL = 40.0


@cache
def certified_sup(op: str, approximate: str = "none", order: int = 1) -> float:
    r"""A proven upper bound of :math:`\sup_z|g^{(order)}(z)|` for GELU / SiLU.

    ``order=2``: the cell-wise bound of :func:`_crude_second` maximised over cells of
    :math:`|z|\le` :data:`TAIL` (beyond, :math:`|g''|\le` its value at the last cell: every
    factor is monotone). ``order=1``: the largest :math:`|g'|` on a grid of step
    :math:`\delta` over :math:`[-T,T]` plus :math:`B\delta/2` (:math:`B` the ``order=2``
    bound: :math:`g'` is :math:`B`-Lipschitz) plus evaluation error, and at least the
    tails' bound :math:`1+Te^{-T}` (SiLU) or :math:`1+10^{-30}` (GELU). GELU (erf) has
    closed forms (module docstring), used instead of the grid."""
    dt = torch.float64
    edges = torch.linspace(0.0, TAIL, 400_001, dtype=dt)
    b2 = float(_crude_second(op, approximate, edges[:-1], edges[1:]).max()) * (1 + 1e-9)
    if op == "gelu" and approximate == "none":  # phi(z)|2 - z^2| peaks at z = 0
        b2 = _C * (1 + 1e-12)
    if order == 2:
        return float(inflate(b2))
    z = torch.linspace(-TAIL, TAIL, 800_001, dtype=dt)
    step = float((z[1:] - z[:-1]).max()) * (1 + 1e-12)
    grid = float(derivative(op, z, approximate).abs().max())
    a = grid + 1e-12 * (1 + TAIL) + b2 * step / 2
    tail = 1.0 + TAIL * math.exp(-TAIL) if op == "silu" else 1.0 + 1e-30
    if op == "gelu" and approximate == "none":  # the closed form (critical points exact)
        r2 = math.sqrt(2.0)
        a = 0.5 * (1 + math.erf(1.0)) + r2 * math.exp(-1.0) / math.sqrt(2 * math.pi)
        a, tail = a * (1 + 1e-12), 1.0
    return float(inflate(max(a, tail), 1e-9))


# ------------------------------------------------------------------ sound rules
class StatedLipschitz(LipschitzRule):
    """Sound: Lipschitz with :math:`A=\\sup|g'|` (proven per activation, module docstring).
    Rounding: torch evaluates each element with a few roundings and libm calls, relative to
    the input's magnitude where cancellations occur (GELU's :math:`1+\\mathrm{erf}` far
    below 0): :math:`16u(\\|g(z)\\|+\\|z\\|)`."""

    def compute_lipschitz(self, node: Node, graph: Graph) -> float:
        return lipschitz_constant(node)

    def rounding(self, node: Node, graph: Graph, in_norm: torch.Tensor,
                 out_norm: torch.Tensor) -> torch.Tensor:
        return 16 * UNIT_ROUNDOFF * (out_norm + in_norm)


class HardtanhLipschitz(StatedLipschitz):
    """Hardtanh (a clamp) and :math:`|z|` are 1-Lipschitz and evaluated exactly."""

    exact_arithmetic = True

    def rounding(self, node: Node, graph: Graph, in_norm: torch.Tensor,
                 out_norm: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(out_norm)


def lipschitz_constant(node: Node) -> float:
    """:math:`\\sup|g'|` of the node's activation with its parameters."""
    if node.op in ("gelu", "silu"):
        return certified_sup(node.op, node.attrs.get("approximate", "none"), 1)
    if node.op == "elu":  # lambda * ELU_alpha(z / c): slopes lambda and lambda alpha/c e^(z/c)
        lam, c = elu_scales(node)
        a = max(1.0, abs(float(node.attrs["alpha"])) / c)
        return a if lam == 1.0 else float(inflate(lam * a, 4 * UNIT_ROUNDOFF))
    if node.op == "hardtanh":
        return 1.0
    if node.op == "hardswish":  # g' = 0, (2z + 3) / 6 on [-3, 3], 1: largest 9/6 at z = 3
        return 1.5
    if node.op in ("abs", "softsign", "logsigmoid"):
        # |g'| = 1; 1 / (1 + |z|)^2 <= 1; sigmoid(-z) < 1
        return 1.0
    raise KeyError(node.op)


# ------------------------------------------------------------------ crown: stated lines
class StatedActivation(LinesRelaxation):
    """An activation's lines from certified extremes of :math:`g(z)-kz` (module
    docstring). Subclasses give :meth:`extremes`, :meth:`value` and :meth:`slope_at`."""

    @abstractmethod
    def extremes(self, node: Node, k: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """Proven ``(m, M)`` with :math:`m\\le g(z)-kz\\le M` on :math:`[lo,hi]` (``k``
        broadcast against ``lo``)."""

    @abstractmethod
    def value(self, node: Node, z: torch.Tensor) -> torch.Tensor:
        """g(z) (float64; used to choose slopes only)."""

    @abstractmethod
    def slope_at(self, node: Node, z: torch.Tensor) -> torch.Tensor:
        """g'(z) (a one-sided derivative at a kink; used to choose slopes only)."""

    def interval(self, node: Node, ctx: RelaxContext, ins: list[Interval]) -> Interval:
        lo, hi = ins[0].lo, ins[0].hi
        m, mx = self.extremes(node, torch.zeros_like(lo), lo, hi)
        return Interval(m, mx)

    def lines(self, node: Node, iv: Interval) -> Lines:
        lo, hi = iv.lo, iv.hi
        width = hi - lo
        flat = width <= 1e-12 * (1 + lo.abs())
        mid = lo + width / 2
        chord = torch.where(
            flat, self.slope_at(node, mid),
            (self.value(node, hi) - self.value(node, lo)) / torch.where(flat, 1.0, width))
        cands = [chord, self.slope_at(node, lo), self.slope_at(node, mid),
                 self.slope_at(node, hi)]
        best: Lines | None = None
        for k in cands:
            k = torch.nan_to_num(k, nan=0.0, posinf=0.0, neginf=0.0)
            m, mx = self.extremes(node, k, lo, hi)
            if best is None:
                best = Lines(k, m, k.clone(), mx)
                continue
            # the line's mean over [l, u] is its value at the midpoint
            up_lo = k * mid + m > best.k_lo * mid + best.b_lo
            up_hi = k * mid + mx < best.k_hi * mid + best.b_hi
            best = Lines(torch.where(up_lo, k, best.k_lo), torch.where(up_lo, m, best.b_lo),
                         torch.where(up_hi, k, best.k_hi), torch.where(up_hi, mx, best.b_hi))
        assert best is not None
        return best


def _margin(k: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """Evaluation error of :math:`g(z)-kz` at points of :math:`[lo,hi]`, for functions with
    :math:`|g(z)|\\le\\max(1,|\\alpha|)|z|+c` (all of this module's)."""
    mag = torch.maximum(lo.abs(), hi.abs())
    return EVAL_MARGIN * ((2 + k.abs()) * mag + 1.0) + 1e-300


class SampledActivation(StatedActivation):
    r"""GELU and SiLU: extremes of :math:`h=g-kz` over :data:`SAMPLES` grid points
    :math:`z_0=l<\dots<z_{M-1}=u`, widened by :math:`B\delta^2/8` (:math:`B=\sup|g''|`,
    :math:`\delta` the widest computed cell) and the evaluation margin."""

    def _approx(self, node: Node) -> str:
        return node.attrs.get("approximate", "none")

    def value(self, node: Node, z: torch.Tensor) -> torch.Tensor:
        return value(node.op, z, self._approx(node))

    def slope_at(self, node: Node, z: torch.Tensor) -> torch.Tensor:
        return derivative(node.op, z, self._approx(node))

    def extremes(self, node: Node, k: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        width = hi - lo
        prev = lo
        h = self.value(node, lo) - k * lo
        m, mx = h, h
        gap = torch.zeros_like(lo)
        for i in range(1, SAMPLES):
            z = hi if i == SAMPLES - 1 else lo + width * (i / (SAMPLES - 1))
            z = torch.minimum(z, hi)  # never past u (rounding)
            h = self.value(node, z) - k * z
            m, mx = torch.minimum(m, h), torch.maximum(mx, h)
            gap = torch.maximum(gap, z - prev)
            prev = z
        b2 = certified_sup(node.op, self._approx(node), 2)
        shift = b2 * (gap * (1 + 1e-12)) ** 2 / 8 * (1 + 1e-12) + _margin(k, lo, hi)
        return m - shift, mx + shift


def elu_scales(node: Node) -> tuple[float, float]:
    r"""``(lambda, c)`` of an ``elu`` node, :math:`\lambda\,\mathrm{ELU}_\alpha(z/c)` (1, 1
    for ELU; SELU's :math:`\lambda`, 1; CELU's 1, :math:`\alpha`)."""
    return float(node.attrs.get("scale", 1.0)), float(node.attrs.get("input_scale", 1.0))


class ELURelaxation(StatedActivation):
    r"""ELU and its scaled forms :math:`g(z)=\lambda z` (:math:`z>0`),
    :math:`\lambda\alpha(e^{z/c}-1)` (:math:`z\le0`; SELU, CELU: ``elu_scales``, c > 0):
    the extremes of :math:`g-kz` lie at :math:`l`, :math:`u`, the kink 0 or
    :math:`c\log(kc/(\lambda\alpha))` (where :math:`g'=\frac{\lambda\alpha}ce^{z/c}=k`),
    each clamped into :math:`[l,u]` (which only adds points)."""

    def evaluation_error(self, node: Node, ctx: RelaxContext, out: Interval
                         ) -> torch.Tensor | None:
        r"""The element-wise default with the absolute term scaled by :math:`|\lambda\alpha|`
        (:math:`e^{z/c}-1` cancels near 0: an error of :math:`u|\lambda\alpha|` where
        :math:`|y|` is small) and :math:`|z|` by :math:`\max(1,|\lambda|)`."""
        ar = ctx.model_arith
        lam, _ = elu_scales(node)
        a = abs(lam * float(node.attrs["alpha"]))
        mag = out.mag + max(1.0, abs(lam)) * ctx.interval_in(node).mag + a + 1.0
        return ELEMENTWISE_ULPS * (ar.unit * mag + ar.eta)

    def value(self, node: Node, z: torch.Tensor) -> torch.Tensor:
        return ops.elu(node, [z])  # the graph's own evaluation

    def slope_at(self, node: Node, z: torch.Tensor) -> torch.Tensor:
        a = float(node.attrs["alpha"])
        lam, c = elu_scales(node)
        return lam * torch.where(z > 0, torch.ones_like(z),
                                 a / c * torch.exp(torch.clamp(z, max=0) / c))

    def extremes(self, node: Node, k: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        a = float(node.attrs["alpha"])
        lam, c = elu_scales(node)
        ratio = k * c / (lam * a) if a != 0 else torch.zeros_like(k)
        crit = torch.where(ratio > 0, c * torch.log(ratio.clamp(min=1e-300)), lo)
        crit = torch.clamp(crit, max=0.0)
        cands = [lo, hi, torch.clamp(torch.zeros_like(lo), lo, hi),
                 torch.maximum(torch.minimum(crit, hi), lo)]
        return _candidate_extremes(self, node, k, lo, hi, cands)


class HardtanhRelaxation(StatedActivation):
    """Hardtanh :math:`\\min(\\max(z,a),b)` (ReLU6: :math:`a=0,b=6`): piecewise linear, the
    extremes of :math:`g-kz` lie at :math:`l`, :math:`u` or a kink clamped into
    :math:`[l,u]`."""

    def value(self, node: Node, z: torch.Tensor) -> torch.Tensor:
        return torch.clamp(z, node.attrs["min_val"], node.attrs["max_val"])

    def slope_at(self, node: Node, z: torch.Tensor) -> torch.Tensor:
        a, b = node.attrs["min_val"], node.attrs["max_val"]
        return ((z >= a) & (z <= b)).to(z.dtype)

    def extremes(self, node: Node, k: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        a, b = node.attrs["min_val"], node.attrs["max_val"]
        cands = [lo, hi, torch.clamp(torch.full_like(lo, a), lo, hi),
                 torch.clamp(torch.full_like(lo, b), lo, hi)]
        return _candidate_extremes(self, node, k, lo, hi, cands)


class HardswishRelaxation(StatedActivation):
    r"""Hardswish :math:`g(z)=z\,\mathrm{relu6}(z+3)/6`: 0 for :math:`z\le-3`,
    :math:`z(z+3)/6` on :math:`[-3,3]`, :math:`z` for :math:`z\ge3`. :math:`g-kz` is linear
    on the outer pieces and convex on the middle one, with its only critical point at
    :math:`z^*=3k-\tfrac32`: the extremes lie at :math:`l`, :math:`u`, the kinks
    :math:`\pm3` and :math:`z^*`, each clamped into :math:`[l,u]`."""

    def value(self, node: Node, z: torch.Tensor) -> torch.Tensor:
        return F.hardswish(z)

    def slope_at(self, node: Node, z: torch.Tensor) -> torch.Tensor:
        return torch.where(z < -3, torch.zeros_like(z),
                           torch.where(z > 3, torch.ones_like(z), (2 * z + 3) / 6))

    def extremes(self, node: Node, k: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        crit = torch.clamp(3 * k - 1.5, -3.0, 3.0)
        cands = [lo, hi, torch.clamp(torch.full_like(lo, -3.0), lo, hi),
                 torch.clamp(torch.full_like(lo, 3.0), lo, hi),
                 torch.maximum(torch.minimum(crit, hi), lo)]
        return _candidate_extremes(self, node, k, lo, hi, cands)


class AbsRelaxation(StatedActivation):
    """:math:`|z|`: :math:`g-kz` is linear on each side of 0, so its extremes lie at
    :math:`l`, :math:`u` or the kink 0 clamped into :math:`[l,u]`."""

    def value(self, node: Node, z: torch.Tensor) -> torch.Tensor:
        return torch.abs(z)

    def slope_at(self, node: Node, z: torch.Tensor) -> torch.Tensor:
        return torch.where(z >= 0, torch.ones_like(z), -torch.ones_like(z))

    def extremes(self, node: Node, k: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        cands = [lo, hi, torch.clamp(torch.zeros_like(lo), lo, hi)]
        return _candidate_extremes(self, node, k, lo, hi, cands)


def _clamped(z: torch.Tensor, ok: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor
             ) -> torch.Tensor:
    """``z`` clamped into ``[lo, hi]`` where ``ok``, else ``lo`` (a candidate that adds
    nothing)."""
    return torch.where(ok, torch.maximum(torch.minimum(torch.nan_to_num(z), hi), lo), lo)


class SoftsignRelaxation(StatedActivation):
    r"""Softsign :math:`g(z)=z/(1+|z|)`, :math:`g'(z)=(1+|z|)^{-2}\in(0,1]` (continuous at 0).
    :math:`(g-kz)'=0` exactly where :math:`|z|=k^{-1/2}-1` (for :math:`0<k\le1`; none
    otherwise): the extremes lie at :math:`l`, :math:`u`, 0 and :math:`\pm(k^{-1/2}-1)`,
    each clamped into :math:`[l,u]`."""

    def value(self, node: Node, z: torch.Tensor) -> torch.Tensor:
        return F.softsign(z)

    def slope_at(self, node: Node, z: torch.Tensor) -> torch.Tensor:
        return 1.0 / (1.0 + z.abs()) ** 2

    def extremes(self, node: Node, k: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        k = k.expand_as(lo)
        ok = (k > 0) & (k <= 1)
        r = torch.rsqrt(torch.where(ok, k, torch.ones_like(k))) - 1.0
        cands = [lo, hi, torch.clamp(torch.zeros_like(lo), lo, hi), _clamped(r, ok, lo, hi),
                 _clamped(-r, ok, lo, hi)]
        return _candidate_extremes(self, node, k, lo, hi, cands)


class LogSigmoidRelaxation(StatedActivation):
    r"""Log-sigmoid :math:`g(z)=-\log(1+e^{-z})`, concave, :math:`g'(z)=\sigma(-z)\in(0,1)`.
    :math:`(g-kz)'=0` exactly where :math:`z=\log((1-k)/k)` (for :math:`0<k<1`; none
    otherwise): the extremes lie at :math:`l`, :math:`u` and that point clamped into
    :math:`[l,u]`."""

    def value(self, node: Node, z: torch.Tensor) -> torch.Tensor:
        return F.logsigmoid(z)

    def slope_at(self, node: Node, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(-z)

    def extremes(self, node: Node, k: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        k = k.expand_as(lo)
        ok = (k > 0) & (k < 1)
        kk = torch.where(ok, k, torch.full_like(k, 0.5))
        crit = torch.log1p(-kk) - torch.log(kk)
        cands = [lo, hi, _clamped(crit, ok, lo, hi)]
        return _candidate_extremes(self, node, k, lo, hi, cands)


def _candidate_extremes(rule: StatedActivation, node: Node, k: torch.Tensor, lo: torch.Tensor,
                        hi: torch.Tensor, cands: list[torch.Tensor]
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    g = [rule.value(node, z) for z in cands]
    h = torch.stack([gz - k * z for gz, z in zip(g, cands)])
    scale = torch.stack([gz.abs() + (k * z).abs() for gz, z in zip(g, cands)]).amax(0)
    e = EVAL_MARGIN * scale + 1e-300
    return h.amin(0) - e, h.amax(0) + e


register_rule("gelu", "sound", StatedLipschitz())
register_rule("silu", "sound", StatedLipschitz())
register_rule("elu", "sound", StatedLipschitz())
register_rule("hardtanh", "sound", HardtanhLipschitz())
register_rule("gelu", "crown", SampledActivation())
register_rule("silu", "crown", SampledActivation())
register_rule("elu", "crown", ELURelaxation())
register_rule("hardtanh", "crown", HardtanhRelaxation())
register_rule("hardswish", "sound", StatedLipschitz())
register_rule("hardswish", "crown", HardswishRelaxation())
register_rule("abs", "sound", HardtanhLipschitz())
register_rule("abs", "crown", AbsRelaxation())
for _op, _rule in (("softsign", SoftsignRelaxation()), ("logsigmoid", LogSigmoidRelaxation())):
    register_rule(_op, "sound", StatedLipschitz())
    register_rule(_op, "crown", _rule)
