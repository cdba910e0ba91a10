"""The engine's split-constrained linear bounds (``relaxation.Splits``), as the exact
branch-and-bound uses them (``NetCrown``), hold at every sampled point of the ball that
satisfies the splits: pre-activation intervals, the margin bounds at the input, the
concretised margin bound, and the emptiness verdict."""

from __future__ import annotations

import numpy as np
import torch
from helpers_exact import mlp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from boundkit.exact import to_affine_relu
from boundkit.exact.search import NetCrown

SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _pre_activations(net, z: np.ndarray) -> list[np.ndarray]:
    out, h = [], z
    for w, b in zip(net.weights[:-1], net.biases[:-1]):
        y = h @ w.T + b
        out.append(y)
        h = np.maximum(y, 0.0)
    return out


def _ball(x: np.ndarray, rho: float, n: int, rng: np.random.Generator) -> np.ndarray:
    u = rng.standard_normal((n, x.size))
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    r = rho * rng.random((n, 1)) ** (1.0 / x.size)
    r[: n // 4] = rho  # a quarter on the sphere
    return x + u * r


@SETTINGS
@given(st.data())
def test_split_constrained_bounds_hold_on_sampled_points_satisfying_the_splits(data) -> None:
    d = data.draw(st.integers(2, 4), label="d")
    hidden = [data.draw(st.integers(1, 6), label=f"h{i}") for i in range(
        data.draw(st.integers(1, 3), label="depth"))]
    k = data.draw(st.integers(2, 4), label="classes")
    seed = data.draw(st.integers(0, 10**6), label="seed")
    net = to_affine_relu(mlp((d, *hidden, k), seed), (d,))
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(d)
    rho = float(data.draw(st.floats(0.05, 3.0), label="rho"))
    c = int(np.argmax(net.forward(x[None])[0]))
    pts = np.vstack([_ball(x, rho, 4000, rng), x[None]])
    pre = _pre_activations(net, pts)
    # splits: the pattern of a point of the ball with some neurons freed (feasible), and
    # random signs (often infeasible)
    anchor = int(rng.integers(len(pts)))
    keep = [rng.random(len(y[anchor])) < 0.6 for y in pre]
    signs_a = [np.where(kp, np.where(y[anchor] >= 0, 1, -1), 0).astype(np.int8)
               for y, kp in zip(pre, keep)]
    signs_b = [rng.integers(-1, 2, len(y[0])).astype(np.int8) for y in pre]
    free = [np.zeros(len(y[0]), dtype=np.int8) for y in pre]
    engine = NetCrown(net)
    run = engine.run(x)
    outs = engine.bounds(run, c, rho, [signs_a, signs_b, free])
    for signs, out in zip([signs_a, signs_b, free], outs):
        ok = np.ones(len(pts), dtype=bool)
        for y, s in zip(pre, signs):
            ok &= np.all((s <= 0) | (y >= 0), axis=1) & np.all((s >= 0) | (y <= 0), axis=1)
        if out is None:  # proven empty: no point of the ball satisfies the splits
            assert not ok.any()
            continue
        sel = pts[ok]
        for (lo, hi), y in zip(out.pre, pre):
            assert np.all(y[ok] >= lo - 1e-12) and np.all(y[ok] <= hi + 1e-12)
        logits = net.forward(sel)
        for j in range(k):
            if j == c:
                continue
            gap = logits[:, j] - logits[:, c]
            bound = sel @ out.m_w[j] + out.m_b[j]
            assert np.all(gap <= bound + 1e-12 * (1 + np.abs(bound))), (j, (gap - bound).max())
    # the anchor satisfies its own splits: that node is never declared empty
    assert outs[0] is not None


def test_concretised_margin_bound_with_splits_is_a_lower_bound() -> None:
    """Through the engine's own ``CrownRun.backward`` (one batch: no splits, and splits
    matching the centre's pattern with some neurons freed), the concretised margin lower
    bound holds on the constrained ball. (It need not be above the unconstrained one: the
    relaxation is tighter on the smaller set, but CROWN's concretised bound is not
    monotone in it.)"""
    from boundkit.bounds.relaxation import Splits

    net = to_affine_relu(mlp((3, 8, 6, 3), 5), (3,))
    engine = NetCrown(net)
    rng = np.random.default_rng(0)
    x = rng.standard_normal(3)
    c = int(np.argmax(net.forward(x[None])[0]))
    rho = 1.0
    pts = np.vstack([_ball(x, rho, 5000, rng), x[None]])
    pre = _pre_activations(net, pts)
    signs = [np.where(y[-1] >= 0, 1, -1).astype(np.int8) for y in pre]
    signs[0][::2] = 0
    run = engine.run(x)
    sub = run.subset(torch.zeros(2, dtype=torch.long))
    sub.splits = Splits({r: torch.from_numpy(np.stack([np.zeros_like(s), s]))
                         for r, s in zip(engine.relus, signs)})
    eps = torch.full((2,), rho, dtype=torch.float64)
    ctx = sub.intervals(eps)
    assert not bool(sub.splits.empty(ctx).any())
    conc = sub.backward(engine.graph.logits, sub.margin_spec(torch.tensor([c, c])), ctx)
    low = conc.at(eps).numpy()  # f_c - f_j >= low[:, j] on the (constrained) ball
    ok = np.ones(len(pts), dtype=bool)
    for y, s in zip(pre, signs):
        ok &= np.all((s <= 0) | (y >= 0), axis=1) & np.all((s >= 0) | (y <= 0), axis=1)
    logits = net.forward(pts)
    marg = logits[:, [c]] - logits
    assert np.all(marg >= low[0][None] - 1e-12)
    assert np.all(marg[ok] >= low[1][None] - 1e-12)
