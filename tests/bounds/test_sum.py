"""Sums over dimensions (``x.sum(dim)``, ``torch.sum(x, dim=..., keepdim=...)``): captured as
the exact linear node ``sum`` with torch's semantics of every argument (``dim`` an int, a
negative int, a tuple or a list, or its alias ``axis``; ``keepdim``; a float ``dtype``),
evaluated like torch, bounded by ``sound`` (Lipschitz :math:`\\sqrt n`) and ``crown``
(non-negative linear) with no adversarial example inside any certified ball; sums over the
batch or over everything are refused naming the node."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
from hypothesis import given, settings
from hypothesis import strategies as st

import boundkit as bk
from boundkit.bounds.average import average_lipschitz
from boundkit.errors import UnsupportedLayerError
from boundkit.graph import capture
from boundkit.graph.ops import evaluate
from boundkit.testing import assert_crown_intervals_contain_samples, assert_sound


class Tokens(nn.Module):
    """Tokens [N, T, D] summed in one of the odd ways users write it, then a head."""

    def __init__(self, form: str, t: int = 3, d: int = 4) -> None:
        super().__init__()
        self.form, self.t, self.d = form, t, d
        self.a = nn.Linear(6, t * d)
        n_out = {"tokens": d, "tokens_keep": d, "features": t, "both": 1, "both_list": 1,
                 "axis": d, "dtype": d, "method_kw": t, "chain": 1}[form]
        self.o = nn.Linear(n_out, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.a(x)).reshape(-1, self.t, self.d)
        f = self.form
        if f == "tokens":
            z = h.sum(1)
        elif f == "tokens_keep":
            z = torch.sum(h, dim=-2, keepdim=True).flatten(1)
        elif f == "features":
            z = torch.sum(input=h, dim=(-1,))
        elif f == "both":
            z = h.sum((1, 2), True).flatten(1)
        elif f == "both_list":
            z = h.sum(dim=[-1, -2], keepdim=True).reshape(-1, 1)
        elif f == "axis":
            z = torch.sum(h, axis=1)
        elif f == "dtype":
            z = h.sum(1, dtype=torch.float32)
        elif f == "method_kw":
            z = h.sum(keepdim=False, dim=2)
        else:  # a sum of a sum
            z = h.sum(2, keepdim=True).sum(1)
        return self.o(z)


FORMS = ["tokens", "tokens_keep", "features", "both", "both_list", "axis", "dtype",
         "method_kw", "chain"]


@pytest.mark.parametrize("form", FORMS)
def test_every_sum_form_is_captured_exactly_and_certified_below_the_attacks(form) -> None:
    torch.manual_seed(1)
    model = Tokens(form).eval()
    x = torch.rand(3, 6)
    g = capture(model, x)
    ops = [n.op for n in g.nodes]
    assert "sum" in ops and "unknown" not in ops, ops
    # the graph's own evaluation is torch's (float64 but for the model's own dtype=float32)
    got = g.activations(x)[g.output]
    with torch.no_grad():
        ref = model(x).double() if form == "dtype" else model.double()(x.double())
    assert torch.allclose(got, ref, rtol=0, atol=1e-5 if form == "dtype" else 1e-12)
    model.float()
    if form == "dtype":  # the model itself cannot run in float64 (its sum casts to float32)
        _no_class_change_inside(model, x)
        return
    for method in ("sound", "crown"):
        assert_sound(model, x, method, exact=False, attack_steps=40)
    eps = bk.certify(model, x, "crown").radius.clamp(max=1.0) * 2 + 0.05
    assert_crown_intervals_contain_samples(model, x, eps, samples=100)


def _no_class_change_inside(model: nn.Module, x: torch.Tensor, points: int = 2000) -> None:
    """Random points on and inside each certified sphere keep the model's class (float32
    model, as the user runs it)."""
    gen = torch.Generator().manual_seed(0)
    for method in ("sound", "crown"):
        cert = bk.certify(model, x, method)
        assert bool((cert.radius > 0).all()), cert.radius
        d = torch.randn(points, *x.shape, generator=gen, dtype=torch.float64)
        d = d / d.flatten(2).norm(dim=2)[..., None]
        d = d * torch.rand(points, x.shape[0], 1, generator=gen, dtype=torch.float64) ** 0.1
        pts = (x.double() + d * cert.radius[:, None] * (1 - 1e-6)).float()
        with torch.no_grad():
            cls = model(pts.reshape(-1, *x.shape[1:])).argmax(1).reshape(points, -1)
        assert bool((cls == cert.label[None]).all()), method


@pytest.mark.parametrize("shape,dims", [((1, 4), (1,)), ((5, 1), (2,)), ((1, 1), (1, 2)),
                                        ((2, 1, 3), (1, 3))])
def test_sums_over_one_token_or_one_channel_certify_soundly(shape, dims) -> None:
    class One(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(5, math.prod(shape))
            self.o = nn.LazyLinear(3)

        def forward(self, x):
            h = torch.relu(self.a(x)).reshape(-1, *shape)
            return self.o(h.sum(dim=dims, keepdim=True).flatten(1))

    torch.manual_seed(2)
    model = One()
    model(torch.zeros(1, 5))  # materialise the lazy layer
    model.eval()
    x = torch.rand(4, 5)
    assert "sum" in {n.op for n in capture(model, x)}
    for method in ("sound", "crown"):
        assert_sound(model, x, method, exact=False, attack_steps=40)


def test_a_sum_as_the_logits_is_part_of_the_sound_affine_tail() -> None:
    """The logits are a sum over tokens: the sum closes the sound output stage's affine
    tail (its Jacobian and rounding), and no attack finds a smaller perturbation."""
    from boundkit.bounds.output import affine_tail

    class Head(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(5, 12), nn.Linear(4, 4)

        def forward(self, x):
            return self.b(torch.relu(self.a(x)).reshape(-1, 3, 4)).sum(dim=-1)

    torch.manual_seed(4)
    model = Head().eval()
    x = torch.rand(4, 5)
    g = capture(model, x)
    tail, _ = affine_tail(g)
    assert [n.op for n in tail] == ["reshape", "linear", "sum"]
    for method in ("sound", "crown"):
        assert_sound(model, x, method, exact=False, attack_steps=40)


@settings(max_examples=25, deadline=None)
@given(shape=st.lists(st.integers(1, 4), min_size=1, max_size=3), data=st.data())
def test_sum_constant_is_the_exact_operator_norm(shape, data) -> None:
    rank = len(shape)
    dims = data.draw(st.lists(st.integers(-rank, rank - 1), min_size=1, max_size=rank,
                              unique_by=lambda d: d % rank))

    batched = tuple(d + 1 if d >= 0 else d for d in dims)  # the same axes, batch first

    class S(nn.Module):
        def forward(self, x):
            return torch.cat([x.sum(dim=batched, keepdim=True).flatten(1), x.flatten(1)], 1)

    g = capture(S().eval(), tuple(shape))
    node = next(n for n in g.nodes if n.op == "sum")
    z = torch.randn(2, *shape, dtype=torch.float64)
    want = z.sum(dim=batched, keepdim=True)
    assert torch.equal(evaluate(node, [z]), want)
    n = math.prod(shape[d % rank] for d in dims)
    jac = torch.autograd.functional.jacobian(lambda v: evaluate(node, [v]),
                                             torch.zeros(1, *shape, dtype=torch.float64))
    exact = torch.linalg.matrix_norm(jac.reshape(want[0].numel(), math.prod(shape)), 2)
    lip = average_lipschitz(node)
    assert float(exact) * (1 - 1e-12) <= lip <= float(exact) * (1 + 1e-8)
    assert abs(lip - math.sqrt(n)) <= 1e-8 * math.sqrt(n)


def test_sums_over_the_batch_or_everything_or_in_half_precision_are_refused() -> None:
    class All(nn.Module):
        def __init__(self, kw) -> None:
            super().__init__()
            self.fc, self.kw = nn.Linear(4, 2), kw

        def forward(self, x):
            return self.fc(x + x.sum(**self.kw))

    cases = [({"dim": 0, "keepdim": True}, "batch"), ({"dim": (0, 1), "keepdim": True}, "batch"),
             ({}, "every dimension"), ({"dim": ()}, "every dimension"),
             ({"dim": 1, "keepdim": True, "dtype": torch.float16}, "dtype")]
    for kw, msg in cases:
        with pytest.raises(UnsupportedLayerError, match=msg) as info:
            capture(All(kw).eval(), (4,))
        assert "\n" not in str(info.value)

    class Scalar(nn.Module):
        def forward(self, x):
            return x * 0 + torch.sum(x)

    with pytest.raises(UnsupportedLayerError, match="every dimension"):
        capture(Scalar().eval(), (4,))
