"""Small ReLU networks: verified attack norms never beat the exact radius; ``best`` is close."""

from __future__ import annotations

import pytest
import torch

import boundkit.attacks as A
from tests.attacks.conftest import relu_net

exact_mod = pytest.importorskip("boundkit.exact")

BUDGETS = {
    "deepfool": {},
    "ddn": {"steps": 100},
    "fmn": {"steps": 100, "init": "deepfool"},
    "cw": {"steps": 100, "binary_search_steps": 5, "initial_const": 0.1},
    "pdgd": {"steps": 100},
    "pdpgd": {"steps": 100},
    "alma": {"steps": 100},
    "fgs": {},
    "fgv": {},
}


@pytest.fixture(scope="module")
def relu_case():
    model = relu_net((4, 10, 10, 3), seed=0)
    x = torch.randn(16, 4, generator=torch.Generator().manual_seed(1))
    exact = exact_mod.exact_radius(model, x)  # no box: the attacks run with box=None
    return model, x, exact


@pytest.mark.parametrize("method", sorted(BUDGETS))
def test_verified_norm_never_below_exact_radius(method, relu_case):
    model, x, exact = relu_case
    res = A.attack(model, x, method, box=None, **BUDGETS[method])
    assert bool(res.success.any())
    ok = res.success
    # exact_radius guarantees (1 - rtol) R <= rho <= R
    assert bool((res.norm[ok] >= exact[ok] * (1 - 1e-5)).all())


def test_best_within_5pct_of_exact_on_most_samples(relu_case):
    model, x, exact = relu_case
    res = A.attack(model, x, "best", budget=150, box=None)
    finite = torch.isfinite(exact)
    assert bool(res.success[finite].all())
    ratio = res.norm[finite] / exact[finite]
    assert float((ratio <= 1.05).double().mean()) >= 0.8
    assert float(ratio.min()) >= 1 - 1e-5
