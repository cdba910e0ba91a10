"""ReLU networks: exactness against brute force, attainment, optimality, box, conv nets."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from helpers_exact import margin, mlp, polar_brute_force
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from boundkit.exact import exact_radius, to_affine_relu

SETTINGS = settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


@pytest.mark.parametrize(("sizes", "seed"), [((2, 6, 3), 0), ((2, 8, 8, 3), 1), ((2, 5, 2), 2)])
def test_exact_radius_matches_polar_brute_force_in_2d(sizes: tuple[int, ...], seed: int) -> None:
    model = mlp(sizes, seed)
    x = torch.randn(3, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    rad = exact_radius(model, x)
    for i in range(3):
        brute = polar_brute_force(model, x[i])
        exact = rad[i].item()
        # brute force returns adversarial points: an upper bound, close to the optimum
        assert exact <= brute * (1 + 1e-9)
        assert brute <= exact * (1 + 5e-3) + 1e-9


def _random_net(data: st.DataObject) -> tuple[nn.Module, torch.Tensor]:
    d = data.draw(st.integers(2, 4), label="d")
    depth = data.draw(st.integers(1, 2), label="depth")
    hidden = [data.draw(st.integers(1, 6), label=f"h{i}") for i in range(depth)]
    k = data.draw(st.integers(2, 4), label="classes")
    seed = data.draw(st.integers(0, 10**6), label="seed")
    model = mlp((d, *hidden, k), seed)
    x = torch.randn(2, d, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)
    return model, x


@SETTINGS
@given(st.data())
def test_exact_radius_is_attained_by_witness(data: st.DataObject) -> None:
    model, x = _random_net(data)
    res = exact_radius(model, x, return_details=True)
    c = res.predicted_class
    fin = torch.isfinite(res.radius)
    if not fin.any():
        return
    # r* lies on the decision boundary and has norm = radius
    torch.testing.assert_close(
        res.perturbation[fin].flatten(1).norm(dim=1), res.radius[fin], rtol=1e-9, atol=1e-12
    )
    m_star = margin(model, x[fin] + res.perturbation[fin], c[fin])
    assert (m_star >= -1e-8 * (1 + res.radius[fin])).all()
    # the witness changes the argmax strictly and is no longer than (1 + 1e-6) * radius
    wn = res.witness[fin].flatten(1).norm(dim=1)
    assert (wn <= res.radius[fin] * (1 + 1e-6) + 1e-12).all()
    with torch.no_grad():
        assert (model(x[fin] + res.witness[fin]).argmax(1) != c[fin]).all()


@SETTINGS
@given(st.data())
def test_no_adversarial_point_strictly_inside_exact_radius(data: st.DataObject) -> None:
    model, x = _random_net(data)
    rad = exact_radius(model, x)
    g = torch.Generator().manual_seed(7)
    for i in range(x.shape[0]):
        r = rad[i].item()
        if not math.isfinite(r) or r == 0.0:
            continue
        d = x.shape[1]
        u = torch.randn(4000, d, generator=g, dtype=torch.float64)
        u = u / u.norm(dim=1, keepdim=True)
        scale = torch.rand(4000, 1, generator=g, dtype=torch.float64) ** (1 / d)
        scale[:2000] = 1.0  # half on the sphere, half uniform in the ball
        pts = x[i] + u * scale * r * (1 - 1e-5)
        c = model(x[i : i + 1]).argmax(1).expand(4000)
        assert (margin(model, pts, c) < 0).all()


@SETTINGS
@given(st.data())
def test_boxed_radius_is_at_least_unboxed_radius(data: st.DataObject) -> None:
    model, x = _random_net(data)
    width = data.draw(st.floats(0.05, 3.0), label="box half-width")
    lo, hi = x.min() - width, x.max() + width
    unboxed = exact_radius(model, x)
    res = exact_radius(model, x, box=(lo, hi), return_details=True)
    assert (res.radius >= unboxed * (1 - 1e-9)).all()
    fin = torch.isfinite(res.radius)
    z = x[fin] + res.perturbation[fin]
    assert (z >= lo - 1e-9).all() and (z <= hi + 1e-9).all()
    w = x[fin] + res.witness[fin]
    assert (w >= lo - 1e-9).all() and (w <= hi + 1e-9).all()


def test_rtol_zero_and_default_agree() -> None:
    model = mlp((3, 8, 6, 3), 5)
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    a = exact_radius(model, x, rtol=0.0)
    b = exact_radius(model, x)
    torch.testing.assert_close(a, b, rtol=1.1e-6, atol=0.0)
    assert (b >= a).all()


def _conv_net(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    bn = nn.BatchNorm2d(2)
    with torch.no_grad():
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.2, 0.2)
    return nn.Sequential(
        nn.AvgPool2d(2, stride=1),
        nn.Conv2d(1, 2, 2, stride=1, padding=0),
        bn,
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.Sequential(nn.Flatten(), nn.Identity()),
        nn.Linear(8, 6),
        nn.ReLU(),
        nn.Linear(6, 3),
        nn.LogSoftmax(dim=1),
    ).eval()


def test_conv_model_conversion_reproduces_the_model() -> None:
    model = _conv_net(0)
    x = torch.randn(16, 1, 4, 4)
    net = to_affine_relu(model, (1, 4, 4))
    assert net.hidden_sizes == (8, 6)
    with torch.no_grad():
        ref = model.double()(x.double()).numpy()
    ours = net.forward(x.double().reshape(16, -1).numpy())
    # LogSoftmax is dropped (monotone): compare after normalising
    ours = ours - np.log(np.exp(ours).sum(axis=1, keepdims=True))
    np.testing.assert_allclose(ours, ref, rtol=1e-10, atol=1e-10)


def test_strided_dilated_conv_conversion_reproduces_the_model() -> None:
    torch.manual_seed(1)
    model = nn.Sequential(
        nn.Conv2d(2, 3, 3, stride=2, padding=2, dilation=2), nn.ReLU(), nn.Flatten(),
        nn.Linear(27, 2),
    ).eval()
    x = torch.randn(5, 2, 5, 5)
    net = to_affine_relu(model, (2, 5, 5))
    with torch.no_grad():
        ref = model.double()(x.double()).numpy()
    np.testing.assert_allclose(net.forward(x.double().reshape(5, -1).numpy()), ref, atol=1e-10)


def test_conv_model_radius_is_attained_and_locally_minimal() -> None:
    model = _conv_net(2).double()
    x = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    res = exact_radius(model, x, return_details=True)
    assert torch.isfinite(res.radius).all()
    with torch.no_grad():
        assert (model(x + res.witness).argmax(1) != res.predicted_class).all()
    g = torch.Generator().manual_seed(5)
    for i in range(2):
        u = torch.randn(3000, 16, generator=g, dtype=torch.float64)
        u = u / u.norm(dim=1, keepdim=True) * res.radius[i] * (1 - 1e-5)
        pts = (x[i].reshape(1, -1) + u).reshape(-1, 1, 4, 4)
        c = res.predicted_class[i].expand(3000)
        assert (margin(model, pts, c) < 0).all()
