"""Linear classifiers: closed form vs the QP solver, attainment, and the box."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from boundkit.exact import exact_radius, exact_radius_linear, min_norm_point


def _qp_linear(w: np.ndarray, b: np.ndarray, x: np.ndarray) -> float:
    f = w @ x + b
    c = int(np.argmax(f))
    best = np.inf
    for k in range(len(b)):
        if k == c:
            continue
        g = w[k] - w[c]
        r = min_norm_point(g[None], np.array([-(g @ x + b[k] - b[c])]))
        if r is not None:
            best = min(best, float(np.linalg.norm(r)))
    return best


@pytest.mark.parametrize("seed", range(5))
def test_linear_closed_form_equals_min_norm_qp(seed: int) -> None:
    rng = np.random.default_rng(seed)
    w, b = rng.normal(size=(5, 7)), rng.normal(size=5)
    x = rng.normal(size=(6, 7))
    rad = exact_radius_linear(w, b, x)
    for i in range(6):
        assert rad[i].item() == pytest.approx(_qp_linear(w, b, x[i]), rel=1e-9)


def test_linear_model_radius_is_attained_and_tight() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(6, 4)).double().eval()
    x = torch.randn(10, 2, 3, dtype=torch.float64)
    res = exact_radius(model, x, return_details=True)
    w, b = model[1].weight.detach(), model[1].bias.detach()
    torch.testing.assert_close(res.radius, exact_radius_linear(w, b, x.reshape(10, 6)))
    torch.testing.assert_close(res.perturbation.flatten(1).norm(dim=1), res.radius)
    with torch.no_grad():
        c = model(x).argmax(1)
        beyond = model(x + res.perturbation * (1 + 1e-6)).argmax(1)
        before = model(x + res.perturbation * (1 - 1e-6)).argmax(1)
    assert (beyond != c).all()
    assert (before == c).all()


def test_linear_equal_rows_give_infinite_radius_and_ties_zero() -> None:
    w = torch.tensor([[1.0, 0.0], [1.0, 0.0]], dtype=torch.float64)
    b = torch.tensor([1.0, 0.0], dtype=torch.float64)
    assert exact_radius_linear(w, b, torch.zeros(1, 2)).item() == float("inf")
    b2 = torch.tensor([0.0, 0.0], dtype=torch.float64)
    w2 = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    assert exact_radius_linear(w2, b2, torch.zeros(1, 2)).item() == 0.0


def test_linear_boxed_radius_is_at_least_unboxed_and_matches_projection() -> None:
    # f_0 - f_1 = 1 - z_0: boundary z_0 = 1.  From x = (0, 0) the nearest point is (1, 0).
    w = torch.tensor([[0.0, 0.0], [1.0, 0.0]], dtype=torch.float64)
    model = nn.Linear(2, 2).double().eval()
    with torch.no_grad():
        model.weight.copy_(w)
        model.bias.copy_(torch.tensor([1.0, 0.0]))
    x = torch.zeros(1, 2, dtype=torch.float64)
    assert exact_radius(model, x).item() == pytest.approx(1.0, rel=1e-12)
    assert exact_radius(model, x, box=(-1.0, 2.0)).item() == pytest.approx(1.0, rel=1e-9)
    assert exact_radius(model, x, box=(-1.0, 0.5)).item() == float("inf")
    # Tilted boundary z_0 + z_1 = 1: unboxed nearest point (0.5, 0.5), radius 1/sqrt(2);
    # with z_1 <= 0.1 the nearest feasible point is (0.9, 0.1).
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[0.0, 0.0], [1.0, 1.0]]))
    unboxed = exact_radius(model, x).item()
    boxed = exact_radius(model, x, box=(torch.tensor([-5.0, -5.0]), torch.tensor([5.0, 0.1])))
    assert unboxed == pytest.approx(2**-0.5, rel=1e-12)
    assert boxed.item() == pytest.approx(float(np.hypot(0.9, 0.1)), rel=1e-8)
    assert boxed.item() >= unboxed
