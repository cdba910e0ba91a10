"""Hostile ONNX files (issue #26): every tensor sized before it is allocated, the opset and
every attribute checked, every failure one line naming the file, the node, the op and why.

The files are built here, by hand, as an attacker would (no ``onnx.checker``)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnx")
from onnx import TensorProto, helper  # noqa: E402
from onnx_helpers import classifier, hostile, rand  # noqa: E402

from boundkit.errors import BadArgumentError, ModelFileError  # noqa: E402
from boundkit.models import load_model, load_onnx  # noqa: E402
from boundkit.models import onnx as onnx_mod  # noqa: E402

ROOT = Path(__file__).parents[2]
N = helper.make_node
I64 = np.int64

#: a valid head: y = x @ w.T + b, x [N, 4], 3 classes
HEAD = [N("Gemm", ["x", "hw", "hb"], ["y"], transB=1, name="head")]
HEAD_INITS = {"hw": rand(3, 4), "hb": rand(3)}


def _cos(name: str, shape: list[int], out: str, dtype: int = TensorProto.FLOAT,
         value: float = 0.0) -> object:
    """ConstantOfShape(shape) as a node with its own shape constant."""
    return N("ConstantOfShape", [f"{out}_shape"], [out], name=name,
             value=helper.make_tensor("v", dtype, [1], [value]))


def _shape_init(out: str, shape: list[int]) -> dict[str, np.ndarray]:
    return {f"{out}_shape": np.asarray(shape, dtype=I64)}


# (case id) -> (nodes, initialisers, opset, expected message)
def _cases() -> dict[str, tuple[list, dict, int | None, str]]:
    c: dict[str, tuple[list, dict, int | None, str]] = {}
    # -- folds sized before they compute (the 197 KB file that reached 4.3 GB)
    c["add_of_broadcast_constants"] = (
        [N("Add", ["a", "b"], ["ab"], name="bomb"), *HEAD],
        {"a": np.zeros((32768, 1), np.float32), "b": np.zeros((1, 16384), np.float32),
         **HEAD_INITS}, 13, r"'bomb' \(op Add\): the folded result is too large")
    c["gather_bomb"] = (
        [_cos("idx", [32768], "i", TensorProto.INT64), N("Gather", ["d", "i"], ["g"],
                                                        name="gbomb", axis=0), *HEAD],
        {"d": np.zeros((1, 65536), np.float32), **_shape_init("i", [32768]), **HEAD_INITS},
        13, r"'gbomb' \(op Gather\): the folded result is too large")
    c["concat_bomb"] = (
        [_cos("c0", [1 << 22], "c"), N("Concat", ["c"] * 16, ["cc"], name="cbomb", axis=0),
         *HEAD],
        {**_shape_init("c", [1 << 22]), **HEAD_INITS}, 13,
        r"'cbomb' \(op Concat\): the folded result is too large")
    # -- the 310-byte file: unused ConstantOfShape of 2^28 float64, and a dozen smaller ones
    c["unused_constant_of_shape_2e28_f64"] = (
        [_cos("big0", [1 << 28], "z0", TensorProto.DOUBLE),
         _cos("big1", [1 << 28], "z1", TensorProto.DOUBLE), *HEAD],
        {**_shape_init("z0", [1 << 28]), **_shape_init("z1", [1 << 28]), **HEAD_INITS}, 13,
        r"'big0' \(op ConstantOfShape\): the folded result is too large.*max_tensor_bytes")
    c["dozen_constants_exhaust_the_budget"] = (
        [_cos(f"m{k}", [1 << 23], f"z{k}", TensorProto.DOUBLE) for k in range(12)] + HEAD,
        {**{f"z{k}_shape": np.asarray([1 << 23], I64) for k in range(12)}, **HEAD_INITS}, 13,
        r"'m\d+' \(op ConstantOfShape\): the folded result is too large.*max_total_bytes")
    # -- opset
    c["opset_1"] = (HEAD, HEAD_INITS, 1, r"opset 1 is not one the importer implements")
    c["opset_999"] = (HEAD, HEAD_INITS, 999, r"opset 999 is not one the importer implements")
    c["no_opset"] = (HEAD, HEAD_INITS, None, r"declares no opset")
    c["op_not_in_opset"] = (
        [N("Range", ["s", "l", "d"], ["r"], name="rg"), *HEAD],
        {"s": np.asarray(0, I64), "l": np.asarray(4, I64), "d": np.asarray(1, I64),
         **HEAD_INITS}, 9, r"'rg' \(op Range\): Range does not exist in opset 9")
    # -- raw numpy errors that used to surface as tracebacks
    c["slice_step_0"] = (
        [N("Slice", ["d", "st", "en", "ax", "sp"], ["s"], name="sl"), *HEAD],
        {"d": rand(4, 4), "st": np.asarray([0], I64), "en": np.asarray([4], I64),
         "ax": np.asarray([0], I64), "sp": np.asarray([0], I64), **HEAD_INITS}, 13,
        r"'sl' \(op Slice\): steps \[0\] hold a 0")
    c["reshape_const_does_not_fit"] = (
        [N("Reshape", ["d", "t"], ["r"], name="rs"), *HEAD],
        {"d": rand(2, 3), "t": np.asarray([4, -1], I64), **HEAD_INITS}, 13,
        r"'rs' \(op Reshape\): target shape \[4, -1\] does not fit 6 elements")
    c["reshape_const_two_minus_ones"] = (
        [N("Reshape", ["d", "t"], ["r"], name="rs2"), *HEAD],
        {"d": rand(2, 3), "t": np.asarray([-1, -1], I64), **HEAD_INITS}, 13,
        r"'rs2' \(op Reshape\): bad target shape")
    c["reshape_input_does_not_fit"] = (
        [N("Reshape", ["x", "t"], ["r"], name="rsx"),
         N("Gemm", ["r", "hw", "hb"], ["y"], transB=1, name="head")],
        {"t": np.asarray([0, 5], I64), **HEAD_INITS}, 13,
        r"'rsx' \(op Reshape\): target \[0, 5\] does not fit")
    c["range_delta_0"] = (
        [N("Range", ["s", "l", "d"], ["r"], name="rg0"), *HEAD],
        {"s": np.asarray(0, I64), "l": np.asarray(10, I64), "d": np.asarray(0, I64),
         **HEAD_INITS}, 13, r"'rg0' \(op Range\): delta is 0")
    c["transpose_const_bad_perm"] = (
        [N("Transpose", ["d"], ["t"], name="tp", perm=[0, 0]), *HEAD],
        {"d": rand(2, 3), **HEAD_INITS}, 13,
        r"'tp' \(op Transpose\): perm \[0, 0\] is not a permutation")
    c["transpose_input_bad_perm"] = (
        [N("Transpose", ["x"], ["t"], name="tpx", perm=[0, 5]),
         N("Gemm", ["t", "hw", "hb"], ["y"], transB=1, name="head")],
        HEAD_INITS, 13, r"'tpx' \(op Transpose\): perm \[0, 5\] is not a permutation")
    c["concat_const_bad_axis"] = (
        [N("Concat", ["d", "d"], ["cc"], name="cat", axis=5), *HEAD],
        {"d": rand(2, 2), **HEAD_INITS}, 13,
        r"'cat' \(op Concat\): axis 5 is out of range for a tensor of rank 2")
    c["concat_input_bad_axis"] = (
        [N("Concat", ["x", "x"], ["cc"], name="catx", axis=3),
         N("Gemm", ["cc", "hw2", "hb"], ["y"], transB=1, name="head")],
        {"hw2": rand(3, 8), "hb": rand(3)}, 13,
        r"'catx' \(op Concat\): axis 3 is out of range for a tensor of rank 2")
    c["gather_index_out_of_range"] = (
        [N("Gather", ["d", "i"], ["g"], name="ga", axis=0), *HEAD],
        {"d": rand(3), "i": np.asarray([7], I64), **HEAD_INITS}, 13,
        r"'ga' \(op Gather\): indices outside \[-3, 2\]")
    c["constant_of_shape_negative"] = (
        [_cos("neg", [-4, 2], "z"), *HEAD], {**_shape_init("z", [-4, 2]), **HEAD_INITS}, 13,
        r"'neg' \(op ConstantOfShape\): bad shape \[-4, 2\]")
    # -- weights: the right tensor blamed; arithmetic in the graph that breaks them
    c["weight_shaped_0x4"] = (
        [N("Gemm", ["x", "w_empty", "b3"], ["y"], transB=1, name="fc")],
        {"w_empty": np.zeros((0, 4), np.float32), "b3": rand(3)}, 13,
        r"'fc' \(op Gemm\): the weight B 'w_empty' has shape \[0, 4\]")
    c["weight_divided_by_zero"] = (
        [N("Div", ["w", "zero"], ["wz"], name="scale_w"),
         N("Gemm", ["x", "wz", "hb"], ["y"], transB=1, name="head")],
        {"w": rand(3, 4), "zero": np.asarray(0.0, np.float32), "hb": rand(3)}, 13,
        r"'scale_w' \(op Div\): the divisor 'zero' holds zeros \(division by zero of the "
        r"constant 'w'\)")
    c["weight_overflows"] = (
        [N("Mul", ["w", "big"], ["w1"], name="m1"), N("Mul", ["w1", "big"], ["w2"], name="m2"),
         N("Gemm", ["x", "w2", "hb"], ["y"], transB=1, name="head")],
        {"w": rand(3, 4), "big": np.asarray(1e30, np.float32), "hb": rand(3)}, 13,
        r"'m2' \(op Mul\): folding output 'w2' gives NaN or infinity")
    # -- attributes
    c["unknown_attribute"] = (
        [N("Relu", ["x"], ["r"], name="re", foo=1),
         N("Gemm", ["r", "hw", "hb"], ["y"], transB=1, name="head")], HEAD_INITS, 13,
        r"'re' \(op Relu\): attribute 'foo' is not implemented for Relu")
    c["attribute_of_the_wrong_type"] = (
        [N("Gemm", ["x", "hw", "hb"], ["y"], transB=1.0, name="head")], HEAD_INITS, 13,
        r"'head' \(op Gemm\): attribute 'transB' has type FLOAT, expected INT")
    c["attribute_out_of_range"] = (
        [N("Gemm", ["x", "hw", "hb"], ["y"], transB=7, name="head")], HEAD_INITS, 13,
        r"'head' \(op Gemm\): attribute 'transB': 7 is not one of \[0, 1\]")
    c["nan_attribute"] = (
        [N("LeakyRelu", ["x"], ["r"], name="lr", alpha=float("nan")),
         N("Gemm", ["r", "hw", "hb"], ["y"], transB=1, name="head")], HEAD_INITS, 13,
        r"'lr' \(op LeakyRelu\): attribute 'alpha' = nan is not finite")
    c["required_attribute_missing"] = (
        [N("Concat", ["x", "x"], ["cc"], name="noaxis"),
         N("Gemm", ["cc", "hw2", "hb"], ["y"], transB=1, name="head")],
        {"hw2": rand(3, 8), "hb": rand(3)}, 13,
        r"'noaxis' \(op Concat\): the required attribute 'axis' is missing")
    c["cast_to_string"] = (
        [N("Cast", ["d"], ["s"], name="tostr", to=TensorProto.STRING), *HEAD],
        {"d": rand(2), **HEAD_INITS}, 13, r"'tostr' \(op Cast\): cast to unsupported dtype")
    return c


CASES = _cases()


@pytest.mark.parametrize("case", sorted(CASES))
def test_hostile_file_is_one_named_line(tmp_path: Path, case: str) -> None:
    nodes, inits, opset, expected = CASES[case]
    p = hostile(tmp_path, nodes, inits, opset=opset, name=f"{case}.onnx")
    for check in (True, False):  # with or without onnxruntime's comparison
        with pytest.raises(ModelFileError) as err:
            load_onnx(p, check=check)
        msg = str(err.value)
        assert "\n" not in msg and msg.startswith(str(p)), msg
        assert __import__("re").search(expected, msg), msg


def test_declared_dims_must_match_the_bytes_behind_them(tmp_path: Path) -> None:
    t = helper.make_tensor("w", TensorProto.FLOAT, [3, 4], rand(3, 4).tobytes(), raw=True)
    t.dims[:] = [30, 4]
    graph = helper.make_graph(
        [N("Gemm", ["x", "w"], ["y"], transB=1)], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 30])], initializer=[t])
    p = tmp_path / "lying.onnx"
    p.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
                  .SerializeToString())
    with pytest.raises(ModelFileError, match=r"initialiser 'w' declares dims \[30, 4\] \(120 "
                       r"values\) but holds 12"):
        load_onnx(p)
    graph.initializer[0].data_type = 99
    p.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
                  .SerializeToString())
    with pytest.raises(ModelFileError, match=r"initialiser 'w' has unknown data type 99"):
        load_onnx(p)


def test_limits_are_settable_and_checked(tmp_path: Path) -> None:
    p = classifier(tmp_path, [N("Relu", ["x"], ["h"])], (64,), "h", 64, classes=10)
    assert load_model(p, onnx_options={"check": False}) is not None
    with pytest.raises(ModelFileError, match=r"above the import's budget of .*max_total_bytes"):
        load_model(p, onnx_options={"max_total_bytes": 4096})
    with pytest.raises(ModelFileError, match=r"above the per-tensor limit of .*max_tensor_bytes"):
        load_onnx(p, max_tensor_bytes=1024)
    for bad in (0, -1, 2.5, "many", True):
        with pytest.raises(BadArgumentError, match="max_total_bytes"):
            load_onnx(p, max_total_bytes=bad)


def test_the_defaults_grow_with_the_file() -> None:
    small = onnx_mod.OnnxLimits.for_file(1000)
    assert small == onnx_mod.OnnxLimits(onnx_mod.MAX_TENSOR_BYTES, onnx_mod.MAX_TOTAL_BYTES)
    big = onnx_mod.OnnxLimits.for_file(1 << 30)
    assert big.max_tensor_bytes == 4 << 30 and big.max_total_bytes == 8 << 30


def test_every_op_the_importer_handles_has_an_attribute_entry() -> None:
    """New ops inherit the attribute checks by adding their entry to ``ATTRIBUTES``."""
    handled = {name.split("_", 1)[1] for name in dir(onnx_mod._Importer)
               if name.startswith(("op_", "fold_")) and name.split("_", 1)[1][:1].isupper()}
    handled |= set(onnx_mod._NP_BINARY)
    missing = sorted(handled - set(onnx_mod.ATTRIBUTES))
    assert not missing, f"add these ops to boundkit.models.onnx.ATTRIBUTES: {missing}"


_PEAK = r"""
import json, resource, sys
from boundkit.errors import ModelFileError
from boundkit.models import load_model
out = {}
for path in sys.argv[1:]:
    try:
        load_model(path)
        out[path] = "loaded"
    except ModelFileError as exc:
        out[path] = str(exc)
# VmHWM is this process image's own high-water mark: ru_maxrss would also count the RSS of
# the parent at fork (Linux carries the old image's mark across exec)
try:
    hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM:")][0]
    out["peak_mib"] = int(hwm.split()[1]) / 1024
except OSError:
    out["peak_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps(out))
"""


def test_bombs_under_1_mb_never_peak_above_1_gb(tmp_path: Path) -> None:
    """The folding and allocation bombs, loaded one after the other in a fresh process:
    each refused, the process's peak RSS (torch and onnxruntime included) below 1 GiB."""
    import os

    bombs = ["add_of_broadcast_constants", "gather_bomb", "concat_bomb",
             "unused_constant_of_shape_2e28_f64", "dozen_constants_exhaust_the_budget"]
    paths = []
    for case in bombs:
        nodes, inits, opset, _ = CASES[case]
        paths.append(hostile(tmp_path, nodes, inits, opset=opset, name=f"{case}.onnx"))
        assert paths[-1].stat().st_size < 1 << 20
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-c", _PEAK, *map(str, paths)], capture_output=True,
                         text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    for p in paths:
        assert "too large" in out[str(p)], out[str(p)]
    assert out["peak_mib"] < 1024, out


def test_a_graph_that_overflows_is_refused_by_name_not_as_a_nan_difference(tmp_path: Path
                                                                           ) -> None:
    nodes = [N("Mul", ["x", "big"], ["h1"], name="m1"), N("Mul", ["h1", "big"], ["h2"], name="m2"),
             N("Gemm", ["h2", "hw", "hb"], ["y"], transB=1, name="head")]
    p = hostile(tmp_path, nodes, {"big": np.asarray(1e30, np.float32), **HEAD_INITS})
    with pytest.raises(ModelFileError, match=r"logits are NaN or infinite on the random check "
                       r"inputs \(the graph overflows\)"):
        load_onnx(p)


def test_a_graph_of_too_many_nodes_is_refused_before_the_walk(tmp_path: Path) -> None:
    k = onnx_mod.MAX_NODES + 1
    nodes = [N("Identity", ["x" if i == 0 else f"i{i - 1}"], [f"i{i}"]) for i in range(k)]
    nodes.append(N("Gemm", [f"i{k - 1}", "hw", "hb"], ["y"], transB=1, name="head"))
    p = hostile(tmp_path, nodes, HEAD_INITS)
    with pytest.raises(ModelFileError, match=rf"the graph has {k + 1} nodes; the importer "
                       rf"reads at most {onnx_mod.MAX_NODES}"):
        load_onnx(p)


def test_chained_transposes_are_charged(tmp_path: Path) -> None:
    """Each transposed view of the input keeps an index of its elements: a chain of them on
    a large input reaches the budget instead of memory."""
    nodes = [N("Transpose", ["x" if i == 0 else f"t{i - 1}"], [f"t{i}"], perm=[0, 2, 1],
               name=f"tp{i}") for i in range(40)]
    nodes.append(N("Flatten", ["t39"], ["f"], axis=1))
    nodes.append(N("Gemm", ["f", "hw", "hb"], ["y"], transB=1, name="head"))
    p = hostile(tmp_path, nodes, {"hw": np.zeros((3, 1 << 22), np.float32)[:, :1],
                                  "hb": rand(3)}, in_shape=(1 << 11, 1 << 11))
    with pytest.raises(ModelFileError, match=r"'tp\d+' \(op Transpose\): the index of a "
                       r"transposed view is too large.*max_total_bytes"):
        load_onnx(p, check=False)


def test_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    import os

    fifo = tmp_path / "pipe.onnx"
    os.mkfifo(fifo)
    with pytest.raises(ModelFileError, match="is not a regular file"):
        load_onnx(fifo)


@pytest.mark.parametrize("op", ["Conv", "ConvTranspose"])
def test_an_empty_kernel_is_refused_by_name_for_both_convolutions(tmp_path: Path, op: str
                                                                   ) -> None:
    """Both convolutions read their kernel through one check: an empty one is named before
    any layer is built from it."""
    from onnx import numpy_helper

    w = numpy_helper.from_array(np.zeros((2, 0, 3, 3), np.float32), "k0")
    g = helper.make_graph(
        [N(op, ["x", "k0"], ["y"], name="cv")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w])
    path = tmp_path / "m.onnx"
    path.write_bytes(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
                     .SerializeToString())
    with pytest.raises(ModelFileError, match=r"'cv' \(op " + op + r"\): the kernel 'k0' has "
                       r"shape \[2, 0, 3, 3\] \(empty\)"):
        load_onnx(path)
