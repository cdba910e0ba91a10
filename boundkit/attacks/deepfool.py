"""DeepFool, L2 version (Moosavi-Dezfooli, Fawzi, Frossard, CVPR 2016, Algorithm 2).

At the current iterate ``x_i`` every candidate class ``k`` (the ``candidates`` classes with
the largest clean logits, all classes by default) is linearised:
``f'_k = f_k(x_i) - f_y(x_i)``, ``w'_k = grad f_k(x_i) - grad f_y(x_i)``.  The closest
linearised boundary is ``l = argmin_k |f'_k| / ||w'_k||`` and the step is
``r_i = (|f'_l| + eta) / ||w'_l||^2 * w'_l`` (``eta``: 1e-4 logits in the paper's code,
here 1e-5 of the sample's clean logit spread ``max_k f_k(x) - min_k f_k(x)``, which is
invariant to rescaling the logits).  The total perturbation is scaled by
``1 + overshoot``: ``x_{i+1} = clip(x + (1 + overshoot) * sum r_i)``.  Samples stop as soon
as they are adversarial.

Defaults (paper): ``overshoot = 0.02``, ``steps = 50``; candidates: all classes (the paper
uses all classes; top-10 as in its ImageNet experiments when there are more).  The Jacobian
rows are computed for the whole batch with one backward pass per candidate class.

Targeted variant: the only candidate is the target class, linearised against the current
top class other than the target.

On a linear (affine) classifier one step lands ``(1 + overshoot)`` times the exact minimal
perturbation away along its direction; the shared boundary bisection then removes the
overshoot.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from boundkit.attacks.base import (
    Attack,
    Box,
    Criterion,
    atleast_kd,
    class_gradients,
    clip_to_box,
)

__all__ = ["DeepFool"]


class DeepFool(Attack):
    """L2 DeepFool (Moosavi-Dezfooli et al. 2016), batched.

    Parameters
    ----------
    steps: maximum number of linearisation steps (paper: 50).
    candidates: number of classes considered (largest clean logits); ``None`` = all.
    overshoot: relative overshoot of the accumulated perturbation (paper: 0.02).
    refine_steps: final bisection steps along ``x -> x_adv`` (boundkit addition).
    """

    name = "deepfool"

    def __init__(
        self,
        *,
        steps: int = 50,
        candidates: int | None = None,
        overshoot: float = 0.02,
        refine_steps: int = 10,
    ) -> None:
        super().__init__(refine_steps=refine_steps)
        self.steps = int(steps)
        self.candidates = candidates
        self.overshoot = float(overshoot)

    @classmethod
    def budget_to_options(cls, budget: int) -> dict[str, Any]:
        return {"steps": max(1, min(int(budget), 50))}

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
        with torch.no_grad():
            logits0 = model(x)
        n_classes = logits0.shape[1]
        # the step's push past the boundary: 1e-5 of each sample's clean logit spread (about
        # the paper code's absolute 1e-4 logits on MNIST-sized logits, but scale-free: 1e-4
        # logits swamps the margin of a model with tiny logits)
        spread = (logits0.amax(1) - logits0.amin(1)).clamp_min(torch.finfo(x.dtype).tiny)
        labels = criterion.labels
        if criterion.targeted:
            classes = labels[:, None]
        else:
            n_cand = n_classes if self.candidates is None else min(self.candidates, n_classes)
            order = logits0.argsort(1, descending=True)
            # drop the label itself from the candidates
            is_label = order == labels[:, None]
            order = order[~is_label].reshape(n, n_classes - 1)
            classes = order[:, : n_cand - 1] if n_cand < n_classes else order

        total = torch.zeros_like(x)
        x_adv = x.clone()
        active = torch.ones(n, dtype=torch.bool, device=x.device)
        for _ in range(self.steps):
            idx = active.nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            xi = x_adv[idx]
            if criterion.targeted:
                with torch.no_grad():
                    cur = model(xi)
                t = labels[idx]
                cur = cur.scatter(1, t[:, None], float("-inf"))
                ref_cls = cur.argmax(1)
                logits, diffs, grads = class_gradients(model, xi, classes[idx], ref_cls)
            else:
                logits, diffs, grads = class_gradients(model, xi, classes[idx], labels[idx])
            adv = criterion.subset(idx).is_adversarial(logits)
            # samples found adversarial at this iterate stop here
            active[idx[adv]] = False
            keep = ~adv
            if not bool(keep.any()):
                break
            idx, diffs, grads = idx[keep], diffs[keep], grads[keep]
            gnorm = grads.flatten(2).norm(p=2, dim=2)
            dist = diffs.abs() / gnorm.clamp_min(1e-30)
            best = dist.argmin(1)
            f_l = diffs.gather(1, best[:, None]).squeeze(1)
            w_l = grads[torch.arange(idx.numel(), device=x.device), best]
            gn_l = gnorm.gather(1, best[:, None]).squeeze(1)
            # (scale-free: no absolute floor on the gradient norm; logits are not rescaled)
            floor = torch.finfo(gn_l.dtype).tiny ** 0.5
            push = 1e-5 * spread[idx]
            r = atleast_kd((f_l.abs() + push) / gn_l.clamp_min(floor) ** 2, k) * w_l
            total[idx] = total[idx] + r
            x_adv[idx] = clip_to_box(x[idx] + (1.0 + self.overshoot) * total[idx], box)
        return x_adv
