"""GELU (both modes), SiLU, ELU (SELU, CELU), Hardtanh / ReLU6, PReLU, Hardswish, abs,
Softsign, LogSigmoid (issue 24, step 2; SELU, CELU, one-slope PReLU and Hardswish were refused
before stop 32, abs, Softsign and LogSigmoid before stop 33): every stated
relaxation contains its function on dense samples of the interval and at its ends, the
certified constants bound the sampled derivatives, capture reads every form, and no
certificate exceeds an adversarial example's distance on random small nets."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn
from two_activation_nets import check_two_activation_net

from boundkit.bounds.modern_activations import certified_sup, lipschitz_constant
from boundkit.bounds.registry import get_rule
from boundkit.bounds.relaxation import Interval
from boundkit.errors import UnsupportedLayerError
from boundkit.graph import capture
from boundkit.graph.graph import Node
from boundkit.graph.optable import SELU_ALPHA, SELU_SCALE

_NODES = {
    "gelu": Node("g", "gelu", ["x"], "gelu", attrs={"approximate": "none"}),
    "gelu_tanh": Node("g", "gelu", ["x"], "gelu", attrs={"approximate": "tanh"}),
    "silu": Node("g", "silu", ["x"], "silu"),
    "elu": Node("g", "elu", ["x"], "elu", attrs={"alpha": 1.0}),
    "elu_small": Node("g", "elu", ["x"], "elu", attrs={"alpha": 0.3}),
    "elu_big": Node("g", "elu", ["x"], "elu", attrs={"alpha": 2.5}),
    "elu_negative": Node("g", "elu", ["x"], "elu", attrs={"alpha": -0.7}),
    "selu": Node("g", "elu", ["x"], "elu", attrs={"alpha": SELU_ALPHA, "scale": SELU_SCALE,
                                                 "input_scale": 1.0}),
    "celu_small": Node("g", "elu", ["x"], "elu", attrs={"alpha": 0.2, "scale": 1.0,
                                                       "input_scale": 0.2}),
    "celu_big": Node("g", "elu", ["x"], "elu", attrs={"alpha": 3.0, "scale": 1.0,
                                                     "input_scale": 3.0}),
    "hardtanh": Node("g", "hardtanh", ["x"], "hardtanh", attrs={"min_val": -1.0, "max_val": 1.0}),
    "hardswish": Node("g", "hardswish", ["x"], "hardswish"),
    "relu6": Node("g", "hardtanh", ["x"], "hardtanh", attrs={"min_val": 0.0, "max_val": 6.0}),
    "abs": Node("g", "abs", ["x"], "abs"),
    "softsign": Node("g", "softsign", ["x"], "softsign"),
    "logsigmoid": Node("g", "logsigmoid", ["x"], "logsigmoid"),
}


def _f(node: Node, z: torch.Tensor) -> torch.Tensor:
    from boundkit.graph.ops import evaluate

    return evaluate(node, [z])


_ENDS = st.floats(-30, 30, allow_nan=False)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kind=st.sampled_from(sorted(_NODES)), a=_ENDS, b=_ENDS,
       w=st.sampled_from([0.0, 1e-9, 1e-3, 0.3, 2.0, None]))
def test_stated_lines_and_interval_contain_the_function_on_dense_samples_and_at_the_ends(
        kind: str, a: float, b: float, w: float | None) -> None:
    node = _NODES[kind]
    lo = min(a, b) if w is None else a
    hi = max(a, b) if w is None else a + w
    lo_t = torch.tensor([[lo, lo - 1.0, -abs(lo)]], dtype=torch.float64)
    hi_t = torch.tensor([[hi, hi, abs(hi) + 0.5]], dtype=torch.float64)
    rule = get_rule(node.op, "crown")
    ln = rule.lines(node, Interval(lo_t, hi_t))
    iv = rule.interval(node, None, [Interval(lo_t, hi_t)])
    t = torch.linspace(0, 1, 20001, dtype=torch.float64).unsqueeze(1).unsqueeze(1)
    z = torch.cat([lo_t.unsqueeze(0), lo_t + (hi_t - lo_t) * t, hi_t.unsqueeze(0)]).clamp(
        lo_t, hi_t)
    g = _f(node, z)
    assert bool((ln.k_lo * z + ln.b_lo <= g).all()), kind
    assert bool((g <= ln.k_hi * z + ln.b_hi).all()), kind
    assert bool((iv.lo <= g).all() and (g <= iv.hi).all()), kind
    # and not trivially loose: on narrow intervals the lines hug the function
    if w is not None and w <= 1e-3:
        gap = (ln.k_hi * z + ln.b_hi - (ln.k_lo * z + ln.b_lo))[:, 0, 0].max()
        assert float(gap) <= 1e-5 * (1 + abs(lo)), (kind, float(gap))


@pytest.mark.parametrize("op,approximate", [("gelu", "none"), ("gelu", "tanh"), ("silu", "none")])
def test_certified_derivative_bounds_dominate_dense_samples_and_are_tight(op, approximate):
    z = torch.linspace(-12, 12, 200001, dtype=torch.float64, requires_grad=True)
    f = F.gelu(z, approximate=approximate) if op == "gelu" else F.silu(z)
    (d1,) = torch.autograd.grad(f.sum(), z, create_graph=True)
    (d2,) = torch.autograd.grad(d1.sum(), z)
    a, b = certified_sup(op, approximate, 1), certified_sup(op, approximate, 2)
    assert float(d1.abs().max()) <= a <= float(d1.abs().max()) + 1e-4
    assert float(d2.abs().max()) <= b <= 2 * float(d2.abs().max())


def test_gelu_constants_in_closed_form() -> None:
    import math

    phi = math.exp(-1.0) / math.sqrt(2 * math.pi)
    assert certified_sup("gelu", "none", 1) == pytest.approx(
        0.5 * (1 + math.erf(1.0)) + math.sqrt(2) * phi, rel=1e-8)
    assert certified_sup("gelu", "none", 2) == pytest.approx(math.sqrt(2 / math.pi), rel=1e-8)
    assert lipschitz_constant(_NODES["elu_big"]) == 2.5
    assert lipschitz_constant(_NODES["relu6"]) == 1.0
    # SELU: lambda * alpha (its steepest slope, at 0-); CELU: 1 for any alpha
    assert SELU_SCALE * SELU_ALPHA <= lipschitz_constant(_NODES["selu"]) <= (
        SELU_SCALE * SELU_ALPHA * (1 + 1e-15))
    assert 1.0 <= lipschitz_constant(_NODES["celu_big"]) <= 1.0 + 1e-15
    z = torch.linspace(-6, 6, 120001, dtype=torch.float64, requires_grad=True)
    (d,) = torch.autograd.grad(F.hardswish(z).sum(), z)
    assert float(d.abs().max()) <= lipschitz_constant(_NODES["hardswish"]) == 1.5


@pytest.mark.parametrize("kind,torch_fn", [
    ("selu", F.selu), ("celu_small", lambda z: F.celu(z, 0.2)),
    ("celu_big", lambda z: F.celu(z, 3.0))])
def test_scaled_elus_are_torchs_functions(kind, torch_fn) -> None:
    z = torch.linspace(-40, 40, 100001, dtype=torch.float64)
    got, want = _f(_NODES[kind], z), torch_fn(z)
    assert torch.allclose(got, want, rtol=4e-16, atol=1e-300)


class _Forms(nn.Module):
    """Every capture form of the new activations, keyword arguments included."""

    def __init__(self) -> None:
        super().__init__()
        self.l1, self.l2, self.l3 = nn.Linear(4, 8), nn.Linear(8, 8), nn.Linear(8, 3)
        self.acts = nn.ModuleList([nn.GELU(approximate="tanh"), nn.SiLU(), nn.ELU(alpha=0.7),
                                   nn.Hardtanh(-2.0, max_val=3.0), nn.ReLU6(), nn.SELU(),
                                   nn.CELU(alpha=0.5), nn.PReLU(init=0.2), nn.Hardswish()])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.l1(x)
        for a in self.acts:
            h = a(h)
        h = F.gelu(h, approximate="none")
        h = F.silu(h)
        h = F.elu(h, alpha=1.5)
        h = F.hardtanh(h, min_val=-0.5, max_val=2.0)
        h = F.relu6(self.l2(h))
        h = torch.clamp(h, -1.0, max=4.0)
        h = h.clamp(min=-3.0, max=3.0)
        h = torch.celu(F.celu(torch.selu(F.selu(h)), alpha=2.0), 0.3)
        h = F.hardswish(h)
        return self.l3(h)


def test_every_module_functional_and_keyword_form_is_captured_with_its_arguments() -> None:
    torch.manual_seed(0)
    model = _Forms().eval()
    g = capture(model, (4,))
    got = [(n.op, n.attrs) for n in g.nodes
           if n.op in ("gelu", "silu", "elu", "hardtanh", "leaky_relu", "hardswish")]
    selu = {"alpha": SELU_ALPHA, "scale": SELU_SCALE, "input_scale": 1.0}
    slope = float(torch.tensor(0.2, dtype=torch.float32))  # PReLU's weight is float32
    assert got == [
        ("gelu", {"approximate": "tanh"}), ("silu", {}), ("elu", {"alpha": 0.7}),
        ("hardtanh", {"min_val": -2.0, "max_val": 3.0}),
        ("hardtanh", {"min_val": 0.0, "max_val": 6.0}),
        ("elu", selu), ("elu", {"alpha": 0.5, "scale": 1.0, "input_scale": 0.5}),
        ("leaky_relu", {"negative_slope": slope}), ("hardswish", {}),
        ("gelu", {"approximate": "none"}), ("silu", {}), ("elu", {"alpha": 1.5}),
        ("hardtanh", {"min_val": -0.5, "max_val": 2.0}),
        ("hardtanh", {"min_val": 0.0, "max_val": 6.0}),
        ("hardtanh", {"min_val": -1.0, "max_val": 4.0}),
        ("hardtanh", {"min_val": -3.0, "max_val": 3.0}),
        ("elu", selu), ("elu", selu),
        ("elu", {"alpha": 2.0, "scale": 1.0, "input_scale": 2.0}),
        ("elu", {"alpha": 0.3, "scale": 1.0, "input_scale": 0.3}), ("hardswish", {}),
    ]
    x = torch.rand(5, 4, dtype=torch.float64)
    with torch.no_grad():
        out, _ = g.evaluate({g.input.name: x}, [g.logits.name])
        want = model.double()(x)
    assert torch.allclose(out[g.logits.name], want, rtol=1e-12, atol=1e-12)


def test_odd_forms_are_refused_naming_the_node() -> None:
    class InPlace(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(3, 2)

        def forward(self, x):
            h = self.fc(x)
            F.elu(h, inplace=True)
            return h + F.silu(h)

    with pytest.raises(UnsupportedLayerError, match="in-place"):
        capture(InPlace().eval(), (3,))


def _act(kind: int, p: float) -> nn.Module:
    return [nn.GELU(), nn.GELU(approximate="tanh"), nn.SiLU(), nn.ELU(alpha=p),
            nn.Hardtanh(-p, 2 * p), nn.ReLU6(), nn.SELU(), nn.CELU(alpha=p),
            nn.PReLU(init=(p - 1.6) / 2), nn.Hardswish()][kind]


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kinds=st.lists(st.integers(0, 9), min_size=1, max_size=2), p=st.floats(0.2, 3.0),
       scale=st.sampled_from([1.0, 3.0]), seed=st.integers(0, 2**16))
def test_no_certificate_exceeds_an_attack_on_random_nets_with_the_new_activations(
        kinds, p, scale, seed) -> None:
    torch.manual_seed(seed)
    check_two_activation_net(_act(kinds[0], p), _act(kinds[-1], p), scale)
