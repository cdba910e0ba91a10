"""A user's own data: .npz / .pt tensor files and image folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from boundkit.data import (
    DatasetFormatError,
    DatasetNotFoundError,
    load_image_folder,
    load_tensor_file,
)


def test_npz_uint8_is_scaled(tmp_path: Path) -> None:
    p = tmp_path / "d.npz"
    np.savez(p, x=np.array([[[0, 255], [51, 102]]], np.uint8), y=np.array([4]))
    x, y = load_tensor_file(p)
    assert x.dtype == torch.float32 and y.dtype == torch.int64
    assert torch.allclose(x, torch.tensor([[[0.0, 1.0], [0.2, 0.4]]]))
    assert y.tolist() == [4]


def test_npz_float_range_checked(tmp_path: Path) -> None:
    p = tmp_path / "d.npz"
    np.savez(p, x=np.array([[0.5, 3.0]]), y=np.array([0]))
    with pytest.raises(DatasetFormatError, match=r"outside\s+\[0, 1\]"):
        load_tensor_file(p)
    x, _ = load_tensor_file(p, check_range=False)
    assert x.dtype == torch.float32 and float(x.max()) == 3.0


def test_npz_missing_keys_and_object_arrays(tmp_path: Path) -> None:
    p = tmp_path / "d.npz"
    np.savez(p, images=np.zeros((2, 3)))
    with pytest.raises(DatasetFormatError, match="'x' and 'y'"):
        load_tensor_file(p)
    q = tmp_path / "o.npz"
    np.savez(q, x=np.array([{"a": 1}], dtype=object), y=np.array([0]))
    with pytest.raises(DatasetFormatError):
        load_tensor_file(q)


def test_pt_dict_of_tensors(tmp_path: Path) -> None:
    p = tmp_path / "d.pt"
    x0 = torch.rand(5, 1, 4, 4)
    torch.save({"x": x0, "y": torch.arange(5)}, p)
    x, y = load_tensor_file(p)
    assert torch.equal(x, x0) and y.tolist() == [0, 1, 2, 3, 4]


def test_pt_label_count_mismatch(tmp_path: Path) -> None:
    p = tmp_path / "d.pt"
    torch.save({"x": torch.rand(5, 2), "y": torch.arange(4)}, p)
    with pytest.raises(DatasetFormatError, match="5 samples"):
        load_tensor_file(p)


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (open, (str(self.marker), "w"))


def test_pt_with_code_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    p = tmp_path / "evil.pt"
    torch.save({"x": torch.rand(2, 2), "y": torch.zeros(2), "z": _Evil(marker)}, p)
    with pytest.raises(DatasetFormatError, match="weights_only=True"):
        load_tensor_file(p)
    assert not marker.exists()


def test_missing_and_unsupported(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError):
        load_tensor_file(tmp_path / "nope.npz")
    p = tmp_path / "d.csv"
    p.write_text("1,2\n")
    with pytest.raises(DatasetFormatError, match="unsupported"):
        load_tensor_file(p)


def test_image_folder(tmp_path: Path) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    arrays = {}
    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        for i in range(2):
            a = rng.integers(0, 256, (6, 5, 3), dtype=np.uint8)
            Image.fromarray(a).save(tmp_path / cls / f"{i}.png")
            arrays[(cls, i)] = a
    (tmp_path / "dog" / "notes.txt").write_text("ignored")
    x, y, classes = load_image_folder(tmp_path, return_classes=True)
    assert classes == ["cat", "dog"] and y.tolist() == [0, 0, 1, 1]
    assert x.shape == (4, 3, 6, 5) and x.dtype == torch.float32
    np.testing.assert_allclose(
        x[2].numpy(), arrays[("dog", 0)].transpose(2, 0, 1) / 255.0, rtol=1e-6
    )
    xg, _ = load_image_folder(tmp_path, mode="L", size=(4, 4))
    assert xg.shape == (4, 1, 4, 4) and float(xg.max()) <= 1.0


def test_image_folder_size_mismatch(tmp_path: Path) -> None:
    from PIL import Image

    (tmp_path / "a").mkdir()
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "a" / "0.png")
    Image.fromarray(np.zeros((5, 4), np.uint8)).save(tmp_path / "a" / "1.png")
    with pytest.raises(DatasetFormatError, match="size="):
        load_image_folder(tmp_path)
    x, _ = load_image_folder(tmp_path, size=(4, 4))
    assert x.shape == (2, 1, 4, 4)
    with pytest.raises(DatasetFormatError, match="no class sub-folders"):
        load_image_folder(tmp_path / "a")
