"""Test helpers for boundkit users: random networks, and soundness checks.

* Hypothesis strategies: :func:`small_networks` (random eval-mode ``nn.Sequential`` of
  Linear / Conv2d / ReLU / Tanh / Sigmoid / Softplus / MaxPool2d / AvgPool2d / BatchNorm /
  LocalResponseNorm / Flatten, weights drawn across scales), :func:`small_relu_mlps`
  (small enough for the exact oracle) and :func:`inputs_for`.
* :func:`small_relu_convnets`: small ReLU conv nets (Conv2d with stride and padding,
  AvgPool2d, eval BatchNorm2d, Flatten, Linear) on ``[N, 1, 5, 5]`` or ``[N, 2, 4, 4]``,
  within the exact oracle's reach; :func:`property_examples`: a property test's example
  count that a soak profile can raise.
* :func:`adversarial_search`: a small, strong, batched float64 search for minimal
  adversarial perturbations (a linearised line search plus DDN-style normalised gradient
  descent on the margin, each finished by a bisection along the found direction).
* :func:`assert_sound`: certify, then compare with the exact radius (small ReLU networks)
  and with every adversarial example found; raises ``AssertionError`` naming the sample,
  the method and the layer where the bound failed.
* :func:`check_relaxation_below_exact`, :func:`check_no_adversarial_in_relaxation_ball`,
  :func:`check_relaxation_order`: the properties of the linear relaxations (``crown``,
  ``alpha``), shared by the tests and ``benchmarks/relaxation_soak.py``.
* :func:`check_rule_soundness`: test a rule registered with :func:`boundkit.register_rule`
  for your own layer, directly (its modulus of continuity on random perturbations) and end
  to end (:func:`assert_sound` on random networks containing the layer).

Use them from your own pytest suite::

    from hypothesis import given, settings, strategies as st
    from boundkit.testing import small_networks, inputs_for, assert_sound

    @settings(max_examples=20, deadline=None)
    @given(st.data())
    def test_sound(data):
        model = data.draw(small_networks())
        x = data.draw(inputs_for(model))
        assert_sound(model, x)
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
import torch.nn as nn

__all__ = [
    "ALL_LAYER_KINDS",
    "ComposedNet",
    "composed_networks",
    "adversarial_search",
    "assert_sound",
    "check_no_adversarial_in_relaxation_ball",
    "check_relaxation_below_exact",
    "check_relaxation_order",
    "check_rule_soundness",
    "describe_case",
    "inputs_for",
    "assert_crown_intervals_contain_samples",
    "random_inputs",
    "random_network",
    "relu_count",
    "small_networks",
    "small_relu_convnets",
    "small_relu_mlps",
    "property_examples",
    "unstable_neurons",
]

ACTIVATIONS = ("relu", "tanh", "sigmoid", "softplus")
IMAGE_KINDS = ("conv2d", "maxpool2d", "avgpool2d", "batchnorm", "lrn")
ALL_LAYER_KINDS = ("linear", *ACTIVATIONS, *IMAGE_KINDS, "flatten")
_ACT = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "softplus": nn.Softplus}


# ----------------------------------------------------------------------------- networks
def _scaled_(module: nn.Module, scale: float, gen: torch.Generator) -> None:
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name == "weight" and p.dim() >= 2:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=gen) * scale / math.sqrt(fan_in))
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1 * scale)


def random_network(
    seed: int,
    *,
    layer_kinds: Sequence[str] = ALL_LAYER_KINDS,
    depth: int = 2,
    width: int = 8,
    num_classes: int = 3,
    scales: Sequence[float] | None = None,
    image: bool | None = None,
    extra: Callable[[], nn.Module] | None = None,
) -> nn.Sequential:
    """A random eval-mode classifier built from ``layer_kinds`` (deterministic in ``seed``).

    Image networks (when ``layer_kinds`` holds an image layer, or ``image=True``) take
    ``[N, 2, 6, 6]``: a few image layers, ``Flatten``, then dense layers; others take
    ``[N, 5]``. Each layer's weights are scaled by ``scales[i]`` (default: 1). ``extra``
    (a module factory) inserts a module of your own after the first dense layer. The
    input shape is stored as ``model.boundkit_input_shape``.
    """
    gen = torch.Generator().manual_seed(seed)
    kinds = list(layer_kinds)
    acts = [k for k in kinds if k in ACTIVATIONS] or (["relu"] if extra is None else [])
    image = any(k in IMAGE_KINDS for k in kinds) if image is None else image

    def pick(options: Sequence[str]) -> str:
        return options[int(torch.randint(len(options), (1,), generator=gen))]

    layers: list[nn.Module] = []
    scales = list(scales) if scales is not None else []

    def scale(i: int) -> float:
        return float(scales[i % len(scales)]) if scales else 1.0

    if image:
        shape = (2, 6, 6)
        c, h = shape[0], shape[1]
        img_kinds = [k for k in kinds if k in IMAGE_KINDS] or ["conv2d"]
        for i in range(depth):
            kind = pick(img_kinds)
            if kind == "conv2d":
                conv = nn.Conv2d(c, 3, 3, padding=1)
                _scaled_(conv, scale(i), gen)
                layers.append(conv)
                c = 3
                if acts:
                    layers.append(_ACT[pick(acts)]())
            elif kind in ("maxpool2d", "avgpool2d") and h >= 2 and h % 2 == 0:
                layers.append(nn.MaxPool2d(2) if kind == "maxpool2d" else nn.AvgPool2d(2))
                h //= 2
            elif kind == "batchnorm":
                bn = nn.BatchNorm2d(c)
                with torch.no_grad():
                    bn.running_mean.copy_(torch.randn(c, generator=gen) * 0.2)
                    bn.running_var.copy_(torch.rand(c, generator=gen) * 2 + 0.1)
                    bn.weight.copy_(torch.randn(c, generator=gen) * scale(i))
                    bn.bias.copy_(torch.randn(c, generator=gen) * 0.1)
                layers.append(bn)
            elif kind == "lrn":
                layers.append(nn.LocalResponseNorm(2, alpha=1e-2 * scale(i), beta=0.75, k=2.0))
        layers.append(nn.Flatten())
        features = c * h * h
    else:
        shape = (5,)
        features = 5
    dense_depth = 1 if image else depth
    for j in range(dense_depth):
        lin = nn.Linear(features, width)
        _scaled_(lin, scale(depth + j), gen)
        layers.append(lin)
        if j == 0 and extra is not None:
            layers.append(extra())
        elif acts:
            layers.append(_ACT[pick(acts)]())
        features = width
    out = nn.Linear(features, num_classes)
    _scaled_(out, scale(2 * depth + 1), gen)
    layers.append(out)
    model = nn.Sequential(*layers).eval()
    model.boundkit_input_shape = shape  # type: ignore[attr-defined]
    return model


def small_networks(
    layer_kinds: Sequence[str] = ALL_LAYER_KINDS,
    *,
    max_depth: int = 3,
    max_width: int = 10,
    scale_range: tuple[float, float] = (0.1, 4.0),
) -> Any:
    """Hypothesis strategy: random small eval-mode networks (see :func:`random_network`),
    with per-layer weight scales drawn log-uniformly in ``scale_range``."""
    from hypothesis import strategies as st

    lo, hi = math.log(scale_range[0]), math.log(scale_range[1])

    @st.composite
    def build(draw: Any) -> nn.Sequential:
        seed = draw(st.integers(0, 2**31 - 1))
        depth = draw(st.integers(1, max_depth))
        width = draw(st.integers(2, max_width))
        classes = draw(st.integers(2, 4))
        scales = draw(st.lists(st.floats(lo, hi), min_size=1, max_size=2 * max_depth + 2))
        return random_network(seed, layer_kinds=layer_kinds, depth=depth, width=width,
                              num_classes=classes, scales=[math.exp(s) for s in scales])

    return build()


def small_relu_mlps(max_hidden: int = 12) -> Any:
    """Hypothesis strategy: ReLU MLPs on ``[N, 5]`` with at most ``2 * max_hidden`` hidden
    neurons (small enough for :func:`boundkit.exact_radius`)."""
    return small_networks(("linear", "relu"), max_depth=2, max_width=max_hidden)


def _relu_convnet(seed: int, in_shape: tuple[int, int, int],
                  convs: Sequence[tuple[int, int, int, int, bool, bool]], hidden: int,
                  num_classes: int, scales: Sequence[float]) -> nn.Sequential:
    """The network of :func:`small_relu_convnets` (deterministic in its arguments).

    ``convs``: ``(out_channels, kernel, stride, padding, batchnorm, avgpool)`` per block:
    Conv2d, an optional eval BatchNorm2d, ReLU, an optional AvgPool2d(2). ``hidden``: the
    width of a dense ReLU layer after Flatten (0: none). Weights as in
    :func:`random_network`, layer ``i`` scaled by ``scales[i % len(scales)]``.
    """
    gen = torch.Generator().manual_seed(seed)
    c, h, w = in_shape
    layers: list[nn.Module] = []
    for i, (out, k, stride, pad, bn, pool) in enumerate(convs):
        k = min(k, h + 2 * pad, w + 2 * pad)
        conv = nn.Conv2d(c, out, k, stride=stride, padding=pad)
        _scaled_(conv, float(scales[i % len(scales)]), gen)
        layers.append(conv)
        c, h, w = out, (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1
        if bn:
            norm = nn.BatchNorm2d(c)
            with torch.no_grad():
                norm.running_mean.copy_(torch.randn(c, generator=gen) * 0.2)
                norm.running_var.copy_(torch.rand(c, generator=gen) * 2 + 0.1)
                norm.weight.copy_(torch.randn(c, generator=gen))
                norm.bias.copy_(torch.randn(c, generator=gen) * 0.1)
            layers.append(norm)
        layers.append(nn.ReLU())
        if pool and min(h, w) >= 2:
            layers.append(nn.AvgPool2d(2))
            h, w = h // 2, w // 2
    layers.append(nn.Flatten())
    features = c * h * w
    if hidden:
        lin = nn.Linear(features, hidden)
        _scaled_(lin, float(scales[len(convs) % len(scales)]), gen)
        layers += [lin, nn.ReLU()]
        features = hidden
    head = nn.Linear(features, num_classes)
    _scaled_(head, float(scales[(len(convs) + 1) % len(scales)]), gen)
    layers.append(head)
    model = nn.Sequential(*layers).eval()
    model.boundkit_input_shape = in_shape  # type: ignore[attr-defined]
    return model


def relu_count(model: nn.Module) -> int:
    """The number of hidden ReLU neurons of ``model`` on its ``boundkit_input_shape``."""
    count = 0

    def hook(_m: nn.Module, _i: Any, out: torch.Tensor) -> None:
        nonlocal count
        count += out[0].numel()

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.ReLU)]
    try:
        with torch.no_grad():
            model(torch.zeros((1, *model.boundkit_input_shape)))
    finally:
        for hd in handles:
            hd.remove()
    return count


def small_relu_convnets(max_relus: int = 24) -> Any:
    """Hypothesis strategy: small eval-mode ReLU conv nets for the exact oracle.

    On ``[N, 1, 5, 5]`` or ``[N, 2, 4, 4]``: one or two blocks of Conv2d (1 to 3 channels,
    kernel 2 or 3, stride 1 or 2, padding 0 or 1), an optional eval BatchNorm2d, ReLU and
    an optional AvgPool2d(2); Flatten; an optional dense ReLU layer; a Linear head of 2 to
    4 classes. Per-layer weight scales are drawn log-uniformly in [0.3, 3]. Networks with
    more than ``max_relus`` hidden ReLUs are shrunk (channels, then strides of 2, then the
    second block, then the dense layer) until they fit, so :func:`boundkit.exact_radius` stays fast.
    """
    from hypothesis import strategies as st

    @st.composite
    def build(draw: Any) -> nn.Sequential:
        seed = draw(st.integers(0, 2**31 - 1))
        in_shape = draw(st.sampled_from([(1, 5, 5), (2, 4, 4)]))
        blocks = draw(st.integers(1, 2))
        convs = [(draw(st.integers(1, 3)), draw(st.sampled_from([2, 3])),
                  draw(st.sampled_from([1, 2])), draw(st.sampled_from([0, 1])),
                  draw(st.booleans()), draw(st.booleans())) for _ in range(blocks)]
        hidden = draw(st.sampled_from([0, 0, 3, 6]))
        classes = draw(st.integers(2, 4))
        scales = [math.exp(draw(st.floats(math.log(0.3), math.log(3.0))))
                  for _ in range(blocks + 2)]
        while True:
            model = _relu_convnet(seed, in_shape, convs, hidden, classes, scales)
            if relu_count(model) <= max_relus:
                return model
            widest = max(range(len(convs)), key=lambda i: convs[i][0])
            strided = [i for i, cv in enumerate(convs) if cv[2] == 1]
            if convs[widest][0] > 1:
                convs[widest] = (convs[widest][0] - 1, *convs[widest][1:])
            elif strided:
                i = strided[0]
                convs[i] = (convs[i][0], convs[i][1], 2, *convs[i][3:])
            elif len(convs) > 1:
                convs.pop()
            elif hidden:
                hidden = 0
            else:  # one channel, one block: make it strided
                convs[0] = (1, convs[0][1], 2, 0, convs[0][4], True)

    return build()


def property_examples(ci_examples: int) -> int:
    """The example count of a property test: ``ci_examples`` under the ``default``, ``ci``
    and ``dev`` hypothesis profiles; under any other loaded profile (``soak``,
    ``thorough``) that profile's ``max_examples``, so that ``--hypothesis-profile=soak``
    with ``BOUNDKIT_EXAMPLES=10000`` runs 10,000 examples although the test's own
    ``@settings(max_examples=property_examples(...))`` would otherwise win over the profile.
    """
    from hypothesis import settings

    profile = getattr(settings, "_current_profile", None)
    if profile in (None, "default", "ci", "dev"):
        return ci_examples
    return int(settings.default.max_examples)


def random_inputs(model: nn.Module, n: int, seed: int) -> torch.Tensor:
    """``n`` inputs in [0, 1] of the model's ``boundkit_input_shape``, deterministic in
    ``seed`` (the plain-test counterpart of :func:`inputs_for`)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.rand((n, *model.boundkit_input_shape), generator=gen)


def assert_crown_intervals_contain_samples(model: nn.Module, x: torch.Tensor,
                                           eps: torch.Tensor, *, samples: int = 500,
                                           seed: int = 2) -> None:
    """Every node's ``crown`` interval over the ball of radius ``eps[i]`` around ``x[i]``
    (box [0, 1]) contains the node's value at ``samples`` points on the sphere (clamped into
    the box) around each sample; ``AssertionError`` names the first node where one is
    outside."""
    from boundkit.bounds.crown import CrownRun, plan_crown
    from boundkit.bounds.engine import graph_for

    x = x.double()
    g = graph_for(model, x, None)
    ctx = CrownRun(g, plan_crown(g), x, (0.0, 1.0)).intervals(eps.double())
    gen = torch.Generator().manual_seed(seed)
    for i in range(x.shape[0]):
        d = torch.randn(samples, *x.shape[1:], generator=gen, dtype=torch.float64)
        d = d / d.flatten(1).norm(dim=1).view(-1, *([1] * (x.dim() - 1))) * eps[i]
        acts = g.activations((x[i : i + 1] + d).clamp(0, 1))
        for n in g.upstream():
            iv = ctx.intervals[n.name]
            inside = (acts[n.name] >= iv.lo[i]) & (acts[n.name] <= iv.hi[i])
            assert bool(inside.all()), f"sample {i}: a value outside the interval of {n.name}"


def inputs_for(
    model: nn.Module, *, n: tuple[int, int] = (1, 4), input_shape: Sequence[int] | None = None
) -> Any:
    """Hypothesis strategy: a batch ``[N, *input_shape]`` of inputs in [0, 1] for ``model``
    (its ``boundkit_input_shape`` unless ``input_shape`` is given)."""
    from hypothesis import strategies as st

    shape = tuple(input_shape or getattr(model, "boundkit_input_shape", ()))
    if not shape:
        raise ValueError("pass input_shape= for a model not built by boundkit.testing")

    @st.composite
    def build(draw: Any) -> torch.Tensor:
        count = draw(st.integers(*n))
        seed = draw(st.integers(0, 2**31 - 1))
        gen = torch.Generator().manual_seed(seed)
        return torch.rand((count, *shape), generator=gen)

    return build()


# ----------------------------------------------------------------------------- search
class _Best:
    """The smallest adversarial points found so far per sample, each shrunk towards ``x``
    by a bisection and re-verified in float64 before it is kept."""

    def __init__(self, m64: nn.Module, x: torch.Tensor, label: torch.Tensor) -> None:
        from boundkit.attacks.base import Misclassification

        self.m64, self.x, self.crit = m64, x, Misclassification(label)
        self.point = x.clone()
        self.norm = torch.full((x.shape[0],), math.inf, dtype=torch.float64)

    def keep(self, cand: torch.Tensor) -> None:
        from boundkit.attacks.base import boundary_bisection

        with torch.no_grad():
            cand = boundary_bisection(self.m64, self.x, cand, self.crit, steps=40)
            adv = self.crit.is_adversarial(self.m64(cand))
        nrm = (cand - self.x).flatten(1).norm(dim=1)
        better = adv & (nrm < self.norm)
        self.point = torch.where(better.view((-1,) + (1,) * (self.x.dim() - 1)), cand,
                                 self.point)
        self.norm = torch.where(better, nrm, self.norm)


def _linearised_line_search(m64: nn.Module, x: torch.Tensor, label: torch.Tensor,
                            best: _Best, clip: Callable[[torch.Tensor], torch.Tensor]
                            ) -> torch.Tensor:
    """Points along the linearised direction to each of the (up to 9) most likely other
    classes, at 1, 1.05, 1.5, 3 and 10 times the linearised distance, offered to ``best``;
    returns the smallest linearised distance per sample."""
    shape = (-1,) + (1,) * (x.dim() - 1)
    z = x.clone().requires_grad_(True)
    logits = m64(z)
    others = logits.detach().clone()
    others.scatter_(1, label[:, None], -math.inf)
    k_top = min(9, logits.shape[1] - 1)
    top = others.topk(k_top, dim=1).indices
    own = logits.gather(1, label[:, None]).squeeze(1)
    d_lin = torch.full((x.shape[0],), math.inf, dtype=torch.float64)
    for r in range(k_top):
        gap = own - logits.gather(1, top[:, r : r + 1]).squeeze(1)
        (g,) = torch.autograd.grad(gap.sum(), z, retain_graph=r < k_top - 1)
        gn = g.flatten(1).norm(dim=1).clamp_min(1e-300)
        dist = (gap.detach() / gn).clamp_min(1e-8)
        d_lin = torch.minimum(d_lin, dist)
        direction = -g / gn.view(shape)
        for f in (1.0, 1.05, 1.5, 3.0, 10.0):
            best.keep(clip(x + (f * dist).view(shape) * direction))
    return d_lin


def adversarial_search(
    model: nn.Module,
    x: torch.Tensor,
    *,
    steps: int = 100,
    box: tuple[float, float] | None = None,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Search minimal-norm adversarial examples in float64 (batched over samples).

    A float64 copy of ``model`` is used throughout, so every returned point changes the
    float64 prediction (the one certificates speak about). Two searches per sample, each
    ending with a bisection along ``x -> x_adv``: (1) a line search along the
    linearised direction to the nearest competing class; (2) ``steps`` iterations of
    DDN-style normalised gradient descent on the logit margin with an adaptive radius.
    ``box`` clips the points (None: unconstrained, like the certificates).

    Returns ``(x_adv, norm)``: float64 ``[N, ...]`` and ``[N]`` (``inf`` where nothing was
    found; ``x_adv`` is then ``x``).
    """
    m64 = copy.deepcopy(model).double().eval()
    x = x.detach().double()
    shape = (-1,) + (1,) * (x.dim() - 1)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        label = m64(x).argmax(1)
    best = _Best(m64, x, label)

    def clip(z: torch.Tensor) -> torch.Tensor:
        return z if box is None else z.clamp(box[0], box[1])

    d_lin = _linearised_line_search(m64, x, label, best, clip)
    # DDN-style descent with an adaptive radius
    eps = 2.0 * d_lin
    alpha = 0.3 * d_lin
    delta = 1e-3 * d_lin.view(shape) * torch.randn(x.shape, generator=gen, dtype=torch.float64)
    for t in range(steps):
        delta.requires_grad_(True)
        marg = best.crit.margin(m64(clip(x + delta)))
        (g,) = torch.autograd.grad(marg.sum(), delta)
        with torch.no_grad():
            adv = marg < 0
            if adv.any():
                best.keep(clip(x + delta.detach()))
            eps = torch.where(adv, eps * 0.93, eps * 1.07)
            eps = torch.minimum(eps, torch.where(torch.isfinite(best.norm), best.norm, eps))
            gn = g.flatten(1).norm(dim=1).clamp_min(1e-300)
            step = alpha * (0.5 * (1 + math.cos(math.pi * t / max(steps, 1))) + 0.01)
            delta = delta.detach() - (step / gn).view(shape) * g
            dn = delta.flatten(1).norm(dim=1).clamp_min(1e-300)
            delta = delta * (eps / dn).clamp(max=1.0).view(shape)
    best.keep(clip(x + delta.detach()))
    return best.point, best.norm


# ----------------------------------------------------------------------------- checks
def assert_sound(
    model: nn.Module,
    x: torch.Tensor,
    method: str = "sound",
    *,
    attack_steps: int = 100,
    exact: bool = True,
    use_attacks: bool = True,
    rtol: float = 1e-9,
    box: tuple[float, float] | None | Literal["default"] = "default",
) -> dict[str, Any]:
    """Assert that ``bk.certify(model, x, method, box=box)`` never exceeds a true upper bound.

    Upper bounds: the exact radius (when ``exact`` and the model is a small ReLU network
    the exact oracle accepts), :func:`adversarial_search` in float64, and (``use_attacks``)
    ``bk.attack(model, x, "best")`` re-verified in float64, all restricted to the same
    ``box`` as the certificate (``"default"``: the method's own default, as
    ``bk.certify(model, x, method)`` uses it; ``None``: the plain ball). A certificate with a
    box promises nothing outside it, so its upper bounds must stay inside it too. A radius
    above any of them (by more than ``rtol``, relative) raises ``AssertionError`` naming the
    sample, the method, the upper bound and the layer whose bound failed.

    Returns ``{"certificate", "upper", "source"}``: the certificate, the smallest upper
    bound per sample and where it came from.
    """
    from boundkit.bounds.engine import certify
    from boundkit.bounds.method import get_method
    from boundkit.crosschecking import recheck_float64, recheck_own_dtype
    from boundkit.errors import BoundkitError

    meth = get_method(method)
    if box == "default":
        box = meth.default_box
    # a method without a box certifies the plain ball, whose radius is at most the boxed one
    takes_box = "box" in meth.options()
    cert = certify(model, x, method, **({"box": box} if takes_box else {}))
    label = cert.label.cpu()
    n = x.shape[0]
    upper = torch.full((n,), math.inf, dtype=torch.float64)
    points = x.detach().double().clone()
    source = [""] * n

    def offer(cand: torch.Tensor, norm: torch.Tensor, ok: torch.Tensor, name: str) -> None:
        nonlocal upper, points
        better = ok & (norm < upper)
        upper = torch.where(better, norm, upper)
        points = torch.where(better.view((-1,) + (1,) * (x.dim() - 1)), cand.double(), points)
        for i in better.nonzero().flatten().tolist():
            source[i] = name

    if exact:
        try:
            from boundkit.exact import exact_radius

            ex = exact_radius(model, x.detach(), box=box, return_details=True)
            wit = x.detach().double() + torch.nan_to_num(ex.witness.cpu(), nan=0.0)
            # the exact radius itself (attained up to ties) is the bound; the witness
            # (strictly adversarial, norm <= (1 + 1e-6) radius) is the point
            ok = torch.isfinite(ex.radius.cpu())
            offer(wit, ex.radius.cpu().double(), ok, "exact")
        except (BoundkitError, ValueError, NotImplementedError):
            pass
    xa, nrm = adversarial_search(model, x, steps=attack_steps, box=box)
    offer(xa, nrm, torch.isfinite(nrm), "search")
    if use_attacks:
        try:
            from boundkit.attacks import attack

            res = attack(model, x.detach(), "best", budget=attack_steps, box=box)
            adv, nrm64 = recheck_float64(model, x.detach(), res.x_adv, label)
            # adversarial in the model's own dtype or in float64, re-checked
            adv = (adv | recheck_own_dtype(model, x.detach(), res.x_adv)) & res.success.cpu()
            offer(res.x_adv.detach().cpu(), nrm64, adv, "attack")
        except (BoundkitError, ValueError, NotImplementedError):
            pass
    radius = cert.radius.cpu().double()
    bad = (radius > upper * (1 + rtol)).nonzero().flatten()
    if bad.numel():
        raise AssertionError(_violations(model, x, cert, method, bad, upper, points, source))
    return {"certificate": cert, "upper": upper, "source": source}


def _violations(model: nn.Module, x: torch.Tensor, cert: Any, method: str, bad: torch.Tensor,
                upper: torch.Tensor, points: torch.Tensor, source: list[str]) -> str:
    """The message of :func:`assert_sound` for the samples ``bad``: each sample's radius,
    the upper bound it exceeds and the layer whose bound fails at the adversarial point."""
    from boundkit.bounds.engine import graph_for
    from boundkit.crosschecking import locate_violation

    try:
        graph = graph_for(model, x, None)
        sub = copy.copy(cert)
        sub.trace = {k: v[bad] for k, v in cert.trace.items()}
        layers, ops, _ = locate_violation(graph, sub, x.detach()[bad].cpu(), points[bad])
    except Exception:  # the report must not hide the violation itself
        layers, ops = ["?"] * bad.numel(), [""] * bad.numel()
    radius = cert.radius.cpu().double()
    lines = [
        f"sample {i}, method {method!r}: certified radius {float(radius[i]):.6g} > "
        f"{source[i]} upper bound {float(upper[i]):.6g}; bound fails at layer "
        f"{layers[j]!r} ({ops[j]})"
        for j, i in enumerate(bad.tolist())
    ]
    return "certificate is not sound:\n" + "\n".join(lines)


def check_rule_soundness(
    rule_node_type: str | type[nn.Module],
    method: str = "sound",
    *,
    module_factory: Callable[[], nn.Module] | None = None,
    n_networks: int = 8,
    n_inputs: int = 4,
    seed: int = 0,
    attack_steps: int = 60,
    perturbations: int = 64,
) -> None:
    """Test a rule registered for your layer (``bk.register_rule(rule_node_type, method,
    rule)``).

    ``rule_node_type`` is the module class (or op name, with ``module_factory``).
    ``module_factory`` builds an instance (default: the class without arguments).

    1. Direct check (``SoundRule``): on random small networks containing the layer, the
       rule's modulus ``omega`` is compared with the layer itself on random perturbations
       ``q`` of its input at several scales: ``||h(z + q) - h(z)|| <= omega(||q||)``.
    2. End to end: :func:`assert_sound` on each network with random inputs.

    Raises ``AssertionError`` with the network seed, the scale and the layer on failure.
    """
    from boundkit.bounds.engine import graph_for
    from boundkit.bounds.registry import SoundRule, custom_module_ops, get_rule

    if module_factory is None:
        if not isinstance(rule_node_type, type):
            raise ValueError("pass module_factory= when rule_node_type is an op name")
        module_factory = rule_node_type
    if isinstance(rule_node_type, type):
        op = custom_module_ops().get(rule_node_type, rule_node_type.__name__.lower())
    else:
        op = rule_node_type
    rule = get_rule(op, method)
    if rule is None:
        raise AssertionError(f"no rule registered for ({op!r}, {method!r})")
    gen = torch.Generator().manual_seed(seed)
    for k in range(n_networks):
        net_seed = seed * 1000 + k
        model = random_network(net_seed, layer_kinds=("linear",), depth=2, width=6,
                               scales=[0.5 + 3.0 * k / max(n_networks - 1, 1)],
                               extra=module_factory)
        x = torch.rand((n_inputs, *model.boundkit_input_shape), generator=gen)
        graph = graph_for(model, x, None)
        nodes = [nd for nd in graph.nodes if nd.op == op]
        if not nodes:
            raise AssertionError(f"the network holds a {module_factory().__class__.__name__} "
                                 f"but no node was captured with op {op!r}")
        if isinstance(rule, SoundRule):
            for node in nodes:
                src = node.inputs[0]
                acts = graph.activations(x, rule.needs(node, graph) | {src, node.name})
                omega = rule.modulus(node, graph, acts)
                z = acts[src]
                layer = copy.deepcopy(node.module).double() if node.module is not None \
                    else copy.deepcopy(module_factory()).double()
                for t in (1e-4, 1e-2, 1.0, 10.0):
                    q = torch.randn((perturbations, *z.shape), generator=gen,
                                    dtype=torch.float64)
                    q = q * (t / q.flatten(2).norm(dim=2)).view(perturbations, z.shape[0],
                                                                 *([1] * (z.dim() - 1)))
                    with torch.no_grad():
                        out = layer((z[None] + q).reshape(-1, *z.shape[1:]))
                        moved = (out.reshape(perturbations, z.shape[0], -1)
                                 - layer(z).reshape(1, z.shape[0], -1)).norm(dim=2)
                    bound = omega(torch.full((z.shape[0],), t, dtype=torch.float64))
                    worst = (moved / bound[None].clamp_min(1e-300)).max()
                    if bool((moved > bound[None] * (1 + 1e-9) + 1e-300).any()):
                        raise AssertionError(
                            f"rule ({op!r}, {method!r}) at node {node.name!r} of network seed "
                            f"{net_seed}: ||h(z+q) - h(z)|| exceeds omega(||q||) at "
                            f"||q|| = {t:g} (ratio {float(worst):.4g})"
                        )
        assert_sound(model, x, method, attack_steps=attack_steps, use_attacks=False,
                     exact=False)


# ----------------------------------------------------------------------------- compositions
#: what :class:`ComposedNet` can do at an image stage and at a vector stage
IMAGE_STEPS = (
    "conv", "relu", "tanh", "sigmoid", "softplus", "leaky_relu", "avgpool", "maxpool",
    "batchnorm", "residual", "add_self", "cat_self", "cat_branch", "shift", "negate",
    "dropout", "broadcast_add",
)
VECTOR_STEPS = (
    "linear", "relu", "tanh", "sigmoid", "softplus", "leaky_relu", "residual", "add_self",
    "cat_self", "shift", "negate", "dropout", "sub",
)


def _activation_module(kind: str, form: int, p: dict) -> nn.Module:
    if kind == "relu":
        return nn.ReLU(inplace=bool(form % 2))
    if kind == "softplus":
        return nn.Softplus(p["beta"], p["threshold"])
    if kind == "leaky_relu":
        return nn.LeakyReLU(p["slope"])
    return {"tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "dropout": nn.Dropout}[kind]()


class ComposedNet(nn.Module):
    """A classifier built from a list of steps, each calling a supported operation in one of
    its forms (module, ``torch.nn.functional``, ``torch.*``, tensor method, in place) with
    keyword or positional arguments: the raw material of capture red-teaming.

    ``steps`` is a list of ``(kind, form, params)``; ``forward`` reads it in order (an image
    stage on ``[N, C, H, W]``, one flatten, a vector stage, a final linear layer).
    """

    def __init__(self, in_shape: tuple[int, int, int], steps: list[tuple[str, int, dict]],
                 num_classes: int, seed: int) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.boundkit_input_shape = in_shape
        self.steps = steps
        self.layers = nn.ModuleList()
        c, h, w = in_shape
        feat: int | None = None
        for kind, form, p in steps:
            mod: nn.Module = nn.Identity()
            if kind == "flatten":
                feat = c * h * w
            elif feat is None:  # image stage
                if kind == "conv":
                    out = p["channels"]
                    mod = nn.Conv2d(c, out, p["k"], padding=p["k"] // 2)
                    c = out
                elif kind == "cat_self" or kind == "cat_branch":
                    if kind == "cat_branch":
                        mod = nn.Conv2d(c, c, 1)
                    c *= 2
                elif kind in ("avgpool", "maxpool") and min(h, w) >= 2:
                    h, w = h // 2, w // 2
                elif kind == "avgpool" or kind == "maxpool":
                    p["skip"] = True
                elif kind == "batchnorm":
                    mod = nn.BatchNorm2d(c)
                elif kind == "residual":
                    mod = nn.Conv2d(c, c, 3, padding=1)
                elif kind == "broadcast_add":
                    mod = nn.Conv2d(c, 1, 1)
            else:  # vector stage
                if kind == "linear":
                    mod = nn.Linear(feat, p["width"])
                    feat = p["width"]
                elif kind == "residual":
                    mod = nn.Linear(feat, feat)
                elif kind == "cat_self":
                    feat *= 2
            if kind in ("relu", "tanh", "sigmoid", "softplus", "leaky_relu", "dropout"):
                mod = _activation_module(kind, form, p)
            elif kind == "flatten":
                mod = nn.Flatten()
            elif kind == "avgpool":
                mod = nn.AvgPool2d(2, count_include_pad=p["count_include_pad"])
            elif kind == "maxpool":
                mod = nn.MaxPool2d(2)
            if isinstance(mod, nn.BatchNorm2d):
                mod.running_mean.copy_(torch.randn(c, generator=gen) * 0.3)
                mod.running_var.copy_(torch.rand(c, generator=gen) + 0.5)
            for prm in mod.parameters():
                with torch.no_grad():
                    prm.copy_(torch.randn(prm.shape, generator=gen) * p.get("scale", 1.0)
                              / math.sqrt(max(prm[0].numel(), 1)))
            self.layers.append(mod)
        self.head = nn.Linear(feat if feat is not None else c * h * w, num_classes)
        with torch.no_grad():
            for prm in self.head.parameters():
                prm.copy_(torch.randn(prm.shape, generator=gen) / math.sqrt(prm[0].numel()))
        self.flat_at_end = feat is None
        self.eval()

    def _act(self, kind: str, form: int, p: dict, mod: nn.Module, h: torch.Tensor) -> torch.Tensor:
        F = nn.functional
        b, t, s = p.get("beta"), p.get("threshold"), p.get("slope")
        forms: dict[str, list[Callable[[], torch.Tensor]]] = {
            # in-place forms act on a copy, so that autograd (attacks) can still differentiate
            "relu": [lambda: mod(h.clone() if mod.inplace else h), lambda: F.relu(h),
                     lambda: torch.relu(h), lambda: h.relu(), lambda: F.relu(h.clone(), True),
                     lambda: F.relu(h.clone(), inplace=True)],
            "tanh": [lambda: mod(h), lambda: torch.tanh(h), lambda: h.tanh()],
            "sigmoid": [lambda: mod(h), lambda: torch.sigmoid(h), lambda: h.sigmoid()],
            "softplus": [lambda: mod(h), lambda: F.softplus(h, b, t),
                         lambda: F.softplus(h, beta=b, threshold=t),
                         lambda: F.softplus(h, b, threshold=t)],
            "leaky_relu": [lambda: mod(h), lambda: F.leaky_relu(h, s),
                           lambda: F.leaky_relu(h, negative_slope=s)],
        }
        options = forms[kind]
        return options[form % len(options)]()

    def _step(self, kind: str, form: int, p: dict, mod: nn.Module, g: torch.Tensor) -> torch.Tensor:
        F = nn.functional
        a, c, cip = p.get("alpha", 1.0), p.get("c", 0.0), p.get("count_include_pad", True)
        forms: dict[str, list[Callable[[], torch.Tensor]]] = {
            "flatten": [lambda: torch.flatten(g, 1), lambda: g.view(g.size(0), -1),
                        lambda: g.reshape(g.shape[0], -1), lambda: mod(g),
                        lambda: g.flatten(start_dim=1)],
            "conv": [lambda: mod(g)], "linear": [lambda: mod(g)],
            "batchnorm": [lambda: mod(g)],
            "maxpool": [lambda: F.max_pool2d(g, 2), lambda: F.max_pool2d(g, 2, 2),
                        lambda: F.max_pool2d(g, kernel_size=2), lambda: mod(g)],
            "avgpool": [lambda: F.avg_pool2d(g, 2, 2, 0, False, cip),
                        lambda: F.avg_pool2d(g, 2, count_include_pad=cip), lambda: mod(g),
                        lambda: F.avg_pool2d(g, kernel_size=2, stride=2, padding=0,
                                             ceil_mode=False, count_include_pad=cip)],
            "residual": [lambda: g + mod(g), lambda: torch.add(g, mod(g), alpha=a),
                         lambda: g.add(mod(g), alpha=a), lambda: torch.sub(g, mod(g), alpha=a),
                         lambda: g - mod(g)],
            "add_self": [lambda: g + g, lambda: torch.add(g, g, alpha=a), lambda: g.add(g),
                         lambda: torch.sub(g, g, alpha=-1.0)],
            "cat_self": [lambda: torch.cat([g, g], 1), lambda: torch.cat((g, g), dim=1),
                         lambda: torch.concat([g, g], dim=1)],
            "cat_branch": [lambda: torch.cat([g, mod(g)], 1),
                           lambda: torch.cat([F.relu(mod(g)), g], dim=1)],
            "broadcast_add": [lambda: g + mod(g), lambda: mod(g) + g,
                              lambda: torch.add(g, mod(g), alpha=a)],
            "shift": [lambda: g + c, lambda: c + g, lambda: torch.add(g, c), lambda: g - c],
            "negate": [lambda: c - g],
            "dropout": [lambda: F.dropout(g, 0.5, False),
                        lambda: F.dropout(g, p=0.3, training=False), lambda: mod(g),
                        lambda: F.dropout(g, 0.0)],
            "sub": [lambda: g - torch.tanh(g), lambda: torch.sub(g, torch.tanh(g), alpha=a)],
        }
        if kind in forms:
            options = forms[kind]
            return options[form % len(options)]()
        return self._act(kind, form, p, mod, g)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.clone()  # in-place forms must not write into the caller's tensor
        for (kind, form, p), mod in zip(self.steps, self.layers):
            if kind in ("avgpool", "maxpool") and p.get("skip"):
                continue
            h = self._step(kind, form, p, mod, h)
        if self.flat_at_end:
            h = h.flatten(1)
        return self.head(h)


def composed_networks(max_steps: int = 6) -> Any:
    """Hypothesis strategy: random :class:`ComposedNet` classifiers on ``[N, 2, 6, 6]``,
    composing supported operations in all their calling forms."""
    from hypothesis import strategies as st

    @st.composite
    def build(draw: Any) -> ComposedNet:
        seed = draw(st.integers(0, 2**31 - 1))
        n_img = draw(st.integers(0, max_steps // 2))
        n_vec = draw(st.integers(0, max_steps - n_img))

        def step(kinds: tuple[str, ...]) -> tuple[str, int, dict]:
            kind = draw(st.sampled_from(kinds))
            params = {
                "channels": draw(st.integers(1, 3)), "k": draw(st.sampled_from([1, 3])),
                "width": draw(st.integers(2, 8)),
                "scale": math.exp(draw(st.floats(math.log(0.3), math.log(3.0)))),
                "beta": draw(st.sampled_from([0.5, 1.0, 3.0])),
                "threshold": draw(st.sampled_from([1.0, 5.0, 20.0])),
                "slope": draw(st.sampled_from([0.01, 0.2, -0.5, 1.5])),
                "alpha": draw(st.sampled_from([1.0, 3.0, -2.0, 0.5])),
                "c": draw(st.sampled_from([0.5, -1.0, 2.0])),
                "count_include_pad": draw(st.booleans()),
            }
            return kind, draw(st.integers(0, 11)), params

        steps = [step(IMAGE_STEPS) for _ in range(n_img)]
        steps.append(("flatten", draw(st.integers(0, 11)), {}))
        steps += [step(VECTOR_STEPS) for _ in range(n_vec)]
        return ComposedNet((2, 6, 6), steps, draw(st.integers(2, 4)), seed)

    return build()


# ----------------------------------------------------------------------------- relaxations
#: the ReLU-like ops whose unstable neurons :func:`unstable_neurons` counts
_PIECEWISE_OPS = ("relu", "leaky_relu")


def unstable_neurons(model: nn.Module, x: torch.Tensor, eps: torch.Tensor,
                     box: tuple[float, float] | None = (0.0, 1.0)) -> torch.Tensor:
    """Per sample, the number of ReLU / LeakyReLU neurons whose ``crown`` input interval over
    the ball of radius ``eps[i]`` around ``x[i]`` (within ``box``) straddles 0: the neurons
    a linear relaxation has to approximate (0 everywhere: the property was trivial)."""
    from boundkit.bounds.crown import CrownRun, plan_crown
    from boundkit.bounds.engine import graph_for

    x = x.detach().double()
    g = graph_for(model, x, None)
    nodes = [n for n in g.nodes if n.op in _PIECEWISE_OPS]
    count = torch.zeros(x.shape[0], dtype=torch.long)
    if not nodes:
        return count
    eps = torch.where(torch.isfinite(eps), eps, torch.zeros_like(eps)).double()
    ctx = CrownRun(g, plan_crown(g), x, box).intervals(eps)
    for n in nodes:
        iv = ctx.intervals.get(n.inputs[0])
        if iv is not None:
            count += ((iv.lo < 0) & (iv.hi > 0)).flatten(1).sum(1)
    return count


def describe_case(model: nn.Module, x: torch.Tensor, **extra: Any) -> str:
    """A reproducer: the model (its repr, its steps for a :class:`ComposedNet`, every
    parameter and buffer to 17 digits) and the inputs, plus ``extra`` (e.g. the box)."""
    with torch.no_grad():
        state = {k: v.double().tolist() if v.is_floating_point() else v.tolist()
                 for k, v in model.state_dict().items()}
    parts = [f"model = {model!r}"]
    if isinstance(model, ComposedNet):
        parts.append(f"ComposedNet(in_shape={model.boundkit_input_shape}, "
                     f"steps={model.steps!r})")
    parts += [f"state_dict = {state!r}", f"x = {x.detach().double().tolist()!r}",
              *[f"{k} = {v!r}" for k, v in extra.items()]]
    return "\n".join(parts)


def _radii(model: nn.Module, x: torch.Tensor, box: tuple[float, float] | None,
           alpha_iterations: int) -> dict[str, torch.Tensor]:
    return {
        "sound": _certify(model, x, "sound").radius,
        "crown": _certify(model, x, "crown", box=box).radius,
        "alpha": _certify(model, x, "alpha", box=box, iterations=alpha_iterations).radius,
    }


def _certify(model: nn.Module, x: torch.Tensor, method: str, **options: Any) -> Any:
    """``boundkit.certify`` (imported late: this module is imported by the package)."""
    from boundkit import certify

    return certify(model, x, method, **options)


def check_relaxation_order(model: nn.Module, x: torch.Tensor, *,
                           alpha_iterations: int = 5,
                           radii: dict[str, torch.Tensor] | None = None) -> dict[str, Any]:
    """Property: ``alpha >= crown >= sound`` for every sample (box [0, 1]).

    ``radii`` (from :func:`check_relaxation_below_exact` or
    :func:`check_no_adversarial_in_relaxation_ball`) avoids certifying again. Returns the
    radii; raises ``AssertionError`` with a reproducer (:func:`describe_case`) otherwise.
    """
    r = radii if radii is not None else _radii(model, x, (0.0, 1.0), alpha_iterations)
    bad = (r["crown"] < r["sound"]) | (r["alpha"] < r["crown"])
    if bool(bad.any()):
        raise AssertionError(
            f"alpha >= crown >= sound fails for samples {bad.nonzero().flatten().tolist()}: "
            f"sound {r['sound'].tolist()} crown {r['crown'].tolist()} "
            f"alpha {r['alpha'].tolist()}\n" + describe_case(model, x))
    return r


def check_relaxation_below_exact(model: nn.Module, x: torch.Tensor,
                                 box: tuple[float, float] | None, *,
                                 alpha_iterations: int = 5,
                                 time_limit: float = 5.0) -> dict[str, Any]:
    """Property: ``crown`` and ``alpha`` never exceed :func:`boundkit.exact_radius` (same
    ``box``) on a network the exact oracle accepts.

    A sample whose exact search runs past ``time_limit`` seconds gets an exact radius NaN
    ("unknown") and is not compared; the returned dict counts them (``unknown``) along with
    the radii (``sound``, ``crown``, ``alpha``, ``exact``). Raises ``AssertionError`` with a
    reproducer on a violation.
    """
    from boundkit import exact_radius

    r = _radii(model, x, box, alpha_iterations)
    exact = exact_radius(model, x, box=box, time_limit=time_limit, on_budget="nan")
    known = ~torch.isnan(exact)
    for method in ("crown", "alpha"):
        bad = known & (r[method] > exact * (1 + 1e-9))
        if bool(bad.any()):
            raise AssertionError(
                f"{method} radius {r[method].tolist()} > exact radius {exact.tolist()} "
                f"(samples {bad.nonzero().flatten().tolist()})\n"
                + describe_case(model, x, box=box))
    return {**r, "exact": exact, "unknown": int((~known).sum())}


def check_no_adversarial_in_relaxation_ball(model: nn.Module, x: torch.Tensor, *,
                                            alpha_iterations: int = 5, steps: int = 40,
                                            seed: int = 0) -> dict[str, Any] | None:
    """Property: no adversarial example found by :func:`adversarial_search` (float64, box
    [0, 1]) lies inside the ``crown`` or ``alpha`` ball (box [0, 1]).

    Returns None when capture refuses the model (``UnsupportedLayerError``), else the radii
    and the adversarial distances (``adversarial``). Raises ``AssertionError`` with a
    reproducer on a violation.
    """
    from boundkit.errors import UnsupportedLayerError

    try:
        r = _radii(model, x, (0.0, 1.0), alpha_iterations)
    except UnsupportedLayerError:
        return None
    _, norm = adversarial_search(model, x, steps=steps, box=(0.0, 1.0), seed=seed)
    for method in ("crown", "alpha"):
        bad = r[method] > norm * (1 + 1e-9)
        if bool(bad.any()):
            raise AssertionError(
                f"{method} radius {r[method].tolist()} > adversarial distance "
                f"{norm.tolist()} (samples {bad.nonzero().flatten().tolist()}, search seed "
                f"{seed}, steps {steps})\n" + describe_case(model, x))
    return {**r, "adversarial": norm}
