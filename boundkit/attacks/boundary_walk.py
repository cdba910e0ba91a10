"""A decision-based boundary walk in the spirit of HopSkipJump (Chen, Jordan & Wainwright 2020).

It needs only the model's decisions, never its gradient, so it moves where every gradient
vanishes (dead ReLUs, saturated units, flat regions).  From an adversarial start ``x_b`` on
the decision boundary (found by :func:`~boundkit.attacks.starts.line_search_starts` or given
as ``init``), each iteration ``t``:

1. **gradient-direction estimate by sign queries** (HSJ Eq. 9, with its baseline):
   ``v = sum_b (phi(x_b + delta u_b) - mean phi) u_b`` for ``queries`` random unit
   directions ``u_b`` (keyed by the sample and the step, so batch-independent), with
   ``phi = +1`` where the query is adversarial, ``-1`` elsewhere, and
   ``delta = delta_scale * ||x_b - x||``;
2. **geometric step** along ``v / ||v||`` of size ``||x_b - x|| / sqrt(t + 1)``, halved
   (up to ``halvings`` times) until the point is adversarial (HSJ's geometric progression);
3. **binary search** along ``x -> x_t`` onto the boundary; the walk continues from there
   and keeps the smallest adversarial point seen.

Every returned point was classified adversarial by the model when it was evaluated (then
verified again by the base class).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from boundkit.attacks.base import (
    Attack,
    Box,
    Criterion,
    atleast_kd,
    boundary_bisection,
    clip_to_box,
    keep_best,
    keyed_normal,
    l2_norms,
    problem_scale,
    scale_free_keys,
)

__all__ = ["BoundaryWalk"]


class BoundaryWalk(Attack):
    """Decision-based L2 boundary walk (HopSkipJump-like; see the module docstring).

    Parameters
    ----------
    steps: walk iterations (40).
    queries: sign queries per iteration for the direction estimate (48).
    delta_scale: query radius relative to the current norm (0.01).
    halvings: geometric step halvings before giving up on an iteration (10).
    bisection_steps: binary-search steps back onto the boundary (12: a finer one lands
        within float32 rounding of it, where another batch can classify differently).
    init: adversarial start points ``[N, ...]`` (bisected onto the boundary first); None:
        :func:`~boundkit.attacks.starts.line_search_starts` finds them.
    refine_steps: final bisection along ``x -> x_adv``.
    """

    name = "boundary"

    def __init__(
        self,
        *,
        steps: int = 40,
        queries: int = 48,
        delta_scale: float = 0.01,
        halvings: int = 10,
        bisection_steps: int = 12,
        init: Tensor | None = None,
        refine_steps: int = 10,
    ) -> None:
        super().__init__(refine_steps=refine_steps)
        if steps < 0 or queries < 1:
            raise ValueError(f"steps must be >= 0 and queries >= 1, got {steps}, {queries}")
        self.steps = int(steps)
        self.queries = int(queries)
        self.delta_scale = float(delta_scale)
        self.halvings = int(halvings)
        self.bisection_steps = int(bisection_steps)
        self.init = init

    @classmethod
    def budget_to_options(cls, budget: int) -> dict[str, Any]:
        # one iteration costs about queries + halvings + bisection forward passes, a gradient
        # step about two: budget / 8 iterations of 48 queries is roughly 8x a gradient
        # attack's passes, spent only where gradients fail
        return {"steps": max(1, int(budget) // 8)}

    @torch.no_grad()
    def run(
        self,
        model: nn.Module,
        x: Tensor,
        criterion: Criterion,
        *,
        box: Box,
        seed: int = 0,
    ) -> Tensor:
        from boundkit.attacks.starts import line_search_starts

        k = x.ndim
        with torch.enable_grad():
            unit = problem_scale(model, x, criterion, box)
        if self.init is not None:
            start = self.init.to(x)
        else:
            start = line_search_starts(model, x, criterion, box=box, unit=unit,
                                       seed=seed).start
        ok = criterion.is_adversarial(model(start))
        xb = torch.where(atleast_kd(ok, k),
                         boundary_bisection(model, x, start, criterion, self.bisection_steps), x)
        best = xb.clone()
        best_norm = torch.where(ok, l2_norms(xb - x), torch.full_like(l2_norms(x), math.inf))
        idx = ok.nonzero().squeeze(1)
        if idx.numel() == 0 or self.steps == 0:
            return best
        xs, xb, crit = x[idx], xb[idx], criterion.subset(idx)
        keys = scale_free_keys(xs, unit[idx], seed)
        m = xs.shape[0]
        b = self.queries
        sub_best, sub_norm = best[idx].clone(), best_norm[idx].clone()
        for t in range(self.steps):
            dist = l2_norms(xb - xs)
            delta = self.delta_scale * dist
            u = keyed_normal(keys, (b, *xs.shape[1:]), 2 * t, xs.dtype)
            u = u / atleast_kd(l2_norms(u.flatten(0, 1)).reshape(m, b), k + 1)
            q = clip_to_box(xb[:, None] + atleast_kd(delta, k + 1) * u, box)
            rep = type(crit)(crit.labels.repeat_interleave(b))
            phi = rep.is_adversarial(model(q.flatten(0, 1))).reshape(m, b).to(xs.dtype) * 2 - 1
            mean = phi.mean(1, keepdim=True)
            w = torch.where(mean.abs() < 1, phi - mean, phi)
            v = (atleast_kd(w, k + 1) * u).sum(1)
            vn = l2_norms(v)
            good = torch.isfinite(vn) & (vn > 0)
            v = v / atleast_kd(torch.where(good, vn, torch.ones_like(vn)), k)
            eps = dist / math.sqrt(t + 1)
            step_ok = torch.zeros(m, dtype=torch.bool, device=x.device)
            x_t = xb.clone()
            for _ in range(self.halvings):
                todo = good & ~step_ok
                if not bool(todo.any()):
                    break
                cand = clip_to_box(xb + atleast_kd(eps, k) * v, box)
                adv = crit.is_adversarial(model(cand)) & todo
                x_t = torch.where(atleast_kd(adv, k), cand, x_t)
                step_ok |= adv
                eps = torch.where(todo & ~adv, eps / 2, eps)
            new = boundary_bisection(model, xs, x_t, crit, self.bisection_steps)
            is_adv = crit.is_adversarial(model(new))
            xb = torch.where(atleast_kd(is_adv, k), new, xb)
            sub_norm = keep_best(sub_best, sub_norm, xb, l2_norms(xb - xs), is_adv)
        best[idx] = sub_best
        return best
