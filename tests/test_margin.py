"""boundkit.margin: the one margin of the certificates and of the attacks."""

from __future__ import annotations

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from boundkit.attacks.base import Misclassification, TargetedMisclassification
from boundkit.margin import class_margins, label_margin

_LOGITS = st.integers(0, 2**16).flatmap(lambda seed: st.tuples(
    st.just(seed), st.integers(2, 7), st.integers(1, 5), st.sampled_from([1e-12, 1.0, 1e12])))


def _draw(seed: int, c: int, n: int, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, c, generator=gen, dtype=torch.float64) * scale
    logits[0, -1] = logits[0, 0]  # a tie
    return logits, torch.randint(0, c, (n,), generator=gen)


@settings(max_examples=60, deadline=None)
@given(args=_LOGITS)
def test_label_margin_is_the_minimum_of_class_margins_bit_for_bit(args) -> None:
    logits, y = _draw(*args)
    m = class_margins(logits, y)
    assert bool(torch.isinf(m.gather(1, y[:, None])).all())
    assert torch.equal(m.min(1).values, label_margin(logits, y))
    # each entry is one rounded subtraction
    j = (y + 1) % logits.shape[1]
    assert torch.equal(m.gather(1, j[:, None]).squeeze(1),
                       logits.gather(1, y[:, None]).squeeze(1) - logits.gather(1, j[:, None])
                       .squeeze(1))


@settings(max_examples=30, deadline=None)
@given(args=_LOGITS)
def test_label_margin_is_positive_exactly_when_the_label_is_the_unique_argmax(args) -> None:
    logits, y = _draw(*args)
    unique_top = (logits.argmax(1) == y) & (
        (logits == logits.gather(1, y[:, None])).sum(1) == 1)
    assert torch.equal(label_margin(logits, y) > 0, unique_top)


def test_criteria_margins_are_the_label_margin_and_its_negation() -> None:
    logits = torch.tensor([[1.0, 3.0, 3.0], [0.5, -1.0, 2.0]], dtype=torch.float64,
                          requires_grad=True)
    y = torch.tensor([0, 2])
    assert torch.equal(Misclassification(y).margin(logits), label_margin(logits, y))
    assert torch.equal(TargetedMisclassification(y).margin(logits), -label_margin(logits, y))
    (g,) = torch.autograd.grad(label_margin(logits, y).sum(), logits)
    # the maximum's gradient splits between the tied logits 3.0, 3.0
    assert g[0].tolist() == [1.0, -0.5, -0.5] and g[1].tolist() == [-1.0, 0.0, 1.0]
    assert label_margin(torch.zeros(1, 1), torch.zeros(1, dtype=torch.long)).item() == math.inf
