"""How far below a certified radius a float32 model can change class: certificates are about
the exact-arithmetic (float64) network (``docs/user-guide.md`` §What a certificate means), and
where one is tight the float32 model's own rounding can move its boundary inside the ball.

Per kind of random classifier (``--nets`` seeds, ``--n`` uniform inputs each, no box):
``crown`` radius and the ``best`` attack's verified adversarial norm (the attack re-runs the
model in its own dtype), on the float32 model and on its float64 copy; counts the samples
whose attack norm is below the radius and the largest relative gap ``(r - norm) / r``.

    OMP_NUM_THREADS=1 python -m analyses.float32_rounding [--nets 12 --n 16]
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

import boundkit as bk


def _model(kind: str) -> nn.Module:
    if kind == "linear 10-3":
        return nn.Sequential(nn.Linear(10, 3)).eval()
    return nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 3)).eval()


def below(kind: str, dtype: torch.dtype, nets: int, n: int) -> tuple[int, int, float]:
    """(samples compared, attack norm below the radius, largest (r - norm) / r)."""
    tot = bad_n = 0
    worst = 0.0
    for seed in range(nets):
        torch.manual_seed(seed)
        model = _model(kind).to(dtype)
        x = torch.rand(n, 10, dtype=dtype)
        r = bk.certify(model, x, "crown", box=None).radius.double()
        norm = bk.attack(model, x, "best", box=None).norm.double()
        ok = torch.isfinite(norm) & (r > 0)
        bad = ok & (norm < r)
        tot += int(ok.sum())
        bad_n += int(bad.sum())
        if bool(bad.any()):
            worst = max(worst, float(((r - norm) / r)[bad].max()))
    return tot, bad_n, worst


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nets", type=int, default=12)
    ap.add_argument("--n", type=int, default=16)
    args = ap.parse_args()
    torch.set_num_threads(1)
    print("| model | dtype | samples | attack norm < crown radius | largest (r - norm) / r |")
    print("|---|---|---|---|---|")
    for kind in ("linear 10-3", "ReLU 10-16-3"):
        for dtype in (torch.float32, torch.float64):
            tot, bad, worst = below(kind, dtype, args.nets, args.n)
            print(f"| {kind} | {str(dtype).split('.')[1]} | {tot} | {bad} | {worst:.2g} |",
                  flush=True)


if __name__ == "__main__":
    main()
