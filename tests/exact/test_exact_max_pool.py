"""Max pooling in the exact solver: written as ReLU layers (a tournament per window), the
chain equals the model everywhere, and the exact radius matches an independent brute force
and sits between a certificate and an attack."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from helpers_exact import polar_brute_force
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import boundkit as bk
from boundkit.errors import BoundkitError, UnsupportedLayerError
from boundkit.exact import to_affine_relu
from boundkit.exact.convert import max_pool_layers


def _pool(kind: str, k: int, stride: int, pad: int, dil: int, ceil: bool) -> nn.Module:
    if kind == "max1d":
        return nn.MaxPool1d(k, stride=stride, padding=pad, dilation=dil, ceil_mode=ceil)
    if kind == "max2d":
        return nn.MaxPool2d(k, stride=stride, padding=pad, dilation=dil, ceil_mode=ceil)
    if kind == "adaptive1d":
        return nn.AdaptiveMaxPool1d(k)
    return nn.AdaptiveMaxPool2d((k, k + 1))


@st.composite
def pooled_nets(draw: st.DrawFn) -> tuple[nn.Module, tuple[int, ...]]:
    """A small net with one or two max poolings of any setting torch accepts, after a ReLU
    (nonnegative inputs), before one (swapped) or between affine layers (either sign)."""
    seed = draw(st.integers(0, 10_000))
    torch.manual_seed(seed)
    kind = draw(st.sampled_from(["max1d", "max2d", "adaptive1d", "adaptive2d"]))
    k = draw(st.integers(1, 3))
    stride = draw(st.integers(1, 3))
    pad = draw(st.integers(0, k // 2))
    dil = draw(st.integers(1, 2))
    ceil = draw(st.booleans())
    where = draw(st.sampled_from(["after_relu", "before_relu", "between"]))
    two = draw(st.booleans())
    ch = 2
    if kind.endswith("1d"):
        shape: tuple[int, ...] = (ch, 7)
        conv: nn.Module = nn.Conv1d(ch, ch, 2)
    else:
        shape = (ch, 6, 6)
        conv = nn.Conv2d(ch, ch, 2)
    pool = _pool(kind, k, stride, pad, dil, ceil)
    if where == "after_relu":
        body = [conv, nn.ReLU(), pool]
    elif where == "before_relu":
        body = [conv, pool, nn.ReLU()]
    else:
        body = [conv, pool]
    if two:
        body += [nn.ReLU(), _pool("max1d" if kind.endswith("1d") else "max2d", 2, 1, 0, 1,
                                   False)]
    model = nn.Sequential(*body, nn.Flatten())
    try:
        with torch.no_grad():
            width = model(torch.zeros(1, *shape)).shape[1]
    except RuntimeError:  # a setting torch refuses for this size (it refuses it alike)
        width = 0
    if width == 0:
        return pooled_nets_fallback(), (1, 6, 6)
    return nn.Sequential(*body, nn.Flatten(), nn.Linear(width, 3)).double().eval(), shape


def pooled_nets_fallback() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 2, 2), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(2 * 2 * 2, 3)).double().eval()


@settings(max_examples=60, deadline=None)
@given(pooled_nets(), st.integers(0, 2**31 - 1))
def test_chain_with_max_pooling_equals_the_model_everywhere(case, seed) -> None:
    """Property: the chain computes the model's logits (float64, to rounding) at random
    points of every scale, its always-active units read values >= 0 there, and each twin
    pair reads ``b`` and ``-b``."""
    model, shape = case
    net = to_affine_relu(model, shape)
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(64, *shape, generator=gen, dtype=torch.float64)
    z = z * torch.logspace(-3, 3, 64, dtype=torch.float64).view(-1, *([1] * len(shape)))
    with torch.no_grad():
        ref = model(z).numpy()
    h = z.reshape(64, -1).numpy()
    scale = 1.0
    for i, (w, b) in enumerate(zip(net.weights[:-1], net.biases[:-1])):
        pre = h @ w.T + b
        assert np.all(pre[:, net.always_active(i)] >= 0.0)
        pairs = net.twin_pairs(i)
        np.testing.assert_allclose(pre[:, pairs[:, 0]], -pre[:, pairs[:, 1]], rtol=0,
                                   atol=1e-12 * (1 + np.abs(pre).max()))
        h = np.maximum(pre, 0.0)
        scale = max(scale, float(np.abs(pre).max(initial=0.0)))
    got = net.forward(z.reshape(64, -1).numpy())
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-12 * scale * max(1, len(net.weights)))


def test_tournament_of_one_window_is_its_max() -> None:
    """``max_pool_layers`` on one window of 5 (either sign): 3 rounds, the max (to the
    rounding of ``b + (a - b)``: a few ulps)."""
    for nonneg in (True, False):
        layers, fixed, twins, out = max_pool_layers([np.arange(5)], 5, nonneg)
        assert len(layers) == 3
        gen = np.random.default_rng(0)
        for _ in range(100):
            v = gen.standard_normal(5)
            v = np.abs(v) if nonneg else v
            h = v
            for s_mat in layers:
                h = np.maximum(s_mat @ h, 0.0)
            assert abs((out @ h)[0] - v.max()) <= 4e-16 * 3 * np.abs(v).max()
        assert all(f.any() for f in fixed) == nonneg
        assert all(len(t) for t in twins) == (not nonneg)


def _net_2d(kind: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    if kind == 0:  # pooled ReLU outputs: carries always active
        body: list[nn.Module] = [nn.Linear(2, 8), nn.ReLU(), nn.Unflatten(1, (2, 4)),
                                 nn.MaxPool1d(2), nn.Flatten(), nn.Linear(4, 3)]
    elif kind == 1:  # padded, overlapping, ceil_mode windows of ReLU outputs
        body = [nn.Linear(2, 9), nn.ReLU(), nn.Unflatten(1, (1, 9)),
                nn.MaxPool1d(4, stride=2, ceil_mode=True, padding=1), nn.Flatten(),
                nn.Linear(5, 3)]
    else:  # values of either sign: twin carries
        body = [nn.Linear(2, 6), nn.Unflatten(1, (2, 3)), nn.MaxPool1d(2, stride=1),
                nn.Flatten(), nn.Linear(4, 3)]
    return nn.Sequential(*body).double().eval()


@pytest.mark.parametrize("kind,seed", [(0, 0), (0, 2), (1, 0), (1, 3), (2, 0), (2, 1)])
def test_exact_radius_with_max_pooling_matches_a_polar_brute_force(kind, seed) -> None:
    """2-D inputs: the exact radius equals the first crossing over a dense fan of rays (an
    upper bound converging to it) to 0.1%, and never exceeds it."""
    model = _net_2d(kind, seed)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 2, generator=gen, dtype=torch.float64)
    res = bk.exact_radius(model, x, return_details=True, max_neurons=64)
    for i in range(2):
        r = float(res.radius[i])
        bf = polar_brute_force(model, x[i], n_dirs=3000, t_max=8.0, n_steps=3000)
        if math.isinf(bf):
            assert r > 8.0  # no crossing within the fan's reach
            continue
        assert r <= bf * (1 + 1e-6)
        assert bf <= r * 1.001 + 1e-9
        w = x[i] + res.witness[i]
        with torch.no_grad():
            out = model(w[None])[0]
        assert int(out.argmax()) != int(res.predicted_class[i])


def test_exact_radius_of_a_small_cnn_with_max_pooling_lies_between_crown_and_the_attack(
) -> None:
    """Conv-ReLU-MaxPool-Linear on [1, 3, 3] in the box: ``crown`` <= exact <= attack on
    every sample, every witness adversarial when the model is re-run."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 2), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                          nn.Linear(2, 3)).double().eval()
    x = torch.rand(4, 1, 3, 3, dtype=torch.float64)
    box = (0.0, 1.0)
    res = bk.exact_radius(model, x, box=box, return_details=True, time_limit=60,
                          on_budget="nan")
    crown = bk.certify(model, x, "crown", box=box).radius.double()
    att = bk.attack(model, x, "best", box=box)
    assert torch.isfinite(res.radius).all(), res.reason
    assert torch.all(crown <= res.radius * (1 + 1e-9))
    assert att.success.all()
    assert torch.all(res.radius <= att.norm.double() * (1 + 1e-6))
    w = x + res.witness
    assert torch.all((w >= 0) & (w <= 1))
    with torch.no_grad():
        pred = model(w).argmax(1)
    assert torch.all(pred != res.predicted_class)


def test_return_indices_is_refused_by_name() -> None:
    """A pooling that returns (values, indices) is named by the converter; the entry point
    meets it earlier, in the one input check every entry point runs: the model cannot run
    on a tensor (its pooling hands a pair to the next layer), and the error says so."""
    model = nn.Sequential(nn.MaxPool1d(2, return_indices=True), nn.Flatten(),
                          nn.Linear(2, 2)).eval()
    with pytest.raises(UnsupportedLayerError, match="return_indices"):
        to_affine_relu(model, (1, 4))
    with pytest.raises(BoundkitError, match="cannot run.*tuple"):
        bk.exact_radius(model, torch.zeros(1, 1, 4))


def test_a_pooling_with_no_output_is_a_clear_error() -> None:
    """``AdaptiveMaxPool1d(0)`` runs in torch (constant logits) but leaves nothing to
    search: a one-line model error, not a reshape crash."""
    model = nn.Sequential(nn.Linear(6, 6), nn.Unflatten(1, (1, 6)), nn.AdaptiveMaxPool1d(0),
                          nn.Flatten(), nn.Linear(0, 2)).eval()
    with pytest.raises(BoundkitError, match="outputs no value"):
        bk.exact_radius(model, torch.zeros(1, 6))


def test_max_pool_units_count_toward_max_neurons() -> None:
    """A pooling adds the units of its tournament: the size limit names the total."""
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Flatten(), nn.Linear(8, 3)).eval()
    with pytest.raises(bk.exact.ExactSizeError, match=r"80 hidden ReLU.*max pooling"):
        bk.exact_radius(model, torch.rand(1, 1, 4, 4))
