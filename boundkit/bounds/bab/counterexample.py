r"""Counterexample search inside the ball: projected gradient ascent on the competing
margin, every candidate checked by re-running the model in its own dtype."""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from boundkit.margin import label_margin


def pgd_counterexample(model: nn.Module, x: torch.Tensor, label: torch.Tensor,
                       radius: torch.Tensor, box: tuple[float, float] | None,
                       steps: int = 40, restarts: int = 2, seed: int = 0
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""Projected gradient ascent on the largest competing margin
    :math:`\max_{j\ne y}f_j-f_y` inside the L2 ball of radius ``radius`` [N] (shrunk by
    :math:`10^{-6}` relative so the point lies strictly inside) and the box, in the model's
    own dtype (Madry et al. 2018). Returns ``(found [N], x_adv, norm [N])``: ``found`` only
    where the model, re-run on exactly ``x_adv``, predicts another class and the float64
    norm of ``x_adv - x`` is below the radius (:func:`boundkit.attacks.base.verify`)."""
    from boundkit.attacks.base import Misclassification
    from boundkit.attacks.base import verify as check_adv

    dtype = next((p.dtype for p in model.parameters()), x.dtype)
    dev = next((p.device for p in model.parameters()), x.device)
    x = x.to(device=dev, dtype=dtype)
    label = label.to(dev)
    r = radius.to(device=dev, dtype=torch.float64) * (1 - 1e-6)
    crit = Misclassification(label)
    found = torch.zeros(x.shape[0], dtype=torch.bool, device=dev)
    best = x.clone()
    norm = torch.full((x.shape[0],), math.inf, dtype=torch.float64, device=dev)
    view = (-1, *([1] * (x.dim() - 1)))
    rr = r.to(dtype).reshape(view)
    gen = torch.Generator(device="cpu").manual_seed(seed)

    def project(d: torch.Tensor) -> torch.Tensor:
        nrm = d.flatten(1).norm(dim=1).reshape(view)
        d = d * torch.clamp(rr / nrm.clamp_min(1e-30), max=1.0)
        if box is not None:
            d = (x + d).clamp(box[0], box[1]) - x
        return d

    for rs in range(restarts):
        noise = torch.randn(x.shape, generator=gen).to(device=dev, dtype=dtype)
        delta = project(noise * rr * (0.5 if rs else 0.0))
        step = rr * 2.5 / steps
        for _ in range(steps):
            delta = delta.detach().requires_grad_(True)
            logits = model(x + delta)
            (-label_margin(logits, label)).sum().backward()
            g = delta.grad
            assert g is not None
            gn = g.flatten(1).norm(dim=1).reshape(view).clamp_min(1e-30)
            with torch.no_grad():
                delta = project(delta + step * g / gn)
                cand = x + delta
                ok, nm, _ = check_adv(model, x, cand, crit, box)
                ok &= nm < radius.to(dev)
                new = ok & ~found
                best[new] = cand[new]
                norm[new] = nm[new]
                found |= ok
            if bool(found.all()):
                break
    return found, best, norm

