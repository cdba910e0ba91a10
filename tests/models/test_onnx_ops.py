"""Every ONNX operator the native importer supports, built by hand with ``onnx.helper``:
the imported module matches onnxruntime, and boundkit captures it with known node kinds only."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from onnx import helper  # noqa: E402
from onnx_helpers import classifier, ort_logits, rand  # noqa: E402

from boundkit.graph import capture  # noqa: E402
from boundkit.models.onnx import compare_with_onnxruntime, load_onnx  # noqa: E402

N = helper.make_node


def _check(path: Path, in_shape: tuple[int, ...], *, layout: str = "nchw") -> torch.nn.Module:
    """Import (with the load-time onnxruntime check), compare again on fresh inputs, and
    capture: no node may be 'unknown'."""
    model = load_onnx(path, layout=layout)
    res = compare_with_onnxruntime(model, path, 40, layout=layout, seed=7)
    assert res.max_rel_error <= 1e-5, res
    shape = in_shape if layout == "nchw" else (in_shape[2], in_shape[0], in_shape[1])
    g = capture(model, shape)
    assert not [n.describe() for n in g if n.op == "unknown"]
    return model


# ----------------------------------------------------------------------------- linear


@pytest.mark.parametrize("trans_b", [0, 1])
def test_gemm_with_alpha_beta_matches_onnxruntime(tmp_path: Path, trans_b: int) -> None:
    w = rand(6, 4) if trans_b else rand(4, 6)
    p = classifier(tmp_path, [
        N("Gemm", ["x", "w", "b"], ["h"], transB=trans_b, alpha=0.7, beta=1.3, name="g")],
        (4,), "h", None, {"w": w, "b": rand(6)})
    _check(p, (4,))


def test_matmul_add_becomes_one_linear_layer(tmp_path: Path) -> None:
    p = classifier(tmp_path, [
        N("MatMul", ["x", "w"], ["m"]), N("Add", ["m", "b"], ["h"]), N("Relu", ["h"], ["r"])],
        (5,), "r", 4, {"w": rand(5, 4), "b": rand(4)})
    model = _check(p, (5,))
    assert sum(isinstance(m, torch.nn.Linear) for m in model.modules()) == 2


# ----------------------------------------------------------------------------- conv / pool


@pytest.mark.parametrize(
    "kw",
    [
        dict(pads=[1, 1, 1, 1], strides=[2, 2]),
        dict(pads=[0, 1, 2, 1], dilations=[2, 1]),  # asymmetric: explicit zero pad
        dict(group=2),
    ],
)
def test_conv_matches_onnxruntime(tmp_path: Path, kw: dict) -> None:
    cin = 2 if kw.get("group") else 3
    w = rand(4, cin // kw.get("group", 1), 3, 3)
    p = classifier(tmp_path, [N("Conv", ["x", "w", "b"], ["h"], **kw)], (cin, 7, 7), "h",
                   None, {"w": w, "b": rand(4)})
    p2 = classifier(tmp_path, [N("Conv", ["x", "w", "b"], ["c"], **kw), N("Relu", ["c"], ["h"])],
                    (cin, 7, 7), "h", _numel(p, (cin, 7, 7)), {"w": w, "b": rand(4)},
                    name="m2.onnx")
    _check(p2, (cin, 7, 7))


def _numel(path: Path, in_shape: tuple[int, ...]) -> int:
    return int(np.prod(ort_logits(path, np.zeros((1, *in_shape))).shape[1:]))


@pytest.mark.parametrize(
    "kw",
    [dict(kernel_shape=[2, 2], strides=[2, 2]),
     dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1)],
)
def test_maxpool_matches_onnxruntime(tmp_path: Path, kw: dict) -> None:
    body = [N("MaxPool", ["x"], ["h"], **kw)]
    numel = _numel(classifier(tmp_path, body, (2, 7, 7), "h", None, name="a.onnx"), (2, 7, 7))
    _check(classifier(tmp_path, body, (2, 7, 7), "h", numel), (2, 7, 7))


@pytest.mark.parametrize("include", [0, 1])
def test_averagepool_with_pads_matches_onnxruntime(tmp_path: Path, include: int) -> None:
    body = [N("AveragePool", ["x"], ["h"], kernel_shape=[3, 3], strides=[2, 2],
              pads=[1, 1, 1, 1], count_include_pad=include)]
    numel = _numel(classifier(tmp_path, body, (2, 6, 6), "h", None, name="a.onnx"), (2, 6, 6))
    _check(classifier(tmp_path, body, (2, 6, 6), "h", numel), (2, 6, 6))


def test_global_average_pool_matches_onnxruntime(tmp_path: Path) -> None:
    p = classifier(tmp_path, [N("GlobalAveragePool", ["x"], ["h"])], (4, 5, 3), "h", 4)
    _check(p, (4, 5, 3))


# ----------------------------------------------------------------------------- normalisation


@pytest.mark.parametrize("in_shape", [(3, 4, 4), (3,)])
def test_batchnorm_matches_onnxruntime(tmp_path: Path, in_shape: tuple[int, ...]) -> None:
    inits = {"s": rand(3), "b": rand(3), "m": rand(3),
             "v": np.abs(rand(3)) + 0.1}
    body = [N("BatchNormalization", ["x", "s", "b", "m", "v"], ["h"], epsilon=1e-3)]
    _check(classifier(tmp_path, body, in_shape, "h", int(np.prod(in_shape)), inits), in_shape)


def test_lrn_matches_onnxruntime_and_even_size_is_refused(tmp_path: Path) -> None:
    body = [N("LRN", ["x"], ["h"], size=3, alpha=0.1, beta=0.75, bias=2.0)]
    _check(classifier(tmp_path, body, (4, 3, 3), "h", 36), (4, 3, 3))
    body = [N("LRN", ["x"], ["h"], size=2, name="lrn_even")]
    p = classifier(tmp_path, body, (4, 3, 3), "h", 36, name="even.onnx")
    with pytest.raises(Exception, match=r"lrn_even.*LRN.*even"):
        load_onnx(p)


# ----------------------------------------------------------------------------- activations


@pytest.mark.parametrize(
    "op,kw",
    [("Relu", {}), ("LeakyRelu", {"alpha": 0.1}), ("LeakyRelu", {}), ("Sigmoid", {}),
     ("Tanh", {}), ("Softplus", {})],
)
def test_activation_matches_onnxruntime(tmp_path: Path, op: str, kw: dict) -> None:
    body = [N("Gemm", ["x", "w", "b"], ["z"], transB=1),
            N(op, ["z"], ["h"], **kw)]
    p = classifier(tmp_path, body, (4,), "h", 6, {"w": rand(6, 4, scale=3.0), "b": rand(6)})
    _check(p, (4,))


@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax"])
def test_softmax_at_the_end_is_accepted_and_elsewhere_refused(tmp_path: Path, op: str) -> None:
    body = [N("Gemm", ["x", "w", "b"], ["z"], transB=1), N(op, ["z"], ["h"], axis=1)]
    _check(classifier(tmp_path, body, (4,), "h", None, {"w": rand(3, 4), "b": rand(3)}), (4,))
    body = [N("Gemm", ["x", "w", "b"], ["z"], transB=1), N(op, ["z"], ["h"], name="mid")]
    p = classifier(tmp_path, body, (4,), "h", 3, {"w": rand(3, 4), "b": rand(3)}, name="b.onnx")
    if op == "Softmax":  # inside the network (attention weights): op softmax (issue 24)
        _check(p, (4,))
        return
    with pytest.raises(Exception, match=rf"mid.*{op}.*last node"):
        load_onnx(p)


# ----------------------------------------------------------------------------- shapes


def test_flatten_reshape_squeeze_unsqueeze_regroup_without_reordering(tmp_path: Path) -> None:
    body = [
        N("Unsqueeze", ["x", "ax1"], ["u"]),  # [N, 1, 2, 3, 4]
        N("Squeeze", ["u", "ax1"], ["s"]),  # [N, 2, 3, 4]
        N("Reshape", ["s", "shape"], ["r"]),  # [N, 6, 4]
        N("Relu", ["r"], ["h"]),
    ]
    inits = {"ax1": np.array([1], dtype=np.int64), "shape": np.array([-1, 6, 4], dtype=np.int64)}
    _check(classifier(tmp_path, body, (2, 3, 4), "h", 24, inits), (2, 3, 4))


def test_reshape_mixing_the_batch_is_refused(tmp_path: Path) -> None:
    body = [N("Reshape", ["x", "shape"], ["h"], name="bad_reshape")]
    inits = {"shape": np.array([12, -1], dtype=np.int64)}
    p = classifier(tmp_path, body, (2, 3, 4), "h", 24, inits)
    with pytest.raises(Exception, match=r"bad_reshape.*Reshape.*batch"):
        load_onnx(p)


def test_channels_last_tensorflow_pattern_with_declared_layout(tmp_path: Path) -> None:
    """NHWC input -> Transpose -> Conv -> Transpose back -> Reshape -> MatMul + Add: the
    transposes cancel (layout) or fold into the weight columns (no permutation layer)."""
    body = [
        N("Transpose", ["x"], ["t"], perm=[0, 3, 1, 2]),
        N("Conv", ["t", "w"], ["c"], pads=[1, 1, 1, 1]),
        N("Relu", ["c"], ["r"]),
        N("Transpose", ["r"], ["rt"], perm=[0, 2, 3, 1]),
        N("Reshape", ["rt", "shape"], ["f"]),
        N("MatMul", ["f", "m"], ["mm"]),
        N("Add", ["mm", "b"], ["h"]),
    ]
    inits = {"w": rand(4, 3, 3, 3), "shape": np.array([-1, 64], dtype=np.int64),
             "m": rand(64, 5), "b": rand(5)}
    p = classifier(tmp_path, body, (4, 4, 3), "h", None, inits)
    model = _check(p, (4, 4, 3))
    nhwc = _check(p, (4, 4, 3), layout="nhwc")
    # declared layout: the file's transposes cancel or fold, no permutation layer is left
    assert not any(n.startswith("permute") for n, _ in nhwc.named_modules())
    x = torch.rand(5, 4, 4, 3)
    assert torch.allclose(model(x), nhwc(x.permute(0, 3, 1, 2)), atol=1e-6)


def test_transpose_that_cannot_fold_becomes_an_exact_permutation(tmp_path: Path) -> None:
    body = [N("Transpose", ["x"], ["t"], perm=[0, 1, 3, 2]), N("Conv", ["t", "w"], ["h"])]
    p = classifier(tmp_path, body, (2, 3, 4), "h", 3 * 2 * 1, {"w": rand(3, 2, 3, 3)})
    model = _check(p, (2, 3, 4))
    from boundkit.graph import capture

    assert "permute" in {n.op for n in capture(model, (2, 3, 4))}


def test_transpose_of_the_batch_axis_is_refused_where_samples_would_mix(tmp_path: Path) -> None:
    """The transpose itself is tracked (the batch moves to axis 1); flattened to [2, 3N],
    the head's Gemm would contract it: refused there, by name."""
    body = [N("Transpose", ["x"], ["h"], perm=[1, 0, 2], name="tb")]
    with pytest.raises(Exception, match=r"head_gemm.*Gemm.*batch.*mix"):
        load_onnx(classifier(tmp_path, body, (2, 3), "h", 6))


# ----------------------------------------------------------------------------- padding


def test_zero_pad_folds_into_conv_and_stands_alone_before_a_pool(tmp_path: Path) -> None:
    inits = {"pads": np.array([0, 0, 1, 0, 0, 0, 0, 1], dtype=np.int64), "w": rand(2, 2, 3, 3)}
    body = [N("Pad", ["x", "pads"], ["p"]), N("Conv", ["p", "w"], ["h"], pads=[0, 1, 1, 0])]
    p = classifier(tmp_path, body, (2, 5, 5), "h", 2 * 5 * 5, inits)
    model = _check(p, (2, 5, 5))
    assert not any(n.startswith("pad") for n, _ in model.named_modules())
    body = [N("Pad", ["x", "pads"], ["p"]), N("MaxPool", ["p"], ["h"], kernel_shape=[2, 2])]
    _check(classifier(tmp_path, body, (2, 5, 5), "h", 2 * 5 * 5, inits, name="b.onnx"),
           (2, 5, 5))
    zero = {"pads": np.zeros(8, dtype=np.int64)}
    body = [N("Pad", ["x", "pads"], ["p"]), N("AveragePool", ["p"], ["h"], kernel_shape=[2, 2])]
    _check(classifier(tmp_path, body, (2, 4, 4), "h", 2 * 3 * 3, zero, name="c.onnx"),
           (2, 4, 4))


@pytest.mark.parametrize("kw,inits", [
    ({"mode": "reflect"}, {}),
    ({}, {"v": np.array(1.0, dtype=np.float32)}),
])
def test_non_zero_padding_is_refused(tmp_path: Path, kw: dict, inits: dict) -> None:
    inits = {"pads": np.array([0, 0, 1, 1, 0, 0, 1, 1], dtype=np.int64), **inits}
    ins = ["x", "pads"] + (["v"] if "v" in inits else [])
    body = [N("Pad", ins, ["h"], name="the_pad", **kw)]
    with pytest.raises(Exception, match=r"m\.onnx.*the_pad.*Pad"):
        load_onnx(classifier(tmp_path, body, (2, 3, 3), "h", 50, inits))


# ----------------------------------------------------------------------------- arithmetic


@pytest.mark.parametrize("shape", [(), (3, 1, 1), (3, 4, 4), (1, 1, 4)])
def test_normalisation_by_constants_matches_onnxruntime(tmp_path: Path, shape: tuple) -> None:
    inits = {"m": rand(*shape) if shape else np.array(0.3, np.float32),
             "s": (np.abs(rand(*shape)) + 0.2) if shape else np.array(0.7, np.float32),
             "k": rand(*shape) if shape else np.array(-2.0, np.float32)}
    body = [N("Sub", ["x", "m"], ["a"]), N("Div", ["a", "s"], ["b"]),
            N("Mul", ["b", "k"], ["c"]), N("Add", ["m", "c"], ["d"]),
            N("Sub", ["k", "d"], ["h"])]
    _check(classifier(tmp_path, body, (3, 4, 4), "h", 48, inits), (3, 4, 4))


def test_constant_broadcasting_over_the_batch_is_refused(tmp_path: Path) -> None:
    body = [N("Add", ["x", "c"], ["h"], name="badd")]
    p = classifier(tmp_path, body, (3,), "h", 3, {"c": rand(2, 3)})
    with pytest.raises(Exception, match=r"badd.*Add"):
        load_onnx(p)


def test_concat_and_residual_add_match_onnxruntime(tmp_path: Path) -> None:
    body = [
        N("Conv", ["x", "w1"], ["a"], pads=[1, 1, 1, 1]),
        N("Relu", ["a"], ["ar"]),
        N("Add", ["ar", "x"], ["res"]),  # residual
        N("Conv", ["res", "w2"], ["b"], pads=[1, 1, 1, 1]),
        N("Concat", ["res", "b"], ["h"], axis=1),
    ]
    inits = {"w1": rand(2, 2, 3, 3), "w2": rand(3, 2, 3, 3)}
    model = _check(classifier(tmp_path, body, (2, 4, 4), "h", 5 * 16, inits), (2, 4, 4))
    g = capture(model, (2, 4, 4))
    assert {"add", "cat"} <= {n.op for n in g}


def test_identity_and_dropout_are_dropped(tmp_path: Path) -> None:
    body = [N("Identity", ["x"], ["i"]), N("Dropout", ["i"], ["d"], ratio=0.5),
            N("Relu", ["d"], ["h"])]
    _check(classifier(tmp_path, body, (4,), "h", 4, opset=11), (4,))


# ----------------------------------------------------------------------------- folding


def test_initialiser_only_subgraphs_and_shape_arithmetic_are_folded(tmp_path: Path) -> None:
    """The export of ``x.view(x.size(0), -1)`` (Shape, Gather, Unsqueeze, Concat, Reshape)
    and a weight computed from initialisers (Transpose, Mul, Cast)."""
    body = [
        N("Shape", ["x"], ["sh"]),
        N("Gather", ["sh", "zero"], ["n"], axis=0),
        N("Unsqueeze", ["n", "ax0"], ["n1"]),
        N("Concat", ["n1", "minus1"], ["target"], axis=0),
        N("Reshape", ["x", "target"], ["flat"]),
        N("Transpose", ["w0"], ["wt"], perm=[1, 0]),
        N("Constant", [], ["two"], value=helper.make_tensor("two", 1, [], [2.0])),
        N("Mul", ["wt", "two"], ["w"]),
        N("Cast", ["w"], ["wc"], to=1),
        N("MatMul", ["flat", "wc"], ["h"]),
    ]
    inits = {"zero": np.array(0, dtype=np.int64), "ax0": np.array([0], dtype=np.int64),
             "minus1": np.array([-1], dtype=np.int64), "w0": rand(4, 12)}
    _check(classifier(tmp_path, body, (3, 2, 2), "h", 4, inits), (3, 2, 2))


@pytest.mark.parametrize("op,match", [
    ("Add", r"batch_arith.*Add.*arithmetic on the batch size"),
    ("Sub", r"batch_arith.*Sub.*arithmetic on the batch size"),
    # a product by a positive integer is tracked (N * heads in attention exports): the
    # doubled batch then fits no reshape of the input
    ("Mul", r"'rs'.*Reshape.*\[2\*N, 6, 4\] does not fit"),
])
def test_arithmetic_on_the_batch_size_is_refused(tmp_path: Path, op: str, match: str) -> None:
    body = [
        N("Shape", ["x"], ["sh"]),
        N(op, ["sh", "two"], ["sh2"], name="batch_arith"),
        N("Reshape", ["x", "sh2"], ["h"], name="rs"),
    ]
    p = classifier(tmp_path, body, (3, 2), "h", 6, {"two": np.array(2, dtype=np.int64)})
    with pytest.raises(Exception, match=match) as info:
        load_onnx(p)
    assert "\n" not in str(info.value)


def test_fixed_batch_reshape_and_parallel_pads_into_convs(tmp_path: Path) -> None:
    """A fixed batch of one with Reshape [1, -1]; two Pad -> Conv branches whose pads fold
    into their own convolution (topological order interleaves them)."""
    pads = np.array([0, 0, 1, 1, 0, 0, 1, 1], dtype=np.int64)
    body = [
        N("Pad", ["x", "pads"], ["p1"]), N("Pad", ["x", "pads2"], ["p2"]),
        N("Conv", ["p1", "w"], ["c1"]), N("Conv", ["p2", "w"], ["c2"]),
        N("Add", ["c1", "c2"], ["a"]), N("Reshape", ["a", "shape"], ["h"]),
    ]
    inits = {"pads": pads, "pads2": pads.copy(), "w": rand(2, 2, 3, 3),
             "shape": np.array([1, -1], dtype=np.int64)}
    p = classifier(tmp_path, body, (2, 4, 4), "h", 32, inits, batch=1)
    model = _check(p, (2, 4, 4))
    assert not any(n.startswith("pad") for n, _ in model.named_modules())
    x = torch.rand(3, 2, 4, 4)
    assert model(x).shape == (3, 3)


def test_adding_a_tensor_to_itself_is_a_scaling_by_two(tmp_path: Path) -> None:
    """``h + h`` must not reach capture as an add with one distinct input (which it would
    treat as a 1-Lipschitz shift): the importer emits a scaling by 2."""
    body = [N("Gemm", ["x", "w"], ["z"], transB=1), N("Relu", ["z"], ["r"]),
            N("Add", ["r", "r"], ["h"])]
    p = classifier(tmp_path, body, (4,), "h", 6, {"w": rand(6, 4)})
    model = _check(p, (4,))
    g = capture(model, (4,))
    assert not [n for n in g if n.op == "identity" and n.attrs.get("shift")]
    assert not [n for n in g if n.op == "add" and len(n.inputs) < 2]


# ----------------------------------------------------------------------------- properties

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@st.composite
def _view_chains(draw: st.DrawFn) -> tuple[list, dict, tuple[int, ...], int]:
    """Random Transpose / Reshape / Flatten / Relu / Tanh / Add-constant chains on a small
    [N, 2, 3, 4] input, ending in a Gemm (the transposes must fold or be permuted exactly)."""
    shape = [2, 3, 4]
    nodes, inits, cur = [], {}, "x"
    for i in range(draw(st.integers(1, 5))):
        kind = draw(st.sampled_from(["T", "R", "F", "relu", "tanh", "add"]))
        out = f"v{i}"
        if kind == "T":
            perm = draw(st.permutations(range(len(shape))))
            nodes.append(N("Transpose", [cur], [out], perm=[0, *[p + 1 for p in perm]]))
            shape = [shape[p] for p in perm]
        elif kind == "R":
            new = draw(st.sampled_from([[24], [6, 4], [4, 6], [2, 12], [3, 8], [2, 3, 4],
                                        [4, 3, 2], [2, 2, 6]]))
            inits[f"s{i}"] = np.array([-1, *new], dtype=np.int64)
            nodes.append(N("Reshape", [cur, f"s{i}"], [out]))
            shape = list(new)
        elif kind == "F":
            nodes.append(N("Flatten", [cur], [out], axis=1))
            shape = [24]
        elif kind == "add":
            inits[f"c{i}"] = rand(*shape)
            nodes.append(N("Add", [cur, f"c{i}"], [out]))
        else:
            nodes.append(N("Relu" if kind == "relu" else "Tanh", [cur], [out]))
        cur = out
    nodes.append(N("Identity", [cur], ["h"]))
    return nodes, inits, (2, 3, 4), 24


@settings(max_examples=15, deadline=None)
@given(chain=_view_chains())
def test_any_regrouping_chain_matches_onnxruntime(chain, tmp_path_factory) -> None:
    nodes, inits, in_shape, numel = chain
    tmp = tmp_path_factory.mktemp("chain")
    _check(classifier(tmp, nodes, in_shape, "h", numel, inits), in_shape)
