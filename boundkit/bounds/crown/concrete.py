"""Concretisation: a linear bound reaching the input, minimised over the L2 ball intersected
with the box (docs/theory/linear_relaxation.md §Concretisation), and what the margins' bound
says about the radius (:class:`RadiusStep`)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from boundkit.bounds.numerics import UNIT_ROUNDOFF, gamma, round_down
from boundkit.bounds.relaxation import LinearBounds, dot


@dataclass
class Concrete:
    """A concretised bound family: ``f_s >= c_s - eps * nu_s`` for every eps up to the
    radius the relaxation was built for ([N, S] each)."""

    c: torch.Tensor
    nu: torch.Tensor

    def at(self, eps: torch.Tensor) -> torch.Tensor:
        r"""A lower bound of :math:`c_s-\varepsilon\nu_s` as a float64 number: the product
        and the difference each round by at most :math:`u` relative, covered by
        :math:`4u(|c|+\varepsilon\nu)`."""
        t = eps.unsqueeze(1) * self.nu
        return self.c - t - 4 * UNIT_ROUNDOFF * (self.c.abs() + t)

    def rows(self, idx: torch.Tensor) -> Concrete:
        return Concrete(self.c[idx], self.nu[idx])

    def where(self, take: torch.Tensor, other: Concrete) -> Concrete:
        """``other``'s rows where ``take`` [N], this one's elsewhere."""
        t = take.unsqueeze(1)
        return Concrete(torch.where(t, other.c, self.c), torch.where(t, other.nu, self.nu))

    def put(self, idx: torch.Tensor, other: Concrete) -> None:
        """Rows ``idx`` replaced by ``other``'s, in place."""
        self.c[idx], self.nu[idx] = other.c, other.nu


def concretise(lb: LinearBounds, x0: torch.Tensor, box: tuple[float, float] | None,
               in_box: torch.Tensor) -> Concrete:
    r"""The dual-norm concretisation of ``lb`` at the input (module docstring), with the
    rounding of every step charged (docs/theory/linear_relaxation.md §Concretisation).

    :math:`\mu` is :math:`A` clamped to :math:`(-\infty,0]` where :math:`x_{0,i}` sits on
    the lower face of the box (a positive coefficient is blocked there) and to
    :math:`[0,\infty)` on the upper face: one pass over :math:`A`, then two norms."""
    A = lb.A.flatten(2)
    x = x0.flatten(1)
    ax0 = dot(A, x)
    a_norm = torch.linalg.vector_norm(A, dim=2)
    if box is not None and bool(in_box.any()):
        inb = in_box.unsqueeze(1)
        inf = torch.full_like(x, math.inf)
        cap_hi = torch.where((x <= box[0]) & inb, torch.zeros_like(x), inf).unsqueeze(1)
        cap_lo = torch.where((x >= box[1]) & inb, torch.zeros_like(x), -inf).unsqueeze(1)
        mu_norm = torch.linalg.vector_norm(torch.clamp(A, min=cap_lo, max=cap_hi), dim=2)
    else:
        mu_norm = a_norm
    d = A.shape[2]
    # the rounding of <A, x0> is at most gamma_{d+1} <|A|, |x0|> <= gamma_{d+1} |A| |x0|
    # (Cauchy-Schwarz; the norms' own rounding is covered by the factor)
    # (and the floor for squares that underflow inside the norm, below)
    dot_err = (float(gamma(d + 1)) * (a_norm + math.sqrt(d) * 2.0 ** -537)
               * torch.linalg.vector_norm(x, dim=1).unsqueeze(1))
    # gamma_{d+2}: d products and sums, the root; the floor covers squares that underflow
    # (each loses at most 2^-1074, so the norm at most sqrt(d) 2^-537)
    nu = mu_norm * (1 + float(gamma(d + 2)) + 1e-15) + math.sqrt(d) * 2.0 ** -537
    c = (ax0 + lb.bias - lb.err * (1 + 1e-8) - dot_err * (1 + 1e-6)
         - 1e-15 * (ax0.abs() + lb.bias.abs()) - 1e-300)
    # an overflow anywhere (huge weights) leaves no bound: -inf, which always holds
    bad = ~(torch.isfinite(c) & torch.isfinite(nu))
    if bool(bad.any()):
        c = torch.where(bad, -math.inf, c)
        nu = torch.where(bad, torch.zeros_like(nu), nu)
    return Concrete(c, nu)



def _ball_box_terms(a: torch.Tensor, p: torch.Tensor, s: torch.Tensor, lam: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Per coordinate, a lower bound of :math:`\min_{\delta\in[p,s]}a\delta+\lambda\delta^2`
    by the tangent at :math:`t=\mathrm{clamp}(-a/2\lambda,p,s)` (the minimiser, up to
    rounding): :math:`q(t)+\min(q'(t)(p-t),q'(t)(s-t))`, and the magnitude :math:`M` its
    rounding is charged against. ``a`` [N, S, d], ``p``/``s`` [N, 1, d], ``lam`` [N, S]."""
    L = lam.unsqueeze(2)
    with torch.no_grad():  # the tangent point: any point gives a bound (no gradient)
        t = torch.nan_to_num(-a / (2 * L), nan=0.0).clamp(min=p, max=s)
    g = a + 2 * L * t
    at, lt = a * t, L * t * t
    dp, ds = g * (p - t), g * (s - t)
    h = at + lt + torch.minimum(dp, ds)
    # g's own rounding (up to 2u(|a|+2L|t|)) reaches h through the differences' factors
    return h, at.abs() + lt + (a.abs() + 2 * L * t.abs()) * ((p - t).abs() + (s - t).abs())


def ball_box_minimum(lb: LinearBounds, x0: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor,
                     eps: torch.Tensor, steps: int = 12) -> torch.Tensor:
    r"""A lower bound [N, S] of :math:`\langle A_s,x\rangle+b_s-e_s` over the intersection of
    the ball :math:`\|x-x_0\|\le\varepsilon` and the box :math:`l\le x\le u` (``x0``,
    ``lo``, ``hi`` [N, *in]; ``eps`` [N]), by Lagrangian duality: for every
    :math:`\lambda\ge0`,

    .. math:: \min_{B\cap Q}\langle a,x\rangle\ge\langle a,x_0\rangle+
              \sum_i\min_{\delta_i\in[l_i-x_{0,i},\,u_i-x_{0,i}]}(a_i\delta_i+\lambda\delta_i^2)
              -\lambda\varepsilon^2

    (the added term is :math:`\le0` on the ball), each coordinate's minimum bounded from
    below by a tangent of its convex quadratic (valid at any point). :math:`\lambda=0` is
    the box's exact minimum, :math:`\lambda=\|a\|/2\varepsilon` the ball's dual norm
    without the box; the largest of those two and of a golden-section search of ``steps``
    points over :math:`\log\lambda` is returned, every rounding charged
    (docs/theory/branch_and_bound.md §Input splitting)."""
    A = lb.A.flatten(2)
    n, S, d = A.shape
    x = x0.flatten(1).unsqueeze(1)
    # the shifted box [p, s] around x0, rounded outward (a superset)
    p = lo.flatten(1).unsqueeze(1) - x
    q = hi.flatten(1).unsqueeze(1) - x
    p = p - 2 * UNIT_ROUNDOFF * p.abs() - 1e-300
    q = q + 2 * UNIT_ROUNDOFF * q.abs() + 1e-300
    e2 = (eps * eps).reshape(n, 1)

    def value(lam: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h, mag = _ball_box_terms(A, p, q, lam)
        le = lam * e2
        return h.sum(2) - le, mag.sum(2) + le

    anorm = torch.linalg.vector_norm(A, dim=2)
    lam_ball = anorm / (2 * eps.reshape(n, 1).clamp(min=1e-300))
    cands = [torch.zeros_like(anorm), lam_ball]
    with torch.no_grad():  # golden-section search of the concave dual over log(lambda)
        centre = torch.log(lam_ball.clamp(min=1e-300))
        a_, b_ = centre - 8.0, centre + 8.0
        r = (math.sqrt(5) - 1) / 2
        c_, d_ = b_ - r * (b_ - a_), a_ + r * (b_ - a_)
        fc, fd = value(c_.exp())[0], value(d_.exp())[0]
        for _ in range(steps):
            left = fc > fd  # the maximum lies in [a, d]
            a_, b_ = torch.where(left, a_, c_), torch.where(left, d_, b_)
            c_next = torch.where(left, b_ - r * (b_ - a_), d_)
            d_next = torch.where(left, c_, a_ + r * (b_ - a_))
            fp = value(torch.where(left, c_next, d_next).exp())[0]
            fc, fd = torch.where(left, fp, fd), torch.where(left, fc, fp)
            c_, d_ = c_next, d_next
        cands.append(torch.where(fc > fd, c_, d_).exp())
    ax0 = (A * x).sum(2)
    ax0_err = float(gamma(d + 1)) * (A.abs() * x.abs()).sum(2)
    best = torch.full_like(anorm, -math.inf)
    g_sum = float(gamma(d + 4))
    for lam in cands:
        lam = lam.detach()
        val, mag = value(lam)
        slack = ((16 * UNIT_ROUNDOFF + g_sum) * (mag + ax0.abs() + lb.bias.abs() + lb.err)
                 + ax0_err + 8 * d * 2.0 ** -1074) * (1 + 1e-6)
        m = (ax0 + val + lb.bias - lb.err * (1 + 1e-8) - slack
             - 1e-15 * (ax0.abs() + val.abs() + lb.bias.abs() + lb.err) - 1e-300)
        best = torch.maximum(best, torch.where(torch.isfinite(m), m, -math.inf))
    return best


@dataclass
class RadiusStep:
    r"""What one relaxation, built for the balls of radii ``eps`` [N], says: the margins
    :math:`f_y-f_j\ge c_j-\varepsilon'\nu_j` for every :math:`\varepsilon'\le\varepsilon`.

    ``phi``: :math:`\min_{j\ne y}c_j/\nu_j`, unrounded, possibly negative; ``bound``: the
    margin bound at ``eps`` itself, :math:`\min_{j\ne y}(c_j-\varepsilon\nu_j)`; ``certified``:
    :math:`\min(\varepsilon,\varphi)` with the quotient rounded down (8 ulps cover its one
    rounding), 0 where :math:`\varphi\le0`."""

    eps: torch.Tensor
    phi: torch.Tensor
    bound: torch.Tensor
    certified: torch.Tensor


def radius_step(conc: Concrete, eps: torch.Tensor, label: torch.Tensor) -> RadiusStep:
    own = torch.nn.functional.one_hot(label, conc.c.shape[1]).bool()
    nu = conc.nu
    safe = torch.where(nu > 0, nu, torch.ones_like(nu))
    inf = torch.full_like(nu, math.inf)
    r = torch.where(nu > 0, conc.c / safe, torch.where(conc.c > 0, inf, -inf))
    phi = torch.where(own, inf, r).min(1).values
    bound = torch.where(own, inf, conc.at(eps)).min(1).values
    cert = torch.minimum(round_down(phi.clamp(min=0.0), 8), eps)
    return RadiusStep(eps, phi, bound, cert)
