"""The ``--cluster`` options of ``boundkit certify|attack|crosscheck|compare``.

The command line computes exactly what it computes locally (same chunks of 64 samples, same
seeds), only sharded over Ray; the documents it writes are built from the merged results by
the same code as a local run's.
"""

from __future__ import annotations

import argparse
from typing import Any

from boundkit.distributed.executor import (
    DistributedError,
    RayExecutor,
    check_counts,
    parse_cluster,
)
from boundkit.distributed.tasks import Job, ModelSource, merge_attack, merge_certificates

__all__ = ["CLI_CHUNK", "add_cluster_args", "check_cluster_args", "cluster_attack",
           "cluster_certify", "cluster_crosscheck"]

#: samples per chunk of the command line's attack loop and cross-check (cli.py uses 64)
CLI_CHUNK = 64


def add_cluster_args(p: argparse.ArgumentParser) -> None:
    """Add ``--cluster``, ``--workers``, ``--shards``, ``--shard-dir``, ``--keep-shards``."""
    g = p.add_argument_group("cluster (needs the extra: pip install \"boundkit[distributed]\")")
    g.add_argument("--cluster", default=None, metavar="ray[=ADDRESS]",
                   help="run the samples as shards on Ray: 'ray' starts a local Ray instance "
                   "(all cores), 'ray=ADDRESS' joins a cluster (e.g. ray=10.0.0.5:6379, "
                   "ray=auto); results are identical to a local run")
    g.add_argument("--workers", type=int, default=None,
                   help="shards run at once (default: every CPU of the cluster, every GPU for "
                   "--device cuda; at most those, and at most 4096)")
    g.add_argument("--shards", type=int, default=None,
                   help="number of shards (default 4 per worker; each a multiple of 64 samples;"
                   " at most 1000000)")
    g.add_argument("--cluster-timeout", type=float, default=None, metavar="SECONDS",
                   help="how long Ray may take to come up (started or joined, and a first "
                   "worker running) before the run is an error (default 120)")
    g.add_argument("--shard-dir", default=None, metavar="DIR",
                   help="where finished shards are kept until the run completes, for resuming "
                   "(default $BOUNDKIT_SHARDS, else ~/.cache/boundkit/shards)")
    g.add_argument("--keep-shards", action="store_true",
                   help="keep the shard files after a complete run (a re-run is then instant)")


#: the options that only mean something with --cluster
CLUSTER_ONLY = ("workers", "shards", "shard_dir", "keep_shards", "cluster_timeout")


def check_cluster_args(args: Any) -> None:
    """The cluster options, before anything is loaded or started: ``--cluster`` well formed;
    ``--workers``/``--shards`` integers in range (``--workers`` at most this machine's CPUs
    for a local instance); a positive ``--cluster-timeout``; and none of them without
    ``--cluster`` (they would be silently ignored)."""
    from boundkit.errors import BadArgumentError

    cluster = getattr(args, "cluster", None)
    given = [o for o in CLUSTER_ONLY if getattr(args, o, None) not in (None, False)]
    if cluster is None:
        if given:
            names = ", ".join("--" + o.replace("_", "-") for o in given)
            verb = "applies" if len(given) == 1 else "apply"
            raise BadArgumentError(f"{names} only {verb} to a cluster run: add --cluster ray "
                                   "(or ray=ADDRESS), or drop them")
        return
    address = parse_cluster(cluster)
    check_counts(args.workers, args.shards, local=address is None)
    t = getattr(args, "cluster_timeout", None)
    if t is not None and not (t > 0 and t < 1e6):
        raise BadArgumentError(f"--cluster-timeout must be a positive number of seconds, got {t}")


def _executor(sess: Any, total: int, desc: str) -> tuple[RayExecutor, Any]:
    from boundkit.distributed.executor import START_TIMEOUT_S

    a = sess.args
    address = parse_cluster(a.cluster)
    bar = sess.bar(total, f"{desc} [ray]")
    ex = RayExecutor(address, workers=a.workers, shards=a.shards, shard_dir=a.shard_dir,
                     keep_shards=a.keep_shards, progress=bar.update,
                     threads=getattr(a, "threads", 1) or 1,
                     timeout_s=getattr(a, "cluster_timeout", None) or START_TIMEOUT_S)
    return ex, bar


def _run(sess: Any, job: Job, source: ModelSource, x: Any, y: Any, idx: Any, desc: str
         ) -> list[dict[str, Any]]:
    import dataclasses

    job = dataclasses.replace(job, threads=getattr(sess.args, "threads", 1) or 1)
    ex, bar = _executor(sess, int(x.shape[0]), desc)
    try:
        with bar:
            out = ex.run(job, source, x, y, idx,
                         key_extra={"data": getattr(sess.args, "data", None),
                                    "split": getattr(sess.args, "split", None)})
        prov = getattr(sess, "provenance", None)
        if isinstance(prov, dict):  # results.json says which samples came from kept shards
            prov["cluster"] = ex.stats.provenance(idx)
        return out
    except KeyboardInterrupt:
        st = ex.stats
        if not st.key:  # interrupted before any shard was planned: the usual Ctrl-C exit
            raise
        kept = st.shards_reused + st.shards_computed
        raise DistributedError(
            f"interrupted: {kept} of {st.shards_total} shards are complete and kept; run the "
            "same command again to compute the rest") from None
    # a local instance stays up for the next model of `compare`; Ray stops it at exit


def cluster_certify(sess: Any, x: Any, methods: tuple[str, ...]) -> dict[str, Any]:
    """``boundkit certify --cluster``: method -> merged certificate."""
    import numpy as np

    a = sess.args
    job = Job("certify", methods=tuple(methods), device=a.device, chunk=CLI_CHUNK)
    parts = _run(sess, job, ModelSource.from_file(a.model, a.arch), x, None,
                 np.arange(x.shape[0]), "certify")
    return {m: merge_certificates([p["certificates"][m] for p in parts]) for m in methods}


def cluster_attack(sess: Any, x: Any) -> Any:
    """``boundkit attack --cluster``: the merged :class:`~boundkit.AttackResult`."""
    import numpy as np

    a = sess.args
    job = Job("attack", attack=a.attack, budget=a.budget, seed=a.seed, device=a.device,
              chunk=CLI_CHUNK, reference=True)
    return merge_attack(_run(sess, job, ModelSource.from_file(a.model, a.arch), x, None,
                             np.arange(x.shape[0]), f"attack {a.attack}"))


def cluster_crosscheck(sess: Any, path: str, x: Any, y: Any, idx: Any, methods: Any,
                       attack: str, budget: int | None, exact: bool, desc: str) -> Any:
    """``boundkit crosscheck|compare --cluster``: the merged cross-check of one model."""
    from boundkit.distributed.tasks import merge_crosscheck

    a = sess.args
    job = Job("crosscheck", methods=tuple(methods), attack=attack, budget=budget,
              seed=a.seed, device=a.device, exact=bool(exact), chunk=CLI_CHUNK)
    return merge_crosscheck(_run(sess, job, ModelSource.from_file(path, a.arch), x, y, idx,
                                 desc))
