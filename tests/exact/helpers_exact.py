"""Shared helpers for the exact-radius tests: tiny nets and an independent brute force."""

from __future__ import annotations

import math

import torch
from torch import nn


def mlp(sizes: tuple[int, ...], seed: int, scale: float = 1.0) -> nn.Sequential:
    """Eval-mode fully connected ReLU net with the given layer sizes (float64)."""
    g = torch.Generator().manual_seed(seed)
    layers: list[nn.Module] = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        lin = nn.Linear(a, b).double()
        with torch.no_grad():
            lin.weight.copy_(torch.randn(b, a, generator=g, dtype=torch.float64) * scale)
            lin.bias.copy_(torch.randn(b, generator=g, dtype=torch.float64) * scale)
        layers += [lin, nn.ReLU()]
    return nn.Sequential(*layers[:-1]).eval()


@torch.no_grad()
def margin(model: nn.Module, z: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """max_{c' != c} f_{c'}(z) - f_c(z) (>= 0 means the class changed, ties included)."""
    out = model(z.double())
    fc = out.gather(1, c[:, None])
    out = out.scatter(1, c[:, None], -math.inf)
    return out.max(dim=1).values - fc[:, 0]


@torch.no_grad()
def polar_brute_force(
    model: nn.Module, x: torch.Tensor, n_dirs: int = 4000, t_max: float = 10.0,
    n_steps: int = 4000,
) -> float:
    """Upper bound on the 2-D radius: min over a dense fan of rays of the first crossing.

    For each direction the first class change along the ray is bracketed on a fine grid of
    ``t`` and refined by 50 bisection steps; every returned point is adversarial, so the
    result is >= the exact radius, and it converges to it as the grids are refined.
    """
    c = model(x.double()[None]).argmax(dim=1)
    ang = torch.arange(n_dirs, dtype=torch.float64) * (2 * math.pi / n_dirs)
    u = torch.stack([ang.cos(), ang.sin()], dim=1)
    ts = torch.linspace(0.0, t_max, n_steps + 1, dtype=torch.float64)[1:]
    best = math.inf
    for chunk in torch.split(u, 500):
        pts = x.double()[None, None] + ts[None, :, None] * chunk[:, None, :]
        m = margin(model, pts.reshape(-1, 2), c.expand(pts.shape[0] * pts.shape[1]))
        adv = (m >= 0).reshape(chunk.shape[0], -1)
        has = adv.any(dim=1)
        if not has.any():
            continue
        first = adv.float().argmax(dim=1)
        hi = ts[first]
        lo = torch.where(first > 0, ts[(first - 1).clamp_min(0)], torch.zeros_like(hi))
        for _ in range(50):
            mid = (lo + hi) / 2
            mm = margin(model, x.double()[None] + mid[:, None] * chunk, c.expand(len(mid)))
            hi = torch.where(mm >= 0, mid, hi)
            lo = torch.where(mm >= 0, lo, mid)
        best = min(best, float(hi[has].min()))
    return best
