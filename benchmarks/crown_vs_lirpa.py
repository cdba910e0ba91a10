"""boundkit ``crown`` against auto_LiRPA 0.3's CROWN, side by side in one process.

Models and samples of ``../shared/REFERENCE-NUMBERS.md``: the MNIST 784-100-100-10 MLP and
the small CNN (trained by ``benchmarks/_models.py``, seeded, cached under ``runs/models``),
the first N correctly classified test images. For every sample: boundkit's certified radius
(``crown``, input box [0, 1], and ``crown`` with ``box=None``, the same mathematics as
auto_LiRPA's L2 CROWN, which ignores the box), ``sound``, and auto_LiRPA's CROWN radius by a
per-sample 15-step bisection on [0, DeepFool norm] (auto_LiRPA's L2 perturbation takes one
epsilon per batch; a small subclass gives it one per sample). Reports the per-sample ratio
to auto_LiRPA and the time per sample, and writes ``docs/results/crown_vs_lirpa.md``.

auto_LiRPA 0.3 (optional: ``pip install auto-LiRPA==0.3 --no-deps``) needs three import shims
on torch 2.13 / numpy 2 (applied below): ``numpy.lib.arraysetops``, the ONNX opset helper and
``torch._C.Node.__getitem__``.

    python benchmarks/crown_vs_lirpa.py [--n 100] [--models mlp_mnist small_cnn]
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
import types
from pathlib import Path

import numpy as np
import torch

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]
from _models import DEFAULT_DATA, REPO, trained  # noqa: E402

import boundkit as bk  # noqa: E402  (this checkout's boundkit)
from boundkit.data import load_dataset  # noqa: E402


def _lirpa():
    """Import auto_LiRPA 0.3 with the torch 2.13 / numpy 2 shims."""
    if "numpy.lib.arraysetops" not in sys.modules:
        shim = types.ModuleType("numpy.lib.arraysetops")
        shim.isin = np.isin  # type: ignore[attr-defined]
        sys.modules["numpy.lib.arraysetops"] = shim
    import torch.onnx.symbolic_helper as sh

    if not hasattr(sh, "_set_opset_version"):
        sh._set_opset_version = lambda v: None  # type: ignore[attr-defined]
    if not hasattr(torch._C.Node, "__getitem__"):
        torch._C.Node.__getitem__ = lambda self, k: getattr(self, self.kindOf(k))(k)
    try:
        import auto_LiRPA
    except ImportError as exc:
        raise SystemExit(f"auto_LiRPA 0.3 is needed: pip install auto-LiRPA==0.3 --no-deps "
                         f"({exc})") from None
    return auto_LiRPA


def lirpa_radius(model: torch.nn.Module, x: torch.Tensor, label: torch.Tensor,
                 upper: torch.Tensor, steps: int = 15) -> torch.Tensor:
    """auto_LiRPA CROWN radius per sample: bisection on [0, upper] (certified end)."""
    al = _lirpa()
    from auto_LiRPA.perturbations import PerturbationLpNorm

    class PerSampleL2(PerturbationLpNorm):
        """One epsilon per sample: [N, 1, ...] for the input bounds, [N, 1] in the dual norm."""

        def concretize_matrix(self, x, A, sign, extra_constr):  # noqa: ANN001
            eps = self.eps
            self.eps = eps.reshape(eps.shape[0], 1)
            try:
                return super().concretize_matrix(x, A, sign, extra_constr)
            finally:
                self.eps = eps

    n, c = x.shape[0], int(model(x[:1]).shape[1])
    if x.dim() > 2:
        # conv nets: auto_LiRPA's "matrix" conv mode fails on torch 2.13 and its "patches"
        # mode takes one scalar epsilon, so each sample is bisected on its own
        return torch.cat([_lirpa_one(al, model, x[i:i + 1], label[i:i + 1], upper[i:i + 1],
                                     steps) for i in range(n)])
    bm = al.BoundedModule(model, torch.zeros_like(x[:1]), device="cpu",
                          bound_opts={"sparse_intermediate_bounds": False})
    eye = torch.eye(c)
    spec = eye[label].unsqueeze(1) - eye.unsqueeze(0)  # [N, C, C]
    others = [torch.cat([torch.arange(0, int(y)), torch.arange(int(y) + 1, c)]) for y in label]
    spec = torch.stack([spec[i, others[i]] for i in range(n)])  # [N, C-1, C]
    lo, hi = torch.zeros(n), upper.float().clone()
    for _ in range(steps):
        mid = (lo + hi) / 2
        ptb = PerSampleL2(norm=2, eps=mid.reshape(-1, *([1] * (x.dim() - 1))))
        xb = al.BoundedTensor(x, ptb)
        lb, _ = bm.compute_bounds(x=(xb,), C=spec, method="CROWN")
        ok = lb.min(1).values > 0
        lo = torch.where(ok, mid, lo)
        hi = torch.where(ok, hi, mid)
    return lo.double()


def _lirpa_one(al, model: torch.nn.Module, x: torch.Tensor, label: torch.Tensor,  # noqa: ANN001
               upper: torch.Tensor, steps: int) -> torch.Tensor:
    from auto_LiRPA.perturbations import PerturbationLpNorm

    c = int(model(x).shape[1])
    bm = al.BoundedModule(model, torch.zeros_like(x), device="cpu",
                          bound_opts={"sparse_intermediate_bounds": False})
    others = torch.cat([torch.arange(0, int(label)), torch.arange(int(label) + 1, c)])
    eye = torch.eye(c)
    spec = (eye[label] - eye[others]).unsqueeze(0)  # [1, C-1, C]
    lo, hi = 0.0, float(upper)
    for _ in range(steps):
        mid = (lo + hi) / 2
        xb = al.BoundedTensor(x, PerturbationLpNorm(norm=2, eps=mid))
        lb, _ = bm.compute_bounds(x=(xb,), C=spec, method="CROWN")
        lo, hi = (mid, hi) if float(lb.min()) > 0 else (lo, mid)
    return torch.tensor([lo], dtype=torch.float64)


def run_model(name: str, n: int, data_root: Path, cache: Path) -> tuple[list[str], dict]:
    model = trained(name, data_root, cache)
    x_all, y_all = load_dataset("mnist", data_root, "test")
    with torch.no_grad():
        pred = model(x_all[:2000]).argmax(1)
    idx = torch.nonzero(pred == y_all[:2000]).flatten()[:n]
    x, label = x_all[idx].float(), y_all[idx]
    t0 = time.perf_counter()
    sound = bk.certify(model, x, "sound").radius
    t_sound = (time.perf_counter() - t0) / n
    t0 = time.perf_counter()
    crown = bk.certify(model, x, "crown")
    t_crown = (time.perf_counter() - t0) / n
    rss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    t0 = time.perf_counter()
    crown_free = bk.certify(model, x, "crown", box=None).radius
    t_free = (time.perf_counter() - t0) / n
    upper = bk.attack(model, x, "deepfool").norm
    upper = torch.where(torch.isfinite(upper), upper, torch.full_like(upper, 10.0))
    # the bisection's upper end must fail: DeepFool's point is adversarial, so it does
    t0 = time.perf_counter()
    lirpa = lirpa_radius(model, x, label, upper * 1.001)
    t_lirpa = (time.perf_counter() - t0) / n
    # soundness: every certificate below a verified adversarial example's norm
    viol = int((crown.radius > upper).sum()) + int((crown_free > upper).sum())
    ok = lirpa > 0
    ratio = (crown.radius[ok] / lirpa[ok]).numpy()
    ratio_free = (crown_free[ok] / lirpa[ok]).numpy()
    ratio_sound = (sound[ok] / lirpa[ok]).numpy()
    stats = {
        "n": n, "lirpa_zero": int((~ok).sum()),
        "median_ratio_crown": float(np.median(ratio)),
        "median_ratio_crown_nobox": float(np.median(ratio_free)),
        "median_ratio_sound": float(np.median(ratio_sound)),
        "q10_ratio_crown_nobox": float(np.quantile(ratio_free, 0.1)),
        "median_radius": {"crown": float(crown.radius.median()),
                          "crown_nobox": float(crown_free.median()),
                          "lirpa": float(lirpa.median()), "sound": float(sound.median()),
                          "deepfool": float(upper.median())},
        "time_per_sample_s": {"crown": t_crown, "crown_nobox": t_free, "lirpa": t_lirpa,
                              "sound": t_sound},
        "from_sound": int(crown.info["from_sound"].sum()),
        "violations_vs_deepfool": viol,
        "peak_rss_gb_after_crown": rss_gb,
    }
    lines = [
        f"| {name} ({n}) | {stats['median_ratio_crown']:.3f} | "
        f"{stats['median_ratio_crown_nobox']:.3f} | {stats['q10_ratio_crown_nobox']:.3f} | "
        f"{stats['median_ratio_sound']:.3f} | "
        f"{t_crown * 1e3:.0f} ms | {t_free * 1e3:.0f} ms | {t_lirpa * 1e3:.0f} ms | "
        f"{t_crown / t_lirpa:.2f}x | {viol} |"
    ]
    return lines, stats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--n-cnn", type=int, default=None,
                    help="samples for conv nets (default --n)")
    ap.add_argument("--models", nargs="+", default=["mlp_mnist", "small_cnn"])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--cache", type=Path, default=REPO / "runs" / "models")
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "results" / "crown_vs_lirpa.md")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows, all_stats = [], {}
    for name in args.models:
        n = args.n if name.startswith("mlp") or args.n_cnn is None else args.n_cnn
        lines, stats = run_model(name, n, args.data, args.cache)
        rows += lines
        all_stats[name] = stats
        print(name, stats, flush=True)
    doc = [
        "# boundkit `crown` vs auto_LiRPA 0.3 CROWN (L2)", "",
        f"Generated by `python benchmarks/crown_vs_lirpa.py --n {args.n}"
        f"{'' if args.n_cnn is None else f' --n-cnn {args.n_cnn}'}` "
        f"({time.strftime('%Y-%m-%d')}, {args.threads} thread(s), same process, same samples: "
        "the first n correctly classified MNIST test images, n per model below).", "",
        "Ratios are per-sample radius / auto_LiRPA CROWN radius (15-step bisection on "
        "[0, DeepFool norm]), medians over samples. `crown` uses the input box [0, 1]; "
        "`crown, no box` is the same mathematics as auto_LiRPA's L2 CROWN (which ignores the "
        "box). Times are wall-clock per sample over the whole batch (boundkit: float64 with "
        "rounding margins, radius to 1e-3 relative; auto_LiRPA: float32).", "",
        "| model (n) | crown / LiRPA | crown no box / LiRPA | q10 no box | sound / LiRPA | "
        "crown time | crown no box time | LiRPA time | crown / LiRPA time | "
        "violations (radius > DeepFool) |",
        "|---|---|---|---|---|---|---|---|---|---|",
        *rows, "",
        "Median radii and details:", "",
    ]
    for name, s in all_stats.items():
        doc.append(f"- {name}: median radius {s['median_radius']}; crown kept the sound radius "
                   f"on {s['from_sound']} samples; auto_LiRPA radius 0 on {s['lirpa_zero']}; "
                   f"peak RSS after the crown batch {s['peak_rss_gb_after_crown']:.2f} GB.")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(doc) + "\n")
    print("\n".join(doc))


if __name__ == "__main__":
    main()
