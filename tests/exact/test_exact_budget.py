"""Time limit instead of the neuron limit, NaN with its reason, and agreement with oracles.

``exact_radius`` agrees with an independent oracle wherever both finish: the closed form for
linear models (``test_exact_linear.py``), the 2-D polar brute force (``test_exact_relu.py``)
and, here, the enumeration of every activation pattern of a tiny net with each region's QP
solved by scipy's SLSQP (no code shared with the branch-and-bound or its QP solver).
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from helpers_exact import margin, mlp, polar_brute_force
from scipy.optimize import minimize

import boundkit.exact.core as exact_core
from boundkit.exact import ExactSizeError, exact_radius, to_affine_relu


def enumerated_radius(model: torch.nn.Module, x: np.ndarray, box: tuple[float, float] | None
                      ) -> float:
    """min over all activation patterns P and classes k != c of the distance from x to
    {z in Q_P : g_k^P(z) >= 0} (inside the box), each solved by SLSQP."""
    net = to_affine_relu(model, (x.size,))
    c = int(np.argmax(net.forward(x[None])[0]))
    sizes = net.hidden_sizes
    best = math.inf
    for bits in itertools.product((False, True), repeat=sum(sizes)):
        pat = np.split(np.array(bits), np.cumsum(sizes)[:-1])
        rows, rhs = [], []
        m_w, m_b = np.eye(x.size), np.zeros(x.size)
        for w, b, s in zip(net.weights[:-1], net.biases[:-1], pat):
            p_w, p_b = w @ m_w, w @ m_b + b
            sg = np.where(s, 1.0, -1.0)
            rows.append(sg[:, None] * p_w)
            rhs.append(-sg * p_b)
            m_w, m_b = s[:, None] * p_w, s * p_b
        f_w, f_b = net.weights[-1] @ m_w, net.weights[-1] @ m_b + net.biases[-1]
        for k in range(net.num_classes):
            if k == c:
                continue
            a = np.vstack(rows + [f_w[k] - f_w[c]])
            h = np.concatenate(rhs + [np.array([f_b[c] - f_b[k]])])
            nrm = np.linalg.norm(a, axis=1)
            if np.any(h[nrm == 0] > 0):
                continue  # a constant neuron of the wrong sign: the region is empty
            a, h = a[nrm > 0] / nrm[nrm > 0, None], h[nrm > 0] / nrm[nrm > 0]
            cons = [{"type": "ineq", "fun": lambda z, a=a, h=h: a @ z - h,
                     "jac": lambda z, a=a: a}]
            bounds = None if box is None else [box] * x.size
            res = minimize(lambda z: 0.5 * np.sum((z - x) ** 2), x, jac=lambda z: z - x,
                           constraints=cons, bounds=bounds, method="SLSQP",
                           options={"ftol": 1e-14, "maxiter": 500})
            if res.success and np.min(a @ res.x - h) >= -1e-9:
                best = min(best, float(np.linalg.norm(res.x - x)))
    return best


@pytest.mark.parametrize(("sizes", "seed", "box"), [
    ((2, 3, 3), 0, None), ((3, 4, 2), 1, None), ((2, 2, 3, 3), 2, None),
    ((3, 3, 3), 3, (0.0, 1.0)), ((2, 4, 3), 4, (0.0, 1.0)),
])
def test_exact_radius_agrees_with_pattern_enumeration(sizes: tuple[int, ...], seed: int,
                                                      box: tuple[float, float] | None) -> None:
    model = mlp(sizes, seed)
    g = torch.Generator().manual_seed(seed + 7)
    x = (torch.rand if box else torch.randn)(3, sizes[0], generator=g, dtype=torch.float64)
    rad = exact_radius(model, x, box=box)
    for i in range(3):
        ref = enumerated_radius(model, x[i].numpy(), box)
        assert math.isclose(float(rad[i]), ref, rel_tol=1e-6, abs_tol=1e-12), (i, rad, ref)


def test_time_limit_lifts_the_neuron_limit_and_finishes_small_input_nets() -> None:
    """34 hidden ReLUs (over the default 32): refused without a time limit; with one, the
    2-D radius is found and agrees with the polar brute force."""
    model = mlp((2, 17, 17, 3), 5)
    x = torch.randn(1, 2, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    with pytest.raises(ExactSizeError, match="max_neurons=32"):
        exact_radius(model, x)
    res = exact_radius(model, x, time_limit=60.0, on_budget="nan", return_details=True)
    assert res.reason == ("",)
    assert torch.equal(res.upper, res.radius)
    torch.testing.assert_close(res.lower, res.radius * (1 - 1e-6))
    brute = polar_brute_force(model, x[0], n_dirs=1000, n_steps=1000)
    assert float(res.radius[0]) <= brute * (1 + 1e-9)
    assert brute <= float(res.radius[0]) * (1 + 2e-2) + 1e-9
    m = margin(model, x + res.witness, res.predicted_class)
    assert (m > 0).all()


def test_time_limit_zero_gives_nan_with_the_reason() -> None:
    model = mlp((3, 8, 8, 3), 1)
    x = torch.randn(2, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    res = exact_radius(model, x, time_limit=0.0, on_budget="nan", return_details=True)
    assert torch.isnan(res.radius).all()
    assert all("time_limit=0.0 s" in r for r in res.reason)
    assert (res.adversarial_class == -1).all()
    assert (res.lower == 0).all() and torch.isinf(res.upper).all()  # stopped before anything
    with pytest.raises(ExactSizeError, match="time_limit"):
        exact_radius(model, x, time_limit=0.0)


def test_unconfirmed_witness_gives_nan_with_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    """A region whose witness the model does not confirm is not trusted: NaN and why, never
    a radius built on it."""
    model = mlp((3, 5, 3), 2)
    x = torch.randn(2, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    ref = exact_radius(model, x)
    assert torch.isfinite(ref).all()
    monkeypatch.setattr(exact_core, "_model_verifier",
                        lambda model, x: lambda n, xn, c: lambda r: 0)
    res = exact_radius(model, x, return_details=True)
    assert torch.isnan(res.radius).all()
    assert all("not trusted" in r for r in res.reason)


@pytest.mark.parametrize("bad", [-1.0, math.inf, math.nan, "1", True])
def test_bad_time_limit_is_a_one_line_error(bad: object) -> None:
    model = mlp((2, 3, 2), 0)
    with pytest.raises(ValueError, match="time_limit"):
        exact_radius(model, torch.zeros(1, 2, dtype=torch.float64), time_limit=bad)


def test_a_stopped_search_reports_the_interval_it_reached() -> None:
    """Stopped by the region budget mid-search: NaN, and lower <= exact <= upper with the
    upper end witnessed (the exact radius from an unlimited run)."""
    model = mlp((4, 8, 8, 8, 3), 13)
    x = torch.randn(3, 4, generator=torch.Generator().manual_seed(13), dtype=torch.float64)
    ref = exact_radius(model, x, max_regions=20000)
    res = exact_radius(model, x, max_regions=4, on_budget="nan", return_details=True)
    stopped = torch.isnan(res.radius)
    assert stopped.any()
    assert (res.lower[stopped] <= ref[stopped] * (1 + 1e-9)).all()
    # where domains were bounded: their certified radii, not 0 (0: stopped before)
    bounded = stopped & (res.nodes > 0)
    assert bounded.any() and (res.lower[bounded] > 0).all()
    assert (ref[stopped] <= res.upper[stopped] * (1 + 1e-9)).all()
    assert all("<= radius <=" in res.reason[i] for i in stopped.nonzero().flatten().tolist())
