"""Minimum-norm L2 attacks: upper bounds on the distance to the decision boundary.

``bk.attack(model, x)`` runs an attack (the ``best`` ensemble by default) and returns an
:class:`~boundkit.attacks.base.AttackResult` whose every success was verified by re-running
the model, in its own dtype, on exactly the returned point (inside the box), with the norm
recomputed in float64 from that point.

Attacks (registry :data:`ATTACKS`, one module each):

=============  ===========================================================================
``fgs``        fast gradient sign + bisection on epsilon (Peck, thesis Algorithm 2.1)
``fgv``        fast gradient value + the same bisection (Rozsa et al.; thesis Sec. 2.5.4)
``lbfgs``      box-constrained L-BFGS with a search over the constant (Szegedy et al. 2014)
``deepfool``   DeepFool L2 (Moosavi-Dezfooli et al. 2016)
``cw``         Carlini-Wagner L2 (2017)
``ddn``        Decoupled Direction and Norm (Rony et al. 2019)
``fmn``        Fast Minimum-Norm L2 (Pintor et al. 2021)
``pdgd``       primal-dual gradient descent (Matyasko, thesis Ch. 5, Algorithm 2)
``pdpgd``      primal-dual proximal gradient descent, L2 prox (Matyasko, Algorithm 3)
``alma``       augmented Lagrangian L2 attack (Rony et al. 2021)
``boundary``   decision-based boundary walk, HopSkipJump-like (Chen et al. 2020): no gradient
``best``       ensemble keeping the smallest verified perturbation per sample
=============  ===========================================================================
"""

from __future__ import annotations

import contextlib
import math
import time
from typing import Any

import torch
from torch import Tensor, nn

from boundkit.attacks.alma import ALMA
from boundkit.attacks.base import (
    Attack,
    AttackResult,
    Box,
    Criterion,
    Misclassification,
    Outcome,
    TargetedMisclassification,
    model_device,
    model_dtype,
    verify,
)
from boundkit.attacks.boundary_walk import BoundaryWalk
from boundkit.attacks.cw import CarliniWagner
from boundkit.attacks.ddn import DDN
from boundkit.attacks.deepfool import DeepFool
from boundkit.attacks.ensemble import BestEnsemble
from boundkit.attacks.fgs import FGS, FGV
from boundkit.attacks.fmn import FMN
from boundkit.attacks.lbfgs import LBFGS
from boundkit.attacks.pdpgd import PDGD, PDPGD
from boundkit.attacks.refine import BoundaryRefiner
from boundkit.errors import InputShapeError, ModelError
from boundkit.validate import check_call

__all__ = [
    "ALMA",
    "ATTACKS",
    "Attack",
    "AttackResult",
    "BestEnsemble",
    "BoundaryRefiner",
    "BoundaryWalk",
    "CarliniWagner",
    "Criterion",
    "DDN",
    "DeepFool",
    "FGS",
    "FGV",
    "FMN",
    "LBFGS",
    "Misclassification",
    "Outcome",
    "PDGD",
    "PDPGD",
    "TargetedMisclassification",
    "attack",
    "verify",
]

ATTACKS: dict[str, type[Attack]] = {
    cls.name: cls
    for cls in (FGS, FGV, LBFGS, DeepFool, CarliniWagner, DDN, FMN, PDGD, PDPGD, ALMA,
                BoundaryWalk, BestEnsemble)
}

#: elements (batch x features) per chunk when ``batch_size`` is not given: 1,337 MNIST
#: images, well within 2 GB for the MNIST networks of the benchmark.
_CHUNK_ELEMENTS = 2**20


def _check_reference(reference: Any, x: Tensor, box: Box) -> Tensor:
    """Reference data: a finite floating tensor ``[P, *x.shape[1:]]`` (points outside the box
    are allowed and never used as starts)."""
    if not isinstance(reference, Tensor):
        raise InputShapeError(f"reference must be a torch.Tensor, got {type(reference).__name__}")
    if not reference.is_floating_point():
        raise InputShapeError(f"reference must be a floating-point tensor, got {reference.dtype}")
    if reference.ndim != x.ndim or tuple(reference.shape[1:]) != tuple(x.shape[1:]):
        raise InputShapeError(f"reference must have shape [P, {', '.join(map(str, x.shape[1:]))}]"
                              f" like x, got {tuple(reference.shape)}")
    if not bool(torch.isfinite(reference).all()):
        raise InputShapeError("reference contains NaN or infinite values")
    return reference


def _labels(v: Any, n: int, what: str, device: torch.device) -> Tensor:
    t = torch.as_tensor(v, device=device)
    if t.ndim == 0:
        t = t.expand(n)
    if t.shape != (n,) or t.is_floating_point() or t.dtype == torch.bool:
        raise InputShapeError(f"{what} must be an integer tensor of shape [{n}], got "
                              f"{tuple(t.shape)} {t.dtype}")
    return t.long()


def attack(
    model: nn.Module,
    x: Tensor,
    method: str | Attack = "best",
    *,
    y: Tensor | None = None,
    targeted: bool = False,
    target: Tensor | int | None = None,
    budget: int | None = None,
    box: Box = (0.0, 1.0),
    device: torch.device | str | None = None,
    batch_size: int | None = None,
    seed: int = 0,
    reference: Tensor | None = None,
    **options: Any,
) -> AttackResult:
    """Find small L2 adversarial perturbations of ``x`` for ``model`` and verify them.

    Parameters
    ----------
    model: classifier in eval mode returning logits ``[N, C]``; never modified.
    x: inputs ``[N, ...]`` (inside ``box``).
    method: a name of :data:`ATTACKS` (``"best"`` by default) or an :class:`Attack` instance.
    y: optional true labels.  Default (None): the criterion is "change the model's prediction on
        x".  With ``y``, the criterion is "be classified as anything but y": samples the model
        already misclassifies are reported as successes with norm 0, ``x_adv = x`` and
        ``found_by = "clean"``.
    targeted, target: targeted attack towards ``target`` (int or ``[N]``); samples already
        predicted as their target get norm 0, ``found_by = "clean"``.
    budget: gradient steps per sample (per member for ``best``); mapped onto each attack's
        own hyperparameters by ``budget_to_options`` (None: paper defaults).
    box: input domain ``(lo, hi)``, ``(0, 1)`` by default, or None.
    device: where to run; default the device of the model's parameters.  The model must
        already be there (it is not moved).
    batch_size: samples per chunk (default: about 2**20 input elements per chunk).
    seed: seed of the attacks' random draws (e.g. DDN's zero-gradient case); draws are keyed
        by the seed and each sample's own values, so a sample's result does not depend on
        the batch, the chunk or its position in them.
    reference: optional data ``[P, ...]`` shaped like ``x`` (``best`` only), e.g. the test
        images a caller already holds: for each sample the nearest point the model puts in
        another class (targeted: in the target class), bisected onto the boundary, is an
        upper bound at once, which the members shrink; and a start where they all fail.
        A sample's result then depends on ``reference`` (never on the batch).
    options: hyperparameters of the attack's constructor (see each attack's docstring).

    Returns
    -------
    AttackResult (tensors on ``device``; ``x_adv`` in the model's dtype); ``outcome`` says per
    sample whether an example was found and, where not, why (:class:`Outcome`).
    """
    t0 = time.perf_counter()
    x = check_call(model, x, device=device, box=box,
                   counts=dict(budget=budget, batch_size=batch_size))
    dev = torch.device(device) if device is not None else model_device(model)
    mdev = model_device(model)
    if any(True for _ in model.parameters()) and mdev.type != dev.type:
        raise ModelError(f"model parameters are on {mdev}, but device={dev} was requested; "
                         "move the model yourself (boundkit does not modify it)")
    dtype = model_dtype(model, fallback=x.dtype)
    x = x.detach().to(device=dev, dtype=dtype)
    n = x.shape[0]

    if isinstance(method, Attack):
        atk = method
        name = atk.name
    else:
        if method not in ATTACKS:
            raise ValueError(f"unknown attack {method!r}; available: {sorted(ATTACKS)}")
        cls = ATTACKS[method]
        opts = {} if budget is None else cls.budget_to_options(int(budget))
        opts.update(options)
        atk = cls(**opts)
        name = method
    if reference is not None:
        if not isinstance(atk, BestEnsemble):
            raise ValueError(f"reference= is used by the 'best' ensemble only, not by {name!r}")
        reference = _check_reference(reference, x, box).detach().to(device=dev, dtype=dtype)

    # clean predictions (chunked)
    per = max(1, x[0].numel()) if n else 1
    bs = batch_size if batch_size is not None else max(1, _CHUNK_ELEMENTS // per)
    with torch.no_grad():
        logit_chunks = [model(x[i : i + bs]) for i in range(0, n, bs)]
    if n and (logit_chunks[0].ndim != 2 or logit_chunks[0].shape[0] != min(bs, n)):
        raise InputShapeError(
            f"model output for a batch of {min(bs, n)} has shape {tuple(logit_chunks[0].shape)}; "
            "expected logits [N, C]"
        )
    label = torch.cat(logit_chunks).argmax(1) if n else torch.zeros(0, dtype=torch.long,
                                                                     device=dev)
    if targeted or target is not None:
        if target is None:
            raise InputShapeError("targeted=True needs target=")
        tgt = _labels(target, n, "target", dev)
        crit: Criterion = TargetedMisclassification(tgt)
        done = label == tgt
        y_used = label
    else:
        tgt = None
        y_used = label if y is None else _labels(y, n, "y", dev)
        crit = Misclassification(y_used)
        done = label != y_used

    x_adv = x.clone()
    success = done.clone()
    norm = torch.where(done, 0.0, math.inf).to(torch.float64)
    adv_label = label.clone()
    found_by = ["clean" if d else "" for d in done.tolist()]
    outcome = [Outcome.CLEAN if d else Outcome.NOT_RECORDED for d in done.tolist()]
    todo = (~done).nonzero().squeeze(1)
    ctx = (atk.using_reference(reference) if reference is not None
           else contextlib.nullcontext())
    with ctx:
        for start in range(0, todo.numel(), bs):
            idx = todo[start : start + bs]
            xs = x[idx]
            v = atk.attack(model, xs, crit.subset(idx), box=box, seed=seed)
            x_adv[idx] = v.x_adv
            success[idx] = v.success
            norm[idx] = v.norm
            adv_label[idx] = torch.where(v.success, v.adv_label, label[idx])
            for j, s, o in zip(idx.tolist(), v.found_by, v.outcome):
                found_by[j] = s
                outcome[j] = o
    return AttackResult(
        x_adv=x_adv,
        norm=norm,
        success=success,
        found_by=found_by,
        label=label,
        adv_label=adv_label,
        method=name,
        targeted=tgt is not None,
        target=tgt,
        y=y_used,
        seconds=time.perf_counter() - t0,
        outcome=outcome,
    )
