"""The random-network check shared by the activation tests (``test_stated_lines.py``,
``test_abs_softsign_logsigmoid_maximum_prelu.py``): a small conv net with two activations,
weights scaled, against attacks, relaxation-ball searches and sampled intervals."""

from __future__ import annotations

import torch
from torch import nn

import boundkit as bk
from boundkit.testing import (
    assert_crown_intervals_contain_samples,
    assert_sound,
    check_no_adversarial_in_relaxation_ball,
)


def check_two_activation_net(first: nn.Module, second: nn.Module, scale: float,
                             methods: tuple[str, ...] = ("sound",)) -> None:
    """Conv(1, 2, 3)-``first``-Flatten-Linear(32, 10)-``second``-Linear(10, 3) on 4x4 images,
    the weights of the affine layers times ``scale``: no attack beats a certificate of
    ``methods``, no adversarial example lies in a relaxation ball, and ``crown``'s intervals
    contain sampled activations at twice its radius (plus 0.05)."""
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), first, nn.Flatten(),
                          nn.Linear(32, 10), second, nn.Linear(10, 3)).eval()
    with torch.no_grad():
        for m in model:
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                m.weight.mul_(scale)
    x = torch.rand(3, 1, 4, 4)
    for method in methods:
        assert_sound(model, x, method, exact=False, attack_steps=30)
    assert check_no_adversarial_in_relaxation_ball(model, x, steps=30) is not None
    eps = bk.certify(model, x, "crown").radius.clamp(max=1.0) * 2 + 0.05
    assert_crown_intervals_contain_samples(model, x, eps, samples=100)
