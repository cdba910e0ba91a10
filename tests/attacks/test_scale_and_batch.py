"""Scale-free attacks and batch-independent results.

* For ``g(z) = f(z / s)`` attacked at ``s x`` (box scaled alike, or no box), every attack
  returns ``s`` times the norm it returns for ``f`` at ``x`` (issue #13: within 1 %).
* A sample's result does not depend on the batch it is attacked in (issue #15).
* On small ReLU networks whose decision boundary is far from the inputs (inputs in
  [0.2, 0.8], no box, exact radius about 15-50, tiny logits on half of them), ``best`` is
  within 5 % of the exact radius on at least 95 % of the samples.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import boundkit.attacks as A
from tests.attacks.conftest import relu_net

OPTS = {
    "deepfool": {},
    "ddn": {"steps": 30},
    "fmn": {"steps": 30},
    "alma": {"steps": 30, "init_lr_distance": 0.1},
    "cw": {"steps": 20, "binary_search_steps": 3},
    "pdgd": {"steps": 30},
    "pdpgd": {"steps": 30},
    "fgs": {},
    "fgv": {},
    "lbfgs": {"max_iter": 10, "search_steps": 3},
    "boundary": {"steps": 10},
    "best": {"budget": 10},
}


class Rescaled(nn.Module):
    """``g(z) = f(z / s)``: the same classifier on inputs measured in units ``1 / s``."""

    def __init__(self, f: nn.Module, s: float) -> None:
        super().__init__()
        self.f, self.s = f, s

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.f(z / self.s)


def _net64(seed: int) -> nn.Module:
    return relu_net((5, 12, 12, 3), seed=seed).double().eval()


def test_every_registered_attack_has_a_scale_test():
    assert set(OPTS) == set(A.ATTACKS)


@pytest.mark.parametrize("method", sorted(OPTS))
@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(s=st.sampled_from([1e-3, 1.0, 1e3]), boxed=st.booleans(),
       seed=st.integers(0, 2**16))
def test_attack_norm_scales_with_the_input_space(method, s, boxed, seed):
    f = _net64(seed % 7)
    x = torch.rand(4, 5, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    box = (0.0, 1.0) if boxed else None
    sbox = (0.0, s) if boxed else None
    a = A.attack(f, x, method, box=box, **OPTS[method])
    b = A.attack(Rescaled(f, s).eval(), x * s, method, box=sbox, **OPTS[method])
    assert torch.equal(a.success, b.success)
    ok = a.success
    torch.testing.assert_close(b.norm[ok], s * a.norm[ok], rtol=1e-2, atol=0.0)


@pytest.mark.parametrize("method", sorted(set(OPTS) - {"lbfgs"}))
def test_sample_result_does_not_depend_on_its_batch(method):
    f = _net64(3)
    x = torch.rand(6, 5, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    whole = A.attack(f, x, method, box=None, **OPTS[method])
    for i in (0, 4):
        alone = A.attack(f, x[i : i + 1], method, box=None, **OPTS[method])
        assert bool(alone.success[0]) == bool(whole.success[i])
        if bool(alone.success[0]):
            torch.testing.assert_close(alone.norm[0], whole.norm[i], rtol=1e-6, atol=0.0)
    # chunking and order do not matter either
    perm = torch.tensor([5, 3, 1, 0, 2, 4])
    chunked = A.attack(f, x[perm], method, box=None, batch_size=4, **OPTS[method])
    torch.testing.assert_close(chunked.norm, whole.norm[perm], rtol=1e-6, atol=0.0)


def far_boundary_case(seed: int) -> tuple[nn.Module, torch.Tensor]:
    """A small 4-10-10-3 ReLU net whose first layer is divided by 20: from inputs in
    [0.2, 0.8] the decision boundary lies tens of units away (no box).  For even seeds the
    output layer is also multiplied by 1e-4 (tiny logits: absolute logit tolerances of the
    attacks would swamp the margin)."""
    net = relu_net((4, 10, 10, 3), seed=seed)
    with torch.no_grad():
        net[0].weight.div_(20.0)
        if seed % 2 == 0:
            net[4].weight.mul_(1e-4)
            net[4].bias.mul_(1e-4)
    x = torch.rand(12, 4, generator=torch.Generator().manual_seed(100 + seed)) * 0.6 + 0.2
    return net, x


def test_best_on_far_boundary_nets_within_5pct_of_exact():
    """4 samples of each of two nets (the exact search dominates the time; the benchmark
    ``benchmarks/attacks_far_boundary.py`` runs 5 nets x 12 samples with default budgets)."""
    exact_mod = pytest.importorskip("boundkit.exact")
    ratios = []
    for seed in (0, 1):
        net, x = far_boundary_case(seed)
        x = x[:4]
        ex = exact_mod.exact_radius(net, x, box=None)
        res = A.attack(net, x, "best", box=None, budget=150)
        fin = torch.isfinite(ex)
        assert bool(res.success[fin].all())
        ratios.append(res.norm[fin] / ex[fin])
    r = torch.cat(ratios)
    assert float(r.min()) >= 1 - 1e-5  # never below the exact radius
    assert float((r <= 1.05).double().mean()) >= 0.95


@pytest.mark.parametrize("method", ["fmn", "alma", "ddn"])
def test_convergence_stopping_is_per_sample(method):
    """With per-sample convergence stopping (``stop_window``) a sample's result still does
    not depend on its batch, and stopping never makes a sample fail."""
    f = _net64(3)
    x = torch.rand(6, 5, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    opts = {"steps": 60, "stop_window": 5, "stop_tolerance": 1e-3}
    if method == "alma":
        opts["init_lr_distance"] = 0.1
    whole = A.attack(f, x, method, box=None, **opts)
    full = A.attack(f, x, method, box=None, **{**opts, "stop_window": 0})
    assert bool((whole.success >= full.success).all())
    for i in (0, 4):
        alone = A.attack(f, x[i : i + 1], method, box=None, **opts)
        assert bool(alone.success[0]) == bool(whole.success[i])
        if bool(alone.success[0]):
            torch.testing.assert_close(alone.norm[0], whole.norm[i], rtol=1e-6, atol=0.0)
