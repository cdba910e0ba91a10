"""Scale: positive rescaling of the layers changes neither the radius nor the witness's truth.

``f'(z) = s_L W_L relu(... relu(s_0 W_0 z + s_0 b_0) ...) + (s_0 ... s_L) b_L`` equals
``(s_0 ... s_L) f(z)`` (ReLU is positively homogeneous), so ``argmax f' = argmax f`` everywhere
and the exact radius is the same number.  Before the fix, layer scales ``1.1e8, 5.9e6,
1.5e-15`` made ``exact_radius`` return radii 30-100% too small with witnesses that were not
adversarial (the conversion took ``W e_j = g(e_j) - g(0)``, which cancels when the bias
carries the scales, and the QP judged a row "zero" against the largest row's norm).
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from helpers_exact import margin, mlp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import boundkit as bk
from boundkit.exact import exact_radius, to_affine_relu
from boundkit.exact.qp import min_norm_point

SETTINGS = settings(max_examples=15, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


def rescaled(model: nn.Sequential, scales: list[float]) -> nn.Sequential:
    """``model`` with Linear ``i`` scaled by ``scales[i]`` and its bias by the running product
    (so the logits are ``prod(scales)`` times the original's)."""
    out = copy.deepcopy(model)
    lins = [m for m in out if isinstance(m, nn.Linear)]
    assert len(lins) == len(scales)
    cum = 1.0
    with torch.no_grad():
        for lin, s in zip(lins, scales):
            cum *= s
            lin.weight.mul_(s)
            lin.bias.mul_(cum)
    return out


def _check_witness(model: nn.Module, x: torch.Tensor, res: bk.exact.ExactResult) -> None:
    """Every finite radius has a witness that the model, re-run in float64, finds strictly
    adversarial, of norm <= (1 + 1e-6) radius."""
    fin = torch.isfinite(res.radius)
    if not fin.any():
        return
    w = res.witness[fin]
    m = margin(model, x[fin] + w, res.predicted_class[fin])
    assert (m > 0).all(), m
    assert (w.flatten(1).norm(dim=1) <= res.radius[fin] * (1 + 1e-6) + 1e-300).all()


def test_issue_scales_give_the_unscaled_radius_and_a_true_witness() -> None:
    """The issue's layer scales (1.1e8, 5.9e6, 1.5e-15) on a 10-16-12-3 net: the radius of
    every sample is the unscaled net's, and every witness is adversarial."""
    model = mlp((10, 16, 12, 3), 0)
    x = torch.randn(3, 10, generator=torch.Generator().manual_seed(100), dtype=torch.float64)
    scaled = rescaled(model, [1.1e8, 5.9e6, 1.5e-15])
    ref = exact_radius(model, x, return_details=True)
    res = exact_radius(scaled, x, return_details=True)
    assert torch.isfinite(ref.radius).all()
    torch.testing.assert_close(res.radius, ref.radius, rtol=1e-9, atol=0.0)
    _check_witness(scaled, x, res)
    _check_witness(model, x, ref)


@SETTINGS
@given(st.data())
def test_exact_radius_is_invariant_under_positive_layer_rescaling(data: st.DataObject) -> None:
    d = data.draw(st.integers(2, 5), label="d")
    hidden = data.draw(st.lists(st.integers(2, 7), min_size=1, max_size=2), label="hidden")
    k = data.draw(st.integers(2, 4), label="classes")
    seed = data.draw(st.integers(0, 10**6), label="seed")
    sizes = (d, *hidden, k)
    exps = data.draw(st.lists(st.floats(-15.0, 15.0), min_size=len(sizes) - 1,
                              max_size=len(sizes) - 1), label="log10 scales")
    boxed = data.draw(st.booleans(), label="box")
    model = mlp(sizes, seed)
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(2, d, generator=g, dtype=torch.float64)
    box = None
    if boxed:
        x, box = torch.rand(2, d, generator=g, dtype=torch.float64), (0.0, 1.0)
    scaled = rescaled(model, [10.0 ** e for e in exps])
    ref = exact_radius(model, x, box=box, return_details=True)
    res = exact_radius(scaled, x, box=box, return_details=True)
    assert torch.equal(res.predicted_class, ref.predicted_class)
    assert torch.equal(torch.isinf(res.radius), torch.isinf(ref.radius))
    fin = torch.isfinite(ref.radius)
    torch.testing.assert_close(res.radius[fin], ref.radius[fin], rtol=1e-9, atol=1e-15)
    _check_witness(scaled, x, res)
    _check_witness(model, x, ref)


@SETTINGS
@given(st.data())
def test_crown_radius_le_exact_radius_le_attack_norm_on_rescaled_nets(
        data: st.DataObject) -> None:
    d = data.draw(st.integers(2, 4), label="d")
    hidden = data.draw(st.lists(st.integers(2, 6), min_size=1, max_size=2), label="hidden")
    seed = data.draw(st.integers(0, 10**6), label="seed")
    sizes = (d, *hidden, 3)
    exps = data.draw(st.lists(st.floats(-8.0, 8.0), min_size=len(sizes) - 1,
                              max_size=len(sizes) - 1), label="log10 scales")
    model = rescaled(mlp(sizes, seed), [10.0 ** e for e in exps])
    x = torch.rand(3, d, generator=torch.Generator().manual_seed(seed + 1),
                   dtype=torch.float64)
    res = exact_radius(model, x, box=(0.0, 1.0), return_details=True)
    exact = res.radius
    _check_witness(model, x, res)
    crown = bk.certify(model, x, "crown", box=(0.0, 1.0)).radius.double().cpu()
    assert (crown <= exact * (1 + 1e-9)).all(), (crown, exact)
    att = bk.attack(model, x, "deepfool", box=(0.0, 1.0))
    ok = att.success.cpu()
    assert (exact[ok] <= att.norm.double().cpu()[ok] * (1 + 1e-9)).all(), (exact, att.norm)


def test_conversion_keeps_weights_exact_under_a_dominant_bias() -> None:
    """``W`` is read from the linear part, not from ``g(e_j) - g(0)``: a bias 1e15 times the
    weights leaves them exact (the old difference kept no correct digit)."""
    lin = nn.Linear(4, 3).double().eval()
    with torch.no_grad():
        lin.weight.copy_(torch.randn(3, 4, dtype=torch.float64))
        lin.bias.fill_(1e15)
    net = to_affine_relu(nn.Sequential(lin, nn.ReLU(), nn.Linear(3, 2).double()).eval(), (4,))
    np.testing.assert_array_equal(net.weights[0], lin.weight.detach().numpy())


def test_conversion_of_batchnorm_with_large_running_mean_is_exact() -> None:
    bn = nn.BatchNorm1d(3).double().eval()
    with torch.no_grad():
        bn.running_mean.fill_(1e14)
        bn.running_var.fill_(4.0)
        bn.weight.copy_(torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64))
    model = nn.Sequential(nn.Linear(3, 3).double(), bn, nn.ReLU(),
                          nn.Linear(3, 2).double()).eval()
    net = to_affine_relu(model, (3,))
    lin = model[0]
    scale = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).detach()
    expect = (scale[:, None] * lin.weight).detach().numpy()
    np.testing.assert_allclose(net.weights[0], expect, rtol=1e-14)


@pytest.mark.parametrize("power", [-200, -40, 0, 40, 200])
def test_min_norm_point_is_the_same_for_rows_scaled_by_any_positive_factor(power: int) -> None:
    rng = np.random.default_rng(3)
    a = rng.standard_normal((6, 4))
    b = rng.standard_normal(6) - 1.0
    ref = min_norm_point(a, b)
    s = 10.0 ** (power * rng.uniform(0.5, 1.0, 6))  # rows of very different scales
    got = min_norm_point(a * s[:, None], b * s)
    assert (ref is None) == (got is None)
    if ref is not None:
        np.testing.assert_allclose(got, ref, rtol=1e-9, atol=1e-12)


def test_canonical_net_has_unit_hidden_rows_and_the_same_decisions() -> None:
    model = rescaled(mlp((3, 6, 5, 4), 2), [1e9, 1e-7, 3e4])
    net = to_affine_relu(model, (3,))
    can = net.canonical()
    for w in can.weights[:-1]:
        np.testing.assert_allclose(np.linalg.norm(w, axis=1), 1.0, rtol=1e-14)
    z = np.random.default_rng(0).standard_normal((200, 3))
    a, b = net.forward(z), can.forward(z)
    assert (a.argmax(1) == b.argmax(1)).all()
    ratio = a / b
    assert math.isclose(float(ratio.min()), float(ratio.max()), rel_tol=1e-9)


def test_float32_model_witness_is_checked_in_both_dtypes() -> None:
    """A float32 model: the radius is the float64 function's, its witness is adversarial in
    float64, and ``witness_native`` is true exactly where the float32 model agrees."""
    model = mlp((4, 6, 5, 3), 8).float()
    x = torch.rand(4, 4, generator=torch.Generator().manual_seed(8))
    res = exact_radius(model, x, box=(0.0, 1.0), return_details=True)
    fin = torch.isfinite(res.radius)
    assert fin.any()
    _check_witness(copy.deepcopy(model).double(), x.double(), res)
    with torch.no_grad():
        out = model((x.double() + res.witness).float())
    c = res.predicted_class
    m32 = out.scatter(1, c[:, None], -math.inf).max(1).values - out.gather(1, c[:, None])[:, 0]
    assert torch.equal(res.witness_native[fin], (m32 > 0)[fin])


def test_layer_scales_that_overflow_float64_are_a_clear_error() -> None:
    model = rescaled(mlp((3, 4, 3), 0), [1e200, 1e200])
    with pytest.raises(bk.errors.BoundkitError, match="finite|float64"):
        exact_radius(model, torch.zeros(1, 3, dtype=torch.float64))
