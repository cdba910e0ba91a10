"""How often ``bk.exact_radius`` finishes on small max-pooled CNNs, against the same nets
with average pooling in place of the max, and with the region search in place of the
domain search.

    python -m benchmarks.exact_max_pool [--seeds 3] [--n 4] [--time-limit 10]

Nets: Conv(1,2,2)-ReLU-Pool2d(2, stride 1)-Linear(8,3) on [1, 4, 4], box [0, 1], seeds
0..seeds-1, ``n`` uniform samples each (float64). Prints, per variant, the samples answered
within the time limit (CPU seconds of this process), the answered radii and the nodes; every
answered radius is checked against ``crown`` (below) and the ``best`` attack (above).
"""

from __future__ import annotations

import argparse
import functools
import json
import time

import torch
from torch import nn

import boundkit as bk
import boundkit.bounds.bab.options as bab_clock
import boundkit.exact.core as exact_core
from boundkit.exact import search as exact_search_module


def net(seed: int, pool: str) -> nn.Module:
    torch.manual_seed(seed)
    layer = nn.MaxPool2d(2, stride=1) if pool == "max" else nn.AvgPool2d(2, stride=1)
    return nn.Sequential(nn.Conv2d(1, 2, 2), nn.ReLU(), layer, nn.Flatten(),
                         nn.Linear(8, 3)).double().eval()


def run(variant: str, seeds: int, n: int, limit: float) -> dict:
    pool = "avg" if variant == "avg" else "max"
    search = exact_search_module.exact_search
    if variant == "max, region search":
        search = functools.partial(search, nodes_by="regions")
    saved = exact_core.exact_search
    exact_core.exact_search = search
    answered, total, bad, nodes, seconds = 0, 0, 0, [], 0.0
    try:
        for seed in range(seeds):
            model = net(seed, pool)
            x = torch.rand(n, 1, 4, 4, generator=torch.Generator().manual_seed(seed),
                           dtype=torch.float64)
            t0 = time.process_time()
            res = bk.exact_radius(model, x, box=(0.0, 1.0), return_details=True,
                                  time_limit=limit, on_budget="nan")
            seconds += time.process_time() - t0
            done = ~torch.isnan(res.radius)
            crown = bk.certify(model, x, "crown", box=(0.0, 1.0)).radius.double()
            att = bk.attack(model, x, "best", box=(0.0, 1.0))
            upper = torch.where(att.success, att.norm.double(), torch.inf)
            bad += int((done & ((crown > res.radius * (1 + 1e-9))
                                | (res.radius > upper * (1 + 1e-6)))).sum())
            answered += int(done.sum())
            total += n
            nodes += res.nodes.tolist()
    finally:
        exact_core.exact_search = saved
    return {"variant": variant, "answered": answered, "samples": total,
            "violations": bad, "median_nodes": sorted(nodes)[len(nodes) // 2],
            "seconds_per_sample": round(seconds / max(total, 1), 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--time-limit", type=float, default=10.0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    bab_clock.CLOCK = time.process_time
    for variant in ("max, domain search", "max, region search", "avg"):
        print(json.dumps(run(variant, args.seeds, args.n, args.time_limit)), flush=True)


if __name__ == "__main__":
    main()
