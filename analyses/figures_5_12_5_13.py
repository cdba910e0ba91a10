"""Figures 5.12 and 5.13 of Peck (2017): the analytic curves of Section 5.4.

* Fig. 5.12: relative increase ``(1 - eps)^-n`` of the theoretical bound when each of ``n``
  convolution kernels is scaled by ``1 - eps`` (eps = 0.1).
* Fig. 5.13, eq. (5.13): relative increase ``1 + delta/kappa_L * sum_{l<L} alpha^-l`` when
  every layer's bound is raised by ``delta`` (alpha = 0.01, delta = 0.1, kappa_L = 2), and its
  saturation value ``1 + delta / (kappa_L (1 - 1/alpha))`` for alpha > 1.

Plus a check against boundkit (the thesis has none): the closed form of Fig. 5.12 is verified
on a LeNet-5 by scaling its convolution kernels and re-running ``certify(..., "peck2017")``
and ``"sound"`` on a few MNIST test images.

    python -m analyses.figures_5_12_5_13
"""

from __future__ import annotations

import numpy as np
import torch

from analyses.common import base_parser, md_table, plt, save_figure, setup, write_results


def fig_5_12(n: np.ndarray, eps: float = 0.1) -> np.ndarray:
    return (1 - eps) ** (-n.astype(float))


def eq_5_13(L: np.ndarray, alpha: float = 0.01, delta: float = 0.1,
            kappa_L: float = 2.0) -> np.ndarray:
    L = L.astype(float)
    return 1 + delta * (1 - alpha ** (-L)) / (kappa_L * (1 - 1 / alpha))


def main() -> None:
    p = base_parser(__doc__)
    p.add_argument("--images", type=int, default=20, help="MNIST images for the check")
    p.add_argument("--epochs", type=int, default=1, help="LeNet-5 training epochs for the check")
    args = p.parse_args()
    if args.quick:
        args.images = 5
    setup(args)
    import boundkit as bk
    from boundkit.data import load_dataset
    from boundkit.models import build_model, train_model

    n = np.arange(1, 11)
    L = np.arange(1, 11)
    r12 = fig_5_12(n)
    r13 = eq_5_13(L)
    sat = {a: float(1 + 0.1 / (2 * (1 - 1 / a))) for a in (2.0, 10.0)}
    # the sum form of (5.13), independently of the closed form
    r13_sum = np.array([1 + 0.1 / 2 * sum(0.01 ** (-j) for j in range(int(k))) for k in L])
    assert np.allclose(r13, r13_sum, rtol=1e-12)

    pl = plt()
    fig, ax = pl.subplots(1, 2, figsize=(10, 3.8))
    ax[0].plot(n, r12, "o-")
    ax[0].set_xlabel("number of scaled kernels n")
    ax[0].set_ylabel("relative increase of the bound")
    ax[0].set_title("Fig. 5.12: (1 - 0.1)^-n")
    ax[0].grid(alpha=0.3)
    ax[1].semilogy(L, r13, "o-", label="alpha = 0.01 (thesis)")
    for a in (2.0, 10.0):
        ax[1].semilogy(L, eq_5_13(L, alpha=a), "s--", label=f"alpha = {a:g} (saturates)")
    ax[1].set_xlabel("number of layers L")
    ax[1].set_ylabel("relative increase (log)")
    ax[1].set_title("Fig. 5.13 / eq. 5.13: delta=0.1, kappa_L=2")
    ax[1].legend()
    ax[1].grid(alpha=0.3)
    save_figure(fig, args, "figures_5_12_5_13")

    # ---- check of the Fig. 5.12 scaling law on a trained LeNet-5
    x_tr, y_tr = load_dataset("mnist", args.data_root, "train", seed=args.seed)
    x_te, _ = load_dataset("mnist", args.data_root, "test", seed=args.seed)
    m = build_model("lenet5", seed=args.seed)
    sub = 2000 if args.quick else 8000
    train_model(m, x_tr[:sub], y_tr[:sub], epochs=args.epochs, seed=args.seed, batch_size=64)
    x = x_te[: args.images]
    check_rows = []
    raw_check = {}
    with torch.no_grad():
        pred0 = m(x).argmax(1)
    for method in ("peck2017", "sound"):
        base = bk.certify(m, x, method).radius
        for a1, a2 in ((0.9, 1.0), (0.9, 0.9), (0.5, 0.5)):
            for compensate in (False, True):
                ms = build_model("lenet5")
                ms.load_state_dict(m.state_dict())
                with torch.no_grad():
                    ms.c1.weight.mul_(a1)
                    ms.c1.bias.mul_(a1)
                    ms.c3.weight.mul_(a2)
                    ms.c3.bias.mul_(a2)
                    if compensate:  # same function: undo the scale in the dense layer C5
                        ms.c5.weight.div_(a1 * a2)
                    same = (ms(x).argmax(1) == pred0).double().mean().item()
                r = bk.certify(ms, x, method).radius
                ratio = (r / base).median().item()
                check_rows.append([method, a1, a2, "yes" if compensate else "no", same,
                                   1 / (a1 * a2), ratio])
                raw_check[f"{method}_{a1}_{a2}_{compensate}"] = (r / base).tolist()

    md = f"""# Figures 5.12 and 5.13: analytic robustness curves (Section 5.4)

![curves](figures_5_12_5_13.png)

Fig. 5.12 (relative increase when n kernels are scaled by 0.9) and eq. (5.13) (alpha = 0.01,
delta = 0.1, kappa_L = 2), values computed from the thesis's formulas:

{md_table(["n or L", "Fig. 5.12 (1-0.1)^-n", "eq. 5.13"],
          [[int(a), b, c] for a, b, c in zip(n, r12, r13)])}

The thesis's reading checks out numerically: four kernels give 1.52 ("about 1.5"), seven give
2.09 ("a factor of 2"). Eq. (5.13) with alpha = 0.01 grows by a factor 100 per layer (the
y axis of Fig. 5.13 must be logarithmic to show it); with alpha > 1 it saturates at
1 + delta/(kappa_L (1 - 1/alpha)): {sat[2.0]:.4f} for alpha = 2, {sat[10.0]:.4f} for alpha = 10.
The closed form equals the sum form to 1e-12.

**Check against boundkit (not in the thesis).** The argument behind Fig. 5.12 assumes
"the other layers remain unaffected". We scale the C1/C3 kernels (and biases) of a LeNet-5
trained here ({args.epochs} epoch(s) on {sub} MNIST images) by alpha_1, alpha_2 and certify
{args.images} test images again, either leaving C5 alone (the thesis's scenario: the function
changes; column "same predictions" says how much) or dividing C5's weights by alpha_1
alpha_2 (the same function, reparametrised). Median ratio of the new radius to the old one:

{md_table(["method", "alpha_1 (C1)", "alpha_2 (C3)", "C5 compensates", "same predictions",
           "thesis prediction 1/(a1 a2)", "median radius ratio"], check_rows)}

How to read it: the thesis's gain 1/(alpha_1 alpha_2) can only appear when C5 is left alone,
i.e. when the network computes a different function (smaller logits, possibly different
predictions); once the function is held fixed, the gain must vanish for any bound that is a
function of the network's behaviour, and the rows with "C5 compensates = yes" show whether
each method's bound is invariant to this reparametrisation. The "exponential gain in depth"
of eq. (5.13) is likewise a property of the composed bound, not evidence that deeper networks
are more robust (see `beyond_tightness.md` for measured depth/width trade-offs).
"""
    write_results(args, "figures_5_12_5_13", md,
                  {"fig_5_12": r12, "eq_5_13": r13, "saturation": sat, "check": check_rows,
                   "check_ratios": raw_check})


if __name__ == "__main__":
    main()
