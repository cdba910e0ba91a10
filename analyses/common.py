"""Shared helpers of the ``analyses/`` scripts.

Seeding, data-root resolution, deviation statistics, the Markdown/JSON writers, figure
saving, and :class:`StackedNet`, which evaluates many small random classifiers as one batched
module so that an attack runs once over all of them instead of once per classifier.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]

DEFAULT_OUT = ROOT / "docs" / "results"

#: relative tolerance of the violation test ``attack < bound``: the attack norm is measured
#: in float64 on a float32 model; differences below this are rounding, not violations.
VIOLATION_RTOL = 1e-6


# --------------------------------------------------------------------------- setup
def default_data_root() -> Path:
    env = os.environ.get("BOUNDKIT_DATA")
    if env:
        return Path(env)
    return (Path(__file__).resolve().parents[1] / ".." / "shared" / "data").resolve()


def base_parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--data-root", type=Path, default=None,
                   help="data folder (default $BOUNDKIT_DATA or ../shared/data)")
    p.add_argument("--quick", action="store_true", help="fast smoke run (tiny sample counts)")
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    return p


def setup(args: argparse.Namespace) -> None:
    if args.data_root is None:
        args.data_root = default_data_root()
    seed_everything(args.seed)
    torch.set_num_threads(max(1, args.threads))
    args.out.mkdir(parents=True, exist_ok=True)
    args.t0 = time.perf_counter()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002 - seeds legacy global users too
    torch.manual_seed(seed)


def command_line() -> str:
    """The command that ran this script, with the script's path relative to the repo."""
    script = Path(sys.argv[0]).resolve()
    try:
        script = script.relative_to(ROOT)
    except ValueError:
        pass
    return "python " + " ".join([script.as_posix()] + sys.argv[1:])


# --------------------------------------------------------------------------- stats
def stats(v: Any) -> dict[str, float]:
    """mean / median / std / min / max / n of the finite entries of ``v``."""
    a = np.asarray(torch.as_tensor(v).detach().cpu().double().numpy()).ravel()
    a = a[np.isfinite(a)]
    if a.size == 0:
        return {"n": 0, "mean": math.nan, "median": math.nan, "std": math.nan,
                "min": math.nan, "max": math.nan}
    return {"n": int(a.size), "mean": float(a.mean()), "median": float(np.median(a)),
            "std": float(a.std(ddof=1)) if a.size > 1 else 0.0,
            "min": float(a.min()), "max": float(a.max())}


def violations(attack_norm: torch.Tensor, bound: torch.Tensor) -> int:
    """Samples where a verified adversarial example is *smaller* than the claimed bound."""
    a = attack_norm.double().cpu()
    b = bound.double().cpu()
    ok = torch.isfinite(a)
    return int((ok & (a < b * (1 - VIOLATION_RTOL))).sum())


def fmt(x: Any, digits: int = 4) -> str:
    if isinstance(x, str):
        return x
    if x is None:
        return "-"
    if isinstance(x, (int, np.integer)) and not isinstance(x, bool):
        return str(int(x))
    x = float(x)
    if math.isnan(x):
        return "-"
    if math.isinf(x):
        return "inf"
    if x != 0 and (abs(x) < 1e-3 or abs(x) >= 1e5):
        return f"{x:.{digits - 1}e}"
    return f"{x:.{digits}g}"


def md_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for r in rows:
        lines.append("| " + " | ".join(fmt(c) for c in r) + " |")
    return "\n".join(lines)


def _jsonable(o: Any) -> Any:
    if isinstance(o, dict):
        return {str(k): _jsonable(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_jsonable(v) for v in o]
    if isinstance(o, torch.Tensor):
        return _jsonable(o.detach().cpu().tolist())
    if isinstance(o, np.ndarray):
        return _jsonable(o.tolist())
    if isinstance(o, (np.floating, float)):
        f = float(o)
        return f if math.isfinite(f) else str(f)
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, Path):
        return str(o)
    return o


def write_results(args: argparse.Namespace, name: str, markdown: str, raw: dict) -> None:
    """Print ``markdown`` and write ``<out>/<name>.md`` and ``<out>/<name>.json``."""
    secs = time.perf_counter() - args.t0
    footer = (f"\n\n_Produced by `{command_line()}` (seed {args.seed}, "
              f"{'quick smoke run, ' if args.quick else ''}{secs:.0f} s wall on "
              f"{torch.get_num_threads()} torch threads, torch {torch.__version__})._\n")
    text = markdown.rstrip() + footer
    print(text)
    (args.out / f"{name}.md").write_text(text)
    raw = {"name": name, "seed": args.seed, "quick": bool(args.quick), "seconds": secs,
           "command": command_line(), **raw}
    (args.out / f"{name}.json").write_text(json.dumps(_jsonable(raw), indent=1))


def save_figure(fig: Any, args: argparse.Namespace, name: str) -> Path:
    path = args.out / f"{name}.png"
    fig.savefig(path, dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    print(f"wrote {path}")
    return path


def plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as pyplot

    return pyplot


# --------------------------------------------------------------------------- stacked nets
_ACTS = {"tanh": torch.tanh, "relu": torch.relu, "sigmoid": torch.sigmoid,
         "softplus": nn.functional.softplus, "none": lambda z: z}


class StackedNet(nn.Module):
    """``K`` fully-connected classifiers evaluated as one module.

    Input ``[N, d + 1]``: the last coordinate carries the index of the classifier that sample
    belongs to (read with ``round``, whose gradient is zero, so gradient-based attacks never
    move it; :func:`attack_stacked` checks that they did not).  ``weights[l]`` is
    ``[K, out, in]``.  :meth:`single` returns classifier ``k`` as an ``nn.Sequential`` for
    :func:`boundkit.certify`.
    """

    def __init__(self, weights: list[torch.Tensor], biases: list[torch.Tensor],
                 activation: str) -> None:
        super().__init__()
        self.w = nn.ParameterList([nn.Parameter(w, requires_grad=False) for w in weights])
        self.b = nn.ParameterList([nn.Parameter(b, requires_grad=False) for b in biases])
        self.activation = activation
        self.d = weights[0].shape[2]
        self.k = weights[0].shape[0]
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        idx = x[:, -1].round().long().clamp(0, self.k - 1)
        z = x[:, :-1]
        act = _ACTS[self.activation]
        for i, (w, b) in enumerate(zip(self.w, self.b)):
            z = torch.einsum("ni,noi->no", z, w[idx]) + b[idx]
            if i < len(self.w) - 1:
                z = act(z)
        return z

    def single(self, k: int) -> nn.Sequential:
        layers: list[nn.Module] = []
        mods = {"tanh": nn.Tanh, "relu": nn.ReLU, "sigmoid": nn.Sigmoid, "softplus": nn.Softplus}
        for i, (w, b) in enumerate(zip(self.w, self.b)):
            lin = nn.Linear(w.shape[2], w.shape[1])
            with torch.no_grad():
                lin.weight.copy_(w[k])
                lin.bias.copy_(b[k])
            layers.append(lin)
            if i < len(self.w) - 1:
                layers.append(mods[self.activation]())
        return nn.Sequential(*layers).eval()


def random_stacked(k: int, sizes: Sequence[int], param_interval: tuple[float, float],
                   activation: str, gen: torch.Generator) -> StackedNet:
    lo, hi = param_interval
    ws, bs = [], []
    for a, b in zip(sizes[:-1], sizes[1:]):
        ws.append(torch.rand(k, b, a, generator=gen) * (hi - lo) + lo)
        bs.append(torch.rand(k, b, generator=gen) * (hi - lo) + lo)
    return StackedNet(ws, bs, activation)


def with_index(x: torch.Tensor, per_model: int) -> torch.Tensor:
    """Append the classifier index (row // per_model) as the last coordinate."""
    idx = (torch.arange(x.shape[0]) // per_model).to(x.dtype)[:, None]
    return torch.cat([x, idx], 1)


def attack_stacked(net: StackedNet, xi: torch.Tensor, method: str, **kw: Any) -> dict:
    """Attack all samples of all stacked classifiers at once; norms over the real inputs."""
    import boundkit as bk

    t0 = time.perf_counter()
    if method == "best":
        # no box, so no default pool; the fallback runs below with the stacked inputs as its
        # pool, grouped by classifier (a start point must belong to the same classifier)
        kw = {"fallback_pool": None, **kw}
    res = bk.attack(net, xi, method, box=None, **kw)
    x_adv, success = res.x_adv.clone(), res.success.clone()
    moved = (x_adv[:, -1] != xi[:, -1]) & success
    n_moved = int(moved.sum())  # members that changed the classifier index (discarded)
    if method == "best":
        success &= ~moved
        x_adv[moved] = xi[moved]
        _fallback_within_classifier(net, xi, x_adv, success, kw.get("budget") or 1000)
        moved = (x_adv[:, -1] != xi[:, -1]) & success
    # certificates speak about the exact-arithmetic network: as bk.crosscheck does, keep an
    # example only if it is adversarial in float64 too (a float32 model can flip within its
    # rounding noise of the boundary, a few 1e-7 closer than the true minimal perturbation)
    import copy

    net64 = copy.deepcopy(net).double()
    with torch.no_grad():
        clean64 = net64(xi.double()).argmax(1)
        adv64 = net64(x_adv.double()).argmax(1) != clean64
    ok = success & ~moved & adv64
    norm = (x_adv[:, :-1].double() - xi[:, :-1].double()).norm(dim=1)
    norm = torch.where(ok, norm, torch.full_like(norm, math.inf))
    return {"norm": norm, "success": ok, "index_moved": n_moved,
            "float32_only": int((success & ~moved & ~adv64).sum()),
            "seconds": time.perf_counter() - t0, "found_by": list(res.found_by)}


def _fallback_within_classifier(net: StackedNet, xi: torch.Tensor, x_adv: torch.Tensor,
                                success: torch.Tensor, steps: int) -> None:
    """The ``best`` ensemble's fallback (:func:`boundkit.attacks.ensemble.start_from_pool`)
    with the stacked inputs as the pool, grouped by classifier: a sample no member broke
    starts FMN from the nearest input *of its own classifier* that it assigns another class.
    Updates ``x_adv`` and ``success`` in place where that gives a verified adversarial
    example (the float64 check of :func:`attack_stacked` still applies to them)."""
    from boundkit.attacks.base import Misclassification, verify
    from boundkit.attacks.ensemble import start_from_pool

    failed = (~success).nonzero().squeeze(1)
    if failed.numel() == 0:
        return
    with torch.no_grad():
        pred = net(xi).argmax(1)
    crit = Misclassification(pred[failed])
    group = xi[:, -1].round().long()
    cand = start_from_pool(net, xi[failed], crit, xi, box=None, steps=steps,
                           groups=group[failed], pool_groups=group)
    ok, _, _ = verify(net, xi[failed], cand, crit, None)
    x_adv[failed] = torch.where(ok[:, None], cand, x_adv[failed])
    success[failed] |= ok


def certify_stacked(net: StackedNet, x: torch.Tensor, per_model: int, method: str) -> torch.Tensor:
    """Certified radius of every sample under its own classifier (one certify per model)."""
    import boundkit as bk

    out = torch.empty(x.shape[0], dtype=torch.float64)
    for k in range(net.k):
        sl = slice(k * per_model, (k + 1) * per_model)
        out[sl] = bk.certify(net.single(k), x[sl].float(), method).radius.cpu()
    return out


def elapsed(args: argparse.Namespace) -> float:
    return time.perf_counter() - args.t0


# --------------------------------------------------------------------------- trained models
def trained_zoo_model(name: str, args: argparse.Namespace, *, epochs: int,
                      max_train: int | None = None) -> tuple[nn.Module, dict]:
    """Train zoo model ``name`` on its data set's train split (first ``max_train`` rows),
    seeded; cached in ``runs/analyses/`` (git-ignored) so that re-runs and the other scripts
    reuse it. Returns the model (eval mode) and a dict of training facts."""
    from boundkit.data import load_dataset
    from boundkit.models import ZOO, build_model, train_model

    entry = ZOO[name]
    cache = ROOT / "runs" / "analyses"
    cache.mkdir(parents=True, exist_ok=True)
    tag = f"{name}_s{args.seed}_n{max_train}_e{epochs}"
    path = cache / f"{tag}.pt"
    model = build_model(name, seed=args.seed)
    x_tr, y_tr = load_dataset(entry.dataset, args.data_root, "train", seed=args.seed)
    if max_train is not None:
        x_tr, y_tr = x_tr[:max_train], y_tr[:max_train]
    info = {"arch": name, "epochs": epochs, "n_train": int(x_tr.shape[0]),
            "batch_size": entry.batch_size, "lr": entry.lr, "cached": path.exists()}
    if path.exists():
        model.load_state_dict(torch.load(path, weights_only=True))
    else:
        t0 = time.perf_counter()
        train_model(model, x_tr, y_tr, epochs=epochs, lr=entry.lr,
                    batch_size=entry.batch_size, seed=args.seed)
        info["train_seconds"] = time.perf_counter() - t0
        torch.save(model.state_dict(), path)
    return model.eval(), info
