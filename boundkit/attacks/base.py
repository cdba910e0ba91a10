"""Shared machinery of the minimum-norm L2 attacks.

Contents
--------
* :class:`AttackResult` -- what :func:`boundkit.attack` returns (verified, float64 norms).
* :class:`Misclassification` / :class:`TargetedMisclassification` -- the attack criteria
  (Foolbox-3 names): untargeted "the arg-max differs from the label", targeted "the arg-max
  is the target".
* :class:`Attack` -- base class of every attack.  ``attack(model, x, criterion, box=...)``
  returns the *raw* candidates (a tensor like ``x``, possibly not adversarial); the shared
  :func:`verify` step re-runs the model on exactly those tensors, in the model's dtype, and is
  the only thing that decides success.  Every attack also ends with a short bisection along
  the segment ``x -> x_adv`` (:func:`boundary_bisection`), which never increases the norm and
  keeps the adversarial end point.
* Helpers: batched L2 norms (:func:`l2_norms`), box projection (:func:`clip_to_box`), the
  margin used as a differentiable surrogate of the criterion.

Conventions
-----------
* Everything is batched: the only Python loops are over iterations, search steps or classes,
  never over samples.
* The model is called on tensors of its own parameter dtype, on its own device (or the one
  given), and is never switched between train / eval mode.
* ``box`` is ``(lo, hi)`` (scalars) or ``None`` (no input domain constraint).
"""

from __future__ import annotations

import enum
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from boundkit.margin import label_margin

Box = tuple[float, float] | None

__all__ = [
    "AttackResult",
    "Outcome",
    "Verified",
    "Attack",
    "Box",
    "Criterion",
    "Misclassification",
    "TargetedMisclassification",
    "l2_norms",
    "clip_to_box",
    "box_diameter",
    "problem_scale",
    "verify",
    "zero_gradient",
    "keep_best",
    "Plateau",
    "MIN_ROWS",
    "boundary_bisection",
    "model_dtype",
    "model_device",
    "atleast_kd",
    "sample_keys",
    "scale_free_keys",
    "keyed_normal",
]


# --------------------------------------------------------------------------------------
# result
# --------------------------------------------------------------------------------------


class Outcome(enum.Enum):
    """What an attack knows about one sample (``AttackResult.outcome``).

    ``FOUND`` and ``CLEAN`` come with a verified adversarial example; the others say why
    there is none:

    * ``NO_OTHER_CLASS``: no point of another class (for a targeted attack: of the target)
      among every start point tried (reference data, random points of the box, line searches
      along random and gradient directions out to the box's far side, or without a box to
      ``10**4`` times the problem's length unit), and no gradient step got there either: at
      this budget the box looks like one class around the sample.
    * ``ZERO_GRADIENT``: the gradient of the margin was zero at the sample and at every
      point the attack tried (a constant region: dead ReLUs, saturated units), and no start
      point of another class was found.
    * ``BUDGET_SPENT``: gradients were there but the steps ran out before any iterate was
      adversarial.
    * ``NOT_RECORDED``: a failure whose reason the producer did not record (results rebuilt
      from files or shards written without it).
    """

    FOUND = "found"
    CLEAN = "clean"
    NO_OTHER_CLASS = "no other class found"
    ZERO_GRADIENT = "zero gradient everywhere tried"
    BUDGET_SPENT = "budget spent"
    NOT_RECORDED = "not recorded"

    @property
    def has_example(self) -> bool:
        return self in (Outcome.FOUND, Outcome.CLEAN)



@dataclass
class AttackResult:
    """Verified outcome of a minimum-norm L2 attack, one entry per sample.

    Attributes
    ----------
    x_adv:
        ``[N, ...]`` returned points, in the model's dtype.  Where ``success`` is False it is
        the clean input.
    norm:
        ``float64 [N]``: ``||x_adv - x||_2`` recomputed in float64 from exactly ``x_adv``;
        ``+inf`` where no adversarial example was found.
    success:
        ``bool [N]``: True only if the model, re-run on ``x_adv``, satisfies the criterion.
    found_by:
        ``list[str]`` of length N: the attack that produced each successful example
        (``"clean"`` for samples misclassified before any perturbation, ``""`` on failure).
    label:
        ``int64 [N]``: class predicted by the model on the clean input.
    adv_label:
        ``int64 [N]``: class predicted on ``x_adv`` (equal to ``label`` on failure).
    method:
        name of the attack (or ensemble) that was run.
    targeted, target:
        whether the criterion was targeted, and the targets (``int64 [N]``) if so.
    y:
        the labels the criterion used (``int64 [N]``), i.e. ``label`` unless ``y`` was passed.
    seconds:
        wall time of the whole call.
    outcome:
        ``list[Outcome]`` of length N: ``FOUND`` / ``CLEAN`` with an example, else why
        there is none (:class:`Outcome`); derived from ``success`` and ``found_by`` (failures
        ``NOT_RECORDED``) when not given.
    """

    x_adv: Tensor
    norm: Tensor
    success: Tensor
    found_by: list[str]
    label: Tensor
    adv_label: Tensor
    method: str = ""
    targeted: bool = False
    target: Tensor | None = None
    y: Tensor | None = None
    seconds: float = 0.0
    extras: dict[str, Any] = field(default_factory=dict)
    outcome: list[Outcome] | None = None

    def __post_init__(self) -> None:
        ok = self.success.tolist()
        if self.outcome is None:
            self.outcome = [
                (Outcome.CLEAN if f == "clean" else Outcome.FOUND) if s else Outcome.NOT_RECORDED
                for s, f in zip(ok, self.found_by)]
        else:
            self.outcome = [Outcome(o) for o in self.outcome]
            if len(self.outcome) != len(ok):
                raise ValueError(f"outcome has {len(self.outcome)} entries for {len(ok)} samples")
            bad = [i for i, (s, o) in enumerate(zip(ok, self.outcome)) if s != o.has_example]
            if bad:
                raise ValueError(f"outcome disagrees with success at samples {bad[:5]}")

    def __len__(self) -> int:
        return int(self.norm.shape[0])

    def missing(self) -> dict[Outcome, int]:
        """Samples without an adversarial example, counted by reason (empty when none)."""
        out: dict[Outcome, int] = {}
        for o in self.outcome or []:
            if not o.has_example:
                out[o] = out.get(o, 0) + 1
        return out

    @classmethod
    def concat(cls, parts: list[AttackResult]) -> AttackResult:
        """Join results of consecutive chunks of one batch (same method and criterion)."""
        if not parts:
            raise ValueError("nothing to concatenate")

        def cat(name: str) -> Tensor | None:
            vals = [getattr(p, name) for p in parts]
            return None if any(v is None for v in vals) else torch.cat(vals)

        first = parts[0]
        return cls(
            x_adv=torch.cat([p.x_adv for p in parts]),
            norm=torch.cat([p.norm for p in parts]),
            success=torch.cat([p.success for p in parts]),
            found_by=[f for p in parts for f in p.found_by],
            label=torch.cat([p.label for p in parts]),
            adv_label=torch.cat([p.adv_label for p in parts]),
            method=first.method,
            targeted=first.targeted,
            target=cat("target"),
            y=cat("y"),
            seconds=sum(p.seconds for p in parts),
            extras=dict(first.extras),
            outcome=[o for p in parts for o in (p.outcome or [])],
        )

    def median_norm(self) -> float:
        """Median of ``norm`` over all samples (failures count as ``+inf``)."""
        if len(self) == 0:
            return float("nan")
        return float(torch.quantile(self.norm.double().cpu(), 0.5, interpolation="lower"))

    def success_rate(self) -> float:
        """Fraction of samples for which a verified adversarial example was found."""
        if len(self) == 0:
            return float("nan")
        return float(self.success.double().mean())

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python / numpy view (for JSON or reports); ``x_adv`` as a numpy array."""
        return {
            "method": self.method,
            "targeted": self.targeted,
            "x_adv": self.x_adv.detach().cpu().numpy(),
            "norm": self.norm.cpu().numpy().tolist(),
            "success": self.success.cpu().numpy().tolist(),
            "found_by": list(self.found_by),
            "outcome": [o.value for o in self.outcome or []],
            "label": self.label.cpu().numpy().tolist(),
            "adv_label": self.adv_label.cpu().numpy().tolist(),
            "target": None if self.target is None else self.target.cpu().numpy().tolist(),
            "median_norm": self.median_norm(),
            "success_rate": self.success_rate(),
            "seconds": self.seconds,
        }


@dataclass
class Verified:
    """One attack's verified result on a batch (what :meth:`Attack.attack` returns).

    ``x_adv`` (the input where ``success`` is False), ``success``, ``norm`` (float64, ``+inf``
    on failure), ``adv_label`` (model's class at ``x_adv``), ``found_by`` (per sample, ``""``
    on failure), ``outcome`` (per sample :class:`Outcome`) as in :class:`AttackResult`.
    """

    x_adv: Tensor
    success: Tensor
    norm: Tensor
    adv_label: Tensor
    found_by: list[str]
    outcome: list[Outcome] = field(default_factory=list)


# --------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------


def keep_best(best: Tensor, best_norm: Tensor, cand: Tensor, norm: Tensor,
              is_adv: Tensor) -> Tensor:
    """Best-so-far tracking of the iterative attacks: where ``cand`` is adversarial and
    smaller than the best so far, copy its rows into ``best`` (in place) and return the
    updated ``best_norm`` (the input itself when nothing improved)."""
    better = is_adv & (norm < best_norm)
    if not bool(better.any()):
        return best_norm
    best[better] = cand[better]
    return torch.where(better, norm, best_norm)


#: smallest working batch an attack shrinks to: BLAS kernels compute a row of a 2- or 3-row
#: product differently from a row of a larger one (and depending on the memory alignment,
#: so from process to process); below this many rows, converged samples stay in the batch,
#: frozen, instead of leaving it
MIN_ROWS = 4


class Plateau:
    """Per-sample convergence stopping of an iterative attack.

    Every ``window`` steps a sample whose best adversarial norm so far is finite and has not
    decreased by a relative ``tolerance`` since the previous check has *converged*: its best
    point so far is its result, and the attack drops it from its working batch (or, when
    fewer than :data:`MIN_ROWS` samples would be left, keeps computing it but ignores it).
    The rule reads only the sample's own trajectory (so a sample's result does not depend on
    its batch) and is relative (so it is scale-free).  ``window <= 0`` disables it.

    Use: ``keep = plateau.converged(step, best_norm, best, out)`` after each step (``out``:
    the attack's result for its whole input batch, written for the converged samples); when
    ``plateau.done`` every sample has converged; when ``keep`` is not None the attack keeps
    only those rows of its state.  At the end ``plateau.finish(best, out)``.  ``index``: the
    positions (in the input batch) of the rows of the working batch.
    """

    def __init__(self, window: int, tolerance: float, best_norm: Tensor) -> None:
        self.window = int(window)
        self.tolerance = float(tolerance)
        self.index = torch.arange(best_norm.shape[0], device=best_norm.device)
        self.ref = best_norm.clone()
        self.frozen = torch.zeros_like(best_norm, dtype=torch.bool)
        self.done = False

    def converged(self, step: int, best_norm: Tensor, best: Tensor, out: Tensor) -> Tensor | None:
        """After step ``step`` (0-based): write the samples that converged into ``out``;
        return the rows to keep when the working batch shrinks (else None)."""
        if self.window <= 0 or (step + 1) % self.window:
            return None
        stop = (torch.isfinite(best_norm) & (best_norm > self.ref * (1 - self.tolerance))
                & ~self.frozen)
        self.ref = best_norm.clone()
        if not bool(stop.any()):
            return None
        out[self.index[stop]] = best[stop]
        live = ~(self.frozen | stop)
        n_live = int(live.sum())
        if n_live == 0:
            self.done = True
            return None
        if n_live < MIN_ROWS:
            self.frozen |= stop
            return None
        self.index, self.ref, self.frozen = self.index[live], self.ref[live], self.frozen[live]
        return live

    def finish(self, best: Tensor, out: Tensor) -> None:
        """Write the samples still running into ``out``."""
        live = ~self.frozen
        out[self.index[live]] = best[live]


def zero_gradient(model: nn.Module, x: Tensor, criterion: Criterion) -> Tensor:
    """``bool [N]``: where the gradient of the criterion's margin at ``x`` is exactly zero
    (or not finite): a gradient step from there goes nowhere, so an attack that stops
    there has not converged, it has stalled (dead ReLUs, saturated units, a constant
    region of the network)."""
    _, g = logits_and_grad(model, x, criterion.margin)
    gn = l2_norms(g)
    return ~(torch.isfinite(gn) & (gn > 0))


def atleast_kd(t: Tensor, k: int) -> Tensor:
    """Reshape a ``[N]`` tensor to ``[N, 1, ..., 1]`` with ``k`` dimensions (for broadcasting)."""
    return t.reshape(t.shape + (1,) * (k - t.ndim))


def l2_norms(delta: Tensor) -> Tensor:
    """Per-sample L2 norms of a batch ``[N, ...]`` (in the dtype of ``delta``)."""
    return delta.flatten(1).norm(p=2, dim=1)


def clip_to_box(x: Tensor, box: Box) -> Tensor:
    """Project onto the box ``[lo, hi]`` (identity when ``box`` is None)."""
    if box is None:
        return x
    return x.clamp(box[0], box[1])


def box_diameter(x: Tensor, box: Box, default: float | Tensor = 100.0) -> Tensor:
    """Largest L2 distance from each sample to a point of the box (``default`` if no box;
    a ``[N]`` tensor default, e.g. a multiple of :func:`problem_scale`, keeps it scale-free)."""
    if box is None:
        return torch.as_tensor(default, dtype=x.dtype, device=x.device).expand(
            x.shape[0]).clone()
    far = torch.maximum(x - box[0], box[1] - x)
    return l2_norms(far)


@torch.no_grad()
def problem_scale(model: nn.Module, x: Tensor, criterion: Criterion, box: Box) -> Tensor:
    """Per-sample length unit of the attack problem, ``[N]`` in the dtype of ``x``.

    Every absolute step size and initial radius of the attacks is a multiple of this unit, so
    that their results are invariant to a rescaling of the input space: for ``g(z) = f(z / s)``
    attacked at ``s x`` (box scaled alike) the unit is ``s`` times the unit for ``f`` at
    ``x``, and every iterate is ``s`` times the corresponding one.

    * With a box ``(lo, hi)``: its width ``hi - lo`` (so MNIST's ``[0, 1]`` gives 1, the
      setting the papers' step sizes were tuned for).
    * Without a box: the linear (DeepFool / FMN) estimate of the distance to the decision
      boundary, ``|m(x)| / ||grad m(x)||`` with ``m`` the criterion's margin; where that is 0
      or not finite (zero gradient, or ``x`` on the boundary) the root mean square of ``x``,
      and 1 where that is 0 too.
    """
    n = x.shape[0]
    if box is not None:
        return torch.full((n,), float(box[1] - box[0]), dtype=x.dtype, device=x.device)
    logits, g = logits_and_grad(model, x, criterion.margin)
    m = criterion.margin(logits).abs()
    est = m / l2_norms(g)
    rms = x.flatten(1).pow(2).mean(1).sqrt()
    good = torch.isfinite(est) & (est > 0)
    unit = torch.where(good, est, rms)
    return torch.where(unit > 0, unit, torch.ones_like(unit)).to(x.dtype)


def model_dtype(model: nn.Module, fallback: torch.dtype = torch.float32) -> torch.dtype:
    """The floating dtype of the model's first floating parameter/buffer."""
    for t in list(model.parameters()) + list(model.buffers()):
        if t.is_floating_point():
            return t.dtype
    return fallback


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter/buffer (CPU for parameter-free models)."""
    for t in list(model.parameters()) + list(model.buffers()):
        return t.device
    return torch.device("cpu")


# --------------------------------------------------------------------------------------
# criteria
# --------------------------------------------------------------------------------------


class Criterion(ABC):
    """What makes a point adversarial, plus a differentiable margin surrogate.

    ``margin(logits) < 0`` iff adversarial, up to ties between logits (ties are decided by
    ``argmax``, which is what :meth:`is_adversarial` and the verification use).
    """

    targeted: ClassVar[bool] = False

    def __init__(self, labels: Tensor) -> None:
        self.labels = labels.long()

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, idx: Tensor | slice) -> Criterion:
        return type(self)(self.labels[idx])

    def to(self, device: torch.device | str) -> Criterion:
        return type(self)(self.labels.to(device))

    @abstractmethod
    def is_adversarial(self, logits: Tensor) -> Tensor:
        """True where ``logits`` satisfy the criterion."""

    @abstractmethod
    def margin(self, logits: Tensor) -> Tensor:
        """A score that is positive exactly where the criterion is not yet met."""

    def accepts(self, pred: Tensor) -> Tensor:
        """``bool [N, P]``: whether a point the model assigns class ``pred[j]`` satisfies
        the criterion of sample ``i`` (untargeted: another class than ``labels[i]``;
        targeted: ``labels[i]`` itself)."""
        same = pred.to(self.labels.device)[None, :] == self.labels[:, None]
        return same if self.targeted else ~same


class Misclassification(Criterion):
    """Untargeted: adversarial iff ``argmax f(x') != labels``.

    Margin: ``f_y(x') - max_{i != y} f_i(x')``.
    """

    targeted = False

    def is_adversarial(self, logits: Tensor) -> Tensor:
        return logits.argmax(1) != self.labels

    def margin(self, logits: Tensor) -> Tensor:
        return label_margin(logits, self.labels)


class TargetedMisclassification(Criterion):
    """Targeted: adversarial iff ``argmax f(x') == target`` (``labels`` holds the targets).

    Margin: ``max_{i != t} f_i(x') - f_t(x')``.
    """

    targeted = True

    def is_adversarial(self, logits: Tensor) -> Tensor:
        return logits.argmax(1) == self.labels

    def margin(self, logits: Tensor) -> Tensor:
        return -label_margin(logits, self.labels)


# --------------------------------------------------------------------------------------
# verification and bisection
# --------------------------------------------------------------------------------------


@torch.no_grad()
def verify(
    model: nn.Module, x: Tensor, x_adv: Tensor, criterion: Criterion, box: Box
) -> tuple[Tensor, Tensor, Tensor]:
    """Re-run the model on exactly ``x_adv`` and decide success.

    Returns ``(success, norm, adv_label)``: ``success`` requires a finite ``x_adv`` inside the
    box and the criterion to hold on the model's logits for ``x_adv`` (computed in the model's
    dtype); ``norm`` is ``||x_adv - x||_2`` computed in float64 from exactly ``x_adv``, ``+inf``
    where ``success`` is False.
    """
    logits = model(x_adv)
    adv_label = logits.argmax(1)
    success = criterion.is_adversarial(logits)
    flat = x_adv.flatten(1)
    success &= torch.isfinite(flat).all(1)
    if box is not None:
        success &= ((flat >= box[0]) & (flat <= box[1])).all(1)
    norm = (x_adv.double() - x.double()).flatten(1).norm(p=2, dim=1)
    norm = torch.where(success, norm, torch.full_like(norm, math.inf))
    return success, norm, adv_label


@torch.no_grad()
def boundary_bisection(
    model: nn.Module,
    x: Tensor,
    x_adv: Tensor,
    criterion: Criterion,
    steps: int = 10,
) -> Tensor:
    """Shrink ``x_adv`` towards ``x`` along the segment while it stays adversarial.

    Bisection on ``t`` in ``x + t (x_adv - x)``: the returned point is always one the model
    classified as adversarial (or ``x_adv`` itself), so the norm never grows.  Points inside the
    box stay inside (the box is convex).  Samples where ``x_adv`` is not adversarial are
    returned unchanged.  ``steps`` forward passes.
    """
    if steps <= 0:
        return x_adv
    k = x.ndim
    best = x_adv.clone()
    ok = criterion.is_adversarial(model(x_adv))
    if not bool(ok.any()):
        return best
    lo = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    hi = torch.ones_like(lo)
    d = x_adv - x
    for _ in range(steps):
        mid = (lo + hi) / 2
        cand = x + atleast_kd(mid, k) * d
        adv = criterion.is_adversarial(model(cand)) & ok
        hi = torch.where(adv, mid, hi)
        lo = torch.where(adv | ~ok, lo, mid)
        best = torch.where(atleast_kd(adv, k), cand, best)
    return best


# --------------------------------------------------------------------------------------
# attack base class
# --------------------------------------------------------------------------------------


class Attack(ABC):
    """Base class of boundkit's minimum-norm L2 attacks (Foolbox-3-like interface).

    Subclasses implement :meth:`run` (batched, device-agnostic), returning raw candidate
    points.  :meth:`__call__` clips them to the box and applies the final boundary bisection
    (``refine_steps`` forward passes, 0 to disable); :meth:`attack` additionally verifies.
    Class attribute ``name`` is the registry key; ``budget_to_options`` maps the generic
    ``budget`` (gradient steps per sample) of :func:`boundkit.attack` onto the attack's own
    hyperparameters.
    """

    name: ClassVar[str] = "attack"

    def __init__(self, *, refine_steps: int = 10) -> None:
        self.refine_steps = int(refine_steps)

    # -- to implement -----------------------------------------------------------------
    @abstractmethod
    def run(
        self,
        model: nn.Module,
        x: Tensor,
        criterion: Criterion,
        *,
        box: Box,
        seed: int = 0,
    ) -> Tensor:
        """Return candidate adversarial points for the batch ``x`` (same shape and dtype)."""

    @classmethod
    def budget_to_options(cls, budget: int) -> dict[str, Any]:
        """Hyperparameters implied by a budget of ``budget`` gradient steps per sample."""
        return {"steps": int(budget)}

    # -- shared -----------------------------------------------------------------------
    def __call__(
        self,
        model: nn.Module,
        x: Tensor,
        criterion: Criterion,
        *,
        box: Box = (0.0, 1.0),
        seed: int = 0,
    ) -> Tensor:
        """Raw result: the attack's candidates, clipped to the box and bisected to the boundary.

        Not verified: use :func:`verify` (or :meth:`attack`) before trusting any of them.
        """
        x = x.detach()
        x_adv = self.run(model, x, criterion, box=box, seed=seed).detach()
        x_adv = clip_to_box(x_adv, box).to(x.dtype)
        return boundary_bisection(model, x, x_adv, criterion, self.refine_steps)

    def attack(
        self,
        model: nn.Module,
        x: Tensor,
        criterion: Criterion,
        *,
        box: Box = (0.0, 1.0),
        seed: int = 0,
    ) -> Verified:
        """Run and verify once (see :func:`verify`); failures get ``x_adv = x``."""
        x_raw = self(model, x, criterion, box=box, seed=seed)
        success, norm, adv_label = verify(model, x, x_raw, criterion, box)
        x_adv = torch.where(atleast_kd(success, x.ndim), x_raw, x)
        sources = self.sources(x.shape[0])
        found_by = [s if ok else "" for s, ok in zip(sources, success.tolist())]
        outcome = self.outcomes(model, x, x_raw, criterion, success)
        return Verified(x_adv, success, norm, adv_label, found_by, outcome)

    def outcomes(self, model: nn.Module, x: Tensor, x_raw: Tensor, criterion: Criterion,
                 success: Tensor) -> list[Outcome]:
        """Per sample :class:`Outcome` of the last run: ``FOUND`` where ``success``; for a
        failure ``ZERO_GRADIENT`` where the margin's gradient vanishes both at ``x`` and at
        the attack's last candidate ``x_raw`` (the attack never moved), else
        ``BUDGET_SPENT``.  The ensemble overrides this with what its start search saw."""
        out = [Outcome.FOUND if ok else Outcome.BUDGET_SPENT for ok in success.tolist()]
        fail = (~success).nonzero().squeeze(1)
        if fail.numel():
            c = criterion.subset(fail)
            flat = zero_gradient(model, x[fail], c) & zero_gradient(model, x_raw[fail], c)
            for i, z in zip(fail.tolist(), flat.tolist()):
                if z:
                    out[i] = Outcome.ZERO_GRADIENT
        return out

    def sources(self, n: int) -> list[str]:
        """What produced each of the ``n`` candidates of the last :meth:`run` (the attack's
        name; the ensemble names its winning member per sample)."""
        return [self.name] * n

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({params})"


# --------------------------------------------------------------------------------------
# gradient helpers used by several attacks
# --------------------------------------------------------------------------------------


def logits_and_grad(
    model: nn.Module, x: Tensor, loss_fn: Callable[[Tensor], Tensor]
) -> tuple[Tensor, Tensor]:
    """Logits at ``x`` and the gradient of ``loss_fn(logits).sum()`` w.r.t. ``x``."""
    with torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        logits = model(xg)
        (g,) = torch.autograd.grad(loss_fn(logits).sum(), xg, materialize_grads=True)
    return logits.detach(), g


def class_gradients(
    model: nn.Module, x: Tensor, classes: Tensor, ref: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Batched Jacobian rows of ``f_k - f_ref`` for each column ``k`` of ``classes``.

    ``classes`` is ``[N, K]``, ``ref`` is ``[N]``.  Returns ``(logits [N, C], diffs [N, K],
    grads [N, K, ...])`` with one backward pass per candidate column (batched over samples).
    """
    with torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        logits = model(xg)
        own = logits.gather(1, ref[:, None]).squeeze(1)
        K = classes.shape[1]
        grads = []
        diffs = []
        for j in range(K):
            fk = logits.gather(1, classes[:, j : j + 1]).squeeze(1) - own
            (g,) = torch.autograd.grad(fk.sum(), xg, retain_graph=j < K - 1, materialize_grads=True)
            grads.append(g)
            diffs.append(fk.detach())
    return logits.detach(), torch.stack(diffs, 1), torch.stack(grads, 1)


def as_list(x: Sequence[str] | str) -> list[str]:
    return [x] if isinstance(x, str) else list(x)


_M64 = (1 << 63) - 1  # splitmix-style mixing in int64 (wrapping arithmetic), sign bit masked


def _mix(z: Tensor) -> Tensor:
    """An integer hash (splitmix64's finaliser, on non-negative int64, wrapping)."""
    z = z & _M64
    z = ((z ^ (z >> 30)) * -4658895280553007687) & _M64
    z = ((z ^ (z >> 27)) * -7723592293110705685) & _M64
    return z ^ (z >> 31)


def sample_keys(x: Tensor, seed: int) -> Tensor:
    """One ``int64`` key per sample, a hash of ``seed`` and of the sample's own values.

    Random draws of the attacks are functions of (key, step, element) only
    (:func:`keyed_normal`), so a sample gets the same random numbers, and so the same result,
    whatever batch or chunk it is attacked in, and whatever its position there.
    """
    flat = x.detach().flatten(1).double()
    d = flat.shape[1]
    # fixed, irrational-spaced weights: a different value per coordinate, then the float64 bits
    w = torch.arange(1, d + 1, dtype=torch.float64, device=x.device).mul_(0.6180339887498949)
    w = w.frac_().add_(0.5)
    h = (flat * w).sum(1).add_(flat.abs().sum(1) * 1e-3)
    bits = h.view(torch.int64)
    return _mix(bits ^ _mix(torch.full_like(bits, int(seed) & _M64)))


def scale_free_keys(x: Tensor, unit: Tensor, seed: int) -> Tensor:
    """:func:`sample_keys` of ``x / unit`` rounded to ``1/4096``: the same keys for ``s x``
    with unit ``s * unit`` (a rescaled problem, :func:`problem_scale`), although ``s x / (s
    unit)`` and ``x / unit`` differ in their last bits; only a coordinate within rounding of
    a cell's edge (probability about ``1e-12`` per coordinate) can tell them apart."""
    q = torch.round(x.double() / atleast_kd(unit.double(), x.ndim) * 4096.0)
    return sample_keys(q, seed)


def keyed_normal(keys: Tensor, shape: torch.Size | tuple[int, ...], step: int,
                 dtype: torch.dtype) -> Tensor:
    """Standard normal draws ``[len(keys), *shape]`` determined by ``(keys[i], step)`` only
    (counter-based: hash of key, step and element index; Box-Muller on two hashed uniforms)."""
    n, m = keys.shape[0], int(torch.Size(shape).numel())
    idx = torch.arange(2 * m, dtype=torch.int64, device=keys.device)
    base = _mix(keys[:, None] * 1000003 + (int(step) + 1) * 7919)
    z = _mix(base + idx[None, :] * -7046029254386353131)
    u = ((z >> 10) & ((1 << 53) - 1)).double().add_(0.5).div_(float(1 << 53))
    u1, u2 = u[:, :m], u[:, m:]
    out = (-2 * u1.log()).sqrt_() * torch.cos(2 * math.pi * u2)
    return out.reshape(n, *shape).to(dtype)
