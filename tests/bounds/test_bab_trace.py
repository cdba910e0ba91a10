"""The anytime trace of ``bab`` (``RadiusTrace``): it starts at the start radius, only
rises, ends at the radius returned, never passes the exact radius, and thinning a full
trace only lowers its curve; on a fake clock (no timed test)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import boundkit as bk
from boundkit.bounds.bab import TRACE_POINTS, RadiusTrace
from boundkit.errors import BadArgumentError


class _FakeClock:
    """A clock advancing ``step`` seconds per reading (budgets become reading counts)."""

    def __init__(self, step: float) -> None:
        self.t, self.step = 0.0, step

    def __call__(self) -> float:
        self.t += self.step
        return self.t


def _mlp(seed: int, sizes: tuple[int, ...] = (4, 16, 16, 3)) -> nn.Sequential:
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers[:-1]).double().eval()


@pytest.mark.parametrize("seed", [0, 3])
def test_bab_trace_starts_at_crown_rises_and_ends_at_the_radius_below_the_exact_one(
        seed, monkeypatch) -> None:
    import boundkit.bounds.bab.options as bab_options

    model = _mlp(seed)
    x = torch.rand(6, 4, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    exact = bk.exact_radius(model, x, box=(0.0, 1.0))
    upper = torch.where(torch.isfinite(exact), exact, torch.ones_like(exact))
    monkeypatch.setattr(bab_options, "CLOCK", _FakeClock(1e-3))
    budget = 1.0
    cert = bk.certify(model, x, "bab", upper=upper, time_budget=budget, batch=8)
    crown = bk.certify(model, x, "crown").radius
    tr = RadiusTrace.from_info(cert.info)
    assert tr.seconds.shape == tr.radius.shape == (6, TRACE_POINTS)
    used = torch.isfinite(tr.seconds)
    assert bool(used[:, 0].all())
    # the first point: the start radius (crown's), charged its share of the start's time
    torch.testing.assert_close(tr.radius[:, 0], crown, rtol=0, atol=0)
    assert bool((tr.seconds[:, 0] > 0).all())
    for i in range(6):
        s, r = tr.seconds[i][used[i]], tr.radius[i][used[i]]
        # later points: later in time and strictly larger radii, none above the exact one
        assert bool((s[1:] >= s[:-1]).all()) and bool((r[1:] > r[:-1]).all()), (s, r)
        assert bool((r <= exact[i] * (1 + 1e-9)).all()), (r, exact[i])
        # nothing after the NaN padding
        assert int(used[i].sum()) == int(used[i].long().cumprod(0).sum())
    # the curve at the whole budget spent is the radius returned; before the start: 0
    spent = float(tr.seconds[used].max())
    torch.testing.assert_close(tr.at(max(spent, budget * 1.5)), cert.radius, rtol=0, atol=0)
    assert bool((tr.at(0.0) == 0).all())
    # the curve never falls as the budget grows
    grid = torch.linspace(0.0, spent, 25).tolist()
    vals = torch.stack([tr.at(b) for b in grid])
    assert bool((vals[1:] >= vals[:-1]).all())


def test_a_full_trace_drops_its_smallest_gain_keeps_its_ends_and_only_lowers_the_curve(
        ) -> None:
    n, m = 3, TRACE_POINTS + 40
    g = torch.Generator().manual_seed(1)
    times = torch.rand(n, m, generator=g, dtype=torch.float64).cumsum(1)
    radii = torch.rand(n, m, generator=g, dtype=torch.float64).cumsum(1)
    s, r, used = RadiusTrace.empty(n)
    for k in range(m):
        rows = torch.tensor([True, k % 2 == 0, k < TRACE_POINTS])  # full, half, never full
        RadiusTrace.record(s, r, used, rows, times[:, k], radii[:, k])
    assert used.tolist() == [TRACE_POINTS, (m + 1) // 2, TRACE_POINTS]
    full = RadiusTrace(times, radii)
    thin = RadiusTrace(s, r)
    for b in torch.linspace(0, float(times.max()) + 1, 200).tolist():
        a, t = full.at(b), thin.at(b)
        assert bool((t[0] <= a[0]).all()), b
    # first and last points kept; the row never full holds exactly its points
    assert float(s[0, 0]) == float(times[0, 0]) and float(r[0, -1]) == float(radii[0, -1])
    torch.testing.assert_close(r[2], radii[2, :TRACE_POINTS])
    assert bool((s[0, 1:] > s[0, :-1]).all())


def test_a_certificate_without_a_trace_is_refused_in_one_line() -> None:
    cert = bk.certify(_mlp(0), torch.rand(2, 4, dtype=torch.float64), "crown")
    with pytest.raises(BadArgumentError, match="no bab trace"):
        RadiusTrace.from_info(cert.info)


@pytest.mark.parametrize("seed", [0, 3])
def test_bab_retries_past_a_per_step_subproblem_cap_and_close_on_the_exact_radius(
        seed, monkeypatch) -> None:
    """A step that spends its subproblem cap is retried with twice the cap, as with twice
    the time: with a per-step cap far below what a step needs (4 subproblems here, 20,000
    by default, which the boxed MNIST MLP reaches within a minute), repeated identical
    steps used to hold the radius where it was for the rest of the budget; on a fake
    clock, a large budget now closes on the exact radius."""
    import dataclasses

    import boundkit.bounds.bab.options as bab_options
    import boundkit.bounds.bab.radius as bab_radius

    @dataclasses.dataclass(frozen=True)
    class SmallCap(bab_options.BabOptions):
        max_domains: int = 4

    monkeypatch.setattr(bab_radius, "BabOptions", SmallCap)
    model = _mlp(seed)
    x = torch.rand(6, 4, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    exact = bk.exact_radius(model, x, box=(0.0, 1.0))
    fin = torch.isfinite(exact)
    upper = torch.where(fin, exact, torch.ones_like(exact))
    monkeypatch.setattr(bab_options, "CLOCK", _FakeClock(1e-3))
    cert = bk.certify(model, x, "bab", upper=upper, time_budget=1.0, batch=8)
    assert bool((cert.radius <= exact * (1 + 1e-9)).all()), (cert.radius, exact)
    assert bool((cert.radius[fin] >= exact[fin] / (1 + 2e-3)).all()), (cert.radius, exact)
