"""``F.layer_norm`` with its ``normalized_shape`` read from a tensor's shape is refused in one
line naming the node (it raised a raw ``TypeError`` inside capture before)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import boundkit as bk
from boundkit.errors import UnsupportedLayerError


class ShapeFromTensor(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 6), nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        return self.b(F.layer_norm(h, h.shape[-1:]))


def test_normalized_shape_from_a_tensor_shape_is_refused_in_one_line() -> None:
    model = ShapeFromTensor().double().eval()
    x = torch.rand(2, 4, dtype=torch.float64)
    with pytest.raises(UnsupportedLayerError) as err:
        bk.certify(model, x, "crown")
    msg = str(err.value)
    assert "\n" not in msg and "normalized_shape" in msg and "layer_norm" in msg


def test_normalized_shape_as_constant_sizes_is_captured() -> None:
    class Constant(ShapeFromTensor):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.b(F.layer_norm(self.a(x), (6,)))

    model = Constant().double().eval()
    x = torch.rand(2, 4, dtype=torch.float64)
    assert (bk.certify(model, x, "crown").radius > 0).all()
