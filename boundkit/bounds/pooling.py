r"""Pooling layers: max, average and :math:`L_p` (``MaxPool2d``, ``AvgPool2d``, ``LPPool2d``).

**Sound rules** (``docs/theory/pooling.md``). Write the layer as one function per window
:math:`w`, each reading the entries :math:`I_w` of one channel. If each window output
satisfies :math:`|z_w(a)-z_w(b)|\le\lambda_w\|a_{I_w}-b_{I_w}\|_2`, then

.. math:: \|z(a)-z(b)\|_2^2\le\sum_w\lambda_w^2\|a_{I_w}-b_{I_w}\|^2
          =\sum_i(a_i-b_i)^2\sum_{w\ni i}\lambda_w^2
          \le\Big(\max_i\sum_{w\ni i}\lambda_w^2\Big)\|a-b\|^2 .

* max: :math:`|\max a-\max b|\le\max|a-b|\le\|a-b\|_2`, so :math:`\lambda_w=1` and
  :math:`L^2=\max_i\#\{w\ni i\}`, the largest window overlap (1 without overlap: exact).
* average with divisor :math:`D_w` over :math:`n_w` real entries: Cauchy-Schwarz gives
  :math:`\lambda_w^2=n_w/D_w^2` (:math:`1/k^2` per window without padding).
* :math:`L_p` as torch computes it, :math:`z_w=(k_hk_w/n_w)^{1/p}\|a_{I_w}\|_p` on
  non-negative inputs: reverse triangle inequality plus
  :math:`\|v\|_p\le n^{\max(0,1/p-1/2)}\|v\|_2`.

Windows are separable in height and width, so the maximum is a product of two 1-D maxima,
computed exactly from torch's own window arithmetic (stride, padding, dilation, ceil mode,
``count_include_pad``, ``divisor_override``) once per model.

**peck2017** (thesis Theorem 5.3): :math:`\kappa/t` for max and average pooling,
:math:`\kappa/(t\,q^{2/p})` for :math:`L_p`, with :math:`t^2` the number of output positions
per channel (:math:`t=\sqrt{t_ht_w}` for rectangles) and :math:`q^2=k_hk_w`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from boundkit.bounds.numerics import UNIT_ROUNDOFF, gamma, inflate
from boundkit.bounds.registry import BackwardRule, LipschitzRule, register_rule
from boundkit.bounds.relaxation import (
    AffineRelaxation,
    Interval,
    LinearBounds,
    RelaxationRule,
    RelaxContext,
    dot,
)
from boundkit.errors import UnsupportedLayerError
from boundkit.graph.graph import Graph, Node
from boundkit.graph.ops import evaluate
from boundkit.graph.optable import ops_where

#: ops whose outputs are never negative (the operator table's ``nonnegative`` flag)
_NONNEGATIVE_OPS = ops_where("nonnegative")


def _axis_windows(
    size: int, out: int, k: int, s: int, p: int, d: int
) -> list[tuple[list[int], int]]:
    """For each output index along one axis: the valid input indices of its window and the
    pad-inclusive extent torch uses as the ``count_include_pad`` divisor."""
    wins = []
    for o in range(out):
        start = o * s - p
        members = [start + d * j for j in range(k) if 0 <= start + d * j < size]
        extent = min(start + k, size + p) - start
        wins.append((members, extent))
    return wins


def _axis_overlap(size: int, wins: list[tuple[list[int], int]], factor: list[float]) -> float:
    """max over input positions i of sum over windows containing i of factor[window]."""
    acc = [0.0] * size
    for (members, _), f in zip(wins, factor):
        for i in members:
            acc[i] += f
    return max(acc) if acc else 0.0


def pooling_lipschitz(node: Node) -> float:
    """Sound Lipschitz constant of a pooling node (see the module docstring)."""
    a = node.attrs
    _, h, w = node.in_shapes[0]
    _, oh, ow = node.out_shape
    kh, kw = a["kernel_size"]
    sh, sw = a["stride"]
    ph, pw = a.get("padding", (0, 0))
    dh, dw = a.get("dilation", (1, 1))
    wh = _axis_windows(h, oh, kh, sh, ph, dh)
    ww = _axis_windows(w, ow, kw, sw, pw, dw)
    if node.op == "maxpool2d":
        fh, fw = [1.0] * oh, [1.0] * ow
        scale = 1.0
    elif node.op == "avgpool2d":
        override = a.get("divisor_override")
        if override:
            fh = [float(len(m)) for m, _ in wh]
            fw = [float(len(m)) for m, _ in ww]
            scale = 1.0 / float(override) ** 2
        elif a.get("count_include_pad", True):
            fh = [len(m) / e**2 for m, e in wh]
            fw = [len(m) / e**2 for m, e in ww]
            scale = 1.0
        else:
            fh = [1.0 / len(m) if m else 0.0 for m, _ in wh]
            fw = [1.0 / len(m) if m else 0.0 for m, _ in ww]
            scale = 1.0
    elif node.op == "lppool2d":
        pn = float(a["p"])
        if pn < 1:
            raise UnsupportedLayerError(node.name, node.op, "sound", f"p={pn} < 1 is not a norm")
        if pn >= 2:  # lambda_w^2 = (k^2 / n_w)^(2/p)
            fh = [(kh / len(m)) ** (2 / pn) if m else 0.0 for m, _ in wh]
            fw = [(kw / len(m)) ** (2 / pn) if m else 0.0 for m, _ in ww]
        else:  # lambda_w^2 = (k^2 / n_w)^(2/p) * n_w^(2/p - 1) = k^(4/p) / n_w
            fh = [kh ** (2 / pn) / len(m) if m else 0.0 for m, _ in wh]
            fw = [kw ** (2 / pn) / len(m) if m else 0.0 for m, _ in ww]
        scale = 1.0
    else:
        raise UnsupportedLayerError(node.name, node.op, "sound", "not a pooling layer")
    sq = _axis_overlap(h, wh, fh) * _axis_overlap(w, ww, fw) * scale
    return float(inflate(math.sqrt(sq)))


class PoolingRule(LipschitzRule):
    """Sound: the window-overlap Lipschitz constant."""

    def compute_lipschitz(self, node: Node, graph: Graph) -> float:
        if node.op == "lppool2d":
            pn = float(node.attrs["p"])
            producer = graph.producer(node)
            even = pn == int(pn) and int(pn) % 2 == 0
            if not even and producer.op not in _NONNEGATIVE_OPS:
                raise UnsupportedLayerError(
                    node.name, node.op, "sound",
                    f"torch's LPPool2d with p={pn:g} computes (sum x^p)^(1/p), which is the "
                    "L_p norm only for non-negative inputs or even p; its input comes from "
                    f"{producer.name!r} ({producer.op}), which can be negative",
                )
        return pooling_lipschitz(node)

    def rounding(
        self, node: Node, graph: Graph, in_norm: torch.Tensor, out_norm: torch.Tensor
    ) -> torch.Tensor:
        if node.op == "maxpool2d":
            return torch.zeros_like(out_norm)  # comparisons are exact
        k = math.prod(node.attrs["kernel_size"])
        # a sum of k terms and a division (avg) or powers and a root (L_p): a few ulps each
        return (k + 8) * 2.0**-53 * (out_norm + in_norm * self.lipschitz(node, graph))


class PoolingPeck(BackwardRule):
    """peck2017, thesis Theorem 5.3 (rectangles: :math:`t=\\sqrt{t_ht_w}`,
    :math:`q^2=k_hk_w`)."""

    def backward(
        self, node: Node, graph: Graph, kappa: torch.Tensor, acts: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        _, oh, ow = node.out_shape
        t = math.sqrt(oh * ow)
        if node.op == "lppool2d":
            kh, kw = node.attrs["kernel_size"]
            return kappa / (t * (kh * kw) ** (1.0 / float(node.attrs["p"])))
        return kappa / t


for _op in ("maxpool2d", "avgpool2d", "lppool2d"):
    register_rule(_op, "sound", PoolingRule())
    register_rule(_op, "peck2017", PoolingPeck())


def _avg(node: Node, z: torch.Tensor) -> torch.Tensor:
    a = node.attrs
    return F.avg_pool2d(z, a["kernel_size"], a["stride"], a.get("padding", (0, 0)),
                        a.get("ceil_mode", False), a.get("count_include_pad", True),
                        a.get("divisor_override"))


class AvgPoolRelaxation(AffineRelaxation):
    """``crown``: average pooling is linear with non-negative weights; its transpose is the
    gradient of the pooling (computed by autograd, exact up to the charged rounding)."""

    def apply(self, node: Node, z: torch.Tensor) -> torch.Tensor:
        return _avg(node, z)

    def transpose(self, node: Node, a: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            z = torch.zeros((a.shape[0], *node.in_shapes[0]), dtype=a.dtype, device=a.device,
                            requires_grad=True)
            (g,) = torch.autograd.grad(_avg(node, z), z, a)
        return g

    def abs_apply(self, node: Node, m: torch.Tensor) -> torch.Tensor:
        return _avg(node, m)

    def fan(self, node: Node) -> int:
        return int(math.prod(node.attrs["kernel_size"])) + 2


class MaxPoolRelaxation(RelaxationRule):
    r"""``crown``: in each window with input bounds :math:`[l_i,u_i]`, let :math:`j` maximise
    :math:`l_j` and :math:`k` maximise :math:`u_k`. If :math:`l_j\ge\max_{i\ne j}u_i` the max
    *is* :math:`z_j`. Otherwise the lower line is :math:`z_{j'}\le\max_i z_i`, :math:`j'` the
    input with the largest midpoint :math:`l+u` (or centre value), and, with
    :math:`m=\max(l_k,\max_{i\ne k}u_i)`, :math:`\max_i z_i\le\max(z_k,m)\le s z_k+b`, the
    chord of the convex :math:`t\mapsto\max(t,m)` over :math:`[l_k,u_k]`:
    :math:`s=(u_k-m)/(u_k-l_k)` (0 where :math:`u_k=m`) and
    :math:`b=\max(m-sl_k,\,u_k-su_k)` rounded up; pointwise never above the constant
    :math:`u_k=\max_iu_i` it replaces (docs/theory/linear_relaxation.md §Max pooling). The
    products :math:`a^-s` are charged, as are the sums of overlapping windows."""

    nonlinear = True

    def supports(self, node: Node) -> bool:
        return not node.attrs.get("ceil_mode", False)

    #: computed exactly by the model: a maximum is one of the inputs (numerics §4)
    exact_arithmetic = True

    def error_transfer(self, node: Node, ctx: RelaxContext, errs: list[torch.Tensor]
                       ) -> torch.Tensor:
        """A window's maximum moves by at most the largest move in the window: the node
        applied to :math:`e`."""
        return evaluate(node, errs)

    def interval(self, node: Node, ctx: RelaxContext, ins: list[Interval]) -> Interval:
        a = node.attrs
        def mp(t: torch.Tensor) -> torch.Tensor:
            return F.max_pool2d(t, a["kernel_size"], a["stride"], a["padding"], a["dilation"])
        return Interval(mp(ins[0].lo), mp(ins[0].hi))

    def _slots(self, node: Node, t: torch.Tensor) -> list[torch.Tensor]:
        """The windows of ``t`` [N, C, H, W] as one tensor per kernel position (row-major
        kernel order), each holding that input of every window [N, C, *W] (``-inf`` on
        padding): the relaxation is then a few element-wise passes over tensors the size
        of the output, not reductions over a small window dimension. Non-overlapping
        windows without padding or dilation (the usual ``MaxPool2d(k)``) are strided views
        of ``t`` ([N, C, oh, ow], no copy); others come from ``unfold`` ([N, C, L])."""
        a = node.attrs
        (kh, kw), (sh, sw) = a["kernel_size"], a["stride"]
        p, d = a["padding"], a["dilation"]
        n, c = t.shape[:2]
        oh, ow = node.out_shape[1:]
        if (sh, sw) == (kh, kw) and tuple(p) == (0, 0) and tuple(d) == (1, 1):
            return [t[:, :, i:oh * kh:kh, j:ow * kw:kw] for i in range(kh) for j in range(kw)]
        t = F.pad(t, (p[1], p[1], p[0], p[0]), value=-math.inf)
        cols = F.unfold(t.reshape(n * c, 1, *t.shape[2:]), a["kernel_size"],
                        dilation=d, stride=a["stride"])
        return list(cols.reshape(n, c, cols.shape[1], cols.shape[2]).unbind(2))

    def _positions(self, node: Node, like: torch.Tensor) -> list[torch.Tensor]:
        """The flat (padded) input position of each window's input, per kernel position
        (as :meth:`_slots`; long, shaped like one slot without its first two dimensions)."""
        a = node.attrs
        p = a["padding"]
        in_hw = node.in_shapes[0][1:]
        padded = (in_hw[0] + 2 * p[0], in_hw[1] + 2 * p[1])
        pos_map = torch.arange(padded[0] * padded[1], dtype=like.dtype, device=like.device)
        pos_w = F.unfold(pos_map.reshape(1, 1, *padded), a["kernel_size"],
                         dilation=a["dilation"], stride=a["stride"])[0]  # [k, L]
        return [q.long().reshape(like.shape[2:]) for q in pos_w.unbind(0)]

    def lines(self, node: Node, iv: Interval, centre: torch.Tensor | None = None
              ) -> PoolLines:
        """Each window's lower-line input (``flat``), upper-line input (``up_flat``), the
        upper line's slope and constant, on the input interval ``iv``. Any input of a
        window is a valid lower line of its max; where the max is not one input on the
        whole set, the one largest at ``centre`` (the input's values at the ball's centre
        [N, *shape], when given), else the one with the largest midpoint of its interval
        (ReLU outputs often tie at a lower bound 0). Ties go to the first input in kernel
        order."""
        lo_s, hi_s = self._slots(node, iv.lo), self._slots(node, iv.hi)
        k = len(lo_s)
        j, l_best = _first_max(lo_s)  # the largest lower bound
        others = _max_except(hi_s, j)
        stable = l_best >= others
        # the centre's values, else the intervals' midpoints (a sum of the two windows:
        # only compared, so its rounding is harmless)
        mid = (self._slots(node, centre.to(iv.lo.dtype))
               if centre is not None and centre.shape == iv.lo.shape
               else [lo + hi for lo, hi in zip(lo_s, hi_s)])
        best = torch.where(stable, j, _first_max(mid)[0])
        top, u_k = _first_max(hi_s)  # k: the largest upper bound
        l_k = _pick(lo_s, top)
        m = torch.maximum(_max_except(hi_s, top), l_k)
        # the chord of t -> max(t, m) on [l_k, u_k] (m >= l_k); any slope s gives a valid
        # line once b is the larger of the two end gaps (convexity), rounded up; s = 0 (the
        # constant u_k) where the chord is flat or an end is not finite
        wide = (u_k > m) & torch.isfinite(l_k) & torch.isfinite(u_k)
        s = torch.where(wide, (u_k - m) / torch.where(wide, u_k - l_k, torch.ones_like(u_k)),
                        torch.zeros_like(u_k))
        sl = torch.where(wide, s * l_k, torch.zeros_like(s))
        su = torch.where(wide, s * u_k, torch.zeros_like(s))
        b = torch.maximum(m - sl, u_k - su)
        b = b + 4 * UNIT_ROUNDOFF * (m.abs() + u_k.abs() + sl.abs() + su.abs()) + _TINY
        slope = torch.where(stable, torch.ones_like(s), s)
        const = torch.where(stable, torch.zeros_like(b), b)
        pos = self._positions(node, lo_s[0])
        flat = _pick(pos, best)
        up = torch.where(stable, flat, _pick(pos, top))
        n, c = lo_s[0].shape[:2]
        return PoolLines(flat=flat.reshape(n, c, -1), up_flat=up.reshape(n, c, -1),
                         slope=slope.reshape(n, 1, c, -1), const=const.reshape(n, c, -1),
                         c_abs=const.abs().reshape(n, c, -1), kernel=k, mag=iv.mag)

    def backward(self, node: Node, ctx: RelaxContext, lb: LinearBounds) -> list[LinearBounds]:
        iv = ctx.interval_in(node)
        ln = ctx.derived(f"maxpool-lines:{node.name}", iv,
                         lambda: self.lines(node, iv, ctx.acts.get(node.inputs[0])))
        n, s = lb.A.shape[:2]
        c = node.out_shape[0]
        A = lb.A.reshape(n, s, c, -1)  # [N, S, C, L]
        pos, neg = torch.clamp_min(A, 0), torch.clamp_max(A, 0)
        # positive coefficients follow the lower line z_j; negative ones the upper line
        # s z_k + b (z_j itself on stable windows: slope 1, constant 0)
        low = neg * ln.slope  # rounded: charged below
        add = dot(neg, ln.const)
        # each window's coefficients land on their inputs: scatter-adds over the flat
        # (padded) input positions (per entry of A one of pos, low is 0: exact unless
        # windows overlap)
        p = node.attrs["padding"]
        in_hw = node.in_shapes[0][1:]
        padded = (in_hw[0] + 2 * p[0], in_hw[1] + 2 * p[1])
        a_in = torch.zeros(n, s, c, padded[0] * padded[1], dtype=A.dtype, device=A.device)
        a_in.scatter_add_(3, ln.flat.unsqueeze(1).expand(n, s, c, -1), pos)
        a_in.scatter_add_(3, ln.up_flat.unsqueeze(1).expand(n, s, c, -1), low)
        a_in = a_in.reshape(n, s, c, *padded)[..., p[0]:p[0] + in_hw[0], p[1]:p[1] + in_hw[1]]
        err = float(gamma(A[0, 0].numel() + 1)) * dot(neg.abs(), ln.c_abs)
        # the products a^- s (one rounding each) and, where windows overlap, the sums of up
        # to 2 k terms per input
        terms = 2 * ln.kernel if _overlapping(node) else 1
        err = err + float(gamma(terms + 2)) * dot(a_in.abs(), ln.mag)
        return [lb.then(a_in.contiguous(), add, err, ctx.intervals[node.name].mag)]


@dataclass
class PoolLines:
    """A max pooling's relaxation on one input interval, per window: the flat (padded)
    input position of its lower line's input (``flat`` [N, C, L]) and of its upper line's
    (``up_flat``), the upper line's slope (``slope`` [N, 1, C, L]: 1 on windows whose max is
    ``flat``'s input on the whole set) and constant (``const`` [N, C, L], 0 there), its
    magnitude, the kernel size and the bound on ``|z|`` at the input (``mag``)."""

    flat: torch.Tensor
    up_flat: torch.Tensor
    slope: torch.Tensor
    const: torch.Tensor
    c_abs: torch.Tensor
    kernel: int
    mag: torch.Tensor


def _first_max(slots: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """The index (long) of the largest of ``slots`` element-wise, the first on ties, and
    its value."""
    val = slots[0]
    idx = torch.zeros(val.shape, dtype=torch.long, device=val.device)
    for i, t in enumerate(slots[1:], 1):
        more = t > val
        val = torch.where(more, t, val)
        idx = idx.masked_fill(more, i)
    return idx, val


def _max_except(slots: list[torch.Tensor], skip: torch.Tensor) -> torch.Tensor:
    """Element-wise, the largest of ``slots`` other than the one indexed by ``skip``
    (``-inf`` with a single slot)."""
    out = torch.full(skip.shape, -math.inf, dtype=slots[0].dtype, device=slots[0].device)
    for i, t in enumerate(slots):
        out = torch.maximum(out, t.masked_fill(skip == i, -math.inf))
    return out


def _pick(slots: list[torch.Tensor], idx: torch.Tensor) -> torch.Tensor:
    """Element-wise, the slot indexed by ``idx`` (every slot broadcast to its shape)."""
    out = slots[0].expand(idx.shape) if slots[0].shape != idx.shape else slots[0]
    for i, t in enumerate(slots[1:], 1):
        out = torch.where(idx == i, t, out)
    return out


#: the smallest normal float64, added to a constant rounded up (covers underflow)
_TINY = torch.finfo(torch.float64).tiny


def _overlapping(node: Node) -> bool:
    """Whether two windows of a pooling can share an input position (a stride below the
    dilated kernel's extent, in either dimension)."""
    a = node.attrs
    return any(a["stride"][i] < a["dilation"][i] * (a["kernel_size"][i] - 1) + 1
               for i in range(2))


register_rule("avgpool2d", "crown", AvgPoolRelaxation())
register_rule("maxpool2d", "crown", MaxPoolRelaxation())
