"""The region QP's certified lower bound (:func:`boundkit.exact.qp.min_norm`) on polyhedra
whose minimum-norm point is known by construction (KKT), at distances from 1e-3 to 1e12
and with nearly parallel active rows: the bound never exceeds the true minimum, stays
within 1e-9 of it (so well-posed samples are never refused), holds for every polyhedron
within the declared data errors, and certifies empty polyhedra as such."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers_exact import mlp
from hypothesis import given, settings
from hypothesis import strategies as st

from boundkit.exact import ExactResult, core, exact_radius
from boundkit.exact.qp import min_norm

SETTINGS = settings(max_examples=60, deadline=None)


def _known(seed: int, log_dist: float, flat: float, boxed: bool
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None, float]:
    """``(a, b, lo, hi, rho)`` with ``rho = min ||r||`` over ``{a r >= b, lo <= r <= hi}``:
    ``r* = a_S^T lam``, ``lam > 0``, on tight rows ``S`` (KKT of a convex problem, hence the
    optimum); the other rows are slack at ``r*``; the box holds ``r*`` inside.  ``flat``:
    the active rows differ from one common row by that much (thin slivers)."""
    g = np.random.default_rng(seed)
    n = int(g.integers(2, 7))
    k = int(g.integers(1, n + 1))
    base = g.standard_normal(n)
    a_s = base[None] + flat * g.standard_normal((k, n))
    a_s *= 10.0 ** g.uniform(-3, 3, (k, 1))  # each row its own scale
    lam = g.uniform(0.1, 1.0, k)
    r = a_s.T @ lam
    r *= 10.0 ** log_dist / np.linalg.norm(r)
    b_s = a_s @ r
    m = int(g.integers(0, 6))
    a_o = g.standard_normal((m, n)) * 10.0 ** g.uniform(-3, 3, (m, 1))
    b_o = a_o @ r - np.abs(a_o @ r) * g.uniform(0.01, 1.0, m) - 1e-3 * np.linalg.norm(a_o, axis=1)
    a, b = np.vstack([a_s, a_o]), np.concatenate([b_s, b_o])
    rho = float(np.linalg.norm(r))
    if boxed:
        big = np.abs(r) + rho * g.uniform(0.5, 2.0, n)
        return a, b, -big, big, rho
    return a, b, None, None, rho


@SETTINGS
@given(st.integers(0, 10**6), st.floats(-3, 12), st.sampled_from([1.0, 1e-3, 1e-6]),
       st.booleans())
def test_certified_lower_bound_is_below_the_known_minimum_and_tight(
        seed: int, log_dist: float, flat: float, boxed: bool) -> None:
    a, b, lo, hi, rho = _known(seed, log_dist, flat, boxed)
    res = min_norm(a, b, lo, hi)
    # the construction's own rounding: rows and r* agree to ~1e-15 relative
    assert res.lower <= rho * (1 + 1e-12), (res.lower, rho)
    assert res.point is not None
    assert res.lower >= float(np.linalg.norm(res.point)) * (1 - 1e-9), (res.lower, rho)


@SETTINGS
@given(st.integers(0, 10**6), st.floats(-3, 9), st.booleans())
def test_certified_lower_bound_holds_for_every_polyhedron_within_the_data_errors(
        seed: int, log_dist: float, boxed: bool) -> None:
    a, b, lo, hi, _ = _known(seed, log_dist, 1.0, boxed)
    g = np.random.default_rng(seed + 1)
    ea = 1e-6 * np.abs(a) * g.uniform(0, 1, a.shape)
    eb = 1e-6 * (np.abs(b) + 1.0) * g.uniform(0, 1, b.shape)
    lower = min_norm(a, b, lo, hi, ea, eb).lower
    for _ in range(5):
        a2 = a + ea * g.uniform(-1, 1, a.shape)
        b2 = b + eb * g.uniform(-1, 1, b.shape)
        pt = min_norm(a2, b2, lo, hi).point
        if pt is not None:
            assert float(np.linalg.norm(pt)) >= lower * (1 - 1e-9), (lower, pt)


@SETTINGS
@given(st.integers(0, 10**6), st.floats(-3, 9), st.booleans())
def test_an_empty_polyhedron_has_no_point_and_an_infinite_or_far_bound(
        seed: int, log_dist: float, boxed: bool) -> None:
    """``u r >= t`` and ``-u r >= -t + gap``: empty; the bound is inf or beyond any point
    of interest (far above the rows' distances)."""
    g = np.random.default_rng(seed)
    n = int(g.integers(2, 6))
    u = g.standard_normal(n)
    t = 10.0 ** log_dist * np.linalg.norm(u)
    gap = 0.1 * t
    a = np.vstack([u, -u, g.standard_normal((2, n))])
    b = np.concatenate([[t, -t + gap], [-1e30, -1e30]])
    lo, hi = (-np.full(n, 10 * t), np.full(n, 10 * t)) if boxed else (None, None)
    res = min_norm(a, b, lo, hi)
    assert res.point is None
    assert res.lower >= 100 * 10.0 ** log_dist


@pytest.mark.parametrize("shortfall", [1e-3, 0.5])
def test_exact_radius_is_nan_with_the_reason_when_a_closed_region_is_not_certified(
        monkeypatch: pytest.MonkeyPatch, shortfall: float) -> None:
    """If a region closed on its QP is certified only below ``(1 - rtol) R``, the sample gets
    no number: radius NaN, the reason, and ``lower`` the certified distance."""
    model = mlp((3, 4, 3), 5)
    x = torch.randn(2, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    good = exact_radius(model, x, rtol=1e-3, return_details=True)
    assert isinstance(good, ExactResult) and bool(torch.isfinite(good.radius).all())
    real = core.exact_search

    def short(*args: object, **kw: object) -> object:
        res = real(*args, **kw)
        res.certified = res.radius * (1 - 1e-3 - shortfall)
        return res

    monkeypatch.setattr(core, "exact_search", short)
    bad = exact_radius(model, x, rtol=1e-3, return_details=True)
    assert isinstance(bad, ExactResult) and bad.lower is not None and bad.upper is not None
    assert bool(torch.isnan(bad.radius).all())
    assert all(r.startswith("the region QP is ill-conditioned at this scale") for r in bad.reason)
    torch.testing.assert_close(bad.upper, good.radius)
    torch.testing.assert_close(bad.lower, good.radius * (1 - 1e-3 - shortfall))
