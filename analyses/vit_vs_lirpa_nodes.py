"""Per node, boundkit ``crown``'s intermediate intervals against auto_LiRPA 0.3's CROWN ones,
on the same image, at the same radius (auto_LiRPA's certified L2 radius, no input box).

    python -m analyses.vit_vs_lirpa_nodes --cache /tmp/vit-runs --data /work/shared/data \
        [--model vit_cifar:gelu_tanh] [--n 1] [--out docs/results/vit_vs_lirpa_nodes.md]

auto_LiRPA bounds the model rewritten as in ``benchmarks/crown_vs_lirpa.py`` (positions
``[T, D]``, ``conv_mode`` matrix, softmax as ``exp / sum``); after ``compute_bounds`` each of
its nodes holds ``.lower`` / ``.upper``. boundkit's intervals are those of
``CrownRun(...).intervals(eps)`` (the ones its relaxations use). Nodes are matched by their
values at the image (the sorted entries agree to 1e-4 relative: a node may be a transpose or
reshape of the other's), and compared by the median (over entries) interval width; inside a
LayerNorm, boundkit has no node for the centred input ``d = x - mean(x)``: its box is the one
``layernorm_planes`` derives from the input's interval by interval arithmetic, shown beside
auto_LiRPA's ``sub`` node. The band of boundkit's LayerNorm and softmax planes (the
constant gap between their parallel lower and upper planes) is shown against the width of the
node's interval.
"""

from __future__ import annotations

import argparse
import copy
import math
from pathlib import Path

import numpy as np
import torch

import boundkit as bk
from benchmarks.crown_vs_lirpa import _lirpa, _lirpa_one, dataset_of, lirpa_form, load
from boundkit.bounds.crown.plan import plan_crown
from boundkit.bounds.crown.run import CrownRun
from boundkit.bounds.layernorm import LayerNormRelaxation, layernorm_taylor, reads_centred
from boundkit.bounds.softmax import SoftmaxRelaxation
from boundkit.data import load_dataset
from boundkit.graph.ops import evaluate


def _median_width(lo: torch.Tensor, hi: torch.Tensor) -> float:
    return float((hi.double() - lo.double()).flatten().median())


def _centred_box(lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The box of ``d = x - mean(x)`` (last axis) from the box of ``x``, as
    :func:`boundkit.bounds.layernorm.layernorm_planes` derives it (without the rounding)."""
    n = lo.shape[-1]
    s_lo, s_hi = lo.sum(-1, keepdim=True), hi.sum(-1, keepdim=True)
    return (1 - 1 / n) * lo - (s_hi - hi) / n, (1 - 1 / n) * hi - (s_lo - lo) / n


def compare(model: torch.nn.Module, x: torch.Tensor, label: torch.Tensor,
            guess: float, upper: float, eps: float | None = None
            ) -> tuple[float, list[list[str]], list[list[str]]]:
    """auto_LiRPA's radius of one image (``eps`` if given), the per-node table (boundkit
    node, op, matched auto_LiRPA node, widths, ratio) and the LayerNorm / softmax internals
    table."""
    al = _lirpa()
    from auto_LiRPA.perturbations import PerturbationLpNorm

    form, _ = lirpa_form(model, x, label)
    if eps is None:
        eps = float(_lirpa_one(al, form, x, label, torch.tensor([upper]), 15, "CROWN", 0.0,
                               guess)[0])
    print(f"auto_LiRPA CROWN radius {eps:.6g}", flush=True)
    bm = form.bounded(al, torch.zeros_like(x))
    c = int(model(x).shape[1])
    others = torch.cat([torch.arange(0, int(label)), torch.arange(int(label) + 1, c)])
    eye = torch.eye(c)
    spec = (eye[label] - eye[others]).unsqueeze(0)
    xb = al.BoundedTensor(x, PerturbationLpNorm(norm=2, eps=eps))
    bm.compute_bounds(x=(xb,), C=spec, method="CROWN")
    bounds = {}
    for node in bm._modules.values():
        lo, hi = getattr(node, "lower", None), getattr(node, "upper", None)
        if isinstance(lo, torch.Tensor) and isinstance(hi, torch.Tensor) and lo.numel() > 1 \
                and float((hi - lo).abs().max()) > 0:  # bounded and not a constant
            bounds[node.name] = (lo.detach().clone(), hi.detach().clone())
    with torch.no_grad():  # the values at the image (compute_bounds leaves none behind)
        bm(x)
    lnodes = []
    for node in bm._modules.values():
        fv = getattr(node, "forward_value", None)
        if node.name in bounds and isinstance(fv, torch.Tensor):
            lnodes.append((node, torch.sort(fv.detach().double().flatten()).values))

    md = copy.deepcopy(model).double()
    x64 = x.double()
    graph = bk.capture(md, x64)
    run = CrownRun(graph, plan_crown(graph), x64, None)
    ctx = run.intervals(torch.tensor([eps], dtype=torch.float64))
    acts = {graph.input.name: x64}
    for node in graph:
        if node.op != "input":
            acts[node.name] = evaluate(node, [acts[i] for i in node.inputs])

    def match(v: torch.Tensor) -> object | None:
        s = torch.sort(v.flatten()).values
        for node, ls in lnodes:
            if ls.numel() == s.numel() and bool(torch.allclose(
                    ls, s, rtol=1e-4, atol=1e-4 * (1 + float(s.abs().max())))):
                return node
        return None

    rows: list[list[str]] = []
    for node in graph:
        if node.op == "input" or node.name not in ctx.intervals:
            continue
        iv = ctx.intervals[node.name]
        wb = _median_width(iv.lo, iv.hi)
        ln = match(acts[node.name])
        if ln is None:
            rows.append([node.name, node.op, "-", f"{wb:.4g}", "-", "-"])
            continue
        wl = _median_width(*bounds[ln.name])
        rows.append([node.name, node.op, f"{ln.name} ({type(ln).__name__})", f"{wb:.4g}",
                     f"{wl:.4g}", f"{wb / wl:.2f}" if wl > 0 else "inf"])

    inner: list[list[str]] = []
    for node in graph:
        if node.op not in ("layernorm", "softmax"):
            continue
        xin = ctx.intervals[node.inputs[0]]
        out = ctx.intervals[node.name]
        if node.op == "layernorm":
            n = math.prod(node.attrs["normalized_shape"])
            centred = reads_centred(node, graph)
            x0 = acts[node.inputs[0]].reshape(1, -1, n)
            if centred:  # d is the center node's output, bounded by a backward walk
                d_lo, d_hi = xin.lo, xin.hi
            else:  # d's box from the input's by interval arithmetic
                d_lo, d_hi = _centred_box(xin.lo.reshape(1, -1, n), xin.hi.reshape(1, -1, n))
                x0 = x0 - x0.mean(-1, keepdim=True)
            ln = match(x0)
            wl = _median_width(*bounds[ln.name]) if ln is not None else math.nan
            wd = _median_width(d_lo, d_hi)
            inner.append([node.name, "centred input d = x - mean(x)"
                          + (" (its `center` node)" if centred else " (interval arithmetic)"),
                          f"{wd:.4g}", f"{wl:.4g}", f"{wd / wl:.2f}"])
            lines = LayerNormRelaxation().lines(node, xin, centred)
            w = node.params["weight"].reshape(-1).abs()
            t = layernorm_taylor(xin.lo.reshape(1, -1, n), xin.hi.reshape(1, -1, n),
                                 float(node.attrs["eps"]), centred)
            inner.append([node.name, "remainder per output, entrywise Hessian bound "
                          "(|gamma| rem, median)", f"{float((w * t.rem).median()):.4g}", "-",
                          "-"])
            split = t.anchor.abs() * torch.maximum(-t.e_lo, t.e_hi) + t.half * t.drho
            inner.append([node.name, "remainder per output, split bound |gamma| (|c| max|e| "
                          "+ r D) (median)", f"{float((w * split).median()):.4g}", "-", "-"])
            inner.append([node.name, "outputs on the constant bounds (flat)",
                          f"{float((lines.k.abs().sum(-1) == 0).double().mean()):.2%}", "-",
                          "-"])
        else:
            _, b_lo, _, b_hi = SoftmaxRelaxation().lines(node, ctx, xin)
            inner.append([node.name, "band of the planes (b_hi - b_lo), median",
                          f"{_median_width(b_lo, b_hi):.4g}",
                          f"output width {_median_width(out.lo, out.hi):.4g}", "-"])
    return eps, rows, inner


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="vit_cifar:gelu_tanh")
    ap.add_argument("--n", type=int, default=1, help="correctly classified test images")
    ap.add_argument("--cache", type=Path, default=Path("/tmp/vit-runs"))
    ap.add_argument("--data", type=Path, default=Path("../shared/data"))
    ap.add_argument("--eps", type=float, nargs="*", default=None,
                    help="auto_LiRPA's radius per image, if known (skips its bisection)")
    ap.add_argument("--out", type=Path, default=Path("docs/results/vit_vs_lirpa_nodes.md"))
    a = ap.parse_args()
    torch.set_num_threads(1)
    model = load(a.model, a.data, a.cache).float().eval()
    xs, ys = load_dataset(dataset_of(a.model), a.data, "test")
    with torch.no_grad():
        right = torch.nonzero(model(xs[:200].float()).argmax(1) == ys[:200]).flatten()[:a.n]
    lines = [f"# `crown` against auto_LiRPA 0.3 CROWN, node by node, on `{a.model}`", "",
             f"`python -m analyses.vit_vs_lirpa_nodes --model {a.model} --n {a.n}"
             + (f" --eps {' '.join(map(str, a.eps))}" if a.eps else "") + "` (torch "
             f"{torch.__version__}; first {a.n} correctly classified test image(s) "
             f"{right.tolist()}; no input box; radius: auto_LiRPA's certified CROWN radius of "
             "the image, bisected to 0.5%, or `--eps`).", "",
             "Widths are medians over a node's entries; ratio = boundkit / auto_LiRPA (above 1: "
             "boundkit wider). Nodes matched by their values at the image (sorted entries): "
             "a linear layer whose output boundkit only reshapes and transposes before a "
             "product shows the interval-arithmetic width there, and its refined width at "
             "the transpose the product reads. boundkit's intervals are those its "
             "relaxations use (a node no nonlinear node reads is not refined).", ""]
    for j, i in enumerate(right.tolist()):
        x, y = xs[i:i + 1].float(), ys[i:i + 1]
        md = copy.deepcopy(model).double()
        crown = float(bk.certify(md, x.double(), "crown", box=None).radius[0])
        upper = float(bk.attack(model, x, "deepfool").norm[0])
        eps, rows, inner = compare(model, x, y, crown, upper * 1.001,
                                   a.eps[j] if a.eps else None)
        lines += [f"## Image {i}", "",
                  f"auto_LiRPA CROWN radius {eps:.5g}; boundkit `crown` (no box) {crown:.5g} "
                  f"({crown / eps:.3f}x).", "",
                  "| boundkit node | op | auto_LiRPA node | boundkit width | auto_LiRPA width "
                  "| ratio |", "|---|---|---|---|---|---|"]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        lines += ["", "Inside LayerNorm and softmax:", "",
                  "| node | quantity | boundkit | auto_LiRPA | ratio |", "|---|---|---|---|---|"]
        lines += ["| " + " | ".join(r) + " |" for r in inner]
        lines.append("")
        widths = [float(r[5]) for r in rows if r[5] not in ("-", "inf")]
        print(f"image {i}: eps {eps:.5g}, crown {crown:.5g}; median ratio "
              f"{np.median(widths) if widths else math.nan:.2f}")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
