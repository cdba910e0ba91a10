"""Cross-checks, certificates and attacks of whole test sets on a Ray cluster.

``boundkit crosscheck ... --cluster ray`` (or ``ray=ADDRESS``), or in Python::

    from boundkit.distributed import RayExecutor
    with RayExecutor() as ex:                       # a local Ray instance, all cores
        res = bk.crosscheck(model, x, methods=("sound",), executor=ex)

Samples are split into shards made of whole chunks of the local run, so every per-sample
result is bit-identical to the local run's whatever the number of shards
(:mod:`~boundkit.distributed.plan`); finished shards are stored atomically under a key of
model, data and options, so an interrupted run resumes (:mod:`~boundkit.distributed.store`);
each shard is a Ray task, retried when its worker dies (:mod:`~boundkit.distributed.executor`).
Ray is an optional dependency: ``pip install "boundkit[distributed]"``.
See ``docs/distributed.md``.
"""

from boundkit.distributed.executor import (
    DistributedError,
    RayExecutor,
    RunStats,
    check_counts,
    parse_cluster,
    require_ray,
)
from boundkit.distributed.plan import Shard, plan_shards, remaining_ranges
from boundkit.distributed.store import ShardError, ShardStore, job_key, shard_secret
from boundkit.distributed.tasks import Job, ModelSource, run_shard

__all__ = [
    "DistributedError",
    "Job",
    "ModelSource",
    "RayExecutor",
    "RunStats",
    "Shard",
    "ShardError",
    "ShardStore",
    "check_counts",
    "job_key",
    "parse_cluster",
    "plan_shards",
    "remaining_ranges",
    "require_ray",
    "run_shard",
    "shard_secret",
]
