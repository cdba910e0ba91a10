"""The ONNX importer end to end: torch exports certify exactly like the hand-written model,
hostile files get a one-line error naming the problem, normalisation is data, and the
``onnx`` extra leaves torch alone."""

from __future__ import annotations

import importlib.metadata
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from onnx_helpers import classifier, export, rand  # noqa: E402

from boundkit.bounds import certify  # noqa: E402
from boundkit.errors import ModelFileError  # noqa: E402
from boundkit.graph import capture  # noqa: E402
from boundkit.models import load_model, load_onnx, normalize  # noqa: E402
from boundkit.models import onnx as onnx_mod  # noqa: E402
from boundkit.models.preprocess import parse_normalize  # noqa: E402

ROOT = Path(__file__).parents[2]
N = helper.make_node
OPSET = [helper.make_opsetid("", 13)]


class _Net(nn.Module):
    """A small CNN with the usual export quirks: ``view(x.size(0), -1)``, batch norm, a
    residual add, average pooling, a final log-softmax."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.c2 = nn.Conv2d(4, 4, 3, padding=1)
        self.pool = nn.AvgPool2d(2)
        self.fc = nn.Linear(4 * 4 * 4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn(self.c1(x)))
        h = h + torch.relu(self.c2(h))
        h = self.pool(h)
        return torch.log_softmax(self.fc(h.view(h.size(0), -1)), dim=1)


def _net() -> nn.Module:
    torch.manual_seed(0)
    net = _Net()
    with torch.no_grad():
        net.bn.running_mean.uniform_(-0.5, 0.5)
        net.bn.running_var.uniform_(0.5, 2.0)
    return net.eval()


def test_torch_export_certifies_exactly_like_the_hand_written_model(tmp_path: Path) -> None:
    net = _net()
    p = export(net, (1, 8, 8), tmp_path / "net.onnx")
    imported = load_model(p)
    x = torch.rand(6, 1, 8, 8)
    assert torch.allclose(imported(x), net(x), atol=1e-5)
    for method in ("sound", "sound-local"):
        a = certify(net, x, method).radius
        b = certify(imported, x, method).radius
        assert torch.allclose(a, b, rtol=1e-6), (method, a, b)


def test_certificates_of_an_imported_model_hold_against_the_attack(tmp_path: Path) -> None:
    from boundkit.attacks import attack

    net = _net()
    model = load_onnx(export(net, (1, 8, 8), tmp_path / "net.onnx"))
    x = torch.rand(8, 1, 8, 8)
    radius = certify(model, x, "sound-local").radius
    adv = attack(model, x, "ddn", budget=100)
    ok = torch.isfinite(adv.norm)
    assert ok.any()
    assert bool((radius[ok] <= adv.norm[ok]).all())


# ----------------------------------------------------------------------------- hostile files


def test_unsupported_operator_names_node_op_and_file(tmp_path: Path) -> None:
    p = classifier(tmp_path, [N("Sin", ["x"], ["h"], name="sinusoid")], (4,), "h", 4,
                   name="weird.onnx")
    with pytest.raises(ModelFileError, match=r"weird\.onnx.*'sinusoid'.*op Sin.*not supported"):
        load_model(p)


@pytest.mark.parametrize("payload", [b"", b"not onnx at all", b"\x08\x07\x12\x03abc\xff\xff"])
def test_garbage_files_get_a_one_line_error(tmp_path: Path, payload: bytes) -> None:
    p = tmp_path / "g.onnx"
    p.write_bytes(payload)
    with pytest.raises(ModelFileError) as err:
        load_onnx(p)
    assert "\n" not in str(err.value) and "g.onnx" in str(err.value)


def test_external_data_references_are_refused(tmp_path: Path) -> None:
    t = numpy_helper.from_array(rand(3, 4), name="w")
    t.ClearField("float_data")
    t.ClearField("raw_data")
    t.data_location = TensorProto.EXTERNAL
    e = t.external_data.add()
    e.key, e.value = "location", "../../etc/passwd"
    graph = helper.make_graph(
        [N("Gemm", ["x", "w"], ["y"], transB=1)], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])], initializer=[t])
    p = tmp_path / "ext.onnx"
    p.write_bytes(helper.make_model(graph, opset_imports=OPSET).SerializeToString())
    with pytest.raises(ModelFileError, match="external data"):
        load_onnx(p)


def test_declared_sizes_are_bounded_before_decoding(tmp_path: Path) -> None:
    t = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[1 << 20, 1 << 20])
    graph = helper.make_graph(
        [N("Gemm", ["x", "w"], ["y"], transB=1)], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])], initializer=[t])
    p = tmp_path / "huge.onnx"
    p.write_bytes(helper.make_model(graph, opset_imports=OPSET).SerializeToString())
    with pytest.raises(ModelFileError, match="too large"):
        load_onnx(p)
    graph = helper.make_graph(
        [N("Relu", ["x"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1 << 20, 1 << 20])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])])
    p.write_bytes(helper.make_model(graph, opset_imports=OPSET).SerializeToString())
    with pytest.raises(ModelFileError, match="too large"):
        load_onnx(p)


def test_a_model_with_two_inputs_or_a_symbolic_shape_is_refused(tmp_path: Path) -> None:
    graph = helper.make_graph(
        [N("Add", ["x", "z"], ["y"])], "g",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", 3]) for n in "xz"],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])])
    p = tmp_path / "two.onnx"
    p.write_bytes(helper.make_model(graph, opset_imports=OPSET).SerializeToString())
    with pytest.raises(ModelFileError, match="2 inputs"):
        load_onnx(p)
    graph = helper.make_graph(
        [N("Relu", ["x"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "C"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])])
    p.write_bytes(helper.make_model(graph, opset_imports=OPSET).SerializeToString())
    with pytest.raises(ModelFileError, match="symbolic"):
        load_onnx(p)


def test_a_mismatch_with_onnxruntime_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Sabotage the Tanh translation: the load-time check must catch it; check=False skips."""
    body = [N("Gemm", ["x", "w"], ["z"], transB=1), N("Tanh", ["z"], ["h"])]
    p = classifier(tmp_path, body, (4,), "h", 5, {"w": rand(5, 4)})
    monkeypatch.setattr(
        onnx_mod._Importer, "op_Tanh",
        lambda self, node, k: self.unary(self.dyn(node, 0), nn.Hardtanh(), "tanh"))
    with pytest.raises(ModelFileError, match="differs from onnxruntime"):
        load_onnx(p)
    load_onnx(p, check=False)


def test_fixed_batch_file_accepts_any_batch_and_regrouped_inputs(tmp_path: Path) -> None:
    """Like mnist-net_256x2: input [1, 784, 1] with a fixed batch of one."""
    body = [N("Flatten", ["x"], ["f"]), N("Relu", ["f"], ["h"])]
    p = classifier(tmp_path, body, (16, 1), "h", 16, batch=1)
    model = load_onnx(p, input_shape=(1, 4, 4))
    x = torch.rand(7, 1, 4, 4)
    ref = load_onnx(p)(x.reshape(7, 16, 1))
    assert torch.equal(model(x), ref)
    with pytest.raises(ModelFileError, match="regrouped"):
        load_onnx(p, input_shape=(3, 5))
    conv = classifier(tmp_path, [N("Relu", ["x"], ["h"])], (3, 2, 2), "h", 12, name="c.onnx")
    with pytest.raises(ModelFileError, match="nhwc"):
        load_onnx(conv, input_shape=(2, 2, 3))


# ----------------------------------------------------------------------------- normalisation


def test_normalize_prepends_exactly_x_minus_mean_over_std() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 2, 3), nn.Flatten(), nn.Linear(2 * 4 * 4, 4)).eval()
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    model = normalize(net, mean, std, (3, 6, 6))
    x = torch.rand(5, 3, 6, 6)
    m, s = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    assert torch.allclose(model(x), net((x - m) / s), atol=1e-5)
    g = capture(model, (3, 6, 6))
    assert g.nodes[1].op == "batchnorm"
    # a certificate in pixel space is the one in normalised space scaled by min(std) (as
    # float64 models: the float32 model's own rounding of the extra node is charged too)
    x64, m64, s64 = x.double(), m.double(), s.double()
    r_pix = certify(model.double(), x64, "sound").radius
    r_norm = certify(net.double(), (x64 - m64) / s64, "sound").radius
    assert bool((r_pix >= r_norm * min(std) * (1 - 1e-9)).all())


@pytest.mark.parametrize(
    "text,expected",
    [("0.5,0.25", ([0.5], [0.25])), ("0.1, 0.2, 0.3, 1, 2, 3", ([0.1, 0.2, 0.3], [1, 2, 3]))],
)
def test_parse_normalize_accepts_mean_std_lists(text: str, expected: tuple) -> None:
    assert parse_normalize(text) == expected


@pytest.mark.parametrize("text", ["", "0.5", "a,b", "1,2,3"])
def test_parse_normalize_refuses_bad_text(text: str) -> None:
    with pytest.raises(ValueError, match="normalize"):
        parse_normalize(text)


@pytest.mark.parametrize("std", [0.0, -1.0, float("nan")])
def test_normalize_refuses_non_positive_or_nan_std(std: float) -> None:
    with pytest.raises(ValueError, match="std"):
        normalize(nn.Linear(3, 2).eval(), 0.0, std, (3,))


# ----------------------------------------------------------------------------- install


def test_onnx_extra_never_pulls_another_torch() -> None:
    """The extras' packages do not depend on torch / torchvision (so installing them on the
    CPU torch leaves it in place), onnx2torch is gone, and importing the importer loads
    neither torchvision nor onnx2torch."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    names = [re.split(r"[<>=!~\[ ]", r)[0].lower() for r in extras["onnx"]]
    assert "onnx2torch" not in names and names
    for name in names:
        reqs = importlib.metadata.requires(name) or []
        assert not [r for r in reqs if re.match(r"(torch|torchvision)\b", r.lower())], name
    import boundkit.models.onnx  # noqa: F401

    assert "torchvision" not in sys.modules and "onnx2torch" not in sys.modules
    assert torch.__version__ == importlib.metadata.version("torch")


def test_loaded_arrays_are_checked_for_non_finite_values(tmp_path: Path) -> None:
    w = rand(3, 4)
    w[0, 0] = np.nan
    p = classifier(tmp_path, [N("Relu", ["x"], ["h"])], (4,), "h", 4, {"bad": w})
    with pytest.raises(ModelFileError, match="NaN"):
        load_onnx(p)


def test_huge_pads_are_refused_before_allocating(tmp_path: Path) -> None:
    huge = 1 << 20
    inits = {"pads": np.array([0, 0, huge, 0, 0, 0, 0, huge], dtype=np.int64)}
    body = [N("Pad", ["x", "pads"], ["p"], name="big_pad"),
            N("MaxPool", ["p"], ["h"], kernel_shape=[2, 2])]
    with pytest.raises(ModelFileError, match=r"big_pad.*too large"):
        load_onnx(classifier(tmp_path, body, (2, 4, 4), "h", 8, inits))
    body = [N("Conv", ["x", "w"], ["h"], pads=[huge] * 4, name="big_conv")]
    with pytest.raises(ModelFileError, match=r"big_conv.*too large"):
        load_onnx(classifier(tmp_path, body, (2, 4, 4), "h", 8, {"w": rand(2, 2, 3, 3)},
                             name="c.onnx"))


def test_a_value_defined_twice_is_refused(tmp_path: Path) -> None:
    body = [N("Relu", ["x"], ["h"]), N("Tanh", ["x"], ["h"], name="again")]
    with pytest.raises(ModelFileError, match=r"again.*already defined"):
        load_onnx(classifier(tmp_path, body, (4,), "h", None), check=False)
