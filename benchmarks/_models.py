"""Trained MNIST models for the benchmarks: trained once with the repo's own seeded
training script (``boundkit.models.train.train_zoo_model``) and cached under ``runs/``."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from boundkit.models.io import load_model
from boundkit.models.train import train_zoo_model

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = Path(os.environ.get("BOUNDKIT_DATA", REPO / ".." / "shared" / "data"))


def trained(name: str, data_root: Path, cache: Path, *, seed: int = 0,
            epochs: int | None = None) -> torch.nn.Module:
    """Load ``cache/NAME.safetensors`` or train it first (seeded, reproducible)."""
    path = cache / f"{name}.safetensors"
    if not path.exists():
        path = train_zoo_model(name, data_root=data_root, out_dir=cache, seed=seed,
                               epochs=epochs, verbose=True)
    return load_model(path).eval()
