"""A user's own data: tensor files (``.npz`` / ``.pt``) and image folders.

Nothing here runs code from a data file: ``.npz`` is read with ``allow_pickle=False`` and
``.pt`` with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import torch

from boundkit.data._common import DatasetFormatError, DatasetNotFoundError

PathLike = str | os.PathLike[str]
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


#: the most elements a user data file may announce for one array (about 16 GB of float32)
MAX_ELEMENTS = 2**32


def check_npz_headers(path: Path) -> None:
    """Check the ``.npy`` headers inside an ``.npz`` before numpy allocates anything: each
    array's announced ``shape x itemsize`` must fit in the bytes the archive holds for it (a
    hostile header cannot make the loader allocate memory the file does not back)."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                if not info.filename.endswith(".npy"):
                    continue
                with zf.open(info) as fh:
                    version = np.lib.format.read_magic(fh)
                    if version == (1, 0):
                        shape, _, dtype = np.lib.format.read_array_header_1_0(fh)
                    else:
                        shape, _, dtype = np.lib.format.read_array_header_2_0(fh)
                count = 1
                for d in shape:
                    count *= int(d)
                if count > MAX_ELEMENTS or count * dtype.itemsize > info.file_size:
                    raise DatasetFormatError(
                        f"{path}: array {info.filename[:-4]!r} announces shape {tuple(shape)} "
                        f"({count * dtype.itemsize} bytes) but the archive holds "
                        f"{info.file_size} bytes for it: corrupt or hostile file"
                    )
    except DatasetFormatError:
        raise
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise DatasetFormatError(f"{path} is not a readable .npz file: {exc}") from None


def _as_x(x: torch.Tensor, path: Path, check_range: bool) -> torch.Tensor:
    if x.dim() < 2:
        raise DatasetFormatError(f"{path}: 'x' must be [N, ...] with at least 2 dims (one sample "
                                 f"per row), got shape {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise DatasetFormatError(f"{path}: 'x' holds no samples (shape {tuple(x.shape)})")
    if x.dtype == torch.uint8:
        return x.to(torch.float32).div_(255.0)
    if not (x.is_floating_point() or x.dtype in (torch.int64, torch.int32, torch.int16)):
        raise DatasetFormatError(f"{path}: 'x' has unsupported dtype {x.dtype}")
    x = x.to(torch.float32)
    if not torch.isfinite(x).all():
        raise DatasetFormatError(f"{path}: 'x' contains NaN or infinity")
    if check_range and x.numel() and (x.min() < 0 or x.max() > 1):
        raise DatasetFormatError(
            f"{path}: 'x' has values in [{x.min().item():.4g}, {x.max().item():.4g}], outside "
            "[0, 1]; scale it first (uint8 images are divided by 255 automatically) or pass "
            "check_range=False"
        )
    return x


def _as_y(y: torch.Tensor, n: int, path: Path) -> torch.Tensor:
    if y.is_floating_point():
        if not torch.equal(y, y.round()):
            raise DatasetFormatError(f"{path}: 'y' must hold integer class labels")
    elif y.dtype == torch.bool or y.is_complex():
        raise DatasetFormatError(f"{path}: 'y' has unsupported dtype {y.dtype}")
    y = y.to(torch.int64).reshape(-1)
    if y.shape[0] != n:
        raise DatasetFormatError(f"{path}: {n} samples in 'x' but {y.shape[0]} labels in 'y'")
    if n and y.min() < 0:
        raise DatasetFormatError(f"{path}: 'y' holds negative labels")
    return y


def load_tensor_file(
    path: PathLike, *, check_range: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Load ``(x, y)`` from a ``.npz`` (arrays ``x`` and ``y``) or a ``.pt``/``.pth`` file.

    A ``.pt`` file must hold a dict with tensors ``x`` and ``y`` and is read with
    ``torch.load(weights_only=True)`` (a pickle with code objects is refused, never loaded
    unsafely). uint8 ``x`` is divided by 255; float ``x`` must already lie in [0, 1] unless
    ``check_range=False``. Shapes are kept as stored (use NCHW for images).
    """
    p = Path(path)
    if not p.is_file():
        raise DatasetNotFoundError(f"no such data file: {p}")
    suffix = p.suffix.lower()
    if suffix == ".npz":
        check_npz_headers(p)
        try:
            with np.load(p, allow_pickle=False) as data:
                if "x" not in data.files or "y" not in data.files:
                    raise DatasetFormatError(f"{p} must hold arrays 'x' and 'y', has {data.files}")
                xa, ya = data["x"], data["y"]
        except (OSError, ValueError, EOFError, KeyError, MemoryError) as exc:
            if isinstance(exc, DatasetFormatError):
                raise
            raise DatasetFormatError(
                f"{p} is not a readable .npz of numeric arrays (object arrays are refused): {exc}"
            ) from exc
        for key, arr in (("x", xa), ("y", ya)):
            if arr.dtype.kind not in "biuf":
                raise DatasetFormatError(f"{p}: '{key}' has unsupported dtype {arr.dtype} "
                                         "(numbers only)")
        x = torch.from_numpy(np.ascontiguousarray(xa))
        y = torch.from_numpy(np.ascontiguousarray(ya))
    elif suffix in (".pt", ".pth"):
        try:
            obj = torch.load(p, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            raise DatasetFormatError(
                f"{p} was refused by torch.load(weights_only=True): it contains objects other "
                f"than tensors and plain containers (possibly code); boundkit never loads such "
                f"files unsafely. Save a dict {{'x': tensor, 'y': tensor}} instead. ({exc})"
            ) from exc
        except (RuntimeError, OSError, EOFError, ValueError, KeyError, IndexError, TypeError,
                AttributeError, MemoryError) as exc:  # torch reports garbage in many ways
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise DatasetFormatError(f"{p} is not a readable torch file: {first}") from None
        if not isinstance(obj, dict) or not isinstance(obj.get("x"), torch.Tensor) or not (
            isinstance(obj.get("y"), torch.Tensor)
        ):
            raise DatasetFormatError(f"{p} must hold a dict with tensors 'x' and 'y'")
        x, y = obj["x"], obj["y"]
    else:
        raise DatasetFormatError(f"{p}: unsupported data file type {suffix!r} (use .npz or .pt)")
    x = _as_x(x, p, check_range)
    return x, _as_y(y, x.shape[0], p)


def load_image_folder(
    path: PathLike,
    *,
    mode: str | None = None,
    size: tuple[int, int] | None = None,
    return_classes: bool = False,
) -> tuple[torch.Tensor, torch.Tensor] | tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Load a folder of images laid out as ``path/<class name>/<image>``.

    Classes are the sub-folder names in sorted order (label = index). Images are converted
    to ``mode`` (``"L"`` or ``"RGB"``; default: ``"L"`` if every image is greyscale, else
    ``"RGB"``) and optionally resized to ``size = (height, width)``; without ``size`` all
    images must have the same size. Returns ``x`` float32 [N, C, H, W] in [0, 1] and ``y``
    int64 (and the class names if ``return_classes``). Needs Pillow.
    """
    try:
        from PIL import Image
    except ImportError as exc:  # pragma: no cover - Pillow is installed in dev setups
        raise DatasetFormatError("load_image_folder needs Pillow: pip install pillow") from exc
    root = Path(path)
    if not root.is_dir():
        raise DatasetNotFoundError(f"no such image folder: {root}")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise DatasetFormatError(f"{root} has no class sub-folders (expected root/<class>/<img>)")
    files: list[tuple[Path, int]] = []
    for label, cls in enumerate(classes):
        for f in sorted((root / cls).iterdir()):
            if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES:
                files.append((f, label))
    if not files:
        raise DatasetFormatError(f"{root}: no image files ({', '.join(IMAGE_SUFFIXES)}) found")
    images = []
    for f, _ in files:
        try:
            with Image.open(f) as im:
                im.load()
                images.append(im.copy())
        except OSError as exc:
            raise DatasetFormatError(f"{f} is not a readable image: {exc}") from exc
    if mode is None:
        mode = "L" if all(im.mode in ("L", "1", "I;16", "I") for im in images) else "RGB"
    if mode not in ("L", "RGB"):
        raise ValueError(f"mode must be 'L' or 'RGB', got {mode!r}")
    arrays = []
    for (f, _), im in zip(files, images):
        im = im.convert(mode)
        if size is not None:
            im = im.resize((size[1], size[0]), Image.Resampling.BILINEAR)
        a = np.asarray(im, dtype=np.uint8)
        if a.ndim == 2:
            a = a[None]
        else:
            a = a.transpose(2, 0, 1)
        if arrays and a.shape != arrays[0].shape:
            raise DatasetFormatError(
                f"{f} has shape {a.shape[1:]} but earlier images have {arrays[0].shape[1:]}; "
                "pass size=(height, width) to resize"
            )
        arrays.append(a)
    x = torch.from_numpy(np.stack(arrays)).to(torch.float32).div_(255.0)
    y = torch.tensor([label for _, label in files], dtype=torch.int64)
    if return_classes:
        return x, y, classes
    return x, y
