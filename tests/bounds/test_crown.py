"""``crown``: sound (exact oracle, adversarial searches in float64), never below ``sound``,
batch-independent, and accepting every model ``sound`` accepts."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import boundkit as bk
from boundkit.testing import (
    adversarial_search,
    assert_crown_intervals_contain_samples,
    inputs_for,
    property_examples,
    random_inputs,
    random_network,
    small_relu_mlps,
)

FAST = settings(max_examples=property_examples(12), deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

_x = random_inputs


@FAST
@given(model=small_relu_mlps(max_hidden=8), data=st.data())
def test_crown_never_exceeds_the_exact_radius_on_small_relu_mlps(model, data) -> None:
    x = data.draw(inputs_for(model, n=(1, 3)))
    for box in (None, (0.0, 1.0)):
        cert = bk.certify(model, x, "crown", box=box)
        exact = bk.exact_radius(model, x, box=box)
        assert bool((cert.radius <= exact * (1 + 1e-9)).all()), (box, cert.radius, exact)


_KINDS = [("conv2d", "relu", "maxpool2d"), ("conv2d", "tanh", "avgpool2d"),
          ("conv2d", "batchnorm", "sigmoid"), ("conv2d", "lrn", "relu"),
          ("linear", "softplus"), ("linear", "tanh"), ("linear", "sigmoid")]


@pytest.mark.parametrize("kinds", _KINDS, ids=["-".join(k) for k in _KINDS])
@pytest.mark.parametrize("seed", range(3))
def test_no_adversarial_example_inside_the_crown_ball(kinds, seed) -> None:
    model = random_network(seed, layer_kinds=kinds, depth=2, width=8, scales=[1.5])
    x = _x(model, 4, seed)
    cert = bk.certify(model, x, "crown")
    sound = bk.certify(model, x, "sound").radius
    assert bool((cert.radius >= sound).all())
    _, norm = adversarial_search(model, x, steps=60, box=(0.0, 1.0), seed=seed)
    assert bool((cert.radius <= norm * (1 + 1e-9)).all()), (cert.radius, norm)


class _Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 3, padding=2, dilation=2, groups=2)
        self.bn = nn.BatchNorm2d(2)
        self.fc = nn.Linear(2 * 6 * 6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x + torch.relu(self.bn(self.conv(x)))
        return self.fc(torch.flatten(h, 1))


class _Cat(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(5, 4)
        self.b = nn.Linear(5, 3)
        self.out = nn.Linear(7, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(torch.cat([self.a(x), torch.relu(self.b(x))], dim=1)))


@pytest.mark.parametrize("cls,shape", [(_Residual, (2, 6, 6)), (_Cat, (5,))])
@pytest.mark.parametrize("seed", range(3))
def test_no_adversarial_example_inside_the_crown_ball_on_residual_and_cat_graphs(
        cls, shape, seed) -> None:
    torch.manual_seed(seed)
    model = cls().eval()
    if isinstance(model, _Residual):
        with torch.no_grad():
            model.bn.running_mean.uniform_(-0.3, 0.3)
            model.bn.running_var.uniform_(0.5, 2.0)
    x = torch.rand((4, *shape), generator=torch.Generator().manual_seed(seed))
    cert = bk.certify(model, x, "crown")
    assert bool((cert.radius >= bk.certify(model, x, "sound").radius).all())
    _, norm = adversarial_search(model, x, steps=60, box=(0.0, 1.0), seed=seed)
    assert bool((cert.radius <= norm * (1 + 1e-9)).all()), (cert.radius, norm)


def test_intermediate_bounds_contain_sampled_activations_for_strided_dilated_grouped_conv():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 4, 3, stride=2, padding=2, dilation=2, groups=2),
                          nn.ReLU(), nn.MaxPool2d(3, stride=2, padding=1), nn.Conv2d(4, 4, 2),
                          nn.Tanh(), nn.Flatten(), nn.Linear(16, 3)).eval()
    x = torch.rand(2, 2, 9, 9, generator=torch.Generator().manual_seed(1)).double()
    assert_crown_intervals_contain_samples(model, x, torch.tensor([0.3, 0.5]))


def test_radius_of_a_sample_alone_equals_its_radius_inside_a_batch() -> None:
    model = random_network(4, layer_kinds=("conv2d", "relu", "maxpool2d"), depth=2, scales=[2])
    x = _x(model, 6, 0)
    batch = bk.certify(model, x, "crown").radius
    for i in (0, 3, 5):
        alone = bk.certify(model, x[i : i + 1], "crown").radius
        torch.testing.assert_close(alone, batch[i : i + 1], rtol=1e-9, atol=0.0)
    split = bk.certify(model, x, "crown", batch_size=4).radius
    torch.testing.assert_close(split, batch, rtol=1e-9, atol=0.0)


def test_crown_is_at_least_sound_and_says_where_sound_won() -> None:
    model = random_network(1, layer_kinds=("linear", "relu"), depth=2, width=10)
    x = _x(model, 8, 1)
    cert = bk.certify(model, x, "crown")
    sound = bk.certify(model, x, "sound").radius
    assert bool((cert.radius >= sound).all())
    assert cert.info["from_sound"].dtype == torch.bool
    assert bool((cert.radius[cert.info["from_sound"]] == sound[cert.info["from_sound"]]).all())


def test_the_box_only_tightens() -> None:
    model = random_network(2, layer_kinds=("linear", "relu"), depth=2, width=10)
    x = _x(model, 6, 2)
    x[:, :2] = 0.0
    boxed = bk.certify(model, x, "crown").radius
    free = bk.certify(model, x, "crown", box=None).radius
    assert bool((boxed >= free * (1 - 1e-3)).all())


def test_bad_options_are_one_line_errors() -> None:
    model = random_network(0, layer_kinds=("linear", "relu"))
    x = _x(model, 2, 0)
    with pytest.raises(ValueError, match="box"):
        bk.certify(model, x, "crown", box=(1.0, 0.0))
    with pytest.raises(ValueError, match="box"):
        bk.certify(model, x, "crown", box="unit")
    with pytest.raises(TypeError, match="no option"):
        bk.certify(model, x, "sound", box=None)
    with pytest.raises(ValueError, match="unknown method"):
        bk.certify(model, x, "crown2")


def test_a_user_registered_method_works_end_to_end() -> None:
    from boundkit.bounds.method import BatchResult, Method, register_method, unregister_method

    class Zero(Method):
        name = "zero-test"
        description = "radius 0 (a trivially true certificate)"

        def run(self, graph, x, plan, *, trace, **options):
            logits = graph.activations(x)[graph.logits.name]
            label = logits.argmax(1)
            z = torch.zeros(x.shape[0], dtype=torch.float64)
            return BatchResult(z, label, label, z)

    register_method(Zero())
    try:
        model = random_network(0, layer_kinds=("linear", "relu"))
        cert = bk.certify(model, _x(model, 3, 0), "zero-test")
        assert cert.method == "zero-test" and bool((cert.radius == 0).all())
        assert "zero-test" in bk.available_methods()
        from boundkit.bounds.method import is_guarantee

        assert is_guarantee("zero-test") and not is_guarantee("peck2017")
    finally:
        unregister_method("zero-test")


def test_misclassified_or_tied_samples_get_radius_zero_not_nan() -> None:
    model = nn.Sequential(nn.Linear(3, 2)).eval()
    with torch.no_grad():
        model[0].weight.zero_()
        model[0].bias.zero_()
    cert = bk.certify(model, torch.rand(2, 3), "crown")
    assert bool((cert.radius == 0).all()) and not any(math.isnan(v) for v in cert.radius.tolist())


def _run_after_a_failed_step(model: nn.Module, x: torch.Tensor, big: float):
    """A crown run of ``model`` at ``x`` that evaluated radius ``big`` (failing) and kept
    its refined bounds, with the graph."""
    from boundkit.bounds.crown import CrownRun, plan_crown
    from boundkit.bounds.engine import graph_for
    from boundkit.bounds.output import margins

    x = x.double()
    g = graph_for(model, x, None)
    run = CrownRun(g, plan_crown(g), x, (0.0, 1.0))
    label, _ = margins(run.sound.acts[g.logits.name])
    step = run.evaluate(torch.full((x.shape[0],), big, dtype=torch.float64), label)
    run.remember(step.certified < step.eps)
    return run, g, step


def test_bounds_kept_from_a_failed_step_serve_only_smaller_radii() -> None:
    model = random_network(5, layer_kinds=("linear", "relu"), depth=3, width=12)
    x = _x(model, 4, 5)
    run, _, step = _run_after_a_failed_step(model, x, 2.0)
    assert bool((step.certified < step.eps).all()), "the step at radius 2 should fail"
    assert run.samples.kept, "a failed step keeps the refined bounds"
    for kept in run.samples.kept.values():
        shape = (x.shape[0], kept.lo.c.shape[1])
        above = kept.recall(torch.full((x.shape[0],), 2.5, dtype=torch.float64), shape)
        assert bool(torch.isinf(above.lo).all() and torch.isinf(above.hi).all())
        below = kept.recall(torch.full((x.shape[0],), 1.0, dtype=torch.float64), shape)
        assert bool(torch.isfinite(below.lo).all() and (below.lo <= below.hi).all())


def _neuron_extremes(g, name: str, x: torch.Tensor, eps: float, steps: int = 40
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """The least and largest value of every neuron of node ``name`` found by projected
    gradient steps (one copy of ``x`` per neuron and side) on the ball of radius ``eps``
    intersected with [0, 1]."""
    m = math.prod(g[name].out_shape)
    out = []
    for sign in (1.0, -1.0):
        z = x.expand(m, *x.shape[1:]).clone()
        rows = torch.arange(m)
        for _ in range(steps):
            z.requires_grad_(True)
            v = g.activations(z)[name].flatten(1)[rows, rows]
            (grad,) = torch.autograd.grad((sign * v).sum(), z)
            with torch.no_grad():
                gn = grad.flatten(1).norm(dim=1).clamp_min(1e-30).view(-1, *([1] * (z.dim() - 1)))
                z = z - 0.25 * eps * grad / gn
                d = z - x
                dn = d.flatten(1).norm(dim=1).clamp_min(1e-30).view(-1, *([1] * (z.dim() - 1)))
                z = (x + d * torch.clamp(eps / dn, max=1.0)).clamp(0, 1)
        with torch.no_grad():
            out.append(g.activations(z)[name].flatten(1)[rows, rows])
    return out[0], out[1]


@pytest.mark.parametrize("kinds", [("linear", "relu"), ("conv2d", "relu", "maxpool2d")])
def test_kept_bounds_read_at_a_smaller_radius_contain_the_neurons_extremes(kinds) -> None:
    from boundkit.bounds.crown import CrownRun, plan_crown
    from boundkit.bounds.engine import graph_for
    from boundkit.bounds.output import margins

    model = random_network(6, layer_kinds=kinds, depth=2, width=16, scales=[2])
    x = _x(model, 3, 6).double()
    r = bk.certify(model, x, "crown").radius
    g = graph_for(model, x, None)
    run = CrownRun(g, plan_crown(g), x, (0.0, 1.0))
    label, _ = margins(run.sound.acts[g.logits.name])
    run.evaluate(r * 1.3, label)  # fails: above the radius
    run.remember(torch.ones(3, dtype=torch.bool))
    eps = r * 1.15
    assert run.samples.kept
    walked = 0
    for name, kept in run.samples.kept.items():
        iv = kept.recall(eps, (3, kept.lo.c.shape[1]))
        walked += int((kept.lo.nu > 0).sum())
        for i in range(3):
            least, most = _neuron_extremes(g, name, x[i : i + 1], float(eps[i]))
            assert bool((least >= iv.lo[i]).all() and (most <= iv.hi[i]).all()), name
    assert walked > 0, "no kept bound depends on the radius: the test would test nothing"


@pytest.mark.parametrize("kinds", [("linear", "relu"), ("conv2d", "relu", "maxpool2d")])
def test_keeping_bounds_of_failed_steps_does_not_loosen_the_radius(kinds, monkeypatch) -> None:
    from boundkit.bounds.crown import CrownRun

    model = random_network(8, layer_kinds=kinds, depth=3, width=16, scales=[2])
    x = _x(model, 6, 8)
    kept = bk.certify(model, x, "crown").radius
    monkeypatch.setattr(CrownRun, "remember", lambda self, keep: None)
    fresh = bk.certify(model, x, "crown").radius
    assert bool((fresh > 0).any())
    # both searches stop within 1e-3 of the root of their own margin bound
    assert bool((kept >= fresh * (1 - 2.5e-3)).all()), (kept / fresh).min()


@pytest.mark.parametrize("method", ["crown", "alpha"])
def test_a_batch_split_into_sample_groups_gives_the_same_certificate(method, monkeypatch) -> None:
    from boundkit.bounds.crown import plan as planning

    model = random_network(9, layer_kinds=("conv2d", "relu", "maxpool2d"), depth=2, width=6)
    x = _x(model, 5, 9)
    opts = {"iterations": 3} if method == "alpha" else {}
    whole = bk.certify(model, x, method, **opts)
    widest = max(math.prod(n.out_shape) for n in bk.capture(model, x[:1]).nodes)
    monkeypatch.setattr(planning, "CHUNK_ELEMENTS", 2 * 2 * widest)  # groups of 2 samples
    split = bk.certify(model, x, method, **opts)
    # alpha: groups of other sizes reassociate the batched sums of its optimised walks at the
    # last bit (the model-rounding charges are such sums too), and the radii tried are
    # estimated from those bounds (secant quotients, slopes by gradient steps): 1e-8
    torch.testing.assert_close(split.radius, whole.radius,
                               rtol=1e-12 if method == "crown" else 1e-8, atol=0.0)
    assert torch.equal(split.label, whole.label)
    assert torch.equal(split.info["from_sound"], whole.info["from_sound"])
    assert split.trace.keys() == whole.trace.keys()


def _padded_conv_net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(),
                      nn.Conv2d(4, 4, 3, stride=2, padding=2, dilation=2), nn.BatchNorm2d(4),
                      nn.LeakyReLU(0.1), nn.MaxPool2d(2, stride=1),
                      nn.Conv2d(4, 4, 3, groups=2, padding=1), nn.ReLU(), nn.Flatten(),
                      nn.Linear(4 * 4 * 4, 3))
    bn = m[3]
    bn.running_mean.uniform_(-0.2, 0.2)
    bn.running_var.uniform_(0.5, 2.0)
    bn.weight.data.uniform_(0.5, 1.5)
    m.boundkit_input_shape = (2, 10, 10)
    return m.eval()


class _ResNet(nn.Module):
    """Stem conv, a BasicBlock with an identity shortcut, one with a strided 1x1 shortcut,
    a padded conv branch added to a ReLU (``h + conv(h)``), then a linear head: the walks
    on windows follow the cone of a neuron through both branches of every ``add``."""

    def __init__(self, seed: int) -> None:
        from boundkit.models.zoo import BasicBlock

        super().__init__()
        torch.manual_seed(seed)
        self.stem = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU())
        self.b1, self.b2 = BasicBlock(3, 3, 1), BasicBlock(3, 4, 2)
        self.side = nn.Conv2d(4, 4, 3, padding=2, dilation=2)
        self.head = nn.Linear(4 * 3 * 3, 3)
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.data.uniform_(0.5, 1.5)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.b2(self.b1(self.stem(x)))
        return self.head(torch.relu(h + self.side(h)).flatten(1))


def _window_net(kind: str, seed: int, n: int) -> tuple[nn.Module, torch.Tensor]:
    """The nets the window walks are checked on, with ``n`` inputs: ``"padded"``, padded,
    strided, dilated and grouped convolutions with batch norm and max pooling; ``"resnet"``,
    residual additions (:class:`_ResNet`)."""
    if kind == "padded":
        model = _padded_conv_net(seed)
        return model, _x(model, n, seed)
    return _ResNet(seed), torch.rand(n, 2, 6, 6, generator=torch.Generator().manual_seed(seed))


#: (net, method, tile, alpha iterations, seed, samples) of the radii comparison
_WINDOW_RADII = [
    *[("padded", m, t, 2, 11, 3) for m in ("crown", "alpha") for t in (1, 2, 3)],
    ("resnet", "crown", 1, 1, 21, 2), ("resnet", "crown", 2, 1, 21, 2),
    pytest.param("resnet", "alpha", 2, 1, 21, 2, marks=pytest.mark.slow),  # ~20 CPU s
]


@pytest.mark.parametrize(("net", "method", "tile", "iterations", "seed", "n"), _WINDOW_RADII)
def test_walks_on_windows_give_the_radii_of_whole_walks(net, method, tile, iterations, seed,
                                                        n, monkeypatch) -> None:
    from boundkit.bounds.crown import windows

    model, x = _window_net(net, seed, n)
    opts = {"iterations": iterations} if method == "alpha" else {}
    monkeypatch.setattr(windows.Windows, "chain", lambda self, run, node: None)
    whole = bk.certify(model, x, method, **opts).radius
    monkeypatch.undo()
    monkeypatch.setattr(windows, "WINDOW_GAIN", math.inf)  # windows wherever possible
    monkeypatch.setattr(windows, "TILE", tile)
    windowed = bk.certify(model, x, method, **opts).radius
    assert bool((whole > 0).all())
    # the same bounds up to the order of the sums; the searches may then part by ulps at a
    # pass/fail decision, and each stops within its tolerance of its own root
    torch.testing.assert_close(windowed, whole, rtol=2e-3, atol=0.0)


@pytest.mark.parametrize(("net", "tile", "seed"), [
    ("padded", 1, 12), ("padded", 2, 12), ("padded", 3, 12), ("resnet", 1, 22),
    ("resnet", 2, 22)])
def test_walks_on_windows_give_the_intervals_of_whole_walks(net, tile, seed,
                                                            monkeypatch) -> None:
    from boundkit.bounds.crown import CrownRun, plan_crown, windows
    from boundkit.bounds.engine import graph_for

    model, x = _window_net(net, seed, 3)
    x = x.double()
    g = graph_for(model, x, None)
    eps = torch.tensor([0.05, 0.2, 0.5], dtype=torch.float64)
    monkeypatch.setattr(windows.Windows, "chain", lambda self, run, node: None)
    whole = CrownRun(g, plan_crown(g), x, (0.0, 1.0)).intervals(eps).intervals
    monkeypatch.undo()
    monkeypatch.setattr(windows, "WINDOW_GAIN", math.inf)
    monkeypatch.setattr(windows, "TILE", tile)
    run = CrownRun(g, plan_crown(g), x, (0.0, 1.0))
    windowed = run.intervals(eps).intervals
    walked = [n for n in g.upstream() if n.name in run.plan.refine
              and windows.WINDOWS.chain(run, n)]
    assert walked
    adds = [n for n in g if n.op == "add"]
    # the windows pass residual additions: some refined node's cone holds one
    assert not adds or any(any(a in windows.WINDOWS.chain(run, n) for a in adds)
                           for n in walked)
    for name, iv in whole.items():
        for a, b in ((windowed[name].lo, iv.lo), (windowed[name].hi, iv.hi)):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_a_tile_reading_only_padding_is_bounded_not_a_shape_error() -> None:
    """Red team: a 1x1 convolution with padding 2 has corner tiles whose input window is
    all padding; the window walk crashed on the empty window."""
    for seed in range(3):
        torch.manual_seed(seed)
        model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Conv2d(2, 2, 1, padding=2),
                              nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                              nn.Linear(32, 3)).double().eval()
        x = torch.rand(2, 1, 6, 6, dtype=torch.float64)
        _, norm = adversarial_search(model, x, steps=60, box=(0.0, 1.0))
        for method, opts in (("crown", {}), ("alpha", {"iterations": 3, "rtol": 0.05})):
            if method == "alpha" and seed < 2:
                continue  # no adversarial example in the box there: alpha searches long
            r = bk.certify(model, x, method, **opts).radius
            assert bool((r >= 0).all() and (r <= norm * (1 + 1e-9)).all()), (seed, method, r)


def test_window_walks_are_used_where_they_pay_and_intervals_hold() -> None:
    from boundkit.bounds.crown import CrownRun, plan_crown, windows
    from boundkit.bounds.engine import graph_for

    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.ReLU(),
                          nn.Conv2d(4, 4, 3), nn.ReLU(), nn.Flatten(),
                          nn.Linear(4 * 14 * 14, 3)).eval()
    model.boundkit_input_shape = (1, 20, 20)
    x = _x(model, 2, 12).double()
    g = graph_for(model, x, None)
    run = CrownRun(g, plan_crown(g), x, (0.0, 1.0))
    convs = [n for n in g.upstream() if n.op == "conv2d"]
    # a 5x5 receptive field of a 20x20 input
    assert windows.WINDOWS.chain(run, convs[2]) is not None
    assert_crown_intervals_contain_samples(model, x, torch.tensor([0.3, 0.6]))


class _Shifted(nn.Module):
    """``fc2(relu(fc1(x - 5)))`` (or a convolution first): a constant shift before the first
    layer, captured as an identity node with a shift."""

    def __init__(self, conv: bool) -> None:
        super().__init__()
        self.conv = conv
        self.first = nn.Conv2d(1, 4, 3) if conv else nn.Linear(4, 16)
        self.head = nn.Linear(4 * 4 * 4 if conv else 16, 3)
        self.boundkit_input_shape = (1, 6, 6) if conv else (4,)
        shape = self.boundkit_input_shape
        self.register_buffer("mean", 5.0 * torch.linspace(0, 1, math.prod(shape)).reshape(shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.first(x - self.mean))
        return self.head(h.flatten(1))


@pytest.mark.parametrize("conv", [False, True])
@pytest.mark.parametrize("box", [(0.0, 1.0), None])
def test_a_shift_before_the_first_layer_is_not_looked_through(conv, box) -> None:
    """Red team: the first-layer closed form looked through an identity node carrying
    ``x - c`` and centred the bounds on the wrong point (radii 10x a real adversarial
    distance)."""
    torch.manual_seed(1)
    model = _Shifted(conv).eval()
    x = _x(model, 5, 1)
    _, norm = adversarial_search(model, x, steps=80, box=box)
    assert bool(torch.isfinite(norm).any())
    for method in ("crown", "alpha"):
        r = bk.certify(model, x, method, box=box).radius
        assert bool((r <= norm * (1 + 1e-9)).all()), (method, r, norm)


def _constant_on_the_box() -> nn.Module:
    """Class 0 everywhere in [0, 1]^16 (the ReLUs are off on the whole box), not outside:
    far enough along -x the hidden units switch on and class 1 wins."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3))
    with torch.no_grad():
        m[1].weight.fill_(-0.01)
        m[1].bias.fill_(-1.0)  # h = relu(-0.01 sum(x) - 1) = 0 for x >= 0
        m[3].weight.zero_()
        m[3].weight[1].fill_(1.0)
        m[3].bias.copy_(torch.tensor([1.0, 0.0, 0.0]))
    return m.eval()


@pytest.mark.parametrize("method", ["crown", "alpha"])
def test_a_class_constant_on_the_box_is_certified_on_the_whole_box(method) -> None:
    model = _constant_on_the_box()
    x = torch.rand(3, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    cert = bk.certify(model, x, method)
    assert bool(torch.isinf(cert.radius).all()), cert.radius
    # without the box the class changes along -(1, ..., 1): a finite radius, sound
    free = bk.certify(model, x, method, box=None)
    t = (x.flatten(1).sum(1) + 113.0) / 16  # sum(x) < -112.5: 8 relu(-0.01 sum - 1) > 1
    far = x - t.reshape(-1, 1, 1, 1)
    assert bool((model(far).argmax(1) == 1).all())
    assert bool((free.radius <= 4 * t).all()), (free.radius, 4 * t)


def test_a_pass_on_a_ball_smaller_than_the_box_is_not_the_whole_box() -> None:
    # the same net with its boundary inside the box: class 1 once sum(x) > 2.25
    model = _constant_on_the_box()
    with torch.no_grad():
        model[1].weight.fill_(0.5)  # h = relu(0.5 sum(x) - 1), 8 h > 1
    x = torch.full((2, 1, 4, 4), 0.05)
    exact = (2.25 - 0.8) / 4  # along (1, ..., 1) / 4, inside the box
    for method in ("crown", "alpha"):
        cert = bk.certify(model, x, method)
        assert bool((cert.radius <= exact * (1 + 1e-9)).all()), (method, cert.radius)
