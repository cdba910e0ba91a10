"""boundkit.testing: strategies, the float64 search, assert_sound, check_rule_soundness,
and the worked example of docs/extending.md (a LeakyReLU rule)."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import boundkit as bk
from boundkit.bounds.registry import LipschitzRule, unregister_rule
from boundkit.testing import (
    adversarial_search,
    assert_sound,
    check_rule_soundness,
    inputs_for,
    random_network,
    small_networks,
    small_relu_mlps,
)

FAST = settings(max_examples=6, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# --------------------------------------------------------------- the docs' worked example
class LeakyReLURule(LipschitzRule):
    """LeakyReLU(z) = max(z, a z) is Lipschitz with constant max(1, |a|)."""

    def compute_lipschitz(self, node, graph) -> float:
        return max(1.0, abs(float(node.module.negative_slope)))


@pytest.fixture
def leaky_rule():
    bk.register_rule(nn.LeakyReLU, "sound", LeakyReLURule(), replace=True)
    yield
    unregister_rule(nn.LeakyReLU, "sound")


def test_leaky_relu_rule_worked_example(leaky_rule):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.LeakyReLU(0.1), nn.Linear(8, 3)).eval()
    x = torch.rand(5, 4)
    cert = bk.certify(model, x)  # captured as op "leakyrelu", certified with our rule
    assert "leakyrelu" in cert.node_ops.values()
    assert (cert.radius > 0).all()
    out = assert_sound(model, x, attack_steps=60)
    assert (out["upper"] >= cert.radius).all()


def test_check_rule_soundness_accepts_correct_rule(leaky_rule):
    check_rule_soundness(nn.LeakyReLU, module_factory=lambda: nn.LeakyReLU(2.5), n_networks=3,
                         attack_steps=30)


def test_check_rule_soundness_catches_wrong_rule():
    class TooOptimistic(LipschitzRule):
        def compute_lipschitz(self, node, graph) -> float:
            return 0.2  # wrong: LeakyReLU with slope 2.5 stretches by 2.5

    bk.register_rule(nn.LeakyReLU, "sound", TooOptimistic(), replace=True)
    try:
        with pytest.raises(AssertionError, match="leakyrelu"):
            check_rule_soundness(nn.LeakyReLU, module_factory=lambda: nn.LeakyReLU(2.5),
                                 n_networks=2, attack_steps=20)
    finally:
        unregister_rule(nn.LeakyReLU, "sound")


def test_missing_rule_is_reported():
    with pytest.raises(AssertionError, match="no rule registered"):
        check_rule_soundness(nn.Mish, n_networks=1)


# ------------------------------------------------------------------------- assert_sound
def test_assert_sound_flags_inflated_certificate(monkeypatch):
    from boundkit.bounds import engine

    real = engine.certify

    def inflated(model, x, method="sound", **kw):
        cert = real(model, x, method, **kw)
        cert.radius = cert.radius * 1e3
        cert.trace = {k: v * 1e3 for k, v in cert.trace.items()}
        return cert

    monkeypatch.setattr(engine, "certify", inflated)
    model = random_network(3, layer_kinds=("linear", "relu"))
    x = torch.rand(3, 5)
    with pytest.raises(AssertionError, match=r"sample 0, method 'sound'.*layer"):
        assert_sound(model, x, attack_steps=20, use_attacks=False)


def test_search_finds_linear_boundary_exactly():
    """For a linear classifier the minimal perturbation is known in closed form."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 3)).eval()
    x = torch.rand(6, 5)
    xa, norm = adversarial_search(model, x, steps=30)
    exact = bk.exact_radius(model, x)
    assert torch.isfinite(norm).all()
    assert (norm >= exact * (1 - 1e-9)).all()
    assert torch.allclose(norm, exact, rtol=1e-3)
    m64 = model.double()
    assert (m64(xa).argmax(1) != m64(x.double()).argmax(1)).all()


@FAST
@given(st.data())
def test_sound_on_small_relu_mlps_with_exact_oracle(data):
    model = data.draw(small_relu_mlps(max_hidden=6))
    x = data.draw(inputs_for(model, n=(1, 2)))
    out = assert_sound(model, x, attack_steps=30, use_attacks=False)
    exact = bk.exact_radius(model, x)
    # the exact oracle was used: the upper bound is the exact radius wherever it is finite
    assert torch.equal(torch.isfinite(out["upper"]), torch.isfinite(exact))
    fin = torch.isfinite(exact)
    assert (out["upper"][fin] <= exact[fin]).all()
    assert (out["certificate"].radius[fin] <= exact[fin]).all()


@FAST
@given(st.data())
def test_sound_on_random_networks(data):
    model = data.draw(small_networks(max_depth=2, max_width=6))
    x = data.draw(inputs_for(model, n=(1, 2)))
    assert_sound(model, x, attack_steps=30, use_attacks=False, exact=False)


@settings(max_examples=5, deadline=None)
@given(small_networks(("conv2d", "maxpool2d", "avgpool2d", "batchnorm", "lrn", "tanh")))
def test_strategy_builds_eval_image_networks(model):
    assert not any(m.training for m in model.modules())
    assert model.boundkit_input_shape == (2, 6, 6)
    out = model(torch.rand(2, *model.boundkit_input_shape))
    assert out.shape[0] == 2 and out.dim() == 2 and torch.isfinite(out).all()


def test_inputs_for_needs_a_shape():
    with pytest.raises(ValueError):
        inputs_for(nn.Linear(2, 2))


def _boundary_outside_the_box() -> nn.Module:
    """``margin = relu(x0) - relu(-x0) + 0.05``: the class changes only at ``x0 < -0.05``,
    outside the box [0, 1]."""
    m = nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 2)).eval()
    with torch.no_grad():
        m[0].weight.copy_(torch.tensor([[1.0, 0], [-1, 0], [0, 1], [0, -1]]))
        m[0].bias.zero_()
        m[2].weight.copy_(torch.tensor([[1.0, -1, 0, 0], [0, 0, 0, 0]]))
        m[2].bias.copy_(torch.tensor([0.05, 0.0]))
    return m


def test_assert_sound_bounds_a_boxed_certificate_by_points_inside_the_box() -> None:
    """crown certifies with the box [0, 1] by default; the only adversarial examples lie
    outside it, so no upper bound may come from them (it used to report a violation)."""
    m = _boundary_outside_the_box()
    x = torch.tensor([[0.0, 0.5], [0.0, 0.2]])
    out = assert_sound(m, x, "crown", attack_steps=20)
    assert torch.isinf(out["upper"]).all()
    plain = assert_sound(m, x, "crown", box=None, attack_steps=20)
    assert torch.allclose(plain["upper"], torch.full((2,), 0.05, dtype=torch.float64), rtol=1e-6)
    assert (plain["certificate"].radius > 0.04).all()  # and <= upper: assert_sound checked
