"""Kept shards are evidence, not trust (issue #26), and the cluster options are checked
before anything starts; no Ray instance needed (the resumes through Ray are in
``test_ray.py``)."""

from __future__ import annotations

import io
import os
import signal
import sys
from pathlib import Path

import pytest
import torch

from boundkit.distributed import Job, RunStats, Shard, ShardError, ShardStore, job_key
from boundkit.distributed.tasks import check_payload


def _sigint_default() -> None:
    """In the child before it starts: SIGINT's default handling, even where this test run
    itself was started with SIGINT ignored (a background job of a non-interactive shell
    passes that on to every child), so that the signal the test sends arrives as it would
    from a terminal."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


ROOT = Path(__file__).resolve().parents[2]


def _cert(n: int, scale: float = 1.0) -> dict:
    r = torch.linspace(0.1, 0.5, n, dtype=torch.float64) * scale
    z = torch.zeros(n, dtype=torch.int64)
    return {"radius": r, "label": z, "runner_up": z + 1, "margin": r.clone(),
            "trace": {"x": r.clone()}, "status": torch.zeros(n, dtype=torch.int8),
            "model_label": z, "is_guarantee": True, "method": "sound", "node_ops": {},
            "info": {}}


JOB = Job("certify", methods=("sound",))


def _store(root: Path, **doc) -> ShardStore:
    return ShardStore(root, job_key({"job": JOB.describe(), **doc}))


def _rewrite(path: Path, payload: dict) -> None:
    buf = io.BytesIO()
    torch.save(payload, buf)
    path.write_bytes(buf.getvalue())


def test_a_kept_shard_reads_back_after_its_evidence_is_verified(tmp_path: Path) -> None:
    store = _store(tmp_path)
    store.write(Shard(0, 5), {"certificates": {"sound": _cert(5)}})
    assert store.done() == [Shard(0, 5)]
    got = store.read(Shard(0, 5))
    assert torch.equal(got["certificates"]["sound"]["radius"], _cert(5)["radius"])
    assert check_payload(JOB, got, 5) is None


def test_radii_multiplied_by_100_are_refused_naming_the_shard(tmp_path: Path) -> None:
    store = _store(tmp_path)
    pt = store.write(Shard(0, 5), {"certificates": {"sound": _cert(5)}})
    _rewrite(pt, {"certificates": {"sound": _cert(5, 100.0)}})
    with pytest.raises(ShardError, match=rf"kept shard {pt}.*SHA-256.*contents were changed"):
        store.read(Shard(0, 5))


def test_an_attacker_recomputing_the_plain_hash_is_refused_by_the_hmac(tmp_path: Path) -> None:
    import hashlib
    import json

    store = _store(tmp_path)
    pt = store.write(Shard(0, 5), {"certificates": {"sound": _cert(5)}})
    _rewrite(pt, {"certificates": {"sound": _cert(5, 100.0)}})
    ev = pt.with_suffix(".json")
    doc = json.loads(ev.read_text())
    doc["header"]["sha256"] = hashlib.sha256(pt.read_bytes()).hexdigest()
    doc["header"]["bytes"] = pt.stat().st_size
    ev.write_text(json.dumps(doc))
    with pytest.raises(ShardError, match=rf"kept shard {pt} fails its HMAC"):
        store.read(Shard(0, 5))
    ev.unlink()  # no evidence at all: not a kept shard
    assert store.done() == []


def test_a_shard_of_another_range_or_job_is_refused(tmp_path: Path) -> None:
    store = _store(tmp_path)
    pt = store.write(Shard(0, 5), {"certificates": {"sound": _cert(5)}})
    moved = store.path / f"{Shard(5, 10).name}.pt"
    pt.rename(moved)
    pt.with_suffix(".json").rename(moved.with_suffix(".json"))
    with pytest.raises(ShardError, match=r"belongs to another start \(0, this run: 5\)"):
        store.read(Shard(5, 10))
    other = _store(tmp_path, data="another data set")
    other.path.mkdir(parents=True)
    for f in store.path.glob("shard-*"):
        (other.path / f.name).write_bytes(f.read_bytes())
    with pytest.raises(ShardError, match="belongs to another job key"):
        other.read(Shard(5, 10))


@pytest.mark.parametrize("case", ["cut_to_2_radii", "a_method_missing", "negative_radius",
                                  "trace_of_another_length"])
def test_payload_shapes_are_checked_before_use(case: str) -> None:
    cert = _cert(5)
    if case == "cut_to_2_radii":
        cert["radius"] = cert["radius"][:2]
        payload = {"certificates": {"sound": cert}}
    elif case == "a_method_missing":
        payload = {"certificates": {}}
    elif case == "negative_radius":
        cert["radius"] = -cert["radius"]
        payload = {"certificates": {"sound": cert}}
    else:
        cert["trace"] = {"x": torch.zeros(7, dtype=torch.float64)}
        payload = {"certificates": {"sound": cert}}
    why = check_payload(JOB, payload, 5)
    assert why and "\n" not in why, why


def test_cross_check_shard_must_hold_this_ranges_indices() -> None:
    n = 3
    job = Job("crosscheck", methods=("sound",))
    t = torch.zeros(n)
    payload = {"index": torch.tensor([7, 8, 9]), "label": t, "attack_norm": t,
               "attack_success": t, "radius": {"sound": t.double()},
               "certificates": {"sound": _cert(n)}, "found_by": ["x"] * n}
    assert check_payload(job, payload, n, torch.tensor([7, 8, 9])) is None
    assert "indices" in check_payload(job, payload, n, torch.tensor([0, 1, 2]))


def test_the_key_must_live_outside_the_shard_directory(tmp_path: Path, monkeypatch) -> None:
    from boundkit.distributed import shard_secret

    monkeypatch.setenv("BOUNDKIT_SHARD_KEY", str(tmp_path / "shards" / "key"))
    with pytest.raises(ShardError, match="lies inside the shard directory"):
        shard_secret(tmp_path / "shards")
    key = tmp_path / "key"
    monkeypatch.setenv("BOUNDKIT_SHARD_KEY", str(key))
    a = shard_secret(tmp_path / "shards")
    assert oct(key.stat().st_mode & 0o777) == "0o600" and shard_secret() == a
    os.chmod(key, 0o666)
    with pytest.raises(ShardError, match="writable by group or others"):
        shard_secret()


def test_run_stats_record_the_reused_samples() -> None:
    st = RunStats(key="k", shards_total=3, shards_reused=1, shards_computed=2,
                  reused=[Shard(64, 128)])
    prov = st.provenance(list(range(1000, 1200)))
    assert prov["reused_samples"] == list(range(1064, 1128))
    assert prov["reused_shards"] == [Shard(64, 128).name] and prov["shards_reused"] == 1


# ------------------------------------------------------------------------------ CLI options
@pytest.mark.parametrize("argv,expected", [
    (["--workers", "2"], "--workers only applies to a cluster run"),
    (["--shards", "3", "--keep-shards"], "--shards, --keep-shards only apply to a cluster run"),
    (["--shard-dir", "d"], "--shard-dir only applies to a cluster run"),
    (["--cluster", "ray="], "needs an address"),
    (["--cluster", "rayx"], "unknown cluster 'rayx'"),
    (["--cluster", "ray", "--workers", "0"], "--workers must be >= 1, got 0"),
    (["--cluster", "ray", "--workers", "-1"], "--workers must be >= 1, got -1"),
    (["--cluster", "ray", "--shards", "0"], "--shards must be >= 1, got 0"),
    (["--cluster", "ray", "--workers", "1000000000"], "--workers must be <= 4096"),
    (["--cluster", "ray", "--workers", "4096"], "exceeds the"),
    (["--cluster", "ray", "--cluster-timeout", "0"], "--cluster-timeout must be positive"),
])
def test_bad_cluster_option(tmp_path: Path, capsys, argv: list, expected: str) -> None:
    """Checked before the model is read or Ray is imported (the model does not exist)."""
    from boundkit.cli import EXIT_BAD_INPUT, main

    if "4096" in argv and (os.cpu_count() or 1) >= 4096:
        pytest.skip("a machine with 4096 CPUs")
    before = "ray" in sys.modules
    code = main(["certify", "--model", str(tmp_path / "none.safetensors"), "--data", "digits",
                 "--out", str(tmp_path / "c.json"), *argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == EXIT_BAD_INPUT and len(err) == 1, err
    assert expected.replace("must be positive", "must be a positive") in err[0], err
    assert ("ray" in sys.modules) == before  # nothing started


_HANGING_START = r"""
import sys, time
import boundkit.distributed.executor as ex
def _init(self, ray, common):  # a Ray that never comes up
    print("ray-start", flush=True)
    time.sleep(120)
ex.RayExecutor._init = _init
from boundkit.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_start_that_never_comes_up_is_an_error(monkeypatch) -> None:
    """Ray's start replaced by one that hangs: the executor gives up after ``timeout_s``."""
    import time

    pytest.importorskip("ray")
    from boundkit.distributed import DistributedError, RayExecutor

    monkeypatch.setattr(RayExecutor, "_init", lambda self, ray, common: time.sleep(5))
    t0 = time.monotonic()
    with pytest.raises(DistributedError, match=r"^cannot start a local Ray instance: Ray did "
                       r"not come up within 1 s$"):
        RayExecutor(timeout_s=1).connect()
    assert time.monotonic() - t0 < 4


@pytest.mark.parametrize("stop", ["sigint"])
def test_a_start_that_never_comes_up_is_interrupted(tmp_path: Path, stop: str) -> None:
    """Ray's start replaced by one that hangs: a real SIGINT during it exits 130 at once
    (the CLI's usual line)."""
    import subprocess
    import time

    from boundkit.cli import EXIT_BAD_INPUT, EXIT_INTERRUPTED
    from boundkit.models import build_model, save_model

    pytest.importorskip("ray")
    f = save_model(build_model("digits_mlp", seed=0), tmp_path / "m.safetensors",
                   arch="digits_mlp")
    argv = ["certify", "--model", str(f), "--data", "digits", "--n", "8", "--quiet",
            "--out", str(tmp_path / "c.json"), "--cluster", "ray",
            "--shard-dir", str(tmp_path / "shards"),
            "--cluster-timeout", "2" if stop == "timeout" else "100"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", _HANGING_START, *argv], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_sigint_default)
    try:
        if stop == "sigint":
            assert proc.stdout.readline().strip() == "ray-start"  # blocked in the start
            time.sleep(0.5)
            t0 = time.monotonic()
            proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=60)
        err = proc.stderr.read().strip().splitlines()
    finally:
        if proc.poll() is None:
            proc.kill()
    if stop == "timeout":
        assert code == EXIT_BAD_INPUT, err
        assert len(err) == 1 and "Ray did not come up within 2 s" in err[0], err
    else:
        assert code == EXIT_INTERRUPTED and len(err) == 1 and "interrupted" in err[0], err
        assert time.monotonic() - t0 < 30  # not the 100 s of the timeout


def test_a_multi_line_ray_error_comes_out_whole_on_one_line(monkeypatch) -> None:
    """Ray's connection errors span lines ("To fix this, either: 1. ... 2. ..."): the
    error keeps all of it, on one line."""
    ray = pytest.importorskip("ray")
    from boundkit.distributed import DistributedError, RayExecutor

    def refuse(*a, **k):
        raise ConnectionError("Could not find any running Ray instance.\nTo fix this, "
                              "either:\n  1. start one with `ray start --head`,\n  2. or pass "
                              "no address to start a local instance.")

    monkeypatch.setattr(ray, "init", refuse)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    with pytest.raises(DistributedError) as err:
        RayExecutor("auto", timeout_s=10).connect()
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("cannot join the Ray cluster at auto: Could not")
    assert "To fix this, either: 1. start one with `ray start --head`, 2. or pass no" in msg


def test_a_fifo_in_place_of_a_shard_or_its_evidence_never_blocks(tmp_path: Path) -> None:
    store = _store(tmp_path)
    pt = store.write(Shard(0, 5), {"certificates": {"sound": _cert(5)}})
    ev = pt.with_suffix(".json")
    saved = ev.read_bytes()
    ev.unlink()
    os.mkfifo(ev)
    with pytest.raises(ShardError, match="not a regular file"):
        store.read(Shard(0, 5))
    ev.unlink()
    ev.write_bytes(saved)
    pt.unlink()
    os.mkfifo(pt)
    with pytest.raises(ShardError, match="is not a regular file"):
        store.read(Shard(0, 5))
