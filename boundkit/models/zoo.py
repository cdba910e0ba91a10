"""The model zoo: the networks of Peck (2017) and the project's reference networks.

Every model is an ``nn.Sequential`` with named children (no final softmax: logits out), so
that ``torch.fx`` can capture it. The children are standard ``torch.nn`` layers, except the
:class:`ResidualBlock` of ``resnet_mnist``: its ``forward`` is traced through, and its skip
connection becomes an ``add`` node of the captured graph.
:func:`build_model` returns a fresh model in eval mode; pass ``seed=`` for a deterministic
initialisation.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

#: LRN hyper-parameters named in the thesis (§5.2.4, after Krizhevsky et al. 2012):
#: k = 2, n = 5, alpha = 1e-4, beta = 0.75 in b = a / (k + alpha * sum a^2)^beta.
#: ``torch.nn.LocalResponseNorm`` divides alpha by n, so it receives alpha * n.
LRN_SIZE = 5
LRN_ALPHA = 1e-4
LRN_BETA = 0.75
LRN_K = 2.0


def _seq(*layers: tuple[str, nn.Module]) -> nn.Sequential:
    return nn.Sequential(OrderedDict(layers))


def _lrn() -> nn.LocalResponseNorm:
    return nn.LocalResponseNorm(LRN_SIZE, alpha=LRN_ALPHA * LRN_SIZE, beta=LRN_BETA, k=LRN_K)


_ACTS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "softplus": nn.Softplus,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
}


def mlp(
    sizes: list[int] | tuple[int, ...], activation: str = "tanh", *, flatten: bool = False
) -> nn.Sequential:
    """A fully-connected network ``sizes[0] -> ... -> sizes[-1]`` (Peck 2017, Ch. 4).

    Layers are named ``fc1, act1, fc2, act2, ..., fcL`` (the last layer has no activation);
    with ``flatten=True`` a leading ``flatten`` turns images into vectors.
    """
    if len(sizes) < 2:
        raise ValueError("an MLP needs at least input and output sizes")
    if activation not in _ACTS:
        raise ValueError(f"activation must be one of {sorted(_ACTS)}, got {activation!r}")
    layers: list[tuple[str, nn.Module]] = [("flatten", nn.Flatten())] if flatten else []
    for i in range(len(sizes) - 1):
        layers.append((f"fc{i + 1}", nn.Linear(sizes[i], sizes[i + 1])))
        if i < len(sizes) - 2:
            layers.append((f"act{i + 1}", _ACTS[activation]()))
    return _seq(*layers)


def linear(in_features: int, num_classes: int, *, flatten: bool = False) -> nn.Sequential:
    """A linear (multinomial logistic) classifier (Peck 2017, Ch. 3): ``[flatten,] fc``."""
    layers: list[tuple[str, nn.Module]] = [("flatten", nn.Flatten())] if flatten else []
    layers.append(("fc", nn.Linear(in_features, num_classes)))
    return _seq(*layers)


def small_cnn() -> nn.Sequential:
    """The project's reference MNIST CNN (``REFERENCE-NUMBERS.md``):
    Conv(1,8,5)-ReLU-MaxPool2-Conv(8,16,5)-ReLU-MaxPool2-Linear(256,100)-ReLU-Linear(100,10).
    """
    return _seq(
        ("conv1", nn.Conv2d(1, 8, 5)),
        ("relu1", nn.ReLU()),
        ("pool1", nn.MaxPool2d(2)),
        ("conv2", nn.Conv2d(8, 16, 5)),
        ("relu2", nn.ReLU()),
        ("pool2", nn.MaxPool2d(2)),
        ("flatten", nn.Flatten()),
        ("fc1", nn.Linear(256, 100)),
        ("relu3", nn.ReLU()),
        ("fc2", nn.Linear(100, 10)),
    )


def deep_cnn() -> nn.Sequential:
    """A deeper MNIST conv net (6 ReLU layers, no pooling: strided convolutions):
    Conv(1,8,3,p1)-ReLU-Conv(8,8,4,s2,p1)-ReLU-Conv(8,16,3,p1)-ReLU-Conv(16,16,4,s2,p1)-ReLU-
    Linear(784,100)-ReLU-Linear(100,100)-ReLU-Linear(100,10)."""
    return _seq(
        ("conv1", nn.Conv2d(1, 8, 3, padding=1)),
        ("relu1", nn.ReLU()),
        ("conv2", nn.Conv2d(8, 8, 4, stride=2, padding=1)),
        ("relu2", nn.ReLU()),
        ("conv3", nn.Conv2d(8, 16, 3, padding=1)),
        ("relu3", nn.ReLU()),
        ("conv4", nn.Conv2d(16, 16, 4, stride=2, padding=1)),
        ("relu4", nn.ReLU()),
        ("flatten", nn.Flatten()),
        ("fc1", nn.Linear(784, 100)),
        ("relu5", nn.ReLU()),
        ("fc2", nn.Linear(100, 100)),
        ("relu6", nn.ReLU()),
        ("fc3", nn.Linear(100, 10)),
    )


def lenet5(*, lrn_after: tuple[int, ...] = (), batchnorm: bool = False) -> nn.Sequential:
    """LeNet-5 exactly as Peck (2017) §5.4 lists it, for 28x28 MNIST digits.

    C1 conv 5x5 stride 1, 20 maps; S2 max pool 2x2 stride 2; C3 conv 5x5 stride 1, 50 maps;
    S4 max pool 2x2 stride 2; C5 fully-connected 500 + ReLU; F6 fully-connected 10 (logits:
    the thesis's softmax OUTPUT layer is left to the loss). As in the thesis (and Caffe's
    LeNet), there is no activation after the convolutions.

    ``lrn_after`` lists the pooling layers (1 = S2, 2 = S4) followed by a Local Response
    Normalisation layer (§5.4.1: LeNet-LRN1 = (1,), LeNet-LRN2 = (2,), LeNet-LRN3 = (1, 2));
    ``batchnorm`` inserts ``BatchNorm2d`` right after each convolution.
    """
    layers: list[tuple[str, nn.Module]] = [("c1", nn.Conv2d(1, 20, 5))]
    if batchnorm:
        layers.append(("bn1", nn.BatchNorm2d(20)))
    layers.append(("s2", nn.MaxPool2d(2, 2)))
    if 1 in lrn_after:
        layers.append(("lrn1", _lrn()))
    layers.append(("c3", nn.Conv2d(20, 50, 5)))
    if batchnorm:
        layers.append(("bn3", nn.BatchNorm2d(50)))
    layers.append(("s4", nn.MaxPool2d(2, 2)))
    if 2 in lrn_after:
        layers.append(("lrn2", _lrn()))
    layers += [
        ("flatten", nn.Flatten()),
        ("c5", nn.Linear(50 * 4 * 4, 500)),
        ("relu5", nn.ReLU()),
        ("f6", nn.Linear(500, 10)),
    ]
    return _seq(*layers)


def cifar_nin_small(*, batchnorm: bool = False) -> nn.Sequential:
    """A CPU-sized network-in-network for CIFAR-10 in the spirit of CIFAR-NIN (Peck 2017,
    §5.1.2; Lin et al. 2013).

    Three mlpconv blocks (a spatial convolution followed by two 1x1 convolutions, ReLU after
    each): 5x5/32 -> 1x1/32 -> 1x1/32, max pool 2; 5x5/64 -> 1x1/64 -> 1x1/64, max pool 2;
    3x3/64 -> 1x1/64 -> 1x1/10; then global average pooling (``AvgPool2d(8)``) to 10 logits.
    The original has 192 maps per layer and dropout; this one has about 1/10 of the
    parameters. ``batchnorm`` adds ``BatchNorm2d`` after every convolution but the last.
    """

    def block(i: int, cin: int, cout: int, k: int, last: int | None = None) -> list:
        out: list[tuple[str, nn.Module]] = []
        chans = [(cin, cout, k), (cout, cout, 1), (cout, last or cout, 1)]
        for j, (a, b, kk) in enumerate(chans, start=1):
            out.append((f"conv{i}_{j}", nn.Conv2d(a, b, kk, padding=kk // 2)))
            final = last is not None and j == 3
            if batchnorm and not final:
                out.append((f"bn{i}_{j}", nn.BatchNorm2d(b)))
            if not final:
                out.append((f"relu{i}_{j}", nn.ReLU()))
        return out

    return _seq(
        *block(1, 3, 32, 5),
        ("pool1", nn.MaxPool2d(2, 2)),
        *block(2, 32, 64, 5),
        ("pool2", nn.MaxPool2d(2, 2)),
        *block(3, 64, 64, 3, last=10),
        ("gap", nn.AvgPool2d(8)),
        ("flatten", nn.Flatten()),
    )


def digits_cnn() -> nn.Sequential:
    """A small CNN for scikit-learn's 8x8 digits [N, 1, 8, 8] (project addition, not in the
    thesis): Conv(1,8,3,pad 1)-ReLU-MaxPool2-Flatten-Linear(128,64)-ReLU-Linear(64,10)."""
    return _seq(
        ("conv1", nn.Conv2d(1, 8, 3, padding=1)),
        ("relu1", nn.ReLU()),
        ("pool1", nn.MaxPool2d(2)),
        ("flatten", nn.Flatten()),
        ("fc1", nn.Linear(128, 64)),
        ("relu2", nn.ReLU()),
        ("fc2", nn.Linear(64, 10)),
    )


class ResidualBlock(nn.Module):
    """A ResNet basic block without normalisation: ``relu(x + conv2(relu(conv1(x))))``.

    Both convolutions are 3x3 with padding 1 and ``channels`` maps in and out, so the identity
    shortcut needs no projection. The block has no other code than its ``forward``, which
    ``torch.fx`` (boundkit's capture) and auto_LiRPA trace through.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``relu(x + conv2(relu(conv1(x))))``, same shape as ``x``."""
        return self.relu2(x + self.conv2(self.relu1(self.conv1(x))))


def resnet_mnist(channels: int = 8, blocks: int = 1, hidden: int = 64) -> nn.Sequential:
    """A small residual network for 28x28 MNIST digits (project addition, not in the thesis).

    Stem ``Conv(1, channels, 4, stride 4)`` + ReLU (28x28 -> 7x7 patches), ``blocks``
    :class:`ResidualBlock` s on ``channels`` x 7 x 7, then ``Flatten``,
    ``Linear(channels * 49, hidden)``, ReLU, ``Linear(hidden, 10)``. With the defaults
    (8 maps, one block, 64 hidden units: 4 x 392 + 64 ReLUs) ``crown`` certifies one sample in
    about a second on one CPU core.
    """
    if channels < 1 or blocks < 0 or hidden < 1:
        raise ValueError("resnet_mnist needs channels >= 1, blocks >= 0 and hidden >= 1")
    return _seq(
        ("stem", nn.Conv2d(1, channels, 4, stride=4)),
        ("relu0", nn.ReLU()),
        *[(f"block{i + 1}", ResidualBlock(channels)) for i in range(blocks)],
        ("flatten", nn.Flatten()),
        ("fc1", nn.Linear(channels * 7 * 7, hidden)),
        ("relu_fc", nn.ReLU()),
        ("fc2", nn.Linear(hidden, 10)),
    )


class BasicBlock(nn.Module):
    """torchvision's ResNet ``BasicBlock``: ``relu(bn2(conv2(relu(bn1(conv1(x))))) + s(x))``
    with 3x3 convolutions without bias, eval batch norm, and the shortcut ``s`` the identity
    or, when the stride or the width changes, torchvision's ``downsample``: a 1x1
    convolution with that stride followed by batch norm."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False),
                          nn.BatchNorm2d(cout))
            if stride != 1 or cin != cout else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The block's output (same as torchvision's ``BasicBlock.forward``)."""
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


def cifar_resnet(widths: tuple[int, ...] = (8, 16, 32), blocks: int = 1,
                 num_classes: int = 10) -> nn.Sequential:
    """A CIFAR ResNet in torchvision's shape (project addition, issue 24): stem
    ``Conv(3, w0, 3, p1, no bias)``-BN-ReLU, then per stage ``blocks`` :class:`BasicBlock` s
    (the first of every stage after the first with stride 2 and a 1x1 downsampling
    shortcut), ``AdaptiveAvgPool2d(1)``, ``Flatten``, ``Linear(w_last, num_classes)``.
    The defaults (three stages, one block each) match the size of VNN-COMP's
    ``sri_resnet_a`` family."""
    if not widths or blocks < 1:
        raise ValueError("cifar_resnet needs at least one stage and one block per stage")
    layers: list[tuple[str, nn.Module]] = [
        ("conv1", nn.Conv2d(3, widths[0], 3, padding=1, bias=False)),
        ("bn1", nn.BatchNorm2d(widths[0])),
        ("relu", nn.ReLU()),
    ]
    cin = widths[0]
    for i, w in enumerate(widths):
        for j in range(blocks):
            stride = 2 if i > 0 and j == 0 else 1
            layers.append((f"layer{i + 1}_{j}", BasicBlock(cin, w, stride)))
            cin = w
    layers += [("avgpool", nn.AdaptiveAvgPool2d(1)), ("flatten", nn.Flatten()),
               ("fc", nn.Linear(cin, num_classes))]
    return _seq(*layers)


def smooth_mlp(sizes: tuple[int, ...] = (784, 128, 64, 10)) -> nn.Sequential:
    """An MLP with the activations of current transformers' MLP blocks (project addition,
    issue 24): ``Flatten``, then ``Linear``-GELU, ``Linear``-SiLU alternating, a final
    ``Linear``. (The gated form ``a * silu(b)`` is :func:`gated_mlp`.)"""
    layers: list[tuple[str, nn.Module]] = [("flatten", nn.Flatten())]
    for i in range(len(sizes) - 1):
        layers.append((f"fc{i + 1}", nn.Linear(sizes[i], sizes[i + 1])))
        if i < len(sizes) - 2:
            layers.append((f"act{i + 1}", nn.GELU() if i % 2 == 0 else nn.SiLU()))
    return _seq(*layers)


class GatedBlock(nn.Module):
    """A gated linear unit with SiLU gating (SwiGLU's gate, Shazeer 2020):
    ``value(x) * silu(gate(x))``, two ``Linear`` layers of the same shape. Traced through:
    the product is a ``mul`` node of the captured graph."""

    def __init__(self, d_in: int, d_out: int) -> None:
        super().__init__()
        self.value = nn.Linear(d_in, d_out)
        self.gate = nn.Linear(d_in, d_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.value(x) * nn.functional.silu(self.gate(x))


def gated_mlp(sizes: tuple[int, ...] = (784, 128, 64, 10)) -> nn.Sequential:
    """A gated MLP (project addition, issue 24): ``Flatten``, a :class:`GatedBlock` per
    hidden size, a final ``Linear``."""
    layers: list[tuple[str, nn.Module]] = [("flatten", nn.Flatten())]
    for i in range(len(sizes) - 2):
        layers.append((f"block{i + 1}", GatedBlock(sizes[i], sizes[i + 1])))
    layers.append(("fc", nn.Linear(sizes[-2], sizes[-1])))
    return _seq(*layers)


def maxmin_mlp(sizes: tuple[int, ...] = (784, 128, 128, 10)) -> nn.Sequential:
    """A MaxMin network of the L2 1-Lipschitz literature (project addition, issue 24;
    Anil et al. 2019): ``Flatten``, ``Linear``-:class:`~boundkit.models.layers.MaxMin`
    layers with orthogonally initialised weights, a final ``Linear``. Trained here without
    an orthogonality constraint, so it is not 1-Lipschitz after training; MaxMin keeps the
    gradient norm of every layer."""
    from boundkit.models.layers import MaxMin

    layers: list[tuple[str, nn.Module]] = [("flatten", nn.Flatten())]
    for i in range(len(sizes) - 1):
        fc = nn.Linear(sizes[i], sizes[i + 1])
        nn.init.orthogonal_(fc.weight)
        nn.init.zeros_(fc.bias)
        layers.append((f"fc{i + 1}", fc))
        if i < len(sizes) - 2:
            layers.append((f"maxmin{i + 1}", MaxMin()))
    return _seq(*layers)


def _tiny_vit(**kw: Any) -> nn.Module:
    """:class:`boundkit.models.vit.TinyViT` (imported on use), in a one-layer
    ``nn.Sequential`` like every zoo model."""
    from boundkit.models.vit import TinyViT

    return _seq(("vit", TinyViT(**kw)))


@dataclass(frozen=True)
class ZooEntry:
    """A zoo architecture: how to build it and what it expects.

    ``input_shape`` excludes the batch dimension. ``epochs``, ``lr`` and ``batch_size`` are
    the defaults of :func:`boundkit.models.train.train_zoo_model`.
    """

    name: str
    builder: Callable[..., nn.Module]
    input_shape: tuple[int, ...]
    num_classes: int
    dataset: str
    description: str
    thesis: str
    epochs: int = 10
    lr: float = 1e-3
    batch_size: int = 128
    kwargs: dict[str, Any] = field(default_factory=dict)


def _part(fn: Callable[..., nn.Module], *args: Any, **kw: Any) -> Callable[..., nn.Module]:
    """``fn`` with arguments bound; a call's own keywords override them."""
    def build(**override: Any) -> nn.Module:
        return fn(*args, **{**kw, **override})

    build.__doc__ = fn.__doc__
    return build


#: the training settings of the small UCI models
_UCI = dict(epochs=300, batch_size=16)
#: every zoo entry, in the order ``ZOO`` lists them
_ENTRIES: tuple[ZooEntry, ...] = (
    ZooEntry(
        "linear_mnist",
        _part(linear, in_features=784, num_classes=10, flatten=True),
        (1, 28, 28),
        10,
        "mnist",
        "Flatten-Linear(784,10)",
        "Ch. 3 (linear classifiers)",
    ),
    ZooEntry(
        "logistic_iris",
        _part(linear, in_features=4, num_classes=3),
        (4,),
        3,
        "iris",
        "Linear(4,3)",
        "Ch. 3 (linear classifiers)",
        **_UCI,
    ),
    ZooEntry(
        "logistic_wine",
        _part(linear, in_features=13, num_classes=3),
        (13,),
        3,
        "wine",
        "Linear(13,3)",
        "Ch. 3 (linear classifiers)",
        **_UCI,
    ),
    ZooEntry(
        "logistic_spambase",
        _part(linear, in_features=57, num_classes=2),
        (57,),
        2,
        "spambase",
        "Linear(57,2)",
        "Ch. 3 (linear classifiers)",
        epochs=100,
        batch_size=64,
    ),
    ZooEntry(
        "mlp_iris",
        _part(mlp, sizes=[4, 5, 3], activation="tanh"),
        (4,),
        3,
        "iris",
        "4-5-3 tanh",
        "§4.3.2 (Iris)",
        **_UCI,
    ),
    ZooEntry(
        "mlp_wine",
        _part(mlp, sizes=[13, 5, 3, 3], activation="tanh"),
        (13,),
        3,
        "wine",
        "13-5-3-3 tanh",
        "§4.3.2 (Wine)",
        **_UCI,
    ),
    ZooEntry(
        "mlp_spambase",
        _part(mlp, sizes=[57, 7, 5, 3, 2], activation="tanh"),
        (57,),
        2,
        "spambase",
        "57-7-5-3-2 tanh",
        "§4.3.2 (Spambase)",
        epochs=100,
        batch_size=64,
    ),
    ZooEntry(
        "mlp_mnist",
        _part(mlp, sizes=[784, 100, 100, 10], activation="relu", flatten=True),
        (1, 28, 28),
        10,
        "mnist",
        "784-100-100-10 ReLU",
        "REFERENCE-NUMBERS.md (Ch. 4 style MLP)",
    ),
    ZooEntry(
        "mlp_mnist_deep",
        _part(mlp, sizes=[784, *[200] * 8, 10], activation="relu", flatten=True),
        (1, 28, 28),
        10,
        "mnist",
        "784-200x8-10 ReLU (9 linear layers)",
        "project addition (a deep MLP: the shape of VNN-COMP's mnist 9x200 networks)",
        epochs=5,
    ),
    ZooEntry(
        "mlp_mnist_tanh",
        _part(mlp, sizes=[784, 100, 100, 10], activation="tanh", flatten=True),
        (1, 28, 28),
        10,
        "mnist",
        "784-100-100-10 tanh",
        "Ch. 4 (smooth MLP)",
    ),
    ZooEntry(
        "mlp_mnist_tiny",
        _part(mlp, sizes=[784, 8, 8, 10], activation="relu", flatten=True),
        (1, 28, 28),
        10,
        "mnist",
        "784-8-8-10 ReLU (16 ReLUs: small enough for the exact oracle)",
        "project addition (attack optimality against the exact radius)",
        epochs=20,
        batch_size=64,
    ),
    ZooEntry(
        "small_cnn",
        small_cnn,
        (1, 28, 28),
        10,
        "mnist",
        "Conv(1,8,5)-ReLU-MaxPool2-Conv(8,16,5)-ReLU-MaxPool2-FC100-ReLU-FC10",
        "REFERENCE-NUMBERS.md",
    ),
    ZooEntry(
        "cnn_mnist_deep",
        deep_cnn,
        (1, 28, 28),
        10,
        "mnist",
        "Conv(1,8,3,p1)-ReLU-Conv(8,8,4,s2,p1)-ReLU-Conv(8,16,3,p1)-ReLU-"
        "Conv(16,16,4,s2,p1)-ReLU-FC100-ReLU-FC100-ReLU-FC10",
        "project addition (a deeper conv net: 6 ReLU layers, strided convolutions)",
        epochs=5,
    ),
    ZooEntry(
        "resnet_mnist",
        _part(resnet_mnist),
        (1, 28, 28),
        10,
        "mnist",
        "Conv(1,8,4,stride 4)-ReLU-[x + Conv(8,8,3,p1)(ReLU(Conv(8,8,3,p1)(x)))]-ReLU-"
        "FC64-ReLU-FC10",
        "project addition (a residual graph: the skip connection is an add node)",
        epochs=20,
    ),
    ZooEntry(
        "lenet5",
        _part(lenet5),
        (1, 28, 28),
        10,
        "mnist",
        "C1 5x5x20, S2 max2, C3 5x5x50, S4 max2, C5 FC500 ReLU, F6 FC10",
        "§5.4",
        epochs=5,
        batch_size=64,
    ),
    ZooEntry(
        "lenet5_lrn1",
        _part(lenet5, lrn_after=(1,)),
        (1, 28, 28),
        10,
        "mnist",
        "LeNet-5 + LRN after S2",
        "§5.4.1 (LeNet-LRN1)",
        epochs=5,
        batch_size=64,
    ),
    ZooEntry(
        "lenet5_lrn2",
        _part(lenet5, lrn_after=(2,)),
        (1, 28, 28),
        10,
        "mnist",
        "LeNet-5 + LRN after S4",
        "§5.4.1 (LeNet-LRN2)",
        epochs=5,
        batch_size=64,
    ),
    ZooEntry(
        "lenet5_lrn3",
        _part(lenet5, lrn_after=(1, 2)),
        (1, 28, 28),
        10,
        "mnist",
        "LeNet-5 + LRN after S2 and S4",
        "§5.4.1 (LeNet-LRN3)",
        epochs=5,
        batch_size=64,
    ),
    ZooEntry(
        "lenet5_bn",
        _part(lenet5, batchnorm=True),
        (1, 28, 28),
        10,
        "mnist",
        "LeNet-5 + BatchNorm2d after C1 and C3",
        "§5.4 (normalisation layers)",
        epochs=5,
        batch_size=64,
    ),
    ZooEntry(
        "cifar_nin_small",
        _part(cifar_nin_small),
        (3, 32, 32),
        10,
        "cifar10",
        "3 mlpconv blocks (32/64/64 maps) + global avg pool",
        "§5.1.2 (CIFAR-NIN)",
        epochs=10,
    ),
    ZooEntry(
        "cifar_nin_small_bn",
        _part(cifar_nin_small, batchnorm=True),
        (3, 32, 32),
        10,
        "cifar10",
        "cifar_nin_small + BatchNorm2d",
        "§5.1.2, §5.4",
        epochs=10,
    ),
    ZooEntry(
        "resnet_cifar",
        cifar_resnet,
        (3, 32, 32),
        10,
        "cifar10",
        "torchvision-shaped ResNet: stem + 3 BasicBlocks (8/16/32 maps, BN, 1x1 "
        "downsampling) + AdaptiveAvgPool2d(1) + FC10",
        "project addition (issue 24)",
        epochs=2,
    ),
    ZooEntry(
        "smooth_mlp_mnist",
        smooth_mlp,
        (1, 28, 28),
        10,
        "mnist",
        "784-128-64-10, GELU then SiLU",
        "project addition (issue 24)",
        epochs=10,
    ),
    ZooEntry(
        "gated_mlp_mnist",
        gated_mlp,
        (1, 28, 28),
        10,
        "mnist",
        "784-128-64-10, gated blocks value(x) * silu(gate(x))",
        "project addition (issue 24)",
        epochs=10,
    ),
    ZooEntry(
        "maxmin_mnist",
        maxmin_mlp,
        (1, 28, 28),
        10,
        "mnist",
        "784-128-128-10, MaxMin activations, orthogonal initialisation",
        "project addition (issue 24)",
        epochs=10,
    ),
    ZooEntry(
        "vit_cifar",
        _part(_tiny_vit, cls=False),
        (3, 32, 32),
        10,
        "cifar10",
        "vision transformer: Conv(3,32,8,s8) patches (16 tokens) + positions, 1 pre-norm "
        "block (LayerNorm, 2-head softmax attention, GELU MLP 64), LayerNorm, mean over "
        "tokens, FC10",
        "project addition (issue 24)",
        epochs=15,
    ),
    ZooEntry(
        "digits_cnn",
        digits_cnn,
        (1, 8, 8),
        10,
        "digits",
        "Conv(1,8,3,p1)-ReLU-MaxPool2-FC64-ReLU-FC10",
        "project addition",
        epochs=30,
        batch_size=32,
    ),
    ZooEntry(
        "digits_mlp",
        _part(mlp, sizes=[64, 64, 10], activation="relu", flatten=True),
        (1, 8, 8),
        10,
        "digits",
        "64-64-10 ReLU",
        "project addition",
        epochs=30,
        batch_size=32,
    ),
)


ZOO: dict[str, ZooEntry] = {e.name: e for e in _ENTRIES}


def build_model(name: str, *, seed: int | None = None, **kw: Any) -> nn.Module:
    """Build a zoo architecture by name, in eval mode.

    ``seed`` (optional) makes the initialisation deterministic without touching the global
    RNG state; other keyword arguments go to the builder (e.g. ``activation`` for MLPs).
    """
    if name not in ZOO:
        raise KeyError(f"unknown architecture {name!r}; known: {sorted(ZOO)}")
    entry = ZOO[name]
    if seed is None:
        model = entry.builder(**kw)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = entry.builder(**kw)
    return model.eval()
