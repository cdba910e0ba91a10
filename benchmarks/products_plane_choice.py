"""The McCormick plane choice of ``crown`` on products: boundkit's (per element, the plane
with the smaller gap at the centre activations) against auto_LiRPA's ``BoundMul`` choice
(always the first lower plane :math:`y_lx+x_ly-x_ly_l` and the first upper plane
:math:`y_ux+x_ly-x_ly_u`), on the same model and samples, one process.

    python -m benchmarks.products_plane_choice [--n 50] [--runs /tmp/runs]

Prints the median per-sample ratio of the two ``crown`` radii (box [0, 1]) on
``gated_mlp_mnist`` (trained with the zoo defaults and cached in ``--runs``).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from unittest import mock

import torch

import boundkit as bk
from benchmarks._models import DEFAULT_DATA, trained
from boundkit.bounds import products
from boundkit.data import load_dataset

_mccormick = products.mccormick


def first_planes(xl, xu, yl, yu, x0=None, y0=None):  # noqa: ANN001, ANN201
    """auto_LiRPA's choice: the first lower and the first upper plane everywhere. At the
    centre ``(x_l, y_l)`` the first lower plane has gap 0 and both upper planes gap 0, the
    tie going to the first: the same planes, whatever the activations."""
    return _mccormick(xl, xu, yl, yu, xl, yl)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=50)
    ap.add_argument("--runs", type=Path, default=Path("runs") / "models")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    a = ap.parse_args()
    torch.set_num_threads(1)
    model = trained("gated_mlp_mnist", a.data, a.runs)
    x, _ = load_dataset("mnist", a.data, "test")
    x = x[: a.n]
    ours = bk.certify(model, x, "crown").radius
    with mock.patch.object(products, "mccormick", first_planes):
        fixed = bk.certify(model, x, "crown").radius
    ok = fixed > 0
    ratio = (ours[ok] / fixed[ok]).median()
    print(f"gated_mlp_mnist, {a.n} test images, crown (box [0, 1]): median radius "
          f"centre-gap choice {float(ours.median()):.4f}, auto_LiRPA's fixed planes "
          f"{float(fixed.median()):.4f}; median per-sample ratio {float(ratio):.3f}, "
          f"min {float((ours[ok] / fixed[ok]).min()):.3f}, "
          f"max {float((ours[ok] / fixed[ok]).max()):.3f}")


if __name__ == "__main__":
    main()
