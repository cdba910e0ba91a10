"""Fast Minimum-Norm attack, L2 version (Pintor et al., NeurIPS 2021, Algorithm 1).

State: perturbation ``delta`` and norm budget ``eps``.  At step ``k`` (cosine-annealed step
size ``alpha_k`` from ``alpha_init`` to ``alpha_final`` and norm factor ``gamma_k`` from
``gamma_init`` to ``gamma_final``):

1. logit-difference loss ``L = f_y(x + delta) - max_{j != y} f_j(x + delta)`` (targeted:
   ``max_{j != t} f_j - f_t``), and its gradient ``g``;
2. norm update: if adversarial ``eps = min((1 - gamma_k) eps, best_norm)``; otherwise
   ``eps = (1 + gamma_k) eps`` if some adversarial was already found, else
   ``eps = ||delta|| + |L| / ||g||`` (the linear estimate of the distance to the boundary);
3. ``delta = delta - alpha_k g / ||g||``, projected onto the L2 ball of radius ``eps``,
   then onto the box.

The best adversarial seen is returned.  Unlike Foolbox 3.3.4's ``L2FMNAttack`` (whose
projection factor is ``norms / norms`` = 1, so it never projects), the projection here is
``delta * min(1, eps / ||delta||)``.

Defaults (paper, L2): ``steps = 1000`` (its experiments), ``alpha_init = 1.0``,
``alpha_final = alpha_init / 100``, ``gamma_init = 0.05``, ``gamma_final = 0.001``; cold start
from ``x`` (``init=None``).  ``init="deepfool"`` (or a tensor of adversarial starting
points, as the paper allows) starts from a DeepFool point brought to the boundary by
bisection, with ``eps`` its norm.

Scale: the step sizes ``alpha`` are in units of :func:`~boundkit.attacks.base.problem_scale`
(the box width, 1 on ``[0, 1]``; without a box the linear estimate of the distance to the
boundary); the norm budget's first value is the linear estimate itself.  The attack is
invariant to rescaling the input space.
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
    Plateau,
    atleast_kd,
    boundary_bisection,
    box_diameter,
    keep_best,
    l2_norms,
    problem_scale,
)

__all__ = ["FMN"]


class FMN(Attack):
    """Fast Minimum-Norm L2 attack (Pintor et al. 2021).

    Parameters
    ----------
    steps: number of iterations (paper experiments: 1,000).
    alpha_init, alpha_final: step size, cosine-annealed (paper: 1.0 -> alpha_init / 100).
    gamma_init, gamma_final: norm update factor, cosine-annealed (paper: 0.05 -> 0.001).
    init: ``None`` (start at x), ``"deepfool"``, or a tensor of starting points.
    stop_window, stop_tolerance: per-sample convergence stopping (off with ``stop_window``
        0): see :class:`~boundkit.attacks.base.Plateau`.
    refine_steps: final bisection steps along ``x -> x_adv`` (boundkit addition).
    """

    name = "fmn"

    def __init__(
        self,
        *,
        steps: int = 1000,
        alpha_init: float = 1.0,
        alpha_final: float | None = None,
        gamma_init: float = 0.05,
        gamma_final: float = 0.001,
        init: str | Tensor | None = None,
        stop_window: int = 0,
        stop_tolerance: float = 1e-3,
        refine_steps: int = 10,
    ) -> None:
        super().__init__(refine_steps=refine_steps)
        self.steps = int(steps)
        self.stop_window = int(stop_window)
        self.stop_tolerance = float(stop_tolerance)
        self.alpha_init = float(alpha_init)
        self.alpha_final = float(alpha_init / 100 if alpha_final is None else alpha_final)
        self.gamma_init = float(gamma_init)
        self.gamma_final = float(gamma_final)
        self.init = init

    @classmethod
    def budget_to_options(cls, budget: int) -> dict[str, Any]:
        return {"steps": int(budget)}

    def _start(
        self, model: nn.Module, x: Tensor, criterion: Criterion, box: Box
    ) -> Tensor | None:
        if self.init is None:
            return None
        if isinstance(self.init, str):
            if self.init != "deepfool":
                raise ValueError(
                    f"FMN init must be None, 'deepfool' or a tensor, not {self.init!r}"
                )
            from boundkit.attacks.deepfool import DeepFool

            return DeepFool(refine_steps=10)(model, x, criterion, box=box)
        return boundary_bisection(model, x, self.init.to(x), criterion, 10)

    def run(
        self,
        model: nn.Module,
        x: Tensor,
        criterion: Criterion,
        *,
        box: Box,
        seed: int = 0,
    ) -> Tensor:
        k = x.ndim
        n = x.shape[0]
        unit = problem_scale(model, x, criterion, box)
        worst = box_diameter(x, box, default=100 * unit)
        start = self._start(model, x, criterion, box)
        best_norm = torch.full((n,), math.inf, dtype=x.dtype, device=x.device)
        best = x.clone()
        eps = torch.full((n,), math.inf, dtype=x.dtype, device=x.device)
        found = torch.zeros(n, dtype=torch.bool, device=x.device)
        if start is None:
            delta = torch.zeros_like(x)
        else:
            with torch.no_grad():
                ok = criterion.is_adversarial(model(start))
            delta = torch.where(atleast_kd(ok, k), start - x, torch.zeros_like(x))
            eps = torch.where(ok, l2_norms(delta), eps)
            best_norm = torch.where(ok, l2_norms(delta), best_norm)
            best = torch.where(atleast_kd(ok, k), start, best)
            found = ok.clone()
        if box is not None:
            d_lo, d_hi = box[0] - x, box[1] - x
        out = x.clone()
        plateau = Plateau(self.stop_window, self.stop_tolerance, best_norm)
        steps = self.steps
        for i in range(steps):
            cos = 0.5 * (1 + math.cos(math.pi * i / steps))
            alpha = self.alpha_final + (self.alpha_init - self.alpha_final) * cos
            gamma = self.gamma_final + (self.gamma_init - self.gamma_final) * cos
            x_in = (x + delta).requires_grad_(True)
            with torch.enable_grad():
                logits = model(x_in)
                loss = criterion.margin(logits)
                (g,) = torch.autograd.grad(loss.sum(), x_in, materialize_grads=True)
            with torch.no_grad():
                loss = loss.detach()
                is_adv = criterion.is_adversarial(logits)
                dnorm = l2_norms(delta)
                best_norm = keep_best(best, best_norm, x_in.detach(), dnorm, is_adv)
                found |= is_adv
                gn = l2_norms(g).clamp_min(1e-12)
                to_boundary = dnorm + loss.abs() / gn
                eps = torch.where(
                    is_adv,
                    torch.minimum(eps * (1 - gamma), best_norm),
                    torch.where(found, eps * (1 + gamma), to_boundary),
                )
                eps = torch.minimum(eps, worst)
                delta.addcmul_(atleast_kd(-alpha * unit / gn, k), g)
                dn = l2_norms(delta).clamp_min(1e-12 * unit)
                delta.mul_(atleast_kd(torch.clamp(eps / dn, max=1.0), k))
                if box is not None:
                    # x + delta in the box <=> lo - x <= delta <= hi - x (bounds set once)
                    delta.clamp_(min=d_lo, max=d_hi)
                # converged samples leave the batch with their best point so far
                keep = plateau.converged(i, best_norm, best, out)
                if plateau.done:
                    return out
                if keep is not None:
                    x, delta, eps, best, best_norm, found, unit, worst = (
                        t[keep] for t in (x, delta, eps, best, best_norm, found, unit, worst))
                    criterion = criterion.subset(keep)
                    if box is not None:
                        d_lo, d_hi = d_lo[keep], d_hi[keep]
        with torch.no_grad():
            x_last = x + delta
            is_adv = criterion.is_adversarial(model(x_last))
            keep_best(best, best_norm, x_last, l2_norms(delta), is_adv)
        plateau.finish(best, out)
        return out
