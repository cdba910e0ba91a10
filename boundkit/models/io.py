"""Saving and loading models without executing anything from the file.

Trust model
-----------
* ``.safetensors`` (+ sidecar JSON naming the zoo architecture): pure data. The network's
  code comes from boundkit's zoo; the file only supplies tensors, whose names, shapes and
  values (NaN/inf) are checked before they are used. This is the recommended format.
* ``.pt`` / ``.pth`` state dicts: read with ``torch.load(weights_only=True)`` only. A pickle
  holding anything but tensors and plain containers (a whole pickled ``nn.Module``, custom
  classes, functions) is refused; boundkit never falls back to unsafe unpickling.
* TorchScript archives: ``torch.jit.load`` compiles and runs the archive's own code graph
  (the serialized ``forward``), so a malicious archive can do whatever TorchScript can do
  (e.g. file I/O through registered ops). Loading one is opt-in: pass
  ``allow_torchscript=True`` or use the ``.ts`` / ``.torchscript`` extension, and only for
  files you trust. TorchScript modules cannot be traced by ``torch.fx``.
* ONNX (``.onnx``): read with the optional ``onnx`` package by boundkit's own importer
  (:mod:`boundkit.models.onnx`) into standard torch layers; the protobuf describes a graph of
  standard operators, nothing in it is executed, sizes are checked before decoding, and the
  result is compared with onnxruntime when that is installed.
"""

from __future__ import annotations

import json
import os
import pickle
import struct
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from boundkit.errors import ModelFileError, NonFiniteParameterError
from boundkit.models.zoo import ZOO, build_model

FORMAT = "boundkit-v1"
TORCHSCRIPT_SUFFIXES = (".ts", ".torchscript")
PathLike = str | os.PathLike[str]


class NonFiniteWeightsError(ModelFileError, NonFiniteParameterError):
    """A model file holds NaN or infinity in a tensor (named in the message)."""


def sidecar_path(path: PathLike) -> Path:
    """The JSON file that accompanies a weights file: same name, suffix ``.json``."""
    return Path(path).with_suffix(".json")


# --------------------------------------------------------------------------------------
# saving


def save_model(
    model: nn.Module,
    path: PathLike,
    *,
    arch: str,
    meta: dict[str, Any] | None = None,
    arch_kwargs: dict[str, Any] | None = None,
) -> Path:
    """Write ``model``'s state dict to ``path`` (safetensors) and a sidecar JSON.

    The sidecar ``path.with_suffix(".json")`` holds ``{"arch", "format": "boundkit-v1",
    "input_shape", "num_classes", "arch_kwargs", "meta"}``. Tensors are stored in their own
    dtype (float32 stays float32, float64 stays float64). The state dict is checked against
    ``build_model(arch, **arch_kwargs)`` first, and non-finite weights are refused, so that
    whatever is saved loads back. Returns ``path``.
    """
    from safetensors.torch import save_file

    p = Path(path)
    if p.suffix == ".json":
        raise ValueError("the weights path must not end in .json (that is the sidecar's name)")
    if arch not in ZOO:
        raise ValueError(f"unknown architecture {arch!r}; known: {sorted(ZOO)}")
    kwargs = dict(arch_kwargs or {})
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    reference = build_model(arch, **kwargs)
    _check_state_dict(reference, tensors, f"model to save as {arch!r}")
    _check_finite(tensors.items(), "model to save")
    entry = ZOO[arch]
    doc = {
        "arch": arch,
        "format": FORMAT,
        "input_shape": list(entry.input_shape),
        "num_classes": entry.num_classes,
        "arch_kwargs": kwargs,
        "meta": dict(meta or {}),
    }
    try:
        text = json.dumps(doc, indent=2, sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"meta must be JSON-serialisable: {exc}") from exc
    p.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(p), metadata={"arch": arch, "format": FORMAT})
    sidecar_path(p).write_text(text + "\n")
    return p


# --------------------------------------------------------------------------------------
# checks


def _check_finite(items: Any, source: str) -> None:
    for name, t in items:
        if isinstance(t, torch.Tensor) and (t.is_floating_point() or t.is_complex()):
            bad = ~torch.isfinite(t)
            if bool(bad.any()):
                n_nan = int(torch.isnan(t).sum())
                raise NonFiniteWeightsError(
                    f"{source}: tensor {name!r} holds {int(bad.sum())} non-finite values "
                    f"({n_nan} NaN, {int(bad.sum()) - n_nan} inf)"
                )


def _check_state_dict(model: nn.Module, sd: dict[str, Any], source: str) -> None:
    """Compare tensor names, shapes and dtype kinds with ``model``; name every mismatch."""
    expected = model.state_dict()
    not_tensors = sorted(k for k, v in sd.items() if not isinstance(v, torch.Tensor))
    if not_tensors:
        raise ModelFileError(f"{source}: entries that are not tensors: {not_tensors}")
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    shapes = [
        f"{k}: file {tuple(sd[k].shape)}, architecture {tuple(expected[k].shape)}"
        for k in expected
        if k in sd and tuple(sd[k].shape) != tuple(expected[k].shape)
    ]
    kinds = [
        f"{k}: file dtype {sd[k].dtype}, architecture {expected[k].dtype}"
        for k in expected
        if k in sd and sd[k].is_floating_point() != expected[k].is_floating_point()
    ]
    problems = []
    if missing:
        problems.append(f"missing tensors {missing}")
    if unexpected:
        problems.append(f"unexpected tensors {unexpected}")
    if shapes:
        problems.append("mis-shaped tensors [" + "; ".join(shapes) + "]")
    if kinds:
        problems.append("wrong dtype kind [" + "; ".join(kinds) + "]")
    if problems:
        raise ModelFileError(f"{source} does not match the architecture: " + ", ".join(problems))
    float_dtypes = {v.dtype for v in sd.values() if v.is_floating_point()}
    if len(float_dtypes) > 1:
        raise ModelFileError(
            f"{source}: floating tensors have mixed dtypes {sorted(map(str, float_dtypes))}"
        )


def _instantiate(
    arch: str, arch_kwargs: dict[str, Any], sd: dict[str, Any], source: str, device: Any
) -> nn.Module:
    if arch not in ZOO:
        raise ModelFileError(f"{source}: unknown architecture {arch!r}; known: {sorted(ZOO)}")
    try:
        model = build_model(arch, **arch_kwargs)
    except TypeError as exc:
        raise ModelFileError(
            f"{source}: bad arch_kwargs {arch_kwargs} for {arch!r}: {exc}"
        ) from exc
    _check_state_dict(model, sd, source)
    _check_finite(sd.items(), source)
    model.load_state_dict(sd, strict=True, assign=True)
    if device is not None:
        model.to(device)
    return model.eval()


def _read_sidecar(path: Path) -> dict[str, Any] | None:
    side = sidecar_path(path)
    if not side.is_file():
        return None
    try:
        doc = json.loads(side.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFileError(f"sidecar {side} is not valid JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise ModelFileError(f"sidecar {side} must hold a JSON object")
    if doc.get("format") != FORMAT:
        raise ModelFileError(f"sidecar {side}: format {doc.get('format')!r}, expected {FORMAT!r}")
    if not isinstance(doc.get("arch"), str):
        raise ModelFileError(f"sidecar {side} does not name an architecture ('arch')")
    if not isinstance(doc.get("arch_kwargs", {}), dict):
        raise ModelFileError(f"sidecar {side}: 'arch_kwargs' must be an object")
    entry = ZOO.get(doc["arch"])
    if entry is not None and "num_classes" in doc and doc["num_classes"] != entry.num_classes:
        raise ModelFileError(
            f"sidecar {side}: num_classes {doc['num_classes']} but {doc['arch']!r} has "
            f"{entry.num_classes}"
        )
    return doc


# --------------------------------------------------------------------------------------
# format sniffing


def _is_safetensors(path: Path) -> bool:
    with open(path, "rb") as fh:
        head = fh.read(9)
    if len(head) < 9:
        return False
    (n,) = struct.unpack("<Q", head[:8])
    return 2 <= n <= path.stat().st_size - 8 and head[8:9] == b"{"


def _torchscript_zip(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
    return any(n.endswith("/constants.pkl") or "/code/" in n for n in names)


# --------------------------------------------------------------------------------------
# loaders per format


def _load_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    try:
        tensors: dict[str, torch.Tensor] = {}
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            meta = fh.metadata() or {}
            for k in fh.keys():  # noqa: SIM118 - safe_open has no __iter__
                tensors[k] = fh.get_tensor(k)
    except Exception as exc:  # safetensors raises its own SafetensorError and others
        raise ModelFileError(f"{path} is not a readable safetensors file: {exc}") from exc
    return tensors, meta


def _unwrap_checkpoint(obj: Any, path: Path) -> tuple[dict[str, torch.Tensor], str | None]:
    if not isinstance(obj, dict):
        raise ModelFileError(
            f"{path} holds a {type(obj).__name__}, not a state dict (a dict of tensors)"
        )
    arch_hint = obj.get("arch") if isinstance(obj.get("arch"), str) else None
    for key in ("state_dict", "model_state_dict", "model"):
        inner = obj.get(key)
        if isinstance(inner, dict) and inner and all(
            isinstance(v, torch.Tensor) for v in inner.values()
        ):
            obj = inner
            break
    sd = dict(obj)
    if sd and all(isinstance(k, str) and k.startswith("module.") for k in sd):
        sd = {k[len("module.") :]: v for k, v in sd.items()}
    if not sd or not any(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ModelFileError(f"{path} holds a dict without tensors: not a model state dict")
    return sd, arch_hint


def _load_torch_pickle(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ModelFileError(
            f"{path} was refused by torch.load(weights_only=True): it contains objects other "
            "than tensors and plain containers (code objects, classes or a whole pickled "
            "nn.Module), which could execute code when unpickled. boundkit never falls back to "
            "unsafe loading; save model.state_dict() (or use save_model) instead. "
            f"Detail: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
        ) from exc
    except (
        RuntimeError, OSError, EOFError, ValueError, IndexError, KeyError, TypeError,
        AttributeError, zipfile.BadZipFile,
    ) as exc:  # torch's unpickler reports garbage input with many exception types
        raise ModelFileError(f"{path} is not a readable PyTorch file: {exc!r}") from exc


def _finish_module(model: nn.Module, source: str, device: Any) -> nn.Module:
    _check_finite(model.named_parameters(), source)
    _check_finite(model.named_buffers(), source)
    if device is not None:
        model.to(device)
    return model.eval()


def _load_torchscript(path: Path, device: Any) -> nn.Module:
    try:
        with warnings.catch_warnings():  # torch 2.9+ deprecates TorchScript; still supported
            warnings.simplefilter("ignore", DeprecationWarning)
            model = torch.jit.load(str(path), map_location=device if device is not None else "cpu")
    except Exception as exc:  # jit raises RuntimeError and C++ errors of various types
        raise ModelFileError(f"{path} is not a loadable TorchScript archive: {exc}") from exc
    return _finish_module(model, f"TorchScript {path}", device)


def _load_onnx(path: Path, device: Any, **onnx_options: Any) -> nn.Module:
    from boundkit.models.onnx import load_onnx

    return _finish_module(load_onnx(path, device=device, **onnx_options), f"ONNX {path}", device)


def load_model(
    path: PathLike,
    *,
    arch: str | None = None,
    device: str | torch.device | None = None,
    allow_torchscript: bool = False,
    arch_kwargs: dict[str, Any] | None = None,
    onnx_options: dict[str, Any] | None = None,
) -> nn.Module:
    """Load a model safely, in eval mode.

    Accepts a ``.safetensors`` file with its sidecar JSON (or ``arch`` given); a ``.pt`` /
    ``.pth`` state dict (``torch.load(weights_only=True)``) with ``arch`` (or a sidecar, or
    an ``"arch"`` entry in the checkpoint dict); a TorchScript archive when
    ``allow_torchscript=True`` or the suffix is ``.ts``/``.torchscript`` (this runs the
    archive's code graph: trusted files only); an ``.onnx`` file with boundkit's importer
    (``onnx_options`` are passed to :func:`boundkit.models.onnx.load_onnx`: ``layout``,
    ``input_shape``, ``normalize``, ``check``).

    Raises :class:`boundkit.errors.ModelFileError` naming the problem: unreadable or not a
    model, unknown architecture, missing/unexpected/mis-shaped tensors, NaN/inf weights
    (:class:`NonFiniteWeightsError`, also a ``NonFiniteParameterError``), a refused pickle.
    """
    p = Path(path)
    if not p.is_file():
        raise ModelFileError(f"no such model file: {p}")
    suffix = p.suffix.lower()
    try:
        with open(p, "rb") as fh:
            magic = fh.read(4)
    except OSError as exc:
        raise ModelFileError(f"{p} cannot be read: {exc}") from exc

    if suffix == ".onnx" or (onnx_options and not magic.startswith(b"PK")):
        return _load_onnx(p, device, **(onnx_options or {}))
    if magic.startswith(b"PK") and _torchscript_zip(p):
        if not (allow_torchscript or suffix in TORCHSCRIPT_SUFFIXES):
            raise ModelFileError(
                f"{p} is a TorchScript archive. Loading it runs the code graph stored in the "
                "file; if you trust it, pass allow_torchscript=True (or name it *.ts). "
                "Otherwise ask for a state dict or safetensors weights plus an architecture."
            )
        return _load_torchscript(p, device)
    if suffix in TORCHSCRIPT_SUFFIXES:
        raise ModelFileError(f"{p} has a TorchScript suffix but is not a TorchScript archive")

    side = _read_sidecar(p)
    kwargs = dict(arch_kwargs if arch_kwargs is not None else (side or {}).get("arch_kwargs", {}))
    if suffix == ".safetensors" or (not magic.startswith(b"PK") and _is_safetensors(p)):
        sd, meta = _load_safetensors(p)
        name = arch or (side or {}).get("arch") or meta.get("arch")
        if name is None:
            raise ModelFileError(
                f"{p}: no architecture given: pass arch=... (one of {sorted(ZOO)}) or keep the "
                f"sidecar {sidecar_path(p).name} next to the weights"
            )
        return _instantiate(name, kwargs, sd, str(p), device)
    if suffix in (".pt", ".pth", ".bin", ".ckpt") or magic.startswith(b"PK"):
        obj = _load_torch_pickle(p)
        sd, hint = _unwrap_checkpoint(obj, p)
        name = arch or (side or {}).get("arch") or hint
        if name is None:
            raise ModelFileError(
                f"{p}: a state dict needs an architecture: pass arch=... (one of {sorted(ZOO)})"
            )
        return _instantiate(name, kwargs, sd, str(p), device)
    raise ModelFileError(
        f"{p} is not a model file boundkit can read (expected .safetensors, .pt/.pth state "
        "dict, TorchScript or .onnx)"
    )


__all__ = ["FORMAT", "NonFiniteWeightsError", "load_model", "save_model", "sidecar_path"]
