"""Minimum-norm point of a polyhedron: ``min ||r||_2  s.t.  A r >= b``.

Solved as a *least distance program* through its non-negative least-squares dual
(Lawson & Hanson, "Solving Least Squares Problems", 1974, ch. 23, Algorithm LDP):

    E = [A^T; b^T]  (shape [n+1, m]),   f = e_{n+1},
    u* = argmin_{u >= 0} ||E u - f||_2,   s = E u* - f.

If ``s = 0`` the polyhedron is empty; otherwise ``r* = -s[:n] / s[n]``.  (Derivation: the
Lagrange dual of ``min ||r||^2/2, A r >= b`` is ``max_{lam >= 0} b^T lam - ||A^T lam||^2/2``
with ``r* = A^T lam*``; LDP is the homogenised form of it, ``lam* = u* / (1 - b^T u*)``.)

The NNLS solution is then *polished*: on the active set ``S`` (rows with ``u_i > 0`` or
tight rows) we take the minimum-norm solution of ``A_S r = b_S`` and accept it iff it is
feasible and its multipliers ``lam_S`` (with ``A_S^T lam_S = r``) are non-negative, i.e. iff
it satisfies the KKT conditions of the convex problem, which makes it the exact optimum up to
float64 rounding.  Every row is first divided by its own norm (:func:`unit_rows`), so all
tolerances are in units of distance and no row is judged by another row's scale.

With bounds ``lo <= r <= hi`` (an input box) the problem is solved through the dual over
the general rows only, which has one variable per row instead of one per row and box face
(784 pixels add 1568 columns to the LDP above, and scipy's NNLS then takes seconds):

    q(lam) = b^T lam + min_{lo <= r <= hi} (||r||^2/2 - lam^T A r)
           = b^T lam + ||r(lam)||^2/2 - (A^T lam)^T r(lam),   r(lam) = clip(A^T lam, lo, hi),

concave and differentiable with gradient ``b - A r(lam)`` (Danskin).  It is maximised over
``lam >= 0`` by L-BFGS-B, then polished by primal-dual active-set steps (solve the KKT system
on the rows with ``lam_j > 0`` and the coordinates at a bound).  The answer is accepted on a
certificate, not on the optimiser's word: ``r = r(lam)`` with ``lam >= 0`` minimises the
Lagrangian over the box, so if ``r`` is feasible the duality gap
``||r||^2/2 - q(lam) = lam^T (A r - b)`` bounds ``||r||^2/2 - ||r*||^2/2``; it must be below
``1e-11 ||r||^2``.  Weak duality also detects an empty polyhedron (``q(lam)`` above the
largest ``||r||^2/2`` on the box).  Where neither certificate is reached, the LDP above is
solved with the box faces as rows.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize, nnls

FEAS_TOL = 1e-9
#: accepted duality gap of the boxed solver, relative to ``||r||^2``
GAP_TOL = 1e-11


class _Infeasible(Exception):
    pass


def min_norm_point(a: np.ndarray, b: np.ndarray, lo: np.ndarray | None = None,
                   hi: np.ndarray | None = None) -> np.ndarray | None:
    """Return ``argmin ||r|| s.t. a @ r >= b`` and ``lo <= r <= hi`` when given (float64,
    ``-inf`` / ``inf`` allowed in the bounds), or ``None`` if infeasible.

    ``a``: ``[m, n]``, ``b``: ``[m]``.  Rows of ``a`` that are exactly zero are
    constraints ``0 >= b_i`` and are checked directly; every other row is divided by its own
    norm (:func:`unit_rows`).  Feasibility of the returned point is
    verified to ``FEAS_TOL * (1 + ||r||)`` on unit-normalised rows; a polyhedron whose points
    all violate some constraint by more than that is reported as empty.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    n = a.shape[1]
    if lo is not None or hi is not None:
        lo = np.full(n, -np.inf) if lo is None else np.broadcast_to(lo, (n,)).astype(float)
        hi = np.full(n, np.inf) if hi is None else np.broadcast_to(hi, (n,)).astype(float)
        return _min_norm_point_box(a, b, lo, hi)
    if a.shape[0] == 0:
        return np.zeros(n)
    a, b, ok = unit_rows(a, b)
    if not ok:
        return None
    if a.shape[0] == 0 or np.all(b <= 0.0):
        return np.zeros(n)
    e = np.vstack([a.T, b[None, :]])
    f = np.zeros(n + 1)
    f[n] = 1.0
    u, _ = nnls(e, f, maxiter=50 * (a.shape[0] + n + 1))
    s = e @ u - f
    if np.linalg.norm(s) <= 1e-13 or s[n] >= 0.0:
        return None
    r = -s[:n] / s[n]
    r = _polish(a, b, r, u)
    viol = float(np.max(b - a @ r))
    if viol > FEAS_TOL * (1.0 + float(np.linalg.norm(r))):
        return None
    return r


def _min_norm_point_box(a: np.ndarray, b: np.ndarray, lo: np.ndarray,
                        hi: np.ndarray) -> np.ndarray | None:
    """:func:`min_norm_point` with ``lo <= r <= hi`` (see the module docstring)."""
    n = a.shape[1]
    if np.any(lo > hi):
        return None
    a, b, ok = unit_rows(a, b)
    if not ok:
        return None
    r0 = np.clip(np.zeros(n), lo, hi)
    if a.shape[0] == 0 or np.all(a @ r0 >= b):
        return r0  # the nearest point of the box satisfies every row
    fin = np.isfinite(lo) & np.isfinite(hi)
    r = _box_dual(a, b, lo, hi) if fin.all() else None
    if r is not None:
        return None if r is _EMPTY else r
    # fallback: the box faces as rows of the LDP
    eye = np.eye(n)
    fl, fh = np.isfinite(lo), np.isfinite(hi)
    return min_norm_point(np.vstack([a, eye[fl], -eye[fh]]),
                          np.concatenate([b, lo[fl], -hi[fh]]))


_EMPTY = np.zeros(0)


def _box_dual(a: np.ndarray, b: np.ndarray, lo: np.ndarray, hi: np.ndarray
              ) -> np.ndarray | None:
    """The boxed problem by its dual (unit rows, finite box): the certified minimiser,
    ``_EMPTY`` if the polyhedron is certified empty, ``None`` if neither was reached."""
    m = a.shape[0]
    pmax = 0.5 * float(np.sum(np.maximum(lo * lo, hi * hi)))

    def neg_q(lam: np.ndarray) -> tuple[float, np.ndarray]:
        g = a.T @ lam
        r = np.clip(g, lo, hi)
        q = float(b @ lam + 0.5 * (r @ r) - g @ r)
        if q > pmax * (1 + 1e-9) + 1e-300:
            raise _Infeasible
        return -q, a @ r - b

    try:
        res = minimize(neg_q, np.zeros(m), jac=True, method="L-BFGS-B",
                       bounds=[(0.0, None)] * m,
                       options={"maxiter": 5000, "maxcor": 30, "ftol": 1e-16,
                                "gtol": 1e-13})
    except _Infeasible:
        return _EMPTY
    lam = np.maximum(res.x, 0.0)
    for _ in range(10):
        g = a.T @ lam
        r = np.clip(g, lo, hi)
        ar = a @ r
        rn2 = float(r @ r)
        viol = float(np.max(b - ar))
        gap = float(lam @ (ar - b))
        if viol <= FEAS_TOL * (1.0 + np.sqrt(rn2)) and abs(gap) <= GAP_TOL * max(rn2, 1e-300):
            return r
        # primal-dual active-set step: rows with a multiplier or tight, coordinates at a bound
        lmax = float(lam.max(initial=0.0))
        act = (lam > 1e-12 * max(lmax, 1e-300)) | (ar - b <= 1e-9 * (1.0 + np.sqrt(rn2)))
        at_lo, at_hi = g <= lo, g >= hi
        free = ~(at_lo | at_hi)
        if not act.any():
            break
        a_s = a[act]
        r_b = np.where(at_lo, lo, np.where(at_hi, hi, 0.0))
        rhs = b[act] - a_s @ r_b
        a_f = a_s[:, free]
        lam_s, *_ = np.linalg.lstsq(a_f @ a_f.T, rhs, rcond=1e-13)
        new = np.zeros(m)
        new[act] = np.maximum(lam_s, 0.0)
        if np.array_equal(new, lam):
            break
        lam = new
    return None


def unit_rows(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool]:
    """``a r >= b`` with every row divided by its own norm: ``(a_i / ||a_i||) r >= b_i / ||a_i||``.

    The same halfspace, now written in units of distance (``b_i / ||a_i||`` is the signed
    distance from ``r = 0`` to its boundary), whatever the scale each row came with; the
    tolerances of :func:`min_norm_point` are therefore the same for a row of norm ``1e-20``
    and one of norm ``1e20``.  Only exactly zero rows (``0 >= b_i``) are dropped: they are
    checked directly, and ``ok`` is False if one is violated (the polyhedron is empty).
    Rows whose norm underflows or overflows in the division are rescaled by a power of two
    first (exact).
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    amax = np.abs(a).max(axis=1, initial=0.0) if a.size else np.zeros(a.shape[0])
    zero = amax == 0.0
    if np.any(b[zero] > 0.0):
        return a[:0], b[:0], False
    keep = ~zero
    a, b, amax = a[keep], b[keep], amax[keep]
    # exact power-of-two prescaling so that the norm below neither underflows nor overflows
    _, e = np.frexp(amax)
    a = np.ldexp(a, -e[:, None])
    b = np.ldexp(b, -e)
    norms = np.linalg.norm(a, axis=1)
    return a / norms[:, None], b / norms, True


def _polish(a: np.ndarray, b: np.ndarray, r: np.ndarray, u: np.ndarray) -> np.ndarray:
    """KKT polish of an approximate LDP solution (see module docstring)."""
    rn = float(np.linalg.norm(r))
    tight = np.abs(a @ r - b) <= 1e-7 * (1.0 + rn)
    umax = float(u.max()) if u.size else 0.0
    for act in (u > 1e-12 * max(umax, 1e-300), tight | (u > 1e-12 * max(umax, 1e-300))):
        if not act.any():
            continue
        a_s, b_s = a[act], b[act]
        lam, *_ = np.linalg.lstsq(a_s @ a_s.T, b_s, rcond=1e-13)
        cand = a_s.T @ lam
        cn = float(np.linalg.norm(cand))
        if (
            float(np.max(b - a @ cand)) <= 1e-12 * (1.0 + cn)
            and float(lam.min()) >= -1e-9 * (1.0 + float(np.abs(lam).max()))
            and np.linalg.norm(a_s @ cand - b_s) <= 1e-10 * (1.0 + cn)
        ):
            return cand
    return r
