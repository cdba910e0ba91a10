"""Constants in ``forward``: shifts, scales (``*``, ``/``) and residual adds with constants
of any shape torch broadcasts (a leading batch axis of 1 included), under every method;
the normalisation idiom ``(x - mean) / std`` gives the radii of ``--normalize``; a division
by a constant that can be 0 or is not finite is refused, naming the node."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import boundkit as bk
from boundkit.errors import UnsupportedLayerError
from boundkit.graph.capture import capture
from boundkit.models.preprocess import normalize
from boundkit.testing import (
    adversarial_search,
    assert_crown_intervals_contain_samples,
    property_examples,
)

FAST = settings(max_examples=property_examples(8), deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

IMAGE = (2, 5, 5)
VECTOR = (6,)


def _constant_shape(draw, sample: tuple[int, ...]) -> tuple[int, ...]:
    """A shape torch broadcasts against a batch of ``sample``: scalar, per channel, per
    element, any subset of axes kept, fewer trailing axes, or a leading batch axis of 1."""
    keep = [draw(st.booleans()) for _ in sample]
    shape = [s if k else 1 for s, k in zip(sample, keep)]
    drop = draw(st.integers(0, len(shape)))
    if drop and all(s == 1 for s in shape[:drop]):
        shape = shape[drop:]  # fewer leading axes
    if draw(st.booleans()):
        shape = [1] * (len(sample) + 1 - len(shape)) + shape  # a leading batch axis of 1
    return tuple(shape)


class ConstNet(nn.Module):
    """Conv or linear first layer, with a constant shift, a scale (``*`` or ``/``, factor on
    either side) and a constant in a residual add, each shaped by the test."""

    def __init__(self, sample: tuple[int, ...], shapes: dict[str, tuple[int, ...]],
                 form: str, seed: int, big: float) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.form = form
        for k, shape in shapes.items():
            v = torch.rand(shape, generator=g)
            if k == "scale":
                sign = torch.where(torch.rand(shape, generator=g) < 0.2, -1.0, 1.0)
                v = sign * (0.1 + big * v)
            self.register_buffer(k, v)
        if len(sample) == 3:
            self.first = nn.Conv2d(sample[0], 3, 3, padding=1)
            self.inner = nn.Conv2d(3, 3, 3, padding=1)
            flat = 3 * sample[1] * sample[2]
        else:
            self.first = nn.Linear(sample[0], 5)
            self.inner = nn.Linear(5, 5)
            flat = 5
        self.out = nn.Linear(flat, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x - self.shift
        if self.form == "div":
            h = h / self.scale
        elif self.form == "mul_left":
            h = self.scale * h
        else:
            h = h * self.scale
        h = torch.relu(self.first(h))
        h = h + torch.relu(self.inner(h)) + self.res  # a residual add with a constant
        return self.out(torch.flatten(h, 1))


@st.composite
def const_nets(draw):
    sample = draw(st.sampled_from([IMAGE, VECTOR]))
    inner = (3, *sample[1:]) if len(sample) == 3 else (5,)
    shapes = {"shift": _constant_shape(draw, sample), "scale": _constant_shape(draw, sample),
              "res": _constant_shape(draw, inner)}
    form = draw(st.sampled_from(["div", "mul_left", "mul_right"]))
    model = ConstNet(sample, shapes, form, draw(st.integers(0, 1000)),
                     draw(st.sampled_from([0.5, 3.0]))).eval()
    x = torch.rand((3, *sample), generator=torch.Generator().manual_seed(draw(st.integers(0, 99))))
    return model, x


@FAST
@given(net=const_nets())
def test_constants_of_every_broadcastable_shape_certify_soundly_under_every_method(net) -> None:
    model, x = net
    sound = bk.certify(model, x, "sound").radius
    found = {m: bk.certify(model, x, m).radius for m in ("sound-local", "crown")}
    found["alpha"] = bk.certify(model, x, "alpha", iterations=3).radius
    assert bool((found["crown"] >= sound).all())
    _, norm = adversarial_search(model, x, steps=40, box=(0.0, 1.0), seed=0)
    for m, r in {"sound": sound, **found}.items():
        assert bool((r <= norm * (1 + 1e-9)).all()), (m, r, norm)
    eps = torch.where(torch.isfinite(found["crown"]), found["crown"], torch.ones_like(sound))
    assert_crown_intervals_contain_samples(model, x, eps.clamp(min=1e-3), samples=100)


class Idiom(nn.Module):
    """``(x - mean) / std`` in forward, with buffers as CIFAR code stores them."""

    def __init__(self, body: nn.Module, mean: list[float], std: list[float], form: str,
                 batch_axis: bool) -> None:
        super().__init__()
        shape = (1, len(mean), 1, 1) if batch_axis else (len(mean), 1, 1)
        self.register_buffer("mean", torch.tensor(mean).reshape(shape))
        self.register_buffer("std", torch.tensor(std).reshape(shape))
        self.body, self.form = body, form

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.form == "div":
            return self.body((x - self.mean) / self.std)
        return self.body((x - self.mean) * (1 / self.std))


@pytest.mark.parametrize("form", ["div", "mul"])
@pytest.mark.parametrize("batch_axis", [True, False])
def test_normalising_inside_forward_gives_the_radii_of_normalize(form, batch_axis) -> None:
    torch.manual_seed(0)
    body = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(64, 10))
    body = body.double().eval()
    mean, std = [0.49, 0.48, 0.45], [0.25, 0.24, 0.26]
    inside = Idiom(body, mean, std, form, batch_axis).double().eval()
    outside = normalize(body, mean, std, (3, 6, 6))
    x = torch.rand(4, 3, 6, 6, dtype=torch.float64)
    for method, opts in (("sound", {}), ("crown", {}), ("crown", {"box": None}),
                         ("alpha", {"iterations": 3})):
        a = bk.certify(inside, x, method, **opts).radius
        b = bk.certify(outside, x, method, **opts).radius
        torch.testing.assert_close(a, b, rtol=1e-6, atol=0.0, msg=f"{method} {opts}")


class _Div(nn.Module):
    def __init__(self, c: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("c", c)
        self.fc = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x / self.c)


@pytest.mark.parametrize("c", [torch.tensor([1.0, 0.0, 2.0]), torch.tensor(0.0),
                               torch.tensor([1e-310, 1.0, 1.0], dtype=torch.float64)])
def test_a_division_by_a_constant_that_can_be_zero_is_refused_naming_the_node(c) -> None:
    model = _Div(c).eval()
    with pytest.raises(UnsupportedLayerError, match="truediv.*divides by a constant that is 0"):
        capture(model, (3,))


def test_a_non_finite_constant_factor_is_refused_naming_the_node() -> None:
    class Inf(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(3, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x * math.inf)

    with pytest.raises(UnsupportedLayerError, match="mul.*factor is not finite"):
        capture(Inf().eval(), (3,))


@pytest.mark.parametrize("expr", [lambda x: 2.0 / x,
                                  lambda x: torch.div(x, 2.0, rounding_mode="floor")])
def test_non_affine_quotients_are_refused(expr) -> None:
    # (products of two computed values, x * x included, are the node ``mul``:
    # tests/bounds/test_products.py)
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(3, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(expr(x))

    with pytest.raises(UnsupportedLayerError, match="not affine"):
        capture(Net().eval(), (3,))


def test_a_constant_with_a_batch_axis_larger_than_one_is_refused() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("m", torch.rand(2, 3))
            self.fc = nn.Linear(3, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x - self.m)

    with pytest.raises(Exception, match="batch|shape"):
        bk.certify(Net().eval(), torch.rand(2, 3), "crown")


def test_peck2017_reads_a_scale_as_its_operator_norm() -> None:
    torch.manual_seed(0)
    body = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3)).double().eval()

    class Scaled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = body
            self.register_buffer("w", torch.tensor([[0.5, -2.0, 1.0, 0.25]]))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.body(x * self.w)

    x = torch.rand(3, 4, dtype=torch.float64)
    scaled = bk.certify(Scaled().double().eval(), x * torch.tensor([2.0, -0.5, 1.0, 4.0]),
                        "peck2017").radius
    plain = bk.certify(body, x, "peck2017").radius
    torch.testing.assert_close(scaled, plain / 2.0, rtol=1e-6, atol=0.0)


class _Expand(nn.Module):
    """A scale whose constant broadcasts the input to more channels ([N, 1, 5, 5] * (3, 1, 1))
    and a shift that broadcasts a vector to a matrix."""

    def __init__(self, w: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("w", w)
        self.conv = nn.Conv2d(3, 2, 3)
        self.fc = nn.Linear(18, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x * self.w)).flatten(1))


@pytest.mark.parametrize("seed", range(3))
def test_a_scale_that_broadcasts_its_input_to_more_channels_is_sound(seed) -> None:
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    w = (torch.rand(1, 3, 1, 1, generator=g) * 4 - 2) * 10 ** (seed - 1)
    model = _Expand(w).double().eval()
    x = torch.rand(4, 1, 5, 5, generator=g, dtype=torch.float64)
    _, norm = adversarial_search(model, x, steps=60, box=(0.0, 1.0), seed=seed)
    for method in ("sound", "sound-local", "crown"):
        r = bk.certify(model, x, method).radius
        assert bool((r <= norm * (1 + 1e-9)).all()), (method, r, norm)
    # the sound constant is the exact operator norm: sqrt(sum_c w_c^2) per input pixel
    from boundkit.bounds.scale import scale_norm
    from boundkit.graph.cache import graph_for

    node = next(n for n in graph_for(model, x).nodes if n.op == "scale")
    exact = float(w.double().pow(2).sum().sqrt())
    assert exact <= scale_norm(node) <= exact * (1 + 1e-8)
