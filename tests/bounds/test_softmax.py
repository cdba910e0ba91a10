"""In-network softmax and token permutations (issue 24): the interval and the Taylor planes
of ``boundkit.bounds.softmax`` contain softmax on dense samples and at the box corners
(hypothesis), the 1/2-Lipschitz constant holds, ``permute`` captures from torch's forms with
their semantics, and certificates of small attention-like nets stay below the attacks."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import boundkit as bk
from boundkit.bounds.softmax import softmax_interval, softmax_planes
from boundkit.errors import UnsupportedLayerError
from boundkit.graph import capture
from boundkit.testing import (
    assert_crown_intervals_contain_samples,
    assert_sound,
    check_no_adversarial_in_relaxation_ball,
)

_SETTINGS = settings(max_examples=60, deadline=None, derandomize=True,
                     suppress_health_check=list(HealthCheck))


def _box(seed: int, k: int, centre: float, width: float) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    lo = centre + 3 * torch.randn(3, k, generator=g, dtype=torch.float64)
    return lo, lo + width * torch.rand(3, k, generator=g, dtype=torch.float64)


def _points(lo: torch.Tensor, hi: torch.Tensor, seed: int) -> torch.Tensor:
    """Dense uniform samples of the box plus all its corners (k <= 6): [M, 3, k]."""
    g = torch.Generator().manual_seed(seed)
    k = lo.shape[-1]
    dense = lo + (hi - lo) * torch.rand(1500, *lo.shape, generator=g, dtype=lo.dtype)
    bits = torch.tensor(list(itertools.product([0.0, 1.0], repeat=k)), dtype=lo.dtype)
    corners = lo + (hi - lo) * bits[:, None, :]
    return torch.cat([dense, corners])


@_SETTINGS
@given(seed=st.integers(0, 10**6), k=st.integers(1, 6), centre=st.floats(-50, 50),
       width=st.sampled_from([0.0, 1e-6, 0.05, 0.5, 3.0, 20.0]))
def test_softmax_interval_contains_softmax_on_the_box(seed: int, k: int, centre: float,
                                                      width: float) -> None:
    lo, hi = _box(seed, k, centre, width)
    iv = softmax_interval(lo, hi)
    y = torch.softmax(_points(lo, hi, seed), -1)
    assert (y >= iv.lo).all() and (y <= iv.hi).all()


@_SETTINGS
@given(seed=st.integers(0, 10**6), k=st.integers(1, 6), centre=st.floats(-50, 50),
       width=st.sampled_from([0.0, 1e-6, 0.05, 0.5, 3.0, 20.0]))
def test_softmax_planes_contain_softmax_on_the_box(seed: int, k: int, centre: float,
                                                   width: float) -> None:
    lo, hi = _box(seed, k, centre, width)
    g, b_lo, b_hi = softmax_planes(lo, hi)
    x = _points(lo, hi, seed)
    y = torch.softmax(x, -1)
    lin = (g * x.unsqueeze(-2)).sum(-1)
    assert (y >= b_lo + lin).all() and (y <= b_hi + lin).all()


def test_softmax_planes_are_tight_on_small_boxes() -> None:
    """The remainder is second order: the band shrinks like the width squared."""
    lo, _ = _box(1, 5, 0.0, 0.0)
    widths = []
    for w in (1e-2, 1e-3):
        g, b_lo, b_hi = softmax_planes(lo, lo + w)
        widths.append(float((b_hi - b_lo).max()))
    assert widths[1] < widths[0] / 50


@_SETTINGS
@given(seed=st.integers(0, 10**6), k=st.integers(1, 8), scale=st.floats(0.01, 30))
def test_softmax_is_half_lipschitz(seed: int, k: int, scale: float) -> None:
    g = torch.Generator().manual_seed(seed)
    x = scale * torch.randn(200, k, generator=g, dtype=torch.float64)
    z = x + scale * torch.randn(200, k, generator=g, dtype=torch.float64) * 0.1
    d_out = (torch.softmax(x, -1) - torch.softmax(z, -1)).norm(dim=-1)
    assert (d_out <= 0.5 * (x - z).norm(dim=-1) * (1 + 1e-12) + 1e-300).all()


class _Attn(nn.Module):
    """Scores from a linear map of the input, softmax over tokens, pooled by a fixed matrix
    (no product of two activations: what this branch certifies on its own)."""

    def __init__(self, dim: int, kw: bool) -> None:
        super().__init__()
        self.a, self.b, self.kw, self.dim = nn.Linear(12, 24), nn.Linear(24, 3), kw, dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x.flatten(1)).reshape(x.shape[0], 4, 6).transpose(1, 2)  # [N, 6, 4]
        s = torch.softmax(h * 2.0, dim=self.dim) if self.kw else h.softmax(self.dim)
        return self.b(s.permute(0, 2, 1).flatten(1))


@pytest.mark.parametrize("dim,kw", [(1, True), (-1, False)])
def test_softmax_attention_net_certificates_stay_below_the_attacks(dim: int, kw: bool) -> None:
    torch.manual_seed(0)
    model = _Attn(dim, kw).eval()
    x = torch.rand(4, 1, 3, 4)
    assert [n.op for n in capture(model, x)].count("softmax") == 1
    assert_sound(model, x, "sound", exact=False, attack_steps=30)
    r = check_no_adversarial_in_relaxation_ball(model, x, steps=30)
    assert r is not None and (r["crown"] > 0).all()
    assert_crown_intervals_contain_samples(model, x, r["crown"].clamp(max=1) * 1.5 + 0.05,
                                           samples=100)


def test_softmax_over_the_batch_or_implicit_dim_is_refused_in_network() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.b(torch.softmax(self.a(x), dim=0))

    with pytest.raises(UnsupportedLayerError, match="batch"):
        bk.certify(Net().eval(), torch.rand(2, 4), "crown")


_PERMUTES = {
    "transpose": lambda h: h.transpose(1, 2),
    "transpose_neg_kw": lambda h: torch.transpose(h, dim0=-1, dim1=-2),
    "permute_varargs": lambda h: h.permute(0, 2, 1),
    "permute_tuple": lambda h: h.permute((0, 2, 1)),
    "permute_kw": lambda h: h.permute(dims=(0, 2, 1)),
    "torch_permute": lambda h: torch.permute(h, (0, 2, 1)),
    "swapaxes": lambda h: h.swapaxes(2, 1),
    "mT": lambda h: h.mT,
}


class _Perm(nn.Module):
    def __init__(self, form: str) -> None:
        super().__init__()
        self.a, self.b, self.form = nn.Linear(6, 12), nn.Linear(12, 3), form

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.a(x)).reshape(x.shape[0], 3, 4)
        return self.b(_PERMUTES[self.form](h).reshape(x.shape[0], 12))


@pytest.mark.parametrize("form", sorted(_PERMUTES))
def test_permute_forms_capture_with_torch_semantics(form: str) -> None:
    torch.manual_seed(1)
    model = _Perm(form).eval()
    x = torch.rand(5, 6)
    g = capture(model, x)
    assert "permute" in [n.op for n in g]
    out = g.activations(x.double())[g.output]
    assert torch.allclose(out, model.double()(x.double()), atol=1e-12)
    cert = bk.certify(model.float(), x, "crown")
    assert (cert.radius > 0).all()


def test_permute_of_the_batch_axis_is_refused() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.a(x.reshape(x.shape[0], 2, 2).transpose(0, 1).reshape(-1, 4))

    with pytest.raises(UnsupportedLayerError):
        capture(Net().eval(), torch.rand(2, 4))
