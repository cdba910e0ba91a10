"""Softmax's remainder charged per coefficient row (``docs/theory/softmax.md`` §3b): the
lower bound of every row (planes, rounding and the row's charge) is below
:math:`\\langle a, \\mathrm{softmax}(x)\\rangle` on dense samples and at the box corners, and
the split charge is never above the per-coordinate one and below it on narrow boxes."""

from __future__ import annotations

import itertools

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from boundkit.bounds.relaxation import Interval
from boundkit.bounds.softmax import SoftmaxRelaxation, softmax_remainder_charge
from boundkit.graph.graph import Node


def _node(groups: int, k: int) -> Node:
    return Node(name="sm", op="softmax", inputs=["s"], target="", in_shapes=[(groups, k)],
                out_shape=(groups, k), attrs={"dim": -1})


def _row_bound(lo: torch.Tensor, hi: torch.Tensor, a: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(slope rows [S, G, K], lower constants [S, G], charge [S, G]) for rows ``a``
    [1, S, G, K] on the box ``[lo, hi]`` [1, G, K]."""
    rule = SoftmaxRelaxation()
    sl = rule.split_lines(_node(lo.shape[1], lo.shape[2]), Interval(lo, hi))
    a_in = torch.einsum("nsgi,ngij->nsgj", a, sl.slope)[0]
    const = (a.clamp(min=0) * sl.b_lo.unsqueeze(1) + a.clamp(max=0) * sl.b_hi.unsqueeze(1))
    charge = softmax_remainder_charge(a, sl.taylor, ~sl.flat, sl.iv.lo, sl.iv.hi)[0]
    return a_in, const[0].sum(-1), charge


@settings(max_examples=60, deadline=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
@given(seed=st.integers(0, 10**6), k=st.integers(1, 6), centre=st.sampled_from([0.0, 3.0, 30.0]),
       width=st.sampled_from([0.0, 1e-3, 0.1, 1.0, 4.0]))
def test_softmax_row_bounds_contain_softmax_on_the_box(seed: int, k: int, centre: float,
                                                       width: float) -> None:
    gen = torch.Generator().manual_seed(seed)
    groups = 2
    lo = centre * torch.randn(1, groups, k, generator=gen, dtype=torch.float64)
    hi = lo + width * torch.rand(1, groups, k, generator=gen, dtype=torch.float64)
    a = torch.randn(1, 16, groups, k, generator=gen, dtype=torch.float64)
    a[0, :4] = a[0, :4].abs()
    a[0, 4:8] = -a[0, 4:8].abs()
    a_in, const, charge = _row_bound(lo, hi, a)
    bits = torch.tensor(list(itertools.product([0.0, 1.0], repeat=k)), dtype=lo.dtype)
    x = torch.cat([lo + (hi - lo) * torch.rand(1500, groups, k, generator=gen, dtype=lo.dtype),
                   lo + (hi - lo) * bits[:, None, :]])  # [M, G, K]
    y = torch.softmax(x, -1)
    got = torch.einsum("sgi,mgi->msg", a[0], y)
    bound = torch.einsum("sgi,mgi->msg", a_in, x) + const - charge
    slack = 1e-12 * (1 + torch.einsum("sgi,mgi->msg", a[0].abs(), y))
    assert (got >= bound - slack).all()


def test_softmax_split_charge_is_below_the_per_coordinate_one_on_narrow_boxes() -> None:
    gen = torch.Generator().manual_seed(0)
    lo = torch.randn(1, 4, 16, generator=gen, dtype=torch.float64)
    hi = lo + 0.05 * torch.rand(1, 4, 16, generator=gen, dtype=torch.float64)
    a = torch.randn(1, 32, 4, 16, generator=gen, dtype=torch.float64)
    sl = SoftmaxRelaxation().split_lines(_node(4, 16), Interval(lo, hi))
    charge = softmax_remainder_charge(a, sl.taylor, ~sl.flat, sl.iv.lo, sl.iv.hi)[0]
    old = (a[0].abs() * torch.where(sl.flat, 0.0, sl.taylor.rem)[0]).sum(-1)
    assert (charge <= old * (1 + 1e-12) + 1e-280).all()
    assert float((charge / old).median()) < 0.8
