"""Walks on windows through residual connections (``windows.py``): a ResNet's refinement
walks follow the cone of a neuron (both branches of every ``add``, the 1x1 strided
downsampling shortcut included) on windows; radii and intervals equal those of whole walks,
and the windows are really used."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import boundkit as bk
from boundkit.models.zoo import BasicBlock


class _ResNet(nn.Module):
    """Stem conv, a BasicBlock with an identity shortcut, one with a strided 1x1 shortcut,
    a padded conv branch added to a ReLU (``h + conv(h)``), then a linear head."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.stem = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU())
        self.b1, self.b2 = BasicBlock(3, 3, 1), BasicBlock(3, 4, 2)
        self.side = nn.Conv2d(4, 4, 3, padding=2, dilation=2)
        self.head = nn.Linear(4 * 3 * 3, 3)
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.data.uniform_(0.5, 1.5)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.b2(self.b1(self.stem(x)))
        return self.head(torch.relu(h + self.side(h)).flatten(1))


def _x(seed: int, n: int = 3) -> torch.Tensor:
    return torch.rand(n, 2, 6, 6, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(("method", "tile"), [
    ("crown", 1), ("crown", 2),
    pytest.param("alpha", 2, marks=pytest.mark.slow),  # about 20 CPU seconds
])
def test_residual_walks_on_windows_give_the_radii_of_whole_walks(method, tile,
                                                                 monkeypatch) -> None:
    from boundkit.bounds.crown import windows

    model = _ResNet(21)
    x = _x(21, 2)
    opts = {"iterations": 1} if method == "alpha" else {}
    monkeypatch.setattr(windows.Windows, "chain", lambda self, run, node: None)
    whole = bk.certify(model, x, method, **opts).radius
    monkeypatch.undo()
    monkeypatch.setattr(windows, "WINDOW_GAIN", math.inf)  # windows wherever possible
    monkeypatch.setattr(windows, "TILE", tile)
    windowed = bk.certify(model, x, method, **opts).radius
    assert bool((whole > 0).all())
    torch.testing.assert_close(windowed, whole, rtol=2e-3, atol=0.0)


@pytest.mark.parametrize("tile", [1, 2])
def test_residual_walks_on_windows_give_the_intervals_of_whole_walks(tile, monkeypatch) -> None:
    from boundkit.bounds.crown import CrownRun, plan_crown, windows
    from boundkit.bounds.engine import graph_for

    model = _ResNet(22)
    x = _x(22).double()
    g = graph_for(model, x, None)
    eps = torch.tensor([0.05, 0.2, 0.5], dtype=torch.float64)
    monkeypatch.setattr(windows.Windows, "chain", lambda self, run, node: None)
    whole = CrownRun(g, plan_crown(g), x, (0.0, 1.0)).intervals(eps).intervals
    monkeypatch.undo()
    monkeypatch.setattr(windows, "WINDOW_GAIN", math.inf)
    monkeypatch.setattr(windows, "TILE", tile)
    run = CrownRun(g, plan_crown(g), x, (0.0, 1.0))
    windowed = run.intervals(eps).intervals
    adds = [n for n in g if n.op == "add"]
    walked = [n for n in g.upstream() if n.name in run.plan.refine
              and windows.WINDOWS.chain(run, n)]
    # the windows pass residual additions: some refined node's cone holds one
    assert any(any(a in windows.WINDOWS.chain(run, n) for a in adds) for n in walked)
    for name, iv in whole.items():
        for a, b in ((windowed[name].lo, iv.lo), (windowed[name].hi, iv.hi)):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
