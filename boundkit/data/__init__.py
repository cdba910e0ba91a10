"""Data loaders: tensors in [0, 1] for the thesis's data sets and for a user's own files.

``load_dataset(name, root=None, split="test", *, download=True, split_seed=SPLIT_SEED)`` returns
``(x, y)``: ``x`` float32 in [0, 1] (NCHW images or ``[N, d]`` tabular rows), ``y`` int64.
The data home is ``root``, else ``$BOUNDKIT_DATA``, else ``~/.cache/boundkit``. See
``docs/models_and_data.md`` for sources, splits and scaling.
"""

from __future__ import annotations

from boundkit.data._common import (
    ENV_VAR,
    SPLIT_SEED,
    SPLITS,
    DatasetError,
    DatasetFormatError,
    DatasetNotFoundError,
    data_home,
)
from boundkit.data.datasets import (
    LOADERS,
    load_cifar10,
    load_dataset,
    load_digits,
    load_iris,
    load_mnist,
    load_spambase,
    load_wine,
)
from boundkit.data.user import load_image_folder, load_tensor_file

DATASETS = tuple(LOADERS)

__all__ = [
    "DATASETS",
    "ENV_VAR",
    "SPLITS",
    "SPLIT_SEED",
    "DatasetError",
    "DatasetFormatError",
    "DatasetNotFoundError",
    "data_home",
    "load_cifar10",
    "load_dataset",
    "load_digits",
    "load_image_folder",
    "load_iris",
    "load_mnist",
    "load_spambase",
    "load_tensor_file",
    "load_wine",
]
