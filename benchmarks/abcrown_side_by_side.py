r"""boundkit's branch and bound (``bab``, no input box) against alpha-beta-CROWN itself, side by
side: same process, same samples, one thread, same per-sample time budget.

alpha-beta-CROWN answers yes/no for one epsilon; here its answers become a radius the way a user
who wants a distance would get one (``../shared/REFERENCE-NUMBERS.md``): one call at auto_LiRPA
CROWN's radius, then bisection steps between the largest radius it verified and the norm of the
best verified attack; ``unknown`` (timeout, or every ReLU split with the bound still negative)
counts as not verified. Its calls share the per-sample budget ``T`` (see :func:`bisect_radius`:
each call gets the time left divided by the calls left, so time a fast call leaves over goes to
the next ones). Its setting: alpha-CROWN, then beta-CROWN branch and bound
(``complete_verifier: bab``, branching ``kfsb``, batch 256), CPU, L2 ball without input box
(its L2 perturbation ignores the box), PGD skipped (it has no L2 attack).

Per sample: the norm of boundkit's ``best`` attack (verified adversarial example; the upper end
of every search, not counted in the budgets), auto_LiRPA CROWN's radius (bisection, the
auto_LiRPA 0.7.0 shipped inside alpha-beta-CROWN, imported from ``--abcrown``, not the
pip-installed 0.3), boundkit ``crown`` and ``alpha`` with ``box=None``, boundkit ``bab`` with
``box=None`` and ``time_budget=T``, and alpha-beta-CROWN's radius under ``T``.

The alpha-beta-CROWN source tree is an argument (``--abcrown DIR``, the folder holding
``complete_verifier/``); the repo never requires it. Its unused optional imports (onnx2pytorch,
onnxoptimizer, skl2onnx, onnxsim, gurobipy, torchvision, graphviz, psutil, pandas, and
onnxruntime where absent) are stubbed in ``sys.modules``; nothing in its tree is edited. With
``--clock process`` (default) budgets and times are this process's CPU seconds, and
alpha-beta-CROWN's own timeout checks (``time.time()`` in its modules) are pointed at the same
clock by monkeypatching, so on a loaded machine both sides get the same CPU time.

    BOUNDKIT_DATA=../shared/data OMP_NUM_THREADS=1 python -m benchmarks.abcrown_side_by_side \
        --abcrown DIR [--n 10] [--budgets 8 20] [--calls 7 3] \
        [--out docs/results/abcrown_side_by_side.md]
    python -m benchmarks.abcrown_side_by_side --render docs/results/abcrown_side_by_side.json

A complete tree from git mirrors of the two repositories (the mirrors may lack some large
model / data blobs, which this benchmark does not read; ``git archive`` stops at the first, so
the files are written one by one)::

    D=/tmp/abcrown-8250d5f; mkdir -p $D/auto_LiRPA
    (cd AUTO_LIRPA_MIRROR && git archive 9d100ec | tar -x -C $D/auto_LiRPA)
    cd ABCROWN_MIRROR && git ls-tree -r 8250d5f | while read mode type sha path; do
      [ "$type" = blob ] || continue  # the auto_LiRPA submodule: above
      mkdir -p "$D/$(dirname "$path")"
      if [ "$mode" = 120000 ]; then ln -sfn "$(git cat-file blob $sha)" "$D/$path"
      else git cat-file blob $sha > "$D/$path" 2>/dev/null || rm -f "$D/$path"; fi; done
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.machinery
import importlib.util
import io
import json
import math
import sys
import tempfile
import time
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks._models import DEFAULT_DATA, REPO

#: files a usable alpha-beta-CROWN tree holds (relative to ``--abcrown``)
REQUIRED_FILES = ("complete_verifier/abcrown.py", "complete_verifier/arguments.py",
                  "complete_verifier/loading.py", "complete_verifier/load_model.py",
                  "complete_verifier/specifications.py", "complete_verifier/utils.py",
                  "complete_verifier/complete_verifier_func.py", "complete_verifier/bab.py",
                  "complete_verifier/auto_LiRPA/__init__.py")
#: optional imports of alpha-beta-CROWN this benchmark never exercises (model loading from
#: ONNX, MIP / LP with Gurobi, torchvision data sets, graph drawing,
#: processes of the cut solvers): stubbed when not installed
OPTIONAL_MODULES = ("onnx2pytorch", "onnxruntime", "onnxoptimizer", "skl2onnx",
                    "skl2onnx.helpers", "skl2onnx.helpers.onnx_helper", "onnxsim", "gurobipy",
                    "torchvision", "torchvision.datasets", "torchvision.transforms", "graphviz",
                    "psutil", "pandas")
#: the module alpha-beta-CROWN's ``Customized(...)`` loaders find the model and data in
CUSTOM_MODULE = "_boundkit_abcrown_custom"


# ------------------------------------------------------------------ the bisection on yes/no
@dataclass
class Bisection:
    """The outcome of :func:`bisect_radius` for one sample: ``radius`` the largest radius the
    oracle verified (0 if none), ``top`` the smallest radius it did not verify (``hi`` if
    none), ``calls`` the answers as (radius, verified, seconds)."""

    radius: float
    top: float
    seconds: float
    calls: list[tuple[float, bool, float]] = field(default_factory=list)


def bisect_radius(oracle: Callable[[float, float], bool], start: float, hi: float, budget: float,
                  calls: int, clock: Callable[[], float] = time.process_time,
                  min_share: float = 0.0) -> Bisection:
    r"""A radius from a yes/no verifier: ``oracle(eps, timeout)`` is True only when it proves that
    no perturbation of norm :math:`\le\varepsilon` changes the class, within ``timeout`` seconds
    (False: falsified or unknown). The first call is at ``start`` (e.g. the CROWN radius), then
    bisection on :math:`[\ell, u]`, :math:`\ell` the largest radius verified (0 at first), :math:`u`
    the smallest not verified (``hi`` at first, e.g. the attack norm): next radius
    :math:`(\ell+u)/2`. At most ``calls`` calls; call :math:`k` (of :math:`K`) gets
    :math:`(T-\text{spent})/(K-k)` seconds, the time a fast answer leaves over going to the later
    calls; the search stops when less than ``min_share`` seconds would be left for a call.
    ``seconds``: time spent on ``clock`` (the oracle may overrun its share; the overrun is
    charged). Every verified answer is a certificate, so ``radius`` is one at any stop."""
    if not (math.isfinite(start) and start >= 0) or not (hi > 0) or not (budget > 0) or calls < 1:
        raise ValueError("bisect_radius needs start >= 0 finite, hi > 0, budget > 0, calls >= 1")
    lo, top, spent = 0.0, float(hi), 0.0
    out = Bisection(0.0, top, 0.0)
    eps = start if 0 < start < top else top / 2
    for k in range(calls):
        share = (budget - spent) / (calls - k)
        if share <= 0 or share < min_share or not lo < eps < top:
            break
        t0 = clock()
        ok = bool(oracle(eps, share))
        dt = clock() - t0
        spent += dt
        out.calls.append((eps, ok, dt))
        if ok:
            lo = eps
        else:
            top = eps
        eps = (lo + top) / 2
    out.radius, out.top, out.seconds = lo, top, spent
    return out


# ------------------------------------------------------------------ importing alpha-beta-CROWN
def _stub(name: str) -> types.ModuleType:
    """A module whose attributes are functions refusing to run (the benchmark never calls them)."""

    class Stub(types.ModuleType):
        def __getattr__(self, attr: str) -> Any:
            if attr.startswith("__"):
                raise AttributeError(attr)

            def refuse(*args: Any, **kwargs: Any) -> Any:
                raise RuntimeError(f"{name}.{attr}: optional dependency stubbed by "
                                   "benchmarks.abcrown_side_by_side (not installed)")

            return refuse

    mod = Stub(name)
    mod.__path__ = []  # a package: its submodules can be stubbed too
    # a spec, as find_spec callers expect of anything in sys.modules (torch._dynamo does)
    mod.__spec__ = importlib.machinery.ModuleSpec(name, None, is_package=True)
    return mod


def check_tree(root: Path) -> Path:
    """``root`` resolved, if it holds an alpha-beta-CROWN tree with :data:`REQUIRED_FILES`; else a
    one-line ``SystemExit`` naming the problem."""
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise SystemExit(f"--abcrown {root}: no such folder")
    missing = [f for f in REQUIRED_FILES if not (root / f).exists()]
    if missing:
        raise SystemExit(f"--abcrown {root}: not a complete alpha-beta-CROWN tree "
                         f"({len(missing)} of its files missing, e.g. {missing[0]})")
    return root


def import_abcrown(root: Path) -> types.ModuleType:
    """alpha-beta-CROWN's ``abcrown`` module from the tree at ``root`` (checked first; a one-line
    ``SystemExit`` names what is missing), with its auto_LiRPA 0.7 (not the pip-installed one)."""
    root = check_tree(root)
    cv = root / "complete_verifier"
    loaded = sys.modules.get("auto_LiRPA")
    if loaded is not None and not str(Path(loaded.__file__).resolve()).startswith(str(root)):
        raise SystemExit(f"another auto_LiRPA is already imported ({loaded.__file__}); run this "
                         "benchmark in a fresh process")
    for name in OPTIONAL_MODULES:
        if name in sys.modules:
            continue
        parent = name.rpartition(".")[0]
        if not parent and importlib.util.find_spec(name) is not None:
            continue
        if parent and not isinstance(sys.modules.get(parent), types.ModuleType):
            continue
        if parent and not type(sys.modules[parent]).__name__ == "Stub":
            continue
        sys.modules[name] = _stub(name)
        if parent:
            setattr(sys.modules[parent], name.rpartition(".")[2], sys.modules[name])
    sys.path.insert(0, str(cv))
    with contextlib.redirect_stdout(io.StringIO()):
        import abcrown  # type: ignore[import-not-found]
        import auto_LiRPA
    where = Path(auto_LiRPA.__file__).resolve()
    if not str(where).startswith(str(root)):
        raise SystemExit(f"auto_LiRPA imported from {where}, not from {root}")
    return abcrown


class _ProcessTime(types.ModuleType):
    """``time`` with ``time()`` on this process's CPU clock (for alpha-beta-CROWN's timeouts)."""

    def __init__(self) -> None:
        super().__init__("time")

    def __getattr__(self, attr: str) -> Any:
        return getattr(time, attr)

    @staticmethod
    def time() -> float:
        return time.process_time()


def _patch_clock(root: Path) -> None:
    """Point every loaded alpha-beta-CROWN module's ``time`` at :class:`_ProcessTime`."""
    proc = _ProcessTime()
    base = str(Path(root).resolve())
    for mod in list(sys.modules.values()):
        f = getattr(mod, "__file__", None)
        if f and str(Path(f).resolve()).startswith(base) and getattr(mod, "time", None) is time:
            mod.time = proc


# ------------------------------------------------------------------ alpha-beta-CROWN as an oracle
class ABCrownOracle:
    """alpha-beta-CROWN on one sample at one L2 radius: its ``ABCROWN`` front end with a
    temporary YAML config and ``Customized`` model / data loaders served from memory."""

    def __init__(self, root: Path, model: torch.nn.Module, batch: int, log: io.TextIOBase,
                 process_clock: bool) -> None:
        self.root = Path(root)
        self.abcrown = import_abcrown(self.root)
        self.model, self.batch, self.log = model, batch, log
        self.pools = any(isinstance(m, torch.nn.MaxPool2d) for m in model.modules())
        self.process_clock = process_clock
        self.dir = tempfile.TemporaryDirectory(prefix="bk_abcrown_")
        self.custom = types.ModuleType(CUSTOM_MODULE)
        sys.modules[CUSTOM_MODULE] = self.custom
        self.statuses: list[str] = []

    def __call__(self, x: torch.Tensor, label: int, eps: float, timeout: float) -> bool:
        """True iff alpha-beta-CROWN returns ``safe`` (any flavour) for the ball of radius
        ``eps`` around ``x`` [1, *shape] within ``timeout`` seconds."""
        import copy

        model = copy.deepcopy(self.model).float().eval()
        self.custom.model = lambda: model
        self.custom.data = lambda spec: {
            "X": x.float().reshape(1, *x.shape[1:]), "labels": torch.tensor([int(label)]),
            "eps": float(eps), "norm": 2.0, "runnerup": None, "target_label": None}
        d = Path(self.dir.name)
        shape = " ".join(str(s) for s in x.shape[1:])
        cfg = d / "config.yaml"
        cfg.write_text(
            "general:\n  device: cpu\n  complete_verifier: bab\n"
            # its max pooling has no bound in the default "patches" mode
            f"  conv_mode: {'matrix' if self.pools else 'patches'}\n"
            "  enable_incomplete_verification: true\n"
            f"  results_file: {d / 'out.txt'}\n"
            f"model:\n  name: Customized(\"{CUSTOM_MODULE}\", \"model\")\n"
            f"  input_shape: [-1, {shape.replace(' ', ', ')}]\n"
            f"data:\n  dataset: Customized(\"{CUSTOM_MODULE}\", \"data\")\n"
            "  num_outputs: 10\n  start: 0\n  end: 1\n"
            f"specification:\n  norm: 2\n  epsilon: {float(eps)!r}\n"
            "attack:\n  pgd_order: skip\n"
            f"solver:\n  batch_size: {self.batch}\n  bound_prop_method: alpha-crown\n"
            f"bab:\n  timeout: {float(timeout)!r}\n  branching:\n    method: kfsb\n")
        with contextlib.redirect_stdout(self.log), contextlib.redirect_stderr(self.log):
            verifier = self.abcrown.ABCROWN(args=["--config", str(cfg)])
            if self.process_clock:
                _patch_clock(self.root)
            summary = verifier.main()
        status = next(iter(summary)) if summary else "unknown"
        self.statuses.append(status)
        return "safe" in status and "unsafe" not in status


# ------------------------------------------------------------------ auto_LiRPA CROWN radius
def lirpa_crown_radius(model: torch.nn.Module, x: torch.Tensor, label: torch.Tensor,
                       hi: torch.Tensor, steps: int = 20) -> torch.Tensor:
    """auto_LiRPA CROWN's radius per sample: ``steps`` bisection steps on [0, hi], all samples
    in one ``compute_bounds`` call per step (one epsilon per sample through a small subclass
    of its L2 perturbation; one call per sample where its convolutions refuse that). Uses
    whichever ``auto_LiRPA`` is imported (alpha-beta-CROWN's after :func:`import_abcrown`)."""
    import auto_LiRPA
    from auto_LiRPA.perturbations import PerturbationLpNorm
    from auto_LiRPA.utils import eyeC

    class PerSampleL2(PerturbationLpNorm):
        """eps [N, 1, ...] for the input bounds; [N, 1] (or [N, 1, 1] on an identity A) in
        the dual-norm term :math:`\\|A\\|_2\\,\\varepsilon`."""

        def concretize_matrix(self, x, A, sign, constraints=None):  # noqa: ANN001, ANN202
            eps = self.eps
            n = eps.shape[0]
            self.eps = eps.reshape(n, 1, 1) if isinstance(A, eyeC) else eps.reshape(n, 1)
            try:
                return super().concretize_matrix(x, A, sign, constraints)
            finally:
                self.eps = eps

    n = x.shape[0]
    c = int(model(x[:1]).shape[1])
    bm = auto_LiRPA.BoundedModule(model, torch.zeros_like(x[:1]), device="cpu",
                                  bound_opts={"verbosity": 0,  # dense: plain CROWN
                                              "sparse_intermediate_bounds": False})
    eye = torch.eye(c)
    others = torch.stack([torch.cat([torch.arange(0, int(y)), torch.arange(int(y) + 1, c)])
                          for y in label])  # [N, C-1]
    spec = eye[label].unsqueeze(1) - eye[others]  # [N, C-1, C]
    lo, top = torch.zeros(n, dtype=torch.float64), hi.double().clone()
    batched = True

    def lower(mid: torch.Tensor) -> torch.Tensor:
        nonlocal batched
        if batched:
            try:
                ptb = PerSampleL2(norm=2, eps=mid.float().reshape(-1, *([1] * (x.dim() - 1))))
                lb, _ = bm.compute_bounds(x=(auto_LiRPA.BoundedTensor(x, ptb),), C=spec,
                                          method="CROWN", bound_upper=False)
                return lb
            except AssertionError:  # its convolutions take one epsilon per call only
                batched = False
        return torch.cat([bm.compute_bounds(
            x=(auto_LiRPA.BoundedTensor(x[i:i + 1], PerturbationLpNorm(
                norm=2, eps=float(mid[i]))),), C=spec[i:i + 1], method="CROWN",
            bound_upper=False)[0] for i in range(n)])

    for _ in range(steps):
        mid = (lo + top) / 2
        ok = (lower(mid).min(1).values > 0).cpu()
        lo, top = torch.where(ok, mid, lo), torch.where(ok, top, mid)
    return lo


# ------------------------------------------------------------------ the benchmark
def run(args: argparse.Namespace, save: Callable[[dict], None] = lambda res: None) -> dict:
    """All rows for the MLP's first ``args.n`` correctly classified test samples (``save``
    gets the partial result after every row)."""
    import boundkit as bk
    import boundkit.bounds.bab.options as bab_clock
    from benchmarks.bab import first_correct, load

    clock = time.process_time if args.clock == "process" else time.perf_counter
    bab_clock.CLOCK = clock  # bab's budget on the same clock (read by options.now())
    log = open(args.log, "w") if args.log else io.StringIO()  # noqa: SIM115
    model = load(args.model, args.data_root, args.cache, args.networks).float().eval()
    # before anything imports the pip auto_LiRPA: alpha-beta-CROWN's own 0.7.0
    oracle = ABCrownOracle(args.abcrown, model, args.batch, log, args.clock == "process")
    import auto_LiRPA

    x = first_correct(model, args.data_root, args.n)
    n = x.shape[0]
    with torch.no_grad():
        label = model(x).argmax(1)
    torch.manual_seed(0)
    t0 = clock()
    adv_box = bk.attack(model, x, "best")
    adv_free = bk.attack(model, x, "best", box=None)
    t_attack = clock() - t0
    nb, nf = adv_box.norm.double(), adv_free.norm.double()
    nb = torch.where(adv_box.success & torch.isfinite(nb), nb, torch.inf)
    nf = torch.where(adv_free.success & torch.isfinite(nf), nf, torch.inf)
    norm = torch.minimum(nb, nf)  # both are adversarial in the plain ball
    found = torch.isfinite(norm)
    print(f"{n} samples; attack median {float(np.median(norm[found].numpy())):.4f} "
          f"({int(found.sum())} found, {t_attack / n:.2f} s/sample)", flush=True)

    rows: dict[str, dict] = {}
    res = {"model": args.model, "n": n, "labels": [int(v) for v in label],
           "attack_norm": [float(v) for v in norm], "attack_norm_box": [float(v) for v in nb],
           "attack_norm_nobox": [float(v) for v in nf], "attack_found": int(found.sum()),
           "attack_seconds_per_sample": t_attack / n, "rows": rows,
           "auto_LiRPA": f"{auto_LiRPA.__version__} ({Path(auto_LiRPA.__file__).parent})",
           "abcrown_statuses": oracle.statuses}
    t0 = clock()
    lirpa = lirpa_crown_radius(model, x, label, torch.where(found, norm, 10.0))
    t_lirpa = clock() - t0

    def record(label_: str, radius: torch.Tensor, seconds: float, **extra: Any) -> None:
        r = radius.double().cpu()
        rows[label_] = {"radius": [float(v) for v in r], "seconds_per_sample": seconds / n,
                        "violations": int((found & (r >= norm)).sum()), **extra}
        ok = found & (lirpa > 0)
        rows[label_]["median_ratio_attack"] = float(np.median((r[found] / norm[found]).numpy()))
        rows[label_]["median_ratio_lirpa"] = float(np.median((r[ok] / lirpa[ok]).numpy()))
        print(f"  {label_}: median / attack {rows[label_]['median_ratio_attack']:.4f}, "
              f"/ auto_LiRPA CROWN {rows[label_]['median_ratio_lirpa']:.4f}, "
              f"{seconds / n:.2f} s/sample, violations {rows[label_]['violations']}", flush=True)
        save(res)

    record("auto_LiRPA CROWN", lirpa, t_lirpa)
    for m in args.refs:
        t0 = clock()
        r = bk.certify(model, x, m, box=None).radius
        record(f"boundkit `{m}`", r, clock() - t0)
    upper = torch.where(found, norm, torch.inf)
    for budget in args.budgets:
        t0 = clock()
        cert = bk.certify(model, x, "bab", box=None, time_budget=budget, upper=upper)
        dt = clock() - t0
        record(f"boundkit `bab` {budget:g} s", cert.radius, dt,
               median_domains=float(np.median(cert.info["domains"].double().numpy())))
        for calls in args.calls:
            runs: list[Bisection] = []
            t0 = clock()
            for i in range(n):  # one alpha-beta-CROWN run per sample and radius: its API
                def ask(eps: float, timeout: float, i: int = i) -> bool:
                    return oracle(x[i:i + 1], int(label[i]), eps, timeout)

                if not bool(found[i]):
                    runs.append(Bisection(0.0, math.inf, 0.0))
                    continue
                runs.append(bisect_radius(ask, float(lirpa[i]), float(norm[i]), budget, calls,
                                         clock=clock))
            dt = clock() - t0
            record(f"alpha-beta-CROWN {budget:g} s ({calls} calls)",
                   torch.tensor([b.radius for b in runs]), dt,
                   calls_per_sample=[[list(c) for c in b.calls] for b in runs],
                   seconds_each=[b.seconds for b in runs])
    if args.check_above:
        # red team of the reference: just outside a verified adversarial example, any "safe"
        # from alpha-beta-CROWN is a false certificate
        eps = norm * (1 + 1e-3)
        answers = []
        t0 = clock()
        for i in range(n):
            if bool(found[i]):
                answers.append(oracle(x[i:i + 1], int(label[i]), float(eps[i]),
                                      args.check_above))
        res["check_above"] = {"timeout": args.check_above, "radius_over_attack": 1 + 1e-3,
                              "calls": len(answers), "false_safe": int(sum(answers)),
                              "seconds_per_sample": (clock() - t0) / max(1, len(answers))}
        print(f"  alpha-beta-CROWN at 1.001 x the attack norm: {sum(answers)} of "
              f"{len(answers)} answered safe (must be 0)", flush=True)
        save(res)
    log.close()
    return res


def markdown(res: dict, notes: bool = True) -> str:
    """The results page: summary table, then per-sample radii (from :func:`run`'s result with
    ``command``, ``clock`` and ``batch`` added)."""
    clock = "CPU seconds of this process" if res["clock"] == "process" else "wall seconds"
    norm = np.array(res["attack_norm"])
    lirpa = np.array(res["rows"]["auto_LiRPA CROWN"]["radius"])
    ok = np.isfinite(norm) & (lirpa > 0)
    ceiling = float(np.median(norm[ok] / lirpa[ok]))
    budgets = [name.split(" ")[2] for name in res["rows"] if name.startswith("boundkit `bab` ")]
    lines = [
        "# boundkit `bab` against alpha-beta-CROWN, no input box (L2 ball only), "
        + (f"T = {', '.join(budgets)} s per sample" if budgets else "no search"), "",
        f"Generated by `{res['command']}` ({res['date']}, CPU, one thread, torch "
        f"{res['torch']}; auto_LiRPA {res['auto_LiRPA']}).", "",
        f"Model `{res['model']}` ({MODELS.get(res['model'], 'see the command')}), the first "
        f"{res['n']} correctly classified test samples. Attack: per sample the smaller norm of "
        "boundkit's `best` attack with the box [0, 1] and without it (both verified adversarial "
        f"examples in the plain ball; median {np.median(norm):.4f}, "
        f"{res['attack_seconds_per_sample']:.2f} s/sample, not counted below). Time: {clock} per "
        "sample. Violations: a radius at or above the attack norm (must be 0).", "",
        "alpha-beta-CROWN: one call at auto_LiRPA CROWN's radius, then bisection between the "
        "largest radius it verified and the attack norm; call k of K gets (T - spent) / (K - k) "
        "seconds (its own timeout, on the same clock), `unknown` counts as not verified. "
        "Setting: alpha-CROWN then beta-CROWN branch and bound, branching `kfsb`, batch "
        f"{res['batch']}, PGD skipped, no input box.", "",
        "The attack bounds every radius from above, sample by sample, so no sound method's "
        "median radius / auto_LiRPA CROWN can exceed the attack's (its row below: "
        f"{ceiling:.4f}). The attack with the box alone has median norm "
        f"{np.median(res['attack_norm_box']):.4f}; without the box the ball holds adversarial "
        "examples outside [0, 1], closer.", "",
        "| method | median radius / attack | median / auto_LiRPA CROWN | s / sample | "
        "violations |", "|---|---|---|---|---|",
        f"| attack (upper bound) | 1.0000 | {ceiling:.4f} | "
        f"{res['attack_seconds_per_sample']:.2f} | - |"]
    for name, row in res["rows"].items():  # medians (numpy's: mean of the middle two)
        r = np.array(row["radius"])
        fin = np.isfinite(norm)
        lines.append(f"| {name} | {np.median(r[fin] / norm[fin]):.4f} | "
                     f"{np.median(r[ok] / lirpa[ok]):.4f} | {row['seconds_per_sample']:.2f} | "
                     f"{row['violations']} |")
    if budgets:
        lines += ["", "Head to head (per sample, boundkit `bab` radius / alpha-beta-CROWN radius "
                  "at the same budget):", ""]
    for name, row in res["rows"].items():
        if not name.startswith("alpha-beta-CROWN "):
            continue
        budget = name.split(" ")[1]
        mine = res["rows"].get(f"boundkit `bab` {budget} s")
        if mine is None:
            continue
        a, b = np.array(mine["radius"]), np.array(row["radius"])
        both = np.isfinite(norm) & (b > 0)
        lines.append(f"- {budget} s vs {name}: median {np.median(a[both] / b[both]):.4f}, "
                     f"min {np.min(a[both] / b[both]):.4f}; `bab` larger on "
                     f"{int((a[both] > b[both]).sum())} of {int(both.sum())} samples; time "
                     f"{mine['seconds_per_sample']:.2f} vs {row['seconds_per_sample']:.2f} "
                     "s / sample.")
    lines += ["", "Per sample (radius; attack norm in the first column):", "",
              "| sample | attack | " + " | ".join(res["rows"]) + " |",
              "|---" * (len(res["rows"]) + 2) + "|"]
    for i in range(res["n"]):
        lines.append(f"| {i} | {norm[i]:.4f} | " + " | ".join(
            f"{row['radius'][i]:.4f}" for row in res["rows"].values()) + " |")
    chk = res.get("check_above")
    if chk:
        lines += ["", f"Red team of alpha-beta-CROWN: asked at {chk['radius_over_attack']:g} x "
                  f"each attack norm (timeout {chk['timeout']:g} s), it answered safe on "
                  f"{chk['false_safe']} of {chk['calls']} samples (a safe answer there would be "
                  "a false certificate)."]
    st = res["abcrown_statuses"]
    kinds = {s: st.count(s) for s in sorted(set(st))}
    lines += ["", "alpha-beta-CROWN's answers over all its calls: "
              + ", ".join(f"`{k}` {v}" for k, v in kinds.items()) + ".", "",
              *(NOTES if notes else [])]
    return "\n".join(lines)


#: what the results page says of a model
MODELS = {"mlp_mnist": "the MNIST MLP 784-100-100-10 of REFERENCE-NUMBERS",
          "small_cnn": "the small MNIST CNN of REFERENCE-NUMBERS, Conv(1,8,5)-ReLU-MaxPool2-"
                       "Conv(8,16,5)-ReLU-MaxPool2-Linear(256,100)-ReLU-Linear(100,10)"}

#: the fixed notes of the results page (no numbers: those come from the run above)
NOTES = [
    "## Notes", "",
    "- Fairness: same process, samples, thread count and clock for both; alpha-beta-CROWN's "
    "timeout checks run on the same clock (monkeypatched `time.time` in its modules). Its "
    "alpha-CROWN stage before branch and bound does not look at the timeout, so a call can "
    "overrun its share; the overrun is charged to it (its time column can exceed the budget) "
    "and leaves less for its later calls.",
    "- alpha-beta-CROWN has no L2 attack (PGD skipped): a radius it cannot prove within the "
    "share is `unknown` (or `unsafe` where its branch and bound meets a counterexample), "
    "counted as not verified either way.",
    "- Soundness of the columns: boundkit's radii are float64 with rounding charged; "
    "auto_LiRPA's and alpha-beta-CROWN's are float32 bounds without rounding accounted for "
    "(as they ship). The violations column checks every radius against verified adversarial "
    "examples.",
    "- boundkit `bab` stops a sample once its largest proven radius is within 0.1% of the "
    "attack norm (`BAB_RTOL`), so it can use less than the budget.",
    "- The alpha-beta-CROWN tree must be complete: the script refuses one with missing files "
    "(e.g. an interrupted unpacking) naming the first. One can be built from the git mirrors "
    "at the release commits with `git archive` (alpha-beta-CROWN 8250d5f, auto_LiRPA 9d100ec "
    "under `auto_LiRPA/`), skipping blobs the mirror lacks (large model and data files this "
    "benchmark does not read).", ""]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--abcrown", type=Path, default=None,
                    help="the alpha-beta-CROWN source tree (the folder holding complete_verifier/)")
    ap.add_argument("--n", type=int, default=10)
    ap.add_argument("--check-above", type=float, default=0.0, metavar="SECONDS",
                    help="also ask alpha-beta-CROWN (this timeout) at 1.001 x each attack norm: "
                    "a 'safe' there is a false certificate")
    ap.add_argument("--budgets", type=float, nargs="*", default=[8.0],
                    help="per-sample time budgets T (seconds) for bab and alpha-beta-CROWN")
    ap.add_argument("--calls", type=int, nargs="+", default=[7],
                    help="alpha-beta-CROWN calls per sample (1 at the CROWN radius + bisection); "
                    "one row per value")
    ap.add_argument("--batch", type=int, default=256, help="alpha-beta-CROWN's batch size")
    ap.add_argument("--model", default="mlp_mnist",
                    help="a zoo model (mlp_mnist, small_cnn: trained into --cache if absent) or "
                    "an ONNX network of --networks")
    ap.add_argument("--refs", nargs="*", default=["crown", "alpha"],
                    choices=["crown", "alpha"],
                    help="boundkit reference methods run before bab (default: crown alpha)")
    ap.add_argument("--data-root", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--cache", type=Path, default=REPO / "runs" / "models")
    ap.add_argument("--networks", type=Path, default=REPO / ".." / "shared" / "networks")
    ap.add_argument("--clock", choices=("process", "wall"), default="process",
                    help="budgets and times in this process's CPU seconds (default: robust on a "
                    "loaded machine) or wall seconds")
    ap.add_argument("--log", type=Path, default=None, help="alpha-beta-CROWN's output goes here")
    ap.add_argument("--out", type=Path, default=None, help="markdown file (and .json beside it)")
    ap.add_argument("--render", type=Path, nargs="+", default=None, metavar="JSON",
                    help="no run: rewrite the markdown of these results (one after the other; "
                    "into --out, default beside the first)")
    args = ap.parse_args()
    if args.render is not None:
        pages = [markdown(json.loads(f.read_text()), notes=len(args.render) == 1)
                 for f in args.render]
        pages[1:] = ["\n".join("#" + line if line.startswith("#") else line
                               for line in p.split("\n")) for p in pages[1:]]
        if len(pages) > 1:
            pages.append("\n".join(NOTES))
        (args.out or args.render[0].with_suffix(".md")).write_text("\n".join(pages) + "\n")
        return
    if args.abcrown is None:
        raise SystemExit("--abcrown DIR is needed: alpha-beta-CROWN's source tree (the folder "
                         "holding complete_verifier/)")
    check_tree(args.abcrown)
    if (args.n < 1 or any(not b > 0 for b in args.budgets) or any(c < 1 for c in args.calls)
            or not args.check_above >= 0):
        raise SystemExit("--n, --budgets and --calls must be positive, --check-above >= 0")
    torch.set_num_threads(1)
    command = "python -m benchmarks.abcrown_side_by_side " + " ".join(sys.argv[1:])

    def save(res: dict) -> None:
        res.update(command=command, clock=args.clock, batch=args.batch,
                   date=time.strftime("%Y-%m-%d"), torch=torch.__version__)
        if args.out is not None:
            args.out.write_text(markdown(res) + "\n")
            args.out.with_suffix(".json").write_text(json.dumps(res, indent=1))

    save(run(args, save))
    if args.out is not None:
        print(f"wrote {args.out}", flush=True)


if __name__ == "__main__":
    main()
