"""ONNX operators imported since stop 33: Abs, Softsign, Selu, Celu, PRelu (one slope, one
per channel), Max and Min (of two tensors, or of a tensor and a constant), exported by
torch or built by hand: imported natively, matching onnxruntime to 1e-5, captured with known
node kinds only, and certified without a violation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from onnx import helper  # noqa: E402
from onnx_helpers import check_import, classifier, export, rand  # noqa: E402

import boundkit as bk  # noqa: E402
from boundkit.models.onnx import OnnxImportError, load_onnx  # noqa: E402
from boundkit.testing import assert_sound  # noqa: E402

N = helper.make_node


class _Fn(nn.Module):
    def __init__(self, fn) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.fn(h)


class _Two(nn.Module):
    def __init__(self, fn) -> None:
        super().__init__()
        self.a, self.b, self.o, self.fn = nn.Linear(32, 8), nn.Linear(32, 8), nn.Linear(8, 3), fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = x.flatten(1)
        return self.o(self.fn(self.a(f), self.b(f)))


def _mlp(act: nn.Module) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(32, 8), act, nn.Linear(8, 3))


_EXPORTED = {
    "abs": (_mlp(_Fn(torch.abs)), {"abs"}),
    "softsign": (_mlp(nn.Softsign()), {"softsign"}),
    "selu": (_mlp(nn.SELU()), {"elu"}),
    "celu": (_mlp(nn.CELU(0.6)), {"elu"}),
    "prelu_one": (_mlp(nn.PReLU(1, init=0.3)), {"relu"}),
    "prelu_vector": (_mlp(nn.PReLU(8, init=-0.2)), {"relu"}),
    "prelu_channels": (nn.Sequential(nn.Conv2d(2, 4, 3), nn.PReLU(4, init=0.4), nn.Flatten(),
                                     nn.Linear(16, 3)), {"relu", "conv2d"}),
    "clamp_min": (_mlp(_Fn(lambda h: h.clamp(min=-0.5))), {"relu"}),
    "maximum": (_Two(torch.maximum), {"relu"}),
    "minimum": (_Two(torch.minimum), {"relu"}),
}


@pytest.mark.parametrize("name", sorted(_EXPORTED))
def test_torch_exported_op_imports_matches_onnxruntime_and_certifies(tmp_path: Path,
                                                                      name: str) -> None:
    torch.manual_seed(0)
    model, ops = _EXPORTED[name]
    if name == "prelu_channels" or name.startswith("prelu"):
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, nn.PReLU) and m.weight.numel() > 1:
                    m.weight.copy_(torch.linspace(-0.5, 1.5, m.weight.numel()))
    path = export(model.eval(), (2, 4, 4), tmp_path / f"{name}.onnx")
    imported = check_import(path, (2, 4, 4), ops)
    x = torch.rand(4, 2, 4, 4)
    assert_sound(imported, x, "crown", exact=False, attack_steps=30)


def _gemm(inits: dict[str, np.ndarray]) -> list:
    inits.update({"w": rand(6, 4, scale=3.0), "b": rand(6)})
    return [N("Gemm", ["x", "w", "b"], ["z"], transB=1)]


@pytest.mark.parametrize("op,extra,opset,ops", [
    ("Abs", {}, 13, {"abs"}),
    ("Softsign", {}, 13, {"softsign"}),
    ("Selu", {"alpha": 1.2, "gamma": 0.8}, 13, {"elu"}),
    ("Selu", {}, 13, {"elu"}),
    ("Celu", {"alpha": 0.5}, 13, {"elu"}),
])
def test_hand_built_unary_ops_match_onnxruntime(tmp_path: Path, op, extra, opset, ops) -> None:
    inits: dict[str, np.ndarray] = {}
    body = [*_gemm(inits), N(op, ["z"], ["h"], **extra)]
    p = classifier(tmp_path, body, (4,), "h", 6, inits, opset=opset)
    check_import(p, (4,), ops)


@pytest.mark.parametrize("slope", [np.array([0.25], dtype=np.float32),
                                   np.linspace(-1, 2, 6).astype(np.float32)])
def test_hand_built_prelu_matches_onnxruntime(tmp_path: Path, slope: np.ndarray) -> None:
    inits: dict[str, np.ndarray] = {"s": slope}
    body = [*_gemm(inits), N("PRelu", ["z", "s"], ["h"])]
    p = classifier(tmp_path, body, (4,), "h", 6, inits)
    check_import(p, (4,), {"relu"})


@pytest.mark.parametrize("op", ["Max", "Min"])
def test_hand_built_max_min_of_two_tensors_and_of_a_constant_match_onnxruntime(
        tmp_path: Path, op: str) -> None:
    inits: dict[str, np.ndarray] = {"w2": rand(6, 4, scale=3.0), "c": rand(6)}
    body = [*_gemm(inits), N("Gemm", ["x", "w2", "b"], ["z2"], transB=1),
            N(op, ["z", "z2"], ["m"]), N(op, ["c", "m"], ["h"])]
    p = classifier(tmp_path, body, (4,), "h", 6, inits)
    model = check_import(p, (4,), {"relu"})
    assert_sound(model, torch.rand(4, 4), "crown", exact=False, attack_steps=30)


def test_max_of_three_inputs_and_a_prelu_slope_that_grows_the_input_are_refused(
        tmp_path: Path) -> None:
    inits: dict[str, np.ndarray] = {"c": rand(6)}
    body = [*_gemm(inits), N("Max", ["z", "z", "c"], ["h"])]
    p = classifier(tmp_path, body, (4,), "h", 6, inits, name="max3.onnx")
    with pytest.raises(OnnxImportError, match="Max of 3 inputs"):
        load_onnx(p)
    inits = {"s": rand(2, 6)}
    body = [*_gemm(inits), N("PRelu", ["z", "s"], ["h"])]
    p = classifier(tmp_path, body, (4,), "h", 6, inits, name="prelu_bad.onnx")
    with pytest.raises(OnnxImportError, match="PRelu"):
        load_onnx(p)


def test_certify_reads_an_onnx_prelu_file_end_to_end(tmp_path: Path) -> None:
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(2, 4, 3), nn.PReLU(4), nn.Flatten(), nn.Linear(16, 3)).eval()
    path = export(model, (2, 4, 4), tmp_path / "p.onnx")
    x = torch.rand(3, 2, 4, 4)
    a = bk.certify(load_onnx(path), x, "crown").radius
    b = bk.certify(model, x, "crown").radius
    torch.testing.assert_close(a, b, rtol=2e-3, atol=0)


@pytest.mark.parametrize("conv", [nn.Conv1d(2, 3, 3, padding=1, stride=2),
                                  nn.Conv1d(2, 4, 3, groups=2, dilation=2, bias=False)])
def test_a_1d_convolution_imports_as_conv1d_and_certifies_as_the_torch_model(
        tmp_path: Path, conv: nn.Module) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(conv, nn.ReLU(), nn.Flatten()).eval()
    feat = model(torch.zeros(1, 2, 8)).shape[1]
    model = nn.Sequential(*model, nn.Linear(feat, 3)).eval()
    path = export(model, (2, 8), tmp_path / "c1d.onnx")
    imported = check_import(path, (2, 8), {"conv2d", "reshape"})
    x = torch.rand(3, 2, 8)
    torch.testing.assert_close(bk.certify(imported, x, "crown").radius,
                               bk.certify(model, x, "crown").radius, rtol=1e-6, atol=0)


def test_a_1d_convolution_with_uneven_pads_is_refused_by_name(tmp_path: Path) -> None:
    inits = {"w": rand(3, 2, 3), "b": rand(3)}
    body = [N("Conv", ["x", "w", "b"], ["h"], pads=[1, 0])]
    p = classifier(tmp_path, body, (2, 8), "h", 3 * 7, inits, name="c1d_pads.onnx")
    with pytest.raises(OnnxImportError, match="symmetric 1-D padding"):
        load_onnx(p)


def test_a_prelu_slope_too_large_for_the_exact_composition_is_refused(tmp_path: Path) -> None:
    inits: dict[str, np.ndarray] = {"s": np.array([1e17, 0.5, 0.1, 0.2, 0.3, 0.4],
                                                  dtype=np.float32)}
    body = [*_gemm(inits), N("PRelu", ["z", "s"], ["h"])]
    p = classifier(tmp_path, body, (4,), "h", 6, inits, name="prelu_huge.onnx")
    with pytest.raises(OnnxImportError, match="slope of magnitude"):
        load_onnx(p)
