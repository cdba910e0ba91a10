"""LayerNorm's ``crown`` relaxation (Taylor planes with a proven remainder): the planes
contain LayerNorm on dense samples and at the box corners (hypothesis), and certificates of
small nets with LayerNorm over vectors and over tokens (negative scales included) stay below
the attacks and far above the global ``sound`` constant's."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from boundkit.bounds.layernorm import layernorm_planes
from boundkit.testing import (
    assert_crown_intervals_contain_samples,
    check_no_adversarial_in_relaxation_ball,
)


@settings(max_examples=60, deadline=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
@given(seed=st.integers(0, 10**6), n=st.integers(1, 6), scale=st.sampled_from([0.01, 1.0, 10.0]),
       width=st.sampled_from([0.0, 1e-4, 0.1, 1.0, 5.0]), eps=st.sampled_from([1e-5, 1e-2, 1.0]))
def test_layernorm_planes_contain_layernorm_on_the_box(seed: int, n: int, scale: float,
                                                       width: float, eps: float) -> None:
    g = torch.Generator().manual_seed(seed)
    lo = scale * torch.randn(3, n, generator=g, dtype=torch.float64)
    hi = lo + width * torch.rand(3, n, generator=g, dtype=torch.float64)
    k, b_lo, b_hi = layernorm_planes(lo, hi, eps)
    bits = torch.tensor(list(itertools.product([0.0, 1.0], repeat=n)), dtype=lo.dtype)
    x = torch.cat([lo + (hi - lo) * torch.rand(1500, 3, n, generator=g, dtype=lo.dtype),
                   lo + (hi - lo) * bits[:, None, :]])
    y = F.layer_norm(x, (n,), eps=eps)
    lin = (k * x.unsqueeze(-2)).sum(-1)
    assert (y >= b_lo + lin).all() and (y <= b_hi + lin).all()


class _Net(nn.Module):
    def __init__(self, tokens: bool) -> None:
        super().__init__()
        self.tokens, self.a, self.b = tokens, nn.Linear(6, 12), nn.Linear(12, 3)
        self.ln = nn.LayerNorm(4 if tokens else 12)
        with torch.no_grad():  # scales of both signs, shifts
            self.ln.weight.copy_(torch.randn_like(self.ln.weight))
            self.ln.bias.copy_(torch.randn_like(self.ln.bias))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.a(x))
        h = self.ln(h.reshape(-1, 3, 4)).reshape(-1, 12) if self.tokens else self.ln(h)
        return self.b(torch.relu(h))


@pytest.mark.parametrize("tokens", [False, True])
def test_layernorm_net_crown_certificates_stay_below_the_attacks(tokens: bool) -> None:
    torch.manual_seed(0)
    model = _Net(tokens).eval()
    x = torch.rand(4, 6)
    r = check_no_adversarial_in_relaxation_ball(model, x, steps=40)
    assert r is not None
    assert (r["crown"] > 10 * r["sound"]).all()  # the relaxation, not the global constant
    assert_crown_intervals_contain_samples(model, x, r["crown"].clamp(max=1) * 1.5 + 0.05,
                                           samples=100)
