"""Summary statistics shared by results, reports and rankings (one definition each)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def median(values: Any) -> float:
    """The median of the values that are not NaN, as a float (NaN when none is left).

    Infinite values count: an infinite radius (a class constant on the whole box) or the
    infinite norm of a failed attack is a value, and the median respects its order."""
    a = np.asarray(values, dtype=np.float64).ravel()
    a = a[~np.isnan(a)]
    return float(np.median(a)) if a.size else math.nan
