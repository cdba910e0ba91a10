"""The yes/no-to-radius bisection of ``benchmarks/abcrown_side_by_side.py`` on fake oracles (no
alpha-beta-CROWN needed): what it returns is a radius the oracle verified, the bracket it reports
holds the oracle's threshold, and the per-call timeouts share the budget as documented."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from benchmarks.abcrown_side_by_side import _stub, bisect_radius, check_tree


class FakeClock:
    """A clock that each oracle call advances by ``cost`` seconds."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def threshold_oracle(r_star: float, clock: FakeClock, cost: float, log: list):
    def oracle(eps: float, timeout: float) -> bool:
        log.append((eps, timeout))
        clock.now += cost
        return eps < r_star

    return oracle


@settings(max_examples=200, deadline=None)
@given(r_star=st.floats(0.01, 2.0), hi=st.floats(0.05, 3.0), start_frac=st.floats(0.0, 1.2),
       calls=st.integers(1, 9), cost=st.floats(0.01, 3.0), budget=st.floats(0.5, 20.0))
def test_bisection_radius_is_verified_and_bracket_holds_threshold(r_star, hi, start_frac, calls,
                                                                   cost, budget):
    clock, log = FakeClock(), []
    out = bisect_radius(threshold_oracle(r_star, clock, cost, log), start_frac * hi, hi, budget,
                        calls, clock=clock)
    assert len(out.calls) == len(log) <= calls
    # the radius returned was answered "verified" (or is 0), so it lies below the threshold
    assert out.radius == 0.0 or any(eps == out.radius and ok for eps, ok, _ in out.calls)
    assert out.radius < r_star or out.radius == 0.0
    # every answer "not verified" is at or above the threshold; top is the smallest of them or hi
    assert out.top >= min(r_star, hi)
    assert out.radius < out.top
    assert out.seconds == pytest.approx(cost * len(log))
    # a call starts only while time is left, with (budget - spent) / (calls left) seconds
    for k, (_, timeout) in enumerate(log):
        assert timeout == pytest.approx((budget - cost * k) / (calls - k))
        assert timeout > 0


def test_bisection_halves_the_bracket_when_time_allows():
    clock, log = FakeClock(), []
    out = bisect_radius(threshold_oracle(0.6180, clock, 0.1, log), 0.3, 1.0, 100.0, 8,
                        clock=clock)
    assert [round(e, 6) for e, _ in log[:3]] == [0.3, 0.65, 0.475]
    assert len(log) == 8
    assert out.top - out.radius == pytest.approx(0.7 / 2 ** 7)
    assert out.radius < 0.6180 <= out.top


def test_bisection_with_a_verifier_that_never_answers_yes_returns_zero():
    out = bisect_radius(lambda eps, t: False, 0.5, 1.0, 10.0, 4, clock=FakeClock())
    assert out.radius == 0.0 and out.top == pytest.approx(0.0625)


def test_bisection_stops_when_the_budget_is_spent():
    clock, log = FakeClock(), []
    out = bisect_radius(threshold_oracle(0.9, clock, 5.0, log), 0.2, 1.0, 8.0, 7, clock=clock)
    assert len(log) == 2  # the first call overran its share; the second used up the rest
    assert out.seconds == 10.0


@pytest.mark.parametrize("bad", [dict(start=float("nan")), dict(start=-1.0), dict(hi=0.0),
                                 dict(budget=0.0), dict(calls=0)])
def test_bisection_refuses_bad_arguments(bad):
    kw = dict(start=0.1, hi=1.0, budget=1.0, calls=3) | bad
    with pytest.raises(ValueError, match="bisect_radius needs"):
        bisect_radius(lambda eps, t: True, **kw)


def test_missing_or_incomplete_tree_is_a_one_line_error(tmp_path):
    with pytest.raises(SystemExit, match="no such folder"):
        check_tree(tmp_path / "nowhere")
    (tmp_path / "complete_verifier").mkdir()
    (tmp_path / "complete_verifier" / "abcrown.py").write_text("")
    with pytest.raises(SystemExit, match=r"not a complete alpha-beta-CROWN tree \(8 of its"):
        check_tree(tmp_path)


def test_stubbed_optional_module_refuses_to_run():
    mod = _stub("gurobipy")
    with pytest.raises(RuntimeError, match="gurobipy.Model: optional dependency stubbed"):
        mod.Model()
    with pytest.raises(AttributeError):
        mod.__file__  # noqa: B018
