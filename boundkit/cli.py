"""The ``boundkit`` command line: certify, attack, cross-check, compare, train, report, demo.

Exit codes: 0 success; 2 bad input (a one-line error on stderr, no traceback); 3 a soundness
violation (a ``sound`` certified radius above the float64-verified norm of an adversarial
example: a bug in boundkit; the sample, method and layer are printed); 130 interrupted
(Ctrl-C; nothing half-written).

Every command that reads a model goes through one :func:`preamble` (options, device, output
paths, model, data, model-data check, training-image warning, provenance).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from boundkit.bounds.method import is_guarantee, method_names
from boundkit.data._common import sha256_of
from boundkit.stats import median

EXIT_OK, EXIT_BAD_INPUT, EXIT_VIOLATION, EXIT_INTERRUPTED = 0, 2, 3, 130

MAIN_EPILOG = """\
examples:
  boundkit demo --quick --out /tmp/bk-demo          # everything, on sklearn digits, ~1 min
  boundkit train digits_cnn --out runs/             # train a zoo model (no download)
  boundkit certify --model runs/digits_cnn.safetensors --data digits --n 100 \\
      --method both --out cert.json
  boundkit attack --model runs/digits_cnn.safetensors --data digits --n 100 --out atk.json
  boundkit crosscheck --model runs/digits_cnn.safetensors --data digits --out xcheck/
  boundkit compare --models runs/a.safetensors runs/b.safetensors --data digits --out cmp/
  boundkit report xcheck/results.json --out xcheck-report/

exit codes: 0 ok, 2 bad input (missing file, not a model, wrong data shape, NaN
weights...), 3 soundness violation found by crosscheck (a bug: please report it),
130 interrupted (nothing half-written).
Model files never run code unless you pass --trust-code (needed for TorchScript only).
Data sets: mnist, cifar10, iris, wine, digits, spambase (looked up in --data-root, default
$BOUNDKIT_DATA, else ~/.cache/boundkit), or a .npz/.pt file with arrays x (in [0, 1]) and y.
"""


def _progress_factory(quiet: bool):
    """A context-managed tqdm bar on stderr (a no-op bar when quiet)."""
    from tqdm.auto import tqdm

    def make(total: int, desc: str):
        return tqdm(total=total, desc=desc, disable=quiet, file=sys.stderr, leave=False,
                    dynamic_ncols=True, unit="sample")

    return make


class Session:
    """Options shared by the subcommands, and output helpers."""

    def __init__(self, args: argparse.Namespace, argv: Sequence[str] = ()) -> None:
        self.args = args
        self.argv = list(argv)
        #: the provenance of the model being analysed (set by :func:`preamble`)
        self.provenance: dict[str, Any] | None = None
        self.quiet: bool = getattr(args, "quiet", False)
        self.json: bool = getattr(args, "json", False)
        self.bar = _progress_factory(self.quiet)

    def say(self, *lines: str) -> None:
        """Human-readable output (suppressed by --quiet and --json)."""
        if not self.quiet and not self.json:
            for line in lines:
                print(line, flush=True)

    def emit(self, doc: dict[str, Any]) -> None:
        """Machine-readable output for --json."""
        if self.json:
            from boundkit.encoding import dumps

            print(dumps(doc, indent=1), flush=True)


# ------------------------------------------------------------------------------ loading
def _seed(seed: int) -> None:
    import torch

    torch.manual_seed(seed)


@dataclass
class Data:
    """``--data`` loaded: the first ``--n`` samples of a split, and where they came from."""

    x: Any
    y: Any
    indices: Any
    provenance: dict[str, Any]
    file: Path | None = None
    home: Path | None = None  # the data folder of a named data set


@dataclass
class Inputs:
    """What every command that analyses a model starts from (see :func:`preamble`)."""

    model: Any
    model_path: Path
    x: Any
    y: Any
    indices: Any
    device: Any
    provenance: dict[str, Any] = field(default_factory=dict)


def load_model_arg(path: str, arch: str | None, device: Any, trust_code: bool = False,
                   layout: str = "nchw", onnx_limits: dict[str, Any] | None = None):
    """Load ``--model`` safely (``boundkit.models.io.load_model``; ``layout`` and the
    memory limits ``onnx_limits`` for ``.onnx`` files). Every problem the loader recognises
    is a :class:`~boundkit.errors.BoundkitError` naming the file; anything else is a bug and
    surfaces as one."""
    from boundkit.models.io import load_model

    onnx = {"layout": layout, **(onnx_limits or {})} if str(path).lower().endswith(".onnx") \
        else None
    return load_model(path, arch=arch, device=device, trust_code=trust_code, onnx_options=onnx)


def load_data_arg(data: str, root: str | None, split: str, n: int | None) -> Data:
    """``--data``: a data set name or a ``.npz``/``.pt`` file; the first ``n`` samples of
    ``split`` (the data set's own fixed split, :data:`boundkit.data.SPLIT_SEED`; the run's
    ``--seed`` never changes it)."""
    import numpy as np

    from boundkit.data import SPLIT_SEED, load_dataset, load_tensor_file
    from boundkit.validate import check_int

    check_int("--n", n, allow_none=True)
    p = Path(data)
    home = None
    if p.suffix.lower() in (".npz", ".pt", ".pth") or p.is_file():
        x, y = load_tensor_file(p)
        prov = {"data": str(p), "data_sha256": sha256_of(p), "split": "file"}
        file = p
    else:
        from boundkit.data import data_home

        x, y = load_dataset(data, root, split)
        prov = {"data": data, "split": split, "split_seed": SPLIT_SEED}
        file = None
        home = data_home(root)
    if n is not None:
        x, y = x[:n], y[:n]
    prov["n"] = int(x.shape[0])
    return Data(x, y, np.arange(x.shape[0]), prov, file, home if file is None else None)


def _model_for_data(model: Any, x: Any, a: Any = None):
    """``--normalize`` and the input grouping of an ONNX model; cast the data to the model's
    dtype / device and check that the model maps it to logits ``[N, C]`` (a one-line error
    naming the shape otherwise). Returns ``(model, x)``."""
    from boundkit.models.preprocess import parse_normalize, prepare_model
    from boundkit.validate import check_batch, check_runs

    check_batch(x, name="--data")
    norm = getattr(a, "normalize", None)
    model = prepare_model(model, x.shape[1:], normalize=parse_normalize(norm) if norm else None)
    check_runs(model, x, what="the model")
    p = next((t for t in list(model.parameters()) + list(model.buffers())
              if t.is_floating_point()), None)
    if p is not None:
        x = x.to(device=p.device, dtype=p.dtype)
    return model, x


def _trained_on(meta: dict[str, Any]) -> dict[str, Any] | None:
    """The split a model was trained on, from its sidecar (older files: the data set and
    their ``seed``, which was then also the split seed)."""
    t = meta.get("trained_on")
    if isinstance(t, dict) and isinstance(t.get("data"), str):
        return t
    if isinstance(meta.get("dataset"), str):
        seed = meta.get("seed", 0)
        return {"data": meta["dataset"], "split": "train",
                "split_seed": seed if isinstance(seed, int) else 0}
    return None


def _check_not_training_data(model_path: Path, data: Data) -> str | None:
    """A loud warning (returned, and printed on stderr even with --quiet) when the samples
    include images the model was trained on, by its sidecar's record."""
    from boundkit.models.io import read_model_meta

    t = _trained_on(read_model_meta(model_path))
    prov = data.provenance
    if t is None:
        return None
    if data.file is not None:
        if t.get("data_sha256") and t.get("data_sha256") == prov.get("data_sha256"):
            return (f"WARNING: {model_path.name}: {data.file.name} is the very data file this "
                    "model was trained on; radii and accuracy measured on training images say "
                    "little about unseen data")
        return None
    norm = lambda s: str(s).lower().replace("-", "").replace("_", "")  # noqa: E731
    if norm(t["data"]) != norm(prov["data"]):
        return None
    if prov["split"] in ("train", "all"):
        why = f"the {prov['split']!r} split of {prov['data']} holds the images"
    elif prov["data"] != "cifar10" and t.get("split_seed", 0) != prov.get("split_seed"):
        why = (f"it was trained on the split of seed {t.get('split_seed')}, so the "
               f"{prov['split']!r} split (split seed {prov.get('split_seed')}) overlaps the "
               "images")
    else:
        return None
    return (f"WARNING: {model_path.name}: {why} this model was trained on; radii and "
            "accuracy measured on training images say little about unseen data")


def _input_files(paths: Sequence[Path]) -> list[Path]:
    """The files a run reads: each model, its sidecar, the data file, the results file."""
    from boundkit.models.io import sidecar_path

    out = []
    for p in paths:
        out.append(p)
        if p.suffix.lower() in (".safetensors", ".pt", ".pth", ".bin", ".ckpt", ".ts"):
            out.append(sidecar_path(p))
    return [p.resolve() for p in out]


RUN_MARKER = ".boundkit-run.json"


def check_outputs(out: Path, inputs: Sequence[Path], *, is_dir: bool,
                  data_home: Path | None = None) -> None:
    """Refuse an output that is, or would overwrite, an input: the model, its sidecar, the
    data or results file, a file of the data folder; an output directory holding an input
    (a run replaces the whole directory); an existing directory that is not a boundkit
    results directory; a file output that is a directory."""
    from boundkit.errors import OutputPathError

    o = out.resolve()
    files = _input_files(inputs)
    if data_home is not None:
        h = data_home.expanduser().resolve()
        if (is_dir and (o == h or o in h.parents)) or (
                not is_dir and h in o.parents and o.exists() and o.suffix.lower() != ".json"):
            raise OutputPathError(f"--out {out} would overwrite or replace the data folder "
                                  f"{data_home} or a file in it")
    if is_dir:
        if o.exists() and not o.is_dir():
            raise OutputPathError(f"--out {out} exists and is not a directory")
        for f in files:
            if f == o or o in f.parents:
                raise OutputPathError(f"--out {out} holds an input of this run ({f.name}); "
                                      "results directories are replaced as a whole: choose "
                                      "another --out")
        if o.is_dir() and any(o.iterdir()) and not (o / RUN_MARKER).is_file():
            raise OutputPathError(f"--out {out} exists, is not empty, and is not a boundkit "
                                  "results directory: choose another --out or empty it")
    else:
        if o.is_dir():
            raise OutputPathError(f"--out {out} is a directory; name a .json file")
        for f in files:
            if f == o:
                raise OutputPathError(f"--out {out} is an input of this run ({f.name}): "
                                      "refusing to overwrite it")


@contextlib.contextmanager
def staged_dir(out: Path, provenance: dict[str, Any]):
    """Write a results directory atomically: everything goes to a temporary sibling, which
    replaces ``out`` only once complete (a Ctrl-C or an error leaves ``out`` as it was, and
    no directory ever mixes two runs). Yields the temporary directory."""
    import shutil
    import tempfile

    from boundkit.report.io import atomic_write_text

    out = Path(out)
    parent = out.resolve().parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=parent))
    try:
        yield tmp
        atomic_write_text(tmp / RUN_MARKER, json.dumps(provenance, indent=1, default=str) + "\n")
        old = None
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=parent))
            os.replace(out, old / "run")
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def provenance(sess: Session, model_path: Path | None, data: Data | None, /,
               **extra: Any) -> dict[str, Any]:
    """What produced a result: model file and its hash, data, split, seed, method, versions."""
    import platform

    import torch

    from boundkit import __version__
    from boundkit.models.io import sidecar_path

    a = sess.args
    prov: dict[str, Any] = {"boundkit_version": __version__, "torch_version": torch.__version__,
                            "python": platform.python_version(), "command": a.command,
                            "argv": list(sess.argv), "seed": a.seed,
                            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    if model_path is not None:
        prov["model"] = str(model_path)
        prov["model_sha256"] = sha256_of(model_path)
        side = sidecar_path(model_path)
        if side.is_file():
            prov["sidecar_sha256"] = sha256_of(side)
    if data is not None:
        prov.update(data.provenance)
    prov.update({k: v for k, v in extra.items() if v is not None})
    return prov


def preamble(sess: Session, model_path: str, data: Data | None = None,
             outputs: Sequence[tuple[str, bool]] = (), **extra: Any) -> Inputs:
    """The shared start of every command that analyses a model, in one place: check the
    numeric options and the device, check that ``--out`` does not alias an input, load the
    model (safely: code only with --trust-code) and the data (unless given), check that the
    model maps the data to logits, warn about training images, seed, and record the
    provenance."""
    from boundkit.validate import check_device, check_int

    a = sess.args
    if hasattr(a, "cluster"):
        from boundkit.distributed.cli import check_cluster_args

        check_cluster_args(a)  # before anything is loaded or started
    if getattr(a, "cluster", None) and (
        getattr(a, "normalize", None) or getattr(a, "layout", "nchw") != "nchw"
        or getattr(a, "trust_code", False) or str(model_path).lower().endswith(".onnx")
    ):
        from boundkit.errors import BadArgumentError

        raise BadArgumentError(
            "--cluster runs safetensors / state-dict models as they are: it cannot yet be "
            "combined with --normalize, --layout, --trust-code or an .onnx model"
        )
    for opt in ("budget", "epochs"):
        check_int(f"--{opt}", getattr(a, opt, None), allow_none=True,
                  minimum=0 if opt == "epochs" else 1)
    device = check_device(a.device)
    mpath = Path(model_path)
    if data is None:
        data = load_data_arg(a.data, a.data_root, a.split, a.n)
    inputs = [mpath] + ([data.file] if data.file is not None else [])
    for out, is_dir in outputs:
        check_outputs(Path(out), inputs, is_dir=is_dir, data_home=data.home)
    limits = {}
    for k in ("tensor", "total"):
        v = getattr(a, f"onnx_max_{k}_mib", None)
        if v is not None:
            if not 0 < v < 1 << 30:
                from boundkit.errors import BadArgumentError

                raise BadArgumentError(f"--onnx-max-{k}-mib must be a positive number of MiB "
                                       f"below 2^30, got {v:g}")
            limits[f"max_{k}_bytes"] = max(1, int(v * (1 << 20)))
    model = load_model_arg(model_path, a.arch, device, getattr(a, "trust_code", False),
                           getattr(a, "layout", "nchw"), limits)
    model, x = _model_for_data(model, data.x, a)
    warning = _check_not_training_data(mpath, data)
    if warning:
        print(f"boundkit {a.command}: {warning}", file=sys.stderr, flush=True)
    _seed(a.seed)
    prov = provenance(sess, mpath, data, **extra)
    if warning:
        prov["evaluated_on_training_data"] = True
    sess.provenance = prov  # a cluster run records its reused shards here
    return Inputs(model, mpath, x, data.y, data.indices, device, prov)


# ------------------------------------------------------------------------------ documents
def certificate_doc(certs: dict[str, Any], y: Any, indices: Any, meta: dict) -> dict[str, Any]:
    """A ``kind: certify`` results document."""
    first = next(iter(certs.values()))
    pred = first.label.cpu().numpy()
    y_np = None if y is None else y.cpu().numpy()
    traces = {}
    for m, c in certs.items():
        names = list(c.trace)
        traces[m] = {"nodes": names, "ops": [c.node_ops.get(k, "") for k in names],
                     "values": [c.trace[k].cpu().tolist() for k in names]}
    summary: dict[str, Any] = {"n": len(first), "methods": {}}
    if y_np is not None:
        summary["accuracy"] = float((pred == y_np).mean())
    for m, c in certs.items():
        summary["methods"][m] = {"median_radius": median(c.radius.cpu().numpy()),
                                 "min_radius": float(c.radius.min()),
                                 "sound": is_guarantee(m),
                                 # samples whose radius is not (only) the method's bound,
                                 # e.g. n_outside_box (Certificate.reasons())
                                 **{k: int(v) for k, v in c.summary().items()
                                    if k.startswith("n_") and k != "n" and v}}
    return {
        "kind": "certify",
        "meta": meta,
        "samples": {
            "index": [int(i) for i in indices],
            "label": None if y_np is None else y_np.tolist(),
            "prediction": pred.tolist(),
            "radius": {m: c.radius.cpu().tolist() for m, c in certs.items()},
            "status": {m: c.to_dict()["status"] for m, c in certs.items()},
            "attack_norm": {},
        },
        "traces": traces,
        "summary": summary,
    }


def attack_doc(res: Any, y: Any, indices: Any, meta: dict) -> dict[str, Any]:
    """A ``kind: attack`` results document."""
    pred = res.label.cpu().numpy()
    y_np = None if y is None else y.cpu().numpy()
    summary: dict[str, Any] = {
        "n": len(res),
        "attack": res.method,
        "attack_success_rate": res.success_rate(),
        "median_attack_norm": median(res.norm.cpu().numpy()[res.success.cpu().numpy()]),
        "attack_missing": {o.value: c for o, c in res.missing().items()},
        "seconds": res.seconds,
    }
    if y_np is not None:
        summary["accuracy"] = float((pred == y_np).mean())
    return {
        "kind": "attack",
        "meta": meta,
        "samples": {
            "index": [int(i) for i in indices],
            "label": None if y_np is None else y_np.tolist(),
            "prediction": pred.tolist(),
            "radius": {},
            "attack_norm": {res.method: res.norm.cpu().tolist()},
            "attack_success": res.success.cpu().tolist(),
            "found_by": list(res.found_by),
            "attack_outcome": [o.value for o in res.outcome or []],
        },
        "summary": summary,
    }


#: ``--method auto``: ``sound`` and the tightest guarantee that fits ``--time-budget``
AUTO = "auto"
#: the demo's per-sample time budget for ``auto`` (it stays about a minute on 2 cores)
DEMO_TIME_BUDGET = 0.05


def _methods(arg: str) -> tuple[str, ...]:
    return ("sound", "peck2017") if arg == "both" else (arg,)


def _time_budget(a: argparse.Namespace) -> float:
    from boundkit.validate import check_positive

    value = check_positive("--time-budget", a.time_budget, maximum=3600.0)
    assert value is not None
    return value


def _resolve_auto(sess: Session, model: Any, x: Any, methods: tuple[str, ...],
                  time_budget: float) -> tuple[tuple[str, ...], dict[str, Any], dict[str, Any]]:
    """``methods`` with ``auto`` replaced by ``sound`` and the method
    :func:`boundkit.bounds.choose.tightest_affordable` picks (``bab`` only off the cluster:
    its options do not travel there), the options to pass it, and the choice's record."""
    if AUTO not in methods:
        return methods, {}, {}
    from boundkit.bounds.choose import tightest_affordable

    choice = tightest_affordable(model, x, time_budget, device=sess.args.device,
                                 allow_bab=not getattr(sess.args, "cluster", None))
    out: list[str] = []
    for m in methods:
        for r in (("sound", choice.method) if m == AUTO else (m,)):
            if r not in out:
                out.append(r)
    sess.say(f"  --method auto: {choice.method} ({choice.reason})")
    return tuple(out), {choice.method: choice.options}, choice.to_dict()


def _summary_table(summary: dict[str, Any]) -> list[str]:
    lines = [f"  samples: {summary.get('n')}"]
    if "accuracy" in summary:
        lines.append(f"  accuracy on these samples: {summary['accuracy']:.1%}")
    for m, d in summary.get("methods", {}).items():
        tag = "" if d.get("sound", True) else "  (not a guarantee)"
        line = f"  {m:>9}: median certified radius {d['median_radius']:.4g}"
        if d.get("median_ratio") is not None and not math.isnan(d.get("median_ratio", math.nan)):
            line += f", median radius/attack {d['median_ratio']:.3g}"
        lines.append(line + tag)
    if summary.get("attack"):
        lines.append(f"  attack {summary['attack']}: success {summary['attack_success_rate']:.1%},"
                     f" median norm {summary['median_attack_norm']:.4g}")
        missing = summary.get("attack_missing") or {}
        if missing:
            why = ", ".join(f"{k}: {v}" for k, v in missing.items())
            lines.append(f"  samples without an upper end (no adversarial example): "
                         f"{sum(missing.values())} ({why})")
    if "soundness_bugs" in summary:
        lines.append(f"  soundness violations: {summary['soundness_bugs']}  "
                     f"(peck2017 violations, expected: {summary['expected_violations']})")
    if "distance_known" in summary:
        lines.append(f"  distance known to {summary['distance_known_rtol']:.1%} (certificate "
                     f"meets attack): {summary['distance_known']} of {summary.get('n')}")
    return lines


def _run_crosscheck(sess: Session, model: Any, x: Any, y: Any, idx: Any, methods, attack: str,
                    budget: int | None, exact: bool, desc: str, meta: dict,
                    path: str | None = None, reference: Any = None,
                    time_budget: float = 1.0) -> Any:
    from boundkit.crosschecking import crosscheck

    methods, method_options, choice = _resolve_auto(sess, model, x, tuple(methods), time_budget)
    if choice:
        meta = {**meta, "method_choice": choice}
    if getattr(sess.args, "cluster", None):
        from boundkit.distributed.cli import cluster_crosscheck

        res = cluster_crosscheck(sess, path, x, y, idx, methods, attack, budget, exact, desc)
        res.meta.update(meta)
        return res
    n = x.shape[0]
    total = n * (len(methods) + 1 + int(exact))
    with sess.bar(total, desc) as bar:
        res = crosscheck(
            model, x, methods=methods, attack=attack, attack_budget=budget, y=y,
            device=sess.args.device, exact=exact, indices=idx, seed=sess.args.seed,
            progress=lambda stage, k: (bar.set_postfix_str(stage), bar.update(k)),
            chunk_size=64, reference=reference, method_options=method_options,
        )
    res.meta.update(meta)
    return res


def _report_violations(res: Any) -> int:
    for v in res.violations:
        if v.bug:
            print(f"boundkit: {v.describe()}", file=sys.stderr, flush=True)
    return EXIT_VIOLATION if res.has_bug else EXIT_OK


class _Ticks:
    """A progress bar's ticks for one method's run, in samples: the method's own
    ``progress`` option where it has one (``bab``: as its time budget is spent), the rest
    when it returns."""

    def __init__(self, bar: Any, method: str) -> None:
        self.bar, self.method, self.done = bar, method, 0.0

    def option(self, method: str) -> dict[str, Any]:
        """``{"progress": callback}`` where ``method`` takes the option, else ``{}``."""
        from boundkit.bounds.method import get_method

        return {"progress": self.tick} if "progress" in get_method(method).options() else {}

    def tick(self, k: float) -> None:
        self.done += k
        self.bar.set_postfix_str(self.method)
        self.bar.update(k)

    def rest(self, n: int) -> None:
        """Complete the method's ``n`` samples."""
        if n > self.done:
            self.bar.update(n - self.done)
        self.done = float(n)


def _budget_option(method: str, time_budget: float | None) -> dict[str, Any]:
    """``{"time_budget": seconds}`` for a method with that option when one was given
    (checked: > 0, at most an hour), else ``{}``."""
    from boundkit.bounds.method import get_method
    from boundkit.validate import check_positive

    if time_budget is None or "time_budget" not in get_method(method).options():
        return {}
    return {"time_budget": check_positive("--time-budget", time_budget, maximum=3600.0)}


# ------------------------------------------------------------------------------ commands
def cmd_certify(sess: Session) -> int:
    from boundkit.bounds.engine import certify
    from boundkit.report.io import write_json

    a = sess.args
    inp = preamble(sess, a.model, outputs=[(a.out, False)], method=a.method)
    x = inp.x
    certs = {}
    if a.cluster:
        from boundkit.distributed.cli import cluster_certify

        certs = cluster_certify(sess, x, _methods(a.method))
    else:
        with sess.bar(x.shape[0] * len(_methods(a.method)), "certify") as bar:
            for m in _methods(a.method):
                t0 = time.perf_counter()
                done = _Ticks(bar, m)  # bab moves the bar as its budget is spent
                certs[m] = certify(inp.model, x, m, device=inp.device, **done.option(m),
                                   **_budget_option(m, a.time_budget))
                bar.set_postfix_str(f"{m} {time.perf_counter() - t0:.1f}s")
                done.rest(x.shape[0])
    meta = {"model": a.model, "data": a.data, "split": inp.provenance["split"],
            "provenance": inp.provenance}
    doc = certificate_doc(certs, inp.y, inp.indices, meta)
    out = write_json(doc, a.out)
    sess.say(f"certified {x.shape[0]} samples of {a.data} with {', '.join(certs)}:",
             *_summary_table(doc["summary"]), f"  results: {out}")
    sess.emit({"results": str(out), **doc["summary"]})
    return EXIT_OK


def cmd_attack(sess: Session) -> int:
    from boundkit.attacks import attack
    from boundkit.attacks.base import AttackResult
    from boundkit.report.io import write_json

    a = sess.args
    inp = preamble(sess, a.model, outputs=[(a.out, False)], method=a.attack, budget=a.budget)
    x = inp.x
    parts = []
    if a.cluster:
        from boundkit.distributed.cli import cluster_attack

        parts.append(cluster_attack(sess, x))
    else:
        with sess.bar(x.shape[0], f"attack {a.attack}") as bar:
            for s in range(0, x.shape[0], 64):
                # best: every sample loaded is a start point for the others
                parts.append(attack(inp.model, x[s : s + 64], a.attack, budget=a.budget,
                                    device=inp.device, seed=a.seed,
                                    reference=x if a.attack == "best" else None))
                bar.update(parts[-1].norm.shape[0])
    res = AttackResult.concat(parts)
    doc = attack_doc(res, inp.y, inp.indices, {"model": a.model, "data": a.data,
                                               "split": inp.provenance["split"],
                                               "provenance": inp.provenance})
    out = write_json(doc, a.out)
    sess.say(f"attacked {x.shape[0]} samples of {a.data}:", *_summary_table(doc["summary"]),
             f"  results: {out}")
    sess.emit({"results": str(out), **doc["summary"]})
    return EXIT_OK


def cmd_crosscheck(sess: Session) -> int:
    from boundkit.report import render_report, write_json

    a = sess.args
    inp = preamble(sess, a.model, outputs=[(a.out, True)], method=a.method, attack=a.attack,
                   budget=a.budget, exact=a.exact)
    meta = {"model": a.model, "data": a.data, "split": inp.provenance["split"],
            "attack": a.attack, "budget": a.budget if a.budget is not None else "default",
            "provenance": inp.provenance}
    res = _run_crosscheck(sess, inp.model, inp.x, inp.y, inp.indices, _methods(a.method),
                          a.attack, a.budget, a.exact, "crosscheck", meta, path=a.model,
                          time_budget=_time_budget(a))
    out = Path(a.out)
    with staged_dir(out, inp.provenance) as tmp:
        write_json(res, tmp / "results.json")
        paths = render_report(tmp / "results.json", tmp) if not a.no_report else {}
    js = out / "results.json"
    sess.say(f"cross-checked {len(res)} samples of {a.data}:", *_summary_table(res.summary()),
             f"  results: {js}" + (f", report: {out / paths['html'].name}" if paths else ""))
    sess.emit({"results": str(js), **res.summary(),
               "violations": [v.to_dict() for v in res.violations]})
    return _report_violations(res)


def _compare_doc(entries: list[tuple[str, Any, float]]) -> dict[str, Any]:
    """The ``compare`` document: models ranked by the median of each sample's best
    certificate (the largest radius of its guarantee methods: every one is a certificate, so
    their maximum is one), each adjacent pair labelled "decided by proof" or "undecided at
    this budget" (:mod:`boundkit.ranking`), with the per-sample fractions behind each
    label."""
    import numpy as np

    from boundkit.ranking import ModelBounds, rank

    def best(res: Any) -> np.ndarray:
        radii = [np.asarray(r) for m, r in res.radius.items() if is_guarantee(m)]
        return np.maximum.reduce(radii) if radii else np.full(len(res), np.nan)

    bounds = {name: ModelBounds(name, best(res), np.asarray(res.attack_norm))
              for name, res, _ in entries}
    order, verdicts = rank(list(bounds.values()))
    byname = {name: (res, acc) for name, res, acc in entries}
    models = []
    for b in order:
        res, acc = byname[b.name]
        s = res.summary()
        models.append({
            "name": b.name,
            "accuracy": acc,
            "median_radius": {m: d["median_radius"] for m, d in s["methods"].items()},
            "median_ratio": {m: d["median_ratio"] for m, d in s["methods"].items()},
            "median_attack_norm": s["median_attack_norm"],
            "median_best_certified": b.median_certified,
            "median_interval": [b.median_certified, b.median_attack],
            "attack_success_rate": s["attack_success_rate"],
            "attack_missing": s.get("attack_missing", {}),
            "soundness_bugs": s["soundness_bugs"],
        })
    return {
        "kind": "compare",
        "rank_by": "median of each sample's best certified radius, then median attack norm",
        "models": models,
        "ranking": [v.to_dict() for v in verdicts],
        "results": {b.name: byname[b.name][0].to_dict() for b in order},
    }


def _compare_lines(doc: dict[str, Any]) -> list[str]:
    lines = [f"{'rank':>4}  {'model':<24} {'accuracy':>8}  {'certified (median)':>30}  "
             f"{'attack (median)':>15}"]
    verdicts = doc.get("ranking", [])
    for r, m in enumerate(doc["models"], 1):
        cert = ", ".join(f"{k} {v:.3g}" for k, v in m["median_radius"].items())
        lines.append(f"{r:>4}  {m['name']:<24} {m['accuracy']:>8.1%}  {cert:>30}  "
                     f"{m['median_attack_norm']:>15.4g}")
        if r - 1 < len(verdicts):
            v = verdicts[r - 1]
            lines.append(f"{'':>6}{'above the next: ' + v['label']:<40} (per sample: "
                         f"{v['samples_decided']:.0%} proven, {v['samples_reversed']:.0%} "
                         "proven the other way)")
    return lines


def cmd_compare(sess: Session) -> int:
    from boundkit.models.train import accuracy
    from boundkit.report import render_report, write_json
    from boundkit.validate import check_int

    a = sess.args
    check_int("--n", a.n, allow_none=True)
    data = load_data_arg(a.data, a.data_root, a.split, None)
    n = data.x.shape[0] if a.n is None else min(a.n, data.x.shape[0])
    idx = data.indices[:n]
    names = [Path(p).stem for p in a.models]
    if len(set(names)) != len(names):
        names = [f"{i}:{nm}" for i, nm in enumerate(names)]
    inputs = [Path(p) for p in a.models] + ([data.file] if data.file is not None else [])
    check_outputs(Path(a.out), inputs, is_dir=True, data_home=data.home)
    entries = []
    provs = {}
    bad = False
    for name, path in zip(names, a.models):
        inp = preamble(sess, path, data, method=a.method, attack=a.attack, budget=a.budget)
        acc = accuracy(inp.model, inp.x, inp.y)
        provs[name] = inp.provenance
        res = _run_crosscheck(sess, inp.model, inp.x[:n], inp.y[:n], idx,
                              _methods(a.method), a.attack, a.budget, False, name,
                              {"model": path, "data": a.data, "split": a.split,
                               "provenance": inp.provenance}, path=path,
                              reference=inp.x,  # the whole split: starts for `best`
                              time_budget=_time_budget(a))
        bad |= res.has_bug
        _report_violations(res)
        entries.append((name, res, acc))
    doc = _compare_doc(entries)
    doc["meta"] = {"provenance": {"models": provs}}
    out = Path(a.out)
    with staged_dir(out, {"command": "compare", "models": provs}) as tmp:
        write_json(doc, tmp / "results.json")
        paths = render_report(tmp / "results.json", tmp) if not a.no_report else {}
    js = out / "results.json"
    sess.say(f"compared {len(entries)} models on {len(idx)} samples of {a.data} "
             f"(accuracy on the whole {a.split} split):", *_compare_lines(doc),
             f"  results: {js}" + (f", report: {out / paths['html'].name}" if paths else ""))
    sess.emit({"results": str(js), "rank_by": doc["rank_by"], "models": doc["models"],
               "ranking": doc["ranking"]})
    return EXIT_VIOLATION if bad else EXIT_OK


def cmd_train(sess: Session) -> int:
    from boundkit.errors import BadArgumentError, OutputPathError
    from boundkit.models import ZOO
    from boundkit.validate import check_device, check_int

    a = sess.args
    if a.name not in ZOO:
        raise BadArgumentError(f"unknown zoo model {a.name!r}; known: {', '.join(sorted(ZOO))}")
    check_int("--epochs", a.epochs, minimum=0, allow_none=True)
    device = check_device(a.device)
    entry = ZOO[a.name]
    target = Path(a.out) / f"{a.name}.safetensors"
    if Path(a.out).exists() and not Path(a.out).is_dir():
        raise OutputPathError(f"--out {a.out} exists and is not a directory")
    _seed(a.seed)
    t0 = time.perf_counter()
    if a.data is None or a.data.lower() == entry.dataset:
        from boundkit.models.train import train_zoo_model

        path = train_zoo_model(a.name, data_root=a.data_root, epochs=a.epochs, seed=a.seed,
                               out_dir=a.out, device=device,
                               verbose=not (sess.quiet or sess.json))
    else:
        from boundkit.models import build_model, save_model
        from boundkit.models.train import accuracy, train_model

        train = load_data_arg(a.data, a.data_root, "train", None)
        if train.file is not None and train.file.resolve() in _input_files([target]):
            raise OutputPathError(f"--out {a.out} would overwrite the data file {train.file}")
        test = train if train.file is not None else load_data_arg(a.data, a.data_root, "test",
                                                                  None)
        model = build_model(a.name, seed=a.seed)
        _, x = _model_for_data(model, train.x)
        epochs = a.epochs if a.epochs is not None else entry.epochs
        train_model(model, x, train.y, epochs=epochs, lr=entry.lr,
                    batch_size=entry.batch_size, seed=a.seed, device=device)
        model.cpu()
        meta = {"dataset": a.data, "epochs": epochs, "seed": a.seed,
                "trained_on": {k: v for k, v in train.provenance.items() if k != "n"},
                "train_accuracy": accuracy(model, x, train.y),
                "test_accuracy": accuracy(model, test.x, test.y) if test is not train
                else math.nan}
        meta["trained_on"]["split"] = "train"
        path = save_model(model, target, arch=a.name, meta=meta)
    side = json.loads(Path(path).with_suffix(".json").read_text())
    meta = side.get("meta", {})
    acc = meta.get("test_accuracy")  # null in the sidecar: not measured (NaN)
    sess.say(f"trained {a.name} in {time.perf_counter() - t0:.1f}s: test accuracy "
             f"{math.nan if acc is None else acc:.2%}", f"  weights: {path}")
    sess.emit({"path": str(path), **meta})
    return EXIT_OK


def cmd_report(sess: Session) -> int:
    from boundkit.report import read_json, render_report
    from boundkit.report.io import ResultsFileError

    a = sess.args
    p = Path(a.results)
    if not p.exists():
        raise ResultsFileError(f"no such results file: {p}")
    doc = read_json(p)
    check_outputs(Path(a.out), [p], is_dir=True)
    out = Path(a.out)
    with staged_dir(out, {"command": "report", "results": str(p), "results_sha256": sha256_of(p),
                          "source": (doc.get("meta") or {}).get("provenance")}) as tmp:
        paths = render_report(doc, tmp)
    paths = {k: out / v.relative_to(tmp) for k, v in paths.items()}
    sess.say(f"report for {p} ({doc['kind']}):", *[f"  {k}: {v}" for k, v in paths.items()])
    sess.emit({k: str(v) for k, v in paths.items()})
    return EXIT_OK


def cmd_demo(sess: Session) -> int:
    """Train small models on sklearn's digits, certify, attack, cross-check, report."""
    from boundkit.data import SPLIT_SEED
    from boundkit.validate import check_int

    a = sess.args
    for opt in ("n", "budget"):
        check_int(f"--{opt}", getattr(a, opt), allow_none=True)
    check_int("--epochs", a.epochs, minimum=0, allow_none=True)
    t_start = time.perf_counter()
    final = Path(a.out)
    check_outputs(final, [], is_dir=True)
    with staged_dir(final, provenance(sess, None, None, data="digits", split="test",
                                      split_seed=SPLIT_SEED)) as tmp:
        return _demo(sess, tmp, final, t_start)


def _demo(sess: Session, out: Path, final: Path, t_start: float) -> int:
    from boundkit.data import SPLIT_SEED, load_dataset
    from boundkit.models import ZOO, build_model, save_model
    from boundkit.models.train import accuracy, train_model
    from boundkit.report import render_report, write_json

    a = sess.args
    quick = a.quick
    n = a.n if a.n is not None else (100 if quick else None)
    budget = a.budget if a.budget is not None else (100 if quick else 300)
    names = ["digits_cnn"] if quick else ["digits_cnn", "digits_mlp"]
    _seed(a.seed)
    x_tr, y_tr = load_dataset("digits", None, "train")
    x_te, y_te = load_dataset("digits", None, "test")
    n = x_te.shape[0] if n is None else min(n, x_te.shape[0])
    sess.say(f"boundkit demo: scikit-learn digits (8x8), {x_tr.shape[0]} train / "
             f"{x_te.shape[0]} test images; cross-checking {n} test images "
             f"(attack budget {budget}){' [quick]' if quick else ''}")
    import numpy as np

    idx = np.arange(n)
    entries = []
    for name in names:
        entry = ZOO[name]
        epochs = a.epochs if a.epochs is not None else (10 if quick else entry.epochs)
        t0 = time.perf_counter()
        model = build_model(name, seed=a.seed)
        with sess.bar(1, f"train {name} ({epochs} epochs)") as bar:
            train_model(model, x_tr, y_tr, epochs=epochs, lr=entry.lr,
                        batch_size=entry.batch_size, seed=a.seed)
            bar.update(1)
        acc = accuracy(model, x_te, y_te)
        save_model(model, out / "models" / f"{name}.safetensors", arch=name,
                   meta={"dataset": "digits", "epochs": epochs, "seed": a.seed,
                         "trained_on": {"data": "digits", "split": "train",
                                        "split_seed": SPLIT_SEED},
                         "test_accuracy": acc})
        sess.say(f"  trained {name} ({entry.description}) in "
                 f"{time.perf_counter() - t0:.1f}s: test accuracy {acc:.1%}")
        meta = {"model": name, "data": "digits (scikit-learn)", "split": "test",
                "attack": "best", "budget": budget, "test_accuracy": round(acc, 4),
                "provenance": provenance(sess, out / "models" / f"{name}.safetensors", None,
                                         data="digits", split="test", split_seed=SPLIT_SEED,
                                         method="auto,peck2017", attack="best",
                                         budget=budget)}
        res = _run_crosscheck(sess, model, x_te[:n], y_te[:n], idx, (AUTO, "peck2017"),
                              "best", budget, False, f"crosscheck {name}", meta,
                              time_budget=DEMO_TIME_BUDGET)
        entries.append((name, res, acc))
    main_res = entries[0][1]
    js = write_json(main_res, out / "results.json")
    paths = render_report(js, out)
    cmp_paths: dict[str, Path] = {}
    doc = None
    if len(entries) > 1:
        doc = _compare_doc(entries)
        cjs = write_json(doc, out / "compare" / "results.json")
        cmp_paths = render_report(cjs, out / "compare")
    wall = time.perf_counter() - t_start
    s = main_res.summary()
    sess.say("", f"{names[0]} on {n} test images:", *_summary_table(s))
    if doc is not None:
        sess.say("", "model comparison (by the median of each sample's best certificate; "
                 "an order is decided only where the proofs say so):",
                 *_compare_lines(doc))
    html_path = final / paths["html"].relative_to(out)
    sess.say("", f"report: {html_path} (and report.md, results.csv, figures) in {final}",
             *([f"comparison: {final / cmp_paths['html'].relative_to(out)}"]
               if cmp_paths else []),
             f"demo wall time: {wall:.1f}s")
    sess.emit({"results": str(final / js.relative_to(out)), "report": str(html_path),
               "wall_seconds": wall, **s})
    code = EXIT_OK
    for _, res, _ in entries:
        code = max(code, _report_violations(res))
    return code


# ------------------------------------------------------------------------------ parser
def _common(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("general")
    g.add_argument("--quiet", "-q", action="store_true", help="no progress bars or text")
    g.add_argument("--json", action="store_true",
                   help="print a machine-readable JSON summary on stdout")
    g.add_argument("--device", default=None, help="torch device, e.g. cpu or cuda (default: "
                   "where the model is loaded, cpu)")
    g.add_argument("--threads", type=int, default=int(os.environ.get("BOUNDKIT_THREADS", 1)),
                   help="CPU threads for torch (default 1, or $BOUNDKIT_THREADS: small models "
                   "run fastest single-threaded, and much faster on a busy machine)")
    g.add_argument("--seed", type=int, default=0, help="random seed of the algorithms "
                   "(attacks, training initialisation); default 0. It never changes a data "
                   "set's train/test split, which is fixed by the data set")


def _data(p: argparse.ArgumentParser, required: bool = True) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--data", required=required, metavar="NAME|FILE",
                   help="data set name (mnist, cifar10, iris, wine, digits, spambase) or a "
                   ".npz/.pt file holding x (in [0, 1], NCHW for images) and y")
    g.add_argument("--data-root", default=os.environ.get("BOUNDKIT_DATA"), metavar="DIR",
                   help="where data sets live (default: $BOUNDKIT_DATA, else ~/.cache/boundkit)")
    g.add_argument("--split", default="test", choices=("train", "val", "test", "all"),
                   help="split of a named data set (default test)")
    g.add_argument("--n", type=int, default=None, help="use the first N samples (default all)")


def _model(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", required=True, metavar="FILE",
                   help="model file: .safetensors with its sidecar .json (as written by "
                   "'boundkit train'), a .pt state dict with --arch, .onnx, or TorchScript "
                   "(only with --trust-code)")
    g.add_argument("--arch", default=None, metavar="NAME",
                   help="zoo architecture of a state dict (see boundkit.models.ZOO)")
    _trust(g)
    _input_opts(g)


def _trust(g: Any) -> None:
    g.add_argument("--trust-code", action="store_true",
                   help="allow model files that carry their own code (TorchScript archives): "
                   "loading one RUNS code written by the file's author, with your rights. Only "
                   "for files you trust; never needed for .safetensors, state dicts or .onnx")


def _input_opts(g: Any) -> None:
    g.add_argument("--normalize", default=None, metavar="MEAN,STD",
                   help="prepend (x - mean) / std to the model, so that certificates and "
                   "attacks are in the data's [0, 1] space: 'mean,std' or C means then C stds")
    g.add_argument("--layout", default="nchw", choices=("nchw", "nhwc"),
                   help="input layout of an .onnx file (nhwc: channels-last, e.g. TensorFlow "
                   "exports; the data stays NCHW)")
    g.add_argument("--onnx-max-tensor-mib", type=float, default=None, metavar="MIB",
                   help="largest tensor an .onnx import may decode, fold or build (default "
                   "128, or 4x the file's size)")
    g.add_argument("--onnx-max-total-mib", type=float, default=None, metavar="MIB",
                   help="memory budget of a whole .onnx import (default 384, or 8x the "
                   "file's size)")


def _auto_method(p: argparse.ArgumentParser) -> None:
    p.add_argument("--method", default=AUTO, choices=(*method_names(), "both", AUTO),
                   help="certification method(s): auto (default) runs sound and the tightest "
                   "guarantee that fits --time-budget per sample (bab, crown or sound: "
                   "docs/user-guide.md); both runs sound and peck2017")
    p.add_argument("--time-budget", type=float, default=1.0, metavar="SECONDS",
                   help="seconds per sample the auto choice may spend (default 1)")


def _attack_opts(p: argparse.ArgumentParser) -> None:
    from boundkit.attacks import ATTACKS

    p.add_argument("--attack", default="best", choices=sorted(ATTACKS),
                   help="minimum-norm attack (default best: an ensemble keeping the smallest "
                   "verified perturbation per sample)")
    p.add_argument("--budget", type=int, default=None,
                   help="gradient steps per sample (per member for best); default: the "
                   "attacks' own settings (strong but slow)")


def _cluster(p: argparse.ArgumentParser) -> None:
    from boundkit.distributed.cli import add_cluster_args

    add_cluster_args(p)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``boundkit`` command."""
    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="boundkit",
        description="How far must an input move (L2) before a classifier changes its "
        "prediction? Certified lower bounds, attack upper bounds, and a cross-check.",
        epilog=MAIN_EPILOG, formatter_class=fmt,
    )
    from boundkit import __version__

    parser.add_argument("--version", action="version", version=f"boundkit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    _io_parsers(sub, fmt)
    _check_parsers(sub, fmt)
    _other_parsers(sub, fmt)
    return parser


def _io_parsers(sub: Any, fmt: type[argparse.HelpFormatter]) -> None:
    """The ``certify`` and ``attack`` commands."""
    p = sub.add_parser(
        "certify", help="certified lower bounds on the L2 radius", formatter_class=fmt,
        description="Certify every sample: a radius r such that no perturbation of L2 norm "
        "< r changes the prediction (method sound), or the thesis's formula (peck2017, not "
        "a guarantee).",
        epilog="example:\n  boundkit certify --model runs/digits_cnn.safetensors --data digits"
        " --n 200 --method both --out cert.json\n\nprints the median radius per method and "
        "writes per-sample radii and per-layer traces to the JSON file.")
    _model(p)
    _data(p)
    p.add_argument("--method", default="sound",
                   choices=(*method_names(), "both"),
                   help="certification method (default sound; both runs sound and peck2017)")
    p.add_argument("--time-budget", type=float, default=None, metavar="SECONDS",
                   help="seconds per sample for methods with a time budget (bab; default: "
                   "the method's own, 2 s for bab)")
    p.add_argument("--out", default="certify.json", help="results JSON (default certify.json)")
    _common(p)
    _cluster(p)
    p.set_defaults(func=cmd_certify)

    p = sub.add_parser(
        "attack", help="minimum-norm adversarial examples (upper bounds)", formatter_class=fmt,
        description="Search, per sample, the smallest L2 perturbation that changes the "
        "prediction; every success is verified by re-running the model.",
        epilog="example:\n  boundkit attack --model runs/digits_cnn.safetensors --data digits "
        "--n 100 --attack ddn --budget 200 --out attack.json")
    _model(p)
    _data(p)
    _attack_opts(p)
    p.add_argument("--out", default="attack.json", help="results JSON (default attack.json)")
    _common(p)
    _cluster(p)
    p.set_defaults(func=cmd_attack)


def _check_parsers(sub: Any, fmt: type[argparse.HelpFormatter]) -> None:
    """The ``crosscheck`` and ``compare`` commands."""
    p = sub.add_parser(
        "crosscheck", help="certify + attack the same samples and compare (the main job)",
        formatter_class=fmt,
        description="Certify and attack the same samples; per sample, the ratio certified "
        "radius / attack norm (<= 1 for a sound bound). A sound radius above a float64-"
        "verified adversarial norm is a bug: exit status 3, with sample, method and layer.",
        epilog="example:\n  boundkit crosscheck --model runs/digits_cnn.safetensors --data "
        "digits --n 100 --budget 200 --out xcheck/\n\nwrites xcheck/results.json, results.csv, "
        "report.md, report.html and figures (scatter, cdf, waterfall).")
    _model(p)
    _data(p)
    _auto_method(p)
    _attack_opts(p)
    p.add_argument("--exact", action="store_true",
                   help="also compute the exact radius (small ReLU networks only)")
    p.add_argument("--no-report", action="store_true", help="write results.json only")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    _common(p)
    _cluster(p)
    p.set_defaults(func=cmd_crosscheck)

    p = sub.add_parser(
        "compare", help="rank several models by certified and empirical robustness",
        formatter_class=fmt,
        description="Cross-check several models on the same samples and rank them by median "
        "certified radius (Peck 2017's model selection), with accuracy and attack norms.",
        epilog="example:\n  boundkit compare --models runs/digits_cnn.safetensors "
        "runs/digits_mlp.safetensors --data digits --n 100 --budget 100 --out cmp/")
    p.add_argument("--models", nargs="+", required=True, metavar="FILE",
                   help="model files (same input shape)")
    p.add_argument("--arch", default=None, metavar="NAME",
                   help="zoo architecture for state-dict files without a sidecar")
    _trust(p)
    _input_opts(p)
    _data(p)
    _auto_method(p)
    _attack_opts(p)
    p.add_argument("--no-report", action="store_true", help="write results.json only")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    _common(p)
    _cluster(p)
    p.set_defaults(func=cmd_compare)


def _other_parsers(sub: Any, fmt: type[argparse.HelpFormatter]) -> None:
    """The ``train``, ``report`` and ``demo`` commands."""
    p = sub.add_parser(
        "train", help="train a zoo model and save it (safetensors + sidecar)",
        formatter_class=fmt,
        description="Train a model of boundkit's zoo with Adam (seeded, deterministic on CPU).",
        epilog="example:\n  boundkit train digits_cnn --epochs 20 --out runs/\n"
        "  boundkit train mnist_mlp --data mnist --data-root ../shared/data --out runs/")
    p.add_argument("name", help="zoo architecture (e.g. digits_cnn, digits_mlp, see "
                   "boundkit.models.ZOO)")
    p.add_argument("--data", default=None, help="data set (default: the architecture's own)")
    p.add_argument("--data-root", default=os.environ.get("BOUNDKIT_DATA"), metavar="DIR",
                   help="where data sets live (default: $BOUNDKIT_DATA)")
    p.add_argument("--epochs", type=int, default=None, help="default: the zoo entry's")
    p.add_argument("--out", default="runs", metavar="DIR", help="output directory (runs)")
    _common(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "report", help="render a results JSON as CSV, figures, Markdown and HTML",
        formatter_class=fmt,
        epilog="example:\n  boundkit report xcheck/results.json --out xcheck-report/")
    p.add_argument("results", help="a results.json written by certify, attack, crosscheck or "
                   "compare")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    _common(p)
    p.set_defaults(func=cmd_report)

    p = sub.add_parser(
        "demo", help="the whole pipeline on scikit-learn's digits (no download)",
        formatter_class=fmt,
        description="Train digits_cnn (and digits_mlp) on scikit-learn's bundled 8x8 digits, "
        "certify with sound and peck2017, attack, cross-check, and write the report.",
        epilog="example:\n  boundkit demo --quick --out /tmp/bk-demo   # ~1 minute on 2 cores")
    p.add_argument("--out", default="boundkit-demo", metavar="DIR",
                   help="output directory (default boundkit-demo)")
    p.add_argument("--quick", action="store_true",
                   help="one model, 100 test images, 10 epochs, attack budget 100")
    p.add_argument("--n", type=int, default=None, help="test images to cross-check")
    p.add_argument("--epochs", type=int, default=None, help="training epochs")
    p.add_argument("--budget", type=int, default=None, help="attack budget")
    _common(p)
    p.set_defaults(func=cmd_demo)



def _one_line(exc: BaseException) -> str:
    msg = str(exc).strip().splitlines()
    text = msg[0] if msg else type(exc).__name__
    if isinstance(exc, OSError) and exc.strerror and exc.filename:
        text = f"{exc.filename}: {exc.strerror}"
    return text


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``boundkit`` console script; returns the exit status.

    Errors boundkit recognises (:class:`~boundkit.errors.BoundkitError`: bad files, data,
    arguments, devices) and operating-system errors on the user's paths (permission denied,
    read-only or full disk) print one line and exit 2; Ctrl-C, at any point, exits 130 with
    nothing half-written. Anything else is a bug in boundkit and keeps its traceback.
    """
    argv = list(argv) if argv is not None else sys.argv[1:]
    command = next((a for a in argv if not a.startswith("-")), "")
    try:
        return _main(argv)
    except KeyboardInterrupt:
        print(f"boundkit {command}: interrupted; no results were written (an existing --out "
              "is left as it was)".replace("boundkit :", "boundkit:"), file=sys.stderr,
              flush=True)
        return EXIT_INTERRUPTED


def _main(argv: list[str]) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, usage errors
        return int(exc.code) if isinstance(exc.code, int) else EXIT_BAD_INPUT
    from boundkit.errors import BoundkitError

    sess = Session(args, argv)
    try:
        if getattr(args, "threads", None) is not None:
            import torch

            from boundkit.validate import check_int

            check_int("--threads", args.threads, maximum=4096)
            torch.set_num_threads(args.threads)
        return int(args.func(sess))
    except (BoundkitError, OSError) as exc:
        print(f"boundkit {args.command}: error: {_one_line(exc)}", file=sys.stderr, flush=True)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
