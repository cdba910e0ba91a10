"""Missing files, (simulated) offline downloads, checksums and the raw formats (IDX, batches)."""

from __future__ import annotations

import gzip
import hashlib
import pickle
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch

import boundkit.data._common as common
from boundkit.data import (
    DatasetFormatError,
    DatasetNotFoundError,
    load_cifar10,
    load_dataset,
    load_mnist,
)
from boundkit.errors import BoundkitError

SHARED = Path(__file__).parents[2] / ".." / "shared" / "data"


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []

    def no_network(url: str, dest: Path, timeout: float = 0) -> None:
        calls.append(url)
        raise urllib.error.URLError("simulated: network is unreachable")

    monkeypatch.setattr(common, "_fetch", no_network)
    return calls


@pytest.mark.parametrize(
    ("name", "filename"),
    [("spambase", "spambase.data"), ("mnist", "train-images-idx3-ubyte.gz"),
     ("cifar10", "cifar-10-python.tar.gz")],
)
def test_offline_message_names_file_and_folder(
    offline: list[str], tmp_path: Path, name: str, filename: str
) -> None:
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset(name, tmp_path, "test")
    msg = str(info.value)
    assert filename in msg and str(tmp_path) in msg and "BOUNDKIT_DATA" in msg
    assert "offline" in msg
    assert isinstance(info.value, BoundkitError) and isinstance(info.value, FileNotFoundError)
    assert offline, "the downloader should have been tried"
    assert not any(p.suffix == ".part" for p in tmp_path.rglob("*")), "partial files left behind"


def test_download_false_never_fetches(offline: list[str], tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError, match="download=False"):
        load_dataset("spambase", tmp_path, download=False)
    assert offline == []


def test_checksum_mismatch_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def wrong(url: str, dest: Path, timeout: float = 0) -> None:
        Path(dest).write_text("0,1\n")

    monkeypatch.setattr(common, "_fetch", wrong)
    with pytest.raises(DatasetNotFoundError, match="checksum mismatch"):
        load_dataset("spambase", tmp_path)
    assert not (tmp_path / "spambase.data").exists()


def test_download_with_matching_checksum(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    src = SHARED / "spambase.data"
    if not src.is_file():
        pytest.skip(f"{src} is absent (the shared data folder of the project checkout)")

    def copy(url: str, dest: Path, timeout: float = 0) -> None:
        assert "spambase" in url
        Path(dest).write_bytes(src.read_bytes())

    monkeypatch.setattr(common, "_fetch", copy)
    x, y = load_dataset("spambase", tmp_path, "val")
    assert (tmp_path / "spambase.data").is_file() and x.shape == (460, 57)


def _write_idx(path: Path, arr: np.ndarray) -> None:
    header = bytes([0, 0, 8, arr.ndim]) + b"".join(d.to_bytes(4, "big") for d in arr.shape)
    with gzip.open(path, "wb") as fh:
        fh.write(header + arr.astype(np.uint8).tobytes())


def test_mnist_idx_files_use_official_split(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    folder = tmp_path / "mnist"
    folder.mkdir()
    tr = rng.integers(0, 256, (12, 28, 28), dtype=np.uint8)
    te = rng.integers(0, 256, (5, 28, 28), dtype=np.uint8)
    _write_idx(folder / "train-images-idx3-ubyte.gz", tr)
    _write_idx(folder / "train-labels-idx1-ubyte.gz", np.arange(12) % 10)
    _write_idx(folder / "t10k-images-idx3-ubyte.gz", te)
    _write_idx(folder / "t10k-labels-idx1-ubyte.gz", np.arange(5))
    # the IDX files win over an npz lying next to them
    np.savez(tmp_path / "mnist-10k.npz", x=np.zeros((3, 28, 28), np.uint8), y=np.zeros(3))
    x, y = load_mnist(tmp_path, "train", download=False)
    assert x.shape == (12, 1, 28, 28) and y.tolist() == (np.arange(12) % 10).tolist()
    np.testing.assert_allclose(x[:, 0].numpy(), tr / 255.0, rtol=1e-6)
    x, y = load_mnist(tmp_path, "test", download=False)
    assert x.shape == (5, 1, 28, 28)
    assert load_mnist(tmp_path, "all")[0].shape[0] == 17


def test_bad_idx_file(tmp_path: Path) -> None:
    folder = tmp_path / "mnist"
    folder.mkdir()
    for stem in common_stems():
        (folder / stem).write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x09abc")
    with pytest.raises(DatasetFormatError, match="IDX header"):
        load_mnist(tmp_path, "test", download=False)


def common_stems() -> list[str]:
    from boundkit.data.datasets import MNIST_FILES

    return list(MNIST_FILES)


def _cifar_batches(folder: Path) -> None:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        d = {b"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), b"labels": [0, 1, 2, 3]}
        (folder / name).write_bytes(pickle.dumps(d, protocol=2))


def test_cifar_python_batches(tmp_path: Path) -> None:
    _cifar_batches(tmp_path / "cifar-10-batches-py")
    x, y = load_cifar10(tmp_path, "train", download=False)
    assert x.shape == (20, 3, 32, 32) and y.tolist() == [0, 1, 2, 3] * 5
    assert load_cifar10(tmp_path, "test")[0].shape == (4, 3, 32, 32)
    assert load_cifar10(tmp_path, "all")[0].shape == (24, 3, 32, 32)


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (open, (str(self.marker), "w"))


def test_cifar_batch_with_code_is_refused(tmp_path: Path) -> None:
    _cifar_batches(tmp_path / "cifar-10-batches-py")
    marker = tmp_path / "pwned"
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(pickle.dumps(_Evil(marker)))
    with pytest.raises(DatasetFormatError, match="refusing global"):
        load_cifar10(tmp_path, "test")
    assert not marker.exists()


def test_sha256_helper(tmp_path: Path) -> None:
    p = tmp_path / "f"
    p.write_bytes(b"boundkit")
    assert common.sha256_of(p) == hashlib.sha256(b"boundkit").hexdigest()


def test_to_tensors_uint8_scaling() -> None:
    x, y = common.to_tensors(np.array([[0, 255]], np.uint8), np.array([3]))
    assert torch.equal(x, torch.tensor([[0.0, 1.0]])) and y.dtype == torch.int64
