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


def images(name: str, runs: Path, data_root: str, start: int, stop: int,
           budget: int) -> list[dict]:
    """Per test image ``start <= i < stop``: the label, the model's prediction, the ``crown``
    radius (box [0, 1]) and the norm of the ``best`` attack (inf where it failed), with each
    one's CPU seconds per certified image; both NaN (0 s) for a misclassified image, which is
    neither certified nor attacked. One chunk's correct images are certified and attacked
    as one batch."""
    meta = json.loads((runs / f"{name}.json").read_text())["meta"]
    model = load_model(runs / f"{name}.safetensors")
    x, y = load_dataset(meta["dataset"], data_root, "test", download=False)
    x, y = x[start:stop], y[start:stop]
    with torch.no_grad():
        pred = model(x).argmax(dim=1)
    # only the correctly classified images are certified and attacked (the summary reads
    # no other): a misclassified image's row has NaN for both
    ok = torch.nonzero(pred == y).flatten()
    radius = torch.full((len(x),), float("nan"), dtype=torch.float64)
    norm = radius.clone()
    t_crown = t_attack = 0.0
    if len(ok):
        t0 = time.process_time()
        cert = bk.certify(model, x[ok], "crown", box=(0.0, 1.0))
        t_crown = time.process_time() - t0
        t0 = time.process_time()
        adv = bk.attack(model, x[ok], "best", budget=budget, box=(0.0, 1.0))
        t_attack = time.process_time() - t0
        radius[ok] = cert.radius.double().cpu()
        norm[ok] = torch.where(adv.success, adv.norm.double(),
                               torch.full_like(adv.norm.double(), float("inf"))).cpu()
    k = max(1, len(ok))
    right = set(ok.tolist())
    return [{"name": name, "index": start + i, "label": int(y[i]), "pred": int(pred[i]),
             "crown": float(radius[i]), "attack": float(norm[i]),
             "crown_cpu_s": t_crown / k if i in right else 0.0,
             "attack_cpu_s": t_attack / k if i in right else 0.0} for i in range(len(x))]


def run(name: str, runs: Path, data_root: str, n: int, budget: int, chunk: int = 0,
        jsonl: Path | None = None) -> dict:
    """The first ``n`` test images of ``name``, in chunks of ``chunk`` (0: one batch); with
    ``jsonl`` every image's row is appended there as soon as its chunk ends, and images
    already there are not run again (resume). Summary over the correctly classified ones."""
    meta = json.loads((runs / f"{name}.json").read_text())["meta"]
    done: dict[int, dict] = {}
    if jsonl is not None and jsonl.exists():
        for line in jsonl.read_text().splitlines():
            r = json.loads(line)
            if r.get("name") == name:
                done[int(r["index"])] = r
    step = chunk or n
    for start in range(0, n, step):
        stop = min(n, start + step)
        if all(i in done for i in range(start, stop)):
            continue
        rows = images(name, runs, data_root, start, stop, budget)
        for r in rows:
            done[r["index"]] = r
        if jsonl is not None:
            with jsonl.open("a") as f:
                f.writelines(json.dumps(r) + "\n" for r in rows)
    rows = [done[i] for i in range(n)]
    ok = [r for r in rows if r["label"] == r["pred"]]
    radius = torch.tensor([r["crown"] for r in ok], dtype=torch.float64)
    norm = torch.tensor([r["attack"] for r in ok], dtype=torch.float64)
    ratio = radius / norm
    viol = int((radius > norm * (1 + 1e-9)).sum())
    return {
        "name": name, "dataset": meta["dataset"], "test_accuracy": meta["test_accuracy"],
        "epochs": meta["epochs"], "n": n, "n_correct": len(ok),
        "crown_median": float(radius.median()), "attack_median": float(norm.median()),
        "ratio_median": float(ratio.median()), "ratio_min": float(ratio.min()),
        "violations": viol,
        # per certified (correctly classified) image
        "crown_s_per_image": sum(r["crown_cpu_s"] for r in ok) / max(1, len(ok)),
        "attack_s_per_image": sum(r["attack_cpu_s"] for r in ok) / max(1, len(ok)),
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
    ap.add_argument("--chunk", type=int, default=0,
                    help="images per batch (0: all at once); with --jsonl, a resumable run")
    ap.add_argument("--jsonl", type=Path, default=None,
                    help="append each image's row here as its chunk ends; rows already there "
                         "are reused (resume)")
    a = ap.parse_args()
    torch.manual_seed(0)
    rows = []
    for name in a.names:
        n = a.n_resnet if name == "resnet_cifar" and a.n_resnet else a.n
        rows.append(run(name, a.runs, a.data_root, n, a.budget, a.chunk, a.jsonl))
        print(json.dumps(rows[-1]), flush=True)
    lines = [
        "# Issue 24 zoo entries: crown against the best attack",
        "",
        f"`python -m analyses.issue24_zoo --runs RUNS --n {a.n}"
        + (f" --n-resnet {a.n_resnet}" if a.n_resnet else "")
        + f" --budget {a.budget} --names {' '.join(a.names)}` (first test images, box [0, 1],"
        " one CPU thread,"
        f" torch {torch.__version__}; CPU seconds of the process). Medians and the per-image"
        " minimum of crown / attack over the correctly classified images; a violation is an"
        " image whose certified radius exceeds a verified attack's norm.",
        "",
        "| model | data | epochs | test acc. | images (correct) | crown median | attack median | "
        "median ratio | min ratio | violations | crown s/img | attack s/img |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['name']} | {r['dataset']} | {r['epochs']} | {r['test_accuracy']:.4f} | "
            f"{r['n']} ({r['n_correct']}) | {r['crown_median']:.4g} | {r['attack_median']:.4g} | "
            f"{r['ratio_median']:.3f} | {r['ratio_min']:.3f} | {r['violations']} | "
            f"{r['crown_s_per_image']:.2f} | "
            f"{r['attack_s_per_image']:.2f} |")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
