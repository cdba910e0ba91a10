"""Sharded runs on a local Ray instance (127.0.0.1 only, no dashboard) equal local runs.

One Ray instance for the whole module (2 CPUs); every test bounds its own waits. The models
are the zoo's small digits networks, trained for 2 epochs, saved as files.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

# loopback only and no usage report, before Ray is imported (boundkit sets them as well)
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
ray = pytest.importorskip("ray")


def _sigint_default() -> None:
    """In the child before it starts: SIGINT's default handling, even where this test run
    itself was started with SIGINT ignored (a background job of a non-interactive shell
    passes that on to every child), so that the signal the test sends arrives as it would
    from a terminal."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


N = 40  # chunks of 16 in the Python API tests: 3 chunks, the last one partial
CHUNK = 16
KILL_BUDGET = 30  # long enough shards to kill one mid-run
N_CLI = 80  # 2 chunks of 64 (the command line's chunk), the last one partial
BUDGET = 6


def _warm_up() -> int:
    import boundkit.distributed.tasks  # noqa: F401

    return os.getpid()


@pytest.fixture(scope="module")
def cluster():
    """A local Ray instance for the module: 2 CPUs, loopback only, no dashboard."""
    from boundkit.distributed import RayExecutor

    if ray.is_initialized():
        ray.shutdown()
    ex = RayExecutor(workers=2, timeout_s=60)
    ex.connect()
    gcs = ray.get_runtime_context().gcs_address
    assert gcs.startswith("127.0.0.1:"), gcs
    # both workers import torch and boundkit while the models train (not awaited)
    warm = [ray.remote(_warm_up).options(num_cpus=1).remote() for _ in range(2)]
    yield gcs
    del warm
    ex.shutdown()


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """digits_mlp and digits_cnn trained for 2 epochs, saved with their sidecars."""
    from boundkit.data import load_dataset
    from boundkit.models import ZOO, build_model, save_model
    from boundkit.models.train import train_model

    out = tmp_path_factory.mktemp("dist-models")
    x, y = load_dataset("digits", None, "train", seed=0)
    files = {}
    for name in ("digits_mlp", "digits_cnn"):
        m = build_model(name, seed=0)
        train_model(m, x, y, epochs=2, lr=ZOO[name].lr, batch_size=64, seed=0)
        files[name] = save_model(m.eval(), out / f"{name}.safetensors", arch=name)
    return files


@pytest.fixture(scope="module")
def data():
    from boundkit.data import load_dataset

    x, y = load_dataset("digits", None, "test", seed=0)
    return x[:N_CLI], y[:N_CLI]


def _load(path):
    from boundkit.models.io import load_model

    return load_model(path)


def _executor(tmp_path, **kw):
    from boundkit.distributed import RayExecutor

    kw.setdefault("shard_dir", tmp_path / "shards")
    return RayExecutor(workers=2, **kw)


def _local_attack(model, x, chunk=CHUNK, budget=BUDGET):
    from boundkit.attacks import AttackResult, attack

    return AttackResult.concat([attack(model, x[s : s + chunk], "best", budget=budget, seed=0)
                                for s in range(0, x.shape[0], chunk)])


def _same_attack(a, b):
    assert torch.equal(a.norm, b.norm)
    assert torch.equal(a.x_adv, b.x_adv)
    assert torch.equal(a.success, b.success) and torch.equal(a.label, b.label)
    assert a.found_by == b.found_by


def _same_crosscheck(a, b):
    for f in ("index", "label", "true_label", "attack_norm", "attack_success"):
        assert np.array_equal(getattr(a, f), getattr(b, f)), f
    assert a.found_by == b.found_by
    assert set(a.radius) == set(b.radius)
    for m in a.radius:
        assert np.array_equal(a.radius[m], b.radius[m]), m
        for k in a.certificates[m].trace:
            assert torch.equal(a.certificates[m].trace[k], b.certificates[m].trace[k])
    assert [v.to_dict() for v in a.violations] == [v.to_dict() for v in b.violations]


@pytest.mark.parametrize("name", ["digits_mlp", "digits_cnn"])
def test_sharded_certify_is_bit_identical_to_local_for_any_shard_count(cluster, models, data,
                                                                        tmp_path, name):
    from boundkit import certify

    model = _load(models[name])
    x = data[0]  # 2 chunks of 64
    for shards in (1, 2):
        ex = _executor(tmp_path / str(shards), shards=shards)
        got = certify(model, x, "sound", executor=ex)
        ref = certify(model, x, "sound")
        assert torch.equal(got.radius, ref.radius) and torch.equal(got.label, ref.label)
        assert all(torch.equal(got.trace[k], ref.trace[k]) for k in ref.trace)
        assert ex.stats.shards_computed == shards


def test_sharded_attack_equals_local_for_1_or_3_shards(cluster, models, data, tmp_path):
    from boundkit.distributed import ModelSource

    model = _load(models["digits_cnn"])
    ref = _local_attack(model, data[0][:N])
    src = ModelSource.from_file(models["digits_cnn"])
    for shards in (1, 3):
        ex = _executor(tmp_path / str(shards), shards=shards)
        got = ex.attack(src, data[0][:N], "best", budget=BUDGET, seed=0, chunk=CHUNK)
        _same_attack(got, ref)


def test_sharded_crosscheck_equals_local_with_small_chunks(cluster, models, data, tmp_path):
    import boundkit as bk

    model = _load(models["digits_mlp"])
    x, y = data[0][:N], data[1][:N]
    kw = dict(methods=("sound", "peck2017"), attack="best", attack_budget=BUDGET, y=y,
              chunk_size=8, indices=np.arange(100, 100 + N))
    ref = bk.crosscheck(model, x, **kw)
    ex = _executor(tmp_path, shards=4)
    got = bk.crosscheck(model, x, executor=ex, **kw)
    assert ex.stats.shards_computed == 4
    _same_crosscheck(got, ref)


def _json(path: Path) -> dict:
    doc = json.loads(path.read_text())
    doc.pop("seconds", None)
    doc.get("summary", {}).pop("seconds", None)
    # provenance records how the run was made (command line, time): it differs by design
    doc.get("meta", {}).pop("provenance", None)
    return doc


def test_cli_cluster_writes_the_files_of_a_local_run(cluster, models, tmp_path, capsys):
    from boundkit.cli import EXIT_OK, main

    base = ["--model", str(models["digits_cnn"]), "--data", "digits", "--n", str(N_CLI),
            "--quiet", "--budget", str(BUDGET)]
    # the report is rendered from results.json by the same code; the methods are fixed
    # (--method auto's choice depends on how long crown takes on this machine)
    xc = ["--no-report", "--method", "both"]
    ray_opts = ["--cluster", f"ray={cluster}", "--shards", "2",
                "--shard-dir", str(tmp_path / "shards")]
    assert main(["crosscheck", *base, *xc, "--out", str(tmp_path / "local")]) in (EXIT_OK, 3)
    assert main(["crosscheck", *base, *xc, *ray_opts, "--out", str(tmp_path / "ray")]) in (
        EXIT_OK, 3)
    local = sorted(p.relative_to(tmp_path / "local") for p in (tmp_path / "local").rglob("*"))
    dist = sorted(p.relative_to(tmp_path / "ray") for p in (tmp_path / "ray").rglob("*"))
    assert local == dist
    assert _json(tmp_path / "local" / "results.json") == _json(tmp_path / "ray" /
                                                               "results.json")
    assert not any((tmp_path / "shards").rglob("shard-*.pt"))  # merged and removed
    base[base.index("--budget")] = "--method"
    base[base.index(str(BUDGET))] = "both"
    assert main(["certify", *base, "--out", str(tmp_path / "c1.json")]) == EXIT_OK
    assert main(["certify", *base, *ray_opts, "--out", str(tmp_path / "c2.json")]) == EXIT_OK
    assert _json(tmp_path / "c1.json") == _json(tmp_path / "c2.json")


def _pids_running(task: str) -> list[int]:
    """Processes whose title is ``ray::<task>`` (Ray retitles a worker while it runs one)."""
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                cmd = (d / "cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
            except OSError:
                continue
            if cmd.startswith(f"ray::{task}"):
                out.append(int(d.name))
    return out


def _kill_first_running(task: str, timeout: float) -> int | None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        pids = _pids_running(task)
        if pids:
            time.sleep(0.3)  # well inside the shard
            os.kill(pids[0], signal.SIGKILL)
            return pids[0]
        time.sleep(0.05)
    return None


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc to find worker processes")
def test_killed_worker_is_retried_and_the_run_completes_equal(cluster, models, data, tmp_path):
    from boundkit.distributed import ModelSource

    src = ModelSource.from_file(models["digits_cnn"])
    ex = _executor(tmp_path, shards=3)
    box: dict = {}
    th = threading.Thread(target=lambda: box.update(
        res=ex.attack(src, data[0][:N], "best", budget=KILL_BUDGET, seed=0, chunk=CHUNK)),
        daemon=True)
    th.start()
    killed = _kill_first_running("run_shard", timeout=60)
    th.join(timeout=120)
    assert killed is not None, "no shard task was seen running"
    assert not th.is_alive() and "res" in box
    ref = _local_attack(_load(models["digits_cnn"]), data[0][:N], budget=KILL_BUDGET)
    _same_attack(box["res"], ref)


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc to find worker processes")
def test_shard_killed_beyond_retries_fails_cleanly_and_resumes(cluster, models, data, tmp_path):
    from boundkit.distributed import DistributedError, ModelSource

    src = ModelSource.from_file(models["digits_cnn"])
    ex = _executor(tmp_path, shards=3, max_retries=0)
    box: dict = {}

    def run():
        try:
            ex.attack(src, data[0][:N], "best", budget=KILL_BUDGET, seed=0, chunk=CHUNK)
        except DistributedError as exc:
            box["err"] = str(exc)

    th = threading.Thread(target=run, daemon=True)
    th.start()
    assert _kill_first_running("run_shard", timeout=60) is not None
    th.join(timeout=120)
    assert "failed" in box.get("err", ""), box
    again = _executor(tmp_path, shards=3)
    got = again.attack(src, data[0][:N], "best", budget=KILL_BUDGET, seed=0, chunk=CHUNK)
    assert again.stats.shards_computed >= 1
    assert again.stats.shards_reused + again.stats.shards_computed == again.stats.shards_total
    ref = _local_attack(_load(models["digits_cnn"]), data[0][:N], budget=KILL_BUDGET)
    _same_attack(got, ref)


def test_sigint_on_cli_driver_keeps_complete_shards_and_a_rerun_finishes(cluster, models,
                                                                         tmp_path):
    """A real SIGINT to ``boundkit attack --cluster ray=ADDRESS`` (a second driver joining
    the module's cluster), then the same command again: one re-run completes it, and the
    result is the local run's."""
    from boundkit.cli import EXIT_BAD_INPUT, EXIT_OK, main

    shards = tmp_path / "shards"
    local = ["attack", "--model", str(models["digits_cnn"]), "--data", "digits", "--n", "192",
             "--budget", str(BUDGET), "--quiet"]
    args = [*local, "--shards", "3", "--workers", "1", "--shard-dir", str(shards),
            "--cluster", f"ray={cluster}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[2]),
                                          os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-m", "boundkit", *args, "--out",
                             str(tmp_path / "ray.json")], env=env, stderr=subprocess.PIPE,
                            text=True, preexec_fn=_sigint_default)
    try:
        t0 = time.monotonic()
        while not list(shards.rglob("shard-*.pt")) and time.monotonic() - t0 < 90:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=60)
        err = proc.stderr.read().strip().splitlines() if proc.stderr else []
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code == EXIT_BAD_INPUT and len(err) == 1 and "interrupted" in err[0], err
    files = list(shards.rglob("shard-*.pt"))
    assert 1 <= len(files) < 3 and not list(shards.rglob("*.tmp"))
    assert main([*args, "--out", str(tmp_path / "ray.json")]) == EXIT_OK
    assert main([*local, "--out", str(tmp_path / "local.json")]) == EXIT_OK
    assert _json(tmp_path / "ray.json") == _json(tmp_path / "local.json")


# ------------------------------------------------------------------------------ issue #26
def _half_sound_method():
    from boundkit.bounds.method import BatchResult, Method, get_method

    class HalfSound(Method):
        name = "test-half-sound"
        description = "half of sound's radius (a test method)"

        def prepare(self, graph):
            return get_method("sound").prepare(graph)

        def run(self, graph, x, plan, *, trace, **options):
            r = get_method("sound").run(graph, x, plan, trace=False)
            return BatchResult(r.radius / 2, r.label, r.runner_up, r.margin, {}, {},
                               outputs=r.outputs, unsafe=r.unsafe)

    return HalfSound()


def test_certify_on_ray_takes_every_option_and_custom_methods(cluster, models, data, tmp_path):
    """The reported bug: ``box=None`` through the executor was a TypeError. Options, statuses
    (samples outside a box), and a registered custom method equal the local run's."""
    from boundkit import certify
    from boundkit.bounds.certificate import SampleStatus
    from boundkit.bounds.method import register_method, unregister_method

    model = _load(models["digits_mlp"])
    x = data[0][:8]
    from boundkit.distributed import RayExecutor

    ex = RayExecutor(workers=1, shard_dir=False)  # the call of the report
    for box in (None, (0.2, 0.6)):
        got = certify(model, x, "crown", box=box, executor=ex)
        ref = certify(model, x, "crown", box=box)
        assert torch.equal(got.radius, ref.radius) and torch.equal(got.status, ref.status)
    assert (got.status == SampleStatus.OUTSIDE_BOX).all()  # digits pixels leave [0.2, 0.6]
    assert "outside the method's input box [0.2, 0.6]" in got.reasons()[0]
    method = _half_sound_method()
    register_method(method, replace=True)
    try:
        ref = certify(model, x, "test-half-sound")
        for m in ("test-half-sound", method):  # by name (registered here only) or object
            got = certify(model, x, m, executor=ex)
            assert torch.equal(got.radius, ref.radius) and got.method == "test-half-sound"
    finally:
        unregister_method("test-half-sound")
    with pytest.raises(TypeError, match=r"method 'sound' takes no option\(s\) \['box'\]"):
        certify(model, x, "sound", box=None, executor=ex)


def test_tampered_or_cut_kept_shards_are_refused_and_reuse_is_recorded(cluster, models,
                                                                       tmp_path, capsys):
    """``--keep-shards``: a re-run reuses the shards and says so in results.json; a shard
    whose radii were multiplied by 100, or cut to 2 radii, stops the re-run with one line
    naming it (exit 2), never a result."""
    import io

    from boundkit.cli import EXIT_BAD_INPUT, EXIT_OK, main

    shards = tmp_path / "shards"
    args = ["certify", "--model", str(models["digits_mlp"]), "--data", "digits", "--n", "80",
            "--quiet", "--cluster", f"ray={cluster}", "--shards", "2", "--keep-shards",
            "--shard-dir", str(shards)]
    assert main([*args, "--out", str(tmp_path / "a.json")]) == EXIT_OK
    first = json.loads((tmp_path / "a.json").read_text())["meta"]["provenance"]["cluster"]
    assert first["shards_reused"] == 0 and first["reused_samples"] == []
    assert main([*args, "--out", str(tmp_path / "b.json")]) == EXIT_OK
    doc = json.loads((tmp_path / "b.json").read_text())
    again = doc["meta"]["provenance"]["cluster"]
    assert again["shards_reused"] == 2 and again["reused_samples"] == list(range(80))
    files = sorted(shards.rglob("shard-*.pt"))
    assert len(files) == 2
    payload = torch.load(files[1], weights_only=True)
    original = files[1].read_bytes()
    for tamper in ("times_100", "cut"):
        c = payload["certificates"]["sound"]
        bad = dict(c, radius=c["radius"] * 100) if tamper == "times_100" else \
            dict(c, radius=c["radius"][:2])
        buf = io.BytesIO()
        torch.save({"certificates": {"sound": bad}}, buf)
        files[1].write_bytes(buf.getvalue())
        capsys.readouterr()
        assert main([*args, "--out", str(tmp_path / "c.json")]) == EXIT_BAD_INPUT
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and str(files[1]) in err[0] and "SHA-256" in err[0], err
        assert not (tmp_path / "c.json").exists()
    files[1].write_bytes(original)
    assert main([*args, "--out", str(tmp_path / "c.json")]) == EXIT_OK
