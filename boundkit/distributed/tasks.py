"""What one shard computes, in a worker, and how shard results are merged.

A shard task receives the job (:class:`Job`), the model (:class:`ModelSource`: the model
file's bytes and SHA-256, or a module), the whole data tensors (shared through Ray's object
store, so each node fetches them once) and its range ``[start, stop)``. It runs exactly the
calls a local run makes on those samples (see :mod:`boundkit.distributed.plan`) and returns
a *payload*: a dict of CPU tensors, numbers, strings and lists, as stored in a shard file.
The merge functions turn the payloads of consecutive shards back into the objects a local
run produces (:class:`~boundkit.Certificate`, :class:`~boundkit.AttackResult`,
:class:`~boundkit.CrosscheckResult`).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

# torch imports sympy lazily, on the first autograd call (torch.autograd._make_grads ->
# torch.fx.experimental.symbolic_shapes). In a fresh Ray worker that first import could
# race with another thread's and leave a partially initialised sympy ("module 'sympy' has
# no attribute 'core'"); importing it here, when the worker loads this module and before
# any task runs, makes it complete once.
import torch.fx.experimental.symbolic_shapes  # noqa: F401
from torch import nn

from boundkit.errors import ModelFileError

__all__ = [
    "Job",
    "ModelSource",
    "check_payload",
    "merge_attack",
    "merge_certificates",
    "merge_crosscheck",
    "run_shard",
]

KINDS = ("certify", "attack", "crosscheck")


@dataclass(frozen=True)
class Job:
    """Everything a shard needs besides the model and the data.

    ``kind``: ``certify`` (every method of ``methods``), ``attack`` (``attack`` on chunks of
    ``chunk`` samples, each call seeded with ``seed``, as the command line does) or
    ``crosscheck`` (:func:`boundkit.crosscheck` with ``chunk_size=chunk``); with
    ``reference``, the ``best`` attack of an ``attack`` job gets the whole batch as reference
    data, as the command line's attack does (a crosscheck always does). ``methods``
    holds registered names or :class:`~boundkit.bounds.method.Method` objects (shipped to
    the workers by value); ``options`` the certificate methods' options (e.g. ``box``), as
    sorted ``(name, value)`` pairs.
    """

    kind: str
    methods: tuple[Any, ...] = ("sound",)
    attack: str = "best"
    budget: int | None = None
    seed: int = 0
    device: str | None = None
    chunk: int = 64
    exact: bool = False
    box: tuple[float, float] | None = (0.0, 1.0)
    threads: int = 1
    options: tuple[tuple[str, Any], ...] = ()
    reference: bool = False

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown job kind {self.kind!r}; one of {KINDS}")
        if self.chunk < 1:
            raise ValueError(f"chunk must be positive, got {self.chunk}")

    @property
    def cuda(self) -> bool:
        return self.device is not None and torch.device(self.device).type == "cuda"

    @property
    def method_names(self) -> tuple[str, ...]:
        return tuple(m if isinstance(m, str) else m.name for m in self.methods)

    def describe(self) -> dict[str, Any]:
        """The options as a JSON-ready dict (part of the job's key): a Method object is
        described by its name, class and state (``repr`` of its ``__dict__``)."""
        out = {f.name: getattr(self, f.name) for f in fields(self)
               if f.name not in ("threads", "methods", "options")}
        out["methods"] = [m if isinstance(m, str) else
                          f"{m.name}:{type(m).__module__}.{type(m).__qualname__}:"
                          f"{sorted(vars(m).items())!r}" for m in self.methods]
        out["options"] = [[k, repr(v)] for k, v in self.options]
        return out


# ------------------------------------------------------------------------------ the model
_MODELS: dict[tuple[str, str], nn.Module] = {}


@dataclass
class ModelSource:
    """The model, as shipped to the workers: a model file's bytes (with its sidecar) and
    their SHA-256, or an in-memory module (Python API) with the SHA-256 of its state."""

    sha256: str
    name: str = "model"
    arch: str | None = None
    blob: bytes | None = None
    sidecar: bytes | None = None
    module: nn.Module | None = None

    @classmethod
    def from_file(cls, path: str | os.PathLike, arch: str | None = None) -> ModelSource:
        """Read a model file (and its sidecar ``.json``, if any) once, on the driver."""
        from boundkit.models.io import sidecar_path

        p = Path(path)
        if not p.is_file():
            raise ModelFileError(f"no such model file: {p}")
        blob = p.read_bytes()
        side = sidecar_path(p)
        sidecar = side.read_bytes() if side.is_file() and side != p else None
        return cls(sha256=_digest(blob, sidecar, arch), name=p.name, arch=arch, blob=blob,
                   sidecar=sidecar)

    @classmethod
    def from_module(cls, model: nn.Module) -> ModelSource:
        """An in-memory model; its key hashes its class, structure and state."""
        from boundkit.distributed.store import sha256_tensors

        sd = model.state_dict()
        h = hashlib.sha256(f"{type(model).__module__}.{type(model).__qualname__}\n{model!r}\n"
                           f"{list(sd)}".encode())
        h.update(sha256_tensors(*sd.values()).encode())
        return cls(sha256=h.hexdigest(), name=type(model).__name__, module=model)

    def load(self, device: str | None) -> nn.Module:
        """The model on ``device``, loaded once per worker process (the bytes' hash is
        checked before the first load)."""
        key = (self.sha256, str(device))
        if key in _MODELS:
            return _MODELS[key]
        if self.module is not None:
            model = self.module if device is None else self.module.to(device)
        else:
            if self.blob is None or _digest(self.blob, self.sidecar, self.arch) != self.sha256:
                raise ModelFileError(f"{self.name}: the model bytes received by the worker do "
                                     "not match their SHA-256 (corrupted in transfer)")
            from boundkit.models.io import load_model, sidecar_path

            with tempfile.TemporaryDirectory(prefix=f"boundkit-model-{self.sha256[:12]}-") as d:
                path = Path(d) / self.name
                path.write_bytes(self.blob)
                if self.sidecar is not None:
                    sidecar_path(path).write_bytes(self.sidecar)
                model = load_model(path, arch=self.arch, device=device)
        _MODELS.clear()  # one model per worker process at a time
        _MODELS[key] = model
        return model


def _digest(blob: bytes, sidecar: bytes | None, arch: str | None) -> str:
    h = hashlib.sha256(blob)
    h.update(b"\0sidecar\0" + (sidecar or b""))
    h.update(b"\0arch\0" + (arch or "").encode())
    return h.hexdigest()


# ------------------------------------------------------------------------------ payloads
def _cpu(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.detach().cpu().clone()


def certificate_payload(c: Any) -> dict[str, Any]:
    return {
        "radius": _cpu(c.radius), "label": _cpu(c.label), "runner_up": _cpu(c.runner_up),
        "margin": _cpu(c.margin), "trace": {k: _cpu(v) for k, v in c.trace.items()},
        "status": _cpu(c.status), "model_label": _cpu(c.model_label),
        "is_guarantee": bool(c.is_guarantee),
        "method": c.method, "node_ops": dict(c.node_ops),
        "info": {k: (list(v) if isinstance(v, tuple) else v) for k, v in c.info.items()
                 if isinstance(v, (int, float, str, bool, tuple))},
    }


def merge_certificates(parts: list[dict[str, Any]]) -> Any:
    """One :class:`~boundkit.Certificate` from the payloads of consecutive shards."""
    from boundkit.bounds.certificate import Certificate

    first = parts[0]
    info = {k: (tuple(v) if isinstance(v, list) else v) for k, v in first["info"].items()}
    return Certificate(
        radius=torch.cat([p["radius"] for p in parts]),
        label=torch.cat([p["label"] for p in parts]),
        runner_up=torch.cat([p["runner_up"] for p in parts]),
        margin=torch.cat([p["margin"] for p in parts]),
        trace={k: torch.cat([p["trace"][k] for p in parts]) for k in first["trace"]},
        method=first["method"],
        node_ops=dict(first["node_ops"]),
        info=info,
        status=torch.cat([p["status"] for p in parts]) if "status" in first else None,
        model_label=torch.cat([p["model_label"] for p in parts])
        if "model_label" in first else None,
        is_guarantee=bool(first.get("is_guarantee", True)),
    )


# ------------------------------------------------------------------------------ checks
_CERT_KEYS = ("radius", "label", "runner_up", "margin", "status", "model_label")
_ATTACK_KEYS = ("x_adv", "norm", "success", "label", "adv_label")
_CROSS_KEYS = ("index", "label", "radius", "attack_norm", "attack_success", "certificates")


def check_payload(job: Job, payload: Any, n: int, index: torch.Tensor | None = None,
                  sample_shape: tuple[int, ...] | None = None) -> str | None:
    """Why a shard's payload cannot be the results of ``job`` on ``n`` samples (the indices
    ``index`` for a cross-check, samples of shape ``sample_shape`` for an attack), or None.
    Checks the structure the merge functions read: every per-sample tensor has ``n`` rows,
    the lists have ``n`` entries, the methods are the job's."""
    def per_sample(t: Any, what: str, rows_only: bool = True) -> str | None:
        if not isinstance(t, torch.Tensor):
            return f"{what} is {type(t).__name__}, not a tensor"
        if t.dim() == 0 or t.shape[0] != n or (rows_only and t.dim() != 1):
            return f"{what} has shape {list(t.shape)} for {n} samples"
        return None

    def cert(c: Any, m: str) -> str | None:
        if not isinstance(c, dict):
            return f"the certificate of {m!r} is not a dict"
        for k in _CERT_KEYS:
            why = per_sample(c.get(k), f"{m}.{k}")
            if why:
                return why
        if c["radius"].dtype != torch.float64 or bool((c["radius"] < 0).any()) or \
                bool(torch.isnan(c["radius"]).any()):
            return f"{m}.radius is not a float64 tensor of radii >= 0"
        trace = c.get("trace")
        if not isinstance(trace, dict):
            return f"{m}.trace is not a dict"
        for k, v in trace.items():
            why = per_sample(v, f"{m}.trace[{k!r}]")
            if why:
                return why
        return None

    if not isinstance(payload, dict):
        return "the payload is not a dict"
    names = job.method_names
    if job.kind == "certify":
        certs = payload.get("certificates")
        if not isinstance(certs, dict) or sorted(certs) != sorted(names):
            return f"it holds certificates of {sorted(certs) if isinstance(certs, dict) else None}"\
                f", the job's methods are {sorted(names)}"
        return next((w for m in names if (w := cert(certs[m], m))), None)
    if job.kind == "attack":
        for k in _ATTACK_KEYS:
            why = per_sample(payload.get(k), k, rows_only=k != "x_adv")
            if why:
                return why
        if sample_shape is not None and tuple(payload["x_adv"].shape[1:]) != sample_shape:
            return f"x_adv has shape {list(payload['x_adv'].shape)}, the samples {sample_shape}"
        if not isinstance(payload.get("found_by"), list) or len(payload["found_by"]) != n:
            return f"found_by does not list {n} samples"
        return None
    for k in _CROSS_KEYS:
        if k not in payload:
            return f"{k} is missing"
    for k in ("index", "label", "attack_norm", "attack_success"):
        why = per_sample(payload[k], k)
        if why:
            return why
    if index is not None and not torch.equal(payload["index"].to(torch.int64), index):
        return "its sample indices are not this range's"
    if not isinstance(payload["radius"], dict) or sorted(payload["radius"]) != sorted(names):
        return f"it holds radii of other methods than {sorted(names)}"
    for m in names:
        why = per_sample(payload["radius"][m], f"radius[{m!r}]") or \
            cert(payload["certificates"].get(m), m)
        if why:
            return why
    if not isinstance(payload.get("found_by"), list) or len(payload["found_by"]) != n:
        return f"found_by does not list {n} samples"
    return None


_ATTACK_FIELDS = ("x_adv", "norm", "success", "label", "adv_label", "target", "y")


def attack_payload(res: Any) -> dict[str, Any]:
    out: dict[str, Any] = {k: _cpu(getattr(res, k)) for k in _ATTACK_FIELDS}
    out.update(found_by=list(res.found_by), method=res.method, targeted=bool(res.targeted),
               seconds=float(res.seconds), outcome=[o.value for o in res.outcome or []])
    return out


def merge_attack(parts: list[dict[str, Any]]) -> Any:
    """One :class:`~boundkit.AttackResult` from the payloads of consecutive shards."""
    from boundkit.attacks.base import AttackResult

    return AttackResult.concat([AttackResult(**p) for p in parts])


def crosscheck_payload(res: Any) -> dict[str, Any]:
    def t(a: np.ndarray | None) -> torch.Tensor | None:
        return None if a is None else torch.from_numpy(np.ascontiguousarray(a))

    viol = []
    for v in res.violations:
        d = v.to_dict()
        d.pop("message", None)
        viol.append(d)
    return {
        "index": t(res.index), "label": t(res.label), "true_label": t(res.true_label),
        "radius": {m: t(r) for m, r in res.radius.items()},
        "attack_norm": t(res.attack_norm), "attack_success": t(res.attack_success),
        "found_by": list(res.found_by), "attack": res.attack, "exact": t(res.exact),
        "attack_outcome": [o.value for o in res.attack_outcome],
        "exact_note": res.exact_note, "violations": viol,
        "certificates": {m: certificate_payload(c) for m, c in res.certificates.items()},
        "seconds": {k: float(v) for k, v in res.seconds.items()},
    }


def merge_crosscheck(parts: list[dict[str, Any]]) -> Any:
    """One :class:`~boundkit.CrosscheckResult` from the payloads of consecutive shards
    (violations in the order :func:`boundkit.crosscheck` sorts them)."""
    from boundkit.attacks.base import Outcome
    from boundkit.crosschecking import CrosscheckResult, Violation

    def cat(key: str) -> np.ndarray | None:
        vals = [p[key] for p in parts]
        return None if any(v is None for v in vals) else torch.cat(vals).numpy()

    first = parts[0]
    violations = [Violation(**v) for p in parts for v in p["violations"]]
    violations.sort(key=lambda v: (not v.bug, v.index, v.method))
    seconds: dict[str, float] = {}
    for p in parts:
        for k, v in p["seconds"].items():
            seconds[k] = seconds.get(k, 0.0) + v
    notes = [p["exact_note"] for p in parts if p["exact_note"]]
    exact = cat("exact") if not notes else None
    return CrosscheckResult(
        index=cat("index"),
        label=cat("label"),
        true_label=cat("true_label"),
        radius={m: torch.cat([p["radius"][m] for p in parts]).numpy() for m in first["radius"]},
        attack_norm=cat("attack_norm"),
        attack_success=cat("attack_success"),
        found_by=[f for p in parts for f in p["found_by"]],
        attack=first["attack"],
        attack_outcome=[Outcome(o) for p in parts for o in p.get("attack_outcome", [])],
        exact=exact,
        exact_note=notes[0] if notes else "",
        violations=violations,
        certificates={m: merge_certificates([p["certificates"][m] for p in parts])
                      for m in first["certificates"]},
        seconds=seconds,
    )


MERGE = {"certify": None, "attack": merge_attack, "crosscheck": merge_crosscheck}


# ------------------------------------------------------------------------------ the task
def warm_worker(source: ModelSource, device: str | None, hold_s: float) -> int:
    """Load the model in this worker (imports included) and hold the worker ``hold_s``
    seconds, so that concurrent warm-ups land on distinct workers; returns the pid."""
    import time

    source.load(device)
    time.sleep(hold_s)
    return os.getpid()


def run_shard(job: Job, source: ModelSource, x: torch.Tensor, y: torch.Tensor | None,
              index: torch.Tensor, start: int, stop: int) -> dict[str, Any]:
    """Compute samples ``[start, stop)`` of ``job`` (a whole number of chunks) and return
    the payload. Runs in a Ray worker, or in-process for a local check."""
    torch.set_num_threads(max(1, int(job.threads)))
    model = source.load(job.device)
    p = next(iter(model.parameters()), None)
    xs = x[start:stop]
    if p is not None:  # as the command line does before computing (cli._model_for_data)
        xs = xs.to(device=p.device, dtype=p.dtype)
    if job.kind == "certify":
        from boundkit.bounds.engine import certify

        opts = dict(job.options)
        return {"certificates": {name: certificate_payload(certify(model, xs, m,
                                                                   device=job.device, **opts))
                                 for name, m in zip(job.method_names, job.methods)}}
    if job.kind == "attack":
        from boundkit.attacks import attack

        # as the attack command: every sample held is a start point for `best`
        ref = x.to(xs) if job.attack == "best" and job.reference else None
        parts = [attack(model, xs[s : s + job.chunk], job.attack, budget=job.budget,
                        box=job.box, device=job.device, seed=job.seed, reference=ref)
                 for s in range(0, xs.shape[0], job.chunk)]
        return attack_payload(merge_attack([attack_payload(r) for r in parts]))
    from boundkit.crosschecking import crosscheck

    res = crosscheck(
        model, xs, methods=job.methods, attack=job.attack, attack_budget=job.budget,
        y=None if y is None else y[start:stop], box=job.box, device=job.device,
        exact=job.exact, indices=index[start:stop].numpy(), chunk_size=job.chunk,
        seed=job.seed,
        # as a local cross-check: every sample held is a start point for `best`
        reference=x.to(xs) if job.attack == "best" else None,
    )
    return crosscheck_payload(res)
