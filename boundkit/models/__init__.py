"""The model zoo of Peck (2017), seeded Adam training, and safe model files.

* :func:`build_model` / :data:`ZOO`: the thesis's networks as ``nn.Sequential`` of standard
  layers (logits out, eval mode).
* :func:`train_model`, :func:`train_zoo_model`, :func:`accuracy`: deterministic training.
* :func:`save_model` / :func:`load_model`: safetensors + JSON sidecar, ``weights_only`` state
  dicts, opt-in TorchScript, optional ONNX; nothing from a model file is executed by default.
"""

from __future__ import annotations

import importlib
from typing import Any

from boundkit.models.io import NonFiniteWeightsError, load_model, save_model
from boundkit.models.zoo import ZOO, ZooEntry, build_model, cifar_nin_small, lenet5, linear, mlp

# Imported lazily so that ``python -m boundkit.models.train`` does not find the module
# already imported by the package (runpy's RuntimeWarning).
_LAZY = {"accuracy", "train_model", "train_zoo_model"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module("boundkit.models.train"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'boundkit.models' has no attribute {name!r}")


__all__ = [
    "ZOO",
    "NonFiniteWeightsError",
    "ZooEntry",
    "accuracy",
    "build_model",
    "cifar_nin_small",
    "lenet5",
    "linear",
    "load_model",
    "mlp",
    "save_model",
    "train_model",
    "train_zoo_model",
]
