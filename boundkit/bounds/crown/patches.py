r"""Acceleration: concretisation through a patch embedding, without the input-sized
coefficients (docs/theory/linear_relaxation.md §Concretisation through a patch embedding).

A vision transformer reads its input through one convolution whose stride equals its kernel
and which tiles the image exactly (no padding, dilation 1, one group): :math:`h=Wx+c` maps
each of :math:`P` disjoint patches :math:`x_p\in\mathbb R^D` to
:math:`h_p=W_mx_p+c\in\mathbb R^O` (:math:`W_m` the kernel as an :math:`O\times D`
matrix). A walk that reaches that convolution with coefficients :math:`a` (``[N, S, O,
gh, gw]``) would go on to :math:`A=W^\top a` (``[N, S, C, H, W]``, the largest tensor of the
walk) only to read :math:`\langle A,x_0\rangle` and the norm of :math:`A` clamped on the box
faces. Both come from :math:`a` directly:

* :math:`\langle A,x_0\rangle=\langle a,W_m x_0\rangle`;
* :math:`\|A\|^2=\sum_p a_p^\top G\,a_p` with the Gram matrix :math:`G=W_mW_m^\top`
  (:math:`O\times O`), and :math:`\|\mu\|^2=\|A\|^2-\sum_{i\in F}\rho_i^2` where ``F`` are the
  coordinates on a box face and :math:`\rho_i` the part of :math:`A_i` the face blocks
  (:math:`(A_i)_+` on the lower face, :math:`(A_i)_-` on the upper one), computed from the
  few columns of :math:`W_m` those coordinates read.

Every rounding is charged so that the result is a valid :class:`Concrete` (``c`` not above,
``nu`` not below their exact values). A sample with more than :math:`D_{in}/P` pixels on a
face (their product, :math:`O P` terms each, would cost more than the transpose) takes the
general path, on its own rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from boundkit.bounds.crown.concrete import Concrete, concretise
from boundkit.bounds.numerics import UNIT_ROUNDOFF, gamma
from boundkit.bounds.relaxation import AffineRelaxation, LinearBounds, RelaxContext, dot
from boundkit.graph.graph import Graph, Node

if TYPE_CHECKING:
    from boundkit.bounds.crown.run import CrownRun


@dataclass
class PatchHead:
    """The patch embedding a graph reads its input through, and its matrices (float64):
    ``w`` :math:`W_m` [O, D]; ``gram`` :math:`\\widehat{W_mW_m^\\top}`; ``abs_gram``
    :math:`\\widehat{|W_m||W_m|^\\top}` [O, O]; ``kernel`` (kh, kw)."""

    node: Node
    w: torch.Tensor
    gram: torch.Tensor
    abs_gram: torch.Tensor
    kernel: tuple[int, int]

    @property
    def d(self) -> int:
        """Entries of one patch (C kh kw)."""
        return int(self.w.shape[1])

    @property
    def o(self) -> int:
        """Channels of the embedding."""
        return int(self.w.shape[0])


def find_head(graph: Graph, rules: dict, device: torch.device) -> PatchHead | None:
    """The convolution that is the only reader of the input, with stride = kernel, no
    padding, dilation 1, one group, tiling the input exactly and smaller than it; else
    ``None``."""
    readers = graph.consumers(graph.input.name)
    if len(readers) != 1:
        return None
    node = graph[readers[0]]
    if node.op != "conv2d" or not isinstance(rules.get(node.name), AffineRelaxation):
        return None
    a = node.attrs
    w = node.params["weight"]
    kh, kw = int(w.shape[2]), int(w.shape[3])
    pad = a.get("padding")
    if (tuple(a.get("stride", ())) != (kh, kw) or "padding_mode" in a
            or not (pad == 0 or (isinstance(pad, (tuple, list)) and all(p == 0 for p in pad)))
            or tuple(a.get("dilation", ())) != (1, 1) or a.get("groups") != 1):
        return None
    c, h, wd = node.in_shapes[0]
    o, gh, gw = node.out_shape
    if (gh * kh, gw * kw) != (h, wd) or int(w.shape[1]) != c or o * gh * gw >= c * h * wd:
        return None
    wm = w.detach().to(device=device, dtype=torch.float64).reshape(o, -1)
    return PatchHead(node, wm, wm @ wm.T, wm.abs() @ wm.abs().T, (kh, kw))


class PatchConcretisation:
    """Where the acceleration applies (a graph with a :class:`PatchHead`) and the
    concretisation itself."""

    @staticmethod
    def head(run: CrownRun) -> PatchHead | None:
        """The run's patch head (found once per plan), or ``None``."""
        key = str(run.x0.device)
        if key not in run.plan.patch_heads:
            run.plan.patch_heads[key] = find_head(run.graph, run.plan.rules, run.x0.device)
        return run.plan.patch_heads[key]

    @staticmethod
    def faces(run: CrownRun) -> torch.Tensor:
        """[N, C*H*W] bool: input coordinates on a box face for the samples the box
        constrains."""
        x = run.x0.flatten(1)
        if run.box is None:
            return torch.zeros_like(x, dtype=torch.bool)
        return ((x <= run.box[0]) | (x >= run.box[1])) & run.in_box.unsqueeze(1)

    def concretise(self, run: CrownRun, head: PatchHead, lb: LinearBounds,
                   ctx: RelaxContext) -> Concrete | None:
        r"""The concretisation of ``lb`` (at the head's output) over the ball and box, the
        head's constant and rounding charged as its own ``backward`` charges them. A sample
        with more than D_in / P pixels on a face (their product would cost more than the
        transpose) takes the general path, on its rows only; ``None`` where every sample
        does."""
        node = head.node
        faces = self.faces(run)
        d_in = faces.shape[1]
        heavy = faces.sum(1) * math.prod(node.out_shape[1:]) > d_in
        if bool(heavy.all()):
            return None
        faces = faces & ~heavy.unsqueeze(1)
        nf = int(faces.sum(1).max()) if faces.numel() else 0
        rule = run.plan.rules[node.name]
        assert isinstance(rule, AffineRelaxation)
        n, s = lb.A.shape[:2]
        # the head's constant and its rounding, as AffineRelaxation.backward charges them
        c = rule.const(node)
        add: torch.Tensor | float = 0.0 if c is None else dot(lb.A, c.expand(n, *c.shape))
        err = dot(lb.A.abs(), rule._charges(node, ctx))
        lb = lb.then(lb.A, add, err, ctx.intervals[node.name].mag)  # forks charged
        o, p = head.o, math.prod(node.out_shape[1:])
        a = lb.A.reshape(n, s, o, p)
        x0 = run.x0
        # <A, x0> = <a, W x0>: z0 = W x0 to gamma_{D+2} |W| |x0| (the rule's own rounding
        # bound, its constant's term only adds), then the dot of m = O P terms
        z0 = rule.apply(node, x0)
        r0 = rule.rounding_bound(node, x0.abs())
        ax0 = dot(lb.A, z0)
        m = o * p
        dot_err = dot(lb.A.abs(), r0 + float(gamma(m + 1)) * z0.abs())
        # ||A||^2 = sum_p a_p^T G a_p; the Gram matrix is computed to gamma_D |W||W|^T, the
        # matrix-vector products and the sum to gamma_{O + m + 1} |a|^T |G| |a|
        # as one [N S P, O] x [O, O] product each (both matrices are symmetric)
        at = a.transpose(2, 3).reshape(-1, o)
        q = (at * (at @ head.gram)).reshape(n, s, -1).sum(2)
        aa = at.abs()
        h = (aa * (aa @ head.abs_gram)).reshape(n, s, -1).sum(2)
        g = float(gamma(head.d + o + m + 2))
        blocked = self._blocked(run, head, a, faces, nf) if nf else torch.zeros_like(q)
        # the two additions round by u each: 4u of the magnitudes covers them
        sq = q + 3 * g * h - blocked + 4 * UNIT_ROUNDOFF * (q.abs() + h + blocked)
        # a product that underflows loses at most 2^-1074: m (O + 1) of them, F squares
        floor = math.sqrt(m * (o + 2) + d_in) * 2.0 ** -537
        # (clamped at 1e-300, not 0: a finite gradient for alpha where the norm vanishes)
        nu = torch.sqrt(sq.clamp(min=1e-300)) * (1 + 4 * UNIT_ROUNDOFF) + floor
        cc = (ax0 + lb.bias - lb.err * (1 + 1e-8) - dot_err * (1 + 1e-6)
              - 1e-15 * (ax0.abs() + lb.bias.abs()) - 1e-300)
        bad = ~(torch.isfinite(cc) & torch.isfinite(nu))
        if bool(bad.any()):
            cc = torch.where(bad, -math.inf, cc)
            nu = torch.where(bad, torch.zeros_like(nu), nu)
        if bool(heavy.any()):  # those rows as the general path concretises them
            rows = torch.nonzero(heavy).flatten()
            k = rows.numel()
            a_in = rule.transpose(node, lb.A[rows].reshape(k * s, *lb.A.shape[2:]))
            gen = concretise(LinearBounds(a_in.reshape(k, s, *a_in.shape[1:]), lb.bias[rows],
                                          lb.err[rows]), x0[rows], run.box, run.in_box[rows])
            cc = cc.index_put((rows,), gen.c)
            nu = nu.index_put((rows,), gen.nu)
        return Concrete(cc, nu)

    @staticmethod
    def _blocked(run: CrownRun, head: PatchHead, a: torch.Tensor, faces: torch.Tensor,
                 nf: int) -> torch.Tensor:
        r"""A lower bound [N, S] on :math:`\sum_{i\in F}\rho_i^2`, the squares the box faces
        remove from :math:`\|A\|^2`: :math:`\hat A_i` from the patch of ``i`` and the column
        of :math:`W_m` it reads, lowered by :math:`\delta_i=2\gamma_{OP+1}\sum_o|a_o||W_{oi}|`
        towards zero, then the sum of squares lowered by :math:`2\gamma_{F+2}`."""
        node = head.node
        cin, hh, ww = node.in_shapes[0]
        kh, kw = head.kernel
        gw = ww // kw
        n = faces.shape[0]
        idx = faces.to(torch.int8).topk(nf, dim=1, sorted=False).indices  # [N, F]
        valid = faces.gather(1, idx)
        ch, rem = idx // (hh * ww), idx % (hh * ww)
        y, x = rem // ww, rem % ww
        patch = (y // kh) * gw + x // kw  # [N, F]
        col = ch * (kh * kw) + (y % kh) * kw + x % kw  # [N, F]
        assert run.box is not None  # faces exist only with a box
        lower = run.x0.flatten(1).gather(1, idx) <= run.box[0]
        # M[n, o, p, f] = W_m[o, col_f] on the patch of face f, 0 elsewhere: A_f is then
        # one [S, O P] x [O P, F] product per sample, no [S, O, F] gather (the zero terms
        # add exactly: the O products of the patch are all that round)
        o, pp, s = head.o, a.shape[3], a.shape[1]
        wc = head.w[:, col].permute(1, 0, 2)  # [N, O, F]
        m = torch.zeros(n, o, pp, nf, dtype=a.dtype, device=a.device)
        m.scatter_(2, patch.reshape(n, 1, 1, nf).expand(-1, o, 1, -1), wc.unsqueeze(2))
        m = m.reshape(n, o * pp, nf)
        ahat = torch.bmm(a.reshape(n, s, o * pp), m)
        delta = 2 * float(gamma(o * pp + 1)) * torch.bmm(a.abs().reshape(n, s, o * pp),
                                                          m.abs())
        low = lower.unsqueeze(1)
        part = torch.where(low, ahat, -ahat) - delta  # the blocked part, minus its error
        rho = (part * (1 - 2 * UNIT_ROUNDOFF)).clamp(min=0)
        rho = torch.where(valid.unsqueeze(1), rho, torch.zeros_like(rho))
        return (rho * rho).sum(2) * (1 - 2 * float(gamma(nf + 2)))


#: the one instance the engine uses
PATCHES = PatchConcretisation()
