"""The loop both branch-and-bound searches share (``boundkit.bounds.bab.loop``): ReLU
splitting and input splitting answer with the same typed per-sample record (``Verdict`` /
``Reason`` codes), a sample not searched stays open, a verified sample is certified its
radius, an unknown one at most its radius with the budget that closed it, and ``verify``
spells every verdict and reason from the codes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import boundkit as bk
from boundkit.bounds.bab import (
    BabOptions,
    BranchAndBound,
    Reason,
    Solved,
    Verdict,
    bab_plan,
    verify,
    verify_graph,
)
from boundkit.bounds.bab.inputsplit import InputSplit, RegionRun, input_split_plan
from boundkit.bounds.bab.loop import Search
from boundkit.bounds.bab.search import FALSIFIED, UNKNOWN, VERIFIED
from boundkit.bounds.crown import CrownRun
from boundkit.bounds.output import margins
from boundkit.errors import InputShapeError
from boundkit.graph.capture import capture


def _net(seed: int, act: type[nn.Module] = nn.ReLU) -> nn.Sequential:
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Linear(2, 12), act(), nn.Linear(12, 12), act(),
                      nn.Linear(12, 3)).double().eval()
    with torch.no_grad():
        for p in m.parameters():
            p.mul_(2.0)
    return m


@pytest.mark.parametrize("split", ["relu", "input"])
def test_both_searches_answer_with_the_same_typed_record(split: str) -> None:
    """Five samples at 0.97 of their exact radius: sample 4 is not searched (open, no
    domain, no radius), sample 3 may bound one subproblem (unknown by the subproblem
    budget unless its root proves it); every verified sample is certified its radius,
    every unknown one at most that, with a budget or stuck reason."""
    model = _net(3)
    x = torch.rand(5, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    eps = bk.exact_radius(model, x, box=(0.0, 1.0)) * 0.97
    assert bool(torch.isfinite(eps).all())
    g = capture(model, (2,))
    plan = bab_plan(g) if split == "relu" else input_split_plan(g)
    run = (CrownRun if split == "relu" else RegionRun)(g, plan.crown, x, (0.0, 1.0))
    label, _ = margins(run.sound.acts[g.logits.name])
    kind = BranchAndBound if split == "relu" else InputSplit
    search = kind(g, plan, run, label, eps, BabOptions(iterations=2, batch=64))
    assert isinstance(search, Search)
    active = torch.tensor([True, True, True, True, False])
    caps = torch.tensor([5000, 5000, 5000, 1, 5000])
    sol = search.solve(active, torch.full((5,), 1e4, dtype=torch.float64), None, caps)
    assert isinstance(sol, Solved)
    assert sol.verdict.dtype == sol.reason.dtype == torch.int8
    assert int(sol.verdict[4]) == Verdict.OPEN and int(sol.reason[4]) == Reason.NONE
    assert int(sol.domains[4]) == 0 and float(sol.certified[4]) == 0.0
    for i in range(4):
        v, r = Verdict(int(sol.verdict[i])), Reason(int(sol.reason[i]))
        if v == Verdict.VERIFIED:
            assert r == Reason.PROVEN and float(sol.certified[i]) == float(eps[i])
        else:
            assert v == Verdict.UNKNOWN, v
            assert r in (Reason.TIME, Reason.DOMAINS, search.stuck_reason), r
            assert 0.0 <= float(sol.certified[i]) <= float(eps[i])
    # sample 3: one subproblem allowed (its C - 1 = 2 roots go in the first batch)
    assert Verdict(int(sol.verdict[3])) == Verdict.VERIFIED or (
        Reason(int(sol.reason[3])) == Reason.DOMAINS)
    assert Verdict.VERIFIED in sol.verdict[:3].tolist()


def test_verify_spells_each_verdict_and_reason_from_its_codes() -> None:
    """Radius 0, a sample outside the box, a ball holding an adversarial example, a
    proven ball and one the subproblem budget leaves open: the codes, their words and
    reasons, and ``verified`` / ``falsified`` agree."""
    model = _net(3)
    x = torch.rand(4, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    exact = bk.exact_radius(model, x, box=(0.0, 1.0))
    assert bool(torch.isfinite(exact).all())
    x = torch.cat([x, torch.tensor([[1.5, 0.5]], dtype=torch.float64)])
    r = torch.cat([torch.zeros(1), exact[1:2] * 0.5, exact[2:3] * 1.5, exact[3:4] * 0.999,
                   torch.full((1,), 0.1, dtype=torch.float64)])
    # verify refuses a sample outside the box at its boundary; the radius search meets one
    with pytest.raises(InputShapeError, match="outside the box"):
        verify(model, x, r, time_budget=1e4, max_domains=2, split="relu")
    res = verify_graph(model, capture(model, (2,)), x, r, (0.0, 1.0),
                       BabOptions(time_budget=1e4, max_domains=2, split="relu"))
    want = [(Verdict.VERIFIED, Reason.RADIUS_ZERO), (Verdict.VERIFIED, Reason.PROVEN),
            (Verdict.FALSIFIED, Reason.ATTACK), (Verdict.UNKNOWN, Reason.DOMAINS),
            (Verdict.UNKNOWN, Reason.OUTSIDE_BOX)]
    assert [(Verdict(v), Reason(w)) for v, w in zip(res.verdict.tolist(), res.why.tolist())
            ] == want, (res.status, res.reason)
    assert res.status == [VERIFIED, VERIFIED, FALSIFIED, UNKNOWN, UNKNOWN]
    assert res.reason == [w.describe() for _, w in want]
    assert res.reason[1] == "every subproblem proven"
    assert res.reason[3] == "the subproblem budget was spent"
    assert res.verified.tolist() == [True, True, False, False, False]
    assert res.falsified.tolist() == [False, False, True, False, False]
    assert float(res.counterexample_norm[2]) < float(r[2])
    assert bool(torch.isinf(res.counterexample_norm[[0, 1, 3, 4]]).all())


@pytest.mark.parametrize("split", ["relu", "input"])
def test_a_search_with_no_sample_to_search_answers_every_sample_open(split: str) -> None:
    """No active sample: no root domain, no batch is bounded (an empty batch divided its
    time by zero before), every sample stays open with no subproblem and no radius."""
    model = _net(3)
    x = torch.rand(3, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    g = capture(model, (2,))
    plan = bab_plan(g) if split == "relu" else input_split_plan(g)
    run = (CrownRun if split == "relu" else RegionRun)(g, plan.crown, x, (0.0, 1.0))
    label, _ = margins(run.sound.acts[g.logits.name])
    kind = BranchAndBound if split == "relu" else InputSplit
    eps = torch.full((3,), 0.1, dtype=torch.float64)
    search = kind(g, plan, run, label, eps, BabOptions(iterations=2, batch=64))
    sol = search.solve(torch.zeros(3, dtype=torch.bool))
    assert sol.verdict.tolist() == [int(Verdict.OPEN)] * 3
    assert sol.reason.tolist() == [int(Reason.NONE)] * 3
    assert sol.domains.tolist() == [0, 0, 0] and sol.certified.tolist() == [0.0] * 3


def test_active_samples_their_search_gives_no_root_domain_are_proven_not_left_open() -> None:
    """A :class:`Search` whose ``roots`` give no domain at all to the active samples:
    nothing is left to prove, so each is verified at its radius with no batch bounded
    (before, the empty batch divided its time by zero)."""
    model = _net(3)
    x = torch.rand(3, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    g = capture(model, (2,))
    plan = bab_plan(g)
    run = CrownRun(g, plan.crown, x, (0.0, 1.0))
    label, _ = margins(run.sound.acts[g.logits.name])
    eps = torch.full((3,), 1e-3, dtype=torch.float64)

    class WithoutRoots(BranchAndBound):
        def roots(self, idx: torch.Tensor):  # noqa: ANN202
            return super().roots(idx).rows(torch.zeros(0, dtype=torch.long))

    search = WithoutRoots(g, plan, run, label, eps, BabOptions(iterations=0, batch=64))
    sol = search.solve(torch.tensor([True, False, True]))
    assert [Verdict(int(v)) for v in sol.verdict] == [Verdict.VERIFIED, Verdict.OPEN,
                                                       Verdict.VERIFIED]
    assert [Reason(int(r)) for r in sol.reason] == [Reason.PROVEN, Reason.NONE, Reason.PROVEN]
    assert sol.domains.tolist() == [0, 0, 0]
    assert sol.certified.tolist() == [1e-3, 0.0, 1e-3]
