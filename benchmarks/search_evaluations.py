"""Relaxations evaluated per sample by the ``crown`` (and ``alpha``) radius search.

Counts every call of ``CrownRun.evaluate`` (one relaxation built and read for each sample it
is given) over a batch of the first N correctly classified MNIST test images, per zoo model,
and reports the mean per sample, the radii's median and, with ``--rtol``, the radius at
several tolerances (the search promises a radius that never shrinks as rtol tightens).

    python benchmarks/search_evaluations.py [--n 50] [--models mlp_mnist small_cnn ...]

Run it against another checkout (``PYTHONPATH=OTHER``) to compare searches: the counting
wraps the class, not the search.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _models import DEFAULT_DATA, REPO, trained  # noqa: E402

import boundkit as bk  # noqa: E402
from boundkit.bounds.crown import CrownRun  # noqa: E402
from boundkit.data import load_dataset  # noqa: E402

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
    args = ap.parse_args()
    torch.set_num_threads(1)
    x_all, y_all = load_dataset("mnist", args.data, "test")
    out: dict[str, dict] = {}
    for name in args.models:
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


if __name__ == "__main__":
    main()
