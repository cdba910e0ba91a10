"""Certification speed against a plain forward pass, measured in the same run.

Certifies MNIST (``mnist-10k.npz``: all 10,000 images by default) with LeNet-5 (thesis
Section 5.4, trained by ``boundkit.models.train``) and prints samples per second and the
ratio of certification time to one forward pass over the same batch:

* forward32: the model as trained (float32), the reference the issue's targets name;
* forward64: the same forward pass in float64, which every certificate needs (margins and
  activations are computed in float64 so that rounding can be bounded).

The per-model constants (spectral norms, FFT bounds, the affine tail's Jacobian) are
computed once per model; their cost is reported separately ("setup"). Also runs the
peck2017 method on LeNet-5 and on the LRN and batch-norm variants.

    python -m benchmarks.certify_speed [--n 10000] [--threads 2]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

import boundkit as bk
import boundkit.models.io
from benchmarks._models import DEFAULT_DATA, REPO, trained


def timed(fn, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def forward(model: torch.nn.Module, x: torch.Tensor, batch: int) -> None:
    with torch.no_grad():
        for s in range(0, x.shape[0], batch):
            model(x[s : s + batch])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data-root", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--cache", type=Path, default=REPO / "runs" / "models")
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "results" / "certify_speed.md")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    raw = np.load(args.data_root / "mnist-10k.npz")
    x = torch.from_numpy(raw["x"][: args.n]).float().div(255).unsqueeze(1)
    rows = []
    lenet = trained("lenet5", args.data_root, args.cache)
    lenet64 = bk.models.io.load_model(args.cache / "lenet5.safetensors").double().eval()
    x64 = x.double()
    t32 = timed(lambda: forward(lenet, x, args.batch), args.repeat)
    t64 = timed(lambda: forward(lenet64, x64, args.batch), args.repeat)
    t0 = time.perf_counter()
    graph = bk.capture(lenet, x[:2])
    bk.certify(lenet, x[:2], graph=graph)
    setup = time.perf_counter() - t0
    for method in ("sound", "peck2017"):
        bk.certify(lenet, x[:2], method=method, graph=graph)  # constants cached
        tc = timed(lambda m=method: bk.certify(lenet, x, method=m, graph=graph,
                                               batch_size=args.batch, trace=False), args.repeat)
        cert = bk.certify(lenet, x[:1000], method=method, graph=graph)
        rows.append((f"lenet5 / {method}", x.shape[0], tc, x.shape[0] / tc, tc / t32, tc / t64,
                     float(cert.radius.median())))
    lines = [
        "# Certification speed (LeNet-5, MNIST)",
        "",
        f"Command: `python -m benchmarks.certify_speed --n {args.n} --threads {args.threads}`",
        f"(best of {args.repeat}; {torch.get_num_threads()} torch threads; batch {args.batch}).",
        "",
        f"- forward pass float32 over {x.shape[0]} images: {t32:.3f} s",
        f"- forward pass float64 over {x.shape[0]} images: {t64:.3f} s",
        f"- one-time per-model setup of the sound method (capture, norms, tail): {setup:.2f} s",
        "",
        "| model / method | samples | seconds | samples/s | ratio to forward32 "
        "| ratio to forward64 | median radius (first 1000) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r[0]} | {r[1]} | {r[2]:.3f} | {r[3]:.0f} | {r[4]:.2f} | {r[5]:.2f} "
                     f"| {r[6]:.4g} |")
    # peck2017 and sound end to end on the LRN and BN variants (trained briefly)
    lines += ["", "End-to-end runs on the variants (1,000 images, 1 epoch of training each):",
              "",
              "| model | sound median radius | peck2017 median radius | sound seconds |",
              "|---|---|---|---|"]
    for name in ("lenet5_lrn1", "lenet5_lrn2", "lenet5_lrn3", "lenet5_bn"):
        m = trained(name, args.data_root, args.cache, epochs=1)
        xs = x[:1000]
        t = time.perf_counter()
        s = bk.certify(m, xs)
        ts = time.perf_counter() - t
        p = bk.certify(m, xs, method="peck2017")
        lines.append(f"| {name} | {float(s.radius.median()):.4g} | "
                     f"{float(p.radius.median()):.4g} | {ts:.2f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)


if __name__ == "__main__":
    main()
