"""``unflatten`` in its four spellings (``nn.Unflatten``, ``x.unflatten``, ``torch.unflatten``,
keyword arguments with a ``-1`` size) is captured as an exact reshape, every method
certifies through it soundly, and an ``unflatten`` of the batch axis is refused in one line
(it was refused as a node without a rule before)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import boundkit as bk
from boundkit.errors import UnsupportedLayerError
from boundkit.graph.capture import capture
from boundkit.testing import assert_sound


class Unflattened(nn.Module):
    """Linear(4, 6), split into 2 tokens of 3 (in spelling ``form``), ReLU, a linear layer
    on the tokens, flattened to 4 logits."""

    def __init__(self, form: int) -> None:
        super().__init__()
        torch.manual_seed(form)
        self.a, self.b, self.form = nn.Linear(4, 6), nn.Linear(3, 2), form
        self.u = nn.Unflatten(1, (2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        if self.form == 0:
            h = h.unflatten(1, (2, 3))
        elif self.form == 1:
            h = torch.unflatten(h, 1, (2, 3))
        elif self.form == 2:
            h = self.u(h)
        else:
            h = h.unflatten(dim=-1, sizes=(2, -1))
        return self.b(torch.relu(h)).flatten(1)


@pytest.mark.parametrize("form", range(4))
def test_every_unflatten_spelling_is_an_exact_reshape(form: int) -> None:
    model = Unflattened(form).double().eval()
    g = capture(model, (4,))
    assert [n.op for n in g.nodes].count("reshape") == 1
    x = torch.rand(5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(form))
    with torch.no_grad():
        out, _ = g.evaluate({g.input.name: x}, [g.logits.name])
        assert torch.equal(out[g.logits.name], model(x))


@pytest.mark.parametrize("method", ["sound", "crown"])
@pytest.mark.parametrize("form", range(4))
def test_certificates_through_an_unflatten_are_sound(form: int, method: str) -> None:
    model = Unflattened(form).double().eval()
    x = torch.rand(4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    assert_sound(model, x, method, attack_steps=60)


def test_unflatten_of_the_batch_axis_is_refused_in_one_line() -> None:
    class BatchSplit(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.a(x).unflatten(0, (1, -1)).squeeze(0)

    with pytest.raises(UnsupportedLayerError) as err:
        bk.certify(BatchSplit().double().eval(), torch.rand(3, 4, dtype=torch.float64))
    assert "\n" not in str(err.value) and "batch" in str(err.value)
