"""Clear refusals: unsupported layers, training mode, NaN weights, size limits, bad shapes."""

from __future__ import annotations

import pytest
import torch
from helpers_exact import mlp
from torch import nn

from boundkit.errors import (
    BoundkitError,
    InputShapeError,
    ModelError,
    NonFiniteParameterError,
    UnsupportedLayerError,
)
from boundkit.exact import ExactSizeError, exact_radius


def test_unsupported_layer_names_node_and_op() -> None:
    model = nn.Sequential(nn.Linear(2, 3), nn.Sequential(nn.Identity(), nn.Tanh()),
                          nn.Linear(3, 2)).eval()
    with pytest.raises(UnsupportedLayerError) as info:
        exact_radius(model, torch.zeros(1, 2))
    assert info.value.node == "1.1" and info.value.op == "Tanh"
    assert info.value.method == "exact"


def test_custom_module_is_unsupported() -> None:
    class Net(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    with pytest.raises(UnsupportedLayerError, match="Net"):
        exact_radius(Net().eval(), torch.zeros(1, 2))


def test_softmax_in_the_middle_is_unsupported() -> None:
    model = nn.Sequential(nn.Linear(2, 3), nn.Softmax(dim=1), nn.Linear(3, 2)).eval()
    with pytest.raises(UnsupportedLayerError, match="last module"):
        exact_radius(model, torch.zeros(1, 2))


def test_training_mode_is_refused() -> None:
    model = nn.Sequential(nn.Linear(2, 3), nn.Dropout(0.1), nn.ReLU(), nn.Linear(3, 2))
    with pytest.raises(ModelError, match="training mode"):
        exact_radius(model, torch.zeros(1, 2))


def test_nan_weights_are_refused() -> None:
    model = mlp((2, 3, 2), 0)
    with torch.no_grad():
        model[0].weight[0, 0] = float("nan")
    with pytest.raises(NonFiniteParameterError, match="0.weight"):
        exact_radius(model, torch.zeros(1, 2))


def test_size_limit_names_neuron_count_and_limit() -> None:
    model = mlp((2, 20, 20, 2), 0)
    with pytest.raises(ExactSizeError, match=r"40 hidden ReLU.*max_neurons=32") as info:
        exact_radius(model, torch.zeros(1, 2))
    assert isinstance(info.value, BoundkitError)


def test_region_budget_is_a_clear_error() -> None:
    model = mlp((4, 12, 12, 3), 3)
    x = torch.randn(1, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with pytest.raises(ExactSizeError, match="max_regions=1"):
        exact_radius(model, x * 3, max_regions=1, rtol=0.0)


@pytest.mark.parametrize(
    "x",
    [torch.zeros(3), torch.zeros(1, 3), torch.zeros(0, 2), torch.full((1, 2), float("nan"))],
    ids=["no-batch", "wrong-size", "empty", "nan"],
)
def test_wrong_input_shape_is_refused(x: torch.Tensor) -> None:
    with pytest.raises(InputShapeError):
        exact_radius(mlp((2, 3, 2), 0), x)


def test_input_outside_box_is_refused() -> None:
    with pytest.raises(InputShapeError, match="outside the box"):
        exact_radius(mlp((2, 3, 2), 0), torch.full((1, 2), 2.0), box=(0.0, 1.0))


def test_over_budget_samples_are_nan_and_the_rest_solved_with_on_budget_nan() -> None:
    model = mlp((4, 12, 12, 3), 3)
    # about 5,700 branch-and-bound nodes for the first input, 234 for the second
    hard = torch.randn(1, 4, generator=torch.Generator().manual_seed(4), dtype=torch.float64) * 3
    easy = torch.zeros(1, 4, dtype=torch.float64)
    exact_easy = exact_radius(model, easy, rtol=0.0)
    res = exact_radius(model, torch.cat([hard, easy]), max_regions=20, rtol=0.0,
                       on_budget="nan", return_details=True)  # 20 regions = 400 nodes
    assert torch.isnan(res.radius[0]) and int(res.adversarial_class[0]) == -1
    assert bool(torch.isnan(res.perturbation[0]).all())
    assert torch.equal(res.radius[1:], exact_easy)  # the rest of the batch is still solved
    with pytest.raises(ExactSizeError, match="on_budget='nan'"):
        exact_radius(model, torch.cat([hard, easy]), max_regions=20, rtol=0.0)


def test_time_limit_is_a_budget() -> None:
    model = mlp((4, 12, 12, 3), 3)
    x = torch.randn(2, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 3
    with pytest.raises(ExactSizeError, match="time_limit=0"):
        exact_radius(model, x, time_limit=0.0, rtol=0.0)
    r = exact_radius(model, x, time_limit=0.0, on_budget="nan", rtol=0.0)
    assert bool(torch.isnan(r).all())


def test_bad_budget_options_are_refused() -> None:
    model = mlp((2, 4, 2), 0)
    with pytest.raises(ValueError, match="on_budget"):
        exact_radius(model, torch.zeros(1, 2), on_budget="skip")
    with pytest.raises(ValueError, match="time_limit"):
        exact_radius(model, torch.zeros(1, 2), time_limit=-1.0)
