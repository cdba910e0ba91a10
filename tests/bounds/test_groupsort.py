"""GroupSort / MaxMin (issue 24, step 3): the module semantics, capture, the pair
relaxation containing (max, min) on dense samples of the box and at its corners, the sound
constant (a permutation within groups), and no certificate above an adversarial example."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from boundkit.bounds.groupsort import pair_lines
from boundkit.errors import UnsupportedLayerError
from boundkit.graph import capture
from boundkit.models.layers import GroupSort, MaxMin
from boundkit.testing import (
    assert_crown_intervals_contain_samples,
    assert_sound,
    check_no_adversarial_in_relaxation_ball,
)


def test_maxmin_is_max_and_min_of_the_halves_and_groupsort_sorts_groups() -> None:
    x = torch.randn(3, 6, 2, 2)
    a, b = x.chunk(2, 1)
    assert torch.equal(MaxMin()(x), torch.cat([torch.maximum(a, b), torch.minimum(a, b)], 1))
    y = GroupSort(3)(x)
    assert torch.equal(y[:, 3:], x[:, 3:].sort(1, descending=True).values)
    z = torch.randn(4, 8)
    assert torch.equal(GroupSort(2, dim=-1)(z), GroupSort(2)(z))
    with pytest.raises(ValueError):
        GroupSort(3)(z)


@settings(max_examples=200, deadline=None)
@given(ends=st.lists(st.floats(-20, 20), min_size=4, max_size=4),
       w=st.sampled_from([None, 0.0, 1e-6, 0.5]))
def test_pair_lines_contain_max_and_min_on_dense_samples_and_at_the_corners(ends, w) -> None:
    la, ua, lb, ub = ends
    la, ua = min(la, ua), max(la, ua)
    if w is not None:
        ua = la + w
    lb, ub = min(lb, ub), max(lb, ub)
    t = [torch.tensor([v], dtype=torch.float64) for v in (la, ua, lb, ub)]
    max_lo, max_hi, min_lo, min_hi, off = pair_lines(*t)
    g = torch.linspace(0, 1, 101, dtype=torch.float64)
    a = (la + (ua - la) * g).clamp(la, ua).reshape(-1, 1)
    b = (lb + (ub - lb) * g).clamp(lb, ub).reshape(1, -1)
    a, b = a.expand(101, 101), b.expand(101, 101)
    mx, mn = torch.maximum(a, b), torch.minimum(a, b)
    assert bool((max_lo * a + (1 - max_lo) * b <= mx).all())
    assert bool((mx <= max_hi * a + (1 - max_hi) * b + off).all())
    assert bool((min_lo * a + (1 - min_lo) * b - off <= mn).all())
    assert bool((mn <= min_hi * a + (1 - min_hi) * b).all())


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**16), g=st.sampled_from([2, 3, 4]),
       layout=st.sampled_from(["consecutive", "strided"]))
def test_groupsort_is_1_lipschitz_on_random_pairs(seed, g, layout) -> None:
    gen = torch.Generator().manual_seed(seed)
    x, y = torch.randn(2, 64, 12, generator=gen, dtype=torch.float64)
    d = (GroupSort(g, layout=layout)(x) - GroupSort(g, layout=layout)(y)).norm(dim=1)
    assert bool((d <= (x - y).norm(dim=1) * (1 + 1e-12)).all())


def test_capture_reads_maxmin_and_groupsort_and_refuses_other_axes() -> None:
    m = nn.Sequential(nn.Linear(4, 8), MaxMin(), nn.Linear(8, 6), GroupSort(3, dim=-1),
                      nn.Linear(6, 2)).eval()
    g = capture(m, (4,))
    got = [(n.op, n.attrs) for n in g.nodes if n.op == "groupsort"]
    assert got == [("groupsort", {"group_size": 2, "layout": "strided", "dim": 1}),
                   ("groupsort", {"group_size": 3, "layout": "consecutive", "dim": 1})]
    bad = nn.Sequential(nn.Conv2d(1, 2, 1), GroupSort(2, dim=3), nn.Flatten(),
                        nn.Linear(8, 2)).eval()
    with pytest.raises(UnsupportedLayerError, match="dim=3"):
        capture(bad, (1, 2, 2))


@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**16), scale=st.sampled_from([1.0, 3.0]),
       act=st.sampled_from(["maxmin", "pairs", "group4"]))
def test_no_certificate_exceeds_an_attack_on_random_maxmin_nets(seed, scale, act) -> None:
    torch.manual_seed(seed)
    a = {"maxmin": MaxMin(), "pairs": GroupSort(2), "group4": GroupSort(4)}[act]
    model = nn.Sequential(nn.Conv2d(1, 4, 3), a, nn.Flatten(), nn.Linear(16, 8), MaxMin(),
                          nn.Linear(8, 3)).eval()
    with torch.no_grad():
        for m in model:
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                m.weight.mul_(scale)
    x = torch.rand(3, 1, 4, 4)
    assert_sound(model, x, "sound", exact=False, attack_steps=30)
    r = check_no_adversarial_in_relaxation_ball(model, x, steps=30)
    assert r is not None
    eps = r["crown"].clamp(max=1.0) * 2 + 0.05
    assert_crown_intervals_contain_samples(model, x, eps, samples=100)
