"""How often ``bk.exact_radius`` finishes on a real-sized MLP within a per-sample time limit.

The MNIST MLP 784-100-100-10 of ``../shared/REFERENCE-NUMBERS.md`` (zoo ``mlp_mnist``,
trained and cached by ``benchmarks/_models.py``), the first ``--n`` correctly classified
test digits (of the first 2000), box [0, 1]: per sample the ``crown`` radius, the best
verified attack norm (``bk.attack(..., "best")``), and ``exact_radius(..., time_limit=T,
on_budget="nan")`` with its time, nodes, regions and the reason where it did not finish.
Every finite exact radius is checked against both ends (crown <= exact <= attack) and its
witness is re-run in float64. One thread; wall-clock and process CPU time per sample.

    python -m benchmarks.exact_mlp --n 10 --time-limit 60 --rtol 0.01 --clock process \\
        --cache runs/models --out docs/results/exact_mlp.md

A long run can be split over processes (one per core): ``--first K --n M --jsonl F`` solves
the samples K..K+M-1 of that list and appends one JSON row per sample to F as it goes;
``--merge F1 F2 ... --out MD`` writes the table of every row (no computation).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

import boundkit as bk
import boundkit.bounds.bab.options as bab_clock
from benchmarks._models import DEFAULT_DATA, REPO, trained
from boundkit.data import load_dataset


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="mlp_mnist")
    ap.add_argument("--n", type=int, default=10)
    ap.add_argument("--time-limit", type=float, default=60.0)
    ap.add_argument("--rtol", type=float, default=1e-6,
                    help="relative tolerance of the exact radius (1e-2: known to 1%%)")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--cache", type=Path, default=REPO / "runs" / "models")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--first", type=int, default=0,
                    help="skip this many of the correctly classified samples (another "
                         "process runs them)")
    ap.add_argument("--jsonl", type=Path, help="append one JSON row per sample here")
    ap.add_argument("--merge", type=Path, nargs="+",
                    help="write the table of these --jsonl files' rows (no computation)")
    ap.add_argument("--clock", choices=("wall", "process"), default="wall",
                    help="the clock the time limit is charged on (process: this process's "
                         "CPU seconds, for a shared machine)")
    a = ap.parse_args()
    if a.merge:
        rows = [tuple(json.loads(line)) for f in a.merge for line in f.read_text().splitlines()
                if line.strip()]
        rows.sort(key=lambda rw: rw[0])
        write(rows, a, f"--merge {' '.join(map(str, a.merge))}")
        return
    torch.set_num_threads(1)
    if a.clock == "process":
        bab_clock.CLOCK = time.process_time
    model = trained(a.model, a.data, a.cache)
    x_all, y_all = load_dataset("mnist", a.data, "test")
    with torch.no_grad():
        pred = model(x_all[:2000].float()).argmax(1)
    idx = torch.nonzero(pred == y_all[:2000]).flatten()[a.first: a.first + a.n]
    x = x_all[idx].float()
    box = (0.0, 1.0)
    crown = bk.certify(model, x, "crown", box=box).radius.double().cpu()
    att = bk.attack(model, x, "best", box=box)
    upper = torch.where(att.success.cpu(), att.norm.double().cpu(), torch.full((len(x),), math.inf))
    model64 = copy.deepcopy(model).double()
    rows = []
    for i in range(len(x)):
        t0, c0 = time.perf_counter(), time.process_time()
        res = bk.exact_radius(model, x[i:i + 1], box=box, time_limit=a.time_limit,
                              rtol=a.rtol, on_budget="nan", return_details=True)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        r = float(res.radius[0])
        ok = ""
        if math.isfinite(r):
            z = x[i:i + 1].double() + res.witness.double()
            with torch.no_grad():
                out = model64(z)[0]
            c = int(res.predicted_class[0])
            adv = bool(torch.cat([out[:c], out[c + 1:]]).max() > out[c])
            # exact R satisfies (1 - rtol) R <= rho <= R: crown <= rho <= R <= attack
            ok = ("ok" if adv and float(crown[i]) <= r * (1 + 1e-9)
                  and r * (1 - a.rtol) <= float(upper[i]) * (1 + 1e-9) else "VIOLATION")
        rows.append((int(idx[i]), float(crown[i]), r, float(upper[i]), wall, cpu,
                     int(res.nodes[0]), int(res.regions[0]), res.reason[0], ok,
                     float(res.lower[0]), float(res.upper[0])))
        print(rows[-1], flush=True)
        if a.jsonl:
            with a.jsonl.open("a") as fh:
                fh.write(json.dumps(rows[-1]) + "\n")
    write(rows, a, f"--n {a.n}" + (f" --first {a.first}" if a.first else ""))


def write(rows: list[tuple], a: argparse.Namespace, how: str) -> None:
    """The Markdown table of ``rows`` (one tuple per sample, as ``main`` builds them)."""
    done = [rw for rw in rows if math.isfinite(rw[2])]
    # soundness of the interval: no attack below its lower end, no certificate above its
    # (witnessed) upper end
    bad_hi = sum(rw[10] > rw[3] * (1 + 1e-9) or rw[11] < rw[1] * (1 - 1e-9) for rw in rows)
    lines = [
        f"# exact_radius on {a.model} (box [0, 1], time limit {a.time_limit:g} s per sample, "
        f"rtol {a.rtol:g})",
        "",
        f"Command: `python -m benchmarks.exact_mlp {how} --time-limit {a.time_limit:g} "
        f"--rtol {a.rtol:g} --clock {a.clock}` (1 thread; the limit is charged on "
        + ("this process's CPU seconds (`--clock process`: a machine shared with other jobs), "
           "the wall column is what it took there)." if a.clock == "process" else
           "wall-clock seconds, the CPU column is what the process got of them)."),
        "",
        f"Finished within the limit: **{len(done)} / {len(rows)}** samples; "
        f"violations (crown <= exact <= attack, witness adversarial in float64): "
        f"{sum(rw[9] == 'VIOLATION' for rw in rows)}; intervals with the attack below "
        f"`lower` or crown above `upper`: {bad_hi}.",
        "",
        "Columns `lower` / `upper`: the interval the exact search reached (`upper`: its "
        "smallest witnessed distance; `lower`: `(1 - rtol) upper` where it finished, else "
        "the smallest radius its open domains certify).",
        "",
        "| test index | crown | exact | lower | upper | best attack | crown / attack | "
        "lower / attack | upper / attack | wall s | CPU s | nodes | regions | "
        "check / reason |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for t, cr, ex, up, wall, cpu, nodes, regions, reason, ok, lo, hi in rows:
        lines.append(f"| {t} | {cr:.4f} | {ex:.6f} | {lo:.4f} | {hi:.6f} | {up:.6f} | "
                     f"{cr / up:.3f} | {lo / up:.3f} | {hi / up:.6f} | {wall:.1f} | "
                     f"{cpu:.1f} | {nodes} | {regions} | {ok or reason.split(';')[0]} |")
    if done:
        lines += ["", f"Median exact / attack over the finished samples: "
                  f"{np.median([rw[2] / rw[3] for rw in done]):.4f}; "
                  f"median crown / attack over all: "
                  f"{np.median([rw[1] / rw[3] for rw in rows]):.3f}."]
    text = "\n".join(lines) + "\n"
    print(text)
    if a.out:
        a.out.write_text(text)


if __name__ == "__main__":
    main()
