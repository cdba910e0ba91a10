"""Splits, ranges and shapes of the data sets that need no file (scikit-learn's copies)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from boundkit.data import SPLITS, data_home, load_dataset
from boundkit.data._common import minmax_scale, split_indices_70_20_10

SIZES = {"iris": (150, 4, 3), "wine": (178, 13, 3), "digits": (1797, (1, 8, 8), 10)}


def _rows(x: torch.Tensor) -> set[bytes]:
    return {r.numpy().tobytes() for r in x.reshape(x.shape[0], -1)}


@pytest.mark.parametrize("name", sorted(SIZES))
def test_shapes_ranges_and_dtypes(name: str) -> None:
    n, d, k = SIZES[name]
    x, y = load_dataset(name, split="all")
    assert x.dtype == torch.float32 and y.dtype == torch.int64
    assert x.shape[0] == n and y.shape == (n,)
    assert tuple(x.shape[1:]) == (d if isinstance(d, tuple) else (d,))
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    assert set(y.tolist()) == set(range(k))


@pytest.mark.parametrize("name", sorted(SIZES))
def test_70_20_10_proportions_and_disjoint(name: str) -> None:
    n = SIZES[name][0]
    parts = {s: load_dataset(name, split=s) for s in ("train", "test", "val")}
    sizes = {s: parts[s][0].shape[0] for s in parts}
    assert sum(sizes.values()) == n
    assert sizes["train"] == round(0.7 * n) and sizes["test"] == round(0.2 * n)
    assert abs(sizes["val"] - 0.1 * n) <= 1.5
    # disjoint as index sets
    idx = split_indices_70_20_10(n, 0)
    assert not set(idx["train"]) & set(idx["test"])
    assert not set(idx["train"]) & set(idx["val"])
    assert not set(idx["test"]) & set(idx["val"])
    # the parts of "all" are exactly train + test + val (same scaling)
    x_all, y_all = load_dataset(name, split="all")
    for s in parts:
        torch.testing.assert_close(parts[s][0], x_all[idx[s]], rtol=0, atol=0)
        assert torch.equal(parts[s][1], y_all[idx[s]])


@pytest.mark.parametrize("name", sorted(SIZES))
def test_deterministic_and_split_seed_dependent(name: str) -> None:
    a = load_dataset(name, split="test")
    b = load_dataset(name, split="test", split_seed=0)
    c = load_dataset(name, split="test", split_seed=1)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
    assert torch.equal(load_dataset(name, split="test", seed=1)[0], c[0])  # the older name


def test_tabular_scaling_uses_training_minmax() -> None:
    x_tr, _ = load_dataset("wine", split="train")
    # every feature spans exactly [0, 1] on the training rows
    assert torch.allclose(x_tr.min(0).values, torch.zeros(13))
    assert torch.allclose(x_tr.max(0).values, torch.ones(13))


def test_digits_scaling_is_pixel_over_16() -> None:
    from sklearn.datasets import load_digits

    x, _ = load_dataset("digits", split="all")
    ref = load_digits().images / 16.0
    np.testing.assert_allclose(x[:, 0].numpy(), ref.astype(np.float32))


@settings(max_examples=40, deadline=None)
@given(n=st.integers(min_value=1, max_value=3000), seed=st.integers(0, 2**32 - 1))
def test_split_indices_partition(n: int, seed: int) -> None:
    idx = split_indices_70_20_10(n, seed)
    joined = np.concatenate([idx["train"], idx["test"], idx["val"]])
    assert sorted(joined.tolist()) == list(range(n))
    assert len(idx["train"]) == round(0.7 * n) and len(idx["test"]) == round(0.2 * n)


@settings(max_examples=30, deadline=None)
@given(
    data=st.lists(
        st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=3, max_size=3),
        min_size=2,
        max_size=30,
    )
)
def test_minmax_scale_in_unit_box(data: list[list[float]]) -> None:
    arr = np.asarray(data)
    out = minmax_scale(arr, np.arange(arr.shape[0] // 2 + 1))
    assert out.min() >= 0.0 and out.max() <= 1.0 and np.isfinite(out).all()


def test_bad_split_and_unknown_name() -> None:
    with pytest.raises(ValueError, match="split"):
        load_dataset("iris", split="validation")
    with pytest.raises(ValueError, match="unknown data set"):
        load_dataset("imagenet")
    assert set(SPLITS) == {"train", "val", "test", "all"}


def test_root_resolution(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv("BOUNDKIT_DATA", str(tmp_path / "env"))
    assert data_home(tmp_path / "arg") == tmp_path / "arg"
    assert data_home() == tmp_path / "env"
    monkeypatch.delenv("BOUNDKIT_DATA")
    assert str(data_home()).endswith(".cache/boundkit")
