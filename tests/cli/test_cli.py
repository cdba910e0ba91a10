"""The ``boundkit`` command line, run in-process with ``main([...])``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from boundkit.cli import EXIT_BAD_INPUT, EXIT_OK, EXIT_VIOLATION, main

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def _nonempty(p: Path) -> None:
    assert p.is_file(), p
    assert p.stat().st_size > 0, p


def test_help_teaches(capsys):
    assert main(["--help"]) == EXIT_OK
    out = capsys.readouterr().out
    assert "examples:" in out and "exit codes" in out and "crosscheck" in out
    for cmd in ("certify", "attack", "crosscheck", "compare", "train", "report", "demo"):
        assert main([cmd, "--help"]) == EXIT_OK
        assert "example" in capsys.readouterr().out


def test_usage_error_is_exit_2(capsys):
    assert main(["certify"]) == EXIT_BAD_INPUT
    assert main(["no-such-command"]) == EXIT_BAD_INPUT


def test_train_writes_model_and_sidecar(models_dir: Path):
    for name in ("digits_mlp", "digits_cnn"):
        _nonempty(models_dir / f"{name}.safetensors")
        meta = json.loads((models_dir / f"{name}.json").read_text())["meta"]
        assert meta["test_accuracy"] > 0.5


def test_certify_json(mlp_file: Path, tmp_path: Path, capsys):
    out = tmp_path / "cert.json"
    code = main(["certify", "--model", str(mlp_file), "--data", "digits", "--n", "20",
                 "--method", "both", "--out", str(out), "--json"])
    assert code == EXIT_OK
    summary = json.loads(capsys.readouterr().out)
    assert summary["n"] == 20 and set(summary["methods"]) == {"sound", "peck2017"}
    doc = json.loads(out.read_text())
    assert doc["kind"] == "certify"
    radius = np.array(doc["samples"]["radius"]["sound"])
    assert radius.shape == (20,) and (radius >= 0).all() and (radius > 0).any()
    assert doc["traces"]["sound"]["nodes"][0].startswith("input")


def test_attack_command(mlp_file: Path, tmp_path: Path, capsys):
    out = tmp_path / "atk.json"
    code = main(["attack", "--model", str(mlp_file), "--data", "digits", "--n", "12",
                 "--attack", "deepfool", "--out", str(out), "--quiet"])
    assert code == EXIT_OK
    assert capsys.readouterr().out == ""  # --quiet
    doc = json.loads(out.read_text())
    norms = [float(v) for v in doc["samples"]["attack_norm"]["deepfool"]]
    assert len(norms) == 12 and all(v > 0 for v in norms)


def test_crosscheck_writes_report(cnn_file: Path, tmp_path: Path, capsys):
    out = tmp_path / "xc"
    code = main(["crosscheck", "--model", str(cnn_file), "--data", "digits", "--n", "16",
                 "--budget", "20", "--out", str(out)])
    assert code == EXIT_OK
    text = capsys.readouterr().out
    assert "median certified radius" in text and "soundness violations: 0" in text
    for name in ("results.json", "results.csv", "report.md", "report.html", "scatter.png",
                 "cdf.png", "waterfall.png"):
        _nonempty(out / name)
    html = (out / "report.html").read_text()
    assert "data:image/png;base64," in html
    rows = (out / "results.csv").read_text().splitlines()
    assert len(rows) == 17 and "radius_sound" in rows[0] and "violation" in rows[0]
    # the report command re-renders the same JSON elsewhere
    assert main(["report", str(out / "results.json"), "--out", str(tmp_path / "r"),
                 "--quiet"]) == EXIT_OK
    _nonempty(tmp_path / "r" / "report.html")


def test_crosscheck_violation_exit_3(cnn_file: Path, tmp_path: Path, capsys, monkeypatch):
    from boundkit.bounds import engine

    real = engine.certify

    def inflated(model, x, method="sound", **kw):
        cert = real(model, x, method, **kw)
        if method == "sound":
            cert.radius = cert.radius * 1e3
            cert.trace = {k: v * 1e3 for k, v in cert.trace.items()}
        return cert

    monkeypatch.setattr(engine, "certify", inflated)
    code = main(["crosscheck", "--model", str(cnn_file), "--data", "digits", "--n", "4",
                 "--budget", "10", "--out", str(tmp_path / "v"), "--quiet"])
    assert code == EXIT_VIOLATION
    err = capsys.readouterr().err
    assert "SOUNDNESS BUG: sample 0, method 'sound'" in err
    assert "layer 'fc2'" in err  # the whole trace is inflated: the output stage fails


def test_compare_ranks_models(mlp_file: Path, cnn_file: Path, tmp_path: Path, capsys):
    out = tmp_path / "cmp"
    code = main(["compare", "--models", str(mlp_file), str(cnn_file), "--data", "digits",
                 "--n", "10", "--budget", "10", "--out", str(out), "--json"])
    assert code == EXIT_OK
    res = json.loads(capsys.readouterr().out)
    names = [m["name"] for m in res["models"]]
    assert sorted(names) == ["digits_cnn", "digits_mlp"]
    best = [m["median_best_certified"] for m in res["models"]]
    assert best == sorted(best, reverse=True)
    for m in res["models"]:  # the best certificate is at least each method's
        assert all(m["median_best_certified"] >= v - 1e-12
                   for v in m["median_radius"].values() if v == v)
    (verdict,) = res["ranking"]
    assert verdict["label"] in ("decided by proof", "undecided at this budget")
    assert verdict["above"] == names[0] and verdict["below"] == names[1]
    doc = json.loads((out / "results.json").read_text())
    for name in names:  # auto: sound and the method the budget affords, with the reason
        meta = doc["results"][name]["meta"]
        assert meta["method_choice"]["method"] in ("bab", "crown", "sound")
        assert meta["method_choice"]["reason"]
    _nonempty(out / "comparison.png")
    _nonempty(out / "report.html")


@pytest.mark.parametrize("bad", ["0", "-1", "nan", "inf"])
def test_a_bad_time_budget_is_a_one_line_error(bad: str, mlp_file: Path, tmp_path: Path,
                                               capsys):
    code = main(["crosscheck", "--model", str(mlp_file), "--data", "digits", "--n", "2",
                 "--budget", "5", "--time-budget", bad, "--out", str(tmp_path / "t")])
    assert code == EXIT_BAD_INPUT
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "time-budget" in err[0]


def test_demo_quick(tmp_path: Path, capsys):
    out = tmp_path / "demo"
    code = main(["demo", "--quick", "--n", "20", "--epochs", "2", "--budget", "10",
                 "--out", str(out)])
    assert code == EXIT_OK
    text = capsys.readouterr().out
    assert "demo wall time" in text
    for name in ("results.json", "report.html", "scatter.png", "cdf.png", "waterfall.png",
                 "models/digits_cnn.safetensors"):
        _nonempty(out / name)


# ------------------------------------------------------------------------- bad inputs
def _bad(argv: list[str], capsys) -> str:
    assert main([*argv, "--quiet"]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    return lines[0]


def test_missing_model_file(tmp_path: Path, capsys):
    msg = _bad(["certify", "--model", str(tmp_path / "nope.safetensors"), "--data", "digits",
                "--out", str(tmp_path / "c.json")], capsys)
    assert "no such model file" in msg


def test_not_a_model(tmp_path: Path, capsys):
    f = tmp_path / "model.pt"
    f.write_text("this is not a model")
    _bad(["certify", "--model", str(f), "--data", "digits", "--out", str(tmp_path / "c.json")],
         capsys)


def test_wrong_shape_data(mlp_file: Path, tmp_path: Path, capsys):
    f = tmp_path / "data.npz"
    np.savez(f, x=np.random.default_rng(0).random((5, 3)).astype(np.float32),
             y=np.zeros(5, dtype=np.int64))
    msg = _bad(["certify", "--model", str(mlp_file), "--data", str(f),
                "--out", str(tmp_path / "c.json")], capsys)
    assert "shape" in msg


def test_nan_weights(mlp_file: Path, tmp_path: Path, capsys):
    from safetensors.torch import load_file, save_file

    sd = load_file(str(mlp_file))
    key = next(k for k in sd if k.endswith("weight"))
    sd[key][0, 0] = float("nan")
    bad = tmp_path / "nan.safetensors"
    save_file(sd, str(bad), metadata={"arch": "digits_mlp", "format": "boundkit-v1"})
    shutil.copy(mlp_file.with_suffix(".json"), bad.with_suffix(".json"))
    msg = _bad(["crosscheck", "--model", str(bad), "--data", "digits", "--out",
                str(tmp_path / "x")], capsys)
    assert "nan" in msg.lower() or "finite" in msg.lower()


def test_unknown_dataset_and_missing_results(mlp_file: Path, tmp_path: Path, capsys):
    _bad(["certify", "--model", str(mlp_file), "--data", "no_such_set",
          "--out", str(tmp_path / "c.json")], capsys)
    _bad(["report", str(tmp_path / "missing.json"), "--out", str(tmp_path / "r")], capsys)
    junk = tmp_path / "junk.json"
    junk.write_text("[1, 2]")
    _bad(["report", str(junk), "--out", str(tmp_path / "r")], capsys)
    _bad(["train", "no_such_arch", "--out", str(tmp_path)], capsys)


def test_mnist_from_shared_data(tmp_path: Path, capsys):
    if not (SHARED / "mnist-10k.npz").is_file():
        pytest.skip(f"MNIST not available in {SHARED}")
    from boundkit.models import ZOO, build_model, save_model

    arch = next((n for n, e in ZOO.items() if e.dataset == "mnist" and "mlp" in n), None)
    if arch is None:
        pytest.skip("no MNIST MLP in the zoo")
    model = build_model(arch, seed=0)
    f = save_model(model, tmp_path / f"{arch}.safetensors", arch=arch)
    out = tmp_path / "m.json"
    assert main(["certify", "--model", str(f), "--data", "mnist", "--data-root", str(SHARED),
                 "--n", "5", "--out", str(out), "--quiet"]) == EXIT_OK
    doc = json.loads(out.read_text())
    assert len(doc["samples"]["radius"]["sound"]) == 5
    assert torch.tensor(doc["samples"]["radius"]["sound"]).ge(0).all()


@pytest.mark.parametrize("method", ["crown", "alpha"])
def test_crosscheck_with_a_linear_relaxation_method(method: str, mlp_file: Path,
                                                    tmp_path: Path, capsys):
    out = tmp_path / method
    code = main(["crosscheck", "--model", str(mlp_file), "--data", "digits", "--n", "6",
                 "--budget", "10", "--method", method, "--out", str(out)])
    assert code == EXIT_OK
    text = capsys.readouterr().out
    assert "soundness violations: 0" in text
    rows = (out / "results.csv").read_text().splitlines()
    assert f"radius_{method}" in rows[0]
    _nonempty(out / "scatter.png")
