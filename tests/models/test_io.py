"""save_model / load_model: bit-exact round trips and a clear ModelFileError for bad files."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from boundkit.errors import ModelFileError, NonFiniteParameterError
from boundkit.models import build_model, load_model, save_model
from boundkit.models.io import sidecar_path

PACKAGE = Path(__file__).parents[2] / "boundkit"


def _same(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]), k


@pytest.mark.parametrize("name", ["mlp_iris", "lenet5_bn", "digits_cnn", "cifar_nin_small_bn"])
def test_round_trip_bit_exact(tmp_path: Path, name: str) -> None:
    model = build_model(name, seed=1)
    for m in model.modules():  # non-trivial BN statistics
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
            m.num_batches_tracked.fill_(7)
    p = save_model(model, tmp_path / f"{name}.safetensors", arch=name, meta={"note": "x"})
    doc = json.loads(sidecar_path(p).read_text())
    assert doc["arch"] == name and doc["format"] == "boundkit-v1" and doc["meta"] == {"note": "x"}
    assert isinstance(doc["input_shape"], list) and isinstance(doc["num_classes"], int)
    loaded = load_model(p)
    assert not loaded.training
    _same(model, loaded)
    x = torch.rand(2, *doc["input_shape"])
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))


def test_float64_kept(tmp_path: Path) -> None:
    model = build_model("mlp_wine", seed=0).double()
    p = save_model(model, tmp_path / "w.safetensors", arch="mlp_wine")
    loaded = load_model(p)
    assert next(loaded.parameters()).dtype == torch.float64
    _same(model, loaded)


def test_safetensors_without_sidecar_needs_arch_or_header(tmp_path: Path) -> None:
    model = build_model("mlp_iris", seed=0)
    p = save_model(model, tmp_path / "m.safetensors", arch="mlp_iris")
    sidecar_path(p).unlink()
    _same(model, load_model(p))  # the arch is also in the safetensors header
    from safetensors.torch import save_file

    q = tmp_path / "bare.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(q))
    with pytest.raises(ModelFileError, match="arch="):
        load_model(q)
    _same(model, load_model(q, arch="mlp_iris"))


def test_state_dict_pt(tmp_path: Path) -> None:
    model = build_model("small_cnn", seed=0)
    p = tmp_path / "m.pt"
    torch.save(model.state_dict(), p)
    with pytest.raises(ModelFileError, match="needs an architecture"):
        load_model(p)
    _same(model, load_model(p, arch="small_cnn"))
    q = tmp_path / "ckpt.pth"
    wrapped = {f"module.{k}": v for k, v in model.state_dict().items()}
    torch.save({"state_dict": wrapped, "epoch": 3, "arch": "small_cnn"}, q)
    _same(model, load_model(q))


def test_missing_file_and_garbage(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match="no such model file"):
        load_model(tmp_path / "nope.safetensors", arch="mlp_iris")
    g = tmp_path / "g.safetensors"
    g.write_bytes(b"\x00" * 64)
    with pytest.raises(ModelFileError, match="not a readable safetensors"):
        load_model(g, arch="mlp_iris")
    t = tmp_path / "notes.txt"
    t.write_text("hello, I am not a model")
    with pytest.raises(ModelFileError, match="not a model file"):
        load_model(t, arch="mlp_iris")
    b = tmp_path / "junk.pt"
    b.write_bytes(b"PK\x03\x04 definitely not a zip")
    with pytest.raises(ModelFileError, match="not a readable PyTorch file"):
        load_model(b, arch="mlp_iris")
    lst = tmp_path / "list.pt"
    torch.save([torch.zeros(2)], lst)
    with pytest.raises(ModelFileError, match="not a state dict"):
        load_model(lst, arch="mlp_iris")


def test_unknown_arch(tmp_path: Path) -> None:
    p = tmp_path / "m.pt"
    torch.save(build_model("mlp_iris").state_dict(), p)
    with pytest.raises(ModelFileError, match="unknown architecture 'resnet9000'"):
        load_model(p, arch="resnet9000")


def test_missing_unexpected_misshaped_are_named(tmp_path: Path) -> None:
    sd = build_model("mlp_iris", seed=0).state_dict()
    p = tmp_path / "m.pt"
    bad = dict(sd)
    del bad["fc2.bias"]
    bad["extra.weight"] = torch.zeros(1)
    bad["fc1.weight"] = torch.zeros(6, 4)
    torch.save(bad, p)
    with pytest.raises(ModelFileError) as info:
        load_model(p, arch="mlp_iris")
    msg = str(info.value)
    assert "missing tensors ['fc2.bias']" in msg
    assert "unexpected tensors ['extra.weight']" in msg
    assert "fc1.weight: file (6, 4), architecture (5, 4)" in msg
    with pytest.raises(ModelFileError, match="mis-shaped"):
        load_model(p, arch="mlp_wine")


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_weights_named(tmp_path: Path, value: float) -> None:
    sd = build_model("mlp_iris", seed=0).state_dict()
    sd["fc2.weight"] = sd["fc2.weight"].clone()
    sd["fc2.weight"][1, 2] = value
    from safetensors.torch import save_file

    p = tmp_path / "m.safetensors"
    save_file(sd, str(p))
    with pytest.raises(ModelFileError, match="'fc2.weight' holds 1 non-finite") as info:
        load_model(p, arch="mlp_iris")
    assert isinstance(info.value, NonFiniteParameterError)


def test_save_refuses_nan_and_wrong_arch(tmp_path: Path) -> None:
    model = build_model("mlp_iris")
    with pytest.raises(ModelFileError, match="mis-shaped"):
        save_model(model, tmp_path / "a.safetensors", arch="mlp_wine")
    with pytest.raises(ValueError, match="unknown architecture"):
        save_model(model, tmp_path / "a.safetensors", arch="nope")
    with torch.no_grad():
        model.fc1.bias[0] = float("nan")
    with pytest.raises(NonFiniteParameterError):
        save_model(model, tmp_path / "a.safetensors", arch="mlp_iris")
    assert not (tmp_path / "a.safetensors").exists()


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (open, (str(self.marker), "w"))


def test_pickle_with_code_refused_never_executed(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    p = tmp_path / "evil.pt"
    torch.save({"fc1.weight": torch.zeros(5, 4), "payload": _Evil(marker)}, p)
    with pytest.raises(ModelFileError, match="refused by torch.load\\(weights_only=True\\)") as i:
        load_model(p, arch="mlp_iris")
    assert "never falls back" in str(i.value)
    assert not marker.exists()
    whole = tmp_path / "whole.pt"
    torch.save(build_model("mlp_iris"), whole)  # a pickled nn.Module
    with pytest.raises(ModelFileError, match="code objects"):
        load_model(whole, arch="mlp_iris")


def test_bad_sidecar(tmp_path: Path) -> None:
    p = save_model(build_model("mlp_iris"), tmp_path / "m.safetensors", arch="mlp_iris")
    sidecar_path(p).write_text("{not json")
    with pytest.raises(ModelFileError, match="not valid JSON"):
        load_model(p)
    sidecar_path(p).write_text(json.dumps({"arch": "mlp_iris", "format": "other"}))
    with pytest.raises(ModelFileError, match="format"):
        load_model(p)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_torchscript_is_opt_in(tmp_path: Path) -> None:
    model = build_model("digits_mlp", seed=0)
    scripted = torch.jit.script(model)
    p = tmp_path / "m.pt"
    scripted.save(str(p))
    with pytest.raises(ModelFileError, match="--trust-code"):
        load_model(p)
    loaded = load_model(p, trust_code=True)
    x = torch.rand(2, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert not load_model(p, allow_torchscript=True).training  # the older name
    ts = tmp_path / "m.ts"
    scripted.save(str(ts))
    with pytest.raises(ModelFileError, match="--trust-code"):  # a suffix grants no trust
        load_model(ts)
    assert not load_model(ts, trust_code=True).training
    fake = tmp_path / "fake.ts"
    fake.write_bytes(b"nope")
    with pytest.raises(ModelFileError, match="not a TorchScript archive"):
        load_model(fake)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_torchscript_nan_refused(tmp_path: Path) -> None:
    model = build_model("digits_mlp", seed=0)
    with torch.no_grad():
        model.fc2.weight[0, 0] = float("nan")
    p = tmp_path / "m.ts"
    torch.jit.script(model).save(str(p))
    with pytest.raises(ModelFileError, match="fc2.weight"):
        load_model(p, trust_code=True)


def test_onnx_missing_dependency_or_bad_file(tmp_path: Path) -> None:
    p = tmp_path / "m.onnx"
    p.write_bytes(b"not onnx")
    with pytest.raises(ModelFileError, match="onnx"):
        load_model(p)


def _torch_load_calls(tree: ast.AST) -> list[ast.Call]:
    return [
        n
        for n in ast.walk(tree)
        if isinstance(n, ast.Call)
        and isinstance(n.func, ast.Attribute)
        and n.func.attr == "load"
        and isinstance(n.func.value, ast.Name)
        and n.func.value.id == "torch"
    ]


def test_torch_load_always_weights_only() -> None:
    files = sorted((PACKAGE / "data").rglob("*.py")) + sorted((PACKAGE / "models").rglob("*.py"))
    seen = 0
    for f in files:
        text = f.read_text()
        for call in _torch_load_calls(ast.parse(text)):
            seen += 1
            kws = {k.arg: k.value for k in call.keywords}
            assert "weights_only" in kws, f"{f}:{call.lineno}: torch.load without weights_only"
            v = kws["weights_only"]
            assert isinstance(v, ast.Constant) and v.value is True, f"{f}:{call.lineno}"
        assert "pickle.load(" not in text and "pickle.loads(" not in text, f
        assert "allow_pickle=True" not in text, f
    assert seen >= 2  # models/io.py and data/user.py
