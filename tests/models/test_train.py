"""Seeded Adam training: determinism, regulariser hook, train_zoo_model and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from boundkit.data import load_dataset
from boundkit.models import accuracy, build_model, load_model, train_model, train_zoo_model
from boundkit.models.train import main


def _toy(n: int = 60) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, 4, generator=g)
    y = (x[:, 0] + x[:, 1] > 1).long() + (x[:, 2] > 0.7).long()
    return x, y


def test_training_is_deterministic_for_a_seed() -> None:
    x, y = _toy()
    runs = []
    for seed in (3, 3, 4):
        m = build_model("mlp_iris", seed=0)
        train_model(m, x, y, epochs=3, batch_size=16, seed=seed)
        runs.append(m.state_dict())
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])
    assert not all(torch.equal(runs[0][k], runs[2][k]) for k in runs[0])


def test_returns_eval_mode_and_learns_and_keeps_rng() -> None:
    x, y = _toy(90)
    m = build_model("mlp_iris", seed=0)
    before = accuracy(m, x, y)
    torch.manual_seed(1)
    state = torch.get_rng_state()
    out = train_model(m, x, y, epochs=60, lr=1e-2, batch_size=16, seed=0)
    assert torch.equal(torch.get_rng_state(), state)
    assert out is m and not m.training
    assert accuracy(m, x, y) > max(before, 0.7)


def test_regularizer_is_added() -> None:
    x, y = _toy()
    calls: list[tuple[int, int]] = []

    def reg(model: torch.nn.Module, xb: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        calls.append((xb.shape[0], logits.shape[1]))
        return 0.0 * logits.sum()

    m1 = build_model("mlp_iris", seed=0)
    train_model(m1, x, y, epochs=1, batch_size=32, regularizer=reg)
    assert calls == [(32, 3), (28, 3)]
    m2 = build_model("mlp_iris", seed=0)
    train_model(m2, x, y, epochs=1, batch_size=32)
    assert all(torch.equal(a, b) for a, b in zip(m1.parameters(), m2.parameters()))

    def big(model: torch.nn.Module, xb: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        return 10.0 * sum(p.pow(2).sum() for p in model.parameters())

    m3 = build_model("mlp_iris", seed=0)
    train_model(m3, x, y, epochs=1, batch_size=32, regularizer=big)
    assert not all(torch.equal(a, b) for a, b in zip(m2.parameters(), m3.parameters()))


def test_batchnorm_single_sample_tail_is_merged() -> None:
    x = torch.rand(33, 1, 28, 28)
    y = torch.randint(0, 10, (33,), generator=torch.Generator().manual_seed(0))
    m = build_model("lenet5_bn", seed=0)
    train_model(m, x, y, epochs=1, batch_size=16)  # 16 + 16 + 1 would fail in BatchNorm
    assert not m.training


def test_train_zoo_model_writes_loadable_files(tmp_path: Path) -> None:
    path = train_zoo_model("mlp_iris", epochs=2, seed=0, out_dir=tmp_path)
    assert path == tmp_path / "mlp_iris.safetensors"
    meta = json.loads(path.with_suffix(".json").read_text())["meta"]
    assert meta["optimizer"] == "Adam" and meta["epochs"] == 2 and meta["dataset"] == "iris"
    assert 0.0 <= meta["test_accuracy"] <= 1.0 and "val_accuracy" in meta
    model = load_model(path)
    x, y = load_dataset("iris", split="test")
    assert accuracy(model, x, y) == pytest.approx(meta["test_accuracy"])


def test_cli_digits_cnn(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["digits_cnn", "--out", str(tmp_path), "--epochs", "3", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "digits_cnn: test accuracy" in out
    meta = json.loads((tmp_path / "digits_cnn.json").read_text())["meta"]
    assert meta["test_accuracy"] > 0.8
