r"""Moduli of continuity: the algebra the sound method composes over the graph.

A *modulus* of a map :math:`h` at a point :math:`x` is a non-decreasing function
:math:`\omega:[0,\infty)\to[0,\infty)` with :math:`\omega(0)=0` such that

.. math:: \|h(x+r)-h(x)\|_2 \le \omega(\|r\|_2) \quad \text{for all } r.

A Lipschitz constant :math:`L` gives :math:`\omega(t)=Lt`; the quadratic Taylor bound of a
smooth block gives :math:`\omega(t)=\|J(x)\|t+\tfrac{M}{2}t^2`. Moduli compose
(:math:`\omega_{g\circ h}\le\omega_g\circ\omega_h`, since :math:`\omega_g` is
non-decreasing), add over a residual sum, and combine as :math:`\sqrt{\omega_a^2+\omega_b^2}`
over a concatenation. A certificate inverts the modulus of the input-to-margin map:
:math:`\rho=\sup\{t:\omega(t)<\kappa\}` (``docs/theory/engine.md``).

Representation: a :class:`Modulus` is the pointwise minimum of finitely many polynomials
with non-negative coefficients and zero constant term. Polynomials of that kind are closed
under composition and sums, the minimum of moduli is a modulus, and monotone composition
distributes over the minimum, so the set is closed under every operation the engine needs.
The polynomial coefficients carry a leading batch dimension (1 for per-model constants,
N for per-sample ones).
"""

from __future__ import annotations

import torch

from boundkit.bounds.numerics import round_down

Poly = torch.Tensor  # [B, K]: coefficient k multiplies t**k; column 0 is always 0


def _poly_mul(a: Poly, b: Poly) -> Poly:
    """Product of batched polynomials (coefficient convolution)."""
    ka, kb = a.shape[1], b.shape[1]
    bsz = max(a.shape[0], b.shape[0])
    out = a.new_zeros(bsz, ka + kb - 1)
    for i in range(ka):
        out[:, i : i + kb] += a[:, i : i + 1] * b
    return out


def _poly_add(a: Poly, b: Poly) -> Poly:
    k = max(a.shape[1], b.shape[1])
    a = torch.nn.functional.pad(a, (0, k - a.shape[1]))
    b = torch.nn.functional.pad(b, (0, k - b.shape[1]))
    return a + b


def _poly_compose(outer: Poly, inner: Poly) -> Poly:
    """Coefficients of outer(inner(t)) by Horner's scheme."""
    k = outer.shape[1]
    result = outer[:, k - 1 : k].clone()
    for i in range(k - 2, -1, -1):
        result = _poly_mul(result, inner)
        result[:, 0:1] = result[:, 0:1] + outer[:, i : i + 1]
    return _trim(result)


def _trim(p: Poly) -> Poly:
    k = p.shape[1]
    while k > 2 and bool((p[:, k - 1] == 0).all()):
        k -= 1
    return p[:, :k]


def _poly_eval(p: Poly, t: torch.Tensor) -> torch.Tensor:
    out = torch.zeros_like(t) + p[:, -1]
    for i in range(p.shape[1] - 2, -1, -1):
        out = out * t + p[:, i]
    return out


def _poly_inverse(p: Poly, kappa: torch.Tensor) -> torch.Tensor:
    r"""Largest ``t`` (rounded down) with ``p(t) < kappa``, for a non-decreasing polynomial.

    Degree 1: :math:`t=\kappa/a`. Degree 2: :math:`t=2\kappa/(a+\sqrt{a^2+4b\kappa})`
    (the positive root of :math:`bt^2+at-\kappa`, in the cancellation-free form).
    Higher degree: bisection on a bracket, returning the lower end, where
    :math:`p(t)<\kappa` holds by construction.
    """
    p = _trim(p)
    kappa = kappa.to(p.dtype)
    bsz = max(p.shape[0], kappa.shape[0])
    kappa = kappa.expand(bsz)
    if p.shape[1] == 2:
        a = p[:, 1].expand(bsz)
        t = torch.where(a > 0, kappa / a, torch.full_like(kappa, float("inf")))
        return round_down(torch.where(kappa > 0, t, torch.zeros_like(t)), ulps=2)
    if p.shape[1] == 3:
        a, b = p[:, 1].expand(bsz), p[:, 2].expand(bsz)
        disc = torch.sqrt(a * a + 4.0 * b * kappa)
        denom = a + disc
        t = torch.where(denom > 0, 2.0 * kappa / denom, torch.full_like(kappa, float("inf")))
        return round_down(torch.where(kappa > 0, t, torch.zeros_like(t)), ulps=8)
    # general: bisection in float64 on [lo, hi] with p(lo) < kappa <= p(hi)
    lo = torch.zeros_like(kappa)
    hi = torch.ones_like(kappa)
    for _ in range(2100):  # grow the bracket geometrically
        grow = (_poly_eval(p, hi) < kappa) & torch.isfinite(hi)
        if not bool(grow.any()):
            break
        lo = torch.where(grow, hi, lo)
        hi = torch.where(grow, hi * 2.0, hi)
    for _ in range(80):
        mid = 0.5 * (lo + hi)
        ok = _poly_eval(p, mid) < kappa
        lo = torch.where(ok, mid, lo)
        hi = torch.where(ok, hi, mid)
    # p(lo) < kappa holds exactly for lo = 0 (p(0) = 0 < kappa) and for every accepted mid;
    # a margin still covers rounding in the evaluation of p itself
    return torch.where(kappa > 0, round_down(lo, ulps=16), torch.zeros_like(lo))


class Modulus:
    """The pointwise minimum of polynomials with non-negative coefficients."""

    def __init__(self, polys: list[Poly]) -> None:
        if not polys:
            raise ValueError("a modulus needs at least one polynomial")
        self.polys = [_trim(p) for p in polys]

    # -------------------------------------------------------------- constructors
    @staticmethod
    def lipschitz(slope: torch.Tensor | float, dtype: torch.dtype = torch.float64) -> Modulus:
        """:math:`\\omega(t)=Lt` (``slope`` a scalar or a per-sample tensor [N])."""
        s = torch.as_tensor(slope, dtype=dtype).reshape(-1, 1)
        return Modulus([torch.cat([torch.zeros_like(s), s], dim=1)])

    @staticmethod
    def quadratic(a: torch.Tensor | float, b: torch.Tensor | float) -> Modulus:
        """:math:`\\omega(t)=at+bt^2`."""
        a_t = torch.as_tensor(a, dtype=torch.float64).reshape(-1, 1)
        b_t = torch.as_tensor(b, dtype=torch.float64).reshape(-1, 1).to(a_t.device)
        bsz = max(a_t.shape[0], b_t.shape[0])
        return Modulus(
            [torch.cat([torch.zeros_like(a_t).expand(bsz, 1), a_t.expand(bsz, 1),
                        b_t.expand(bsz, 1)], dim=1)]
        )

    @staticmethod
    def identity() -> Modulus:
        return Modulus.lipschitz(1.0)

    @staticmethod
    def zero() -> Modulus:
        return Modulus.lipschitz(0.0)

    # -------------------------------------------------------------- algebra
    def to(self, device: torch.device | str) -> Modulus:
        return Modulus([p.to(device) for p in self.polys])

    def compose(self, inner: Modulus) -> Modulus:
        """``self ∘ inner``: valid because every modulus is non-decreasing, and
        ``min_i f_i(min_j g_j) = min_{i,j} f_i(g_j)`` for non-decreasing ``f_i``."""
        return Modulus(
            [_poly_compose(f, g.to(f.device)) for f in self.polys for g in inner.polys]
        )

    def __add__(self, other: Modulus) -> Modulus:
        """``min_i f_i + min_j g_j = min_{i,j} (f_i + g_j)``."""
        return Modulus([_poly_add(f, g.to(f.device)) for f in self.polys for g in other.polys])

    def __mul__(self, other: Modulus) -> Modulus:
        """``min_i f_i * min_j g_j = min_{i,j} (f_i g_j)`` (all values non-negative): a
        modulus of a product's cross term (:mod:`boundkit.bounds.products`)."""
        return Modulus([_poly_mul(f, g.to(f.device)) for f in self.polys for g in other.polys])

    def scale(self, c: float | torch.Tensor) -> Modulus:
        """``c * self`` for ``c >= 0``."""
        c_t = torch.as_tensor(c, dtype=torch.float64)
        return Modulus([p * c_t.to(p.device).reshape(-1, 1) for p in self.polys])

    def minimum(self, other: Modulus) -> Modulus:
        """The pointwise minimum of two moduli (both valid, so their minimum is)."""
        return Modulus(self.polys + [p for p in other.polys])

    @staticmethod
    def euclid(parts: list[Modulus]) -> Modulus:
        r"""A modulus of a concatenation :math:`(h_1,\dots,h_k)`:
        :math:`\sqrt{\sum_i\omega_i^2}`. Exact for Lipschitz parts (the slopes combine in
        quadrature); otherwise bounded above by :math:`\sum_i\omega_i`."""
        if all(m.is_lipschitz for m in parts):
            sq = sum(m.slope() ** 2 for m in parts)
            return Modulus.lipschitz(torch.sqrt(sq))
        total = parts[0]
        for m in parts[1:]:
            total = total + m
        return total

    @property
    def is_lipschitz(self) -> bool:
        """True when the modulus is linear, :math:`\\omega(t)=Lt`."""
        return all(p.shape[1] == 2 for p in self.polys)

    def slope(self) -> torch.Tensor:
        """The Lipschitz constant ``L`` [B] of a linear modulus."""
        if not self.is_lipschitz:
            raise ValueError("modulus is not linear")
        s = torch.stack([p[:, 1] for p in self.polys], 0)
        return s.min(0).values

    def __call__(self, t: torch.Tensor) -> torch.Tensor:
        vals = [_poly_eval(p, t) for p in self.polys]
        out = vals[0]
        for v in vals[1:]:
            out = torch.minimum(out, v)
        return out

    def inverse(self, kappa: torch.Tensor) -> torch.Tensor:
        r"""The certified radius :math:`\sup\{t\ge 0:\omega(t)<\kappa\}`, rounded down.

        For a minimum of polynomials the set is the union of the sets of each polynomial,
        so its supremum is the maximum of their inverses. ``kappa <= 0`` gives 0 and
        ``kappa = inf`` gives ``inf``.
        """
        inv = [_poly_inverse(p, kappa) for p in self.polys]
        out = inv[0]
        for v in inv[1:]:
            out = torch.maximum(out, v)
        out = torch.where(torch.isposinf(kappa), torch.full_like(out, float("inf")), out)
        return out.clamp_min(0.0)

    def __repr__(self) -> str:
        degs = [p.shape[1] - 1 for p in self.polys]
        return f"Modulus(min of {len(self.polys)} polynomials, degrees {degs})"
