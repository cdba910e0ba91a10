"""Issue #25: ``best`` finds a verified adversarial example wherever one exists, even where
gradients vanish, and says why where it finds none."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import boundkit.attacks as A
from boundkit.attacks.base import Misclassification, Outcome
from boundkit.attacks.starts import line_search_starts, nearest_reference, sphere_starts
from boundkit.errors import InputShapeError

from .conftest import relu_net

FAST = {"budget": 30}


def dead_first_layer_net(sizes: tuple[int, ...], x0: torch.Tensor, margin: float,
                         seed: int) -> nn.Module:
    """A default-initialised ReLU MLP whose first-layer ReLUs are all off within distance
    ``margin`` of ``x0`` (the network is constant there: every gradient is zero)."""
    net = relu_net(sizes, seed=seed)
    with torch.no_grad():
        w = net[0].weight
        net[0].bias.copy_(-(w @ x0) - margin * w.norm(dim=1))
    return net


def assert_verified(model: nn.Module, x: torch.Tensor, res: A.AttackResult, box) -> None:
    """Every success is adversarial when re-run, inside the box, with its exact norm."""
    with torch.no_grad():
        pred = model(res.x_adv).argmax(1)
    ok = res.success
    assert bool((pred[ok] != res.label[ok]).all())
    if box is not None:
        assert bool(((res.x_adv >= box[0]) & (res.x_adv <= box[1])).all())
    norm = (res.x_adv.double() - x.double()).flatten(1).norm(dim=1)
    assert torch.allclose(res.norm[ok], norm[ok], rtol=0, atol=1e-12)
    assert all(o.has_example == bool(s) for o, s in zip(res.outcome, ok.tolist()))


class Constant(nn.Module):
    """Logits that never change: zero gradient everywhere, no other class anywhere."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 3)

    def forward(self, x):
        return self.lin(torch.zeros_like(x)) + torch.tensor([1.0, 0.0, 0.0])


class Sloped(nn.Module):
    """Class 0 everywhere in the box [0, 1] (logit gap ``sum(x) + 10``), with a gradient."""

    def forward(self, x):
        s = x.flatten(1).sum(1, keepdim=True)
        return torch.cat([s + 10, torch.zeros_like(s)], 1)


@given(seed=st.integers(0, 10_000), box=st.sampled_from([None, (0.0, 1.0)]))
@settings(max_examples=3, deadline=None)
def test_every_returned_example_is_verified_adversarial(seed, box):
    model = relu_net((5, 12, 12, 3), seed=seed)
    x = torch.rand(6, 5, generator=torch.Generator().manual_seed(seed)) * 0.6 + 0.2
    ref = torch.rand(20, 5, generator=torch.Generator().manual_seed(seed + 1))
    for kw in ({}, {"reference": ref}):
        res = A.attack(model, x, "best", box=box, **FAST, **kw)
        assert_verified(model, x, res, box)


@given(seed=st.integers(0, 10_000), dead=st.booleans())
@settings(max_examples=5, deadline=None)
def test_norm_is_never_below_the_exact_radius_on_tiny_nets(seed, dead):
    exact_mod = pytest.importorskip("boundkit.exact")
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(3, 3, generator=g) * 0.6 + 0.2
    net = (dead_first_layer_net((3, 6, 3), x[0], 0.5, seed) if dead
           else relu_net((3, 6, 3), seed=seed))
    ex = exact_mod.exact_radius(net, x, box=None).double()
    res = A.attack(net, x, "best", box=None, **FAST)
    fin = torch.isfinite(ex)
    assert bool((res.norm[fin] >= ex[fin] * (1 - 1e-6)).all())
    assert bool(res.success[fin].all())  # an adversarial example exists: it is found
    assert_verified(net, x, res, None)


def test_dead_first_layer_samples_are_found_within_5pct_of_exact():
    """Every first-layer ReLU is off within 1.0 of the sample: every gradient member starts
    at a zero gradient; the start search and the restarts still reach the exact radius."""
    exact_mod = pytest.importorskip("boundkit.exact")
    found = []
    for seed in (0, 1):
        x = torch.rand(2, 4, generator=torch.Generator().manual_seed(50 + seed)) * 0.6 + 0.2
        net = dead_first_layer_net((4, 8, 8, 3), x[0], 1.0, seed)
        ex = exact_mod.exact_radius(net, x[:1], box=None).double()
        if not bool(torch.isfinite(ex).all()):
            continue
        res = A.attack(net, x[:1], "best", box=None)
        assert bool(res.success.all())
        r = float(res.norm[0] / ex[0])
        assert 1 - 1e-6 <= r <= 1.05, (seed, r)
        found.append(seed)
    assert found


def test_constant_model_reports_zero_gradient():
    res = A.attack(Constant().eval(), torch.rand(3, 4), "best", **FAST)
    assert not bool(res.success.any())
    assert res.outcome == [Outcome.ZERO_GRADIENT] * 3
    assert res.missing() == {Outcome.ZERO_GRADIENT: 3}


def test_one_class_box_reports_no_other_class():
    res = A.attack(Sloped().eval(), torch.rand(2, 6), "best", **FAST)
    assert not bool(res.success.any())
    assert res.outcome == [Outcome.NO_OTHER_CLASS] * 2


def test_without_the_rescue_a_failure_with_a_gradient_is_budget_spent():
    ens = A.BestEnsemble(members=["deepfool"], rescue=False, restarts=0)
    res = A.attack(Sloped().eval(), torch.rand(2, 6), ens)
    assert res.outcome == [Outcome.BUDGET_SPENT] * 2
    res = A.attack(Constant().eval(), torch.rand(2, 4), ens)
    assert res.outcome == [Outcome.ZERO_GRADIENT] * 2


def test_single_attacks_report_their_outcome():
    res = A.attack(Constant().eval(), torch.rand(2, 4), "ddn", steps=5)
    assert res.outcome == [Outcome.ZERO_GRADIENT] * 2
    model = relu_net((6, 10, 3), seed=1)
    x = torch.rand(4, 6)
    res = A.attack(model, x, "deepfool", y=torch.tensor([0, 1, 2, 0]))
    for o, s, f in zip(res.outcome, res.success.tolist(), res.found_by):
        assert o == (Outcome.CLEAN if f == "clean" else Outcome.FOUND) if s else not o.has_example
    assert res.to_dict()["outcome"] == [o.value for o in res.outcome]


def test_outcome_must_agree_with_success():
    res = A.attack(relu_net((6, 10, 3), seed=1), torch.rand(2, 6), "deepfool")
    with pytest.raises(ValueError, match="disagrees"):
        A.AttackResult(x_adv=res.x_adv, norm=res.norm, success=res.success,
                       found_by=res.found_by, label=res.label, adv_label=res.adv_label,
                       outcome=[Outcome.ZERO_GRADIENT if s else Outcome.FOUND
                                for s in res.success.tolist()])


class FlatPlateau(nn.Module):
    """Class 0 on ``x_0 < 0.6`` with exactly zero gradient; class 1 beyond ``0.65``."""

    def forward(self, x):
        z = 10 * torch.relu(x[:, :1] - 0.6) - 0.5
        return torch.cat([torch.zeros_like(z), z], 1)


def test_reference_points_give_an_upper_bound_that_the_members_shrink():
    x = torch.full((4, 300), 0.3)
    x[:, 0] = torch.tensor([0.1, 0.2, 0.3, 0.4])
    ref = torch.full((3, 300), 0.3)
    ref[:, 0] = 0.95
    ref[1, 5] = 0.9
    ens = A.BestEnsemble()
    res = A.attack(FlatPlateau().eval(), x, ens, reference=ref, budget=30)
    assert bool(res.success.all())
    exact = 0.65 - x[:, 0].double()
    start = torch.cdist(x.double(), ref.double()).min(1).values
    assert bool((res.norm >= exact * (1 - 1e-6)).all())
    assert bool((res.norm <= start).all())
    assert float((res.norm / exact).max()) < 1.01  # shrunk to the boundary from the start
    assert ens.report[0].name == "reference" and ens.reference is None  # restored after


def test_nearest_reference_is_nearest_first_and_skips_the_sample_itself():
    x = torch.zeros(2, 3)
    ref = torch.tensor([[0.0, 0, 0], [3.0, 0, 0], [1.0, 0, 0], [2.0, 0, 0]])
    crit = Misclassification(torch.tensor([0, 1]))
    pred = torch.tensor([1, 1, 0, 1])
    pts, have = nearest_reference(x, crit, ref, pred, k=2)
    # sample 0 (class 0): class-1 points at 3 and 2, the one equal to x is skipped
    assert pts[0, 0, 0] == 2.0 and pts[1, 0, 0] == 3.0 and bool(have[:, 0].all())
    # sample 1 (class 1): only the class-0 point at 1
    assert pts[0, 1, 0] == 1.0 and bool(have[0, 1]) and not bool(have[1, 1])


def test_line_search_finds_a_start_where_the_gradient_is_zero():
    x = torch.full((3, 50), 0.3)
    x[:, 0] = torch.tensor([0.1, 0.2, 0.3])
    model = FlatPlateau().eval()
    crit = Misclassification(torch.zeros(3, dtype=torch.long))
    s = line_search_starts(model, x, crit, box=(0.0, 1.0), unit=torch.ones(3), seed=0)
    assert bool(s.found.all())
    assert model(s.start).argmax(1).tolist() == [1, 1, 1]
    # the gradient is zero at x, but not where the rays went
    s0 = line_search_starts(Constant().eval(), torch.rand(2, 4),
                            Misclassification(torch.zeros(2, dtype=torch.long)),
                            box=(0.0, 1.0), unit=torch.ones(2))
    assert not bool(s0.found.any()) and not bool(s0.gradient_seen.any())


def test_sphere_starts_are_adversarial_and_batch_independent():
    model = relu_net((4, 10, 3), seed=3)
    x = torch.rand(5, 4) * 0.6 + 0.2
    crit = Misclassification(model(x).argmax(1))
    rad = torch.full((5,), 3.0)
    unit = torch.ones(5)
    pts, have = sphere_starts(model, x, crit, rad, box=None, unit=unit, seed=1)
    with torch.no_grad():
        for r in range(pts.shape[0]):
            adv = crit.is_adversarial(model(pts[r]))
            assert bool(adv[have[r]].all())
    pts1, have1 = sphere_starts(model, x[2:3], crit.subset(slice(2, 3)), rad[2:3], box=None,
                                unit=unit[2:3], seed=1)
    assert torch.equal(have1[:, 0], have[:, 2])
    assert torch.allclose(pts1[:, 0][have1[:, 0]], pts[:, 2][have[:, 2]])


def test_boundary_walk_moves_without_gradients():
    """The decision-based member shrinks a far start on a net that is flat around x."""
    x = torch.full((2, 20), 0.3)
    x[:, 0] = torch.tensor([0.1, 0.3])
    start = x.clone()
    start[:, 0] = 0.9
    start[:, 1:] = 0.9
    model = FlatPlateau().eval()
    crit = Misclassification(torch.zeros(2, dtype=torch.long))
    walk = A.BoundaryWalk(steps=30, init=start)
    out = walk(model, x, crit, box=(0.0, 1.0), seed=0)
    ok, norm, _ = A.verify(model, x, out, crit, (0.0, 1.0))
    first = (start - x).double().norm(dim=1)
    exact = 0.65 - x[:, 0].double()
    assert bool(ok.all()) and bool((norm >= exact * (1 - 1e-6)).all())
    assert bool((norm < 0.5 * first).all())


def test_reference_is_checked():
    model = relu_net((6, 10, 3), seed=1)
    x = torch.rand(2, 6)
    with pytest.raises(InputShapeError, match="reference must have shape"):
        A.attack(model, x, "best", reference=torch.rand(3, 5))
    with pytest.raises(InputShapeError, match="NaN"):
        A.attack(model, x, "best", reference=torch.full((3, 6), float("nan")))
    with pytest.raises(InputShapeError, match="torch.Tensor"):
        A.attack(model, x, "best", reference=[[0.0] * 6])
    with pytest.raises(ValueError, match="'best' ensemble only"):
        A.attack(model, x, "deepfool", reference=torch.rand(3, 6))
