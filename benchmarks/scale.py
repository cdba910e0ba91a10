"""Scaling of sharded runs on Ray: local vs Ray with 1 and 2 workers, same samples, one run.

Workload (issue #15's "attack workload"): the ``best`` attack on the first ``--n`` MNIST test
images of ``--model`` (default mlp_mnist), in chunks of 64 exactly as ``boundkit attack``
runs it. Three configurations, measured round-robin ``--repeats`` times (fastest kept):

* ``local``: the command line's loop, in this process, one thread;
* ``ray-1``: a local Ray instance, one shard at a time;
* ``ray-2``: the same instance, two shards at a time.

Ray start-up and the workers' first import of torch (paid once per cluster, not per sample)
are measured separately and excluded from the throughputs. Every Ray result is checked to
be bit-identical to the local one. Then, for the projection, the per-sample cost of a full
cross-check (``sound`` certificate + ``best`` attack at its default budget) is measured
locally on ``--cost-samples`` images of an MNIST LeNet-5 and a CIFAR-10 NIN, and the wall
time of the 10,000-image test sets is projected for 8 and 64 workers:

    T(W) = startup + ceil(ceil(N / 64) / W) * 64 * c / e

(shards are whole chunks of 64; ``c`` the measured seconds per sample; ``e`` Ray's measured
efficiency: the 2-worker speed-up divided by the cores this run could actually get, probed
round-robin with the workload by a CPU-bound loop in 1 and 2 processes, capped at 1: on a
shared machine the other jobs' load, not Ray, caps the speed-up, and the probe says how much).

Usage::

    OMP_NUM_THREADS=1 python -m benchmarks.scale                     # ~8 minutes on 2 cores
    OMP_NUM_THREADS=1 python -m benchmarks.scale --n 64 --repeats 1  # quick look

Models are trained once with the repo's training script and cached under ``runs/``
(``--epochs`` caps the epochs of the two cost models to keep that short).
"""

from __future__ import annotations

import argparse
import math
import os
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks._models import DEFAULT_DATA
from boundkit.attacks import AttackResult, attack
from boundkit.data import load_dataset
from boundkit.distributed import ModelSource, RayExecutor
from boundkit.models.io import load_model
from boundkit.models.train import train_zoo_model

CHUNK = 64


def model_file(name: str, data_root: Path, cache: Path, epochs: int | None) -> Path:
    path = cache / f"{name}.safetensors"
    if not path.exists():
        path = train_zoo_model(name, data_root=data_root, out_dir=cache, seed=0,
                               epochs=epochs, verbose=True, download=False)
    return path


def local_attack(model: torch.nn.Module, x: torch.Tensor, budget: int) -> AttackResult:
    """``boundkit attack``'s loop: chunks of 64, each call seeded with 0."""
    return AttackResult.concat([attack(model, x[s : s + CHUNK], "best", budget=budget, seed=0)
                                for s in range(0, x.shape[0], CHUNK)])


def same(a: AttackResult, b: AttackResult) -> bool:
    return (torch.equal(a.norm, b.norm) and torch.equal(a.x_adv.cpu(), b.x_adv.cpu())
            and a.found_by == b.found_by)


def _spin(cpu_seconds: float) -> None:
    t0 = time.process_time()
    while time.process_time() - t0 < cpu_seconds:
        pass


def parallelism(cpu_seconds: float = 1.0) -> float:
    """How many cores this run gets right now: the same CPU-bound loop in 1 and in 2
    processes at once; 2 * wall(1) / wall(2) (2.0 on an idle 2-core machine, about 1.0
    when other jobs leave one core's worth)."""
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    walls = []
    for k in (1, 2):
        procs = [ctx.Process(target=_spin, args=(cpu_seconds,)) for _ in range(k)]
        t0 = time.perf_counter()
        for p in procs:
            p.start()
        for p in procs:
            p.join()
        walls.append(time.perf_counter() - t0)
    return 2 * walls[0] / walls[1]


def load() -> str:
    try:
        return "load average " + " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "load average n/a"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="mlp_mnist")
    ap.add_argument("--n", type=int, default=256, help="samples of the scaling workload")
    ap.add_argument("--budget", type=int, default=50, help="attack budget of the workload")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cost-samples", type=int, default=8)
    ap.add_argument("--cost-models", nargs="*", default=["lenet5", "cifar_nin_small"])
    ap.add_argument("--epochs", type=int, default=1, help="epochs of the cost models if "
                    "they must be trained")
    ap.add_argument("--data-root", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--cache", type=Path, default=Path("runs"))
    a = ap.parse_args()
    torch.set_num_threads(1)

    print(f"# python -m benchmarks.scale on {os.cpu_count()} cores; {load()} at start")
    path = model_file(a.model, a.data_root, a.cache, None)
    model = load_model(path).eval()
    x, _ = load_dataset("mnist", a.data_root, "test", download=False)
    x = x[: a.n].to(torch.float32)
    src = ModelSource.from_file(path)

    t0 = time.perf_counter()
    ex2 = RayExecutor(workers=2, shard_dir=False)
    ex2.connect()
    t_start = time.perf_counter() - t0
    t0 = time.perf_counter()
    pids = ex2.warm_up(src)  # both workers import torch and boundkit and load the model
    t_warm = time.perf_counter() - t0
    if len(set(pids)) != 2:
        print(f"warning: the warm-up reached workers {pids}, not two distinct ones")
    ex1 = RayExecutor(workers=1, shard_dir=False)
    print(f"Ray start-up {t_start:.1f}s, worker warm-up (imports, model load) {t_warm:.1f}s")

    ref = None
    best: dict[str, float] = {}
    probes = []
    for r in range(a.repeats):
        probes.append(parallelism())
        print(f"  repeat {r + 1} cores available to this run (2 spinning processes vs 1): "
              f"{probes[-1]:.2f}", flush=True)
        for name in ("local", "ray-1", "ray-2"):
            t0 = time.perf_counter()
            if name == "local":
                res = local_attack(model, x, a.budget)
            else:
                ex = ex1 if name == "ray-1" else ex2
                res = ex.attack(src, x, "best", budget=a.budget, seed=0)
            dt = time.perf_counter() - t0
            if ref is None:
                ref = res
            elif not same(ref, res):
                raise SystemExit(f"{name}: results differ from the local run (a bug)")
            best[name] = min(best.get(name, math.inf), dt)
            print(f"  repeat {r + 1} {name:>6}: {dt:7.2f}s  {a.n / dt:6.2f} samples/s  "
                  f"({load()})", flush=True)
    probes.append(parallelism())
    thr = {k: a.n / v for k, v in best.items()}
    avail = float(np.median(probes))
    # Ray's own efficiency: the 2-worker speed-up relative to what the machine allowed
    eff = min(1.0, thr["ray-2"] / thr["ray-1"] / max(avail, 1e-9))
    print(f"\n## attack workload: best (budget {a.budget}) on {a.n} MNIST test images of "
          f"{a.model}, chunks of {CHUNK}; fastest of {a.repeats}")
    print("| configuration | wall time (s) | samples/s | vs local | vs ray-1 |")
    print("|---|---:|---:|---:|---:|")
    for k in ("local", "ray-1", "ray-2"):
        print(f"| {k} | {best[k]:.2f} | {thr[k]:.2f} | {thr[k] / thr['local']:.3f} | "
              f"{thr[k] / thr['ray-1']:.3f} |")
    print(f"\nray-1 / local throughput: {thr['ray-1'] / thr['local']:.3f} (target >= 0.90); "
          f"ray-2 / ray-1: {thr['ray-2'] / thr['ray-1']:.3f} (target >= 1.70); sharded results "
          f"bit-identical to local: yes")
    print(f"cores available to this run (median of {len(probes)} probes, 2 spinning processes"
          f" vs 1): {avail:.2f} (2.00 on an idle 2-core machine); Ray's efficiency, "
          f"(ray-2 / ray-1) / available cores: e = {eff:.3f}")
    ex2.shutdown()

    print(f"\n## projection: cross-check (sound + best, default budget) of 10,000 test images"
          f" (per-sample cost measured locally on one chunk of {a.cost_samples} images; a chunk "
          f"of 64 costs less per sample, so the projection is conservative)")
    print("| model | data | s/sample (1 core) | 1 worker | 8 workers | 64 workers |")
    print("|---|---|---:|---:|---:|---:|")
    from boundkit.crosschecking import crosscheck
    from boundkit.models import ZOO

    startup = t_start + t_warm
    for name in a.cost_models:
        ds = ZOO[name].dataset
        m = load_model(model_file(name, a.data_root, a.cache, a.epochs)).eval()
        xc, _ = load_dataset(ds, a.data_root, "test", download=False)
        xc = xc[: a.cost_samples].to(torch.float32)
        t0 = time.perf_counter()
        crosscheck(m, xc, methods=("sound",), attack="best", chunk_size=CHUNK, seed=0)
        c = (time.perf_counter() - t0) / a.cost_samples
        n_chunks = math.ceil(10_000 / CHUNK)
        cells = []
        for w in (1, 8, 64):
            t = startup + math.ceil(n_chunks / w) * CHUNK * c / (eff if w > 1 else 1.0)
            cells.append(f"{t / 3600:.2f} h" if t >= 3600 else f"{t / 60:.1f} min")
        print(f"| {name} | {ds} | {c:.3f} | " + " | ".join(cells) + " |", flush=True)
    print(f"\n(startup {startup:.0f}s = Ray start + worker warm-up, as measured here; each "
          f"worker a dedicated core like one of this machine's, Ray's efficiency e as measured "
          f"above; {load()} at the end)")


if __name__ == "__main__":
    main()
