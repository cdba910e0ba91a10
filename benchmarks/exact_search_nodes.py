"""Node counts, regions, radii and time of the exact branch-and-bound on small ReLU nets.

Used to compare versions of ``boundkit/exact/search.py`` (e.g. before/after a change of the
pruning bounds): ``python -m benchmarks.exact_search_nodes --out before.json`` then
``--compare before.json`` (``BOUNDKIT_SRC=/path/to/tree`` runs another tree's boundkit).
One CPU thread; times per net (all samples), best of --repeat: wall-clock and CPU
(process) time, the latter steadier on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

if os.environ.get("BOUNDKIT_SRC"):  # another tree's boundkit (an older commit) in this process
    sys.path.insert(0, os.environ["BOUNDKIT_SRC"])
import boundkit  # noqa: E402
from boundkit.exact import exact_radius  # noqa: E402
from tests.exact.helpers_exact import mlp  # noqa: E402

print("boundkit from", boundkit.__file__, flush=True)

CASES = [  # (sizes, seed, samples, box)
    ((2, 6, 3), 0, 3, None),
    ((2, 8, 8, 3), 1, 3, None),
    ((2, 5, 2), 2, 3, None),
    ((3, 8, 6, 3), 5, 4, None),
    ((4, 6, 6, 4), 7, 4, None),
    ((2, 16, 16, 3), 3, 4, None),
    ((5, 12, 10, 3), 11, 4, None),
    ((4, 8, 8, 8, 3), 13, 3, None),
    ((3, 8, 6, 3), 5, 4, (-2.0, 2.0)),
]


def run(repeat: int) -> list[dict]:
    torch.set_num_threads(1)
    out = []
    for sizes, seed, n, box in CASES:
        model = mlp(sizes, seed)
        x = torch.randn(n, sizes[0], generator=torch.Generator().manual_seed(seed),
                        dtype=torch.float64)
        if box is not None:
            x = x.clamp(box[0] + 0.1, box[1] - 0.1)
        times, cpu = [], []
        for _ in range(repeat):
            t0, c0 = time.perf_counter(), time.process_time()
            res = exact_radius(model, x, box=box, return_details=True, max_regions=20000)
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
        out.append({"sizes": list(sizes), "seed": seed, "box": box,
                    "radius": [float(v) for v in res.radius],
                    "nodes": [int(v) for v in res.nodes],
                    "regions": [int(v) for v in res.regions],
                    "time_s": min(times), "cpu_s": min(cpu)})
        print(f"{sizes} box={box}: nodes {out[-1]['nodes']} regions {out[-1]['regions']} "
              f"time {min(times):.3f}s cpu {min(cpu):.3f}s", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path)
    ap.add_argument("--compare", type=Path)
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    res = run(a.repeat)
    if a.out:
        a.out.write_text(json.dumps(res, indent=1))
    if a.compare:
        old = json.loads(a.compare.read_text())
        print("| net | box | nodes before | nodes after | CPU before | CPU after | "
              "max rel. radius diff |")
        print("|---|---|---|---|---|---|---|")
        tot = [0, 0, 0.0, 0.0]
        for o, r in zip(old, res):
            diff = max(abs(p - q) / max(abs(p), 1e-300) if p != q else 0.0
                       for p, q in zip(o["radius"], r["radius"]))
            print(f"| {'-'.join(map(str, r['sizes']))} s{r['seed']} | {r['box']} | "
                  f"{sum(o['nodes'])} | {sum(r['nodes'])} | {o['cpu_s']:.3f} s | "
                  f"{r['cpu_s']:.3f} s | {diff:.1e} |")
            tot = [tot[0] + sum(o["nodes"]), tot[1] + sum(r["nodes"]), tot[2] + o["cpu_s"],
                   tot[3] + r["cpu_s"]]
        print(f"| total | | {tot[0]} | {tot[1]} | {tot[2]:.3f} s | {tot[3]:.3f} s | |")


if __name__ == "__main__":
    main()
