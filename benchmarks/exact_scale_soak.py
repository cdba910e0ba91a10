"""Soak of the exact radius under positive layer rescaling (the property tests, many more nets).

Per random ReLU net (2-6 inputs, 1-3 hidden layers of 2-8, 2-5 classes, PyTorch seeds) and
random per-layer scales ``10^U(-15, 15)`` (biases carry the running product, so the logits
are a positive multiple of the original's): the exact radius of the rescaled net equals the
original's to 1e-9 relative, every witness of both is strictly adversarial when the model
is re-run in float64, and ``crown`` (same box) never exceeds the exact radius.  Half the
nets use the box [0, 1].  Stops after ``--examples`` samples or ``--minutes``.

    python -m benchmarks.exact_scale_soak --examples 2000 --minutes 10
"""

from __future__ import annotations

import argparse
import copy
import sys
import time

import numpy as np
import torch

import boundkit as bk
from boundkit.exact import exact_radius
from tests.exact.helpers_exact import margin, mlp


def rescaled(model: torch.nn.Sequential, scales: list[float]) -> torch.nn.Sequential:
    out = copy.deepcopy(model)
    cum = 1.0
    with torch.no_grad():
        for lin, s in zip([m for m in out if isinstance(m, torch.nn.Linear)], scales):
            cum *= s
            lin.weight.mul_(s)
            lin.bias.mul_(cum)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--examples", type=int, default=2000)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    torch.set_num_threads(1)
    rng = np.random.default_rng(a.seed)
    stop = time.time() + 60 * a.minutes
    n = nets = unknown = 0
    bad: list[str] = []
    worst = 0.0
    while n < a.examples and time.time() < stop:
        d = int(rng.integers(2, 7))
        hidden = [int(rng.integers(2, 9)) for _ in range(int(rng.integers(1, 4)))]
        sizes = (d, *hidden, int(rng.integers(2, 6)))
        seed = int(rng.integers(0, 10**6))
        model = mlp(sizes, seed)
        scales = [10.0 ** rng.uniform(-15, 15) for _ in range(len(sizes) - 1)]
        scaled = rescaled(model, scales)
        boxed = bool(rng.integers(0, 2))
        g = torch.Generator().manual_seed(seed)
        x = (torch.rand if boxed else torch.randn)(3, d, generator=g, dtype=torch.float64)
        box = (0.0, 1.0) if boxed else None
        case = f"sizes={sizes} seed={seed} scales={scales} box={box}"
        nets += 1
        ref = exact_radius(model, x, box=box, time_limit=20.0, on_budget="nan",
                           return_details=True)
        res = exact_radius(scaled, x, box=box, time_limit=20.0, on_budget="nan",
                           return_details=True)
        both = ~torch.isnan(ref.radius) & ~torch.isnan(res.radius)
        unknown += int((~both).sum())
        n += int(both.sum())
        fin = both & torch.isfinite(ref.radius)
        if not torch.equal(torch.isinf(ref.radius[both]), torch.isinf(res.radius[both])):
            bad.append(f"inf mismatch: {case}")
        if fin.any():
            rel = ((res.radius[fin] - ref.radius[fin]).abs() / ref.radius[fin].clamp_min(1e-300))
            worst = max(worst, float(rel.max()))
            if float(rel.max()) > 1e-9:
                bad.append(f"radius {ref.radius.tolist()} vs {res.radius.tolist()}: {case}")
            for m, r in ((model, ref), (scaled, res)):
                mm = margin(m, x[fin] + r.witness[fin], r.predicted_class[fin])
                if not bool((mm > 0).all()):
                    bad.append(f"witness not adversarial: {case}")
            crown = bk.certify(scaled, x, "crown", box=box).radius.double().cpu()
            if bool((crown[fin] > res.radius[fin] * (1 + 1e-9)).any()):
                bad.append(f"crown {crown.tolist()} > exact {res.radius.tolist()}: {case}")
    print(f"# exact radius under layer rescaling: soak (seed {a.seed})\n")
    print(f"Command: `python -m benchmarks.exact_scale_soak --examples {a.examples} "
          f"--minutes {a.minutes:g} --seed {a.seed}`\n")
    print(f"{nets} nets, {n} samples compared ({unknown} past the 20 s limit in either net); "
          f"largest relative radius difference {worst:.2e}; violations: {len(bad)}.")
    for b in bad[:20]:
        print("-", b)
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
