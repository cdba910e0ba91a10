r"""Convolution layers (``nn.Conv2d``).

**Sound rule** (``docs/theory/convolution.md``): an upper bound on the operator norm of the
layer as torch computes it (zero padding, stride, dilation, groups), computed once per
model:

1. *Polyphase*: with stride :math:`s`, tap offset :math:`d\,a=s\,q+\rho` splits the padded
   input into :math:`s_hs_w` phase images; the strided convolution is a stride-1 valid
   correlation of the phase stack (an isometric re-arrangement of the zero-padded input)
   with a kernel :math:`K\in\mathbb R^{O\times(Cs_hs_w)\times Q_h\times Q_w}`.
2. *Circulant embedding*: on an :math:`N_h\times N_w` torus with :math:`N\ge M` (the phase
   image size) the valid outputs are a subset of the circular correlation's outputs, so
   :math:`\|\mathrm{conv}\|\le\|\mathrm{Circ}_N(K)\|`.
3. *Fourier*: a multi-channel circulant is block-diagonalised by the 2-D DFT (Sedghi, Gupta
   & Long 2019, Thm 6),
   :math:`\|\mathrm{Circ}_N(K)\|=\max_{f}\|\hat K(f)\|_2`, the largest
   singular value of the :math:`O\times Cs_hs_w` matrix of kernel Fourier coefficients.

Every admissible :math:`N` gives a valid bound; the minimum over a few is taken. For small
layers (see :data:`DENSE_LIMIT`) the exact spectral norm of the explicit matrix is used
when it is smaller. Rounding in the FFT is covered by an explicit additive margin. Power
iteration on the true layer (:func:`conv_norm_lower_bound`) approaches the norm from below
and is used only to report how tight the upper bound is.

**peck2017** (thesis Theorem 5.1): :math:`\kappa_{in}=\kappa_{out}/\|W\|_F`. It relies on
Lemma A.4, :math:`\|W\star R\|_F\le\|W\|_F\|R\|_F`, which is false when windows overlap
(``docs/theory/peck2017.md``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from boundkit.bounds.linear import dot_model_rounding, spectral_norm
from boundkit.bounds.numerics import UNIT_ROUNDOFF, gamma, inflate
from boundkit.bounds.registry import BackwardRule, LipschitzRule, register_rule
from boundkit.bounds.relaxation import AffineRelaxation
from boundkit.errors import UnsupportedLayerError
from boundkit.graph.arithmetic import Arithmetic
from boundkit.graph.graph import Graph, Node

#: layers whose explicit matrix has at most this many entries get its exact norm
DENSE_LIMIT = 20_000_000
#: ... and whose input has at most this many entries (the Gram matrix is its square)
DENSE_GRAM = 1024


def polyphase_kernel(
    weight: torch.Tensor, stride: tuple[int, int], dilation: tuple[int, int]
) -> torch.Tensor:
    """Kernel of the stride-1 correlation equivalent to a strided, dilated one.

    ``weight`` [O, C, kh, kw] -> [O, C * sh * sw, Qh, Qw] with ``Q = d (k - 1) // s + 1``;
    tap ``(a, b)`` lands on phase ``(d a % s, d b % s)`` at offset ``(d a // s, d b // s)``.
    """
    o, c, kh, kw = weight.shape
    sh, sw = stride
    dh, dw = dilation
    qh, qw = dh * (kh - 1) // sh + 1, dw * (kw - 1) // sw + 1
    k = weight.new_zeros(o, c, sh, sw, qh, qw)
    for a in range(kh):
        for b in range(kw):
            ua, ub = dh * a, dw * b
            k[:, :, ua % sh, ub % sw, ua // sh, ub // sw] += weight[:, :, a, b]
    return k.reshape(o, c * sh * sw, qh, qw)


def _circulant_norm(k: torch.Tensor, n: tuple[int, int]) -> float:
    """max over the N_h x N_w DFT frequencies of the spectral norm of K-hat(f), plus a margin
    for the FFT's rounding (Higham 2002, Thm 24.2: error <= c log2(N) u sum|K|)."""
    o, c, qh, qw = k.shape
    kf = torch.fft.fft2(k.to(torch.float64), s=n)  # [O, C, Nh, Nw] complex128
    mats = kf.permute(2, 3, 0, 1).reshape(-1, o, c)
    norms = torch.linalg.matrix_norm(mats, ord=2)
    worst = float(norms.max())
    fft_err = 5.0 * math.log2(max(n[0] * n[1], 2)) * UNIT_ROUNDOFF
    margin = fft_err * float(k.abs().sum(dim=(2, 3)).norm())  # Frobenius of entry bounds
    return float(inflate(worst)) + margin


def conv_norm_upper_bound(
    weight: torch.Tensor,
    in_hw: tuple[int, int],
    stride: tuple[int, int] = (1, 1),
    padding: tuple[int, int] = (0, 0),
    dilation: tuple[int, int] = (1, 1),
    groups: int = 1,
) -> float:
    """Sound upper bound on the L2 operator norm of ``F.conv2d(., weight, stride, padding,
    dilation, groups)`` on inputs of spatial size ``in_hw`` (bias excluded)."""
    weight = weight.to(torch.float64)
    o = weight.shape[0]
    if groups > 1:  # block-diagonal over groups: the norm is the largest block norm
        og = o // groups
        return max(
            conv_norm_upper_bound(weight[g * og : (g + 1) * og], in_hw, stride, padding, dilation)
            for g in range(groups)
        )
    c_in = weight.shape[1]
    out_numel = o * math.prod(
        (s + 2 * p - d * (k - 1) - 1) // st + 1
        for s, p, d, k, st in zip(in_hw, padding, dilation, weight.shape[2:], stride)
    )
    in_numel = c_in * in_hw[0] * in_hw[1]
    if in_numel <= DENSE_GRAM and in_numel * out_numel <= DENSE_LIMIT:
        # small input: the exact norm of the explicit matrix is cheap and the tightest bound
        n = c_in * in_hw[0] * in_hw[1]
        eye = torch.eye(n, dtype=torch.float64, device=weight.device).reshape(n, c_in, *in_hw)
        mat = F.conv2d(eye, weight, None, stride, padding, dilation).reshape(n, -1)
        fan_in = c_in * weight.shape[2] * weight.shape[3]
        # each entry of mat is a single weight (no rounding) or a sum of at most fan_in
        # products of weights with 0/1 entries: exact or within gamma(fan_in) relatively
        dense = spectral_norm(mat) + float(gamma(fan_in)) * float(mat.abs().norm())
    else:
        dense = math.inf
    k = polyphase_kernel(weight, stride, dilation)
    hp, wp = in_hw[0] + 2 * padding[0], in_hw[1] + 2 * padding[1]
    mh, mw = -(-hp // stride[0]), -(-wp // stride[1])
    qh, qw = k.shape[2], k.shape[3]
    sizes = {(max(mh, qh), max(mw, qw)), (mh + qh - 1, mw + qw - 1)}
    return min(dense, min(_circulant_norm(k, s) for s in sizes))


def conv_norm_lower_bound(
    weight: torch.Tensor,
    in_hw: tuple[int, int],
    stride: tuple[int, int] = (1, 1),
    padding: tuple[int, int] = (0, 0),
    dilation: tuple[int, int] = (1, 1),
    groups: int = 1,
    iters: int = 200,
    seed: int = 0,
) -> float:
    """Power iteration on the actual layer: a *lower* bound on its operator norm (the
    Rayleigh quotient of any vector), for reporting the tightness of the upper bound."""
    weight = weight.to(torch.float64)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    c = weight.shape[1] * groups
    v = torch.randn(1, c, *in_hw, generator=gen, dtype=torch.float64).to(weight.device)
    v /= v.norm()
    sigma = 0.0
    for _ in range(iters):
        y = F.conv2d(v, weight, None, stride, padding, dilation, groups)
        sigma = float(y.norm())
        back = torch.nn.grad.conv2d_input(v.shape, weight, y, stride, padding, dilation, groups)
        nb = back.norm()
        if nb == 0:
            return 0.0
        v = back / nb
    return sigma


def schur_bound_conv(weight: torch.Tensor) -> float:
    r"""Schur test :math:`\|B\|_2\le\sqrt{\|B\|_1\|B\|_\infty}` for the matrix of
    :math:`|W|`: a row (one output) sums :math:`\sum_{c,a,b}|w_{o,c,a,b}|`; a column (one
    input entry) meets each tap of each output channel at most once."""
    w = weight.abs().to(torch.float64)
    row = float(w.sum(dim=(1, 2, 3)).max())
    col = float(w.sum(dim=(0, 2, 3)).max())
    return float(inflate(math.sqrt(row * col)))


class ConvRule(LipschitzRule):
    """Sound: the FFT/polyphase upper bound on the layer's operator norm."""

    def compute_lipschitz(self, node: Node, graph: Graph) -> float:
        if node.attrs.get("padding_mode", "zeros") != "zeros":
            raise UnsupportedLayerError(
                node.name, node.op, "sound",
                f"padding_mode={node.attrs['padding_mode']!r}; only zero padding is proven",
            )
        a = node.attrs
        return conv_norm_upper_bound(
            node.params["weight"], node.in_shapes[0][1:], a["stride"], a["padding"],
            a["dilation"], a["groups"],
        )

    def rounding(
        self, node: Node, graph: Graph, in_norm: torch.Tensor, out_norm: torch.Tensor
    ) -> torch.Tensor:
        key = ("abs_norms", node.name)
        if key not in graph.cache:
            w = node.params["weight"]
            b = node.params.get("bias")
            absw = schur_bound_conv(w)
            spatial = math.prod(node.out_shape[1:])
            bnorm = float(b.norm()) * math.sqrt(spatial) if b is not None else 0.0
            fan_in = w.shape[1] * w.shape[2] * w.shape[3]
            graph.cache[key] = (absw, bnorm, float(gamma(fan_in + 1)))
        absw, bnorm, g = graph.cache[key]
        return g * (absw * in_norm + bnorm) * (1 + 1e-6)

    def model_rounding(self, node: Node, graph: Graph, in_norm: torch.Tensor,
                       out_norm: torch.Tensor, arithmetic: Arithmetic) -> torch.Tensor:
        """:meth:`rounding` in the model's arithmetic (:func:`dot_model_rounding`)."""
        self.rounding(node, graph, in_norm, out_norm)  # fills the cache
        w = node.params["weight"]
        return dot_model_rounding(node, graph, int(w.shape[1] * w.shape[2] * w.shape[3]),
                                  in_norm, arithmetic)


class ConvFrobenius(BackwardRule):
    """peck2017, thesis Theorem 5.1: :math:`\\|R\\|_F\\ge\\kappa/\\|W\\|_F` (any stride,
    the ReLU that follows handled by its own rule)."""

    def backward(
        self, node: Node, graph: Graph, kappa: torch.Tensor, acts: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        return kappa / float(node.params["weight"].norm())


register_rule("conv2d", "sound", ConvRule())
register_rule("conv2d", "peck2017", ConvFrobenius())


class ConvRelaxation(AffineRelaxation):
    """``crown``: a convolution (any stride, padding, dilation, groups) is linear; its
    transpose is its gradient with respect to the input, at the input's own size
    (docs/theory/linear_relaxation.md §Affine nodes)."""

    def supports(self, node: Node) -> bool:
        return "padding_mode" not in node.attrs

    def _kw(self, node: Node) -> dict:
        a = node.attrs
        return dict(stride=a["stride"], padding=a["padding"], dilation=a["dilation"],
                    groups=a["groups"])

    def apply(self, node: Node, z: torch.Tensor) -> torch.Tensor:
        return F.conv2d(z, node.params["weight"], None, **self._kw(node))

    def transpose(self, node: Node, a: torch.Tensor) -> torch.Tensor:
        # the gradient of the convolution with respect to its input: the transposed
        # convolution at the input's own size (batched; float64's conv_transpose2d loops
        # over the batch, 2-3x slower)
        at = node.attrs
        return torch.nn.grad.conv2d_input((a.shape[0], *node.in_shapes[0]),
                                          node.params["weight"], a, stride=at["stride"],
                                          padding=at["padding"], dilation=at["dilation"],
                                          groups=at["groups"])

    def abs_apply(self, node: Node, m: torch.Tensor) -> torch.Tensor:
        return F.conv2d(m, node.params["weight"].abs(), None, **self._kw(node))

    def const(self, node: Node) -> torch.Tensor | None:
        b = node.params.get("bias")
        return None if b is None else b.reshape(-1, 1, 1).expand(node.out_shape)

    def fan(self, node: Node) -> int:
        return int(node.params["weight"][0].numel())

    def square_apply(self, node: Node, v: torch.Tensor, sign: int) -> torch.Tensor | None:
        w = node.params["weight"]
        part = w.clamp(min=0) if sign > 0 else w.clamp(max=0)
        return F.conv2d(v, part * part, None, **self._kw(node))


register_rule("conv2d", "crown", ConvRelaxation())
