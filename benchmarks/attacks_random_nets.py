"""``best`` on small random ReLU nets without a box, against the exact radius (issue #25).

Each net is a ReLU MLP with PyTorch's default initialisation (sizes cycle through
``SIZES``), inputs uniform in [0.2, 0.8], no box; for every third net the first layer's
biases are shifted so that every first-layer ReLU is off at the first sample
(:func:`dead_first_layer_case`): the network is constant around it and every gradient there
is zero.  The exact minimal perturbation comes from :func:`boundkit.exact_radius`.  Prints,
per net and in total, ``best``'s per-sample norm / exact radius (targets: within 5 % on
>= 95 % of the samples, never below 1, no miss), which member found each sample and, for
misses, the typed reason.

Usage::

    python -m benchmarks.attacks_random_nets --nets 10 --samples 4 \
        --out docs/results/attacks_random_nets.md
"""

from __future__ import annotations

import argparse
import collections
import sys
import time
from pathlib import Path

import torch
from torch import nn

import boundkit.attacks as A
from boundkit.exact import exact_radius

SIZES = ((4, 10, 10, 3), (6, 12, 12, 3), (5, 16, 4), (4, 8, 8, 8, 5))


def random_case(seed: int, n: int) -> tuple[nn.Module, torch.Tensor]:
    """A default-initialised ReLU MLP and ``n`` inputs uniform in [0.2, 0.8]."""
    sizes = SIZES[seed % len(SIZES)]
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    net = nn.Sequential(*layers).eval()
    x = torch.rand(n, sizes[0], generator=torch.Generator().manual_seed(1000 + seed))
    return net, x * 0.6 + 0.2


def dead_first_layer_case(seed: int, n: int, margin: float = 1.0) -> tuple[nn.Module, Tensor]:
    """:func:`random_case` with the first layer's biases set so that every first-layer
    pre-activation is ``-margin * ||w_j||`` at ``x[0]`` (all ReLUs off within distance
    ``margin`` of it: the net is constant there and every gradient is zero)."""
    net, x = random_case(seed, n)
    with torch.no_grad():
        w = net[0].weight
        net[0].bias.copy_(-(w @ x[0]) - margin * w.norm(dim=1))
    return net, x


Tensor = torch.Tensor


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--nets", type=int, default=10)
    p.add_argument("--samples", type=int, default=4)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--exact-timeout", type=float, default=60.0)
    p.add_argument("--old-commit", default=None,
                   help="also run `best` as of this commit (e.g. eeb5b97, before issue #25)")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    runs = {"new": lambda m, x: A.attack(m, x, "best", box=None)}
    if args.old_commit:
        from benchmarks.attacks_best_vs_old import import_old_attacks

        old = import_old_attacks(args.old_commit)
        runs[f"old ({args.old_commit[:7]})"] = lambda m, x: old.attack(m, x, "best", box=None)
    torch.set_num_threads(args.threads)
    lines = ["# `best` on small random ReLU nets (default init, inputs in [0.2, 0.8], no box)",
             "", f"Command: `python -m benchmarks.attacks_random_nets "
             f"{' '.join(sys.argv[1:] if argv is None else argv)}`  ",
             f"torch {torch.__version__}, {args.threads} thread(s). Nets with a dead first "
             "layer at their first sample: every third (`dead`).", "",
             "| net | sizes | dead | samples (exact finished) | exact min-max | ensemble | found | "
             "within 5 % | median norm / exact | max | seconds | found by |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    ratios: dict[str, list[Tensor]] = {k: [] for k in runs}
    misses: dict[str, collections.Counter[str]] = {k: collections.Counter() for k in runs}
    for seed in range(args.nets):
        dead = seed % 3 == 2
        case = dead_first_layer_case if dead else random_case
        net, x = case(seed, args.samples)
        ex = exact_radius(net, x, box=None, time_limit=args.exact_timeout,
                          on_budget="nan").double()
        fin = ~ex.isnan() & torch.isfinite(ex)
        for name, fn in runs.items():
            t = time.perf_counter()
            res = fn(net, x)
            sec = time.perf_counter() - t
            r = res.norm[fin] / ex[fin]
            ratios[name].append(r)
            for i in (~res.success & fin).nonzero().flatten().tolist():
                outcome = getattr(res, "outcome", None)
                misses[name][outcome[i].value if outcome else "?"] += 1
            by = collections.Counter(f.split("+")[0] or "none" for f in res.found_by)
            by_text = ", ".join(f"{k} {v}" for k, v in by.most_common())
            head = (f"| {seed} | {'-'.join(map(str, SIZES[seed % len(SIZES)]))} | "
                    f"{'yes' if dead else ''} | {len(x)} ({int(fin.sum())}) | ")
            if not bool(fin.any()):
                lines.append(head + f"- | {name} | {int(res.success.sum())} | - | - | - | "
                             f"{sec:.1f} | {by_text} |")
            else:
                lines.append(
                    head + f"{float(ex[fin].min()):.3g}-{float(ex[fin].max()):.3g} | {name} | "
                    f"{int(res.success.sum())} | {int((r <= 1.05).sum())} | "
                    f"{float(r.median()):.4f} | {float(r.max()):.3g} | {sec:.1f} | {by_text} |")
            print(lines[-1], flush=True)
    lines.append("")
    for name, rs in ratios.items():
        r = torch.cat(rs)
        lines.append(
            f"- {name}: within 5 % of exact on {int((r <= 1.05).sum())} of {len(r)} samples "
            f"({float((r <= 1.05).double().mean()):.1%}); misses: "
            f"{int((~torch.isfinite(r)).sum())} ({dict(misses[name]) or 'none'}); never below "
            f"exact (1 - 1e-6): {bool((r >= 1 - 1e-6).all())}; median ratio "
            f"{float(r.median()):.5f}.")
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
