"""The ``crown`` max-pooling rule (lower line z_j, upper chord s z_k + b) on its own: every
linear bound it passes down holds at sampled points and at the box's corners of the input
intervals, rounding included, and its upper line concretised over the box is never above
the constant max_i u_i it replaced (docs/theory/linear_relaxation.md §Max pooling)."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from boundkit.bounds.pooling import MaxPoolRelaxation
from boundkit.bounds.relaxation import Interval, LinearBounds, RelaxContext, dot
from boundkit.graph.capture import capture

D = torch.float64

#: (kernel, stride, padding, dilation): plain, overlapping, padded, dilated, 1-wide windows
_POOLS = [((2, 2), (2, 2), (0, 0), (1, 1)), ((3, 3), (1, 1), (1, 1), (1, 1)),
          ((3, 2), (2, 1), (1, 0), (1, 1)), ((2, 2), (1, 1), (0, 0), (2, 2)),
          ((1, 2), (1, 2), (0, 0), (1, 1))]


def _setup(pool: tuple, seed: int, c: int = 2, hw: tuple[int, int] = (6, 5)):
    k, s, p, d = pool
    model = nn.Sequential(nn.MaxPool2d(k, s, p, d), nn.Flatten()).eval()
    g = capture(model, torch.zeros(1, c, *hw))
    node = next(n for n in g.nodes if n.op == "maxpool2d")
    gen = torch.Generator().manual_seed(seed)
    n = 3
    centre = torch.randn(n, c, *hw, generator=gen, dtype=D)
    width = torch.rand(n, c, *hw, generator=gen, dtype=D) * torch.rand(
        n, 1, 1, 1, generator=gen, dtype=D) * 3
    width = torch.where(torch.rand(n, c, *hw, generator=gen, dtype=D) < 0.15,
                        torch.zeros_like(width), width)  # degenerate inputs too
    lo, hi = centre - width / 2, centre + width / 2
    if seed % 2:  # a ReLU's output: many zeros, lower bounds at 0
        lo, hi = lo.clamp(min=0), hi.clamp(min=0)
    ctx = RelaxContext(g, {})
    ctx.intervals[node.inputs[0]] = Interval(lo, hi)
    out = F.max_pool2d(lo, k, s, p, d), F.max_pool2d(hi, k, s, p, d)
    ctx.intervals[node.name] = Interval(*out)
    return node, ctx, lo, hi, gen


def _bound(node, ctx, spec):
    zero = torch.zeros(spec.shape[:2], dtype=D)
    (lb,) = MaxPoolRelaxation().backward(node, ctx, LinearBounds(spec, zero, zero))
    return lb


@pytest.mark.parametrize("pool", _POOLS)
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_maxpool_lines_hold_at_sampled_points_and_corners(pool, seed) -> None:
    node, ctx, lo, hi, gen = _setup(pool, seed)
    n = lo.shape[0]
    out_numel = int(torch.tensor(node.out_shape).prod())
    # specs: +-e_w (each window's lower and upper line) and random mixes of signs
    eye = torch.eye(out_numel, dtype=D).reshape(out_numel, *node.out_shape)
    mix = torch.randn(8, *node.out_shape, generator=gen, dtype=D)
    spec = torch.cat([eye, -eye, mix]).unsqueeze(0).expand(n, -1, *node.out_shape).contiguous()
    lb = _bound(node, ctx, spec)
    k, s, p, d = pool
    # points: uniform in the box, and corners (each coordinate at an end)
    u = torch.rand(400, *lo.shape, generator=gen, dtype=D)
    corners = (torch.rand(400, *lo.shape, generator=gen, dtype=D) < 0.5).to(D)
    for t in (u, corners):
        z = lo + t * (hi - lo)  # [P, N, C, H, W]
        for i in range(z.shape[0]):
            val = dot(spec, F.max_pool2d(z[i], k, s, p, d))  # [N, S]
            lin = dot(lb.A, z[i]) + lb.bias - lb.err
            assert bool((val >= lin).all()), float((lin - val).max())


@pytest.mark.parametrize("pool", _POOLS)
@pytest.mark.parametrize("seed", [0, 1])
def test_maxpool_upper_line_is_never_above_the_largest_upper_bound(pool, seed) -> None:
    node, ctx, lo, hi, _ = _setup(pool, seed)
    n = lo.shape[0]
    out_numel = int(torch.tensor(node.out_shape).prod())
    eye = torch.eye(out_numel, dtype=D).reshape(out_numel, *node.out_shape)
    spec = (-eye).unsqueeze(0).expand(n, -1, *node.out_shape).contiguous()
    lb = _bound(node, ctx, spec)
    # the line's lowest value over the box of the inputs: coordinate-wise minima
    low = (torch.minimum(lb.A * lo.unsqueeze(1), lb.A * hi.unsqueeze(1)).flatten(2).sum(2)
           + lb.bias - lb.err)
    upper = -low  # the line's largest value over the box: an upper bound of the max
    u_max = ctx.intervals[node.name].hi.flatten(1)
    slack = 1e-12 * (u_max.abs() + lo.abs().amax() + hi.abs().amax()) + 1e-300
    assert bool((upper <= u_max + slack).all())


def test_maxpool_upper_line_is_tighter_than_the_constant_somewhere() -> None:
    # one window, inputs [0, 2] and [0, 1]: max <= 1 + (z_0 - 0) / 2, not 2 at z = 0
    model = nn.Sequential(nn.MaxPool2d((1, 2)), nn.Flatten()).eval()
    g = capture(model, torch.zeros(1, 2, 1, 2))  # channel 1: a second class, unused
    node = next(n for n in g.nodes if n.op == "maxpool2d")
    ctx = RelaxContext(g, {})
    ctx.intervals[node.inputs[0]] = Interval(torch.zeros(1, 2, 1, 2, dtype=D),
                                             torch.tensor([[[[2.0, 1.0]], [[1.0, 1.0]]]],
                                                          dtype=D))
    ctx.intervals[node.name] = Interval(torch.zeros(1, 2, 1, 1, dtype=D),
                                        torch.tensor([[[[2.0]], [[1.0]]]], dtype=D))
    spec = torch.tensor([-1.0, 0.0], dtype=D).reshape(1, 1, 2, 1, 1)
    lb = _bound(node, ctx, spec)
    assert lb.A.flatten().tolist() == pytest.approx([-0.5, 0.0, 0.0, 0.0])
    assert float(-lb.bias) == pytest.approx(1.0)
    for a, b in itertools.product([0.0, 2.0], [0.0, 1.0]):
        z = torch.tensor([[[[a, b]], [[0.0, 0.0]]]], dtype=D)
        assert max(a, b) <= float(-(dot(lb.A, z) + lb.bias - lb.err))


@pytest.mark.parametrize("seed", range(4))
def test_crown_and_bab_radii_on_pooling_nets_hold_at_dense_points_and_under_attack(seed) -> None:
    """End to end with the chord: ``crown`` and ``bab`` radii on conv-ReLU-maxpool nets
    (overlapping, padded and plain windows) admit no class change at 10,000 points of
    each ball of 0.999 x the radius (inside the box; a third on its sphere) nor under
    projected gradient ascent there."""
    import boundkit as bk
    from boundkit.bounds.bab import pgd_counterexample

    torch.manual_seed(seed)
    k, s, p = [(2, 2, 0), (3, 1, 1), (2, 1, 0), (3, 2, 1)][seed]
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.MaxPool2d(k, s, p),
                          nn.Conv2d(3, 4, 2), nn.ReLU(), nn.MaxPool2d(2, padding=1),
                          nn.Flatten()).double().eval()
    with torch.no_grad():
        flat = model(torch.zeros(1, 1, 8, 8, dtype=D)).shape[1]
    model.append(nn.Linear(flat, 3).double().eval())
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(3, 1, 8, 8, generator=gen, dtype=D)
    label = model(x).argmax(1)
    crown = bk.certify(model, x, "crown").radius
    # any upper end bounds the search (no attack run here): twice crown's radius
    radii = [crown, bk.certify(model, x, "bab", time_budget=0.3, upper=2 * crown + 1e-3).radius]
    for r in radii:
        r = 0.999 * r.double()
        m = 10_000
        dirs = torch.randn(3, m, 64, generator=gen, dtype=D)
        dirs = dirs / dirs.norm(dim=2, keepdim=True)
        rad = torch.rand(3, m, 1, generator=gen, dtype=D) ** (1 / 64)
        rad[:, : m // 3] = 1.0
        pts = (x.reshape(3, 1, 64) + dirs * rad * r.reshape(3, 1, 1)).clamp(0, 1)
        with torch.no_grad():
            pred = model(pts.reshape(-1, 1, 8, 8)).argmax(1).reshape(3, m)
        assert bool((pred == label.reshape(3, 1)).all())
        found, _, _ = pgd_counterexample(model, x, label, r, (0.0, 1.0), steps=60, restarts=2)
        assert not bool(found.any())
    assert bool((radii[1] >= radii[0]).all())
