"""Certify and attack the public VNN-COMP networks of ``../shared/networks/`` through
boundkit's native ONNX importer.

For every ``*.onnx`` file listed in that folder's README (source path and sha256 are read
from the README and the sha256 is checked against the file):

1. import it with :func:`boundkit.models.load_onnx` and compare with onnxruntime on
   ``--check`` random inputs (uniform [0, 1] and standard normal, half each);
2. accuracy on the test split (MNIST: ``mnist-10k.npz`` with the REFERENCE-NUMBERS split, the
   last 2,000 of a seed-0 shuffle; CIFAR-10: ``cifar10-test-jpeg.npz`` in stored order, with
   the normalisation from the README prepended as data, so that radii are in [0, 1] pixels);
3. on the first ``--n`` correctly classified test images: every method of
   :func:`boundkit.bounds.available_methods` (whatever the registry holds when it runs) and
   the ``best`` attack; radius / attack-norm ratios, times, and violations (a certified
   radius above the norm of a verified adversarial example; methods the registry does not
   mark as guarantees are counted apart).

    python -m benchmarks.real_networks [--n 100] [--check 1000] \
        [--out docs/results/real_networks.md]
"""

from __future__ import annotations

import argparse
import hashlib
import platform
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch

import boundkit as bk
from benchmarks._models import DEFAULT_DATA, REPO
from boundkit.attacks import attack
from boundkit.bounds import available_methods, certify
from boundkit.bounds.method import is_guarantee
from boundkit.data import load_dataset
from boundkit.models import load_onnx
from boundkit.models.onnx import compare_with_onnxruntime

NETWORKS = REPO / ".." / "shared" / "networks"

# How each network is fed: data set, the shape boundkit's data has, the normalisation that
# lived in the network's training code (from the networks README).
SETUP = {
    "mnist-net_256x2.onnx": dict(data="mnist", input_shape=(1, 28, 28), normalize=None),
    "cifar_base_kw.onnx": dict(
        data="cifar10", input_shape=(3, 32, 32),
        normalize=((0.485, 0.456, 0.406), (0.225, 0.225, 0.225)),
    ),
}


def readme_entries(folder: Path) -> list[dict[str, str]]:
    """Rows ``file | source path | sha256 | ...`` of the networks README table."""
    rows = []
    for line in (folder / "README.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 3 and cells[0].endswith(".onnx"):
            rows.append({"file": cells[0], "source": cells[1], "sha256": cells[2]})
    head = (folder / "README.md").read_text()
    m = re.search(r"`([\w.-]+/[\w.-]+)`,\s+commit\s+([0-9a-f]{40})", head)
    for r in rows:
        r["repo"] = f"{m.group(1)}@{m.group(2)[:12]}" if m else "?"
    return rows


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def first_correct(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, n: int):
    with torch.no_grad():
        pred = torch.cat([model(x[s : s + 500]).argmax(1) for s in range(0, len(x), 500)])
    ok = pred == y
    idx = torch.nonzero(ok).flatten()[:n]
    return float(ok.double().mean()), x[idx], y[idx], idx


def run_network(entry: dict[str, str], args: argparse.Namespace) -> dict:
    path = NETWORKS / entry["file"]
    setup = SETUP[entry["file"]]
    digest = sha256(path)
    if digest != entry["sha256"]:
        raise SystemExit(f"{path}: sha256 {digest} differs from the README's {entry['sha256']}")
    t0 = time.perf_counter()
    core = load_onnx(path, check=True)
    t_import = time.perf_counter() - t0
    chk = compare_with_onnxruntime(core, path, args.check, seed=1)
    model = load_onnx(path, check=False, input_shape=setup["input_shape"],
                      normalize=setup["normalize"])
    x_all, y_all = load_dataset(setup["data"], root=args.data_root, split="test")
    acc, x, y, idx = first_correct(model, x_all, y_all, args.n)
    print(f"{entry['file']}: imported in {t_import:.2f}s, onnxruntime rel. error "
          f"{chk.max_rel_error:.2e} on {chk.n} inputs, accuracy {acc:.4f}", flush=True)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    adv = attack(model, x, "best", budget=args.budget)
    t_attack = time.perf_counter() - t0
    norm = adv.norm.double()
    found = adv.success & torch.isfinite(norm)
    methods = {}
    for m in args.methods or available_methods():
        t0 = time.perf_counter()
        try:
            cert = certify(model, x, m)
        except bk.errors.BoundkitError as exc:
            methods[m] = {"refused": str(exc).splitlines()[0][:120]}
            print(f"  {m}: refused ({methods[m]['refused']})", flush=True)
            continue
        dt = time.perf_counter() - t0
        r = cert.radius.double()
        viol = int((found & (r > norm)).sum())
        ratio = (r[found] / norm[found]).numpy()
        methods[m] = {
            "median_radius": float(r.median()),
            "median_ratio": float(np.median(ratio)) if ratio.size else float("nan"),
            "seconds": dt,
            "violations": viol,
            "guarantee": is_guarantee(m),
        }
        print(f"  {m}: median radius {methods[m]['median_radius']:.4g}, ratio "
              f"{methods[m]['median_ratio']:.4g}, {dt:.2f}s, violations {viol}", flush=True)
    print(f"  best attack: median norm {float(norm[found].median()):.4g}, "
          f"{int(found.sum())}/{len(x)} found, {t_attack:.1f}s", flush=True)
    return {
        "entry": entry, "sha256": digest, "import_s": t_import, "check": chk,
        "accuracy": acc, "n_test": len(x_all), "n": len(x), "attack_s": t_attack,
        "attack_median": float(norm[found].median()) if found.any() else float("nan"),
        "attack_found": int(found.sum()), "methods": methods, "setup": setup,
    }


def render(results: list[dict], args: argparse.Namespace, cmd: str) -> str:
    methods = sorted({m for r in results for m in r["methods"]})
    lines = [
        "# Real networks: VNN-COMP 2021 ONNX files through the native importer",
        "",
        f"Generated by `{cmd}` (boundkit {bk.__version__}, torch {torch.__version__}, "
        f"Python {platform.python_version()}, {torch.get_num_threads()} torch thread(s)).",
        "",
        "Each network is imported with `boundkit.models.load_onnx` (the `onnx` package only), "
        f"compared with onnxruntime on {args.check} random inputs, then certified with "
        + ("every method of `boundkit.bounds.available_methods()`" if not args.methods else
           f"the methods {', '.join(args.methods)}")
        + " and attacked with `best` on the first "
        f"{args.n} correctly classified test images. Radii and attack norms are L2 in [0, 1] "
        "pixel space (the CIFAR net's normalisation is prepended as data). A violation is a "
        "certified radius above the norm of a verified adversarial example.",
        "",
        "## Files",
        "",
        "| file | source | sha256 | data | onnxruntime max rel. error | import time |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        e, s = r["entry"], r["setup"]
        norm = f", normalisation {s['normalize']}" if s["normalize"] else ""
        lines.append(
            f"| {e['file']} | {e['repo']}:{e['source']} | `{r['sha256']}` | {s['data']} test"
            f"{norm} | {r['check'].max_rel_error:.2e} ({r['check'].n} inputs) | "
            f"{r['import_s']:.2f} s |"
        )
    lines += [
        "",
        "## Certificates and attacks",
        "",
        "Median certified radius (median of radius / attack norm per sample), time for all "
        "samples, violations.",
        "",
        "| network | accuracy | " + " | ".join(methods) + " | best attack median norm | "
        "attack time | violations (guarantees) |",
        "|---|---|" + "---|" * len(methods) + "---|---|---|",
    ]
    for r in results:
        cells = []
        total = 0
        for m in methods:
            d = r["methods"].get(m)
            if d is None:
                cells.append("-")
            elif "refused" in d:
                cells.append(f"refused: {d['refused']}")
            else:
                tag = "" if d["guarantee"] else " (not a guarantee)"
                cells.append(f"{d['median_radius']:.4g} ({d['median_ratio']:.3g}), "
                             f"{d['seconds']:.2f} s, {d['violations']} viol.{tag}")
                if d["guarantee"]:
                    total += d["violations"]
        lines.append(
            f"| {r['entry']['file']} | {r['accuracy']:.4f} ({r['n_test']} test) | "
            + " | ".join(cells)
            + f" | {r['attack_median']:.4g} ({r['attack_found']}/{r['n']} found) | "
            f"{r['attack_s']:.1f} s | {total} |"
        )
    lines += [
        "",
        "For orientation, `../shared/REFERENCE-NUMBERS.md` and `../shared/networks/README.md` "
        "report auto_LiRPA CROWN at a median radius / attack ratio of about 0.53 "
        "(mnist-net_256x2) and 0.21 (cifar_base_kw), measured elsewhere on the first 50 "
        "correct images.",
        "",
        "The MNIST accuracy is measured on the 2,000-image test split of the shared "
        "`mnist-10k.npz` (the REFERENCE-NUMBERS split), not on the official MNIST test set the "
        "benchmark's readme quotes: those 10,000 digits come from another distribution of "
        "MNIST and may include images of the official training set.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--check", type=int, default=1000)
    ap.add_argument("--budget", type=int, default=None)
    ap.add_argument("--data-root", default=str(DEFAULT_DATA))
    ap.add_argument("--out", default=str(REPO / "docs" / "results" / "real_networks.md"))
    ap.add_argument("--methods", nargs="*", default=None,
                    help="certification methods (default: every registered one)")
    args = ap.parse_args()
    unknown_methods = [m for m in args.methods or () if m not in available_methods()]
    if unknown_methods:
        ap.error(f"unknown method(s) {unknown_methods}; choose from {available_methods()}")
    torch.set_num_threads(max(1, torch.get_num_threads()))
    entries = [e for e in readme_entries(NETWORKS) if e["file"] in SETUP]
    unknown = [e["file"] for e in readme_entries(NETWORKS) if e["file"] not in SETUP]
    if unknown:
        print(f"no data setup for {unknown}: skipped", file=sys.stderr)
    results = [run_network(e, args) for e in entries]
    cmd = "python -m benchmarks.real_networks " + " ".join(sys.argv[1:])
    text = render(results, args, cmd.strip())
    Path(args.out).write_text(text)
    print(f"wrote {args.out}")
    bad = sum(d.get("violations", 0) for r in results for d in r["methods"].values()
              if d.get("guarantee"))
    if bad:
        raise SystemExit(f"{bad} violation(s) of a guarantee")


if __name__ == "__main__":
    main()
