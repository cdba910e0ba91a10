r"""Input splitting: branch and bound on sub-boxes of the input, for low-dimensional inputs
(tabular data, tiny 2-D nets) and any activation ``crown`` bounds.

A *domain* is a sub-box :math:`[l,u]` of the input; the domains of a sample partition a box
holding :math:`\mathcal{B}(x_0,\varepsilon)\cap\mathcal{X}` (:math:`\mathcal{X}` the input box,
when :math:`x_0` lies in it). The sample is verified iff every domain is done:

* a sub-box that does not meet the open ball, :math:`\operatorname{dist}(x_0,[l,u])\ge
  \varepsilon` (computed rounded down), holds none of its points;
* otherwise its margins are bounded over :math:`\mathcal{B}\cap[l,u]`: every interval and
  linear bound of the ``crown`` walk is computed for that region (the input interval is
  :math:`[x_0-\varepsilon,x_0+\varepsilon]\cap\mathcal{X}\cap[l,u]`), and a linear bound
  :math:`f\ge\langle A,x\rangle+b` reaching the input is concretised as the larger of the
  ball's dual-norm value (``crown``'s :func:`~boundkit.bounds.crown.concretise`) and its
  minimum over the ball intersected with the sub-box by Lagrangian duality
  (:func:`~boundkit.bounds.crown.concrete.ball_box_minimum`: for every :math:`\lambda\ge0`,
  :math:`\langle a,x_0\rangle+\sum_i\min_{\delta_i}(a_i\delta_i+\lambda\delta_i^2)-
  \lambda\varepsilon^2`, separable per coordinate; :math:`\lambda=0` is the sub-box's
  exact minimum), both with their rounding charged. Both are lower bounds over the
  intersection; as the boxes shrink the bound becomes tight, also on sub-boxes cut by the
  sphere.

An open domain is split in halves on the coordinate with the largest smear
:math:`(u_i-l_i)\max_s|A_{s,i}|` (ReluVal's smear, Wang et al. 2018: gradient times
width, with the final walk's coefficients at the input as the gradient). Domains of all
samples are bounded together in batches on :class:`~boundkit.bounds.bab.bounding.Bounder`
(slopes of the ReLUs optimised as for ReLU splitting). Proof:
``docs/theory/branch_and_bound.md`` §Input splitting.

:data:`INPUT_SPLIT_MAX_DIM`: ``split="auto"`` splits the input of a network ReLU splitting
refuses (smooth activations) when it has at most this many features, the ReLUs otherwise.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch

from boundkit.bounds.bab.bounding import BabPlan, Bounded, Bounder, bab_plan, split_plan
from boundkit.bounds.bab.domains import Domains
from boundkit.bounds.bab.loop import Expansion, Reason, Search
from boundkit.bounds.bab.options import NEVER, BabOptions, Split, check_split
from boundkit.bounds.crown import CrownRun
from boundkit.bounds.crown.concrete import Concrete, ball_box_minimum
from boundkit.bounds.crown.run import Samples
from boundkit.bounds.numerics import UNIT_ROUNDOFF, gamma
from boundkit.bounds.relaxation import Interval, LinearBounds, RelaxContext
from boundkit.errors import UnsupportedLayerError
from boundkit.graph.graph import Graph, Node

#: ``split="auto"`` splits the input of a network ReLU splitting cannot take (smooth
#: activations) when a sample has at most this many features (iris 4, wine 13, tiny 2-D
#: nets): the sub-boxes needed to tighten the bound grow like :math:`2^{d}` in the
#: dimension, the ReLU splits do not depend on it. ReLU networks keep ReLU splitting: on
#: 20 wine samples (13 features) it reaches 0.9993 of the attack at 1 s where input
#: splitting reaches 0.947 (docs/results/bab_input_split.md)
INPUT_SPLIT_MAX_DIM = 16


def resolve_split(split: Split | str, graph: Graph) -> Split:
    """``Split.INPUT`` or ``Split.RELU``: ``Split.AUTO`` is ``INPUT`` for a network ReLU
    splitting refuses (a nonlinearity it neither splits nor keeps relaxed) whose samples
    have at most :data:`INPUT_SPLIT_MAX_DIM` features, ``RELU`` otherwise (then a refused
    network is refused by name)."""
    split = check_split(split)
    if split != Split.AUTO:
        return split
    if math.prod(graph.input_shape) > INPUT_SPLIT_MAX_DIM:
        return Split.RELU
    try:
        bab_plan(graph)
    except UnsupportedLayerError:
        return Split.INPUT
    return Split.RELU


# ---------------------------------------------------------------------------- the region

@dataclass
class RegionSamples(Samples):
    r""":class:`~boundkit.bounds.crown.run.Samples` with an input region per row: the
    sub-box ``lo``/``hi`` [N, *in] (``None``: none, then the run is ``crown``'s) and the
    radius ``eps`` [N] the relaxation is built for (the box term of the concretisation is
    chosen where it beats the ball's at that radius)."""

    lo: torch.Tensor | None = None
    hi: torch.Tensor | None = None
    eps: torch.Tensor | None = None


class RegionRun(CrownRun):
    r"""A :class:`~boundkit.bounds.crown.CrownRun` whose rows are bounded over
    :math:`\mathcal{B}(x_0,\varepsilon)\cap\mathcal{X}\cap[l,u]`: the input interval is met
    with the sub-box, and every bound reaching the input is concretised as the larger of
    the ball's value and the sub-box's exact minimum. Without a region it is ``crown``
    itself (the same code path, bit for bit)."""

    samples_type = RegionSamples

    def __init__(self, graph: Graph, plan: object, x0: torch.Tensor,
                 box: tuple[float, float] | None) -> None:
        super().__init__(graph, plan, x0, box)  # type: ignore[arg-type]
        #: shared by every run derived from this one (shallow copies): the final walk's
        #: coefficients at the input, for the branching smear
        self.probe: dict[str, torch.Tensor | bool] = {}

    @property
    def region(self) -> RegionSamples:
        s = self.samples
        assert isinstance(s, RegionSamples)
        return s

    def with_region(self, lo: torch.Tensor, hi: torch.Tensor, eps: torch.Tensor) -> RegionRun:
        """This run (one row per domain) with the sub-boxes ``lo``/``hi`` [D, d] (flat) and
        the radii ``eps`` [D]."""
        shape = self.x0.shape
        s = dataclasses.replace(self.samples, lo=lo.reshape(shape), hi=hi.reshape(shape),
                                eps=eps)
        out = self.derive(s)
        assert isinstance(out, RegionRun)
        return out

    def _input_interval(self, eps: torch.Tensor) -> Interval:
        iv = super()._input_interval(eps)
        r = self.region
        if r.lo is None or r.hi is None:
            return iv
        lo = torch.maximum(iv.lo, r.lo)
        # an empty coordinate (the search drops such domains first) is widened back to a
        # point: a superset of the (empty) set, so every bound on it still holds
        hi = torch.maximum(torch.minimum(iv.hi, r.hi), lo)
        return Interval(lo, hi)

    def backward(self, target: Node, spec: torch.Tensor, ctx: RelaxContext) -> Concrete:
        final = target.name == self.graph.logits.name
        if final:
            self.probe["final"] = True
        try:
            return super().backward(target, spec, ctx)
        finally:
            if final:
                self.probe["final"] = False

    def at_input(self, lb: LinearBounds, x0: torch.Tensor) -> Concrete:
        r"""``crown``'s concretisation over the ball, replaced per bound by the sub-box's
        exact minimum :math:`(m,0)` where :math:`m` beats the ball's value at the row's
        radius: :math:`f\ge m` on the whole sub-box, so on its points in every smaller
        ball too (§Input splitting)."""
        conc = super().at_input(lb, x0)
        r = self.region
        if r.lo is None or r.hi is None or r.eps is None or x0.shape != self.x0.shape:
            return conc  # no region, or a window of the input: the ball's value (valid)
        if self.probe.get("final"):
            self.probe["A"] = lb.A.detach()
        iv = self._input_interval(r.eps)
        mag = torch.maximum(iv.lo.abs(), iv.hi.abs())
        lbf = LinearBounds(lb.A, lb.bias, lb.err + lb.charge_forks(mag))
        m = ball_box_minimum(lbf, self.x0, iv.lo, iv.hi, r.eps)
        ball = conc.at(r.eps)
        box_at = m - 4 * UNIT_ROUNDOFF * m.abs()  # Concrete.at with nu = 0
        take = box_at > ball
        return Concrete(torch.where(take, m, conc.c),
                        torch.where(take, torch.zeros_like(conc.nu), conc.nu))


# ---------------------------------------------------------------------------- the plan

@dataclass
class InputSplitPlan(BabPlan):
    """A :class:`~boundkit.bounds.bab.bounding.BabPlan` for input splitting: every
    nonlinearity ``crown`` relaxes is kept relaxed (built on each sub-box's own intervals);
    the ReLUs carry the :class:`SplitReLU` rule (their slopes are optimised, no split)."""


def plan_input_split(graph: Graph) -> InputSplitPlan:
    """The plan, refusing (naming the node) a node bounded through the ``sound`` modulus
    (its interval is a function of the radius alone, not of the sub-box)."""
    return split_plan(graph, lambda r: True, InputSplitPlan, "bounded on a sub-box", "")


def input_split_plan(graph: Graph) -> InputSplitPlan:
    """The graph's :class:`InputSplitPlan`, cached on the graph."""
    plan = graph.cache.get("input_split_plan")
    if plan is None:
        plan = graph.cache["input_split_plan"] = plan_input_split(graph)
    return plan


# ---------------------------------------------------------------------------- geometry

def box_distance_lower(x0: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    r"""A lower bound of :math:`\operatorname{dist}(x_0,[l,u])=\|\max(l-x_0,0,x_0-u)\|_2`
    per row ([D, d] each, flat): each gap is rounded down (a computed difference is at
    least :math:`(1-u)` times the true one), the norm by :math:`\gamma_{d+2}`."""
    gap = torch.maximum((lo - x0).clamp(min=0.0), (x0 - hi).clamp(min=0.0))
    d = x0.shape[1]
    return (torch.linalg.vector_norm(gap, dim=1) * (1 - UNIT_ROUNDOFF)
            * (1 - 2 * float(gamma(d + 4)))).clamp(min=0.0)


def root_boxes(run: CrownRun, eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Per sample, the box :math:`[x_0-\varepsilon,x_0+\varepsilon]\cap\mathcal{X}`, rounded
    outward ([N, d] each, flat): it holds every point of the ball in the box."""
    iv = run._input_interval(eps)
    return iv.lo.flatten(1), iv.hi.flatten(1)


def misses_ball(x0: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, eps: torch.Tensor,
                ilo: torch.Tensor, ihi: torch.Tensor) -> torch.Tensor:
    r"""[D] bool: the sub-box ``lo``/``hi`` holds no point of the open ball of radius
    ``eps`` in the box: its distance from :math:`x_0` is at least :math:`\varepsilon`, or it
    misses the outward-rounded box ``ilo``/``ihi`` of the ball's points on some coordinate."""
    apart = (lo > ihi).any(1) | (hi < ilo).any(1)
    return apart | (box_distance_lower(x0, lo, hi) >= eps)


def smear(A: torch.Tensor, open_: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor
          ) -> torch.Tensor:
    r"""The branching score per coordinate [D, d]: :math:`(u_i-l_i)\max_s|A_{s,i}|` over
    the margins :math:`s` still open (``A`` [D, S, d], ``open_`` [D, S]), plus
    :math:`10^{-9}(u_i-l_i)\max|A|` so the widest coordinate wins where the bound does not
    read the input."""
    a = torch.where(open_.unsqueeze(2), A.abs(), torch.zeros_like(A)).amax(1)
    width = (hi - lo).clamp(min=0.0)
    return width * (a + 1e-9 * a.amax(1, keepdim=True) + 1e-300)


# ---------------------------------------------------------------------------- the search

@dataclass
class Boxes:
    """Input-split domains (D rows): the sample, the sub-box ``lo``/``hi`` [D, d] (flat),
    the margins proven in an ancestor ``done`` [D, C'] (C' = 1 with ``cls``), the one
    competing class ``cls`` [D] or None, a radius the set is proven for ``radius`` [D], and
    the warm starts (slopes, intermediate bounds) of :class:`Domains`."""

    sample: torch.Tensor
    lo: torch.Tensor
    hi: torch.Tensor
    done: torch.Tensor
    cls: torch.Tensor | None
    radius: torch.Tensor
    alpha: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)
    ilo: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)
    ihi: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.sample.numel())

    def rows(self, idx: torch.Tensor) -> Boxes:
        def sel(d: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            return {k: v[idx] for k, v in d.items()}
        return Boxes(self.sample[idx], self.lo[idx], self.hi[idx], self.done[idx],
                     None if self.cls is None else self.cls[idx], self.radius[idx],
                     sel(self.alpha), sel(self.ilo), sel(self.ihi))

    def slice(self, a: int, b: int) -> Boxes:
        """Rows ``a:b`` as views (no copy)."""
        def sel(d: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            return {k: v[a:b] for k, v in d.items()}
        return Boxes(self.sample[a:b], self.lo[a:b], self.hi[a:b], self.done[a:b],
                     None if self.cls is None else self.cls[a:b], self.radius[a:b],
                     sel(self.alpha), sel(self.ilo), sel(self.ihi))

    @staticmethod
    def cat(parts: list[Boxes]) -> Boxes:
        parts = [p for p in parts if len(p)]

        def join(key: str) -> dict[str, torch.Tensor]:
            ds = [getattr(p, key) for p in parts]
            keys = set(ds[0])
            if any(set(d) != keys for d in ds):
                return {}
            return {k: torch.cat([d[k] for d in ds]) for k in keys}
        cls = None if any(p.cls is None for p in parts) else torch.cat([p.cls for p in parts])
        return Boxes(torch.cat([p.sample for p in parts]), torch.cat([p.lo for p in parts]),
                     torch.cat([p.hi for p in parts]), torch.cat([p.done for p in parts]),
                     cls, torch.cat([p.radius for p in parts]), join("alpha"), join("ilo"),
                     join("ihi"))


class InputSplit(Search[Boxes]):
    """The input-splitting search for one batch of samples at radii ``eps`` [N] (labels
    ``label`` [N]) on a :class:`RegionRun` of the samples; :meth:`solve` (the loop's, as
    :class:`~boundkit.bounds.bab.search.BranchAndBound`'s) searches sub-boxes with the
    smallest certified radius relative to their sample's radius first and returns a
    :class:`~boundkit.bounds.bab.loop.Solved`."""

    stuck_reason = Reason.STUCK_BOX

    def __init__(self, graph: Graph, plan: BabPlan, run: CrownRun, label: torch.Tensor,
                 eps: torch.Tensor, options: BabOptions) -> None:
        if not isinstance(run, RegionRun):
            raise AssertionError("input splitting needs a RegionRun")
        self.graph, self.plan, self.run, self.label, self.eps = graph, plan, run, label, eps
        self.opt = options
        self.n = run.n
        self.x0 = run.x0.flatten(1)
        #: per sample, the box of the ball's points in the input box [N, d] each (flat)
        self.ilo, self.ihi = root_boxes(run, eps)

    def bound(self, dom: Boxes) -> Bounded:
        """Bound every domain of ``dom`` over its ball-and-sub-box region (the domains
        proven, the margins proven [D, C'], the certified radius [D], ...: a
        :class:`Bounded`); the final walk's input coefficients go to ``self.run.probe``."""
        eps = self.eps[dom.sample]
        sub = self.run.subset(dom.sample)
        assert isinstance(sub, RegionRun)
        sub = sub.with_region(dom.lo, dom.hi, eps)
        d = len(dom)
        rows = torch.arange(d, device=eps.device)
        doms = Domains(rows, {}, dom.done, alpha=dom.alpha, lo=dom.ilo, hi=dom.ihi,
                       age=torch.full((d,), NEVER, dtype=torch.long, device=eps.device),
                       radius=dom.radius, cls=dom.cls)
        bounder = Bounder(self.graph, self.plan, sub, self.label[dom.sample], eps, self.opt)
        self.run.probe.pop("A", None)
        return bounder.bound(doms)

    def roots(self, idx: torch.Tensor) -> Boxes:
        """One root per (sample, competing class): the box of the sample's ball."""
        dev = self.eps.device
        c = self.graph.num_classes
        lab = self.label[idx]
        cls = torch.arange(c, device=dev).repeat(idx.numel())
        smp = idx.repeat_interleave(c)
        other = cls != lab.repeat_interleave(c)
        smp, cls = smp[other], cls[other]
        return Boxes(smp, self.ilo[smp], self.ihi[smp],
                     torch.zeros(smp.numel(), 1, dtype=torch.bool, device=dev), cls,
                     torch.zeros(smp.numel(), dtype=torch.float64, device=dev))

    def expand(self, batch: Boxes) -> Expansion[Boxes]:
        """Bound ``batch``; halve each unproven sub-box on its coordinate of largest smear
        (:func:`smear`), dropping halves that miss the ball. A sub-box whose midpoint
        rounds onto an end of that coordinate cannot be halved: it is stuck."""
        b = self.bound(batch)
        proven, done, radius = b.proven, b.done, b.radius
        assert radius is not None  # Bounder.bound always gives one
        kids: Boxes | None = None
        stuck_front: Boxes | None = None
        open_ = torch.nonzero(~proven).flatten()
        if open_.numel():
            A = self.run.probe.get("A")
            par = batch.rows(open_)
            lo, hi = par.lo, par.hi
            if isinstance(A, torch.Tensor):
                score = smear(A.flatten(2)[open_], ~done[open_], lo, hi)
            else:
                score = (hi - lo).clamp(min=0.0)
            j = score.argmax(1, keepdim=True)
            a, z = lo.gather(1, j), hi.gather(1, j)
            mid = torch.minimum(torch.maximum(0.5 * a + 0.5 * z, a), z)
            stuck = ((mid <= a) | (mid >= z)).flatten()
            lo_r = lo.scatter(1, j, mid)  # the upper half: [mid, u]
            hi_l = hi.scatter(1, j, mid)  # the lower half: [l, mid]
            twin = torch.cat([torch.nonzero(~stuck).flatten()] * 2)
            k = int((~stuck).sum())
            kid_lo = torch.cat([lo[~stuck], lo_r[~stuck]])
            kid_hi = torch.cat([hi_l[~stuck], hi[~stuck]])
            ks = par.sample[twin]
            miss = misses_ball(self.x0[ks], kid_lo, kid_hi, self.eps[ks], self.ilo[ks],
                               self.ihi[ks])
            keep = torch.nonzero(~miss).flatten()
            warm = sum(v[0].numel() for v in b.alpha.values()) * 2 * k
            src = open_[twin[keep]]
            if len(keep):
                kids = Boxes(ks[keep], kid_lo[keep], kid_hi[keep], done[src],
                             None if par.cls is None else par.cls[twin[keep]],
                             radius[src],
                             ({n_: v[src] for n_, v in b.alpha.items()}
                              if warm <= self.opt.warm_elements else {}),
                             {n_: v[src] for n_, v in b.lo.items()},
                             {n_: v[src] for n_, v in b.hi.items()})
            if bool(stuck.any()):
                srow = open_[stuck]
                stuck_front = dataclasses.replace(batch.rows(srow), radius=radius[srow])
        return Expansion(kids, stuck_front)
