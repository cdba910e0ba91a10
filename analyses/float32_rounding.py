"""Whether a float32 model can change class inside its certified ball: certificates charge
the model's own rounding at every node (``docs/theory/numerics.md`` §4), so that where a bound
is tight (a linear classifier) the float32 model's boundary still lies outside the ball.

Per kind of random classifier (``--nets`` seeds, ``--n`` uniform inputs each, no box) and
method (``sound``, ``crown``): the radius and the ``best`` attack's verified adversarial norm
(the attack re-runs the model in its own dtype), on the float32 model and on its float64
copy; counts the samples whose attack norm is below the radius (a violation) and the
median relative price of the charge, ``(r64 - r32) / r64`` (the same weights certified as a
float64 model).

With ``--networks`` (a folder of the public ONNX networks, ``../shared/networks``) and
``--data-root``, also the price on trained networks: ``sound`` and ``crown`` on the first
``--n-real`` correctly classified test images of each, float32 model against its float64
copy, and the float32 ``best`` attack checked against the float32 radii.

    OMP_NUM_THREADS=1 python -m analyses.float32_rounding [--nets 12 --n 16] \
        [--networks ../shared/networks --data-root ../shared/data --n-real 16]
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import torch
from torch import nn

import boundkit as bk

KINDS = ("linear 10-3", "ReLU 10-16-3", "tanh 10-16-3, softmax")


def _model(kind: str) -> nn.Module:
    if kind == "linear 10-3":
        return nn.Sequential(nn.Linear(10, 3)).eval()
    if kind == "ReLU 10-16-3":
        return nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 3)).eval()
    return nn.Sequential(nn.Linear(10, 16), nn.Tanh(), nn.Linear(16, 3), nn.Softmax(1)).eval()


def below(kind: str, method: str, dtype: torch.dtype, nets: int, n: int
          ) -> tuple[int, int, float, float]:
    """(samples compared, attack norm below the radius, largest (r - norm) / r among them,
    median (r64 - r32) / r64)."""
    tot = bad_n = 0
    worst = 0.0
    price: list[torch.Tensor] = []
    opts = {} if method == "sound" else {"box": None}
    for seed in range(nets):
        torch.manual_seed(seed)
        model = _model(kind).to(dtype)
        x = torch.rand(n, 10, dtype=dtype)
        r = bk.certify(model, x, method, **opts).radius.double()
        r64 = bk.certify(model.double(), x.double(), method, **opts).radius
        model.to(dtype)
        norm = bk.attack(model, x, "best", box=None).norm.double()
        ok = torch.isfinite(norm) & (r > 0)
        bad = ok & (norm < r)
        tot += int(ok.sum())
        bad_n += int(bad.sum())
        if bool(bad.any()):
            worst = max(worst, float(((r - norm) / r)[bad].max()))
        price.append(((r64 - r) / r64)[r64 > 0])
    return tot, bad_n, worst, float(torch.cat(price).median())


REAL = ("mnist-net_256x2.onnx", "cifar_base_kw.onnx")


def real_networks(folder: Path, data_root: str, n: int) -> None:
    """The price of the charge, and the attack check, on trained public networks."""
    from benchmarks.real_networks import SETUP, first_correct
    from boundkit.data import load_dataset
    from boundkit.models import load_onnx

    print("\n| network | method | samples | attack norm < radius | median r (float32) | "
          "median (r64 - r) / r64 | largest (r64 - r) / r64 |")
    print("|---|---|---|---|---|---|---|")
    for name in REAL:
        path = folder / name
        if not path.exists():
            continue
        setup = SETUP[name]
        model = load_onnx(path, check=False, input_shape=setup.input_shape,
                          normalize=setup.normalize, layout=setup.layout)
        x_all, y_all = load_dataset(setup.data, root=data_root, split="test")
        _, x, _, _ = first_correct(model, x_all, y_all, n)
        m64 = copy.deepcopy(model).double()
        norm = bk.attack(model, x, "best").norm.double()
        for method in ("sound", "crown"):
            r = bk.certify(model, x, method).radius
            r64 = bk.certify(m64, x.double(), method).radius
            ok = r64 > 0
            price = (r64 - r) / r64
            bad = int((torch.isfinite(norm) & (norm < r)).sum())
            print(f"| {name} | {method} | {len(x)} | {bad} | {float(r.median()):.4g} | "
                  f"{float(price[ok].median()):.2g} | {float(price[ok].max()):.2g} |",
                  flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nets", type=int, default=12)
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--networks", type=Path, default=None)
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--n-real", type=int, default=16)
    args = ap.parse_args()
    torch.set_num_threads(1)
    print("| model | method | dtype | samples | attack norm < radius | largest (r - norm) / r "
          "| median (r64 - r) / r64 |")
    print("|---|---|---|---|---|---|---|")
    for kind in KINDS:
        for method in ("sound", "crown"):
            for dtype in (torch.float32, torch.float64):
                tot, bad, worst, price = below(kind, method, dtype, args.nets, args.n)
                print(f"| {kind} | {method} | {str(dtype).split('.')[1]} | {tot} | {bad} | "
                      f"{worst:.2g} | {price:.2g} |", flush=True)
    if args.networks is not None:
        real_networks(args.networks, args.data_root, args.n_real)


if __name__ == "__main__":
    main()
