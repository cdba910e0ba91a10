"""LayerNorm captured as a ``center`` node and a ``layernorm`` reading it, and the
LayerNorm relaxation's per-row remainder (``docs/theory/layernorm.md``).

Properties: capture puts a ``center`` node before every LayerNorm (module and functional
forms, several normalised axes) and the graph still computes the model; the centring's
``crown`` map is :math:`P` with its rounding charged; the relaxation's lower bound of every
coefficient row (planes, rounding and the row's remainder charge) is below
:math:`\\langle a, \\mathrm{LN}\\rangle` on dense samples and at the box corners, centred input
or not; its intervals contain the outputs; certificates of small vision transformers stay
below the attacks (:func:`boundkit.testing.assert_sound`)."""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import boundkit as bk
from boundkit.bounds.layernorm import (
    CenterRelaxation,
    LayerNormRelaxation,
    remainder_charge,
)
from boundkit.bounds.relaxation import Interval
from boundkit.graph.graph import Node
from boundkit.models.vit import TinyViT
from boundkit.testing import assert_sound


class _Functional(nn.Module):
    """``F.layer_norm`` over two axes with a weight and bias, then a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(3, 4))
        self.b = nn.Parameter(torch.randn(3, 4))
        self.head = nn.Linear(24, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.layer_norm(x.reshape(-1, 2, 3, 4), (3, 4), self.w, self.b, 1e-3)
        return self.head(h.reshape(-1, 24))


class _Modules(nn.Module):
    """``nn.LayerNorm`` with and without its affine part, a module named like the centring
    node capture adds (``ln_centre``), on tokens."""

    def __init__(self) -> None:
        super().__init__()
        self.ln = nn.LayerNorm(4)
        self.ln_centre = nn.LayerNorm(4, elementwise_affine=False)
        self.head = nn.Linear(12, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ln_centre(self.ln(x.reshape(-1, 3, 4)))
        return self.head(h.reshape(-1, 12))


@pytest.mark.parametrize("make", [_Functional, _Modules])
def test_capture_puts_a_center_node_before_every_layernorm(make: type[nn.Module]) -> None:
    torch.manual_seed(0)
    model = make().double().eval()
    x = torch.randn(5, 24 if make is _Functional else 12, dtype=torch.float64)
    graph = bk.capture(model, x)
    lns = [n for n in graph.nodes if n.op == "layernorm"]
    assert lns and all(graph[n.inputs[0]].op == "center" for n in lns)
    assert len({n.name for n in graph.nodes}) == len(graph.nodes)
    for n in lns:
        c = graph[n.inputs[0]]
        assert c.attrs["normalized_shape"] == n.attrs["normalized_shape"]
        assert graph.consumers(c.name) == [n.name]
    values, _ = graph.evaluate({graph.input.name: x}, [graph.logits.name])
    assert torch.allclose(values[graph.logits.name], model(x), rtol=1e-12, atol=1e-12)


def _center_node(shape: tuple[int, ...], normalized: tuple[int, ...]) -> Node:
    return Node(name="c", op="center", inputs=["x"], target="", in_shapes=[shape],
                out_shape=shape, attrs={"normalized_shape": normalized})


@settings(max_examples=30, deadline=None, derandomize=True)
@given(seed=st.integers(0, 10**6), n=st.integers(1, 7), scale=st.sampled_from([1e-3, 1.0, 1e5]))
def test_center_relaxation_is_the_centring_map_with_its_rounding_charged(
        seed: int, n: int, scale: float) -> None:
    """``transpose`` / ``apply`` compute :math:`P` (it is symmetric), and the charge of a
    coefficient row covers its rounding against exact rational arithmetic."""
    g = torch.Generator().manual_seed(seed)
    node = _center_node((2, n), (n,))
    rule = CenterRelaxation()
    a = scale * torch.randn(1, 2, n, generator=g, dtype=torch.float64)
    got = rule.transpose(node, a)
    mag = scale * torch.rand(1, 2, n, generator=g, dtype=torch.float64)
    charge = rule.rounding_bound(node, mag)
    for row in range(2):
        fr = [Fraction(float(v)) for v in a[0, row]]
        mean = sum(fr) / n
        exact = [v - mean for v in fr]
        # sum_i |fl - exact|_i |z_i| <= sum_i |a_i| charge_i for every |z| <= mag
        lhs = sum(abs(Fraction(float(got[0, row, i])) - exact[i]) * Fraction(float(mag[0, row, i]))
                  for i in range(n))
        rhs = sum(abs(fr[i]) * Fraction(float(charge[0, row, i])) for i in range(n))
        assert lhs <= rhs
    dense = torch.eye(n, dtype=torch.float64) - 1.0 / n
    assert torch.allclose(got, a @ dense, atol=1e-12 * scale)
    assert torch.allclose(rule.abs_apply(node, mag), mag @ dense.abs(), atol=1e-12 * scale)


def _ln_node(g: int, n: int, w: torch.Tensor, b: torch.Tensor, eps: float) -> Node:
    return Node(name="ln", op="layernorm", inputs=["c"], target="", in_shapes=[(g, n)],
                out_shape=(g, n), params={"weight": w, "bias": b},
                attrs={"normalized_shape": (n,), "eps": eps})


@settings(max_examples=60, deadline=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
@given(seed=st.integers(0, 10**6), n=st.integers(1, 6),
       scale=st.sampled_from([0.01, 1.0, 10.0]), width=st.sampled_from([0.0, 1e-3, 0.1, 1.0]),
       eps=st.sampled_from([1e-5, 1e-2, 1.0]), centred=st.booleans())
def test_layernorm_row_bounds_and_intervals_contain_layernorm_on_the_box(
        seed: int, n: int, scale: float, width: float, eps: float, centred: bool) -> None:
    r"""For random coefficient rows :math:`a`: :math:`\langle a,y(x)\rangle\ge\langle aK,x
    \rangle+\sum(a^+y_{lo}+a^-y_{hi})-\mathrm{charge}(a)` at dense samples and every corner of
    the box, and ``lo <= y <= hi``; ``centred``: the node's function is
    :math:`\gamma\,g(d)+\beta` with :math:`g(d)=d/\sqrt{\|d\|^2/n+\epsilon}` on the whole box
    (it is LayerNorm at its centred points, the only values a ``center`` node gives)."""
    gen = torch.Generator().manual_seed(seed)
    groups = 2
    w = torch.randn(n, generator=gen, dtype=torch.float64) * 2
    b = torch.randn(n, generator=gen, dtype=torch.float64)
    node = _ln_node(groups, n, w, b, eps)
    lo = scale * torch.randn(1, groups, n, generator=gen, dtype=torch.float64)
    hi = lo + width * scale * torch.rand(1, groups, n, generator=gen, dtype=torch.float64)
    if centred:  # boxes around centred points, as a center node's intervals are
        mid = (lo + hi) / 2
        shift = mid.mean(-1, keepdim=True)
        lo, hi = lo - shift, hi - shift
    rule = LayerNormRelaxation()
    ln = rule.lines(node, Interval(lo, hi), centred)
    bits = torch.tensor(list(itertools.product([0.0, 1.0], repeat=n)), dtype=lo.dtype)
    x = torch.cat([lo + (hi - lo) * torch.rand(1500, groups, n, generator=gen, dtype=lo.dtype),
                   lo + (hi - lo) * bits[:, None, :]])  # [M, G, n]
    if centred:
        y = w * x / torch.sqrt((x * x).sum(-1, keepdim=True) / n + eps) + b
    else:
        y = F.layer_norm(x, (n,), w, b, eps)
    assert (y >= ln.lo[0]).all() and (y <= ln.hi[0]).all()
    a = torch.randn(1, 16, groups, n, generator=gen, dtype=torch.float64)
    a[0, :4] = a[0, :4].abs()  # rows of one sign too
    a_in = torch.einsum("nsgi,ngij->nsgj", a, ln.k)[0]  # [S, G, n]
    const = (a.clamp(min=0) * ln.y_lo.unsqueeze(1) + a.clamp(max=0) * ln.y_hi.unsqueeze(1))
    lower = const[0].sum(-1) - remainder_charge(a, ln)[0]  # [S, G]
    got = torch.einsum("sgi,mgi->msg", a[0], y)
    bound = torch.einsum("sgi,mgi->msg", a_in, x) + lower
    slack = 1e-9 * (1 + torch.einsum("sgi,mgi->msg", a[0].abs(), y.abs()))
    assert (got >= bound - slack).all()


@pytest.mark.parametrize("cls,box", [(True, None), (False, None), (False, (0.0, 1.0))])
def test_small_vision_transformers_crown_certificates_stay_below_the_attacks(
        cls: bool, box: tuple[float, float] | None) -> None:
    torch.manual_seed(3 + int(cls))
    model = TinyViT(image=(3, 8, 8), patch=4, dim=8, depth=1, heads=2, mlp=8,
                    num_classes=3, cls=cls).double().eval()
    with torch.no_grad():  # LayerNorm scales of both signs, larger tokens
        for m in model.modules():
            if isinstance(m, nn.LayerNorm):
                m.weight.copy_(torch.randn_like(m.weight) * 1.5)
                m.bias.copy_(torch.randn_like(m.bias) * 0.5)
    x = torch.rand(4, 3, 8, 8, dtype=torch.float64)
    out = assert_sound(model, x, "crown", attack_steps=60, box=box)
    assert torch.isfinite(out["certificate"].radius).all()
    assert (out["certificate"].radius > 0).any()
    assert math.isfinite(float(out["upper"].min()))


def test_crown_plan_refines_the_centred_input_and_a_softmax_output_read_by_a_product() -> None:
    """The walks bound each LayerNorm's ``center`` node (not the un-centred input) and the
    attention weights the product with V reads."""
    from boundkit.bounds.crown.plan import Refine, plan_crown

    torch.manual_seed(0)
    model = TinyViT(image=(3, 8, 8), patch=4, dim=8, depth=1, heads=2, mlp=8,
                    num_classes=3, cls=False).double().eval()
    graph = bk.capture(model, torch.rand(1, 3, 8, 8, dtype=torch.float64))
    plan = plan_crown(graph)
    centres = [n.name for n in graph.nodes if n.op == "center"]
    assert len(centres) == 3 and all(plan.refine.get(c) is Refine.ALL for c in centres)
    # the residual stream itself (read by the centring and by additions only) is not walked
    assert not any(graph[c].inputs[0] in plan.refine for c in centres)
    soft = [n.name for n in graph.nodes if n.op == "softmax"]
    assert soft and all(plan.refine.get(s) is Refine.ALL for s in soft)
