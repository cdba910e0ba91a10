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



def box_minimum(lb: LinearBounds, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    r"""A lower bound [N, S] of :math:`\langle A_s,x\rangle+b_s-e_s` over the box
    :math:`l\le x\le u` (``lo``/``hi`` [N, *in], finite): the exact minimum
    :math:`\sum_i\min(A_{s,i}l_i,A_{s,i}u_i)+b_s-e_s` (each term at a vertex), with the
    rounding charged: every product within :math:`u` relative (:math:`2u|t_i|` covers it
    and its underflow floor :math:`2^{-1074}`), the sum of :math:`d+1` terms within
    :math:`\gamma_{d+1}\sum|t_i|+|b|`, the last subtractions within :math:`10^{-15}`
    relative (docs/theory/branch_and_bound.md §Input splitting). Used by input splitting;
    ``crown``'s own concretisation is :func:`concretise`."""
    A = lb.A.flatten(2)
    lo_, hi_ = lo.flatten(1).unsqueeze(1), hi.flatten(1).unsqueeze(1)
    t = torch.minimum(A * lo_, A * hi_)
    d = A.shape[2]
    s = t.sum(2)
    mag = t.abs().sum(2)
    slack = ((float(gamma(d + 1)) + 2 * UNIT_ROUNDOFF) * (mag + lb.bias.abs())
             + d * 2.0 ** -1074) * (1 + 1e-6)
    m = s + lb.bias - lb.err * (1 + 1e-8) - slack - 1e-15 * (s.abs() + lb.bias.abs()
                                                               + lb.err) - 1e-300
    return torch.where(torch.isfinite(m), m, torch.full_like(m, -math.inf))


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
