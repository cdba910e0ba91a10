"""How tight is the sound certificate? Measured against the exact minimal perturbation
and against the best attack, beside the peck2017 numbers.

Part A: random small ReLU MLPs (input 2-8, one or two hidden layers, at most 24 ReLUs,
weights at random scales), several inputs each: the distribution of sound/exact and
peck2017/exact (peck2017 > exact is a violation of its claimed bound).

Part B: trained MNIST models (the setting of ../shared/REFERENCE-NUMBERS.md: the 784-100-100
MLP, the small CNN, and LeNet-5; the first N correctly classified test images): median of
sound radius / best-attack norm and peck2017 / best-attack norm, with the reference
libraries' published ratios quoted from REFERENCE-NUMBERS.md for orientation.

    python -m benchmarks.tightness [--nets 150] [--n 100] [--out docs/results/tightness.md]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

import boundkit as bk
from benchmarks._models import DEFAULT_DATA, REPO, trained
from boundkit.data import load_dataset

REFERENCE = {  # median certificate / best attack, from ../shared/REFERENCE-NUMBERS.md
    "mlp_mnist": {"CROWN (auto_LiRPA)": 0.584, "global Lipschitz": 0.287, "Peck Thm 4.2": 0.0026},
    "small_cnn": {"CROWN (auto_LiRPA)": 0.060, "global Lipschitz": 0.028},
}


def random_mlp(rng: np.random.Generator) -> tuple[nn.Module, torch.Tensor]:
    d = int(rng.integers(2, 9))
    depth = int(rng.integers(1, 3))
    widths = [int(rng.integers(3, 13)) for _ in range(depth)]
    classes = int(rng.integers(2, 5))
    layers: list[nn.Module] = []
    prev = d
    torch.manual_seed(int(rng.integers(0, 2**31)))
    for w in widths:
        lin = nn.Linear(prev, w)
        with torch.no_grad():
            lin.weight.mul_(10 ** rng.uniform(-0.5, 0.5))
        layers += [lin, nn.ReLU()]
        prev = w
    layers.append(nn.Linear(prev, classes))
    model = nn.Sequential(*layers).double().eval()
    x = torch.randn(5, d, dtype=torch.float64)
    return model, x


def part_a(nets: int, seed: int) -> tuple[list[str], dict]:
    rng = np.random.default_rng(seed)
    s_ratio, p_ratio, l_ratio, t0 = [], [], [], time.perf_counter()
    skipped = 0
    for _ in range(nets):
        model, x = random_mlp(rng)
        try:
            exact = bk.exact_radius(model, x)
        except bk.errors.BoundkitError:
            skipped += 1
            continue
        ok = torch.isfinite(exact) & (exact > 0)
        s = bk.certify(model, x).radius
        p = bk.certify(model, x, method="peck2017").radius
        loc = bk.certify(model, x, method="sound-local").radius
        l_ratio += (loc[ok] / exact[ok]).tolist()
        s_ratio += (s[ok] / exact[ok]).tolist()
        p_ratio += (p[ok] / exact[ok]).tolist()
    s_arr, p_arr, l_arr = np.array(s_ratio), np.array(p_ratio), np.array(l_ratio)
    stats = {
        "samples": int(s_arr.size), "nets": nets, "skipped_nets": skipped,
        "sound_over_exact": {q: float(np.quantile(s_arr, v)) for q, v in
                             [("min", 0), ("q25", .25), ("median", .5), ("q75", .75), ("max", 1)]},
        "peck_over_exact_median": float(np.median(p_arr)),
        "local_over_exact": {q: float(np.quantile(l_arr, v)) for q, v in
                             [("min", 0), ("q25", .25), ("median", .5), ("q75", .75), ("max", 1)]},
        "local_violations": int((l_arr > 1 + 1e-6).sum()),
        "peck_violations": int((p_arr > 1 + 1e-9).sum()),
        "sound_violations": int((s_arr > 1 + 1e-6).sum()),
        "seconds": time.perf_counter() - t0,
    }
    so, lo = stats["sound_over_exact"], stats["local_over_exact"]
    lines = [
        "## A. Random small ReLU MLPs: certificate / exact minimal perturbation", "",
        f"{stats['samples']} samples on {nets - skipped} random networks "
        f"({skipped} skipped: too large for the exact oracle); {stats['seconds']:.0f} s.", "",
        "| method | min | q25 | median | q75 | max | violations (ratio > 1) |",
        "|---|---|---|---|---|---|---|",
        f"| sound | {so['min']:.3f} | {so['q25']:.3f} | {so['median']:.3f} | {so['q75']:.3f} | "
        f"{so['max']:.4f} | {stats['sound_violations']} |",
        f"| sound-local | {lo['min']:.3f} | {lo['q25']:.3f} | {lo['median']:.3f} | "
        f"{lo['q75']:.3f} | {lo['max']:.4f} | {stats['local_violations']} |",
        f"| peck2017 | | | {stats['peck_over_exact_median']:.3f} | | | "
        f"{stats['peck_violations']} of {stats['samples']} |", "",
    ]
    return lines, stats


def part_b(names: list[str], n: int, data_root: Path, cache: Path, budget: int | None
           ) -> tuple[list[str], dict]:
    x, y = load_dataset("mnist", data_root, "test")
    lines = ["## B. Trained MNIST models: certificate / best attack (median over samples)", "",
             f"First {n} correctly classified test images (8,000/2,000 split of mnist-10k); "
             "attack: `bk.attack(method='best')`, every example verified.", "",
             "| model | accuracy | sound / attack | sound-local / attack | peck2017 / attack | "
             "median sound radius | median attack norm | reference (other tools, "
             "REFERENCE-NUMBERS.md) |",
             "|---|---|---|---|---|---|---|---|"]
    out = {}
    for name in names:
        model = trained(name, data_root, cache)
        with torch.no_grad():
            pred = model(x).argmax(1)
        acc = float((pred == y).float().mean())
        idx = (pred == y).nonzero().flatten()[:n]
        xs = x[idx]
        sound = bk.certify(model, xs).radius
        peck = bk.certify(model, xs, method="peck2017").radius
        t = time.perf_counter()
        local = bk.certify(model, xs, method="sound-local").radius
        t_local = time.perf_counter() - t
        adv = bk.attack(model, xs, method="best", budget=budget)
        norm = adv.norm
        rs = float((sound / norm).median())
        rp = float((peck / norm).median())
        rl = float((local / norm).median())
        ref = "; ".join(f"{k} {v}" for k, v in REFERENCE.get(name, {}).items()) or "-"
        lines.append(f"| {name} | {acc:.4f} | {rs:.4f} | {rl:.4f} ({t_local:.0f} s) | {rp:.5f} "
                     f"| {float(sound.median()):.4g} | {float(norm.median()):.4g} | {ref} |")
        out[name] = {"accuracy": acc, "sound_over_attack": rs, "peck_over_attack": rp,
                     "sound_local_over_attack": rl,
                     "violations_sound": int((sound > norm).sum()),
                     "violations_sound_local": int((local > norm).sum()),
                     "violations_peck": int((peck > norm).sum())}
    lines.append("")
    return lines, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--nets", type=int, default=150)
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--models", default="mlp_mnist,small_cnn,lenet5")
    ap.add_argument("--budget", type=int, default=None, help="attack budget (default: best's own)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--data-root", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--cache", type=Path, default=REPO / "runs" / "models")
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "results" / "tightness.md")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    la, sa = part_a(args.nets, args.seed)
    lb, sb = part_b([m for m in args.models.split(",") if m], args.n, args.data_root,
                    args.cache, args.budget)
    text = "\n".join(["# Tightness of the certificates", "",
                      f"Command: `python -m benchmarks.tightness --nets {args.nets} --n {args.n} "
                      f"--models {args.models}`", ""] + la + lb)
    for name, v in sb.items():
        text += (f"\n{name}: radius > attack norm on {v['violations_sound']} samples (sound), "
                 f"{v['violations_sound_local']} (sound-local), {v['violations_peck']} "
                 "(peck2017).\n")
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
