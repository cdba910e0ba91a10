"""The one JSON encoding of boundkit's documents (results, model sidecars, job keys).

Numbers that JSON cannot hold are written one way everywhere: NaN as ``null`` (unknown),
``+inf`` / ``-inf`` as the strings ``"inf"`` / ``"-inf"`` (a radius of a class constant on
the whole box, an attack that found nothing); numpy and torch values become plain numbers
and lists. :func:`decode` turns the markers back into floats.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np


def encode(obj: Any) -> Any:
    """A JSON-safe copy of ``obj`` (numpy and torch scalars/arrays become lists)."""
    if isinstance(obj, dict):
        return {str(k): encode(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [encode(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return encode(obj.tolist())
    if hasattr(obj, "detach") and hasattr(obj, "tolist"):  # torch tensors
        return encode(obj.detach().cpu().tolist())
    if isinstance(obj, (np.bool_, bool)):
        return bool(obj)
    if isinstance(obj, (np.integer, int)):
        return int(obj)
    if isinstance(obj, (np.floating, float)):
        f = float(obj)
        if math.isnan(f):
            return None
        if math.isinf(f):
            return "inf" if f > 0 else "-inf"
        return f
    if isinstance(obj, Path):
        return str(obj)
    return obj


def decode(obj: Any) -> Any:
    """Inverse of :func:`encode` for the non-finite markers."""
    if isinstance(obj, dict):
        return {k: decode(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [decode(v) for v in obj]
    if obj == "inf":
        return math.inf
    if obj == "-inf":
        return -math.inf
    return obj


def dumps(doc: Any, **kwargs: Any) -> str:
    """``json.dumps`` of :func:`encode` (``doc``), refusing any non-finite number left."""
    return json.dumps(encode(doc), allow_nan=False, **kwargs)
