"""ONNX ``TopK`` as torch exports ``GroupSort`` / ``MaxMin`` (a descending sort of each group:
``k`` the whole axis, largest first, sorted, values only): imported as the graph's
``groupsort`` node, matching onnxruntime and torch, certified like the torch model; a partial
or ascending TopK, or one whose indices are used, is refused in one line naming the node."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from onnx import helper  # noqa: E402
from onnx_helpers import classifier, export, ort_logits, rand  # noqa: E402

import boundkit as bk  # noqa: E402
from boundkit.graph import capture  # noqa: E402
from boundkit.models.layers import GroupSort, MaxMin  # noqa: E402
from boundkit.models.onnx import OnnxImportError, compare_with_onnxruntime, load_onnx  # noqa: E402
from boundkit.testing import assert_sound  # noqa: E402


def _net(act: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(6, 8), act, nn.Linear(8, 8), act,
                         nn.Linear(8, 3)).eval()


@pytest.mark.parametrize("act", [MaxMin(), GroupSort(2), GroupSort(4),
                                 GroupSort(4, layout="strided"), GroupSort(8)],
                         ids=["maxmin", "gs2", "gs4", "gs4-strided", "gs8"])
def test_groupsort_exports_import_exactly_and_certify_like_torch(act: nn.Module,
                                                                 tmp_path: Path) -> None:
    model = _net(act)
    path = export(model, (6,), tmp_path / "m.onnx")
    imported = load_onnx(path)
    assert "groupsort" in {n.op for n in capture(imported, (6,))}
    assert compare_with_onnxruntime(imported, path, 40, seed=2).max_rel_error <= 1e-5
    x = torch.rand(5, 6, dtype=torch.float64)
    with torch.no_grad():
        assert torch.allclose(imported.double()(x), model.double()(x), atol=1e-12)
    a = bk.certify(imported, x, "crown").radius
    b = bk.certify(model, x, "crown").radius
    # the same function; the radius search (to 1e-3 relative) starts from each graph's own
    # sound radius, so the radii agree to its tolerance
    assert torch.allclose(a, b, rtol=2e-3)
    assert_sound(imported, x, method="crown")


def _topk_file(tmp: Path, k: int, **attrs: int) -> Path:
    body = [helper.make_node("Gemm", ["x", "w", "b"], ["h"], transB=1),
            helper.make_node("Reshape", ["h", "shape"], ["g"]),
            helper.make_node("TopK", ["g", "k"], ["v", "i"], axis=2, **attrs),
            helper.make_node("Flatten", ["v"], ["f"], axis=1)]
    inits = {"w": rand(8, 4), "b": rand(8), "shape": np.array([-1, 4, 2], np.int64),
             "k": np.array([k], np.int64)}
    return classifier(tmp, body, (4,), "f", 2 * k * 2 if k < 2 else 8, inits)


def test_a_whole_descending_topk_matches_onnxruntime(tmp_path: Path) -> None:
    path = _topk_file(tmp_path, 2)
    model = load_onnx(path)
    x = np.random.default_rng(0).standard_normal((7, 4)).astype(np.float32)
    with torch.no_grad():
        ours = model(torch.from_numpy(x)).numpy()
    assert np.allclose(ours, ort_logits(path, x), atol=1e-5)


@pytest.mark.parametrize(("k", "attrs", "why"), [
    (1, {}, "keeps part of an axis"),
    (2, {"largest": 0}, "largest=1"),
    (2, {"sorted": 0}, "largest=1"),
])
def test_other_topks_are_refused_in_one_line(tmp_path: Path, k: int, attrs: dict,
                                             why: str) -> None:
    path = _topk_file(tmp_path, k, **attrs)
    with pytest.raises(OnnxImportError) as err:
        load_onnx(path, check=False)
    msg = str(err.value)
    assert "\n" not in msg and "TopK" in msg and why in msg, msg


def test_topk_indices_used_are_refused(tmp_path: Path) -> None:
    body = [helper.make_node("Gemm", ["x", "w", "b"], ["h"], transB=1),
            helper.make_node("Reshape", ["h", "shape"], ["g"]),
            helper.make_node("TopK", ["g", "k"], ["v", "i"], axis=2),
            helper.make_node("Cast", ["i"], ["ic"], to=1),
            helper.make_node("Add", ["v", "ic"], ["s"]),
            helper.make_node("Flatten", ["s"], ["f"], axis=1)]
    inits = {"w": rand(8, 4), "b": rand(8), "shape": np.array([-1, 4, 2], np.int64),
             "k": np.array([2], np.int64)}
    path = classifier(tmp_path, body, (4,), "f", 8, inits)
    with pytest.raises(OnnxImportError) as err:
        load_onnx(path, check=False)
    assert "\n" not in str(err.value)
