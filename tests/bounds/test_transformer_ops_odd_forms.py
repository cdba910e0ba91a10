"""Certificates of the products, softmax, permute and LayerNorm rules on models built the odd
ways users build them: keyword arguments of the functional forms, one parameter used by two
layers, one activation as both operands of a product, a 10-layer residual stack mixing the
ops, weights edited in place after a first certify, and a hook added afterwards."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import boundkit as bk
from boundkit.errors import UnsupportedLayerError
from boundkit.testing import assert_sound


class KeywordForms(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.o = nn.Linear(6, 8), nn.Linear(6, 8), nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k = self.a(x).reshape(-1, 2, 4), self.b(x).reshape(-1, 2, 4)
        att = torch.softmax(torch.matmul(input=q, other=k.transpose(dim0=1, dim1=2)), dim=-1)
        h = torch.mul(input=att @ k, other=torch.sigmoid(q))
        return self.o(F.layer_norm(h.flatten(1), (8,), eps=1e-3))


class SharedTensors(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.o = nn.Linear(6, 6), nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        g = self.a(h)  # the same weights twice
        return self.o(h * h + g * F.silu(g))


class DeepMix(nn.Module):
    """10 residual layers: SiLU-style gating, GELU and a softmax over groups of 4."""

    def __init__(self) -> None:
        super().__init__()
        self.i, self.o = nn.Linear(6, 8), nn.Linear(8, 3)
        self.ls = nn.ModuleList(nn.Linear(8, 8) for _ in range(10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.i(x)
        for j, layer in enumerate(self.ls):
            z = layer(h)
            if j % 3 == 0:
                h = h + z * torch.sigmoid(z)
            elif j % 3 == 1:
                h = h + F.gelu(z)
            else:
                h = h + torch.softmax(z.reshape(-1, 2, 4), -1).reshape(-1, 8)
        return self.o(h)


@pytest.mark.parametrize("make", [KeywordForms, SharedTensors, DeepMix])
@pytest.mark.parametrize("method,box", [("crown", "default"), ("crown", None), ("sound", None)])
def test_no_adversarial_example_inside_a_certified_ball_of_an_odd_form(
        make: type[nn.Module], method: str, box: str | None) -> None:
    torch.manual_seed(3)
    model = make().eval()
    out = assert_sound(model, torch.rand(4, 6), method, box=box, attack_steps=40, exact=False)
    assert (out["certificate"].radius > 0).all()


def test_weights_edited_after_a_first_certify_are_the_ones_certified() -> None:
    torch.manual_seed(3)
    model, x = KeywordForms().eval(), torch.rand(4, 6)
    before = bk.certify(model, x, "crown").radius
    with torch.no_grad():
        model.a.weight.mul_(3.0)
    after = assert_sound(model, x, "crown", attack_steps=40, exact=False)["certificate"].radius
    assert not torch.equal(before, after)


def test_a_hook_added_after_a_first_certify_is_refused_by_name() -> None:
    torch.manual_seed(3)
    model, x = KeywordForms().eval(), torch.rand(2, 6)
    bk.certify(model, x, "crown")
    model.a.register_forward_hook(lambda mod, i, o: o * 2.0)
    with pytest.raises(UnsupportedLayerError, match="hook"):
        bk.certify(model, x, "crown")
