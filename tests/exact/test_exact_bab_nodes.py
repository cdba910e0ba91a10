"""The exact search's nodes bounded by branch and bound (``bab``'s domains and linear bounds)
against today's oracle, the region search (layer-ordered splits, node QPs and CROWN with
split constraints), against brute force, and the interval a stopped search reports."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from helpers_exact import mlp, polar_brute_force
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from boundkit.exact import exact_radius, to_affine_relu
from boundkit.exact.convert import AffineReluNet
from boundkit.exact.search import NetCrown, SearchBudgetExceeded, SearchResult, exact_search

SETTINGS = settings(max_examples=8, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


def _net(data: st.DataObject) -> tuple[nn.Module, np.ndarray, tuple | None]:
    d = data.draw(st.integers(2, 5), label="d")
    depth = data.draw(st.integers(1, 3), label="depth")
    hidden = [data.draw(st.integers(1, 6), label=f"h{i}") for i in range(depth)]
    k = data.draw(st.integers(2, 4), label="classes")
    seed = data.draw(st.integers(0, 10**6), label="seed")
    scale = 10.0 ** data.draw(st.integers(-2, 2), label="log10 scale")
    model = mlp((d, *hidden, k), seed, scale)
    boxed = data.draw(st.booleans(), label="box")
    g = np.random.default_rng(seed + 1)
    if boxed:
        x = g.uniform(0.0, 1.0, d)
        if data.draw(st.booleans(), label="one interval per coordinate"):
            return model, x, (x - g.uniform(0.0, 1.0, d), x + g.uniform(0.0, 1.0, d))
        return model, x, (np.zeros(d), np.ones(d))
    return model, g.standard_normal(d), None


def _both(model: nn.Module, x: np.ndarray, box: tuple | None,
          in_shape: tuple[int, ...] | None = None) -> tuple[SearchResult, SearchResult]:
    net = to_affine_relu(model, in_shape or (x.size,)).canonical()
    engine = NetCrown(net)
    a = exact_search(net, x, box, 1e-6, None, crown=engine, nodes_by="bab")
    b = exact_search(net, x, box, 1e-6, None, crown=engine, nodes_by="regions")
    return a, b


@SETTINGS
@given(st.data())
def test_bab_nodes_give_the_region_search_radius(data: st.DataObject) -> None:
    """Both searches are exact to rtol 1e-6 (each R with (1 - rtol) R <= rho <= R): their
    answers agree to 2e-6 relative, and both say inf (no class change in the box) alike."""
    model, x, box = _net(data)
    a, b = _both(model, x, box)
    assert math.isinf(a.radius) == math.isinf(b.radius)
    if math.isfinite(b.radius):
        assert math.isclose(a.radius, b.radius, rel_tol=2e-6, abs_tol=1e-12), (a.radius,
                                                                             b.radius)
        assert a.untrusted >= a.radius * (1 - 1e-6)


@SETTINGS
@given(st.data(), st.sampled_from([0.3, 0.05, 1e-3]))
def test_a_radius_at_rtol_brackets_the_exact_one(data: st.DataObject, rtol: float) -> None:
    """``(1 - rtol) R <= rho <= R`` with rho from the region search at rtol 1e-9."""
    model, x, box = _net(data)
    net = to_affine_relu(model, (x.size,)).canonical()
    engine = NetCrown(net)
    a = exact_search(net, x, box, rtol, None, crown=engine, nodes_by="bab")
    rho = exact_search(net, x, box, 1e-9, None, crown=engine, nodes_by="regions").radius
    if math.isinf(rho):
        assert math.isinf(a.radius)
        return
    assert a.radius * (1 - rtol) <= rho * (1 + 1e-9) + 1e-12
    assert rho <= a.radius * (1 + 1e-9) + 1e-12


@SETTINGS
@given(st.data(), st.integers(1, 3))
def test_a_stopped_search_interval_contains_the_exact_radius(data: st.DataObject,
                                                              max_regions: int) -> None:
    """A search stopped by its budget (``20 max_regions`` domains) reports
    ``lower <= rho <= upper``: lower from the open domains' certified radii, upper
    witnessed."""
    model, x, box = _net(data)
    net = to_affine_relu(model, (x.size,)).canonical()
    engine = NetCrown(net)
    rho = exact_search(net, x, box, 1e-9, None, crown=engine, nodes_by="regions").radius
    try:
        a = exact_search(net, x, box, 1e-6, max_regions, crown=engine, nodes_by="bab")
    except SearchBudgetExceeded as exc:
        assert exc.lower <= rho * (1 + 1e-9) + 1e-12, (exc.lower, rho)
        assert rho <= exc.upper * (1 + 1e-9) + 1e-12, (exc.upper, rho)
        return
    assert math.isinf(a.radius) == math.isinf(rho)
    if math.isfinite(rho):
        assert math.isclose(a.radius, rho, rel_tol=2e-6, abs_tol=1e-12)


@pytest.mark.parametrize("seed", range(2))
def test_exact_radius_is_the_brute_force_distance_on_random_2d_nets(seed: int) -> None:
    """Red team: random 2-D nets of random depth, width and layer scales (10^[-6, 6]):
    the exact radius is below every adversarial point of a dense fan of rays, and the fan's
    closest point is within 0.5% of it."""
    g = np.random.default_rng(100 + seed)
    depth = int(g.integers(1, 4))
    sizes = (2, *[int(g.integers(2, 9)) for _ in range(depth)], int(g.integers(2, 5)))
    model = mlp(sizes, seed)
    with torch.no_grad():
        for m in model:
            if isinstance(m, nn.Linear):
                m.weight.mul_(10.0 ** g.uniform(-6, 6))
    x = torch.randn(2, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    res = exact_radius(model, x, return_details=True)
    for i in range(2):
        brute = polar_brute_force(model, x[i], n_dirs=1500, t_max=20.0, n_steps=1500)
        r = float(res.radius[i])
        if math.isinf(brute):
            continue
        assert r <= brute * (1 + 1e-9), (r, brute)
        assert brute <= r * (1 + 5e-3) + 1e-9, (r, brute)
        assert float(res.lower[i]) <= brute * (1 + 1e-9)


def test_conv_net_bab_nodes_give_the_region_search_radius() -> None:
    torch.manual_seed(3)
    model = nn.Sequential(nn.Conv2d(1, 2, 2), nn.ReLU(), nn.Flatten(), nn.Linear(8, 5),
                          nn.ReLU(), nn.Linear(5, 3)).double().eval()
    g = np.random.default_rng(0)
    for box in (None, (np.zeros(9), np.ones(9))):
        x = g.uniform(0, 1, 9)
        a, b = _both(model, x, box, (1, 3, 3))
        assert math.isinf(a.radius) == math.isinf(b.radius)
        if math.isfinite(b.radius):
            assert math.isclose(a.radius, b.radius, rel_tol=2e-6), (a.radius, b.radius)


def _far_flat_net() -> tuple[nn.Module, np.ndarray]:
    """Net 139 of the soak (``test_exact_bab_nodes_soak.py``): 6-5-4-6-5, weights scaled by
    0.0026, whose class changes only ~1e9 away where the margin is ~1.7e-9 throughout."""
    g = np.random.default_rng(2026)
    for seed in range(140):
        d = int(g.integers(2, 7))
        hidden = [int(g.integers(1, 9)) for _ in range(int(g.integers(1, 4)))]
        k, scale = int(g.integers(2, 6)), 10.0 ** g.uniform(-3, 3)
        xs = [g.uniform(0, 1, d) if seed % 2 == 0 else g.standard_normal(d)
              for _ in range(2)]
    return mlp((d, *hidden, k), seed, scale), xs[1]


def test_far_flat_net_radius_is_not_above_a_witnessed_adversarial_point() -> None:
    """The soak's net 139: both searches at rtol 1e-6 answered 9.105e8 while a point at
    7.264e8 is adversarial; the LDP of that point's region declared it empty (its residual,
    ~1/||r||, was below float64's resolution of 1).  Now every answer is at or below that
    point, the two searches agree, and the regions closed on a QP are certified (dual bound,
    rounding of the rows charged) at least (1 - 1e-6) times the radius away."""
    model, x = _far_flat_net()
    net = to_affine_relu(model, (x.size,)).canonical()
    engine = NetCrown(net)
    witnessed = 7.264056e8  # adversarial in exact rational arithmetic (found at rtol 0.01)
    tight = exact_search(net, x, None, 1e-6, None, crown=engine, nodes_by="bab")
    loose = exact_search(net, x, None, 0.01, None, crown=engine, nodes_by="bab")
    regions = exact_search(net, x, None, 1e-6, None, crown=engine, nodes_by="regions")
    assert tight.radius <= witnessed and regions.radius <= witnessed
    assert tight.radius <= loose.radius * (1 + 1e-6)
    assert math.isclose(tight.radius, regions.radius, rel_tol=2e-6)
    for res in (tight, regions):
        assert res.certified >= res.radius * (1 - 1e-6), (res.certified, res.radius)
        # the witness is adversarial in exact rational arithmetic, within (1 + 1e-6) R
        assert res.witness is not None
        assert np.linalg.norm(res.witness) <= res.radius * (1 + 1e-6)
        assert _rational_margin(net, x + res.witness, int(np.argmax(net.forward(x[None])[0]))) > 0


def _rational_margin(net: AffineReluNet, z: np.ndarray, c: int) -> Fraction:
    """``max_{k != c} f_k(z) - f_c(z)`` of the float64 weights in exact rationals."""
    h = [Fraction(float(v)) for v in z]
    for i, (w, b) in enumerate(zip(net.weights, net.biases)):
        y = [sum((Fraction(float(wj)) * hj for wj, hj in zip(row, h)), Fraction(float(bi)))
             for row, bi in zip(w, b)]
        h = y if i == len(net.weights) - 1 else [max(v, Fraction(0)) for v in y]
    return max(v for k, v in enumerate(h) if k != c) - h[c]
