"""Certificates hold for the model as it runs in its own dtype: its rounding is charged at
every node (``docs/theory/numerics.md`` §4)."""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import boundkit as bk
from boundkit.bounds.registry import get_rule
from boundkit.bounds.relaxation import Interval, RelaxContext, model_rounding
from boundkit.errors import UnsupportedLayerError
from boundkit.graph.arithmetic import model_arithmetic


def test_arithmetic_is_the_coarsest_dtype_of_the_model() -> None:
    assert model_arithmetic({torch.float64}, False).unit == 2.0**-53
    assert model_arithmetic({torch.float32}, False).unit == 2.0**-24
    assert model_arithmetic({torch.float32, torch.bfloat16}, False).unit == 2.0**-8
    assert model_arithmetic(set(), False).unit == 2.0**-24  # no parameters: float32 inputs
    old = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("high")
        assert model_arithmetic({torch.float32}, False).unit == 2.0**-11
        assert model_arithmetic({torch.float64}, False).unit == 2.0**-53
    finally:
        torch.set_float32_matmul_precision(old)


def test_the_graph_reads_the_arithmetic_from_its_model() -> None:
    m = nn.Sequential(nn.Linear(3, 2)).eval()
    assert bk.capture(m, (3,)).model_arithmetic.unit == 2.0**-24
    assert bk.capture(copy.deepcopy(m).double(), (3,)).model_arithmetic.unit == 2.0**-53
    assert bk.capture(copy.deepcopy(m).bfloat16(), (3,)).model_arithmetic.unit == 2.0**-8


def _boundary_probe(model: nn.Module, x: torch.Tensor, radius: torch.Tensor) -> int:
    """Points of the model's own dtype just inside ``radius`` towards each other class's
    boundary of the linear model (where the exact distance sits): how many change the class
    the model predicts at ``x``, counting only points whose float64 distance is below the
    radius."""
    w = model[0].weight.detach().double()
    with torch.no_grad():
        y = model(x).argmax(1)
    flips = 0
    steps = torch.arange(0, 400, dtype=torch.float64) * 2e-8
    for i in range(x.shape[0]):
        for j in range(w.shape[0]):
            if j == int(y[i]):
                continue
            d = w[j] - w[int(y[i])]
            d = d / d.norm()
            t = radius[i] * (1 - steps)
            pts = (x[i].double() + t[:, None] * d).to(x.dtype)
            inside = (pts.double() - x[i].double()).norm(dim=1) < radius[i]
            with torch.no_grad():
                flips += int(((model(pts).argmax(1) != y[i]) & inside).sum())
    return flips


@pytest.mark.parametrize("method", ["sound", "crown"])
def test_float32_linear_classifier_keeps_its_class_inside_a_certified_radius(
        method: str) -> None:
    opts = {} if method == "sound" else {"box": None}
    flips_64 = flips_32 = 0
    for seed in range(6):
        torch.manual_seed(seed)
        model = nn.Sequential(nn.Linear(40, 3)).eval()
        x = torch.rand(8, 40) * 50
        r32 = bk.certify(model, x, method, **opts).radius
        r64 = bk.certify(copy.deepcopy(model).double(), x.double(), method, **opts).radius
        assert bool((r32 <= r64).all())
        flips_32 += _boundary_probe(model, x, r32)
        flips_64 += _boundary_probe(model, x, r64)
    # the probe has power: the float64 model's radii (no float32 charge) are crossed
    assert flips_64 > 0
    assert flips_32 == 0


def test_float64_models_pay_almost_nothing() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 16), nn.Tanh(), nn.Linear(16, 3)).eval().double()
    x = torch.rand(8, 10, dtype=torch.float64)
    r = bk.certify(model, x, "crown", box=None).radius
    graph = bk.capture(model, x)
    assert graph.model_arithmetic.unit == 2.0**-53
    r32 = bk.certify(copy.deepcopy(model).float(), x.float(), "crown", box=None).radius
    assert bool((r32 <= r).all()) and bool((r32 >= r * (1 - 1e-2)).all())


@pytest.mark.parametrize("method", ["sound", "crown"])
def test_a_coarser_dtype_never_gets_a_larger_radius(method: str) -> None:
    torch.manual_seed(1)
    base = nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 4)).eval().double()
    x = torch.rand(10, 6, dtype=torch.float64)
    opts = {} if method == "sound" else {"box": None}
    radii = []
    for dt in (torch.float64, torch.float32, torch.bfloat16):
        m = copy.deepcopy(base)
        # the same weights in every dtype: the bfloat16 values
        m.to(torch.bfloat16).to(dt)
        xs = x.to(torch.bfloat16).to(dt)
        cert = bk.certify(m, xs, method, **opts)
        keep = cert.status == 0
        radii.append((cert.radius, keep))
    both = radii[0][1] & radii[1][1] & radii[2][1]
    assert bool(both.any())
    assert bool((radii[1][0][both] <= radii[0][0][both]).all())
    assert bool((radii[2][0][both] <= radii[1][0][both]).all())
    assert bool((radii[2][0][both] < radii[0][0][both]).any())


def test_a_final_softmax_costs_a_margin_of_its_own() -> None:
    torch.manual_seed(2)
    logits = nn.Sequential(nn.Linear(8, 5)).eval()
    probs = nn.Sequential(copy.deepcopy(logits[0]), nn.Softmax(dim=1)).eval()
    x = torch.rand(12, 8)
    r_logits = bk.certify(logits, x, "crown", box=None).radius
    r_probs = bk.certify(probs, x, "crown", box=None).radius
    assert bool((r_probs <= r_logits).all())
    assert bool((r_probs < r_logits).any())


def _single_node(model: nn.Module, example: torch.Tensor):
    graph = bk.capture(model, example)
    nodes = [n for n in graph.nodes if n.op not in ("input", "flatten")]
    assert len(nodes) == 1, [n.op for n in graph.nodes]
    return graph, nodes[0]


_LAYERS = {
    "linear": lambda: nn.Linear(64, 7),
    "tanh": lambda: nn.Sequential(nn.Linear(4, 4), nn.Tanh())[1:],
    "sigmoid": lambda: nn.Sigmoid(),
    "gelu": lambda: nn.GELU(),
    "silu": lambda: nn.SiLU(),
    "elu": lambda: nn.ELU(alpha=3.0),
    "softplus": lambda: nn.Softplus(),
    "leaky_relu": lambda: nn.LeakyReLU(0.1),
    "softmax": lambda: nn.Softmax(dim=1),
}


@pytest.mark.parametrize("kind", sorted(_LAYERS))
@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), scale=st.sampled_from([1e-3, 1.0, 30.0]))
def test_evaluation_error_bounds_the_float32_layer(kind: str, seed: int, scale: float) -> None:
    """The property behind the charge: what a float32 layer computes from float32 inputs
    lies within its rule's ``evaluation_error`` of the exact value."""
    torch.manual_seed(seed)
    layer = _LAYERS[kind]().eval()
    width = 64 if kind == "linear" else 12
    z = ((torch.rand(16, width) - 0.5) * 2 * scale).float()
    graph, node = _single_node(layer, z)
    rule = get_rule(node.op, "crown")
    exact = copy.deepcopy(layer).double()(z.double()).detach()
    with torch.no_grad():
        got = layer(z).double()
    ctx = RelaxContext(graph, {})
    z64 = z.double()
    ctx.intervals[node.inputs[0]] = Interval(z64, z64)
    out = Interval(exact, exact)
    ctx.intervals[node.name] = out
    rho = model_rounding(rule, node, ctx, out)
    err = (got - exact).abs()
    if rho is None:
        assert bool((err == 0).all())
    else:
        assert bool((err <= rho).all()), float((err / rho.clamp_min(1e-300)).max())


def _first_flip_1d(model: nn.Module, x: torch.Tensor, radius: float, points: int = 4001
                   ) -> float:
    """The smallest |t| < radius (on a grid, both directions, in the model's dtype) where the
    model's class at x + t differs from its class at x; inf where none."""
    dt = x.dtype
    with torch.no_grad():
        y = model(x).argmax(1)
        best = float("inf")
        for sign in (1.0, -1.0):
            t = torch.linspace(0, radius, points, dtype=torch.float64)[1:] * sign
            pts = (x.double() + t[:, None]).to(dt)
            dist = (pts.double() - x.double()).abs().flatten()
            flip = (model(pts).argmax(1) != y) & (dist < radius)
            if bool(flip.any()):
                best = min(best, float(dist[flip].min()))
    return best


@pytest.mark.parametrize("dtype,scale", [(torch.float16, 1.0), (torch.float32, 5e33)])
def test_a_ball_where_the_models_dtype_overflows_is_not_certified(dtype, scale) -> None:
    """Logits [inf, inf] (argmax 0) inside the ball: the radius stops before."""
    m = nn.Sequential(nn.Linear(1, 2)).eval()
    with torch.no_grad():
        m[0].weight[:] = torch.tensor([[10.0], [9.0]]) * scale
        m[0].bias[:] = torch.tensor([60000.0, 64000.0]) * scale
    m = m.to(dtype)
    x = torch.zeros(1, 1, dtype=dtype)
    with torch.no_grad():
        assert not bool(torch.isfinite(m(x + 2000.0)).all())  # the probe has power
    for method, opts in [("sound", {}), ("crown", {"box": None})]:
        r = float(bk.certify(m, x, method, **opts).radius[0])
        assert _first_flip_1d(m, x, r) == float("inf"), (method, r)


@pytest.mark.parametrize("c,x0", [(1.0 + 5e-8, -0.999), (1000.00003, -999.0)])
def test_a_python_constant_is_charged_as_the_model_rounds_it(c: float, x0: float) -> None:
    """``x + c`` with ``c`` rounded to float32 by the model: the boundary moves by the
    constant's rounding, inside the exact network's radius."""
    lin = nn.Linear(1, 2, bias=False)
    with torch.no_grad():
        lin.weight[:] = torch.tensor([[-1.0], [1.0]])

    class Shift(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = lin

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.lin(x + c)

    m = Shift().eval()
    x = torch.tensor([[x0]])
    for method, opts in [("sound", {}), ("crown", {"box": None})]:
        r = float(bk.certify(m, x, method, **opts).radius[0])
        assert r > 0 and _first_flip_1d(m, x, r) == float("inf"), (method, r)


def test_results_flushed_to_zero_are_charged() -> None:
    """``torch.set_flush_denormal(True)``: a product below the smallest normal is 0."""
    m = nn.Linear(2, 2, bias=False).eval()
    with torch.no_grad():
        m.weight[:] = torch.eye(2) * 1e-15
    x = torch.tensor([[0.0, 2e-23]])
    old = torch.set_flush_denormal(True)
    try:
        if not old and not torch.set_flush_denormal(True):
            pytest.skip("this CPU cannot flush denormals")
        for method, opts in [("sound", {}), ("crown", {"box": None})]:
            r = float(bk.certify(m, x, method, **opts).radius[0])
            xp = torch.tensor([[0.0, 1e-23]])
            with torch.no_grad():
                flips = int(m(xp).argmax(1)) != int(m(x).argmax(1))
            assert not (flips and 1e-23 < r), (method, r)
    finally:
        torch.set_flush_denormal(False)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_a_model_without_parameters_runs_in_its_inputs_dtype(dtype: torch.dtype) -> None:
    m = nn.Sequential(nn.Unflatten(1, (1, 12)), nn.AvgPool1d(4), nn.Flatten()).eval()
    x = (torch.rand(16, 12, generator=torch.Generator().manual_seed(1)) * 100).to(dtype)
    cert = bk.certify(m, x, "crown", box=None)
    assert cert.info["arithmetic"] == str(dtype).split(".")[1]
    ok = (cert.status == 0) & (cert.radius > 0)
    assert bool(ok.any())
    with torch.no_grad():
        y = m(x).argmax(1)
        gen = torch.Generator().manual_seed(0)
        for _ in range(200):  # random points just inside each ball, in the inputs' dtype
            d = torch.randn(x.shape, generator=gen, dtype=torch.float64)
            d = d / d.norm(dim=1, keepdim=True) * cert.radius[:, None] * 0.999
            pts = (x.double() + d).to(dtype)
            inside = (pts.double() - x.double()).norm(dim=1) < cert.radius
            assert not bool((ok & inside & (m(pts).argmax(1) != y)).any())


@pytest.mark.parametrize("fn", [torch.nn.functional.softmax, torch.nn.functional.log_softmax])
def test_a_squash_computing_in_another_dtype_is_refused_by_name(fn) -> None:
    class M(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return fn(self.lin(x), 1, dtype=torch.float16)

    with pytest.raises(UnsupportedLayerError, match="dtype=torch.float16"):
        bk.certify(M().eval(), torch.rand(2, 4))


def test_autocast_counts_in_the_arithmetic() -> None:
    torch.manual_seed(3)
    m = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    x = torch.rand(6, 4)
    plain = bk.certify(m, x, "crown", box=None)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cast = bk.certify(m, x, "crown", box=None)
    assert plain.info["arithmetic"] == "float32"
    assert "bfloat16" in cast.info["arithmetic"]
    assert bool((cast.radius <= plain.radius).all()) and bool((cast.radius < plain.radius).any())


def test_a_float16_model_is_attacked_in_its_own_dtype() -> None:
    torch.manual_seed(1)
    m = nn.Sequential(nn.Linear(10, 4), nn.ReLU(), nn.Linear(4, 3)).half().eval()
    x = ((torch.rand(3, 10) - 0.5) * 10).half()
    res = bk.attack(m, x, "best", box=None)
    with torch.no_grad():
        moved = m(res.x_adv.to(torch.float16)).argmax(1) != m(x).argmax(1)
    assert bool((moved | ~res.success).all()) and bool(res.success.any())


def test_a_resize_is_charged_the_weights_the_model_computes() -> None:
    """``Upsample(28 -> 52, bilinear)`` in float32: an output reads an input with weight
    1.9e-6 where the float64 weight is 0; a head whose margin rests on it flips inside the
    uncharged radius, and not inside the charged one."""
    size_in, size_out = (28, 28), (52, 52)
    n_in, n_out = 28 * 28, 52 * 52
    eye = torch.eye(n_in).reshape(n_in, 1, *size_in)
    l32 = torch.nn.functional.interpolate(eye, size=size_out, mode="bilinear").reshape(
        n_in, -1).T.double()
    l64 = torch.nn.functional.interpolate(eye.double(), size=size_out, mode="bilinear"
                                          ).reshape(n_in, -1).T
    gap = torch.where(l64.abs() < 1e-12, (l32 - l64).abs(), torch.zeros_like(l64))
    k, j = divmod(int(gap.argmax()), n_in)
    assert float(gap[k, j]) > 0  # the premise: float32 reads an input float64 does not
    x = torch.zeros(1, 1, *size_in)
    x.view(-1)[j] = 1.0
    fc = nn.Linear(n_out, 3)
    with torch.no_grad():
        fc.weight.zero_()
        fc.bias.zero_()
        fc.weight[1, k] = 1.0
        fc.bias[0] = 6 * float(gap[k, j])
        fc.bias[2] = -1.0
    m = nn.Sequential(nn.Upsample(size=size_out, mode="bilinear"), nn.Flatten(), fc).eval()
    g = l32[k] / l32[k].norm()  # the float32 model's own direction of out_k
    with torch.no_grad():
        y = int(m(x).argmax(1))

        def flips(s: float) -> bool:
            p = (x.double().flatten() + s * g).float().reshape(x.shape)
            inside = float((p.double() - x.double()).norm()) < s * (1 + 1e-6)
            return inside and int(m(p).argmax(1)) != y
        for method in ("crown", "sound"):
            r = float(bk.certify(m, x, method).radius[0])
            assert r > 0 or method == "sound"  # sound's coarser charge may take it all
            assert not any(flips(r * t) for t in torch.linspace(0.5, 0.999999, 200).tolist())
        r64 = float(bk.certify(copy.deepcopy(m).double(), x.double(), "crown").radius[0])
        assert any(flips(r64 * t) for t in torch.linspace(0.5, 0.999999, 200).tolist())
