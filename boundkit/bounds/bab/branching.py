r"""The branching heuristic: a BaBSR-style score per unstable neuron (Bunel et al. 2020),
the bound's loss to the intercept of the neuron's upper line, which a split removes; and
the split itself, two children per domain on its best-scored neuron, built for the whole
batch at once."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

from boundkit.bounds.bab.domains import Domains
from boundkit.bounds.relaxation import RelaxContext, Splits
from boundkit.bounds.pooling import PoolLines
from boundkit.graph.graph import Node

#: split max-pooling windows too (by which input is the max), not only ReLU neurons
WINDOW_SPLITS = True
WINDOW_WEIGHT = 1.0

if TYPE_CHECKING:
    from boundkit.bounds.bab.bounding import Bounded


def neuron_scores(relus: list[Node], ctx: RelaxContext, splits: Splits, dom: Domains,
                  record: dict[str, torch.Tensor], open_: torch.Tensor
                  ) -> dict[str, torch.Tensor]:
    r"""BaBSR-style score per neuron [D, M]: :math:`\sum_j|a_{ji}^-|\frac{-l_iu_i}
    {u_i-l_i}` over the open margins :math:`j`, plus a small
    :math:`10^{-3}\sum_j|a_{ji}|(u_i-l_i)` to rank neurons the intercepts do not reach;
    ``-inf`` on stable or already split neurons (``record``: the final walk's coefficients at
    each ReLU's output [D, C, *shape]; ``open_``: the margins still open [D, C])."""
    out = {}
    for relu in relus:
        iv = splits.constrain(relu.name, ctx.interval_in(relu))
        lo, hi = iv.lo.flatten(1), iv.hi.flatten(1)
        s = dom.signs.get(relu.name)
        free = (lo < 0) & (hi > 0)
        if s is not None:
            free &= s.flatten(1) == 0
        a = record.get(relu.name)
        if a is None:
            out[relu.name] = torch.full_like(lo, -math.inf)
            continue
        a = a.flatten(2)
        w = open_.to(a.dtype).unsqueeze(2)  # [D, C, 1]
        width = torch.where(free, hi - lo, torch.ones_like(hi))
        inter = torch.where(free, -lo * hi / width, torch.zeros_like(hi)).unsqueeze(1)
        sc = (w * ((-a).clamp(min=0) * inter + 1e-3 * a.abs() * width.unsqueeze(1))).sum(1)
        out[relu.name] = torch.where(free, sc + 1e-300, torch.full_like(sc, -math.inf))
    return out

def window_scores(a: torch.Tensor, ln: PoolLines, open_: torch.Tensor) -> torch.Tensor:
    r"""The same score per max-pooling window [D, C L]: :math:`\sum_j\max(-a_{jw},0)g_w
    +10^{-3}\sum_j|a_{jw}|(u_{k_w}-L_w)` over the open margins :math:`j`, with
    :math:`a_{jw}` the final walk's coefficient at the window's output, :math:`g_w` the
    largest gap of its upper line above the max over the box (``PoolLines.gap``; a window
    split removes it on both sides: the max is the input :math:`k_w` exactly, or the max
    of the others, whose upper bound is lower), :math:`u_{k_w}-L_w` the largest upper
    bound's height above the largest lower bound; ``-inf`` on windows whose max is one
    input on the whole set (nothing to split)."""
    assert ln.gap is not None and ln.spread is not None and ln.stable is not None
    d, c = a.shape[:2]
    w = open_.to(a.dtype).reshape(d, c, 1, 1)
    a = a.reshape(d, c, ln.gap.shape[1], -1)
    sc = (w * ((-a).clamp(min=0) * ln.gap.unsqueeze(1)
               + 1e-3 * a.abs() * ln.spread.unsqueeze(1))).sum(1)
    return torch.where(ln.stable, torch.full_like(sc, -math.inf), WINDOW_WEIGHT * sc + 1e-300).flatten(1)

# ------------------------------------------------------------------ branching


def branch(dom: Domains, b: Bounded, shapes: dict[str, tuple[int, ...]], warm_elements: int,
           windows: dict[str, tuple[int, int, int]] | None = None
           ) -> tuple[Domains, torch.Tensor]:
    """Two children per domain of ``dom`` (every domain here unproven), split on its
    best-scored neuron or max-pooling window (``b.scores``); and the domains [D] with
    nothing left to split. ``shapes``: each ReLU's input shape; ``windows``: each max
    pooling's window-state shape (C, k, L): a window is split on the input its upper line
    follows (``b.tops``), forced the max in the first child and excluded in the second;
    the children inherit the slopes and multipliers while they hold at most
    ``warm_elements`` elements."""
    windows = windows or {}
    names = list(b.scores)
    if names:
        best, pos = torch.cat([b.scores[k] for k in names], 1).max(1)
    else:  # no ReLU to split (a net of max poolings and smooth layers): every domain stuck
        best = torch.full((len(dom),), -math.inf, dtype=torch.float64, device=dom.sample.device)
        pos = torch.zeros(len(dom), dtype=torch.long, device=dom.sample.device)
    stuck = ~torch.isfinite(best)
    sizes = [b.scores[k].shape[1] for k in names]
    starts = torch.tensor([0, *sizes], device=pos.device).cumsum(0)
    dev = dom.sample.device
    keep = torch.nonzero(~stuck).flatten()
    d = int(keep.numel())
    signs: dict[str, torch.Tensor] = {}
    states: dict[str, torch.Tensor] = {}
    for i, k in enumerate(names):
        local = pos[keep] - starts[i]
        hit = (local >= 0) & (local < sizes[i])
        rows = torch.nonzero(hit).flatten()
        if k in windows:  # a max-pooling window: its max is the top input, or it is not
            c, kk, nw = windows[k]
            w = dom.windows.get(k)
            w = (torch.zeros(len(dom), c, kk, nw, dtype=torch.int8, device=dev)
                 if w is None else w)[keep]
            ch, win = local[rows] // nw, local[rows] % nw
            slot = b.tops[k][keep][rows, ch, win]
            first, second = w.clone(), w.clone()
            first[rows, ch, slot, win] = 1
            second[rows, ch, slot, win] = -1
            states[k] = torch.cat([first, second])
            continue
        shape = shapes[k]
        s = dom.signs.get(k)
        s = (torch.zeros(len(dom), math.prod(shape), dtype=torch.int8, device=dev)
             if s is None else s.flatten(1))[keep]
        plus, minus = s.clone(), s.clone()
        plus[rows, local[rows]] = 1
        minus[rows, local[rows]] = -1
        signs[k] = torch.cat([plus, minus]).reshape(2 * d, *shape)
    for k, w in dom.windows.items():  # window states of poolings not scored this time
        if k not in states:
            states[k] = w[keep].repeat(2, 1, 1, 1)
    warm = 4 * sum(v[keep].numel() for v in b.alpha.values())  # alpha and beta, x2
    alpha: dict[str, torch.Tensor] = {}
    beta: dict[str, torch.Tensor] = {}
    if b.alpha and warm <= warm_elements:
        alpha = {k: v[keep].repeat(2, *([1] * (v.dim() - 1))) for k, v in b.alpha.items()}
        relu_names = [k for k in names if k not in windows]
        for k in relu_names:  # every ReLU with a split gets multipliers (zeros where new)
            old = b.beta.get(k)
            if old is None:
                old = torch.zeros_like(b.alpha[k])
            beta[k] = old[keep].repeat(2, *([1] * (old.dim() - 1)))
        beta = {k: v for k, v in beta.items() if bool((signs[k] != 0).any())}
    two = lambda t: t[keep].repeat(2, *([1] * (t.dim() - 1)))  # noqa: E731
    age = (torch.zeros_like(dom.sample) if b.fresh or dom.age is None else dom.age) + 1
    return Domains(two(dom.sample), signs, two(b.done), alpha, beta,
                   {k: two(v) for k, v in b.lo.items()}, {k: two(v) for k, v in b.hi.items()},
                   two(age), None if b.radius is None else two(b.radius),
                   None if dom.cls is None else two(dom.cls), states), stuck

# ------------------------------------------------------------------ the loop
