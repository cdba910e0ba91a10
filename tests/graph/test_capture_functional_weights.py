"""Functional layers with constant weights (issue 24's red team): ``F.linear``,
``F.conv2d`` / ``torch.conv2d`` and ``F.conv_transpose2d`` / ``torch.conv_transpose2d``,
positional or keyword arguments, weights shared with a module, are the same node as the
module form (same radii); a weight computed from the input, or a string padding, is refused
with a one-line error."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import boundkit as bk
from boundkit.errors import UnsupportedLayerError
from boundkit.testing import adversarial_search


class _Functional(nn.Module):
    """``head(flatten(call(self, layer, x)))``: ``call`` uses ``layer``'s weight functionally."""

    def __init__(self, layer: nn.Module, call: Callable[..., torch.Tensor] | None,
                 feat: int) -> None:
        super().__init__()
        self.layer, self.call, self.head = layer, call, nn.Linear(feat, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.layer(x) if self.call is None else self.call(self.layer, x)
        return self.head(torch.relu(h).flatten(1))


_CT = dict(stride=2, padding=1, output_padding=1)
#: name -> (layer, functional call, input shape, features after the layer)
_CASES: dict[str, tuple[Callable[[], nn.Module], Callable[..., torch.Tensor],
                        tuple[int, ...], int]] = {
    "linear_positional": (lambda: nn.Linear(6, 5), lambda m, x: F.linear(x, m.weight, m.bias),
                          (6,), 5),
    "linear_keywords": (lambda: nn.Linear(6, 5),
                        lambda m, x: F.linear(input=x, weight=m.weight, bias=m.bias), (6,), 5),
    "conv2d_keywords": (lambda: nn.Conv2d(2, 3, 3, stride=2, padding=1, dilation=1),
                        lambda m, x: F.conv2d(x, m.weight, bias=m.bias, stride=2, padding=1),
                        (2, 5, 5), 27),
    "torch_conv2d_groups": (lambda: nn.Conv2d(2, 4, 3, padding=(1, 0), groups=2, bias=False),
                            lambda m, x: torch.conv2d(x, m.weight, None, 1, (1, 0), 1, 2),
                            (2, 5, 5), 60),
    "conv_transpose2d_keywords": (lambda: nn.ConvTranspose2d(2, 3, 3, **_CT),
                                  lambda m, x: F.conv_transpose2d(x, m.weight, bias=m.bias,
                                                                  **_CT), (2, 3, 3), 108),
    "torch_conv_transpose2d_positional": (
        lambda: nn.ConvTranspose2d(2, 2, 2, stride=2, groups=2),
        lambda m, x: torch.conv_transpose2d(x, m.weight, m.bias, 2, 0, 0, 2, 1), (2, 3, 3), 72),
    "conv_transpose2d_one_pixel_one_channel": (
        lambda: nn.ConvTranspose2d(1, 2, 3), lambda m, x: F.conv_transpose2d(x, m.weight, m.bias),
        (1, 1, 1), 18),
}


@pytest.mark.parametrize("name", sorted(_CASES))
def test_functional_layer_is_the_module_node_with_the_same_radii(name: str) -> None:
    make, call, shape, feat = _CASES[name]
    torch.manual_seed(0)
    module_form = _Functional(make(), None, feat).eval()
    functional = _Functional(module_form.layer, call, feat).eval()
    functional.head = module_form.head
    op = {"Linear": "linear", "Conv2d": "conv2d"}.get(type(module_form.layer).__name__,
                                                       "conv_transpose2d")
    g = bk.capture(functional, shape)
    assert [n.op for n in g] == ["input", op, "relu", "flatten", "linear"]
    x = torch.rand(4, *shape, generator=torch.Generator().manual_seed(1))
    for method in ("sound", "crown"):
        a = bk.certify(functional, x, method).radius
        b = bk.certify(module_form, x, method).radius
        assert torch.equal(a, b), (method, a, b)


def test_weight_shared_between_module_and_functional_call_is_sound() -> None:
    """One ``nn.Linear`` applied twice, once as the module and once through ``F.linear``
    with its weight: every certificate below the float64 adversarial search's distance."""

    class Shared(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc, self.head = nn.Linear(8, 8), nn.Linear(8, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = torch.tanh(self.fc(x))
            return self.head(F.gelu(F.linear(h, self.fc.weight, self.fc.bias) + h))

    torch.manual_seed(3)
    model = Shared().eval()
    x = torch.rand(6, 8, generator=torch.Generator().manual_seed(4))
    _, dist = adversarial_search(model, x, steps=60, box=(0.0, 1.0))
    for method in ("sound", "crown"):
        r = bk.certify(model, x, method).radius
        assert bool((r > 0).all()) and bool((r <= dist).all()), (method, r, dist)


class _InputWeight(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.linear(x, torch.tanh(x)[:2]))


class _SamePadding(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c, self.head = nn.Conv2d(1, 1, 3), nn.Linear(16, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.conv2d(x, self.c.weight, self.c.bias, padding="same").flatten(1))


@pytest.mark.parametrize(("model", "shape", "match"), [
    (_InputWeight(), (4,), "batch dimension"),
    (_SamePadding(), (1, 4, 4), "padding='same'"),
])
def test_functional_layer_without_constant_arguments_is_refused_in_one_line(
        model: nn.Module, shape: tuple[int, ...], match: str) -> None:
    with pytest.raises(UnsupportedLayerError, match=match) as err:
        bk.capture(model.eval(), shape)
    assert "\n" not in str(err.value)
