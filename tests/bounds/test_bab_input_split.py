"""Input splitting in branch and bound (``split="input"``): never verifies beyond the exact
radius, verified balls hold no counterexample among dense samples, every sub-box's bound
holds on the sampled points of the ball in that sub-box, the ball-and-box term is a lower
bound,
``crown`` is unchanged where no region is set, it closes on smooth nets ReLU splitting
refuses, and bad ``split`` values get one-line errors."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import boundkit as bk
from boundkit.bounds.bab import bab_plan, verify
from boundkit.bounds.bab.inputsplit import (
    INPUT_SPLIT_MAX_DIM,
    Boxes,
    InputSplit,
    RegionRun,
    box_distance_lower,
    input_split_plan,
    resolve_split,
    root_boxes,
)
from boundkit.bounds.bab.options import SPLITS, BabOptions, Split
from boundkit.bounds.crown import CrownRun
from boundkit.bounds.crown.concrete import ball_box_minimum, concretise
from boundkit.bounds.output import margins
from boundkit.bounds.relaxation import LinearBounds
from boundkit.errors import BadArgumentError, UnsupportedLayerError
from boundkit.graph.capture import capture
from boundkit.testing import adversarial_search, inputs_for, property_examples, small_relu_mlps

FAST = settings(max_examples=property_examples(6), deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
ACTS = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}


def _net(seed: int, act: str = "relu", d: int = 2, h: int = 12, scale: float = 2.0
         ) -> nn.Sequential:
    """d-h-h-3 with ``act``, weights of PyTorch's default init times ``scale``."""
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Linear(d, h), ACTS[act](), nn.Linear(h, h), ACTS[act](),
                      nn.Linear(h, 3)).double().eval()
    with torch.no_grad():
        for p in m.parameters():
            p.mul_(scale)
    return m


def _ball_points(x: torch.Tensor, r: torch.Tensor, k: int, seed: int,
                 box: tuple[float, float] | None) -> torch.Tensor:
    """[N, k, d]: ``k`` points of each open ball (a third near its sphere), clipped to the
    box (a clipped point stays in the ball: the box contains x)."""
    gen = torch.Generator().manual_seed(seed)
    n, d = x.shape
    u = torch.randn(n, k, d, generator=gen, dtype=torch.float64)
    u = u / u.norm(dim=2, keepdim=True)
    rad = torch.rand(n, k, 1, generator=gen, dtype=torch.float64) ** (1.0 / d)
    rad[:, : k // 3] = 1.0 - 1e-9 * torch.rand(n, k // 3, 1, generator=gen,
                                               dtype=torch.float64)
    p = x.unsqueeze(1) + u * rad * r.reshape(-1, 1, 1) * (1 - 1e-12)
    return p if box is None else p.clamp(box[0], box[1])


def test_the_auto_rule_splits_the_input_of_smooth_nets_up_to_sixteen_features() -> None:
    for act, d, want in (("tanh", 2, "input"), ("sigmoid", INPUT_SPLIT_MAX_DIM, "input"),
                         ("tanh", INPUT_SPLIT_MAX_DIM + 1, "relu"), ("relu", 2, "relu"),
                         ("relu", INPUT_SPLIT_MAX_DIM + 1, "relu")):
        g = capture(_net(0, act, d=d), (d,))
        assert resolve_split("auto", g) == want, (act, d)
        assert resolve_split("relu", g) == "relu"
        assert resolve_split("input", g) == "input"


def test_region_run_without_a_region_is_crown_bit_for_bit() -> None:
    """The region hooks leave crown's own path untouched: the same radius steps on a
    784-wide MLP and a 4-feature one (with the box, without it)."""
    torch.manual_seed(0)
    big = nn.Sequential(nn.Flatten(), nn.Linear(784, 50), nn.ReLU(), nn.Linear(50, 30),
                        nn.ReLU(), nn.Linear(30, 10)).double().eval()
    for model, shape in ((big, (1, 28, 28)), (_net(3, d=4), (4,))):
        g = capture(model, shape)
        x = torch.rand(3, *shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
        plan = bab_plan(g).base
        for box in ((0.0, 1.0), None):
            a, b = CrownRun(g, plan, x, box), RegionRun(g, plan, x, box)
            label, _ = margins(a.sound.acts[g.logits.name])
            eps = torch.full((3,), 0.3, dtype=torch.float64)
            sa, sb = a.evaluate(eps, label), b.evaluate(eps, label)
            assert torch.equal(sa.phi, sb.phi) and torch.equal(sa.bound, sb.bound)


@FAST
@given(seed=st.integers(0, 10_000), d=st.integers(1, 5), scale=st.sampled_from([1e-3, 1.0, 1e3]))
def test_ball_box_minimum_is_below_the_intersection_and_above_ball_and_box(seed: int, d: int,
                                                                           scale: float) -> None:
    """The Lagrangian bound over ball and box: below <a, x> + b - e at every sampled point
    of the intersection (and at its points nearest the sphere), and never below the larger
    of the ball's dual-norm value and the box's exact (vertex) minimum, up to the rounding
    it charges."""
    gen = torch.Generator().manual_seed(seed)
    n, s = 3, 2
    A = torch.randn(n, s, d, generator=gen, dtype=torch.float64) * scale
    bias = torch.randn(n, s, generator=gen, dtype=torch.float64)
    err = torch.rand(n, s, generator=gen, dtype=torch.float64) * 1e-9
    x0 = torch.rand(n, d, generator=gen, dtype=torch.float64)
    eps = torch.rand(n, generator=gen, dtype=torch.float64) * 0.5 + 0.05
    e = eps.unsqueeze(1)
    lo = x0 + (torch.rand(n, d, generator=gen, dtype=torch.float64) - 0.8) * e
    hi = lo + torch.rand(n, d, generator=gen, dtype=torch.float64) * e
    lb = LinearBounds(A, bias, err)
    m = ball_box_minimum(lb, x0, lo, hi, eps)
    pts = lo.unsqueeze(1) + torch.rand(n, 20_000, d, generator=gen,
                                       dtype=torch.float64) * (hi - lo).unsqueeze(1)
    # and the box points pulled onto the sphere where they lie outside the ball
    off = pts - x0.unsqueeze(1)
    norm = off.norm(dim=2, keepdim=True)
    pulled = x0.unsqueeze(1) + off * torch.clamp(e.unsqueeze(2) / norm, max=1.0) * (1 - 1e-12)
    pts = torch.cat([pts, pulled], 1)
    inside = (((pts - x0.unsqueeze(1)).norm(dim=2) <= e)
              & (pts >= lo.unsqueeze(1)).all(2) & (pts <= hi.unsqueeze(1)).all(2))
    val = torch.einsum("nsd,nkd->nsk", A, pts) + (bias - err).unsqueeze(2)
    val = torch.where(inside.unsqueeze(1), val, torch.full_like(val, math.inf))
    assert bool((m <= val.amin(2)).all())
    ball = concretise(lb, x0, None, torch.zeros(n, dtype=torch.bool)).at(eps)
    box = torch.minimum(A * lo.unsqueeze(1), A * hi.unsqueeze(1)).sum(2) + bias - err
    floor = torch.maximum(ball, box)
    assert bool((m >= floor - 1e-9 * (1 + floor.abs() + (A.abs() * scale).sum(2))).all())


def test_box_distance_is_a_lower_bound_and_zero_inside() -> None:
    gen = torch.Generator().manual_seed(0)
    x0 = torch.rand(500, 3, generator=gen, dtype=torch.float64) * 4 - 2
    lo = torch.rand(500, 3, generator=gen, dtype=torch.float64) * 2 - 1
    hi = lo + torch.rand(500, 3, generator=gen, dtype=torch.float64)
    dl = box_distance_lower(x0, lo, hi)
    proj = torch.minimum(torch.maximum(x0, lo), hi)
    true = (x0 - proj).norm(dim=1)
    assert bool((dl <= true).all()) and bool((dl >= true * (1 - 1e-12)).all())
    assert bool((box_distance_lower(proj, lo, hi) == 0).all())


@pytest.mark.parametrize("act,seed", [("relu", 0), ("tanh", 1), ("sigmoid", 2)])
def test_every_sub_box_bound_holds_on_the_ball_points_inside_it(act: str, seed: int) -> None:
    """Random sub-boxes of the ball's box (some missing the ball, some thin): at every sampled
    point of the ball inside a sub-box, each margin is at least that sub-box's bound."""
    model = _net(seed, act, d=2)
    g = capture(model, (2,))
    plan = input_split_plan(g)
    x = torch.rand(3, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    eps = torch.full((3,), 0.4, dtype=torch.float64)
    box = (0.0, 1.0)
    run = RegionRun(g, plan.crown, x, box)
    label, _ = margins(run.sound.acts[g.logits.name])
    search = InputSplit(g, plan, run, label, eps, BabOptions(iterations=2))
    ilo, ihi = root_boxes(run, eps)
    gen = torch.Generator().manual_seed(seed + 7)
    k = 40  # sub-boxes per sample
    smp = torch.arange(3).repeat_interleave(k)
    a = ilo[smp] + torch.rand(3 * k, 2, generator=gen, dtype=torch.float64) * (ihi - ilo)[smp]
    b = ilo[smp] + torch.rand(3 * k, 2, generator=gen, dtype=torch.float64) * (ihi - ilo)[smp]
    lo, hi = torch.minimum(a, b), torch.maximum(a, b)
    dom = Boxes(smp, lo, hi, torch.zeros(3 * k, 3, dtype=torch.bool), None,
                torch.zeros(3 * k, dtype=torch.float64))
    bounded = search.bound(dom)
    pts = _ball_points(x, eps, 6000, seed, box)  # [3, P, 2]
    with torch.no_grad():
        out = model(pts.reshape(-1, 2)).reshape(3, -1, 3)
    marg = out.gather(2, label.reshape(3, 1, 1).expand(3, out.shape[1], 1)) - out  # [3,P,3]
    hits = 0
    for r in range(3 * k):
        s = int(smp[r])
        inside = ((pts[s] >= lo[r]) & (pts[s] <= hi[r])).all(1)
        if not bool(inside.any()):
            continue
        hits += int(inside.sum())
        low = bounded.lower[r]  # [3], +inf at the own class
        other = torch.isfinite(low)
        assert bool((marg[s][inside][:, other] >= low[other].unsqueeze(0)).all()), (r, act)
    assert hits > 1000


@FAST
@given(model=small_relu_mlps(max_hidden=8), data=st.data(),
       factor=st.sampled_from([0.5, 0.95, 1.02, 1.5]),
       box=st.sampled_from([None, (0.0, 1.0)]))
def test_input_split_never_verifies_beyond_the_exact_radius(model, data, factor, box) -> None:
    x = data.draw(inputs_for(model, n=(1, 3)))
    exact = bk.exact_radius(model, x, box=box)
    r = torch.where(torch.isfinite(exact), exact * factor, torch.ones_like(exact))
    res = verify(model, x, r, box=box, time_budget=0.5, max_domains=300, split="input")
    for i, s in enumerate(res.status):
        assert float(res.certified[i]) <= float(exact[i]) * (1 + 1e-9)
        if s == "verified":
            assert float(r[i]) <= float(exact[i]) * (1 + 1e-9), (r[i], exact[i])
        if s == "falsified":
            xa = res.counterexample[i:i + 1].to(x.dtype)
            assert int(model(xa).argmax(1)) != int(model(x[i:i + 1]).argmax(1))


@pytest.mark.parametrize("seed", [0, 1])
def test_input_split_closes_on_tiny_relu_nets_against_the_exact_radius(seed: int) -> None:
    """2-D ReLU nets: verified at 0.98 of the exact radius (where crown alone is far below)
    and never at 1.02 of it."""
    model = _net(seed, "relu", d=2, h=10)
    x = torch.rand(3, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    exact = bk.exact_radius(model, x)
    assert bool(torch.isfinite(exact).all())
    res = verify(model, x, exact * 0.98, box=None, time_budget=60.0, max_domains=4000,
                 split="input")
    assert res.status == ["verified"] * 3, res.reason
    res = verify(model, x, exact * 1.02, box=None, time_budget=60.0, max_domains=300,
                 split="input")
    assert "verified" not in res.status


@FAST
@given(seed=st.integers(0, 10_000), act=st.sampled_from(sorted(ACTS)), d=st.integers(2, 4),
       frac=st.sampled_from([0.3, 0.7, 0.95, 1.1]))
def test_verified_implies_no_counterexample_in_dense_samples_of_the_ball(seed, act, d, frac
                                                                          ) -> None:
    model = _net(seed, act, d=d, h=8)
    x = torch.rand(2, d, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    _, attack = adversarial_search(model, x, box=(0.0, 1.0))
    r = torch.where(torch.isfinite(attack), attack * frac, torch.full_like(attack, 0.5))
    res = verify(model, x, r, time_budget=60.0, max_domains=400, split="input")
    label = model(x).argmax(1)
    for i, s in enumerate(res.status):
        rc = res.radius[i] if s == "verified" else res.certified[i]
        if float(rc) <= 0:
            continue
        pts = _ball_points(x[i:i + 1], rc.reshape(1), 20_000, seed, (0.0, 1.0))[0]
        with torch.no_grad():
            assert bool((model(pts).argmax(1) == label[i]).all()), (s, float(rc))


def test_bab_with_input_splitting_closes_on_smooth_nets_where_relu_splitting_cannot() -> None:
    """Tanh and sigmoid nets: ReLU splitting refuses them by name, crown stays below the
    attack, bab with input splitting reaches 0.99 of it (budget in subproblems, not time),
    and 20,000 points of every certified ball keep the class."""
    for act, seed, scale in (("tanh", 0, 4.0), ("sigmoid", 1, 6.0)):
        model = _net(seed, act, d=2, scale=scale)
        x = torch.rand(3, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
        with pytest.raises(UnsupportedLayerError):
            verify(model, x, 0.1, split="relu", box=None)
        _, attack = adversarial_search(model, x, box=None)
        assert bool(torch.isfinite(attack).all())
        crown = bk.certify(model, x, "crown", box=None).radius
        res = bk.certify(model, x, "bab", box=None, time_budget=1e4, max_domains=3000,
                         upper=attack)
        ratio = res.radius / attack
        assert bool((crown / attack < 0.97).any()), (crown / attack)
        assert bool((ratio >= 0.99).all()), (act, ratio, crown / attack)
        assert bool((res.radius <= attack).all())
        pts = _ball_points(x, res.radius, 20_000, seed, None)
        with torch.no_grad():
            out = model(pts.reshape(-1, 2)).reshape(3, -1, 3).argmax(2)
        assert bool((out == model(x).argmax(1).unsqueeze(1)).all())


def _constant_on_the_box(seed: int, act: str) -> nn.Sequential:
    """A 3-8-8-3 net (weights x3) whose class 0 wins on all of [0, 1]^3 by at least 0.5 on a
    41^3 grid (its output bias shifted so), which ``crown`` does not prove in one pass."""
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Linear(3, 8), ACTS[act](), nn.Linear(8, 8), ACTS[act](),
                      nn.Linear(8, 3)).double().eval()
    with torch.no_grad():
        for p in m.parameters():
            p.mul_(3.0)
        out = m(_GRID3)
        m[4].bias[0] += 0.5 - (out[:, :1] - out[:, 1:]).min()
    return m


_GRID3 = torch.stack(torch.meshgrid(*[torch.linspace(0, 1, 41, dtype=torch.float64)] * 3,
                                    indexing="ij"), -1).reshape(-1, 3)


@pytest.mark.parametrize(("act", "seed", "split", "rows"), [
    ("tanh", 0, "input", [0, 1]), ("relu", 2, "relu", [1])])
def test_bab_radius_is_inf_where_the_class_is_constant_on_the_box(act, seed, split, rows,
                                                                   tmp_path) -> None:
    """Where ``bab`` proves a ball holding the whole box, the class is constant on the box:
    the radius is ``inf`` (as ``crown`` reports it), not the radius of an ever larger
    ball (1.7e12 on this tanh net before, where no attack finds an upper end); the CLI's
    results JSON and the report carry it as ``inf``. ``verify`` says so in its certified
    radius, and without the box nothing changes."""
    from boundkit.cli import certificate_doc
    from boundkit.report import render_report, write_json
    from boundkit.report.io import read_json

    model = _constant_on_the_box(seed, act)
    with torch.no_grad():
        assert bool((model(_GRID3).argmax(1) == 0).all())
    x = torch.rand(2, 3, dtype=torch.float64,
                   generator=torch.Generator().manual_seed(seed))[rows]
    crown = bk.certify(model, x, "crown").radius
    assert bool(torch.isfinite(crown).all()), crown  # crown alone does not prove the box
    # upper end inf: what the search has when no attack finds an adversarial example
    cert = bk.certify(model, x, "bab", split=split, time_budget=1e4, max_domains=1000,
                      upper=math.inf)
    assert bool(torch.isinf(cert.radius).all()), cert.radius
    assert bool(torch.isnan(cert.info["ratio"]).all())  # no upper end: no ratio
    # the trace ends at inf, after the finite start radius
    tr = cert.info["trace_radius"]
    last = torch.where(torch.isnan(tr), -1.0, tr).max(1).values
    assert bool(torch.isinf(last).all())
    n = len(rows)
    doc = certificate_doc({"bab": cert}, torch.zeros(n, dtype=torch.long), range(n),
                          {"model": "m", "data": "d", "split": "test"})
    path = write_json(doc, tmp_path / "certify.json")
    back = read_json(path)
    assert back["samples"]["radius"]["bab"] == [math.inf] * n
    assert math.isinf(back["summary"]["methods"]["bab"]["median_radius"])
    report = render_report(path, tmp_path / "report")["markdown"].read_text()
    assert "| median certified radius, bab | inf |" in report
    corner = torch.maximum(x, 1 - x).norm(dim=1)  # the farthest corner of the box
    far = verify(model, x, corner * 1.001, split=split, time_budget=1e4, max_domains=1000)
    assert far.status == ["verified"] * len(rows)
    assert bool(torch.isinf(far.certified).all())
    near = verify(model, x, 0.3, split=split, time_budget=1e4, max_domains=1000)
    assert near.status == ["verified"] * len(rows)
    assert torch.equal(near.certified, torch.full((len(rows),), 0.3, dtype=torch.float64))
    free = bk.certify(model, x, "bab", split=split, box=None, time_budget=1e4,
                      max_domains=100, upper=math.inf)
    assert bool(torch.isfinite(free.radius).all()), free.radius


def test_bad_split_values_get_one_line_errors() -> None:
    model = _net(0)
    x = torch.rand(2, 2, dtype=torch.float64)
    for bad in ("inputs", "", None, 3, ["input"]):
        with pytest.raises(BadArgumentError, match="split must be one of") as e:
            verify(model, x, 0.1, split=bad)
        assert "\n" not in str(e.value)
        with pytest.raises(BadArgumentError, match="split must be one of"):
            bk.certify(model, x, "bab", split=bad, time_budget=0.5)
        with pytest.raises(BadArgumentError, match="split must be one of"):
            BabOptions(split=bad)


def test_a_split_word_and_its_typed_choice_are_one_option() -> None:
    """``BabOptions`` keeps a word (``split="relu"``) as its :class:`Split`; both name one
    choice, and :func:`resolve_split` answers a typed choice."""
    for word in SPLITS:
        opt = BabOptions(split=word)
        assert isinstance(opt.split, Split) and opt.split == word == Split(word).value
    assert BabOptions().split is Split.AUTO
    model = _net(0, "tanh")
    g = capture(model, (2,))
    assert resolve_split("auto", g) is Split.INPUT
    assert resolve_split(Split.RELU, g) is Split.RELU
    # the typed choice through the public entry points: the same answers as the word
    x = torch.rand(2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    typed = verify(model, x, 0.05, split=Split.INPUT, time_budget=1e4, max_domains=200)
    word = verify(model, x, 0.05, split="input", time_budget=1e4, max_domains=200)
    assert typed.status == word.status and torch.equal(typed.certified, word.certified)
    with pytest.raises(UnsupportedLayerError):
        bk.certify(model, x, "bab", split=Split.RELU, time_budget=0.5)


def test_split_choice_reaches_the_bab_method() -> None:
    """``split="relu"`` on a tanh net is refused by name through ``bk.certify``; ``"auto"``
    and ``"input"`` certify it (a radius at least crown's)."""
    model = _net(0, "tanh")
    x = torch.rand(2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    with pytest.raises(UnsupportedLayerError):
        bk.certify(model, x, "bab", split="relu", time_budget=0.5, box=None)
    crown = bk.certify(model, x, "crown", box=None).radius
    for split in ("auto", "input"):
        r = bk.certify(model, x, "bab", split=split, time_budget=1e4, max_domains=200,
                       box=None, upper=5.0).radius
        assert bool((r >= crown).all()) and not bool(torch.isnan(r).any())
        assert math.isfinite(float(r.sum()))


def test_bab_is_supported_on_a_smooth_net_only_where_its_input_is_small() -> None:
    """``--method auto`` asks ``prepare`` whether ``bab`` takes a model: a tanh net with 2
    features yes (input splitting), with 17 no (refused by name, as ``split="auto"``
    would refuse it)."""
    from boundkit.bounds.method import get_method

    get_method("bab").prepare(capture(_net(0, "tanh", d=2), (2,)))
    with pytest.raises(UnsupportedLayerError):
        get_method("bab").prepare(capture(_net(0, "tanh", d=INPUT_SPLIT_MAX_DIM + 1),
                                          (INPUT_SPLIT_MAX_DIM + 1,)))



class _Res(nn.Module):
    """x -> c(h + act(b(h))), h = act(a(x)): a residual add after a smooth activation."""

    def __init__(self, d: int, h: int, act: nn.Module) -> None:
        super().__init__()
        self.a, self.b, self.c, self.act = nn.Linear(d, h), nn.Linear(h, h), nn.Linear(h, 3), act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.a(x))
        return self.c(h + self.act(self.b(h)))


@pytest.mark.slow
def test_red_team_odd_smooth_nets_have_no_counterexample_inside_any_certified_ball() -> None:
    """24 odd nets (GELU, SiLU, LeakyReLU, Softplus, ELU, tanh; residual adds; weight scales
    0.5 to 30; 2 to 4 features): the ``bab`` radius with input splitting (400
    subproblems per sample) is checked by a 200-step float64 adversarial search and 20,000
    points of each ball (a third on its sphere)."""
    acts = [nn.GELU(), nn.SiLU(), nn.LeakyReLU(0.2), nn.Softplus(), nn.ELU(), nn.Tanh()]
    for seed in range(24):
        torch.manual_seed(seed)
        d, act = (2, 3, 4)[seed % 3], acts[seed % len(acts)]
        scale = (0.5, 3.0, 30.0)[seed % 3 if seed % 4 else 1]
        model: nn.Module = (_Res(d, 10, act) if seed % 2 else nn.Sequential(
            nn.Linear(d, 10), act, nn.Linear(10, 10), acts[(seed + 1) % len(acts)],
            nn.Linear(10, 3)))
        model = model.double().eval()
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(scale)
        x = torch.rand(3, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        r = bk.certify(model, x, "bab", split="input", time_budget=1e4, max_domains=400).radius
        _, adv = adversarial_search(model, x, box=(0.0, 1.0), steps=200)
        assert bool((r <= adv).all()), (seed, r, adv)
        pts = _ball_points(x, r.clamp(max=10.0), 20_000, seed, (0.0, 1.0))
        with torch.no_grad():
            out = model(pts.reshape(-1, d)).reshape(3, -1, 3).argmax(2)
        same = (out == model(x).argmax(1).unsqueeze(1)).all(1)
        assert bool((same | (r == 0)).all()), (seed, r)
