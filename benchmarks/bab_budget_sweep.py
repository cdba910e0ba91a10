"""``bab``'s certified radius / attack norm as a function of the per-sample time budget
(issue 23, item 6), with ``crown``, ``alpha`` and auto_LiRPA 0.3 CROWN as references; same
process, same samples, one thread, per-sample budgets in CPU seconds of the process
(``--clock process``) or wall seconds.

Per model: the first ``--n`` correctly classified test images (of the first 2,000, as the
other benchmarks pick them); the upper end of every search is the norm of the ``best``
attack's verified adversarial example (box [0, 1]; run once, not counted in the budgets).
Then:

* ``crown`` and ``alpha`` (box [0, 1]) and auto_LiRPA 0.3's CROWN (radius by 15-step
  bisection; it ignores the input box for L2, so it is the no-box reference): horizontal
  lines;
* ``bab`` run once per budget of ``--separate`` (each its own search: the steps' shares of
  time are fractions of the budget, so a short budget searches differently from the first
  seconds of a long one), and once with the largest budget, whose anytime trace
  (:class:`~boundkit.bounds.bab.RadiusTrace`: the certified radius over the seconds charged
  to the sample) gives the radius that run held after every budget of ``--budgets``. Per
  budget the table and the JSON hold both, and how the trace's value compares with the
  separate run's, per sample.

A radius above the verified attack norm is a violation (counted; must be 0).

    OMP_NUM_THREADS=1 python -m benchmarks.bab_budget_sweep --n 5 --models mlp_mnist \\
        --data-root ../shared/data --cache runs/models --networks ../shared/networks \\
        --clock process --out docs/results/bab_budget_sweep.md [--append]
    python -m benchmarks.bab_budget_sweep --plot-only --out docs/results/bab_budget_sweep.md

Models: ``mlp_mnist``, ``small_cnn``, ``lenet5`` (zoo models, trained by
``benchmarks/_models.py`` or loaded from ``--cache``), ``mnist-net_256x2`` and
``cifar_base_kw`` (ONNX files in ``--networks``; CIFAR-10 with the networks' README's
normalisation inside the model). Results: ``--out`` (Markdown), its ``.json`` and ``.png``
(one panel per model: median and inter-quartile band of certified / attack over the budget).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import boundkit as bk
import boundkit.bounds.bab.options as bab_clock
from benchmarks._models import DEFAULT_DATA, REPO, trained
from boundkit.bounds.bab import RadiusTrace
from boundkit.data import load_dataset

#: ONNX networks this script knows: file stem -> (data set, input shape, normalisation)
ONNX: dict[str, tuple[str, tuple[int, ...], Any]] = {
    "mnist-net_256x2": ("mnist", (1, 28, 28), None),
    "cifar_base_kw": ("cifar10", (3, 32, 32), ((0.485, 0.456, 0.406), (0.225, 0.225, 0.225))),
}
BUDGETS = (0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 60.0)
MODELS = ("mlp_mnist", "small_cnn", "lenet5", "mnist-net_256x2", "cifar_base_kw")


def load(name: str, args: argparse.Namespace) -> tuple[torch.nn.Module, str]:
    """The model and its data set's name."""
    if name in ONNX:
        from boundkit.models import load_onnx

        data, shape, normalize = ONNX[name]
        model = load_onnx(args.networks / f"{name}.onnx", check=False, input_shape=shape,
                          normalize=normalize)
        return model.eval(), data
    return trained(name, args.data_root, args.cache).eval(), "mnist"


def first_correct(model: torch.nn.Module, data: str, root: Path, n: int
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The first ``n`` correctly classified test images of the first 2,000: images, labels,
    indices."""
    x_all, y_all = load_dataset(data, root, "test")
    with torch.no_grad():
        pred = torch.cat([model(x_all[s:s + 500].float()).argmax(1) for s in range(0, 2000, 500)])
    idx = torch.nonzero(pred == y_all[:2000]).flatten()[:n]
    return x_all[idx].float(), y_all[idx], idx


def quartiles(v: np.ndarray) -> dict[str, float]:
    """Median, quartiles and minimum of per-sample ratios."""
    if not v.size:
        return {"median": float("nan"), "q25": float("nan"), "q75": float("nan"),
                "min": float("nan")}
    return {"median": float(np.median(v)), "q25": float(np.quantile(v, 0.25)),
            "q75": float(np.quantile(v, 0.75)), "min": float(v.min())}


def run_model(name: str, args: argparse.Namespace) -> dict[str, Any]:
    model, data = load(name, args)
    x, label, idx = first_correct(model, data, args.data_root, args.n)
    n = x.shape[0]
    torch.manual_seed(0)
    t0 = bab_clock.now()
    adv = bk.attack(model, x, "best")
    norm = torch.where(adv.success, adv.norm.double(), torch.inf)
    t_attack = bab_clock.now() - t0
    found = torch.isfinite(norm)
    res: dict[str, Any] = {"model": name, "n": n, "samples": idx.tolist(),
                           "attack_norm": norm.tolist(), "attack_found": int(found.sum()),
                           "attack_seconds_per_sample": t_attack / n, "refs": {}, "bab": {},
                           "trace": {}}

    def ratios(r: torch.Tensor) -> tuple[list[float], int]:
        r = r.double().cpu()
        return ([float(v) for v in (r / norm).tolist()],
                int((found & (r > norm)).sum()))

    for m in args.refs:
        t0 = bab_clock.now()
        if m == "lirpa":  # auto_LiRPA 0.3's CROWN, no box (it ignores the box for L2)
            from benchmarks.crown_vs_lirpa import lirpa_radius

            try:
                r = lirpa_radius(model, x, label, torch.where(found, norm * 1.001, 10.0).float())
            except Exception as exc:  # noqa: BLE001 - auto_LiRPA 0.3 refuses ops this way
                res["refs"]["auto_LiRPA CROWN"] = {"error": f"{type(exc).__name__}: {exc}"[:200]}
                print(f"  auto_LiRPA CROWN: {res['refs']['auto_LiRPA CROWN']['error']}",
                      flush=True)
                continue
            key = "auto_LiRPA CROWN"
        else:
            r = bk.certify(model, x, m).radius
            key = m
        dt = bab_clock.now() - t0
        rat, viol = ratios(r)
        res["refs"][key] = {"ratios": rat, "seconds_per_sample": dt / n, "violations": viol}
        print(f"  {key}: median {np.median(rat):.4f}, min {min(rat):.4f}, "
              f"{dt / n:.2f} s/sample", flush=True)
    top = max(args.budgets)
    runs = sorted(set(b for b in args.separate if b < top)) + [top]
    upper = torch.where(found, norm, torch.inf)
    for b in runs:
        t0 = bab_clock.now()
        cert = bk.certify(model, x, "bab", upper=upper, time_budget=b)
        dt = bab_clock.now() - t0
        trace = RadiusTrace.from_info(cert.info)
        rat, viol = ratios(cert.radius)
        res["bab"][f"{b:g}"] = {
            "budget": b, "ratios": rat, "seconds_per_sample": dt / n, "violations": viol,
            "domains": cert.info["domains"].tolist(),
            # the run's own trace at the grid's budgets up to its own
            "trace_ratios": {f"{g:g}": ratios(trace.at(g))[0] for g in args.budgets if g <= b}}
        print(f"  bab {b:g} s: median {np.median(rat):.4f}, min {min(rat):.4f}, "
              f"{dt / n:.2f} s/sample, violations {viol}", flush=True)
        if b == top:
            used = torch.isfinite(trace.seconds)
            res["trace"] = {
                "budget": b,
                "points": [{"seconds": trace.seconds[i][used[i]].tolist(),
                            "ratio": (trace.radius[i][used[i]] / norm[i]).tolist()}
                           for i in range(n)],
                "at": {f"{g:g}": ratios(trace.at(g))[0] for g in args.budgets}}
    return res


def summary(res: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per budget: quartiles of the separate run and of the long run's trace, and the trace
    minus the separate run per sample (median, max, how many samples above)."""
    found = np.isfinite(np.asarray(res["attack_norm"]))
    out: dict[str, dict[str, Any]] = {}
    trace = res.get("trace", {}).get("at", {})
    for key, at in trace.items():
        row: dict[str, Any] = {"trace": quartiles(np.asarray(at)[found])}
        if key in res["bab"]:
            sep = np.asarray(res["bab"][key]["ratios"])[found]
            row["separate"] = quartiles(sep)
            row["separate_seconds"] = res["bab"][key]["seconds_per_sample"]
            d = np.asarray(at)[found] - sep
            row["trace_minus_separate"] = {"median": float(np.median(d)),
                                           "max": float(d.max()),
                                           "above": int((d > 1e-12).sum()),
                                           "below": int((d < -1e-12).sum())}
        out[key] = row
    return out


def trace_curve(res: dict[str, Any], lo: float, hi: float, k: int = 60
                ) -> list[tuple[float, dict[str, float]]]:
    """The longest run's trace on a log grid of ``k`` budgets in [lo, hi]: per budget the
    quartiles over the samples of the ratio held then (the step function of the points)."""
    found = np.isfinite(np.asarray(res["attack_norm"]))
    pts = [p for p, f in zip(res["trace"]["points"], found) if f]
    out = []
    for g in np.geomspace(lo, hi, k):
        v = np.asarray([max([r for s, r in zip(p["seconds"], p["ratio"]) if s <= g],
                            default=0.0) for p in pts])
        out.append((float(g), quartiles(v)))
    return out


def command(args: argparse.Namespace, models: list[str]) -> str:
    return (f"python -m benchmarks.bab_budget_sweep --n {args.n} --models {' '.join(models)} "
            f"--budgets {' '.join(f'{b:g}' for b in args.budgets)} --separate "
            f"{' '.join(f'{b:g}' for b in args.separate)} --refs {' '.join(args.refs)} "
            f"--clock {args.clock}")


def section(res: dict[str, Any]) -> list[str]:
    """One model's Markdown section."""
    norms = np.asarray(res["attack_norm"])
    lines = [f"## {res['model']} ({res['n']} samples: test images {res['samples']}; attack "
             f"median norm {np.median(norms[np.isfinite(norms)]):.4f}, "
             f"{res['attack_found']}/{res['n']} found)", "",
             f"Command: `{res['command']}`", "",
             "| reference | median | min | s / sample | violations |", "|---|---|---|---|---|"]
    for key, ref in res["refs"].items():
        if "error" in ref:
            lines.append(f"| {key} | - | - | - | {ref['error']} |")
            continue
        v = np.asarray(ref["ratios"])[np.isfinite(norms)]
        lines.append(f"| {key} | {np.median(v):.4f} | {v.min():.4f} | "
                     f"{ref['seconds_per_sample']:.2f} | {ref['violations']} |")
    lines += ["", "| budget (s) | `bab` run with this budget: median [q25, q75] | min "
              "| s / sample used | longest run's trace at this budget: median [q25, q75] | "
              "min | trace - separate run, per sample: median / max (samples above / below) |",
              "|---|---|---|---|---|---|---|"]
    for key, row in summary(res).items():
        t = row["trace"]
        if "separate" in row:
            s, d = row["separate"], row["trace_minus_separate"]
            sep = (f"{s['median']:.4f} [{s['q25']:.4f}, {s['q75']:.4f}] | {s['min']:.4f} | "
                   f"{row['separate_seconds']:.2f}")
            diff = (f"{d['median']:+.4f} / {d['max']:+.4f} ({d['above']} / {d['below']})")
        else:
            sep, diff = "not run | - | -", "-"
        lines.append(f"| {key} | {sep} | {t['median']:.4f} [{t['q25']:.4f}, {t['q75']:.4f}] | "
                     f"{t['min']:.4f} | {diff} |")
    viol = (sum(r.get("violations", 0) for r in res["refs"].values())
            + sum(r["violations"] for r in res["bab"].values()))
    lines += ["", f"Violations (a radius above the verified attack norm): {viol}.", ""]
    return lines


def markdown(results: list[dict[str, Any]], args: argparse.Namespace, figure: str) -> str:
    clock = ("CPU seconds of the process (`--clock process`)" if args.clock == "process"
             else "wall seconds")
    lines = ["# `bab`: certified radius / attack norm against the per-sample time budget", "",
             f"Generated by `benchmarks/bab_budget_sweep.py` ({time.strftime('%Y-%m-%d')}, CPU, "
             f"one thread, torch {torch.__version__}); budgets and times in {clock}; each "
             "model's command is in its section.", "",
             f"![bab against the time budget]({figure})", "",
             "Ratio: certified radius / norm of the `best` attack's verified adversarial example "
             "(box [0, 1]), per sample; median, quartiles and minimum over the samples. "
             "`crown` and `alpha` certify with the box [0, 1]; auto_LiRPA 0.3's CROWN ignores "
             "the box for L2 (its radius is a no-box certificate, so also one with the box). "
             "`bab` starts from `crown`'s radius and searches up to the attack norm.", "",
             "Two readings of `bab` per budget b: a run given the budget b, and the trace of "
             "the run with the largest budget (`RadiusTrace`: the radius it had proven once "
             "b seconds were charged to the sample). They differ because the search "
             "depends on its budget: its first step gets a third of the budget and each "
             "later one half of what is left (an unknown retry twice the last unknown "
             "step's time), so the long run spends its first seconds on steps sized for 60 "
             "s, and a run given b takes steps sized for b. The trace is a certificate held "
             "at time b, but not what a user asking for b gets; the figure shows both "
             "(solid: runs with that budget, dashed: the longest run's trace). The start "
             "radius (`crown`'s) is computed whole before the search and charged to the "
             "budget: where it takes longer than a budget, the run with that budget returns "
             "it late (column 's / sample used'; a convolutional net's first batch of "
             "subproblems, charged when it ends, can overrun a short budget too), and the "
             "trace holds no radius before it (0 there).", ""]
    missing = [m for m in MODELS if m not in {r["model"] for r in results}]
    budgets = {float(k) for r in results for k in r.get("trace", {}).get("at", {})}
    unread = [b for b in BUDGETS if b not in budgets]
    if missing or unread:
        lines += ["Not in these results (the script's defaults cover them): "
                  + "; ".join(([f"models {', '.join(missing)}"] if missing else [])
                              + ([f"budgets {', '.join(f'{b:g}' for b in unread)} s"]
                                 if unread else [])) + ".", ""]
    for res in results:
        lines += section(res)
    return "\n".join(lines) + "\n"


def plot(results: list[dict[str, Any]], path: Path) -> None:
    """One panel per model: median and inter-quartile band of certified / attack, against
    the budget (log axis), for the runs with that budget and the longest run's trace;
    references as horizontal lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = len(results)
    cols = min(3, k)
    rows = (k + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.6 * rows), squeeze=False)
    colors = {"crown": "#9467bd", "alpha": "#8c564b", "auto_LiRPA CROWN": "#7f7f7f"}
    for ax, res in zip(axes.flat, results):
        found = np.isfinite(np.asarray(res["attack_norm"]))
        summ = summary(res)
        xs = [float(key) for key in summ]
        for kind, style, lab in (("separate", "-o", "bab, run with budget b"),
                                 ("trace", "--", "bab, longest run's trace at b")):
            pts = [(float(key), row[kind]) for key, row in summ.items() if kind in row]
            if kind == "trace" and res.get("trace", {}).get("points"):
                pts = trace_curve(res, min(xs), max(xs))
            if not pts:
                continue
            b = [p[0] for p in pts]
            med = [p[1]["median"] for p in pts]
            line, = ax.plot(b, med, style, color="#d62728" if kind == "separate" else "#1f77b4",
                            label=f"{lab} (median)", ms=4)
            ax.fill_between(b, [p[1]["q25"] for p in pts], [p[1]["q75"] for p in pts],
                            color=line.get_color(), alpha=0.18)
            ax.plot(b, [p[1]["min"] for p in pts], ":", color=line.get_color(), lw=1,
                    label=f"{lab} (min)")
        for key, ref in res["refs"].items():
            if "error" in ref:
                continue
            v = np.median(np.asarray(ref["ratios"])[found])
            ax.axhline(v, color=colors.get(key, "k"), lw=1.2,
                       ls="-." if key.startswith("auto") else "-",
                       label=f"{key}{' (no box)' if key.startswith('auto') else ''} (median)")
        ax.set_xscale("log")
        ax.set_xlim(min(xs) * 0.8, max(xs) * 1.25)
        ax.set_ylim(0, min(1.02, ax.get_ylim()[1]))  # the convolutional nets: near 0.1
        ax.set_title(f"{res['model']} ({int(found.sum())} samples)", fontsize=10)
        ax.set_xlabel(f"per-sample budget (s, {res.get('clock', 'process')})")
        ax.set_ylabel("certified / attack")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[k:]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    target = list(axes.flat)[k] if k < rows * cols else axes.flat[0]
    target.legend(handles, labels, fontsize=7, loc="center" if k < rows * cols else "lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=5)
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    ap.add_argument("--budgets", type=float, nargs="+", default=list(BUDGETS),
                    help="per-sample budgets read off the longest run's trace (the largest "
                    "is that run's budget)")
    ap.add_argument("--separate", type=float, nargs="*", default=[0.1, 0.3, 1.0, 3.0, 10.0],
                    help="budgets also run on their own (a search per budget)")
    ap.add_argument("--refs", nargs="*", default=["crown", "alpha", "lirpa"])
    ap.add_argument("--data-root", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--cache", type=Path, default=REPO / "runs" / "models")
    ap.add_argument("--networks", type=Path, default=DEFAULT_DATA.parent / "networks")
    ap.add_argument("--clock", choices=("wall", "process"), default="process")
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "results" /
                    "bab_budget_sweep.md")
    ap.add_argument("--append", action="store_true",
                    help="add this run's models to the JSON next to --out (a model run again "
                    "replaces its entry), then rewrite the Markdown and the figure from it")
    ap.add_argument("--plot-only", action="store_true",
                    help="rewrite the Markdown and the figure from the JSON next to --out")
    args = ap.parse_args()
    js = args.out.with_suffix(".json")
    png = args.out.with_suffix(".png")
    results: list[dict[str, Any]] = []
    if args.plot_only or args.append:
        results = json.loads(js.read_text()) if js.exists() else []
    if not args.plot_only:
        torch.set_num_threads(1)
        if args.clock == "process":
            bab_clock.CLOCK = time.process_time
        for name in args.models:
            print(name, flush=True)
            res = run_model(name, args)
            res["command"] = command(args, [name])
            res["clock"] = args.clock
            results = [r for r in results if r["model"] != name] + [res]
            js.write_text(json.dumps(results, indent=1))
    order = {m: i for i, m in enumerate(MODELS)}
    results.sort(key=lambda r: order.get(r["model"], len(order)))
    js.write_text(json.dumps(results, indent=1))
    plot(results, png)
    args.out.write_text(markdown(results, args, png.name))
    print(f"wrote {args.out}, {js.name}, {png.name}", flush=True)


if __name__ == "__main__":
    main()
