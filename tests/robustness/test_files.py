"""Hostile and broken files: model files (safetensors, sidecars, pickles, TorchScript),
data files (.npz, .pt) and results files (report). Nothing executes, nothing allocates what
the file does not back, every refusal is one line naming the file and the problem."""

from __future__ import annotations

import json
import os
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from boundkit.data import DatasetError, load_tensor_file
from boundkit.errors import ModelFileError, UntrustedCodeError
from boundkit.models import build_model, load_model, save_model
from boundkit.models.io import MAX_PARAMETERS, sidecar_path
from boundkit.report.io import ResultsFileError, read_json

from .conftest import expect_error, header_doc, write_safetensors

# ------------------------------------------------------------------------- safetensors


@pytest.mark.parametrize("keep", [0, 1, 7, 8, 9, 20, 100, -1000, -4, -1])
def test_truncated_safetensors(models: Path, keep: int) -> None:
    p = models / "mlp.safetensors"
    raw = p.read_bytes()
    p.write_bytes(raw[:keep])
    expect_error(lambda: load_model(p), str(p.name), kind=ModelFileError)


@pytest.mark.parametrize("seed", range(8))
def test_random_bytes_as_model(tmp_path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for suffix in (".safetensors", ".pt", ".bin"):
        p = tmp_path / f"r{seed}{suffix}"
        p.write_bytes(rng.bytes(int(rng.integers(1, 4096))))
        expect_error(lambda p=p: load_model(p, arch="digits_mlp"), p.name, kind=ModelFileError)


@settings(max_examples=60, suppress_health_check=list(HealthCheck))
@given(st.binary(min_size=0, max_size=300))
def test_property_any_bytes_load_or_refuse(tmp_path_factory, data: bytes) -> None:
    p = tmp_path_factory.mktemp("fuzz") / "m.safetensors"
    p.write_bytes(data)
    with pytest.raises(ModelFileError):
        load_model(p, arch="digits_mlp")


def _hostile(models: Path, mutate) -> Path:
    p = models / "mlp.safetensors"
    header, data = header_doc(p)
    out = mutate(header, data)
    if isinstance(out, tuple):
        header, data = out
    write_safetensors(p, header, data)
    return p


def _first(h: dict) -> str:
    return next(k for k in h if k != "__metadata__")


HOSTILE_HEADERS = {
    "huge-shape": lambda h, d: h[_first(h)].update(shape=[10**6, 10**6]),
    "negative-dim": lambda h, d: h[_first(h)].update(shape=[-1, 64]),
    "float-dim": lambda h, d: h[_first(h)].update(shape=[64.5, 64]),
    "offsets-past-end": lambda h, d: h[_first(h)].update(data_offsets=[0, 10**12]),
    "offsets-reversed": lambda h, d: h[_first(h)].update(data_offsets=[100, 10]),
    "offsets-missing": lambda h, d: h[_first(h)].pop("data_offsets"),
    "dtype-unknown": lambda h, d: h[_first(h)].update(dtype="Q99"),
    "dtype-int-for-weights": lambda h, d: h[_first(h)].update(dtype="I32"),
    "entry-not-object": lambda h, d: h.update({_first(h): [1, 2, 3]}),
    "metadata-not-strings": lambda h, d: h.update({"__metadata__": {"arch": 3}}),
    "header-arch-other": lambda h, d: h["__metadata__"].update(arch="digits_cnn"),
    "header-kwargs-other": lambda h, d: h["__metadata__"].update(
        arch_kwargs=json.dumps({"sizes": [64, 32, 10]})),
    "header-kwargs-garbage": lambda h, d: h["__metadata__"].update(arch_kwargs="{nope"),
    "missing-tensor": lambda h, d: h.pop(_first(h)),
}


@pytest.mark.parametrize("name", sorted(HOSTILE_HEADERS))
def test_hostile_safetensors_header(models: Path, name: str) -> None:
    p = _hostile(models, HOSTILE_HEADERS[name])
    expect_error(lambda: load_model(p), "mlp.safetensors", kind=ModelFileError)


@pytest.mark.parametrize("length", [2**63, 2**40, 10**8 + 1, 0])
def test_oversized_or_zero_header_length(models: Path, length: int) -> None:
    p = models / "mlp.safetensors"
    header, data = header_doc(p)
    write_safetensors(p, header, data, length=length)
    expect_error(lambda: load_model(p), kind=ModelFileError)


def test_non_finite_weights_named(models: Path) -> None:
    from safetensors.torch import load_file, save_file

    p = models / "mlp.safetensors"
    sd = load_file(str(p))
    k = sorted(sd)[0]
    sd[k][0] = float("nan")
    save_file(sd, str(p), metadata={"arch": "digits_mlp", "format": "boundkit-v1"})
    expect_error(lambda: load_model(p), k, "NaN", kind=ModelFileError)


# ------------------------------------------------------------------------------ sidecars
def _sidecar(models: Path, **change) -> Path:
    p = models / "mlp.safetensors"
    side = sidecar_path(p)
    doc = json.loads(side.read_text())
    doc.update(change)
    side.write_text(json.dumps(doc))
    return p


SIDECARS = {
    "other-arch": {"arch": "digits_cnn"},
    "other-arch-same-size": {"arch": "mlp_mnist_tiny"},
    "unknown-arch": {"arch": "resnet9000"},
    "arch-not-str": {"arch": 7},
    "no-arch": {"arch": None},
    "format": {"format": "pickle-v9"},
    "kwargs-list": {"arch_kwargs": [1, 2]},
    "kwargs-unknown-key": {"arch_kwargs": {"depth": 3}},
    "kwargs-other-sizes": {"arch_kwargs": {"sizes": [64, 32, 10]}},
    "kwargs-huge-layer": {"arch_kwargs": {"sizes": [64, 10**7, 10]}},
    "kwargs-giant-number": {"arch_kwargs": {"sizes": [64, 10**30, 10]}},
    "kwargs-many-numbers": {"arch_kwargs": {"sizes": list(range(5000))}},
    "kwargs-object": {"arch_kwargs": {"activation": {"__class__": "os.system"}}},
    "num-classes": {"num_classes": 7},
    "input-shape": {"input_shape": [3, 32, 32]},
    "meta-list": {"meta": [1, 2]},
}


@pytest.mark.parametrize("name", sorted(SIDECARS))
def test_sidecar_disagreeing_or_hostile(models: Path, name: str) -> None:
    p = _sidecar(models, **SIDECARS[name])
    expect_error(lambda: load_model(p), kind=ModelFileError)


@pytest.mark.parametrize("arch, sizes, word", [
    ("mlp_mnist_tiny", [784, 10**7, 10], "ceiling"),  # 7.8e9 parameters: 31 GB
    ("digits_mlp", [64, 10**7, 10], "mis-shaped"),  # 6.4e8: below the ceiling, shapes differ
])
def test_400_byte_sidecar_cannot_allocate_gigabytes(tmp_path: Path, arch: str, sizes: list,
                                                    word: str) -> None:
    """The issue's example: arch_kwargs asking for a 10^7-unit layer (31 GB) over small
    weights. Refused from the meta-device build, before anything is allocated."""
    import resource

    m = build_model(arch, seed=0)
    p = save_model(m, tmp_path / "m.safetensors", arch=arch)
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in m.state_dict().items()}, str(p))  # no header arch
    side = sidecar_path(p)
    doc = json.loads(side.read_text())
    doc["arch_kwargs"] = {"sizes": sizes}
    side.write_text(json.dumps(doc))
    assert side.stat().st_size < 400
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    expect_error(lambda: load_model(p), word, kind=ModelFileError)
    grown_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown_kb < 200_000  # far below the 31 GB the architecture would take
    assert MAX_PARAMETERS < 784 * 10**7


def test_sidecar_size_below_ceiling_but_shapes_differ(tmp_path: Path) -> None:
    """Below the ceiling, the shapes are compared with the header before allocation."""
    m = build_model("digits_mlp", seed=0)
    p = save_model(m, tmp_path / "m.safetensors", arch="digits_mlp")
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in m.state_dict().items()}, str(p))
    side = sidecar_path(p)
    doc = json.loads(side.read_text())
    doc["arch_kwargs"] = {"sizes": [64, 10**6, 10]}
    side.write_text(json.dumps(doc))
    expect_error(lambda: load_model(p), "mis-shaped", kind=ModelFileError)


def test_header_architecture_wins_or_errors_never_silently(models: Path) -> None:
    """Same tensor shapes, another architecture named by the sidecar: refused."""
    m = build_model("mlp_mnist_tiny", seed=0)
    p = save_model(m, models / "tiny.safetensors", arch="mlp_mnist_tiny")
    side = sidecar_path(p)
    doc = json.loads(side.read_text())
    doc.update(arch="digits_mlp", input_shape=[1, 8, 8])
    side.write_text(json.dumps(doc))
    expect_error(lambda: load_model(p), "mlp_mnist_tiny", "digits_mlp", kind=ModelFileError)
    expect_error(lambda: load_model(p, arch="digits_cnn"), "digits_cnn", kind=ModelFileError)


@pytest.mark.parametrize("content", [b"", b"{", b"[]", b"null", b"\xff\xfe", b'{"a": 1}'])
def test_broken_sidecar_text(models: Path, content: bytes) -> None:
    p = models / "mlp.safetensors"
    sidecar_path(p).write_bytes(content)
    expect_error(lambda: load_model(p), "sidecar", kind=ModelFileError)


def test_huge_sidecar_is_not_parsed(models: Path) -> None:
    p = models / "mlp.safetensors"
    with open(sidecar_path(p), "wb") as fh:
        fh.truncate(11 * 2**20)
    expect_error(lambda: load_model(p), "sidecar", kind=ModelFileError)


# ------------------------------------------------------------------- code-bearing formats
class _Payload:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".bin", ".ckpt"])
def test_pickle_with_code_never_runs(tmp_path: Path, suffix: str, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    p = tmp_path / f"evil{suffix}"
    with open(p, "wb") as fh:
        pickle.dump({"fc.weight": _Payload()}, fh)
    expect_error(lambda: load_model(p, arch="digits_mlp"), kind=ModelFileError)
    torch.save({"w": _Payload()}, p)
    expect_error(lambda: load_model(p, arch="digits_mlp"), "weights_only", kind=ModelFileError)
    assert not (tmp_path / "PWNED").exists()


def test_whole_pickled_module_refused(tmp_path: Path) -> None:
    p = tmp_path / "whole.pt"
    torch.save(build_model("digits_mlp"), p)
    expect_error(lambda: load_model(p), "weights_only", kind=ModelFileError)


@pytest.mark.parametrize("name", ["mlp.ts", "mlp.torchscript", "mlp.pt", "mlp.zip", "mlp"])
def test_torchscript_never_runs_without_trust(models: Path, name: str) -> None:
    """A suffix grants nothing: .ts and .torchscript need trust_code like any other name."""
    p = models / name
    if name != "mlp.ts":
        (models / "mlp.ts").rename(p)
    expect_error(lambda: load_model(p), "--trust-code", kind=UntrustedCodeError)
    assert not load_model(p, trust_code=True).training


def test_zip_that_is_not_torchscript(tmp_path: Path) -> None:
    p = tmp_path / "m.pt"
    with zipfile.ZipFile(p, "w") as zf:
        zf.writestr("archive/data.pkl", b"\x80\x04garbage")
    expect_error(lambda: load_model(p, arch="digits_mlp"), kind=ModelFileError)


@pytest.mark.parametrize("what", ["dir", "missing", "empty"])
def test_not_a_file(tmp_path: Path, what: str) -> None:
    p = tmp_path / "m.safetensors"
    if what == "dir":
        p.mkdir()
    elif what == "empty":
        p.write_bytes(b"")
    expect_error(lambda: load_model(p), str(p.name), kind=ModelFileError)


def test_unreadable_file(models: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root reads everything")
    p = models / "mlp.safetensors"
    p.chmod(0)
    expect_error(lambda: load_model(p), kind=ModelFileError)


@pytest.mark.parametrize("device", ["cuda", "cuda:3", "meta", "nonsense"])
def test_load_model_device(models: Path, device: str) -> None:
    if device.startswith("cuda") and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    from boundkit.errors import DeviceError

    expect_error(lambda: load_model(models / "mlp.safetensors", device=device),
                 kind=DeviceError)


@pytest.mark.parametrize("arch", ["digits_cnn", "linear_mnist", "nope"])
def test_state_dict_with_wrong_arch(models: Path, arch: str) -> None:
    expect_error(lambda: load_model(models / "mlp.pt", arch=arch), arch, kind=ModelFileError)


# ----------------------------------------------------------------------------- data files
def _npz(tmp_path: Path, **arrays) -> Path:
    p = tmp_path / "d.npz"
    np.savez(p, **arrays)
    return p


X = np.random.default_rng(0).random((5, 4)).astype(np.float32)
Y = np.arange(5) % 3

BAD_DATA = {
    "no-y": lambda t: _npz(t, x=X),
    "no-x": lambda t: _npz(t, y=Y),
    "1d-x": lambda t: _npz(t, x=X[:, 0], y=Y),
    "empty-x": lambda t: _npz(t, x=X[:0], y=Y[:0]),
    "nan-x": lambda t: _npz(t, x=np.where(X > 0.5, np.nan, X), y=Y),
    "inf-x": lambda t: _npz(t, x=np.where(X > 0.5, np.inf, X), y=Y),
    "range-x": lambda t: _npz(t, x=X * 300, y=Y),
    "neg-x": lambda t: _npz(t, x=-X, y=Y),
    "str-x": lambda t: _npz(t, x=np.array([["a"] * 4] * 5), y=Y),
    "complex-x": lambda t: _npz(t, x=X.astype(np.complex64), y=Y),
    "y-length": lambda t: _npz(t, x=X, y=Y[:3]),
    "y-negative": lambda t: _npz(t, x=X, y=-Y - 1),
    "y-fraction": lambda t: _npz(t, x=X, y=Y + 0.5),
    "y-bool": lambda t: _npz(t, x=X, y=Y > 0),
    "object-array": lambda t: (t / "o.npz", np.savez(t / "o.npz", x=np.array([X, None],
                                                                               dtype=object),
                                                     y=Y))[0],
    "truncated-npz": lambda t: (lambda p: (p.write_bytes(p.read_bytes()[:200]), p)[1])(
        _npz(t, x=X, y=Y)),
    "random-npz": lambda t: (t / "r.npz", (t / "r.npz").write_bytes(os.urandom(512)))[0],
    "empty-file": lambda t: (t / "e.npz", (t / "e.npz").write_bytes(b""))[0],
    "csv-suffix": lambda t: (t / "d.csv", (t / "d.csv").write_text("1,2,3\n"))[0],
    "pt-code": lambda t: (t / "c.pt", torch.save({"x": _Payload()}, t / "c.pt"))[0],
    "pt-garbage": lambda t: (t / "g.pt", (t / "g.pt").write_bytes(os.urandom(300)))[0],
    "pt-not-dict": lambda t: (t / "l.pt", torch.save([torch.rand(2)], t / "l.pt"))[0],
    "pt-x-not-tensor": lambda t: (t / "n.pt", torch.save({"x": [1.0], "y": torch.zeros(1)},
                                                          t / "n.pt"))[0],
    "missing": lambda t: t / "nope.npz",
}


@pytest.mark.parametrize("name", sorted(BAD_DATA))
def test_bad_data_file(tmp_path: Path, name: str, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    p = BAD_DATA[name](tmp_path)
    expect_error(lambda: load_tensor_file(p), kind=DatasetError)
    assert not (tmp_path / "PWNED").exists()


def _npy_header_bomb(tmp_path: Path, shape: tuple) -> Path:
    """An .npz whose x.npy header announces ``shape`` but holds 16 bytes."""
    import io

    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f4", "fortran_order": False,
                                               "shape": shape})
    p = tmp_path / "bomb.npz"
    with zipfile.ZipFile(p, "w") as zf:
        zf.writestr("x.npy", buf.getvalue() + b"\0" * 16)
        zf.writestr("y.npy", _npy_bytes(np.zeros(2, dtype=np.int64)))
    return p


def _npy_bytes(a: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


@pytest.mark.parametrize("shape", [(10**6, 10**6), (2**40, 1), (10**5, 1, 28, 28)])
def test_npz_header_bomb_refused_before_allocation(tmp_path: Path, shape: tuple) -> None:
    p = _npy_header_bomb(tmp_path, shape)
    expect_error(lambda: load_tensor_file(p), "announces", kind=DatasetError)


# -------------------------------------------------------------------------- results files
def _doc() -> dict:
    return {"kind": "certify", "meta": {}, "samples": {
        "index": [0, 1], "label": [1, 2], "prediction": [1, 0],
        "radius": {"sound": [0.1, "inf"]}, "attack_norm": {}}, "summary": {}}


def _mut(f):
    d = _doc()
    f(d)
    return d


BAD_RESULTS = {
    "list": [1, 2],
    "no-kind": {"samples": {}},
    "kind-unknown": {"kind": "exploit"},
    "no-samples": {"kind": "certify"},
    "index-not-list": _mut(lambda d: d["samples"].update(index=5)),
    "prediction-short": _mut(lambda d: d["samples"].update(prediction=[1])),
    "prediction-str": _mut(lambda d: d["samples"].update(prediction=["a", "b"])),
    "label-short": _mut(lambda d: d["samples"].update(label=[1])),
    "radius-short": _mut(lambda d: d["samples"]["radius"].update(sound=[0.1])),
    "radius-str": _mut(lambda d: d["samples"]["radius"].update(sound=["x", 1])),
    "radius-not-dict": _mut(lambda d: d["samples"].update(radius=[1, 2])),
    "success-not-bool": _mut(lambda d: d["samples"].update(attack_success=[1, 0])),
    "violation-bad": _mut(lambda d: d.update(violations=[{"method": 3}])),
    "traces-mismatch": _mut(lambda d: d.update(traces={"sound": {"nodes": ["a"],
                                                                  "values": []}})),
    "traces-short": _mut(lambda d: d.update(traces={"sound": {"nodes": ["a"],
                                                               "values": [[1.0]]}})),
    "meta-list": _mut(lambda d: d.update(meta=[1])),
    "radius-negative": _mut(lambda d: d["samples"]["radius"].update(sound=[-0.1, 1.0])),
    "radius-minus-inf": _mut(lambda d: d["samples"]["radius"].update(sound=["-inf", 1.0])),
    "norm-huge": _mut(lambda d: d["samples"].update(attack_norm={"best": [1e308, 1.0]})),
    "exact-negative": _mut(lambda d: d["samples"].update(exact=[1.0, -2.0])),
    "summary-not-dict": _mut(lambda d: d.update(summary=[1])),
    "summary-methods-int": _mut(lambda d: d.update(summary={"methods": 5})),
    "summary-method-str": _mut(lambda d: d.update(summary={"methods": {"sound": {
        "median_radius": "big"}}})),
    "summary-accuracy-2": _mut(lambda d: d.update(summary={"accuracy": 2.0})),
    "summary-n-str": _mut(lambda d: d.update(summary={"n": "2"})),
    "violation-message-int": _mut(lambda d: d.update(violations=[
        {"method": "sound", "index": 0, "message": 3}])),
    "violations-dict": _mut(lambda d: d.update(violations={"a": 1})),
    "exact-note-list": _mut(lambda d: d.update(exact_note=["x"])),
    "compare-median-negative": {"kind": "compare", "models": [
        {"name": "a", "median_radius": {"sound": -1}, "median_attack_norm": 1.0}],
        "results": {"a": _doc()}},
    "compare-accuracy-str": {"kind": "compare", "models": [
        {"name": "a", "accuracy": "high", "median_attack_norm": 1.0}],
        "results": {"a": _doc()}},
    "compare-empty": {"kind": "compare", "models": [], "results": {}},
    "compare-missing": {"kind": "compare", "models": [{"name": "a"}], "results": {}},
    "compare-bad-sub": {"kind": "compare", "models": [{"name": "a"}],
                        "results": {"a": {"kind": "certify"}}},
}


@pytest.mark.parametrize("name", sorted(BAD_RESULTS))
def test_bad_results_document(tmp_path: Path, name: str) -> None:
    p = tmp_path / "r.json"
    p.write_text(json.dumps(BAD_RESULTS[name]))
    expect_error(lambda: read_json(p), kind=ResultsFileError)


@pytest.mark.parametrize("content", [b"", b"\x00\x01binary", b"{" * 100_000, b"nan",
                                     b'"string"'],
                         ids=["empty", "binary", "deep", "nan", "string"])
def test_garbage_results_file(tmp_path: Path, content: bytes) -> None:
    p = tmp_path / "r.json"
    p.write_bytes(content)
    expect_error(lambda: read_json(p), kind=ResultsFileError)


_VALUES = st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True),
                    st.sampled_from(["inf", "-inf", "x"]), st.integers(-3, 3))


@settings(max_examples=8, suppress_health_check=list(HealthCheck), deadline=None)
@given(st.integers(0, 3).flatmap(lambda n: st.fixed_dictionaries({
    "n": st.just(n),
    "radius": st.lists(_VALUES, min_size=n, max_size=n),
    "norm": st.lists(_VALUES, min_size=n, max_size=n),
    "pred": st.lists(st.integers(0, 9), min_size=n, max_size=n),
    "kind": st.sampled_from(["certify", "attack", "crosscheck"]),
})))
def test_property_any_results_document_renders_or_is_refused(tmp_path_factory, d) -> None:
    """Random values in a results document: read_json refuses it with a ResultsFileError
    naming the field, or the whole report (figures included) renders."""
    from boundkit.report import render_report

    doc = {"kind": d["kind"], "samples": {
        "index": list(range(d["n"])), "prediction": d["pred"],
        "radius": {"sound": d["radius"]}, "attack_norm": {"best": d["norm"]}}}
    try:
        checked = read_json(doc)
    except ResultsFileError:
        return
    paths = render_report(checked, tmp_path_factory.mktemp("rep"))
    assert paths["html"].is_file()


def test_good_results_document_reads(tmp_path: Path) -> None:
    from boundkit.report.io import write_json

    p = write_json(_doc(), tmp_path / "r.json")
    assert read_json(p)["samples"]["radius"]["sound"][1] == float("inf")
