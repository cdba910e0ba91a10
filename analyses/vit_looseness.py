"""Where ``crown`` is loose on a vision transformer: per node, the width of its interval
over the ball (box [0, 1]) against the first-order range :math:`2\\varepsilon\\|\\nabla
h_i(x_0)\\|` of each neuron (what an exact linearisation at the centre would give; 1 means
as tight as that), and for the margins the ``crown`` radius against the first-order radius
:math:`m(x_0)/\\|\\nabla m(x_0)\\|`.

    python -m analyses.vit_looseness --runs RUNS [--n 3] [--out docs/results/vit_looseness.md]

The ball's radius for each image is its ``crown`` radius (the largest ball the relaxation
certifies), so the table shows the relaxation where it gives out. Medians over the neurons
of a node, then over the images.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import torch

import boundkit as bk
from boundkit.bounds.crown.plan import plan_crown
from boundkit.bounds.crown.run import CrownRun
from boundkit.data import load_dataset
from boundkit.graph.ops import evaluate
from boundkit.models import load_model


def _values(graph: bk.graph.graph.Graph, x: torch.Tensor, name: str) -> torch.Tensor:
    """Node ``name`` of ``graph`` at input ``x`` [1, ...], flattened (float64)."""
    vals = {graph.input.name: x}
    for node in graph:
        if node.op == "input":
            continue
        vals[node.name] = evaluate(node, [vals[i] for i in node.inputs])
        if node.name == name:
            break
    return vals[name].flatten()


def looseness(model: torch.nn.Module, x0: torch.Tensor) -> tuple[float, float, dict[str, float]]:
    """For one image [1, ...]: its crown radius, the first-order radius of its margin, and
    per node (with an interval) the median of interval width / first-order range at the
    crown radius."""
    graph = bk.capture(model, x0)
    cert = bk.certify(model, x0, "crown", box=(0.0, 1.0), graph=graph)
    eps = float(cert.radius[0])
    run = CrownRun(graph, plan_crown(graph), x0, (0.0, 1.0))
    ctx = run.intervals(torch.tensor([eps], dtype=torch.float64))
    out: dict[str, float] = {}
    for node in graph:
        if node.op in ("input", "flatten", "reshape", "permute") or node.name not in ctx.intervals:
            continue
        jac = torch.autograd.functional.jacobian(
            lambda z, name=node.name: _values(graph, z, name), x0).reshape(-1, x0.numel())
        lin = 2 * eps * jac.norm(dim=1)
        iv = ctx.intervals[node.name]
        w = (iv.hi - iv.lo).flatten()
        keep = lin > 1e-12
        out[node.name] = float((w[keep] / lin[keep]).median()) if bool(keep.any()) else math.nan
    logits = _values(graph, x0, graph.logits.name)
    y = int(logits.argmax())
    jac = torch.autograd.functional.jacobian(
        lambda z: _values(graph, z, graph.logits.name), x0).reshape(logits.numel(), -1)
    m = logits[y] - logits
    g = (jac[y] - jac).norm(dim=1)
    m[y], g[y] = math.inf, 1.0
    first = float((m / g).min())
    return eps, first, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=Path, default=Path("runs"))
    ap.add_argument("--name", default="vit_cifar")
    ap.add_argument("--n", type=int, default=3, help="correctly classified test images")
    ap.add_argument("--data-root", default="../shared/data")
    ap.add_argument("--out", type=Path, default=Path("docs/results/vit_looseness.md"))
    a = ap.parse_args()
    torch.set_num_threads(1)
    meta = json.loads((a.runs / f"{a.name}.json").read_text())["meta"]
    model = load_model(a.runs / f"{a.name}.safetensors").double().eval()
    x, y = load_dataset(meta["dataset"], a.data_root, "test", download=False)
    x = x[:200].double()
    with torch.no_grad():
        right = torch.nonzero(model(x).argmax(1) == y[:200]).flatten()[: a.n]
    rows = [looseness(model, x[i:i + 1]) for i in right.tolist()]
    names = list(rows[0][2])
    lines = [
        f"# Where `crown` is loose on `{a.name}`", "",
        f"`python -m analyses.vit_looseness --runs RUNS --name {a.name} --n {a.n}` (first "
        f"{a.n} correctly classified test images {right.tolist()}, box [0, 1], torch "
        f"{torch.__version__}).", "",
        "Per image, at its own `crown` radius: `crown` radius "
        + ", ".join(f"{r[0]:.4g}" for r in rows)
        + "; first-order radius of the margin m(x0)/||grad m(x0)|| "
        + ", ".join(f"{r[1]:.4g}" for r in rows)
        + " (ratio "
        + ", ".join(f"{r[0] / r[1]:.3f}" for r in rows) + ").", "",
        "Per node: interval width over the ball / first-order range 2 eps ||grad h_i(x0)|| "
        "(median over neurons; then the median over images). Nodes whose bounds a backward "
        "walk refines (inputs of LayerNorm, softmax, products and GELU) stay within a few "
        "times the linearisation; the others are interval arithmetic.", "",
        "| node | op | width / first-order range |", "|---|---|---|",
    ]
    graph = bk.capture(model, x[:1])
    for name in names:
        lines.append(f"| {name} | {graph[name].op} | "
                     f"{float(np.median([r[2][name] for r in rows])):.2f} |")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
