"""The rt-onnx red team's findings on the native ONNX importer, one test per class: files
onnxruntime computes differently from what the importer would have certified (refused now,
in one line naming the node), tensors the import or its check built unsized (charged now
before allocation), and multi-line or internal messages (one line now, or supported).

Every file is built by hand (``hostile``: no checker) and imported with ``check=False``, so
that the importer itself, not the load-time comparison, must catch the difference."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper  # noqa: E402
from onnx_helpers import hostile, ort_logits, rand  # noqa: E402

from boundkit.models import load_onnx  # noqa: E402
from boundkit.models.onnx import OnnxImportError, compare_with_onnxruntime  # noqa: E402

N = helper.make_node
I64 = np.int64


def _refused(path: Path, *words: str) -> str:
    """The one-line refusal of ``path`` (``check=False``), holding every word of ``words``."""
    with pytest.raises(OnnxImportError) as e:
        load_onnx(path, check=False)
    msg = str(e.value)
    assert "\n" not in msg, msg
    for w in words:
        assert w in msg, msg
    return msg


def _same_as_ort(path: Path, in_shape: tuple[int, ...], batches: tuple[int, ...] = (1, 2, 5)
                 ) -> None:
    """The import (``check=False``) computes what onnxruntime computes at every batch size
    of ``batches`` (batch size 1 included: where a batch axis of size 1 can be squeezed or
    broadcast)."""
    model = load_onnx(path, check=False)
    rng = np.random.default_rng(0)
    for n in batches:
        x = rng.standard_normal((n, *in_shape)).astype(np.float32)
        ref = ort_logits(path, x)
        with torch.no_grad():
            got = model(torch.from_numpy(x)).numpy()
        assert got.shape == ref.shape
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------- wrong numbers accepted (A, J)
@pytest.mark.parametrize("axes", ["none", "empty"])
def test_squeeze_without_axes_on_the_batch_is_refused(tmp_path: Path, axes: str) -> None:
    """A (no axes) and J (an empty axes tensor, which onnxruntime reads as "no axes"): at
    batch size 1 onnxruntime squeezes the batch axis too, so a later Unsqueeze/Softmax works
    on other axes than at batch size 2 or more; the importer used to keep the batch axis."""
    ins = ["x"] if axes == "none" else ["x", "none"]
    nodes = [N("Squeeze", ins, ["s"], name="sq"),
             N("Unsqueeze", ["s", "ax1"], ["u"]),
             N("Softmax", ["u"], ["p"], axis=-2),
             N("Reshape", ["p", "shp"], ["f"]),
             N("Gemm", ["f", "w"], ["y"], transB=1)]
    inits = {"ax1": np.array([1], I64), "shp": np.array([-1, 4], I64), "w": rand(3, 4),
             "none": np.zeros((0,), I64)}
    p = hostile(tmp_path, nodes, inits, in_shape=(1, 4))
    _refused(p, "'sq'", "Squeeze", "batch size 1")


def test_squeeze_with_empty_axes_on_constants_squeezes_every_unit_axis(tmp_path: Path) -> None:
    """J on constants: an empty axes tensor folds like no axes (every axis of size 1)."""
    nodes = [N("Squeeze", ["c", "none"], ["cs"]),  # [1, 4, 1] -> [4]
             N("Add", ["x", "cs"], ["h"]), N("Reshape", ["h", "shp"], ["f"]),
             N("Gemm", ["f", "w"], ["y"], transB=1)]
    inits = {"c": rand(1, 4, 1), "none": np.zeros((0,), I64), "w": rand(3, 4),
             "shp": np.array([-1, 4], I64)}
    _same_as_ort(hostile(tmp_path, nodes, inits), (4,))


# ------------------------------------------------------ the batch size as an integer (B, N)
@pytest.mark.parametrize("where", [2, 4])
def test_the_batch_size_read_as_a_slice_bound_is_refused(tmp_path: Path, where: int) -> None:
    """B: Shape -> Gather -> Unsqueeze gives [N]; used as Slice's steps (or starts) it was
    read as the importer's reserved negative value, not N."""
    ins = ["x", "st", "en", "axes", "st1"]
    ins[1 if where == 2 else 4] = "n1"
    nodes = [N("Shape", ["x"], ["sh"]), N("Gather", ["sh", "i0"], ["n"], axis=0),
             N("Unsqueeze", ["n", "ax0"], ["n1"]),
             N("Slice", ins, ["s"], name="sl"),
             N("ReduceSum", ["s", "axes"], ["r"], keepdims=1),
             N("Gemm", ["r", "w"], ["y"], transB=1)]
    inits = {"i0": np.array(0, I64), "ax0": np.array([0], I64), "st": np.array([0], I64),
             "en": np.array([1 << 62], I64), "axes": np.array([1], I64),
             "st1": np.array([1], I64), "w": rand(3, 1)}
    _refused(hostile(tmp_path, nodes, inits, in_shape=(8,)), "'sl'", "batch size")


def test_a_constant_broadcast_over_the_batch_as_gather_indices_is_refused(tmp_path: Path
                                                                          ) -> None:
    """N: ConstantOfShape([N]) as Gather indices gathers N copies in onnxruntime (the batch
    size leaks into every sample); the importer held it as one index."""
    nodes = [N("Shape", ["x"], ["sh"]), N("Slice", ["sh", "z", "o"], ["n"]),
             N("ConstantOfShape", ["n"], ["idx"],
               value=helper.make_tensor("v", TensorProto.INT64, [1], [0])),
             N("Gather", ["x", "idx"], ["g"], axis=1, name="ga"),
             N("ReduceSum", ["g", "ax"], ["r"], keepdims=1),
             N("Gemm", ["r", "w"], ["y"], transB=1)]
    inits = {"z": np.array([0], I64), "o": np.array([1], I64), "ax": np.array([1], I64),
             "w": rand(3, 1)}
    _refused(hostile(tmp_path, nodes, inits), "'ga'", "broadcast over the batch")


# --------------------------------------------------- fused constants of higher rank (C)
_T, _E = 3, 4
_HEAD = [N("Softmax", ["h"], ["p"], axis=1),  # onnxruntime: over N when the rank grew
         N("Reshape", ["p", "shp"], ["f"]), N("Gemm", ["f", "w"], ["y"], transB=1)]
_HEAD_INITS = {"shp": np.array([-1, _T * _E], I64), "w": rand(3, _T * _E)}
_ONE4 = np.ones((1, 1, 1, 1), np.float32)
_FUSED = {
    "matmul_bias": ([N("MatMul", ["x", "W"], ["m"]), N("Add", ["m", "c"], ["h"])],
                    {"W": rand(_E, _E), "c": rand(1, 1, 1, _E)}),
    "gelu_plus_one": ([N("Div", ["x", "r2"], ["d"]), N("Erf", ["d"], ["e"]),
                       N("Add", ["e", "one"], ["a"]), N("Mul", ["x", "a"], ["m"]),
                       N("Mul", ["m", "half"], ["h"])],
                      {"r2": np.array(np.sqrt(2), np.float32), "one": _ONE4,
                       "half": np.array(0.5, np.float32)}),
    "gelu_div": ([N("Div", ["x", "r2"], ["d"]), N("Erf", ["d"], ["e"]),
                  N("Add", ["e", "one"], ["a"]), N("Mul", ["x", "a"], ["m"]),
                  N("Mul", ["m", "half"], ["h"])],
                 {"r2": np.full((1, 1, 1, 1), np.sqrt(2), np.float32),
                  "one": np.array(1.0, np.float32), "half": np.array(0.5, np.float32)}),
    "layernorm_eps": ([N("ReduceMean", ["x"], ["mu"], axes=[-1]), N("Sub", ["x", "mu"], ["d"]),
                       N("Pow", ["d", "two"], ["d2"]), N("ReduceMean", ["d2"], ["v"], axes=[-1]),
                       N("Add", ["v", "eps"], ["ve"]), N("Sqrt", ["ve"], ["sd"]),
                       N("Div", ["d", "sd"], ["h"])],
                      {"two": np.array(2.0, np.float32), "eps": _ONE4 * 1e-5}),
    "layernorm_pow": ([N("ReduceMean", ["x"], ["mu"], axes=[-1]), N("Sub", ["x", "mu"], ["d"]),
                       N("Pow", ["d", "two"], ["d2"]), N("ReduceMean", ["d2"], ["v"], axes=[-1]),
                       N("Add", ["v", "eps"], ["ve"]), N("Sqrt", ["ve"], ["sd"]),
                       N("Div", ["d", "sd"], ["h"])],
                      {"two": _ONE4 * 2.0, "eps": np.array(1e-5, np.float32)}),
}


@pytest.mark.parametrize("name", sorted(_FUSED))
def test_a_fused_patterns_constant_that_raises_the_rank_is_refused(tmp_path: Path, name: str
                                                                   ) -> None:
    """C: a one-element (or per-feature) constant of rank 4 on a [N, T, E] value makes
    onnxruntime's result [1, N, T, E]; the fused patterns read it by value only."""
    body, extra = _FUSED[name]
    p = hostile(tmp_path, body + _HEAD, {**_HEAD_INITS, **extra}, in_shape=(_T, _E))
    with pytest.raises(OnnxImportError) as e:
        load_onnx(p, check=False)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("shape", [(_E,), (1, _E), (1, 1, _E)])
def test_a_token_bias_of_the_values_rank_or_less_is_still_fused(tmp_path: Path,
                                                               shape: tuple[int, ...]) -> None:
    """The fix keeps the ordinary biases: [E], [1, E], [1, 1, E] on [N, T, E]."""
    nodes = [N("MatMul", ["x", "W"], ["m"]), N("Add", ["m", "c"], ["h"]), *_HEAD]
    inits = {**_HEAD_INITS, "W": rand(_E, _E), "c": rand(*shape)}
    _same_as_ort(hostile(tmp_path, nodes, inits, in_shape=(_T, _E)), (_T, _E))


# ----------------------------------------------------------------- Dropout in training (E)
@pytest.mark.parametrize("ratio", ["ratio", ""])
def test_dropout_in_training_mode_is_refused(tmp_path: Path, ratio: str) -> None:
    """E: Dropout-12+ with training_mode true draws a random mask (with the ratio given
    or left at its default 0.5); it was imported as the identity."""
    nodes = [N("Dropout", ["x", ratio, "train"], ["d"], name="do"),
             N("Gemm", ["d", "w"], ["y"], transB=1)]
    inits = {"ratio": np.array(0.5, np.float32), "train": np.array(True), "w": rand(3, 8)}
    _refused(hostile(tmp_path, nodes, inits, in_shape=(8,)), "'do'", "training")


def test_dropout_with_training_mode_false_is_the_identity(tmp_path: Path) -> None:
    nodes = [N("Dropout", ["x", "ratio", "train"], ["d"]), N("Gemm", ["d", "w"], ["y"], transB=1)]
    inits = {"ratio": np.array(0.5, np.float32), "train": np.array(False), "w": rand(3, 8)}
    _same_as_ort(hostile(tmp_path, nodes, inits, in_shape=(8,)), (8,))


# ------------------------------------------------------------------------------- memory
def test_gather_charges_its_index_array_before_building_it(tmp_path: Path) -> None:
    """D: K = 40,000 indices on a 1,000-element sample: an index array of 40M entries
    (640 MB) from a file of a few KB; refused at the Gather, before it is built."""
    nodes = [N("ConstantOfShape", ["k"], ["idx"],
               value=helper.make_tensor("v", TensorProto.INT64, [1], [0])),
             N("Gather", ["x", "idx"], ["g"], axis=1, name="ga"),
             N("ReduceSum", ["g", "ax"], ["r"], keepdims=0),
             N("Gemm", ["r", "w"], ["y"], transB=1)]
    inits = {"k": np.array([40_000], I64), "ax": np.array([1], I64), "w": rand(2, 1000)}
    p = hostile(tmp_path, nodes, inits, in_shape=(1, 1000))
    tracemalloc.start()
    try:
        _refused(p, "'ga'", "Gather", "too large")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 << 20, peak


def test_the_onnxruntime_check_draws_its_inputs_one_chunk_at_a_time(tmp_path: Path) -> None:
    """L: the check used to draw all 64 inputs at once in float64 (and a float32 copy):
    64 x 65,536 x 12 bytes = 48 MiB here, whatever batch the budget allowed (4)."""
    s = 256
    nodes = [N("Transpose", ["x"], ["t"], perm=[0, 2, 1]),
             N("ReduceSum", ["t", "ax"], ["r"], keepdims=0),
             N("Gemm", ["r", "w"], ["y"], transB=1)]
    p = hostile(tmp_path, nodes, {"ax": np.array([2], I64), "w": rand(2, s)}, in_shape=(s, s))
    model = load_onnx(p, check=False)
    tracemalloc.start()
    try:
        res = compare_with_onnxruntime(model, p, 64, batch=4)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert res.n == 64 and res.max_rel_error < 1e-5
    assert peak < 8 << 20, peak  # one chunk of 4 float32 samples is 1 MiB


# ------------------------------------------------------------------------ one-line errors
def test_onnxruntimes_own_error_log_stays_off_stderr(tmp_path: Path,
                                                    capfd: pytest.CaptureFixture[str]) -> None:
    """K: a file onnxruntime loads but fails to run (a Reshape that does not divide at the
    check's batch size): the failure is the exception, not also a log line on stderr."""
    nodes = [N("Reshape", ["x", "s"], ["y"])]
    p = hostile(tmp_path, nodes, {"s": np.array([-1, 12], I64)}, in_shape=(8,))
    with pytest.raises(Exception, match="Reshape"):
        compare_with_onnxruntime(torch.nn.Identity(), p, 64)
    assert "onnxruntime" not in capfd.readouterr().err


def test_a_per_sample_scalar_flattens_like_onnxruntime(tmp_path: Path,
                                                        capfd: pytest.CaptureFixture[str]
                                                        ) -> None:
    """F: ReduceSum to [N] then Flatten(axis=1) to [N, 1]: the import failed to run (with
    torch.fx's traceback on stderr); now the same numbers as onnxruntime."""
    nodes = [N("ReduceSum", ["x", "ax"], ["r"], keepdims=0), N("Flatten", ["r"], ["f"], axis=1),
             N("Gemm", ["f", "w"], ["y"], transB=1)]
    p = hostile(tmp_path, nodes, {"ax": np.array([1], I64), "w": rand(3, 1)}, in_shape=(8,))
    load_onnx(p)
    _same_as_ort(p, (8,))
    assert capfd.readouterr().err == ""


@pytest.mark.parametrize("cshape", [(), (1,)])
@pytest.mark.parametrize("op", ["Mul", "Add"])
def test_a_per_sample_scalar_times_a_constant_like_onnxruntime(
        tmp_path: Path, cshape: tuple[int, ...], op: str) -> None:
    """F2: a scalar Gather gives [N]; times (or plus) a one-element constant failed with an
    internal IndexError / "does not broadcast to [N, []]"."""
    nodes = [N("Gather", ["x", "i0"], ["g"], axis=1), N(op, ["g", "c"], ["m"]),
             N("Unsqueeze", ["m", "ax"], ["u"]), N("Gemm", ["u", "w"], ["y"], transB=1)]
    inits = {"i0": np.array(0, I64), "c": np.full(cshape, 2.0, np.float32),
             "ax": np.array([1], I64), "w": rand(3, 1)}
    _same_as_ort(hostile(tmp_path, nodes, inits, in_shape=(8,)), (8,))


def test_a_per_sample_scalar_times_a_longer_constant_is_refused(tmp_path: Path) -> None:
    """[N] * c[3] broadcasts to [3] at batch size 1 only (else fails): refused."""
    nodes = [N("Gather", ["x", "i0"], ["g"], axis=1), N("Mul", ["g", "c"], ["m"], name="mu"),
             N("Unsqueeze", ["m", "ax"], ["u"]), N("Gemm", ["u", "w"], ["y"], transB=1)]
    inits = {"i0": np.array(0, I64), "c": rand(3), "ax": np.array([1], I64), "w": rand(3, 1)}
    _refused(hostile(tmp_path, nodes, inits, in_shape=(8,)), "'mu'")


@pytest.mark.parametrize("op", ["Unsqueeze", "ReduceSum"])
def test_an_input_the_opsets_schema_lacks_is_refused(tmp_path: Path, op: str) -> None:
    """H: Unsqueeze-11 and ReduceSum-11 take their axes as an attribute; an axes input is
    not valid ONNX at opset 11 (onnxruntime refuses the file)."""
    if op == "Unsqueeze":
        nodes = [N("Unsqueeze", ["x", "ax"], ["u"], name="op"),
                 N("Flatten", ["u"], ["f"]), N("Gemm", ["f", "w"], ["y"], transB=1)]
        w = rand(3, 4)
    else:
        nodes = [N("ReduceSum", ["x", "ax"], ["r"], keepdims=1, name="op"),
                 N("Gemm", ["r", "w"], ["y"], transB=1)]
        w = rand(3, 1)
    p = hostile(tmp_path, nodes, {"ax": np.array([1], I64), "w": w}, opset=11)
    _refused(p, "'op'", "opset 11", "at most 1")


# --------------------------------------------------------- Resize sizes and the batch (B)
@pytest.mark.parametrize("first", ["shape", "one"])
def test_resize_sizes_must_keep_the_batch(tmp_path: Path, first: str) -> None:
    """Resize's ``sizes`` from ``Shape`` (``[N, C, 2H, 2W]``, as torch exports an upsampling
    to a size) keeps the batch; a constant first entry (1) makes onnxruntime's output one
    sample whatever the batch; the importer ignored it."""
    nodes = [N("Shape", ["x"], ["sh"]), N("Slice", ["sh", "z", "two"], ["nc"]),
             N("Concat", ["nc", "hw"], ["sz"], axis=0)] if first == "shape" else []
    nodes += [N("Resize", ["x", "", "", "sz"], ["r"], name="rs", mode="nearest",
                coordinate_transformation_mode="asymmetric", nearest_mode="floor"),
              N("Flatten", ["r"], ["f"]), N("Gemm", ["f", "w"], ["y"], transB=1)]
    inits = {"z": np.array([0], I64), "two": np.array([2], I64), "hw": np.array([4, 4], I64),
             "w": rand(3, 2 * 4 * 4)}
    if first == "one":
        inits = {"sz": np.array([1, 2, 4, 4], I64), "w": inits["w"]}
    p = hostile(tmp_path, nodes, inits, in_shape=(2, 2, 2), opset=13)
    if first == "shape":
        _same_as_ort(p, (2, 2, 2))
    else:
        _refused(p, "'rs'", "batch size")


def test_the_onnxruntime_check_runs_batch_size_1_too(tmp_path: Path) -> None:
    """M: a model that differs from the file at batch size 1 only (how a deployed model is
    often run) is caught by the check; it used to run its 64 samples in chunks of 64 only."""
    weight = rand(3, 4)
    p = hostile(tmp_path, [N("Gemm", ["x", "w"], ["y"], transB=1)], {"w": weight})

    class OffAtBatch1(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.from_numpy(weight))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = x @ self.w.T
            return y + 1.0 if x.shape[0] == 1 else y

    assert compare_with_onnxruntime(OffAtBatch1(), p, 64, batch=64).max_abs_error >= 0.99


@pytest.mark.parametrize("shape", [(3,), (1, 1, 1, 1)])
def test_clip_bounds_that_are_not_scalars_are_refused(tmp_path: Path,
                                                      shape: tuple[int, ...]) -> None:
    """Clip-11+ takes scalar bounds (onnxruntime fails on these at run time); the importer
    read the first element."""
    nodes = [N("Clip", ["x", "lo", "hi"], ["c"], name="cl"),
             N("Gemm", ["c", "w"], ["y"], transB=1)]
    inits = {"lo": -np.ones(shape, np.float32), "hi": np.array(1.0, np.float32), "w": rand(3, 4)}
    _refused(hostile(tmp_path, nodes, inits), "'cl'", "not a scalar")
