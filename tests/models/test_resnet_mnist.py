"""``resnet_mnist``, the zoo's residual network: its skip connection is captured as an
``add`` node, it survives a safetensors round trip, and ``sound``, ``crown`` and ``alpha``
certify it with no adversarial example inside the certified ball."""

from __future__ import annotations

from pathlib import Path

import torch

import boundkit as bk
from boundkit.graph.capture import capture
from boundkit.models import ZOO, ResidualBlock, build_model, load_model, save_model
from boundkit.testing import adversarial_search


def _inputs(n: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand((n, *ZOO["resnet_mnist"].input_shape), generator=gen)


def test_the_skip_connection_is_an_add_node_of_the_block_and_the_stem() -> None:
    model = build_model("resnet_mnist", seed=0)
    assert sum(isinstance(m, ResidualBlock) for m in model.modules()) == 1
    graph = capture(model, _inputs(1, 0))
    adds = [node for node in graph if node.op == "add"]
    assert len(adds) == 1 and sorted(adds[0].inputs) == ["block1_conv2", "relu0"]
    assert graph.consumers(adds[0].name) == ["block1_relu2"]
    assert not graph.is_chain()


def test_safetensors_round_trip_rebuilds_the_residual_network(tmp_path: Path) -> None:
    model = build_model("resnet_mnist", seed=1)
    path = save_model(model, tmp_path / "resnet_mnist.safetensors", arch="resnet_mnist")
    loaded = load_model(path)
    assert isinstance(loaded.block1, ResidualBlock)
    x = _inputs(3, 1)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0.0, atol=0.0)


def test_sound_crown_and_alpha_certify_with_no_adversarial_example_inside() -> None:
    model = build_model("resnet_mnist", seed=0)
    x = _inputs(2, 2)
    graph = capture(model, x)
    radius = {m: bk.certify(model, x, m, graph=graph).radius for m in ("sound", "crown")}
    # alpha on one sample with few iterations and a coarse search: it is ~10x crown's cost
    radius["alpha"] = bk.certify(model, x[:1], "alpha", graph=graph, iterations=2,
                                 rtol=5e-2).radius
    _, upper = adversarial_search(model, x, steps=60, box=(0.0, 1.0), seed=0)
    assert bool(torch.isfinite(upper).all())
    assert bool((radius["sound"] > 0).all()) and bool((radius["crown"] >= radius["sound"]).all())
    for method, r in radius.items():
        assert bool((r > 0).all()), (method, r)
        assert bool((r <= upper[: len(r)] * (1 + 1e-9)).all()), (method, r, upper)
