"""Capture fidelity: the graph that is certified is the function the model computes.

Each kind of model that used to get a false certificate is either refused with an error that
names the problem, or certified soundly (no adversarial example inside the ball, graph equal
to the model on random inputs)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import boundkit as bk
from boundkit.bounds.certificate import SampleStatus
from boundkit.errors import FidelityError, ModelError, UnsupportedLayerError
from boundkit.testing import adversarial_search, composed_networks

torch.set_num_threads(1)


def _seeded(m: nn.Module, seed: int = 0) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(max(p[0].numel(), 1)))
    return m.eval()


def _x(shape: tuple[int, ...], n: int = 6, seed: int = 1) -> torch.Tensor:
    return torch.rand((n, *shape), generator=torch.Generator().manual_seed(seed))


def assert_graph_is_model_and_sound(model: nn.Module, x: torch.Tensor, method: str = "sound"):
    """The certificate holds against a strong float64 search, and the graph computes the
    model's function on random inputs."""
    cert = bk.certify(model, x, method)
    _, upper = adversarial_search(model, x, steps=150)
    assert (cert.radius <= upper).all(), (cert.radius, upper)
    graph = bk.capture(model, x)
    z = torch.randn(8, *x.shape[1:], dtype=torch.float64)
    with torch.no_grad():
        want = __import__("copy").deepcopy(model).double()(z)
    got = graph.activations(z)[graph.output]
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    return cert


class Fn(nn.Module):
    """A model whose forward is a function of a linear front and a linear head."""

    def __init__(self, body, d_in: int = 4, d_h: int = 4, d_out: int = 3, c: int = 1) -> None:
        super().__init__()
        self.a = nn.Linear(d_in, d_h)
        self.b = nn.Linear(d_h * c, d_out)
        self.body = body

    def forward(self, x):
        return self.b(self.body(self, self.a(x)))


# ---------------------------------------------------------------- operator semantics
def test_add_of_a_tensor_with_itself_is_twice_the_tensor():
    m = _seeded(Fn(lambda s, h: torch.relu(h + h)))
    assert_graph_is_model_and_sound(m, _x((4,)))
    doubled = _seeded(Fn(lambda s, h: torch.relu(h)))
    with torch.no_grad():
        doubled.a.weight.mul_(2)
        doubled.a.bias.mul_(2)
    # the same function: in float64 (where the model's own rounding, charged per node, is
    # negligible) the same radii
    cert = bk.certify(m.double(), _x((4,)).double())
    ref = bk.certify(doubled.double(), _x((4,)).double())
    torch.testing.assert_close(cert.radius, ref.radius, rtol=1e-6, atol=0)


@pytest.mark.parametrize("alpha", [3.0, -2.0, 0.5])
def test_add_and_sub_read_alpha(alpha):
    m = _seeded(Fn(lambda s, h: torch.add(h, torch.tanh(h), alpha=alpha)))
    assert_graph_is_model_and_sound(m, _x((4,)))
    m = _seeded(Fn(lambda s, h: h.sub(torch.tanh(h), alpha=alpha)))
    assert_graph_is_model_and_sound(m, _x((4,)))


def test_cat_of_a_tensor_with_itself_counts_it_twice():
    m = _seeded(Fn(lambda s, h: torch.cat([h, h], 1), c=2))
    assert_graph_is_model_and_sound(m, _x((4,)))
    m = _seeded(Fn(lambda s, h: torch.cat((torch.relu(h), h, h), dim=-1), c=3))
    assert_graph_is_model_and_sound(m, _x((4,)))


def test_cat_along_the_batch_dimension_is_refused():
    m = _seeded(Fn(lambda s, h: torch.cat([h, h])[: h.shape[0]]))
    with pytest.raises(UnsupportedLayerError, match="batch"):
        bk.certify(m, _x((4,)))


class BroadcastResidual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c = nn.Conv2d(1, 1, 3, padding=1)
        self.s = nn.Conv2d(1, 1, 8)  # -> [N, 1, 1, 1]
        self.head = nn.Linear(64, 3)

    def forward(self, x):
        return self.head((self.c(x) + self.s(x)).flatten(1))


def test_residual_add_that_broadcasts_counts_the_repetition():
    m = _seeded(BroadcastResidual())
    cert = assert_graph_is_model_and_sound(m, _x((1, 8, 8)))
    add = next(n for n in bk.capture(m, (1, 8, 8)) if n.op == "add")
    assert add.attrs["repeat"] == (1, 64)
    assert (cert.radius > 0).all()


@pytest.mark.parametrize("form", ["positional", "keyword", "module"])
def test_avg_pool_count_include_pad_false_is_read_in_every_form(form):
    call = {
        "positional": lambda h: F.avg_pool2d(h, 3, 2, 1, False, False),
        "keyword": lambda h: F.avg_pool2d(h, 3, stride=2, padding=1, count_include_pad=False),
        "module": nn.AvgPool2d(3, 2, 1, count_include_pad=False),
    }[form]

    class P(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 3)
            self.head = nn.Linear(2 * 3 * 3, 3)
            self.pool = call if isinstance(call, nn.Module) else None

        def forward(self, x):
            pool = self.pool if self.pool is not None else call
            return self.head(pool(self.conv(x)).flatten(1))

    m = _seeded(P())
    pool = next(n for n in bk.capture(m, (1, 7, 7)) if n.op == "avgpool2d")
    assert pool.attrs["count_include_pad"] is False
    assert_graph_is_model_and_sound(m, _x((1, 7, 7)))


@pytest.mark.parametrize("beta", [-1.0, 0.0])
def test_softplus_with_non_positive_beta_is_refused(beta):
    for m in (
        nn.Sequential(nn.Linear(4, 4), nn.Softplus(beta=beta), nn.Linear(4, 3)),
        Fn(lambda s, h: F.softplus(h, beta)),
    ):
        with pytest.raises(UnsupportedLayerError, match="beta"):
            bk.certify(_seeded(m), _x((4,)))


def test_softplus_beta_and_threshold_are_read_positionally():
    m = _seeded(Fn(lambda s, h: F.softplus(h, 3.0, 0.5)))
    node = next(n for n in bk.capture(m, (4,)) if n.op == "softplus")
    assert node.attrs == {"beta": 3.0, "threshold": 0.5}
    assert_graph_is_model_and_sound(m, _x((4,)))


def test_inplace_op_whose_input_is_read_later_is_refused():
    m = _seeded(Fn(lambda s, h: F.relu(h, inplace=True) + h))
    with pytest.raises(UnsupportedLayerError, match="in-place"):
        bk.certify(m, _x((4,)))


def test_inplace_relu_module_in_a_chain_is_fine():
    m = _seeded(nn.Sequential(nn.Linear(4, 5), nn.ReLU(inplace=True), nn.Linear(5, 3)))
    assert_graph_is_model_and_sound(m, _x((4,)))


# ---------------------------------------------------------------- code the graph never sees
class Times5(nn.Linear):
    def forward(self, x):
        return super().forward(x) * 5


def test_subclass_overriding_forward_is_not_certified_as_the_plain_layer():
    # traced through: its F.linear (a functional layer since issue 24's red team) and the
    # product by 5, never the plain nn.Linear
    m = _seeded(nn.Sequential(nn.Linear(4, 4), nn.ReLU(), Times5(4, 3)))
    g = bk.capture(m, (4,))
    assert [n.op for n in g][-2:] == ["linear", "scale"]
    x = _x((4,)).double()
    out = g.activations(x)[g.logits.name]
    torch.testing.assert_close(out, m.double()(x), rtol=0, atol=0)


class QuietLinear(nn.Linear):
    def extra_repr(self) -> str:
        return "quiet"


def test_subclass_that_only_changes_its_repr_is_the_layer():
    m = _seeded(nn.Sequential(QuietLinear(4, 4), nn.ReLU(), nn.Linear(4, 3)))
    assert [n.op for n in bk.capture(m, (4,))][1] == "linear"


def test_forward_hook_is_refused():
    m = _seeded(nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 3)))
    h = m[2].register_forward_hook(lambda mod, i, o: o * 5)
    with pytest.raises(UnsupportedLayerError, match="hook"):
        bk.certify(m, _x((4,)))
    h.remove()
    bk.certify(m, _x((4,)))
    h = m.register_forward_pre_hook(lambda mod, i: (i[0] * 2,))
    with pytest.raises(UnsupportedLayerError, match="hook"):
        bk.certify(m, _x((4,)))
    h.remove()


def test_global_forward_hook_is_refused():
    m = _seeded(nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 3)))
    h = nn.modules.module.register_module_forward_hook(lambda mod, i, o: o)
    try:
        with pytest.raises(UnsupportedLayerError, match="global"):
            bk.certify(m, _x((4,)))
    finally:
        h.remove()


def test_forward_assigned_to_an_instance_is_refused():
    m = _seeded(nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 3)))
    lin = m[2]
    lin.forward = lambda x: F.linear(x, lin.weight, lin.bias) * 5
    with pytest.raises(UnsupportedLayerError, match="instance"):
        bk.certify(m, _x((4,)))


def test_functional_dropout_with_its_default_training_flag_is_refused():
    m = _seeded(Fn(lambda s, h: F.dropout(h, 0.5)))
    with pytest.raises(UnsupportedLayerError, match="training"):
        bk.certify(m, _x((4,)))
    m = _seeded(Fn(lambda s, h: F.dropout(h, 0.5, s.training)))
    assert_graph_is_model_and_sound(m, _x((4,)))


# ---------------------------------------------------------------- stale state
def _net() -> nn.Module:
    return _seeded(nn.Sequential(
        nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.LocalResponseNorm(2),
        nn.Flatten(), nn.Linear(3 * 4 * 4, 3),
    ))


@pytest.mark.parametrize("edit", ["data_copy", "swap_activation", "lrn_k", "bn_eps", "hook"])
def test_second_certify_sees_every_edit_of_the_model(edit):
    m = _net()
    x = _x((1, 6, 6))
    g1 = bk.certify(m, x).radius
    with torch.no_grad():
        if edit == "data_copy":
            m[5].weight.data.copy_(m[5].weight.data * 3)
        elif edit == "swap_activation":
            m[2] = nn.Tanh().eval()
        elif edit == "lrn_k":
            m[3].k = 0.3
        elif edit == "bn_eps":
            m[1].eps = 2.0
    if edit == "hook":
        m[5].register_forward_hook(lambda mod, i, o: o * 3)
        with pytest.raises(UnsupportedLayerError):
            bk.certify(m, x)
        return
    g2 = assert_graph_is_model_and_sound(m, x).radius
    assert not torch.equal(g1, g2)


def test_a_graph_passed_in_is_checked_against_the_model():
    m = _net()
    x = _x((1, 6, 6))
    graph = bk.capture(m, x)
    bk.certify(m, x, graph=graph)
    with torch.no_grad():
        m[0].weight.data.mul_(2)
    with pytest.raises(ModelError, match="capture it again"):
        bk.certify(m, x, graph=graph)


# ---------------------------------------------------------------- numerics and dtypes
def test_subnormal_products_give_radius_zero_with_a_reason():
    m = nn.Sequential(nn.Linear(5, 6), nn.ReLU(), nn.Linear(6, 3)).eval().double()
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64) * 1e-160)
            if p.dim() == 1:
                p.zero_()
    x = _x((5,)).double() * 1e-160
    cert = bk.certify(m, x)
    assert (cert.radius == 0).all()
    assert (cert.status == SampleStatus.UNSAFE_NUMERICS).all()


def test_tiny_weights_with_normal_biases_stay_sound():
    m = nn.Sequential(nn.Linear(5, 6), nn.ReLU(), nn.Linear(6, 3)).eval().double()
    gen = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64) * 1e-160)
    x = _x((5,)).double() * 1e-160
    cert = bk.certify(m, x)
    _, upper = adversarial_search(m, x, steps=50)
    assert (cert.radius <= upper).all()


def test_float32_model_near_a_tie_gets_radius_zero_per_sample():
    m = nn.Sequential(nn.Linear(3, 2)).eval()
    with torch.no_grad():
        m[0].weight.copy_(torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 1.5]]))
        m[0].bias.zero_()
    x = torch.tensor([[0.3, 0.3, 1e-7], [0.1, 0.2, 0.9]])
    cert = bk.certify(m, x)
    assert cert.status[0] != SampleStatus.OK and cert.radius[0] == 0
    assert cert.status[1] == SampleStatus.OK and cert.radius[1] > 0
    assert "0" in cert.reasons()[0]


def test_bfloat16_model_certifies_only_what_it_predicts():
    m = _seeded(nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 4))).to(torch.bfloat16)
    x = _x((6,), n=64)
    cert = bk.certify(m, x)
    with torch.no_grad():
        own = m(x.to(torch.bfloat16)).float().argmax(1)
    ok = cert.status == SampleStatus.OK
    assert torch.equal(cert.label[ok], own[ok])
    assert (cert.radius[~ok] == 0).all()


# ---------------------------------------------------------------- shapes and extensions
def test_linear_on_inputs_of_rank_above_four_is_refused_by_name():
    # Linear on tokens [T, D], up to rank 4, is supported (tests/bounds/test_products.py)
    m = _seeded(nn.Sequential(nn.Linear(4, 4), nn.Flatten(), nn.Linear(96, 3)))
    with pytest.raises(UnsupportedLayerError, match="rank 1 or 2 or 3 or 4"):
        bk.certify(m, _x((2, 2, 2, 3, 4)))


def test_view_folding_the_batch_is_refused():
    m = _seeded(Fn(lambda s, h: h.view(-1, 2).tanh().view(h.shape[0], 4)))
    with pytest.raises(UnsupportedLayerError, match="batch"):
        bk.certify(m, _x((4,)))


class Scale2(nn.Module):
    def forward(self, x):
        return 2 * x


def test_a_rule_registered_for_a_users_class_is_used():
    from boundkit.bounds.registry import LipschitzRule, register_rule, unregister_rule

    class TwoLip(LipschitzRule):
        def compute_lipschitz(self, node, graph):
            return 2.0

    register_rule(Scale2, "sound", TwoLip())
    try:
        m = _seeded(nn.Sequential(nn.Linear(4, 4), Scale2(), nn.Linear(4, 3)))
        ops = [n.op for n in bk.capture(m, (4,))]
        assert ops == ["input", "linear", "scale2", "linear"]
        assert_graph_is_model_and_sound(m, _x((4,)))
    finally:
        unregister_rule(Scale2, "sound")


def test_peck2017_certificate_says_it_is_not_a_guarantee():
    m = _seeded(nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 3)))
    cert = bk.certify(m, _x((4,)), "peck2017")
    assert "NOT a guarantee" in repr(cert) and cert.summary()["guarantee"] == 0.0
    assert "NOT a guarantee" not in repr(bk.certify(m, _x((4,))))


def test_fidelity_error_names_the_node_where_graph_and_model_part():
    from boundkit.graph.fidelity import check_fidelity

    m = _net()
    x = _x((1, 6, 6))
    graph = bk.capture(m, x)
    graph["_5"].params["weight"] = graph["_5"].params["weight"] * 2  # a corrupted graph
    out = graph.activations(x)[graph.output]
    with pytest.raises(FidelityError, match="'_5'"):
        check_fidelity(m, graph, x, out)


# ---------------------------------------------------------------- random compositions
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck),
          derandomize=True)
@given(composed_networks(), st.integers(0, 2**20))
def test_random_compositions_are_refused_or_certified_soundly(model, seed):
    x = torch.rand((3, 2, 6, 6), generator=torch.Generator().manual_seed(seed))
    try:
        cert = bk.certify(model, x)
    except UnsupportedLayerError:
        return
    _, upper = adversarial_search(model, x, steps=60)
    assert (cert.radius <= upper).all(), (model.steps, cert.radius, upper)
    graph = bk.capture(model, x)
    with torch.no_grad():
        want = __import__("copy").deepcopy(model).double()(x.double())
    torch.testing.assert_close(graph.activations(x)[graph.output], want, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("slope", [0.01, -0.5, 1.5])
def test_leaky_relu_in_every_form_is_certified_soundly(slope):
    for act in (nn.LeakyReLU(slope), lambda h: F.leaky_relu(h, slope),
                lambda h: F.leaky_relu(h, negative_slope=slope)):
        m = Fn(lambda s, h, act=act: act(h))
        if isinstance(act, nn.Module):
            m.act = act
            m.body = lambda s, h: s.act(h)
        m = _seeded(m)
        node = next(n for n in bk.capture(m, (4,)) if n.op == "leaky_relu")
        assert node.attrs["negative_slope"] == slope
        assert_graph_is_model_and_sound(m, _x((4,)))


@pytest.mark.parametrize("method", ["sound", "crown"])
def test_a_float32_model_that_overflows_on_one_sample_gets_radius_0_there_only(method):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)).eval()
    with torch.no_grad():  # float32 logits of about 1e38: scaled inputs overflow to inf
        model[0].weight.mul_(1e19)
        model[2].weight.mul_(1e19)
    x = torch.rand(5, 4)
    x[1] *= 1000
    assert not torch.isfinite(model(x)[1]).all() and torch.isfinite(model(x)[[0, 2, 3, 4]]).all()
    cert = bk.certify(model, x, method)
    assert int(cert.status[1]) == SampleStatus.MODEL_OVERFLOWS
    assert float(cert.radius[1]) == 0.0 and "overflows" in cert.reasons()[1]
    others = [0, 2, 3, 4]
    assert bool((cert.status[others] != SampleStatus.MODEL_OVERFLOWS).all())
