"""Fast gradient sign with a bisection on epsilon, and fast gradient value.

Baselines of J. Peck's MSc thesis (``shared/seeds/002_*.txt``):

* **FGS** (Goodfellow et al. 2015) with **Algorithm 2.1** of the thesis: compute the
  gradient signs ``s = sign(grad_x L(theta, x, f(x)))`` once, then binary-search the smallest
  ``eps`` in ``[0, M]`` such that ``f(x + eps s) != f(x)``: ``l = 0, u = M``; while the
  bracket is wider than the tolerance, ``eps = (l + u) / 2`` and ``u = eps`` if
  ``x + eps s`` is adversarial, else ``l = eps``.  ``M`` (``max_epsilon``) is a parameter of
  the algorithm in the thesis; here it defaults to the box width (1.0 on [0, 1], at which
  every pixel is pushed to a face of the box), and the search runs ``steps`` bisections.
  The bisection keeps ``u`` adversarial: samples for which ``x + M s`` is not adversarial
  are failures.
* **FGV** (Rozsa et al. 2016, thesis Section 2.5.4): the same with the raw gradient instead of
  its signs, ``eta = eps * grad_x L``; ``eps`` is searched with the same bisection.  The
  gradient is normalised to unit L2 norm so that ``eps`` is the L2 length of the step before
  clipping (a re-parametrisation of ``eps``; the set of perturbations is the thesis's); ``M``
  defaults to the largest distance to a corner of the box.

The loss is the cross-entropy of the predicted label (ascended); for a targeted attack the
cross-entropy of the target is descended.  Perturbed points are clipped to the box.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from boundkit.attacks.base import (
    Attack,
    Box,
    Criterion,
    atleast_kd,
    box_diameter,
    clip_to_box,
    l2_norms,
    logits_and_grad,
    problem_scale,
)

__all__ = ["FGS", "FGV"]


class _GradientLineSearch(Attack):
    """Shared bisection (thesis Algorithm 2.1) along a fixed direction per sample."""

    def __init__(
        self, *, steps: int = 20, max_epsilon: float | None = None, refine_steps: int = 10
    ) -> None:
        super().__init__(refine_steps=refine_steps)
        self.steps = int(steps)
        self.max_epsilon = max_epsilon

    @classmethod
    def budget_to_options(cls, budget: int) -> dict[str, Any]:
        return {"steps": max(1, int(budget))}

    @abstractmethod
    def _direction(self, g: Tensor) -> Tensor:
        """The search direction for the gradient ``g`` (sign for FGS, scaled for FGV)."""

    @abstractmethod
    def _max_eps(self, x: Tensor, box: Box) -> Tensor:
        """Per-sample upper end of the epsilon search."""

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
        sign = -1.0 if criterion.targeted else 1.0
        labels = criterion.labels
        _, g = logits_and_grad(
            model, x, lambda z: F.cross_entropy(z, labels, reduction="none")
        )
        s = sign * self._direction(g)
        with torch.no_grad():
            if box is None and self.max_epsilon is None:
                # no domain: start at the problem's length unit and double until adversarial
                # (at most 2**40 times it), which keeps the search scale-free
                upper = problem_scale(model, x, criterion, box)
                ok = criterion.is_adversarial(model(x + atleast_kd(upper, k) * s))
                for _ in range(40):
                    if bool(ok.all()):
                        break
                    upper = torch.where(ok, upper, upper * 2)
                    ok = criterion.is_adversarial(model(x + atleast_kd(upper, k) * s))
            else:
                upper = self._max_eps(x, box)
                ok = criterion.is_adversarial(
                    model(clip_to_box(x + atleast_kd(upper, k) * s, box)))
            lower = torch.zeros_like(upper)
            for _ in range(self.steps):
                mid = (lower + upper) / 2
                adv = criterion.is_adversarial(model(clip_to_box(x + atleast_kd(mid, k) * s, box)))
                upper = torch.where(adv & ok, mid, upper)
                lower = torch.where(adv & ok, lower, mid)
            out = clip_to_box(x + atleast_kd(upper, k) * s, box)
        return torch.where(atleast_kd(ok, k), out, x)


class FGS(_GradientLineSearch):
    """Fast gradient sign with bisection on epsilon (Peck, thesis Algorithm 2.1).

    Parameters
    ----------
    steps: bisection steps on ``eps`` (20: bracket ``M / 2**20``).
    max_epsilon: upper end ``M`` of the search (default: box width; without a box, the
        problem's length unit doubled until ``x + M s`` is adversarial).
    refine_steps: final bisection along the straight segment ``x -> x_adv`` (boundkit
        addition; it helps where clipping bent the FGS path).
    """

    name = "fgs"

    def _direction(self, g: Tensor) -> Tensor:
        return g.sign()

    def _max_eps(self, x: Tensor, box: Box) -> Tensor:
        if self.max_epsilon is not None:
            m = float(self.max_epsilon)
        else:
            m = float(box[1] - box[0])  # box None: doubling search in run
        return torch.full((x.shape[0],), m, dtype=x.dtype, device=x.device)


class FGV(_GradientLineSearch):
    """Fast gradient value with the same bisection (Rozsa et al. 2016; thesis Section 2.5.4).

    Parameters
    ----------
    steps: bisection steps on ``eps``.
    max_epsilon: upper end ``M`` of the search, in L2 units of the (unit-normalised)
        gradient step (default: the largest distance from x to a corner of the box; without
        a box, the problem's length unit doubled until ``x + M s`` is adversarial).
    """

    name = "fgv"

    def _direction(self, g: Tensor) -> Tensor:
        return g / atleast_kd(l2_norms(g).clamp_min(1e-12), g.ndim)

    def _max_eps(self, x: Tensor, box: Box) -> Tensor:
        if self.max_epsilon is not None:
            return torch.full((x.shape[0],), float(self.max_epsilon), dtype=x.dtype,
                              device=x.device)
        return box_diameter(x, box)  # box None: doubling search in run
