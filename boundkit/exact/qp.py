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

The LDP is solved on rows scaled exactly (a power of two) to ``max b = 1``: its residual is
``s[n] = -1/(1 + ||r||^2)``, which at ``||r|| ~ 1e9`` unscaled is below NNLS's absolute
accuracy (~1e-16) and read a non-empty polyhedron as empty.  None of the tolerances above
is a proof: :func:`min_norm` returns with the point a lower bound on ``min ||r||`` proved by
a dual vector, float64 rounding and the caller's data errors charged
(:func:`dual_lower_bound`), and the exact search closes regions only on that bound.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize, nnls

FEAS_TOL = 1e-9
#: accepted duality gap of the boxed solver, relative to ``||r||^2``
GAP_TOL = 1e-11


class _Infeasible(Exception):
    pass


@dataclass(frozen=True)
class MinNorm:
    """Answer of :func:`min_norm` for ``P = {r : a r >= b, lo <= r <= hi}``.

    ``point``: the computed minimiser (feasible to ``FEAS_TOL (1 + ||r||)`` on unit rows),
    ``None`` if none was found.  ``lower``: a *certified* bound, ``||r|| >= lower`` for every
    ``r`` of ``P`` (``inf``: ``P`` is certified empty), proved by a dual vector and evaluated
    in float64 with every rounding charged (:func:`dual_lower_bound`); the search closes a
    region on ``lower``, never on ``point`` alone."""

    point: np.ndarray | None
    lower: float


def min_norm_point(a: np.ndarray, b: np.ndarray, lo: np.ndarray | None = None,
                   hi: np.ndarray | None = None) -> np.ndarray | None:
    """Return ``argmin ||r|| s.t. a @ r >= b`` and ``lo <= r <= hi`` when given (float64,
    ``-inf`` / ``inf`` allowed in the bounds), or ``None`` if infeasible.

    ``a``: ``[m, n]``, ``b``: ``[m]``.  Rows of ``a`` that are exactly zero are
    constraints ``0 >= b_i`` and are checked directly; every other row is divided by its own
    norm (:func:`unit_rows`).  Feasibility of the returned point is
    verified to ``FEAS_TOL * (1 + ||r||)`` on unit-normalised rows; a polyhedron whose points
    all violate some constraint by more than that is reported as empty.  ``None`` is not a
    proof of emptiness: :func:`min_norm` adds the certified lower bound.
    """
    return min_norm(a, b, lo, hi).point


def min_norm(a: np.ndarray, b: np.ndarray, lo: np.ndarray | None = None,
             hi: np.ndarray | None = None, err_a: np.ndarray | None = None,
             err_b: np.ndarray | None = None) -> MinNorm:
    """:func:`min_norm_point` and a certified lower bound on ``min ||r||`` over ``P`` (see
    :class:`MinNorm`).  ``err_a >= 0`` ``[m, n]``, ``err_b >= 0`` ``[m]`` (optional): bounds on
    how far the rows the caller means are from the float64 ``a``, ``b`` given (their
    rounding); the bound then holds for every polyhedron within them."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    m, n = a.shape
    ea = np.zeros((m, n)) if err_a is None else np.asarray(err_a, dtype=np.float64)
    eb = np.zeros(m) if err_b is None else np.asarray(err_b, dtype=np.float64)
    boxed = lo is not None or hi is not None
    if boxed:
        lo = np.full(n, -np.inf) if lo is None else np.broadcast_to(lo, (n,)).astype(float)
        hi = np.full(n, np.inf) if hi is None else np.broadcast_to(hi, (n,)).astype(float)
        if np.any(lo > hi):
            return MinNorm(None, np.inf)
    zero = np.abs(a).max(axis=1, initial=0.0) == 0.0 if m else np.zeros(0, dtype=bool)
    if np.any(zero & (b > 0.0)):
        # a row 0 >= b_i > 0; certified if that row's data is exact up to err
        sure = zero & (ea.max(axis=1, initial=0.0) == 0.0) & (b - eb > 0.0)
        return MinNorm(None, np.inf if sure.any() else 0.0)
    point, lams = (_min_norm_point_box(a, b, lo, hi) if boxed
                   else _min_norm_point_free(a, b))
    lower = 0.0
    if boxed:  # P lies in the box: its nearest point to 0 (exact clip) bounds ||r||
        lower = float(np.linalg.norm(np.clip(np.zeros(n), lo, hi))) * (1.0 - _gam(n + 2))
    for lam_rows, lam in lams:
        lower = max(lower, dual_lower_bound(a, b, lam_rows, lam, lo, hi, ea, eb))
    return MinNorm(point, lower)


#: a dual vector: (rows it weighs - an index array into a, or "box" rows appended -, weights)
_Lam = tuple[np.ndarray, np.ndarray]


def _min_norm_point_free(a: np.ndarray, b: np.ndarray
                         ) -> tuple[np.ndarray | None, list[_Lam]]:
    """The unboxed problem: ``(point or None, dual vectors on rows of a)``."""
    n = a.shape[1]
    if a.shape[0] == 0:
        return np.zeros(n), []
    au, bu, keep, scale = _unit_rows_scaled(a, b)
    idx = np.flatnonzero(keep)
    if au.shape[0] == 0 or np.all(bu <= 0.0):
        return np.zeros(n), []
    # exact power-of-two scaling r = 2^p r' with max b' = 1: the LDP's residual is
    # ~1 / ||r'||, which at ||r|| ~ 1e9 unscaled is below float64's resolution of 1
    _, p = np.frexp(float(bu.max()))
    r, lams = _ldp(au, np.ldexp(bu, -p))
    lams = [(idx, lam * scale) for lam in lams]
    if r is None:
        return None, lams
    r = np.ldexp(r, p)
    viol = float(np.max(bu - au @ r))
    if viol > FEAS_TOL * (1.0 + float(np.linalg.norm(r))):
        return None, lams
    return r, lams


def _ldp(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray | None, list[np.ndarray]]:
    """The LDP of the module docstring on unit rows with ``max b = 1``, polished; with the
    dual vectors it produced (NNLS's ``u``, the polish's multipliers)."""
    n = a.shape[1]
    e = np.vstack([a.T, b[None, :]])
    f = np.zeros(n + 1)
    f[n] = 1.0
    u, _ = nnls(e, f, maxiter=50 * (a.shape[0] + n + 1))
    s = e @ u - f
    lams = [u]
    if np.linalg.norm(s) <= 1e-13 or s[n] >= 0.0:
        return None, lams
    r = -s[:n] / s[n]
    r, lam = _polish(a, b, r, u)
    if lam is not None:
        lams.append(lam)
    return r, lams


def _min_norm_point_box(a: np.ndarray, b: np.ndarray, lo: np.ndarray, hi: np.ndarray
                        ) -> tuple[np.ndarray | None, list[_Lam]]:
    """:func:`min_norm` with ``lo <= r <= hi`` (see the module docstring): the point and the
    dual vectors (on rows of ``a``; on ``[a; I; -I]`` where the fallback used box faces as
    rows, marked by an index array longer than ``a``)."""
    n = a.shape[1]
    au, bu, keep, scale = _unit_rows_scaled(a, b)
    idx = np.flatnonzero(keep)
    r0 = np.clip(np.zeros(n), lo, hi)
    if au.shape[0] == 0 or np.all(au @ r0 >= bu):
        return r0, [(idx, np.zeros(len(idx)))]  # the nearest point of the box: every row holds
    fin = np.isfinite(lo) & np.isfinite(hi)
    if fin.all():
        r, lam = _box_dual(au, bu, lo, hi)
        if r is not None:
            return (None if r is _EMPTY else r), [(idx, lam * scale)]
    # fallback: the box faces as rows of the LDP
    eye = np.eye(n)
    fl, fh = np.isfinite(lo), np.isfinite(hi)
    m = a.shape[0]
    rows = np.concatenate([np.arange(m), m + np.flatnonzero(fl), m + n + np.flatnonzero(fh)])
    point, lams = _min_norm_point_free(np.vstack([a, eye[fl], -eye[fh]]),
                                       np.concatenate([b, lo[fl], -hi[fh]]))
    return point, [(rows[i], lam) for i, lam in lams]


_EMPTY = np.zeros(0)


def _box_dual(a: np.ndarray, b: np.ndarray, lo: np.ndarray, hi: np.ndarray
              ) -> tuple[np.ndarray | None, np.ndarray]:
    """The boxed problem by its dual (unit rows, finite box): the certified minimiser,
    ``_EMPTY`` if the polyhedron is certified empty, ``None`` if neither was reached; and the
    last dual vector (its lower bound is :func:`dual_lower_bound`'s to certify)."""
    m = a.shape[0]
    pmax = 0.5 * float(np.sum(np.maximum(lo * lo, hi * hi)))
    last = [np.zeros(m)]

    def neg_q(lam: np.ndarray) -> tuple[float, np.ndarray]:
        last[0] = np.maximum(lam, 0.0)
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
        return _EMPTY, last[0]
    lam = np.maximum(res.x, 0.0)
    for _ in range(10):
        g = a.T @ lam
        r = np.clip(g, lo, hi)
        ar = a @ r
        rn2 = float(r @ r)
        viol = float(np.max(b - ar))
        gap = float(lam @ (ar - b))
        if viol <= FEAS_TOL * (1.0 + np.sqrt(rn2)) and abs(gap) <= GAP_TOL * max(rn2, 1e-300):
            return r, lam
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
    return None, lam


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
    if np.any(b[amax == 0.0] > 0.0):
        return a[:0], b[:0], False
    au, bu, _, _ = _unit_rows_scaled(a, b)
    return au, bu, True


def _unit_rows_scaled(a: np.ndarray, b: np.ndarray
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """:func:`unit_rows` without the zero rows' check: ``(a_u, b_u, keep, scale)`` with row
    ``j`` of ``a_u`` the rounded ``scale_j a_{keep_j}`` (so a dual vector ``lam_u`` on the unit
    rows is ``lam_u * scale`` on the rows of ``a``)."""
    amax = np.abs(a).max(axis=1, initial=0.0) if a.size else np.zeros(a.shape[0])
    keep = amax != 0.0
    a, b, amax = a[keep], b[keep], amax[keep]
    # exact power-of-two prescaling so that the norm below neither underflows nor overflows
    _, e = np.frexp(amax)
    a = np.ldexp(a, -e[:, None])
    b = np.ldexp(b, -e)
    norms = np.linalg.norm(a, axis=1)
    return a / norms[:, None], b / norms, keep, np.ldexp(1.0 / norms, -e)


def _polish(a: np.ndarray, b: np.ndarray, r: np.ndarray, u: np.ndarray
            ) -> tuple[np.ndarray, np.ndarray | None]:
    """KKT polish of an approximate LDP solution (see module docstring), with its
    multipliers on every row (None if the polish was not accepted)."""
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
            full = np.zeros(a.shape[0])
            full[act] = np.maximum(lam, 0.0)
            return cand, full
    return r, None


#: unit roundoff of float64
_U = 2.0**-53


def _gam(k: int) -> float:
    """``gamma_k = k u / (1 - k u)`` (Higham 2002, Lemma 3.1), as a float slightly above."""
    return k * _U / (1.0 - k * _U) * (1.0 + 1e-10)


def dual_lower_bound(a: np.ndarray, b: np.ndarray, rows: np.ndarray, lam: np.ndarray,
                     lo: np.ndarray | None, hi: np.ndarray | None, err_a: np.ndarray,
                     err_b: np.ndarray) -> float:
    """A certified lower bound on ``||r||`` over ``P = {a r >= b, lo <= r <= hi}`` from any
    ``lam >= 0`` on the rows ``rows`` of ``[a; I; -I]`` (box faces as rows where an index is
    ``>= m``), with the data off by at most ``err_a``, ``err_b`` and every rounding charged.

    Without the box (weak duality of one aggregated row): every ``r`` of ``P`` has
    ``(A^T lam)^T r >= b^T lam``, so ``||r|| >= b^T lam / ||A^T lam||`` (Cauchy-Schwarz; data
    errors ``E``, ``e``: ``(||A^T lam|| + ||E^T lam||) ||r|| >= b^T lam - e^T lam``).
    With a finite box, also Lagrangian weak duality (the larger bound is returned): for ``r``
    in ``P``,
    ``||r||^2/2 >= ||r||^2/2 - lam^T (A r - b) >= q(lam) = b^T lam + sum_i min_{lo_i <= t <=
    hi_i} (t^2/2 - (A^T lam)_i t)``, less ``lam^T (E M + e)`` for the data (``M_i = max(|lo_i|,
    |hi_i|)``).  Roundings: ``|fl(A^T lam) - A^T lam| <= gamma_m |A|^T lam``, and each sum
    charged by ``gamma_k`` of its absolute terms (Higham 2002, §3.1); the coordinate terms
    are ``M_i``-Lipschitz in ``(A^T lam)_i``.  Returns ``inf`` where ``P`` is certified empty."""
    m, n = a.shape
    lam = np.maximum(np.asarray(lam, dtype=np.float64), 0.0)
    if lam.size == 0 or not np.all(np.isfinite(lam)) or not lam.any():
        return 0.0
    boxed = lo is not None and hi is not None
    if np.any(rows >= m + (2 * n if boxed else 0)):
        return 0.0
    gen, low, upp = rows < m, (rows >= m) & (rows < m + n), rows >= m + n
    a_r, b_r, ea_r, eb_r = a[rows[gen]], b[rows[gen]], err_a[rows[gen]], err_b[rows[gen]]
    lam_g = lam[gen]
    # box faces as rows: e_j r >= lo_j and -e_j r >= -hi_j (exact rows, no data error)
    face = np.zeros(n)
    face_abs = np.zeros(n)
    face_b, face_babs = 0.0, 0.0
    if boxed:
        assert lo is not None and hi is not None
        jl, jh = rows[low] - m, rows[upp] - m - n
        if not (np.all(np.isfinite(lo[jl])) and np.all(np.isfinite(hi[jh]))):
            return 0.0  # infinite faces carry no information
        np.add.at(face, jl, lam[low])
        np.add.at(face, jh, -lam[upp])
        np.add.at(face_abs, jl, lam[low])
        np.add.at(face_abs, jh, lam[upp])
        face_b = float(lo[jl] @ lam[low] - hi[jh] @ lam[upp])
        face_babs = float(np.abs(lo[jl]) @ lam[low] + np.abs(hi[jh]) @ lam[upp])
    if not (np.all(np.isfinite(a_r)) and np.all(np.isfinite(b_r))):
        return 0.0
    k = len(rows) + 2
    with np.errstate(over="ignore", invalid="ignore"):
        g = a_r.T @ lam_g + face
        dg = (_gam(k + 2) * (np.abs(a_r).T @ lam_g + face_abs)
              + ea_r.T @ lam_g * (1 + 1e-10))
        beta = float(b_r @ lam_g) + face_b
        dbeta = (_gam(k + 2) * (float(np.abs(b_r) @ lam_g) + face_babs)
                 + float(eb_r @ lam_g) * (1 + 1e-10))
        cs = 0.0  # the aggregated row's bound (scale-free; tight where lam weighs box rows)
        beta_low = beta - dbeta - 1e-300
        g_up = (float(np.linalg.norm(g)) + float(np.linalg.norm(dg))) * (1 + _gam(n + 4))
        if np.isfinite(beta_low) and beta_low > 0.0 and np.isfinite(g_up):
            cs = np.inf if g_up == 0.0 else beta_low / g_up * (1.0 - 4 * _U)
        if boxed and np.all(np.isfinite(lo)) and np.all(np.isfinite(hi)):
            big = np.maximum(np.abs(lo), np.abs(hi))
            t = np.clip(g, lo, hi)
            terms = 0.5 * t * t - g * t
            q = beta + float(terms.sum())
            dq = (dbeta + _gam(n + 8) * (abs(beta) + float(np.sum(0.5 * t * t + np.abs(g * t))))
                  + float(big @ dg) * (1 + 1e-10) + 1e-300)
            q_low = q - dq
            if not np.isfinite(q_low) or q_low <= 0.0:
                return cs
            pmax = 0.5 * float(np.sum(big * big)) * (1 + _gam(n + 2))
            if q_low > pmax:
                return np.inf
            return max(cs, float(np.sqrt(2.0 * q_low)) * (1.0 - 4 * _U))
        return cs
