"""Adversarial starting points that do not depend on a gradient.

Two sources, both batched over samples and both returning points that the model itself
classified as satisfying each sample's criterion (so a bisection along ``x -> start`` lands
on the decision boundary and gives an upper bound at once, which gradient-based or
decision-based attacks then shrink, as FMN and the boundary attack of Brendel et al. 2018
do from an adversarial start):

* :func:`nearest_reference` -- reference data (test images the caller already holds, a
  training set, the other samples of a cross-check): for each sample the nearest reference
  point (L2) that the model puts in a class satisfying the sample's criterion.
* :func:`line_search_starts` -- no data: rays ``x + r d`` (clipped to the box) along the
  normalised gradients of ``f_k - f_y`` for the other classes ``k`` and along random
  directions keyed by the sample (:func:`~boundkit.attacks.base.keyed_normal`), ``r`` on a
  geometric grid from ``1e-2`` of the problem's length unit out to the far side of the box
  (without a box, to ``1e4`` units).  The first (smallest) radius at which some ray is
  adversarial gives the start.  It also records whether the margin's gradient was non-zero
  anywhere it looked (at ``x`` or along the first random ray), which the ensemble reports
  (:class:`~boundkit.attacks.base.Outcome`).

:func:`bisect_to_boundary` brings starts onto the boundary (the shared
:func:`~boundkit.attacks.base.boundary_bisection`, with more steps than the attacks' final one
since a start may be far).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from boundkit.attacks.base import (
    Box,
    Criterion,
    atleast_kd,
    boundary_bisection,
    box_diameter,
    class_gradients,
    clip_to_box,
    keyed_normal,
    l2_norms,
    logits_and_grad,
    scale_free_keys,
)

__all__ = ["StartSearch", "bisect_to_boundary", "line_search_starts", "nearest_reference",
           "reference_predictions", "sphere_starts"]

#: points per forward pass of the reference classification
_REF_CHUNK = 4096


@dataclass
class StartSearch:
    """Result of a start search on a batch of ``n`` samples.

    ``start``: ``[n, ...]`` adversarial start points (the input where ``found`` is False);
    ``found``: ``bool [n]``; ``gradient_seen``: ``bool [n]``, the margin's gradient was
    non-zero somewhere the search looked (``True`` when it did not look);
    ``tried``: points evaluated per sample.
    """

    start: Tensor
    found: Tensor
    gradient_seen: Tensor
    tried: int = 0


@torch.no_grad()
def reference_predictions(model: nn.Module, reference: Tensor, box: Box) -> Tensor:
    """Class the model assigns each reference point (``-1`` for points outside the box or not
    finite: they are never used as starts)."""
    pred = torch.cat([model(reference[i : i + _REF_CHUNK]).argmax(1)
                      for i in range(0, reference.shape[0], _REF_CHUNK)])
    flat = reference.flatten(1)
    ok = torch.isfinite(flat).all(1)
    if box is not None:
        ok &= ((flat >= box[0]) & (flat <= box[1])).all(1)
    return torch.where(ok, pred, torch.full_like(pred, -1))


@torch.no_grad()
def nearest_reference(
    x: Tensor, criterion: Criterion, reference: Tensor, pred: Tensor, k: int = 1
) -> tuple[Tensor, Tensor]:
    """The ``k`` nearest reference points satisfying each sample's criterion, nearest first.

    ``pred``: the model's class for each reference point (:func:`reference_predictions`;
    ``-1`` never qualifies).  A reference point equal to the sample itself is skipped (a
    sample is never its own start).  Returns ``(points [k, n, ...], have bool [k, n])``;
    rows without a point hold ``x``.
    """
    n = x.shape[0]
    reference = reference.to(device=x.device, dtype=x.dtype)
    pred = pred.to(x.device)
    xf = x.flatten(1).double()
    kk = min(k, reference.shape[0])
    # running k nearest over chunks of the reference data (memory n x chunk, not n x P)
    d = torch.full((n, 0), math.inf, dtype=torch.float64, device=x.device)
    j = torch.zeros((n, 0), dtype=torch.long, device=x.device)
    for s0 in range(0, reference.shape[0], _REF_CHUNK):
        part = reference[s0 : s0 + _REF_CHUNK].flatten(1).double()
        p_part = pred[s0 : s0 + _REF_CHUNK]
        dist = torch.cdist(xf, part)
        ok = criterion.accepts(p_part) & (p_part >= 0)[None, :] & (dist > 0)
        dist = dist.masked_fill(~ok, math.inf)
        d = torch.cat([d, dist], 1)
        j = torch.cat([j, torch.arange(s0, s0 + part.shape[0], device=x.device).expand(n, -1)],
                      1)
        d, pos = d.topk(min(kk, d.shape[1]), dim=1, largest=False)
        j = j.gather(1, pos)
    pts = x.new_empty((k, *x.shape))
    have = torch.zeros(k, n, dtype=torch.bool, device=x.device)
    for r in range(k):
        if r < kk:
            have[r] = torch.isfinite(d[:, r])
            pts[r] = torch.where(atleast_kd(have[r], x.ndim), reference[j[:, r]], x)
        else:
            pts[r] = x
    return pts, have


def bisect_to_boundary(model: nn.Module, x: Tensor, start: Tensor, criterion: Criterion,
                       steps: int = 12) -> Tensor:
    """Bisection along ``x -> start`` onto the decision boundary (adversarial side): the
    norm of the result is within ``2**-steps`` of the segment's length above the first
    crossing the bisection brackets.  12 steps, as the ensemble's final bisection: a finer
    one lands within float32 rounding of the boundary, where the verification (another
    batch, so other kernels) can classify the point differently; the attacks that follow
    shrink the rest."""
    return boundary_bisection(model, x, start, criterion, steps)


def _rays(model: nn.Module, x: Tensor, criterion: Criterion, keys: Tensor,
          n_random: int, gradient_classes: int) -> tuple[Tensor, Tensor]:
    """Unit directions ``[n, R, D]`` (flattened) and whether the margin gradient at ``x`` is
    non-zero ``[n]``."""
    n = x.shape[0]
    dirs = []
    logits, g = logits_and_grad(model, x, criterion.margin)
    gflat = g.flatten(1)
    seen = torch.isfinite(gflat).all(1) & (gflat.norm(dim=1) > 0)
    dirs.append(-gflat)  # the margin decreases along -grad
    c = logits.shape[1]
    kk = min(gradient_classes, c - 1)
    if kk > 0 and not criterion.targeted:
        masked = logits.scatter(1, criterion.labels[:, None], float("-inf"))
        classes = masked.topk(kk, dim=1).indices
        _, _, grads = class_gradients(model, x, classes, criterion.labels)
        dirs.extend(grads.flatten(2).unbind(1))
    if n_random:
        rnd = keyed_normal(keys, (n_random, gflat.shape[1]), 7001, x.dtype)
        dirs.extend(rnd.unbind(1))
    d = torch.stack(dirs, 1)
    nrm = d.norm(dim=2, keepdim=True)
    d = torch.where(torch.isfinite(nrm) & (nrm > 0), d / nrm, torch.zeros_like(d))
    return d.reshape(n, d.shape[1], *x.shape[1:]), seen


@torch.no_grad()
def line_search_starts(
    model: nn.Module,
    x: Tensor,
    criterion: Criterion,
    *,
    box: Box,
    unit: Tensor,
    seed: int = 0,
    n_random: int = 64,
    gradient_classes: int = 9,
    factor: float = 2.0,
    reach: float = 1e4,
) -> StartSearch:
    """Nearest adversarial point on rays from ``x`` (see the module docstring).

    ``unit``: the per-sample length unit (:func:`~boundkit.attacks.base.problem_scale`);
    radii ``unit * 1e-2 * factor**j`` up to the box's far side (:func:`box_diameter`) or, with
    no box, ``reach * unit``.  Samples leave the search at the first radius with an
    adversarial ray; among that radius's adversarial rays the nearest (after clipping) wins.
    Forward passes: one per radius on ``n x rays`` points.
    """
    n, k = x.shape[0], x.ndim
    keys = scale_free_keys(x, unit, seed)
    with torch.enable_grad():
        dirs, seen = _rays(model, x, criterion, keys, n_random, gradient_classes)
    nr = dirs.shape[1]
    far = box_diameter(x, box, default=reach * unit)
    r = (unit * 1e-2).clamp_min(torch.finfo(x.dtype).tiny)
    start = x.clone()
    found = torch.zeros(n, dtype=torch.bool, device=x.device)
    todo = torch.ones(n, dtype=torch.bool, device=x.device)
    tried = 0
    probe_seen = torch.zeros(n, dtype=torch.bool, device=x.device)
    last = False
    while bool(todo.any()) and not last:
        last = bool((r >= far).all())
        r = torch.minimum(r, far)
        idx = todo.nonzero().squeeze(1)
        xs = x[idx]
        pts = clip_to_box(xs[:, None] + atleast_kd(r[idx], k + 1) * dirs[idx], box)
        flat = pts.reshape(-1, *x.shape[1:])
        crit = type(criterion)(criterion.labels[idx].repeat_interleave(nr))
        logits = model(flat)
        adv = crit.is_adversarial(logits).reshape(-1, nr)
        tried += nr
        # gradient along the first random ray (where the search looks, is there a slope?)
        probe = pts[:, nr - n_random] if n_random else pts[:, 0]
        with torch.enable_grad():
            _, g = logits_and_grad(model, probe, criterion.subset(idx).margin)
        gn = l2_norms(g)
        probe_seen[idx] |= torch.isfinite(gn) & (gn > 0)
        if bool(adv.any()):
            dist = l2_norms((pts - xs[:, None]).flatten(0, 1)).reshape(-1, nr)
            dist = dist.masked_fill(~adv, math.inf)
            dmin = dist.min(1).values
            # without a box every ray point of a radius is at the same distance up to
            # rounding, which depends on the batch: ties (1e-9 relative) go to the first ray
            near = dist <= dmin[:, None] * (1 + 1e-9)
            j = (near.long() * torch.arange(nr, 0, -1, device=x.device)).argmax(1)
            hit = torch.isfinite(dmin)
            rows = idx[hit]
            start[rows] = pts[hit.nonzero().squeeze(1), j[hit]]
            found[rows] = True
            todo[rows] = False
        r = r * factor
    return StartSearch(start=start, found=found, gradient_seen=seen | probe_seen, tried=tried)


@torch.no_grad()
def sphere_starts(
    model: nn.Module,
    x: Tensor,
    criterion: Criterion,
    radius: Tensor,
    *,
    box: Box,
    unit: Tensor,
    seed: int = 0,
    directions: int = 32,
    scales: tuple[float, ...] = (1.0, 1.5, 2.5),
    keep: int = 4,
) -> tuple[Tensor, Tensor]:
    """Random restarts around a known upper bound: adversarial points on spheres.

    For each sample, ``directions`` random unit directions ``u`` (keyed by the sample) and
    the points ``x + s * radius * u`` (clipped to the box) for ``s`` in ``scales``; the
    adversarial ones at the smallest scale that has any, up to ``keep`` per sample, in the
    order of the directions (keyed by ``x / unit``, ``unit`` the problem's length unit, so
    a rescaled problem draws the same directions).  An attack that converged to a local
    optimum of the distance on one piece of the boundary gets starts on the other pieces
    within reach (in low
    dimension the directions cover the sphere; in high dimension few random points are
    adversarial and this costs ``len(scales)`` forward passes per direction and sample).
    Returns ``(points [keep, n, ...], have bool [keep, n])`` (rows without a point hold ``x``).
    """
    n, k = x.shape[0], x.ndim
    keys = scale_free_keys(x, unit, seed + 104729)
    u = keyed_normal(keys, (directions, *x.shape[1:]), 0, x.dtype)
    u = u / atleast_kd(l2_norms(u.flatten(0, 1)).reshape(n, directions), k + 1)
    pts = x.new_empty((keep, *x.shape)).copy_(x.expand(keep, *x.shape))
    have = torch.zeros(keep, n, dtype=torch.bool, device=x.device)
    todo = torch.isfinite(radius) & (radius > 0)
    rad = torch.where(todo, radius, torch.zeros_like(radius)).to(x.dtype)
    for sc in scales:
        idx = todo.nonzero().squeeze(1)
        if idx.numel() == 0:
            break
        q = clip_to_box(x[idx, None] + atleast_kd(sc * rad[idx], k + 1) * u[idx], box)
        crit = type(criterion)(criterion.labels[idx].repeat_interleave(directions))
        adv = crit.is_adversarial(model(q.flatten(0, 1))).reshape(-1, directions)
        # the first ``keep`` adversarial directions per sample
        rank = adv.long().cumsum(1) - 1
        for r in range(keep):
            sel = adv & (rank == r)
            hit = sel.any(1)
            j = sel.long().argmax(1)
            rows = idx[hit]
            pts[r, rows] = q[hit.nonzero().squeeze(1), j[hit]]
            have[r, rows] = True
        todo[idx[adv.any(1)]] = False
    return pts, have
