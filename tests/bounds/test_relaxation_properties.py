"""Properties of the linear-relaxation certificates ``crown`` and ``alpha`` (issue 11, part 5):
never above the exact radius on small ReLU conv nets (the MLP case is in ``test_crown.py``
and ``test_alpha.py``), no adversarial example inside their balls on pooling, batch norm,
LRN, residual, ``cat``, smooth and LeakyReLU networks, and ``alpha >= crown >= sound``
per sample; plus the strategies and checks these tests share with
``benchmarks/relaxation_soak.py``.

Example counts come from :func:`boundkit.testing.property_examples`: small under the ``ci``
profile, the profile's under ``soak`` / ``thorough``:
``BOUNDKIT_EXAMPLES=10000 pytest tests/bounds/test_relaxation_properties.py
--hypothesis-profile=soak``.
"""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from torch import nn

import boundkit as bk
import boundkit.testing as bkt
from boundkit.errors import UnsupportedLayerError
from boundkit.exact.core import to_affine_relu
from boundkit.testing import (
    check_no_adversarial_in_relaxation_ball,
    check_relaxation_below_exact,
    check_relaxation_order,
    composed_networks,
    describe_case,
    inputs_for,
    property_examples,
    random_network,
    relu_count,
    small_networks,
    small_relu_convnets,
    unstable_neurons,
)


def _budget(ci_examples: int) -> settings:
    return settings(max_examples=property_examples(ci_examples), deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much])


# ---------------------------------------------------------------- the properties
@_budget(8)
@given(model=small_relu_convnets(max_relus=12), box=st.sampled_from([None, (0.0, 1.0)]),
       data=st.data())
def test_crown_and_alpha_never_exceed_the_exact_radius_on_small_relu_convnets(
        model: nn.Module, box: tuple[float, float] | None, data: st.DataObject) -> None:
    x = data.draw(inputs_for(model, n=(1, 3)))
    r = check_relaxation_below_exact(model, x, box, time_limit=10.0)
    assert r["unknown"] == 0, "the exact search of a 12-ReLU net ran past 10 s"


_ADVERSARIAL_NETS = st.one_of(small_networks(max_depth=2, max_width=8), composed_networks(5))


@_budget(8)
@given(model=_ADVERSARIAL_NETS, seed=st.integers(0, 2**20), data=st.data())
def test_no_adversarial_example_inside_the_crown_or_alpha_ball_of_pooling_norm_residual_cat_smooth_and_leaky_nets(  # noqa: E501
        model: nn.Module, seed: int, data: st.DataObject) -> None:
    x = data.draw(inputs_for(model, n=(1, 3)))
    r = check_no_adversarial_in_relaxation_ball(model, x, seed=seed)
    assume(r is not None)  # a composition capture refuses: nothing to certify


@_budget(10)
@given(model=st.one_of(_ADVERSARIAL_NETS, small_relu_convnets()), data=st.data())
def test_alpha_is_at_least_crown_is_at_least_sound_per_sample_on_random_networks(
        model: nn.Module, data: st.DataObject) -> None:
    x = data.draw(inputs_for(model, n=(1, 4)))
    try:
        check_relaxation_order(model, x)
    except UnsupportedLayerError:
        assume(False)


# ---------------------------------------------------------------- strategies and checks
@_budget(15)
@given(model=small_relu_convnets(max_relus=12))
def test_small_relu_convnets_fit_the_exact_oracle_within_their_relu_budget(
        model: nn.Module) -> None:
    assert relu_count(model) <= 12
    net = to_affine_relu(model, model.boundkit_input_shape)
    assert net.num_hidden == relu_count(model)
    assert isinstance(model[-1], nn.Linear) and not model.training


def test_small_relu_convnets_cover_strides_padding_pooling_and_batch_norm() -> None:
    seen: set[str] = set()

    @settings(max_examples=60, deadline=None, database=None, derandomize=True)
    @given(small_relu_convnets())
    def collect(model: nn.Module) -> None:
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                seen.add(f"stride{m.stride[0]}")
                seen.add(f"pad{m.padding[0]}")
            seen.add(type(m).__name__)
        seen.add(f"in{model.boundkit_input_shape}")

    collect()
    assert {"stride1", "stride2", "pad0", "pad1", "AvgPool2d", "BatchNorm2d", "Linear",
            "in(1, 5, 5)", "in(2, 4, 4)"} <= seen, seen


def test_the_checks_catch_an_inflated_certificate_and_print_a_reproducer(monkeypatch) -> None:
    model = random_network(3, layer_kinds=("linear", "relu"), depth=2, width=6, scales=[2.0])
    x = bkt.random_inputs(model, 3, 3)
    true = bkt._certify

    def inflated(m: nn.Module, xs: torch.Tensor, method: str, **options: object) -> object:
        cert = true(m, xs, method, **options)
        if method == "alpha":
            cert.radius = cert.radius * 50 + 1.0
        return cert

    check_relaxation_order(model, x)  # the true certificates pass
    check_relaxation_below_exact(model, x, (0.0, 1.0))
    check_no_adversarial_in_relaxation_ball(model, x)
    monkeypatch.setattr(bkt, "_certify", inflated)
    with pytest.raises(AssertionError, match=r"alpha radius .* > exact radius(.|\n)*x = "):
        check_relaxation_below_exact(model, x, (0.0, 1.0))
    with pytest.raises(AssertionError, match=r"alpha radius .* > adversarial distance"):
        check_no_adversarial_in_relaxation_ball(model, x)
    deflated = {"sound": torch.ones(3), "crown": torch.full((3,), 2.0),
                "alpha": torch.tensor([3.0, 1.5, 2.0])}
    with pytest.raises(AssertionError, match=r"samples \[1\]"):
        check_relaxation_order(model, x, radii=deflated)


def test_the_reproducer_rebuilds_the_model_and_its_inputs() -> None:
    model = random_network(5, layer_kinds=("conv2d", "batchnorm", "relu"), depth=2)
    x = bkt.random_inputs(model, 2, 5)
    text = describe_case(model, x, box=(0.0, 1.0))
    env: dict[str, object] = {}
    exec("\n".join(ln for ln in text.splitlines()
                   if ln.startswith(("state_dict =", "x =", "box ="))), env)
    clone = copy.deepcopy(model)
    with torch.no_grad():
        for t in clone.state_dict().values():
            t.zero_()
    clone.load_state_dict({k: torch.tensor(v, dtype=model.state_dict()[k].dtype)
                           for k, v in env["state_dict"].items()})
    xs = torch.tensor(env["x"], dtype=torch.float64)
    torch.testing.assert_close(clone.double()(xs), model.double()(x.double()),
                               rtol=0, atol=0)
    assert env["box"] == (0.0, 1.0) and text.startswith("model = Sequential(")


def test_unstable_neurons_are_none_at_radius_zero_and_some_on_a_large_ball() -> None:
    model = random_network(1, layer_kinds=("linear", "relu"), depth=2, width=8, scales=[2.0])
    x = bkt.random_inputs(model, 4, 1)
    assert unstable_neurons(model, x, torch.zeros(4)).tolist() == [0, 0, 0, 0]
    assert bool((unstable_neurons(model, x, torch.full((4,), 0.5), None) > 0).all())
    smooth = random_network(1, layer_kinds=("linear", "tanh"), depth=2)
    assert unstable_neurons(smooth, x, torch.full((4,), 0.5)).tolist() == [0, 0, 0, 0]


def test_property_examples_follow_the_loaded_profile() -> None:
    before = settings._current_profile
    try:
        settings.load_profile("ci")
        assert property_examples(7) == 7
        settings.register_profile("relaxation-test-soak", max_examples=12345)
        settings.load_profile("relaxation-test-soak")
        assert property_examples(7) == 12345
    finally:
        settings.load_profile(before)


def test_an_unsupported_composition_is_not_counted_as_certified() -> None:
    class Weird(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.fft.fft(x).real[:, :3]

    model = Weird().eval()
    x = torch.rand(2, 5)
    with pytest.raises(UnsupportedLayerError):
        bk.certify(model, x, "crown")
    assert check_no_adversarial_in_relaxation_ball(model, x) is None
