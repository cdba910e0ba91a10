"""The model zoo of Peck (2017), seeded Adam training, and safe model files.

* :func:`build_model` / :data:`ZOO`: the thesis's networks (and a few project additions) as
  ``nn.Sequential`` of standard layers, or of :class:`ResidualBlock` for ``resnet_mnist``
  (logits out, eval mode).
* :func:`train_model`, :func:`train_zoo_model`, :func:`accuracy`: deterministic training.
* :func:`save_model` / :func:`load_model`: safetensors + JSON sidecar, ``weights_only`` state
  dicts, opt-in TorchScript; nothing from a model file is executed by default.
* :func:`load_onnx`: boundkit's native ONNX importer (needs the ``onnx`` extra).
* :func:`normalize`: prepend ``(x - mean) / std`` to any model, as data.
"""

from __future__ import annotations

import importlib
from typing import Any

from boundkit.models.io import NonFiniteWeightsError, load_model, save_model
from boundkit.models.layers import GroupSort, MaxMin
from boundkit.models.onnx import OnnxImportError, load_onnx
from boundkit.models.preprocess import normalize
from boundkit.models.zoo import (
    ZOO,
    ResidualBlock,
    ZooEntry,
    build_model,
    cifar_nin_small,
    lenet5,
    linear,
    mlp,
    resnet_mnist,
)

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
    "GroupSort",
    "MaxMin",
    "NonFiniteWeightsError",
    "OnnxImportError",
    "ResidualBlock",
    "ZooEntry",
    "accuracy",
    "build_model",
    "cifar_nin_small",
    "lenet5",
    "linear",
    "load_model",
    "load_onnx",
    "mlp",
    "normalize",
    "resnet_mnist",
    "save_model",
    "train_model",
    "train_zoo_model",
]
