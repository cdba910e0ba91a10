"""Products of two activations (issue 24): ops ``mul`` and ``matmul``.

Every relaxation (McCormick planes, the square's lines, the backward steps of ``mul``,
``x * x`` and ``matmul``, the interval transfers) contains the product on dense samples of
the box and at its corners; capture reads every form with torch's semantics and refuses
what would mix samples; certificates of small random product networks never exceed an
adversarial example's distance (``sound`` and ``crown``)."""

from __future__ import annotations

import itertools
import math
import operator

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from boundkit.bounds.products import (
    MatmulRelaxation,
    MulRelaxation,
    mccormick,
    square_lines,
)
from boundkit.bounds.relaxation import Interval, LinearBounds, RelaxContext
from boundkit.errors import UnsupportedLayerError
from boundkit.graph import capture
from boundkit.graph.graph import Node
from boundkit.graph.ops import evaluate
from boundkit.testing import (
    adversarial_search,
    assert_crown_intervals_contain_samples,
    assert_sound,
    check_no_adversarial_in_relaxation_ball,
)


def _crown_below_adversarial(model: nn.Module, x: torch.Tensor, steps: int = 40) -> torch.Tensor:
    """``crown`` without the box never exceeds the distance of an adversarial example found
    without the box (float64 search); returns the radii."""
    import boundkit as bk

    r = bk.certify(model, x, "crown", box=None).radius
    _, norm = adversarial_search(model, x, steps=steps)
    assert bool((r <= norm * (1 + 1e-9)).all()), (r.tolist(), norm.tolist())
    return r

_END = st.floats(-20, 20, allow_nan=False)
_WIDTH = st.sampled_from([0.0, 1e-9, 1e-3, 0.5, 3.0, 25.0])


def _box(gen: torch.Generator, shape: tuple[int, ...], scale: float, width: float
         ) -> Interval:
    lo = (torch.rand(shape, generator=gen, dtype=torch.float64) - 0.5) * 2 * scale
    w = torch.rand(shape, generator=gen, dtype=torch.float64) * width
    return Interval(lo, lo + w)


def _points(iv: Interval, gen: torch.Generator, k: int) -> torch.Tensor:
    """``k`` points of the box [k, *shape]: every corner pattern the product can peak at
    (all lows, all highs, mixed) and uniform interior points."""
    t = torch.rand((k, *iv.lo.shape), generator=gen, dtype=torch.float64)
    t[: k // 4] = (t[: k // 4] > 0.5).double()  # corners
    if k >= 2:
        t[0], t[1] = 0.0, 1.0
    return (iv.lo + (iv.hi - iv.lo) * t).clamp(iv.lo, iv.hi)


@settings(max_examples=150)
@given(xa=_END, xw=_WIDTH, ya=_END, yw=_WIDTH, cx=st.floats(0, 1), cy=st.floats(0, 1))
def test_mccormick_planes_contain_the_product_on_dense_samples_and_at_the_corners(
        xa: float, xw: float, ya: float, yw: float, cx: float, cy: float) -> None:
    xl, xu = torch.tensor([xa]).double(), torch.tensor([xa + xw]).double()
    yl, yu = torch.tensor([ya]).double(), torch.tensor([ya + yw]).double()
    x0, y0 = xl + cx * (xu - xl), yl + cy * (yu - yl)
    p = mccormick(xl, xu, yl, yu, x0, y0)
    t = torch.linspace(0, 1, 201, dtype=torch.float64)
    x = (xl + (xu - xl) * t).clamp(xl, xu).view(-1, 1)
    y = (yl + (yu - yl) * t).clamp(yl, yu).view(1, -1)
    z = x * y
    lower = p.ax_lo * x + p.ay_lo * y + p.c_lo
    upper = p.ax_hi * x + p.ay_hi * y + p.c_hi
    # the planes hold in real arithmetic; the stored offset is rounded once, and the
    # evaluation here rounds a few times more
    tol = 8 * 2.0**-53 * ((p.ax_lo * x).abs() + (p.ay_lo * y).abs() + p.c_lo.abs() + z.abs())
    assert bool((lower <= z + tol).all())
    tol = 8 * 2.0**-53 * ((p.ax_hi * x).abs() + (p.ay_hi * y).abs() + p.c_hi.abs() + z.abs())
    assert bool((z <= upper + tol).all())
    # tight where the box is a point
    if xw == 0 and yw == 0:
        assert float((upper - lower).abs().max()) <= 1e-12 * (1 + float(z.abs().max()))


@settings(max_examples=150)
@given(a=_END, w=_WIDTH, c=st.floats(0, 1))
def test_square_lines_contain_the_square_on_dense_samples_and_at_the_ends(
        a: float, w: float, c: float) -> None:
    lo, hi = torch.tensor([a]).double(), torch.tensor([a + w]).double()
    ln = square_lines(lo, hi, lo + c * (hi - lo))
    x = (lo + (hi - lo) * torch.linspace(0, 1, 2001, dtype=torch.float64)).clamp(lo, hi)
    z = x * x
    tol = 8 * 2.0**-53 * ((ln.k_lo * x).abs() + ln.c_lo.abs() + z)
    assert bool((ln.k_lo * x + ln.c_lo <= z + tol).all())
    tol = 8 * 2.0**-53 * ((ln.k_hi * x).abs() + ln.c_hi.abs() + z)
    assert bool((z <= ln.k_hi * x + ln.c_hi + tol).all())


def _step(rule: MulRelaxation | MatmulRelaxation, node: Node, ivs: list[Interval],
          centres: list[torch.Tensor], a: torch.Tensor) -> list[LinearBounds | None]:
    ctx = RelaxContext(None, {n: c for n, c in zip(node.inputs, centres)})  # type: ignore[arg-type]
    for name, iv in zip(node.inputs, ivs):
        ctx.intervals[name] = iv
    ctx.intervals[node.name] = rule.interval(node, ctx, ivs)
    zero = torch.zeros(a.shape[:2], dtype=torch.float64)
    return rule.backward(node, ctx, LinearBounds(a, zero, zero))


_MUL_SHAPES = [((4,), (4,)), ((3, 1), (3, 5)), ((1, 5), (3, 1)), ((2, 1, 4), (1, 3, 4)),
               ((1,), (6,)), ((1, 1), (1, 1))]
_MM_SHAPES = [((3, 4), (4, 2)), ((2, 3, 4), (2, 4, 5)), ((1, 2, 3), (4, 3, 1)),
              ((2, 1, 3, 2), (1, 3, 2, 3)), ((1, 1), (1, 1)), ((1, 5), (5, 1))]
#: per product op: its rule, the per-sample operand shapes tried, and the output shape
_PRODUCTS = {
    "mul": (MulRelaxation, _MUL_SHAPES, lambda sx, sy: tuple(torch.broadcast_shapes(sx, sy))),
    "matmul": (MatmulRelaxation, _MM_SHAPES,
               lambda sx, sy: tuple(torch.matmul(torch.zeros(sx), torch.zeros(sy)).shape)),
}


@pytest.mark.parametrize("op", sorted(_PRODUCTS))
@settings(max_examples=60)
@given(data=st.data(), seed=st.integers(0, 2**31 - 1), scale=st.sampled_from([1e-3, 1.0, 10.0]),
       width=st.sampled_from([0.0, 0.01, 1.0, 8.0]), centred=st.booleans(),
       sparse=st.booleans())
def test_product_backward_step_and_interval_contain_the_product_on_samples_and_corners(
        op: str, data: st.DataObject, seed: int, scale: float, width: float, centred: bool,
        sparse: bool) -> None:
    """``mul`` and ``matmul``: the interval and the backward step (with the operands'
    centres or without, coefficients dense or with zeros) hold at sampled points and
    corners of the operands' boxes."""
    rule_type, shapes, out_shape = _PRODUCTS[op]
    sx, sy = data.draw(st.sampled_from(shapes))
    gen = torch.Generator().manual_seed(seed)
    out = out_shape(sx, sy)
    node = Node("z", op, ["x", "y"], op, in_shapes=[sx, sy], out_shape=out)
    ivx, ivy = _box(gen, (2, *sx), scale, width), _box(gen, (2, *sy), scale, width)
    cs = [_points(iv, gen, 1)[0] for iv in (ivx, ivy)] if centred else []
    a = torch.randn((2, 3, *out), generator=gen, dtype=torch.float64)
    if sparse:
        a[a.abs() < 0.3] = 0.0
    rule = rule_type()
    lbx, lby = _step(rule, node, [ivx, ivy], cs, a)
    assert lbx is not None and lby is not None
    iv = rule.interval(node, RelaxContext(None, {}), [ivx, ivy])  # type: ignore[arg-type]
    for x, y in zip(_points(ivx, gen, 400), _points(ivy, gen, 400)):
        z = evaluate(node, [x, y])
        assert bool(((iv.lo <= z) & (z <= iv.hi)).all())
        f = (a * z.unsqueeze(1)).flatten(2).sum(2)
        bound = ((lbx.A * x.unsqueeze(1)).flatten(2).sum(2)
                 + (lby.A * y.unsqueeze(1)).flatten(2).sum(2) + lbx.bias - lbx.err)
        assert bool((bound <= f + 1e-12 * (1 + f.abs())).all()), float((bound - f).max())


@settings(max_examples=60)
@given(seed=st.integers(0, 2**31 - 1), shape=st.sampled_from([(5,), (2, 3), (1,)]),
       scale=st.sampled_from([1e-3, 1.0, 10.0]), width=st.sampled_from([0.0, 0.01, 1.0, 8.0]))
def test_square_backward_step_and_interval_contain_the_square_on_samples_and_ends(
        seed: int, shape: tuple[int, ...], scale: float, width: float) -> None:
    gen = torch.Generator().manual_seed(seed)
    node = Node("z", "mul", ["x", "x"], "mul", in_shapes=[shape, shape], out_shape=shape)
    ivx = _box(gen, (2, *shape), scale, width)
    a = torch.randn((2, 4, *shape), generator=gen, dtype=torch.float64)
    rule = MulRelaxation()
    lbx, none = _step(rule, node, [ivx, ivx], [_points(ivx, gen, 1)[0]] * 2, a)
    assert none is None and lbx is not None
    iv = rule.interval(node, RelaxContext(None, {}), [ivx, ivx])  # type: ignore[arg-type]
    for x in _points(ivx, gen, 400):
        z = x * x
        assert bool(((iv.lo <= z) & (z <= iv.hi)).all())
        f = (a * z.unsqueeze(1)).flatten(2).sum(2)
        bound = (lbx.A * x.unsqueeze(1)).flatten(2).sum(2) + lbx.bias - lbx.err
        assert bool((bound <= f + 1e-12 * (1 + f.abs())).all())


def test_matmul_planes_in_row_chunks_give_the_same_bounds(monkeypatch) -> None:
    from boundkit.bounds import products

    gen = torch.Generator().manual_seed(3)
    sx, sy, out = (2, 6, 3), (2, 3, 4), (2, 6, 4)
    node = Node("z", "matmul", ["x", "y"], "matmul", in_shapes=[sx, sy], out_shape=out)
    ivs = [_box(gen, (2, *sx), 1.0, 1.0), _box(gen, (2, *sy), 1.0, 1.0)]
    cs = [_points(iv, gen, 1)[0] for iv in ivs]
    a = torch.randn((2, 3, *out), generator=gen, dtype=torch.float64)
    whole = _step(MatmulRelaxation(), node, ivs, cs, a)
    monkeypatch.setattr(products, "PLANE_CHUNK", 2 * 2 * 3 * 4)  # one row per chunk
    rows = _step(MatmulRelaxation(), node, ivs, cs, a)
    for p, q in zip(whole, rows):
        assert p is not None and q is not None
        assert torch.allclose(p.A, q.A, rtol=1e-14, atol=0)
        assert torch.allclose(p.bias, q.bias, rtol=1e-12, atol=1e-15)


# ------------------------------------------------------------------ capture
class _Two(nn.Module):
    """Two linear branches of the input, shaped ``shape`` and ``shape_b`` per sample (the
    second through tanh), combined by ``combine``."""

    def __init__(self, combine, d: int = 6, shape: tuple[int, ...] = (6,),
                 shape_b: tuple[int, ...] | None = None) -> None:
        super().__init__()
        self.shape, self.shape_b = shape, shape_b or shape
        self.a = nn.Linear(d, math.prod(self.shape))
        self.b = nn.Linear(d, math.prod(self.shape_b))
        self.combine = combine
        probe = combine(torch.zeros(1, *self.shape), torch.zeros(1, *self.shape_b))
        self.out = nn.Linear(probe[0].numel(), 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.a(x).reshape(x.shape[0], *self.shape)
        b = torch.tanh(self.b(x)).reshape(x.shape[0], *self.shape_b)
        return self.out(torch.flatten(self.combine(a, b), 1))


_MUL_FORMS = {
    "operator": operator.mul,
    "torch.mul": torch.mul,
    "torch.multiply": torch.multiply,
    "method": lambda a, b: a.mul(b),
    "keywords": lambda a, b: torch.mul(input=a, other=b),
    "gate_sigmoid": lambda a, b: a * torch.sigmoid(b),
    "gate_silu": lambda a, b: a * F.silu(b),
    "square": lambda a, b: a * a,
    "square_pow_free": lambda a, b: (a + b) * (a + b),
}


@pytest.mark.parametrize("shape_a,shape_b", [((3, 1), (3, 2)), ((1, 2), (3, 2)),
                                             ((3, 1), (1, 2)), ((1, 6), (1, 6)),
                                             ((6, 1), (6, 1)), ((1,), (6,)),
                                             ((2, 1, 3), (1, 2, 1))])
def test_capture_broadcasts_per_sample_shapes_like_torch(shape_a, shape_b) -> None:
    torch.manual_seed(1)
    model = _Two(operator.mul, shape=shape_a, shape_b=shape_b).eval()
    g = capture(model, (6,))
    mul = next(n for n in g.nodes if n.op == "mul")
    assert mul.in_shapes == [shape_a, shape_b]
    x = torch.rand(4, 6, dtype=torch.float64)
    assert torch.allclose(g.activations(x)[g.output], model.double()(x), rtol=0, atol=1e-12)
    _crown_below_adversarial(model, x.float(), steps=30)


def test_capture_refuses_operands_of_different_rank_that_would_mix_samples() -> None:
    class M(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.o = nn.Linear(3, 3), nn.Linear(9, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.a(x)  # [N, 3]
            return self.o((h * h.unsqueeze(1)).flatten(1))  # [N, 3] * [N, 1, 3]

    with pytest.raises(UnsupportedLayerError, match="same number of dimensions"):
        capture(M().eval(), (3,))


def test_capture_keeps_division_by_a_value_refused_and_scale_by_constant() -> None:
    class Div(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x / self.a(x)

    with pytest.raises(UnsupportedLayerError, match="quotient"):
        capture(Div().eval(), (4,))

    class Scale(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * 3.0

    assert [n.op for n in capture(Scale().eval(), (4,)).nodes] == ["input", "scale"]


_MATMUL_FORMS = {
    "torch.matmul": torch.matmul,
    "operator": operator.matmul,
    "method": lambda a, b: a.matmul(b),
    "bmm": torch.bmm,
    "bmm_keywords": lambda a, b: torch.bmm(a, mat2=b),
    "keywords": lambda a, b: torch.matmul(input=a, other=b),
}


#: per product op: its forms, the operands' per-sample shapes, the seed of the weights
_FORMS = {"mul": (_MUL_FORMS, (6,), None, 0), "matmul": (_MATMUL_FORMS, (2, 3), (3, 2), 2)}


@pytest.mark.parametrize(("op", "form"), [(op, f) for op in sorted(_FORMS)
                                          for f in sorted(_FORMS[op][0])])
def test_capture_reads_every_product_form_and_evaluates_as_torch(op: str, form: str) -> None:
    """Every spelling of ``mul`` / ``matmul`` is captured as the op (``matmul``: one node)
    and the graph evaluates as torch."""
    forms, shape, shape_b, seed = _FORMS[op]
    torch.manual_seed(seed)
    model = _Two(forms[form], d=6, shape=shape, shape_b=shape_b).eval()
    g = capture(model, (6,))
    count = [n.op for n in g.nodes].count(op)
    assert count >= 1 and (op != "matmul" or count == 1), g.summary()
    x = torch.rand(5, 6, dtype=torch.float64)
    assert torch.allclose(g.activations(x)[g.output], model.double()(x), rtol=0, atol=1e-12)


@pytest.mark.parametrize("m,k,n", [(1, 1, 1), (1, 4, 2), (3, 1, 2), (2, 3, 1)])
def test_capture_matmul_of_one_token_or_one_channel(m: int, k: int, n: int) -> None:
    torch.manual_seed(3)

    class M(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.o = nn.Linear(4, m * k), nn.Linear(4, k * n), nn.Linear(m * n, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            q = self.a(x).reshape(-1, 1, m, k)
            v = torch.sigmoid(self.b(x)).reshape(-1, 1, k, n)
            return self.o((q @ v).flatten(1))

    model = M().eval()
    g = capture(model, (4,))
    x = torch.rand(3, 4, dtype=torch.float64)
    assert torch.allclose(g.activations(x)[g.output], model.double()(x), rtol=0, atol=1e-12)
    _crown_below_adversarial(model, x.float(), steps=30)


def test_capture_makes_matmul_by_a_constant_an_exact_linear_node() -> None:
    class M(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.randn(5, 3))
            self.a = nn.Linear(4, 5)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.relu(self.a(x)) @ self.w

    model = M().eval()
    g = capture(model, (4,))
    assert [n.op for n in g.nodes] == ["input", "linear", "relu", "linear"]
    assert torch.equal(g.nodes[-1].params["weight"], model.w.detach().double().T)
    x = torch.rand(3, 4, dtype=torch.float64)
    assert torch.allclose(g.activations(x)[g.output], model.double()(x), rtol=0, atol=1e-12)

    class Left(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.randn(2, 2))
            self.a = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return (self.w @ self.a(x).reshape(-1, 2, 2)).flatten(1)

    with pytest.raises(UnsupportedLayerError, match="on the left"):
        capture(Left().eval(), (4,))


def test_capture_refuses_a_matmul_of_two_vectors_per_sample() -> None:
    class M(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.matmul(self.a(x), self.b(x).T)  # [N, N]: mixes samples

    with pytest.raises(UnsupportedLayerError):
        capture(M().eval(), (4,))


def test_shared_weights_product_branches_capture_as_separate_nodes() -> None:
    class M(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.o = nn.Linear(4, 4), nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.o(self.a(x) * torch.tanh(self.a(x)))

    model = M().eval()
    g = capture(model, (4,))
    assert [n.op for n in g.nodes].count("linear") == 3
    x = torch.rand(6, 4)
    _crown_below_adversarial(model, x)


# ------------------------------------------------------------------ certificates
class _Gated(nn.Module):
    """A gated block ``(W1 x) * act(W2 x)``, twice, then a linear head."""

    def __init__(self, d: int, h: int, act, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.l1, self.g1 = nn.Linear(d, h), nn.Linear(d, h)
        self.l2, self.g2 = nn.Linear(h, h), nn.Linear(h, h)
        self.out = nn.Linear(h, 3)
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.l1(x) * self.act(self.g1(x))
        h = self.l2(h) * self.act(self.g2(h))
        return self.out(h)


class _Attention(nn.Module):
    """One attention-like block without softmax: scores ``q k``, sigmoid, times ``v``."""

    def __init__(self, seed: int, t: int = 3, e: int = 2) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.t, self.e = t, e
        self.q, self.k, self.v = (nn.Linear(6, t * e) for _ in range(3))
        self.out = nn.Linear(t * e, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = self.q(x).reshape(-1, 1, self.t, self.e)
        k = self.k(x).reshape(-1, 1, self.e, self.t)
        v = torch.tanh(self.v(x)).reshape(-1, 1, self.t, self.e)
        h = torch.sigmoid(q @ k) @ v
        return self.out((h * h + h).flatten(1))


class _SquareOfInput(nn.Module):
    """``x * x - x`` on the input itself (the square rule with the box's bounds), then a
    cube of a hidden layer (two products)."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.a, self.out = nn.Linear(6, 6), nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.a(x * x - x)
        return self.out(y * y * y)


class _BroadcastHeads(nn.Module):
    """``[N, 1, 3, 2] @ [N, 2, 2, 3]``: one query matrix against two heads' keys."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.q, self.k, self.out = nn.Linear(6, 6), nn.Linear(6, 12), nn.Linear(18, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = self.q(x).reshape(-1, 1, 3, 2)
        k = torch.tanh(self.k(x)).reshape(-1, 2, 2, 3)
        return self.out((q @ k).flatten(1))


_NETS = {
    "gated_silu": lambda s: _Gated(5, 6, F.silu, s),
    "gated_sigmoid": lambda s: _Gated(5, 6, torch.sigmoid, s),
    "gated_tanh_wide": lambda s: _Gated(5, 10, torch.tanh, s),
    "attention": lambda s: _Attention(s),
    "square_of_input": lambda s: _SquareOfInput(s),
    "broadcast_heads": lambda s: _BroadcastHeads(s),
}


@pytest.mark.parametrize("kind,method", list(itertools.product(sorted(_NETS),
                                                                ["sound", "crown"])))
def test_certificates_of_product_nets_never_exceed_an_adversarial_distance(kind: str,
                                                                           method: str) -> None:
    for seed in (0,):
        model = _NETS[kind](seed).eval()
        d = 5 if kind.startswith("gated") else 6
        x = torch.rand(4, d, generator=torch.Generator().manual_seed(seed))
        if method == "sound":
            r = assert_sound(model, x, method, exact=False, attack_steps=60)["certificate"].radius
        else:
            r = _crown_below_adversarial(model, x, steps=60)
        assert bool((r > 0).all()), (kind, method)


def test_crown_intervals_of_product_nets_contain_sampled_values() -> None:
    for kind in sorted(_NETS):
        model = _NETS[kind](7).eval()
        d = 5 if kind.startswith("gated") else 6
        x = torch.rand(3, d, generator=torch.Generator().manual_seed(7))
        eps = torch.full((3,), 0.3, dtype=torch.float64)
        assert_crown_intervals_contain_samples(model, x, eps, samples=300)


def test_no_adversarial_example_in_the_boxed_crown_and_alpha_balls_of_a_gated_net() -> None:
    model = _NETS["gated_silu"](5).eval()
    x = torch.rand(3, 5, generator=torch.Generator().manual_seed(5))
    assert check_no_adversarial_in_relaxation_ball(model, x, alpha_iterations=3, steps=40)


def test_crown_is_tighter_than_sound_on_a_gated_net() -> None:
    import boundkit as bk

    model = _NETS["gated_silu"](3).eval()
    x = torch.rand(6, 5, generator=torch.Generator().manual_seed(3))
    s = bk.certify(model, x, "sound").radius
    c = bk.certify(model, x, "crown", box=None).radius
    assert bool((c >= s).all()) and float(c.median()) > 1.5 * float(s.median())


def test_gated_mlp_zoo_entry_has_two_gated_products_and_certifies() -> None:
    import boundkit as bk
    from boundkit.models import build_model

    model = build_model("gated_mlp_mnist", seed=0)
    g = capture(model, (1, 28, 28))
    muls = [n for n in g.nodes if n.op == "mul"]
    assert len(muls) == 2
    assert all(g[n.inputs[1]].op == "silu" for n in muls)
    x = torch.rand(2, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    c = bk.certify(model, x, "crown").radius
    s = bk.certify(model, x, "sound").radius
    assert bool((c > 0).all()) and bool((c >= s).all())
    # sound's radii are within the float32 model's own rounding here (its norm-based charge,
    # docs/theory/numerics.md §4, exceeds these margins of 0.004); as a float64 model, > 0
    s64 = bk.certify(model.double(), x.double(), "sound").radius
    assert bool((s64 > 0).all())


class _Tokens(nn.Module):
    """``Linear`` on token inputs [N, T, D] (attention's projections), ``x @ W`` with a
    constant on tokens, and a product of two token tensors."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.q, self.k = nn.Linear(4, 3), nn.Linear(4, 3)
        self.w = nn.Parameter(torch.randn(3, 2) * 0.5)
        self.out = nn.Linear(3 * 2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = x.reshape(-1, 3, 4)  # 3 tokens of width 4
        h = self.q(t) * torch.tanh(self.k(t))  # [N, 3, 3]
        return self.out((F.gelu(h) @ self.w).flatten(1))


def test_linear_on_tokens_captures_evaluates_and_certifies() -> None:
    model = _Tokens(0).eval()
    g = capture(model, (12,))
    lin = [n for n in g.nodes if n.op == "linear"]
    assert [n.in_shapes[0] for n in lin] == [(3, 4), (3, 4), (3, 3), (6,)]
    x = torch.rand(4, 12, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(g.activations(x)[g.output], model.double()(x.double()), rtol=0,
                          atol=1e-12)
    assert_sound(model, x, "sound", exact=False, attack_steps=40)
    r = _crown_below_adversarial(model, x)
    assert bool((r > 0).all())
