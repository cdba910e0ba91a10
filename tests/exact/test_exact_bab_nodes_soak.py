"""Soak (``-m slow``): the exact search with ``bab``'s domains as nodes against today's
oracle, the layer-ordered region search, on many random nets (1-3 hidden layers of 1-8,
2-6 inputs, 2-5 classes, layer scales ``10^U(-3, 3)``, half of them boxed in [0, 1]):
the same radius to ``2e-6`` relative (both exact to ``rtol = 1e-6``), inf alike, and at
``rtol = 0.01`` the answer ``R`` brackets the oracle's, ``(1 - rtol) R <= rho <= R``."""

from __future__ import annotations

import math

import numpy as np
import pytest
from helpers_exact import mlp

from boundkit.exact import to_affine_relu
from boundkit.exact.search import NetCrown, exact_search

NETS = 200


@pytest.mark.slow
def test_bab_nodes_agree_with_the_region_search_on_random_nets() -> None:
    g = np.random.default_rng(2026)
    checked = 0
    for seed in range(NETS):
        d = int(g.integers(2, 7))
        hidden = [int(g.integers(1, 9)) for _ in range(int(g.integers(1, 4)))]
        model = mlp((d, *hidden, int(g.integers(2, 6))), seed, 10.0 ** g.uniform(-3, 3))
        net = to_affine_relu(model, (d,)).canonical()
        engine = NetCrown(net)
        boxed = seed % 2 == 0
        box = (np.zeros(d), np.ones(d)) if boxed else None
        for _ in range(2):
            x = g.uniform(0, 1, d) if boxed else g.standard_normal(d)
            ref = exact_search(net, x, box, 1e-6, None, crown=engine, nodes_by="regions")
            got = exact_search(net, x, box, 1e-6, None, crown=engine, nodes_by="bab")
            loose = exact_search(net, x, box, 0.01, None, crown=engine, nodes_by="bab")
            assert math.isinf(got.radius) == math.isinf(ref.radius), (seed, got, ref)
            assert math.isinf(loose.radius) == math.isinf(ref.radius), (seed, loose, ref)
            if math.isfinite(ref.radius):
                assert math.isclose(got.radius, ref.radius, rel_tol=2e-6, abs_tol=1e-12), (
                    seed, got.radius, ref.radius)
                assert loose.radius * 0.99 <= ref.radius * (1 + 2e-6) + 1e-12, seed
                assert ref.radius <= loose.radius * (1 + 2e-6) + 1e-12, seed
            checked += 1
    assert checked == 2 * NETS
