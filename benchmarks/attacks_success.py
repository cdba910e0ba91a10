"""Does ``best`` find an upper end for every sample? Success of ``best`` at its default budget
on real and trained networks (issue #25).

Networks: the VNN-COMP MLP ``mnist-net_256x2.onnx`` and CIFAR conv net ``cifar_base_kw.onnx``
of ``../shared/networks`` (loaded as ``benchmarks/real_networks.py`` does, with the CIFAR
normalisation prepended), and the MNIST MLP, small CNN and LeNet-5 of REFERENCE-NUMBERS
(trained once with ``boundkit train``; ``--model-dir``).  For each, the first ``--n``
correctly classified test images, box [0, 1], ``best`` at its default budget, run

* ``plain``: without reference data, and
* ``reference``: with the whole test split as reference data (what ``boundkit crosscheck`` /
  ``compare`` / ``attack`` pass: the data they already hold).

Prints per network and run: samples with an adversarial example, median norm, the members
that won (``found_by``), the typed reasons of the misses (``AttackResult.outcome``), time.

Usage::

    python -m benchmarks.attacks_success --n 100 --model-dir /tmp/boundkit-models \
        --out docs/results/attacks_success.md
"""

from __future__ import annotations

import argparse
import collections
import sys
import time
from pathlib import Path

import torch

import boundkit.attacks as A
from boundkit.data import load_dataset

ROOT = Path(__file__).resolve().parents[1]

ONNX = {"mnist-net_256x2": ("mnist", (1, 28, 28), None),
        "cifar_base_kw": ("cifar10", (3, 32, 32),
                          ((0.485, 0.456, 0.406), (0.225, 0.225, 0.225)))}
ZOO = {"mlp": "mlp_mnist", "small_cnn": "small_cnn", "lenet5": "lenet5"}


def load(name: str, args: argparse.Namespace) -> tuple[torch.nn.Module, str]:
    if name in ONNX:
        from boundkit.models import load_onnx

        data, shape, norm = ONNX[name]
        path = Path(args.networks) / f"{name}.onnx"
        return load_onnx(path, check=False, input_shape=shape, normalize=norm).eval(), data
    from boundkit.models.io import load_model

    m = load_model(Path(args.model_dir) / f"{ZOO[name]}.safetensors").eval()
    return m, "mnist"


def first_correct(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, n: int):
    with torch.no_grad():
        pred = torch.cat([model(x[s : s + 500]).argmax(1) for s in range(0, len(x), 500)])
    idx = torch.nonzero(pred == y).flatten()[:n]
    return x[idx], y[idx]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=100)
    p.add_argument("--models", default="mnist-net_256x2,cifar_base_kw,mlp,small_cnn,lenet5")
    p.add_argument("--runs", default="plain,reference")
    p.add_argument("--data-root", default=str(ROOT.parent / "shared" / "data"))
    p.add_argument("--networks", default=str(ROOT.parent / "shared" / "networks"))
    p.add_argument("--model-dir", default=str(ROOT / "runs"))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    lines = ["# `best`: an upper end for every sample? (default budget, box [0, 1])", "",
             f"Command: `python -m benchmarks.attacks_success "
             f"{' '.join(sys.argv[1:] if argv is None else argv)}`  ",
             f"torch {torch.__version__}, {args.threads} thread(s). `plain`: no reference "
             "data; `reference`: the whole test split as reference data (as the CLI's "
             "attack / crosscheck / compare pass what they hold).", "",
             "| network | run | samples | found | median norm | seconds | won by | misses "
             "(reason) |", "|---|---|---|---|---|---|---|---|"]
    for name in args.models.split(","):
        model, data = load(name, args)
        for prm in model.parameters():
            prm.requires_grad_(False)
        x_all, y_all = load_dataset(data, root=args.data_root, split="test")
        x, _ = first_correct(model, x_all, y_all, args.n)
        for run in args.runs.split(","):
            ref = x_all if run == "reference" else None
            t = time.perf_counter()
            res = A.attack(model, x, "best", reference=ref)
            sec = time.perf_counter() - t
            won = collections.Counter(f.split("+")[0] for f in res.found_by if f)
            miss = ", ".join(f"{o.value}: {c}" for o, c in res.missing().items()) or "-"
            med = float(res.norm[res.success].median()) if bool(res.success.any()) else float(
                "nan")
            lines.append(f"| {name} | {run} | {len(x)} | {int(res.success.sum())} | "
                         f"{med:.4f} | {sec:.1f} | "
                         f"{', '.join(f'{k} {v}' for k, v in won.most_common())} | {miss} |")
            print(lines[-1], flush=True)
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
