"""``boundkit certify/attack --model x.onnx`` with ``--normalize`` and ``--layout``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from onnx import helper  # noqa: E402
from onnx_helpers import classifier, rand  # noqa: E402

from boundkit.bounds import certify  # noqa: E402
from boundkit.cli import EXIT_BAD_INPUT, EXIT_OK, main  # noqa: E402
from boundkit.models import load_onnx, normalize  # noqa: E402

N = helper.make_node


def _data(tmp: Path, c: int = 1) -> tuple[Path, np.ndarray]:
    x = np.random.default_rng(1).random((6, c, 4, 4)).astype(np.float32)
    f = tmp / "d.npz"
    np.savez(f, x=x, y=np.zeros(6, dtype=np.int64))
    return f, x


def _radius(out: Path) -> np.ndarray:
    return np.array(json.loads(out.read_text())["samples"]["radius"]["sound"])


def test_cli_normalize_and_flat_onnx_input_match_the_python_api(tmp_path: Path, capsys) -> None:
    body = [N("Gemm", ["x", "w", "b"], ["z"], transB=1), N("Relu", ["z"], ["h"])]
    p = classifier(tmp_path, body, (16,), "h", 8, {"w": rand(8, 16), "b": rand(8)})
    data, x = _data(tmp_path)
    out = tmp_path / "c.json"
    code = main(["certify", "--model", str(p), "--data", str(data), "--method", "sound",
                 "--normalize", "0.5,0.25", "--out", str(out), "--quiet"])
    assert code == EXIT_OK, capsys.readouterr().err
    model = normalize(load_onnx(p, input_shape=(1, 4, 4)), 0.5, 0.25, (1, 4, 4))
    expected = certify(model, torch.from_numpy(x), "sound").radius.numpy()
    assert np.allclose(_radius(out), expected, rtol=1e-9)
    without = tmp_path / "c0.json"
    assert main(["certify", "--model", str(p), "--data", str(data), "--method", "sound",
                 "--out", str(without), "--quiet"]) == EXIT_OK
    assert not np.allclose(_radius(out), _radius(without))


def test_cli_layout_nhwc_takes_nchw_data(tmp_path: Path, capsys) -> None:
    body = [N("Transpose", ["x"], ["t"], perm=[0, 3, 1, 2]),
            N("Conv", ["t", "w"], ["c"], pads=[1, 1, 1, 1]), N("Relu", ["c"], ["h"])]
    p = classifier(tmp_path, body, (4, 4, 2), "h", 32, {"w": rand(2, 2, 3, 3)})
    data, _ = _data(tmp_path, 2)
    out = tmp_path / "c.json"
    assert main(["certify", "--model", str(p), "--data", str(data), "--method", "sound",
                 "--layout", "nhwc", "--out", str(out), "--quiet"]) == EXIT_OK, \
        capsys.readouterr().err
    assert (_radius(out) > 0).all()
    # without the declared layout the NCHW data does not fit the NHWC file: a clear error
    assert main(["certify", "--model", str(p), "--data", str(data), "--method", "sound",
                 "--out", str(out), "--quiet"]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "nhwc" in err and "Traceback" not in err


@pytest.mark.parametrize("text", ["1,2,3", "x,y", "0.5,0"])
def test_cli_bad_normalize_is_a_one_line_error(tmp_path: Path, capsys, text: str) -> None:
    body = [N("Relu", ["x"], ["h"])]
    p = classifier(tmp_path, body, (16,), "h", 16)
    data, _ = _data(tmp_path)
    code = main(["certify", "--model", str(p), "--data", str(data), "--normalize", text,
                 "--out", str(tmp_path / "c.json"), "--quiet"])
    assert code == EXIT_BAD_INPUT
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and "normali" in err[0], err


def test_cli_onnx_memory_limits_and_per_sample_status(tmp_path: Path, capsys) -> None:
    """``--onnx-max-total-mib`` / ``--onnx-max-tensor-mib`` reach the importer (a too small
    budget is the one-line exit-2 error naming the limit); results list each sample's
    status."""
    p = classifier(tmp_path, [N("Flatten", ["x"], ["h"], axis=1)], (1, 4, 4), "h", 16)
    data, _ = _data(tmp_path)
    base = ["certify", "--model", str(p), "--data", str(data), "--quiet"]
    out = tmp_path / "c.json"
    assert main([*base, "--out", str(out), "--onnx-max-total-mib", "64"]) == EXIT_OK
    doc = json.loads(out.read_text())
    assert doc["samples"]["status"] == {"sound": ["OK"] * 6}
    for opt, limit in (("--onnx-max-total-mib", "max_total_bytes"),
                       ("--onnx-max-tensor-mib", "max_tensor_bytes")):
        capsys.readouterr()
        assert main([*base, "--out", str(tmp_path / "d.json"), opt, "0.0001"]) == \
            EXIT_BAD_INPUT
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and limit in err[0] and str(p) in err[0], err
    assert main([*base, "--out", str(tmp_path / "d.json"), "--onnx-max-total-mib", "-1"]) == \
        EXIT_BAD_INPUT
