"""Certify and attack the public VNN-COMP networks of ``../shared/networks/`` (or of
``--networks DIR``) through boundkit's native ONNX importer.

For every ``*.onnx`` file listed in that folder's README (source path and sha256 are read
from the README), and every other file of :data:`SETUP` present in the folder (public
networks of the same families: VNN-COMP 2021 MLPs, CNNs, ResNets, the VNN-COMP 2023 ViT
``ibp_3_3_8``; source and sha256 from :data:`SETUP`), the sha256 checked against the file:

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
    python -m benchmarks.real_networks --networks DIR --n 10 --methods crown \
        --out docs/results/public_networks.md
"""

from __future__ import annotations

import argparse
import hashlib
import platform
import re
import sys
import time
from dataclasses import dataclass
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

V21 = "stanleybak/vnncomp2021@90419aadcf06"
VIT23 = "shizhouxing/ViT_vnncomp2023@0cc5c7f3e404"
CIFAR_RESNET = ((0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616))
CIFAR_OVAL = ((0.485, 0.456, 0.406), (0.225, 0.225, 0.225))
CIFAR_VIT = ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))


@dataclass(frozen=True)
class Setup:
    """How a network is fed: the data set, the per-sample shape boundkit's data has, the
    normalisation that lived in the network's training or property code (prepended as
    data, so radii are in [0, 1] pixels), the file's image layout; for a file not listed in
    the folder's README, where it comes from and its sha256 (checked)."""

    data: str
    input_shape: tuple[int, ...]
    normalize: tuple | None = None
    layout: str = "nchw"
    source: str | None = None
    sha256: str | None = None


_SHAPES = {"mnist": (1, 28, 28), "cifar10": (3, 32, 32)}


def _fetched(repo: str, data: str, path: str, sha256: str, normalize: tuple | None = None,
             layout: str = "nchw") -> Setup:
    """The :class:`Setup` of a public file ``repo:path`` fed from ``data`` (its shape)."""
    return Setup(data, _SHAPES[data], normalize, layout, f"{repo}:{path}", sha256)


def _v21(data: str, path: str, sha256: str, normalize: tuple | None = None,
         layout: str = "nchw") -> Setup:
    """A file of VNN-COMP 2021's ``benchmarks/`` folder (:func:`_fetched`)."""
    return _fetched(V21, data, f"benchmarks/{path}", sha256, normalize, layout)


# The shared folder's networks (provenance in its README), then public networks of the same
# families that a user may fetch (``--networks DIR`` holding any of them; sources and
# normalisations from each benchmark's own generate_properties / readme).
SETUP = {
    "mnist-net_256x2.onnx": Setup("mnist", _SHAPES["mnist"]),
    "cifar_base_kw.onnx": Setup("cifar10", _SHAPES["cifar10"], CIFAR_OVAL),
    "pgd_2_3_16.onnx": Setup("cifar10", _SHAPES["cifar10"], CIFAR_VIT),
    "mnist-net_256x4.onnx": _v21(
        "mnist", "mnistfc/mnist-net_256x4.onnx",
        "fb53b4745b5882be61325ec24908f9fb036010cd79c99c20bb0b75e3b359acae"),
    "mnist-net_256x6.onnx": _v21(
        "mnist", "mnistfc/mnist-net_256x6.onnx",
        "295c175d7b477b2f05dd4787bcabacf8c10d02d7d4b31f8682ea0d8844c6b0a6"),
    "mnist_relu_9_200.onnx": _v21(  # its (x - 0.1307) / 0.3081 is in the file
        "mnist", "eran/nets/mnist_relu_9_200.onnx",
        "9ca87fef411ed6239ec649063782a10719ae3e2ee31f023d6aaafdd17cbab012"),
    "ffnnSIGMOID__Point_6x200.onnx": _v21(
        "mnist", "eran/nets/ffnnSIGMOID__Point_6x200.onnx",
        "15a73df459ec082e26a28e37f3752a6c25b096f876065216840a3b97725038b8"),
    "Convnet_avgpool.onnx": _v21(
        "mnist", "verivital/Convnet_avgpool.onnx",
        "713466baf4fc60c8f99f978acd2e745d202c6d2d233e4ae18cb5cb40b6c98b04"),
    "Convnet_maxpool.onnx": _v21(
        "mnist", "verivital/Convnet_maxpool.onnx",
        "6d5a0720e2eedb286a07ed9bb94c96fb33bd149d0424b253ebff78ec654b38dc"),
    "cifar_deep_kw.onnx": _v21(
        "cifar10", "oval21/nets/cifar_deep_kw.onnx",
        "a1d1d47fe50544f2f458b2d1c38e90b172b981269881e6e63dbc4e6f7bc5047f", CIFAR_OVAL),
    "cifar_wide_kw.onnx": _v21(
        "cifar10", "oval21/nets/cifar_wide_kw.onnx",
        "1eafcce51be876f97be0bc280353c5182f575a3512c3769de216a8bcb890eb81", CIFAR_OVAL),
    "resnet_2b.onnx": _v21(
        "cifar10", "cifar10_resnet/onnx/resnet_2b.onnx",
        "791aa24d77917ecda16809fbbd48e7739616f88ebf74cf358b2d1bf911dc4a6d", CIFAR_RESNET),
    "resnet_4b.onnx": _v21(
        "cifar10", "cifar10_resnet/onnx/resnet_4b.onnx",
        "04829063afaa10e7c8332202c87162e9a4ce905c54137da212fb07bb92bc1a25", CIFAR_RESNET),
    "cifar10_small.onnx": _v21(
        "cifar10", "marabou-cifar10/nets/cifar10_small.onnx",
        "c8e3ce2a76c16244cf6d9b0cdefc13f2d380630d84e38916a93a85e45d74c3b5", layout="nhwc"),
    "cifar10_medium.onnx": _v21(
        "cifar10", "marabou-cifar10/nets/cifar10_medium.onnx",
        "d3816a58e6b7b75c9b696c850d6b5d60e92727aee60c65ad293a10a141f75dc2", layout="nhwc"),
    "cifar10_large.onnx": _v21(
        "cifar10", "marabou-cifar10/nets/cifar10_large.onnx",
        "282399741eab1e38f93f3452240f3ef690470c903d5868c42715065fe9141717", layout="nhwc"),
    "ibp_3_3_8.onnx": _fetched(
        VIT23, "cifar10", "models/ibp_3_3_8/model.onnx",
        "9cc53b9edb35d40d70de1d816008a434c7e60b0404cf3cb38b9aefc189692883", CIFAR_VIT),
}


def readme_entries(folder: Path) -> list[dict[str, str]]:
    """Rows ``file | source path | sha256 | ...`` of the networks README table (none when
    the folder has no README)."""
    if not (folder / "README.md").exists():
        return []
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


def folder_entries(folder: Path) -> list[dict[str, str]]:
    """The networks of ``folder`` this benchmark knows how to feed: the README's rows, then
    every other known file present (its source and sha256 from :data:`SETUP`)."""
    rows = [e for e in readme_entries(folder) if e["file"] in SETUP]
    listed = {e["file"] for e in rows}
    for name, s in SETUP.items():
        if name not in listed and s.source and (folder / name).exists():
            repo, _, src = s.source.partition(":")
            rows.append({"file": name, "source": src, "sha256": s.sha256 or "", "repo": repo})
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
    path = args.networks / entry["file"]
    setup = SETUP[entry["file"]]
    digest = sha256(path)
    if digest != entry["sha256"]:
        raise SystemExit(f"{path}: sha256 {digest} differs from the README's {entry['sha256']}")
    t0 = time.perf_counter()
    core = load_onnx(path, check=True)
    t_import = time.perf_counter() - t0
    chk = compare_with_onnxruntime(core, path, args.check, seed=1)
    model = load_onnx(path, check=False, input_shape=setup.input_shape,
                      normalize=setup.normalize, layout=setup.layout)
    x_all, y_all = load_dataset(setup.data, root=args.data_root, split="test")
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
            "min_ratio": float(ratio.min()) if ratio.size else float("nan"),
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
        "# Real networks: public VNN-COMP ONNX files through the native importer",
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
        "pixel space (a normalisation the file lacks is prepended as data). A violation is a "
        "certified radius above the norm of a verified adversarial example.",
        "",
        "## Files",
        "",
        "Each file's sha256 is checked before use. Files outside `../shared/networks` come from "
        "the public repositories of the source column, at the commit named there (e.g. "
        "`git show 90419aadcf06:benchmarks/cifar10_resnet/onnx/resnet_2b.onnx > DIR/resnet_2b.onnx`"
        " in a clone of `stanleybak/vnncomp2021`); the normalisations are those of each "
        "benchmark's property-generation code, and the accuracies below confirm them.",
        "",
        "| file | source | sha256 | data | onnxruntime max rel. error | import time |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        e, s = r["entry"], r["setup"]
        norm = f", normalisation {s.normalize}" if s.normalize else ""
        norm += ", channels-last file" if s.layout == "nhwc" else ""
        lines.append(
            f"| {e['file']} | {e['repo']}:{e['source']} | `{r['sha256']}` | {s.data} test"
            f"{norm} | {r['check'].max_rel_error:.2e} ({r['check'].n} inputs) | "
            f"{r['import_s']:.2f} s |"
        )
    lines += [
        "",
        "## Certificates and attacks",
        "",
        "Median certified radius (median and per-sample minimum of radius / attack norm), "
        "time for all samples, violations.",
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
                cells.append(f"{d['median_radius']:.4g} ({d['median_ratio']:.3g}, min "
                             f"{d.get('min_ratio', float('nan')):.3g}), "
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
    ap.add_argument("--networks", type=Path, default=NETWORKS,
                    help="folder of ONNX files: the shared one (README provenance) or one "
                         "holding public networks of SETUP fetched by the user")
    ap.add_argument("--names", nargs="*", default=None, help="only these files")
    args = ap.parse_args()
    unknown_methods = [m for m in args.methods or () if m not in available_methods()]
    if unknown_methods:
        ap.error(f"unknown method(s) {unknown_methods}; choose from {available_methods()}")
    torch.set_num_threads(max(1, torch.get_num_threads()))
    present = [e for e in folder_entries(args.networks)
               if args.names is None or e["file"] in args.names]
    entries = [e for e in present if (args.networks / e["file"]).exists()]
    for e in present:
        if e not in entries:
            print(f"{e['file']}: listed in the README but not in {args.networks}: skipped",
                  file=sys.stderr)
    missing = sorted(set(args.names or ()) - {e["file"] for e in entries})
    if missing:
        ap.error(f"no network of SETUP named {missing} in {args.networks}")
    known = {e["file"] for e in entries}
    unknown = sorted(p.name for p in args.networks.glob("*.onnx") if p.name not in known
                     and (args.names is None or p.name in args.names))
    if unknown:
        print(f"no data setup for {unknown}: skipped", file=sys.stderr)
    if not entries:
        ap.error(f"no network of SETUP in {args.networks}"
                 + (f" named {args.names}" if args.names else ""))
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
