"""Attacks on the GPU: boundkit's attacks and the reference implementations on CUDA vs CPU.

Runs every boundkit attack of the benchmark (and the Foolbox / adv-lib / torchattacks
references that are installed, see ``attacks_vs_references.py``) on the same model and
samples, once on the CPU and once on CUDA, and prints per attack the median norm on each
device (they should agree up to float rounding), the wall times and the speed-up.  Without a
CUDA device it says so, runs the CPU half only and exits with status 0 (so it can sit in a
script that also runs on CPU-only machines).

Usage::

    python -m benchmarks.attacks_gpu --model-dir /tmp/boundkit-models --models mlp,lenet5 \
        --n-samples 1000 [--skip-references] [--out docs/results/attacks_gpu.md]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.attacks_vs_references import ours, references
from boundkit.attacks.base import Misclassification, verify

ROOT = Path(__file__).resolve().parents[1]


def run_on(device: str, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
           args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    m = model.to(device)
    xd, yd = x.to(device), y.to(device)
    jobs = ours(m, xd, yd, args)
    if not args.skip_references:
        jobs.update(references(m, xd, yd, args))
    out: dict[str, dict[str, Any]] = {}
    for k in sorted(jobs):
        try:
            if device == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            x_adv = jobs[k]()
            if device == "cuda":
                torch.cuda.synchronize()
            sec = time.perf_counter() - t
        except Exception as e:  # a reference failing must not stop the benchmark
            print(f"  [{device}] {k}: ERROR {type(e).__name__}: {e}", flush=True)
            continue
        ok, norm, _ = verify(m, xd, x_adv.detach().to(xd.dtype), Misclassification(yd),
                             (0.0, 1.0))
        med = float(torch.quantile(norm.double().cpu(), 0.5, interpolation="lower"))
        out[k] = {"median": med, "success": float(ok.double().mean()), "seconds": sec}
        print(f"  [{device}] {k:32s} median {med:.4f} {sec:.2f}s", flush=True)
    model.to("cpu")
    return out


def main(argv: list[str] | None = None) -> int:
    from benchmarks.attacks_best_vs_old import finish, load, select

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-root", default=str(ROOT.parent / "shared" / "data"))
    p.add_argument("--model-dir", required=True)
    p.add_argument("--models", default="mlp,lenet5")
    p.add_argument("--n-samples", type=int, default=1000)
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--cw-steps", type=int, default=1000)
    p.add_argument("--cw-searches", type=int, default=9)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--skip-references", action="store_true")
    p.add_argument("--torchattacks-deepfool", action="store_true")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    cuda = torch.cuda.is_available()
    head = (f"CUDA device: {torch.cuda.get_device_name(0)}" if cuda else
            "No CUDA device (torch.cuda.is_available() is False, torch "
            f"{torch.__version__}): CPU times only, no GPU comparison.")
    print(head, flush=True)
    lines = ["# Attacks on GPU vs CPU", "", head, "",
             f"Command: `python -m benchmarks.attacks_gpu "
             f"{' '.join(sys.argv[1:] if argv is None else argv)}`", ""]
    for name in args.models.split(","):
        model = load(name, args.model_dir)
        x, y = select(model, args.data_root, args.n_samples)
        cpu = run_on("cpu", model, x, y, args)
        gpu = run_on("cuda", model, x, y, args) if cuda else {}
        lines += [f"## {name} ({len(x)} samples)", "",
                  "| attack | median CPU | median GPU | CPU s | GPU s | speed-up |",
                  "|---|---|---|---|---|---|"]
        for k, c in cpu.items():
            g = gpu.get(k)
            gm, gs, sp = ("-", "-", "-") if g is None else (
                f"{g['median']:.4f}", f"{g['seconds']:.2f}", f"{c['seconds'] / g['seconds']:.1f}x")
            lines.append(f"| {k} | {c['median']:.4f} | {gm} | {c['seconds']:.2f} | {gs} | {sp} |")
        lines.append("")
    return finish(lines, args.out)


if __name__ == "__main__":
    raise SystemExit(main())
