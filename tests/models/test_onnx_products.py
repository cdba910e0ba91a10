"""ONNX ``Mul`` and ``MatMul`` of two input-dependent tensors (issue 24, products): torch
exports of gated and attention-like models import natively as ``torch.mul`` /
``torch.matmul`` (nodes ``mul`` / ``matmul``), match onnxruntime to 1e-5, and operands that
would mix samples are refused by name."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from onnx import helper  # noqa: E402
from onnx_helpers import classifier, export, rand  # noqa: E402

from boundkit.graph import capture  # noqa: E402
from boundkit.models.onnx import OnnxImportError, compare_with_onnxruntime, load_onnx  # noqa: E402

N = helper.make_node


class _Gated(nn.Module):
    def __init__(self, act) -> None:
        super().__init__()
        self.v, self.g, self.o = nn.Linear(32, 8), nn.Linear(32, 8), nn.Linear(8, 3)
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        return self.o(self.v(x) * self.act(self.g(x)))


class _Scores(nn.Module):
    """q @ k with per-sample [T, d] @ [d, T], sigmoid weights @ v, one head."""

    def __init__(self) -> None:
        super().__init__()
        self.q, self.k, self.v = nn.Linear(32, 6), nn.Linear(32, 6), nn.Linear(32, 6)
        self.o = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        q = self.q(x).reshape(-1, 3, 2)
        k = self.k(x).reshape(-1, 2, 3)
        v = self.v(x).reshape(-1, 3, 2)
        return self.o((torch.sigmoid(q @ k) @ v).flatten(1))


class _Square(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.o = nn.Linear(32, 8), nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x.flatten(1))
        return self.o(h * h)


_MODELS = {
    "gated_silu": (lambda: _Gated(F.silu), {"mul", "silu"}),
    "gated_sigmoid": (lambda: _Gated(torch.sigmoid), {"mul", "sigmoid"}),
    "gated_tanh": (lambda: _Gated(torch.tanh), {"mul", "tanh"}),
    "scores": (_Scores, {"matmul"}),
    "square": (_Square, {"mul"}),
}


@pytest.mark.parametrize("name", sorted(_MODELS))
def test_exported_product_imports_matches_onnxruntime_and_captures(tmp_path: Path,
                                                                   name: str) -> None:
    torch.manual_seed(0)
    build, ops = _MODELS[name]
    path = export(build().eval(), (2, 4, 4), tmp_path / f"{name}.onnx")
    model = load_onnx(path)
    res = compare_with_onnxruntime(model, path, 40, seed=7)
    assert res.max_rel_error <= 1e-5, res
    g = capture(model, (2, 4, 4))
    kinds = {n.op for n in g}
    assert "unknown" not in kinds and ops <= kinds, kinds


def test_product_of_operands_of_different_rank_is_refused(tmp_path: Path) -> None:
    body = [N("Gemm", ["x", "w", "b"], ["z"], transB=1),
            N("Unsqueeze", ["z", "ax"], ["u"]),
            N("Mul", ["z", "u"], ["p"])]
    p = classifier(tmp_path, body, (4,), "p", 36,
                   {"w": rand(6, 4), "b": rand(6), "ax": np.array([1], dtype=np.int64)})
    with pytest.raises(OnnxImportError, match="different ranks"):
        load_onnx(p)
