"""Shared pieces of the robustness suite: tiny models, model files, and the contract.

The contract of every case (issue #12): a correct result, or a one-line error naming the
bad thing (a :class:`~boundkit.errors.BoundkitError`; exit code 2 on the command line),
never a traceback for a user's error and never a silent, meaningless number.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from boundkit.errors import BoundkitError


def tiny_mlp(seed: int = 0, d: int = 4, h: int = 6, c: int = 3,
             dtype: torch.dtype = torch.float32) -> nn.Sequential:
    """A 4-6-3 ReLU MLP in eval mode (exact_radius, certify and every attack handle it)."""
    g = torch.Generator().manual_seed(seed)
    m = nn.Sequential(nn.Linear(d, h), nn.ReLU(), nn.Linear(h, c))
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    return m.to(dtype).eval()


def tiny_x(n: int = 3, d: int = 4, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, d, generator=g) * 0.8 + 0.1


def expect_error(fn: Callable[[], Any], *words: str,
                 kind: type[BaseException] = BoundkitError) -> BaseException:
    """Run ``fn``: it must raise ``kind`` (a BoundkitError by default) with a non-empty
    one-line message containing every word of ``words`` (case-insensitive)."""
    with pytest.raises(BaseException) as info:
        fn()
    exc = info.value
    assert isinstance(exc, kind), f"{type(exc).__name__}: {exc} (expected {kind.__name__})"
    msg = str(exc).strip()
    first = msg.splitlines()[0] if msg else ""
    assert first, f"{type(exc).__name__} with an empty message"
    for w in words:
        assert w.lower() in msg.lower(), f"{w!r} not in the message {msg!r}"
    return exc


def run_cli(argv: Sequence[str]) -> tuple[int, str, str]:
    """Run ``boundkit`` in-process; return (exit code, stdout, stderr)."""
    from boundkit.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


def cli_error(argv: Sequence[str], *words: str, code: int = 2) -> str:
    """The command must fail with ``code`` and one error line naming ``words``; no
    traceback."""
    rc, out, err = run_cli(argv)
    assert rc == code, f"exit {rc}, expected {code}; stderr: {err!r}"
    assert "Traceback" not in err and "Traceback" not in out
    lines = [ln for ln in err.splitlines() if ln.startswith("boundkit")]
    errors = [ln for ln in lines if ": error: " in ln or "interrupted" in ln]
    assert len(errors) == 1, f"expected one error line, got {err!r}"
    for w in words:
        assert w.lower() in errors[0].lower(), f"{w!r} not in {errors[0]!r}"
    return errors[0]


def cli_ok(argv: Sequence[str]) -> tuple[str, str]:
    rc, out, err = run_cli(argv)
    assert rc == 0, f"exit {rc}; stderr: {err!r}"
    assert "Traceback" not in err
    return out, err


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """digits_mlp (untrained, seed 0) saved as safetensors + sidecar, a .pt state dict, and
    a TorchScript archive; and a small digits .npz data file."""
    from boundkit.data import SPLIT_SEED, load_dataset
    from boundkit.models import build_model, save_model

    d = tmp_path_factory.mktemp("robust-models")
    m = build_model("digits_mlp", seed=0)
    save_model(m, d / "mlp.safetensors", arch="digits_mlp",
               meta={"dataset": "digits", "seed": 0,
                     "trained_on": {"data": "digits", "split": "train",
                                    "split_seed": SPLIT_SEED}})
    torch.save(m.state_dict(), d / "mlp.pt")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.script(m).save(str(d / "mlp.ts"))
    x, y = load_dataset("digits", split="test")
    import numpy as np

    np.savez(d / "data.npz", x=x[:6].numpy(), y=y[:6].numpy())
    return d


@pytest.fixture
def models(model_dir: Path, tmp_path: Path) -> Path:
    """A private copy of the model files (tests may corrupt them)."""
    import shutil

    for f in model_dir.iterdir():
        shutil.copy(f, tmp_path / f.name)
    return tmp_path


def header_doc(path: Path) -> tuple[dict, bytes]:
    """The JSON header and the data bytes of a safetensors file."""
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    return json.loads(raw[8 : 8 + n]), raw[8 + n :]


def write_safetensors(path: Path, header: dict | bytes, data: bytes,
                      length: int | None = None) -> Path:
    """Write a (possibly hostile) safetensors file from a header and data bytes."""
    h = header if isinstance(header, bytes) else json.dumps(header).encode()
    n = len(h) if length is None else length
    path.write_bytes(n.to_bytes(8, "little") + h + data)
    return path


def one_line(msg: str) -> bool:
    return bool(msg.strip()) and not re.search(r"Traceback|File \"", msg)
