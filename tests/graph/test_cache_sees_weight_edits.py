"""A model edited after a first certificate is captured again: every method's second answer
is the edited model's (the same as for a fresh copy of it), including the slopes capture
reads into node attributes (PReLU) and constants it folds (a clamp bound, a shift)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import boundkit as bk
from boundkit.testing import assert_sound


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.p, self.q = nn.Linear(4, 8), nn.PReLU(1, init=0.1), nn.PReLU(8)
        self.b = nn.Linear(8, 3)
        self.register_buffer("mean", torch.full((4,), 0.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.q(self.p(self.a(x - self.mean)))
        return self.b(h.clamp(min=-0.3))


@pytest.mark.parametrize("edit", ["one slope", "per-channel slopes", "weight via .data",
                                  "buffer"])
@pytest.mark.parametrize("method", ["sound", "crown"])
def test_a_second_certificate_is_the_edited_models(edit: str, method: str) -> None:
    torch.manual_seed(0)
    model = _Net().eval()
    x = torch.rand(6, 4)
    first = bk.certify(model, x, method).radius
    with torch.no_grad():
        if edit == "one slope":
            model.p.weight.fill_(-0.8)
        elif edit == "per-channel slopes":
            model.q.weight.copy_(torch.linspace(-1.0, 1.5, 8))
        elif edit == "weight via .data":
            model.a.weight.data.mul_(-2.0)
        else:
            model.mean.fill_(0.1)
    second = bk.certify(model, x, method).radius
    fresh = bk.certify(copy.deepcopy(model), x, method).radius
    torch.testing.assert_close(second, fresh, rtol=0, atol=0)
    assert not torch.equal(first, second)
    assert_sound(model, x, method, exact=False, attack_steps=30)
