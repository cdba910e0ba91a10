"""ONNX operators of issue 24 (GELU from its Erf pattern or the Gelu op, SiLU as
Sigmoid-times-input, Elu, Hardswish as HardSigmoid-times-input (stop 32), Clip, ReduceMean,
GlobalAveragePool after a ResNet-style body, ConvTranspose, Resize, LayerNormalization):
exported by torch or built by hand, imported
natively, matching onnxruntime to 1e-5 and captured with known node kinds only."""

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

from boundkit.errors import BoundkitError  # noqa: E402
from boundkit.models.onnx import OnnxImportError, load_onnx  # noqa: E402

N = helper.make_node


class _Mean(nn.Module):
    def __init__(self, keep: bool) -> None:
        super().__init__()
        self.c, self.keep, self.fc = nn.Conv2d(2, 4, 3), keep, nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.c(x)).mean(dim=(2, 3), keepdim=self.keep).flatten(1))


_EXPORTED = {
    "gelu": (nn.Sequential(nn.Flatten(), nn.Linear(32, 8), nn.GELU(), nn.Linear(8, 3)), {"gelu"}),
    "silu": (nn.Sequential(nn.Flatten(), nn.Linear(32, 8), nn.SiLU(), nn.Linear(8, 3)), {"silu"}),
    "elu": (nn.Sequential(nn.Flatten(), nn.Linear(32, 8), nn.ELU(0.7), nn.Linear(8, 3)), {"elu"}),
    "hardtanh": (nn.Sequential(nn.Flatten(), nn.Linear(32, 8), nn.Hardtanh(-0.5, 2.0),
                               nn.Linear(8, 3)), {"hardtanh"}),
    "relu6": (nn.Sequential(nn.Flatten(), nn.Linear(32, 8), nn.ReLU6(), nn.Linear(8, 3)),
              {"hardtanh"}),
    "hardswish": (nn.Sequential(nn.Flatten(), nn.Linear(32, 8), nn.Hardswish(),
                                nn.Linear(8, 3)), {"hardswish"}),
    "hardsigmoid": (nn.Sequential(nn.Flatten(), nn.Linear(32, 8), nn.Hardsigmoid(),
                                  nn.Linear(8, 3)), {"hardsigmoid"}),
    "global_pool": (nn.Sequential(nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4), nn.ReLU(),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)),
                    {"avgpool2d"}),
    "mean": (_Mean(False), {"mean"}),
    "mean_keep": (_Mean(True), {"mean"}),
    "convtranspose": (nn.Sequential(nn.ConvTranspose2d(2, 3, 3, stride=2, padding=1,
                                                       output_padding=1), nn.ReLU(),
                                    nn.Flatten(), nn.Linear(3 * 8 * 8, 3)),
                      {"conv_transpose2d"}),
    "upsample_nearest": (nn.Sequential(nn.Upsample(scale_factor=2), nn.Conv2d(2, 2, 3),
                                       nn.Flatten(), nn.Linear(2 * 6 * 6, 3)), {"resize"}),
    "upsample_bilinear": (nn.Sequential(nn.Upsample(size=(6, 5), mode="bilinear"),
                                        nn.Flatten(), nn.Linear(2 * 30, 3)), {"resize"}),
}


@pytest.mark.parametrize("name", sorted(_EXPORTED))
def test_torch_exported_op_imports_matches_onnxruntime_and_captures(tmp_path: Path,
                                                                    name: str) -> None:
    torch.manual_seed(0)
    model, ops = _EXPORTED[name]
    path = export(model.eval(), (2, 4, 4), tmp_path / f"{name}.onnx")
    check_import(path, (2, 4, 4), ops)


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_op_of_opset_20_matches_onnxruntime(tmp_path: Path, approximate: str) -> None:
    body = [N("Gemm", ["x", "w", "b"], ["z"], transB=1),
            N("Gelu", ["z"], ["h"], approximate=approximate)]
    p = classifier(tmp_path, body, (4,), "h", 6, {"w": rand(6, 4, scale=3.0), "b": rand(6)},
                   opset=20)
    check_import(p, (4,), {"gelu"})


def test_hardswish_op_of_opset_14_matches_onnxruntime(tmp_path: Path) -> None:
    body = [N("Gemm", ["x", "w", "b"], ["z"], transB=1), N("HardSwish", ["z"], ["h"])]
    p = classifier(tmp_path, body, (4,), "h", 6, {"w": rand(6, 4, scale=3.0), "b": rand(6)},
                   opset=14)
    check_import(p, (4,), {"hardswish"})


def test_hardsigmoid_with_other_parameters_is_refused_by_name(tmp_path: Path) -> None:
    body = [N("Gemm", ["x", "w", "b"], ["z"], transB=1),
            N("HardSigmoid", ["z"], ["h"], alpha=0.2, beta=0.5)]
    p = classifier(tmp_path, body, (4,), "h", 6, {"w": rand(6, 4), "b": rand(6)})
    with pytest.raises(OnnxImportError, match="HardSigmoid alpha=0.2"):
        load_onnx(p)


def test_layer_normalization_op_matches_onnxruntime(tmp_path: Path) -> None:
    body = [N("Gemm", ["x", "w", "b"], ["z"], transB=1),
            N("LayerNormalization", ["z", "s", "t"], ["h"], axis=-1, epsilon=1e-3)]
    p = classifier(tmp_path, body, (4,), "h", 6,
                   {"w": rand(6, 4, scale=3.0), "b": rand(6), "s": rand(6), "t": rand(6)},
                   opset=17)
    check_import(p, (4,), {"layernorm"})


def test_lone_erf_is_refused_by_name_and_a_one_sided_clip_imports(tmp_path: Path) -> None:
    body = [N("Gemm", ["x", "w", "b"], ["z"], transB=1), N("Erf", ["z"], ["h"])]
    p = classifier(tmp_path, body, (4,), "h", 6, {"w": rand(6, 4), "b": rand(6)})
    with pytest.raises(OnnxImportError, match="GELU's pattern"):
        load_onnx(p)
    # one bound: max(z, -1) = -1 + relu(z + 1) (stop 33; refused before)
    body = [N("Gemm", ["x", "w", "b"], ["z"], transB=1), N("Clip", ["z", "lo"], ["h"])]
    p = classifier(tmp_path, body, (4,), "h", 6,
                   {"w": rand(6, 4, scale=3.0), "b": rand(6),
                    "lo": np.array(-1.0, dtype=np.float32)}, name="clip.onnx")
    check_import(p, (4,), {"relu"})
    body = [N("Gemm", ["x", "w", "b"], ["z"], transB=1), N("Clip", ["z", "", "hi"], ["h"])]
    p = classifier(tmp_path, body, (4,), "h", 6,
                   {"w": rand(6, 4, scale=3.0), "b": rand(6),
                    "hi": np.array(0.5, dtype=np.float32)}, name="clip_hi.onnx")
    check_import(p, (4,), {"relu"})
    body = [N("Gemm", ["x", "w", "b"], ["z"], transB=1),
            N("Clip", ["z", "lo"], ["h"])]
    p = classifier(tmp_path, body, (4,), "h", 6,
                   {"w": rand(6, 4), "b": rand(6), "lo": np.array(np.inf, dtype=np.float32)},
                   name="clip_inf.onnx")
    with pytest.raises(BoundkitError, match="infinity|Clip"):
        load_onnx(p)
