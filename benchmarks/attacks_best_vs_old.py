"""The ``best`` ensemble against its previous version, same run, same samples.

The previous ensemble is not kept in the package: this script extracts ``boundkit/attacks``
at a pinned commit (``--old-commit``, default the last commit before issue #13) with
``git archive`` into a temporary folder, renames its imports to a private package name and
imports it next to the current code.  Both ensembles then run on the same model and the same
samples, round-robin (``--repeats``, fastest time kept), and the script prints

* the median norm of each and their ratio (target: new / old <= 1.001),
* the per-sample ratio new / old (quantiles, worst sample, samples worse by > 1 %),
* the wall-time ratio new / old (target: <= 1/3), and the process CPU-time ratio (steadier
  than wall time on a shared machine: the attacks run in one thread),
* per member of the new ensemble: how many samples it won and its wall time
  (``BestEnsemble.report``),
* with ``--models tiny``: both against the exact radius (``boundkit.exact_radius``).

Usage (models trained once with ``boundkit train NAME --out DIR``)::

    python -m benchmarks.attacks_best_vs_old --models mlp,lenet5 --n-samples 500 \
        --model-dir /tmp/boundkit-models --out docs/results/attacks_best_vs_old.md
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

import boundkit.attacks as A
from boundkit.attacks.base import Misclassification, verify

ROOT = Path(__file__).resolve().parents[1]

OLD_COMMIT = "2fb54a1d8e19e1702b790db27a89d86d85aaae1d"
ZOO = {"mlp": "mlp_mnist", "lenet5": "lenet5", "tiny": "mlp_mnist_tiny"}


def import_old_attacks(commit: str) -> Any:
    """``boundkit.attacks`` as of ``commit``, importable as ``_bk_old_attacks``."""
    tmp = Path(tempfile.mkdtemp(prefix="bk-old-"))
    tar = subprocess.run(["git", "-C", str(ROOT), "archive", commit, "boundkit/attacks"],
                         check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(tmp)], input=tar, check=True)
    pkg = tmp / "_bk_old_attacks"
    (tmp / "boundkit" / "attacks").rename(pkg)
    for f in pkg.glob("*.py"):
        f.write_text(re.sub(r"\bboundkit\.attacks\b", "_bk_old_attacks", f.read_text()))
    # loaded from its folder by file location (no sys.path entry for the temporary tree)
    spec = importlib.util.spec_from_file_location(
        "_bk_old_attacks", pkg / "__init__.py", submodule_search_locations=[str(pkg)])
    module = importlib.util.module_from_spec(spec)
    sys.modules["_bk_old_attacks"] = module
    spec.loader.exec_module(module)
    return module


def load(name: str, model_dir: str) -> torch.nn.Module:
    from boundkit.models.io import load_model

    m = load_model(Path(model_dir) / f"{ZOO[name]}.safetensors").eval()
    for p in m.parameters():
        p.requires_grad_(False)
    return m


def select(model: torch.nn.Module, data_root: str, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    from boundkit.data import load_mnist

    x, y = load_mnist(data_root, split="test")
    with torch.no_grad():
        ok = model(x).argmax(1) == y
    return x[ok][:n], y[ok][:n]


def timed(fn: Any, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, Any]:
    t, c = time.perf_counter(), time.process_time()
    out = fn()
    sec, cpu = time.perf_counter() - t, time.process_time() - c
    ok, norm, _ = verify(model, x, out.x_adv.detach(), Misclassification(y), (0.0, 1.0))
    return {"norm": norm, "success": ok, "seconds": sec, "cpu": cpu, "result": out}


def q(t: torch.Tensor, p: float) -> float:
    return float(torch.quantile(t.double(), p, interpolation="lower"))


def finish(lines: list[str], out: str | None) -> int:
    """Print the report and write it to ``out`` (when given)."""
    text = "\n".join(lines)
    print(text)
    if out:
        Path(out).write_text(text + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-root", default=str(ROOT.parent / "shared" / "data"))
    p.add_argument("--model-dir", required=True)
    p.add_argument("--models", default="mlp,lenet5")
    p.add_argument("--n-samples", type=int, default=500)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--old-commit", default=OLD_COMMIT)
    p.add_argument("--exact-timeout", type=float, default=30.0)
    p.add_argument("--exact-samples", type=int, default=None,
                   help="tiny model: exact radii of the first N samples only (default: all; "
                   "the exact search takes seconds to minutes per sample)")
    p.add_argument("--out", default=None)
    p.add_argument("--save", default=None,
                   help="folder for the per-sample norms of both ensembles (NAME-N.pt)")
    p.add_argument("--no-exact", action="store_true",
                   help="tiny model: skip the exact radii (compare new with old only)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    old = import_old_attacks(args.old_commit)
    lines = ["# `best`: new ensemble vs the previous one (same run)", "",
             f"Command: `python -m benchmarks.attacks_best_vs_old "
             f"{' '.join(sys.argv[1:] if argv is None else argv)}`  ",
             f"torch {torch.__version__}, {args.threads} thread(s); previous ensemble = "
             f"`boundkit/attacks` at {args.old_commit[:7]}; box [0, 1]; times are the fastest "
             f"of {args.repeats} round-robin run(s).", ""]
    for name in args.models.split(","):
        model = load(name, args.model_dir)
        x, y = select(model, args.data_root, args.n_samples)
        new_ens = A.BestEnsemble()
        jobs = {"old": lambda m=model, x=x: old.attack(m, x, "best"),
                "new": lambda m=model, x=x, e=new_ens: A.attack(m, x, e)}
        res: dict[str, dict[str, Any]] = {}
        for rep in range(args.repeats):
            for k, fn in jobs.items():
                r = timed(fn, model, x, y)
                if k not in res:
                    res[k] = r
                    if k == "new":
                        res[k]["report"] = new_ens.report
                res[k]["seconds"] = min(res[k]["seconds"], r["seconds"])
                res[k]["cpu"] = min(res[k]["cpu"], r["cpu"])
                print(f"[{name}] {k} run {rep}: median {q(r['norm'], 0.5):.4f} "
                      f"{r['seconds']:.1f}s wall, {r['cpu']:.1f}s CPU", flush=True)
        o, n_ = res["old"], res["new"]
        if args.save:
            Path(args.save).mkdir(parents=True, exist_ok=True)
            torch.save({k: {"norm": v["norm"], "success": v["success"], "seconds": v["seconds"]}
                        for k, v in res.items()}, Path(args.save) / f"{name}-{len(x)}.pt")
        both = o["success"] & n_["success"]
        ratio = n_["norm"][both] / o["norm"][both].clamp_min(1e-30)
        lines += [f"## {name} ({len(x)} correctly classified test digits)", "",
                  "| | old | new | new / old |", "|---|---|---|---|",
                  f"| median norm | {q(o['norm'], 0.5):.5f} | {q(n_['norm'], 0.5):.5f} | "
                  f"{q(n_['norm'], 0.5) / q(o['norm'], 0.5):.5f} |",
                  f"| success | {o['success'].double().mean():.3f} | "
                  f"{n_['success'].double().mean():.3f} | |",
                  f"| wall time (s) | {o['seconds']:.1f} | {n_['seconds']:.1f} | "
                  f"{n_['seconds'] / o['seconds']:.3f} |",
                  f"| process CPU time (s) | {o['cpu']:.1f} | {n_['cpu']:.1f} | "
                  f"{n_['cpu'] / o['cpu']:.3f} |", "",
                  f"Per-sample ratio new / old over the {int(both.sum())} samples both broke: "
                  f"min {float(ratio.min()):.4f}, median {q(ratio, 0.5):.5f}, "
                  f"95th percentile {q(ratio, 0.95):.4f}, max {float(ratio.max()):.4f}; "
                  f"worse by more than 1 %: {int((ratio > 1.01).sum())}, better by more than "
                  f"1 %: {int((ratio < 0.99).sum())}; broken by old only: "
                  f"{int((o['success'] & ~n_['success']).sum())}, by new only: "
                  f"{int((~o['success'] & n_['success']).sum())}.", ""]
        lines += ["Members of the new ensemble (samples won = smallest verified norm, "
                  "ties to the earlier member; samples run = where it was started):", "",
                  "| member | samples run | samples won | seconds |", "|---|---|---|---|"]
        for m in res["new"]["report"]:
            lines.append(f"| {m.name} | {m.samples_run} | {m.samples_won} | {m.seconds:.1f} |")
        lines.append("")
        if name == "tiny" and not args.no_exact:
            from boundkit.exact import exact_radius

            m = len(x) if args.exact_samples is None else min(args.exact_samples, len(x))
            ex = torch.full((len(x),), float("nan"), dtype=torch.float64)
            ex[:m] = exact_radius(model, x[:m], box=(0.0, 1.0), time_limit=args.exact_timeout,
                                  on_budget="nan").double()
            keep = ~ex.isnan()
            lines.append(f"Exact radius finished on {int(keep.sum())} of the first {m} samples "
                         f"({args.exact_timeout:.0f} s limit each).")
            for k in ("old", "new"):
                r = res[k]["norm"][keep] / ex[keep]
                lines.append(f"- {k}: per-sample norm / exact: median {q(r, 0.5):.5f}, max "
                             f"{float(r.max()):.4f}, within 1 %: {int((r <= 1.01).sum())}")
            rr = res["new"]["norm"][keep] / res["old"]["norm"][keep]
            lines += [f"- new / old on these samples: max {float(rr.max()):.4f}, worse by "
                      f"more than 1 %: {int((rr > 1.01).sum())}", ""]
    return finish(lines, args.out)


if __name__ == "__main__":
    raise SystemExit(main())
