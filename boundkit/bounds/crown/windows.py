r"""Acceleration: refinement walks on spatial windows.

Every neuron of a TILE x TILE tile of output positions of a node reached from the input
through convolutions, ReLUs, max poolings without padding, batch norms and residual
additions depends on a window of each upstream node only; its walk carries coefficients on
those windows (padding coefficients dropped exactly: they multiply zeros; a branch's
coefficients embedded with zeros into the window of a value read by several branches), used
where a tile's walk holds at most ``WINDOW_GAIN`` of a whole one
(docs/theory/linear_relaxation.md §Walks on windows).
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
    entering,
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


def _union(a: Window | None, b: Window) -> Window:
    """The smallest window holding ``a`` and ``b``."""
    if a is None:
        return b
    return ((min(a[0][0], b[0][0]), min(a[0][1], b[0][1])),
            (max(a[1][0], b[1][0]), max(a[1][1], b[1][1])))


@dataclass(frozen=True)
class TileWalk:
    """The windows of one tile's walk: one :class:`WindowStep` per node of the cone (in the
    cone's order: consumers before producers) and, per value read (the input included), the
    window its coefficients live on: the union of the windows its readers need."""

    steps: list[WindowStep]
    held: dict[str, Window]

    @property
    def widest(self) -> int:
        return max(st.widest for st in self.steps)


def window_steps(chain: list[Node], lo: tuple[int, int], hi: tuple[int, int]
                 ) -> TileWalk | None:
    """The windows of a walk through ``chain`` (the cone of its first node, consumers before
    producers) from the output window ``[lo, hi)`` of its first node, or ``None`` where a
    window lies wholly in a convolution's padding (the tile's neurons are constants on the
    ball: the whole walk handles them)."""
    steps = []
    held: dict[str, Window] = {chain[0].name: (lo, hi)}
    for v in chain:
        lo, hi = held[v.name]
        start, end = _span(v, lo, hi)
        in_hw = v.in_shapes[0][1:]
        clo = (max(start[0], 0), max(start[1], 0))
        chi = (min(end[0], in_hw[0]), min(end[1], in_hw[1]))
        if chi[0] <= clo[0] or chi[1] <= clo[1]:
            return None
        steps.append(WindowStep(v, lo, hi, start, end, clo, chi))
        for u in v.inputs:
            held[u] = _union(held.get(u), (clo, chi))
    return TileWalk(steps, held)


class Windows:
    """The acceleration: where it applies, the chain a node's walks follow on windows, and
    the walks themselves."""

    @staticmethod
    def applies(run: CrownRun) -> bool:
        """Not under split constraints: the window copies of the chain's nodes are bounded
        in contexts of their own, which carry no splits."""
        return run.splits is None

    def chain(self, run: CrownRun, node: Node) -> list[Node] | None:
        """The nodes from ``node`` back to the input (excluded), consumers before producers,
        when the walks refining ``node`` can run on spatial windows: ``WINDOWED`` nodes with
        [C, H, W] outputs (max poolings without padding) and additions of same-shape
        branches without a constant (residual connections); ``None`` elsewhere (planned once
        per model)."""
        if not self.applies(run):
            return None
        key = (node.name, TILE, WINDOW_GAIN)
        if key not in run.plan.windows:
            run.plan.windows[key] = self._plan_chain(run, node)
        return run.plan.windows[key]

    @staticmethod
    def _windowed(run: CrownRun, v: Node) -> bool:
        """``v`` is a node a window walk can pass."""
        if (len(v.out_shape) != 3 or run.plan.rules.get(v.name) is None
                or v.attrs.get("shift") is not None):
            return False
        if v.op == "add":  # a residual connection: same-shape branches, no broadcast
            return all(tuple(s) == tuple(v.out_shape) for s in v.in_shapes)
        return (v.op in WINDOWED and len(v.inputs) == 1
                and not (v.op == "maxpool2d" and any(v.attrs["padding"])))

    @classmethod
    def _plan_chain(cls, run: CrownRun, node: Node) -> list[Node] | None:
        if len(node.out_shape) != 3:
            return None
        cone: set[str] = set()
        todo = [node.name]
        while todo:
            name = todo.pop()
            if name in cone or name == run.graph.input.name:
                continue
            v = run.graph[name]
            if v.op == "input" or not cls._windowed(run, v):
                return None
            cone.add(name)
            todo.extend(v.inputs)
        if len(run.graph.input.out_shape) != 3:
            return None
        chain = [v for v in reversed(run.plan.nodes) if v.name in cone]
        # worth it only where a tile's walk is much smaller than a whole one: the work of
        # all tiles' walks against the whole walk's, per neuron
        _, h, w = node.out_shape
        full = window_steps(chain, (0, 0), (h, w))
        if full is None:
            return None
        whole = full.widest

        def widest(lo: tuple[int, int], hi: tuple[int, int]) -> int:
            steps = window_steps(chain, lo, hi)  # None: walked whole
            return whole if steps is None else steps.widest
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
            per = run.per_walk(steps.widest if steps else run.widest)
            for j in range(0, k, per):
                part = idx[:, j:j + per]
                pieces.append((part, run.neuron_bounds(node, ctx, eps, part)
                               if steps is None else self.walk(run, node, steps, ctx, part)))
        return pieces

    @staticmethod
    def walk(run: CrownRun, node: Node, tile: TileWalk, ctx: RelaxContext,
             idx: torch.Tensor) -> Concrete:
        r"""As :meth:`CrownRun.neuron_bounds` for neurons ``idx`` [N, K] of ``node`` inside
        the output window of its tile: the walk carries coefficients on windows only.
        Every node of the cone is replaced by a copy of window shape (a convolution or
        pooling without padding, reading its input window; padding positions are zeros, so
        their coefficients are dropped, exactly), with the intervals and slopes cut to the
        windows; a value read by several branches (a residual connection) holds its
        coefficients on the union of their windows, each branch's embedded with zeros (the
        sum of the whole walk, restricted to its non-zero entries); the bound is
        concretised on the input window."""
        steps = tile.steps
        _, h_out, w_out = node.out_shape
        lo, hi = steps[0].lo, steps[0].hi
        h, w = hi[0] - lo[0], hi[1] - lo[1]
        ch, rem = idx // (h_out * w_out), idx % (h_out * w_out)
        loc = ch * (h * w) + (rem // w_out - lo[0]) * w + (rem % w_out - lo[1])
        ctx.spec = node.name
        installed = run.walk_slopes(node, idx, ctx,
                                    {st.node.name: (st.lo, st.hi) for st in steps})
        state: dict[str, LinearBounds] = {}
        try:
            for k, st in enumerate(steps):
                v, lo, hi, start, end, pad = st.node, st.lo, st.hi, st.start, st.end, st.pad
                out_iv = _cut(ctx.intervals[v.name], lo, hi)
                attrs = dict(v.attrs)
                if v.op == "conv2d":
                    attrs["padding"] = (0, 0)
                srcs = [f"{v.name}<window{i}" for i in range(len(v.inputs))]
                ivs: dict[str, Interval] = {v.name: out_iv}
                for src, u in zip(srcs, v.inputs):
                    in_iv = _cut(ctx.intervals[u], st.clo, st.chi)
                    if any(pad):  # a convolution's zero padding inside the window
                        in_iv = Interval(F.pad(in_iv.lo, pad), F.pad(in_iv.hi, pad))
                    ivs[src] = in_iv
                in_shape = (end[0] - start[0], end[1] - start[1])
                vv = dataclasses.replace(
                    v, inputs=srcs, attrs=attrs,
                    in_shapes=[(s[0], *in_shape) for s in v.in_shapes],
                    out_shape=(v.out_shape[0], hi[0] - lo[0], hi[1] - lo[1]))
                sub = RelaxContext(run.graph, {}, ivs, spec=ctx.spec)
                key = SlopeKey(ctx.spec, v.name)
                if key in installed:  # already cut to the window
                    sub.slopes[key] = installed[key]
                elif key in ctx.slopes:
                    sub.slopes[key] = ctx.slopes[key][..., lo[0]:hi[0], lo[1]:hi[1]]
                rule = run.plan.rules[v.name]
                assert rule is not None
                if k == 0 and len(v.inputs) == 1:
                    outs = [run.unit_step(vv, sub, loc)]
                else:
                    if k:
                        seed = state.pop(v.name)
                    else:  # a target with several inputs: the walk from its unit specs
                        zero = torch.zeros((run.n, 2 * idx.shape[1]), dtype=run.x0.dtype,
                                           device=run.x0.device)
                        seed = LinearBounds(run.unit_spec(loc, vv.out_shape), zero,
                                            zero.clone())
                    outs = list(rule.backward(vv, sub, entering(rule, vv, sub, seed)))
                for u, lb in zip(v.inputs, outs):
                    a = lb.A
                    if any(pad):  # drop the coefficients of the padding (constant zeros)
                        a = a[..., pad[2]:a.shape[-2] - pad[3], pad[0]:a.shape[-1] - pad[1]]
                    (r0, c0), (r1, c1) = tile.held[u]
                    grow = (st.clo[1] - c0, c1 - st.chi[1], st.clo[0] - r0, r1 - st.chi[0])
                    if any(grow):  # another branch reads a larger window of u: zeros
                        a = F.pad(a, grow)
                    lb = LinearBounds(a, lb.bias, lb.err, lb.forks)
                    state[u] = lb if u not in state else state[u] + lb
        finally:
            ctx.spec = FINAL_SPEC
        name = run.graph.input.name
        lb = state[name]
        (r0, c0), (r1, c1) = tile.held[name]
        return run.at_input(LinearBounds(lb.A.contiguous(), lb.bias, lb.err, lb.forks),
                            run.x0[..., r0:r1, c0:c1])


#: the one instance the engine uses
WINDOWS = Windows()
