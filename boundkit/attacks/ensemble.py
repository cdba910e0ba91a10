"""The ``best`` attack: an ensemble keeping, per sample, the smallest verified perturbation.

Each member attack runs on the batch; its candidates are verified (model re-run in its
dtype); then, optionally, each verified candidate is shrunk by the
:class:`~boundkit.attacks.refine.BoundaryRefiner` and verified again.  For every sample the
smallest verified norm over all (member, refined or not) candidates wins, and ``found_by``
names the member (with ``+refine`` when the refined point won).

Default members (:data:`DEFAULT_MEMBERS`, chosen for undefended MNIST-sized networks, see
``docs/attacks.md``):

* ``deepfool`` (all classes, 50 steps, overshoot 0.02);
* ``ddn`` with ``steps = 1000`` (paper settings otherwise);
* ``fmn`` with ``steps = 1000`` started from DeepFool (``init="deepfool"``);
* ``alma`` with ``steps = 1000`` (paper settings) and a first step of length 0.1
  (``init_lr_distance = 0.1``);
* ``alma`` with 300 steps (same settings) *targeted* at the 1st, 2nd and 3rd most likely
  other classes (``target_rank`` 1, 2, 3, FAB-T-like; a targeted success is an untargeted
  one);

each followed by the boundary refinement (10 iterations, 3 candidate classes).  ``budget``
(gradient steps per sample per member) replaces the members' own step counts.

**Fallback from the batch** (``batch_fallback=True``): gradient-based members can all fail on
a sample whose neighbourhood has zero gradients (dead ReLUs, saturated units, a constant
region).  For every sample no member made adversarial, the nearest other input of the batch
that already satisfies the criterion for it (untargeted: a point the model assigns another
class; targeted: one it assigns the target) is an adversarial starting point; the segment
to it is bisected onto the decision boundary and FMN (``init`` = that point, the same steps
as the FMN member) shrinks it.  Samples for which the batch holds no such point stay
failures.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from boundkit.attacks.base import (
    Attack,
    Box,
    Criterion,
    TargetedMisclassification,
    atleast_kd,
    verify,
)
from boundkit.attacks.refine import BoundaryRefiner

__all__ = ["BestEnsemble", "DEFAULT_MEMBERS"]

MemberSpec = str | tuple[str, dict[str, Any]]

DEFAULT_MEMBERS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("deepfool", {}),
    ("ddn", {"steps": 1000}),
    ("fmn", {"steps": 1000, "init": "deepfool"}),
    ("alma", {"steps": 1000, "init_lr_distance": 0.1}),
    ("alma", {"steps": 300, "init_lr_distance": 0.1, "target_rank": 1}),
    ("alma", {"steps": 300, "init_lr_distance": 0.1, "target_rank": 2}),
    ("alma", {"steps": 300, "init_lr_distance": 0.1, "target_rank": 3}),
)


class BestEnsemble(Attack):
    """Run several attacks and keep, per sample, the smallest verified perturbation.

    Parameters
    ----------
    members: attack names or ``(name, options)`` pairs (see :data:`DEFAULT_MEMBERS`).
    refine_boundary_steps: iterations of the boundary refinement applied to each member's
        verified result (10; 0 disables it).
    refine_candidates: classes linearised per refinement iteration (3).
    budget: if given, the ``steps``-like options of every member implied by this budget
        (overrides the member's own step options).
    batch_fallback: for samples no member made adversarial, start FMN from the nearest other
        batch input that satisfies the criterion (see the module docstring; True).
    fallback_steps: FMN steps of that fallback (1000; ``budget`` overrides it).
    """

    name = "best"

    def __init__(
        self,
        *,
        members: Sequence[MemberSpec] | None = None,
        refine_boundary_steps: int = 10,
        refine_candidates: int = 3,
        budget: int | None = None,
        refine_steps: int = 10,
        batch_fallback: bool = True,
        fallback_steps: int = 1000,
    ) -> None:
        super().__init__(refine_steps=refine_steps)
        specs = DEFAULT_MEMBERS if members is None else members
        self.members: list[tuple[str, dict[str, Any]]] = [
            (m, {}) if isinstance(m, str) else (m[0], dict(m[1])) for m in specs
        ]
        if not self.members:
            raise ValueError("the ensemble needs at least one member attack")
        self.refine_boundary_steps = int(refine_boundary_steps)
        self.refine_candidates = int(refine_candidates)
        self.budget = budget
        self.batch_fallback = bool(batch_fallback)
        self.fallback_steps = int(fallback_steps if budget is None else budget)

    @classmethod
    def budget_to_options(cls, budget: int) -> dict[str, Any]:
        return {"budget": int(budget)}

    def build_members(self) -> list[tuple[str, Attack]]:
        from boundkit.attacks import ATTACKS

        out = []
        for name, opts in self.members:
            if name not in ATTACKS or name == self.name:
                raise ValueError(f"unknown ensemble member {name!r}; known: {sorted(ATTACKS)}")
            cls = ATTACKS[name]
            o = dict(opts)
            o.pop("target_rank", None)
            if self.budget is not None:
                o.update(cls.budget_to_options(self.budget))
            out.append((name, cls(**o)))
        return out

    def run(
        self,
        model: nn.Module,
        x: Tensor,
        criterion: Criterion,
        *,
        box: Box,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        x_adv, _, _, _, _ = self.attack_with_sources(
            model, x, criterion, box=box, generator=generator
        )
        return x_adv

    def attack_with_sources(
        self,
        model: nn.Module,
        x: Tensor,
        criterion: Criterion,
        *,
        box: Box = (0.0, 1.0),
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, list[str]]:
        k = x.ndim
        n = x.shape[0]
        best = x.clone()
        best_norm = torch.full((n,), float("inf"), dtype=torch.float64, device=x.device)
        best_success = torch.zeros(n, dtype=torch.bool, device=x.device)
        best_label = torch.zeros(n, dtype=torch.long, device=x.device)
        source = torch.full((n,), -1, dtype=torch.long, device=x.device)
        names: list[str] = []
        refiner = BoundaryRefiner(steps=self.refine_boundary_steps,
                                  candidates=self.refine_candidates)

        def consider(cand: Tensor, name: str) -> None:
            nonlocal best, best_norm, best_success, best_label, source
            ok, norm, lab = verify(model, x, cand, criterion, box)
            better = ok & (norm < best_norm)
            names.append(name)
            best = torch.where(atleast_kd(better, k), cand, best)
            best_norm = torch.where(better, norm, best_norm)
            best_label = torch.where(better, lab, best_label)
            best_success |= ok
            source = torch.where(better, torch.full_like(source, len(names) - 1), source)

        clean_logits: Tensor | None = None
        for (name, opts), (_, atk) in zip(self.members, self.build_members()):
            rank = opts.get("target_rank")
            crit = criterion
            if rank is not None and not criterion.targeted:
                # targeted run towards the rank-th most likely other class (FAB-T-like):
                # a targeted success is an untargeted one
                if clean_logits is None:
                    with torch.no_grad():
                        clean_logits = model(x)
                masked = clean_logits.scatter(1, criterion.labels[:, None], float("-inf"))
                r = min(int(rank), masked.shape[1] - 1)
                crit = TargetedMisclassification(masked.topk(r, dim=1).indices[:, r - 1])
                name = f"{name}-t{r}"
            cand = atk(model, x, crit, box=box, generator=generator)
            consider(cand, name)
            if self.refine_boundary_steps > 0:
                consider(refiner(model, x, cand, criterion, box), name + "+refine")
        if self.batch_fallback and not bool(best_success.all()):
            cand = self._from_batch(model, x, criterion, ~best_success, box, generator)
            if cand is not None:
                consider(cand, "batch-start+fmn")
                if self.refine_boundary_steps > 0:
                    consider(refiner(model, x, cand, criterion, box), "batch-start+fmn+refine")
        found_by = [names[i] if i >= 0 else "" for i in source.tolist()]
        return best, best_success, best_norm, best_label, found_by

    def _from_batch(
        self,
        model: nn.Module,
        x: Tensor,
        criterion: Criterion,
        failed: Tensor,
        box: Box,
        generator: torch.Generator | None,
    ) -> Tensor | None:
        """Candidates for the ``failed`` samples: FMN started from the nearest batch input
        that satisfies each one's criterion (``x`` itself elsewhere); ``None`` if there is
        no such input for any failed sample."""
        from boundkit.attacks.fmn import FMN

        fidx = failed.nonzero().squeeze(1)
        n, nf = x.shape[0], fidx.shape[0]
        with torch.no_grad():
            logits = model(x)
            # ok[i, j]: batch input j satisfies the criterion of failed sample i
            rep = type(criterion)(criterion.labels[fidx].repeat_interleave(n))
            ok = rep.is_adversarial(logits.repeat(nf, 1)).reshape(nf, n)
            if box is not None:
                flat = x.flatten(1)
                inside = ((flat >= box[0]) & (flat <= box[1])).all(1)
                ok &= inside[None, :]
            dist = torch.cdist(x[fidx].flatten(1).double(), x.flatten(1).double())
            dist = dist.masked_fill(~ok, float("inf"))
            dmin, j = dist.min(1)
        have = torch.isfinite(dmin)
        if not bool(have.any()):
            return None
        sel, start = fidx[have], x[j[have]]
        atk = FMN(steps=self.fallback_steps, init=start)
        out = x.clone()
        out[sel] = atk(model, x[sel], criterion.subset(sel), box=box, generator=generator)
        return out
