"""Random compositions of the operators of issue 24 and the check every one must pass
(shared by ``test_issue24_soak.py`` and ``benchmarks/issue24_soak.py``).

A network (:class:`Issue24Net`, drawn from one integer seed) mixes, on a small image, conv
(padded, strided), ConvTranspose2d (module or ``F.conv_transpose2d``), Upsample /
``F.interpolate`` (nearest, bilinear), average, max, adaptive and global average pooling
(module, functional, ``x.mean(dim, keepdim=True)``), batch norm, LayerNorm (module or
``F.layer_norm``), residual additions and ``cat``, then flattens (or takes the global mean)
and mixes on vectors linear layers (module or ``F.linear``), GroupSort / MaxMin, LayerNorm,
residual additions and ``cat``; activations everywhere: ReLU, LeakyReLU, GELU (exact and
tanh), SiLU, ELU, Hardtanh, ReLU6, tanh, sigmoid, and (from stop 32) SELU, CELU, PReLU and
Hardswish.
A token network
(:class:`Issue24TokenNet`) draws the products, softmax and attention instead: patch or row
embeddings, class token, self-attention written out or ``nn.MultiheadAttention``, gated
units, products of two linear maps, LayerNorm and MLPs on tokens.

The check (:func:`check_case`): ``crown`` (box [0, 1]) and ``sound`` radii, then dense
random points in each certified ball (uniform directions at radii spread up to the radius,
a fifth of them on the sphere itself, clamped into the box, which only moves them closer)
and a short float64 adversarial search: every point inside a ball keeps the class, and no
adversarial example is closer than a radius.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

import boundkit as bk
from boundkit.errors import UnsupportedLayerError
from boundkit.models.layers import GroupSort, MaxMin
from boundkit.testing import adversarial_search

IMAGE_OPS = ("conv", "convT", "upsample", "avgpool", "maxpool", "adaptive", "bn", "act",
             "act", "residual", "cat", "layernorm", "mean_keep")
VECTOR_OPS = ("linear", "linear", "act", "act", "groupsort", "layernorm", "residual", "cat")
ACTS = ("relu", "leaky", "gelu", "gelu_tanh", "silu", "elu", "hardtanh", "relu6", "tanh",
        "sigmoid", "selu", "celu", "prelu", "hardswish", "abs", "softsign", "logsigmoid",
        "maximum", "minimum")
#: activations with no module form (always the functional one)
_FUNCTIONAL_ONLY = ("abs", "maximum", "minimum")


def _act(kind: str, form: int) -> nn.Module | None:
    """The activation as a module (``form`` even) or ``None`` (the functional form)."""
    if (form % 2 and kind != "prelu") or kind in _FUNCTIONAL_ONLY:  # PReLU: a module only
        return None
    return {"relu": nn.ReLU(), "leaky": nn.LeakyReLU(0.2), "gelu": nn.GELU(),
            "gelu_tanh": nn.GELU(approximate="tanh"), "silu": nn.SiLU(), "elu": nn.ELU(0.7),
            "hardtanh": nn.Hardtanh(-0.5, 1.5), "relu6": nn.ReLU6(), "tanh": nn.Tanh(),
            "sigmoid": nn.Sigmoid(), "selu": nn.SELU(), "celu": nn.CELU(0.6),
            "prelu": nn.PReLU(init=-0.3), "hardswish": nn.Hardswish(),
            "softsign": nn.Softsign(), "logsigmoid": nn.LogSigmoid()}[kind]


def _act_fn(kind: str, h: torch.Tensor) -> torch.Tensor:
    """The functional forms, keyword arguments included."""
    return {"relu": lambda: F.relu(h), "leaky": lambda: F.leaky_relu(h, negative_slope=0.2),
            "gelu": lambda: F.gelu(h), "gelu_tanh": lambda: F.gelu(h, approximate="tanh"),
            "silu": lambda: F.silu(h), "elu": lambda: F.elu(h, alpha=0.7),
            "hardtanh": lambda: F.hardtanh(h, min_val=-0.5, max_val=1.5),
            "relu6": lambda: F.relu6(h), "tanh": lambda: torch.tanh(h),
            "sigmoid": lambda: torch.sigmoid(h), "selu": lambda: torch.selu(h),
            "celu": lambda: F.celu(h, alpha=0.6),
            # PReLU's function with its slope (torch's F.prelu takes a weight tensor)
            "prelu": lambda: F.leaky_relu(h, negative_slope=-0.3),
            "hardswish": lambda: F.hardswish(h), "abs": lambda: h.abs(),
            "softsign": lambda: F.softsign(h), "logsigmoid": lambda: F.logsigmoid(h),
            # two computed operands; a constant one
            "maximum": lambda: torch.maximum(h, 0.5 * h + 0.1),
            "minimum": lambda: torch.minimum(h, torch.tensor(0.7))}[kind]()


def _draws(g: torch.Generator) -> tuple[Callable[[tuple[str, ...]], str],
                                         Callable[..., int]]:
    """``pick(seq)`` (one element of ``seq``) and ``coin(n=2)`` (an integer below ``n``),
    both drawn from ``g``."""
    def pick(seq: tuple[str, ...]) -> str:
        return seq[int(torch.randint(len(seq), (1,), generator=g))]

    def coin(n: int = 2) -> int:
        return int(torch.randint(n, (1,), generator=g))
    return pick, coin


def _init_weights(model: nn.Module, g: torch.Generator, scale: float) -> None:
    """Draw every parameter of ``model`` from ``g`` and put it in eval mode: matrices and
    kernels ``scale * N(0, 1) / sqrt(fan_in)``, everything else (biases, tokens, the affine
    weights of normalisations) ``0.2 N(0, 1)`` around 1 for a weight, around 0 otherwise."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "weight" in name and p.dim() > 1:
                p.copy_(torch.randn(p.shape, generator=g) * scale / math.sqrt(p[0].numel()))
            else:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2 + (
                    1.0 if "weight" in name else 0.0))
    model.eval()


@dataclass
class Step:
    kind: str
    form: int
    arg: str = ""


class Issue24Net(nn.Module):
    """A random classifier from one seed (module docstring); ``boundkit_input_shape`` set."""

    def __init__(self, seed: int, max_steps: int = 5) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        pick, coin = _draws(g)

        c, h = 1 + coin(2), 3 + coin(3)
        self.boundkit_input_shape = (c, h, h)
        self.steps: list[Step] = []
        self.mods = nn.ModuleList()
        feat: int | None = None
        for _ in range(coin(max_steps)):  # image stage
            kind, form = pick(IMAGE_OPS), coin(4)
            mod: nn.Module = nn.Identity()
            arg = ""
            if kind == "conv":
                co, k = 1 + coin(3), 1 + 2 * coin(2)
                mod = nn.Conv2d(c, co, k, padding=k // 2, stride=1 + coin(2) * (h > 3))
                h = (h + 2 * (k // 2) - k) // mod.stride[0] + 1
                c = co
            elif kind == "convT":
                co, k, s = 1 + coin(3), 2 + coin(2), 1 + coin(2)
                if h * s + k > 10:
                    continue
                mod = nn.ConvTranspose2d(c, co, k, stride=s)
                h, c = (h - 1) * s + k, co
            elif kind == "upsample":
                if h > 4:
                    continue
                arg = ("nearest", "bilinear")[coin()]
                mod = nn.Upsample(scale_factor=2, mode=arg)
                h *= 2
            elif kind in ("avgpool", "maxpool"):
                if h < 2:
                    continue
                mod = nn.AvgPool2d(2) if kind == "avgpool" else nn.MaxPool2d(2)
                h //= 2
            elif kind == "adaptive":
                o = 1 + coin(min(h, 3))
                mod, arg, h = nn.AdaptiveAvgPool2d(o), str(o), o
            elif kind == "bn":
                mod = nn.BatchNorm2d(c)
                mod.running_mean.uniform_(-0.3, 0.3, generator=g)
                mod.running_var.uniform_(0.5, 2.0, generator=g)
            elif kind == "act":
                arg = pick(ACTS)
                mod = _act(arg, form) or nn.Identity()
            elif kind == "residual":
                arg = pick(ACTS)
                mod = nn.Conv2d(c, c, 3, padding=1)
            elif kind == "cat":
                arg = pick(ACTS)
                mod = nn.Conv2d(c, 1 + coin(2), 1)
                c += mod.out_channels
            elif kind == "layernorm":
                mod = nn.LayerNorm([c, h, h], eps=(1e-5, 1e-2, 0.1)[coin(3)])
            self.steps.append(Step(kind, form, arg))
            self.mods.append(mod)
        if coin():
            self.steps.append(Step("flatten", coin(2)))
            feat = c * h * h
        else:
            self.steps.append(Step("global_mean", coin(3)))
            feat = c
        self.mods.append(nn.Identity())
        for _ in range(coin(max_steps)):  # vector stage
            kind, form = pick(VECTOR_OPS), coin(4)
            mod = nn.Identity()
            arg = ""
            if kind == "linear":
                w = 2 + coin(7)
                mod, feat = nn.Linear(feat, w), w
            elif kind == "act":
                arg = pick(ACTS)
                mod = _act(arg, form) or nn.Identity()
            elif kind == "groupsort":
                if feat % 2:
                    continue
                mod = MaxMin() if form % 2 else GroupSort(2)
            elif kind == "layernorm":
                if feat < 2:
                    continue
                mod = nn.LayerNorm(feat, eps=(1e-5, 1e-2, 0.1)[coin(3)])
            elif kind == "residual":
                arg = pick(ACTS)
                mod = nn.Linear(feat, feat)
            elif kind == "cat":
                arg = pick(ACTS)
                mod = nn.Linear(feat, 1 + coin(3))
                feat += mod.out_features
            self.steps.append(Step(kind, form, arg))
            self.mods.append(mod)
        self.head = nn.Linear(feat, 2 + coin(3))
        _init_weights(self, g, (0.5, 1.0, 2.0)[coin(3)])

    def _one(self, st: Step, mod: nn.Module, h: torch.Tensor) -> torch.Tensor:
        k, f = st.kind, st.form
        if k == "act":
            return mod(h) if not isinstance(mod, nn.Identity) else _act_fn(st.arg, h)
        if k == "conv":
            return mod(h) if f % 2 == 0 else F.conv2d(
                h, mod.weight, mod.bias, stride=mod.stride, padding=mod.padding)
        if k == "convT":
            return mod(h) if f % 2 == 0 else F.conv_transpose2d(
                h, mod.weight, bias=mod.bias, stride=mod.stride)
        if k == "upsample":
            return mod(h) if f % 2 == 0 else F.interpolate(
                h, scale_factor=2, mode=st.arg, **({"align_corners": False}
                                                    if st.arg == "bilinear" else {}))
        if k == "adaptive":
            o = int(st.arg)
            if f % 3 == 1:
                return F.adaptive_avg_pool2d(h, output_size=o)
            if f % 3 == 2 and o == 1:
                return h.mean(dim=(2, 3), keepdim=True)
            return mod(h)
        if k == "mean_keep":
            return h - h.mean(dim=(-1, -2), keepdim=True)
        if k == "layernorm":
            return mod(h) if f % 2 == 0 else F.layer_norm(
                h, mod.normalized_shape, weight=mod.weight, bias=mod.bias, eps=mod.eps)
        if k == "residual":
            return h + mod(_act_fn(st.arg, h))
        if k == "cat":
            return torch.cat([h, _act_fn(st.arg, mod(h))], dim=1)
        if k == "flatten":
            return h.flatten(1) if f % 2 == 0 else h.reshape(h.shape[0], -1)
        if k == "global_mean":
            return (h.mean(dim=(2, 3)) if f == 0 else torch.mean(h, dim=(-2, -1)) if f == 1
                    else F.adaptive_avg_pool2d(h, 1).flatten(1))
        if k == "linear":
            return mod(h) if f % 2 == 0 else F.linear(h, mod.weight, mod.bias)
        return mod(h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        for st, mod in zip(self.steps, self.mods):
            h = self._one(st, mod, h)
        return self.head(h)


TOKEN_OPS = ("attn", "attn", "mha", "layernorm", "mlp", "gate", "product")
POOLS = ("mean", "first", "flatten")


def _softmax(h: torch.Tensor, form: int) -> torch.Tensor:
    """Softmax over the last axis in one of torch's spellings (only that one is traced)."""
    return (lambda: torch.softmax(h, dim=-1), lambda: F.softmax(h, dim=-1),
            lambda: h.softmax(-1))[form % 3]()


def _keys_t(k: torch.Tensor, form: int) -> torch.Tensor:
    """``k`` [N, T, d] transposed to [N, d, T] in one of torch's spellings (only that one
    is traced)."""
    return (lambda: k.transpose(-2, -1), lambda: k.transpose(1, 2),
            lambda: k.permute(0, 2, 1))[form % 3]()


class Issue24TokenNet(nn.Module):
    """A random transformer-like classifier from one seed (the products, softmax and
    attention of issue 24): tokens from a patch embedding (a convolution with stride equal
    to its kernel, flattened and transposed) or from the input's rows through a linear
    layer on the last axis; an optional constant class token (``cat`` of an expanded
    parameter) and position embedding; then blocks drawn from self-attention written out
    (``q @ k^T`` scaled, softmax, ``@ v``, residual), ``nn.MultiheadAttention`` (one or two
    heads, with or without bias and weights), LayerNorm, an MLP with any activation, a
    gated unit ``act(a) * sigmoid(b)`` or ``act(a) * silu(b)``, a plain product of two
    linear maps; pooled by the token mean, the first token or flattening; a linear head.
    Spellings (module / functional / method, ``transpose`` / ``permute``, ``* scale`` /
    ``/ sqrt(d)``) vary with each step's form."""

    def __init__(self, seed: int, max_steps: int = 3) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        pick, coin = _draws(g)

        self.patches = bool(coin())
        d = 2 + coin(4)
        if self.patches:
            c, side = 1 + coin(2), 2 + coin(2)
            self.boundkit_input_shape: tuple[int, ...] = (c, 2 * side, 2 * side)
            self.embed: nn.Module = nn.Conv2d(c, d, 2, stride=2)
            t = side * side
        else:
            t, d0 = 2 + coin(3), 2 + coin(4)
            self.boundkit_input_shape = (t, d0)
            self.embed = nn.Linear(d0, d)
        self.cls = nn.Parameter(torch.zeros(1, 1, d)) if coin() else None
        t += self.cls is not None
        self.pos = nn.Parameter(torch.zeros(1, t, d)) if coin() else None
        self.steps: list[Step] = []
        self.mods = nn.ModuleList()
        for _ in range(1 + coin(max_steps)):
            kind, form = pick(TOKEN_OPS), coin(6)
            arg = ""
            if kind == "attn":
                dk = 1 + coin(3)
                mod: nn.Module = nn.ModuleDict({"q": nn.Linear(d, dk), "k": nn.Linear(d, dk),
                                                "v": nn.Linear(d, d), "o": nn.Linear(d, d)})
            elif kind == "mha":
                heads = 2 if d % 2 == 0 and coin() else 1
                mod = nn.MultiheadAttention(d, heads, batch_first=True, bias=bool(coin()))
                arg = str(heads)
            elif kind == "layernorm":
                mod = nn.LayerNorm(d, eps=(1e-5, 1e-2, 0.1)[coin(3)])
            elif kind == "mlp":
                arg, w = pick(ACTS), 2 + coin(6)
                mod = nn.ModuleDict({"a": nn.Linear(d, w), "o": nn.Linear(w, d),
                                     "act": _act(arg, form) or nn.Identity()})
            elif kind == "gate":
                arg, w = pick(ACTS), 2 + coin(6)
                mod = nn.ModuleDict({"a": nn.Linear(d, w), "b": nn.Linear(d, w),
                                     "o": nn.Linear(w, d),
                                     "act": _act(arg, form) or nn.Identity()})
            else:  # product
                mod = nn.ModuleDict({"a": nn.Linear(d, d), "b": nn.Linear(d, d)})
            self.steps.append(Step(kind, form, arg))
            self.mods.append(mod)
        self.pool = pick(POOLS)
        self.head = nn.Linear(t * d if self.pool == "flatten" else d, 2 + coin(3))
        _init_weights(self, g, (0.5, 1.0, 2.0)[coin(3)])

    def _one(self, st: Step, mod: nn.Module, h: torch.Tensor) -> torch.Tensor:
        k, f = st.kind, st.form
        if k == "attn":
            q, key, v = mod["q"](h), mod["k"](h), mod["v"](h)
            s = q @ _keys_t(key, f)
            s = s * (1.0 / math.sqrt(q.shape[-1])) if f % 2 else s / math.sqrt(q.shape[-1])
            return h + mod["o"](_softmax(s, f) @ v)
        if k == "mha":
            return h + mod(h, h, h, need_weights=bool(f % 2))[0]
        if k == "layernorm":
            return mod(h) if f % 2 == 0 else F.layer_norm(
                h, mod.normalized_shape, weight=mod.weight, bias=mod.bias, eps=mod.eps)
        if k in ("mlp", "gate"):  # the activation as a module (even forms) or a function
            a = mod["a"](h)
            a = _act_fn(st.arg, a) if isinstance(mod["act"], nn.Identity) else mod["act"](a)
            if k == "mlp":
                return h + mod["o"](a)
            b = mod["b"](h)
            return h + mod["o"](a * (torch.sigmoid(b) if f % 2 else F.silu(b)))
        return h + mod["a"](h) * mod["b"](h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x).flatten(2).transpose(1, 2) if self.patches else self.embed(x)
        if self.cls is not None:
            h = torch.cat([self.cls.expand(x.shape[0], -1, -1), h], dim=1)
        if self.pos is not None:
            h = h + self.pos
        for st, mod in zip(self.steps, self.mods):
            h = self._one(st, mod, h)
        if self.pool == "mean":
            h = h.mean(dim=1)
        elif self.pool == "first":
            h = h[:, 0]
        else:
            h = h.flatten(1)
        return self.head(h)


def make_net(seed: int, tokens: bool = False, max_steps: int = 5) -> nn.Module:
    """The soak's network of ``seed``: :class:`Issue24Net`, or with ``tokens``
    :class:`Issue24TokenNet` (at most ``max_steps`` blocks, capped at 4)."""
    return Issue24TokenNet(seed, min(max_steps, 4)) if tokens else Issue24Net(seed, max_steps)


@dataclass
class CaseResult:
    """What one network gave: radii per method (``None``: the method refused it), points
    sampled and the closest adversarial distance found."""

    radii: dict[str, torch.Tensor | None]
    points: int
    adversarial: torch.Tensor


def ball_points(x: torch.Tensor, r: torch.Tensor, m: int, gen: torch.Generator
                ) -> torch.Tensor:
    """``m`` points per sample in the ball of radius ``r`` [N] around ``x`` [N, *s]
    intersected with [0, 1]: [N, m, *s] (radii ``r u^(1/4)``, a fifth exactly ``r``)."""
    n, d = x.shape[0], x[0].numel()
    u = torch.randn(n, m, d, generator=gen, dtype=torch.float64)
    u = u / u.norm(dim=2, keepdim=True)
    t = torch.rand(n, m, 1, generator=gen, dtype=torch.float64) ** 0.25
    t[:, : m // 5] = 1.0
    pts = x.double().flatten(1).unsqueeze(1) + u * t * r.double().view(n, 1, 1)
    return pts.clamp(0.0, 1.0).reshape(n, m, *x.shape[1:])


def check_case(seed: int, *, n: int = 3, points: int = 400, search_steps: int = 15,
               max_steps: int = 5, tokens: bool = False) -> CaseResult:
    """Certify one random network (``seed``; with ``tokens`` a token network) on ``n``
    inputs and attack every ball (module docstring; ``search_steps`` 0: random points
    only); ``AssertionError`` naming the seed, method and sample on a violation."""
    model = make_net(seed, tokens, max_steps)
    gen = torch.Generator().manual_seed(seed + 1)
    x = torch.rand(n, *model.boundkit_input_shape, generator=gen)
    radii: dict[str, torch.Tensor | None] = {}
    label = None
    for method in ("crown", "sound"):
        try:
            cert = bk.certify(model, x, method)
        except UnsupportedLayerError:
            radii[method] = None
            continue
        radii[method] = cert.radius.double().cpu()
        label = cert.label.cpu()
    assert radii["crown"] is not None, f"seed {seed}: crown refused {model.steps}"
    m64 = copy.deepcopy(model).double()
    with torch.no_grad():
        assert label is not None and torch.equal(m64(x.double()).argmax(1), label), seed
        reach = math.sqrt(x[0].numel()) * 1.01  # the box's diagonal: a ball that holds it
        for method, r in radii.items():
            if r is None:
                continue
            r = torch.nan_to_num(r, posinf=reach).clamp(max=reach)
            pts = ball_points(x, r, points, gen)
            pred = m64(pts.flatten(0, 1)).argmax(1).view(n, points)
            bad = (pred != label[:, None]).any(1) & (r > 0)
            assert not bool(bad.any()), (
                f"seed {seed}: a point inside the {method} ball changes the class (samples "
                f"{bad.nonzero().flatten().tolist()}, radii {r.tolist()}); steps {model.steps}")
    if search_steps <= 0:  # dense sampling only
        return CaseResult(radii, n * points, torch.full((n,), math.inf, dtype=torch.float64))
    _, dist = adversarial_search(model, x, steps=search_steps, box=(0.0, 1.0), seed=seed)
    for method, r in radii.items():
        if r is not None:
            bad = r > dist * (1 + 1e-9)
            assert not bool(bad.any()), (
                f"seed {seed}: {method} radius {r.tolist()} > adversarial distance "
                f"{dist.tolist()}; steps {model.steps}")
    return CaseResult(radii, n * points, dist)
