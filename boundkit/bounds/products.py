r"""Products of two values computed from the input: ``mul`` and ``matmul``.

``mul`` is :math:`z=B_x(x)\odot B_y(y)` (torch broadcasting of the per-sample operands to
the output, :math:`B` repeating entries); ``matmul`` is
:math:`Z_b=X_{b}Y_{b}` for every leading index :math:`b` (``[..., m, k] @ [..., k, n]``,
leading axes broadcast). Proofs: ``docs/theory/products.md``.

**crown** (McCormick 1976; auto_LiRPA's ``BoundMul`` / ``BoundMatMul``). On
:math:`x\in[x_l,x_u]`, :math:`y\in[y_l,y_u]`, :math:`z=xy` lies above both planes
:math:`y_lx+x_ly-x_ly_l` (gap :math:`(x-x_l)(y-y_l)\ge0`) and :math:`y_ux+x_uy-x_uy_u`
(gap :math:`(x_u-x)(y_u-y)\ge0`), and below :math:`y_ux+x_ly-x_ly_u` (gap
:math:`(x-x_l)(y_u-y)`) and :math:`y_lx+x_uy-x_uy_l` (gap :math:`(x_u-x)(y-y_l)`). Every
plane is valid, so the choice is a heuristic: per element, the plane whose gap is smaller at
the activations of the ball's centre (auto_LiRPA always takes the first lower and the first
upper plane; both pairs have the same mean gap over the box). A coefficient :math:`a` of the
output takes the lower plane where :math:`a\ge0`, the upper one elsewhere.
``x * x`` (both operands the same value) is the square, convex: the tangent at the centre
below, the chord :math:`(l+u)x-lu` above (:func:`square_lines`). ``matmul`` relaxes every
product :math:`X_{mk}Y_{kn}` of its sums with its own planes; the coefficients of
:math:`X` and :math:`Y` are contractions (``einsum``) of the output's coefficients with the
planes, so no ``[S, m, k, n]`` tensor is formed; the planes (``[N, b, m, k, n]``, no
specification axis) are built in chunks of rows.

**sound**: a merge of moduli (``docs/theory/products.md`` §Modulus). With
:math:`x+q_x`, :math:`y+q_y`,
:math:`z'-z=B_x(q_x)\odot B_y(y)+B_x(x)\odot B_y(q_y)+B_x(q_x)\odot B_y(q_y)`, so

.. math:: \omega_z(t)=c_y\,\omega_x(t)+c_x\,\omega_y(t)+\omega_x(t)\,\omega_y(t),

with :math:`c_y` the largest L2 norm of :math:`B_y(y)` over the output entries that read
one entry of :math:`x` (``mul``; for ``matmul`` the Frobenius norms of the matrices
:math:`Y_b` that meet one matrix of :math:`X`), read at x and enlarged by the rounding bound
of :math:`y`. The cross term needs no factor: output entries read distinct pairs of operand
entries.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import torch

from boundkit.bounds.modulus import Modulus
from boundkit.bounds.numerics import UNDERFLOW, UNIT_ROUNDOFF, gamma
from boundkit.bounds.registry import SoundRule, register_rule
from boundkit.bounds.relaxation import (
    Interval,
    LinearBounds,
    RelaxationRule,
    RelaxContext,
    dot,
)
from boundkit.bounds.state import rounding_error
from boundkit.graph.arithmetic import OVERFLOW_CHARGE
from boundkit.graph.graph import Graph, Node

T = TypeVar("T")

#: the most elements of one chunk of a ``matmul``'s per-term tensors ``[N, b, m, k, n]``
PLANE_CHUNK = 1 << 21


# ------------------------------------------------------------------ broadcasting
def expand_to(v: torch.Tensor, shape: tuple[int, ...], out: tuple[int, ...],
              lead: int = 1) -> torch.Tensor:
    """``v`` [*lead axes, *shape] broadcast to [*lead axes, *out] (torch's rules on the
    per-sample shapes: missing axes are added on the left of ``shape``)."""
    pad = (1,) * (len(out) - len(shape))
    head = v.shape[:lead]
    return v.reshape(*head, *pad, *shape).expand(*head, *out)


def sum_to(a: torch.Tensor, shape: tuple[int, ...], out: tuple[int, ...],
           lead: int = 2) -> torch.Tensor:
    """The adjoint of :func:`expand_to`: ``a`` [*lead axes, *out] summed over the broadcast
    copies to [*lead axes, *shape]."""
    pad = (1,) * (len(out) - len(shape))
    full = (*pad, *shape)
    dims = [lead + i for i, (f, o) in enumerate(zip(full, out)) if f == 1 and o != 1]
    if dims:
        a = a.sum(dim=dims, keepdim=True)
    return a.reshape(*a.shape[:lead], *shape)


def repeats(shape: tuple[int, ...], out: tuple[int, ...]) -> int:
    """How many output entries read one entry of an operand of ``shape``."""
    return max(math.prod(out) // max(math.prod(shape), 1), 1)


# ------------------------------------------------------------------ the planes
@dataclass
class Planes:
    r"""Per element: :math:`a^{lo}_xx+a^{lo}_yy+c^{lo}\le xy\le a^{hi}_xx+a^{hi}_yy+c^{hi}`
    for every :math:`x\in[x_l,x_u]`, :math:`y\in[y_l,y_u]`, in real arithmetic with the
    exact offsets; the stored offsets ``c`` are those rounded once (:math:`|c-\hat c|\le
    u|\hat c|`), charged by the caller."""

    ax_lo: torch.Tensor
    ay_lo: torch.Tensor
    c_lo: torch.Tensor
    ax_hi: torch.Tensor
    ay_hi: torch.Tensor
    c_hi: torch.Tensor


def _centre(c: torch.Tensor | None, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """The point the planes are chosen at, inside the interval (the midpoint by default)."""
    if c is None:
        return (lo + hi) / 2
    return torch.minimum(torch.maximum(c, lo), hi)


def mccormick(xl: torch.Tensor, xu: torch.Tensor, yl: torch.Tensor, yu: torch.Tensor,
              x0: torch.Tensor | None = None, y0: torch.Tensor | None = None) -> Planes:
    r"""McCormick planes of :math:`xy` on the box, element-wise (module docstring): of the
    two lower (upper) planes, the one with the smaller gap at :math:`(x_0, y_0)` (default:
    the box's centre). Entries with a non-finite bound get the vacuous planes
    :math:`0x+0y\mp\infty`."""
    x0, y0 = _centre(x0, xl, xu), _centre(y0, yl, yu)
    first = (x0 - xl) * (y0 - yl) <= (xu - x0) * (yu - y0)
    ax_lo, ay_lo = torch.where(first, yl, yu), torch.where(first, xl, xu)
    first = (x0 - xl) * (yu - y0) <= (xu - x0) * (y0 - yl)
    ax_hi, ay_hi = torch.where(first, yu, yl), torch.where(first, xl, xu)
    c_lo, c_hi = -(ax_lo * ay_lo), -(ax_hi * ay_hi)
    bad = ~(torch.isfinite(xl) & torch.isfinite(xu) & torch.isfinite(yl) & torch.isfinite(yu)
            & torch.isfinite(c_lo) & torch.isfinite(c_hi))
    if bool(bad.any()):
        zero, inf = torch.zeros_like(xl), torch.full_like(xl, math.inf)
        ax_lo, ay_lo, ax_hi, ay_hi = (torch.where(bad, zero, t)
                                      for t in (ax_lo, ay_lo, ax_hi, ay_hi))
        c_lo, c_hi = torch.where(bad, -inf, c_lo), torch.where(bad, inf, c_hi)
    return Planes(ax_lo, ay_lo, c_lo, ax_hi, ay_hi, c_hi)


@dataclass
class SquareLines:
    r""":math:`k^{lo}x+c^{lo}\le x^2\le k^{hi}x+c^{hi}` on :math:`[l,u]`: the tangent at
    :math:`t` (:math:`k^{lo}=2t` exact, :math:`c^{lo}=-t^2` rounded once) and the chord
    (:math:`k^{hi}=l+u`, :math:`c^{hi}=-lu`, each rounded once: the caller charges
    :math:`u|k^{hi}||x|` for the slope)."""

    k_lo: torch.Tensor
    c_lo: torch.Tensor
    k_hi: torch.Tensor
    c_hi: torch.Tensor


def square_lines(lo: torch.Tensor, hi: torch.Tensor,
                 t0: torch.Tensor | None = None) -> SquareLines:
    r"""Lines of :math:`x^2` on :math:`[l,u]`: :math:`x^2-(2tx-t^2)=(x-t)^2\ge0` for any
    :math:`t`, and :math:`(l+u)x-lu-x^2=(x-l)(u-x)\ge0` on the interval. ``t0`` (default the
    midpoint) is clamped into the interval. Non-finite bounds give vacuous lines."""
    t = _centre(t0, lo, hi)
    k_lo, c_lo = 2 * t, -(t * t)
    k_hi, c_hi = lo + hi, -(lo * hi)
    bad = ~(torch.isfinite(lo) & torch.isfinite(hi) & torch.isfinite(c_hi) & torch.isfinite(k_hi))
    if bool(bad.any()):
        zero, inf = torch.zeros_like(lo), torch.full_like(lo, math.inf)
        k_lo, k_hi = torch.where(bad, zero, k_lo), torch.where(bad, zero, k_hi)
        c_lo, c_hi = torch.where(bad, -inf, c_lo), torch.where(bad, inf, c_hi)
    return SquareLines(k_lo, c_lo, k_hi, c_hi)


def product_interval(xl: torch.Tensor, xu: torch.Tensor, yl: torch.Tensor, yu: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The exact range of :math:`xy` on the box (the extremes of a bilinear function lie at
    corners) as computed, and the largest corner magnitude (for the rounding charge)."""
    p = torch.stack(torch.broadcast_tensors(xl * yl, xl * yu, xu * yl, xu * yu))
    # 0 * inf (an unbounded operand): the range is unbounded on both sides
    lo = torch.nan_to_num(p, nan=-math.inf).min(0).values
    hi = torch.nan_to_num(p, nan=math.inf).max(0).values
    return lo, hi, torch.nan_to_num(p.abs(), nan=math.inf).max(0).values


def square_interval(lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The exact range of :math:`x^2` on :math:`[l,u]`, as computed."""
    a, b = lo * lo, hi * hi
    low = torch.where(lo > 0, a, torch.where(hi < 0, b, torch.zeros_like(a)))
    return low, torch.maximum(a, b)


@dataclass(frozen=True)
class TwoOperandKey:
    """The memo key (``RelaxContext.memo``) of what a product derives from its two
    operands' intervals: the node's name, typed so that no other rule's key can equal it."""

    node: str


def derived_of_two(ctx: RelaxContext, node: Node, make: Callable[[], T]) -> T:
    """``make()`` computed once while both operands' intervals are the very objects it was
    computed from (``RelaxContext.derived`` keys one interval; a product reads two)."""
    ivx, ivy = ctx.interval_in(node, 0), ctx.interval_in(node, 1)
    key = TwoOperandKey(node.name)
    seen, value = ctx.derived(key, ivx, lambda: (ivy, make()))
    if seen is not ivy:
        ctx.memo.pop(key)
        seen, value = ctx.derived(key, ivx, lambda: (ivy, make()))
    return value


def _finite(lb: LinearBounds) -> LinearBounds:
    """A NaN constant (a vacuous plane met by a zero coefficient) made vacuous: ``-inf``."""
    bias = torch.nan_to_num(lb.bias, nan=-math.inf, posinf=math.inf, neginf=-math.inf)
    err = torch.nan_to_num(lb.err, nan=math.inf)
    return LinearBounds(lb.A, bias, err, lb.forks)


# ------------------------------------------------------------------ crown: mul
class MulRelaxation(RelaxationRule):
    """``crown`` for ``mul`` (module docstring; ``docs/theory/products.md`` §crown)."""

    nonlinear = True

    @staticmethod
    def is_square(node: Node) -> bool:
        """Both operands are the same value: :math:`x\\odot x`."""
        return node.inputs[0] == node.inputs[1]

    def _operands(self, node: Node, ctx: RelaxContext
                  ) -> tuple[list[Interval], list[torch.Tensor | None]]:
        out = tuple(node.out_shape)
        ivs, centres = [], []
        for i, name in enumerate(node.inputs):
            iv, shape = ctx.interval_in(node, i), tuple(node.in_shapes[i])
            ivs.append(Interval(expand_to(iv.lo, shape, out), expand_to(iv.hi, shape, out)))
            c = ctx.acts.get(name)
            centres.append(None if c is None else expand_to(c, shape, out))
        return ivs, centres

    def evaluation_error(self, node: Node, ctx: RelaxContext, out: Interval
                         ) -> torch.Tensor | None:
        r"""One rounded product per output, :math:`u|y|+\eta`, and an operand below the
        smallest normal read as zero, :math:`\eta(|a|+|b|)` (``docs/theory/numerics.md``
        §4)."""
        ar = ctx.model_arith
        ivs, _ = self._operands(node, ctx)
        return ar.unit * out.mag + ar.eta * (1 + ivs[0].mag + ivs[1].mag)

    def error_transfer(self, node: Node, ctx: RelaxContext, errs: list[torch.Tensor]
                       ) -> torch.Tensor:
        """:math:`|\\hat a\\hat b-ab|\\le|a|e_b+|b|e_a+e_ae_b` (magnitudes of the intervals)."""
        ivs, _ = self._operands(node, ctx)
        out = tuple(node.out_shape)
        ea, eb = (expand_to(e, tuple(s), out) for e, s in zip(errs, node.in_shapes))
        return (ivs[0].mag * eb + ivs[1].mag * ea + ea * eb) * (1 + 1e-9)

    def interval(self, node: Node, ctx: RelaxContext, ins: list[Interval]) -> Interval:
        out = tuple(node.out_shape)
        x, y = (Interval(expand_to(iv.lo, tuple(s), out), expand_to(iv.hi, tuple(s), out))
                for iv, s in zip(ins, node.in_shapes))
        if self.is_square(node):
            lo, hi = square_interval(x.lo, x.hi)
            mag = hi
        else:
            lo, hi, mag = product_interval(x.lo, x.hi, y.lo, y.hi)
        # each corner product is rounded once, |fl(p) - p| <= u |p| (+ underflow), and so is
        # the subtraction below: 4u of the largest corner covers both
        e = 4 * UNIT_ROUNDOFF * mag + UNDERFLOW
        return Interval(lo - e, hi + e)

    def planes(self, node: Node, ctx: RelaxContext) -> Planes | SquareLines:
        """The node's planes for the current input intervals (:func:`derived_of_two`)."""

        def make() -> Planes | SquareLines:
            (x, y), (x0, y0) = self._operands(node, ctx)
            if self.is_square(node):
                return square_lines(x.lo, x.hi, x0)
            return mccormick(x.lo, x.hi, y.lo, y.hi, x0, y0)

        return derived_of_two(ctx, node, make)

    def backward(self, node: Node, ctx: RelaxContext, lb: LinearBounds) -> list[LinearBounds]:
        out = tuple(node.out_shape)
        A = lb.A
        pos = A >= 0
        mag_out = ctx.intervals[node.name].mag
        k_out = math.prod(out)
        pl = self.planes(node, ctx)
        mags = [expand_to(ctx.interval_in(node, i).mag, tuple(s), out)
                for i, s in enumerate(node.in_shapes)]
        if isinstance(pl, SquareLines):
            coef = torch.where(pos, A * pl.k_lo.unsqueeze(1), A * pl.k_hi.unsqueeze(1))
            terms = torch.where(pos, A * pl.c_lo.unsqueeze(1), A * pl.c_hi.unsqueeze(1))
            terms = torch.where(A == 0, torch.zeros_like(terms), terms)
            # the product a*k (u), the chord's rounded slope (u |k_hi| |x| where a < 0),
            # the constant's products and sum (gamma_{K+2})
            chord = torch.where(pos, torch.zeros_like(A), A.abs() * pl.k_hi.abs().unsqueeze(1))
            err = (float(gamma(2)) * dot(coef.abs(), mags[0])
                   + 2 * UNIT_ROUNDOFF * dot(chord, mags[0])
                   + float(gamma(k_out + 2)) * terms.abs().flatten(2).sum(2))
            first = lb.then(coef, terms.flatten(2).sum(2), err, mag_out)
            return [_finite(first), None]
        cx = torch.where(pos, A * pl.ax_lo.unsqueeze(1), A * pl.ax_hi.unsqueeze(1))
        cy = torch.where(pos, A * pl.ay_lo.unsqueeze(1), A * pl.ay_hi.unsqueeze(1))
        terms = torch.where(pos, A * pl.c_lo.unsqueeze(1), A * pl.c_hi.unsqueeze(1))
        terms = torch.where(A == 0, torch.zeros_like(terms), terms)
        sx, sy = (tuple(s) for s in node.in_shapes)
        # per operand: one product per output entry, summed over its r broadcast copies
        # (gamma_{r+2}); the constant: rounded offsets, products and the sum (gamma_{K+2})
        err = (float(gamma(repeats(sx, out) + 2)) * dot(cx.abs(), mags[0])
               + float(gamma(repeats(sy, out) + 2)) * dot(cy.abs(), mags[1])
               + float(gamma(k_out + 2)) * terms.abs().flatten(2).sum(2))
        first = lb.then(sum_to(cx, sx, out), terms.flatten(2).sum(2), err, mag_out)
        zero = torch.zeros_like(lb.err)
        return [_finite(first), LinearBounds(sum_to(cy, sy, out), zero, zero)]


# ------------------------------------------------------------------ crown: matmul
@dataclass
class MatmulPlanes:
    """A ``matmul``'s planes per term ``[N, b, m, k, n]`` (``b``: the leading axes of the
    output, flattened) and what every backward step reads of them, per output entry
    ``[N, b, m, n]``: the offsets summed over ``k`` and the rounding weights."""

    planes: Planes
    c_lo: torch.Tensor
    c_hi: torch.Tensor
    #: :math:`\sum_k |X|_{mk}\max(|a^{lo}_x|,|a^{hi}_x|)_{mkn}` and the same for Y, offsets
    wx: torch.Tensor
    wy: torch.Tensor
    wc: torch.Tensor


def _matmul_shapes(node: Node) -> tuple[tuple[int, ...], int, int, int, int]:
    """The output's leading axes, their count ``b`` and ``m, k, n``."""
    sx, sy = node.in_shapes
    lead = tuple(node.out_shape[:-2])
    return lead, max(math.prod(lead), 1), sx[-2], sx[-1], sy[-1]


def _flat_operands(node: Node, xs: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Both operands [N, *lead, ...] broadcast to the output's leading axes and flattened:
    ``X`` [N, b, m, k], ``Y`` [N, b, k, n]."""
    lead, b, m, k, n = _matmul_shapes(node)
    sx, sy = (tuple(s) for s in node.in_shapes)
    x = expand_to(xs[0], sx, (*lead, m, k)).reshape(xs[0].shape[0], b, m, k)
    y = expand_to(xs[1], sy, (*lead, k, n)).reshape(xs[1].shape[0], b, k, n)
    return x, y


def _row_chunks(node: Node, nsamples: int) -> list[slice]:
    _, b, m, k, n = _matmul_shapes(node)
    per = max(1, PLANE_CHUNK // max(1, nsamples * b * k * n))
    return [slice(i, min(i + per, m)) for i in range(0, m, per)]


class MatmulRelaxation(RelaxationRule):
    """``crown`` for ``matmul``: every product of the sums by its McCormick planes (module
    docstring; ``docs/theory/products.md`` §matmul)."""

    nonlinear = True

    def evaluation_error(self, node: Node, ctx: RelaxContext, out: Interval
                         ) -> torch.Tensor | None:
        r""":math:`k` products summed in any order:
        :math:`\gamma_{k+2}(|\hat X||\hat Y|)+(k+2)\eta` (Higham 2002, eq. 3.13;
        ``docs/theory/numerics.md`` §4)."""
        ar = ctx.model_arith
        k = _matmul_shapes(node)[3]
        mx, my = _flat_operands(node, [ctx.interval_in(node, 0).mag,
                                       ctx.interval_in(node, 1).mag])
        terms = torch.matmul(mx, my)
        # operands below the smallest normal read as zero: eta (sum_k |X| + sum_k |Y|)
        daz = ar.eta * (mx.sum(-1, keepdim=True) + my.sum(-2, keepdim=True))
        rho = (ar.gamma(k + 2) * terms + (k + 2) * ar.eta + daz).reshape(out.lo.shape)
        return torch.where(ar.overflows(terms.reshape(out.lo.shape)),
                           torch.full_like(rho, OVERFLOW_CHARGE), rho)

    def error_transfer(self, node: Node, ctx: RelaxContext, errs: list[torch.Tensor]
                       ) -> torch.Tensor:
        """:math:`|X|e_Y+e_X|Y|+e_Xe_Y` (magnitudes of the intervals)."""
        mx, my = _flat_operands(node, [ctx.interval_in(node, 0).mag,
                                       ctx.interval_in(node, 1).mag])
        ex, ey = _flat_operands(node, errs)
        out = torch.matmul(mx, ey) + torch.matmul(ex, my) + torch.matmul(ex, ey)
        grow = 1 + float(gamma(_matmul_shapes(node)[3] + 4))  # the products' own rounding
        return out.reshape(ex.shape[0], *node.out_shape) * grow

    def interval(self, node: Node, ctx: RelaxContext, ins: list[Interval]) -> Interval:
        lead, b, m, k, n = _matmul_shapes(node)
        xl, yl = _flat_operands(node, [ins[0].lo, ins[1].lo])
        xu, yu = _flat_operands(node, [ins[0].hi, ins[1].hi])
        los, his = [], []
        for r in _row_chunks(node, xl.shape[0]):
            lo, hi, mag = product_interval(xl[:, :, r].unsqueeze(-1), xu[:, :, r].unsqueeze(-1),
                                           yl.unsqueeze(2), yu.unsqueeze(2))
            # k rounded products summed: gamma_{k+1} of the magnitudes
            e = float(gamma(k + 2)) * mag.sum(3) + UNDERFLOW * (k + 2)
            los.append(lo.sum(3) - e)
            his.append(hi.sum(3) + e)
        shape = (xl.shape[0], *node.out_shape)
        return Interval(torch.cat(los, 2).reshape(shape), torch.cat(his, 2).reshape(shape))

    def planes(self, node: Node, ctx: RelaxContext) -> MatmulPlanes:
        """The planes for the current input intervals (:func:`derived_of_two`)."""
        return derived_of_two(ctx, node, lambda: self._build(
            node, ctx, ctx.interval_in(node, 0), ctx.interval_in(node, 1)))

    def _build(self, node: Node, ctx: RelaxContext, ivx: Interval, ivy: Interval
               ) -> MatmulPlanes:
        xl, yl = _flat_operands(node, [ivx.lo, ivy.lo])
        xu, yu = _flat_operands(node, [ivx.hi, ivy.hi])
        cx, cy = (ctx.acts.get(name) for name in node.inputs)
        x0 = y0 = None
        if cx is not None and cy is not None:
            x0, y0 = _flat_operands(node, [cx, cy])
        mx, my = _flat_operands(node, [ivx.mag, ivy.mag])
        parts: list[tuple[Planes, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                          torch.Tensor]] = []
        for r in _row_chunks(node, xl.shape[0]):
            p = mccormick(xl[:, :, r].unsqueeze(-1), xu[:, :, r].unsqueeze(-1),
                          yl.unsqueeze(2), yu.unsqueeze(2),
                          None if x0 is None else x0[:, :, r].unsqueeze(-1),
                          None if y0 is None else y0.unsqueeze(2))
            shape = torch.broadcast_shapes(p.ax_lo.shape, p.ay_lo.shape)
            full = Planes(*(t.expand(shape) for t in (p.ax_lo, p.ay_lo, p.c_lo,
                                                      p.ax_hi, p.ay_hi, p.c_hi)))
            wx = (mx[:, :, r].unsqueeze(-1) * torch.maximum(full.ax_lo.abs(),
                                                             full.ax_hi.abs())).sum(3)
            wy = (my.unsqueeze(2) * torch.maximum(full.ay_lo.abs(), full.ay_hi.abs())).sum(3)
            wc = torch.maximum(full.c_lo.abs(), full.c_hi.abs()).sum(3)
            parts.append((full, full.c_lo.sum(3), full.c_hi.sum(3), wx, wy, wc))
        planes = Planes(*(torch.cat([pt[0].__dict__[f] for pt in parts], 2).contiguous()
                          for f in ("ax_lo", "ay_lo", "c_lo", "ax_hi", "ay_hi", "c_hi")))
        cat = [torch.cat([pt[i] for pt in parts], 2) for i in range(1, 6)]
        return MatmulPlanes(planes, *cat)

    def backward(self, node: Node, ctx: RelaxContext, lb: LinearBounds) -> list[LinearBounds]:
        lead, b, m, k, n = _matmul_shapes(node)
        nb, s = lb.A.shape[:2]
        A = lb.A.reshape(nb, s, b, m, n)
        pos, neg = A.clamp(min=0), A.clamp(max=0)
        mp = self.planes(node, ctx)
        p = mp.planes
        # coefficients of X [N, S, b, m, k] (sums over n) and Y [N, S, b, k, n] (over m)
        coef_x = (torch.einsum("zsbmj,zbmkj->zsbmk", pos, p.ax_lo)
                  + torch.einsum("zsbmj,zbmkj->zsbmk", neg, p.ax_hi))
        coef_y = (torch.einsum("zsbmj,zbmkj->zsbkj", pos, p.ay_lo)
                  + torch.einsum("zsbmj,zbmkj->zsbkj", neg, p.ay_hi))
        c_lo = torch.where(pos == 0, torch.zeros_like(pos), pos * mp.c_lo.unsqueeze(1))
        c_hi = torch.where(neg == 0, torch.zeros_like(neg), neg * mp.c_hi.unsqueeze(1))
        bias = (c_lo + c_hi).flatten(2).sum(2)
        sx, sy = (tuple(t) for t in node.in_shapes)
        out = tuple(node.out_shape)
        rx, ry = repeats(sx, out), repeats(sy, out)
        absA = A.abs().reshape(lb.A.shape)
        # X's coefficients: sums of 2n products (+ rx broadcast copies); Y's: 2m products;
        # the constant: k rounded offsets per entry, then the sum over the output
        err = (float(gamma(2 * n + rx + 3)) * dot(absA, mp.wx.reshape(nb, *out))
               + float(gamma(2 * m + ry + 3)) * dot(absA, mp.wy.reshape(nb, *out))
               + float(gamma(k + math.prod(out) + 4)) * dot(absA, mp.wc.reshape(nb, *out)))
        ax = sum_to(coef_x.reshape(nb, s, *lead, m, k), sx, (*lead, m, k))
        ay = sum_to(coef_y.reshape(nb, s, *lead, k, n), sy, (*lead, k, n))
        first = lb.then(ax, bias, err, ctx.intervals[node.name].mag)
        zero = torch.zeros_like(lb.err)
        return [_finite(first), LinearBounds(ay, zero, zero)]


# ------------------------------------------------------------------ sound
def _group_norms(node: Node, acts: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    r"""``(c_x, c_y)`` [N] at x (module docstring): :math:`c_y` the largest L2 norm of the
    entries of :math:`y` (``mul``; the matrices :math:`Y_b`, Frobenius, for ``matmul``)
    that meet one entry (matrix) of :math:`x`, plus :math:`y`'s rounding bound; the sums
    and the square root rounded up."""
    sx, sy = (tuple(s) for s in node.in_shapes)
    x, y = acts[node.inputs[0]], acts[node.inputs[1]]
    if node.op == "mul":
        out = tuple(node.out_shape)
        sq = [x * x, y * y]
        shapes, grid = [sx, sy], out
    else:  # matmul: per matrix, the squared Frobenius norm
        grid = tuple(node.out_shape[:-2])
        sq = [(x * x).sum((-2, -1)), (y * y).sum((-2, -1))]
        shapes = [sx[:-2], sy[:-2]]
    cs = []
    for other, mine in ((1, 0), (0, 1)):  # c_y reads y over the groups of x, and back
        spread = expand_to(sq[other], shapes[other], grid)
        per = sum_to(spread, shapes[mine], grid, lead=1)
        per = per.reshape(per.shape[0], -1).amax(1)
        count = repeats(shapes[mine], grid) * (math.prod(sq[other].shape[1:]) + 1)
        c = torch.sqrt(per * (1 + float(gamma(count + 2)))) * (1 + 4 * UNIT_ROUNDOFF)
        e = rounding_error(acts, node.inputs[other])
        cs.append(c if e is None else c + e * (1 + 2 * UNIT_ROUNDOFF))
    return cs[0], cs[1]  # c_y (y's size, multiplies omega_x), then c_x


#: the most polynomials a product's modulus keeps (:func:`prune`)
KEEP_POLYS = 4


def prune(mod: Modulus, keep: int = KEEP_POLYS) -> Modulus:
    r"""At most ``keep`` of the polynomials of ``mod``: those that are the smallest at the
    most points of a geometric grid of radii :math:`t\in[10^{-12},10^{6}]` (over every
    sample). The minimum over a subset is at least the minimum over all, so the result is
    a modulus too; without pruning the count multiplies at every product (the sum and the
    product of two minima of :math:`p` and :math:`q` polynomials have :math:`pq` each)."""
    if len(mod.polys) <= keep:
        return mod
    t = torch.logspace(-12, 6, 64, dtype=torch.float64, device=mod.polys[0].device)
    b = max(p.shape[0] for p in mod.polys)
    vals = torch.stack([Modulus([p])(t.unsqueeze(1)).expand(64, b) for p in mod.polys])
    best = torch.nan_to_num(vals, nan=math.inf).argmin(0).flatten()  # [64 * B]
    wins = torch.bincount(best, minlength=len(mod.polys))
    order = torch.argsort(wins, descending=True, stable=True)[:keep]
    return Modulus([mod.polys[i] for i in sorted(order.tolist())])


class ProductRule(SoundRule):
    """``sound`` for ``mul`` and ``matmul``: a merge of the operands' moduli at the point
    (module docstring). No global Lipschitz constant exists."""

    merges = True

    def needs(self, node: Node, graph: Graph) -> set[str]:
        return set(node.inputs)

    def lipschitz(self, node: Node, graph: Graph) -> float:
        """A product is not globally Lipschitz: ``inf`` (only its modulus at a point is
        used)."""
        return math.inf

    def combine(self, node: Node, graph: Graph, parts: list[Modulus]) -> Modulus:
        raise ValueError(f"{node.describe()}: a product's modulus needs the activations at "
                         "x (combine_at)")

    def combine_at(self, node: Node, graph: Graph, parts: list[Modulus],
                   acts: dict[str, torch.Tensor] | None) -> Modulus:
        r""":math:`c_y\omega_x+c_x\omega_y+\omega_x\omega_y`."""
        if acts is None or any(i not in acts for i in node.inputs):
            return self.combine(node, graph, parts)
        c_y, c_x = _group_norms(node, acts)
        wx, wy = parts
        return prune(wx.scale(c_y) + wy.scale(c_x) + wx * wy)

    def input_norm(self, node: Node, graph: Graph, norms: dict[str, torch.Tensor]
                   ) -> torch.Tensor:
        """:math:`\\|x\\|\\|y\\|` (computed values): it bounds every sum of products
        :math:`\\sum|x||y|` the node forms (output entries read distinct pairs)."""
        return norms[node.inputs[0]] * norms[node.inputs[1]]

    def rounding(self, node: Node, graph: Graph, in_norm: torch.Tensor,
                 out_norm: torch.Tensor) -> torch.Tensor:
        """``mul``: one rounded product per entry, :math:`2u\\|z\\|`; ``matmul``: sums of
        ``k`` products, :math:`\\gamma_{k+2}\\|X\\|\\|Y\\|`."""
        if node.op == "mul":
            return 2 * UNIT_ROUNDOFF * out_norm
        return float(gamma(node.in_shapes[0][-1] + 2)) * in_norm * (1 + 1e-6)

    def carry_error_at(self, node: Node, graph: Graph, ins: list[torch.Tensor],
                       norms: dict[str, torch.Tensor]) -> torch.Tensor:
        r""":math:`\|y\|e_x+\|x\|e_y+e_xe_y` (computed operands' norms)."""
        ex, ey = ins
        nx, ny = norms[node.inputs[0]], norms[node.inputs[1]]
        return (ny * ex + nx * ey + ex * ey) * (1 + 4 * UNIT_ROUNDOFF)

    def carry_error(self, node: Node, graph: Graph, ins: list[torch.Tensor]) -> torch.Tensor:
        raise ValueError(f"{node.describe()}: a product's carried error needs the operands' "
                         "norms (carry_error_at)")


register_rule("mul", "sound", ProductRule())
register_rule("matmul", "sound", ProductRule())
register_rule("mul", "crown", MulRelaxation())
register_rule("matmul", "crown", MatmulRelaxation())
