"""Relaxations evaluated per sample by the ``crown`` (and ``alpha``) radius search.

Counts every call of ``CrownRun.evaluate`` (one relaxation built and read for each sample it
is given) over a batch of the first N correctly classified MNIST test images, per zoo model,
and reports the mean per sample, the radii's median and, with ``--rtol``, the radius at
several tolerances (the search promises a radius that never shrinks as rtol tightens).

    python -m benchmarks.search_evaluations [--n 50] [--models mlp_mnist small_cnn ...] \
        [--json OUT.json] [--baseline BEFORE.json --out docs/results/search_evaluations.md]

Run it against another checkout (``PYTHONPATH=OTHER``) to compare searches: the counting
wraps the class, not the search. With ``--baseline`` (the JSON of such a run) it writes a
table of evaluations per sample before and after, and the per-sample radius ratio.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

import boundkit as bk
from benchmarks._models import DEFAULT_DATA, REPO, trained
from boundkit.bounds.crown import CrownRun
from boundkit.data import load_dataset

SHALLOW = ["small_cnn", "mlp_mnist_tanh", "resnet_mnist", "mlp_mnist", "lenet5"]


class Counter:
    """Wraps ``CrownRun.evaluate`` (and so every subclass that calls it) to count samples."""

    def __init__(self) -> None:
        self.samples = 0
        self._orig = CrownRun.evaluate

    def __enter__(self) -> Counter:
        counter, orig = self, self._orig

        def evaluate(run, eps, label):  # noqa: ANN001, ANN202
            counter.samples += int(eps.numel())
            return orig(run, eps, label)

        CrownRun.evaluate = evaluate  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        CrownRun.evaluate = self._orig  # type: ignore[method-assign]


def measure(model: torch.nn.Module, x: torch.Tensor, method: str, **options: object) -> dict:
    with Counter() as c:
        t0 = time.process_time()
        cert = bk.certify(model, x, method, **options)
        secs = time.process_time() - t0
    return {"evals_per_sample": c.samples / x.shape[0], "median_radius":
            float(cert.radius.median()), "radius": cert.radius.tolist(), "cpu_s": secs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=50)
    ap.add_argument("--models", nargs="+", default=SHALLOW)
    ap.add_argument("--method", default="crown")
    ap.add_argument("--no-box", action="store_true")
    ap.add_argument("--rtol", type=float, nargs="*", default=[1e-3])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--cache", type=Path, default=REPO / "runs" / "models")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--baseline", type=Path, default=None,
                    help="the --json of a run against another checkout (the search before)")
    ap.add_argument("--baseline-label", default="before")
    ap.add_argument("--out", type=Path, default=None, help="markdown table (with --baseline)")
    ap.add_argument("--after", type=Path, default=None,
                    help="render from this --json of an earlier run instead of measuring")
    args = ap.parse_args()
    torch.set_num_threads(1)
    x_all, y_all = load_dataset("mnist", args.data, "test")
    out: dict[str, dict] = {}
    if args.after is not None:
        out = json.loads(args.after.read_text())
    for name in [] if args.after is not None else args.models:
        model = trained(name, args.data, args.cache)
        with torch.no_grad():
            pred = model(x_all[:2000]).argmax(1)
        idx = torch.nonzero(pred == y_all[:2000]).flatten()[:args.n]
        x = x_all[idx].float()
        opts: dict[str, object] = {"box": None} if args.no_box else {}
        res = {str(r): measure(model, x, args.method, rtol=r, **opts) for r in args.rtol}
        radii = [torch.tensor(res[str(r)]["radius"]) for r in sorted(args.rtol, reverse=True)]
        drops = sum(int((b < a).sum()) for a, b in zip(radii, radii[1:], strict=False))
        out[name] = {"n": int(x.shape[0]), "by_rtol": res, "monotone_violations": drops}
        summary = ", ".join(f"rtol {r:g}: {res[str(r)]['evals_per_sample']:.2f} evals/sample, "
                            f"median radius {res[str(r)]['median_radius']:.5g}, "
                            f"{res[str(r)]['cpu_s']:.1f} s" for r in args.rtol)
        print(f"{name} ({x.shape[0]}): {summary}; radius smaller at a tighter rtol on "
              f"{drops} sample(s)", flush=True)
    if args.json is not None:
        args.json.write_text(json.dumps(out))
    if args.baseline is not None and args.out is not None:
        cmd = " ".join(["python -m benchmarks.search_evaluations", *sys.argv[1:]])
        args.out.write_text(render(out, json.loads(args.baseline.read_text()),
                                   args.baseline_label, cmd))
        print(args.out.read_text())


def render(after: dict, before: dict, label: str, cmd: str) -> str:
    """Markdown: evaluations per sample and radii, before and after, per model and rtol."""
    rows = []
    for name, a in after.items():
        b = before.get(name)
        for r, ra in a["by_rtol"].items():
            rb = b["by_rtol"].get(r) if b else None
            if rb is None:
                rows.append(f"| {name} ({a['n']}) | {float(r):g} | - | "
                            f"{ra['evals_per_sample']:.2f} | - | - | - | {ra['cpu_s']:.1f} |")
                continue
            ratio = torch.tensor(ra["radius"]) / torch.tensor(rb["radius"])
            rows.append(
                f"| {name} ({a['n']}) | {float(r):g} | {rb['evals_per_sample']:.2f} | "
                f"{ra['evals_per_sample']:.2f} | "
                f"{ra['evals_per_sample'] / rb['evals_per_sample']:.3f} | "
                f"{float(ratio.median()):.4f} | {float(ratio.min()):.4f} | "
                f"{rb['cpu_s']:.1f} / {ra['cpu_s']:.1f} |")
    return "\n".join([
        "# Radius search: relaxations evaluated per sample", "",
        f"Generated by `{cmd}` (torch {torch.__version__}, one thread), against the JSON of "
        f"the same script run on the checkout labelled `{label}`.", "",
        "Every `CrownRun.evaluate` call counts one relaxation per sample it is given; `crown` "
        "with the input box [0, 1]; the first n correctly classified MNIST test images.", "",
        f"| model (n) | rtol | evals/sample {label} | evals/sample now | ratio | "
        "radius now / before (median) | (min) | CPU s before / now |",
        "|---|---|---|---|---|---|---|---|",
        *rows, ""])


if __name__ == "__main__":
    main()
