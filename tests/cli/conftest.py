"""Fixtures of the CLI tests: small trained digits models on disk (trained once)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from boundkit.cli import main


@pytest.fixture(scope="session", autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("models")
    for name, epochs in (("digits_mlp", 3), ("digits_cnn", 3)):
        assert main(["train", name, "--epochs", str(epochs), "--out", str(out), "--quiet"]) == 0
    return out


@pytest.fixture(scope="session")
def mlp_file(models_dir: Path) -> Path:
    return models_dir / "digits_mlp.safetensors"


@pytest.fixture(scope="session")
def cnn_file(models_dir: Path) -> Path:
    return models_dir / "digits_cnn.safetensors"
