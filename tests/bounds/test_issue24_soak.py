"""Soak of issue 24's operators (``issue24_soak.py``): on random compositions of conv,
ConvTranspose2d, Upsample, every pooling, batch norm, LayerNorm, GroupSort / MaxMin,
residual additions, ``cat`` and ten activations in module and functional forms, no random
point inside a ``crown`` or ``sound`` ball changes the class and no adversarial example is
closer than a radius. The quick version runs a few networks; the slow one 5,000
(``benchmarks/issue24_soak.py`` runs it with a report)."""

from __future__ import annotations

import pytest
from issue24_soak import check_case


@pytest.mark.parametrize("seed", range(12))
def test_no_point_inside_a_certified_ball_of_a_random_composition_changes_the_class(
        seed: int) -> None:
    res = check_case(seed, points=200, search_steps=10)
    assert res.radii["crown"] is not None


@pytest.mark.slow
def test_no_point_inside_a_certified_ball_changes_the_class_on_5000_compositions() -> None:
    for seed in range(10_000, 15_000):
        check_case(seed)
