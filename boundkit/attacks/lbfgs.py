"""Box-constrained L-BFGS attack (Szegedy et al., "Intriguing properties of neural networks",
ICLR 2014, Section 4.1).

For a constant ``c > 0`` minimise, subject to ``x + r`` in the box,

    ``c ||r||_2^2 + loss_f(x + r)``

with L-BFGS-B (scipy), then search over ``c`` for the largest constant whose minimiser is
still adversarial (larger ``c`` -> smaller ``r``): geometric steps (x10 / /10) until the
bracket is found, then bisection in log space.  Szegedy et al. write the penalty as
``c |r|``; the squared norm used here (as in the common implementations) is smooth at 0 and
has the same minimisers along the search over ``c``.

Loss: targeted, the cross-entropy of the target class (the paper's setting); untargeted, the
cross-entropy of "any class but y", ``-log(1 - p_y(x + r))`` (the untargeted analogue).

Batching: the per-sample problems are independent, so the batch is solved as one L-BFGS-B
problem over the concatenated perturbations with the summed objective (per-sample
constants), which is exactly separable.  scipy runs on the CPU in float64; the model is
evaluated in its own dtype on its own device.  Suited to small batches (the quasi-Newton
memory couples the line searches of the samples).

Scale: the problem is solved in ``u = z / unit`` with ``unit`` =
:func:`~boundkit.attacks.base.problem_scale` (the box width, 1 on ``[0, 1]``; without a box
the linear estimate of the distance to the boundary), i.e. ``c ||r / unit||^2 + loss``: the
attack is invariant to rescaling the input space.

Defaults: ``initial_const = 1e-2``, ``search_steps = 10``, ``max_iter = 150`` L-BFGS-B
iterations per search step (Szegedy et al. give no numbers; these follow Foolbox's
L-BFGS attack).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import minimize
from torch import Tensor, nn

from boundkit.attacks.base import Attack, Box, Criterion, atleast_kd, problem_scale

__all__ = ["LBFGS"]


class LBFGS(Attack):
    """Szegedy et al.'s box-constrained L-BFGS attack with a search over the constant.

    Parameters
    ----------
    initial_const: first constant ``c`` (1e-2).
    search_steps: number of constants tried per sample (10).
    max_iter: L-BFGS-B iterations per constant (150).
    refine_steps: final bisection steps along ``x -> x_adv`` (boundkit addition).
    """

    name = "lbfgs"

    def __init__(
        self,
        *,
        initial_const: float = 1e-2,
        search_steps: int = 10,
        max_iter: int = 150,
        refine_steps: int = 10,
    ) -> None:
        super().__init__(refine_steps=refine_steps)
        self.initial_const = float(initial_const)
        self.search_steps = int(search_steps)
        self.max_iter = int(max_iter)

    @classmethod
    def budget_to_options(cls, budget: int) -> dict[str, Any]:
        return {"max_iter": max(1, int(budget) // 10)}

    def _loss(self, logits: Tensor, criterion: Criterion) -> Tensor:
        labels = criterion.labels
        if criterion.targeted:
            return F.cross_entropy(logits, labels, reduction="none")
        mask = torch.zeros_like(logits, dtype=torch.bool).scatter_(1, labels[:, None], True)
        return torch.logsumexp(logits, 1) - torch.logsumexp(logits.masked_fill(mask, -math.inf), 1)

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
        shape = x.shape
        dev, dt = x.device, x.dtype
        # optimised in units of problem_scale: u = z / unit (scale-free; unit = 1 on [0, 1])
        unit = atleast_kd(problem_scale(model, x, criterion, box).double(), k)
        unit_el = unit.expand(shape).cpu().numpy().reshape(-1)
        unit_dev = unit.to(dev)
        x64 = x.detach().double().cpu().numpy().reshape(-1) / unit_el
        if box is not None:
            bounds = np.stack([box[0] / unit_el, box[1] / unit_el], 1)
        else:
            bounds = None

        def evaluate(u: np.ndarray, c: np.ndarray) -> tuple[float, np.ndarray]:
            ut = torch.from_numpy(u.reshape(shape)).to(dev).requires_grad_(True)
            with torch.enable_grad():
                logits = model((ut * unit_dev).to(dt))
                r2 = (ut - torch.from_numpy(x64.reshape(shape)).to(dev)).pow(2)
                obj = (torch.from_numpy(c).to(dev) * r2.flatten(1).sum(1)).sum()
                obj = obj + self._loss(logits, criterion).double().sum()
                (g,) = torch.autograd.grad(obj, ut, materialize_grads=True)
            return float(obj.detach()), g.detach().cpu().numpy().reshape(-1)

        c = np.full(n, self.initial_const)
        good = np.zeros(n)  # largest constant known to give an adversarial minimiser
        bad = np.full(n, np.inf)  # smallest constant known to fail
        best = x.clone()
        best_norm = torch.full((n,), math.inf, dtype=torch.float64, device=dev)
        for _ in range(self.search_steps):
            res = minimize(
                evaluate,
                x64.copy(),
                args=(c,),
                jac=True,
                method="L-BFGS-B",
                bounds=bounds,
                options={"maxiter": self.max_iter},
            )
            z = (torch.from_numpy(res.x.reshape(shape)).to(dev) * unit_dev).to(dt)
            with torch.no_grad():
                adv = criterion.is_adversarial(model(z))
            norm = (z.double() - x.double()).flatten(1).norm(dim=1)
            better = adv & (norm < best_norm)
            best_norm = torch.where(better, norm, best_norm)
            best = torch.where(atleast_kd(better, k), z, best)
            a = adv.cpu().numpy()
            good = np.where(a, np.maximum(good, c), good)
            bad = np.where(a, bad, np.minimum(bad, c))
            c = np.where(
                np.isinf(bad), c * 10, np.where(good == 0, c / 10, np.sqrt(good * bad))
            )
        return best
