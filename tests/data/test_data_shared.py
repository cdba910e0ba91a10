"""Loading the real files of ``../shared/data`` (MNIST 10k npz, CIFAR-10 npz, Spambase)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from boundkit.data import load_dataset, load_mnist

SHARED = Path(__file__).parents[2] / ".." / "shared" / "data"


def _need(name: str) -> Path:
    p = SHARED / name
    if not p.is_file():
        pytest.skip(f"{p} is absent (the shared data folder of the project checkout)")
    return p


def test_mnist_npz_8000_2000_split() -> None:
    _need("mnist-10k.npz")
    x_tr, y_tr = load_dataset("mnist", SHARED, "train", download=False)
    x_te, y_te = load_dataset("mnist", SHARED, "test", download=False)
    assert x_tr.shape == (8000, 1, 28, 28) and x_te.shape == (2000, 1, 28, 28)
    assert x_tr.dtype == torch.float32 and y_tr.dtype == torch.int64
    for x in (x_tr, x_te):
        assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    # shuffled before splitting: every class is in both parts
    assert set(y_tr.tolist()) == set(range(10)) and set(y_te.tolist()) == set(range(10))
    # disjoint and together the whole file
    raw = np.load(SHARED / "mnist-10k.npz")
    perm = np.random.default_rng(0).permutation(10000)
    np.testing.assert_array_equal(y_tr.numpy(), raw["y"][perm[:8000]])
    np.testing.assert_array_equal((x_te[:, 0] * 255).round().byte().numpy(), raw["x"][perm[8000:]])
    x_all, _ = load_mnist(SHARED, "all")
    assert x_all.shape[0] == 10000


def test_mnist_deterministic_and_no_val() -> None:
    _need("mnist-10k.npz")
    a = load_mnist(SHARED, "test")
    b = load_mnist(SHARED, "test")
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    from boundkit.data import DatasetFormatError

    with pytest.raises(DatasetFormatError, match="no validation split"):
        load_mnist(SHARED, "val")


def test_env_var_root(monkeypatch: pytest.MonkeyPatch) -> None:
    _need("mnist-10k.npz")
    monkeypatch.setenv("BOUNDKIT_DATA", str(SHARED))
    x, _ = load_dataset("mnist", split="test", download=False)
    assert x.shape == (2000, 1, 28, 28)


def test_cifar10_npz_test_split() -> None:
    _need("cifar10-test-jpeg.npz")
    x, y = load_dataset("cifar10", SHARED, "test", download=False)
    assert x.shape == (10000, 3, 32, 32) and y.shape == (10000,)
    assert x.dtype == torch.float32 and float(x.min()) >= 0 and float(x.max()) <= 1
    raw = np.load(SHARED / "cifar10-test-jpeg.npz")
    # HWC -> CHW, RGB order kept
    np.testing.assert_array_equal(
        (x[7] * 255).round().byte().numpy(), raw["x"][7].transpose(2, 0, 1)
    )
    assert torch.bincount(y).tolist() == [1000] * 10


def test_spambase_split_and_range() -> None:
    _need("spambase.data")
    parts = {
        s: load_dataset("spambase", SHARED, s, download=False) for s in ("train", "test", "val")
    }
    sizes = {s: parts[s][0].shape[0] for s in parts}
    assert sizes == {"train": 3221, "test": 920, "val": 460}  # 70/20/10 of 4,601
    for x, y in parts.values():
        assert x.shape[1] == 57 and float(x.min()) >= 0 and float(x.max()) <= 1
        assert set(y.unique().tolist()) <= {0, 1}
    y_all = load_dataset("spambase", SHARED, "all")[1]
    assert int(y_all.sum()) == 1813 and y_all.numel() == 4601
    x_tr = parts["train"][0]
    assert torch.allclose(x_tr.max(0).values, torch.ones(57))
