r"""Acceleration: refinement walks on spatial windows.

Every neuron of a TILE x TILE tile of output positions of a node reached from the input
through convolutions, ReLUs, max poolings without padding and batch norms depends on a
window of each upstream node only; its walk carries coefficients on those windows (padding
coefficients dropped exactly: they multiply zeros), used where a tile's walk holds at most
``WINDOW_GAIN`` of a whole one (docs/theory/linear_relaxation.md §Walks on windows).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from boundkit.bounds.crown.concrete import Concrete
from boundkit.bounds.relaxation import (
    FINAL_SPEC,
    Interval,
    LinearBounds,
    RelaxContext,
    SlopeKey,
)
from boundkit.graph.graph import Node

if TYPE_CHECKING:
    from boundkit.bounds.crown.run import CrownRun

#: ops a refinement walk can follow on a spatial window of its coefficients (every neuron
#: of a tile depends on a window of each upstream node only)
WINDOWED = ("conv2d", "relu", "leaky_relu", "maxpool2d", "batchnorm", "identity")
#: output positions per side of a tile: its neurons are refined by walks on one window
TILE = 2
#: windows are used where a tile's walk holds at most this fraction of a whole walk
WINDOW_GAIN = 0.5

#: a spatial window ``((r0, c0), (r1, c1))``: rows r0..r1-1, columns c0..c1-1
Window = tuple[tuple[int, int], tuple[int, int]]


def _cut(iv: Interval, lo: tuple[int, int], hi: tuple[int, int]) -> Interval:
    """The window ``[lo, hi)`` of the last two (spatial) dimensions of ``iv``."""
    return Interval(iv.lo[..., lo[0]:hi[0], lo[1]:hi[1]], iv.hi[..., lo[0]:hi[0], lo[1]:hi[1]])


def tiles(h: int, w: int) -> list[Window]:
    """The TILE x TILE output windows covering an h x w map, row by row (the last ones cut
    at the border)."""
    return [((r, c), (min(r + TILE, h), min(c + TILE, w)))
            for r in range(0, h, TILE) for c in range(0, w, TILE)]


@dataclass(frozen=True)
class WindowStep:
    """One node of a window walk: its output window ``[lo, hi)`` and its input window,
    ``[start, end)`` before clipping to the input (a convolution's padding lies outside)
    and ``[clo, chi)`` after."""

    node: Node
    lo: tuple[int, int]
    hi: tuple[int, int]
    start: tuple[int, int]
    end: tuple[int, int]
    clo: tuple[int, int]
    chi: tuple[int, int]

    @property
    def widest(self) -> int:
        """The most elements per row the walk holds at this node."""
        n = self.node
        return max(n.out_shape[0] * (self.hi[0] - self.lo[0]) * (self.hi[1] - self.lo[1]),
                   n.in_shapes[0][0] * (self.end[0] - self.start[0])
                   * (self.end[1] - self.start[1]))

    @property
    def pad(self) -> tuple[int, int, int, int]:
        """The padding inside the unclipped input window (left, right, top, bottom)."""
        return (self.clo[1] - self.start[1], self.end[1] - self.chi[1],
                self.clo[0] - self.start[0], self.end[0] - self.chi[0])


def _span(node: Node, lo: tuple[int, int], hi: tuple[int, int]) -> Window:
    """The input window (start, end) of ``node``'s output window ``[lo, hi)``, before
    clipping to the input (a convolution's padding lies outside)."""
    if node.op not in ("conv2d", "maxpool2d"):
        return lo, hi
    a = node.attrs
    k = (node.params["weight"].shape[2:] if node.op == "conv2d" else a["kernel_size"])
    s, d = a["stride"], a["dilation"]
    p = a["padding"] if node.op == "conv2d" else (0, 0)
    start = tuple(lo[i] * s[i] - p[i] for i in range(2))
    end = tuple((hi[i] - 1) * s[i] - p[i] + d[i] * (int(k[i]) - 1) + 1 for i in range(2))
    return start, end  # type: ignore[return-value]


def window_steps(chain: list[Node], lo: tuple[int, int], hi: tuple[int, int]
                 ) -> list[WindowStep] | None:
    """The windows of a walk along ``chain`` from the output window ``[lo, hi)`` of its
    first node, or ``None`` where a window lies wholly in a convolution's padding (the
    tile's neurons are constants on the ball: the whole walk handles them)."""
    steps = []
    for v in chain:
        start, end = _span(v, lo, hi)
        in_hw = v.in_shapes[0][1:]
        clo = (max(start[0], 0), max(start[1], 0))
        chi = (min(end[0], in_hw[0]), min(end[1], in_hw[1]))
        if chi[0] <= clo[0] or chi[1] <= clo[1]:
            return None
        steps.append(WindowStep(v, lo, hi, start, end, clo, chi))
        lo, hi = clo, chi
    return steps


class Windows:
    """The acceleration: where it applies, the chain a node's walks follow on windows, and
    the walks themselves."""

    @staticmethod
    def applies(run: CrownRun) -> bool:
        """Not under split constraints: the window copies of the chain's nodes are bounded
        in contexts of their own, which carry no splits."""
        return run.splits is None

    def chain(self, run: CrownRun, node: Node) -> list[Node] | None:
        """The nodes from ``node`` back to the input (excluded) when the walks refining
        ``node`` can run on spatial windows: a chain of single-input ``WINDOWED`` nodes
        with [C, H, W] outputs, max poolings without padding; ``None`` elsewhere (planned
        once per model)."""
        if not self.applies(run):
            return None
        key = (node.name, TILE, WINDOW_GAIN)
        if key not in run.plan.windows:
            run.plan.windows[key] = self._plan_chain(run, node)
        return run.plan.windows[key]

    @staticmethod
    def _plan_chain(run: CrownRun, node: Node) -> list[Node] | None:
        if len(node.out_shape) != 3:
            return None
        chain: list[Node] = []
        cur = node
        while cur.op != "input":
            if (cur.op not in WINDOWED or len(cur.inputs) != 1 or len(cur.out_shape) != 3
                    or run.plan.rules.get(cur.name) is None
                    or cur.attrs.get("shift") is not None
                    or (cur.op == "maxpool2d" and any(cur.attrs["padding"]))):
                return None
            chain.append(cur)
            cur = run.graph[cur.inputs[0]]
        if len(cur.out_shape) != 3:
            return None
        # worth it only where a tile's walk is much smaller than a whole one: the work of
        # all tiles' walks against the whole walk's, per neuron
        _, h, w = node.out_shape
        full = window_steps(chain, (0, 0), (h, w))
        if full is None:
            return None
        whole = max(st.widest for st in full)

        def widest(lo: tuple[int, int], hi: tuple[int, int]) -> int:
            steps = window_steps(chain, lo, hi)  # None: walked whole
            return whole if steps is None else max(st.widest for st in steps)
        windowed = sum(widest(a, b) * (b[0] - a[0]) * (b[1] - a[1])
                       for a, b in tiles(h, w)) / (h * w)
        return chain if windowed <= WINDOW_GAIN * whole else None

    def tile_bounds(self, run: CrownRun, node: Node, chain: list[Node], ctx: RelaxContext,
                    eps: torch.Tensor, mask: torch.Tensor
                    ) -> list[tuple[torch.Tensor, Concrete]]:
        """Bounds of the neurons ``mask`` [N, M] of ``node``, tile by tile: the neurons of
        TILE x TILE output positions (all channels) by walks on the windows they depend on
        (docs/theory/linear_relaxation.md §Refined neurons)."""
        c_out, h_out, w_out = node.out_shape
        dev = mask.device
        ch = torch.arange(c_out, device=dev).reshape(-1, 1, 1) * (h_out * w_out)
        pieces = []
        for (r0, c0), (r1, c1) in tiles(h_out, w_out):
            rr = torch.arange(r0, r1, device=dev).reshape(1, -1, 1)
            cc = torch.arange(c0, c1, device=dev).reshape(1, 1, -1)
            flat = (ch + rr * w_out + cc).flatten()  # the tile's neurons
            local = mask[:, flat]
            k = int(local.sum(1).max())
            if k == 0:
                continue
            sel = local.to(torch.int8).topk(k, dim=1, sorted=False).indices
            idx = flat[sel]  # [N, k], distinct per row
            steps = window_steps(chain, (r0, c0), (r1, c1))
            per = run.per_walk(max(st.widest for st in steps) if steps else run.widest)
            for j in range(0, k, per):
                part = idx[:, j:j + per]
                pieces.append((part, run.neuron_bounds(node, ctx, eps, part)
                               if steps is None else self.walk(run, node, steps, ctx, part)))
        return pieces

    @staticmethod
    def walk(run: CrownRun, node: Node, steps: list[WindowStep], ctx: RelaxContext,
             idx: torch.Tensor) -> Concrete:
        r"""As :meth:`CrownRun.neuron_bounds` for neurons ``idx`` [N, K] of ``node`` inside
        the output window of ``steps[0]``: the walk carries coefficients on windows only.
        Every node of the chain is replaced by a copy of window shape (a convolution or
        pooling without padding, reading its input window; padding positions are zeros, so
        their coefficients are dropped, exactly), with the intervals and slopes cut to the
        windows; the bound is concretised on the input window."""
        _, h_out, w_out = node.out_shape
        lo, hi = steps[0].lo, steps[0].hi
        h, w = hi[0] - lo[0], hi[1] - lo[1]
        ch, rem = idx // (h_out * w_out), idx % (h_out * w_out)
        loc = ch * (h * w) + (rem // w_out - lo[0]) * w + (rem % w_out - lo[1])
        ctx.spec = node.name
        installed = run.walk_slopes(node, idx, ctx,
                                    {st.node.name: (st.lo, st.hi) for st in steps})
        lb: LinearBounds | None = None  # the unit specifications, then the walk's bound
        try:
            for st in steps:
                v, lo, hi, start, end, pad = st.node, st.lo, st.hi, st.start, st.end, st.pad
                out_iv = _cut(ctx.intervals[v.name], lo, hi)
                in_iv = _cut(ctx.intervals[v.inputs[0]], st.clo, st.chi)
                if any(pad):  # a convolution's zero padding inside the window
                    in_iv = Interval(F.pad(in_iv.lo, pad), F.pad(in_iv.hi, pad))
                attrs = dict(v.attrs)
                if v.op == "conv2d":
                    attrs["padding"] = (0, 0)
                src = f"{v.name}<window"
                vv = dataclasses.replace(
                    v, inputs=[src], attrs=attrs,
                    in_shapes=[(v.in_shapes[0][0], end[0] - start[0], end[1] - start[1])],
                    out_shape=(v.out_shape[0], hi[0] - lo[0], hi[1] - lo[1]))
                sub = RelaxContext(run.graph, {}, {v.name: out_iv, src: in_iv}, spec=ctx.spec)
                key = SlopeKey(ctx.spec, v.name)
                if key in installed:  # already cut to the window
                    sub.slopes[key] = installed[key]
                elif key in ctx.slopes:
                    sub.slopes[key] = ctx.slopes[key][..., lo[0]:hi[0], lo[1]:hi[1]]
                rule = run.plan.rules[v.name]
                assert rule is not None
                if lb is None:
                    lb = run.unit_step(vv, sub, loc)
                else:
                    (lb,) = rule.backward(vv, sub, lb)
                if any(pad):  # drop the coefficients of the padding (constant zeros)
                    lb = LinearBounds(lb.A[..., pad[2]:lb.A.shape[-2] - pad[3],
                                           pad[0]:lb.A.shape[-1] - pad[1]],
                                      lb.bias, lb.err, lb.forks)
            lo, hi = steps[-1].clo, steps[-1].chi
        finally:
            ctx.spec = FINAL_SPEC
        assert lb is not None
        return run.at_input(LinearBounds(lb.A.contiguous(), lb.bias, lb.err, lb.forks),
                            run.x0[..., lo[0]:hi[0], lo[1]:hi[1]])


#: the one instance the engine uses
WINDOWS = Windows()
