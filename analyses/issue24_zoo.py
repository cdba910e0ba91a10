"""Issue 24's zoo entries (resnet_cifar, smooth_mlp_mnist, maxmin_mnist, gated_mlp_mnist,
vit_cifar):
accuracy, and ``crown`` against the ``best`` attack on the first test images (box [0, 1]).

Train first (seconds for the MLPs, minutes for the ResNet on one core)::

    python -m boundkit.models.train smooth_mlp_mnist --data-root ../shared/data --out runs
    python -m boundkit.models.train maxmin_mnist --data-root ../shared/data --out runs
    python -m boundkit.models.train gated_mlp_mnist --data-root ../shared/data --out runs
    python -m boundkit.models.train resnet_cifar --data-root ../shared/data --out runs
    python -m boundkit.models.train vit_cifar --data-root ../shared/data --out runs

then ``python -m analyses.issue24_zoo --runs runs --data-root ../shared/data --n 20``
writes ``docs/results/issue24_zoo.md``. A violation is a test image whose certified radius
exceeds the norm of an adversarial example the attack found: it must be 0.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import boundkit as bk
from boundkit.data import load_dataset
from boundkit.models import load_model

NAMES = ("smooth_mlp_mnist", "maxmin_mnist", "gated_mlp_mnist", "resnet_cifar", "vit_cifar")


def run(name: str, runs: Path, data_root: str, n: int, budget: int) -> dict:
    meta = json.loads((runs / f"{name}.json").read_text())["meta"]
    model = load_model(runs / f"{name}.safetensors")
    x, _ = load_dataset(meta["dataset"], data_root, "test", download=False)
    x = x[:n]
    t0 = time.perf_counter()
    cert = bk.certify(model, x, "crown", box=(0.0, 1.0))
    t_crown = time.perf_counter() - t0
    t0 = time.perf_counter()
    adv = bk.attack(model, x, "best", budget=budget, box=(0.0, 1.0))
    t_attack = time.perf_counter() - t0
    norm = torch.where(adv.success, adv.norm.double(), torch.full_like(adv.norm.double(),
                                                                      float("inf")))
    radius = cert.radius.double().cpu()
    viol = int((radius > norm.cpu() * (1 + 1e-9)).sum())
    return {
        "name": name, "dataset": meta["dataset"], "test_accuracy": meta["test_accuracy"],
        "epochs": meta["epochs"], "n": n, "crown_median": float(radius.median()),
        "attack_median": float(norm.median()), "ratio_median": float((radius / norm).median()),
        "violations": viol, "crown_s_per_image": t_crown / n, "attack_s_per_image": t_attack / n,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=Path, default=Path("runs"))
    ap.add_argument("--data-root", default="../shared/data")
    ap.add_argument("--n", type=int, default=20, help="test images per model")
    ap.add_argument("--n-resnet", type=int, default=None, help="test images for the ResNet")
    ap.add_argument("--budget", type=int, default=200, help="attack budget")
    ap.add_argument("--out", type=Path, default=Path("docs/results/issue24_zoo.md"))
    ap.add_argument("--names", nargs="*", default=list(NAMES))
    a = ap.parse_args()
    torch.manual_seed(0)
    rows = []
    for name in a.names:
        n = a.n_resnet if name == "resnet_cifar" and a.n_resnet else a.n
        rows.append(run(name, a.runs, a.data_root, n, a.budget))
        print(json.dumps(rows[-1]), flush=True)
    lines = [
        "# Issue 24 zoo entries: crown against the best attack",
        "",
        f"`python -m analyses.issue24_zoo --runs RUNS --n {a.n}"
        + (f" --n-resnet {a.n_resnet}" if a.n_resnet else "")
        + f" --budget {a.budget} --names {' '.join(a.names)}` (first test images, box [0, 1],"
        " one CPU thread,"
        f" torch {torch.__version__}).",
        "",
        "| model | data | epochs | test acc. | images | crown median | attack median | "
        "median ratio | violations | crown s/img | attack s/img |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['name']} | {r['dataset']} | {r['epochs']} | {r['test_accuracy']:.4f} | "
            f"{r['n']} | {r['crown_median']:.4g} | {r['attack_median']:.4g} | "
            f"{r['ratio_median']:.3f} | {r['violations']} | {r['crown_s_per_image']:.2f} | "
            f"{r['attack_s_per_image']:.2f} |")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
