"""Primal-dual attacks PDGD and PDPGD for the L2 norm (Matyasko, PhD thesis, Chapter 5).

Both solve ``min ||r|| s.t. x + r misclassified`` as a two-player game on the
proxy-Lagrangians of thesis Eq. (5.3) / (5.8):

* the **r-player** minimises ``lambda_1 ||r||_2 + lambda_2 max(0, m(x + r))`` where
  ``m`` is the classification margin (Eq. 5.2: ``f_y - max_{i != y} f_i``; targeted:
  ``max_{i != t} f_i - f_t``) -- the shifted hinge surrogate with target margin 0;
* the **lambda-player** maximises ``lambda_2 * I[x + r not adversarial]``: gradient ascent in
  the log domain (a multiplicative-weights update) on the weight of the constraint,
  ``log lambda += theta_lambda * (+1 if not adversarial else -1)``, with
  ``(lambda_1, lambda_2) = (1, lambda) / (1 + lambda)`` on the simplex and an exponential
  moving average (factor ``ema``) of ``lambda`` used by the r-player;
* the best adversarial ``r`` seen is kept (Algorithm 2/3, lines 7-9).

**PDGD** (Algorithm 2): the r-player takes Adam steps on its Lagrangian, then ``r`` is projected
onto the box.  **PDPGD** (Algorithm 3): a gradient step on the surrogate only, followed by the
proximal operator of the L2 norm, block soft-thresholding (Eq. 5.12)
``prox_{t lambda ||.||_2}(v) = (1 - t lambda / ||v||_2)_+ v``, then the box projection.  In
PDPGD the surrogate's gradient is normalised to unit L2 norm per sample (a boundkit choice, for
scale invariance across models; the thesis tunes the step size per model instead).

Defaults (thesis, Section 5.4): ``steps = 500``; primal learning rate from
{0.01, 0.05, 0.1, 0.5, 1.0} (here 0.1 for PDGD/Adam, 0.5 for PDPGD), linearly decreased to
1 % of its initial value; dual learning rate ``0.1``; initial regularisation weight of the
norm 0.01 (i.e. ``lambda_1 / lambda_2 = 0.01``); EMA of the dual variable (factor 0.9 here,
the thesis does not give it).  ``r_0 = 0``.

Scale: the primal step sizes and the norm term are in units of
:func:`~boundkit.attacks.base.problem_scale` (the box width, 1 on ``[0, 1]``; without a box
the linear estimate of the distance to the boundary): the r-player minimises
``lambda_1 ||r|| / unit + lambda_2 max(0, m(x + r))`` with steps ``lr * unit``, which makes
the attack invariant to rescaling the input space.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from boundkit.attacks.base import (
    Attack,
    Box,
    Criterion,
    atleast_kd,
    keep_best,
    l2_norms,
    problem_scale,
)

__all__ = ["PDGD", "PDPGD"]


class _PrimalDual(Attack):
    proximal: bool = False

    def __init__(
        self,
        *,
        steps: int = 500,
        primal_lr: float | None = None,
        primal_lr_final: float = 0.01,
        dual_lr: float = 0.1,
        initial_norm_weight: float = 0.01,
        ema: float = 0.9,
        refine_steps: int = 10,
    ) -> None:
        super().__init__(refine_steps=refine_steps)
        self.steps = int(steps)
        self.primal_lr = float(
            (0.5 if self.proximal else 0.1) if primal_lr is None else primal_lr
        )
        self.primal_lr_final = float(primal_lr_final)
        self.dual_lr = float(dual_lr)
        self.initial_norm_weight = float(initial_norm_weight)
        self.ema = float(ema)

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
        dev, dt = x.device, x.dtype
        unit = problem_scale(model, x, criterion, box)
        u_k = atleast_kd(unit, k)
        r = torch.zeros_like(x)
        # lambda = lambda_2 / lambda_1 (constraint weight over norm weight), log domain
        log_lam = torch.full((n,), -math.log(self.initial_norm_weight), dtype=dt, device=dev)
        lam_ema = log_lam.exp()
        best_norm = torch.full((n,), math.inf, dtype=dt, device=dev)
        best = x.clone()
        m1 = torch.zeros_like(x)
        m2 = torch.zeros_like(x)
        b1, b2 = 0.9, 0.999
        for i in range(self.steps):
            frac = i / max(1, self.steps - 1)
            lr = self.primal_lr * (1 - frac * (1 - self.primal_lr_final))
            w_norm = atleast_kd(1 / (1 + lam_ema), k)
            w_con = lam_ema / (1 + lam_ema)
            x_in = (x + r).requires_grad_(True)
            with torch.enable_grad():
                logits = model(x_in)
                hinge = criterion.margin(logits).clamp_min(0)
                (g,) = torch.autograd.grad((w_con * hinge).sum(), x_in, materialize_grads=True)
            with torch.no_grad():
                is_adv = criterion.is_adversarial(logits)
                norm = l2_norms(r)
                best_norm = keep_best(best, best_norm, x_in.detach(), norm, is_adv)
                if self.proximal:
                    gn = l2_norms(g).clamp_min(1e-12 / unit)
                    v = r - lr * u_k * atleast_kd(w_con, k) * g / atleast_kd(gn, k)
                    vn = l2_norms(v).clamp_min(1e-12 * unit)
                    shrink = (1 - lr * unit * w_norm.flatten() / vn).clamp_min(0)
                    r = v * atleast_kd(shrink, k)
                else:
                    rn = atleast_kd(l2_norms(r), k)
                    # the norm term ||r|| / unit (its gradient scales like the hinge's)
                    g = g + w_norm * r / (torch.sqrt(rn**2 + 1e-12 * u_k**2) * u_k)
                    t = i + 1
                    m1.mul_(b1).add_(g, alpha=1 - b1)
                    m2.mul_(b2).addcmul_(g, g, value=1 - b2)
                    r = r - lr * u_k * (m1 / (1 - b1**t)) / (
                        (m2 / (1 - b2**t)).sqrt() + 1e-8 / u_k)
                if box is not None:
                    r = (x + r).clamp_(box[0], box[1]) - x
                log_lam = log_lam + self.dual_lr * torch.where(is_adv, -1.0, 1.0).to(dt)
                log_lam = log_lam.clamp(-20.0, 20.0)
                lam_ema = self.ema * lam_ema + (1 - self.ema) * log_lam.exp()
        with torch.no_grad():
            x_last = x + r
            is_adv = criterion.is_adversarial(model(x_last))
            keep_best(best, best_norm, x_last, l2_norms(r), is_adv)
        return best


class PDGD(_PrimalDual):
    """Primal-dual gradient descent L2 attack (Matyasko, thesis Algorithm 2), Adam primal steps.

    Parameters: ``steps`` (500), ``primal_lr`` (0.1, decayed linearly to ``primal_lr_final``
    = 1 % of it), ``dual_lr`` (0.1), ``initial_norm_weight`` (0.01), ``ema`` (0.9),
    ``refine_steps`` (final bisection, boundkit addition).
    """

    name = "pdgd"
    proximal = False


class PDPGD(_PrimalDual):
    """Primal-dual proximal gradient L2 attack (Matyasko, thesis Algorithm 3, Eq. 5.12).

    Parameters: as :class:`PDGD`, with ``primal_lr`` 0.5 (the step ``t`` of the proximal
    gradient step and of the soft-threshold).
    """

    name = "pdpgd"
    proximal = True
