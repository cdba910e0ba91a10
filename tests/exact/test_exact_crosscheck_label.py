"""``crosscheck`` labels each sample "exact" where the lower and upper ends of its distance
meet within the stated tolerance, "bracketed" elsewhere, in the result, its rows and its
results document."""

from __future__ import annotations

import math

import numpy as np
import torch
from helpers_exact import mlp

import boundkit as bk
from boundkit.crosschecking import KNOWN_RTOL
from boundkit.report.io import check_results, rows_from_results


def test_samples_with_an_exact_radius_are_labelled_exact_in_every_output() -> None:
    model = mlp((3, 6, 5, 3), 4)
    x = torch.rand(4, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    res = bk.crosscheck(model, x, methods=("crown",), attack="deepfool", exact=True)
    assert res.exact is not None and not np.isnan(res.exact).any()
    assert res.distance() == ["exact"] * 4
    assert [r["distance"] for r in res.to_rows()] == ["exact"] * 4
    doc = res.to_dict()
    check_results(doc)
    assert [r["distance"] for r in rows_from_results(doc)] == ["exact"] * 4


def test_without_the_exact_radius_the_label_follows_certificate_and_attack() -> None:
    """"exact" exactly where the certificate reaches (1 - rtol) of the verified attack
    norm; a NaN exact radius (search not finished) decides nothing."""
    model = mlp((3, 6, 5, 3), 4)
    x = torch.rand(4, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    res = bk.crosscheck(model, x, methods=("sound",), attack="deepfool")
    norm = np.where(res.attack_success, res.attack_norm, math.inf)
    want = ["exact" if r >= (1 - KNOWN_RTOL) * u else "bracketed"
            for r, u in zip(res.best_certified(), norm)]
    assert res.distance() == want
    assert "bracketed" in want  # the sound certificate is loose on this net
    res.exact = np.full(4, math.nan)
    assert res.distance() == want
    res.exact = np.array([math.nan, 0.5, math.inf, math.nan])
    assert res.distance() == [want[0], "exact", "exact", want[3]]
