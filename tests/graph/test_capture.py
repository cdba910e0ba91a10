"""Graph capture: typed nodes, shapes, residual merges, and the error cases."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import boundkit as bk
from boundkit.errors import (
    InputShapeError,
    NonFiniteParameterError,
    TrainingModeError,
    UnsupportedLayerError,
)


def lenet5() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 20, 5), nn.MaxPool2d(2), nn.Conv2d(20, 50, 5), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(800, 500), nn.ReLU(), nn.Linear(500, 10),
    ).eval()


def test_lenet5_is_captured_as_typed_chain_with_shapes():
    g = bk.capture(lenet5(), (1, 28, 28))
    ops = [n.op for n in g]
    assert ops == ["input", "conv2d", "maxpool2d", "conv2d", "maxpool2d", "flatten",
                   "linear", "relu", "linear"]
    shapes = [n.out_shape for n in g]
    assert shapes[1] == (20, 24, 24) and shapes[2] == (20, 12, 12)
    assert shapes[3] == (50, 8, 8) and shapes[4] == (50, 4, 4) and shapes[5] == (800,)
    assert g.is_chain() and g.num_classes == 10
    conv = g.nodes[1]
    assert conv.params["weight"].dtype == torch.float64
    assert conv.attrs["stride"] == (1, 1) and conv.attrs["kernel_size"] == (5, 5)


def test_mlp_with_softmax_head_uses_the_logits_before_softmax():
    m = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3), nn.Softmax(dim=1)).eval()
    g = bk.capture(m, (4,))
    assert [n.op for n in g] == ["input", "linear", "tanh", "linear", "softmax"]
    assert g.logits.op == "linear" and g.logits.out_shape == (3,)


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(6, 6)
        self.b = nn.Linear(12, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.a(x)) + x
        h = torch.cat([h, torch.tanh(x)], dim=1)
        return self.b(h.view(h.size(0), -1))


def test_residual_add_and_cat_are_nodes_of_the_graph():
    g = bk.capture(Residual().eval(), (6,))
    ops = {n.op for n in g}
    assert {"add", "cat", "relu", "tanh", "reshape"} <= ops
    add = next(n for n in g if n.op == "add")
    assert len(add.inputs) == 2
    assert not g.is_chain()


def test_functional_activations_are_recognised():
    class Fn(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.l1, self.l2 = nn.Linear(3, 4), nn.Linear(4, 2)

        def forward(self, x):
            return self.l2(torch.sigmoid(F.softplus(self.l1(x))))

    g = bk.capture(Fn().eval(), (3,))
    assert [n.op for n in g] == ["input", "linear", "softplus", "sigmoid", "linear"]


def test_training_mode_is_refused():
    m = nn.Sequential(nn.Linear(2, 2))
    with pytest.raises(TrainingModeError, match="training mode"):
        bk.capture(m, (2,))


def test_nan_weights_are_refused_with_the_parameter_name():
    m = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 2)).eval()
    with torch.no_grad():
        m[2].weight[0, 0] = float("nan")
    with pytest.raises(NonFiniteParameterError, match=r"2\.weight"):
        bk.certify(m, torch.zeros(1, 2))


def test_wrong_input_shape_is_refused():
    m = nn.Sequential(nn.Linear(4, 2)).eval()
    with pytest.raises(InputShapeError, match="cannot run"):
        bk.capture(m, (5,))
    with pytest.raises(InputShapeError):
        bk.certify(m, torch.zeros(3, 5))
    with pytest.raises(InputShapeError, match="NaN"):
        bk.certify(m, torch.full((1, 4), float("nan")))


def test_non_logit_output_is_refused():
    m = nn.Sequential(nn.Conv2d(1, 2, 3)).eval()
    with pytest.raises(InputShapeError, match="logits"):
        bk.capture(m, (1, 5, 5))


def test_unknown_layer_is_named_in_the_error_for_each_method():
    m = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Mish(), nn.Flatten(), nn.Linear(18, 2)).eval()
    for method in ("sound", "peck2017"):
        with pytest.raises(UnsupportedLayerError, match=r"'_1'.*Mish.*" + method + r".*path '1'"):
            bk.certify(m, torch.zeros(1, 1, 5, 5), method=method)


def test_peck2017_names_a_linear_layer_outside_the_thesis_constructions():
    m = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3), nn.Linear(3, 2)).eval()
    with pytest.raises(UnsupportedLayerError, match=r"'_0'.*linear.*peck2017"):
        bk.certify(m, torch.zeros(1, 3), method="peck2017")


def test_peck2017_refuses_residual_graphs_naming_the_merge():
    with pytest.raises(UnsupportedLayerError, match="add.*peck2017"):
        bk.certify(Residual().eval(), torch.zeros(2, 6), method="peck2017")
