"""Shard results on disk: one file per finished shard, written atomically, keyed by the job,
each with a digest that a resume verifies before it uses the shard.

A job's key is the SHA-256 of everything that determines its results: the model's bytes (or
state), the data's bytes, the data set name and split, the options (methods and their
options, attack, budget, seed, chunk, ...) and boundkit's version. Re-running the same command
finds the same key, so the shards already on disk are skipped; any change of model, data or
options gives a new key (a new directory), never a mix of stale and fresh shards.

**Shards are evidence, not trust** (``docs/distributed.md``, "What a kept shard proves").
Next to each ``shard-<start>-<stop>.pt`` the store writes ``shard-<start>-<stop>.json``: a
header (format, job key, sample range, boundkit version, SHA-256 and size of the ``.pt``
bytes) and an HMAC-SHA256 of that header under a secret key kept *outside* the shard
directory (:func:`shard_secret`: ``$BOUNDKIT_SHARD_KEY``, else
``~/.config/boundkit/shard-key``, created with mode 0600). Before a shard is reused the store
checks the HMAC, that the header names this job and this range, that the bytes hash to the
header's SHA-256, and then (:func:`boundkit.distributed.tasks.check_payload`) the payload's
structure and shapes; any mismatch is a :class:`ShardError` naming the shard. Someone who can
write to the shard directory but cannot read the key file cannot make a resume accept
numbers boundkit did not compute for this job and range; someone who can read the key (the
same user account) can. Files are read with ``torch.load(weights_only=True)`` after the
checks: a shard file can hold tensors, numbers, strings, lists and dicts, nothing that
executes.

Writes go to a temporary file in the same directory, are flushed and ``fsync``-ed, then
renamed (``os.replace``, atomic on POSIX): the ``.pt`` first, the ``.json`` last, so an
interrupted run leaves complete shards or shards without evidence (ignored), never a
truncated one.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import os
import secrets
import shutil
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from boundkit.distributed.plan import Shard
from boundkit.errors import BoundkitError

__all__ = ["SHARD_FORMAT", "ShardError", "ShardStore", "default_shard_root", "job_key",
           "sha256_tensors", "shard_secret"]

#: version of the shard evidence (header + HMAC) written next to each shard
SHARD_FORMAT = 1
#: largest shard file a resume reads (bytes)
MAX_SHARD_BYTES = 1 << 34
#: largest evidence file (bytes)
MAX_EVIDENCE_BYTES = 1 << 16


class ShardError(BoundkitError):
    """A kept shard fails verification (digest, job, range, shapes) or the shard key is
    unusable; the message names the shard."""


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


def shard_key_path() -> Path:
    """``$BOUNDKIT_SHARD_KEY``, else ``~/.config/boundkit/shard-key``."""
    env = os.environ.get("BOUNDKIT_SHARD_KEY")
    return Path(env) if env else Path.home() / ".config" / "boundkit" / "shard-key"


def shard_secret(shard_root: Path | None = None) -> bytes:
    """The secret key of the shards' HMACs: read from :func:`shard_key_path`, or created there
    (32 random bytes, hex, mode 0600). Refused when it lies inside ``shard_root`` (whoever
    writes the shards could then rewrite the key) or is writable by group or others."""
    path = shard_key_path()
    if shard_root is not None:
        root, key = Path(shard_root).resolve(), path.resolve()
        if key == root or root in key.parents:
            raise ShardError(f"the shard key {path} lies inside the shard directory {shard_root};"
                             " keep it elsewhere ($BOUNDKIT_SHARD_KEY)")
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process created it meanwhile
            pass
        else:
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_hex(32) + "\n")
    try:
        st = path.stat()
        if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise ShardError(f"the shard key {path} is writable by group or others; "
                             f"chmod 600 {path}")
        if st.st_size > 4096:
            raise ShardError(f"the shard key {path} is not a key file ({st.st_size} bytes)")
        text = path.read_text().strip()
    except OSError as exc:
        raise ShardError(f"the shard key {path} cannot be read: {exc.strerror or exc}") from None
    if len(text) < 32:
        raise ShardError(f"the shard key {path} is too short (32 or more characters expected)")
    return text.encode()


def default_shard_root() -> Path:
    """``$BOUNDKIT_SHARDS``, else ``~/.cache/boundkit/shards``."""
    env = os.environ.get("BOUNDKIT_SHARDS")
    return Path(env) if env else Path.home() / ".cache" / "boundkit" / "shards"


@dataclass
class ShardStore:
    """The directory of one job's finished shards: ``<root>/<key[:32]>/``. ``secret`` is
    the HMAC key (default: :func:`shard_secret`, read on first use)."""

    root: Path
    key: str
    secret: bytes | None = None

    @property
    def path(self) -> Path:
        return Path(self.root) / self.key[:32]

    def _secret(self) -> bytes:
        if self.secret is None:
            self.secret = shard_secret(Path(self.root))
        return self.secret

    def done(self) -> list[Shard]:
        """Shards with a results file and its evidence (temporary files are ignored)."""
        if not self.path.is_dir():
            return []
        out = []
        for f in self.path.glob("shard-*.pt"):
            s = Shard.from_name(f.stem)
            if s is not None and f.with_suffix(".json").is_file():
                out.append(s)
        return sorted(out)

    def header(self, shard: Shard, blob: bytes) -> dict[str, Any]:
        """What a shard's evidence asserts: this job, this range, these bytes."""
        from boundkit import __version__

        return {"format": SHARD_FORMAT, "job_key": self.key, "start": shard.start,
                "stop": shard.stop, "boundkit": __version__,
                "sha256": hashlib.sha256(blob).hexdigest(), "bytes": len(blob)}

    def mac(self, header: dict[str, Any]) -> str:
        """HMAC-SHA256 of the canonical JSON of ``header`` under the secret key."""
        text = json.dumps(header, sort_keys=True, separators=(",", ":"))
        return hmac.new(self._secret(), text.encode(), hashlib.sha256).hexdigest()

    def _atomic(self, dest: Path, data: bytes) -> None:
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.stem}.", suffix=".tmp", dir=self.path)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, dest)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def write(self, shard: Shard, payload: dict[str, Any]) -> Path:
        """Write a shard's results, then its evidence, each atomically (temporary file,
        fsync, rename)."""
        self.path.mkdir(parents=True, exist_ok=True)
        if not (self.path / "job.json").exists():
            (self.path / "job.json").write_text(json.dumps({"key": self.key}) + "\n")
        buf = io.BytesIO()
        torch.save(payload, buf)
        blob = buf.getvalue()
        head = self.header(shard, blob)
        dest = self.path / f"{shard.name}.pt"
        self._atomic(dest, blob)
        doc = {"header": head, "hmac_sha256": self.mac(head)}
        self._atomic(dest.with_suffix(".json"), (json.dumps(doc, sort_keys=True) + "\n").encode())
        return dest

    def read(self, shard: Shard) -> dict[str, Any]:
        """The payload of a finished shard, after its evidence is verified: the HMAC, the job
        key, the range, the version and the bytes' SHA-256 (a :class:`ShardError` naming the
        shard otherwise). The payload's shapes are checked by the caller
        (:func:`boundkit.distributed.tasks.check_payload`)."""
        from boundkit import __version__

        pt = self.path / f"{shard.name}.pt"
        ev = pt.with_suffix(".json")

        def bad(why: str) -> ShardError:
            return ShardError(f"kept shard {pt} {why}; delete it (or {self.path}) to recompute "
                              "those samples")

        try:
            st = ev.stat()
            if not stat.S_ISREG(st.st_mode):  # a FIFO or a device would block or flood
                raise bad(f"has an evidence file {ev.name} that is not a regular file")
            if st.st_size > MAX_EVIDENCE_BYTES:
                raise bad("has an oversized evidence file")
            doc = json.loads(ev.read_bytes())
            head, mac = doc["header"], doc["hmac_sha256"]
            if not isinstance(head, dict) or not isinstance(mac, str):
                raise TypeError
        except (OSError, ValueError, KeyError, TypeError):
            raise bad(f"has no readable evidence ({ev.name})") from None
        if not hmac.compare_digest(self.mac(head), mac):
            raise bad("fails its HMAC: it was not written by this boundkit with this key, or it "
                      "was edited")
        want = {"format": SHARD_FORMAT, "job_key": self.key, "start": shard.start,
                "stop": shard.stop, "boundkit": __version__}
        for k, v in want.items():
            if head.get(k) != v:
                raise bad(f"belongs to another {k.replace('_', ' ')} ({head.get(k)!r}, this "
                          f"run: {v!r})")
        try:
            st = pt.stat()
            if not stat.S_ISREG(st.st_mode):
                raise bad("is not a regular file")
            size = st.st_size
            if size != head.get("bytes") or size > MAX_SHARD_BYTES:
                raise bad(f"has {size} bytes, its evidence says {head.get('bytes')}")
            blob = pt.read_bytes()
        except OSError as exc:
            raise bad(f"cannot be read: {exc.strerror or exc}") from None
        if hashlib.sha256(blob).hexdigest() != head.get("sha256"):
            raise bad("does not match the SHA-256 of its evidence (its contents were changed)")
        try:
            return torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - a verified file that torch cannot read
            raise bad(f"cannot be read as a shard ({type(exc).__name__})") from None

    def clean_temporary(self) -> int:
        """Remove temporary files left by a killed writer; returns how many."""
        k = 0
        if self.path.is_dir():
            for f in self.path.glob(".*.tmp"):
                f.unlink(missing_ok=True)
                k += 1
        return k

    def remove(self) -> None:
        """Delete this job's shard directory."""
        shutil.rmtree(self.path, ignore_errors=True)
