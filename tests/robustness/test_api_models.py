"""Bad and odd models at every public entry point: training mode, non-finite or zero
weights, odd outputs, unsupported operations, every dtype, meta device, not a module."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

import boundkit as bk
from boundkit.errors import (
    BoundkitError,
    InputShapeError,
    ModelError,
    NonFiniteParameterError,
    TrainingModeError,
    UnsupportedLayerError,
)

from .conftest import expect_error, tiny_mlp, tiny_x


def run(entry: str, model: Any, x: torch.Tensor) -> Any:
    if entry == "certify":
        return bk.certify(model, x)
    if entry == "attack":
        return bk.attack(model, x, "deepfool", budget=5)
    if entry == "crosscheck":
        return bk.crosscheck(model, x, attack="deepfool", attack_budget=5)
    return bk.exact_radius(model, x)


ENTRIES = ["certify", "attack", "crosscheck", "exact_radius"]


class Wrap(nn.Module):
    """A module around tiny_mlp whose forward post-processes the logits."""

    def __init__(self, post: Callable[[torch.Tensor], Any]) -> None:
        super().__init__()
        self.net = tiny_mlp()
        self.post = post

    def forward(self, x: torch.Tensor) -> Any:
        return self.post(self.net(x))


def _nan_weight() -> nn.Module:
    m = tiny_mlp()
    with torch.no_grad():
        m[0].weight[0, 0] = float("nan")
    return m


def _inf_bias() -> nn.Module:
    m = tiny_mlp()
    with torch.no_grad():
        m[2].bias[1] = float("inf")
    return m


def _neg_inf_weight() -> nn.Module:
    m = tiny_mlp()
    with torch.no_grad():
        m[2].weight[0, 0] = -float("inf")
    return m


def _nan_buffer() -> nn.Module:
    m = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3)).eval()
    m[1].running_var[0] = float("nan")
    return m


def _train_mode() -> nn.Module:
    return tiny_mlp().train()


def _sub_train_mode() -> nn.Module:
    m = tiny_mlp()
    m[1].train()
    return m


def _meta() -> nn.Module:
    with torch.device("meta"):
        return nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3)).eval()


BAD_MODELS: list[tuple[str, Callable[[], Any], type[BaseException], tuple[str, ...]]] = [
    ("nan-weight", _nan_weight, NonFiniteParameterError, ("0.weight", "NaN")),
    ("inf-bias", _inf_bias, NonFiniteParameterError, ("2.bias", "inf")),
    ("neg-inf-weight", _neg_inf_weight, NonFiniteParameterError, ("2.weight",)),
    ("nan-buffer", _nan_buffer, NonFiniteParameterError, ("running_var",)),
    ("train-mode", _train_mode, TrainingModeError, ("training mode", "eval()")),
    ("sub-train-mode", _sub_train_mode, TrainingModeError, ("training mode", "1")),
    ("meta-device", _meta, ModelError, ("meta",)),
    ("function", lambda: (lambda x: x), ModelError, ("nn.Module", "function")),
    ("none", lambda: None, ModelError, ("nn.Module",)),
    ("string", lambda: "model.safetensors", ModelError, ("nn.Module", "str")),
    ("state-dict", lambda: tiny_mlp().state_dict(), ModelError, ("nn.Module",)),
    ("class", lambda: nn.Linear, ModelError, ("nn.Module",)),
]


@pytest.mark.parametrize("entry", ENTRIES)
@pytest.mark.parametrize("case", BAD_MODELS, ids=[c[0] for c in BAD_MODELS])
def test_bad_model_is_named(entry: str, case: tuple) -> None:
    _, make, kind, words = case
    expect_error(lambda: run(entry, make(), tiny_x()), *words, kind=kind)


def test_nan_weight_never_reads_as_robust() -> None:
    """The issue's example: bk.attack returned inf (robust-looking) for every sample."""
    expect_error(lambda: bk.attack(_nan_weight(), tiny_x(), "best", budget=3), "NaN",
                 kind=NonFiniteParameterError)


ODD_OUTPUTS: list[tuple[str, Callable[[torch.Tensor], Any], tuple[str, ...]]] = [
    ("tuple", lambda z: (z, z), ("tuple",)),
    ("list", lambda z: [z], ("list",)),
    ("dict", lambda z: {"logits": z}, ("dict",)),
    ("none", lambda z: None, ("NoneType",)),
    ("1d", lambda z: z.sum(1), ("shape",)),
    ("3d", lambda z: z[:, :, None], ("shape",)),
    ("one-logit", lambda z: z[:, :1], ("logit",)),
    ("int-logits", lambda z: z.long(), ("dtype",)),
    ("batch-mean", lambda z: z.mean(0, keepdim=True), ("shape",)),
]


@pytest.mark.parametrize("entry", ENTRIES)
@pytest.mark.parametrize("case", ODD_OUTPUTS, ids=[c[0] for c in ODD_OUTPUTS])
def test_odd_output_is_named(entry: str, case: tuple) -> None:
    _, post, words = case
    expect_error(lambda: run(entry, Wrap(post).eval(), tiny_x()), *words,
                 kind=InputShapeError)


class Sorter(nn.Module):
    """Sorting inside forward: differentiable a.e., no certificate rule."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.sort(x, dim=1).values)


class Mish(nn.Module):  # GELU, the earlier example, is supported since issue 24
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 6), nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(nn.functional.mish(self.a(x)))


UNSUPPORTED = [("sort", Sorter), ("mish", Mish)]


@pytest.mark.parametrize("case", UNSUPPORTED, ids=[c[0] for c in UNSUPPORTED])
@pytest.mark.parametrize("entry", ["certify", "exact_radius"])
def test_unsupported_operation_is_named(entry: str, case: tuple) -> None:
    _, cls = case
    exc = expect_error(lambda: run(entry, cls().eval(), tiny_x()))
    assert isinstance(exc, (UnsupportedLayerError, ModelError, BoundkitError))


@pytest.mark.parametrize("case", UNSUPPORTED, ids=[c[0] for c in UNSUPPORTED])
def test_unsupported_operation_still_attacked(case: tuple) -> None:
    """Attacks only need gradients: they work on what the certifier refuses."""
    _, cls = case
    model = cls().eval()
    res = bk.attack(model, tiny_x(), "ddn", budget=20)
    ok = res.success
    with torch.no_grad():
        assert (model(res.x_adv[ok]).argmax(1) != res.label[ok]).all()


def test_zero_weights_give_consistent_trivial_answers() -> None:
    """A constant model: every class ties, so the certified radius is 0 (ties count as a
    change) and no attack can change the (first-index) argmax."""
    m = tiny_mlp()
    with torch.no_grad():
        for p in m.parameters():
            p.zero_()
    x = tiny_x()
    assert torch.equal(bk.certify(m, x).radius, torch.zeros(3, dtype=torch.float64))
    res = bk.attack(m, x, "deepfool", budget=5)
    assert not res.success.any() and torch.isinf(res.norm).all()
    ex = bk.exact_radius(m, x)
    assert (ex == 0).all() or torch.isinf(ex).all()


def test_zero_first_layer_is_certified_everywhere() -> None:
    """A model that ignores its input: nothing changes the class, the radius is inf or a
    large bound, never NaN."""
    m = tiny_mlp()
    with torch.no_grad():
        m[0].weight.zero_()
    cert = bk.certify(m, tiny_x())
    assert not torch.isnan(cert.radius).any()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("entry", ENTRIES)
def test_every_model_dtype_gives_a_result_or_a_named_refusal(entry: str,
                                                            dtype: torch.dtype) -> None:
    m = tiny_mlp(dtype=dtype)
    x = tiny_x()
    try:
        res = run(entry, m, x)
    except BoundkitError as exc:
        assert str(exc).strip() and "\n" not in str(exc).strip()
        return
    if entry == "certify":
        assert (res.radius >= 0).all() and not torch.isnan(res.radius).any()
        with torch.no_grad():
            assert torch.equal(res.label, m(x.to(dtype)).argmax(1))
    elif entry == "attack":
        ok = res.success
        with torch.no_grad():
            assert (m(res.x_adv[ok]).argmax(1) != res.label[ok]).all()


def test_model_on_another_device_than_requested() -> None:
    """The model is never moved behind the user's back: cpu model, device='cpu' works."""
    m = tiny_mlp()
    res = bk.attack(m, tiny_x(), "deepfool", budget=5, device="cpu")
    assert res.norm.device.type == "cpu"
    assert next(m.parameters()).device.type == "cpu"


def test_scripted_module_is_accepted_by_attack() -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sm = torch.jit.script(tiny_mlp())
    res = bk.attack(sm, tiny_x(), "deepfool", budget=5)
    assert res.norm.shape == (3,)


def test_parameter_free_model() -> None:
    m = nn.Sequential(nn.ReLU()).eval()  # the logits are the inputs
    cert = bk.certify(m, tiny_x())
    assert (cert.radius >= 0).all()
    res = bk.attack(m, tiny_x(), "deepfool", budget=10)
    assert res.success.all()
    assert (cert.radius <= res.norm + 1e-9).all()


def test_model_raising_on_forward_is_named() -> None:
    class Broken(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("mat1 and mat2 shapes cannot be multiplied (2x4 and 5x3)")

    for entry in ENTRIES:
        expect_error(lambda entry=entry: run(entry, Broken().eval(), tiny_x()),
                     "cannot run", kind=InputShapeError)
