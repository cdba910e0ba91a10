"""Adaptive average pooling and means over dimensions (issue 24, step 1): capture in module
and functional forms, the sound constant against the exact operator norm, and no
certificate (``sound``, ``crown``, ``alpha``) above an adversarial example's distance."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import boundkit as bk
from boundkit.bounds.average import adaptive_windows, average_lipschitz
from boundkit.errors import UnsupportedLayerError
from boundkit.graph import capture
from boundkit.testing import (
    assert_crown_intervals_contain_samples,
    assert_sound,
    check_no_adversarial_in_relaxation_ball,
)


class _Head(nn.Module):
    """conv -> relu -> one of the average forms -> linear."""

    def __init__(self, form: str, c: int = 3, hw: int = 6, out: tuple = (1, 1)) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, c, 3, padding=1)
        self.form, self.out = form, out
        self.pool = nn.AdaptiveAvgPool2d(out)
        cells = out[0] * (out[1] or hw)
        n = {"module": c * cells, "functional": c * cells,
             "mean": c, "mean_keep": c, "mean_last": c * hw}[form]
        self.fc = nn.Linear(n, 3)
        with torch.no_grad():
            self.conv.weight.mul_(3.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv(x))
        if self.form == "module":
            h = self.pool(h)
        elif self.form == "functional":
            h = F.adaptive_avg_pool2d(h, output_size=self.out)
        elif self.form == "mean":
            h = h.mean(dim=(2, 3))
        elif self.form == "mean_keep":
            h = torch.mean(h, (-1, -2), keepdim=True)
        else:
            h = h.mean(-1)
        return self.fc(h.flatten(1))


@pytest.mark.parametrize("form,out", [("module", (1, 1)), ("module", (2, 3)), ("module", (4, 4)),
                                      ("functional", (3, None)), ("mean", None),
                                      ("mean_keep", None), ("mean_last", None)])
def test_every_average_form_is_captured_and_certified_below_the_attacks(form, out) -> None:
    torch.manual_seed(0)
    model = _Head(form, out=out if out is not None else (1, 1)).eval()
    x = torch.rand(3, 1, 6, 6)
    g = capture(model, x)
    ops = [n.op for n in g.nodes]
    assert ("mean" in ops) == form.startswith("mean")
    assert ("adaptive_avgpool2d" in ops) == (not form.startswith("mean"))
    assert_sound(model, x, "sound", exact=False, attack_steps=40)
    assert check_no_adversarial_in_relaxation_ball(model, x, steps=40) is not None
    eps = bk.certify(model, x, "crown").radius.clamp(max=1.0) * 2 + 0.05
    assert_crown_intervals_contain_samples(model, x, eps, samples=100)


@settings(max_examples=30, deadline=None)
@given(h=st.integers(1, 9), w=st.integers(1, 9), oh=st.integers(1, 9), ow=st.integers(1, 9))
def test_adaptive_pool_constant_dominates_the_exact_operator_norm(h, w, oh, ow) -> None:
    pool = nn.Sequential(nn.AdaptiveAvgPool2d((oh, ow)), nn.Flatten(), nn.Linear(2 * oh * ow, 2))
    g = capture(pool.eval(), (2, h, w))
    node = next(n for n in g.nodes if n.op == "adaptive_avgpool2d")
    jac = torch.autograd.functional.jacobian(
        lambda z: F.adaptive_avg_pool2d(z, (oh, ow)), torch.zeros(1, 2, h, w, dtype=torch.float64))
    exact = torch.linalg.matrix_norm(jac.reshape(2 * oh * ow, 2 * h * w), 2)
    lip = average_lipschitz(node)
    assert lip >= float(exact) * (1 - 1e-12)
    if h % oh == 0 and w % ow == 0:  # disjoint windows: the constant is exact
        assert lip <= float(exact) * (1 + 1e-8)


@pytest.mark.parametrize("size,out", [(7, 3), (5, 5), (6, 4), (3, 7), (224, 7)])
def test_adaptive_windows_are_torchs(size, out) -> None:
    z = torch.arange(size, dtype=torch.float64).reshape(1, 1, 1, size)
    got = F.adaptive_avg_pool2d(z, (1, out)).flatten()
    want = torch.tensor([sum(range(s, e)) / (e - s) for s, e in adaptive_windows(size, out)],
                        dtype=torch.float64)
    assert torch.allclose(got, want, rtol=0, atol=1e-12)


def test_mean_over_the_batch_or_everything_is_refused_naming_the_node() -> None:
    class All(nn.Module):
        def __init__(self, dim) -> None:
            super().__init__()
            self.fc, self.dim = nn.Linear(4, 2), dim

        def forward(self, x):
            return self.fc(x + x.mean(dim=self.dim, keepdim=True))

    for dim, msg in [(0, "batch"), ((0, 1), "batch"), (None, "every dimension")]:
        with pytest.raises(UnsupportedLayerError, match=msg):
            capture(All(dim).eval(), (4,))

    class Dtype(nn.Module):
        def forward(self, x):
            return torch.mean(x, dim=2, dtype=torch.float16)

    with pytest.raises(UnsupportedLayerError, match="dtype"):
        capture(Dtype().eval(), (2, 3))
