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
  (e.g. file I/O through registered ops). Loading one is opt-in, by the caller only:
  ``trust_code=True`` (``--trust-code`` on the command line). A file name never grants
  trust: a ``.ts`` suffix is chosen by the file's author. TorchScript modules cannot be
  traced by ``torch.fx``.
* Architectures come from boundkit's zoo, named by the explicit ``arch`` argument, the
  safetensors header (written by :func:`save_model`) or the sidecar JSON. When two of them
  disagree (name or ``arch_kwargs``) loading is refused: the weights would be read as another
  network. The architecture is first built on PyTorch's ``meta`` device (no memory), its
  size checked against :data:`MAX_PARAMETERS` and its tensor shapes against the file's
  header, and only then materialised: a 400-byte sidecar cannot make the loader allocate
  gigabytes.
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from boundkit.encoding import dumps
from boundkit.errors import ModelFileError, NonFiniteParameterError
from boundkit.models.zoo import ZOO, build_model

FORMAT = "boundkit-v1"
TORCHSCRIPT_SUFFIXES = (".ts", ".torchscript")
#: the most parameters + buffers (elements) an architecture may have before it is built
MAX_PARAMETERS = 2**30
#: the largest safetensors JSON header read (the format's own reference limit is 100 MB)
MAX_HEADER_BYTES = 100 * 2**20
#: ceilings on a sidecar's arch_kwargs: integers per value, and how many numbers in all
MAX_KWARG_INT = 2**24
MAX_KWARG_NUMBERS = 4096
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
        text = dumps(doc, indent=2, sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"meta must be JSON-serialisable: {exc}") from exc
    p.parent.mkdir(parents=True, exist_ok=True)
    # both files are written next to their targets, then renamed: a crash or Ctrl-C never
    # leaves half a file, nor new weights with an old sidecar
    tmp_w = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    tmp_s = p.with_name(f".{sidecar_path(p).name}.{os.getpid()}.tmp")
    try:
        save_file(tensors, str(tmp_w), metadata={"arch": arch, "format": FORMAT,
                                                 "arch_kwargs": json.dumps(kwargs, sort_keys=True)})
        tmp_s.write_text(text + "\n")
        os.replace(tmp_w, p)
        os.replace(tmp_s, sidecar_path(p))
    finally:
        for t in (tmp_w, tmp_s):
            if t.exists():
                t.unlink()
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


_ST_ITEMSIZE = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1,
    "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1,
}


@dataclass(frozen=True)
class TensorSpec:
    """What a tensor of a file or of an architecture is, without its values."""

    shape: tuple[int, ...]
    dtype: str
    floating: bool


def _specs_of(sd: dict[str, Any]) -> dict[str, TensorSpec]:
    return {
        k: TensorSpec(tuple(v.shape), str(v.dtype).replace("torch.", ""), v.is_floating_point())
        for k, v in sd.items()
        if isinstance(v, torch.Tensor)
    }


def _bad_st(path: Path, why: str) -> ModelFileError:
    return ModelFileError(f"{path} is not a readable safetensors file: {why}")


def read_safetensors_header(path: Path) -> tuple[dict[str, TensorSpec], dict[str, str]]:
    """The tensor specs and ``__metadata__`` of a safetensors file, read from its JSON header
    only (nothing is allocated), with every field checked: header size (at most
    :data:`MAX_HEADER_BYTES` and inside the file), dtypes, shapes, and data offsets that lie
    inside the file and match ``prod(shape) * itemsize``."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise _bad_st(path, f"{size} bytes, truncated")
        (n,) = struct.unpack("<Q", head)
        if n > MAX_HEADER_BYTES:
            raise _bad_st(path, f"header announces {n} bytes (limit "
                          f"{MAX_HEADER_BYTES}): corrupt or hostile file")
        if n > size - 8:
            raise _bad_st(path, f"header announces {n} bytes but the file "
                          f"has {size - 8} after the length field: truncated")
        raw = fh.read(n)
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _bad_st(path, f"header is not valid JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise _bad_st(path, "header is not a JSON object")
    meta = doc.pop("__metadata__", None) or {}
    if not isinstance(meta, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in meta.items()
    ):
        raise _bad_st(path, "__metadata__ must map strings to strings")
    data_len = size - 8 - n
    specs: dict[str, TensorSpec] = {}
    for name, entry in doc.items():
        if not isinstance(entry, dict):
            raise _bad_st(path, f"header entry {name!r} is not an object")
        dt, shape, offs = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        if dt not in _ST_ITEMSIZE:
            raise _bad_st(path, f"tensor {name!r} has unsupported dtype {dt!r}")
        if not (isinstance(shape, list) and all(
            isinstance(d, int) and not isinstance(d, bool) and 0 <= d for d in shape
        )):
            raise _bad_st(path, f"tensor {name!r} has an invalid shape {shape!r}")
        if not (isinstance(offs, list) and len(offs) == 2 and all(
            isinstance(o, int) and not isinstance(o, bool) for o in offs
        ) and 0 <= offs[0] <= offs[1] <= data_len):
            raise _bad_st(path, f"tensor {name!r} has data offsets {offs!r} outside "
                          f"the file's {data_len} data bytes (truncated or corrupt)")
        numel = 1
        for d in shape:
            numel *= d
        if numel * _ST_ITEMSIZE[dt] != offs[1] - offs[0]:
            raise _bad_st(path, f"tensor {name!r} of shape {shape} ({dt}) needs "
                          f"{numel * _ST_ITEMSIZE[dt]} bytes, the file gives it "
                          f"{offs[1] - offs[0]}")
        specs[name] = TensorSpec(tuple(shape), dt, dt.startswith(("F", "BF")))
    return specs, meta


def _check_specs(expected: dict[str, TensorSpec], got: dict[str, TensorSpec], source: str,
                 arch: str) -> None:
    """Compare tensor names, shapes and dtype kinds of a file with an architecture."""
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    shapes = [
        f"{k}: file {got[k].shape}, architecture {expected[k].shape}"
        for k in expected
        if k in got and got[k].shape != expected[k].shape
    ]
    kinds = [
        f"{k}: file dtype {got[k].dtype}, architecture {expected[k].dtype}"
        for k in expected
        if k in got and got[k].floating != expected[k].floating
    ]
    problems = []
    if missing:
        problems.append(f"missing tensors {missing[:10]}{'...' if len(missing) > 10 else ''}")
    if unexpected:
        problems.append(
            f"unexpected tensors {unexpected[:10]}{'...' if len(unexpected) > 10 else ''}")
    if shapes:
        problems.append("mis-shaped tensors [" + "; ".join(shapes[:10]) + "]")
    if kinds:
        problems.append("wrong dtype kind [" + "; ".join(kinds[:10]) + "]")
    if problems:
        raise ModelFileError(
            f"{source} does not match the architecture {arch!r}: " + ", ".join(problems))
    float_dtypes = {v.dtype for v in got.values() if v.floating}
    if len(float_dtypes) > 1:
        raise ModelFileError(
            f"{source}: floating tensors have mixed dtypes {sorted(float_dtypes)}"
        )


def _check_state_dict(model: nn.Module, sd: dict[str, Any], source: str,
                      arch: str = "") -> None:
    """Compare tensor names, shapes and dtype kinds with ``model``; name every mismatch."""
    not_tensors = sorted(k for k, v in sd.items() if not isinstance(v, torch.Tensor))
    if not_tensors:
        raise ModelFileError(f"{source}: entries that are not tensors: {not_tensors[:10]}")
    _check_specs(_specs_of(model.state_dict()), _specs_of(sd), source,
                 arch or type(model).__name__)


def _check_kwargs(kwargs: Any, source: str) -> dict[str, Any]:
    """``arch_kwargs`` from a file: a JSON object of plain values, with no number above
    :data:`MAX_KWARG_INT` and at most :data:`MAX_KWARG_NUMBERS` numbers in all."""
    if not isinstance(kwargs, dict):
        raise ModelFileError(f"{source}: 'arch_kwargs' must be an object, got "
                             f"{type(kwargs).__name__}")
    count = 0

    def walk(v: Any, where: str) -> None:
        nonlocal count
        if isinstance(v, bool) or v is None or isinstance(v, str):
            return
        if isinstance(v, (int, float)):
            count += 1
            if count > MAX_KWARG_NUMBERS:
                raise ModelFileError(f"{source}: arch_kwargs hold more than "
                              f"{MAX_KWARG_NUMBERS} numbers")
            if abs(v) > MAX_KWARG_INT:
                raise ModelFileError(f"{source}: arch_kwargs {where} = {v} exceeds the ceiling "
                              f"{MAX_KWARG_INT}")
            return
        if isinstance(v, list):
            for i, e in enumerate(v):
                walk(e, f"{where}[{i}]")
            return
        if isinstance(v, dict):
            for k, e in v.items():
                walk(e, f"{where}.{k}")
            return
        raise ModelFileError(f"{source}: arch_kwargs {where} has unsupported type "
                             f"{type(v).__name__}")

    for k, v in kwargs.items():
        walk(v, k)
    return kwargs


def _meta_build(arch: str, arch_kwargs: dict[str, Any], source: str) -> nn.Module:
    """Build ``arch`` on the ``meta`` device (no memory) and check its size."""
    if arch not in ZOO:
        raise ModelFileError(f"{source}: unknown architecture {arch!r}; known: {sorted(ZOO)}")
    _check_kwargs(arch_kwargs, source)
    try:
        with torch.device("meta"):
            model = ZOO[arch].builder(**arch_kwargs)
    except (TypeError, ValueError, RuntimeError, KeyError) as exc:
        raise ModelFileError(
            f"{source}: bad arch_kwargs {arch_kwargs} for {arch!r}: {exc}"
        ) from None
    total = sum(t.numel() for t in list(model.parameters()) + list(model.buffers()))
    if total > MAX_PARAMETERS:
        raise ModelFileError(
            f"{source}: architecture {arch!r} with arch_kwargs {arch_kwargs} has {total:,} "
            f"parameters, above the ceiling of {MAX_PARAMETERS:,}: refused before allocating"
        )
    return model


def _instantiate(
    arch: str, arch_kwargs: dict[str, Any], sd: dict[str, Any], source: str, device: Any
) -> nn.Module:
    ref = _meta_build(arch, arch_kwargs, source)
    _check_state_dict(ref, sd, source, arch)
    _check_finite(sd.items(), source)
    model = build_model(arch, **arch_kwargs)
    model.load_state_dict(sd, strict=True, assign=True)
    if device is not None:
        model.to(device)
    return model.eval()


def _resolve_arch(
    path: Path,
    arch: str | None,
    arch_kwargs: dict[str, Any] | None,
    side: dict[str, Any] | None,
    header_arch: str | None,
    header_kwargs: dict[str, Any] | None,
) -> tuple[str | None, dict[str, Any]]:
    """The architecture of a weights file from every source that names one; two sources
    that disagree (name or arch_kwargs) are an error, never a silent choice."""
    names = [(what, v) for what, v in (
        ("arch argument", arch),
        ("file header", header_arch),
        (f"sidecar {sidecar_path(path).name}", (side or {}).get("arch")),
    ) if v is not None]
    distinct = {v for _, v in names}
    if len(distinct) > 1:
        raise ModelFileError(
            f"{path}: the architecture is named differently by "
            + ", ".join(f"the {what} ({v!r})" for what, v in names)
            + "; refusing to read these weights as another network (fix or remove the sidecar, "
            "or drop the arch argument)"
        )
    name = names[0][1] if names else None
    if arch_kwargs is not None:
        return name, _check_kwargs(dict(arch_kwargs), "arch_kwargs argument")
    side_kw = (side or {}).get("arch_kwargs")
    if side_kw is not None:
        _check_kwargs(side_kw, f"sidecar {sidecar_path(path)}")
    if header_kwargs is not None and side_kw is not None and header_kwargs != side_kw:
        raise ModelFileError(
            f"{path}: the sidecar's arch_kwargs {side_kw} disagree with the file header's "
            f"{header_kwargs}; refusing to guess which network these weights are"
        )
    kw = header_kwargs if header_kwargs is not None else side_kw
    return name, dict(kw or {})


def _read_sidecar(path: Path) -> dict[str, Any] | None:
    side = sidecar_path(path)
    if not side.is_file():
        return None
    if side.stat().st_size > 10 * 2**20:
        raise ModelFileError(f"sidecar {side} is {side.stat().st_size} bytes: not a boundkit "
                             "sidecar (they are under a few kB)")
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
    if not isinstance(doc.get("meta", {}), dict):
        raise ModelFileError(f"sidecar {side}: 'meta' must be an object")
    entry = ZOO.get(doc["arch"])
    if entry is not None and "num_classes" in doc and doc["num_classes"] != entry.num_classes:
        raise ModelFileError(
            f"sidecar {side}: num_classes {doc['num_classes']} but {doc['arch']!r} has "
            f"{entry.num_classes}"
        )
    if entry is not None and "input_shape" in doc and doc["arch_kwargs"] in ({}, None) and (
        list(doc["input_shape"] or []) != list(entry.input_shape)
    ):
        raise ModelFileError(
            f"sidecar {side}: input_shape {doc['input_shape']} but {doc['arch']!r} takes "
            f"{list(entry.input_shape)}"
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

    read_safetensors_header(path)  # checked before the library allocates anything
    try:
        tensors: dict[str, torch.Tensor] = {}
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            meta = fh.metadata() or {}
            for k in fh.keys():  # noqa: SIM118 - safe_open has no __iter__
                tensors[k] = fh.get_tensor(k)
    except Exception as exc:  # safetensors raises its own SafetensorError and others
        raise _bad_st(path, f"{exc}") from exc
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


def read_model_meta(path: PathLike) -> dict[str, Any]:
    """The ``meta`` of a model's sidecar (data set, split, seed...), ``{}`` without one."""
    try:
        side = _read_sidecar(Path(path))
    except ModelFileError:
        return {}
    return dict((side or {}).get("meta") or {})


def load_model(
    path: PathLike,
    *,
    arch: str | None = None,
    device: str | torch.device | None = None,
    trust_code: bool = False,
    allow_torchscript: bool = False,
    arch_kwargs: dict[str, Any] | None = None,
    onnx_options: dict[str, Any] | None = None,
) -> nn.Module:
    """Load a model safely, in eval mode.

    Accepts a ``.safetensors`` file with its sidecar JSON (or ``arch`` given, or the
    architecture written in its header by :func:`save_model`); a ``.pt`` / ``.pth`` state
    dict (``torch.load(weights_only=True)``) with ``arch`` (or a sidecar, or an ``"arch"``
    entry in the checkpoint dict); a TorchScript archive only with ``trust_code=True``
    (``allow_torchscript`` is its older name; this runs the archive's code graph: trusted
    files only; the file's name or suffix never grants it); an ``.onnx`` file with boundkit's
    importer (``onnx_options`` are passed to :func:`boundkit.models.onnx.load_onnx`:
    ``layout``, ``input_shape``, ``normalize``, ``check``).

    The architecture is checked before any memory is allocated for it: every source that
    names it (``arch``, header, sidecar) must agree, its size must stay under
    :data:`MAX_PARAMETERS`, and its tensor names and shapes must match the file's header.

    Raises :class:`boundkit.errors.ModelFileError` naming the problem: unreadable or not a
    model, unknown architecture, disagreeing sidecar, missing/unexpected/mis-shaped tensors,
    NaN/inf weights (:class:`NonFiniteWeightsError`, also a ``NonFiniteParameterError``), a
    refused pickle, code that was not trusted (:class:`~boundkit.errors.UntrustedCodeError`);
    :class:`~boundkit.errors.DeviceError` for a device this machine does not have.
    """
    from boundkit.errors import UntrustedCodeError
    from boundkit.validate import check_device

    device = check_device(device)
    trust = bool(trust_code or allow_torchscript)
    p = Path(path)
    if p.is_dir():
        raise ModelFileError(f"{p} is a directory, not a model file")
    if not p.is_file():
        raise ModelFileError(f"no such model file: {p}")
    suffix = p.suffix.lower()
    try:
        with open(p, "rb") as fh:
            magic = fh.read(4)
    except OSError as exc:
        raise ModelFileError(f"{p} cannot be read: {exc.strerror or exc}") from None
    if not magic:
        raise ModelFileError(f"{p} is empty (0 bytes): not a model file")

    if suffix == ".onnx" or (onnx_options and not magic.startswith(b"PK")):
        return _load_onnx(p, device, **(onnx_options or {}))
    if magic.startswith(b"PK") and _torchscript_zip(p):
        if not trust:
            raise UntrustedCodeError(
                f"{p} is a TorchScript archive: loading it runs the code stored in the file. "
                "Only if you trust its author, pass --trust-code (trust_code=True in Python); "
                "otherwise ask for safetensors weights plus an architecture"
            )
        return _load_torchscript(p, device)
    if suffix in TORCHSCRIPT_SUFFIXES:
        raise ModelFileError(f"{p} has a TorchScript suffix but is not a TorchScript archive")

    side = _read_sidecar(p)
    if suffix == ".safetensors" or (not magic.startswith(b"PK") and _is_safetensors(p)):
        specs, header = read_safetensors_header(p)
        header_kwargs = None
        if "arch_kwargs" in header:
            try:
                header_kwargs = json.loads(header["arch_kwargs"])
            except json.JSONDecodeError:
                raise ModelFileError(f"{p}: header arch_kwargs are not valid JSON") from None
        name, kwargs = _resolve_arch(p, arch, arch_kwargs, side, header.get("arch"),
                                     header_kwargs)
        if name is None:
            raise ModelFileError(
                f"{p}: no architecture given: pass arch=... (--arch; one of {sorted(ZOO)}) or "
                f"keep the sidecar {sidecar_path(p).name} next to the weights"
            )
        _check_specs(_specs_of(_meta_build(name, kwargs, str(p)).state_dict()), specs, str(p),
                     name)
        sd, _ = _load_safetensors(p)
        return _instantiate(name, kwargs, sd, str(p), device)
    if suffix in (".pt", ".pth", ".bin", ".ckpt") or magic.startswith(b"PK"):
        obj = _load_torch_pickle(p)
        sd, hint = _unwrap_checkpoint(obj, p)
        name, kwargs = _resolve_arch(p, arch, arch_kwargs, side, hint, None)
        if name is None:
            raise ModelFileError(
                f"{p}: a state dict needs an architecture: pass arch=... (--arch; one of "
                f"{sorted(ZOO)})"
            )
        return _instantiate(name, kwargs, sd, str(p), device)
    raise ModelFileError(
        f"{p} is not a model file boundkit can read (expected .safetensors, .pt/.pth state "
        "dict, TorchScript or .onnx)"
    )


__all__ = [
    "FORMAT",
    "MAX_PARAMETERS",
    "NonFiniteWeightsError",
    "TensorSpec",
    "load_model",
    "read_model_meta",
    "read_safetensors_header",
    "save_model",
    "sidecar_path",
]
