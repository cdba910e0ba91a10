"""The max-pooling relaxation's choices, window by window, against a plain per-window
reference of its definition (docs/theory/linear_relaxation.md §Max pooling): the lower
line's input (the largest lower bound where it beats every other upper bound, else the
largest centre value; first in kernel order on ties), the upper line's input (the first
largest upper bound) and the chord's slope and constant, bit for bit. The relaxation is
computed with element-wise passes over one tensor per kernel position (branch and bound
bounds thousands of subproblems through it); this pins it to the definition on plain,
overlapping, padded, dilated and 1-wide windows, with ties (ReLU outputs at 0)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

from boundkit.bounds.numerics import UNIT_ROUNDOFF
from boundkit.bounds.pooling import MaxPoolRelaxation
from boundkit.bounds.relaxation import Interval
from boundkit.graph.capture import capture

D = torch.float64
TINY = torch.finfo(D).tiny

#: (kernel, stride, padding, dilation)
_POOLS = [((2, 2), (2, 2), (0, 0), (1, 1)), ((3, 3), (1, 1), (1, 1), (1, 1)),
          ((3, 2), (2, 1), (1, 0), (1, 1)), ((2, 2), (1, 1), (0, 0), (2, 2)),
          ((1, 2), (1, 2), (0, 0), (1, 1)), ((3, 2), (3, 2), (0, 0), (1, 1))]


def _first_argmax(vals: list[float]) -> int:
    best = 0
    for i, v in enumerate(vals):
        if v > vals[best]:
            best = i
    return best


def _reference(pool: tuple, lo: torch.Tensor, hi: torch.Tensor, centre: torch.Tensor,
               out_hw: tuple[int, int]) -> dict[str, torch.Tensor]:
    """The lines per window by the definition, one window at a time in Python floats."""
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = pool
    n, c, h, w = lo.shape
    wp = w + 2 * pw
    oh, ow = out_hw
    out = {k: torch.zeros(n, c, oh * ow, dtype=D) for k in ("slope", "const")}
    out.update({k: torch.zeros(n, c, oh * ow, dtype=torch.long) for k in ("flat", "up")})

    def at(t: torch.Tensor, s: int, ch: int, y: int, x: int) -> float:
        yy, xx = y - ph, x - pw
        return float(t[s, ch, yy, xx]) if 0 <= yy < h and 0 <= xx < w else -math.inf
    for s in range(n):
        for ch in range(c):
            for oy in range(oh):
                for ox in range(ow):
                    cells = [(oy * sh + i * dh, ox * sw + j * dw)
                             for i in range(kh) for j in range(kw)]
                    lw = [at(lo, s, ch, y, x) for y, x in cells]
                    hw = [at(hi, s, ch, y, x) for y, x in cells]
                    cw = [at(centre, s, ch, y, x) for y, x in cells]
                    pos = [y * wp + x for y, x in cells]
                    j = _first_argmax(lw)
                    others = max([v for i, v in enumerate(hw) if i != j], default=-math.inf)
                    stable = lw[j] >= others
                    best = j if stable else _first_argmax(cw)
                    top = _first_argmax(hw)
                    u_k, l_k = hw[top], lw[top]
                    m = max(max([v for i, v in enumerate(hw) if i != top], default=-math.inf),
                            l_k)
                    wide = u_k > m and math.isfinite(l_k) and math.isfinite(u_k)
                    sl_ = (u_k - m) / (u_k - l_k) if wide else 0.0
                    a, b_ = (sl_ * l_k, sl_ * u_k) if wide else (0.0, 0.0)
                    b = max(m - a, u_k - b_)
                    b = b + 4 * UNIT_ROUNDOFF * (((abs(m) + abs(u_k)) + abs(a)) + abs(b_)) + TINY
                    q = oy * ow + ox
                    out["flat"][s, ch, q] = pos[best]
                    out["up"][s, ch, q] = pos[best] if stable else pos[top]
                    out["slope"][s, ch, q] = 1.0 if stable else sl_
                    out["const"][s, ch, q] = 0.0 if stable else b
    return out


@pytest.mark.parametrize("pool", _POOLS)
@pytest.mark.parametrize("seed", [0, 1])
def test_maxpool_lines_equal_the_per_window_definition_bit_for_bit(pool, seed) -> None:
    k, s, p, d = pool
    c, hw = 2, (6, 5)
    g = capture(nn.Sequential(nn.MaxPool2d(k, s, p, d), nn.Flatten()).eval(),
                torch.zeros(1, c, *hw))
    node = next(nd for nd in g.nodes if nd.op == "maxpool2d")
    gen = torch.Generator().manual_seed(seed)
    n = 2
    mid = torch.randn(n, c, *hw, generator=gen, dtype=D)
    width = torch.rand(n, c, *hw, generator=gen, dtype=D) * 2
    lo, hi = mid - width / 2, mid + width / 2
    # ReLU outputs: many ties at 0; and a few exact ties among upper bounds
    lo, hi = lo.clamp(min=0), hi.clamp(min=0)
    hi = torch.where(torch.rand(n, c, *hw, generator=gen, dtype=D) < 0.2,
                     hi.round(decimals=0), hi)
    lo = torch.minimum(lo, hi)
    centre = lo + torch.rand(n, c, *hw, generator=gen, dtype=D) * (hi - lo)
    rule = MaxPoolRelaxation()
    ref = _reference(pool, lo, hi, centre, tuple(node.out_shape[1:]))
    for cen in (centre, None):  # the centre's values, else the intervals' midpoints
        ln = rule.lines(node, Interval(lo, hi), cen)
        want = ref if cen is not None else _reference(pool, lo, hi, lo + hi,
                                                        tuple(node.out_shape[1:]))
        assert torch.equal(ln.flat, want["flat"])
        assert torch.equal(ln.up_flat, want["up"])
        assert torch.equal(ln.slope.squeeze(1), want["slope"])
        assert torch.equal(ln.const, want["const"])
        assert ln.kernel == k[0] * k[1]
