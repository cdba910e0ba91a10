"""A model shipped to a worker as bytes is loaded without leaving files behind."""

from __future__ import annotations

import tempfile

import torch

from boundkit.distributed.tasks import ModelSource
from boundkit.models.io import save_model
from boundkit.models.zoo import build_model


def test_loading_a_model_from_bytes_leaves_no_temporary_folder(tmp_path, monkeypatch):
    model = build_model("digits_mlp", seed=0)
    path = save_model(model, tmp_path / "digits_mlp.safetensors", arch="digits_mlp")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    loaded = ModelSource.from_file(path).load(None)
    x = torch.rand(3, 1, 8, 8)
    assert torch.equal(loaded(x), model(x))
    assert list(scratch.iterdir()) == []
