"""Property tests: the sound certificate is never violated.

* ReLU networks small enough for the exact oracle: ``sound radius <= exact radius``.
* Every supported layer type (convolutions with overlapping windows, pooling of each kind,
  batch norm with tiny variances, LRN with large inputs, saturated tanh / sigmoid /
  softplus, residual add and cat): no adversarial example exists inside the certified ball,
  searched with a batched projected-gradient attack in float64 that maximises the best
  competitor's margin on the sphere of the certified radius.

Profiles (tests/conftest.py): ``ci`` runs 200 examples per property,
``--hypothesis-profile=thorough`` 20,000.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

import boundkit as bk

D = torch.float64


def _scale(module: nn.Module, s: float) -> nn.Module:
    with torch.no_grad():
        for p in module.parameters():
            p.mul_(s)
    return module


@st.composite
def relu_mlps(draw):
    seed = draw(st.integers(0, 2**31 - 1))
    torch.manual_seed(seed)
    d = draw(st.integers(2, 5))
    widths = draw(st.lists(st.integers(2, 7), min_size=1, max_size=2))
    classes = draw(st.integers(2, 4))
    layers: list[nn.Module] = []
    prev = d
    for w in widths:
        layers += [_scale(nn.Linear(prev, w), 10 ** draw(st.floats(-1, 1))), nn.ReLU()]
        prev = w
    layers.append(_scale(nn.Linear(prev, classes), 10 ** draw(st.floats(-1, 1))))
    model = nn.Sequential(*layers).double().eval()
    x = torch.randn(4, d, dtype=D) * 10 ** draw(st.floats(-1, 1))
    return model, x


class _ResidualBlock(nn.Module):
    def __init__(self, d: int, kind: str) -> None:
        super().__init__()
        self.a, self.b, self.kind = nn.Linear(d, d), nn.Linear(d, d), kind

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "add":
            return torch.tanh(self.a(x)) + x
        return torch.cat([F.relu(self.a(x)), torch.sigmoid(self.b(x))], dim=1)


@st.composite
def conv_networks(draw):
    """Small CNNs drawn over every supported layer family and across scales."""
    seed = draw(st.integers(0, 2**31 - 1))
    torch.manual_seed(seed)
    c_in = draw(st.integers(1, 2))
    hw = draw(st.integers(5, 8))
    c = draw(st.integers(1, 4))
    k = draw(st.integers(1, 3))
    stride = draw(st.integers(1, 2))
    pad = draw(st.integers(0, 1))
    layers: list[nn.Module] = [
        _scale(nn.Conv2d(c_in, c, k, stride=stride, padding=pad), 10 ** draw(st.floats(-1, 1)))
    ]
    act = draw(st.sampled_from([nn.ReLU, nn.Tanh, nn.Sigmoid, nn.Softplus, None]))
    if act is not None:
        layers.append(act())
    extra = draw(st.sampled_from(["bn", "lrn", "none"]))
    if extra == "bn":
        bn = nn.BatchNorm2d(c)
        with torch.no_grad():
            bn.running_var.copy_(10 ** torch.empty(c).uniform_(-6, 1))  # tiny variances too
            bn.running_mean.normal_()
            bn.weight.normal_()
            bn.bias.normal_()
        layers.append(bn)
    elif extra == "lrn":
        layers.append(nn.LocalResponseNorm(draw(st.integers(1, 3)),
                                           alpha=10 ** draw(st.floats(-4, 0.5)),
                                           beta=draw(st.floats(0.3, 0.9)),
                                           k=draw(st.floats(0.5, 2.0))))
    pool = draw(st.sampled_from(["max", "max_overlap", "avg", "lp", "none"]))
    if pool == "max":
        layers.append(nn.MaxPool2d(2))
    elif pool == "max_overlap":
        layers.append(nn.MaxPool2d(2, stride=1))
    elif pool == "avg":
        layers.append(nn.AvgPool2d(2, stride=1, padding=1))
    elif pool == "lp":
        if act not in (nn.ReLU, nn.Sigmoid, nn.Softplus) or extra != "none":
            layers.append(nn.ReLU())
        layers.append(nn.LPPool2d(draw(st.sampled_from([1.0, 2.0, 3.0])), 2))
    layers.append(nn.Flatten())
    probe = nn.Sequential(*layers).eval()
    with torch.no_grad():
        flat = probe(torch.zeros(1, c_in, hw, hw)).shape[1]
    classes = draw(st.integers(2, 4))
    layers.append(_scale(nn.Linear(flat, classes), 10 ** draw(st.floats(-1, 1))))
    model = nn.Sequential(*layers).double().eval()
    x = torch.rand(4, c_in, hw, hw, dtype=D) * 10 ** draw(st.floats(-1, 2))
    return model, x


@st.composite
def smooth_and_residual_networks(draw):
    seed = draw(st.integers(0, 2**31 - 1))
    torch.manual_seed(seed)
    d = draw(st.integers(2, 5))
    kind = draw(st.sampled_from(["mlp", "add", "cat"]))
    if kind == "mlp":
        acts = draw(st.lists(st.sampled_from([nn.Tanh, nn.Sigmoid, nn.Softplus]), min_size=1,
                             max_size=3))
        layers: list[nn.Module] = []
        prev = d
        for a in acts:
            w = draw(st.integers(2, 6))
            layers += [_scale(nn.Linear(prev, w), 10 ** draw(st.floats(-1, 1.3))), a()]
            prev = w
        layers.append(nn.Linear(prev, draw(st.integers(2, 4))))
        model = nn.Sequential(*layers)
    else:
        block = _ResidualBlock(d, kind)
        _scale(block, 10 ** draw(st.floats(-1, 1)))
        model = nn.Sequential(block, nn.Linear(d if kind == "add" else 2 * d, 3))
    model = model.double().eval()
    x = torch.randn(4, d, dtype=D) * 10 ** draw(st.floats(-1, 1))
    return model, x


def adversarial_in_ball(model: nn.Module, x: torch.Tensor, radius: torch.Tensor,
                        steps: int = 60, restarts: int = 3) -> torch.Tensor:
    """Batched PGD on the sphere of radius ``radius`` (float64): True where some point
    within the ball changes the argmax."""
    with torch.no_grad():
        label = model(x).argmax(1)
    n = x.shape[0]
    found = torch.zeros(n, dtype=torch.bool)
    r_b = radius.reshape(n, *([1] * (x.dim() - 1)))
    finite = torch.isfinite(radius) & (radius > 0)
    if not finite.any():
        return found
    r_b = torch.where(torch.isfinite(r_b), r_b, torch.zeros_like(r_b))
    gen = torch.Generator().manual_seed(0)
    for restart in range(restarts):
        delta = torch.randn(x.shape, generator=gen, dtype=D) if restart else torch.zeros_like(x)
        dn0 = delta.reshape(n, -1).norm(dim=1).clamp_min(1e-300).reshape(r_b.shape)
        delta = delta * (r_b / dn0) * 0.5  # start inside the ball
        for i in range(steps):
            delta.requires_grad_(True)
            logits = model(x + delta)
            fc = logits.gather(1, label[:, None])
            other = logits.masked_fill(F.one_hot(label, logits.shape[1]).bool(), -math.inf)
            loss = (other.max(1).values - fc[:, 0])
            found |= (loss >= 0).detach() & finite
            (g,) = torch.autograd.grad(loss.sum(), delta)
            with torch.no_grad():
                gn = g.reshape(n, -1).norm(dim=1).clamp_min(1e-300).reshape(r_b.shape)
                step = r_b * (0.5 * (1 - i / steps) + 0.02)
                delta = delta + step * g / gn
                dn = delta.reshape(n, -1).norm(dim=1).clamp_min(1e-300).reshape(r_b.shape)
                delta = delta * torch.clamp(r_b / dn, max=1.0)
        with torch.no_grad():
            logits = model(x + delta)
            found |= (logits.argmax(1) != label) & finite
    return found


def _check_no_adversarial_in_ball(model: nn.Module, x: torch.Tensor) -> None:
    cert = bk.certify(model, x)
    r = cert.radius
    assert torch.isfinite(r).all() or bool((r == math.inf).any())
    assert (r >= 0).all() and not torch.isnan(r).any()
    bad = adversarial_in_ball(model, x, r * (1 - 1e-9))
    assert not bad.any(), (
        f"violation: samples {bad.nonzero().flatten().tolist()} radius "
        f"{r[bad].tolist()} trace {[(k, v[bad].tolist()) for k, v in cert.trace.items()]}"
    )


@given(relu_mlps())
def test_sound_radius_never_exceeds_exact_radius_on_relu_mlps(case):
    model, x = case
    cert = bk.certify(model, x)
    exact = bk.exact_radius(model, x)
    assert (cert.radius <= exact * (1 + 1e-6) + 1e-12).all(), (cert.radius, exact)


@given(conv_networks())
def test_no_adversarial_inside_the_sound_ball_on_conv_networks(case):
    _check_no_adversarial_in_ball(*case)


@given(smooth_and_residual_networks())
def test_no_adversarial_inside_the_sound_ball_on_smooth_and_residual_networks(case):
    _check_no_adversarial_in_ball(*case)


def test_certificate_is_zero_on_the_decision_boundary_and_never_nan():
    m = nn.Linear(2, 2, bias=False).double()
    with torch.no_grad():
        m.weight.copy_(torch.eye(2, dtype=D))
    x = torch.tensor([[1.0, 1.0], [2.0, 1.0]], dtype=D)
    r = bk.certify(m.eval(), x).radius
    assert r[0] == 0.0 and r[1] > 0 and not torch.isnan(r).any()


@given(relu_mlps())
def test_sound_local_is_between_sound_and_exact_on_relu_mlps(case):
    model, x = case
    sound = bk.certify(model, x).radius
    local = bk.certify(model, x, method="sound-local").radius
    exact = bk.exact_radius(model, x)
    assert (local >= sound).all()
    assert (local <= exact * (1 + 1e-6) + 1e-12).all(), (local, exact)


@st.composite
def conv_fc_relu_networks(draw):
    seed = draw(st.integers(0, 2**31 - 1))
    torch.manual_seed(seed)
    c = draw(st.integers(1, 3))
    hidden = draw(st.integers(2, 12))
    layers = [
        _scale(nn.Conv2d(1, c, 3, padding=1), 10 ** draw(st.floats(-0.5, 0.5))), nn.ReLU(),
        nn.MaxPool2d(2), nn.Flatten(),
        _scale(nn.Linear(c * 9, hidden), 10 ** draw(st.floats(-0.5, 0.5))), nn.ReLU(),
        _scale(nn.Linear(hidden, draw(st.integers(2, 4))), 10 ** draw(st.floats(-0.5, 0.5))),
    ]
    model = nn.Sequential(*layers).double().eval()
    return model, torch.rand(4, 1, 6, 6, dtype=D)


@given(conv_fc_relu_networks())
def test_no_adversarial_inside_the_sound_local_ball(case):
    model, x = case
    cert = bk.certify(model, x, method="sound-local")
    assert (cert.radius >= bk.certify(model, x).radius).all()
    bad = adversarial_in_ball(model, x, cert.radius * (1 - 1e-9))
    assert not bad.any(), cert.radius[bad]
