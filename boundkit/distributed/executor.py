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
from boundkit.distributed.store import ShardStore, default_shard_root, job_key, sha256_tensors
from boundkit.distributed.tasks import (
    Job,
    ModelSource,
    merge_attack,
    merge_certificates,
    merge_crosscheck,
    run_shard,
    warm_worker,
)
from boundkit.errors import BoundkitError, InputShapeError

__all__ = ["DistributedError", "RayExecutor", "RunStats", "parse_cluster", "require_ray"]

EXTRA_HINT = 'pip install "boundkit[distributed]"'


class DistributedError(BoundkitError):
    """A distributed run cannot start or cannot finish (the message says why)."""


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
    s = spec.strip()
    if s == "ray":
        return None
    if s.startswith("ray="):
        addr = s[4:].strip()
        if not addr:
            raise ValueError("--cluster ray=ADDRESS needs an address, e.g. ray=10.0.0.5:6379")
        return addr
    raise ValueError(f"unknown cluster {spec!r}: use --cluster ray (a local Ray instance) or "
                     "--cluster ray=ADDRESS (join a Ray cluster)")


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
        timeout_s: bound on Ray start-up / connection.
    """

    def __init__(self, address: str | None = None, *, workers: int | None = None,
                 shards: int | None = None, shard_dir: str | os.PathLike | bool | None = None,
                 keep_shards: bool = False, max_retries: int = 3,
                 progress: Callable[[int], None] | None = None, timeout_s: float = 120.0,
                 threads: int = 1) -> None:
        if workers is not None and workers < 1:
            raise ValueError(f"workers must be positive, got {workers}")
        if shards is not None and shards < 1:
            raise ValueError(f"the number of shards must be positive, got {shards}")
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
                self._started = True
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
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            where = "start a local Ray instance" if self.address is None else \
                f"join the Ray cluster at {self.address}"
            raise DistributedError(f"cannot {where}: {first}") from None
        return ray

    def shutdown(self) -> None:
        """Stop the local Ray instance this executor started (a joined cluster stays up)."""
        if self._started:
            import ray

            ray.shutdown()
            self._started = False

    def __enter__(self) -> RayExecutor:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.shutdown()

    def capacity(self, job: Job) -> int:
        """Shards run at once: ``workers``, else the cluster's CPUs (GPUs for CUDA)."""
        if self.workers is not None:
            return self.workers
        import ray

        res = ray.cluster_resources()
        n = res.get("GPU", 0) if job.cuda else res.get("CPU", 1)
        if job.cuda and n < 1:
            raise DistributedError("the run's device is CUDA but the Ray cluster has no GPU")
        return max(1, int(n))

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
                              shards_reused=len(kept), samples=n)
        tick = self.progress or (lambda k: None)
        done: dict[Shard, dict[str, Any]] = {}
        for s in kept:
            tick(len(s))
        if todo:
            done.update(self._submit(ray, job, source, x_cpu, y_cpu, idx, todo, cap, store,
                                     tick))
        order = sorted(kept + todo)
        payloads = [done[s] if s in done else store.read(s) for s in order]  # type: ignore
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
                ready, _ = ray.wait(list(running), num_returns=1)
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
                method: str | Sequence[str] = "sound", *, device: str | None = None,
                chunk: int = 64) -> Any:
        """:func:`boundkit.certify` on the cluster. With one method, a
        :class:`~boundkit.Certificate`; with several, a dict method -> certificate."""
        methods = (method,) if isinstance(method, str) else tuple(method)
        job = Job("certify", methods=methods, device=_dev(device), chunk=chunk,
                  threads=self.threads)
        parts = self.run(job, _source(model), x, None, np.arange(x.shape[0]))
        certs = {m: merge_certificates([p["certificates"][m] for p in parts]) for m in methods}
        return certs[methods[0]] if isinstance(method, str) else certs

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
