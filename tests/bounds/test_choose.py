"""The tightest affordable guarantee (``--method auto``) follows its documented rule."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from boundkit.bounds import choose
from boundkit.errors import BadArgumentError


def _relu_mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 3)).eval()


def _tanh_cnn() -> nn.Module:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Tanh(), nn.Flatten(),
                      nn.Linear(2 * 6 * 6, 3)).eval()
    return m


def test_a_generous_budget_on_a_relu_net_chooses_branch_and_bound() -> None:
    c = choose.tightest_affordable(_relu_mlp(), torch.rand(5, 6), 100.0)
    assert c.method == "bab" and c.options["time_budget"] == 100.0
    assert c.crown_seconds <= choose.BAB_SHARE * 100.0 and "branch and bound" in c.reason


def test_without_bab_the_same_budget_chooses_crown() -> None:
    c = choose.tightest_affordable(_relu_mlp(), torch.rand(5, 6), 100.0, allow_bab=False)
    assert c.method == "crown"


def test_a_net_bab_cannot_split_gets_crown(monkeypatch) -> None:
    c = choose.tightest_affordable(_tanh_cnn(), torch.rand(3, 1, 8, 8), 100.0)
    assert c.method == "crown"  # tanh: bab refuses it, crown fits the budget


def test_a_budget_below_crowns_time_falls_back_to_sound(monkeypatch) -> None:
    ticks = iter([0.0, 10.0])  # the probe "takes" 10 s for its samples
    monkeypatch.setattr(choose.time, "perf_counter", lambda: next(ticks))
    c = choose.tightest_affordable(_relu_mlp(), torch.rand(2, 6), 1.0)
    assert c.method == "sound" and c.crown_seconds == 5.0 and "over the" in c.reason


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf")])
def test_a_bad_budget_is_refused(bad: float) -> None:
    with pytest.raises(BadArgumentError, match="time_budget"):
        choose.tightest_affordable(_relu_mlp(), torch.rand(2, 6), bad)
