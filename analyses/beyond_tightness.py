"""Beyond the thesis: tightness against the exact minimal perturbation, per layer family,
and the depth/width trade-off of Section 6.1.

The thesis's future work asks how tight its bounds are and how depth and width trade off;
it had no ground truth. boundkit's ``exact_radius`` gives the exact minimal L2 perturbation
of small ReLU networks. On Wine (13 features, min-max scaled) we train ReLU MLPs of depth
1-3 and width 4-16 (at most 32 hidden ReLUs, the exact solver's limit) and a tiny conv net on
the 8x8 digits, then report:

* tightness = certified radius / exact radius for ``peck2017`` and ``sound`` (1 = exact;
  > 1 = a violated bound), and the best attack / exact (>= 1);
* per layer family (linear, relu, conv, flatten...), the median factor by which each method's
  bound shrinks across a node of that family (``Certificate.losses``);
* depth/width: exact radius, certified radii and test accuracy per architecture (depth 1-3,
  width 4/8/16, several seeds each).

    python -m analyses.beyond_tightness
    python -m analyses.beyond_tightness --quick
"""

from __future__ import annotations

import time
from collections import defaultdict

import torch
from torch import nn

from analyses.common import (
    base_parser,
    fmt,
    md_table,
    plt,
    save_figure,
    setup,
    stats,
    violations,
    write_results,
)


def tiny_cnn() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(1, 2, 3, stride=2), nn.ReLU(), nn.Flatten(),
                         nn.Linear(18, 8), nn.ReLU(), nn.Linear(8, 10))


def main() -> None:
    p = base_parser(__doc__)
    p.add_argument("--samples", type=int, default=40)
    p.add_argument("--epochs", type=int, default=150)
    p.add_argument("--budget", type=int, default=100)
    p.add_argument("--seeds", type=int, default=3,
                   help="networks trained per architecture (seeds seed, seed+1, ...)")
    args = p.parse_args()
    if args.quick:
        args.samples, args.epochs, args.budget, args.seeds = 10, 30, 20, 1
    setup(args)
    import boundkit as bk
    from boundkit.data import load_dataset
    from boundkit.models import accuracy, mlp, train_model

    archs: dict[str, tuple] = {}
    grid = [(d, w) for d in (1, 2, 3) for w in (4, 8, 16) if d * w <= 32]
    for depth, width in grid:
        archs[f"wine relu {depth}x{width}"] = ("wine", lambda d=depth, w=width:
                                               mlp([13] + [w] * d + [3], "relu"))
    archs["digits tiny conv"] = ("digits", tiny_cnn)
    rows, lrows, raw = [], [], {}
    fam: dict[str, dict[str, list]] = {"peck2017": defaultdict(list), "sound": defaultdict(list)}
    keys = ("exact", "best", "fgs", "peck2017", "sound")
    for name, (ds, build) in archs.items():
        t0 = time.perf_counter()
        x_tr, y_tr = load_dataset(ds, args.data_root, "train", seed=args.seed)
        x_te, y_te = load_dataset(ds, args.data_root, "test", seed=args.seed)
        x = x_te[: args.samples]
        per: dict[str, list] = {k: [] for k in keys}
        accs = []
        for s in range(args.seed, args.seed + args.seeds):
            torch.manual_seed(s)
            m = build().eval()
            train_model(m, x_tr, y_tr, epochs=args.epochs, batch_size=32, seed=s)
            accs.append(accuracy(m, x_te, y_te))
            per["exact"].append(bk.exact_radius(m, x).cpu())
            # no box: the fallback's start points are the training inputs (explicit pool)
            per["best"].append(bk.attack(m, x, "best", box=None, budget=args.budget,
                                         seed=s, fallback_pool=x_tr).norm.cpu())
            per["fgs"].append(bk.attack(m, x, "fgs", box=None).norm.cpu())
            for meth in ("peck2017", "sound"):
                c = bk.certify(m, x, meth)
                per[meth].append(c.radius.cpu())
                for node, loss in c.losses().items():
                    op = c.node_ops.get(node, node)
                    v = loss[torch.isfinite(loss)]
                    if v.numel():
                        fam[meth][op].append(v.median().item())
        r = {k: torch.cat(v) for k, v in per.items()}
        ex = r["exact"]
        acc = sum(accs) / len(accs)
        ok = torch.isfinite(ex) & (ex > 0)
        rows.append([name, acc, stats(ex)["median"], stats(r["sound"])["median"],
                     stats(r["peck2017"])["median"], stats(r["sound"][ok] / ex[ok])["median"],
                     stats(r["peck2017"][ok] / ex[ok])["median"],
                     violations(ex, r["peck2017"]), violations(ex, r["sound"]),
                     stats(r["best"][ok] / ex[ok])["median"],
                     stats(r["fgs"][ok] / ex[ok])["median"]])
        raw[name] = {"accuracy": accs, **r, "seconds": time.perf_counter() - t0}
        print(f"{name} done in {time.perf_counter() - t0:.0f} s", flush=True)
    ops = sorted(set(fam["peck2017"]) | set(fam["sound"]))
    for op in ops:
        lrows.append([op] + [stats(fam[m][op])["median"] if fam[m][op] else "-"
                             for m in ("peck2017", "sound")])

    # depth x width grids of the empirical (exact) and certified (sound) robustness
    widths = sorted({w for _, w in grid})

    def cell(d: int, w: int, what: str) -> str:
        name = f"wine relu {d}x{w}"
        if name not in raw:
            return "-"
        e = raw[name]
        if what == "acc":
            return fmt(sum(e["accuracy"]) / len(e["accuracy"]))
        if what == "exact":
            return fmt(stats(e["exact"])["median"])
        if what == "sound":
            return fmt(stats(e["sound"])["median"])
        ok = torch.isfinite(e["exact"]) & (e["exact"] > 0)
        return fmt(stats(e["sound"][ok] / e["exact"][ok])["median"])

    grids = ""
    for what, title in (("acc", "mean test accuracy"),
                        ("exact", "median exact minimal perturbation (empirical robustness, "
                                  "ground truth)"),
                        ("sound", "median `sound` radius (certified robustness)"),
                        ("ratio", "median `sound` / exact (what the composition loses)")):
        grids += f"\n{title}:\n\n" + md_table(
            ["depth \\ width", *[str(w) for w in widths]],
            [[d, *[cell(d, w, what) for w in widths]] for d in (1, 2, 3)]) + "\n"

    def by_depth(key: str) -> str:
        out = []
        for d in (1, 2, 3):
            v = [stats(raw[f"wine relu {d}x{w}"][key] / raw[f"wine relu {d}x{w}"]["exact"]
                       if key != "exact" else raw[f"wine relu {d}x{w}"]["exact"])["median"]
                 for w in widths if f"wine relu {d}x{w}" in raw]
            v = [a for a in v if a == a]  # drop NaN (no finite exact radius at all)
            out.append(f"depth {d}: {fmt(min(v), 3)} to {fmt(max(v), 3)}" if v
                       else f"depth {d}: n/a")
        return "; ".join(out)

    md = f"""# Beyond the thesis: tightness against the exact minimal perturbation

Small ReLU networks trained here ({args.epochs} epochs, Adam, {args.seeds} seeds per
architecture): MLPs on Wine (13 features, min-max scaled, 3 classes) of depth 1-3 and width
4/8/16 (at most 32 hidden ReLUs), and a tiny conv net on the 8x8 digits. On the first
{args.samples} test samples of each network: exact minimal L2 perturbation
(`bk.exact_radius`, no box), certified radii, best attack ({args.budget} steps per member, no
box) and FGS (thesis Algorithm 2.1). Medians are over all samples of all seeds ("test acc."
is the mean over seeds); "viol." counts samples whose bound exceeds the exact radius (a bound
> exact is false).

{md_table(["network", "test acc.", "exact (median)", "sound", "peck2017", "sound/exact",
           "peck2017/exact", "peck2017 viol.", "sound viol.", "best/exact", "FGS/exact"],
          rows)}

## Loss per layer family

Median, over the nodes of a family and the networks above, of the factor by which the bound
changes across a node (kappa after the node / kappa before it, `Certificate.losses()`;
1 = the node loses nothing, larger = the node shrinks the bound more).

{md_table(["layer family", "peck2017", "sound"], lrows)}

## Depth/width (Section 6.1)

The thesis's eq. (5.13) argues that deeper networks are easier to make robust because
per-layer gains compound. With the exact radius as ground truth the question splits in two:
does depth or width change the *empirical* robustness (the exact minimal perturbation of the
trained network), and what does it do to the *certified* robustness (the composed bound)?
{grids}
Medians over the widths, by depth: exact radius {by_depth("exact")}; `sound`/exact
{by_depth("sound")}; `peck2017`/exact {by_depth("peck2017")}. Each extra layer multiplies
one more operator norm into the composed bounds, so their ratio to the exact radius is the
measured cost of depth for a certificate; the exact column says whether the networks
themselves became more or less robust.
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
