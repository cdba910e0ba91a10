"""The search's first upper ends (an attack's points, rays, descent over regions) take at
most ``DESCENT_SHARE`` of a time limit, and never leave the lower end at 0 when domains could
have been bounded: on MNIST sample 13 of the benchmark MLP the descent's region QPs alone
used the whole 60 s limit, and ``exact_radius`` reported ``0 <= radius <= 1.34`` where
``crown`` certifies 0.74 (``docs/exact.md``)."""

from __future__ import annotations

import pytest
import torch
from helpers_exact import mlp

import boundkit as bk
import boundkit.bounds.bab.options as opts
import boundkit.exact.search as exact_search
from boundkit.exact import exact_radius


def test_slow_region_qps_leave_time_for_the_lower_end(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every region QP costs 10 units of a fake clock and the limit is 100: the descent would
    spend it all (old behaviour: no domain bounded, lower end 0); it stops at a quarter, the
    domains are bounded, and the lower end is a certified radius (at most the exact one)."""
    model = mlp((4, 8, 8, 8, 3), 13)
    x = torch.randn(3, 4, generator=torch.Generator().manual_seed(13), dtype=torch.float64)
    ref = exact_radius(model, x, max_regions=20000)
    clock = [0.0]
    monkeypatch.setattr(opts, "CLOCK", lambda: clock[0])
    qp = exact_search.min_norm

    def slow_qp(*args: object, **kw: object) -> object:
        clock[0] += 10.0
        return qp(*args, **kw)

    monkeypatch.setattr(exact_search, "min_norm", slow_qp)
    res = exact_radius(model, x, time_limit=100.0, on_budget="nan", return_details=True)
    hard = ref > 0.5  # the samples whose search needs domains (sample 0 closes at once)
    assert hard.sum() >= 2
    assert (res.nodes[hard] > 0).all(), res.nodes
    assert (res.lower[hard] > 0.5 * ref[hard]).all(), (res.lower, ref)
    assert (res.lower <= ref * (1 + 1e-9)).all()
    done = ~torch.isnan(res.radius)
    assert torch.allclose(res.radius[done], ref[done], rtol=1e-6)


@pytest.mark.parametrize("seed", [0, 3])
def test_a_stopped_search_starts_no_higher_than_the_best_attack(
        seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """With a time limit the ``best`` attack's points seed the upper end: a search stopped
    long before it closes (every region QP costs 10 units of a fake clock, the limit is 30)
    still reports an upper end at most the attack's verified norm (the region holding the
    attack's point has its QP optimum no farther), where rays and descent alone stop
    above it."""
    model = mlp((6, 16, 16, 4), 40 + seed)
    x = torch.rand(4, 6, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    box = (0.0, 1.0)
    att = bk.attack(model, x, "best", box=box)
    clock = [0.0]
    monkeypatch.setattr(opts, "CLOCK", lambda: clock[0])
    qp = exact_search.min_norm

    def slow_qp(*args: object, **kw: object) -> object:
        clock[0] += 10.0
        return qp(*args, **kw)

    monkeypatch.setattr(exact_search, "min_norm", slow_qp)
    res = exact_radius(model, x, box=box, time_limit=30.0, on_budget="nan",
                       return_details=True)
    found = att.success.cpu()
    assert found.any() and torch.isnan(res.radius).any()
    assert (res.upper[found] <= att.norm.cpu()[found] * (1 + 1e-9)).all(), (res.upper, att.norm)
    assert (res.lower <= res.upper).all()
