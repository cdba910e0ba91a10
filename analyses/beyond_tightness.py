"""Beyond the thesis: tightness against the exact minimal perturbation, per layer family,
and the depth/width trade-off of Section 6.1.

The thesis's future work asks how tight its bounds are and how depth and width trade off;
it had no ground truth. boundkit's ``exact_radius`` gives the exact minimal L2 perturbation
of small ReLU networks. On Wine (13 features, min-max scaled) we train ReLU MLPs of depth
1-3 and width 4-8 (at most 32 hidden ReLUs, the exact solver's limit) and a tiny conv net on
the 8x8 digits, then report:

* tightness = certified radius / exact radius for ``peck2017`` and ``sound`` (1 = exact;
  > 1 = a violated bound), and the best attack / exact (>= 1);
* per layer family (linear, relu, conv, flatten...), the median factor by which each method's
  bound shrinks across a node of that family (``Certificate.losses``);
* depth/width: exact radius, certified radii and test accuracy per architecture.

    python analyses/beyond_tightness.py
    python analyses/beyond_tightness.py --quick
"""

from __future__ import annotations

import time
from collections import defaultdict

import torch
from common import base_parser, md_table, plt, save_figure, setup, stats, violations, write_results
from torch import nn


def tiny_cnn() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(1, 2, 3, stride=2), nn.ReLU(), nn.Flatten(),
                         nn.Linear(18, 8), nn.ReLU(), nn.Linear(8, 10))


def main() -> None:
    p = base_parser(__doc__)
    p.add_argument("--samples", type=int, default=40)
    p.add_argument("--epochs", type=int, default=150)
    p.add_argument("--budget", type=int, default=100)
    args = p.parse_args()
    if args.quick:
        args.samples, args.epochs, args.budget = 10, 30, 20
    setup(args)
    import boundkit as bk
    from boundkit.data import load_dataset
    from boundkit.models import accuracy, mlp, train_model

    archs: dict[str, tuple] = {}
    for depth in (1, 2, 3):
        for width in (4, 8):
            if depth * width <= 32:
                archs[f"wine relu {depth}x{width}"] = ("wine", lambda d=depth, w=width:
                                                       mlp([13] + [w] * d + [3], "relu"))
    archs["digits tiny conv"] = ("digits", tiny_cnn)
    rows, lrows, raw = [], [], {}
    fam: dict[str, dict[str, list]] = {"peck2017": defaultdict(list), "sound": defaultdict(list)}
    for name, (ds, build) in archs.items():
        t0 = time.perf_counter()
        x_tr, y_tr = load_dataset(ds, args.data_root, "train", seed=args.seed)
        x_te, y_te = load_dataset(ds, args.data_root, "test", seed=args.seed)
        torch.manual_seed(args.seed)
        m = build().eval()
        train_model(m, x_tr, y_tr, epochs=args.epochs, batch_size=32, seed=args.seed)
        acc = accuracy(m, x_te, y_te)
        x = x_te[: args.samples]
        ex = bk.exact_radius(m, x).cpu()
        best = bk.attack(m, x, "best", box=None, budget=args.budget, seed=args.seed).norm.cpu()
        fgs = bk.attack(m, x, "fgs", box=None).norm.cpu()
        cert = {meth: bk.certify(m, x, meth) for meth in ("peck2017", "sound")}
        r = {meth: c.radius.cpu() for meth, c in cert.items()}
        for meth, c in cert.items():
            for node, loss in c.losses().items():
                op = c.node_ops.get(node, node)
                v = loss[torch.isfinite(loss)]
                if v.numel():
                    fam[meth][op].append(v.median().item())
        ok = torch.isfinite(ex) & (ex > 0)
        rows.append([name, acc, stats(ex)["median"], stats(r["sound"])["median"],
                     stats(r["peck2017"])["median"], stats(r["sound"][ok] / ex[ok])["median"],
                     stats(r["peck2017"][ok] / ex[ok])["median"],
                     violations(ex, r["peck2017"]), violations(ex, r["sound"]),
                     stats(best[ok] / ex[ok])["median"], stats(fgs[ok] / ex[ok])["median"]])
        raw[name] = {"accuracy": acc, "exact": ex, "best": best, "fgs": fgs, **r,
                     "seconds": time.perf_counter() - t0}
        print(f"{name} done in {time.perf_counter() - t0:.0f} s", flush=True)
    ops = sorted(set(fam["peck2017"]) | set(fam["sound"]))
    for op in ops:
        lrows.append([op] + [stats(fam[m][op])["median"] if fam[m][op] else "-"
                             for m in ("peck2017", "sound")])

    md = f"""# Beyond the thesis: tightness against the exact minimal perturbation

Small ReLU networks trained here ({args.epochs} epochs, Adam): MLPs on Wine (13 features,
min-max scaled, 3 classes) of depth 1-3 and width 4/8, and a tiny conv net on the 8x8 digits.
On the first {args.samples} test samples: exact minimal L2 perturbation (`bk.exact_radius`,
no box), certified radii, best attack ({args.budget} steps per member, no box) and FGS
(thesis Algorithm 2.1). Ratios are medians over samples; "viol." counts samples whose bound
exceeds the exact radius (a bound > exact is false).

{md_table(["network", "test acc.", "exact (median)", "sound", "peck2017", "sound/exact",
           "peck2017/exact", "peck2017 viol.", "sound viol.", "best/exact", "FGS/exact"],
          rows)}

## Loss per layer family

Median, over the nodes of a family and the networks above, of the factor by which the bound
changes across a node (kappa after the node / kappa before it, `Certificate.losses()`;
1 = the node loses nothing, larger = the node shrinks the bound more).

{md_table(["layer family", "peck2017", "sound"], lrows)}

## Depth/width (Section 6.1)

The rows "wine relu DxW" answer the thesis's depth/width question on ground truth: the exact
radius of the trained networks against the certified radii per depth and width. The
thesis's eq. (5.13) argues that deeper networks are easier to make robust because per-layer
gains compound; the table above shows the other side of composition: each layer also
costs the composed bound a factor, so whether "sound/exact" falls with depth is the measured
answer (quick runs are under-trained: read the default run).
"""
    pl = plt()
    fig, ax = pl.subplots(figsize=(8, 4))
    names = list(raw)
    for key, mk in (("exact", "o"), ("sound", "s"), ("peck2017", "v"), ("best", "^")):
        ax.semilogy(range(len(names)), [stats(raw[n][key])["median"] for n in names],
                    mk + "-", label=key)
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.set_ylabel("median L2 radius")
    ax.set_title("Exact minimal perturbation vs certified radii and attacks")
    ax.legend(fontsize=8)
    save_figure(fig, args, "beyond_tightness")
    md += "\n![tightness](beyond_tightness.png)\n"
    write_results(args, "beyond_tightness", md, {"networks": raw,
                                                 "layer_losses": {k: dict(v)
                                                                  for k, v in fam.items()}})


if __name__ == "__main__":
    main()
