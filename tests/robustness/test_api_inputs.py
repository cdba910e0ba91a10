"""Bad tensors and bad arguments at every public entry point: certify, attack, crosscheck,
exact_radius. Each case: a correct result or a one-line BoundkitError naming the problem."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import boundkit as bk
from boundkit.errors import BoundkitError

from .conftest import expect_error, tiny_mlp, tiny_x

MODEL = tiny_mlp()


def _certify(x: Any, **kw: Any) -> Any:
    return bk.certify(MODEL, x, **kw)


def _attack(x: Any, **kw: Any) -> Any:
    kw.setdefault("budget", 5)
    return bk.attack(MODEL, x, "deepfool", **kw)


def _crosscheck(x: Any, **kw: Any) -> Any:
    kw.setdefault("attack", "deepfool")
    kw.setdefault("attack_budget", 5)
    return bk.crosscheck(MODEL, x, **kw)


def _exact(x: Any, **kw: Any) -> Any:
    return bk.exact_radius(MODEL, x, **kw)


ENTRY: dict[str, Callable[..., Any]] = {
    "certify": _certify,
    "attack": _attack,
    "crosscheck": _crosscheck,
    "exact_radius": _exact,
}

# ---------------------------------------------------------------------------------- tensors
# (name, x factory, words the error must contain)
BAD_TENSORS: list[tuple[str, Callable[[], Any], tuple[str, ...]]] = [
    ("int64", lambda: torch.ones(2, 4, dtype=torch.int64), ("floating",)),
    ("uint8", lambda: torch.ones(2, 4, dtype=torch.uint8), ("floating",)),
    ("bool", lambda: torch.ones(2, 4, dtype=torch.bool), ("floating",)),
    ("complex", lambda: torch.ones(2, 4, dtype=torch.complex64), ("floating",)),
    ("scalar", lambda: torch.tensor(0.5), ("batch",)),
    ("vector", lambda: torch.rand(4), ("batch",)),
    ("wrong-width", lambda: torch.rand(2, 5), ("shape",)),
    ("extra-dim", lambda: torch.rand(2, 1, 4, 1), ("shape",)),
    ("transposed", lambda: torch.rand(4, 2), ("shape",)),
    ("empty-batch", lambda: torch.rand(0, 4), ("empty",)),
    ("zero-width", lambda: torch.rand(2, 0), ("size 0",)),
    ("nan", lambda: torch.tensor([[0.1, float("nan"), 0.2, 0.3]]), ("nan",)),
    ("inf", lambda: torch.tensor([[0.1, float("inf"), 0.2, 0.3]]), ("inf",)),
    ("minus-inf", lambda: torch.tensor([[0.1, -float("inf"), 0.2, 0.3]]), ("inf",)),
    ("meta", lambda: torch.empty(2, 4, device="meta"), ("meta",)),
    ("list", lambda: [[0.1, 0.2, 0.3, 0.4]], ("tensor",)),
    ("numpy", lambda: np.full((2, 4), 0.5), ("tensor",)),
    ("none", lambda: None, ("tensor",)),
    ("string", lambda: "x.npz", ("tensor",)),
]


@pytest.mark.parametrize("entry", sorted(ENTRY))
@pytest.mark.parametrize("case", BAD_TENSORS, ids=[c[0] for c in BAD_TENSORS])
def test_bad_tensor_is_named(entry: str, case: tuple) -> None:
    _, make, words = case
    expect_error(lambda: ENTRY[entry](make()), *words)


@pytest.mark.parametrize("entry", ["attack", "crosscheck"])
@pytest.mark.parametrize("value", [-0.5, 1.5, 1e30, -1e30])
def test_outside_box_is_named(entry: str, value: float) -> None:
    x = tiny_x()
    x[0, 0] = value
    expect_error(lambda: ENTRY[entry](x), "outside the box")


@pytest.mark.parametrize("value", [1e30, -1e30, 1e6])
def test_huge_finite_values_certify_or_refuse(value: float) -> None:
    """Certify has no box: a huge finite input gets a valid radius (finite, >= 0)."""
    x = tiny_x()
    x[0, 0] = value
    cert = bk.certify(MODEL, x)
    assert torch.isfinite(cert.radius).all() and (cert.radius >= 0).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("entry", sorted(ENTRY))
def test_every_float_dtype_of_x_gives_a_result(entry: str, dtype: torch.dtype) -> None:
    """x in any float dtype: the result equals the float32 one (x is cast to the model)."""
    x = tiny_x().to(dtype)
    res = ENTRY[entry](x)
    if entry == "certify":
        ref = bk.certify(MODEL, x.float())
        assert torch.equal(res.label, ref.label)
        assert torch.allclose(res.radius, ref.radius, rtol=1e-6, atol=1e-9)
    elif entry == "exact_radius":
        assert torch.isfinite(res).all() and (res > 0).all()
    else:
        norm = res.norm if entry == "attack" else torch.as_tensor(res.attack_norm)
        assert norm.shape == (3,) and not torch.isnan(norm).any()


def test_large_batch_is_chunked_consistently() -> None:
    """A batch much larger than batch_size gives the same radii as one chunk."""
    x = torch.rand(2500, 4)
    a = bk.certify(MODEL, x, batch_size=97).radius
    b = bk.certify(MODEL, x, batch_size=4096).radius
    assert torch.allclose(a, b, rtol=0, atol=1e-12)


def test_non_contiguous_and_expanded_inputs() -> None:
    x = tiny_x(4, 8)[:, ::2]  # non-contiguous view
    assert not x.is_contiguous()
    ref = bk.certify(MODEL, x.contiguous()).radius
    assert torch.equal(bk.certify(MODEL, x).radius, ref)
    e = tiny_x(1).expand(3, 4)
    r = bk.certify(MODEL, e).radius
    assert torch.equal(r, r[:1].expand(3))


def test_requires_grad_input_is_left_alone() -> None:
    x = tiny_x().requires_grad_(True)
    res = bk.attack(MODEL, x, "deepfool", budget=5)
    assert x.grad is None and res.norm.shape == (3,)
    bk.certify(MODEL, x)
    assert x.grad is None


@settings(max_examples=40)
@given(st.lists(st.sampled_from([0.0, 0.5, 1.0, math.nan, math.inf, -math.inf, 2.0, -1.0]),
                min_size=4, max_size=4))
def test_property_attack_never_returns_a_number_for_a_bad_sample(vals: list[float]) -> None:
    """Any input row: the attack returns verified results, or refuses naming NaN/inf/box."""
    x = torch.tensor([vals], dtype=torch.float32)
    try:
        res = bk.attack(MODEL, x, "deepfool", budget=5)
    except BoundkitError as exc:
        assert any(w in str(exc) for w in ("NaN", "infinite", "outside the box"))
        return
    assert all(0.0 <= v <= 1.0 for v in vals)
    assert res.norm.shape == (1,)


# -------------------------------------------------------------------------------- arguments
BAD_ARGS: list[tuple[str, str, dict[str, Any], tuple[str, ...]]] = [
    ("attack", "budget-0", {"budget": 0}, ("budget", ">= 1")),
    ("attack", "budget-neg", {"budget": -3}, ("budget",)),
    ("attack", "budget-float", {"budget": 2.5}, ("budget", "integer")),
    ("attack", "budget-bool", {"budget": True}, ("budget",)),
    ("attack", "budget-absurd", {"budget": 10**12}, ("budget", "<=")),
    ("attack", "budget-str", {"budget": "10"}, ("budget",)),
    ("attack", "batch-0", {"batch_size": 0}, ("batch_size",)),
    ("attack", "batch-neg", {"batch_size": -1}, ("batch_size",)),
    ("attack", "box-reversed", {"box": (1.0, 0.0)}, ("box",)),
    ("attack", "box-nan", {"box": (math.nan, 1.0)}, ("box",)),
    ("attack", "box-str", {"box": "01"}, ("box",)),
    ("attack", "box-3", {"box": (0.0, 0.5, 1.0)}, ("box",)),
    ("attack", "device-cuda", {"device": "cuda"}, ("cuda",)),
    ("attack", "device-cuda7", {"device": "cuda:7"}, ("cuda",)),
    ("attack", "device-bogus", {"device": "gpu"}, ("device",)),
    ("attack", "device-meta", {"device": "meta"}, ("meta",)),
    ("attack", "device-int", {"device": 3.5}, ("device",)),
    ("attack", "target-shape", {"target": torch.zeros(5, dtype=torch.long)}, ("target",)),
    ("attack", "y-float", {"y": torch.zeros(3)}, ("y",)),
    ("certify", "batch-0", {"batch_size": 0}, ("batch_size",)),
    ("certify", "batch-neg", {"batch_size": -5}, ("batch_size",)),
    ("certify", "batch-float", {"batch_size": 0.5}, ("batch_size",)),
    ("certify", "method", {"method": "magic"}, ("method",)),
    ("certify", "device-cuda", {"device": "cuda"}, ("cuda",)),
    ("certify", "device-bogus", {"device": "tpu9"}, ("device",)),
    ("certify", "device-meta", {"device": "meta"}, ("meta",)),
    ("crosscheck", "budget-0", {"attack_budget": 0}, ("attack_budget",)),
    ("crosscheck", "budget-neg", {"attack_budget": -1}, ("attack_budget",)),
    ("crosscheck", "chunk-0", {"chunk_size": 0}, ("chunk_size",)),
    ("crosscheck", "methods-str", {"methods": "sound"}, ("methods",)),
    ("crosscheck", "methods-bad", {"methods": ("sound", "magic")}, ("magic",)),
    ("crosscheck", "attack-not-str", {"attack": 3}, ("attack",)),
    ("crosscheck", "indices-len", {"indices": [1, 2]}, ("indices",)),
    ("crosscheck", "box-reversed", {"box": (1.0, 0.0)}, ("box",)),
    ("crosscheck", "device-cuda", {"device": "cuda"}, ("cuda",)),
    ("exact_radius", "rtol-neg", {"rtol": -0.1}, ("rtol",)),
    ("exact_radius", "rtol-1", {"rtol": 1.0}, ("rtol",)),
    ("exact_radius", "neurons-0", {"max_neurons": 0}, ("max_neurons",)),
    ("exact_radius", "regions-neg", {"max_regions": -1}, ("max_regions",)),
    ("exact_radius", "time-neg", {"time_limit": -1.0}, ("time_limit",)),
    ("exact_radius", "on-budget", {"on_budget": "ignore"}, ("on_budget",)),
    ("exact_radius", "device-cuda", {"device": "cuda"}, ("cuda",)),
]


@pytest.mark.parametrize("case", BAD_ARGS, ids=[f"{c[0]}-{c[1]}" for c in BAD_ARGS])
def test_bad_argument_is_named(case: tuple) -> None:
    entry, _, kw, words = case
    if "cuda" in str(kw.get("device", "")) and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    kind: type[BaseException] = BoundkitError
    if entry == "exact_radius" and set(kw) & {"rtol", "time_limit", "on_budget"}:
        kind = ValueError
    if entry == "attack" and set(kw) & {"target", "y"}:
        kind = BoundkitError
    if entry == "certify" and "method" in kw:
        kind = ValueError
    expect_error(lambda: ENTRY[entry](tiny_x(), **kw), *words, kind=kind)


@pytest.mark.parametrize("budget", [1, 2, 7])
def test_small_budgets_give_verified_results(budget: int) -> None:
    res = bk.attack(MODEL, tiny_x(), "ddn", budget=budget)
    ok = res.success
    with torch.no_grad():
        assert (MODEL(res.x_adv[ok]).argmax(1) != res.label[ok]).all()
    assert torch.isinf(res.norm[~ok]).all()


def test_no_cuda_is_a_device_error_not_an_assertion() -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    from boundkit.errors import DeviceError

    for fn in ENTRY.values():
        expect_error(lambda fn=fn: fn(tiny_x(), device="cuda"), "CUDA is not available",
                     kind=DeviceError)
