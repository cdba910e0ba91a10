"""The comparison labels an order "decided by proof" only where the intervals prove it."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from boundkit.ranking import DECIDED, UNDECIDED, ModelBounds, rank


def test_equal_attack_medians_with_different_bound_looseness_are_undecided() -> None:
    # the demo's case: the MLP's bound is tighter, both models are equally robust
    mlp = ModelBounds("mlp", np.array([0.47, 0.45, 0.5]), np.array([0.52, 0.52, 0.53]))
    cnn = ModelBounds("cnn", np.array([0.17, 0.15, 0.2]), np.array([0.52, 0.51, 0.52]))
    order, verdicts = rank([cnn, mlp])
    assert [m.name for m in order] == ["mlp", "cnn"]
    assert verdicts[0].label == UNDECIDED
    assert verdicts[0].samples_decided == 0.0


def test_a_median_certified_radius_above_the_others_median_attack_is_decided() -> None:
    a = ModelBounds("a", np.array([1.0, 1.2, 0.9]), np.array([1.5, 1.6, 1.4]))
    b = ModelBounds("b", np.array([0.1, 0.2, 0.1]), np.array([0.5, 0.6, math.inf]))
    order, verdicts = rank([b, a])
    assert [m.name for m in order] == ["a", "b"]
    assert verdicts[0].label == DECIDED
    assert verdicts[0].samples_decided == 2 / 3  # the sample b was not attacked is unproven


@given(st.lists(st.tuples(st.floats(0, 10), st.floats(0, 10)), min_size=1, max_size=9),
       st.lists(st.tuples(st.floats(0, 10), st.floats(0, 10)), min_size=1, max_size=9),
       st.data())
def test_decided_by_proof_implies_the_true_medians_are_ordered(pa, pb, data) -> None:
    n = min(len(pa), len(pb))
    # per sample: certified <= true <= attack, true drawn anywhere in between
    def model(name, pairs):
        lo = np.array([min(p) for p in pairs[:n]])
        hi = np.array([max(p) for p in pairs[:n]])
        true = np.array([data.draw(st.floats(float(a), float(b))) for a, b in zip(lo, hi)])
        return ModelBounds(name, lo, hi), true
    (a, ta), (b, tb) = model("a", pa), model("b", pb)
    order, verdicts = rank([a, b])
    if verdicts[0].label == DECIDED:
        truth = {"a": ta, "b": tb}
        assert np.median(truth[order[0].name]) > np.median(truth[order[1].name])
