"""What limits ``bab`` on the small MNIST CNN: two measurements behind
``docs/results/bab_small_cnn.md`` (same process, one thread, CPU seconds).

1. ``--depth D``: per split depth, on each sample's worst competing class at ``--scale`` x
   its ``crown`` radius (the branching of ``bab`` followed, every open domain split), the
   unstable ReLUs per layer and the margin's lower bound, with the root's intermediate
   bounds (``bab``'s default) and with them recomputed under the domain's splits
   (``refresh=1``), and the CPU milliseconds per domain of each.
2. ``--trace B``: ``bab`` at B seconds per sample (upper end: the ``best`` attack's norm),
   its anytime trace per sample: when (CPU seconds) each radius, as a multiple of the
   ``crown`` radius, was proven.
3. ``--reach S [S ...]``: ``bk.verify`` at S x each sample's ``crown`` radius with the
   whole per-sample budget (``--budget``) in one step: the largest radius a perfect radius
   search could prove at that budget.
4. ``--root``: the single-neuron relaxation at the root, per sample: ``alpha`` (optimised
   lower slopes) / ``crown``, and ``crown`` on the same function with each ReLU moved after
   the max pooling that reads it (``maxpool(relu(h)) = relu(maxpool(h))``: one relaxation
   per window instead of one per input) / ``crown``, with their CPU seconds. With
   ``--all-slopes``, one more row: ``alpha`` with the slopes of *every* intermediate walk
   optimised (``boundkit.bounds.alpha.INTERMEDIATE_SLOPES`` raised from its default, which
   leaves out the walks of conv2's 1,024 neurons back to relu1's 4,608: 9.4M slopes per
   sample).

    OMP_NUM_THREADS=1 python -m benchmarks.bab_levers --n 3 --scale 1.2 --depth 7 \\
        --data-root ../shared/data --cache /tmp/attk/models
    OMP_NUM_THREADS=1 python -m benchmarks.bab_levers --n 4 --reach 1.15 1.2 --budget 9 ...
    OMP_NUM_THREADS=1 python -m benchmarks.bab_levers --n 10 --root ...
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import torch

import boundkit as bk
import boundkit.bounds.alpha as alpha_method
import boundkit.bounds.bab.options as bab_clock
from benchmarks._models import DEFAULT_DATA, REPO, trained
from benchmarks.bab import first_correct
from boundkit.bounds.bab.bounding import Bounded, bab_plan
from boundkit.bounds.bab.domains import Domains
from boundkit.bounds.bab.options import NEVER, BabOptions
from boundkit.bounds.bab.search import BranchAndBound
from boundkit.bounds.crown import CrownRun
from boundkit.bounds.engine import graph_for
from boundkit.bounds.output import margins


def _unstable(b: Bounded, dom: Domains, relus: list) -> list[float]:
    """Mean over the domains of the unstable, unsplit neurons per ReLU layer."""
    out = []
    for r in relus:
        lo, hi = b.lo[r.inputs[0]].flatten(1), b.hi[r.inputs[0]].flatten(1)
        u = (lo < 0) & (hi > 0)
        s = dom.signs.get(r.name)
        if s is not None:
            u &= s.flatten(1) == 0
        out.append(float(u.sum(1).double().mean()))
    return out


def depth_table(model: torch.nn.Module, x: torch.Tensor, scale: float, depth: int) -> None:
    box = (0.0, 1.0)
    r = bk.certify(model, x, "crown", box=box).radius.double()
    eps = scale * r
    graph = graph_for(model, x, None)
    plan = bab_plan(graph)
    run = CrownRun(graph, plan.crown, x.double(), box)
    label, _ = margins(run.sound.acts[graph.logits.name])
    root_iv = BranchAndBound(graph, plan, run, label, eps, BabOptions(refresh=NEVER))
    fresh = BranchAndBound(graph, plan, run, label, eps, BabOptions(refresh=1))
    n, c = x.shape[0], graph.num_classes
    idx = torch.arange(n)
    cls = torch.arange(c).repeat(n)
    other = cls != label.repeat_interleave(c)
    root = Domains(idx.repeat_interleave(c)[other], {},
                   torch.zeros(int(other.sum()), 1, dtype=torch.bool), cls=cls[other])
    root = root_iv.with_root_intervals(root, idx)
    low = root_iv.bound(root).lower[:, 0]
    worst = [int(torch.nonzero(root.sample == s).flatten()[low[root.sample == s].argmin()])
             for s in range(n)]
    dom = root.rows(torch.tensor(worst))
    names = [q.name for q in plan.relus]
    print(f"| depth | domains | unstable {' / '.join(names)} (root / fresh) | median bound "
          "root / fresh | proven | ms per domain root / fresh |\n|---|---|---|---|---|---|")
    for d in range(depth + 1):
        t0 = time.process_time()
        a = root_iv.bound(dom)
        ta = time.process_time() - t0
        t0 = time.process_time()
        f = fresh.bound(dataclasses.replace(dom, age=torch.ones_like(dom.sample)))
        tf = time.process_time() - t0
        ua, uf = _unstable(a, dom, plan.relus), _unstable(f, dom, plan.relus)
        print(f"| {d} | {len(dom)} | {' / '.join(f'{v:.1f}' for v in ua)} ; "
              f"{' / '.join(f'{v:.1f}' for v in uf)} | {a.lower[:, 0].median():.3f} / "
              f"{f.lower[:, 0].median():.3f} | {int(a.proven.sum())} / {int(f.proven.sum())} "
              f"| {1e3 * ta / len(dom):.1f} / {1e3 * tf / len(dom):.1f} |", flush=True)
        op = torch.nonzero(~a.proven).flatten()
        if not op.numel():
            break
        sub = dataclasses.replace(
            a, scores={k: v[op] for k, v in a.scores.items()},
            alpha={k: v[op] for k, v in a.alpha.items()},
            beta={k: v[op] for k, v in a.beta.items()}, done=a.done[op],
            lo={k: v[op] for k, v in a.lo.items()}, hi={k: v[op] for k, v in a.hi.items()},
            radius=None if a.radius is None else a.radius[op])
        dom, _ = root_iv.branch(dom.rows(op), sub)
        dom = dataclasses.replace(dom, age=torch.zeros_like(dom.sample))
        if len(dom) > 256:  # an even thinning keeps the table's cost bounded
            dom = dom.rows(torch.arange(0, len(dom), len(dom) // 128))


def reach_table(model: torch.nn.Module, x: torch.Tensor, scales: list[float],
                budget: float) -> None:
    crown = bk.certify(model, x, "crown").radius.double()
    print("| x crown radius | status per sample | subproblems | CPU s |\n|---|---|---|---|")
    for s in scales:
        res = bk.verify(model, x, s * crown, time_budget=budget, max_domains=10 ** 7)
        print(f"| {s:g} | {', '.join(res.status)} | {res.domains.tolist()} | "
              f"{[round(v, 2) for v in res.seconds.tolist()]} |", flush=True)


def trace_table(model: torch.nn.Module, x: torch.Tensor, budget: float) -> None:
    from boundkit.bounds.bab import RadiusTrace

    crown = bk.certify(model, x, "crown").radius.double()
    torch.manual_seed(0)
    adv = bk.attack(model, x, "best")
    upper = torch.where(adv.success, adv.norm.double(), torch.inf)
    cert = bk.certify(model, x, "bab", upper=upper, time_budget=budget)
    tr = RadiusTrace.from_info(cert.info)
    print("| sample | (CPU s, radius / crown) where the radius grew | final / attack |\n"
          "|---|---|---|")
    for i in range(x.shape[0]):
        ok = ~torch.isnan(tr.seconds[i])
        pts = [f"({s:.2f}, {r / float(crown[i]):.3f})"
               for s, r in zip(tr.seconds[i][ok].tolist(), tr.radius[i][ok].tolist())]
        print(f"| {i} | {' '.join(pts)} | {float(cert.radius[i] / upper[i]):.4f} |", flush=True)


def pool_first(model: torch.nn.Module) -> torch.nn.Sequential:
    """The same function with every ``ReLU`` directly followed by a ``MaxPool2d`` swapped
    with it (the maximum is monotone: ``maxpool(relu(h)) = relu(maxpool(h))``), sharing the
    modules; ``model`` must be an ``nn.Sequential``."""
    if not isinstance(model, torch.nn.Sequential):
        raise SystemExit("--root: the pool-first variant needs an nn.Sequential model")
    mods = list(model)
    i = 0
    while i < len(mods) - 1:
        if isinstance(mods[i], torch.nn.ReLU) and isinstance(mods[i + 1], torch.nn.MaxPool2d):
            mods[i], mods[i + 1] = mods[i + 1], mods[i]
            i += 1
        i += 1
    return torch.nn.Sequential(*mods).eval()


def root_table(model: torch.nn.Module, x: torch.Tensor, all_slopes: bool = False) -> None:
    swapped = pool_first(model)
    with torch.no_grad():
        assert torch.equal(swapped(x), model(x)), "the pool-first variant computes another function"
    runs = [("crown", model, "crown"), ("alpha", model, "alpha"),
            ("crown, ReLU after max pooling", swapped, "crown")]
    if all_slopes:
        runs.append(("alpha, every intermediate walk's slopes optimised", model, "alpha*"))
    rows = []
    for label, m, method in runs:
        cap = alpha_method.INTERMEDIATE_SLOPES
        if method == "alpha*":
            method, alpha_method.INTERMEDIATE_SLOPES = "alpha", 1 << 40
        t0 = time.process_time()
        try:
            r = bk.certify(m, x, method).radius.double()
        finally:
            alpha_method.INTERMEDIATE_SLOPES = cap
        rows.append((label, r, (time.process_time() - t0) / x.shape[0]))
    base = rows[0][1]
    print("| bound | / crown per sample | median | CPU s per sample |\n|---|---|---|---|")
    for label, r, sec in rows:
        q = r / base
        print(f"| {label} | {[round(v, 4) for v in q.tolist()]} | {float(q.median()):.4f} | "
              f"{sec:.2f} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=3)
    ap.add_argument("--model", default="small_cnn")
    ap.add_argument("--scale", type=float, default=1.2)
    ap.add_argument("--depth", type=int, default=None)
    ap.add_argument("--trace", type=float, default=None)
    ap.add_argument("--reach", type=float, nargs="*", default=None)
    ap.add_argument("--budget", type=float, default=9.0)
    ap.add_argument("--root", action="store_true",
                    help="alpha and the pool-first variant against crown at the root")
    ap.add_argument("--all-slopes", action="store_true",
                    help="with --root: also alpha with every intermediate walk optimised")
    ap.add_argument("--data-root", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--cache", type=Path, default=REPO / "runs" / "models")
    args = ap.parse_args()
    torch.set_num_threads(1)
    bab_clock.CLOCK = time.process_time
    model = trained(args.model, args.data_root, args.cache)
    x = first_correct(model, args.data_root, args.n)
    if args.depth is not None:
        depth_table(model, x, args.scale, args.depth)
    if args.trace is not None:
        trace_table(model, x, args.trace)
    if args.reach:
        reach_table(model, x, args.reach, args.budget)
    if args.root:
        root_table(model, x, args.all_slopes)


if __name__ == "__main__":
    main()
