"""Every CLI command against bad files, bad arguments, aliasing outputs, interruption and a
hostile environment: exit code 2 with one line naming the problem (130 on Ctrl-C), never a
traceback; results directories never mix two runs; every result records its provenance."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from boundkit.models.io import sidecar_path

from .conftest import cli_error, cli_ok, run_cli


def _sigint_default() -> None:
    """In the child before it starts: SIGINT's default handling, even where this test run
    itself was started with SIGINT ignored (a background job of a non-interactive shell
    passes that on to every child), so that the signal the test sends arrives as it would
    from a terminal."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


MODEL_CMDS = ["certify", "attack", "crosscheck", "compare"]
FAST = ["--data", "digits", "--n", "4", "-q"]


def argv_for(cmd: str, model: Path | str, out: Path, *extra: str) -> list[str]:
    if cmd == "certify":
        return ["certify", "--model", model, *FAST, "--out", out / "c.json", *extra]
    if cmd == "attack":
        return ["attack", "--model", model, *FAST, "--attack", "deepfool", "--budget", "3",
                "--out", out / "a.json", *extra]
    if cmd == "crosscheck":
        return ["crosscheck", "--model", model, *FAST, "--attack", "deepfool", "--budget", "3",
                "--method", "sound", "--no-report", "--out", out / "xc", *extra]
    return ["compare", "--models", model, *FAST, "--attack", "deepfool", "--budget", "3",
            "--method", "sound", "--no-report", "--out", out / "cmp", *extra]


def out_of(cmd: str, out: Path) -> Path:
    return {"certify": out / "c.json", "attack": out / "a.json", "crosscheck": out / "xc",
            "compare": out / "cmp"}[cmd]


# --------------------------------------------------------------------------- model files
def _garbage(m: Path) -> Path:
    p = m / "garbage.safetensors"
    p.write_bytes(os.urandom(256))
    return p


def _nan(m: Path) -> Path:
    from safetensors.torch import load_file, save_file

    p = m / "mlp.safetensors"
    sd = load_file(str(p))
    sd["fc1.weight"][0, 0] = float("nan")
    save_file(sd, str(p), metadata={"arch": "digits_mlp", "format": "boundkit-v1"})
    return p


def _side_other(m: Path) -> Path:
    p = m / "mlp.safetensors"
    doc = json.loads(sidecar_path(p).read_text())
    doc["arch"] = "digits_cnn"
    sidecar_path(p).write_text(json.dumps(doc))
    return p


def _truncated(m: Path) -> Path:
    p = m / "mlp.safetensors"
    p.write_bytes(p.read_bytes()[:300])
    return p


def _pickled_code(m: Path) -> Path:
    p = m / "evil.pt"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {m / 'PWNED'}",))

    import pickle

    p.write_bytes(pickle.dumps({"w": Payload()}))
    return p


BAD_MODEL_FILES = {
    "missing": (lambda m: m / "nope.safetensors", "no such model file"),
    "directory": (lambda m: m, "directory"),
    "garbage": (_garbage, "garbage.safetensors"),
    "truncated": (_truncated, "truncated"),
    "nan-weights": (_nan, "NaN"),
    "sidecar-disagrees": (_side_other, "digits_cnn"),
    "torchscript-untrusted": (lambda m: m / "mlp.ts", "--trust-code"),
    "pickle-with-code": (_pickled_code, "weights_only"),
    "state-dict-no-arch": (lambda m: (m / "mlp.pt").rename(m / "sd.pt") or m / "sd.pt",
                           "architecture"),
}


@pytest.mark.parametrize("cmd", MODEL_CMDS)
@pytest.mark.parametrize("case", sorted(BAD_MODEL_FILES))
def test_bad_model_file(cmd: str, case: str, models: Path, tmp_path: Path) -> None:
    make, word = BAD_MODEL_FILES[case]
    model = make(models)
    cli_error(argv_for(cmd, model, tmp_path), word)
    assert not out_of(cmd, tmp_path).exists()
    assert not (models / "PWNED").exists()


@pytest.mark.parametrize("cmd", MODEL_CMDS)
def test_trust_code_flag_loads_torchscript(cmd: str, models: Path, tmp_path: Path) -> None:
    """With --trust-code the archive loads: attacks run on it; the certifier, which needs
    torch.fx, refuses it in one line naming the reason."""
    argv = argv_for(cmd, models / "mlp.ts", tmp_path, "--trust-code")
    if cmd == "attack":
        cli_ok(argv)
        assert out_of(cmd, tmp_path).exists()
    else:
        cli_error(argv, "trace")


@pytest.mark.parametrize("cmd", MODEL_CMDS)
def test_state_dict_with_arch(cmd: str, models: Path, tmp_path: Path) -> None:
    cli_ok(argv_for(cmd, models / "mlp.pt", tmp_path, "--arch", "digits_mlp"))


# ------------------------------------------------------------------------------ arguments
BAD_ARGS = {
    "n-0": (["--n", "0"], "--n"),
    "n-neg": (["--n", "-3"], "--n"),
    "threads-0": (["--threads", "0"], "--threads"),
    "threads-absurd": (["--threads", "100000"], "--threads"),
    "device-cuda": (["--device", "cuda"], "cuda"),
    "device-bogus": (["--device", "quantum"], "device"),
    "device-meta": (["--device", "meta"], "meta"),
    "data-unknown": (["--data", "imagenet"], "imagenet"),
    "data-missing-file": (["--data", "nope.npz"], "nope.npz"),
    "split-val-mnist": (["--data", "mnist", "--split", "val", "--data-root", "."],
                        "validation"),
}


@pytest.mark.parametrize("cmd", MODEL_CMDS)
@pytest.mark.parametrize("case", sorted(BAD_ARGS))
def test_bad_argument(cmd: str, case: str, models: Path, tmp_path: Path) -> None:
    extra, word = BAD_ARGS[case]
    if "cuda" in extra and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    cli_error(argv_for(cmd, models / "mlp.safetensors", tmp_path, *extra), word)


@pytest.mark.parametrize("cmd", ["attack", "crosscheck", "compare"])
@pytest.mark.parametrize("budget", ["0", "-1", "-100", "10000000000000"])
def test_bad_budget(cmd: str, budget: str, models: Path, tmp_path: Path) -> None:
    argv = argv_for(cmd, models / "mlp.safetensors", tmp_path)
    argv[argv.index("--budget") + 1] = budget
    cli_error(argv, "--budget")


def _data_file(tmp_path: Path, x, y=None) -> Path:
    import numpy as np

    p = tmp_path / "bad.npz"
    x = np.asarray(x, dtype=np.float32)
    np.savez(p, x=x, y=np.zeros(x.shape[0], dtype=np.int64) if y is None else y)
    return p


BAD_DATA = {
    "wrong-shape": (lambda t: _data_file(t, torch.rand(3, 5).numpy()), "shape"),
    "nan": (lambda t: _data_file(t, torch.full((3, 1, 8, 8), float("nan")).numpy()), "NaN"),
    "range": (lambda t: _data_file(t, torch.full((3, 1, 8, 8), 7.0).numpy()), "[0, 1]"),
    "empty": (lambda t: _data_file(t, torch.zeros(0, 1, 8, 8).numpy()), "no samples"),
    "random-bytes": (lambda t: (t / "r.npz", (t / "r.npz").write_bytes(os.urandom(99)))[0],
                     "r.npz"),
}


@pytest.mark.parametrize("cmd", MODEL_CMDS)
@pytest.mark.parametrize("case", sorted(BAD_DATA))
def test_bad_data(cmd: str, case: str, models: Path, tmp_path: Path) -> None:
    make, word = BAD_DATA[case]
    data = make(tmp_path)
    argv = argv_for(cmd, models / "mlp.safetensors", tmp_path)
    argv[argv.index("--data") + 1] = data
    cli_error(argv, word)


# ------------------------------------------------------------------------ output aliasing
def _alias_targets(models: Path) -> dict[str, Path]:
    return {"model": models / "mlp.safetensors", "sidecar": models / "mlp.json",
            "data": models / "data.npz"}


@pytest.mark.parametrize("cmd", ["certify", "attack"])
@pytest.mark.parametrize("target", ["model", "sidecar", "data"])
def test_out_file_never_overwrites_an_input(cmd: str, target: str, models: Path,
                                            tmp_path: Path) -> None:
    t = _alias_targets(models)
    before = {k: p.read_bytes() for k, p in t.items()}
    argv = argv_for(cmd, models / "mlp.safetensors", tmp_path)
    argv[argv.index("--out") + 1] = t[target]
    if target == "data":
        argv[argv.index("--data") + 1] = t["data"]
    cli_error(argv, "input")
    assert {k: p.read_bytes() for k, p in t.items()} == before


@pytest.mark.parametrize("cmd", ["crosscheck", "compare"])
@pytest.mark.parametrize("where", ["models-dir", "parent-of-models"])
def test_out_dir_holding_an_input_refused(cmd: str, where: str, models: Path,
                                          tmp_path: Path) -> None:
    out = models if where == "models-dir" else models.parent
    argv = argv_for(cmd, models / "mlp.safetensors", tmp_path)
    argv[argv.index("--out") + 1] = out
    cli_error(argv, "input")
    assert (models / "mlp.safetensors").is_file() and (models / "mlp.json").is_file()


@pytest.mark.parametrize("cmd", MODEL_CMDS)
def test_out_never_replaces_the_data_folder(cmd: str, models: Path, tmp_path: Path) -> None:
    """A named data set's folder (--data-root) is an input too: a results directory may not
    be it or hold it, and a file output may not overwrite one of its data files."""
    root = tmp_path / "data"
    root.mkdir()
    (root / "spambase.data").write_text("precious")
    argv = argv_for(cmd, models / "mlp.safetensors", tmp_path, "--data-root", root)
    argv[argv.index("--data") + 1] = "digits"
    target = root if cmd in ("crosscheck", "compare") else root / "spambase.data"
    argv[argv.index("--out") + 1] = target
    cli_error(argv, "data folder")
    assert (root / "spambase.data").read_text() == "precious"


@pytest.mark.parametrize("cmd", ["crosscheck", "compare"])
def test_out_dir_foreign_and_not_empty_refused(cmd: str, models: Path, tmp_path: Path) -> None:
    out = out_of(cmd, tmp_path)
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    cli_error(argv_for(cmd, models / "mlp.safetensors", tmp_path), "not a boundkit results")
    assert (out / "thesis.tex").read_text() == "precious"


@pytest.mark.parametrize("cmd", ["certify", "attack"])
def test_out_file_is_a_directory(cmd: str, models: Path, tmp_path: Path) -> None:
    out_of(cmd, tmp_path).mkdir()
    cli_error(argv_for(cmd, models / "mlp.safetensors", tmp_path), "directory")


@pytest.mark.parametrize("cmd", MODEL_CMDS)
def test_out_below_a_file(cmd: str, models: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    cli_error(argv_for(cmd, models / "mlp.safetensors", blocker))


@pytest.mark.parametrize("cmd", MODEL_CMDS)
def test_read_only_destination(cmd: str, models: Path, tmp_path: Path) -> None:
    """An output folder nobody may write (/proc for root; a chmod-ed folder otherwise)."""
    if os.geteuid() == 0:
        ro = Path("/proc/boundkit-robustness")
    else:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
    cli_error(argv_for(cmd, models / "mlp.safetensors", ro))


def test_results_directory_replaced_whole_never_mixed(models: Path, tmp_path: Path) -> None:
    argv = argv_for("crosscheck", models / "mlp.safetensors", tmp_path)
    out = tmp_path / "xc"
    cli_ok(argv)
    (out / "stale-from-run-1.csv").write_text("old")
    argv[argv.index("--n") + 1] = "2"
    cli_ok(argv)
    doc = json.loads((out / "results.json").read_text())
    assert len(doc["samples"]["index"]) == 2
    assert not (out / "stale-from-run-1.csv").exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


@pytest.mark.parametrize("cmd", ["certify", "attack", "crosscheck"])
def test_every_result_records_its_provenance(cmd: str, models: Path, tmp_path: Path) -> None:
    cli_ok(argv_for(cmd, models / "mlp.safetensors", tmp_path, "--seed", "5"))
    out = out_of(cmd, tmp_path)
    doc = json.loads((out / "results.json" if out.is_dir() else out).read_text())
    prov = doc["meta"]["provenance"]
    import hashlib

    sha = hashlib.sha256((models / "mlp.safetensors").read_bytes()).hexdigest()
    assert prov["model_sha256"] == sha
    assert prov["data"] == "digits" and prov["split"] == "test" and prov["split_seed"] == 0
    assert prov["seed"] == 5 and prov["boundkit_version"] and prov["command"] == cmd
    assert prov.get("method") or prov.get("attack")
    if out.is_dir():
        marker = json.loads((out / ".boundkit-run.json").read_text())
        assert marker["model_sha256"] == sha


def test_compare_records_provenance_per_model(models: Path, tmp_path: Path) -> None:
    cli_ok(argv_for("compare", models / "mlp.safetensors", tmp_path))
    doc = json.loads((tmp_path / "cmp" / "results.json").read_text())
    provs = doc["meta"]["provenance"]["models"]
    assert all("model_sha256" in p for p in provs.values())


# --------------------------------------------------------------------------- data splits
def test_seed_never_changes_the_split(models: Path, tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    cli_ok(argv_for("certify", models / "mlp.safetensors", a, "--seed", "0"))
    cli_ok(argv_for("certify", models / "mlp.safetensors", b, "--seed", "1"))
    da = json.loads((a / "c.json").read_text())["samples"]
    db = json.loads((b / "c.json").read_text())["samples"]
    assert da["label"] == db["label"] and da["radius"] == db["radius"]


@pytest.mark.parametrize("split", ["train", "all"])
def test_training_images_warned_loudly(split: str, models: Path, tmp_path: Path) -> None:
    _, err = cli_ok(argv_for("certify", models / "mlp.safetensors", tmp_path,
                             "--split", split))
    assert "WARNING" in err and "trained on" in err
    prov = json.loads((tmp_path / "c.json").read_text())["meta"]["provenance"]
    assert prov["evaluated_on_training_data"] is True


def test_legacy_model_trained_on_another_split_warned(models: Path, tmp_path: Path) -> None:
    side = models / "mlp.json"
    doc = json.loads(side.read_text())
    doc["meta"] = {"dataset": "digits", "seed": 1}  # before #12: --seed 1 moved the split
    side.write_text(json.dumps(doc))
    _, err = cli_ok(argv_for("certify", models / "mlp.safetensors", tmp_path))
    assert "WARNING" in err and "overlaps" in err


def test_training_data_file_warned(models: Path, tmp_path: Path) -> None:
    """A model trained on a .npz file, evaluated on that same file: warned."""
    out = tmp_path / "trained"
    cli_ok(["train", "digits_mlp", "--data", models / "data.npz", "--epochs", "1", "--out",
            out, "-q"])
    argv = argv_for("certify", out / "digits_mlp.safetensors", tmp_path)
    argv[argv.index("--data") + 1] = models / "data.npz"
    _, err = cli_ok(argv)
    assert "WARNING" in err and "trained on" in err


def test_test_split_of_own_data_not_warned(models: Path, tmp_path: Path) -> None:
    _, err = cli_ok(argv_for("certify", models / "mlp.safetensors", tmp_path))
    assert "WARNING" not in err


# ---------------------------------------------------------------------------- environment
@pytest.mark.parametrize("cmd", MODEL_CMDS)
def test_offline_missing_data_is_one_complete_line(cmd: str, models: Path, tmp_path: Path,
                                                   monkeypatch) -> None:
    import urllib.error

    import boundkit.data._common as common

    def offline(url, dest, timeout=0):
        raise urllib.error.URLError("Temporary failure in name resolution")

    monkeypatch.setattr(common, "_fetch", offline)
    argv = argv_for(cmd, models / "mlp.safetensors", tmp_path)
    argv[argv.index("--data") + 1] = "spambase"
    line = cli_error(argv + ["--data-root", tmp_path / "empty"], "offline", "spambase.data",
                     "--data-root")
    assert not line.rstrip().endswith("tried:")


def test_no_gpu_is_a_clear_line_for_train(tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    cli_error(["train", "digits_mlp", "--epochs", "1", "--device", "cuda", "--out", tmp_path,
               "-q"], "CUDA is not available")


# -------------------------------------------------------------------------- interruption
STAGES = {
    "load-model": ("boundkit.models.io", "load_model"),
    "load-data": ("boundkit.data", "load_dataset"),
    "certify": ("boundkit.bounds.engine", "certify"),
    "attack": ("boundkit.attacks", "attack"),
    "write": ("boundkit.report.io", "atomic_write_text"),
}


RUNS = {"certify": ("certify",), "attack": ("attack",), "crosscheck": ("certify", "attack"),
        "compare": ("certify", "attack")}


@pytest.mark.parametrize("cmd, stage", [
    (c, s) for c in MODEL_CMDS for s in sorted(STAGES)
    if s not in ("certify", "attack") or s in RUNS[c]
])
def test_ctrl_c_at_any_stage(cmd: str, stage: str, models: Path, tmp_path: Path,
                             monkeypatch) -> None:
    """Ctrl-C anywhere: exit 130, one line, and a previous result left exactly as it was."""
    import importlib

    argv = argv_for(cmd, models / "mlp.safetensors", tmp_path)
    cli_ok(argv)
    out = out_of(cmd, tmp_path)
    snapshot = {p: p.read_bytes() for p in ([out] if out.is_file() else out.rglob("*"))
                if p.is_file()}
    mod, name = STAGES[stage]

    def interrupt(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(importlib.import_module(mod), name, interrupt)
    cli_error(argv, "interrupted", code=130)
    after = {p: p.read_bytes() for p in ([out] if out.is_file() else out.rglob("*"))
             if p.is_file()}
    assert after == snapshot
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_real_sigint_in_a_subprocess(models: Path, tmp_path: Path) -> None:
    """A real SIGINT while the run works: exit 130, no traceback, no partial directory.

    The signal is sent once the run has written to stderr (its progress bar starts with the
    work), not after a fixed sleep, which on a loaded machine could land before the run
    started or after it ended."""
    import threading

    argv = [sys.executable, "-m", "boundkit", "crosscheck", "--model",
            str(models / "mlp.safetensors"), "--data", "digits", "--attack", "cw",
            "--out", str(tmp_path / "xc")]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                            cwd=Path(__file__).resolve().parents[2],
                            preexec_fn=_sigint_default)
    first: list[bytes] = []
    reader = threading.Thread(target=lambda: first.append(proc.stderr.read(1)), daemon=True)
    reader.start()
    reader.join(timeout=300)
    if not first or not first[0]:
        proc.kill()
        proc.communicate()
        pytest.fail("the run wrote nothing to stderr within 300 s")
    assert proc.poll() is None, "the run ended before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    err = first[0] + err
    # 130, or death by SIGINT (which a shell also reports as 130) if the signal lands while
    # the interpreter is shutting down
    assert proc.returncode in (130, -signal.SIGINT), err.decode()[-2000:]
    assert b"Traceback" not in err
    assert not (tmp_path / "xc").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


# ------------------------------------------------------------------ train, report, demo
@pytest.mark.parametrize("argv, word", [
    (["train", "resnet9000"], "resnet9000"),
    (["train", "digits_mlp", "--epochs", "-1"], "--epochs"),
    (["train", "digits_mlp", "--data", "imagenet"], "imagenet"),
    (["train", "digits_mlp", "--threads", "0"], "--threads"),
    (["train", "digits_mlp", "--device", "bogus"], "device"),
    (["demo", "--n", "0"], "--n"),
    (["demo", "--budget", "-1"], "--budget"),
    (["demo", "--epochs", "-2"], "--epochs"),
    (["demo", "--device", "nope"], "device"),
], ids=["train-unknown", "train-epochs", "train-data", "train-threads", "train-device",
        "demo-n", "demo-budget", "demo-epochs", "demo-device"])
def test_train_and_demo_bad_arguments(argv: list[str], word: str, tmp_path: Path) -> None:
    cli_error([*argv, "--out", tmp_path / "o", "-q"], word)


def test_train_out_is_a_file(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_text("x")
    cli_error(["train", "digits_mlp", "--epochs", "0", "--out", f, "-q"], "not a directory")


def test_demo_out_foreign_dir(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    cli_error(["demo", "--quick", "--out", tmp_path, "-q"], "not a boundkit results")
    assert (tmp_path / "notes.txt").read_text() == "mine"


REPORT_FILES = {
    "missing": None,
    "empty": b"",
    "binary": b"\x00\xff\x13",
    "not-results": b'{"hello": 1}',
    "kind-unknown": b'{"kind": "rm -rf"}',
    "lengths": json.dumps({"kind": "certify", "samples": {
        "index": [0, 1], "prediction": [0], "radius": {}}}).encode(),
    "deep": b"[" * 50_000,
}


@pytest.mark.parametrize("case", sorted(REPORT_FILES))
def test_report_bad_results_file(case: str, tmp_path: Path) -> None:
    p = tmp_path / "r.json"
    if REPORT_FILES[case] is not None:
        p.write_bytes(REPORT_FILES[case])
    cli_error(["report", p, "--out", tmp_path / "rep", "-q"])
    assert not (tmp_path / "rep").exists()


def test_report_out_holding_the_results_refused(models: Path, tmp_path: Path) -> None:
    cli_ok(argv_for("crosscheck", models / "mlp.safetensors", tmp_path))
    res = tmp_path / "xc" / "results.json"
    before = res.read_bytes()
    cli_error(["report", res, "--out", tmp_path / "xc", "-q"], "input")
    assert res.read_bytes() == before
    cli_ok(["report", res, "--out", tmp_path / "rep", "-q"])
    assert (tmp_path / "rep" / "report.html").is_file()


def test_bugs_are_not_disguised_as_bad_input(models: Path, tmp_path: Path,
                                             monkeypatch) -> None:
    """A KeyError inside boundkit is a bug: it keeps its traceback (no exit-2 disguise)."""
    import boundkit.bounds.engine as engine

    def bug(*a, **k):
        raise KeyError("internal")

    monkeypatch.setattr(engine, "certify", bug)
    with pytest.raises(KeyError):
        run_cli(argv_for("certify", models / "mlp.safetensors", tmp_path))


def test_preamble_is_shared_by_every_model_command() -> None:
    """One function loads and checks model, data and device for every model command."""
    import inspect

    import boundkit.cli as cli

    for name in ("cmd_certify", "cmd_attack", "cmd_crosscheck", "cmd_compare"):
        src = inspect.getsource(getattr(cli, name))
        assert "preamble(" in src and "load_model_arg(" not in src, name
    assert "except (BoundkitError, OSError)" in inspect.getsource(cli._main)
    assert "KeyError" not in inspect.getsource(cli._main)


def test_help_documents_trust_code() -> None:
    rc, out, _ = run_cli(["certify", "--help"])
    assert rc == 0 and "--trust-code" in out and "RUNS code" in out.replace("\n", " ")
    shutil.which("python")
