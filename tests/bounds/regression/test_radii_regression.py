"""The engine reproduces the stored radii of ``sound``, ``sound-local`` and ``peck2017``, to
1e-12 relative, on every zoo model and a residual and a concatenating graph. Stored before
the engine refactor (issue 11), and again when certificates began to charge the model's own
rounding (``docs/theory/numerics.md`` §4: the float32 models' radii moved down; ``peck2017``,
not a guarantee, did not move)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from radii_models import METHODS, cases  # noqa: E402

import boundkit  # noqa: E402
from boundkit.errors import UnsupportedLayerError  # noqa: E402

_STORED = json.loads((Path(__file__).resolve().parent / "radii.json").read_text())
_CASES = cases()


@pytest.mark.parametrize("name", sorted(_STORED))
def test_scalar_method_radii_equal_the_stored_reference(name: str) -> None:
    model, x = _CASES[name]
    for method in METHODS:
        want = _STORED[name][method]
        if want is None:
            with pytest.raises(UnsupportedLayerError):
                boundkit.certify(model, x, method)
            continue
        got = boundkit.certify(model, x, method).radius
        torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64),
                                   rtol=1e-12, atol=0.0, msg=f"{name} {method}")
