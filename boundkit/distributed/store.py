"""Shard results on disk: one file per finished shard, written atomically, keyed by the job.

A job's key is the SHA-256 of everything that determines its results: the model's bytes (or
state), the data's bytes, the data set name and split, the options (methods, attack, budget,
seed, chunk, ...) and boundkit's version. Re-running the same command finds the same key, so
the shards already on disk are skipped; any change of model, data or options gives a new key
(a new directory), never a mix of stale and fresh shards.

Writes go to a temporary file in the same directory, are flushed and ``fsync``-ed, then
renamed (``os.replace``, atomic on POSIX): an interrupted run leaves complete shard files or
none, never a truncated one. Files are read with ``torch.load(weights_only=True)``: a shard
file can hold tensors, numbers, strings, lists and dicts, nothing that executes.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from boundkit.distributed.plan import Shard

__all__ = ["ShardStore", "default_shard_root", "job_key", "sha256_tensors"]


def sha256_tensors(*tensors: torch.Tensor | None) -> str:
    """SHA-256 of tensors' dtypes, shapes and bytes (``None`` counts as a marker)."""
    h = hashlib.sha256()
    for t in tensors:
        if t is None:
            h.update(b"none;")
            continue
        c = t.detach().cpu().contiguous()
        h.update(f"{c.dtype}{tuple(c.shape)};".encode())
        h.update(c.view(torch.uint8).numpy().tobytes() if c.numel() else b"")
    return h.hexdigest()


def job_key(doc: dict[str, Any]) -> str:
    """The key of a job description (JSON-serialisable dict): SHA-256 of its canonical JSON."""
    from boundkit import __version__

    text = json.dumps({"boundkit": __version__, **doc}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def default_shard_root() -> Path:
    """``$BOUNDKIT_SHARDS``, else ``~/.cache/boundkit/shards``."""
    env = os.environ.get("BOUNDKIT_SHARDS")
    return Path(env) if env else Path.home() / ".cache" / "boundkit" / "shards"


@dataclass
class ShardStore:
    """The directory of one job's finished shards: ``<root>/<key[:32]>/``."""

    root: Path
    key: str

    @property
    def path(self) -> Path:
        return Path(self.root) / self.key[:32]

    def done(self) -> list[Shard]:
        """Shards with a complete results file (temporary files are ignored)."""
        if not self.path.is_dir():
            return []
        out = []
        for f in self.path.glob("shard-*.pt"):
            s = Shard.from_name(f.stem)
            if s is not None:
                out.append(s)
        return sorted(out)

    def write(self, shard: Shard, payload: dict[str, Any]) -> Path:
        """Write a shard's results atomically (temporary file, fsync, rename)."""
        self.path.mkdir(parents=True, exist_ok=True)
        if not (self.path / "job.json").exists():
            (self.path / "job.json").write_text(json.dumps({"key": self.key}) + "\n")
        dest = self.path / f"{shard.name}.pt"
        fd, tmp = tempfile.mkstemp(prefix=f".{shard.name}.", suffix=".tmp", dir=self.path)
        try:
            with os.fdopen(fd, "wb") as fh:
                torch.save(payload, fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, dest)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return dest

    def read(self, shard: Shard) -> dict[str, Any]:
        """The payload of a finished shard."""
        return torch.load(self.path / f"{shard.name}.pt", map_location="cpu", weights_only=True)

    def clean_temporary(self) -> int:
        """Remove temporary files left by a killed writer; returns how many."""
        k = 0
        if self.path.is_dir():
            for f in self.path.glob(".shard-*.tmp"):
                f.unlink(missing_ok=True)
                k += 1
        return k

    def remove(self) -> None:
        """Delete this job's shard directory."""
        shutil.rmtree(self.path, ignore_errors=True)
