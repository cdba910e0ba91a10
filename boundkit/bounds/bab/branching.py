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
from boundkit.graph.graph import Node

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

# ------------------------------------------------------------------ branching


def branch(dom: Domains, b: Bounded, shapes: dict[str, tuple[int, ...]], warm_elements: int
           ) -> tuple[Domains, torch.Tensor]:
    """Two children per domain of ``dom`` (every domain here unproven), split on its
    best-scored neuron (``b.scores``); and the domains [D] with no neuron left to split.
    ``shapes``: each ReLU's input shape; the children inherit the slopes and multipliers
    while they hold at most ``warm_elements`` elements."""
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
    signs = {}
    for i, k in enumerate(names):
        shape = shapes[k]
        s = dom.signs.get(k)
        s = (torch.zeros(len(dom), math.prod(shape), dtype=torch.int8, device=dev)
             if s is None else s.flatten(1))[keep]
        local = pos[keep] - starts[i]
        hit = (local >= 0) & (local < sizes[i])
        rows = torch.nonzero(hit).flatten()
        plus, minus = s.clone(), s.clone()
        plus[rows, local[rows]] = 1
        minus[rows, local[rows]] = -1
        signs[k] = torch.cat([plus, minus]).reshape(2 * d, *shape)
    warm = 4 * sum(v[keep].numel() for v in b.alpha.values())  # alpha and beta, x2
    alpha: dict[str, torch.Tensor] = {}
    beta: dict[str, torch.Tensor] = {}
    if b.alpha and warm <= warm_elements:
        alpha = {k: v[keep].repeat(2, *([1] * (v.dim() - 1))) for k, v in b.alpha.items()}
        for k in names:  # every ReLU with a split gets multipliers (zeros where new)
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
                   None if dom.cls is None else two(dom.cls)), stuck

# ------------------------------------------------------------------ the loop
