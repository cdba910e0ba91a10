"""Figures of a results document (matplotlib, Agg backend; PNG files).

* :func:`plot_scatter` -- certified radius against the attack's norm per sample, log-log,
  with the line ``y = x`` (a sound certificate lies on or below it).
* :func:`plot_cdf` -- cumulative distribution of the radii of every method, the attack
  norms and (if computed) the exact radii.
* :func:`plot_waterfall` -- for one sample, the bound at every layer of the network: where
  the certificate loses its radius.
* :func:`plot_comparison` -- several models side by side: accuracy, certified and
  empirical robustness.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from boundkit.report.io import read_json  # noqa: E402

__all__ = ["plot_comparison", "plot_cdf", "plot_scatter", "plot_waterfall", "pick_sample"]

PathLike = str | Path
COLORS = {"sound": "#1f77b4", "peck2017": "#ff7f0e", "exact": "#2ca02c", "attack": "#d62728",
          "sound-local": "#17becf", "crown": "#9467bd", "alpha": "#8c564b"}


def method_label(name: str) -> str:
    """A legend label for a method, from the method registry (whether it is a guarantee)."""
    from boundkit.bounds.method import is_guarantee, method_names

    if name not in method_names():
        return name
    kind = "guarantee" if is_guarantee(name) else "not a guarantee"
    what = "Peck 2017 formula" if name == "peck2017" else f"certified, {name}"
    return f"{what} ({kind})"


def _arr(v: Any) -> np.ndarray:
    return np.asarray([math.nan if a is None else a for a in v], dtype=float)


def _save(fig: Any, path: PathLike) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(p, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return p


def _positive(a: np.ndarray) -> np.ndarray:
    return a[np.isfinite(a) & (a > 0)]


def plot_scatter(results: Any, path: PathLike) -> Path:
    """Certified radius (y) against the attack norm (x) per sample, both log scale, with
    ``y = x``. Points above the line are violations (circled in red)."""
    doc = read_json(results)
    s = doc["samples"]
    attacks = s.get("attack_norm", {})
    if not attacks or not s.get("radius"):
        raise ValueError("the scatter plot needs certified radii and attack norms")
    attack, norms = next(iter(attacks.items()))
    xn = _arr(norms)
    viol = {(v["method"], int(v["index"])) for v in doc.get("violations", [])}
    index = [int(i) for i in s["index"]]
    fig, ax = plt.subplots(figsize=(6.2, 5.4))
    allv = [_positive(xn)]
    for m, r in s["radius"].items():
        y = _arr(r)
        ok = np.isfinite(xn) & (xn > 0) & np.isfinite(y) & (y > 0)
        allv.append(_positive(y))
        ax.scatter(xn[ok], y[ok], s=16, alpha=0.65, color=COLORS.get(m), label=method_label(m),
                   edgecolors="none")
        bad = np.array([(m, i) in viol for i in index]) & ok
        if bad.any():
            ax.scatter(xn[bad], y[bad], s=90, facecolors="none", edgecolors="red", linewidths=1.5,
                       label=f"violation ({m})")
    vals = np.concatenate(allv)
    if vals.size == 0:
        lo, hi = 1e-3, 1.0
    else:
        lo, hi = vals.min() / 2, vals.max() * 2
    line = np.array([lo, hi])
    ax.plot(line, line, "k--", lw=1, label="y = x (radius = attack norm)")
    ax.fill_between(line, line, [hi * 10, hi * 10], color="red", alpha=0.06,
                    label="radius > attack norm: impossible if sound")
    for f in (0.1, 0.01):
        ax.plot(line, f * line, ":", color="grey", lw=0.8)
        ax.text(hi / 1.15, f * hi / 1.15, f"y = {f:g}x", color="grey", fontsize=7,
                ha="right", va="top")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(lo, hi)
    ax.set_ylim(min(lo, vals.min() / 2 if vals.size else lo), hi)
    ax.set_xlabel(f"empirical radius: L2 norm of the smallest adversarial found ({attack})")
    ax.set_ylabel("certified radius (L2)")
    ax.set_title("Certified vs empirical robustness, per sample\n"
                 "true distance to the boundary lies between the two")
    ax.grid(True, which="both", alpha=0.25)
    # below the axes: inside, it would hide either samples (lower right) or violations
    ax.legend(fontsize=7.5, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2,
              frameon=False)
    return _save(fig, path)


def plot_cdf(results: Any, path: PathLike) -> Path:
    """Empirical CDFs of the radii per method, the attack norms and the exact radii."""
    doc = read_json(results)
    s = doc["samples"]
    series: list[tuple[str, np.ndarray, str, str]] = []
    for m, r in s.get("radius", {}).items():
        series.append((method_label(m), _arr(r), COLORS.get(m, "C4"), "-"))
    if s.get("exact") is not None:
        series.append(("exact radius", _arr(s["exact"]), COLORS["exact"], "-"))
    for a, r in s.get("attack_norm", {}).items():
        series.append((f"attack norm ({a})", _arr(r), COLORS["attack"], "--"))
    if not series:
        raise ValueError("nothing to plot: no radii or attack norms in the results")
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    n = len(s["index"])
    for label, v, color, ls in series:
        v = np.sort(v[np.isfinite(v) & (v > 0)])
        if v.size == 0:
            continue
        frac = np.arange(1, v.size + 1) / max(n, 1)
        ax.step(np.r_[v[0], v], np.r_[0.0, frac], where="post", color=color, ls=ls,
                label=f"{label} (median {np.median(v):.3g})")
    ax.set_xscale("log")
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("L2 radius (log scale)")
    ax.set_ylabel("fraction of samples with radius <= r")
    ax.set_title("Distribution of radii: certified (lower bounds) vs attacks (upper bounds)")
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(fontsize=8, loc="upper left")
    return _save(fig, path)


def pick_sample(doc: dict[str, Any], method: str = "sound") -> int:
    """The position of a representative sample: the first violation of a sound method if
    any, else the sample with the median certified radius."""
    s = doc["samples"]
    index = [int(i) for i in s["index"]]
    for v in doc.get("violations", []):
        if v.get("bug"):
            return index.index(int(v["index"]))
    r = _arr(s["radius"].get(method) or next(iter(s["radius"].values())))
    order = np.argsort(np.where(np.isfinite(r), r, np.inf))
    return int(order[len(order) // 2])


def plot_waterfall(
    results: Any, path: PathLike, *, sample: int | None = None, methods: list[str] | None = None
) -> Path:
    """For one sample (position in the results; default :func:`pick_sample`), the bound at
    every layer, from the margin stage (right) back to the input (left; the certified
    radius). Each drop is labelled with the factor the layer costs."""
    doc = read_json(results)
    traces = doc.get("traces") or {}
    if not traces:
        raise ValueError("the results hold no traces (run certify with trace=True)")
    methods = [m for m in (methods or list(traces)) if m in traces]
    k = pick_sample(doc) if sample is None else int(sample)
    s = doc["samples"]
    fig, axes = plt.subplots(1, len(methods), figsize=(max(6.0, 5.2 * len(methods)), 4.6),
                             squeeze=False)
    attack_norms = s.get("attack_norm", {})
    for ax, m in zip(axes[0], methods):
        tr = traces[m]
        names, ops = tr["nodes"], tr["ops"]
        vals = np.array([_arr(v)[k] for v in tr["values"]])
        pos = np.arange(len(names))
        ok = np.isfinite(vals) & (vals > 0)
        ax.bar(pos[ok], vals[ok], color=COLORS.get(m, "C4"), alpha=0.8, width=0.7)
        for i in range(1, len(vals)):
            if ok[i] and ok[i - 1] and vals[i] > 0:
                f = vals[i - 1] / vals[i]
                if f < 0.999:
                    ax.annotate(f"x{f:.2g}", (i - 0.5, math.sqrt(vals[i] * vals[i - 1])),
                                ha="center", fontsize=7, color="darkred")
        for a, nv in attack_norms.items():
            v = _arr(nv)[k]
            if np.isfinite(v) and v > 0:
                ax.axhline(v, color=COLORS["attack"], ls="--", lw=1,
                           label=f"attack norm at the input ({a}): {v:.3g}")
        ax.set_yscale("log")
        fmt = matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:.3g}")
        ax.yaxis.set_major_formatter(fmt)
        span = vals[ok].max() / vals[ok].min() if ok.any() else 100.0
        ax.yaxis.set_minor_formatter(fmt if span < 30 else matplotlib.ticker.NullFormatter())
        ax.set_xticks(pos)
        ax.set_xticklabels([f"{n}\n({o})" if o else n for n, o in zip(names, ops)],
                           rotation=45, ha="right", fontsize=7)
        ax.set_ylabel("bound on the perturbation of the layer's output (L2)")
        ax.set_xlabel("layer (input on the left; labels: factor lost across the layer)")
        idx = s["index"][k]
        r0 = vals[0] if vals.size else math.nan
        ax.set_title(f"{method_label(m)}\nsample {idx}: certified radius {r0:.3g}", fontsize=9)
        ax.grid(True, axis="y", which="both", alpha=0.25)
        if attack_norms:
            ax.legend(fontsize=7, loc="upper left")
    fig.suptitle("Where the bound is lost, layer by layer", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def plot_comparison(results: Any, path: PathLike) -> Path:
    """Bar chart of several models (a ``compare`` document or a list of model rows):
    median certified radius per method and median attack norm (log scale), and accuracy."""
    if isinstance(results, list):
        models = results
    else:
        models = read_json(results)["models"]
    if not models:
        raise ValueError("no models to compare")
    names = [m["name"] for m in models]
    methods: list[str] = []
    for m in models:
        methods += [k for k in m.get("median_radius", {}) if k not in methods]
    series = [(method_label(k), [m.get("median_radius", {}).get(k, math.nan) for m in models],
               COLORS.get(k, "C4")) for k in methods]
    series.append(("median attack norm (upper bound)",
                   [m.get("median_attack_norm", math.nan) for m in models], COLORS["attack"]))
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(max(7.5, 1.6 * len(names) + 5), 4.4),
                                  gridspec_kw={"width_ratios": [3, 1.2]})
    width = 0.8 / len(series)
    x = np.arange(len(names))
    for j, (label, vals, color) in enumerate(series):
        v = np.array([math.nan if a is None else a for a in vals], dtype=float)
        ax.bar(x + (j - (len(series) - 1) / 2) * width, np.where(v > 0, v, np.nan), width,
               label=label, color=color, alpha=0.85)
    ax.set_yscale("log")
    ax.set_xticks(x)
    ax.set_xticklabels(names, rotation=20, ha="right")
    ax.set_ylabel("median L2 radius (log scale)")
    ax.set_title("Robustness per model (ranked by certified radius)")
    ax.grid(True, axis="y", which="both", alpha=0.25)
    ax.legend(fontsize=7.5, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2,
              frameon=False)
    acc = [m.get("accuracy", math.nan) for m in models]
    acc = [math.nan if a is None else a for a in acc]
    ax2.bar(x, acc, color="grey", alpha=0.8)
    for xi, a in zip(x, acc):
        if np.isfinite(a):
            ax2.text(xi, a, f"{a:.1%}", ha="center", va="bottom", fontsize=8)
    ax2.set_ylim(0, 1.1)
    ax2.set_xticks(x)
    ax2.set_xticklabels(names, rotation=20, ha="right")
    ax2.set_ylabel("test accuracy")
    ax2.set_title("Accuracy")
    fig.tight_layout()
    return _save(fig, path)
