"""Run a job's shards as Ray tasks, resumably, and merge them.

:class:`RayExecutor` starts a local Ray instance (bound to 127.0.0.1, no dashboard, usage
statistics off) or joins a cluster (``address``), plans the shards of a job
(:mod:`boundkit.distributed.plan`), skips those already stored for the same job key
(:mod:`boundkit.distributed.store`), submits the rest as tasks (one CPU each, one GPU each
when the run's device is CUDA; retried by Ray when a worker dies), writes each finished
shard atomically as it arrives, and merges all shards in sample order.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from boundkit.distributed.plan import Shard, plan_shards, remaining_ranges
from boundkit.distributed.store import (
    ShardError,
    ShardStore,
    default_shard_root,
    job_key,
    sha256_tensors,
)
from boundkit.distributed.tasks import (
    Job,
    ModelSource,
    check_payload,
    merge_attack,
    merge_certificates,
    merge_crosscheck,
    run_shard,
    warm_worker,
)
from boundkit.errors import BadArgumentError, BoundkitError, InputShapeError

__all__ = ["MAX_SHARDS", "MAX_WORKERS", "START_TIMEOUT_S", "DistributedError", "RayExecutor",
           "RunStats", "ShardError", "check_counts", "parse_cluster", "require_ray"]

EXTRA_HINT = 'pip install "boundkit[distributed]"'
#: most shards running at once (and never more than the cluster's CPUs, or GPUs for CUDA)
MAX_WORKERS = 4096
#: most shards of one run
MAX_SHARDS = 1_000_000
#: default bound (seconds) on Ray coming up: started or joined, and a first worker running
START_TIMEOUT_S = 120.0


class DistributedError(BoundkitError):
    """A distributed run cannot start or cannot finish (the message says why)."""


def check_counts(workers: Any, shards: Any, *, local: bool) -> None:
    """``workers`` and ``shards`` (``None``: the defaults) before anything starts: integers
    >= 1, at most :data:`MAX_WORKERS` / :data:`MAX_SHARDS`, and for a local Ray instance
    ``workers`` at most this machine's CPUs (a joined cluster's resources are checked once
    joined)."""
    from boundkit.validate import check_int

    check_int("--workers", workers, allow_none=True, maximum=MAX_WORKERS)
    check_int("--shards", shards, allow_none=True, maximum=MAX_SHARDS)
    try:  # the CPUs this process may run on (a container's limit), else the machine's
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    if local and workers is not None and workers > cpus:
        raise BadArgumentError(f"--workers {workers} exceeds the {cpus} CPUs of this machine "
                               "(a local Ray instance runs one shard per CPU)")


def require_ray() -> Any:
    """Import Ray, or raise a one-line error naming the extra that provides it."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage reports
    try:
        import ray
    except ImportError:
        raise DistributedError(f"--cluster ray needs Ray, which is not installed: "
                               f"{EXTRA_HINT}") from None
    return ray


def parse_cluster(spec: str) -> str | None:
    """``ray`` (start a local Ray instance) or ``ray=ADDRESS`` (join a cluster; ``auto``
    joins the one ``ray start`` launched on this machine). Returns the address or None."""
    s = str(spec).strip()
    if s == "ray":
        return None
    if s.startswith("ray="):
        addr = s[4:].strip()
        if not addr:
            raise BadArgumentError("--cluster ray=ADDRESS needs an address, e.g. "
                                   "ray=10.0.0.5:6379")
        if any(c.isspace() for c in addr) or len(addr) > 512:
            raise BadArgumentError(f"--cluster: {addr!r} is not a Ray address")
        return addr
    raise BadArgumentError(f"unknown cluster {spec!r}: use --cluster ray (a local Ray instance) "
                           "or --cluster ray=ADDRESS (join a Ray cluster)")


@dataclass
class RunStats:
    """What the last :meth:`RayExecutor.run` did."""

    key: str = ""
    shards_total: int = 0
    shards_reused: int = 0
    shards_computed: int = 0
    samples: int = 0
    seconds: float = 0.0
    shard_seconds: list[float] = field(default_factory=list)
    #: the kept shards this run reused (each verified before use)
    reused: list[Shard] = field(default_factory=list)

    def provenance(self, index: Any = None) -> dict[str, Any]:
        """What a results file records about the run: shards computed and reused, and which
        samples (data indices when ``index`` is given, else positions) came from reused
        shards."""
        pos = [i for s in self.reused for i in range(s.start, s.stop)]
        idx = np.asarray(index)[pos].tolist() if index is not None else pos
        return {"job_key": self.key, "shards": self.shards_total,
                "shards_computed": self.shards_computed, "shards_reused": self.shards_reused,
                "reused_shards": [s.name for s in self.reused],
                "reused_samples": [int(i) for i in idx],
                "shard_verification": "hmac-sha256 (docs/distributed.md)"}


_SHARD_TASK: Any = None


def _remote_task(ray: Any) -> Any:
    global _SHARD_TASK
    if _SHARD_TASK is None:
        _SHARD_TASK = ray.remote(run_shard)
    return _SHARD_TASK


class RayExecutor:
    """Shard a job over a Ray cluster.

    Args:
        address: ``None`` starts a local Ray instance (bound to 127.0.0.1, no dashboard)
            with ``workers`` CPUs, or reuses the Ray instance this process already has;
            otherwise the cluster to join (``"auto"``, ``"10.0.0.5:6379"``, ``"ray://..."``).
        workers: how many shards run at once (default: every CPU of the cluster, or every
            GPU for CUDA runs).
        shards: number of shards (default: 4 per worker, at least one chunk each).
        shard_dir: where finished shards are stored (default ``$BOUNDKIT_SHARDS`` or
            ``~/.cache/boundkit/shards``); ``False``: keep them in memory only (no resume).
        keep_shards: keep the shard files after a complete run (default: remove them once
            merged; an interrupted run always keeps its finished shards).
        max_retries: Ray retries of a shard whose worker died (default 3).
        progress: callback ``(samples_done)`` per finished shard (reused shards included).
        timeout_s: bound on Ray coming up (start or connection, and a first worker
            running a task), :data:`START_TIMEOUT_S` by default; beyond it, a
            :class:`DistributedError`.
    """

    def __init__(self, address: str | None = None, *, workers: int | None = None,
                 shards: int | None = None, shard_dir: str | os.PathLike | bool | None = None,
                 keep_shards: bool = False, max_retries: int = 3,
                 progress: Callable[[int], None] | None = None,
                 timeout_s: float = START_TIMEOUT_S, threads: int = 1) -> None:
        check_counts(workers, shards, local=address is None)
        try:
            ok = float(timeout_s) > 0 and math.isfinite(float(timeout_s))
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise BadArgumentError(f"timeout_s must be a positive number, got {timeout_s!r}")
        self.address = address
        self.workers = workers
        self.shards = shards
        self.shard_dir = shard_dir
        self.keep_shards = keep_shards
        self.max_retries = int(max_retries)
        self.progress = progress
        self.timeout_s = float(timeout_s)
        self.threads = int(threads)
        self.stats = RunStats()
        self._started = False

    # -- cluster ------------------------------------------------------------------------
    def connect(self) -> Any:
        """Start or join Ray (once); returns the ``ray`` module."""
        ray = require_ray()
        if ray.is_initialized():
            return ray
        import logging

        common = {"include_dashboard": False, "log_to_driver": False,
                  "configure_logging": True, "logging_level": logging.ERROR}
        where = "start a local Ray instance" if self.address is None else \
            f"join the Ray cluster at {self.address}"
        t0 = time.monotonic()
        _bounded(lambda: self._init(ray, common), self.timeout_s,
                 f"cannot {where}: Ray did not come up within {self.timeout_s:g} s", park=True)
        if self.address is None:
            self._started = True
        # a cluster whose workers never register accepts tasks and never runs them: run one
        # no-op task within what is left of the time
        left = max(1.0, self.timeout_s - (time.monotonic() - t0))
        ref = ray.remote(_noop).options(num_cpus=0).remote()
        try:
            _bounded(lambda: ray.get(ref), left,
                     f"cannot {where}: no Ray worker ran a task within {self.timeout_s:g} s")
        except BaseException:
            self.shutdown()
            raise
        return ray

    def _init(self, ray: Any, common: dict[str, Any]) -> None:
        where = "start a local Ray instance" if self.address is None else \
            f"join the Ray cluster at {self.address}"
        try:
            if self.address is None:
                # loopback only: the node address is 127.0.0.1 and every server binds to it
                os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
                from ray._private import ray_constants

                ray_constants.ENABLE_RAY_CLUSTER = False
                # workers at the driver's priority (Ray's default niceness 15 starves them
                # on a busy machine: 4x slower than the same work in-process here)
                ray.init(num_cpus=self.workers or os.cpu_count() or 1, num_gpus=None,
                         _node_ip_address="127.0.0.1", _system_config={"worker_niceness": 0},
                         **common)
            else:
                host = _probe(self.address, min(self.timeout_s, 15.0))
                if host is not None and (host == "localhost" or host.startswith("127.")):
                    # keep a loopback cluster on loopback (Ray would swap in the LAN address)
                    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
                    from ray._private import ray_constants

                    ray_constants.ENABLE_RAY_CLUSTER = False
                ray.init(address=self.address, **common)
        except DistributedError:
            raise
        except Exception as exc:  # Ray's own errors: connection refused, bad address...
            raise DistributedError(f"cannot {where}: {_whole(exc)}") from None

    def shutdown(self) -> None:
        """Stop the local Ray instance this executor started (a joined cluster stays up)."""
        if self._started:
            import ray

            self._started = False
            ray.shutdown()

    def __enter__(self) -> RayExecutor:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.shutdown()

    def capacity(self, job: Job) -> int:
        """Shards run at once: ``workers``, else the cluster's CPUs (GPUs for CUDA)."""
        import ray

        res = ray.cluster_resources()
        kind = "GPU" if job.cuda else "CPU"
        n = int(res.get(kind, 0))
        if job.cuda and n < 1:
            raise DistributedError("the run's device is CUDA but the Ray cluster has no GPU")
        if self.workers is not None:
            if self.workers > max(n, 1):
                raise DistributedError(f"--workers {self.workers} exceeds the {n} {kind}s of "
                                       "the Ray cluster (one shard runs per "
                                       f"{kind.lower()})")
            return self.workers
        return max(1, n)

    def warm_up(self, model: nn.Module | ModelSource, device: str | None = None,
                hold_s: float = 2.0) -> list[int]:
        """Start every worker and load the model in each (imports of torch and boundkit
        included), so that timings that follow measure the work only. Returns the workers'
        process ids (distinct unless a task outlived ``hold_s``)."""
        ray = self.connect()
        cpu_job = Job("certify", device=_dev(device))
        n = self.capacity(cpu_job)
        task = ray.remote(warm_worker).options(num_cpus=1, num_gpus=1 if cpu_job.cuda else 0)
        ref = ray.put(_source(model))
        return sorted(ray.get([task.remote(ref, _dev(device), hold_s) for _ in range(n)]))

    # -- running ------------------------------------------------------------------------
    def run(self, job: Job, source: ModelSource, x: torch.Tensor, y: torch.Tensor | None,
            index: np.ndarray | Sequence[int], key_extra: dict[str, Any] | None = None
            ) -> list[dict[str, Any]]:
        """Compute every shard of ``job`` on ``x`` (resuming from stored shards) and return
        the payloads of consecutive shards covering ``[0, N)``."""
        t_start = time.perf_counter()
        n = int(x.shape[0])
        idx = torch.as_tensor(np.asarray(index, dtype=np.int64))
        if idx.shape != (n,):
            raise InputShapeError(f"indices must have length {n}, got shape {tuple(idx.shape)}")
        x_cpu = x.detach().cpu().contiguous()
        y_cpu = None if y is None else torch.as_tensor(y).detach().cpu().contiguous()
        key = job_key({"job": job.describe(), "model": source.sha256,
                       "data": sha256_tensors(x_cpu, y_cpu, idx), "n": n,
                       **(key_extra or {})})
        store = None
        if self.shard_dir is not False:
            root = default_shard_root() if self.shard_dir in (None, True) else \
                Path(self.shard_dir)  # type: ignore[arg-type]
            store = ShardStore(root, key)
            store.clean_temporary()
        kept, gaps = remaining_ranges(n, job.chunk, store.done() if store else [])
        # kept shards are evidence, not trust: digest, job, range and shapes are verified
        # before anything is computed (a mismatch stops the run, naming the shard)
        reused: dict[Shard, dict[str, Any]] = {}
        for s in kept:
            payload = store.read(s)  # type: ignore[union-attr]
            why = check_payload(job, payload, len(s), idx[s.start:s.stop],
                                tuple(x_cpu.shape[1:]))
            if why:
                raise ShardError(f"kept shard {store.path / (s.name + '.pt')} "  # type: ignore
                                 f"does not hold this job's results: {why}; delete it to "
                                 "recompute those samples")
            reused[s] = payload
        todo: list[Shard] = []
        ray, cap = None, 1
        if gaps:  # Ray is started only when there is something left to compute
            ray = self.connect()
            cap = self.capacity(job)
            n_chunks = max(1, math.ceil(n / job.chunk))
            target = self.shards or 4 * cap  # shards of the whole run
            for g in gaps:  # each gap gets its share of the target
                k = math.ceil(target * math.ceil(len(g) / job.chunk) / n_chunks - 1e-9)
                todo += plan_shards(n, job.chunk, max(1, k), start=g.start, stop=g.stop)
        self.stats = RunStats(key=key, shards_total=len(kept) + len(todo),
                              shards_reused=len(kept), samples=n, reused=list(kept))
        tick = self.progress or (lambda k: None)
        done: dict[Shard, dict[str, Any]] = {}
        for s in kept:
            tick(len(s))
        if todo:
            done.update(self._submit(ray, job, source, x_cpu, y_cpu, idx, todo, cap, store,
                                     tick))
        order = sorted(kept + todo)
        payloads = [done[s] if s in done else reused[s] for s in order]
        if store is not None and not self.keep_shards:
            store.remove()
        self.stats.seconds = time.perf_counter() - t_start
        return payloads

    def _submit(self, ray: Any, job: Job, source: ModelSource, x: torch.Tensor,
                y: torch.Tensor | None, idx: torch.Tensor, todo: list[Shard], cap: int,
                store: ShardStore | None, tick: Callable[[int], None]
                ) -> dict[Shard, dict[str, Any]]:
        task = _remote_task(ray).options(
            num_cpus=1, num_gpus=1 if job.cuda else 0, max_retries=self.max_retries,
            retry_exceptions=False)
        refs = {"source": ray.put(source), "x": ray.put(x), "y": ray.put(y), "i": ray.put(idx)}
        queue = list(todo)
        running: dict[Any, tuple[Shard, float]] = {}
        out: dict[Shard, dict[str, Any]] = {}
        in_flight = max(cap, 1)  # at most `workers` shards at once
        try:
            while queue or running:
                while queue and len(running) < in_flight:
                    s = queue.pop(0)
                    ref = task.remote(job, refs["source"], refs["x"], refs["y"], refs["i"],
                                      s.start, s.stop)
                    running[ref] = (s, time.perf_counter())
                # short waits: a Ctrl-C reaches the driver between them
                ready, _ = ray.wait(list(running), num_returns=1, timeout=0.5)
                for ref in ready:
                    s, t0 = running.pop(ref)
                    payload = self._get(ray, ref, s)
                    self.stats.shard_seconds.append(time.perf_counter() - t0)
                    if store is not None:
                        store.write(s, payload)
                    self.stats.shards_computed += 1
                    out[s] = payload
                    tick(len(s))
        except BaseException:  # KeyboardInterrupt included: stop the shards still running
            for ref in running:
                ray.cancel(ref, force=False)  # the worker process survives
            if store is not None:
                store.clean_temporary()
            raise
        return out

    def _get(self, ray: Any, ref: Any, s: Shard) -> dict[str, Any]:
        from ray.exceptions import RayTaskError

        try:
            return ray.get(ref)
        except RayTaskError as exc:
            cause = exc.cause if isinstance(exc.cause, BaseException) else None
            if isinstance(cause, (BoundkitError, ValueError, KeyError, OSError)):
                raise cause from None
            raise DistributedError(f"shard [{s.start}, {s.stop}) failed: "
                                   f"{_first_line(cause or exc)}") from None
        except Exception as exc:  # worker died more often than max_retries, node lost...
            raise DistributedError(f"shard [{s.start}, {s.stop}) failed after "
                                   f"{self.max_retries} retries: {_first_line(exc)}") from None

    # -- the entry points -----------------------------------------------------------------
    def certify(self, model: nn.Module | ModelSource, x: torch.Tensor,
                method: Any = "sound", *, device: str | None = None,
                chunk: int = 64, **options: Any) -> Any:
        """:func:`boundkit.certify` on the cluster: the same methods (registered names or
        :class:`~boundkit.bounds.method.Method` objects) and options (e.g. ``box=None`` for
        ``crown``). With one method, a :class:`~boundkit.Certificate`; with several, a dict
        method name -> certificate."""
        from boundkit.bounds.method import Method

        single = isinstance(method, (str, Method))
        methods = _check_methods((method,) if single else tuple(method), options)
        job = Job("certify", methods=methods, device=_dev(device), chunk=chunk,
                  threads=self.threads, options=tuple(sorted(options.items())))
        parts = self.run(job, _source(model), x, None, np.arange(x.shape[0]))
        certs = {m: merge_certificates([p["certificates"][m] for p in parts])
                 for m in job.method_names}
        return certs[job.method_names[0]] if single else certs

    def attack(self, model: nn.Module | ModelSource, x: torch.Tensor, method: str = "best", *,
               budget: int | None = None, box: tuple[float, float] | None = (0.0, 1.0),
               device: str | None = None, seed: int = 0, chunk: int = 64) -> Any:
        """The attack on the cluster: equal to ``AttackResult.concat([boundkit.attack(model,
        x[s:s+chunk], method, seed=seed, ...) for each chunk s])``, what ``boundkit attack``
        computes (its chunk is 64)."""
        job = Job("attack", attack=method, budget=budget, box=_box(box), device=_dev(device),
                  seed=seed, chunk=chunk, threads=self.threads)
        return merge_attack(self.run(job, _source(model), x, None, np.arange(x.shape[0])))

    def crosscheck(self, model: nn.Module | ModelSource, x: torch.Tensor, *,
                   methods: Sequence[str] = ("sound",), attack: str = "best",
                   attack_budget: int | None = None, y: torch.Tensor | None = None,
                   box: tuple[float, float] | None = (0.0, 1.0), device: Any = None,
                   exact: bool = False, indices: Sequence[int] | np.ndarray | None = None,
                   chunk_size: int = 128, seed: int = 0, **_: Any) -> Any:
        """:func:`boundkit.crosscheck` on the cluster (same arguments, same result)."""
        if not isinstance(x, torch.Tensor) or x.dim() < 2:
            raise InputShapeError("x must be a batch tensor [N, ...]")
        n = x.shape[0]
        if y is not None and torch.as_tensor(y).reshape(-1).shape[0] != n:
            raise InputShapeError(f"y has {torch.as_tensor(y).reshape(-1).shape[0]} labels "
                                  f"for {n} samples")
        job = Job("crosscheck", methods=tuple(methods), attack=attack, budget=attack_budget,
                  box=_box(box), device=_dev(device), exact=bool(exact), chunk=int(chunk_size),
                  seed=int(seed), threads=self.threads)
        index = np.arange(n) if indices is None else np.asarray(indices, dtype=np.int64)
        return merge_crosscheck(self.run(job, _source(model), x, y, index))


def _noop() -> int:
    return os.getpid()


def _bounded(fn: Callable[[], Any], timeout: float, message: str, *, park: bool = False
             ) -> Any:
    """``fn()`` in a helper thread while this thread waits in short steps: a Ctrl-C stops the
    wait at once (KeyboardInterrupt), and ``fn`` taking longer than ``timeout`` seconds is a
    :class:`DistributedError` with ``message``; ``fn``'s own exception is re-raised.

    ``park``: the helper thread then stays alive (idle) until the process ends. Ray starts
    its node processes with ``PR_SET_PDEATHSIG``, which kills them when the *thread* that
    started them exits: the thread that ran ``ray.init`` must outlive the Ray instance."""
    import threading

    box: dict[str, Any] = {}
    done = threading.Event()

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread
            box["error"] = exc
        done.set()
        if park:
            threading.Event().wait()

    th = threading.Thread(target=target, name="bk-ray-start", daemon=True)
    th.start()
    end = time.monotonic() + timeout
    while not done.wait(0.1):
        if time.monotonic() > end:
            raise DistributedError(message)
    if "error" in box:
        raise box["error"]
    return box.get("value")


def _whole(exc: BaseException) -> str:
    """An exception's whole message on one line (Ray's span several, e.g. "To fix this,
    either: 1. ... 2. ...")."""
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def _check_methods(methods: Sequence[Any], options: dict[str, Any]) -> tuple[Any, ...]:
    """As :func:`boundkit.certify` checks them: registered names or Method objects, and only
    options every method takes (a one-line error otherwise). Returns what the job ships: the
    names of boundkit's own methods, and the Method objects of the others (a name registered
    in this process only means nothing to a worker); a Method class from outside boundkit is
    shipped to the workers by value."""
    import sys

    from boundkit.bounds.method import Method, get_method

    if not methods:
        raise BadArgumentError("no certification method given")
    out: list[Any] = []
    for m in methods:
        if isinstance(m, str):
            meth = get_method(m)
        elif isinstance(m, Method):
            meth = m
        else:
            raise BadArgumentError(f"method must be a name or a Method, got "
                                   f"{type(m).__name__}")
        mod = type(meth).__module__
        own = mod.startswith("boundkit.")
        if not own and mod in sys.modules:
            try:
                from ray import cloudpickle

                cloudpickle.register_pickle_by_value(sys.modules[mod])
            except (ImportError, ValueError):  # already by value, or Ray absent
                pass
        unknown = set(options) - set(meth.options())
        if unknown:
            raise TypeError(f"method {meth.name!r} takes no option(s) {sorted(unknown)}; it "
                            f"accepts {list(meth.options()) or 'none'}")
        out.append(m if isinstance(m, Method) or own else meth)
    return tuple(out)


def _probe(address: str, timeout: float) -> str | None:
    """For a ``HOST:PORT`` address, check within ``timeout`` seconds that something listens
    there (Ray itself would retry for minutes); returns the host (None for ``auto`` or
    ``ray://`` addresses, which Ray resolves itself)."""
    import socket

    if address == "auto" or "://" in address:
        return None
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise DistributedError(f"cannot join the Ray cluster at {address}: expected HOST:PORT, "
                               "auto or ray://HOST:PORT")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except OSError as exc:
        raise DistributedError(f"cannot join the Ray cluster at {address}: "
                               f"{exc.strerror or exc}") from None
    return host


def _source(model: nn.Module | ModelSource) -> ModelSource:
    return model if isinstance(model, ModelSource) else ModelSource.from_module(model)


def _dev(device: Any) -> str | None:
    return None if device is None else str(torch.device(device))


def _box(box: Any) -> tuple[float, float] | None:
    return None if box is None else (float(box[0]), float(box[1]))


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
