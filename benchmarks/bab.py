"""Branch and bound (``bab``) against ``crown`` and ``alpha``: certified radius / norm of the
best verified attack, per sample, at several per-sample time budgets; same process, same
samples, one thread.

Models: the MNIST MLP 784-100-100-10 and the small CNN (``small_cnn``, with max poolings)
of ``../shared/REFERENCE-NUMBERS.md`` (trained by ``benchmarks/_models.py``, cached under
``runs/models``) and ``mnist-net_256x2.onnx`` of ``../shared/networks``. Samples: the
first ``--n`` correctly classified MNIST test images.
The upper end of every search is the ``best`` attack's norm (run once per model, not
counted in the budgets). A radius above a verified attack norm is a violation (counted).

    BOUNDKIT_DATA=../shared/data OMP_NUM_THREADS=1 python -m benchmarks.bab [--networks DIR] \\
        [--n 20] [--budgets 1 2 5] [--models mlp_mnist mnist-net_256x2 small_cnn] \\
        [--refs crown alpha] [--out docs/results/bab.md [--append]]
"""

from __future__ import annotations

import argparse
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
from boundkit.models import load_onnx


def load(name: str, data_root: Path, cache: Path, networks: Path) -> torch.nn.Module:
    if name.endswith(".onnx") or (networks / f"{name}.onnx").exists():
        path = networks / (name if name.endswith(".onnx") else f"{name}.onnx")
        return load_onnx(path, check=False, input_shape=(1, 28, 28), normalize=None).eval()
    return trained(name, data_root, cache)


def first_correct(model: torch.nn.Module, data_root: Path, n: int) -> torch.Tensor:
    x_all, y_all = load_dataset("mnist", data_root, "test")
    with torch.no_grad():
        pred = torch.cat([model(x_all[s:s + 500].float()).argmax(1) for s in range(0, 2000, 500)])
    idx = torch.nonzero(pred == y_all[:2000]).flatten()[:n]
    return x_all[idx].float()


def run_model(name: str, args: argparse.Namespace) -> dict:
    model = load(name, args.data_root, args.cache, args.networks)
    x = first_correct(model, args.data_root, args.n)
    n = x.shape[0]
    box = None if args.no_box else (0.0, 1.0)
    torch.manual_seed(0)
    t0 = bab_clock.now()
    adv = bk.attack(model, x, "best")
    norm = torch.where(adv.success, adv.norm.double(), torch.inf)
    if box is None:  # both attacks' examples are adversarial in the plain ball
        free = bk.attack(model, x, "best", box=None)
        norm = torch.minimum(norm, torch.where(free.success, free.norm.double(), torch.inf))
    t_attack = bab_clock.now() - t0
    found = torch.isfinite(norm)
    rows: dict[str, dict] = {}
    lirpa: torch.Tensor | None = None

    def record(label: str, radius: torch.Tensor, seconds: float, extra: dict | None = None
               ) -> None:
        r = radius.double()
        ratio = (r[found] / norm[found]).numpy()
        rows[label] = {"median_ratio": float(np.median(ratio)) if ratio.size else float("nan"),
                       "at_least_0.99": float((ratio >= 0.99).mean()) if ratio.size else 0.0,
                       "seconds_per_sample": seconds / n,
                       "violations": int((found & (r > norm)).sum()),
                       "ratios": [float(v) for v in ratio], **(extra or {})}
        if lirpa is not None:
            ok = found & (lirpa > 0)
            rows[label]["median_over_lirpa"] = float(np.median((r[ok] / lirpa[ok]).numpy()))
        print(f"  {label}: median ratio {rows[label]['median_ratio']:.4f}, "
              f">= 0.99 on {rows[label]['at_least_0.99']:.0%}, "
              + (f"/ auto_LiRPA CROWN {rows[label]['median_over_lirpa']:.4f}, "
                 if lirpa is not None else "")
              + f"{seconds / n:.2f} s/sample, violations {rows[label]['violations']}",
              flush=True)

    for m in args.refs:
        t0 = bab_clock.now()
        if m == "lirpa":  # auto_LiRPA 0.3's CROWN (it ignores the box: the no-box reference)
            from benchmarks.crown_vs_lirpa import lirpa_radius

            with torch.no_grad():
                label = model(x).argmax(1)
            r = lirpa_radius(model, x, label, torch.where(found, norm * 1.001, 10.0)).double()
            lirpa = r
            record("auto_LiRPA CROWN", r, bab_clock.now() - t0)
            continue
        r = bk.certify(model, x, m, box=box).radius
        record(m, r, bab_clock.now() - t0)
    for b in args.budgets:
        t0 = bab_clock.now()
        cert = bk.certify(model, x, "bab", upper=torch.where(found, norm, torch.inf), box=box,
                          time_budget=b, refresh=args.refresh, iterations=args.iterations,
                          batch=args.batch)
        dt = bab_clock.now() - t0
        dom = cert.info["domains"].double()
        steps = f", {args.iterations} steps" if args.iterations else ""
        steps += f", batch {args.batch}" if args.batch != 512 else ""
        extra: dict = {"median_domains": float(dom.median())}
        if args.red_team:
            extra["red_team"] = red_team(model, x, cert.radius, box)
        record(f"bab {b:g} s{steps}", cert.radius, dt, extra)
    return {"model": name, "n": n, "no_box": box is None, "attack_found": int(found.sum()),
            "attack_median_norm": float(norm[found].median()), "attack_seconds": t_attack,
            "rows": rows}


def red_team(model: torch.nn.Module, x: torch.Tensor, radius: torch.Tensor,
             box: tuple[float, float] | None) -> dict:
    """Counterexamples against certified radii: projected gradient ascent (300 steps, 8
    restarts) inside 0.999 x each certified ball, and the float64 minimal-norm search of
    ``boundkit.testing`` (a norm at or below the radius is a violation); every point found
    is re-checked on the model. Returns the counts and the smallest norm / radius."""
    from boundkit.bounds.bab import pgd_counterexample
    from boundkit.testing import adversarial_search

    with torch.no_grad():
        label = model(x).argmax(1)
    r = radius.double()
    inside = r > 0
    found, _, _ = pgd_counterexample(model, x[inside], label[inside], 0.999 * r[inside], box,
                                     steps=300, restarts=8)
    _, norm = adversarial_search(model, x, steps=300, box=box)
    gap = norm / torch.where(r > 0, r, torch.full_like(r, math.nan))
    out = {"pgd_inside": int(found.sum()), "search_at_or_below": int((norm <= r).sum()),
           "min_search_norm_over_radius": float(np.nanmin(gap.numpy()))}
    print(f"    red team: {out}", flush=True)
    return out


def command(args: argparse.Namespace) -> str:
    """The command line that reproduces a run (its settings spelled out)."""
    return (f"python -m benchmarks.bab --n {args.n} --budgets "
            f"{' '.join(f'{b:g}' for b in args.budgets)} --models {' '.join(args.models)}"
            f" --refs {' '.join(args.refs)} --refresh {args.refresh} --iterations "
            f"{args.iterations} --clock {args.clock}"
            + (f" --batch {args.batch}" if args.batch != 512 else "")
            + (f" --networks {args.networks}" if "mnist-net_256x2" in args.models else "")
            + (" --no-box" if args.no_box else "") + (" --red-team" if args.red_team else ""))


def sections(results: list[dict]) -> list[str]:
    """One markdown section per model."""
    lines: list[str] = []
    for res in results:
        lines += [f"## {res['model']} ({res['n']} samples; attack median norm "
                  f"{res['attack_median_norm']:.4f}, {res['attack_found']}/{res['n']} found, "
                  f"{res['attack_seconds'] / res['n']:.2f} s/sample)"
                  + (" - no input box (L2 ball only)" if res.get("no_box") else ""), "",
                  "| method | median certified / attack | samples >= 0.99 "
                  "| / auto_LiRPA CROWN (median) | s / sample | median subproblems "
                  "| violations |", "|---|---|---|---|---|---|---|"]
        for label, row in res["rows"].items():
            dom = row.get("median_domains")
            over = row.get("median_over_lirpa")
            hit = row.get("at_least_0.99")
            lines.append(f"| {label} | {row['median_ratio']:.4f} | "
                         f"{'-' if hit is None else f'{hit:.0%}'} | "
                         f"{'-' if over is None else f'{over:.4f}'} | "
                         f"{row['seconds_per_sample']:.2f} | "
                         f"{'-' if dom is None else f'{dom:.0f}'} | {row['violations']} |")
        for label, row in res["rows"].items():
            rt = row.get("red_team")
            if rt:
                lines += ["", f"Red team of `{label}`: projected gradient ascent (300 steps, 8 "
                          f"restarts) inside 0.999 x each certified ball found {rt['pgd_inside']} "
                          "adversarial examples; the float64 minimal-norm search found "
                          f"{rt['search_at_or_below']} at or below a radius (smallest norm / "
                          f"radius {rt['min_search_norm_over_radius']:.3f})."]
        lines.append("")
    return lines


def markdown(results: list[dict], args: argparse.Namespace) -> str:
    lines = ["# Branch and bound (`bab`): certified radius / attack norm", "",
             f"Generated by `{command(args)}` "
             f"({time.strftime('%Y-%m-%d')}, CPU, `OMP_NUM_THREADS=1`, "
             f"torch {torch.__version__}).", "",
             "Ratio: certified radius / norm of the `best` attack's verified adversarial "
             "example, per sample (median over the samples the attack broke). Time: seconds "
             f"({'CPU seconds of this process' if args.clock == 'process' else 'wall'}) "
             "per sample of the whole `certify` call (`bab`: the `crown` start radius "
             "and the search; the attack giving the upper end is not counted). Violations: "
             "radius above a verified attack norm (must be 0). Subproblems: domains bounded "
             "per sample over the whole search (median).", "",
             "Settings: `bab`'s defaults unless the command line says otherwise (512 "
             "subproblems per engine call; intermediate bounds of the root reused below it; "
             "`--iterations`: gradient steps on the slopes and beta multipliers per batch, "
             "`bab`'s default 3, rows marked `N steps`). The search stops early for a sample "
             "whose lower end closes on the attack norm (0.1% relative), so the time used can "
             "be below the budget; "
             "a batch's time is charged after it ends, so it can also exceed it a little.",
             ""]
    return "\n".join(lines + sections(results))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--budgets", type=float, nargs="+", default=[1.0, 2.0, 5.0])
    ap.add_argument("--models", nargs="+", default=["mlp_mnist", "mnist-net_256x2"])
    ap.add_argument("--refs", nargs="*", default=["crown", "alpha"],
                    help="reference methods run before bab (default: crown alpha; 'lirpa': "
                    "auto_LiRPA 0.3's CROWN radius by bisection, which ignores the box)")
    ap.add_argument("--no-box", action="store_true",
                    help="no input box (the plain L2 ball) for the attacks, the references "
                    "and bab; the upper end: the smaller of the attacks' norms with and "
                    "without the box")
    ap.add_argument("--refresh", type=int, default=1 << 20)
    ap.add_argument("--iterations", type=int, default=3,
                    help="gradient steps per batch of subproblems (bab's default 3)")
    ap.add_argument("--batch", type=int, default=512,
                    help="subproblems per engine call (bab's default 512)")
    ap.add_argument("--red-team", action="store_true",
                    help="attack every bab radius: PGD inside 0.999 x each certified ball and "
                    "the float64 minimal-norm search (counts in the JSON; must be 0)")
    ap.add_argument("--data-root", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--cache", type=Path, default=REPO / "runs" / "models")
    ap.add_argument("--networks", type=Path, default=REPO / ".." / "shared" / "networks",
                    help="folder of the ONNX networks (default ../shared/networks)")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--append", action="store_true",
                    help="append this run's model sections to an existing --out file")
    ap.add_argument("--clock", choices=("wall", "process"), default="wall",
                    help="what the time budgets and the reported times count: wall seconds "
                    "or this process's CPU seconds (for a loaded shared machine)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.clock == "process":  # budgets and timings in this process's CPU seconds
        bab_clock.CLOCK = time.process_time
    results = []
    for name in args.models:
        print(name, flush=True)
        results.append(run_model(name, args))
    if args.out is not None and args.append and args.out.exists():
        extra = [f"The sections below: `{command(args)}` ({time.strftime('%Y-%m-%d')}).", ""]
        args.out.write_text(args.out.read_text().rstrip("\n") + "\n\n"
                            + "\n".join(extra + sections(results)) + "\n")
        js = args.out.with_suffix(".json")
        old = json.loads(js.read_text()) if js.exists() else []
        js.write_text(json.dumps(old + results, indent=1))
        print(f"appended to {args.out}", flush=True)
    elif args.out is not None:
        args.out.write_text(markdown(results, args) + "\n")
        args.out.with_suffix(".json").write_text(json.dumps(results, indent=1))
        print(f"wrote {args.out}", flush=True)


if __name__ == "__main__":
    main()
