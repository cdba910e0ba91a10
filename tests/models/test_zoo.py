"""Every zoo model builds, runs, is fx-capturable and matches the thesis's specification."""

from __future__ import annotations

import pytest
import torch
import torch.fx
from torch import nn

from boundkit.models import ZOO, GroupSort, ResidualBlock, build_model, lenet5
from boundkit.models.vit import Attention, Block, TinyViT
from boundkit.models.zoo import BasicBlock, GatedBlock

ALLOWED = (
    nn.Sequential, nn.Linear, nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d, nn.LPPool2d,
    nn.BatchNorm1d, nn.BatchNorm2d, nn.LocalResponseNorm, nn.ReLU, nn.Tanh, nn.Sigmoid,
    nn.Softplus, nn.Flatten, nn.Dropout, ResidualBlock,
    nn.AdaptiveAvgPool2d, nn.GELU, nn.SiLU, BasicBlock, GroupSort, GatedBlock,
    TinyViT, Block, Attention, nn.LayerNorm,
)  # fmt: skip


@pytest.mark.parametrize("name", sorted(ZOO))
def test_builds_runs_and_traces(name: str) -> None:
    entry = ZOO[name]
    model = build_model(name, seed=0)
    assert not model.training and isinstance(model, nn.Sequential)
    assert all(isinstance(m, ALLOWED) for m in model.modules()), name
    assert not isinstance(list(model.children())[-1], (nn.Softmax, nn.LogSoftmax))
    x = torch.rand(3, *entry.input_shape)
    with torch.no_grad():
        out = model(x)
    assert out.shape == (3, entry.num_classes) and torch.isfinite(out).all()
    traced = torch.fx.symbolic_trace(model)
    with torch.no_grad():
        torch.testing.assert_close(traced(x), out)
    assert entry.dataset in {"mnist", "cifar10", "iris", "wine", "spambase", "digits"}


def test_seeded_build_is_deterministic_and_keeps_global_rng() -> None:
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = build_model("mlp_wine", seed=5).state_dict()
    assert torch.equal(torch.get_rng_state(), state)
    b = build_model("mlp_wine", seed=5).state_dict()
    c = build_model("mlp_wine", seed=6).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_unknown_name() -> None:
    with pytest.raises(KeyError, match="unknown architecture"):
        build_model("resnet50")


@pytest.mark.parametrize(
    ("name", "sizes"),
    [("mlp_iris", [4, 5, 3]), ("mlp_wine", [13, 5, 3, 3]), ("mlp_spambase", [57, 7, 5, 3, 2]),
     ("mlp_mnist", [784, 100, 100, 10])],
)  # fmt: skip
def test_mlp_layer_sizes(name: str, sizes: list[int]) -> None:
    model = build_model(name)
    lin = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [lin[0].in_features] + [m.out_features for m in lin] == sizes
    acts = [m for m in model.modules() if isinstance(m, (nn.Tanh, nn.ReLU))]
    assert len(acts) == len(sizes) - 2
    expected = nn.ReLU if name == "mlp_mnist" else nn.Tanh
    assert all(isinstance(a, expected) for a in acts)


def test_lenet5_as_section_5_4() -> None:
    m = lenet5()
    kinds = [type(c).__name__ for c in m.children()]
    assert kinds == ["Conv2d", "MaxPool2d", "Conv2d", "MaxPool2d", "Flatten", "Linear", "ReLU",
                     "Linear"]  # fmt: skip
    assert (m.c1.in_channels, m.c1.out_channels, m.c1.kernel_size, m.c1.stride) == (
        1, 20, (5, 5), (1, 1))  # fmt: skip
    assert (m.c3.in_channels, m.c3.out_channels, m.c3.kernel_size) == (20, 50, (5, 5))
    assert m.s2.kernel_size == 2 and m.s2.stride == 2 and m.s4.stride == 2
    assert m.c5.out_features == 500 and m.f6.out_features == 10


@pytest.mark.parametrize(
    ("name", "after"), [("lenet5_lrn1", ["s2"]), ("lenet5_lrn2", ["s4"]),
                        ("lenet5_lrn3", ["s2", "s4"])]
)  # fmt: skip
def test_lrn_placement_and_hyperparameters(name: str, after: list[str]) -> None:
    names = [n for n, _ in build_model(name).named_children()]
    lrns = [i for i, n in enumerate(names) if n.startswith("lrn")]
    assert [names[i - 1] for i in lrns] == after
    lrn = next(m for m in build_model(name).modules() if isinstance(m, nn.LocalResponseNorm))
    # thesis: b = a / (k + alpha * sum a^2)^beta with k=2, n=5, alpha=1e-4, beta=0.75;
    # torch divides its alpha by n
    assert (lrn.size, lrn.k, lrn.beta) == (5, 2.0, 0.75)
    assert lrn.alpha / lrn.size == pytest.approx(1e-4)
    a = torch.rand(1, 7, 3, 3)
    sq = torch.nn.functional.pad(a.pow(2), (0, 0, 0, 0, 2, 2))
    s = torch.stack([sq[:, c : c + 5].sum(1) for c in range(7)], 1)
    torch.testing.assert_close(lrn(a), a / (2.0 + 1e-4 * s) ** 0.75)


def test_bn_variant_has_batchnorm_after_each_conv() -> None:
    kids = list(build_model("lenet5_bn").children())
    for i, m in enumerate(kids):
        if isinstance(m, nn.Conv2d):
            assert isinstance(kids[i + 1], nn.BatchNorm2d)


def test_issue24_entries_have_the_promised_layers_and_certify() -> None:
    import boundkit as bk

    res = build_model("resnet_cifar", seed=0)
    blocks = [m for m in res.modules() if isinstance(m, BasicBlock)]
    assert len(blocks) == 3 and sum(b.downsample is not None for b in blocks) == 2
    assert isinstance(res.avgpool, nn.AdaptiveAvgPool2d)
    assert any(isinstance(m, nn.GELU) for m in build_model("smooth_mlp_mnist").modules())
    mm = build_model("maxmin_mnist", seed=0)
    assert any(isinstance(m, GroupSort) for m in mm.modules())
    w = mm.fc2.weight.detach()
    torch.testing.assert_close(w @ w.T, torch.eye(128), atol=1e-5, rtol=0)  # orthogonal init
    x = torch.rand(2, 1, 28, 28)
    for name in ("smooth_mlp_mnist", "maxmin_mnist"):
        cert = bk.certify(build_model(name, seed=0), x, "crown")
        assert (cert.radius > 0).all()
