"""Branch and bound (``bk.verify`` and the ``bab`` method): never verifies beyond the
exact radius, its counterexamples are adversarial on the model, every domain's bound holds
on the points of the ball satisfying its splits (beta terms included), the ``bab`` radius
lies between ``crown``'s and the exact one, odd models are handled or refused by name, bad
arguments get one-line errors."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import boundkit as bk
from boundkit.bounds.bab import (
    BabOptions,
    BranchAndBound,
    Domains,
    bab_plan,
    verify,
)
from boundkit.bounds.crown import CrownRun
from boundkit.bounds.output import margins
from boundkit.errors import BadArgumentError, UnsupportedLayerError
from boundkit.testing import (
    adversarial_search,
    assert_sound,
    inputs_for,
    property_examples,
    small_relu_convnets,
    small_relu_mlps,
)

FAST = settings(max_examples=property_examples(6), deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _mlp(seed: int, sizes: tuple[int, ...] = (4, 16, 16, 3), leak: float = 0.0
         ) -> nn.Sequential:
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(a, b), nn.LeakyReLU(leak) if leak else nn.ReLU()]
    return nn.Sequential(*layers[:-1]).double().eval()


@FAST
@given(model=small_relu_mlps(max_hidden=10), data=st.data(),
       factor=st.sampled_from([0.5, 0.9, 0.98, 1.02, 1.5]),
       box=st.sampled_from([None, (0.0, 1.0)]))
def test_verified_radius_never_above_exact_and_falsified_examples_are_adversarial(
        model, data, factor, box) -> None:
    x = data.draw(inputs_for(model, n=(1, 3)))
    exact = bk.exact_radius(model, x, box=box)  # (1 - 1e-6) R <= rho <= R
    r = torch.where(torch.isfinite(exact), exact * factor, torch.ones_like(exact))
    res = verify(model, x, r, box=box, time_budget=0.5, max_domains=400)
    for i, s in enumerate(res.status):
        assert s in ("verified", "falsified", "unknown"), s
        # the radius certified on the way (unknown answers too) is a certificate
        assert float(res.certified[i]) <= float(exact[i]) * (1 + 1e-9)
        if s == "verified":
            assert float(r[i]) <= float(exact[i]) * (1 + 1e-9), (r[i], exact[i], res.reason[i])
        if s == "falsified":
            xa = res.counterexample[i:i + 1].to(x.dtype)
            assert int(model(xa).argmax(1)) != int(model(x[i:i + 1]).argmax(1))
            assert float((xa - x[i:i + 1]).double().norm()) < float(r[i])
            if box is not None:
                assert bool(((xa >= box[0]) & (xa <= box[1])).all())


@settings(max_examples=property_examples(3), deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(model=small_relu_convnets(max_relus=16), data=st.data())
def test_bab_radius_lies_between_crown_and_exact_on_small_convnets(model, data) -> None:
    x = data.draw(inputs_for(model, n=(1, 2)))
    exact = bk.exact_radius(model, x, box=(0.0, 1.0))
    upper = torch.where(torch.isfinite(exact), exact, torch.ones_like(exact))
    c = bk.certify(model, x, "crown").radius
    b = bk.certify(model, x, "bab", upper=upper, time_budget=0.2)
    assert bool((b.radius >= c).all()), (b.radius, c)
    assert bool((b.radius <= exact * (1 + 1e-9)).all()), (b.radius, exact)
    fin = torch.isfinite(exact)
    assert bool((b.info["ratio"][fin] <= 1 + 1e-9).all())


def test_bab_closes_most_of_the_gap_on_a_small_mlp() -> None:
    model = _mlp(0)
    x = torch.rand(6, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    exact = bk.exact_radius(model, x, box=(0.0, 1.0))
    c = bk.certify(model, x, "crown").radius
    # the subproblem budget binds, not the clock (a loaded machine gives the same answer)
    b = bk.certify(model, x, "bab", upper=exact, time_budget=60.0, max_domains=300).radius
    assert bool((b <= exact * (1 + 1e-9)).all())
    assert float((b / exact).median()) >= 0.95
    assert float((b - c).sum()) > 0


def _pool_net(seed: int) -> nn.Sequential:
    """Conv-ReLU-MaxPool-Conv-ReLU-MaxPool (one overlapping, one padded)-Linear on
    [1, 8, 8], 3 classes: the small CNN's pattern, with odd pooling settings."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.MaxPool2d(3, stride=1),
                         nn.Conv2d(3, 4, 2), nn.ReLU(), nn.MaxPool2d(2, padding=1),
                         nn.Flatten(), nn.Linear(4 * 2 * 2, 3)).double().eval()


def check_domain_bounds(seed: int, leak: float = 0.0, iterations: int = 15,
                        refresh: int = 1, per_class: bool = False, pool: bool = False) -> int:
    """Random split sides on the neurons (some infeasible), beta multipliers optimised,
    then 4,000 points of each ball: at every point that satisfies its domain's splits
    every margin is above the domain's bound. ``pool``: a conv net with max poolings
    (kept relaxed under the splits) instead of an MLP. Returns the feasible points
    checked."""
    model = _pool_net(seed) if pool else _mlp(seed, (5, 12, 12, 3), leak)
    shape = (1, 8, 8) if pool else (5,)
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(3, *shape, generator=gen, dtype=torch.float64)
    eps = torch.full((3,), 0.3, dtype=torch.float64)
    graph = bk.capture(model, x)
    plan = bab_plan(graph)
    run = CrownRun(graph, plan.crown, x, (0.0, 1.0))
    label, _ = margins(run.sound.acts[graph.logits.name])
    bb = BranchAndBound(graph, plan, run, label, eps,
                        BabOptions(iterations=iterations, lr_beta=0.5, refresh=refresh))
    d = 24
    sample = torch.arange(d) % 3
    # sides: the pattern of a random point of the ball on 3 random neurons per layer
    # (feasible), one side flipped in every fourth domain (maybe infeasible)
    u = torch.randn(d, *shape, generator=gen, dtype=torch.float64)
    u = u / u.flatten(1).norm(dim=1).reshape(d, *([1] * len(shape)))
    anchor = (x[sample] + 0.25 * u).clamp(0, 1)
    pre = graph.activations(anchor)
    signs = {}
    for r in plan.relus:
        y = pre[r.inputs[0]].reshape(d, -1)
        pick = torch.rand(y.shape, generator=gen).argsort(1)[:, :3]
        s = torch.zeros(y.shape, dtype=torch.int8)
        s.scatter_(1, pick, torch.where(y.gather(1, pick) >= 0, 1, -1).to(torch.int8))
        s[::4, pick[0, 0]] *= -1
        signs[r.name] = s.reshape(d, *r.in_shapes[0])
    if per_class:  # one competing class per domain: its margin alone
        cls = (label[sample] + 1 + torch.arange(d) % 2) % 3
        dom = Domains(sample, signs, torch.zeros(d, 1, dtype=torch.bool), cls=cls)
    else:
        dom = Domains(sample, signs, torch.zeros(d, 3, dtype=torch.bool))
    b = bb.bound(dom)
    # points of each ball inside the box, and their pre-activations
    m = 4000
    k = math.prod(shape)
    dirs = torch.randn(d, m, k, generator=gen, dtype=torch.float64)
    dirs = dirs / dirs.norm(dim=2, keepdim=True)
    rad = torch.rand(d, m, 1, generator=gen, dtype=torch.float64) ** (1 / k) * 0.3
    pts = (x[sample].reshape(d, 1, k) + dirs * rad).clamp(0, 1).reshape(-1, *shape)
    acts = graph.activations(pts)
    ok = torch.ones(d * m, dtype=torch.bool)
    for r in plan.relus:
        y = acts[r.inputs[0]].reshape(d * m, -1)
        s = signs[r.name].reshape(d, 1, -1).expand(d, m, -1).reshape(d * m, -1)
        ok &= ((s >= 0) | (y <= 0)).all(1) & ((s <= 0) | (y >= 0)).all(1)
    logits = acts[graph.logits.name].reshape(d, m, 3)
    lab = label[sample]
    marg = logits.gather(2, lab.reshape(d, 1, 1).expand(d, m, 1)) - logits  # [d, m, 3]
    lower = b.lower
    if per_class:  # the bound of margin cls, +inf for the others
        lower = torch.full((d, 3), torch.inf, dtype=torch.float64).scatter(
            1, cls.unsqueeze(1), b.lower)
    low = lower.unsqueeze(1).expand(d, m, 3)
    viol = (marg < low) & ok.reshape(d, m, 1) & torch.isfinite(low)
    assert not bool(viol.any()), float((low - marg)[viol].max())
    return int(ok.sum())


@pytest.mark.parametrize("per_class", [False, True])
@pytest.mark.parametrize("leak", [0.0, 0.1])
@pytest.mark.parametrize("seed", range(3))
def test_every_domain_bound_holds_on_the_sampled_points_that_satisfy_its_splits(
        seed, leak, per_class) -> None:
    """The soundness of the split handling itself (beta multipliers included)."""
    assert check_domain_bounds(seed, leak, per_class=per_class) > 0  # some are feasible


@pytest.mark.parametrize("seed", range(3))
def test_every_domain_bound_holds_with_max_poolings_kept_relaxed(seed) -> None:
    """Max poolings keep crown's relaxation on each domain's own (split) intervals."""
    assert check_domain_bounds(seed, pool=True, per_class=seed % 2 == 1,
                               refresh=1 if seed < 2 else 1 << 20) > 0


def test_bab_on_max_pooling_nets_lies_between_crown_and_the_attack() -> None:
    """On conv nets with max poolings (overlapping and padded windows): the ``bab`` radius
    is at least ``crown``'s, never above a verified attack norm, raised on some sample;
    ``verify`` at radii between never falsifies inside a certificate, and its
    counterexamples are adversarial."""
    raised = 0.0
    for seed in (0,):
        model = _pool_net(seed)
        x = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(seed),
                       dtype=torch.float64)
        _, norm = adversarial_search(model, x, steps=100, box=(0.0, 1.0), seed=seed)
        c = bk.certify(model, x, "crown").radius
        b = bk.certify(model, x, "bab", upper=norm, time_budget=60.0, max_domains=64)
        assert bool((b.radius >= c).all()), (b.radius, c)
        assert bool((b.radius <= norm * (1 + 1e-9)).all()), (b.radius, norm)
        raised += float((b.radius - c).sum())
        res = verify(model, x, b.radius, time_budget=60.0, max_domains=20)
        assert "falsified" not in res.status
        res = verify(model, x, torch.where(torch.isfinite(norm), norm * 1.05, 1.0),
                     time_budget=60.0, max_domains=20)
        for i, s_ in enumerate(res.status):
            assert s_ != "verified" or not math.isfinite(float(norm[i]))
            assert float(res.certified[i]) <= float(norm[i]) * (1 + 1e-9)
            if s_ == "falsified":
                xa = res.counterexample[i:i + 1]
                assert int(model(xa).argmax(1)) != int(model(x[i:i + 1]).argmax(1))
                assert float((xa - x[i:i + 1]).norm()) < float(norm[i]) * 1.05
    assert raised > 0


@pytest.mark.slow
def test_soak_domain_bounds_and_verify_against_the_exact_radius() -> None:
    """Soak: 300 nets x 24 domains x 4,000 points for the domain bounds (both ReLU kinds,
    with and without recomputed intermediate bounds, one net in five with max poolings),
    and 5,000 verify answers on tiny MLPs against the exact radius."""
    points = 0
    for seed in range(300):
        points += check_domain_bounds(1000 + seed, 0.1 if seed % 2 else 0.0,
                                      iterations=10, refresh=1 if seed % 3 else 1 << 20,
                                      per_class=seed % 4 < 2, pool=seed % 5 == 4)
        if seed % 50 == 49:
            print(f"soak: {seed + 1} nets, {points} feasible points, 0 violations", flush=True)
    gen = torch.Generator().manual_seed(7)
    answers = 0
    seed = 0
    while answers < 5000:
        model = _mlp(2000 + seed, (3, 8, 8, 3))
        seed += 1
        x = torch.rand(25, 3, generator=gen, dtype=torch.float64)
        exact = bk.exact_radius(model, x, box=(0.0, 1.0))
        fin = torch.isfinite(exact)
        f = 0.9 + 0.2 * torch.rand(25, generator=gen, dtype=torch.float64)
        r = torch.where(fin, exact * f, torch.ones_like(exact))
        res = verify(model, x, r, time_budget=0.05, max_domains=100)
        for i, s_ in enumerate(res.status):
            if s_ == "verified":
                assert float(r[i]) <= float(exact[i]) * (1 + 1e-9), (seed, i)
            assert float(res.certified[i]) <= float(exact[i]) * (1 + 1e-9), (seed, i)
            if s_ == "falsified":
                xa = res.counterexample[i:i + 1]
                assert int(model(xa).argmax(1)) != int(model(x[i:i + 1]).argmax(1))
        answers += 25
        if answers % 500 == 0:
            print(f"soak: {answers} verify answers, 0 violations", flush=True)


def test_residual_network_with_dead_and_always_on_relus_is_never_over_certified() -> None:
    class Res(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.c = nn.Linear(4, 8), nn.Linear(8, 8), nn.Linear(8, 3)
            with torch.no_grad():
                self.a.bias[:2] = -50.0  # dead
                self.a.bias[2:4] = 50.0  # always on

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = torch.relu(self.a(x))
            return self.c(h + torch.relu(self.b(h)))

    torch.manual_seed(1)
    model = Res().double().eval()
    x = torch.rand(5, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    _, norm = adversarial_search(model, x, steps=80, box=(0.0, 1.0), seed=0)
    c = bk.certify(model, x, "crown").radius
    b = bk.certify(model, x, "bab", upper=norm, time_budget=0.5)
    assert bool((b.radius >= c).all())
    assert bool((b.radius <= norm * (1 + 1e-9)).all()), (b.radius, norm)
    r = torch.where(torch.isfinite(b.radius), b.radius, torch.zeros_like(b.radius))
    res = verify(model, x, r, time_budget=0.5)
    assert "falsified" not in res.status  # nothing adversarial inside a certificate


@pytest.mark.parametrize("act,op", [(nn.Tanh(), "tanh"), (nn.Sigmoid(), "sigmoid")])
def test_unsplittable_nonlinearities_are_refused_by_name(act, op) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), act, nn.Flatten(),
                          nn.LazyLinear(3)).eval()
    x = torch.rand(2, 1, 6, 6)
    model(x)
    with pytest.raises(UnsupportedLayerError, match=op):
        verify(model, x, 0.1)
    with pytest.raises(UnsupportedLayerError, match=op):
        bk.certify(model, x, "bab", upper=1.0)


def test_verify_trivial_cases_and_budgets() -> None:
    model = _mlp(2)
    x = torch.rand(3, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    res = verify(model, x, 0.0)
    assert res.status == ["verified"] * 3
    big = verify(model, x.float(), 50.0, time_budget=0.2)  # a float32 batch, float64 model
    assert all(s in ("falsified", "unknown") for s in big.status)
    assert "falsified" in big.status
    assert big.counterexample.dtype == torch.float64  # the point the model was run on
    for i, s in enumerate(big.status):
        if s == "falsified":
            xa = big.counterexample[i:i + 1]
            assert int(model(xa).argmax(1)) != int(model(x[i:i + 1].float().double()).argmax(1))
            assert float((xa - x[i:i + 1].float().double()).norm()) == float(
                big.counterexample_norm[i])
    exact = bk.exact_radius(model, x, box=(0.0, 1.0))
    tight = verify(model, x, exact * 0.999999, time_budget=0.05, max_domains=2)
    for s, why in zip(tight.status, tight.reason):
        assert s != "falsified"
        if s == "unknown":
            assert "budget" in why or "subproblems" in why, why


@pytest.mark.parametrize("kwargs,match", [
    ({"radius": -1.0}, "radius"), ({"radius": math.nan}, "radius"),
    ({"radius": torch.ones(5)}, "radius"), ({"radius": "1"}, "radius"),
    ({"radius": 0.1, "time_budget": 0}, "time_budget"),
    ({"radius": 0.1, "max_domains": 0}, "max_domains"),
    ({"radius": 0.1, "box": (1.0, 0.0)}, "box"),
])
def test_bad_arguments_get_one_line_errors(kwargs, match) -> None:
    model = _mlp(3)
    x = torch.rand(2, 4, dtype=torch.float64)
    r = kwargs.pop("radius")
    with pytest.raises(BadArgumentError, match=match):
        verify(model, x, r, **kwargs)


def test_bab_method_options_are_checked_and_registered() -> None:
    assert "bab" in bk.bounds.method.method_names()
    model = _mlp(4)
    x = torch.rand(2, 4, dtype=torch.float64)
    with pytest.raises(BadArgumentError, match="upper"):
        bk.certify(model, x, "bab", upper=-1.0)
    with pytest.raises(BadArgumentError, match="start"):
        bk.certify(model, x, "bab", upper=1.0, start="sound")
    with pytest.raises(TypeError, match="steps"):
        bk.certify(model, x, "bab", steps=3)


def test_bab_progress_reports_add_up_to_the_samples() -> None:
    """The ``progress`` option (the CLI's bar): positive reports, more than one, summing to
    the samples; a non-callable is refused in one line."""
    model = _mlp(5)
    x = torch.rand(4, 4, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    calls: list[float] = []
    b = bk.certify(model, x, "bab", upper=torch.full((4,), 2.0, dtype=torch.float64),
                   time_budget=0.3, progress=calls.append)
    assert len(calls) > 1 and all(k > 0 for k in calls)
    assert abs(sum(calls) - 4) < 1e-9
    plain = bk.certify(model, x, "crown").radius
    assert bool((b.radius >= plain).all())
    with pytest.raises(BadArgumentError, match="progress"):
        bk.certify(model, x, "bab", upper=1.0, progress=3)


class _FakeClock:
    """A clock advancing ``step`` seconds per reading: the search's time budgets become a
    count of its clock readings, the same on any machine (no timed test)."""

    def __init__(self, step: float) -> None:
        self.t, self.step = 0.0, step

    def __call__(self) -> float:
        self.t += self.step
        return self.t


@pytest.mark.parametrize("seed", [0, 3])
def test_bab_radius_never_shrinks_with_more_budget_and_never_passes_the_exact_one(
        seed, monkeypatch) -> None:
    """Anytime in the full sense: on a fake clock, a larger budget never gives a smaller
    radius, every radius stays below the exact one, and the largest budget keeps working
    past an unknown answer until it closes on the exact radius (given as ``upper``)."""
    import boundkit.bounds.bab.options as bab_options

    model = _mlp(seed, (4, 16, 16, 3))
    x = torch.rand(6, 4, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    exact = bk.exact_radius(model, x, box=(0.0, 1.0))
    upper = torch.where(torch.isfinite(exact), exact, torch.ones_like(exact))
    radii = []
    for budget in (0.05, 0.2, 1.0, 5.0):
        monkeypatch.setattr(bab_options, "CLOCK", _FakeClock(1e-3))
        b = bk.certify(model, x, "bab", upper=upper, time_budget=budget, batch=8).radius
        assert bool((b <= exact * (1 + 1e-9)).all()), (budget, b, exact)
        radii.append(b)
    for small, large in zip(radii[:-1], radii[1:]):
        assert bool((large >= small * (1 - 1e-12)).all()), (small, large)
    fin = torch.isfinite(exact)
    # the largest budget closes on the exact radius (well past the reopening tolerance)
    assert bool((radii[-1][fin] >= exact[fin] / (1 + 2e-3)).all()), (radii[-1], exact)


def test_bab_on_a_net_with_no_relu_to_split_keeps_crowns_radius_and_stays_sound():
    """A max pooling and a linear layer: nothing to split, so every subproblem is stuck
    (it was a torch.cat traceback); the radius is crown's or larger, and sound."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.MaxPool2d(2, 1), nn.Flatten(), nn.Linear(9, 3)).double().eval()
    x = torch.rand(3, 1, 4, 4, dtype=torch.float64)
    crown = bk.certify(m, x, "crown").radius
    got = bk.certify(m, x, "bab", time_budget=0.5)
    assert bool((got.radius >= crown).all())
    assert_sound(m, x, "bab")
