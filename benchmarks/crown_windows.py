"""``crown`` with and without walks on windows (``boundkit/bounds/crown/windows.py``), side by
side in one process on the same images: CPU seconds per image and the radii (which must
agree up to the search's tolerance). On a ResNet the windows pass the residual additions.

    python -m benchmarks.crown_windows --model resnet_cifar --n 1 --cache runs
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

import boundkit as bk
from benchmarks._models import DEFAULT_DATA, REPO, trained
from benchmarks.crown_vs_lirpa import dataset_of
from boundkit.bounds.crown import windows
from boundkit.data import load_dataset


def _crown(model: torch.nn.Module, x: torch.Tensor, use_windows: bool) -> tuple[torch.Tensor,
                                                                               float]:
    own = windows.Windows.chain
    if not use_windows:
        windows.Windows.chain = lambda self, run, node: None  # type: ignore[method-assign]
    try:
        t0 = time.process_time()
        r = bk.certify(model, x, "crown").radius
        return r, time.process_time() - t0
    finally:
        windows.Windows.chain = own  # type: ignore[method-assign]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="resnet_cifar")
    ap.add_argument("--n", type=int, default=1)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--cache", type=Path, default=REPO / "runs" / "models")
    args = ap.parse_args()
    torch.set_num_threads(1)
    model = trained(args.model, args.data, args.cache)
    x, _ = load_dataset(dataset_of(args.model), args.data, "test", download=False)
    x = x[: args.n]
    r_on, t_on = _crown(model, x, True)
    r_off, t_off = _crown(model, x, False)
    print(f"`python -m benchmarks.crown_windows {' '.join(sys.argv[1:])}` "
          f"({time.strftime('%Y-%m-%d')}, torch {torch.__version__}, one thread)")
    print(f"{args.model}, {args.n} image(s): crown with windows {t_on / args.n:.1f} CPU s per "
          f"image, without {t_off / args.n:.1f} ({t_off / t_on:.2f}x); radii with "
          f"{r_on.tolist()}, without {r_off.tolist()}")


if __name__ == "__main__":
    main()
