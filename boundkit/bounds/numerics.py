r"""Floating-point safety margins for certificates.

Certificates are computed in IEEE float64 (unit roundoff :math:`u=2^{-53}`). Three kinds of
error could make a computed bound too large, and each is covered here
(``docs/theory/numerics.md`` gives the argument):

1. *Constants* (spectral norms from an SVD or an eigenvalue solver, FFT bounds, products of
   a few numbers): the computed value :math:`\hat L` of a norm satisfies
   :math:`|\hat L-L|\le p(n)\,u\,L` with :math:`p(n)` a modest polynomial of the dimension
   (backward stability of the SVD / symmetric eigensolver, Higham 2002, Thm 19.x and
   Golub & Van Loan 8.6). Every constant an upper bound depends on is inflated by
   :data:`CONSTANT_RTOL` :math:`=10^{-9}`, which covers :math:`p(n)\le 10^{7}`.
2. *The forward pass at x*: the logit margin is evaluated in float64. For an affine node
   :math:`y=Wz+b` with fan-in :math:`k`, the computed :math:`\hat y` satisfies
   :math:`|\hat y-y|\le\gamma_{k+1}(|W||z|+|b|)` componentwise,
   :math:`\gamma_k=ku/(1-ku)` (Higham 2002, eq. 3.13), so
   :math:`\|\hat y-y\|_2\le\gamma_{k+1}(\||W|\|_2\|z\|_2+\|b\|_2)`. Errors already present
   in :math:`z` are carried through the node's Lipschitz constant. Element-wise
   non-linearities are evaluated by libm to within a few ulps: :math:`\le 8u|y|`.
   :func:`boundkit.bounds.engine` accumulates these per sample and subtracts
   :math:`\sqrt2` times the total from every margin.
3. *The inversion* :math:`\rho=\omega^{-1}(\kappa)`: a handful of operations, each
   rounded; the result is moved down by a few ulps with :func:`round_down`.
4. *The model's own arithmetic*: a certificate is about the model as it
   runs, in its own dtype; every value it computes is the exact operation on its (already
   rounded) inputs up to a relative ``unit`` and an absolute ``eta`` per rounded operation,
   charged node by node over the whole ball (``docs/theory/numerics.md`` §4;
   :class:`boundkit.graph.arithmetic.Arithmetic`).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from boundkit.graph.graph import Graph, Node

#: relative inflation applied to every computed constant (norms, FFT bounds)
CONSTANT_RTOL = 1e-9
#: float64 unit roundoff
UNIT_ROUNDOFF = 2.0**-53
#: relative error allowed for a libm element-wise function (tanh, exp, log1p, pow)
ELEMENTWISE_ULPS = 8


def inflate(x: torch.Tensor | float, rtol: float = CONSTANT_RTOL) -> torch.Tensor:
    """Move a computed upper bound up by a relative margin (and at least one tiny ulp)."""
    t = torch.as_tensor(x, dtype=torch.float64)
    return t * (1.0 + rtol) + torch.finfo(torch.float64).tiny


def round_down(x: torch.Tensor, ulps: int = 4) -> torch.Tensor:
    """Move a computed lower bound down by ``ulps`` units in the last place."""
    return x * (1.0 - ulps * 2.0**-52)


def gamma(k: int | torch.Tensor) -> torch.Tensor:
    r""":math:`\gamma_k = ku/(1-ku)`, the relative error bound of a length-``k`` dot product
    (Higham, *Accuracy and Stability of Numerical Algorithms*, 2002, Lemma 3.1)."""
    ku = torch.as_tensor(k, dtype=torch.float64) * UNIT_ROUNDOFF
    return ku / (1.0 - ku)


#: half the smallest subnormal float64, :math:`\eta=2^{-1075}`: with gradual underflow every
#: rounded operation satisfies :math:`fl(a\circ b)=(a\circ b)(1+\delta)+\varepsilon`,
#: :math:`|\delta|\le u`, :math:`|\varepsilon|\le\eta` (Higham 2002, eq. 2.8)
UNDERFLOW = 2.0**-1075
#: values whose magnitude leaves :math:`[2^{-900},2^{900}]` are outside the range in which the
#: per-sample bound computations are analysed (``docs/theory/numerics.md``)
SAFE_MIN = 2.0**-900
SAFE_MAX = 2.0**900


def underflow_error(node: Node) -> float:
    r"""The absolute part of a node's float64 error in L2: each output entry is computed
    with at most ``in_numel + 16`` rounded operations (every input read once, plus a
    constant number for biases, libm calls and divisions), each adding at most
    :math:`\eta` beyond the relative model, so :math:`\|\varepsilon\|_2\le
    2(n_{in}+16)\eta\sqrt{n_{out}}` (negligible unless values underflow)."""
    n_in = sum(math.prod(s) for s in node.in_shapes)
    return 2.0 * (n_in + 16) * UNDERFLOW * math.sqrt(node.out_numel) + UNDERFLOW


def unsafe_range(graph: Graph, peaks: dict[str, torch.Tensor]) -> torch.Tensor:
    """Per sample, True when some node's largest output magnitude (``peaks``) is not
    finite, above ``SAFE_MAX``, or non-zero below ``SAFE_MIN`` (the whole output is tiny),
    or when a parameter of the model has a non-zero entry of magnitude outside
    ``[SAFE_MIN, SAFE_MAX]``: such samples get radius 0. Isolated subnormal entries among
    normal ones are covered by the absolute term of :func:`underflow_error`."""
    stacked = torch.stack([peaks[n.name] for n in graph.nodes if n.name in peaks], 1)
    bad = ~torch.isfinite(stacked) | (stacked > SAFE_MAX) | ((stacked > 0) & (stacked < SAFE_MIN))
    flag = bad.any(1)
    if "params_unsafe" not in graph.cache:
        unsafe = False
        for n in graph.nodes:
            for p in n.params.values():
                a = p.abs()
                nz = a[a > 0]
                if nz.numel() and (float(nz.min()) < SAFE_MIN or float(nz.max()) > SAFE_MAX):
                    unsafe = True
        graph.cache["params_unsafe"] = unsafe
    return flag | graph.cache["params_unsafe"]

