"""Every step of ``bab``'s radius search on a few MNIST MLP samples: per step and sample the
answer, its reason, the subproblems bounded, the radius its open subproblems certify and the
per-step subproblem cap; for the per-step cap experiment of ``docs/results/bab.md`` (the
plateau of the boxed MLP). ``--step-cap`` lowers ``BabOptions.max_domains`` (20,000), the
per-step cap when no total is given, so that it binds within seconds.

    OMP_NUM_THREADS=1 python -m benchmarks.bab_step_log --budget 8 --samples 1 2 \\
        --step-cap 1000 --data-root ../shared/data --cache runs/models
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import torch

import boundkit as bk
import boundkit.bounds.bab.options as bab_clock
import boundkit.bounds.bab.radius as bab_radius
from benchmarks._models import DEFAULT_DATA, REPO, trained
from benchmarks.bab import first_correct


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--budget", type=float, default=8.0)
    ap.add_argument("--samples", type=int, nargs="+", default=[1, 2],
                    help="positions among the first correctly classified test images")
    ap.add_argument("--step-cap", type=int, default=0, help="per-step subproblem cap (0: "
                    "bab's default)")
    ap.add_argument("--data-root", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--cache", type=Path, default=REPO / "runs" / "models")
    args = ap.parse_args()
    torch.set_num_threads(1)
    bab_clock.CLOCK = time.process_time
    if args.step_cap:
        @dataclasses.dataclass(frozen=True)
        class Capped(bab_clock.BabOptions):
            max_domains: int = args.step_cap

        bab_radius.BabOptions = Capped  # type: ignore[misc]
    model = trained("mlp_mnist", args.data_root, args.cache)
    x = first_correct(model, args.data_root, max(args.samples) + 1)[args.samples]
    torch.manual_seed(0)
    adv = bk.attack(model, x, "best")
    norm = torch.where(adv.success, adv.norm.double(), torch.inf)
    inner = bab_radius.verify_graph
    t0 = time.process_time()

    def logged(*a: Any, **k: Any) -> Any:
        res = inner(*a, **k)
        cap = k.get("max_domains")
        print(json.dumps({"cpu_s": round(time.process_time() - t0, 2), "eps": a[3].tolist(),
                          "status": res.status, "reason": res.reason,
                          "domains": res.domains.tolist(),
                          "certified": [round(float(v), 5) for v in res.certified],
                          "step_cap": None if cap is None else cap.tolist()}), flush=True)
        return res

    bab_radius.verify_graph = logged
    cert = bk.certify(model, x, "bab", upper=norm, time_budget=args.budget)
    print(json.dumps({"cpu_s": round(time.process_time() - t0, 2),
                      "ratio": (cert.radius / norm).tolist(),
                      "domains": cert.info["domains"].tolist()}))


if __name__ == "__main__":
    main()
