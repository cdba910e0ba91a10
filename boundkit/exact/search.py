"""Branch-and-bound over ReLU activation patterns for the exact minimal L2 perturbation.

For ``f(z) = W_L relu(... relu(W_0 z + b_0) ...) + b_L`` and a point ``x`` of class ``c``:

    rho(x) = min_{c' != c} min_{P} min { ||r|| : x + r in Q_P, g_{c'}^P(x + r) >= 0 }

where ``P`` ranges over activation patterns, ``Q_P`` is the polyhedron on which every hidden
pre-activation has the sign ``P`` prescribes (non-strictly), and ``g_{c'}^P`` is the affine
map ``f_{c'} - f_c`` restricted to ``Q_P``.  On ``Q_P`` the network *equals* its pattern-``P``
linearisation (ties ``y = 0`` give ``relu(0) = 0`` either way) and ``union_P Q_P = R^d``, so
the minimum over patterns is exact.  The upper end is the smallest QP distance of a region
whose point the model confirms; the lower end comes from ``bab``'s domains
(:mod:`boundkit.bounds.bab`: one per competing class, ReLU splits in any order, batched
linear bounds with optimised slopes and beta multipliers), each certifying the radius its
bound gives, and a domain with every neuron split or stable is a leaf solved by its
region's QP (``bab_nodes`` in :func:`exact_search`).  Where no finite ball exists (no
adversarial point found and no box) the layer-ordered region search runs instead.  See
``docs/exact.md`` for the proofs and why they never discard the optimum.
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from boundkit.bounds import walk
from boundkit.bounds.bab import options as _clock
from boundkit.bounds.bab.bounding import BabPlan, Bounder, bab_plan
from boundkit.bounds.bab.branching import branch
from boundkit.bounds.bab.domains import Domains
from boundkit.bounds.bab.options import NEVER, BabOptions
from boundkit.bounds.crown import CrownRun, plan_crown
from boundkit.bounds.numerics import gamma
from boundkit.bounds.relaxation import LinearBounds, Splits
from boundkit.exact.convert import AffineReluNet
from boundkit.exact.qp import MinNorm, min_norm, min_norm_point, unit_rows
from boundkit.graph.capture import capture
from boundkit.graph.graph import Graph


class SearchBudgetExceeded(Exception):
    """Internal: the branch-and-bound exceeded its node, region or time budget (``what``).

    ``lower <= rho(x) <= upper`` where it stopped: ``upper`` the smallest distance with a
    verified witness (inf if none), ``lower`` the smallest bound of the nodes still open
    (0 before the branch-and-bound started)."""

    def __init__(self, regions: int, nodes: int, what: str = "max_regions",
                 lower: float = 0.0, upper: float = np.inf) -> None:
        super().__init__(f"{what}: {regions} regions, {nodes} nodes")
        self.regions, self.nodes, self.what = regions, nodes, what
        self.lower, self.upper = lower, upper


#: ``verify(r)`` re-runs the user's model at ``x + r``: 0 if it is not strictly adversarial
#: in float64, 1 if it is in float64 only, 2 if also in the model's own dtype
Verifier = Callable[[np.ndarray], int]

#: the witness of a radius ``R`` has norm ``<= (1 + WITNESS_SLACK) R``
WITNESS_SLACK = 1e-6


@dataclass
class SearchResult:
    """Outcome of :func:`exact_search` for one sample (all float64, flattened input space)."""

    radius: float
    perturbation: np.ndarray | None  # minimiser r*, None if no class change exists
    adv_class: int  # -1 if none
    pattern: list[np.ndarray] | None  # activation pattern of the region attaining r*
    regions: int  # leaf regions (full activation patterns) whose QP was solved
    nodes: int  # branch-and-bound nodes processed
    witness: np.ndarray | None = None  # verified strictly adversarial point near r*
    witness_level: int = 0  # the verifier's answer for `witness` (see `Verifier`)
    untrusted: float = np.inf  # smallest QP distance whose witness failed verification
    #: smallest certified lower bound (dual certificate, :func:`boundkit.exact.qp.min_norm`)
    #: of the regions closed on a QP; the radius is exact only if it is >= (1 - rtol) radius
    certified: float = np.inf


@dataclass
class _Node:
    lb: float
    signs: list[np.ndarray]  # per hidden layer: +1 active, -1 inactive, 0 not fixed yet
    layer: int  # first layer with unfixed neurons (== L: all fixed)
    rows_a: np.ndarray  # constraints rows_a @ r >= rows_h, r = z - x
    rows_h: np.ndarray
    rows_id: np.ndarray  # the hidden neuron (index over all layers) of each row
    pre_w: np.ndarray  # pre-activation of `layer` (or logits if layer == L) = pre_w z + pre_b
    pre_b: np.ndarray
    point: np.ndarray | None  # exact min-norm point of the node polyhedron, if known
    bounds: list[tuple[np.ndarray, np.ndarray]] | None = None
    crown_rho: float = np.inf
    crown_fixed: int = -1
    nfixed: int = 0


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


def _gam(k: int) -> float:
    """``gamma_k`` of float64 (Higham 2002, Lemma 3.1), slightly rounded up."""
    ku = k * 2.0**-53
    return ku / (1.0 - ku) * (1.0 + 1e-10)


def pattern_affine_errors(
    net: AffineReluNet, pattern: list[np.ndarray], x: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Bounds on how far :func:`pattern_affine`'s float64 ``(A, h, F, phi)`` are from the
    exact ones of the same weights (same shapes, elementwise, ``>= 0``).

    A product ``W M`` computed from ``M~ = M + D`` is off by at most
    ``gamma_n |W| |M~| + |W| |D|`` (Higham 2002, §3.5, with ``n`` the inner dimension), and
    a sum with a bias by ``gamma_{n+1}`` of its absolute terms; the error bounds themselves
    are inflated by ``1 + gamma`` for their own rounding."""
    d = net.in_dim
    m_w, m_b = np.eye(d), np.zeros(d)
    e_w, e_b = np.zeros((d, d)), np.zeros(d)
    ax = np.abs(x)
    ea_l, eh_l = [], []
    for i, (w, b, s) in enumerate(zip(net.weights[:-1], net.biases[:-1], pattern)):
        n, aw = w.shape[1], np.abs(w)
        p_w, p_b = w @ m_w, w @ m_b + b
        if i == 0:  # W I and W 0 + b: exact products (a sum of one non-zero term)
            ep_w, ep_b = np.zeros_like(p_w), np.zeros_like(p_b)
        else:
            ep_w = (_gam(n) * (aw @ np.abs(m_w)) + aw @ e_w) * (1 + _gam(n + 2))
            ep_b = (_gam(n + 1) * (aw @ np.abs(m_b) + np.abs(b)) + aw @ e_b) * (
                1 + _gam(n + 2))
        ev = (_gam(d + 1) * (np.abs(p_w) @ ax + np.abs(p_b)) + ep_w @ ax + ep_b) * (
            1 + _gam(d + 3))
        ea_l.append(ep_w)
        eh_l.append(ev)
        m_w, m_b = s[:, None] * p_w, s * p_b
        e_w, e_b = s[:, None] * ep_w, s * ep_b
    w, b = net.weights[-1], net.biases[-1]
    n, aw = w.shape[1], np.abs(w)
    ef_w = (_gam(n) * (aw @ np.abs(m_w)) + aw @ e_w) * (1 + _gam(n + 2))
    ef_b = (_gam(n + 1) * (aw @ np.abs(m_b) + np.abs(b)) + aw @ e_b) * (1 + _gam(n + 2))
    ea = np.vstack(ea_l) if ea_l else np.zeros((0, d))
    eh = np.concatenate(eh_l) if eh_l else np.zeros(0)
    return ea, eh, ef_w, ef_b


def find_witness(
    net: AffineReluNet,
    x: np.ndarray,
    pattern: list[np.ndarray],
    k: int,
    c: int,
    radius: float,
    r_star: np.ndarray,
    box: tuple[np.ndarray, np.ndarray] | None,
    verify: Verifier | None,
) -> tuple[np.ndarray | None, int]:
    """A strictly adversarial perturbation of norm ``<= (1 + WITNESS_SLACK) radius``, checked
    by ``verify`` (the user's model re-run at ``x + r``), and the verifier's level.

    Candidates, in order: ``(1 + WITNESS_SLACK / 2) r*`` (no QP; enough where the boundary is
    smooth at ``r*``), then the region-``pattern`` QP with every constraint (unit rows) and
    the class-``k`` margin tightened by ``eta = radius 10^-e``, ``e = 7..12``.  The first
    candidate the verifier passes in both float64 and the model's dtype is returned, else the
    first it passes in float64; ``(None, 0)`` if none passes: the region's answer is then
    not trusted.  Without ``verify`` the float64 :class:`AffineReluNet` decides (level 1).
    """
    if radius == 0.0:
        return r_star.copy(), 2
    first: np.ndarray | None = None

    def inbox(r: np.ndarray) -> np.ndarray:
        # the QP's point is inside the box up to the rounding of x + (lo - x)
        return r if box is None else np.clip(x + r, box[0], box[1]) - x

    def level(r: np.ndarray) -> int:
        if verify is not None:
            return verify(r)
        logits = net.forward((x + r)[None])[0]
        return int(np.delete(logits, c).max() > logits[c])

    cand = inbox(r_star * (1 + WITNESS_SLACK / 2))
    lv = level(cand) if np.linalg.norm(cand) <= (1 + WITNESS_SLACK) * radius else 0
    if lv == 2:
        return cand, 2
    if lv == 1:
        first = cand
    a, h, f_w, f_b = pattern_affine(net, pattern, x)
    g_w = f_w[k] - f_w[c]
    g_v = float(g_w @ x + f_b[k] - f_b[c])
    a_all, h_all, ok = unit_rows(np.vstack([a, g_w[None]]), np.append(h, -g_v))
    if not ok:
        return (first, 1) if first is not None else (None, 0)
    blo, bhi = (None, None) if box is None else (box[0] - x, box[1] - x)
    for e in range(7, 13):
        # the region's rows and the margin tightened; the box is closed, its faces allowed
        eta = radius * 10.0 ** (-e)
        r = min_norm_point(a_all, h_all + eta, blo, bhi)
        if r is None:
            continue
        r = inbox(r)
        if np.linalg.norm(r) > (1 + WITNESS_SLACK) * radius:
            continue
        lv = level(r)
        if lv == 2:
            return r, 2
        if lv == 1 and first is None:
            first = r
    return (first, 1) if first is not None else (None, 0)


#: most steps and most flipped neurons per step of the region descent (``walk``)
WALK_STEPS, WALK_BRANCH = 50, 16
#: the share of a time limit the first upper bounds (rays, descent from their regions and
#: the DeepFool point) may take before the search turns to the lower end: each region there
#: costs one QP per competing class, and on some samples the descent alone would use the
#: whole limit and leave no lower bound beyond 0
DESCENT_SHARE = 0.25


def deepfool_point(net: AffineReluNet, x: np.ndarray, c: int,
                   box: tuple[np.ndarray, np.ndarray] | None, steps: int = 50,
                   overshoot: float = 0.02) -> np.ndarray | None:
    """An adversarial point found by DeepFool (Moosavi-Dezfooli et al., CVPR 2016) on the
    exact region-wise linearisation: from ``z``, step to the nearest linearised class
    boundary ``(1 + overshoot)`` times, clipped to the box; ``None`` if none in ``steps``.
    Only used as a starting region for upper bounds."""
    z = x.copy()
    for _ in range(steps):
        pat = region_pattern(net, z)
        _, _, f_w, f_b = pattern_affine(net, pat, x)
        logits = f_w @ z + f_b
        g_v = logits - logits[c]
        g_v[c] = -np.inf
        if g_v.max() >= 0:
            return z
        g_w = f_w - f_w[c]
        nrm = np.linalg.norm(g_w, axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            dist = np.where(nrm > 0, -g_v / nrm, np.inf)
        dist[c] = np.inf
        k = int(np.argmin(dist))
        if not np.isfinite(dist[k]):
            return None
        z = z + (1 + overshoot) * (-g_v[k] / nrm[k] ** 2) * g_w[k]
        if box is not None:
            z = np.clip(z, box[0], box[1])
    return None


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


@dataclass
class NodeBounds:
    """The engine's linear bounds over ``B(x, rho)`` inside one branch-and-bound node.

    ``pre[i]`` are sound intervals ``(l, u)`` of the pre-activations of hidden layer ``i``
    (valid on the ball part of the node; not intersected with the node's own splits), and
    ``f_{c'}(z) - f_c(z) <= m_w[c'] @ z + m_b[c']`` for every ``z`` of the ball whose
    activation pattern agrees with the node's fixed signs (row ``c`` unused)."""

    pre: list[tuple[np.ndarray, np.ndarray]]
    m_w: np.ndarray
    m_b: np.ndarray


class NetCrown:
    r"""The engine's CROWN (:mod:`boundkit.bounds.crown`) on the graph of an
    :class:`AffineReluNet`: the graph and plan are built once per network (on first use), the
    sound pass once per sample (:meth:`run`), and :meth:`bounds` evaluates a batch of nodes at once,
    each with its split constraints (:class:`boundkit.bounds.relaxation.Splits`).

    Everything is the engine's float64 arithmetic with its rounding margins; the only step
    done here is reading the margin bound at the input before its concretisation
    (``f_c - f_{c'} >= <A, z> + bias - err``), whose evaluation in numpy is charged by
    :math:`\gamma_{d+3}(|A||x| + |bias| + err)`."""

    def __init__(self, net: AffineReluNet) -> None:
        self.net = net
        self._built = False  # the graph is captured on the first run (many searches end
        # before they need linear bounds)

    def _build(self) -> None:
        net = self.net
        layers: list[nn.Module] = []
        for w, b in zip(net.weights, net.biases):
            lin = nn.Linear(w.shape[1], w.shape[0], dtype=torch.float64)
            with torch.no_grad():
                lin.weight.copy_(torch.from_numpy(w))
                lin.bias.copy_(torch.from_numpy(b))
            layers += [lin, nn.ReLU()]
        model = nn.Sequential(*layers[:-1]).eval()
        self.graph = capture(model, (net.in_dim,), device="cpu")
        self.plan = plan_crown(self.graph)
        self.relus = [n.name for n in self.graph if n.op == "relu"]
        self.pre = [self.graph[r].inputs[0] for r in self.relus]
        order = [n for n in self.plan.nodes if n.op != "input"]
        if len(self.relus) != len(net.weights) - 1 or any(
            self.plan.rules[n.name] is None for n in order
        ):
            raise AssertionError("the captured graph is not the AffineReluNet's chain")
        self._order = order
        self._built = True

    def bab(self) -> tuple[Graph, BabPlan]:
        """The captured graph and its branch-and-bound plan (``bab``'s split ReLU rule on
        every ReLU; cached on the graph)."""
        if not self._built:
            self._build()
        return self.graph, bab_plan(self.graph)

    def run(self, x: np.ndarray) -> CrownRun:
        """The engine's run for one sample (its sound pass), to be subset per batch."""
        if not self._built:
            self._build()
        return CrownRun(self.graph, self.plan, torch.from_numpy(x)[None], None)

    def bounds(self, run: CrownRun, c: int, rho: float,
               signs: list[list[np.ndarray]]) -> list[NodeBounds | None]:
        """:class:`NodeBounds` over ``B(x, rho)`` for each node's ``signs`` (per hidden layer:
        +1 active, -1 inactive, 0 free), ``None`` where the node has no point in the ball."""
        nb = len(signs)
        sub = run.subset(torch.zeros(nb, dtype=torch.long))
        if sub is None:
            raise AssertionError("an AffineReluNet graph has no fallback node")
        sub.splits = Splits({
            r: torch.from_numpy(np.stack([s[i] for s in signs]))
            for i, r in enumerate(self.relus)
        })
        eps = torch.full((nb,), float(rho), dtype=torch.float64)
        ctx = sub.intervals(eps)
        empty = sub.splits.empty(ctx).tolist()
        spec = sub.margin_spec(torch.full((nb,), c, dtype=torch.long))  # e_c - e_k
        zero = torch.zeros(spec.shape[:2], dtype=torch.float64)
        rules = self.plan.rules
        state = walk.backward(
            self._order, {self.graph.logits.name: LinearBounds(spec, zero, zero)},
            lambda n, lb: rules[n.name].backward(n, ctx, lb))
        lb = state[self.graph.input.name]
        x0 = sub.x0
        a = lb.A.reshape(nb, spec.shape[1], -1)
        err = lb.err + lb.charge_forks(x0.abs())
        d = a.shape[2]
        slack = float(gamma(d + 3)) * (
            (a.abs() * x0.abs().unsqueeze(1)).sum(2) + lb.bias.abs() + err) + 1e-300
        # f_k - f_c <= -(<A_k, z> + bias_k - err_k) = m_w[k] z + m_b[k]
        m_w = (-a).numpy()
        m_b = (-lb.bias + err + slack).numpy()
        pre = [(ctx.intervals[p].lo.numpy(), ctx.intervals[p].hi.numpy()) for p in self.pre]
        out: list[NodeBounds | None] = []
        for j in range(nb):
            if empty[j]:
                out.append(None)
                continue
            out.append(NodeBounds([(lo[j], hi[j]) for lo, hi in pre], m_w[j], m_b[j]))
        return out


class SignRule:
    r"""The sides that a domain's splits already decide: the twin of a split unit
    (:meth:`tie_twins`), and units of the max-pooling tournament
    layers (:attr:`AffineReluNet.tournament_layers`, sparse matrices on the previous hidden
    layer's ReLU outputs :math:`h \ge 0`).

    A unit's pre-activation is :math:`y = \sum_j w_j h_j + b`; a source split inactive has
    :math:`h_j = 0` on the domain.  If no other source has :math:`w_j > 0` and
    :math:`b \le 0` then :math:`y \le 0` on the whole domain, and if none has
    :math:`w_j < 0` and :math:`b \ge 0` then :math:`y \ge 0`: splitting the unit to that
    side adds a constraint every point of the domain satisfies (no point is lost), where
    branching on it would make a child that is the same set or a face of it (a difference
    ``h_a - h_b`` of two inactive sources is 0 on the whole domain).  Without it a pooled
    net's search splits such units over and over."""

    def __init__(self, net: AffineReluNet) -> None:
        #: per tournament layer: its index, the masks of its positive and negative weights
        #: (sparse [n_i, n_{i-1}]) and its biases [n_i]
        self.layers: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        for i in net.tournament_layers:
            w = torch.from_numpy(net.weights[i])
            self.layers[i] = ((w > 0).double().to_sparse(), (w < 0).double().to_sparse(),
                              torch.from_numpy(net.biases[i]))
        #: per hidden layer, its twin pairs (:attr:`AffineReluNet.twins`) and each unit's
        #: twin (-1: none)
        self.pairs = [torch.from_numpy(net.twin_pairs(i)) for i in range(len(net.weights) - 1)]
        self.partner: list[np.ndarray] = []
        for i, pairs in enumerate(self.pairs):
            p_i = np.full(net.weights[i].shape[0], -1, dtype=np.int64)
            pr = pairs.numpy()
            p_i[pr[:, 0]], p_i[pr[:, 1]] = pr[:, 1], pr[:, 0]
            self.partner.append(p_i)

    def sides(self, prev: torch.Tensor, cur: torch.Tensor, layer: int) -> torch.Tensor:
        """``cur`` (int8 ``[D, n_i]``: +1 active, -1 inactive, 0 free) with the decided
        units of tournament layer ``layer`` set, given the previous layer's sides ``prev``
        (int8 ``[D, n_{i-1}]``)."""
        pos, neg, b = self.layers[layer]
        alive = (prev != -1).double().T  # [n_{i-1}, D]
        up = torch.sparse.mm(pos, alive).T > 0  # some live source can raise y
        down = torch.sparse.mm(neg, alive).T > 0  # some live source can lower y
        free = cur == 0
        off = free & ~up & (b <= 0)
        on = free & ~down & (b >= 0) & ~off
        return torch.where(off, -1, torch.where(on, 1, cur)).to(torch.int8)

    def apply(self, kids: Domains, relus: list[str]) -> Domains:
        """``kids`` with every decided unit split: twins of split units, then the sides
        the splits decide (in layer order, so that decisions cascade), then the twins of
        those."""
        return self.tie_twins(self.decide(self.tie_twins(kids, relus), relus), relus)

    def decide(self, kids: Domains, relus: list[str]) -> Domains:
        """``kids`` with the units of the tournament layers their splits decide split."""
        for i, (_, _, b) in sorted(self.layers.items()):
            prev = kids.signs.get(relus[i - 1])
            if prev is None:
                continue  # nothing split before it: every source alive
            cur = kids.signs.get(relus[i])
            cur = torch.zeros(len(kids), b.numel(), dtype=torch.int8) if cur is None else cur
            new = self.sides(prev, cur, i)
            if bool((new != cur).any()):
                kids.signs[relus[i]] = new
        return kids

    def tie_twins(self, kids: Domains, relus: list[str]) -> Domains:
        """``kids`` with every twin of a split unit (units reading ``b`` and ``-b``) split
        to the opposite side: ``b >= 0`` is both ``relu(b)`` active and ``relu(-b)``
        inactive, so the added split removes no point of a domain."""
        for name, pairs in zip(relus, self.pairs):
            if not len(pairs) or name not in kids.signs:
                continue
            sg = kids.signs[name].clone()
            a, b = sg[:, pairs[:, 0]], sg[:, pairs[:, 1]]
            sg[:, pairs[:, 1]] = torch.where(b == 0, -a, b)
            sg[:, pairs[:, 0]] = torch.where(a == 0, -b, a)
            kids.signs[name] = sg
        return kids




#: most nodes popped per round of the branch-and-bound (their linear bounds: one engine
#: call); see the loop of :func:`exact_search`
CROWN_BATCH = 32


#: the options of the domains' bounding in :func:`exact_search` (``bab``'s defaults: 3
#: gradient steps on slopes and multipliers per batch, the root's intermediate bounds,
#: one domain per competing class)
BAB_NODE_OPTIONS = BabOptions(batch=512, iterations=3, refresh=NEVER, per_class=True)


def _torch_box(box: tuple[np.ndarray, np.ndarray] | None
               ) -> tuple[float, float] | tuple[torch.Tensor, torch.Tensor] | None:
    """The box as the engine takes it: two numbers where it is one interval per
    coordinate alike, else two tensors [d]."""
    if box is None:
        return None
    lo, hi = box
    if np.all(lo == lo[0]) and np.all(hi == hi[0]):
        return float(lo[0]), float(hi[0])
    return torch.from_numpy(lo.copy()), torch.from_numpy(hi.copy())


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
    max_regions: int | None,
    deadline: float | None = None,
    crown: NetCrown | None = None,
    *,
    c: int | None = None,
    verify: Verifier | None = None,
    nodes_by: str = "bab",
    seeds: list[np.ndarray] | None = None,
) -> SearchResult:
    """Exact ``rho(x)`` (to relative ``rtol``) by branch and bound; see module doc.

    ``nodes_by``: ``"bab"`` (default: ``bab``'s domains and bounds, the region search
    where no finite ball exists) or ``"regions"`` (the layer-ordered region search with
    CROWN node bounds: the previous default, kept as the tests' oracle).
    Raises :class:`SearchBudgetExceeded` beyond ``max_regions`` regions (``20 max_regions``
    nodes or domains; None: no limit) or, if given, once the clock of
    :mod:`boundkit.bounds.bab.options` passes ``deadline`` (checked per node or batch of
    domains, per ray and per improvement).  ``crown``: the network's
    :class:`NetCrown` (built here when not given; pass it to share the captured graph
    between the samples of a network).  ``c``: the class of ``x`` (default: the argmax of
    ``net``).  Every candidate that would improve the radius is first given a witness by
    :func:`find_witness` checked by ``verify``; a candidate without one does not count
    (the search goes on) and its distance is kept in ``SearchResult.untrusted``: if that is
    below the radius found, the radius is not the exact one and the caller must say so.
    ``seeds``: perturbations ``r`` (e.g. an attack's) whose regions (the activation pattern
    of ``x + r``) are solved first, for an early upper end; they change no lower bound.
    """
    if nodes_by not in ("bab", "regions"):
        raise ValueError(f"nodes_by must be 'bab' or 'regions', got {nodes_by!r}")
    d = net.in_dim
    nl = len(net.weights) - 1
    rule = SignRule(net)  # the units the splits decide (max-pooling tournaments, twins)
    logits = net.forward(x[None])[0]
    if c is None:
        c = int(np.argmax(logits))
    gaps = logits - logits[c]
    gaps[c] = -np.inf
    if gaps.max() >= 0:
        k = int(np.argmax(gaps))
        return SearchResult(0.0, np.zeros(d), k, region_pattern(net, x), 0, 0, np.zeros(d), 2)

    def over_time() -> bool:
        return deadline is not None and _clock.now() > deadline

    def past(t: float | None) -> bool:
        return t is not None and _clock.now() > t

    # the first upper bounds stop at DESCENT_SHARE of the time limit (see there)
    start = _clock.now()
    descent_until = None if deadline is None else start + DESCENT_SHARE * (deadline - start)

    floor = 0.0  # smallest bound of the nodes taken off the queue and not yet finished
    domains_floor = np.inf  # the bab nodes' smallest certified radius (see `bab_nodes`)
    heap: list[tuple[float, int, int, _Node]] = []  # (bound, -fixed, tie, node)

    def budget(what: str) -> SearchBudgetExceeded:
        open_min = heap[0][0] if heap else np.inf
        lower = min(floor, open_min, best * (1.0 - rtol), domains_floor, certified)
        return SearchBudgetExceeded(regions, nodes, what, max(lower, 0.0), best)

    # the box enters every QP as bounds on r (not as rows: see boundkit/exact/qp.py)
    blo, bhi = (None, None) if box is None else (box[0] - x, box[1] - x)

    def qp(a: np.ndarray, h: np.ndarray, err_a: np.ndarray | None = None,
           err_h: np.ndarray | None = None) -> MinNorm:
        return min_norm(a, h, blo, bhi, err_a, err_h)

    best = np.inf
    best_r: np.ndarray | None = None
    best_k = -1
    best_pat: list[np.ndarray] | None = None
    best_w: np.ndarray | None = None
    best_lv = 0
    untrusted = np.inf
    certified = np.inf
    regions = 0
    nodes = 0

    def solve_leaf(pat: list[np.ndarray], a: np.ndarray, h: np.ndarray,
                   f_w: np.ndarray, f_b: np.ndarray, lb: float,
                   classes: list[int] | None = None, closes: bool = False
                   ) -> tuple[float, np.ndarray | None]:
        """The QPs of the region ``pat`` (classes that may beat ``best``; only ``classes``
        where given); updates ``best``; returns the smallest distance found in the region
        and its point.  ``closes``: the search closes the region on this answer, so each
        QP's certified lower bound (rounding of the region's rows charged,
        :func:`pattern_affine_errors`) enters ``certified``."""
        nonlocal best, best_r, best_k, best_pat, best_w, best_lv, untrusted, regions
        nonlocal certified
        regions += 1
        if closes:
            a, h, f_w, f_b = pattern_affine(net, pat, x)
            ea, eh, ef_w, ef_b = pattern_affine_errors(net, pat, x)
        g_w = f_w - f_w[c]
        g_v = g_w @ x + (f_b - f_b[c])
        order = np.argsort(-g_v)
        leaf, leaf_r = np.inf, None
        for k in order:
            if k == c or (classes is not None and int(k) not in classes):
                continue
            cut = best * (1.0 - rtol)
            if max(lb, _halfspace_dist(g_w[k], float(g_v[k]))) >= cut:
                continue
            if closes:
                # g_w = F_k - F_c and g_v = g_w x + phi_k - phi_c as computed above
                eg = (ef_w[k] + ef_w[c] + _gam(1) * np.abs(g_w[k])) * (1 + _gam(3))
                fbk = f_b[k] - f_b[c]
                egv = (_gam(d + 2) * (np.abs(g_w[k]) @ np.abs(x) + abs(fbk)) + eg @ np.abs(x)
                       + ef_b[k] + ef_b[c] + _gam(1) * abs(fbk)) * (1 + _gam(d + 4))
                res = qp(np.vstack([a, g_w[k][None]]), np.append(h, -g_v[k]),
                         np.vstack([ea, eg[None]]), np.append(eh, egv))
                certified = min(certified, res.lower)
            else:
                res = qp(np.vstack([a, g_w[k][None]]), np.append(h, -g_v[k]))
            r = res.point
            if r is None:
                continue
            rn = float(np.linalg.norm(r))
            if rn < leaf:
                leaf, leaf_r = rn, r
            if rn < best:
                if over_time():
                    raise budget("time_limit")
                w, lv = find_witness(net, x, pat, int(k), c, rn, r, box, verify)
                if w is None:
                    untrusted = min(untrusted, rn)
                    continue
                best, best_r, best_k, best_pat = rn, r, int(k), [p.copy() for p in pat]
                best_w, best_lv = w, lv
        return leaf, leaf_r

    sizes = np.cumsum([0, *net.hidden_sizes])

    def walk(pat: list[np.ndarray], r: np.ndarray | None, until: float | None = None
             ) -> None:
        """Descent over regions for a smaller upper bound: from a region's minimiser ``r``,
        flip each neuron whose boundary ``r`` lies on (the region across that face) and move
        to the neighbour that lowered ``best`` most; stop at a local minimum, or once the
        clock passes ``until``.  Only upper bounds come from here (each a verified leaf QP),
        so it changes no lower bound."""
        for _ in range(WALK_STEPS):
            if r is None or nl == 0 or past(until):
                return
            a, h, _, _ = pattern_affine(net, pat, x)
            nrm = np.linalg.norm(a, axis=1)
            rn = float(np.linalg.norm(r))
            with np.errstate(divide="ignore", invalid="ignore"):
                slack = (a @ r - h) / nrm
            tight = np.flatnonzero((nrm > 0) & (slack <= 1e-9 * (1.0 + rn)))
            before, step = best, None
            for t in tight[:WALK_BRANCH]:
                if over_time():
                    raise budget("time_limit")
                if past(until):
                    break
                layer = int(np.searchsorted(sizes, t, side="right")) - 1
                nb = [p.copy() for p in pat]
                nb[layer][t - sizes[layer]] = ~nb[layer][t - sizes[layer]]
                a2, h2, f2, b2 = pattern_affine(net, nb, x)
                old = best
                _, r2 = solve_leaf(nb, a2, h2, f2, b2, 0.0)
                if best < old:
                    step = (nb, r2)
            if step is None or not best < before:
                return
            pat, r = step

    # Upper bound: the seeds' regions (an attack's points: the region holding an adversarial
    # point has a QP optimum no farther than it), then exact first crossings along a few rays
    # (then the exact QP of that region).
    for r_s in seeds or ():
        if past(descent_until) or not np.isfinite(r_s).all():
            continue
        pat = region_pattern(net, x + r_s)
        a, h, f_w, f_b = pattern_affine(net, pat, x)
        walk(pat, solve_leaf(pat, a, h, f_w, f_b, 0.0)[1], descent_until)
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
        if over_time():
            raise budget("time_limit")
        if past(descent_until) and nl > 0:
            break
        hit = ray_first_crossing(net, x, u, c, t_cap)
        if hit is None:
            continue
        _, _, pat = hit
        a, h, f_w, f_b = pattern_affine(net, pat, x)
        walk(pat, solve_leaf(pat, a, h, f_w, f_b, 0.0)[1], descent_until)
    # without hidden layers this one region is the whole space: the search closes it here
    if nl == 0 or not past(descent_until):
        walk(pat0, solve_leaf(pat0, a0, h0, fw0, fb0, 0.0, closes=nl == 0)[1], descent_until)
    z = deepfool_point(net, x, c, box) if not past(descent_until) else None
    if z is not None:
        pat = region_pattern(net, z)
        a, h, f_w, f_b = pattern_affine(net, pat, x)
        walk(pat, solve_leaf(pat, a, h, f_w, f_b, 0.0)[1], descent_until)

    if nl == 0:
        return SearchResult(best, best_r, best_k, best_pat, regions, 0, best_w, best_lv,
                            untrusted, certified)
    engine = crown if crown is not None else NetCrown(net)
    max_nodes = np.inf if max_regions is None else 20 * max_regions
    max_reg = np.inf if max_regions is None else max_regions

    def bab_nodes(far: float) -> SearchResult:
        """The search over ``bab``'s domains (module :mod:`boundkit.bounds.bab`; proofs in
        ``docs/exact.md`` §Nodes bounded by branch and bound): one domain per competing
        class, bounded in batches at the ball of radius ``cut = best (1 - rtol)`` (``far``
        where ``best`` is inf: a ball holding the whole box), smallest certified radius
        first; a domain is closed once the radius it certifies reaches the cut; a domain
        with no unstable neuron left is a leaf: the exact QP of its activation region."""
        nonlocal nodes, domains_floor, floor
        floor = np.inf  # the region search's; here the open domains' radii say it
        graph, plan = engine.bab()
        x0 = torch.from_numpy(x)[None]
        run = CrownRun(graph, plan.crown, x0, _torch_box(box))
        label = torch.tensor([c])

        def cut_now() -> float:
            return best * (1.0 - rtol) if np.isfinite(best) else far

        eps = torch.tensor([cut_now()], dtype=torch.float64)
        bounder = Bounder(graph, plan, run, label, eps, BAB_NODE_OPTIONS)
        others = torch.tensor([k for k in range(net.num_classes) if k != c])
        relus = [r.name for r in plan.relus]
        pres = [r.inputs[0] for r in plan.relus]
        # the always-active units (a pooling's carries) enter split active: the split's
        # constraint (pre >= 0) holds on the whole ball, so no domain loses a point
        fixed = {name: torch.from_numpy(net.always_active(i).astype(np.int8))
                 .expand(len(others), -1).clone()
                 for i, name in enumerate(relus) if net.always_active(i).any()}
        pool = Domains(torch.zeros(len(others), dtype=torch.long), fixed,
                       torch.zeros(len(others), 1, dtype=torch.bool), cls=others,
                       radius=torch.zeros(len(others), dtype=torch.float64))
        rate = 0.0  # seconds per domain of the last batch
        while len(pool):
            cut = cut_now()
            assert pool.radius is not None
            pool = pool.rows(torch.nonzero(pool.radius < cut).flatten())
            if not len(pool):
                break
            domains_floor = float(pool.radius.min())
            if over_time():
                raise budget("time_limit")
            if nodes > max_nodes or regions > max_reg:
                raise budget("max_regions")
            size = BAB_NODE_OPTIONS.batch
            if deadline is not None and rate > 0:  # a batch the time left affords
                size = max(1, min(size, int((deadline - _clock.now()) / rate) + 1))
            order = torch.argsort(pool.radius, stable=True)
            batch, pool = pool.rows(order[:size]), pool.rows(order[size:])
            t0 = _clock.now()
            nodes += len(batch)
            bounder.eps = torch.tensor([cut], dtype=torch.float64)
            b = bounder.bound(batch)
            assert b.radius is not None
            rad = b.radius
            open_ = torch.nonzero(~b.proven & (rad < cut)).flatten()
            if open_.numel():
                kids, stuck = branch(batch.rows(open_), dataclasses.replace(
                    b, scores={k: v[open_] for k, v in b.scores.items()},
                    alpha={k: v[open_] for k, v in b.alpha.items()},
                    beta={k: v[open_] for k, v in b.beta.items()}, done=b.done[open_],
                    lo={k: v[open_] for k, v in b.lo.items()},
                    hi={k: v[open_] for k, v in b.hi.items()},
                    radius=rad[open_]), bounder.shapes, BAB_NODE_OPTIONS.warm_elements)
                for row in open_[stuck].tolist():
                    # a leaf: every neuron split or of one sign on the ball part of the
                    # domain, so that part lies in the region of this pattern
                    pat = []
                    for name, pre in zip(relus, pres):
                        lo, hi = b.lo[pre][row], b.hi[pre][row]
                        s_ = batch.signs.get(name)
                        s_ = torch.zeros_like(lo, dtype=torch.int8) if s_ is None else s_[row]
                        if bool(((s_ == 0) & (lo < 0) & (hi > 0)).any()):
                            raise AssertionError("a leaf domain with a free unstable neuron")
                        pat.append(((s_ > 0) | ((s_ == 0) & (lo >= 0))).numpy())
                    a, h, f_w, f_b = pattern_affine(net, pat, x)
                    old = best
                    k = int(batch.cls[row]) if batch.cls is not None else None
                    _, r_leaf = solve_leaf(pat, a, h, f_w, f_b, float(rad[row]),
                                           None if k is None else [k], closes=True)
                    if best < old:
                        walk(pat, r_leaf)
                if len(kids):
                    pool = Domains.cat([pool, rule.apply(kids, relus)])
            rate = (_clock.now() - t0) / len(batch)
        domains_floor = np.inf
        return SearchResult(best, best_r, best_k, best_pat, regions, nodes, best_w, best_lv,
                            untrusted, certified)

    if nodes_by == "bab":
        far = np.inf
        if box is not None:
            far = float(np.linalg.norm(np.maximum(x - box[0], box[1] - x)))
            far = far * (1 + 1e-6) + 1e-300  # beyond every point of the box
        if np.isfinite(best) or np.isfinite(far):
            return bab_nodes(far)

    root = _Node(
        lb=0.0,
        # always-active units fixed: their rows (pre >= 0) hold everywhere, so none is needed
        signs=[net.always_active(i).astype(np.int8) for i in range(nl)],
        layer=0,
        rows_a=np.zeros((0, d)),
        rows_h=np.zeros(0),
        rows_id=np.zeros(0, dtype=np.int64),
        pre_w=net.weights[0].copy(),
        pre_b=net.biases[0].copy(),
        point=np.zeros(d),
    )
    counter = itertools.count()
    heap.append((0.0, 0, next(counter), root))

    def node_errors(node: _Node) -> tuple[np.ndarray, np.ndarray]:
        """:func:`pattern_affine_errors` of a node's rows: a row of layer ``i`` depends only
        on the signs of layers ``< i``, all fixed once the node reached layer ``i``."""
        ea, eh, _, _ = pattern_affine_errors(net, [t > 0 for t in node.signs], x)
        return ea[node.rows_id], eh[node.rows_id]

    def _expand(node: _Node, lb_in: float, has_bounds: bool, res: NodeBounds | None,
                rho: float) -> None:
        """Prune, fix or split a popped node; ``res``: its fresh linear bounds over
        ``B(x, rho)`` (``rho >= best (1 - rtol)``, the cut when the round started; the cut
        only decreases), ``None`` for an empty node, if ``has_bounds``."""
        cut = best * (1.0 - rtol)
        if node.lb >= cut:  # `best` improved earlier in the round
            return
        if has_bounds:
            if res is None:
                return
            node.bounds, m_w, m_b = res.pre, res.m_w, res.m_b
            node.crown_rho, node.crown_fixed = rho, node.nfixed
            dist = np.inf
            for k in range(net.num_classes):
                if k == c:
                    continue
                mv = float(m_w[k] @ x + m_b[k])
                if not (np.isfinite(mv) and np.isfinite(m_w[k]).all()):
                    dist = 0.0  # no information (values beyond the engine's float range)
                    continue
                dk = _halfspace_dist(m_w[k], mv)
                if dk >= min(dist, cut) or (node.rows_a.shape[0] == 0 and box is None):
                    dist = min(dist, dk)
                    continue
                # distance to (node polyhedron) n (relaxed class-k half-space)
                # (its certified lower bound: inf where certified empty)
                # (the engine's row m_w[k], m_b[k] is itself sound as computed: no data error)
                ea, eh = node_errors(node)
                rk = qp(np.vstack([node.rows_a, m_w[k][None]]), np.append(node.rows_h, -mv),
                        np.vstack([ea, np.zeros((1, d))]), np.append(eh, 0.0))
                dist = min(dist, rk.lower)
            # the bounds hold on B(x, rho), rho >= the current cut: adversarial points of the
            # node are >= dist away inside the ball and > rho away outside it
            if dist >= rho:
                return
            node.lb = max(node.lb, dist)
            if node.lb >= cut:
                return
        if node.lb > lb_in * (1 + 1e-12) and heap and node.lb > heap[0][0]:
            heapq.heappush(heap, (node.lb, -node.nfixed, next(counter), node))
            return

        if node.layer == nl:
            pat = [s > 0 for s in node.signs]
            old = best
            _, r_leaf = solve_leaf(pat, node.rows_a, node.rows_h, node.pre_w, node.pre_b,
                                   node.lb, closes=True)
            if best < old:
                walk(pat, r_leaf)
            return

        # Fix every neuron of the current layer whose other side cannot hold a better point.
        i = node.layer
        s = node.signs[i]
        v_all = node.pre_w @ x + node.pre_b
        norms = np.linalg.norm(node.pre_w, axis=1)
        bl, bu = node.bounds[i] if node.bounds is not None else (None, None)
        new_a, new_h, new_id = [], [], []
        split: list[tuple[float, int]] = []
        twin = rule.partner[i]
        if i in rule.layers:  # sides the earlier layers decide (no row needed)
            s[:] = rule.sides(torch.from_numpy(node.signs[i - 1])[None],
                                    torch.from_numpy(s)[None], i)[0].numpy()
        for j in np.flatnonzero(s == 0):
            if s[j] != 0:  # fixed on the way, as a twin
                continue
            v, nj = float(v_all[j]), float(norms[j])
            if nj == 0.0:  # a constant neuron on this node: its sign is that of v
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
            if twin[j] >= 0 and s[twin[j]] == 0:  # its constraint is j's: no row
                s[twin[j]] = -s[j]
            new_a.append(sg * node.pre_w[j])
            new_h.append(-sg * v)
            new_id.append(int(sizes[i]) + int(j))
        if s is None:
            return
        if new_a:
            node.rows_a = np.vstack([node.rows_a, np.array(new_a)])
            node.rows_h = np.append(node.rows_h, new_h)
            node.rows_id = np.append(node.rows_id, new_id).astype(np.int64)
            if node.point is not None and np.any(
                node.rows_a[-len(new_a):] @ node.point < np.array(new_h) - 1e-12
            ):
                node.point = None
        node.nfixed = int(sum(int((t != 0).sum()) for t in node.signs))
        if split:
            if node.point is None:
                heapq.heappush(heap, (node.lb, -node.nfixed, next(counter), node))
                return
            _, j = min(split)
            v = float(v_all[j])
            for sg in (1, -1):
                ch_signs = [t.copy() for t in node.signs]
                ch_signs[i][j] = sg
                if twin[j] >= 0 and ch_signs[i][twin[j]] == 0:
                    ch_signs[i][twin[j]] = -sg
                row = sg * node.pre_w[j]
                rh = -sg * v
                inside = float(row @ node.point) >= rh - 1e-12
                child = _Node(
                    lb=max(node.lb, _halfspace_dist(row, -rh)),
                    signs=ch_signs,
                    layer=i,
                    rows_a=np.vstack([node.rows_a, row[None]]),
                    rows_h=np.append(node.rows_h, rh),
                    rows_id=np.append(node.rows_id, int(sizes[i]) + j).astype(np.int64),
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
            return
        # Layer complete: move on to the next layer (or the logits).
        act = (s > 0).astype(np.float64)
        m_w, m_b = act[:, None] * node.pre_w, act * node.pre_b
        node.pre_w = net.weights[i + 1] @ m_w
        node.pre_b = net.weights[i + 1] @ m_b + net.biases[i + 1]
        node.layer = i + 1
        heapq.heappush(heap, (node.lb, -node.nfixed, next(counter), node))

    run: CrownRun | None = None  # the engine's pass for x, made on first use
    round_best, size = np.nan, 1  # `best` when the previous round started, its size
    while heap:
        # One round: `size` nodes popped in best-first order; those whose linear bounds are
        # missing or stale get them from one engine call at rho = the cut (an engine call
        # costs about the same for 1 or 16 nodes). Expanding a round's nodes before the
        # children of the first can cost nodes that a better `best` found on the way would
        # have pruned, so `size` restarts at 1 whenever `best` improved, then doubles.
        todo: list[tuple[_Node, float]] = []
        floor = np.inf
        size = min(2 * size, CROWN_BATCH) if best == round_best else 1
        round_best = best
        while heap and len(todo) < size:
            cut = best * (1.0 - rtol)
            if heap[0][0] >= cut:
                break  # best-first: every remaining node is at least as far
            key, _, _, node = heapq.heappop(heap)
            floor = min(floor, key)
            if node.lb >= cut:
                continue
            nodes += 1
            if nodes > max_nodes or regions > max_reg:
                raise budget("max_regions")
            if over_time():
                raise budget("time_limit")
            lb_in = node.lb
            if node.point is None:
                res = qp(node.rows_a, node.rows_h, *node_errors(node))
                node.lb = max(node.lb, res.lower)  # certified (inf: certified empty)
                if node.lb >= cut:
                    continue
                if res.point is None:
                    # no point found and no certificate that the node is empty or far:
                    # it cannot be closed, and it cannot be split without a point
                    certified = min(certified, node.lb)
                    continue
                node.point = res.point
            todo.append((node, lb_in))
        if not todo:
            break
        # only adversarial points closer than the cut matter: the ball need be no larger
        rho = best * (1.0 - rtol)
        need = [nd for nd, _ in todo if np.isfinite(rho) and (
            nd.crown_fixed != nd.nfixed or rho < 0.98 * nd.crown_rho)]
        outs: list[NodeBounds | None] = []
        if need:
            run = engine.run(x) if run is None else run
            outs = engine.bounds(run, c, rho, [nd.signs for nd in need])
        fresh = {id(nd): out for nd, out in zip(need, outs)}
        for node, lb_in in todo:
            _expand(node, lb_in, id(node) in fresh, fresh.get(id(node)), rho)
    return SearchResult(best, best_r, best_k, best_pat, regions, nodes, best_w, best_lv,
                        untrusted, certified)


