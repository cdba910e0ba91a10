"""Decoupled Direction and Norm (DDN) attack (Rony et al., CVPR 2019, Algorithm 1).

The perturbation's direction and norm are optimised separately.  At step ``k``
(``delta_0 = 0``, ``eps_0 = init_epsilon``):

1. ``g = grad_delta L(x + delta_k)`` with ``L`` the cross-entropy of the original label
   (ascended; for a targeted attack the cross-entropy of the target is descended);
2. ``delta' = delta_k + alpha_k * g / ||g||`` (``alpha_k`` cosine-annealed from ``alpha``
   to ``alpha_final``);
3. ``eps_{k+1} = (1 - gamma) eps_k`` if ``x + delta_k`` is adversarial, else
   ``(1 + gamma) eps_k``;
4. ``delta_{k+1} = clip(x + eps_{k+1} delta' / ||delta'||) - x`` (projection onto the sphere of
   radius ``eps_{k+1}`` followed by the box).

The best (smallest) adversarial perturbation seen at any step is returned.

Defaults (paper): ``steps = 100`` (the paper reports 100 and 1,000), ``init_epsilon = 1``,
``gamma = 0.05``, ``alpha = 1`` with cosine annealing to ``alpha_final = 0.01``.

Scale: ``init_epsilon``, ``alpha`` and ``alpha_final`` are in units of
:func:`~boundkit.attacks.base.problem_scale` (the box width, 1 on ``[0, 1]`` where they are
the paper's values; without a box the linear estimate of the distance to the boundary), so
the attack is invariant to rescaling the input space.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from boundkit.attacks.base import (
    Attack,
    Box,
    Criterion,
    Plateau,
    atleast_kd,
    box_diameter,
    keep_best,
    keyed_normal,
    l2_norms,
    problem_scale,
    sample_keys,
)

__all__ = ["DDN"]


class DDN(Attack):
    """Decoupled Direction and Norm L2 attack (Rony et al. 2019).

    Parameters
    ----------
    steps: number of iterations (paper: 100 / 1,000).
    init_epsilon: initial norm ``eps_0`` (paper: 1.0).
    gamma: multiplicative norm update factor (paper: 0.05).
    alpha: initial step size, cosine-annealed to ``alpha_final`` (paper: 1.0 -> 0.01).
    init: optional ``[N, ...]`` starting points (``None``: start at ``x``).
    stop_window, stop_tolerance: per-sample convergence stopping (off with ``stop_window``
        0): see :class:`~boundkit.attacks.base.Plateau`.
    refine_steps: final bisection steps along ``x -> x_adv`` (boundkit addition).
    """

    name = "ddn"

    def __init__(
        self,
        *,
        steps: int = 100,
        init_epsilon: float = 1.0,
        gamma: float = 0.05,
        alpha: float = 1.0,
        alpha_final: float = 0.01,
        init: Tensor | None = None,
        stop_window: int = 0,
        stop_tolerance: float = 1e-3,
        refine_steps: int = 10,
    ) -> None:
        super().__init__(refine_steps=refine_steps)
        self.steps = int(steps)
        self.stop_window = int(stop_window)
        self.stop_tolerance = float(stop_tolerance)
        self.init_epsilon = float(init_epsilon)
        self.gamma = float(gamma)
        self.alpha = float(alpha)
        self.alpha_final = float(alpha_final)
        self.init = init

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
        labels = criterion.labels
        sign = -1.0 if criterion.targeted else 1.0
        unit = problem_scale(model, x, criterion, box)
        keys = sample_keys(x, seed)
        worst = box_diameter(x, box, default=100 * unit)
        delta = torch.zeros_like(x) if self.init is None else (self.init - x).detach().clone()
        eps = self.init_epsilon * unit
        if self.init is not None:
            eps = torch.where(l2_norms(delta) > 0, l2_norms(delta), eps)
        best_norm = torch.full((n,), math.inf, dtype=x.dtype, device=x.device)
        best = x.clone()
        out = x.clone()
        plateau = Plateau(self.stop_window, self.stop_tolerance, best_norm)
        steps = self.steps
        for i in range(steps):
            cos = 0.5 * (1 + math.cos(math.pi * (i + 1) / steps))
            alpha = self.alpha_final + (self.alpha - self.alpha_final) * cos
            x_in = (x + delta).requires_grad_(True)
            with torch.enable_grad():
                logits = model(x_in)
                loss = F.cross_entropy(logits, labels, reduction="sum")
                (g,) = torch.autograd.grad(loss, x_in, materialize_grads=True)
                g = g.contiguous()  # may be an expanded (aliased) tensor
            with torch.no_grad():
                is_adv = criterion.is_adversarial(logits)
                norm = l2_norms(delta)
                best_norm = keep_best(best, best_norm, x_in.detach(), norm, is_adv)

                gn = l2_norms(g)
                zero = gn == 0
                if bool(zero.any()):
                    # a random direction, keyed by the sample and the step (batch-independent)
                    g[zero] = keyed_normal(keys[zero], g.shape[1:], i, g.dtype)
                    gn = l2_norms(g)
                delta = delta.addcmul_(atleast_kd(sign * alpha * unit / gn, k), g)
                eps = torch.where(is_adv, eps * (1 - self.gamma), eps * (1 + self.gamma))
                eps = torch.minimum(eps, worst)
                dn = l2_norms(delta).clamp_min(1e-12 * unit)
                delta.mul_(atleast_kd(eps / dn, k))
                if box is not None:
                    delta = (x + delta).clamp_(box[0], box[1]).sub_(x)
                # converged samples leave the batch with their best point so far
                keep = plateau.converged(i, best_norm, best, out)
                if plateau.done:
                    return out
                if keep is not None:
                    x, delta, eps, best, best_norm, unit, keys, worst, labels = (
                        t[keep] for t in (x, delta, eps, best, best_norm, unit, keys, worst,
                                          labels))
                    criterion = criterion.subset(keep)
        # the last iterate has not been checked yet
        with torch.no_grad():
            x_last = x + delta
            is_adv = criterion.is_adversarial(model(x_last))
            keep_best(best, best_norm, x_last, l2_norms(delta), is_adv)
        plateau.finish(best, out)
        return out
