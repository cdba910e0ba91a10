"""Table 5.3 of Peck (2017): LeNet-5 with Local Response Normalisation (LeNet-LRN1/2/3).

LRN1: LRN after the first pooling; LRN2: after the second; LRN3: after both. Trained here
with Adam like LeNet-5. On a subset of the MNIST test split: accuracy, FGS epsilon statistics
and rate under the thesis's protocol (255 scale, max epsilon 100), the best attack, and the
certified radii of ``peck2017`` and ``sound``: does LRN raise robustness once the bound is
sound and the attack strong?

    python -m analyses.table_5_3_lrn
    python -m analyses.table_5_3_lrn --quick
"""

from __future__ import annotations

import time

from analyses.common import (
    base_parser,
    md_table,
    plt,
    save_figure,
    setup,
    stats,
    trained_zoo_model,
    write_results,
)
from analyses.table_5_1_cnns import THESIS_5_1, THESIS_5_2, evaluate_cnn, summarise, viol_cell

# Thesis Table 5.3 (published): accuracy, min, max, mean, median, std of FGS epsilon, rate.
# LeNet-5's row is not in Table 5.3; its epsilon statistics and rate are Tables 5.1 / 5.2.
THESIS = {
    "lenet5": (None, *THESIS_5_2["lenet5"], THESIS_5_1["lenet5"][2]),
    "lenet5_lrn1": (0.9876, 0.00756, 99.71930, 25.31045, 21.88714, 17.30748, 0.9836),
    "lenet5_lrn2": (0.9848, 0.00011, 99.87615, 24.92861, 19.62794, 20.60854, 0.9552),
    "lenet5_lrn3": (0.9894, 0.00869, 99.95050, 25.76302, 20.96658, 18.83517, 0.9694),
}


def main() -> None:
    p = base_parser(__doc__)
    p.add_argument("--samples", type=int, default=200)
    p.add_argument("--budget", type=int, default=100)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--train-images", type=int, default=None, help="default: all 8,000")
    args = p.parse_args()
    if args.quick:
        args.samples, args.budget, args.epochs, args.train_images = 20, 20, 2, 2000
    setup(args)
    from boundkit.data import load_dataset
    from boundkit.models import accuracy

    x_te, y_te = load_dataset("mnist", args.data_root, "test", seed=args.seed)
    x, y = x_te[: args.samples], y_te[: args.samples]
    rows, rows2, summ, raw, info = [], [], {}, {}, {}
    for name in THESIS:
        t0 = time.perf_counter()
        model, info[name] = trained_zoo_model(name, args, epochs=args.epochs,
                                            max_train=args.train_images)
        acc = accuracy(model, x_te, y_te)
        r = evaluate_cnn(model, x, y, budget=args.budget, seed=args.seed)
        s = summarise(r)
        summ[name], raw[name] = s, r
        t = THESIS[name]
        e = s["eps"]
        rows.append([name, t[0] if t[0] is not None else "-", acc, t[1], e["min"], t[3],
                     e["mean"], t[4], e["median"], t[6], s["fgs_rate"]])
        rows2.append([name, stats(r["peck2017"])["median"], stats(r["sound"])["median"],
                      stats(r["best_norm"])["median"], stats(r["fgs_norm"])["median"],
                      s["best_rate"], viol_cell(s, "peck"), viol_cell(s, "sound")])
        print(f"{name} done in {time.perf_counter() - t0:.0f} s", flush=True)

    md = f"""# Table 5.3: LeNet-5 with LRN layers

Thesis Table 5.3 (published, "thesis ...") beside ours. Models trained here with Adam,
{args.epochs} epochs on {info["lenet5"]["n_train"]} training images of the shared MNIST
subset (the thesis: 10,000 Adam iterations on full MNIST); accuracy on the 2,000 test
images; attacks and bounds
on the first {args.samples} test images (the thesis: 10,000). FGS epsilon on the 255 scale,
max epsilon 100, as in Tables 5.1/5.2. LeNet-5's thesis row comes from Tables 5.1/5.2.

{md_table(["network", "thesis acc.", "our acc.", "thesis min eps", "min eps",
           "thesis mean eps", "mean eps", "thesis median eps", "median eps", "thesis rate",
           "FGS rate"], rows)}

Certified radii and strong attacks (medians, L2 on the 255 scale):

{md_table(["network", "peck2017 radius", "sound radius", "best attack", "FGS",
           "best rate", "peck2017 viol. (float64)", "sound viol. (float64)"], rows2)}

**Reading.** The thesis concludes that LRN raises robustness, from FGS epsilons (minimum
epsilon 0.00065 -> 0.00756 -> 0.00869; the means barely move: 26.7, 25.3, 24.9, 25.8). A
minimum over 10,000 FGS runs is a noisy statistic, and FGS epsilons are not minimal
perturbations. Compare instead the median best-attack norm (what the networks really
tolerate) and the `sound` radius (what can be guaranteed) across rows: an LRN layer with the
thesis's constants (k = 2, alpha = 1e-4, beta = 0.75) divides activations by about
2^0.75 = 1.68, which rescales the function and can be absorbed by the next layer's weights,
so any change in the bounds that is not matched by the best-attack column is a property of
the bound, not of the network. A `peck2017` violation count > 0 on an LRN row means the
published LRN bound (Theorem 5.9) is violated; the count in brackets keeps only the
counterexamples that hold for the float64 network too (the attack's perturbation stretched
by 1e-4 is still misclassified in float64), i.e. those that are not float32 rounding.
"""
    pl = plt()
    fig, ax = pl.subplots(figsize=(8, 3.8))
    names = list(summ)
    for key, lab, mk in (("peck2017", "peck2017 (median)", "v"), ("sound", "sound (median)", "o"),
                         ("best_norm", "best attack (median)", "s"),
                         ("fgs_norm", "FGS (median)", "^")):
        ax.semilogy(names, [stats(raw[n][key])["median"] for n in names], mk + "-", label=lab)
    ax.set_ylabel("L2 (255 scale)")
    ax.set_title("LeNet-5 vs LRN variants: certified radii and attacks")
    ax.legend(fontsize=8)
    save_figure(fig, args, "table_5_3_lrn")
    md += "\n![lrn](table_5_3_lrn.png)\n"
    write_results(args, "table_5_3_lrn", md, {"summary": summ, "training": info,
                                              "per_sample": raw})


if __name__ == "__main__":
    main()
