"""Shared machinery of the data loaders: where files live, downloads, splits and scaling.

Root resolution (first match wins): the ``root`` argument, the environment variable
``BOUNDKIT_DATA``, then ``~/.cache/boundkit``. Downloads happen only when a file is
missing and ``download=True``; every downloaded file is checked against a pinned SHA-256
before it is used, and a failed download (no network, wrong checksum) raises a
:class:`DatasetNotFoundError` that says which file to put where.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from boundkit.errors import BadArgumentError, BoundkitError

ENV_VAR = "BOUNDKIT_DATA"
DEFAULT_HOME = Path("~/.cache/boundkit")
SPLITS = ("train", "val", "test", "all")
DOWNLOAD_TIMEOUT_S = 30.0
#: The seed of every data set's train/test/validation partition (UCI sets, digits, the 10k
#: MNIST npz). It belongs to the data set, not to a run: a run's ``--seed`` seeds the
#: algorithms (initialisation, attacks) and never moves images between train and test, so a
#: model trained with any seed is evaluated on images it never saw.
SPLIT_SEED = 0


class DatasetError(BoundkitError):
    """Base class of the data loaders' errors."""


class DatasetNotFoundError(DatasetError, FileNotFoundError):
    """A data file is missing and could not be downloaded (offline, or download disabled)."""


class DatasetFormatError(DatasetError, ValueError):
    """A data file exists but does not hold what it should (wrong keys, shapes, checksum)."""


@dataclass(frozen=True)
class RemoteFile:
    """A file of a public data set: its name on disk, where to fetch it, its SHA-256."""

    filename: str
    urls: tuple[str, ...]
    sha256: str


def data_home(root: str | os.PathLike[str] | None = None) -> Path:
    """Resolve the data directory: ``root``, else ``$BOUNDKIT_DATA``, else ``~/.cache/boundkit``."""
    if root is not None:
        return Path(root).expanduser()
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser()
    return DEFAULT_HOME.expanduser()


def sha256_of(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fetch(url: str, dest: Path, timeout: float = DOWNLOAD_TIMEOUT_S) -> None:
    """Download ``url`` to ``dest`` (raises ``OSError``/``URLError`` on any network problem).

    Kept as a separate module-level function so that tests can replace it to simulate an
    offline machine.
    """
    req = urllib.request.Request(url, headers={"User-Agent": "boundkit"})
    with urllib.request.urlopen(req, timeout=timeout) as resp, open(dest, "wb") as out:
        shutil.copyfileobj(resp, out)


def _missing_message(dataset: str, files: Sequence[RemoteFile], home: Path, why: str,
                     hint: str = "", details: Sequence[str] = ()) -> str:
    """A complete first line (what is missing, why, where to put it: what a one-line CLI
    error shows), then one line per file with its source and checksum, then details."""
    names = ", ".join(f.filename for f in files)
    first = (f"{dataset}: {why}; put {names} in {home} (or pass --data-root DIR / root=..., "
             f"or set ${ENV_VAR} to the folder that holds them)")
    if hint:
        first += f" {hint}"
    lines = [first]
    for f in files:
        src = f.urls[0] if f.urls else "(no public source)"
        lines.append(f"  - {f.filename}  (from {src}, sha256 {f.sha256})")
    if details:
        lines.append("  tried:")
        lines += [f"    {d}" for d in details]
    return "\n".join(lines)


def ensure_files(
    dataset: str,
    files: Sequence[RemoteFile],
    home: Path,
    *,
    download: bool,
    extra_hint: str = "",
) -> list[Path]:
    """Return the paths of ``files`` under ``home``, downloading the missing ones if allowed.

    Files already on disk are trusted as they are (they may have been placed there by the
    user); downloaded files must match their pinned SHA-256 or are deleted again.
    """
    paths = [home / f.filename for f in files]
    missing = [f for f, p in zip(files, paths) if not p.is_file()]
    if not missing:
        return paths
    hint = extra_hint
    if not download:
        raise DatasetNotFoundError(
            _missing_message(dataset, missing, home, "files missing and download=False", hint)
        )
    try:
        home.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DatasetNotFoundError(_missing_message(
            dataset, missing, home,
            f"cannot create the data folder ({exc.strerror or exc})", hint)) from None
    for f in missing:
        errors: list[str] = []
        dest = home / f.filename
        for url in f.urls:
            try:
                fd, tmp_name = tempfile.mkstemp(prefix=f.filename + ".", suffix=".part", dir=home)
            except OSError as exc:
                raise DatasetNotFoundError(_missing_message(
                    dataset, missing, home,
                    f"cannot write to the data folder ({exc.strerror or exc})", hint)) from None
            os.close(fd)
            tmp = Path(tmp_name)
            try:
                _fetch(url, tmp)
                got = sha256_of(tmp)
                if got != f.sha256:
                    errors.append(f"{url}: checksum mismatch (sha256 {got}, expected {f.sha256})")
                    continue
                tmp.replace(dest)
                break
            except (OSError, urllib.error.URLError, ValueError) as exc:
                errors.append(f"{url}: {exc}")
            finally:
                if tmp.exists():
                    tmp.unlink()
        if not dest.is_file():
            why = "files missing and could not be downloaded (offline?"
            why += ", or a checksum mismatch)" if any("checksum" in e for e in errors) else ")"
            raise DatasetNotFoundError(
                _missing_message(dataset, missing, home, why, hint, errors))
    return paths


def check_split(split: str) -> str:
    """Validate a split name."""
    if split not in SPLITS:
        raise BadArgumentError(f"split must be one of {SPLITS}, got {split!r}")
    return split


def split_indices_70_20_10(n: int, seed: int) -> dict[str, np.ndarray]:
    """Deterministic random partition into 70% train, 20% test, 10% validation (Peck 2017, §4.3).

    ``n_train = round(0.7 n)``, ``n_test = round(0.2 n)``, the rest is validation; the
    permutation is ``numpy.random.default_rng(seed).permutation(n)`` and each part is sorted.
    """
    perm = np.random.default_rng(seed).permutation(n)
    n_train = int(round(0.7 * n))
    n_test = int(round(0.2 * n))
    return {
        "train": np.sort(perm[:n_train]),
        "test": np.sort(perm[n_train : n_train + n_test]),
        "val": np.sort(perm[n_train + n_test :]),
        "all": np.arange(n),
    }


def minmax_scale(features: np.ndarray, train_idx: np.ndarray) -> np.ndarray:
    """Scale each column to [0, 1] with min/max of the training rows, then clip to [0, 1].

    Constant columns (max == min on the training rows) map to 0. Validation and test rows
    outside the training range are clipped, so every returned value lies in [0, 1].
    """
    x = features.astype(np.float64)
    lo = x[train_idx].min(axis=0)
    hi = x[train_idx].max(axis=0)
    span = np.where(hi > lo, hi - lo, 1.0)
    scaled = (x - lo) / span
    scaled[:, hi <= lo] = 0.0
    return np.clip(scaled, 0.0, 1.0)


def to_tensors(x: np.ndarray, y: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Convert to (float32, int64) torch tensors, uint8 images scaled by 1/255."""
    if x.dtype == np.uint8:
        xt = torch.from_numpy(x.astype(np.float32)).div_(255.0)
    else:
        xt = torch.from_numpy(np.array(x, dtype=np.float32))
    yt = torch.from_numpy(np.array(y, dtype=np.int64))
    return xt, yt
