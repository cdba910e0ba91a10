"""Augmented Lagrangian Method for Adversarial attacks, L2 (Rony et al., ICCV 2021).

ALMA solves ``min ||delta||_2  s.t.  DLR(x + delta) <= 0`` with a penalty-Lagrangian method:
at step ``k`` it takes one RMSProp step (with momentum) on

    ``L_k(delta) = ||delta||_2 + P2(DLR(x + delta), rho_k, mu_k)``

(without the distance term at the first step), where

* ``DLR`` is the difference of logits ratio of Croce & Hein 2020 (``(f_y - max_{j != y} f_j
  + tol) / (z_1 - z_3)`` untargeted, ``z_i`` the sorted logits; targeted: ``(max_{j != t} f_j
  - f_t + tol) / (z_1 - (z_3 + z_4) / 2)``), a scale-invariant margin, with ``tol`` the
  logit tolerance;
* ``P2(y, rho, mu) = mu y + mu rho y^2 + rho^2 y^3 / 6`` for ``y >= 0`` and
  ``mu y / (1 - rho y)`` for ``y < 0`` (the penalty-Lagrangian function P2 of Birgin et al.);
* the multiplier follows an exponential moving average of the penalty's derivative,
  ``mu_{k+1} = alpha mu_k + (1 - alpha) dP2/dy(DLR, rho_k, mu_k)``, clipped to
  ``[1e-6, 1e12]``;
* every ``check_steps`` (M) steps, ``rho`` is multiplied by ``rho_growth`` (gamma) for the
  samples that are not yet adversarial and whose DLR did not fall below ``tau`` times its
  value at the previous check;
* the step size starts at ``lr_init`` (or, with ``init_lr_distance = eps``, at the value
  whose first step moves the point by an L2 distance ``eps``, found by a line search) and,
  once a sample is adversarial (at step ``k_0``), decays exponentially to
  ``lr_init * lr_reduction`` at the last step: ``lr_k = lr_0 * lr_reduction ** ((k - k_0) /
  (steps - k_0))``;
* after each step ``x + delta`` is clipped to the box.

The best (smallest) adversarial perturbation seen at any step is returned.

Defaults (paper's L2 settings, as in the authors' adv-lib): ``steps = 1000``, penalty P2,
``mu_init = rho_init = 1``, ``check_steps = 10``, ``tau = 0.95``, ``rho_growth = 1.2``,
``alpha = 0.9`` (EMA of mu, RMSProp smoothing and momentum), ``lr_init = 0.1``,
``lr_reduction = 0.01``, logit tolerance ``1e-4``.  ``init_lr_distance`` is off by default.

Scale: ``lr_init``, ``init_lr_distance`` and the distance term are in units of
:func:`~boundkit.attacks.base.problem_scale` (the box width, 1 on ``[0, 1]`` where they are
the paper's values; without a box the linear estimate of the distance to the boundary):
the objective is ``||delta|| / unit + P2(DLR)`` and RMSProp's running average starts at
``1 / unit^2``, so the iterates are invariant to rescaling the input space.

Deviations: the multiplier update and the gradient use the closed-form derivative of P2
(the gradient of ``L_k`` is ``delta / ||delta|| + P2'(DLR) grad DLR``, the same as
back-propagating ``L_k``); the logit tolerance is relative to the DLR's normaliser
(``DLR = margin / scale + tol``; adv-lib adds ``tol`` logits to the margin, which dominates
the margin of a model with tiny logits); success is decided
by the criterion (arg-max), not by the sign of the DLR; the targeted DLR adds the tolerance
on the same side as the untargeted one (adv-lib subtracts it, accepting points within
``tol`` of the boundary); with fewer than 3 (4 for targeted) classes the normaliser falls
back to ``z_1 - z_C`` (or 1 with 2 classes).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from boundkit.attacks.base import (
    Attack,
    Box,
    Criterion,
    Plateau,
    atleast_kd,
    keep_best,
    keyed_normal,
    l2_norms,
    problem_scale,
    sample_keys,
)

__all__ = ["ALMA", "p2_penalty"]


def p2_penalty(y: Tensor, rho: Tensor, mu: Tensor) -> Tensor:
    """Penalty-Lagrangian function P2 (Birgin et al. 2005) used by ALMA."""
    sup = mu * y + mu * rho * y**2 + rho**2 * y**3 / 6
    inf = mu * y / (1 - rho * y.clamp(max=0))
    return torch.where(y >= 0, sup, inf)


def p2_derivative(y: Tensor, rho: Tensor, mu: Tensor) -> Tensor:
    """``dP2/dy``."""
    sup = mu + 2 * mu * rho * y + 0.5 * rho**2 * y**2
    inf = mu / (1 - rho * y.clamp(max=0)) ** 2
    return torch.where(y >= 0, sup, inf)


def dlr_margin(logits: Tensor, criterion: Criterion, tol: float) -> Tensor:
    """Difference of logits ratio plus ``tol``: positive while not adversarial (and until
    the margin is ``tol`` times the normaliser past the boundary)."""
    c = logits.shape[1]
    top = logits.topk(min(c, 4), dim=1).values
    if criterion.targeted and c >= 4:
        scale = top[:, 0] - (top[:, 2] + top[:, 3]) / 2
    elif c >= 3:
        scale = top[:, 0] - top[:, 2]
    else:
        scale = torch.ones_like(top[:, 0])
    # tolerance relative to the normaliser (adv-lib adds an absolute 1e-4 logits, which
    # swamps the margin of a model with tiny logits): invariant to rescaling the logits
    scale = scale.clamp_min(torch.finfo(scale.dtype).tiny)
    return criterion.margin(logits) / scale + tol


class ALMA(Attack):
    """Augmented Lagrangian L2 attack (Rony et al. 2021).

    Parameters
    ----------
    steps: number of iterations (one forward and backward pass each; paper: 1,000).
    lr_init: initial step size (0.1).
    lr_reduction: final step size factor of the exponential decay (0.01).
    init_lr_distance: if given, the initial step size is chosen so that the first step moves
        the point by this L2 distance (the paper's epsilon; None).
    mu_init, rho_init: initial multiplier and penalty parameter (1, 1).
    check_steps: M, steps between checks of the constraint's progress (10).
    tau: required relative decrease of the DLR between checks (0.95).
    rho_growth: gamma, the penalty parameter's growth factor (1.2).
    alpha: EMA weight of the multiplier, RMSProp smoothing and momentum (0.9).
    logit_tolerance: added to the DLR, i.e. to the logit difference in units of the DLR's
        normaliser (1e-4).
    stop_window, stop_tolerance: per-sample convergence stopping (off with ``stop_window``
        0): see :class:`~boundkit.attacks.base.Plateau`.
    refine_steps: final bisection steps along ``x -> x_adv`` (boundkit addition).
    """

    name = "alma"

    def __init__(
        self,
        *,
        steps: int = 1000,
        lr_init: float = 0.1,
        lr_reduction: float = 0.01,
        init_lr_distance: float | None = None,
        mu_init: float = 1.0,
        rho_init: float = 1.0,
        check_steps: int = 10,
        tau: float = 0.95,
        rho_growth: float = 1.2,
        alpha: float = 0.9,
        logit_tolerance: float = 1e-4,
        stop_window: int = 0,
        stop_tolerance: float = 1e-3,
        refine_steps: int = 10,
    ) -> None:
        super().__init__(refine_steps=refine_steps)
        self.steps = int(steps)
        self.stop_window = int(stop_window)
        self.stop_tolerance = float(stop_tolerance)
        self.lr_init = float(lr_init)
        self.lr_reduction = float(lr_reduction)
        self.init_lr_distance = None if init_lr_distance is None else float(init_lr_distance)
        self.mu_init = float(mu_init)
        self.rho_init = float(rho_init)
        self.check_steps = int(check_steps)
        self.tau = float(tau)
        self.rho_growth = float(rho_growth)
        self.alpha = float(alpha)
        self.logit_tolerance = float(logit_tolerance)

    def _initial_lr(self, x: Tensor, direction: Tensor, distance: Tensor, box: Box) -> Tensor:
        """Step ``lr`` with ``||clip(x - lr d) - x|| = distance`` (per sample; line search).

        Without the box ``lr = distance / ||d||``; clipping only shortens the step, so that
        value brackets the answer from below and doubling finds the upper end.
        """
        lo = distance / l2_norms(direction).clamp_min(1e-30)
        if box is None:
            return lo
        k = x.ndim

        def dist(lr: Tensor) -> Tensor:
            return l2_norms((x - atleast_kd(lr, k) * direction).clamp(box[0], box[1]) - x)

        hi = lo.clone()
        up = dist(hi) >= distance
        for _ in range(60):
            if bool(up.all()):
                break
            lo = torch.where(up, lo, hi)
            hi = torch.where(up, hi, hi * 2)
            up = dist(hi) >= distance
        for _ in range(20):
            mid = (lo + hi) / 2
            larger = dist(mid) > distance
            lo, hi = torch.where(larger, lo, mid), torch.where(larger, mid, hi)
        return (lo + hi) / 2

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
        steps = self.steps
        a = self.alpha
        opts = {"dtype": x.dtype, "device": x.device}
        unit = problem_scale(model, x, criterion, box)
        u_k = atleast_kd(unit, k)
        delta = torch.zeros_like(x)
        # RMSProp's running average starts at 1 (adv-lib) in units of problem_scale
        square_avg = (1 / u_k**2).expand_as(x).clone()
        buf = torch.zeros_like(x)
        lr = self.lr_init * unit
        mu = torch.full((n,), self.mu_init, **opts)
        rho = torch.full((n,), self.rho_init, **opts)
        best_norm = torch.full((n,), math.inf, **opts)
        best = x.clone()
        found = torch.zeros(n, dtype=torch.bool, device=x.device)
        step_found = torch.full((n,), float(steps + 1), **opts)
        prev = torch.zeros(n, **opts)
        out = x.clone()
        plateau = Plateau(self.stop_window, self.stop_tolerance, best_norm)
        for i in range(steps):
            x_in = (x + delta).requires_grad_(True)
            with torch.enable_grad():
                logits = model(x_in)
                dlr = dlr_margin(logits, criterion, self.logit_tolerance)
            with torch.no_grad():
                y = dlr.detach()
                if i == 0:
                    prev = y
                elif (i + 1) % self.check_steps == 0:
                    improved = y < self.tau * prev
                    rho = torch.where(found | improved, rho, rho * self.rho_growth)
                    prev = y
                if i:
                    # [1e-6, 1e12], within the dtype's range (float16 tops out at 65504)
                    mu = (a * mu + (1 - a) * p2_derivative(y, rho, mu)).clamp_(
                        1e-6, min(1e12, torch.finfo(mu.dtype).max / 2))
                # d/d delta of ||delta|| / unit + P2(DLR, rho, mu)
                #   = delta / (||delta|| unit) + P2' grad DLR
                weight = p2_derivative(y, rho, mu)
            (g,) = torch.autograd.grad(dlr, x_in, grad_outputs=weight, materialize_grads=True)
            g = g.contiguous()  # may be an expanded (aliased) tensor
            with torch.no_grad():
                dnorm = l2_norms(delta)
                if i:
                    g.addcmul_(delta, 1 / (atleast_kd(dnorm.clamp_min(1e-30), k) * u_k))
                is_adv = criterion.is_adversarial(logits)
                best_norm = keep_best(best, best_norm, x_in.detach(), dnorm, is_adv)
                step_found = torch.where(~found & is_adv, torch.full_like(step_found, i),
                                         step_found)
                found |= is_adv
                if i == 0 and self.init_lr_distance is not None:
                    # the first step moves the point by init_lr_distance (x unit); the line
                    # search runs on the dimensionless direction g * unit
                    zero = l2_norms(g) * unit <= 1e-6
                    if bool(zero.any()):
                        r = keyed_normal(sample_keys(x, seed), g.shape[1:], 0, g.dtype)
                        r = r / atleast_kd(l2_norms(r).clamp_min(1e-30) * unit, k)
                        g = torch.where(atleast_kd(zero, k), r, g)
                    lr = self._initial_lr(x, g * u_k, self.init_lr_distance * unit, box)
                expo = (i - step_found).clamp_min(0) / (steps - step_found)
                step_lr = lr * self.lr_reduction**expo
                square_avg.mul_(a).addcmul_(g, g, value=1 - a)
                buf.mul_(a).addcdiv_(g, square_avg.sqrt().add_(1e-8 / u_k))
                delta = delta - atleast_kd(step_lr, k) * buf
                if box is not None:
                    delta = (x + delta).clamp_(box[0], box[1]).sub_(x)
                # converged samples leave the batch with their best point so far
                keep = plateau.converged(i, best_norm, best, out)
                if plateau.done:
                    return out
                if keep is not None:
                    (x, delta, square_avg, buf, lr, mu, rho, best_norm, best, found,
                     step_found, prev, unit, u_k) = (
                        t[keep] for t in (x, delta, square_avg, buf, lr, mu, rho, best_norm,
                                          best, found, step_found, prev, unit, u_k))
                    criterion = criterion.subset(keep)
        with torch.no_grad():
            x_last = x + delta
            is_adv = criterion.is_adversarial(model(x_last))
            keep_best(best, best_norm, x_last, l2_norms(delta), is_adv)
        plateau.finish(best, out)
        return out
