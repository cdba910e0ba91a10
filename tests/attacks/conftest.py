"""Shared fixtures of the attack tests: small models with known minimal perturbations."""

from __future__ import annotations

import torch
from torch import nn


def linear_model(
    d: int = 20, c: int = 4, seed: int = 0, dtype=torch.float32, scale: float = 1.0
) -> nn.Module:
    """Affine classifier ``x -> scale * (W x + b)`` in eval mode (W, b standard normal).

    ``scale`` leaves every decision boundary (and so every exact radius) unchanged but sharpens
    the softmax, which the cross-entropy based attacks (DDN, L-BFGS) follow.
    """
    g = torch.Generator().manual_seed(seed)
    lin = nn.Linear(d, c).to(dtype)
    with torch.no_grad():
        lin.weight.copy_(scale * torch.randn(c, d, generator=g, dtype=dtype))
        lin.bias.copy_(scale * torch.randn(c, generator=g, dtype=dtype))
    return nn.Sequential(nn.Flatten(), lin).eval()


def linear_exact(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Closed-form minimal L2 perturbation of an affine classifier (no box).

    Returns ``(radius, valid)``: ``radius = min_k (z_c - z_k) / ||w_c - w_k||`` is a lower
    bound on the minimal untargeted perturbation; it is exact where the projection onto the
    closest pairwise boundary makes ``k`` tie with ``c`` above every other class (``valid``).
    """
    lin = model[1]
    w = lin.weight.detach().double()
    b = lin.bias.detach().double()
    xf = x.flatten(1).double()
    z = xf @ w.T + b
    c = z.argmax(1)
    dw = w[c][:, None, :] - w[None, :, :]  # [N, C, D]
    dz = z.gather(1, c[:, None]) - z  # [N, C]
    dn = dw.norm(dim=2)
    dist = dz / dn.clamp_min(1e-30)
    dist = dist.scatter(1, c[:, None], float("inf"))
    radius, k = dist.min(1)
    step = dw[torch.arange(len(x)), k] / dn[torch.arange(len(x)), k][:, None]
    p = xf - radius[:, None] * step
    zp = p @ w.T + b
    top = zp.gather(1, c[:, None]).squeeze(1)
    others = zp.scatter(1, torch.stack([c, k], 1), float("-inf")).amax(1)
    valid = others < top - 1e-9
    return radius, valid


def relu_net(sizes: tuple[int, ...] = (6, 12, 12, 3), seed: int = 0) -> nn.Module:
    """Small fully connected ReLU network in eval mode."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers).eval()
