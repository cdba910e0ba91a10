"""Soak of issue 24's operators (``issue24_soak.py``): on random compositions of conv,
ConvTranspose2d, Upsample, every pooling, batch norm, LayerNorm, GroupSort / MaxMin,
residual additions, ``cat`` and ten activations in module and functional forms, no random
point inside a ``crown`` or ``sound`` ball changes the class and no adversarial example is
closer than a radius; the same on token networks (products, softmax, self-attention written
out and ``nn.MultiheadAttention``, gated units, LayerNorm on tokens). The quick versions run
a few networks; the slow ones 5,000 (``benchmarks/issue24_soak.py [--tokens]`` runs them
with a report)."""

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


@pytest.mark.parametrize("seed", range(10))
def test_no_point_inside_a_certified_ball_of_a_random_token_network_changes_the_class(
        seed: int) -> None:
    res = check_case(seed, points=200, search_steps=10, tokens=True)
    crown = res.radii["crown"]
    assert crown is not None and bool((crown > 0).any()), crown  # not vacuous


@pytest.mark.slow
def test_no_point_inside_a_certified_ball_changes_the_class_on_5000_token_networks() -> None:
    for seed in range(20_000, 25_000):
        check_case(seed, tokens=True)
