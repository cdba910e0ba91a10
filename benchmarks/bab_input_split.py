"""Branch and bound with input splitting (``split="input"``) on tabular MLPs, against
``crown`` and against ``bab`` with ReLU splitting: certified radius / norm of the best
verified attack per sample, at several per-sample time budgets; same process, same samples,
one thread.

Models (trained here with ``boundkit.models.train.train_model`` on the data set's train
split, seed 0, the zoo's UCI settings: Adam, 300 epochs, batch 16): ``DATA-relu-32x2``
(d-32-32-3 ReLU), ``DATA-tanh-32x2`` (d-32-32-3 tanh; ReLU splitting refuses it) and the
zoo's ``mlp_iris`` (4-5-3 tanh) / ``mlp_wine`` (13-5-3-3 tanh), DATA in iris (4 features),
wine (13). Samples: the first ``--n`` correctly classified test rows. The upper end of
every search is the ``best`` attack's norm (box [0, 1], run once per model, not counted in
the budgets). Red team: a radius above a verified attack norm is a violation; so is a class
change found inside a certified ball by the float64 adversarial search of
``boundkit.testing`` (clipped to the box, 200 steps) or among ``--points`` random points of
the ball (a third on its sphere).

    OMP_NUM_THREADS=1 python -m benchmarks.bab_input_split [--n 20] [--budgets 1 5] \\
        [--models iris-relu-32x2 wine-relu-32x2 iris-tanh-32x2 wine-tanh-32x2 mlp_iris \\
        mlp_wine] [--clock process] [--out docs/results/bab_input_split.md]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

import boundkit as bk
import boundkit.bounds.bab.options as bab_clock
from boundkit.data import load_dataset
from boundkit.models.train import train_model
from boundkit.models.zoo import ZOO, build_model
from boundkit.testing import adversarial_search

MODELS = ("iris-relu-32x2", "wine-relu-32x2", "iris-tanh-32x2", "wine-tanh-32x2",
          "mlp_iris", "mlp_wine")


def build(name: str) -> tuple[nn.Module, str]:
    """The untrained model ``name`` and its data set."""
    if name in ZOO:
        return build_model(name, seed=0), ZOO[name].dataset
    data, act, _ = name.split("-")
    d = {"iris": 4, "wine": 13}[data]
    torch.manual_seed(0)
    a = {"relu": nn.ReLU, "tanh": nn.Tanh}[act]
    return nn.Sequential(nn.Linear(d, 32), a(), nn.Linear(32, 32), a(), nn.Linear(32, 3)), data


def trained(name: str) -> tuple[nn.Module, torch.Tensor, torch.Tensor, float]:
    model, data = build(name)
    x, y = load_dataset(data, None, "train")
    model = train_model(model, x.float(), y, epochs=300, lr=1e-3, batch_size=16, seed=0)
    xt, yt = load_dataset(data, None, "test")
    with torch.no_grad():
        acc = float((model(xt.float()).argmax(1) == yt).double().mean())
    return model.eval(), xt.float(), yt, acc


def ball_points(x: torch.Tensor, r: torch.Tensor, k: int, seed: int) -> torch.Tensor:
    """[N, k, d] points of each ball (a third on its sphere, shrunk by 1e-12), clipped to
    [0, 1] (x lies in it, so a clipped point stays in the ball)."""
    gen = torch.Generator().manual_seed(seed)
    n, d = x.shape
    u = torch.randn(n, k, d, generator=gen, dtype=torch.float64)
    u = u / u.norm(dim=2, keepdim=True)
    rad = torch.rand(n, k, 1, generator=gen, dtype=torch.float64) ** (1.0 / d)
    rad[:, : k // 3] = 1.0
    return (x.unsqueeze(1) + u * rad * r.reshape(-1, 1, 1) * (1 - 1e-12)).clamp(0.0, 1.0)


def red_team(model: nn.Module, x: torch.Tensor, r: torch.Tensor, points: int) -> int:
    """Samples with a class change inside their certified ball (must be 0)."""
    m64 = model.double()
    xd = x.double()
    label = m64(xd).argmax(1)
    _, adv = adversarial_search(m64, xd, steps=200, box=(0.0, 1.0))
    bad = adv < r
    pts = ball_points(xd, r, points, 0)
    with torch.no_grad():
        out = m64(pts.reshape(-1, x.shape[1])).reshape(x.shape[0], points, -1).argmax(2)
    bad |= (out != label.unsqueeze(1)).any(1) & (r > 0)
    model.float()
    return int(bad.sum())


def run_model(name: str, args: argparse.Namespace) -> dict:
    model, xt, yt, acc = trained(name)
    with torch.no_grad():
        ok = torch.nonzero(model(xt).argmax(1) == yt).flatten()[: args.n]
    x = xt[ok]
    n = x.shape[0]
    torch.manual_seed(0)
    adv = bk.attack(model, x, "best")
    norm = torch.where(adv.success, adv.norm.double(), torch.inf)
    found = torch.isfinite(norm)
    upper = torch.where(found, norm, torch.inf)
    relu = any(isinstance(m, nn.ReLU) for m in model.modules())
    rows: dict[str, dict] = {}

    def record(label: str, r: torch.Tensor, seconds: float, dom: torch.Tensor | None = None
               ) -> None:
        r = r.double()
        ratio = (r[found] / norm[found]).numpy()
        rows[label] = {"median_ratio": float(np.median(ratio)),
                       "min_ratio": float(ratio.min()),
                       "at_least_0.99": float((ratio >= 0.99).mean()),
                       "seconds_per_sample": seconds / n,
                       "median_domains": None if dom is None else float(dom.double().median()),
                       "violations": int((found & (r > norm)).sum())
                       + red_team(model, x, r, args.points),
                       "ratios": [float(v) for v in ratio]}
        print(f"  {label}: median {rows[label]['median_ratio']:.4f} (min "
              f"{rows[label]['min_ratio']:.4f}), >= 0.99 on {rows[label]['at_least_0.99']:.0%},"
              f" {seconds / n:.2f} s/sample, violations {rows[label]['violations']}",
              flush=True)

    t0 = bab_clock.now()
    record("crown", bk.certify(model, x, "crown").radius, bab_clock.now() - t0)
    for split in (("relu", "input") if relu else ("input",)):
        for b in args.budgets:
            t0 = bab_clock.now()
            cert = bk.certify(model, x, "bab", upper=upper, time_budget=b, split=split)
            record(f"bab, {split} split, {b:g} s", cert.radius, bab_clock.now() - t0,
                   cert.info["domains"])
    return {"model": name, "n": n, "accuracy": acc, "attack_found": int(found.sum()),
            "attack_median_norm": float(norm[found].median()), "rows": rows}


def command(args: argparse.Namespace) -> str:
    return (f"python -m benchmarks.bab_input_split --n {args.n} --budgets "
            f"{' '.join(f'{b:g}' for b in args.budgets)} --models {' '.join(args.models)} "
            f"--points {args.points} --clock {args.clock}")


def markdown(results: list[dict], args: argparse.Namespace) -> str:
    lines = ["# Branch and bound with input splitting: certified radius / attack norm", "",
             f"Generated by `OMP_NUM_THREADS=1 {command(args)}` "
             f"({time.strftime('%Y-%m-%d')}, CPU, torch {torch.__version__}).", "",
             "Ratio: certified radius / norm of the `best` attack's verified adversarial "
             "example (box [0, 1]), per sample; median and minimum over the samples. Time: "
             f"{'CPU seconds of this process' if args.clock == 'process' else 'wall seconds'}"
             " per sample of the whole `certify` call (`bab`: the `crown` start radius and "
             "the search, which stops a sample within 0.1% of the attack norm). "
             "Violations: a radius above the attack norm, or a class change inside a "
             "certified ball found by a 200-step float64 adversarial search or among "
             f"{args.points} random points of the ball (must be 0). `split=\"auto\"` picks "
             "the ReLU split on the ReLU nets and the input split on the tanh nets (ReLU "
             "splitting refuses them; at most 16 features).", ""]
    for res in results:
        lines += [f"## {res['model']} (test accuracy {res['accuracy']:.1%}; {res['n']} "
                  f"samples; attack median norm {res['attack_median_norm']:.4f}, "
                  f"{res['attack_found']}/{res['n']} found)", "",
                  "| method | median certified / attack | minimum | samples >= 0.99 "
                  "| s / sample | median subproblems | violations |",
                  "|---|---|---|---|---|---|---|"]
        for label, row in res["rows"].items():
            dom = row["median_domains"]
            lines.append(f"| {label} | {row['median_ratio']:.4f} | {row['min_ratio']:.4f} | "
                         f"{row['at_least_0.99']:.0%} | {row['seconds_per_sample']:.2f} | "
                         f"{'-' if dom is None else f'{dom:.0f}'} | {row['violations']} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--budgets", type=float, nargs="+", default=[1.0, 5.0])
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    ap.add_argument("--points", type=int, default=20_000,
                    help="random points of every certified ball checked (red team)")
    ap.add_argument("--clock", choices=("wall", "process"), default="process",
                    help="what the budgets and times count: wall seconds or this process's "
                    "CPU seconds (for a loaded shared machine)")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.clock == "process":
        bab_clock.CLOCK = time.process_time
    results = []
    for name in args.models:
        print(name, flush=True)
        results.append(run_model(name, args))
    if args.out is not None:
        args.out.write_text(markdown(results, args) + "\n")
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
