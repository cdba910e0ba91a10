"""The activation constants of ``docs/theory/activations.md``: the sympy-derived suprema of
``boundkit.bounds.activation.derived_bounds`` against dense numerical maxima, and thesis
Table 4.1 as printed."""

from __future__ import annotations

import math

import pytest
import sympy as sp
import torch

from boundkit.bounds.activation import derived_bounds, thesis_table_4_1

DT = torch.float64
Z = torch.linspace(-30.0, 30.0, 1_200_001, dtype=DT)  # step 5e-5


def _numeric(name: str) -> tuple[float, float]:
    """Dense-grid maxima of |g'| and |g''| (closed-form derivatives, float64)."""
    if name == "sigmoid":
        s = torch.sigmoid(Z)
        d1, d2 = s * (1 - s), s * (1 - s) * (1 - 2 * s)
    elif name == "tanh":
        t = torch.tanh(Z)
        d1, d2 = 1 - t * t, -2 * t * (1 - t * t)
    else:  # softplus, beta = 1
        s = torch.sigmoid(Z)
        d1, d2 = s, s * (1 - s)
    return float(d1.abs().max()), float(d2.abs().max())


@pytest.mark.parametrize(
    "name, a_exact, b_exact",
    [
        ("sigmoid", 0.25, 1 / (6 * math.sqrt(3))),
        ("tanh", 1.0, 4 / (3 * math.sqrt(3))),
        ("softplus", 1.0, 0.25),
    ],
)
def test_derived_bounds_match_closed_forms_and_dense_maxima(name, a_exact, b_exact):
    a, b = derived_bounds(name)
    assert a == pytest.approx(a_exact, rel=1e-14)
    assert b == pytest.approx(b_exact, rel=1e-14)
    a_num, b_num = _numeric(name)
    # the grid maximum is a lower bound of the supremum, within 1e-8 of it (the maxima are
    # interior and quadratic; softplus' A = 1 is approached at +inf, 1 - sigmoid(30))
    assert a_num <= a * (1 + 1e-12) and a - a_num < 1e-8
    assert b_num <= b * (1 + 1e-12) and b - b_num < 1e-8


def test_thesis_sigmoid_entry_equals_one_over_six_sqrt3():
    """(5 - 3 sqrt 3)/(30 sqrt 3 - 54) = 1/(6 sqrt 3): cross-multiplying,
    (5 - 3 sqrt 3) 6 sqrt 3 = 30 sqrt 3 - 54."""
    s3 = sp.sqrt(3)
    assert sp.simplify((5 - 3 * s3) / (30 * s3 - 54) - 1 / (6 * s3)) == 0
    assert thesis_table_4_1()["sigmoid"][1] == pytest.approx(derived_bounds("sigmoid")[1], 1e-14)


def test_thesis_tanh_entry_is_exactly_half():
    """sinh(u)/cosh(u)^3 with u = ln(2 + sqrt 3)/2 is 2/(3 sqrt 3), exactly half of
    sup|tanh''| = 2 sinh(u)/cosh(u)^3 = 4/(3 sqrt 3)."""
    u = sp.log(2 + sp.sqrt(3)) / 2
    printed = sp.sinh(u) / sp.cosh(u) ** 3
    assert sp.simplify((printed - 2 / (3 * sp.sqrt(3))).rewrite(sp.exp)) == 0
    z = sp.symbols("z", real=True)
    d2 = sp.diff(sp.tanh(z), z, 2)
    assert sp.simplify((d2.subs(z, -u) - 2 * printed).rewrite(sp.exp)) == 0
    assert thesis_table_4_1()["tanh"][1] == pytest.approx(derived_bounds("tanh")[1] / 2, 1e-14)


def test_thesis_table_first_order_and_softplus_entries_are_right():
    table = thesis_table_4_1()
    for name in ("sigmoid", "tanh", "softplus"):
        assert table[name][0] == pytest.approx(derived_bounds(name)[0], 1e-14)
    assert table["softplus"][1] == pytest.approx(derived_bounds("softplus")[1], 1e-14)
    assert table["relu"] == (1.0, 1.0)  # Section 4.3.1's replacement of B = 0


def test_softplus_beta_scaling():
    """g_beta(z) = log(1 + e^(beta z))/beta has g'' = beta g_1''(beta z): sup = beta/4."""
    for beta in (0.5, 2.0, 5.0):
        s = torch.sigmoid(beta * Z)
        assert float((beta * s * (1 - s)).max()) == pytest.approx(beta / 4, rel=1e-8)
