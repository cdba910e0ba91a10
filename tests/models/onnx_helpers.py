"""Build small ONNX classifiers by hand (``onnx.helper``) or with ``torch.onnx.export``."""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

onnx = __import__("pytest").importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

RNG = np.random.default_rng(0)


def rand(*shape: int, scale: float = 0.5) -> np.ndarray:
    return (RNG.standard_normal(shape) * scale).astype(np.float32)


def classifier(
    tmp: Path,
    body: Sequence[object],
    in_shape: Sequence[int],
    feat: str,
    feat_numel: int | None,
    inits: dict[str, np.ndarray] | None = None,
    *,
    classes: int = 3,
    opset: int = 13,
    name: str = "m.onnx",
    batch: object = "N",
) -> Path:
    """``body`` maps input ``x`` to tensor ``feat``; a Flatten + Gemm head (when
    ``feat_numel`` is given) makes ``classes`` logits named ``logits``."""
    nodes = list(body)
    inits = dict(inits or {})
    out = feat
    if feat_numel is not None:
        inits["head_w"] = rand(classes, feat_numel)
        inits["head_b"] = rand(classes)
        nodes += [
            helper.make_node("Flatten", [feat], ["head_flat"], axis=1, name="head_flatten"),
            helper.make_node("Gemm", ["head_flat", "head_w", "head_b"], ["logits"], transB=1,
                             name="head_gemm"),
        ]
        out = "logits"
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, *in_shape])],
        [helper.make_tensor_value_info(
            out, TensorProto.FLOAT, [batch, classes] if feat_numel is not None else None)],
        initializer=[numpy_helper.from_array(v, name=k) for k, v in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model) if feat_numel is not None else None
    p = tmp / name
    p.write_bytes(model.SerializeToString())
    return p


def export(model: torch.nn.Module, in_shape: Sequence[int], path: Path) -> Path:
    """``torch.onnx.export`` (the TorchScript exporter: no onnxscript needed), batch axis
    dynamic, no constant folding (so that batch norms stay separate nodes and the shape
    arithmetic of ``view(x.size(0), -1)`` is left for the importer to fold)."""
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model.eval(), (torch.zeros(1, *in_shape),), buf, dynamo=False,
            input_names=["x"], output_names=["logits"],
            dynamic_axes={"x": {0: "N"}, "logits": {0: "N"}}, opset_version=13,
            do_constant_folding=False,
        )
    path.write_bytes(buf.getvalue())
    return path


def ort_logits(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x.astype(np.float32)})[0]


def hostile(
    tmp: Path,
    nodes: Sequence[object],
    inits: dict[str, np.ndarray] | None = None,
    *,
    out: str = "y",
    in_shape: Sequence[int] = (4,),
    opset: int | None = 13,
    name: str = "hostile.onnx",
) -> Path:
    """A file as a hostile user would write it: ``nodes`` as given (no checker), input
    ``x [N, *in_shape]``, output ``out``; ``opset=None`` declares none."""
    graph = helper.make_graph(
        list(nodes), "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *in_shape])],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)],
        initializer=[numpy_helper.from_array(np.asarray(v), name=k)
                     for k, v in (inits or {}).items()],
    )
    ops = [] if opset is None else [helper.make_opsetid("", opset)]
    model = helper.make_model(graph, opset_imports=ops)
    model.ir_version = 8
    p = tmp / name
    p.write_bytes(model.SerializeToString())
    return p


def check_import(path: Path, in_shape: tuple[int, ...], ops: set[str]) -> torch.nn.Module:
    """Import ``path`` natively, match onnxruntime to 1e-5 relative (40 inputs), and capture
    it with known node kinds only, ``ops`` among them; returns the imported model."""
    from boundkit.graph import capture
    from boundkit.models.onnx import compare_with_onnxruntime, load_onnx

    model = load_onnx(path)
    res = compare_with_onnxruntime(model, path, 40, seed=7)
    assert res.max_rel_error <= 1e-5, res
    kinds = {n.op for n in capture(model, in_shape)}
    assert "unknown" not in kinds and ops <= kinds, kinds
    return model
