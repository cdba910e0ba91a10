"""Local refinement of adversarial examples that sit on the decision boundary.

:class:`BoundaryRefiner` (boundkit's own post-processing, in the spirit of FAB's projection
step [Croce & Hein 2020] and SuperDeepFool [Abdollahi et al. 2023]): starting from an
adversarial point ``x_b`` close to the boundary, repeat

1. linearise the boundary at ``x_b`` for the ``candidates`` most competitive classes
   (``h_k(z) = d_k(x_b) + grad d_k(x_b) . (z - x_b)``, ``d_k = f_k - f_y``; targeted: the
   target against the strongest other class);
2. project the clean ``x`` onto each half-space ``h_k >= 0`` intersected with the box (exact
   box-constrained projection: ``z(mu) = clip(x + mu g)``, ``mu`` found by bisection since
   ``g . z(mu)`` is monotone), keep the closest projection ``p``;
3. try ``x_b + t (p' - x_b)`` for ``t`` in ``(1, 1/2, 1/4) * trust`` with ``p'`` the projection
   overshot by ``overshoot``; the first adversarial one is pulled back to the boundary by a
   bisection along ``x -> candidate``; it replaces ``x_b`` only if its norm is smaller (so
   the norm never increases); when no candidate is adversarial ``trust`` is halved.

On a piecewise-linear network, once ``x_b`` lies in the linear region of a local optimum
one iteration reaches it (up to the bisection's tolerance).  Every point it returns was
classified adversarial by the model when it was evaluated.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from boundkit.attacks.base import (
    MIN_ROWS,
    Box,
    Criterion,
    atleast_kd,
    boundary_bisection,
    class_gradients,
    l2_norms,
)

__all__ = ["BoundaryRefiner", "project_halfspace_box"]


def project_halfspace_box(
    x: Tensor, g: Tensor, b: Tensor, box: Box, iters: int = 40
) -> tuple[Tensor, Tensor]:
    """Closest point to ``x`` (rows ``[M, D]``) in ``{z : g.z >= b} ∩ box``.

    Returns ``(z, feasible)``.  KKT: ``z = clip(x + mu g)`` with ``mu >= 0`` the smallest value
    reaching ``g.z = b``; ``g.z(mu)`` is non-decreasing in ``mu`` so ``mu`` is bisected.
    """
    gg = (g * g).sum(1).clamp_min(1e-30)
    gx = (g * x).sum(1)
    inside = gx >= b
    mu0 = ((b - gx) / gg).clamp_min(0)
    if box is None:
        z = x + mu0[:, None] * g
        return z, torch.ones_like(inside)
    lo_b, hi_b = box

    def reach(mu: Tensor) -> Tensor:
        return (g * (x + mu[:, None] * g).clamp(lo_b, hi_b)).sum(1)

    hi = mu0.clone()
    ok = reach(hi) >= b
    for _ in range(30):
        if bool(ok.all()):
            break
        hi = torch.where(ok, hi, hi * 2 + 1e-12)
        ok = reach(hi) >= b
    lo = torch.where(ok, mu0 * 0, hi)
    for _ in range(iters):
        mid = (lo + hi) / 2
        r = reach(mid) >= b
        hi = torch.where(r, mid, hi)
        lo = torch.where(r, lo, mid)
    z = (x + hi[:, None] * g).clamp(lo_b, hi_b)
    z = torch.where(inside[:, None], x, z)
    return z, ok | inside


class BoundaryRefiner:
    """Shrink adversarial perturbations by repeated box-constrained boundary projections.

    Parameters
    ----------
    steps: number of refinement iterations (30).
    candidates: classes linearised per iteration (3; all if larger than the class count).
    overshoot: relative overshoot of the projection (0.02, as DeepFool's).
    bisection_steps: forward passes of the bisection that lands each candidate on the
        boundary (10).
    stop_tolerance, stop_patience: per-sample stopping (off with ``stop_tolerance`` 0): a
        sample whose norm decreased by less than ``stop_tolerance`` (relative) in each of
        ``stop_patience`` consecutive iterations has converged and is not refined further
        (a per-sample rule: its result does not depend on the batch).
    """

    def __init__(
        self,
        *,
        steps: int = 30,
        candidates: int = 3,
        overshoot: float = 0.02,
        bisection_steps: int = 10,
        stop_tolerance: float = 0.0,
        stop_patience: int = 2,
    ) -> None:
        self.steps = int(steps)
        self.stop_tolerance = float(stop_tolerance)
        self.stop_patience = int(stop_patience)
        self.candidates = int(candidates)
        self.overshoot = float(overshoot)
        self.bisection_steps = int(bisection_steps)

    def __call__(
        self, model: nn.Module, x: Tensor, x_adv: Tensor, criterion: Criterion, box: Box
    ) -> Tensor:
        """Return points no farther from ``x`` than ``x_adv`` (where that was adversarial)."""
        k = x.ndim
        with torch.no_grad():
            ok = criterion.is_adversarial(model(x_adv))
        idx_all = ok.nonzero().squeeze(1)
        if idx_all.numel() == 0 or self.steps <= 0:
            return x_adv
        out = x_adv.clone()
        xs, xb, crit = x[idx_all], x_adv[idx_all], criterion.subset(idx_all)
        m = xs.shape[0]
        norm = l2_norms(xb - xs)
        trust = torch.ones(m, dtype=x.dtype, device=x.device)
        stall = torch.zeros(m, dtype=torch.long, device=x.device)
        frozen = torch.zeros(m, dtype=torch.bool, device=x.device)
        run = torch.arange(m, device=x.device)  # positions in idx_all still refined
        xb_all = xb
        for _ in range(self.steps):
            labels = crit.labels
            with torch.no_grad():
                logits = model(xb)
            if crit.targeted:
                ref = logits.scatter(1, labels[:, None], float("-inf")).argmax(1)
                classes = labels[:, None]
            else:
                ref = labels
                c = logits.shape[1]
                kk = min(self.candidates, c - 1)
                masked = logits.scatter(1, labels[:, None], float("-inf"))
                classes = masked.topk(kk, dim=1).indices
            _, diffs, grads = class_gradients(model, xb, classes, ref)
            kc = classes.shape[1]
            with torch.no_grad():
                g = grads.flatten(2)  # [m, K, D]
                xf = xs.flatten(1)
                xbf = xb.flatten(1)
                # h_k(z) = d_k + g_k.(z - x_b) >= 0  <=>  g_k.z >= g_k.x_b - d_k
                b = (g * xbf[:, None]).sum(2) - diffs
                z, feas = project_halfspace_box(
                    xf[:, None].expand(-1, kc, -1).reshape(m * kc, -1),
                    g.reshape(m * kc, -1),
                    b.reshape(-1),
                    box,
                )
                z = z.reshape(m, kc, -1)
                dist = (z - xf[:, None]).norm(dim=2)
                dist = torch.where(feas.reshape(m, kc), dist, torch.full_like(dist, float("inf")))
                j = dist.argmin(1)
                p = z[torch.arange(m, device=x.device), j]
                p = xf + (1 + self.overshoot) * (p - xf)
                if box is not None:
                    p = p.clamp(box[0], box[1])
                p = p.reshape(xs.shape)
                found = torch.zeros(m, dtype=torch.bool, device=x.device)
                cand = xb.clone()
                for t in (1.0, 0.5, 0.25):
                    tt = atleast_kd(trust * t, k)
                    c_t = xb + tt * (p - xb)
                    adv = crit.is_adversarial(model(c_t)) & ~found
                    cand = torch.where(atleast_kd(adv, k), c_t, cand)
                    found |= adv
                trust = torch.where(found, (trust * 2).clamp(max=1.0), trust / 2)
                before = norm.clone()
                found &= ~frozen
                if bool(found.any()):
                    fi = found.nonzero().squeeze(1)
                    new = boundary_bisection(
                        model, xs[fi], cand[fi], crit.subset(fi), self.bisection_steps
                    )
                    new_norm = l2_norms(new - xs[fi])
                    better = new_norm < norm[fi]
                    upd = fi[better]
                    xb[upd] = new[better]
                    norm[upd] = new_norm[better]
                if self.stop_tolerance > 0:
                    small = norm > before * (1 - self.stop_tolerance)
                    stall = torch.where(small, stall + 1, torch.zeros_like(stall))
                    done = (stall >= self.stop_patience) & ~frozen
                    if bool(done.any()):
                        # converged samples leave the batch (or, below MIN_ROWS rows,
                        # stay frozen: see base.MIN_ROWS)
                        live = ~(frozen | done)
                        if not bool(live.any()):
                            break
                        if int(live.sum()) < MIN_ROWS:
                            frozen = frozen | done
                            continue
                        xb_all[run[~live]] = xb[~live]
                        run = run[live]
                        xs, xb, norm, trust, stall, frozen = (
                            t[live] for t in (xs, xb, norm, trust, stall, frozen))
                        crit = crit.subset(live)
                        m = xs.shape[0]
        if run.numel() and xb is not xb_all:
            xb_all[run] = xb
        out[idx_all] = xb_all
        return out
