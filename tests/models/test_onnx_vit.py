"""Vision transformers through the ONNX importer (issue 24): torch-exported :class:`TinyViT`
variants (class token or mean pooling, one or two heads, one patch, LayerNorm decomposed or
as the opset-17 op) import natively, match onnxruntime and the torch model to 1e-5 and
capture with known node kinds; the batch-size arithmetic around them is folded or refused
by name."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper  # noqa: E402
from onnx_helpers import classifier, export, rand  # noqa: E402

from boundkit.graph import capture  # noqa: E402
from boundkit.graph.fidelity import check_fidelity  # noqa: E402
from boundkit.models.onnx import OnnxImportError, compare_with_onnxruntime, load_onnx  # noqa: E402
from boundkit.models.vit import TinyViT  # noqa: E402

N = helper.make_node
SHAPE = (1, 8, 8)


def _vit(**kw: object) -> TinyViT:
    torch.manual_seed(0)
    args = dict(image=SHAPE, patch=4, dim=8, heads=2, mlp=16, num_classes=3)
    args.update(kw)
    m = TinyViT(**args).eval()  # type: ignore[arg-type]
    with torch.no_grad():  # a non-zero class token, so that its folding is visible
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return m


def _export17(model: torch.nn.Module, path: Path) -> Path:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.zeros(1, *SHAPE),), buf, dynamo=False,
                          input_names=["x"], output_names=["logits"],
                          dynamic_axes={"x": {0: "N"}, "logits": {0: "N"}}, opset_version=17,
                          do_constant_folding=False)
    path.write_bytes(buf.getvalue())
    return path


def _check(model: torch.nn.Module, path: Path) -> set[str]:
    imported = load_onnx(path)
    res = compare_with_onnxruntime(imported, path, 30, seed=3)
    assert res.max_rel_error <= 1e-5, res
    x = torch.rand(7, *SHAPE)
    with torch.no_grad():
        ref, got = model(x), imported(x)
    assert (got - ref).abs().max() <= 1e-5 * max(1.0, float(ref.abs().max()))
    g = capture(imported, x)
    out = g.activations(x.double())[g.output]
    check_fidelity(imported, g, x, out)
    kinds = {n.op for n in g}
    assert "unknown" not in kinds
    return kinds


@pytest.mark.parametrize("cls", [True, False])
@pytest.mark.parametrize("heads", [1, 2])
def test_exported_vit_imports_matches_onnxruntime_and_the_model(tmp_path: Path, cls: bool,
                                                                heads: int) -> None:
    model = _vit(cls=cls, heads=heads)
    kinds = _check(model, export(model, SHAPE, tmp_path / "vit.onnx"))
    assert {"softmax", "matmul", "layernorm", "gelu"} <= kinds


def test_vit_with_layer_normalization_op_of_opset_17(tmp_path: Path) -> None:
    model = _vit()
    assert "layernorm" in _check(model, _export17(model, tmp_path / "vit17.onnx"))


def test_vit_of_one_patch_and_one_token(tmp_path: Path) -> None:
    """Patch = image: one patch token (plus the class token, or alone)."""
    for cls in (True, False):
        model = _vit(patch=8, cls=cls, heads=1)
        _check(model, export(model, SHAPE, tmp_path / f"one{cls}.onnx"))


def _vit_graph(tmp: Path, body: list, inits: dict, opset: int = 11) -> Path:
    """Tokens ``t`` [N, 4, 3] from x [N, 12] by a Reshape keeping the batch, then ``body``
    producing ``h`` [N, k]; a Gemm head."""
    shape_nodes = [N("Reshape", ["x", "tshape"], ["t"])]
    inits = {"tshape": np.array([-1, 4, 3], dtype=np.int64), **inits}
    return classifier(tmp, shape_nodes + body, (12,), "h", None if body[-1].output[0] ==
                      "logits" else inits.pop("_numel"), inits, opset=opset)


def test_in_network_softmax_of_opset_11_normalises_the_flattened_trailing_axes(
        tmp_path: Path) -> None:
    """Before opset 13, Softmax(axis=1) on [N, 4, 3] runs over the 12 entries together."""
    body = [N("Softmax", ["t"], ["s"], axis=1), N("Flatten", ["s"], ["h"], axis=1)]
    p = _vit_graph(tmp_path, body, {"_numel": 12}, opset=11)
    m = load_onnx(p)
    assert compare_with_onnxruntime(m, p, 20, seed=1).max_rel_error <= 1e-5


def test_products_of_two_activations_import_as_mul_and_matmul(tmp_path: Path) -> None:
    body = [N("Transpose", ["t"], ["tt"], perm=[0, 2, 1]),
            N("MatMul", ["t", "tt"], ["g"]),  # [N, 4, 4]
            N("Mul", ["g", "g"], ["gg"]),
            N("Flatten", ["gg"], ["h"], axis=1)]
    p = _vit_graph(tmp_path, body, {"_numel": 16})
    m = load_onnx(p)
    assert compare_with_onnxruntime(m, p, 20, seed=1).max_rel_error <= 1e-5
    assert {"mul", "matmul"} <= {n.op for n in capture(m, (12,))}


def test_batch_broadcast_constant_concatenates_as_a_class_token(tmp_path: Path) -> None:
    """ConstantOfShape([N, 1, 3]) + token, concatenated before the tokens (hand-built, as
    the VNN-COMP ViT writes it)."""
    body = [N("Shape", ["x"], ["sh"]),
            N("Gather", ["sh", "zero"], ["n"], axis=0),
            N("Unsqueeze", ["n"], ["n1"], axes=[0]),
            N("Concat", ["n1", "one_three"], ["cshape"], axis=0),
            N("ConstantOfShape", ["cshape"], ["zeros"]),
            N("Add", ["zeros", "cls"], ["c"]),
            N("Concat", ["c", "t"], ["ct"], axis=1),
            N("Flatten", ["ct"], ["h"], axis=1)]
    inits = {"zero": np.array(0, dtype=np.int64), "one_three": np.array([1, 3], np.int64),
             "cls": rand(3), "_numel": 15}
    p = _vit_graph(tmp_path, body, inits)
    m = load_onnx(p)
    assert compare_with_onnxruntime(m, p, 20, seed=1).max_rel_error <= 1e-5


@pytest.mark.parametrize("case,match", [
    ("const_concat", "not broadcast over the batch"),
    ("batch_compare", "batch size with a positive number"),
    ("batch_inner", "batch size after its first axis"),
    ("rank_matmul", "batch axes would not align"),
    ("bcast_reshape", "cannot be folded"),
])
def test_shape_arithmetic_that_cannot_be_folded_is_refused_in_one_line(
        tmp_path: Path, case: str, match: str) -> None:
    shape = [N("Shape", ["x"], ["sh"]), N("Gather", ["sh", "zero"], ["n"], axis=0),
             N("Unsqueeze", ["n"], ["n1"], axes=[0])]
    inits: dict = {"zero": np.array(0, dtype=np.int64), "_numel": 15}
    if case == "const_concat":  # a plain [1, 1, 3] constant is not the batch's broadcast
        body = [N("Concat", ["c", "t"], ["ct"], axis=1), N("Flatten", ["ct"], ["h"], axis=1)]
        inits["c"] = rand(1, 1, 3)
    elif case == "batch_compare":
        body = shape + [N("Equal", ["n1", "one"], ["e"]),
                        N("Where", ["e", "one", "n1"], ["w"]),
                        N("Concat", ["w", "one_three"], ["cs"], axis=0),
                        N("ConstantOfShape", ["cs"], ["c"]),
                        N("Concat", ["c", "t"], ["ct"], axis=1),
                        N("Flatten", ["ct"], ["h"], axis=1)]
        inits.update(one=np.array([1], np.int64), one_three=np.array([1, 3], np.int64))
    elif case == "batch_inner":
        body = shape + [N("Concat", ["one", "n1", "three"], ["cs"], axis=0),
                        N("ConstantOfShape", ["cs"], ["c"]),
                        N("Concat", ["c", "t"], ["ct"], axis=1),
                        N("Flatten", ["ct"], ["h"], axis=1)]
        inits.update(one=np.array([1], np.int64), three=np.array([3], np.int64))
    elif case == "rank_matmul":
        body = [N("Flatten", ["t"], ["f"], axis=1), N("Unsqueeze", ["f"], ["f3"], axes=[1]),
                N("Unsqueeze", ["f3"], ["f4"], axes=[1]),  # [N, 1, 1, 12]
                N("Reshape", ["x", "col"], ["xc"]),  # [N, 12, 1]
                N("MatMul", ["f4", "xc"], ["g"]), N("Flatten", ["g"], ["h"], axis=1)]
        inits.update(col=np.array([-1, 12, 1], np.int64), _numel=1)
    else:  # a reshape of a batch-broadcast constant would move the batch
        body = shape + [N("Concat", ["n1", "one_three"], ["cs"], axis=0),
                        N("ConstantOfShape", ["cs"], ["c"]),
                        N("Reshape", ["c", "flat"], ["c2"]),
                        N("Concat", ["c2", "t"], ["ct"], axis=1),
                        N("Flatten", ["ct"], ["h"], axis=1)]
        inits.update(one_three=np.array([1, 3], np.int64), flat=np.array([1, 1, 3], np.int64))
    p = _vit_graph(tmp_path, body, inits)
    with pytest.raises(OnnxImportError, match=match) as info:
        load_onnx(p)
    assert "\n" not in str(info.value)


def test_declared_input_type_is_still_required(tmp_path: Path) -> None:
    """The new folds do not loosen the input checks: an int input is refused."""
    g = helper.make_graph([N("Identity", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.INT64, ["N", 3])],
                          [helper.make_tensor_value_info("y", TensorProto.INT64, ["N", 3])])
    p = tmp_path / "int.onnx"
    p.write_bytes(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
                  .SerializeToString())
    with pytest.raises(OnnxImportError, match="not a float tensor"):
        load_onnx(p)


class _SDPA(torch.nn.Module):
    """Attention written with ``F.scaled_dot_product_attention`` and a fused qkv ``chunk``
    (its export computes the scale from the shape: Shape, Cast, Sqrt, Div folded)."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv, self.o = torch.nn.Linear(8, 24), torch.nn.Linear(32, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        q, k, v = (t.reshape(n, 4, 2, 4).transpose(1, 2)
                   for t in self.qkv(x.reshape(n, 4, 8)).chunk(3, dim=-1))
        o = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        return self.o(o.transpose(1, 2).reshape(n, -1))


def test_scaled_dot_product_attention_export_imports(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = _SDPA().eval()
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.zeros(1, 32),), buf, dynamo=False, input_names=["x"],
                          output_names=["logits"], opset_version=17, do_constant_folding=False,
                          dynamic_axes={"x": {0: "N"}, "logits": {0: "N"}})
    p = tmp_path / "sdpa.onnx"
    p.write_bytes(buf.getvalue())
    imported = load_onnx(p)
    assert compare_with_onnxruntime(imported, p, 20, seed=2).max_rel_error <= 1e-5
    kinds = {n.op for n in capture(imported, (32,))}
    assert {"softmax", "matmul"} <= kinds and "unknown" not in kinds


def test_token_gather_and_slice_with_negative_indices_and_steps(tmp_path: Path) -> None:
    """Views by constant indices: a reversed slice (step -1) and a gather with a negative
    index, then an activation and a token MatMul."""
    body = [N("Slice", ["t", "st", "en", "ax", "sp"], ["r"]),  # tokens reversed: [N, 4, 3]
            N("Gather", ["r", "ix"], ["g"], axis=2),  # [N, 4, 2]
            N("Relu", ["g"], ["a"]),
            N("MatMul", ["a", "w"], ["m"]),  # [N, 4, 5]
            N("Flatten", ["m"], ["h"], axis=1)]
    inits = {"st": np.array([-1], np.int64), "en": np.array([-5], np.int64),
             "ax": np.array([1], np.int64), "sp": np.array([-1], np.int64),
             "ix": np.array([-1, 0], np.int64), "w": rand(2, 5), "_numel": 20}
    p = _vit_graph(tmp_path, body, inits, opset=13)
    m = load_onnx(p)
    assert compare_with_onnxruntime(m, p, 20, seed=4).max_rel_error <= 1e-5
    assert "unknown" not in {n.op for n in capture(m, (12,))}


def test_gather_of_the_batch_axis_or_out_of_range_is_refused(tmp_path: Path) -> None:
    for axis, ix, match in ((0, [0], "batch"), (1, [4], "outside")):
        body = [N("Gather", ["t", "ix"], ["g"], axis=axis), N("Flatten", ["g"], ["h"], axis=1)]
        p = _vit_graph(tmp_path, body, {"ix": np.array(ix, np.int64), "_numel": 12})
        with pytest.raises(OnnxImportError, match=match):
            load_onnx(p)
