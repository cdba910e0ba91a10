"""Hardsigmoid (boundkit/bounds/hardsigmoid.py, docs/theory/hardsigmoid.md): the stated
lines and the interval contain the function on dense samples and at the ends, the Lipschitz
constant bounds every sampled slope, every capture form is read, and no certificate
exceeds an attack's distance on random small nets."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import boundkit as bk
from boundkit.bounds.hardsigmoid import SLOPE
from boundkit.bounds.registry import get_rule
from boundkit.bounds.relaxation import Interval
from boundkit.errors import UnsupportedLayerError
from boundkit.graph import capture
from boundkit.graph.graph import Node
from boundkit.graph.ops import evaluate
from boundkit.testing import (
    assert_crown_intervals_contain_samples,
    assert_sound,
    check_no_adversarial_in_relaxation_ball,
)

_NODE = Node("g", "hardsigmoid", ["x"], "hardsigmoid")
_ENDS = st.floats(-12, 12, allow_nan=False)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(a=_ENDS, b=_ENDS, w=st.sampled_from([0.0, 1e-9, 1e-3, 0.3, 2.0, 6.0, None]))
def test_stated_lines_and_interval_contain_hardsigmoid_on_dense_samples_and_at_the_ends(
        a: float, b: float, w: float | None) -> None:
    lo = min(a, b) if w is None else a
    hi = max(a, b) if w is None else a + w
    lo_t = torch.tensor([[lo, lo - 1.0, -abs(lo), -3.0]], dtype=torch.float64)
    hi_t = torch.tensor([[hi, hi, abs(hi) + 0.5, max(hi, -3.0)]], dtype=torch.float64)
    rule = get_rule("hardsigmoid", "crown")
    ln = rule.lines(_NODE, Interval(lo_t, hi_t))
    iv = rule.interval(_NODE, None, [Interval(lo_t, hi_t)])
    t = torch.linspace(0, 1, 20001, dtype=torch.float64).unsqueeze(1).unsqueeze(1)
    z = torch.cat([lo_t.unsqueeze(0), lo_t + (hi_t - lo_t) * t, hi_t.unsqueeze(0)]).clamp(
        lo_t, hi_t)
    g = evaluate(_NODE, [z])
    assert bool((ln.k_lo * z + ln.b_lo <= g).all())
    assert bool((g <= ln.k_hi * z + ln.b_hi).all())
    assert bool((iv.lo <= g).all() and (g <= iv.hi).all())
    # tight: on one linear piece (or a narrow interval) the lines hug the function
    if w is not None and w <= 1e-3:
        gap = (ln.k_hi * z + ln.b_hi - (ln.k_lo * z + ln.b_lo))[:, 0, 0].max()
        assert float(gap) <= 1e-6 * (1 + abs(lo)), float(gap)


def test_lipschitz_constant_bounds_every_sampled_slope_and_is_attained() -> None:
    z = torch.linspace(-8, 8, 400001, dtype=torch.float64)
    g = F.hardsigmoid(z)
    dz = z[1:] - z[:-1]
    # float64 evaluation errs by at most 2u(|z| + |g|) per element (charged as rounding)
    err = 2 * 2.0**-53 * (z.abs() + g.abs())
    rise = (g[1:] - g[:-1]).abs()
    assert bool((rise <= SLOPE * dz + err[1:] + err[:-1]).all())
    assert float((rise / dz).max()) >= SLOPE * (1 - 1e-9)
    rule = get_rule("hardsigmoid", "sound")
    assert rule.lipschitz(_NODE, capture(nn.Sequential(nn.Linear(2, 2)).eval(), (2,))) == SLOPE


class _Forms(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.act = nn.Hardsigmoid()

    def forward(self, x):
        h = self.act(self.fc(x))
        h = F.hardsigmoid(h)
        return F.hardsigmoid(h, inplace=False) - 0.5


def test_module_and_functional_forms_are_captured_and_evaluated_exactly() -> None:
    model = _Forms().double().eval()
    g = capture(model, (4,))
    assert [n.op for n in g.nodes].count("hardsigmoid") == 3
    x = torch.randn(6, 4, dtype=torch.float64) * 5
    torch.testing.assert_close(g.activations(x)[g.output], model(x), rtol=0, atol=0)


def test_an_inplace_hardsigmoid_whose_input_is_read_again_is_refused() -> None:
    class InPlace(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(3, 2)

        def forward(self, x):
            h = self.fc(x)
            F.hardsigmoid(h, inplace=True)
            return h + F.hardsigmoid(h)

    with pytest.raises(UnsupportedLayerError, match="in-place"):
        capture(InPlace().eval(), (3,))


@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scale=st.sampled_from([1.0, 4.0, 12.0]), seed=st.integers(0, 2**16))
def test_no_hardsigmoid_certificate_exceeds_an_attack_on_random_nets(scale, seed) -> None:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.Hardsigmoid(), nn.Flatten(),
                          nn.Linear(32, 10), nn.Hardsigmoid(), nn.Linear(10, 3)).eval()
    with torch.no_grad():
        for m in model:
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                m.weight.mul_(scale)
    x = torch.rand(3, 1, 4, 4)
    assert_sound(model, x, "sound", exact=False, attack_steps=30)
    assert check_no_adversarial_in_relaxation_ball(model, x, steps=30) is not None
    eps = bk.certify(model, x, "crown").radius.clamp(max=1.0) * 2 + 0.05
    assert_crown_intervals_contain_samples(model, x, eps, samples=100)
