"""Interface, verification and error handling of ``boundkit.attack``."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import boundkit as bk
import boundkit.attacks as A
from boundkit.attacks.base import Outcome
from boundkit.errors import InputShapeError, ModelError
from tests.attacks.conftest import linear_model, relu_net

FAST_METHODS = ["deepfool", "ddn", "fmn", "fgs", "fgv", "pdpgd", "alma"]
FAST_OPTS = {"ddn": {"steps": 30}, "fmn": {"steps": 30}, "pdpgd": {"steps": 30}}


def test_toplevel_names_resolve():
    assert bk.attack is A.attack
    assert bk.AttackResult is A.AttackResult


def test_registry_has_every_attack():
    names = {"fgs", "fgv", "lbfgs", "deepfool", "cw", "ddn", "fmn", "pdgd", "pdpgd", "alma", "best"}
    assert names <= set(A.ATTACKS)


def test_training_mode_model_is_refused():
    model = relu_net()
    model.train()
    with pytest.raises(ModelError):
        A.attack(model, torch.rand(2, 6), "deepfool")
    assert model.training  # mode untouched


@pytest.mark.parametrize(
    "x",
    [
        torch.rand(6),
        torch.full((2, 6), math.nan),
        torch.randint(0, 2, (2, 6)),
        torch.rand(2, 6) + 2,
    ],
)
def test_bad_inputs_are_refused(x):
    with pytest.raises(InputShapeError):
        A.attack(relu_net(), x, "deepfool")


def test_unknown_method_is_refused():
    with pytest.raises(ValueError):
        A.attack(relu_net(), torch.rand(2, 6), "nope")


@given(
    seed=st.integers(0, 10_000),
    method=st.sampled_from(FAST_METHODS),
    n=st.integers(1, 6),
)
@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_success_implies_adversarial_in_box_with_exact_norm(seed, method, n):
    model = relu_net((6, 10, 3), seed=seed % 7)
    x = torch.rand(n, 6, generator=torch.Generator().manual_seed(seed))
    res = A.attack(model, x, method, **FAST_OPTS.get(method, {}))
    with torch.no_grad():
        pred_adv = model(res.x_adv).argmax(1)
    ok = res.success
    assert bool((pred_adv[ok] != res.label[ok]).all())
    assert bool((res.x_adv[ok] >= 0).all()) and bool((res.x_adv[ok] <= 1).all())
    norm = (res.x_adv.double() - x.double()).flatten(1).norm(dim=1)
    assert torch.equal(res.norm[ok], norm[ok])
    assert res.norm.dtype == torch.float64
    assert bool(torch.isinf(res.norm[~ok]).all())
    assert all(res.found_by[i] == method for i in ok.nonzero().flatten().tolist())


class Constant(nn.Module):
    """A classifier whose prediction never changes (weights ignore the input)."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 3)

    def forward(self, x):
        return self.lin(torch.zeros_like(x)) + torch.tensor([1.0, 0.0, 0.0])


@given(method=st.sampled_from(FAST_METHODS), n=st.integers(1, 4))
@settings(max_examples=10, deadline=None)
def test_failures_are_reported_as_failures(method, n):
    model = Constant().eval()
    x = torch.rand(n, 4)
    res = A.attack(model, x, method, **FAST_OPTS.get(method, {}))
    assert not bool(res.success.any())
    assert bool(torch.isinf(res.norm).all())
    assert torch.equal(res.x_adv, x)
    assert res.success_rate() == 0.0 and math.isinf(res.median_norm())
    assert res.found_by == [""] * n


class Liar(A.Attack):
    """An attack that claims points it never checked (returns random points)."""

    name = "liar"

    def run(self, model, x, criterion, *, box, seed=0):
        return torch.rand(x.shape, generator=torch.Generator().manual_seed(0))


def test_unverified_points_are_never_successes():
    model = relu_net((6, 10, 3), seed=1)
    x = torch.rand(32, 6)
    res = A.attack(model, x, Liar(refine_steps=0))
    with torch.no_grad():
        adv = model(res.x_adv).argmax(1) != res.label
    assert torch.equal(res.success, adv & res.success)
    assert bool((~res.success).sum() > 0)  # random points are not all adversarial


def test_box_none_allows_leaving_unit_box():
    model = linear_model(d=5, c=3, seed=0)
    x = torch.full((4, 5), 5.0)
    res = A.attack(model, x, "deepfool", box=None)
    assert bool(res.success.all())


def test_custom_box_is_respected():
    model = relu_net((6, 10, 3), seed=2)
    x = torch.rand(8, 6) * 0.2 + 0.4
    res = A.attack(model, x, "ddn", box=(0.3, 0.7), steps=50)
    ok = res.success
    assert bool((res.x_adv[ok] >= 0.3).all()) and bool((res.x_adv[ok] <= 0.7).all())


def test_given_labels_already_misclassified_have_zero_norm():
    model = relu_net((6, 10, 3), seed=3)
    x = torch.rand(10, 6)
    with torch.no_grad():
        pred = model(x).argmax(1)
    y = pred.clone()
    y[:3] = (pred[:3] + 1) % 3
    res = A.attack(model, x, "deepfool", y=y)
    assert bool(res.success[:3].all()) and bool((res.norm[:3] == 0).all())
    assert res.found_by[:3] == ["clean"] * 3
    assert bool((res.norm[3:][res.success[3:]] > 0).all())


@pytest.mark.parametrize("method", ["deepfool", "ddn", "fmn", "cw", "alma"])
def test_targeted_success_reaches_the_target(method):
    model = relu_net((6, 10, 3), seed=4)
    x = torch.rand(8, 6)
    with torch.no_grad():
        target = (model(x).argmax(1) + 1) % 3
    opts = {"cw": {"steps": 100, "binary_search_steps": 4, "initial_const": 1.0}}.get(
        method, {"steps": 50}
    )
    res = A.attack(model, x, method, target=target, **opts)
    assert res.targeted
    ok = res.success
    assert bool(ok.any())
    assert bool((res.adv_label[ok] == target[ok]).all())


def test_float64_model_keeps_its_dtype_and_is_verified_in_it():
    model = relu_net((6, 10, 3), seed=5).double()
    x = torch.rand(6, 6)
    res = A.attack(model, x, "ddn", steps=30)
    assert res.x_adv.dtype == torch.float64
    assert next(model.parameters()).dtype == torch.float64


def test_chunking_matches_single_batch():
    model = relu_net((6, 10, 3), seed=6)
    x = torch.rand(10, 6)
    a = A.attack(model, x, "deepfool")
    b = A.attack(model, x, "deepfool", batch_size=3)
    assert torch.equal(a.success, b.success)
    assert torch.allclose(a.norm[a.success], b.norm[b.success], rtol=1e-5)


def test_best_keeps_the_smallest_member_result():
    model = relu_net((6, 10, 3), seed=7)
    x = torch.rand(10, 6)
    df = A.attack(model, x, "deepfool")
    best = A.attack(model, x, "best", members=["deepfool", ("ddn", {"steps": 50})])
    assert bool(best.success.all())
    assert bool((best.norm <= df.norm + 1e-12).all())
    # the members' results, or a random restart of their shrinking (never a rescue here)
    assert {f.split("+")[0] for f in best.found_by} <= {"deepfool", "ddn", "restart"}
    d = best.to_dict()
    assert d["method"] == "best" and len(d["norm"]) == 10


def test_budget_sets_steps():
    assert A.DDN.budget_to_options(7) == {"steps": 7}
    assert A.CarliniWagner.budget_to_options(90) == {"steps": 10}
    ens = A.BestEnsemble(budget=5)
    assert all(getattr(ens.build(m), "steps", 5) == 5 for m in ens.members)


def test_lbfgs_and_pdgd_find_adversarials():
    model = relu_net((6, 10, 3), seed=8)
    x = torch.rand(6, 6)
    for method, opts in [("lbfgs", {"max_iter": 30, "search_steps": 5}), ("pdgd", {"steps": 100})]:
        res = A.attack(model, x, method, **opts)
        assert res.success_rate() > 0.5


def test_alma_p2_penalty_and_derivative():
    from boundkit.attacks.alma import p2_derivative, p2_penalty

    y = torch.linspace(-3, 3, 61, dtype=torch.float64, requires_grad=True)
    rho = torch.full_like(y, 1.7)
    mu = torch.full_like(y, 0.6)
    (g,) = torch.autograd.grad(p2_penalty(y, rho, mu).sum(), y)
    assert torch.allclose(g, p2_derivative(y.detach(), rho, mu), atol=1e-10)
    assert float(p2_penalty(torch.zeros(1), torch.ones(1), torch.ones(1))) == 0.0


def test_alma_matches_its_initial_step_distance():
    """With init_lr_distance the line search gives the requested first-step distance."""
    from boundkit.attacks.alma import ALMA

    x = torch.rand(5, 6, dtype=torch.float64)
    g = torch.randn(5, 6, dtype=torch.float64)
    lr = ALMA(init_lr_distance=0.3)._initial_lr(x, g, torch.full((5,), 0.3, dtype=x.dtype),
                                                (0.0, 1.0))
    d = ((x - lr[:, None] * g).clamp(0, 1) - x).norm(dim=1)
    assert torch.allclose(d, torch.full_like(d, 0.3), atol=1e-4)


def test_concat_of_chunk_results_equals_one_call():
    import torch.nn as nn

    from boundkit.attacks.base import AttackResult

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    x = torch.rand(6, 4)
    whole = A.attack(model, x, "deepfool", box=None)
    parts = [A.attack(model, x[:4], "deepfool", box=None),
             A.attack(model, x[4:], "deepfool", box=None)]
    joined = AttackResult.concat(parts)
    assert len(joined) == 6 and joined.found_by == parts[0].found_by + parts[1].found_by
    torch.testing.assert_close(joined.norm, whole.norm)
    torch.testing.assert_close(joined.x_adv, whole.x_adv)
    torch.testing.assert_close(joined.label, whole.label)


class DeadZone(nn.Module):
    """Class 1 iff ``10 relu(x_0 - 0.6) > 0.5``, i.e. ``x_0 > 0.65``; below ``x_0 = 0.6``
    every logit is constant, so every gradient-based attack sees a zero gradient there.
    Exact minimal perturbation (box [0, 1]) of a class-0 point: ``0.65 - x_0``."""

    def forward(self, x):
        z = 10 * torch.relu(x[:, :1] - 0.6) - 0.5
        return torch.cat([torch.zeros_like(z), z], 1)


RESCUE = ("start", "boundary", "start+fmn")


def test_best_falls_back_on_pool_points_where_gradients_vanish():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(12, 40, generator=g) * 0.4 + 0.3  # every coordinate in [0.3, 0.7]
    x[:8, 0] = torch.linspace(0.1, 0.5, 8)  # class 0, in the zero-gradient zone
    x[8:, 0] = 0.9  # class 1
    model = DeadZone().eval()
    opts = {"budget": 30, "seed": 0}
    no_fb = A.attack(model, x, "best", rescue=False, restarts=0, **opts)
    res = A.attack(model, x, "best", fallback_pool=x[8:], **opts)
    exact = 0.65 - x[:8, 0].double()
    nearest = torch.cdist(x[:8].double(), x[8:].double()).min(1).values
    stuck = ~no_fb.success[:8]  # the members alone are stuck in the dead zone
    assert int(stuck.sum()) >= 3
    assert all(o == Outcome.ZERO_GRADIENT for o, s in zip(no_fb.outcome[:8], stuck) if s)
    assert bool(res.success.all())
    assert bool((res.norm[:8] >= exact * (1 - 1e-6)).all())  # never below the exact radius
    assert bool((res.norm[:8][stuck] <= nearest[stuck] + 1e-9).all())  # never worse than start
    assert all(f.startswith(RESCUE) for f, s in zip(res.found_by[:8], stuck) if s)
    # the walk and FMN shrink the start towards the exact minimal perturbation
    assert float((res.norm[:8][stuck] / nearest[stuck]).max()) < 0.9


def test_best_without_the_rescue_leaves_failures_and_says_why():
    x = torch.full((3, 400), 0.3)
    x[:, 0] = torch.tensor([0.1, 0.12, 0.14])  # all class 0: the batch holds no start
    res = A.attack(DeadZone().eval(), x, "best", budget=20, seed=0, fallback_pool=x,
                   rescue=False)
    assert bool((~res.success).any())  # the members fail in 400 dimensions ...
    assert all(f == "" and o == Outcome.ZERO_GRADIENT  # ... and say so
               for f, o, s in zip(res.found_by, res.outcome, res.success) if not s)
    # with the rescue, rays from x reach class 1 although the pool holds no start
    res = A.attack(DeadZone().eval(), x, "best", budget=20, seed=0, fallback_pool=x)
    assert bool(res.success.all())
    assert bool((res.norm >= (0.65 - x[:, 0].double()) * (1 - 1e-6)).all())


def test_best_default_pool_is_uniform_in_the_box_and_breaks_dead_zone_samples():
    x = torch.full((3, 400), 0.3)  # in 400 dimensions the members fail (see above)
    x[:, 0] = torch.tensor([0.1, 0.12, 0.14])
    ens = A.BestEnsemble(budget=20)
    pool = ens.pool(x, (0.0, 1.0))
    assert pool.shape == (256, 400) and float(pool.min()) >= 0 and float(pool.max()) <= 1
    res = A.attack(DeadZone().eval(), x, ens, seed=0)
    assert bool(res.success.all())
    assert all(f.startswith(RESCUE) for f in res.found_by)
    assert bool((res.norm >= (0.65 - x[:, 0].double()) * (1 - 1e-6)).all())


def test_pool_fallback_respects_groups():
    """A start point must come from the sample's own group (e.g. its stacked classifier)."""
    from boundkit.attacks.base import Misclassification
    from boundkit.attacks.ensemble import start_from_pool

    model = DeadZone().eval()
    x = torch.full((2, 5), 0.3)
    pool = torch.full((2, 5), 0.3)
    pool[:, 0] = torch.tensor([0.9, 0.7])  # both class 1; the farther one is in group 0
    crit = Misclassification(torch.zeros(2, dtype=torch.long))
    out = start_from_pool(model, x, crit, pool, box=(0.0, 1.0), steps=0,
                          groups=torch.tensor([0, 1]), pool_groups=torch.tensor([0, 1]))
    assert abs(float(out[0, 0]) - 0.9) < 0.26  # bisected towards x from 0.9, in group 0
    assert model(out).argmax(1).tolist() == [1, 1]
    with pytest.raises(ValueError, match="pool_groups"):
        start_from_pool(model, x, crit, pool, box=None, groups=torch.tensor([0, 1]))


def test_best_is_an_attack_with_one_interface():
    ens = A.BestEnsemble(members=["deepfool", ("ddn", {"steps": 20})], fallback_pool=None)
    assert isinstance(ens, A.Attack)
    model = relu_net((6, 10, 3), seed=7)
    x = torch.rand(5, 6)
    from boundkit.attacks.base import Misclassification

    crit = Misclassification(model(x).argmax(1))
    v = ens.attack(model, x, crit, box=(0.0, 1.0))
    assert v.found_by == ens.sources(5) or all(f == "" or f in ens.sources(5)
                                               for f in v.found_by)
    assert [m.name for m in ens.report][:2] == ["deepfool", "ddn"]
    assert sum(m.samples_won for m in ens.report) == int(v.success.sum())
