"""Branch-and-bound over ReLU activation patterns for the exact minimal L2 perturbation.

For ``f(z) = W_L relu(... relu(W_0 z + b_0) ...) + b_L`` and a point ``x`` of class ``c``:

    rho(x) = min_{c' != c} min_{P} min { ||r|| : x + r in Q_P, g_{c'}^P(x + r) >= 0 }

where ``P`` ranges over activation patterns, ``Q_P`` is the polyhedron on which every hidden
pre-activation has the sign ``P`` prescribes (non-strictly), and ``g_{c'}^P`` is the affine
map ``f_{c'} - f_c`` restricted to ``Q_P``.  On ``Q_P`` the network *equals* its pattern-``P``
linearisation (ties ``y = 0`` give ``relu(0) = 0`` either way) and ``union_P Q_P = R^d``, so
the minimum over patterns is exact.  See ``docs/exact.md`` for the pruning rules and why
they never discard the optimum.
"""

from __future__ import annotations

import heapq
import itertools
import time
from dataclasses import dataclass, field

import numpy as np

from boundkit.exact.convert import AffineReluNet
from boundkit.exact.qp import min_norm_point


class SearchBudgetExceeded(Exception):
    """Internal: the branch-and-bound exceeded its node or region budget."""

    def __init__(self, regions: int, nodes: int) -> None:
        super().__init__(f"{regions} regions, {nodes} nodes")
        self.regions, self.nodes = regions, nodes


@dataclass
class SearchResult:
    """Outcome of :func:`exact_search` for one sample (all float64, flattened input space)."""

    radius: float
    perturbation: np.ndarray | None  # minimiser r*, None if no class change exists
    adv_class: int  # -1 if none
    pattern: list[np.ndarray] | None  # activation pattern of the region attaining r*
    regions: int  # leaf regions (full activation patterns) whose QP was solved
    nodes: int  # branch-and-bound nodes processed


@dataclass
class _Node:
    lb: float
    signs: list[np.ndarray]  # per hidden layer: +1 active, -1 inactive, 0 not fixed yet
    layer: int  # first layer with unfixed neurons (== L: all fixed)
    rows_a: np.ndarray  # constraints rows_a @ r >= rows_h, r = z - x
    rows_h: np.ndarray
    pre_w: np.ndarray  # pre-activation of `layer` (or logits if layer == L) = pre_w z + pre_b
    pre_b: np.ndarray
    point: np.ndarray | None  # exact min-norm point of the node polyhedron, if known
    bounds: list[tuple[np.ndarray, np.ndarray]] | None = None
    crown_rho: float = np.inf
    crown_fixed: int = -1
    nfixed: int = 0
    extra: dict = field(default_factory=dict)


def pattern_affine(
    net: AffineReluNet, pattern: list[np.ndarray], x: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Polyhedron ``Q_P`` (as ``A r >= h``, ``r = z - x``) and logits ``F z + phi`` on it."""
    d = net.in_dim
    m_w, m_b = np.eye(d), np.zeros(d)
    rows_a, rows_h = [], []
    for w, b, s in zip(net.weights[:-1], net.biases[:-1], pattern):
        p_w, p_b = w @ m_w, w @ m_b + b
        v = p_w @ x + p_b
        sign = np.where(s, 1.0, -1.0)
        rows_a.append(sign[:, None] * p_w)
        rows_h.append(-sign * v)
        m_w, m_b = s[:, None] * p_w, s * p_b
    f_w = net.weights[-1] @ m_w
    f_b = net.weights[-1] @ m_b + net.biases[-1]
    a = np.vstack(rows_a) if rows_a else np.zeros((0, d))
    h = np.concatenate(rows_h) if rows_h else np.zeros(0)
    return a, h, f_w, f_b


def region_pattern(net: AffineReluNet, z: np.ndarray) -> list[np.ndarray]:
    """Activation pattern (``pre >= 0`` counts as active) of the point ``z``."""
    out, h = [], z
    for w, b in zip(net.weights[:-1], net.biases[:-1]):
        y = w @ h + b
        out.append(y >= 0)
        h = np.maximum(y, 0.0)
    return out


def ray_first_crossing(
    net: AffineReluNet, x: np.ndarray, u: np.ndarray, c: int, t_max: float = np.inf
) -> tuple[float, int, list[np.ndarray]] | None:
    """First ``t >= 0`` with ``max_{c'!=c} f_{c'}(x + t u) - f_c(x + t u) >= 0`` (exact).

    Walks the ray through the linear regions it crosses; within a region every
    pre-activation and margin is affine in ``t``, so crossings are roots of affine functions.
    Returns ``(t, c', pattern of the region containing the crossing)`` or ``None``.
    """
    t = 0.0
    for _ in range(100000):
        al, be = x.copy(), u.copy()
        pattern, t_next = [], np.inf
        for w, b in zip(net.weights[:-1], net.biases[:-1]):
            ya, yb = w @ al + b, w @ be
            yt = ya + t * yb
            tol = 1e-12 * (np.abs(ya) + t * np.abs(yb) + 1e-300)
            act = (yt > tol) | ((np.abs(yt) <= tol) & (yb > 0))
            with np.errstate(divide="ignore", invalid="ignore"):
                roots = -ya / yb
            ok = np.isfinite(roots) & (roots > t * (1 + 1e-12) + 1e-300)
            if ok.any():
                t_next = min(t_next, float(roots[ok].min()))
            pattern.append(act)
            al, be = np.where(act, ya, 0.0), np.where(act, yb, 0.0)
        ga = net.weights[-1] @ al + net.biases[-1]
        gb = net.weights[-1] @ be
        ga, gb = ga - ga[c], gb - gb[c]
        hi = min(t_next, t_max)
        best_t, best_k = np.inf, -1
        for k in range(len(ga)):
            if k == c:
                continue
            gt = ga[k] + t * gb[k]
            if gt >= 0:
                tk = t
            elif gb[k] > 0:
                tk = -ga[k] / gb[k]
            else:
                continue
            if tk <= hi and tk < best_t:
                best_t, best_k = tk, k
        if best_k >= 0:
            return best_t, best_k, pattern
        if t_next >= t_max or not np.isfinite(t_next):
            return None
        t = t_next
    return None


def _crown(
    net: AffineReluNet, x: np.ndarray, rho: float, signs: list[np.ndarray], c: int
) -> tuple[list[tuple[np.ndarray, np.ndarray]], np.ndarray, np.ndarray] | None:
    """Linear-relaxation (CROWN, Zhang et al. 2018) bounds over ``B(x, rho)`` inside a node.

    Returns per-layer pre-activation intervals and a linear upper bound
    ``f_{c'}(z) - f_c(z) <= A[c'] z + a0[c']`` valid for every ``z`` in the ball whose
    activation pattern agrees with the fixed ``signs``; ``None`` if no such ``z`` exists.
    Fixed-active neurons get the relaxation ``relu(y) = y`` with ``y >= 0``, fixed-inactive
    ones ``relu(y) = 0`` with ``y <= 0``, unstable ones the triangle upper bound
    ``u (y - l) / (u - l)`` and lower bound ``alpha y`` (``alpha`` in {0, 1}).
    """
    ws, bs = net.weights, net.biases
    nl = len(ws) - 1
    bounds: list[tuple[np.ndarray, np.ndarray]] = []
    su_l, iu_l, sl_l = [], [], []
    k_cls = net.num_classes
    for k in range(nl + 1):
        if k < nl:
            n = ws[k].shape[0]
            lam = np.vstack([np.eye(n), -np.eye(n)])
        else:
            lam = np.delete(np.eye(k_cls), c, axis=0)
            lam[:, c] -= 1.0
        a = lam @ ws[k]
        a0 = lam @ bs[k]
        for i in range(k - 1, -1, -1):
            pos = a >= 0
            a0 = a0 + (np.where(pos, a, 0.0) * iu_l[i]).sum(axis=1)
            a = np.where(pos, a * su_l[i], a * sl_l[i])
            a0 = a0 + a @ bs[i]
            a = a @ ws[i]
        if k == nl:
            full = np.insert(a, c, 0.0, axis=0)
            full0 = np.insert(a0, c, -np.inf, axis=0)
            return bounds, full, full0
        ub = a @ x + a0 + rho * np.linalg.norm(a, axis=1)
        u, l = ub[:n], -ub[n:]
        s = signs[k]
        l = np.where(s > 0, np.maximum(l, 0.0), l)
        u = np.where(s < 0, np.minimum(u, 0.0), u)
        if np.any(l > u):
            return None
        bounds.append((l, u))
        act = (s > 0) | ((s == 0) & (l >= 0))
        dead = (s < 0) | ((s == 0) & (u <= 0))
        unst = ~act & ~dead
        den = np.where(unst, u - l, 1.0)
        su = np.where(act, 1.0, np.where(unst, u / den, 0.0))
        iu = np.where(unst, -l * u / den, 0.0)
        sl = np.where(act, 1.0, np.where(unst & (u >= -l), 1.0, 0.0))
        su_l.append(su)
        iu_l.append(iu)
        sl_l.append(sl)
    raise AssertionError("unreachable")


def _halfspace_dist(a: np.ndarray, v: float) -> float:
    """Distance from ``x`` to ``{x + r : a r + v >= 0}``."""
    if v >= 0:
        return 0.0
    na = float(np.linalg.norm(a))
    return np.inf if na == 0.0 else -v / na


def exact_search(
    net: AffineReluNet,
    x: np.ndarray,
    box: tuple[np.ndarray, np.ndarray] | None,
    rtol: float,
    max_regions: int,
    deadline: float | None = None,
) -> SearchResult:
    """Exact ``rho(x)`` (to relative ``rtol``) by best-first branch-and-bound; see module doc.

    Raises :class:`SearchBudgetExceeded` beyond ``max_regions`` regions (``20 max_regions``
    nodes) or, if given, once ``time.perf_counter()`` passes ``deadline`` (checked per node).
    """
    d = net.in_dim
    nl = len(net.weights) - 1
    logits = net.forward(x[None])[0]
    c = int(np.argmax(logits))
    gaps = logits - logits[c]
    gaps[c] = -np.inf
    if gaps.max() >= 0:
        k = int(np.argmax(gaps))
        return SearchResult(0.0, np.zeros(d), k, region_pattern(net, x), 0, 0)

    if box is not None:
        lo, hi = box
        fin_lo, fin_hi = np.isfinite(lo), np.isfinite(hi)
        eye = np.eye(d)
        base_a = np.vstack([eye[fin_lo], -eye[fin_hi]])
        base_h = np.concatenate([(lo - x)[fin_lo], (x - hi)[fin_hi]])
    else:
        base_a, base_h = np.zeros((0, d)), np.zeros(0)

    best = np.inf
    best_r: np.ndarray | None = None
    best_k = -1
    best_pat: list[np.ndarray] | None = None
    regions = 0

    def solve_leaf(pat: list[np.ndarray], a: np.ndarray, h: np.ndarray,
                   f_w: np.ndarray, f_b: np.ndarray, lb: float) -> None:
        nonlocal best, best_r, best_k, best_pat, regions
        regions += 1
        g_w = f_w - f_w[c]
        g_v = g_w @ x + (f_b - f_b[c])
        order = np.argsort(-g_v)
        for k in order:
            if k == c:
                continue
            cut = best * (1.0 - rtol)
            if max(lb, _halfspace_dist(g_w[k], float(g_v[k]))) >= cut:
                continue
            r = min_norm_point(np.vstack([a, g_w[k][None]]), np.append(h, -g_v[k]))
            if r is None:
                continue
            rn = float(np.linalg.norm(r))
            if rn < best:
                best, best_r, best_k, best_pat = rn, r, int(k), [p.copy() for p in pat]

    # Upper bound: exact first crossings along a few rays (then the exact QP of that region).
    pat0 = region_pattern(net, x)
    a0, h0, fw0, fb0 = pattern_affine(net, pat0, x)
    t_cap = np.inf
    for k in range(net.num_classes):
        if k == c:
            continue
        gk = fw0[k] - fw0[c]
        ng = float(np.linalg.norm(gk))
        if ng == 0.0:
            continue
        u = gk / ng
        if box is not None:
            with np.errstate(divide="ignore", invalid="ignore"):
                tl = np.where(u < 0, (box[0] - x) / u, np.inf)
                th = np.where(u > 0, (box[1] - x) / u, np.inf)
            t_cap = float(min(np.nanmin(tl), np.nanmin(th)))
        hit = ray_first_crossing(net, x, u, c, t_cap)
        if hit is None:
            continue
        _, _, pat = hit
        a, h, f_w, f_b = pattern_affine(net, pat, x)
        solve_leaf(pat, np.vstack([base_a, a]), np.append(base_h, h), f_w, f_b, 0.0)
    solve_leaf(pat0, np.vstack([base_a, a0]), np.append(base_h, h0), fw0, fb0, 0.0)

    if nl == 0:
        return SearchResult(best, best_r, best_k, best_pat, regions, 0)

    root = _Node(
        lb=0.0,
        signs=[np.zeros(w.shape[0], dtype=np.int8) for w in net.weights[:-1]],
        layer=0,
        rows_a=base_a,
        rows_h=base_h,
        pre_w=net.weights[0].copy(),
        pre_b=net.biases[0].copy(),
        point=np.zeros(d),
    )
    counter = itertools.count()
    heap: list[tuple[float, int, int, _Node]] = [(0.0, 0, next(counter), root)]
    nodes = 0
    max_nodes = 20 * max_regions
    while heap:
        lb_key, _, _, node = heapq.heappop(heap)
        cut = best * (1.0 - rtol)
        if node.lb >= cut:
            if lb_key >= cut:
                break  # best-first: every remaining node is at least as far
            continue
        nodes += 1
        if (nodes > max_nodes or regions > max_regions
                or (deadline is not None and time.perf_counter() > deadline)):
            raise SearchBudgetExceeded(regions, nodes)
        lb_in = node.lb
        if node.point is None:
            r = min_norm_point(node.rows_a, node.rows_h)
            if r is None:
                continue
            node.point = r
            node.lb = max(node.lb, float(np.linalg.norm(r)))
            if node.lb >= cut:
                continue
        if np.isfinite(best) and (
            node.crown_fixed != node.nfixed or best < 0.98 * node.crown_rho
        ):
            res = _crown(net, x, best, node.signs, c)
            if res is None:
                continue
            node.bounds, m_w, m_b = res
            node.crown_rho, node.crown_fixed = best, node.nfixed
            dist = np.inf
            for k in range(net.num_classes):
                if k == c:
                    continue
                mv = float(m_w[k] @ x + m_b[k])
                dk = _halfspace_dist(m_w[k], mv)
                if dk >= min(dist, cut) or node.rows_a.shape[0] == 0:
                    dist = min(dist, dk)
                    continue
                # distance to (node polyhedron) n (relaxed class-k half-space)
                rk = min_norm_point(
                    np.vstack([node.rows_a, m_w[k][None]]), np.append(node.rows_h, -mv)
                )
                if rk is not None:
                    dist = min(dist, float(np.linalg.norm(rk)))
            if dist >= best:
                continue
            node.lb = max(node.lb, dist)
            if node.lb >= cut:
                continue
        if node.lb > lb_in * (1 + 1e-12) and heap and node.lb > heap[0][0]:
            heapq.heappush(heap, (node.lb, -node.nfixed, next(counter), node))
            continue

        if node.layer == nl:
            pat = [s > 0 for s in node.signs]
            solve_leaf(pat, node.rows_a, node.rows_h, node.pre_w, node.pre_b, node.lb)
            continue

        # Fix every neuron of the current layer whose other side cannot hold a better point.
        i = node.layer
        s = node.signs[i]
        v_all = node.pre_w @ x + node.pre_b
        norms = np.linalg.norm(node.pre_w, axis=1)
        bl, bu = node.bounds[i] if node.bounds is not None else (None, None)
        new_a, new_h = [], []
        split: list[tuple[float, int]] = []
        for j in np.flatnonzero(s == 0):
            v, nj = float(v_all[j]), float(norms[j])
            if nj <= 1e-13 * max(1.0, float(np.abs(node.pre_w).max(initial=0.0))):
                s[j] = 1 if v >= 0 else -1
                continue
            d_act = max(0.0, -v) / nj
            d_ina = max(0.0, v) / nj
            ok_act = max(node.lb, d_act) < cut and not (bu is not None and bu[j] <= 0)
            ok_ina = max(node.lb, d_ina) < cut and not (bl is not None and bl[j] >= 0)
            if ok_act and ok_ina:
                split.append((min(d_act, d_ina), int(j)))
                continue
            if not ok_act and not ok_ina:
                s = None
                break
            sg = 1.0 if ok_act else -1.0
            s[j] = 1 if ok_act else -1
            new_a.append(sg * node.pre_w[j])
            new_h.append(-sg * v)
        if s is None:
            continue
        if new_a:
            node.rows_a = np.vstack([node.rows_a, np.array(new_a)])
            node.rows_h = np.append(node.rows_h, new_h)
            if node.point is not None and np.any(
                node.rows_a[-len(new_a):] @ node.point < np.array(new_h) - 1e-12
            ):
                node.point = None
        node.nfixed = int(sum(int((t != 0).sum()) for t in node.signs))
        if split:
            if node.point is None:
                heapq.heappush(heap, (node.lb, -node.nfixed, next(counter), node))
                continue
            _, j = min(split)
            v = float(v_all[j])
            for sg in (1, -1):
                ch_signs = [t.copy() for t in node.signs]
                ch_signs[i][j] = sg
                row = sg * node.pre_w[j]
                rh = -sg * v
                inside = float(row @ node.point) >= rh - 1e-12
                child = _Node(
                    lb=max(node.lb, _halfspace_dist(row, -rh)),
                    signs=ch_signs,
                    layer=i,
                    rows_a=np.vstack([node.rows_a, row[None]]),
                    rows_h=np.append(node.rows_h, rh),
                    pre_w=node.pre_w,
                    pre_b=node.pre_b,
                    point=node.point if inside else None,
                    bounds=node.bounds,
                    crown_rho=node.crown_rho,
                    crown_fixed=node.crown_fixed,
                    nfixed=node.nfixed + 1,
                )
                if child.lb < cut:
                    heapq.heappush(heap, (child.lb, -child.nfixed, next(counter), child))
            continue
        # Layer complete: move on to the next layer (or the logits).
        act = (s > 0).astype(np.float64)
        m_w, m_b = act[:, None] * node.pre_w, act * node.pre_b
        node.pre_w = net.weights[i + 1] @ m_w
        node.pre_b = net.weights[i + 1] @ m_b + net.biases[i + 1]
        node.layer = i + 1
        heapq.heappush(heap, (node.lb, -node.nfixed, next(counter), node))
    return SearchResult(best, best_r, best_k, best_pat, regions, nodes)
