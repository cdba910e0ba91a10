"""``crown`` with and without the concretisation through a patch embedding
(``boundkit/bounds/crown/patches.py``), side by side in one process on the same images:
radii (they agree up to rounding-level choices) and CPU time per image.

    python -m benchmarks.patch_concretisation --runs RUNS [--n 4] [--onnx-vit]
        [--out docs/results/patch_concretisation_vit.md]

Models: the zoo's ``vit_cifar`` (``RUNS/vit_cifar.safetensors``) and, with ``--onnx-vit``,
VNN-COMP 2023's ``pgd_2_3_16.onnx`` (``$BOUNDKIT_NETWORKS`` or ``../shared/networks``,
normalisation prepended as in ``analyses/vit_pgd.py``). The first n correctly classified
CIFAR-10 test images, box [0, 1], one thread, process CPU seconds.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

import boundkit as bk
from boundkit.bounds.crown.patches import PatchConcretisation
from boundkit.data import load_dataset
from boundkit.models import load_model, load_onnx

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)


def _crown(model: torch.nn.Module, x: torch.Tensor, patches: bool) -> tuple[torch.Tensor, float]:
    """``crown`` radii (box [0, 1]) and CPU seconds per image, with or without the patch
    path (``PatchConcretisation.head`` answering ``None`` turns it off)."""
    own = PatchConcretisation.__dict__["head"]  # the staticmethod itself
    if not patches:
        PatchConcretisation.head = staticmethod(lambda run: None)  # type: ignore[method-assign]
    try:
        t0 = time.process_time()
        r = bk.certify(model, x, "crown", box=(0.0, 1.0)).radius.double()
        return r, (time.process_time() - t0) / len(x)
    finally:
        PatchConcretisation.head = own  # type: ignore[method-assign]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=Path, default=Path("runs"))
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--onnx-vit", action="store_true", help="also pgd_2_3_16.onnx")
    ap.add_argument("--data-root", default="../shared/data")
    ap.add_argument("--out", type=Path, default=Path("docs/results/patch_concretisation_vit.md"))
    a = ap.parse_args()
    torch.set_num_threads(1)
    x_all, y_all = load_dataset("cifar10", a.data_root, "test", download=False)
    models = {"vit_cifar": load_model(a.runs / "vit_cifar.safetensors").eval()}
    if a.onnx_vit:
        nets = Path(os.environ.get("BOUNDKIT_NETWORKS", Path(a.data_root).parent / "networks"))
        models["pgd_2_3_16.onnx"] = load_onnx(nets / "pgd_2_3_16.onnx", input_shape=(3, 32, 32),
                                              normalize=(MEAN, STD)).eval()
    rows = []
    for name, model in models.items():
        with torch.no_grad():
            pred = model(x_all[:200].float()).argmax(1)
        idx = torch.nonzero(pred == y_all[:200]).flatten()[: a.n]
        x = x_all[idx].float()
        old, t_old = _crown(model, x, False)
        new, t_new = _crown(model, x, True)
        ratio = (new / old).numpy()
        rows.append(f"| {name} | {len(x)} ({idx.tolist()}) | {float(old.median()):.5g} | "
                    f"{float(new.median()):.5g} | {float(np.median(ratio)):.4f} "
                    f"({float(ratio.min()):.4f} - {float(ratio.max()):.4f}) | {t_old:.2f} | "
                    f"{t_new:.2f} | {t_old / t_new:.2f}x |")
        print(rows[-1], flush=True)
    doc = ["# `crown` through a patch embedding: with and without the Gram concretisation", "",
           f"`python -m benchmarks.patch_concretisation {' '.join(sys.argv[1:])}` (one thread, "
           f"torch {torch.__version__}, process CPU seconds; the same images, box [0, 1], "
           "in one process; a shared machine, so only the ratio of the two columns measured "
           "in the same run is meaningful).", "",
           "| model | images | median radius, general path | median radius, patch path | "
           "radius ratio patch / general (min - max) | s/img general | s/img patch | "
           "speed-up |", "|---|---|---|---|---|---|---|---|", *rows, "",
           "The radii differ only where a rounding-level difference in an interval flips a "
           "discrete choice downstream (a softmax plane or its interval; "
           "docs/theory/linear_relaxation.md §Concretisation through a patch embedding)."]
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text("\n".join(doc) + "\n")
    print("\n".join(doc))


if __name__ == "__main__":
    main()
