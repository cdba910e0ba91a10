"""ONNX ``ReduceSum`` (axes as an attribute before opset 13, as the second input since;
``keepdims``; ``noop_with_empty_axes``) and ``ReduceMean``'s no-op form: imported as the
graph's ``sum``/``mean`` nodes, matching onnxruntime to 1e-5; sums over the batch or over
every axis refused by name."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from onnx import helper  # noqa: E402
from onnx_helpers import classifier, export, rand  # noqa: E402

from boundkit.graph import capture  # noqa: E402
from boundkit.models.onnx import OnnxImportError, compare_with_onnxruntime, load_onnx  # noqa: E402
from boundkit.testing import assert_sound  # noqa: E402

N = helper.make_node


def _check(path: Path, in_shape: tuple[int, ...], op: str | None) -> nn.Module:
    model = load_onnx(path)
    res = compare_with_onnxruntime(model, path, 40, seed=3)
    assert res.max_rel_error <= 1e-5, res
    kinds = {n.op for n in capture(model, in_shape)}
    assert "unknown" not in kinds and (op is None or op in kinds), kinds
    return model


def _body(axes: list[int] | None, keep: int, opset: int, noop: int | None = None,
          op: str = "ReduceSum") -> tuple[list, dict]:
    """Gemm to [N, 12], reshaped to tokens [N, 3, 4], reduced over ``axes``."""
    inits = {"w": rand(12, 5), "b": rand(12), "shape": np.array([-1, 3, 4], np.int64)}
    attrs: dict = {"keepdims": keep}
    if noop is not None:
        attrs["noop_with_empty_axes"] = noop
    ins = ["t"]
    if axes is not None and opset >= (13 if op == "ReduceSum" else 18):
        inits["axes"] = np.array(axes, np.int64)
        ins.append("axes")
    elif axes is not None:
        attrs["axes"] = axes
    body = [N("Gemm", ["x", "w", "b"], ["z"], transB=1), N("Tanh", ["z"], ["h"]),
            N("Reshape", ["h", "shape"], ["t"]), N(op, ins, ["r"], **attrs)]
    return body, inits


@pytest.mark.parametrize("axes,keep,opset,numel", [
    ([1], 0, 13, 4), ([-1], 1, 13, 3), ([1, 2], 1, 13, 1), ([2, -2], 1, 11, 1),
    ([-2], 0, 11, 4), ([1], 1, 18, 4)])
def test_reduce_sum_matches_onnxruntime_and_certifies(tmp_path: Path, axes, keep, opset,
                                                      numel) -> None:
    body, inits = _body(axes, keep, opset)
    p = classifier(tmp_path, body, (5,), "r", numel, inits, opset=opset)
    model = _check(p, (5,), "sum")
    x = torch.rand(3, 5)
    for method in ("sound", "crown"):
        assert_sound(model, x, method, exact=False, attack_steps=30)


@pytest.mark.parametrize("op,opset", [("ReduceSum", 13), ("ReduceMean", 18)])
def test_no_axes_with_noop_is_the_identity(tmp_path: Path, op: str, opset: int) -> None:
    body, inits = _body(None, 1, opset, noop=1, op=op)
    p = classifier(tmp_path, body, (5,), "r", 12, inits, opset=opset)
    kinds = {n.op for n in capture(_check(p, (5,), None), (5,))}
    assert not {"sum", "mean"} & kinds, kinds


@pytest.mark.parametrize("axes,noop,msg", [(None, 0, "over the batch too"),
                                           ([0], 0, "over the batch axis"),
                                           ([0, 2], 0, "over the batch axis"),
                                           ([3], 0, "outside a tensor"),
                                           ([1, -2], 0, "repeated axes")])
def test_sums_over_the_batch_or_bad_axes_are_refused_by_name(tmp_path: Path, axes, noop,
                                                            msg) -> None:
    body, inits = _body(axes, 1, 13, noop=noop)
    p = classifier(tmp_path, body, (5,), "r", None, inits, opset=13)
    with pytest.raises(OnnxImportError, match=msg) as info:
        load_onnx(p, check=False)
    assert "ReduceSum" in str(info.value)


class _TokenSum(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.o = nn.Linear(8, 12), nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.a(x.flatten(1))).reshape(-1, 3, 4)
        return self.o(torch.sum(h, dim=-2) + h.sum(1, keepdim=True).flatten(1))


def test_torch_exported_sum_imports_and_matches_onnxruntime(tmp_path: Path) -> None:
    torch.manual_seed(0)
    path = export(_TokenSum().eval(), (2, 4), tmp_path / "sum.onnx")
    _check(path, (2, 4), "sum")
    assert sum(n.op_type == "ReduceSum" for n in __import__("onnx").load(path).graph.node) == 2
