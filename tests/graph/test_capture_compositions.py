"""torch layers captured as exact compositions of boundkit's own nodes (stop 33; every one
was refused by every method before): Conv1d, MaxPool1d, AvgPool1d, string padding, ZeroPad2d
/ ConstantPad2d(0), AdaptiveMaxPool2d, Tanhshrink, Softmin, GLU, GroupNorm, InstanceNorm.
The graph evaluates as the model, the certificates hold against attacks and sampled points,
and what cannot be written exactly is refused in one line naming the layer."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import boundkit as bk
from boundkit.errors import UnsupportedLayerError
from boundkit.graph import capture
from boundkit.testing import assert_crown_intervals_contain_samples, assert_sound


class _Pad(nn.Module):
    def __init__(self, pad: tuple[int, ...], mode: str = "constant") -> None:
        super().__init__()
        self.pad, self.mode = pad, mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.pad(x, self.pad, mode=self.mode)


def _seq(*layers: nn.Module) -> nn.Module:
    return nn.Sequential(*layers).eval()


_CASES = {
    "conv1d": (lambda: _seq(nn.Conv1d(2, 3, 3, padding=1, stride=2), nn.ReLU(), nn.Flatten(),
                            nn.Linear(12, 3)), (2, 8), ["reshape", "conv2d", "reshape"]),
    "conv1d_groups_dilation": (lambda: _seq(nn.Conv1d(2, 4, 3, dilation=2, groups=2),
                                            nn.Tanh(), nn.Flatten(), nn.Linear(16, 3)),
                               (2, 8), ["reshape", "conv2d", "reshape"]),
    "conv1d_same": (lambda: _seq(nn.Conv1d(2, 3, 5, padding="same", dilation=2), nn.ReLU(),
                                 nn.Flatten(), nn.Linear(24, 3)), (2, 8),
                    ["reshape", "conv2d", "reshape"]),
    "conv1d_valid_no_bias": (lambda: _seq(nn.Conv1d(2, 3, 3, padding="valid", bias=False),
                                          nn.ReLU(), nn.Flatten(), nn.Linear(18, 3)), (2, 8),
                             ["reshape", "conv2d", "reshape"]),
    "maxpool1d": (lambda: _seq(nn.Conv1d(2, 3, 3), nn.ReLU(), nn.MaxPool1d(2), nn.Flatten(),
                               nn.Linear(9, 3)), (2, 8), ["reshape", "maxpool2d", "reshape"]),
    "maxpool1d_pad_ceil": (lambda: _seq(nn.Conv1d(2, 3, 3), nn.MaxPool1d(3, 2, 1, ceil_mode=True),
                                        nn.Flatten(), nn.Linear(12, 3)), (2, 8),
                           ["reshape", "maxpool2d", "reshape"]),
    "avgpool1d": (lambda: _seq(nn.Conv1d(2, 3, 3), nn.ReLU(),
                               nn.AvgPool1d(3, stride=2, padding=1, count_include_pad=False),
                               nn.Flatten(), nn.Linear(9, 3)), (2, 8),
                  ["reshape", "avgpool2d", "reshape"]),
    "batchnorm1d_on_sequences": (lambda: _seq(nn.Conv1d(2, 3, 3), nn.BatchNorm1d(3), nn.ReLU(),
                                              nn.Flatten(), nn.Linear(18, 3)), (2, 8),
                                 ["batchnorm"]),
    "zero_pad": (lambda: _seq(nn.ZeroPad2d((1, 0, 2, 1)), nn.Conv2d(1, 3, 3), nn.ReLU(),
                              nn.Flatten(), nn.Linear(3 * 7 * 5, 3)), (1, 6, 6), ["conv2d"]),
    "constant_pad_zero": (lambda: _seq(nn.ConstantPad2d(1, 0.0), nn.Conv2d(1, 2, 3),
                                       nn.Flatten(), nn.Linear(2 * 6 * 6, 3)), (1, 6, 6),
                          ["conv2d"]),
    "functional_pad": (lambda: _seq(_Pad((1, 2, 1, 1)), nn.Conv2d(1, 2, 3), nn.Flatten(),
                                    nn.Linear(2 * 6 * 7, 3)), (1, 6, 6), ["conv2d", "conv2d"]),
    "functional_pad_width": (lambda: _seq(_Pad((2, 1)), nn.Conv2d(1, 2, 3), nn.ReLU(),
                                          nn.Flatten(), nn.Linear(2 * 4 * 7, 3)), (1, 6, 6),
                             ["conv2d", "conv2d"]),
    "conv2d_same": (lambda: _seq(nn.Conv2d(1, 3, 3, padding="same"), nn.ReLU(), nn.Flatten(),
                                 nn.Linear(3 * 36, 3)), (1, 6, 6), ["conv2d"]),
    "adaptive_max": (lambda: _seq(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.AdaptiveMaxPool2d(2),
                                  nn.Flatten(), nn.Linear(12, 3)), (1, 6, 6), ["maxpool2d"]),
    "global_max": (lambda: _seq(nn.Conv2d(1, 3, 3), nn.AdaptiveMaxPool2d((1, 1)), nn.Flatten(),
                                nn.Linear(3, 3)), (1, 6, 6), ["maxpool2d"]),
    "tanhshrink": (lambda: _seq(nn.Linear(16, 8), nn.Tanhshrink(), nn.Linear(8, 3)), (16,),
                   ["tanh", "add"]),
    "softmin_output": (lambda: _seq(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3),
                                    nn.Softmin(dim=1)), (16,), ["scale", "softmax"]),
    "glu": (lambda: _seq(nn.Linear(16, 8), nn.GLU(), nn.Linear(4, 3)), (16,),
            ["select", "select", "sigmoid", "mul"]),
    "group_norm": (lambda: _seq(nn.Conv2d(1, 4, 3), nn.GroupNorm(2, 4), nn.ReLU(),
                                nn.Flatten(), nn.Linear(64, 3)), (1, 6, 6),
                   ["reshape", "center", "layernorm", "reshape", "scale", "identity"]),
    "instance_norm": (lambda: _seq(nn.Conv2d(1, 3, 3), nn.InstanceNorm2d(3), nn.ReLU(),
                                   nn.Flatten(), nn.Linear(48, 3)), (1, 6, 6),
                      ["reshape", "center", "layernorm", "reshape"]),
    "instance_norm_1d_affine": (lambda: _seq(nn.Conv1d(2, 3, 3), nn.InstanceNorm1d(3, affine=True),
                                             nn.Tanh(), nn.Flatten(), nn.Linear(18, 3)), (2, 8),
                                ["center", "layernorm", "reshape", "scale", "identity"]),
    "glu_channels": (lambda: _seq(nn.Conv2d(1, 4, 3), nn.GLU(dim=1), nn.Flatten(),
                                  nn.Linear(2 * 16, 3)), (1, 6, 6),
                     ["select", "select", "sigmoid", "mul"]),
}


def _model(name: str) -> tuple[nn.Module, tuple[int, ...], list[str]]:
    torch.manual_seed(0)
    make, shape, ops = _CASES[name]
    model = make()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm1d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
            if isinstance(m, (nn.GroupNorm, nn.InstanceNorm1d)) and m.affine:
                m.weight.uniform_(-2.0, 2.0)
                m.bias.uniform_(-0.5, 0.5)
    return model, shape, ops


@pytest.mark.parametrize("name", sorted(_CASES))
def test_the_composition_is_captured_and_evaluates_as_the_model(name: str) -> None:
    model, shape, ops = _model(name)
    g = capture(model, shape)
    kinds = [n.op for n in g.nodes]
    assert "unknown" not in kinds
    text = " ".join(kinds)
    assert " ".join(ops) in text, kinds
    x = torch.randn(16, *shape, dtype=torch.float64)
    with torch.no_grad():
        got = g.activations(x)[g.logits.name]
        want = model.double()(x)
    if name == "softmin_output":  # the logits are the input of the output squash
        want = torch.log(want)
        got, want = got - got.mean(1, keepdim=True), want - want.mean(1, keepdim=True)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", sorted(_CASES))
def test_no_certificate_through_a_composition_exceeds_an_attack(name: str) -> None:
    model, shape, _ = _model(name)
    x = torch.rand(4, *shape)
    for method in ("sound", "crown"):
        res = assert_sound(model, x, method, exact=False, attack_steps=40)
        assert bool((res["certificate"].radius >= 0).all())
    eps = bk.certify(model, x, "crown").radius.clamp(max=1.0) * 2 + 0.05
    assert_crown_intervals_contain_samples(model, x, eps, samples=100)


@pytest.mark.parametrize("model,shape,match", [
    (_seq(nn.Conv1d(2, 3, 4, padding="same"), nn.Flatten(), nn.Linear(24, 3)), (2, 8),
     "padding='same'"),
    (_seq(nn.Conv2d(1, 2, 2, padding="same"), nn.Flatten(), nn.Linear(72, 3)), (1, 6, 6),
     "padding='same'"),
    (_seq(nn.Conv1d(2, 3, 3, padding_mode="circular", padding=1), nn.Flatten(),
          nn.Linear(24, 3)), (2, 8), "padding_mode"),
    (_seq(nn.ConstantPad2d(1, 0.5), nn.Flatten(), nn.Linear(64, 3)), (1, 6, 6), "value=0.5"),
    (_seq(_Pad((1, 1, 1, 1), "reflect"), nn.Flatten(), nn.Linear(64, 3)), (1, 6, 6),
     "mode='reflect'"),
    (_seq(_Pad((-1, 0, 0, 0)), nn.Flatten(), nn.Linear(30, 3)), (1, 6, 6), "padding"),
    (_seq(nn.Conv2d(1, 3, 2), nn.AdaptiveMaxPool2d(2), nn.Flatten(), nn.Linear(12, 3)),
     (1, 6, 6), "divides"),
    (_seq(nn.Linear(16, 6), nn.Softmin(), nn.Linear(6, 3)), (16,), "dim=None"),
    (_seq(nn.Conv2d(1, 3, 3), nn.InstanceNorm2d(3, track_running_stats=True), nn.Flatten(),
          nn.Linear(48, 3)), (1, 6, 6), "track_running_stats"),
])
def test_what_cannot_be_written_exactly_is_refused_in_one_line(model, shape, match) -> None:
    with pytest.raises(UnsupportedLayerError, match=match) as err:
        bk.certify(model, torch.rand(2, *shape), "crown")
    assert "\n" not in str(err.value)


class _FunctionalSequence(nn.Module):
    """F.conv1d, F.group_norm, F.max_pool1d, F.avg_pool1d, F.tanhshrink in ``forward``."""

    def __init__(self) -> None:
        super().__init__()
        self.w, self.b = nn.Parameter(torch.randn(4, 2, 3)), nn.Parameter(torch.randn(4))
        self.gw, self.o = nn.Parameter(torch.rand(4) + 0.5), nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        F = torch.nn.functional
        h = F.group_norm(F.conv1d(x, self.w, self.b, padding=1), 2, self.gw, None)
        h = F.avg_pool1d(F.max_pool1d(F.relu(h), 2), 2, ceil_mode=True)
        return self.o(F.tanhshrink(h.flatten(1)))


class _FunctionalImage(nn.Module):
    """F.adaptive_max_pool2d (global max pooling), F.glu, F.softmin in ``forward``."""

    def __init__(self) -> None:
        super().__init__()
        self.c, self.o = nn.Conv2d(1, 4, 3), nn.Linear(2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        F = torch.nn.functional
        h = F.adaptive_max_pool2d(self.c(x), 1).flatten(1)
        return F.softmin(self.o(F.glu(h, dim=1)), dim=1)


@pytest.mark.parametrize("cls,shape", [(_FunctionalSequence, (2, 8)),
                                       (_FunctionalImage, (1, 6, 6))])
def test_functional_forms_are_captured_as_their_modules_are(cls, shape) -> None:
    torch.manual_seed(0)
    model = cls().eval()
    g = capture(model, shape)
    assert "unknown" not in [n.op for n in g.nodes]
    x = torch.randn(8, *shape, dtype=torch.float64)
    with torch.no_grad():
        got, want = g.activations(x)[g.logits.name], model.double()(x)
    if cls is _FunctionalImage:  # the logits are softmin's input, negated: compare log-softmin
        want = torch.log(want)
    torch.testing.assert_close(got - got.mean(1, keepdim=True),
                               want - want.mean(1, keepdim=True), rtol=1e-12, atol=1e-12)
    model.float()
    assert_sound(model, torch.rand(4, *shape), "crown", exact=False, attack_steps=30)
