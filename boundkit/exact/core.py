"""Public entry points of :mod:`boundkit.exact` (see ``docs/exact.md`` for the mathematics)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from boundkit.errors import BoundkitError, InputShapeError
from boundkit.exact.convert import AffineReluNet, to_affine_relu
from boundkit.exact.qp import min_norm_point
from boundkit.exact.search import (
    NetCrown,
    SearchBudgetExceeded,
    exact_search,
    pattern_affine,
)
from boundkit.validate import check_call

DEFAULT_MAX_NEURONS = 32
DEFAULT_MAX_REGIONS = 5000
WITNESS_SLACK = 1e-6


class ExactSizeError(BoundkitError):
    """The model is too large for the exact solver (too many ReLUs, or too many regions)."""


@dataclass(frozen=True)
class ExactResult:
    """Exact minimal L2 perturbations for a batch.

    ``radius[n] = min ||r||`` over perturbations with ``argmax f(x_n + r) != c_n`` (ties count).
    ``perturbation[n]`` attains it (it lies on the decision boundary); ``witness[n]`` is a
    point with ``argmax f(x_n + witness[n]) != c_n`` *strictly* and
    ``||witness[n]|| <= (1 + 1e-6) radius[n]`` (pushed slightly inside the adversarial region).
    Rows with no class change anywhere (``radius = inf``) hold NaN and class -1, as do rows
    whose search went over budget with ``on_budget="nan"`` (``radius = NaN``: unknown).
    """

    radius: torch.Tensor  # [N] float64
    perturbation: torch.Tensor  # [N, *in_shape] float64
    witness: torch.Tensor  # [N, *in_shape] float64
    predicted_class: torch.Tensor  # [N] int64
    adversarial_class: torch.Tensor  # [N] int64
    regions: torch.Tensor  # [N] int64, leaf activation regions whose QP was solved
    nodes: torch.Tensor  # [N] int64, branch-and-bound nodes processed


def exact_radius_linear(
    weight: torch.Tensor | np.ndarray,
    bias: torch.Tensor | np.ndarray,
    x: torch.Tensor | np.ndarray,
    *,
    return_perturbation: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Closed-form exact radius of the linear classifier ``f(z) = W z + b`` (rows of ``x``).

    ``rho(x) = min_{c' != c} (f_c(x) - f_{c'}(x)) / ||w_c - w_{c'}||_2`` with ``c = argmax f(x)``
    (``inf`` if ``w_c = w_{c'}`` and the gap is positive, 0 on a tie).  Proof: the set of
    class changes is the union over ``c'`` of the closed halfspaces ``{f_{c'} >= f_c}``, and the
    distance to a union is the minimum of the distances, each the point-to-hyperplane formula.
    With ``return_perturbation`` the minimiser
    ``r* = gap / ||w_c - w_{c'}||^2 * (w_{c'} - w_c)`` is returned too (``[N, d]``).
    """
    w = torch.as_tensor(weight, dtype=torch.float64).detach().cpu()
    b = torch.as_tensor(bias, dtype=torch.float64).detach().cpu()
    z = torch.as_tensor(x, dtype=torch.float64).detach().cpu()
    if w.dim() != 2 or b.shape != (w.shape[0],) or w.shape[0] < 2:
        raise InputShapeError(
            f"expected weight [K, d] with K >= 2 and bias [K]; got {tuple(w.shape)}, "
            f"{tuple(b.shape)}"
        )
    if z.dim() != 2 or z.shape[1] != w.shape[1]:
        raise InputShapeError(f"expected x of shape [N, {w.shape[1]}], got {tuple(z.shape)}")
    logits = z @ w.T + b
    c = logits.argmax(dim=1)
    gap = logits.gather(1, c[:, None]) - logits  # [N, K] >= 0
    dw = w[c][:, None, :] - w[None, :, :]  # [N, K, d]
    nrm = dw.norm(dim=2)
    dist = torch.where(nrm > 0, gap / nrm.clamp_min(1e-300), torch.full_like(gap, math.inf))
    dist = torch.where(gap <= 0, torch.zeros_like(dist), dist)
    dist.scatter_(1, c[:, None], math.inf)
    radius, k = dist.min(dim=1)
    if not return_perturbation:
        return radius
    idx = torch.arange(z.shape[0])
    dwk = dw[idx, k]
    coef = torch.where(
        nrm[idx, k] > 0, gap[idx, k] / nrm[idx, k].clamp_min(1e-300) ** 2, torch.nan
    )
    return radius, -coef[:, None] * dwk


def _witness(
    net: AffineReluNet,
    x: np.ndarray,
    pattern: list[np.ndarray],
    k: int,
    c: int,
    radius: float,
    r_star: np.ndarray,
    box: tuple[np.ndarray, np.ndarray] | None,
) -> np.ndarray:
    """A strictly adversarial perturbation of norm ``<= (1 + WITNESS_SLACK) * radius``.

    Solves the region-``pattern`` QP with every constraint tightened by ``eta`` (unit rows),
    so that the class-``k`` margin is ``>= eta > 0``; tries decreasing ``eta``.
    """
    if radius == 0.0:
        return r_star.copy()
    a, h, f_w, f_b = pattern_affine(net, pattern, x)
    g_w = f_w[k] - f_w[c]
    g_v = float(g_w @ x + f_b[k] - f_b[c])
    rows = [a, g_w[None]]
    rhs = [h, np.array([-g_v])]
    if box is not None:
        lo, hi = box
        eye = np.eye(x.size)
        fl, fh = np.isfinite(lo), np.isfinite(hi)
        rows += [eye[fl], -eye[fh]]
        rhs += [(lo - x)[fl], (x - hi)[fh]]
    a_all = np.vstack(rows)
    h_all = np.concatenate(rhs)
    nrm = np.linalg.norm(a_all, axis=1)
    keep = nrm > 0
    a_all, h_all = a_all[keep] / nrm[keep, None], h_all[keep] / nrm[keep]
    for e in range(7, 13):
        eta = radius * 10.0 ** (-e)
        r = min_norm_point(a_all, h_all + eta)
        if r is None or np.linalg.norm(r) > (1 + WITNESS_SLACK) * radius:
            continue
        logits = net.forward((x + r)[None])[0]
        if logits[k] > logits[c]:
            return r
    return r_star * (1 + WITNESS_SLACK)


def _parse_box(
    box: tuple | None, shape: tuple[int, ...], x: np.ndarray
) -> tuple[np.ndarray, np.ndarray] | None:
    if box is None:
        return None
    if not isinstance(box, (tuple, list)) or len(box) != 2:
        raise InputShapeError("box must be a pair (lo, hi) of scalars or tensors")
    out = []
    for v in box:
        t = torch.as_tensor(v, dtype=torch.float64).detach().cpu()
        try:
            t = torch.broadcast_to(t, shape)
        except RuntimeError as exc:
            raise InputShapeError(f"box bound of shape {tuple(t.shape)} does not broadcast "
                                  f"to the input shape {shape}") from exc
        out.append(t.reshape(-1).numpy().copy())
    lo, hi = out
    if np.any(np.isnan(lo)) or np.any(np.isnan(hi)) or np.any(lo > hi):
        raise InputShapeError("box must satisfy lo <= hi with no NaN")
    if np.any(x < lo) or np.any(x > hi):
        raise InputShapeError("the input lies outside the box")
    return lo, hi


def exact_radius(
    model: nn.Module,
    x: torch.Tensor,
    *,
    box: tuple | None = None,
    rtol: float = 1e-6,
    max_neurons: int = DEFAULT_MAX_NEURONS,
    max_regions: int = DEFAULT_MAX_REGIONS,
    time_limit: float | None = None,
    on_budget: str = "raise",
    return_details: bool = False,
    device: torch.device | str | None = None,
) -> torch.Tensor | ExactResult:
    """Exact minimal L2 perturbation ``rho(x_n) = min { ||r|| : argmax f(x_n + r) != c_n }``.

    ``model``: an eval-mode ``nn.Sequential`` of Linear / Conv2d / AvgPool2d / BatchNorm
    (eval) / Flatten / Identity / Dropout (eval) / ReLU (optionally ending in Softmax or
    LogSoftmax), with at most ``max_neurons`` hidden ReLUs.  ``x``: ``[N, *in_shape]``.
    ``box=(lo, hi)`` restricts ``x + r`` to ``lo <= x + r <= hi`` (the boxed radius is ``>=``
    the unconstrained one).  Linear models use the closed form
    ``min_{c'} (f_c - f_{c'}) / ||w_c - w_{c'}||``; ReLU models a best-first branch-and-bound
    over activation regions with one convex QP per region (``docs/exact.md``).  The returned
    radius ``R`` satisfies ``(1 - rtol) R <= rho <= R`` (``R`` is attained by ``perturbation``).

    Returns a float64 tensor ``[N]`` (``inf`` where no perturbation changes the class), or an
    :class:`ExactResult` with ``return_details=True``.  Raises :class:`ExactSizeError` above
    ``max_neurons`` hidden ReLUs or when the search for a sample exceeds ``max_regions``
    regions or ``time_limit`` seconds (per sample; None = no limit).  With
    ``on_budget="nan"`` such a sample gets radius NaN (and the other samples are still
    solved) instead: a NaN is "unknown", never a bound.
    """
    check_call(model, x, device=device, counts={"max_neurons": max_neurons,
                                                "max_regions": max_regions})
    if not isinstance(x, torch.Tensor):
        raise InputShapeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() < 2 or x.shape[0] == 0:
        raise InputShapeError(
            f"x must be a non-empty batch [N, *input_shape]; got shape {tuple(x.shape)}"
        )
    if not bool(torch.isfinite(x).all()):
        raise InputShapeError("x holds NaN or infinity")
    if not 0.0 <= rtol < 1.0:
        raise ValueError(f"rtol must be in [0, 1), got {rtol}")
    if on_budget not in ("raise", "nan"):
        raise ValueError(f"on_budget must be 'raise' or 'nan', got {on_budget!r}")
    if time_limit is not None and not time_limit >= 0:
        raise ValueError(f"time_limit must be >= 0 seconds or None, got {time_limit}")
    out_device = torch.device(device) if device is not None else x.device
    in_shape = tuple(int(s) for s in x.shape[1:])
    net = to_affine_relu(model, in_shape)
    if net.in_dim != math.prod(in_shape):
        raise InputShapeError(f"model input size {net.in_dim} != prod{in_shape}")
    if net.num_hidden > max_neurons:
        raise ExactSizeError(
            f"the model has {net.num_hidden} hidden ReLU neurons (layers {net.hidden_sizes}); "
            f"exact_radius is limited to max_neurons={max_neurons} because the number of "
            "activation regions grows exponentially. Use bk.certify / bk.attack for bounds."
        )
    xs = x.detach().to("cpu", torch.float64).reshape(x.shape[0], -1).numpy()
    n = xs.shape[0]
    d = xs.shape[1]
    radius = np.full(n, np.inf)
    pert = np.full((n, d), np.nan)
    wit = np.full((n, d), np.nan)
    pred = np.zeros(n, dtype=np.int64)
    adv = np.full(n, -1, dtype=np.int64)
    regions = np.zeros(n, dtype=np.int64)
    nodes = np.zeros(n, dtype=np.int64)
    crown = NetCrown(net) if net.num_hidden > 0 else None  # the B&B's bounds, one graph
    for idx in range(n):
        xi = xs[idx]
        bx = _parse_box(box, in_shape, xi)
        pred[idx] = int(np.argmax(net.forward(xi[None])[0]))
        if net.num_hidden == 0 and bx is None:
            rad, r = exact_radius_linear(
                net.weights[0], net.biases[0], xi[None], return_perturbation=True
            )
            radius[idx] = float(rad[0])
            if math.isfinite(radius[idx]):
                pert[idx] = r[0].numpy()
                logits = net.weights[0] @ (xi + pert[idx]) + net.biases[0]
                logits[pred[idx]] = -np.inf
                adv[idx] = int(np.argmax(logits))
                wit[idx] = pert[idx] * (1 + WITNESS_SLACK)
            regions[idx] = 1
            continue
        deadline = None if time_limit is None else time.perf_counter() + time_limit
        try:
            res = exact_search(net, xi, bx, rtol, max_regions, deadline, crown)
        except SearchBudgetExceeded as exc:
            if on_budget == "nan":
                radius[idx] = math.nan
                regions[idx], nodes[idx] = exc.regions, exc.nodes
                continue
            raise ExactSizeError(
                f"sample {idx}: the exact search exceeded max_regions={max_regions} or "
                f"time_limit={time_limit} s ({exc.regions} regions, {exc.nodes} nodes) for a "
                f"model with {net.num_hidden} hidden ReLUs; raise the budget, use a smaller "
                "model, or pass on_budget='nan' to skip such samples"
            ) from None
        radius[idx] = res.radius
        regions[idx], nodes[idx] = res.regions, res.nodes
        if res.perturbation is not None and res.pattern is not None:
            pert[idx] = res.perturbation
            adv[idx] = res.adv_class
            wit[idx] = _witness(
                net, xi, res.pattern, res.adv_class, int(pred[idx]), res.radius,
                res.perturbation, bx,
            )
    rad_t = torch.from_numpy(radius).to(out_device)
    if not return_details:
        return rad_t
    shape = (n, *in_shape)
    return ExactResult(
        radius=rad_t,
        perturbation=torch.from_numpy(pert).reshape(shape).to(out_device),
        witness=torch.from_numpy(wit).reshape(shape).to(out_device),
        predicted_class=torch.from_numpy(pred).to(out_device),
        adversarial_class=torch.from_numpy(adv).to(out_device),
        regions=torch.from_numpy(regions).to(out_device),
        nodes=torch.from_numpy(nodes).to(out_device),
    )
