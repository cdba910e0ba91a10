"""``alpha`` (CROWN with optimised ReLU slopes) and the parts of ``crown`` it relies on:
never below ``crown``, never above the exact radius or an adversarial example, batch
independent, options checked; ``crown``'s live-neuron refinement changes no bound."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import boundkit as bk
from boundkit.bounds import crown as crown_mod
from boundkit.testing import (
    adversarial_search,
    assert_crown_intervals_contain_samples,
    inputs_for,
    property_examples,
    random_inputs,
    random_network,
    small_relu_mlps,
)

FAST = settings(max_examples=property_examples(10), deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

_x = random_inputs


@FAST
@given(model=small_relu_mlps(max_hidden=8), data=st.data())
def test_alpha_lies_between_crown_and_the_exact_radius_on_small_relu_mlps(model, data) -> None:
    x = data.draw(inputs_for(model, n=(1, 3)))
    for box in (None, (0.0, 1.0)):
        a = bk.certify(model, x, "alpha", box=box, iterations=8).radius
        c = bk.certify(model, x, "crown", box=box).radius
        exact = bk.exact_radius(model, x, box=box)
        assert bool((a >= c).all()), (a, c)
        assert bool((a <= exact * (1 + 1e-9)).all()), (box, a, exact)


@pytest.mark.parametrize("kinds", [("conv2d", "relu", "maxpool2d"), ("linear", "relu"),
                                   ("conv2d", "relu", "avgpool2d")])
@pytest.mark.parametrize("seed", range(2))
def test_no_adversarial_example_inside_the_alpha_ball(kinds, seed) -> None:
    model = random_network(seed, layer_kinds=kinds, depth=3, width=12, scales=[1.5])
    x = _x(model, 4, seed)
    a = bk.certify(model, x, "alpha", iterations=10).radius
    c = bk.certify(model, x, "crown").radius
    assert bool((a >= c).all())
    _, norm = adversarial_search(model, x, steps=60, box=(0.0, 1.0), seed=seed)
    assert bool((a <= norm * (1 + 1e-9)).all()), (a, norm)


def test_alpha_improves_on_crown_on_a_net_with_unstable_relus() -> None:
    model = random_network(3, layer_kinds=("linear", "relu"), depth=3, width=24, scales=[2.0])
    x = _x(model, 8, 3)
    a = bk.certify(model, x, "alpha", box=None).radius
    c = bk.certify(model, x, "crown", box=None).radius
    assert bool((a >= c).all())
    assert float((a / c.clamp_min(1e-300)).max()) > 1.001  # the slopes do something


def test_alpha_radius_of_a_sample_alone_equals_its_radius_inside_a_batch() -> None:
    model = random_network(4, layer_kinds=("linear", "relu"), depth=2, width=12)
    x = _x(model, 5, 4)
    batch = bk.certify(model, x, "alpha", iterations=6).radius
    for i in (0, 4):
        alone = bk.certify(model, x[i : i + 1], "alpha", iterations=6).radius
        torch.testing.assert_close(alone, batch[i : i + 1], rtol=1e-9, atol=0.0)


def test_alpha_options_are_checked_in_one_line() -> None:
    model = random_network(0, layer_kinds=("linear", "relu"))
    x = _x(model, 2, 0)
    for bad in ({"iterations": 0}, {"iterations": 2.5}, {"lr": -1.0}, {"lr": "fast"},
                {"rtol": 0.0}, {"rtol": 2.0}, {"box": (1.0, 0.0)}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            bk.certify(model, x, "alpha", **bad)
    with pytest.raises(TypeError, match="no option"):
        bk.certify(model, x, "alpha", steps=3)


def test_alpha_is_a_registered_guarantee() -> None:
    from boundkit.bounds.method import is_guarantee

    assert "alpha" in bk.available_methods() and is_guarantee("alpha")


def _conv_pool_net(seed: int) -> nn.Module:
    torch.manual_seed(seed)  # LeNet-5's pattern: a max pooling reading a convolution
    model = nn.Sequential(nn.Conv2d(2, 4, 3), nn.MaxPool2d(2, 1), nn.Conv2d(4, 4, 2),
                          nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4, 6), nn.ReLU(),
                          nn.Linear(6, 3)).eval()
    model.boundkit_input_shape = (2, 6, 6)
    return model


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("pool_reads", ["relu", "conv"])
def test_live_refinement_gives_the_same_radii_as_refining_every_neuron(
        seed, pool_reads, monkeypatch) -> None:
    if pool_reads == "relu":
        model = random_network(seed, layer_kinds=("conv2d", "relu", "maxpool2d"), depth=3,
                               width=8, scales=[1.5])
    else:
        model = _conv_pool_net(seed)
    x = _x(model, 4, seed)
    live = bk.certify(model, x, "crown").radius
    plan = crown_mod.plan_crown

    def all_modes(graph):
        p = plan(graph)
        p.refine = {k: ("all" if v in ("live", "pool") else v) for k, v in p.refine.items()}
        return p

    monkeypatch.setattr(crown_mod, "plan_crown", all_modes)
    full = bk.certify(model, x, "crown").radius
    torch.testing.assert_close(live, full, rtol=1e-12, atol=0.0)


def test_chunked_refinement_gives_the_same_radii(monkeypatch) -> None:
    model = random_network(5, layer_kinds=("conv2d", "relu", "maxpool2d"), depth=3, width=8)
    x = _x(model, 3, 5)
    whole = bk.certify(model, x, "crown").radius
    monkeypatch.setattr(crown_mod, "CHUNK_ELEMENTS", 64)
    chunked = bk.certify(model, x, "crown").radius
    torch.testing.assert_close(whole, chunked, rtol=1e-12, atol=0.0)


def _leaky_net(slope: float, seed: int, conv: bool) -> nn.Module:
    torch.manual_seed(seed)
    if conv:
        model = nn.Sequential(nn.Conv2d(2, 4, 3), nn.LeakyReLU(slope), nn.MaxPool2d(2),
                              nn.Flatten(), nn.Linear(16, 12), nn.LeakyReLU(slope),
                              nn.Linear(12, 3))
        model.boundkit_input_shape = (2, 6, 6)
    else:
        model = nn.Sequential(nn.Linear(5, 16), nn.LeakyReLU(slope), nn.Linear(16, 16),
                              nn.LeakyReLU(slope), nn.Linear(16, 3))
        model.boundkit_input_shape = (5,)
    return model.eval()


@pytest.mark.parametrize("slope", [-0.5, 0.0, 0.1, 0.3, 1.0, 2.0])
@pytest.mark.parametrize("conv", [False, True])
def test_no_adversarial_example_inside_the_crown_or_alpha_ball_of_leaky_relu_nets(
        slope, conv) -> None:
    model = _leaky_net(slope, 7, conv)
    x = _x(model, 4, 7)
    c = bk.certify(model, x, "crown").radius
    a = bk.certify(model, x, "alpha", iterations=8).radius
    sound = bk.certify(model, x, "sound").radius
    assert bool((c >= sound).all()) and bool((a >= c).all())
    _, norm = adversarial_search(model, x, steps=80, box=(0.0, 1.0), seed=7)
    assert bool((a <= norm * (1 + 1e-9)).all()), (a, norm)


@pytest.mark.parametrize("slope", [-0.5, 0.2, 0.9])
def test_leaky_relu_intermediate_bounds_contain_sampled_activations(slope) -> None:
    model = _leaky_net(slope, 3, True)
    assert_crown_intervals_contain_samples(model, _x(model, 2, 3),
                                           torch.tensor([0.4, 0.8]), samples=400, seed=4)


def test_leaky_relu_with_slope_zero_certifies_as_relu() -> None:
    leaky = _leaky_net(0.0, 2, True)
    relu = _leaky_net(0.0, 2, True)
    relu[1], relu[5] = nn.ReLU(), nn.ReLU()
    relu.eval()
    x = _x(leaky, 3, 2)
    torch.testing.assert_close(bk.certify(leaky, x, "crown").radius,
                               bk.certify(relu, x, "crown").radius, rtol=1e-3, atol=0.0)


def test_absurd_alpha_options_are_refused_not_run() -> None:
    import numpy as np

    model = random_network(0, layer_kinds=("linear", "relu"))
    x = _x(model, 2, 0)
    for bad in ({"lr": 1e39}, {"lr": True}, {"iterations": 10**30}, {"rtol": True}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            bk.certify(model, x, "alpha", **bad)
    r = bk.certify(model, x, "alpha", iterations=np.int64(3)).radius
    assert bool((r >= 0).all())


def test_huge_weights_get_a_certificate_not_a_linear_algebra_error() -> None:
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3)).double().eval()
    with torch.no_grad():
        model[0].weight.mul_(1e200)
    model.boundkit_input_shape = (4,)
    x = _x(model, 2, 1).double()
    for method in ("sound", "crown"):
        cert = bk.certify(model, x, method)
        assert bool(torch.isfinite(cert.radius).all()) and bool((cert.radius >= 0).all())


@pytest.mark.parametrize("method", ["crown", "alpha"])
def test_crown_on_a_leaky_net_that_is_linear_on_the_ball_never_exceeds_its_exact_radius(
        method) -> None:
    # every LeakyReLU neuron is off on the whole ball (large negative bias), so the network
    # is the affine map W2 (s W1 x + s b1) + b2 there and its radius has a closed form; a
    # slope rounded anywhere (e.g. 0.01 to float32) shows up as a radius above it
    torch.manual_seed(0)
    s = 0.01
    model = nn.Sequential(nn.Linear(5, 7), nn.LeakyReLU(s), nn.Linear(7, 3)).double().eval()
    with torch.no_grad():
        model[0].bias.fill_(-1e4)
    model.boundkit_input_shape = (5,)
    x = torch.rand(4, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    w = model[2].weight @ (s * model[0].weight)
    logits = model(x)
    y = logits.argmax(1)
    exact = torch.full((4,), float("inf"), dtype=torch.float64)
    for j in range(3):
        g = (w[y] - w[j]).norm(dim=1)
        m = logits.gather(1, y[:, None]).squeeze(1) - logits[:, j]
        exact = torch.where(y == j, exact, torch.minimum(exact, m / g))
    r = bk.certify(model, x, method, box=None).radius
    assert bool((r <= exact).all()), (r, exact)
    assert bool((r >= exact * (1 - 1e-6)).all()), (r, exact)


@pytest.mark.parametrize("slope", [0.01, 0.1, -0.3])
def test_the_leaky_relu_relaxation_uses_the_float64_slope_exactly(slope) -> None:
    from boundkit.bounds.engine import graph_for
    from boundkit.bounds.relaxation import Interval, LinearBounds, RelaxContext, relaxation_rule

    model = nn.Sequential(nn.Linear(3, 4), nn.LeakyReLU(slope), nn.Linear(4, 2)).double().eval()
    x = torch.rand(1, 3, dtype=torch.float64)
    g = graph_for(model, x, None)
    node = next(n for n in g.nodes if n.op == "leaky_relu")
    ctx = RelaxContext(g, g.activations(x))
    lo = torch.tensor([[-3.0, -2.0, 1.0, -1.0]], dtype=torch.float64)  # off, off, on, unstable
    hi = torch.tensor([[-1.0, -0.5, 2.0, 3.0]], dtype=torch.float64)
    ctx.intervals[node.inputs[0]] = Interval(lo, hi)
    ctx.intervals[node.name] = Interval(torch.minimum(lo, slope * lo), hi)
    zero = torch.zeros(1, 2, dtype=torch.float64)
    A = torch.tensor([[[1.0, -1.0, 1.0, 1.0], [-1.0, 1.0, -1.0, -1.0]]], dtype=torch.float64)
    out = relaxation_rule(node).backward(node, ctx, LinearBounds(A, zero, zero))[0]
    s = torch.tensor(slope, dtype=torch.float64)
    assert out.A[0, 0, 0] == s and out.A[0, 0, 1] == -s and out.A[0, 0, 2] == 1.0
    assert out.A[0, 1, 0] == -s and out.A[0, 1, 2] == -1.0
    assert out.A[0, 0, 3] == 1.0  # u > -l: the lower line of slope 1
    chord = (3.0 - slope * -1.0) / 4.0
    assert out.A[0, 1, 3] == -torch.tensor(chord, dtype=torch.float64)


def test_alpha_on_a_net_whose_relus_never_reach_the_bound_runs_without_gradients() -> None:
    # LRN between the ReLU and the head has no linear relaxation: the walk stops there (a
    # sound-modulus interval), so no slope reaches the margins and nothing is optimised
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.ReLU(), nn.LocalResponseNorm(2),
                          nn.Flatten(), nn.Linear(48, 3)).eval()
    model.boundkit_input_shape = (2, 6, 6)
    x = _x(model, 3, 0)
    a = bk.certify(model, x, "alpha", iterations=3).radius
    c = bk.certify(model, x, "crown").radius
    assert bool((a >= c).all())


@pytest.mark.parametrize("seed", [5, 87, 136])
def test_a_refinement_walk_first_needed_in_a_later_iteration_gets_its_own_slopes(seed) -> None:
    # found by the relaxation soak: the optimised slopes move an interval across 0, so a
    # node first needs a refinement walk (and slopes of its own) after the first pass
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(1, 1, 3, stride=2), nn.ReLU(), nn.AvgPool2d(2, 2),
                          nn.Conv2d(1, 1, 3, padding=1), nn.BatchNorm2d(1), nn.ReLU(),
                          nn.Flatten(), nn.Linear(1, 3), nn.ReLU(), nn.Linear(3, 3))
    with torch.no_grad():
        bn = model[4]
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2)
        bn.weight.normal_()
        bn.bias.normal_()
    model.eval()
    x = torch.rand(4, 1, 6, 6)
    a = bk.certify(model, x, "alpha", box=None, iterations=5).radius
    c = bk.certify(model, x, "crown", box=None).radius
    assert bool((a >= c * (1 - 1e-3)).all()), (a, c)
    _, norm = adversarial_search(model, x, steps=60)
    assert bool((a <= norm).all()), (a, norm)
