"""Loaders for the data sets of the thesis (Peck 2017): MNIST, CIFAR-10, Iris, Wine, Spambase,
plus scikit-learn's 8x8 digits.

Every loader returns ``(x, y)``: ``x`` float32 in [0, 1] (NCHW for images, ``[N, d]`` for
tabular data), ``y`` int64 class indices. See ``docs/models_and_data.md`` for the splits.
"""

from __future__ import annotations

import gzip
import os
import pickle
import tarfile
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from boundkit.data._common import (
    SPLIT_SEED,
    DatasetFormatError,
    DatasetNotFoundError,
    RemoteFile,
    check_split,
    data_home,
    ensure_files,
    minmax_scale,
    split_indices_70_20_10,
    to_tensors,
)
from boundkit.errors import BadArgumentError

PathLike = str | os.PathLike[str]
Tensors = tuple[torch.Tensor, torch.Tensor]

#: The 10k MNIST npz is shuffled with ``SPLIT_SEED`` (8,000 train / 2,000 test); another
#: ``split_seed`` gives another (equally deterministic) partition.
MNIST_NPZ = "mnist-10k.npz"
MNIST_NPZ_TRAIN = 8000

_MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)
MNIST_FILES = {
    "train-images-idx3-ubyte": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    "train-labels-idx1-ubyte": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
    "t10k-images-idx3-ubyte": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    "t10k-labels-idx1-ubyte": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
}

CIFAR_TARBALL = RemoteFile(
    "cifar-10-python.tar.gz",
    ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",),
    "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce",
)
CIFAR_DIR = "cifar-10-batches-py"
CIFAR_NPZ = {"train": "cifar10-train-jpeg.npz", "test": "cifar10-test-jpeg.npz"}

SPAMBASE_FILE = RemoteFile(
    "spambase.data",
    (
        "https://archive.ics.uci.edu/ml/machine-learning-databases/spambase/spambase.data",
    ),
    "b1ef93de71f97714d3d7d4f58fc9f718da7bbc8ac8a150eff2778616a8097b12",
)

UCI_NAMES = ("iris", "wine", "spambase", "digits")


# --------------------------------------------------------------------------------------
# MNIST


def _parse_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped) as distributed on the MNIST page."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        data = fh.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DatasetFormatError(f"{path} is not an unsigned-byte IDX file (bad magic number)")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    expected = int(np.prod(dims)) if dims else 0
    if len(data) - offset != expected:
        raise DatasetFormatError(
            f"{path}: IDX header announces {dims} ({expected} bytes), file holds "
            f"{len(data) - offset}"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(dims).copy()


def _find_idx(home: Path) -> dict[str, Path] | None:
    """The four MNIST IDX files (raw or .gz) in ``home`` or ``home/mnist``, if all are present."""
    for folder in (home, home / "mnist", home / "MNIST" / "raw"):
        found: dict[str, Path] = {}
        for stem in MNIST_FILES:
            for cand in (folder / stem, folder / f"{stem}.gz"):
                if cand.is_file():
                    found[stem] = cand
                    break
        if len(found) == len(MNIST_FILES):
            return found
    return None


@lru_cache(maxsize=4)
def _mnist_idx_arrays(paths: tuple[tuple[str, str], ...]) -> dict[str, np.ndarray]:
    return {stem: _parse_idx(Path(p)) for stem, p in paths}


@lru_cache(maxsize=4)
def _npz_arrays(path: str, mtime: float) -> tuple[np.ndarray, np.ndarray]:
    from boundkit.data.user import check_npz_headers

    try:
        check_npz_headers(Path(path))
        with np.load(path, allow_pickle=False) as data:
            if "x" not in data.files or "y" not in data.files:
                raise DatasetFormatError(f"{path} must hold arrays 'x' and 'y', has {data.files}")
            return data["x"], data["y"]
    except (OSError, ValueError) as exc:
        if isinstance(exc, DatasetFormatError):
            raise
        raise DatasetFormatError(f"{path} is not a readable .npz file: {exc}") from exc


def _load_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    return _npz_arrays(str(path.resolve()), path.stat().st_mtime)


def _no_val(name: str) -> DatasetFormatError:
    return DatasetFormatError(
        f"{name} has no validation split (only 'train', 'test' and 'all'); carve one out of "
        "'train' yourself if you need it"
    )


def load_mnist(
    root: PathLike | None = None, split: str = "test", *, download: bool = True, seed: int = 0
) -> Tensors:
    """MNIST digits as ``x`` float32 [N, 1, 28, 28] in [0, 1] and ``y`` int64.

    Sources, in order: the four IDX files as distributed (raw or ``.gz``, in ``root`` or
    ``root/mnist``) with the official 60,000 / 10,000 split; else the shared ``mnist-10k.npz``
    (10,000 digits in class order) shuffled with ``numpy.random.default_rng(seed)`` and split
    into the first 8,000 (train) and last 2,000 (test); else the IDX files are downloaded
    (SHA-256 checked) into ``root/mnist``. MNIST has no validation split.
    """
    check_split(split)
    if split == "val":
        raise _no_val("mnist")
    home = data_home(root)
    idx = _find_idx(home)
    if idx is None and (home / MNIST_NPZ).is_file():
        x, y = _load_npz(home / MNIST_NPZ)
        if x.ndim != 3 or x.shape[0] != y.shape[0] or x.shape[1:] != (28, 28):
            raise DatasetFormatError(f"{home / MNIST_NPZ}: expected x [N,28,28], got {x.shape}")
        perm = np.random.default_rng(seed).permutation(x.shape[0])
        sel = {
            "train": perm[:MNIST_NPZ_TRAIN],
            "test": perm[MNIST_NPZ_TRAIN:],
            "all": np.arange(x.shape[0]),
        }[split]
        return to_tensors(x[sel][:, None], y[sel])
    if idx is None:
        remote = [
            RemoteFile(f"{stem}.gz", tuple(m + f"{stem}.gz" for m in _MNIST_MIRRORS), sha)
            for stem, sha in MNIST_FILES.items()
        ]
        ensure_files(
            "mnist",
            remote,
            home / "mnist",
            download=download,
            extra_hint=f"(Alternatively, put {MNIST_NPZ} in {home}.)",
        )
        idx = _find_idx(home)
        assert idx is not None
    arrays = _mnist_idx_arrays(tuple(sorted((k, str(v)) for k, v in idx.items())))
    parts = {
        "train": (arrays["train-images-idx3-ubyte"], arrays["train-labels-idx1-ubyte"]),
        "test": (arrays["t10k-images-idx3-ubyte"], arrays["t10k-labels-idx1-ubyte"]),
    }
    if split == "all":
        x = np.concatenate([parts["train"][0], parts["test"][0]])
        y = np.concatenate([parts["train"][1], parts["test"][1]])
    else:
        x, y = parts[split]
    return to_tensors(x[:, None], y)


# --------------------------------------------------------------------------------------
# CIFAR-10


class _BatchUnpickler(pickle.Unpickler):
    """Unpickler for the CIFAR-10 python batches that only rebuilds numpy arrays.

    The batches are pickles (dicts of bytes, lists and uint8 arrays); any other global
    (a function, a class) is refused, so a tampered batch cannot run code.
    """

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing global {module}.{name} in a CIFAR batch")


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as fh:
            d = _BatchUnpickler(fh, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, OSError) as exc:
        raise DatasetFormatError(f"{path} is not a CIFAR-10 python batch: {exc}") from exc
    if not isinstance(d, dict):
        raise DatasetFormatError(f"{path} is not a CIFAR-10 python batch (not a dict)")
    data = d.get(b"data", d.get("data"))
    labels = d.get(b"labels", d.get("labels"))
    if data is None or labels is None:
        raise DatasetFormatError(f"{path}: CIFAR batch without 'data'/'labels'")
    x = np.asarray(data, dtype=np.uint8).reshape(-1, 3, 32, 32)
    y = np.asarray(labels, dtype=np.int64)
    if x.shape[0] != y.shape[0]:
        raise DatasetFormatError(f"{path}: {x.shape[0]} images but {y.shape[0]} labels")
    return x, y


def _cifar_batches(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    parts = [_read_cifar_batch(folder / n) for n in names]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def _has_cifar_batches(folder: Path) -> bool:
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    return all((folder / n).is_file() for n in names)


def load_cifar10(
    root: PathLike | None = None, split: str = "test", *, download: bool = True, seed: int = 0
) -> Tensors:
    """CIFAR-10 as ``x`` float32 [N, 3, 32, 32] in [0, 1] (RGB) and ``y`` int64.

    Sources, in order: the standard python batches (``root/cifar-10-batches-py``, read with
    an unpickler that only rebuilds numpy arrays); else the shared npz files
    ``cifar10-{train,test}-jpeg.npz`` (HWC, JPEG-decoded: pixels differ slightly from the
    original release); else the python tarball is downloaded (SHA-256 checked) and
    extracted. Official 50,000 / 10,000 split; no validation split. ``seed`` is unused.
    """
    del seed
    check_split(split)
    if split == "val":
        raise _no_val("cifar10")
    if split == "all":
        xa, ya = load_cifar10(root, "train", download=download)
        xb, yb = load_cifar10(root, "test", download=download)
        return torch.cat([xa, xb]), torch.cat([ya, yb])
    home = data_home(root)
    folder = home / CIFAR_DIR
    if _has_cifar_batches(folder):
        x, y = _cifar_batches(folder, split)
        return to_tensors(x, y)
    npz = home / CIFAR_NPZ[split]
    if npz.is_file():
        x, y = _load_npz(npz)
        if x.ndim != 4 or x.shape[1:] != (32, 32, 3):
            raise DatasetFormatError(f"{npz}: expected x [N,32,32,3] (HWC), got {x.shape}")
        return to_tensors(x.transpose(0, 3, 1, 2), y)
    (tar_path,) = ensure_files(
        "cifar10",
        [CIFAR_TARBALL],
        home,
        download=download,
        extra_hint=f"(Alternatively, put {CIFAR_NPZ['train']} and {CIFAR_NPZ['test']} in "
        f"{home}, or the extracted folder {CIFAR_DIR}.)",
    )
    try:
        with tarfile.open(tar_path, "r:gz") as tar:
            members = [m for m in tar.getmembers() if m.name.startswith(CIFAR_DIR + "/")]
            tar.extractall(home, members=members, filter="data")
    except (tarfile.TarError, OSError) as exc:
        raise DatasetFormatError(f"cannot extract {tar_path}: {exc}") from exc
    if not _has_cifar_batches(folder):
        raise DatasetFormatError(f"{tar_path} did not contain the CIFAR-10 python batches")
    x, y = _cifar_batches(folder, split)
    return to_tensors(x, y)


# --------------------------------------------------------------------------------------
# Tabular (UCI) data sets and scikit-learn's digits


@cache
def _sklearn_arrays(name: str) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled copy of ``name`` (read-only arrays, cached per process)."""
    import sklearn.datasets as skd

    bunch = getattr(skd, f"load_{name}")()
    data = bunch.images if name == "digits" else bunch.data
    data.setflags(write=False)
    bunch.target.setflags(write=False)
    return data, bunch.target


def _tabular(features: np.ndarray, labels: np.ndarray, split: str, seed: int) -> Tensors:
    idx = split_indices_70_20_10(features.shape[0], seed)
    scaled = minmax_scale(features, idx["train"])
    sel = idx[split]
    return to_tensors(scaled[sel], labels[sel])


def load_iris(
    root: PathLike | None = None, split: str = "test", *, download: bool = True, seed: int = 0
) -> Tensors:
    """Iris (scikit-learn's copy of the UCI set): ``x`` [N, 4] in [0, 1], 3 classes.

    70/20/10 train/test/validation partition (Peck 2017, §4.3), features min/max-scaled with
    the training rows. ``root`` and ``download`` are unused (the data ships with sklearn).
    """
    check_split(split)
    data, target = _sklearn_arrays("iris")
    return _tabular(data, target, split, seed)


def load_wine(
    root: PathLike | None = None, split: str = "test", *, download: bool = True, seed: int = 0
) -> Tensors:
    """Wine (scikit-learn's copy of the UCI set): ``x`` [N, 13] in [0, 1], 3 classes.

    70/20/10 train/test/validation partition (Peck 2017, §4.3), min/max-scaled with the
    training rows.
    """
    check_split(split)
    data, target = _sklearn_arrays("wine")
    return _tabular(data, target, split, seed)


def load_spambase(
    root: PathLike | None = None, split: str = "test", *, download: bool = True, seed: int = 0
) -> Tensors:
    """UCI Spambase: ``x`` [N, 57] in [0, 1], ``y`` 1 = spam, 0 = legitimate.

    Reads ``spambase.data`` (CSV, no header, as distributed by UCI) from the data home,
    downloading it (SHA-256 checked) if missing. 70/20/10 train/test/validation partition
    (Peck 2017, §4.3), min/max-scaled with the training rows.
    """
    check_split(split)
    home = data_home(root)
    (path,) = ensure_files("spambase", [SPAMBASE_FILE], home, download=download)
    try:
        table = np.loadtxt(path, delimiter=",", dtype=np.float64, ndmin=2)
    except ValueError as exc:
        raise DatasetFormatError(f"{path} is not the UCI spambase CSV: {exc}") from exc
    if table.shape[1] != 58:
        raise DatasetFormatError(f"{path}: expected 58 columns, got {table.shape[1]}")
    return _tabular(table[:, :57], table[:, 57].astype(np.int64), split, seed)


def load_digits(
    root: PathLike | None = None, split: str = "test", *, download: bool = True, seed: int = 0
) -> Tensors:
    """scikit-learn's 8x8 digits as ``x`` [N, 1, 8, 8] in [0, 1] (pixel / 16), 10 classes.

    Same 70/20/10 train/test/validation partition as the UCI sets (not in the thesis).
    """
    check_split(split)
    images, target = _sklearn_arrays("digits")
    idx = split_indices_70_20_10(images.shape[0], seed)[split]
    x = np.clip(images[idx] / 16.0, 0.0, 1.0)[:, None]
    return to_tensors(x, target[idx])


LOADERS = {
    "mnist": load_mnist,
    "cifar10": load_cifar10,
    "iris": load_iris,
    "wine": load_wine,
    "digits": load_digits,
    "spambase": load_spambase,
}


def load_dataset(
    name: str,
    root: PathLike | None = None,
    split: str = "test",
    *,
    download: bool = True,
    split_seed: int = SPLIT_SEED,
    seed: int | None = None,
) -> Tensors:
    """Load a named data set: one of ``mnist, cifar10, iris, wine, digits, spambase``.

    Returns ``(x, y)`` with ``x`` float32 in [0, 1] and ``y`` int64. ``split`` is one of
    ``train, val, test, all`` (MNIST and CIFAR-10 have no ``val``). ``split_seed`` selects the
    deterministic partition of the UCI sets, digits and the 10k MNIST npz; it defaults to the
    data set's own :data:`~boundkit.data.SPLIT_SEED` and is *not* a run's seed (a run with
    another ``--seed`` sees the same test images). ``seed`` is the older name of
    ``split_seed``.
    """
    if not isinstance(name, str):
        raise DatasetFormatError(f"a data set name must be a string, got {type(name).__name__}")
    key = name.lower().replace("-", "").replace("_", "")
    if key not in LOADERS:
        raise BadArgumentError(f"unknown data set {name!r}; known: {sorted(LOADERS)} (or a "
                               ".npz/.pt file)")
    if seed is not None:
        if split_seed != SPLIT_SEED and split_seed != seed:
            raise BadArgumentError(f"seed={seed} and split_seed={split_seed} disagree (seed is the "
                             "older name of split_seed)")
        split_seed = seed
    return LOADERS[key](root, split, download=download, seed=split_seed)


__all__ = [
    "DatasetNotFoundError",
    "load_cifar10",
    "load_dataset",
    "load_digits",
    "load_iris",
    "load_mnist",
    "load_spambase",
    "load_wine",
]
