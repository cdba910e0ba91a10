"""A constant added to the logits (``logits + c``: a class prior, a logit adjustment)
changes the margins, so every method certifies the shifted function. Capture makes it an
``identity`` node with a shift, and ``Graph.logits`` used to skip it like a plain identity:
``sound`` and ``crown`` certified 0.424 where the true radius is 0.0707 (a violated
certificate, found by a red team)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import boundkit as bk
from boundkit.testing import assert_sound


class ShiftedLogits(nn.Module):
    """Identity weights, logits (x1, x2 + 0.5) (a literal in ``forward``) or, with
    ``buffer=True``, the same shift held in a buffer."""

    def __init__(self, buffer: bool = False) -> None:
        super().__init__()
        self.lin = nn.Linear(2, 2)
        with torch.no_grad():
            self.lin.weight.copy_(torch.eye(2))
            self.lin.bias.zero_()
        self.buffer = buffer
        self.register_buffer("prior", torch.tensor([0.0, 0.5]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shift = self.prior if self.buffer else torch.tensor([0.0, 0.5], dtype=x.dtype)
        return self.lin(x) + shift


@pytest.mark.parametrize("buffer", [False, True])
@pytest.mark.parametrize("method", ["sound", "crown", "alpha"])
def test_a_constant_added_to_the_logits_is_certified_not_skipped(buffer: bool,
                                                                  method: str) -> None:
    model = ShiftedLogits(buffer).double().eval()
    x = torch.tensor([[0.8, 0.2], [0.1, 0.9]], dtype=torch.float64)
    # margins (0.8 - 0.7) and (1.4 - 0.1): true radii margin / sqrt(2)
    exact = torch.tensor([0.1, 1.3], dtype=torch.float64) / math.sqrt(2)
    kw = {} if method == "sound" else {"box": None}
    res = bk.certify(model, x, method, **kw)
    assert (res.radius <= exact * (1 + 1e-9)).all(), (res.radius, exact)
    assert (res.radius >= exact * 0.5).all()
    assert_sound(model, x, method=method, **kw)


def test_a_plain_identity_after_the_logits_is_still_skipped() -> None:
    """``logits + 0`` written as ``x + torch.zeros(...)`` and ``nn.Identity`` keep the logits
    node where it was (the bound is the same as without them)."""
    lin = nn.Linear(3, 4).double().eval()
    model = nn.Sequential(lin, nn.Identity()).eval()
    x = torch.rand(2, 3, dtype=torch.float64)
    assert bk.capture(model, x).logits.op == "linear"
    a = bk.certify(model, x, "crown", box=None).radius
    b = bk.certify(lin, x, "crown", box=None).radius
    assert torch.allclose(a, b)
