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
"""

from __future__ import annotations

import torch

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
