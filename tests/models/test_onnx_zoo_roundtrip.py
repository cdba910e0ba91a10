"""Issue 24's zoo entries ``gated_mlp_mnist`` (SiLU gating: a product of two activations)
and ``resnet_cifar`` (BasicBlocks, batch norm, 1x1 downsampling, ``AdaptiveAvgPool2d``),
with random weights and batch-norm statistics, exported by torch, imported natively:
agreement with onnxruntime and with the torch model to 1e-5, and capture with known node
kinds only. (The trained weights' round trips: ``analyses/issue24_zoo.py --onnx``.)"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from onnx_helpers import export  # noqa: E402

from boundkit.graph import capture  # noqa: E402
from boundkit.models.onnx import compare_with_onnxruntime, load_onnx  # noqa: E402
from boundkit.models.zoo import ZOO, build_model  # noqa: E402


def _randomised(name: str) -> torch.nn.Module:
    model = build_model(name, seed=0)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # batch norm statistics away from (0, 1), so their folding shows
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.3)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
    return model.eval()


@pytest.mark.parametrize("name,kinds", [("gated_mlp_mnist", {"mul", "silu", "linear"}),
                                        ("resnet_cifar", {"conv2d", "batchnorm", "add"})])
def test_zoo_entry_round_trips_through_onnx_to_onnxruntime(tmp_path: Path, name: str,
                                                           kinds: set[str]) -> None:
    model = _randomised(name)
    shape = ZOO[name].input_shape
    path = export(model, shape, tmp_path / f"{name}.onnx")
    imported = load_onnx(path)
    res = compare_with_onnxruntime(imported, path, 16, seed=2)
    assert res.max_rel_error <= 1e-5, res
    x = torch.rand(5, *shape)
    with torch.no_grad():
        want, got = model(x).double(), imported(x).double()
    assert float((want - got).abs().max()) <= 1e-5 * float(want.abs().max())
    ops = {n.op for n in capture(imported, shape)}
    assert "unknown" not in ops and kinds <= ops, ops
