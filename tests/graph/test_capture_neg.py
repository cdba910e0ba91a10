"""A negation in every spelling (``-h``, ``torch.neg``, ``torch.negative``, ``h.neg()``,
``h.negative()``, ``h.neg_()``) is captured as the exact product by -1 (the affine ``scale``
node), every method certifies through it soundly, and a refusal names the method the user
asked for, not the method it builds on (a model with ``-h`` was refused before, "for method
'sound'" even when ``crown`` or ``bab`` was asked for)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import boundkit as bk
from boundkit.errors import UnsupportedLayerError
from boundkit.graph.capture import capture
from boundkit.testing import assert_sound

FORMS = ("operator", "torch.neg", "torch.negative", "method neg", "method negative",
         "neg_")


class Negated(nn.Module):
    """Linear(4, 6), negated (in spelling ``form``), ReLU, Linear(6, 3)."""

    def __init__(self, form: str) -> None:
        super().__init__()
        torch.manual_seed(FORMS.index(form))
        self.a, self.b, self.form = nn.Linear(4, 6), nn.Linear(6, 3), form

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        if self.form == "operator":
            h = -h
        elif self.form == "torch.neg":
            h = torch.neg(h)
        elif self.form == "torch.negative":
            h = torch.negative(h)
        elif self.form == "method neg":
            h = h.neg()
        elif self.form == "method negative":
            h = h.negative()
        else:
            h = h.clone().neg_()
        return self.b(torch.relu(h))


@pytest.mark.parametrize("form", FORMS)
def test_every_negation_spelling_is_an_exact_product_by_minus_one(form: str) -> None:
    model = Negated(form).double().eval()
    g = capture(model, (4,))
    assert "scale" in [n.op for n in g.nodes]
    x = torch.randn(5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out, _ = g.evaluate({g.input.name: x}, [g.logits.name])
        assert torch.equal(out[g.logits.name], model(x))


@pytest.mark.parametrize("method", ["sound", "crown", "bab"])
@pytest.mark.parametrize("form", ["operator", "method neg"])
def test_certificates_through_a_negation_are_sound(form: str, method: str) -> None:
    model = Negated(form).double().eval()
    x = torch.rand(4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    res = assert_sound(model, x, method, attack_steps=60)
    assert bool((res["certificate"].radius > 0).all())


class Absolute(nn.Module):
    """A node no method has a rule for (Mish; ``abs`` was the example before stop 33, which
    certifies it)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 6), nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(F.mish(self.a(x)))


@pytest.mark.parametrize("method", ["crown", "alpha", "bab"])
def test_a_refusal_names_the_method_asked_for(method: str) -> None:
    model = Absolute().double().eval()
    x = torch.rand(2, 4, dtype=torch.float64)
    with pytest.raises(UnsupportedLayerError) as err:
        bk.certify(model, x, method)
    msg = str(err.value)
    assert "\n" not in msg
    assert f"for method {method!r}" in msg and "builds on method 'sound'" in msg
    assert err.value.method == method


def test_verify_refusal_names_bab() -> None:
    model = Absolute().double().eval()
    with pytest.raises(UnsupportedLayerError) as err:
        bk.verify(model, torch.rand(2, 4, dtype=torch.float64), 0.1, time_budget=0.5)
    assert "for method 'bab'" in str(err.value)
