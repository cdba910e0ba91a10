"""The radius search of ``crown`` and ``alpha`` (``search_radius``): it converges whatever the
shape of the margin bound m (smooth, a cliff of five orders of magnitude, ripples), ends
within rtol of the largest radius a dense scan of the relaxation certifies, never returns a
smaller radius for a tighter rtol, and reports the samples its evaluation limit stopped."""

from __future__ import annotations

import math

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import boundkit as bk
from boundkit.bounds.crown import (
    CrownRun,
    RadiusStep,
    plan_crown,
    search_radius,
)
from boundkit.bounds.crown.search import MAX_EVALUATIONS
from boundkit.bounds.output import margins
from boundkit.graph.cache import graph_for
from boundkit.testing import property_examples

FAST = settings(max_examples=property_examples(25), deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
NETS = settings(max_examples=property_examples(5), deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# ---------------------------------------------------------------- synthetic margin bounds
class FakeRun:
    r"""A stand-in for :class:`CrownRun` whose relaxation at radius e has the margin bound
    ``m(e)`` of a given function and the line through it of slope ``A / R``
    (:math:`\varphi(e)=e+m(e)R/A`, certified :math:`\min(e,\varphi)`, as in ``radius_step``);
    with ``fail_certifies=False`` a failure certifies nothing."""

    def __init__(self, m, a: torch.Tensor, r: torch.Tensor, fail_certifies: bool = True):
        self.m, self.a, self.r, self.fail_certifies = m, a, r, fail_certifies
        self.tried: list[torch.Tensor] = []

    def subset(self, idx: torch.Tensor) -> None:
        return None

    def remember(self, keep: torch.Tensor) -> None:
        pass

    def evaluate(self, eps: torch.Tensor, label: torch.Tensor) -> RadiusStep:
        self.tried.append(eps.clone())
        m = self.m(eps)
        phi = eps + m * self.r / self.a
        if not self.fail_certifies:
            phi = torch.where(m >= 0, phi, torch.full_like(phi, -math.inf))
        cert = torch.minimum(phi.clamp(min=0.0), eps)
        return RadiusStep(eps, phi, m, cert)


def _first_root(m, hi: float) -> float:
    """The smallest root of ``m`` on (0, hi]: a dense scan, then bisection to 1e-14."""
    grid = torch.linspace(0, hi, 200_001, dtype=torch.float64)[1:]
    bad = torch.nonzero(m(grid) < 0).flatten()
    if bad.numel() == 0:
        return math.inf
    k = int(bad[0])
    lo, up = (float(grid[k - 1]) if k else 0.0), float(grid[k])
    while up - lo > 1e-14 * up:
        mid = (lo + up) / 2
        if float(m(torch.tensor([mid], dtype=torch.float64))[0]) >= 0:
            lo = mid
        else:
            up = mid
    return lo


@st.composite
def margin_bounds(draw):
    """(m, A, R, monotone): concave powers, cliffs of 10^3-10^6 at R, and ripples that make
    m non-monotone (several roots)."""
    a = draw(st.floats(0.1, 20.0))
    r = draw(st.floats(1e-4, 5.0))
    kind = draw(st.sampled_from(["power", "cliff", "ripple"]))
    if kind == "power":
        p = draw(st.floats(1.0, 4.0))
        return (lambda e: a * (1 - (e / r) ** p)), a, r, True
    if kind == "cliff":
        drop = 10 ** draw(st.floats(3.0, 6.0))
        slope = draw(st.floats(0.0, 0.5))  # m hardly moves before the cliff
        return (lambda e: torch.where(e < r, a * (1 - slope * e / r), -drop * a)), a, r, True
    w = draw(st.floats(0.05, 0.6))
    k = draw(st.floats(5.0, 60.0))
    return (lambda e: a * (1 - e / r) + w * a * torch.sin(k * e / r)), a, r, False


def _search(run, a: float, r_lo: float, rtol: float):
    lo = torch.tensor([r_lo], dtype=torch.float64)
    return search_radius(run, torch.zeros(1, dtype=torch.long), lo,
                         torch.tensor([a], dtype=torch.float64), rtol)


@FAST
@given(mb=margin_bounds(), start=st.floats(0.0, 0.9), rtol=st.sampled_from([1e-2, 1e-3, 1e-6]),
       certifies=st.booleans())
def test_search_ends_within_rtol_below_the_first_root_whatever_the_shape_of_m(
        mb, start, rtol, certifies) -> None:
    m, a, r, monotone = mb
    at = torch.tensor([a], dtype=torch.float64)
    rr = torch.tensor([r], dtype=torch.float64)
    root = _first_root(m, 4 * r)
    run = FakeRun(m, at, rr, fail_certifies=certifies and monotone)
    found = _search(run, a, start * root, rtol)
    radius = float(found.radius[0])
    assert not bool(found.capped[0]), (len(run.tried), radius, root)
    # every failure lies at or above the first root, and the search stops within rtol
    assert radius * (1 + rtol) * (1 + 1e-12) >= root, (radius, root, len(run.tried))
    assert float(found.fail[0]) <= radius * (1 + rtol) * (1 + 1e-12)
    if monotone:  # nothing above the root is certified
        assert radius <= root * (1 + 1e-9), (radius, root)
    assert int(found.evaluations[0]) == len(run.tried)


@FAST
@given(mb=margin_bounds(), start=st.floats(0.0, 0.9))
def test_a_tighter_rtol_never_returns_a_smaller_radius(mb, start) -> None:
    m, a, r, _ = mb
    at, rr = torch.tensor([a], dtype=torch.float64), torch.tensor([r], dtype=torch.float64)
    root = _first_root(m, 4 * r)
    radii = [float(_search(FakeRun(m, at, rr), a, start * root, rtol).radius[0])
             for rtol in (0.3, 1e-2, 1e-3, 1e-5, 1e-9)]
    assert radii == sorted(radii), radii


def test_a_cliff_of_m_costs_a_bounded_number_of_steps() -> None:
    """The trace of issue 21: a pass at 4.3e-6 with m = 10.41, a failure at 1.44 with
    m = -4e5; the root at 0.22. The old search crawled by 3.7e-5 a step for 40 steps."""
    root = 0.22
    a = torch.tensor([10.41], dtype=torch.float64)
    run = FakeRun(lambda e: torch.where(e < root, 10.41 - 0.02 * e, -4e5 * torch.ones_like(e)),
                  a, torch.tensor([root / 0.99], dtype=torch.float64))
    found = _search(run, 10.41, 2.15e-6, 1e-3)
    assert float(found.radius[0]) >= root / (1 + 1e-3)
    assert int(found.evaluations[0]) <= 32, found.evaluations


def test_the_evaluation_limit_stops_and_reports_the_sample() -> None:
    a, r = torch.tensor([1.0, 1.0], dtype=torch.float64), torch.tensor([1.0, 1.0],
                                                                       dtype=torch.float64)
    run = FakeRun(lambda e: 1 - e, a, r)
    lo = torch.tensor([0.5, 0.5], dtype=torch.float64)
    found = search_radius(run, torch.zeros(2, dtype=torch.long), lo,
                          torch.tensor([1.0, -1.0], dtype=torch.float64), 1e-12,
                          max_evaluations=2)
    assert found.capped.tolist() == [True, False]  # the second has no margin: not searched
    assert found.evaluations.tolist() == [2, 0]
    assert float(found.radius[0]) >= 0.5 and float(found.radius[1]) == 0.5


# ---------------------------------------------------------------- real relaxations
def _mlp(seed: int, depth: int, width: int, scale: float, d: int = 6) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    layers: list[nn.Module] = []
    sizes = [d, *[width] * depth, 3]
    for i in range(len(sizes) - 1):
        lin = nn.Linear(sizes[i], sizes[i + 1])
        with torch.no_grad():
            lin.weight.copy_(torch.randn(lin.weight.shape, generator=g) * scale
                             / math.sqrt(sizes[i]))
            lin.bias.copy_(torch.randn(lin.bias.shape, generator=g) * 0.3)
        layers.append(lin)
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers).double().eval()


def _convnet(seed: int, depth: int, channels: int, scale: float) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    layers: list[nn.Module] = []
    cin = 1
    for _ in range(depth):
        conv = nn.Conv2d(cin, channels, 3, padding=1)
        with torch.no_grad():
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) * scale
                              / math.sqrt(9 * cin))
            conv.bias.copy_(torch.randn(conv.bias.shape, generator=g) * 0.2)
        layers += [conv, nn.ReLU()]
        cin = channels
    fc = nn.Linear(channels * 36, 3)
    with torch.no_grad():
        fc.weight.copy_(torch.randn(fc.weight.shape, generator=g) / math.sqrt(channels * 36))
    return nn.Sequential(*layers, nn.Flatten(), fc).double().eval()


@st.composite
def deep_networks(draw):
    """Deep narrow and wide ReLU MLPs and conv nets; weight scales above 1 make m fall off
    a cliff once many ReLUs turn unstable."""
    seed = draw(st.integers(0, 10_000))
    scale = draw(st.sampled_from([1.0, 1.5, 2.5]))
    kind = draw(st.sampled_from(["narrow", "wide", "conv"]))
    if kind == "narrow":
        model = _mlp(seed, draw(st.integers(4, 8)), draw(st.integers(3, 8)), scale)
        shape: tuple[int, ...] = (6,)
    elif kind == "wide":
        model = _mlp(seed, draw(st.integers(3, 5)), draw(st.integers(24, 40)), scale)
        shape = (6,)
    else:
        model = _convnet(seed, draw(st.integers(2, 3)), draw(st.integers(2, 3)), scale)
        shape = (1, 6, 6)
    x = torch.rand((1, *shape), generator=torch.Generator().manual_seed(seed + 1),
                   dtype=torch.float64)
    return model, x


def _search_net(model: nn.Module, x: torch.Tensor, box, rtol: float):
    graph = graph_for(model, x)
    plan = plan_crown(graph)
    run = CrownRun(graph, plan, x, box)
    sound = torch.nan_to_num(run.sound.result.radius, nan=0.0).clamp_min(0.0)
    label, m = margins(run.sound.acts[graph.logits.name])
    found = search_radius(run, label, sound, m.min(1).values, rtol, reach=run.reach)
    return graph, plan, label, sound, found


def _scan(graph, plan, x, box, label, radii: torch.Tensor) -> torch.Tensor:
    """The radius certified by a fresh relaxation built at each of ``radii`` (one batch)."""
    k = radii.numel()
    run = CrownRun(graph, plan, x.expand(k, *x.shape[1:]).contiguous(), box)
    return run.evaluate(radii, label.expand(k)).certified


@NETS
@given(net=deep_networks(), box=st.sampled_from([None, (0.0, 1.0)]),
       rtol=st.sampled_from([1e-2, 1e-3]))
def test_search_ends_within_rtol_below_the_largest_radius_a_dense_scan_certifies(
        net, box, rtol) -> None:
    """A scan of 300 radii (geometric, from the ``sound`` radius / 10 to 4x the search's
    ends) plus the failure the search ended on: the largest radius certified up to the
    first failure of the scan is at most the search's radius times 1 + rtol."""
    model, x = net
    graph, plan, label, sound, found = _search_net(model, x, box, rtol)
    if not bool((torch.isfinite(found.radius) & (found.radius > 0)).all()):
        return  # nothing to search (margin <= 0) or the whole box certified
    assert not bool(found.capped.any()), found.evaluations
    r, fail = float(found.radius[0]), float(found.fail[0])
    top = 4 * max(r, fail if math.isfinite(fail) else r)
    bottom = max(float(sound[0]), r * 1e-6) / 10
    grid = torch.logspace(math.log10(bottom), math.log10(top), 300, dtype=torch.float64)
    if math.isfinite(fail):
        grid = torch.sort(torch.cat([grid, torch.tensor([fail], dtype=torch.float64)])).values
    cert = _scan(graph, plan, x, box, label, grid)
    failed = torch.nonzero(cert < grid).flatten()
    upto = int(failed[0]) + 1 if failed.numel() else grid.numel()
    ref = float(cert[:upto].max())
    assert r * (1 + rtol) * (1 + 1e-9) >= ref, (r, ref, fail, int(found.evaluations[0]))


@NETS
@given(net=deep_networks(), box=st.sampled_from([None, (0.0, 1.0)]))
def test_crown_radius_never_shrinks_as_rtol_tightens_on_deep_networks(net, box) -> None:
    model, x = net
    radii = [float(_search_net(model, x, box, rtol)[-1].radius[0])
             for rtol in (1e-1, 1e-3, 1e-6)]
    assert radii == sorted(radii), radii


def test_alpha_radius_never_shrinks_as_rtol_tightens() -> None:
    model = _mlp(0, 3, 5, 1.5).float()
    x = torch.rand((2, 6), generator=torch.Generator().manual_seed(0))
    radii = torch.stack([bk.certify(model, x, "alpha", rtol=rtol, iterations=2).radius
                         for rtol in (1e-1, 1e-3, 1e-5)])
    assert bool((radii[1:] >= radii[:-1]).all()), radii


def test_crown_reports_the_search_in_info() -> None:
    model = _mlp(0, 3, 8, 1.0).float()
    x = torch.rand((4, 6), generator=torch.Generator().manual_seed(0))
    cert = bk.certify(model, x, "crown")
    assert cert.info["search_capped"].dtype == torch.bool
    assert not bool(cert.info["search_capped"].any())
    assert bool((cert.info["search_evaluations"] <= MAX_EVALUATIONS).all())
