"""Inputs that carry a gradient (``x.requires_grad``, or computed from a parameter) are data
to every entry point: the same results as the detached inputs, no ``grad_fn`` on any result,
no raw autograd error (``bk.verify`` raised "Trying to backward through the graph a second
time" from its counterexample search before)."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import boundkit as bk


@pytest.fixture
def net_and_inputs() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(3, 10), nn.ReLU(), nn.Linear(10, 3)).double().eval()
    x = torch.rand(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    return m, x


def _grad_input(x: torch.Tensor) -> torch.Tensor:
    w = torch.ones((), dtype=x.dtype, requires_grad=True)
    return x * w  # a non-leaf with a grad_fn, as out of a preprocessing step


@pytest.mark.parametrize("make", [lambda x: x.clone().requires_grad_(True), _grad_input],
                         ids=["leaf", "non-leaf"])
def test_every_entry_point_treats_inputs_with_grad_as_data(net_and_inputs, make) -> None:
    m, x = net_and_inputs
    xg = make(x)
    assert xg.requires_grad
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "Converting a tensor with requires_grad=True ..."
        for method in ("sound", "crown", "bab"):
            opts = {"time_budget": 0.5} if method == "bab" else {}
            got = bk.certify(m, xg, method, **opts).radius
            assert got.grad_fn is None and not got.requires_grad
            if method != "bab":  # bab's search is timed: its radius may differ run to run
                assert torch.equal(got, bk.certify(m, x, method).radius)
        v = bk.verify(m, xg, 0.05, time_budget=0.5)
        assert v.radius.grad_fn is None and not v.counterexample.requires_grad
        a = bk.attack(m, xg, "deepfool")
        assert not a.x_adv.requires_grad and a.norm.grad_fn is None
        e = bk.exact_radius(m, xg)
        assert not e.requires_grad
        xc = bk.crosscheck(m, xg, methods=["crown"], attack="deepfool")
        assert xc.summary()["violations"] == 0
