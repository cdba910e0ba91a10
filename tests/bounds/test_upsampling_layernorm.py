"""ConvTranspose2d, Upsample / F.interpolate and LayerNorm (issue 24, step 4): capture with
torch's arguments, the adjoint identity the crown rule relies on, sound constants against
the exact operator norm, and no certificate above an adversarial example's distance."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from boundkit.bounds.registry import get_rule
from boundkit.errors import UnsupportedLayerError
from boundkit.graph import capture
from boundkit.testing import (
    assert_crown_intervals_contain_samples,
    assert_sound,
    check_no_adversarial_in_relaxation_ball,
)


class _Net(nn.Module):
    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.c = nn.Conv2d(1, 3, 3, stride=2, padding=1)
        self.t = nn.ConvTranspose2d(3, 2, 3, stride=2, padding=1, output_padding=1, bias=True)
        self.u = nn.Upsample(scale_factor=2, mode="nearest")
        self.ub = nn.Upsample(size=(5, 7), mode="bilinear", align_corners=False)
        self.ln = nn.LayerNorm(12)
        n = {"convt": 2 * 4 * 4, "up": 48, "bilinear": 105, "interp": 27, "ln": 12}[kind]
        self.fc = nn.Linear(n, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.c(x))
        if self.kind == "convt":
            h = self.t(h)
        elif self.kind == "up":
            h = self.u(h)
        elif self.kind == "bilinear":
            h = self.ub(h)
        elif self.kind == "interp":
            h = F.interpolate(h, scale_factor=1.5, mode="nearest")
        else:
            h = self.ln(h.flatten(1))
        return self.fc(torch.relu(h).flatten(1))


@pytest.mark.parametrize("kind", ["convt", "up", "bilinear", "interp", "ln"])
def test_upsampling_and_layernorm_nets_are_certified_below_the_attacks(kind: str) -> None:
    torch.manual_seed(0)
    model = _Net(kind).eval()
    x = torch.rand(3, 1, 4, 4)
    op = {"convt": "conv_transpose2d", "ln": "layernorm"}.get(kind, "resize")
    assert op in [n.op for n in capture(model, x).nodes]
    assert_sound(model, x, "sound", exact=False, attack_steps=30)
    r = check_no_adversarial_in_relaxation_ball(model, x, steps=30)
    assert r is not None
    assert_crown_intervals_contain_samples(model, x, r["crown"].clamp(max=1) * 1.5 + 0.05,
                                           samples=100)


@pytest.mark.parametrize("stride,padding,out_pad,dil,groups", [
    (1, 0, 0, 1, 1), (2, 1, 1, 1, 1), (3, 2, 1, 2, 1), (2, 0, 0, 1, 2)])
def test_transposed_conv_adjoint_identity_and_sound_constant(stride, padding, out_pad, dil,
                                                             groups) -> None:
    torch.manual_seed(1)
    m = nn.Sequential(nn.ConvTranspose2d(2, 4, 3, stride, padding, out_pad, groups, True, dil),
                      nn.Flatten())
    x = torch.rand(1, 2, 5, 4)
    out = m(x)
    m.append(nn.Linear(out.shape[1], 2))
    g = capture(m.eval(), x)
    node = next(n for n in g.nodes if n.op == "conv_transpose2d")
    rule = get_rule("conv_transpose2d", "crown")
    z = torch.randn(3, *node.in_shapes[0], dtype=torch.float64)
    a = torch.randn(3, *node.out_shape, dtype=torch.float64)
    lhs = (a * rule.apply(node, z)).sum()
    rhs = (rule.transpose(node, a) * z).sum()
    assert torch.allclose(lhs, rhs, rtol=1e-10)
    jac = torch.autograd.functional.jacobian(lambda t: rule.apply(node, t),
                                             torch.zeros(1, *node.in_shapes[0],
                                                         dtype=torch.float64))
    exact = torch.linalg.matrix_norm(jac.reshape(node.out_numel, node.in_numel), 2)
    lip = get_rule("conv_transpose2d", "sound").compute_lipschitz(node, g)
    assert lip >= float(exact) * (1 - 1e-12)


@pytest.mark.parametrize("kw", [dict(scale_factor=2, mode="nearest"),
                                dict(size=(7, 5), mode="nearest"),
                                dict(scale_factor=1.7, mode="bilinear", align_corners=True),
                                dict(size=(3, 3), mode="area"),
                                dict(scale_factor=2, mode="nearest-exact")])
def test_resize_constant_dominates_the_exact_norm_and_is_exact_for_integer_nearest(kw) -> None:
    m = nn.Sequential(nn.Upsample(**kw), nn.Flatten())
    x = torch.rand(1, 2, 4, 6)
    m.append(nn.Linear(m(x).shape[1], 2))
    g = capture(m.eval(), x)
    node = next(n for n in g.nodes if n.op == "resize")
    jac = torch.autograd.functional.jacobian(
        lambda t: F.interpolate(t, **kw), torch.zeros(1, 2, 4, 6, dtype=torch.float64))
    exact = float(torch.linalg.matrix_norm(jac.reshape(node.out_numel, node.in_numel), 2))
    lip = get_rule("resize", "sound").compute_lipschitz(node, g)
    assert lip >= exact * (1 - 1e-12)
    if kw.get("scale_factor") == 2 and kw["mode"] == "nearest":
        assert lip <= exact * (1 + 1e-8)


def test_layernorm_constant_dominates_sampled_jacobians_and_odd_forms_are_refused() -> None:
    torch.manual_seed(2)
    ln = nn.LayerNorm(6, eps=1e-2)
    with torch.no_grad():
        ln.weight.uniform_(-2, 2)
    m = nn.Sequential(nn.Linear(4, 6), ln, nn.Linear(6, 2)).eval()
    g = capture(m, (4,))
    node = next(n for n in g.nodes if n.op == "layernorm")
    lip = get_rule("layernorm", "sound").compute_lipschitz(node, g)
    for scale in (0.0, 0.01, 0.1, 1.0, 10.0):
        y = torch.randn(6, dtype=torch.float64) * scale
        jac = torch.autograd.functional.jacobian(
            lambda t: F.layer_norm(t, (6,), node.params["weight"], node.params["bias"], 1e-2), y)
        assert float(torch.linalg.matrix_norm(jac, 2)) <= lip
    with pytest.raises(UnsupportedLayerError, match="bicubic"):
        capture(nn.Sequential(nn.Upsample(scale_factor=2, mode="bicubic"), nn.Flatten(),
                              nn.Linear(32, 2)).eval(), (2, 2, 2))

    class Functional(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc, self.w = nn.Linear(4, 6), nn.Parameter(torch.rand(6))

        def forward(self, x):
            return F.layer_norm(self.fc(x), (6,), weight=self.w, eps=1e-3)[:, :2]

    got = capture(Functional().eval(), (4,))
    node = next(n for n in got.nodes if n.op == "layernorm")
    assert node.attrs["eps"] == 1e-3 and torch.equal(node.params["bias"], torch.zeros(6,
                                                                                     dtype=torch.float64))
