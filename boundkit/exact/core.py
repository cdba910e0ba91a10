"""Public entry points of :mod:`boundkit.exact` (see ``docs/exact.md`` for the mathematics)."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from boundkit.bounds.bab import options as _clock
from boundkit.errors import BoundkitError, InputShapeError
from boundkit.exact.convert import to_affine_relu
from boundkit.exact.search import (
    WITNESS_SLACK,
    NetCrown,
    SearchBudgetExceeded,
    Verifier,
    exact_search,
)
from boundkit.margin import class_margins
from boundkit.validate import check_call

#: without ``time_limit``, the largest number of hidden ReLUs ``exact_radius`` accepts
DEFAULT_MAX_NEURONS = 32
#: without ``time_limit``, the most leaf regions a search may solve per sample
DEFAULT_MAX_REGIONS = 5000
#: the region QPs' dual certificates reach their optimum to about ``1e-11`` relative: below
#: ``rtol = CERT_SLACK`` an answered row's ``lower`` is the certificate's, not ``(1 - rtol) R``
CERT_SLACK = 1e-9

__all__ = ["DEFAULT_MAX_NEURONS", "DEFAULT_MAX_REGIONS", "WITNESS_SLACK", "ExactResult",
           "ExactSizeError", "exact_radius", "exact_radius_linear"]


class ExactSizeError(BoundkitError):
    """The model is too large for the exact solver (too many ReLUs, or too many regions)."""


@dataclass(frozen=True)
class ExactResult:
    """Exact minimal L2 perturbations for a batch.

    ``radius[n] = min ||r||`` over perturbations with ``argmax f(x_n + r) != c_n`` (ties count).
    ``perturbation[n]`` attains it (it lies on the decision boundary); ``witness[n]`` is a
    point with ``argmax f(x_n + witness[n]) != c_n`` *strictly* and
    ``||witness[n]|| <= (1 + 1e-6) radius[n]`` (pushed slightly inside the adversarial region),
    verified by re-running the model in float64 at ``x_n + witness[n]``;
    ``witness_native[n]`` says whether it is also strictly adversarial when the model runs in
    its own dtype (a float32 model rounds the input and its arithmetic).
    Rows with no class change anywhere (``radius = inf``) hold NaN and class -1, as do rows
    whose radius is unknown (``radius = NaN``): ``reason[n]`` then says why (the time limit,
    the region budget with ``on_budget="nan"``, a candidate region closer than the
    radius whose witness failed verification, or a region QP too ill-conditioned for its
    dual certificate to reach ``(1 - rtol) R``); it is ``""`` for every answered row.
    ``lower[n] <= rho(x_n) <= upper[n]`` is what is known in every case:
    ``min((1 - rtol) R, certified)`` and ``R`` for an answered row (``certified``: the
    smallest dual-certified distance of the regions closed on a QP, rounding charged;
    ``docs/exact.md`` "What closes a region"; with ``R = inf`` it is that finite distance);
    for a search stopped by its budget, the smallest radius
    certified by its open domains (``bab``'s linear bounds with beta multipliers, float64
    with rounding charged; 0 if it stopped before bounding any) and the smallest distance
    with a verified witness (inf if none).
    """

    radius: torch.Tensor  # [N] float64
    perturbation: torch.Tensor  # [N, *in_shape] float64
    witness: torch.Tensor  # [N, *in_shape] float64
    predicted_class: torch.Tensor  # [N] int64
    adversarial_class: torch.Tensor  # [N] int64
    regions: torch.Tensor  # [N] int64, leaf activation regions whose QP was solved
    nodes: torch.Tensor  # [N] int64, branch-and-bound nodes processed
    witness_native: torch.Tensor | None = None  # [N] bool, witness adversarial in model dtype
    reason: tuple[str, ...] = ()  # [N] why the radius is NaN ("" where it is not)
    lower: torch.Tensor | None = None  # [N] float64, the search's bound: lower <= rho
    upper: torch.Tensor | None = None  # [N] float64, witnessed distance: rho <= upper


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
    gap = class_margins(logits, c)  # [N, K] >= 0, inf at c
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


def _model_verifier(model: nn.Module, x: torch.Tensor) -> Callable[[int, np.ndarray, int],
                                                                     Verifier]:
    """``make(n, x_n, c)`` -> ``verify(r)`` for :func:`exact_search`: the user's model re-run
    at ``x_n + r`` in float64 (a copy) and in its own dtype on its own device; 0 if the
    float64 run is not strictly adversarial (``max_{k != c} f_k > f_c``), 1 if only it is,
    2 if both are."""
    m64 = copy.deepcopy(model).to("cpu", torch.float64).eval()
    par = next((t for t in model.parameters() if t.is_floating_point()), None)
    dtype = par.dtype if par is not None else (x.dtype if x.is_floating_point()
                                               else torch.float32)
    dev = par.device if par is not None else x.device
    shape = tuple(x.shape[1:])

    def strict(out: torch.Tensor, c: int) -> bool:
        o = out.reshape(-1).double()
        rest = torch.cat([o[:c], o[c + 1:]])
        return bool(rest.max() > o[c])

    def make(n: int, xn: np.ndarray, c: int) -> Verifier:
        def verify(r: np.ndarray) -> int:
            z = torch.from_numpy(xn + r).reshape(1, *shape)
            with torch.no_grad():
                if not strict(m64(z), c):
                    return 0
                return 2 if strict(model(z.to(dev, dtype)), c) else 1
        return verify

    return make


def _attack_seeds(model: nn.Module, x: torch.Tensor, box: tuple | None, wanted: bool
                  ) -> tuple[np.ndarray | None, float]:
    """Where the search has a time limit (a real-sized net): the ``best`` attack's
    perturbations ``[N, d]`` (float64; NaN where it found none) as the search's first upper
    ends, and the seconds it took per sample (charged to each sample's limit, on the clock
    of :mod:`boundkit.bounds.bab.options`); ``(None, 0)`` otherwise.  Only upper bounds come
    from them: the search solves the region of each point, so a wrong or missing point costs
    time, never a bound."""
    if not wanted:
        return None, 0.0
    from boundkit.attacks import attack  # the exact search needs no attack otherwise

    t0 = _clock.now()
    res = attack(model, x, "best", box=box)
    r = (res.x_adv.detach().to("cpu", torch.float64) - x.detach().to("cpu", torch.float64))
    r = r.reshape(x.shape[0], -1).numpy().copy()
    r[~res.success.cpu().numpy()] = np.nan
    return r, (_clock.now() - t0) / x.shape[0]


def exact_radius(
    model: nn.Module,
    x: torch.Tensor,
    *,
    box: tuple | None = None,
    rtol: float = 1e-6,
    max_neurons: int | None = None,
    max_regions: int | None = None,
    time_limit: float | None = None,
    on_budget: str = "raise",
    return_details: bool = False,
    device: torch.device | str | None = None,
) -> torch.Tensor | ExactResult:
    """Exact minimal L2 perturbation ``rho(x_n) = min { ||r|| : argmax f(x_n + r) != c_n }``.

    ``model``: an eval-mode ``nn.Sequential`` of Linear / Conv2d / AvgPool2d / BatchNorm
    (eval) / Flatten / Identity / Dropout (eval) / ReLU (optionally ending in Softmax or
    LogSoftmax).  ``x``: ``[N, *in_shape]``.  ``box=(lo, hi)`` restricts ``x + r`` to
    ``lo <= x + r <= hi`` (the boxed radius is ``>=`` the unconstrained one).  Linear models
    use the closed form ``min_{c'} (f_c - f_{c'}) / ||w_c - w_{c'}||``; ReLU models a
    branch and bound on the net's canonical form (every hidden neuron's input row of unit
    norm: the same decision function whatever the layers' positive scales;
    ``docs/exact.md``): the upper end a witnessed region QP, the lower end ``bab``'s
    domains (:mod:`boundkit.bounds.bab`: split ReLUs, batched linear bounds with optimised
    slopes and beta multipliers), each certifying the radius ``c / nu`` its bound gives,
    bounded at the ball of radius ``(1 - rtol)`` times the upper end; a domain with every
    neuron split or stable is a leaf, solved by its region's exact QP and closed on the
    QP's dual-certified lower bound (float64, the rows' rounding charged; where it falls
    below ``(1 - max(rtol, 1e-9)) R`` the sample is NaN with the reason).  The returned radius
    ``R`` satisfies ``(1 - rtol) R <= rho <= R`` (``R`` is attained by ``perturbation``), and
    every finite ``R`` comes with a witness the model itself confirms (re-run in float64).

    Budgets: ``time_limit`` seconds per sample (None = none), on the clock of
    :mod:`boundkit.bounds.bab.options` (wall seconds; a benchmark on a shared machine may
    set ``CLOCK = time.process_time``).  Without a time limit the
    model may have at most ``max_neurons`` hidden ReLUs (default 32) and a search at most
    ``max_regions`` leaf regions (default 5000); with one, both default to no limit, so the
    exact radius can be asked of real-sized networks and each sample either finishes in time
    or is reported unknown; there the ``best`` attack (its time charged to the limits) seeds
    each sample's upper end, and the first upper ends take at most a quarter of the limit
    (``docs/exact.md`` §Budgets).  A sample over budget raises :class:`ExactSizeError`, or with
    ``on_budget="nan"`` gets radius NaN (the other samples are still solved) and its reason
    in ``ExactResult.reason``.  A sample whose answer cannot be confirmed (a candidate region
    closer than the radius found had no witness the model confirms) is NaN with its reason in
    either mode: a NaN is "unknown", never a bound.

    Returns a float64 tensor ``[N]`` (``inf`` where no perturbation changes the class), or an
    :class:`ExactResult` with ``return_details=True``.
    """
    x = check_call(model, x, device=device, counts={"max_neurons": max_neurons,
                                                    "max_regions": max_regions})
    # check_call has checked x: a finite, floating, non-empty batch [N, ...]
    if not 0.0 <= rtol < 1.0:
        raise ValueError(f"rtol must be in [0, 1), got {rtol}")
    if on_budget not in ("raise", "nan"):
        raise ValueError(f"on_budget must be 'raise' or 'nan', got {on_budget!r}")
    if time_limit is not None and not (isinstance(time_limit, (int, float))
                                       and not isinstance(time_limit, bool)
                                       and 0 <= time_limit < math.inf):
        raise ValueError(f"time_limit must be a finite number of seconds >= 0 or None, "
                         f"got {time_limit!r}")
    if time_limit is None:
        max_neurons = DEFAULT_MAX_NEURONS if max_neurons is None else max_neurons
        max_regions = DEFAULT_MAX_REGIONS if max_regions is None else max_regions
    out_device = torch.device(device) if device is not None else x.device
    in_shape = tuple(int(s) for s in x.shape[1:])
    net = to_affine_relu(model, in_shape)
    if net.in_dim != math.prod(in_shape):
        raise InputShapeError(f"model input size {net.in_dim} != prod{in_shape}")
    if max_neurons is not None and net.num_hidden > max_neurons:
        pooled = (f", {net.pool_units} of them writing its max poolings as ReLU layers"
                  if net.pool_units else "")
        raise ExactSizeError(
            f"the model has {net.num_hidden} hidden ReLU neurons (layers {net.hidden_sizes}"
            f"{pooled}); "
            f"exact_radius is limited to max_neurons={max_neurons} because the number of "
            "activation regions grows exponentially. Pass time_limit= (seconds per sample) "
            "to try it anyway, or use bk.certify / bk.attack for bounds."
        )
    canon = net.canonical() if net.num_hidden > 0 else net
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
    native = np.zeros(n, dtype=bool)
    reason = [""] * n
    lower = np.zeros(n)
    upper = np.full(n, np.inf)
    crown = NetCrown(canon) if net.num_hidden > 0 else None  # the B&B's bounds, one graph
    make_verify = _model_verifier(model, x)
    # every sample's box checked (one-line errors) before the attack reads it
    boxes = [_parse_box(box, in_shape, xs[idx]) for idx in range(n)]
    seeds, seed_seconds = _attack_seeds(model, x, box,
                                        net.num_hidden > 0 and time_limit is not None)
    for idx in range(n):
        xi = xs[idx]
        bx = boxes[idx]
        pred[idx] = int(np.argmax(net.forward(xi[None])[0]))
        verify = make_verify(idx, xi, int(pred[idx]))
        if net.num_hidden == 0 and bx is None:
            rad, r = exact_radius_linear(
                net.weights[0], net.biases[0], xi[None], return_perturbation=True
            )
            radius[idx] = float(rad[0])
            regions[idx] = 1
            lower[idx] = upper[idx] = radius[idx]
            if not math.isfinite(radius[idx]):
                continue
            pert[idx] = r[0].numpy()
            logits = net.weights[0] @ (xi + pert[idx]) + net.biases[0]
            logits[pred[idx]] = -np.inf
            adv[idx] = int(np.argmax(logits))
            w = pert[idx] * (1 + WITNESS_SLACK / 2)
            lv = 2 if radius[idx] == 0.0 else verify(w)
            if lv == 0:
                reason[idx] = (f"the closed-form minimiser (distance {radius[idx]:.17g}) "
                               "pushed out by 5e-7 is not adversarial when the model is re-run "
                               "in float64")
                radius[idx] = math.nan
                upper[idx] = math.inf
                adv[idx] = -1
                pert[idx] = np.nan
                continue
            wit[idx], native[idx] = w, lv == 2
            continue
        deadline = (None if time_limit is None
                    else _clock.now() + max(time_limit - seed_seconds, 0.0))
        try:
            res = exact_search(canon, xi, bx, rtol, max_regions, deadline, crown,
                               c=int(pred[idx]), verify=verify,
                               seeds=None if seeds is None else [seeds[idx]])
        except SearchBudgetExceeded as exc:
            what = (f"time_limit={time_limit} s" if exc.what == "time_limit"
                    else f"max_regions={max_regions}")
            if on_budget == "nan":
                radius[idx] = math.nan
                regions[idx], nodes[idx] = exc.regions, exc.nodes
                lower[idx], upper[idx] = exc.lower, exc.upper
                reason[idx] = (f"the search went past {what} ({exc.regions} regions, "
                               f"{exc.nodes} nodes); {exc.lower:.6g} <= radius <= "
                               f"{exc.upper:.6g}")
                continue
            raise ExactSizeError(
                f"sample {idx}: the exact search went past {what} ({exc.regions} regions, "
                f"{exc.nodes} nodes) for a model with {net.num_hidden} hidden ReLUs; raise "
                "the budget, use a smaller model, or pass on_budget='nan' to skip such "
                "samples"
            ) from None
        regions[idx], nodes[idx] = res.regions, res.nodes
        if res.untrusted < res.radius * (1.0 - rtol):
            upper[idx] = res.radius
            radius[idx] = math.nan
            reason[idx] = (
                f"a region at distance {res.untrusted:.17g} (below the best confirmed "
                f"{res.radius:.17g}) had no witness that the model, re-run in float64, "
                "confirms as adversarial: its answer is not trusted")
            continue
        if math.isfinite(res.radius) and (
                res.certified < res.radius * (1.0 - max(rtol, CERT_SLACK))):
            upper[idx] = res.radius
            lower[idx] = min(res.certified, res.radius * (1.0 - rtol))
            radius[idx] = math.nan
            reason[idx] = (
                f"the region QP is ill-conditioned at this scale: a region closed on its QP "
                f"is certified (dual bound, rounding charged) only {res.certified:.17g} away, "
                f"below (1 - rtol) times the best confirmed {res.radius:.17g}")
            continue
        radius[idx] = res.radius
        # with no class change found (radius inf), what is proved is the regions' certified
        # distance: a dual bound of an empty region is finite in float64 (its Farkas vector
        # cancels only up to rounding), typically ~1e15 times the rows' distances
        lower[idx] = min(res.radius * (1.0 - rtol), res.certified)
        upper[idx] = res.radius
        if res.perturbation is not None and res.witness is not None:
            pert[idx] = res.perturbation
            adv[idx] = res.adv_class
            wit[idx] = res.witness
            native[idx] = res.witness_level == 2
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
        witness_native=torch.from_numpy(native).to(out_device),
        reason=tuple(reason),
        lower=torch.from_numpy(lower).to(out_device),
        upper=torch.from_numpy(upper).to(out_device),
    )
