"""Certificates and attacks on the same samples, checked against each other.

``crosscheck(model, x)`` certifies ``x`` (lower bounds on the distance to the decision
boundary), attacks it (upper bounds: verified adversarial examples), and compares the two
per sample: the ratio ``radius / attack norm`` (at most 1 for a sound certificate; the
closer to 1, the tighter both sides) and a *violation* flag where a certified radius exceeds
the norm of an adversarial example.

Precision rule. A certificate speaks about the model as it runs in its own dtype (its
rounding is charged at every node, ``docs/theory/numerics.md`` §4) and, a fortiori, about the
exact-arithmetic network; an attack verifies its points in the model's own dtype (often
float32). Every adversarial example is also re-checked in float64: the sample is a violation
of method ``M`` when ``x_adv`` changes the prediction of the model in its own dtype or of its
float64 copy, and the float64 norm ``||x_adv - x||_2`` is below ``radius_M``. A violation of
``method="sound"`` is a bug in boundkit; a violation of ``method="peck2017"`` is expected
(the thesis's bound is not sound) and reported as such.

For each violation the offending layer is located from the certificate's trace: the trace
claims that the output of node ``k`` must move by at least ``trace[k]`` to change the
class. Walking from the output towards the input, the first node whose claim is broken by
the adversarial example (its actual float64 perturbation is smaller than the claim) sits
right before the stage whose bound failed; that stage is reported as the layer.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from boundkit.errors import BadArgumentError, BoundkitError, InputShapeError
from boundkit.stats import median
from boundkit.validate import check_call

__all__ = ["CrosscheckResult", "Violation", "crosscheck", "locate_violation", "recheck_float64",
           "recheck_own_dtype"]

#: methods whose violations are expected (the bound is not a guarantee)


#: the relative gap under which a sample's distance counts as known (``known()``)
KNOWN_RTOL = 1e-3


def _unsound(method: str) -> bool:
    """True for a method whose radius is not a guarantee (from the method registry)."""
    from boundkit.bounds.method import is_guarantee

    return not is_guarantee(method)



@dataclass
class Violation:
    """One sample where a certified radius exceeds a verified adversarial perturbation.

    Attributes:
        index: sample index (position in the batch given to :func:`crosscheck`, or the
            data set index when ``indices`` was passed).
        method: the certification method whose radius is too large.
        radius: the certified radius.
        attack_norm: float64 norm of the adversarial perturbation (or of the exact
            oracle's witness when ``source == "exact"``).
        layer: the node whose bound failed (see :func:`locate_violation`).
        layer_op: its op kind.
        bottleneck: the node where the certificate lost the most (``Certificate.bottleneck``).
        source: ``"attack"`` or ``"exact"``: which upper bound exposed it.
        bug: True for sound methods (a bug in boundkit), False for ``peck2017`` (expected).
        node_ratios: per trace node, claimed bound / actual perturbation of that node's
            output at the adversarial point (a sound trace has every ratio <= 1).
    """

    index: int
    method: str
    radius: float
    attack_norm: float
    layer: str
    layer_op: str = ""
    bottleneck: str = ""
    source: str = "attack"
    bug: bool = True
    node_ratios: dict[str, float] = field(default_factory=dict)

    def describe(self) -> str:
        """One line: which sample, which method, which layer."""
        kind = "SOUNDNESS BUG" if self.bug else "expected (method is not sound)"
        op = f" ({self.layer_op})" if self.layer_op else ""
        return (
            f"{kind}: sample {self.index}, method {self.method!r}: certified radius "
            f"{self.radius:.6g} > {self.source} norm {self.attack_norm:.6g}; "
            f"bound fails at layer {self.layer!r}{op}"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "method": self.method,
            "radius": self.radius,
            "attack_norm": self.attack_norm,
            "layer": self.layer,
            "layer_op": self.layer_op,
            "bottleneck": self.bottleneck,
            "source": self.source,
            "bug": self.bug,
            "node_ratios": dict(self.node_ratios),
            "message": self.describe(),
        }


def _np(t: torch.Tensor | np.ndarray | Sequence[float]) -> np.ndarray:
    if isinstance(t, torch.Tensor):
        return t.detach().cpu().numpy()
    return np.asarray(t)


def _ratio(radius: np.ndarray, norm: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.where(np.isfinite(norm) & (norm > 0), radius / norm, np.nan)
    return r


@dataclass
class CrosscheckResult:
    """Per-sample certified radii, attack norms and their ratios, plus violations.

    Attributes:
        index: int [N], sample indices.
        label: int [N], the predicted class (float64 argmax, as certified).
        true_label: int [N] or None, the labels ``y`` if given.
        radius: method -> float64 [N] certified radius.
        attack_norm: float64 [N], norm of the verified adversarial example (+inf where
            the attack failed).
        attack_success: bool [N].
        found_by: which attack found each sample's adversarial example.
        attack: the attack name.
        attack_outcome: per sample :class:`~boundkit.attacks.base.Outcome` of the attack
            (``FOUND`` / ``CLEAN``, or why there is no upper end).
        exact: float64 [N] exact minimal radius, or None (``exact_note`` says why).
        violations: list of :class:`Violation`.
        certificates: method -> :class:`~boundkit.Certificate` (for traces and plots).
        seconds: stage -> wall time.
        meta: free-form information (model, data set, accuracy) copied into reports.
    """

    index: np.ndarray
    label: np.ndarray
    true_label: np.ndarray | None
    radius: dict[str, np.ndarray]
    attack_norm: np.ndarray
    attack_success: np.ndarray
    found_by: list[str]
    attack: str
    attack_outcome: list[Any] = field(default_factory=list)
    exact: np.ndarray | None = None
    exact_note: str = ""
    violations: list[Violation] = field(default_factory=list)
    certificates: dict[str, Any] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.index.shape[0])

    @property
    def methods(self) -> list[str]:
        return list(self.radius)

    def ratio(self, method: str) -> np.ndarray:
        """radius / attack norm per sample (NaN where the attack failed or the norm is 0)."""
        return _ratio(self.radius[method], self.attack_norm)

    def best_certified(self) -> np.ndarray:
        """Per sample, the largest radius of the guarantee methods (each is a certificate,
        so their maximum is one); 0 where none ran."""
        radii = [np.asarray(r) for m, r in self.radius.items() if not _unsound(m)]
        return np.maximum.reduce(radii) if radii else np.zeros(len(self))

    def known(self, rtol: float = KNOWN_RTOL) -> np.ndarray:
        """bool [N]: samples whose distance to the decision boundary is known to ``rtol``:
        the best certificate reaches ``(1 - rtol)`` of a verified attack's norm, so the
        exact minimal perturbation lies in ``[(1 - rtol) norm, norm]``; or the exact radius
        was computed (``bk.exact_radius``: to ``1e-6`` relative, with a witness; NaN where
        it did not finish)."""
        norm = np.where(self.attack_success, self.attack_norm, np.inf)
        out = self.best_certified() >= (1.0 - rtol) * norm
        if self.exact is not None:
            out = out | ~np.isnan(self.exact)
        return out

    def distance(self, rtol: float = KNOWN_RTOL) -> list[str]:
        """Per sample, ``"exact"`` where the distance is known to ``rtol`` (:meth:`known`:
        the lower end, a certificate or the exact search's, meets the upper end, a verified
        attack or the exact radius's witness), else ``"bracketed"`` (certified radius
        ``<=`` distance ``<=`` attack norm, the two apart by more than ``rtol``)."""
        return ["exact" if k else "bracketed" for k in self.known(rtol).tolist()]

    def violation_mask(self, method: str) -> np.ndarray:
        """bool [N]: samples with a verified violation of ``method``."""
        pos = {int(i): k for k, i in enumerate(self.index.tolist())}
        mask = np.zeros(len(self), dtype=bool)
        for v in self.violations:
            if v.method == method:
                mask[pos[v.index]] = True
        return mask

    @property
    def bugs(self) -> list[Violation]:
        """Violations of sound methods (bugs in boundkit)."""
        return [v for v in self.violations if v.bug]

    @property
    def has_bug(self) -> bool:
        return bool(self.bugs)

    def summary(self) -> dict[str, Any]:
        """Median ratio per method, attack success rate, violation counts."""
        n = len(self)
        out: dict[str, Any] = {
            "n": n,
            "attack": self.attack,
            "attack_success_rate": float(self.attack_success.mean()) if n else math.nan,
            "median_attack_norm": median(self.attack_norm[self.attack_success]),
            "attack_missing": self.attack_missing(),
            "methods": {},
            "violations": len(self.violations),
            "distance_known": int(self.known().sum()),
            "distance_known_rtol": KNOWN_RTOL,
            "soundness_bugs": len(self.bugs),
            "expected_violations": len(self.violations) - len(self.bugs),
        }
        if self.true_label is not None and n:
            out["accuracy"] = float((self.true_label == self.label).mean())
        for m, r in self.radius.items():
            ratio = self.ratio(m)
            fin = ratio[np.isfinite(ratio)]
            out["methods"][m] = {
                "median_radius": median(r),
                "mean_radius": float(np.mean(r)) if n else math.nan,
                "min_radius": float(np.min(r)) if n else math.nan,
                "median_ratio": median(fin),
                "min_ratio": float(fin.min()) if fin.size else math.nan,
                "max_ratio": float(fin.max()) if fin.size else math.nan,
                "violations": int(sum(v.method == m for v in self.violations)),
                "sound": not _unsound(m),
            }
        if self.exact is not None:
            fin = self.exact[np.isfinite(self.exact)]
            out["median_exact_radius"] = median(fin)
            for m, r in self.radius.items():
                q = _ratio(r, self.exact)
                q = q[np.isfinite(q)]
                out["methods"][m]["median_ratio_to_exact"] = median(q)
        return out

    def attack_missing(self) -> dict[str, int]:
        """Samples without an upper end (no verified adversarial example), counted by the
        attack's reason (:class:`~boundkit.attacks.base.Outcome` values; failures whose
        reason was not recorded count as ``"not recorded"``)."""
        out: dict[str, int] = {}
        for k in np.flatnonzero(~self.attack_success):
            o = self.attack_outcome[k].value if k < len(self.attack_outcome) else "not recorded"
            out[o] = out.get(o, 0) + 1
        return out

    def to_rows(self) -> list[dict[str, Any]]:
        """One dict per sample (for CSV): index, label, prediction, radii, norm, the
        ``distance`` label (``"exact"`` / ``"bracketed"``, :meth:`distance`), ratios,
        violation flags."""
        rows = []
        masks = {m: self.violation_mask(m) for m in self.radius}
        ratios = {m: self.ratio(m) for m in self.radius}
        distance = self.distance()
        for k in range(len(self)):
            row: dict[str, Any] = {
                "index": int(self.index[k]),
                "label": int(self.true_label[k]) if self.true_label is not None else "",
                "prediction": int(self.label[k]),
            }
            for m in self.radius:
                row[f"radius_{m}"] = float(self.radius[m][k])
            row[f"attack_norm_{self.attack}"] = float(self.attack_norm[k])
            row["found_by"] = self.found_by[k]
            if self.attack_outcome:
                row["attack_outcome"] = self.attack_outcome[k].value
            if self.exact is not None:
                row["exact_radius"] = float(self.exact[k])
            row["distance"] = distance[k]
            for m in self.radius:
                row[f"ratio_{m}"] = float(ratios[m][k])
            for m in self.radius:
                row[f"violation_{m}"] = bool(masks[m][k])
            row["violation"] = any(bool(masks[m][k]) for m in self.radius
                                   if not _unsound(m))
            rows.append(row)
        return rows

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (non-finite floats left as floats: see ``boundkit.report.io``)."""
        traces = {}
        for m, cert in self.certificates.items():
            if getattr(cert, "trace", None):
                names = list(cert.trace)
                traces[m] = {
                    "nodes": names,
                    "ops": [cert.node_ops.get(nm, "") for nm in names],
                    "values": [_np(cert.trace[nm]).astype(float).tolist() for nm in names],
                }
        return {
            "kind": "crosscheck",
            "meta": dict(self.meta),
            "samples": {
                "index": self.index.astype(int).tolist(),
                "label": None if self.true_label is None else self.true_label.astype(int).tolist(),
                "prediction": self.label.astype(int).tolist(),
                "radius": {m: r.astype(float).tolist() for m, r in self.radius.items()},
                "attack_norm": {self.attack: self.attack_norm.astype(float).tolist()},
                "attack_success": self.attack_success.astype(bool).tolist(),
                "found_by": list(self.found_by),
                **({"attack_outcome": [o.value for o in self.attack_outcome]}
                   if self.attack_outcome else {}),
                "exact": None if self.exact is None else self.exact.astype(float).tolist(),
                "distance": self.distance(),
                "ratio": {m: self.ratio(m).astype(float).tolist() for m in self.radius},
            },
            "exact_note": self.exact_note,
            "traces": traces,
            "violations": [v.to_dict() for v in self.violations],
            "summary": self.summary(),
            "seconds": dict(self.seconds),
        }

    def __repr__(self) -> str:
        s = self.summary()
        parts = [f"{m}: median ratio {d['median_ratio']:.3g}" for m, d in s["methods"].items()]
        return (
            f"CrosscheckResult(n={s['n']}, attack={self.attack!r} success "
            f"{s['attack_success_rate']:.0%}, {', '.join(parts)}, "
            f"soundness bugs {s['soundness_bugs']}, expected violations "
            f"{s['expected_violations']})"
        )


def recheck_float64(
    model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor, label: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Re-verify adversarial examples in float64.

    Returns ``(adversarial, norm)``: ``adversarial[n]`` is True when the float64 copy of
    ``model`` predicts a class other than ``label[n]`` at ``x_adv[n]``; ``norm`` is the float64
    L2 norm of ``x_adv - x``. The model itself is not modified (a deep copy is cast).
    """
    m64 = copy.deepcopy(model).double()
    dev = next((p.device for p in m64.parameters()), x_adv.device)
    xa = x_adv.detach().to(dev, torch.float64)
    with torch.no_grad():
        pred = m64(xa).argmax(1)
    adv = (pred != label.to(dev)) & torch.isfinite(xa.flatten(1)).all(1)
    norm = (xa - x.detach().to(dev, torch.float64)).flatten(1).norm(dim=1)
    return adv.cpu(), norm.cpu()


def recheck_own_dtype(model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor) -> torch.Tensor:
    """bool [N]: ``model``, run in its own dtype (that of its first floating parameter, else
    of ``x``), predicts at ``x_adv[n]`` another class than at ``x[n]`` (a certificate covers
    the model as it runs: ``docs/theory/numerics.md`` §4). The model is not modified."""
    p = next((t for t in model.parameters() if t.is_floating_point()), None)
    dtype = p.dtype if p is not None else x.dtype
    dev = p.device if p is not None else x.device
    xa = x_adv.detach().to(dev, dtype)
    with torch.no_grad():
        before = model(x.detach().to(dev, dtype)).argmax(1)
        after = model(xa).argmax(1)
    return ((after != before) & torch.isfinite(xa.flatten(1)).all(1)).cpu()


def locate_violation(
    graph: Any, cert: Any, x: torch.Tensor, x_adv: torch.Tensor
) -> tuple[list[str], list[str], list[dict[str, float]]]:
    """For violating samples, the node whose bound failed.

    ``cert`` is the certificate restricted to these samples (its ``trace`` maps nodes to
    [M] claims), ``x`` and ``x_adv`` are [M, ...]. For each node ``k`` of the trace the claim
    is "moving the output of ``k`` by less than ``trace[k]`` cannot change the class"; at
    ``x_adv`` (which does change it) the actual movement is ``||h_k(x_adv) - h_k(x)||``.
    Walking from the last trace node towards the input, the first node whose claim is
    broken is the input of the failing stage; the failing stage is the next trace node
    (or the output stage when the last trace node is already broken).

    Returns ``(layers, ops, node_ratios)`` per sample.
    """
    names = list(cert.trace)
    m = x.shape[0]
    if not names or graph is None:
        bn = cert.bottleneck() if names else ["?"] * m
        return bn, [cert.node_ops.get(b, "") for b in bn], [{} for _ in range(m)]
    keep = [nm for nm in names if nm in graph]
    a0 = graph.activations(x, keep)
    a1 = graph.activations(x_adv, keep)
    ratios = {}
    for nm in keep:
        actual = (a1[nm] - a0[nm]).reshape(m, -1).norm(dim=1).cpu()
        claim = cert.trace[nm].detach().cpu().to(torch.float64)
        ratios[nm] = torch.where(actual > 0, claim / actual, torch.full_like(claim, math.inf))
    layers, ops, per_sample = [], [], []
    order = [n.name for n in graph.nodes]
    for i in range(m):
        broken_after = None
        for j in range(len(keep) - 1, -1, -1):
            if float(ratios[keep[j]][i]) > 1.0:
                broken_after = j
                break
        if broken_after is None:  # no broken claim: report the bottleneck
            layer = cert.bottleneck()[i] if len(keep) > 1 else keep[0]
        elif broken_after == len(keep) - 1:
            last = keep[-1]
            # the output stage: the nodes after the last trace node, up to the logits
            pos = order.index(last) if last in order else -1
            layer = order[pos + 1] if 0 <= pos < len(order) - 1 else "output"
        else:
            layer = keep[broken_after + 1]
        layers.append(layer)
        ops.append(graph[layer].op if layer in graph else "output")
        per_sample.append({nm: float(ratios[nm][i]) for nm in keep})
    return layers, ops, per_sample


def _subset_cert(cert: Any, idx: torch.Tensor) -> Any:
    sub = copy.copy(cert)
    sub.radius = cert.radius[idx]
    sub.label = cert.label[idx]
    sub.runner_up = cert.runner_up[idx]
    sub.margin = cert.margin[idx]
    sub.trace = {k: v[idx] for k, v in cert.trace.items()}
    return sub


def _find_violations(
    model: nn.Module,
    graph: Any,
    x: torch.Tensor,
    x_adv: torch.Tensor,
    adv_ok: torch.Tensor,
    norm64: torch.Tensor,
    certs: dict[str, Any],
    indices: np.ndarray,
    source: str,
) -> list[Violation]:
    out: list[Violation] = []
    for method, cert in certs.items():
        radius = cert.radius.detach().cpu().to(torch.float64)
        bad = (adv_ok & (norm64 < radius)).nonzero().squeeze(1)
        if bad.numel() == 0:
            continue
        sub = _subset_cert(cert, bad)
        try:
            layers, ops, ratios = locate_violation(graph, sub, x[bad], x_adv[bad])
        except (BoundkitError, RuntimeError, KeyError):
            layers = sub.bottleneck()
            ops = [sub.node_ops.get(la, "") for la in layers]
            ratios = [{} for _ in layers]
        bns = sub.bottleneck() if sub.trace else ["-"] * bad.numel()
        for j, k in enumerate(bad.tolist()):
            out.append(
                Violation(
                    index=int(indices[k]),
                    method=method,
                    radius=float(radius[k]),
                    attack_norm=float(norm64[k]),
                    layer=layers[j],
                    layer_op=ops[j],
                    bottleneck=bns[j],
                    source=source,
                    bug=not _unsound(method),
                    node_ratios=ratios[j],
                )
            )
    return out


@dataclass
class _Attacked:
    """The attack's results over all chunks (on the CPU)."""

    x_adv: torch.Tensor
    norm: torch.Tensor
    success: torch.Tensor
    found_by: list[str]
    outcome: list[Any]


def _attack_chunks(model: nn.Module, x: torch.Tensor, attack: str, chunk_size: int,
                   tick: Callable[[str, int], None], **kw: Any) -> _Attacked:
    """:func:`boundkit.attack` on ``x`` chunk by chunk (a progress tick per chunk)."""
    from boundkit.attacks import attack as run_attack

    parts = []
    for s in range(0, x.shape[0], chunk_size):
        parts.append(run_attack(model, x[s : s + chunk_size], attack, **kw))
        tick(f"attack {attack}", min(chunk_size, x.shape[0] - s))
    return _Attacked(
        torch.cat([r.x_adv.detach().cpu() for r in parts]),
        torch.cat([r.norm.detach().cpu().to(torch.float64) for r in parts]),
        torch.cat([r.success.detach().cpu() for r in parts]),
        [f for r in parts for f in r.found_by],
        [o for r in parts for o in (r.outcome or [])],
    )


def _exact_stage(model: nn.Module, graph: Any, x: torch.Tensor, label: torch.Tensor,
                 certs: dict[str, Any], idx: np.ndarray
                 ) -> tuple[np.ndarray | None, str, list[Violation]]:
    """The exact radii of ``x`` (``None`` and the reason where the solver cannot), and the
    violations their witnesses (re-checked in float64) show."""
    from boundkit.exact import exact_radius

    try:
        ex = exact_radius(model, x, return_details=True)
    except (BoundkitError, ValueError, NotImplementedError) as exc:
        return None, f"exact radius not computed: {exc}", []
    wit = x.to(torch.float64) + torch.nan_to_num(ex.witness.cpu(), nan=0.0)
    wadv, wnorm = recheck_float64(model, x, wit, label)
    wadv &= torch.isfinite(ex.radius.cpu())
    found = _find_violations(model, graph, x, wit, wadv, wnorm, certs, idx, "exact")
    return _np(ex.radius).astype(np.float64), "", found


def _method_options(method: str, box: tuple[float, float] | None, upper: torch.Tensor,
                    given: Mapping[str, Mapping[str, Any]] | None) -> dict[str, Any]:
    """The options ``certify`` gets for ``method``: the attack's box where the method bounds
    the box-constrained distance (``crown``, ``alpha``, ``bab``), the verified attack norms
    as the upper end where it searches towards one (``bab``), then the caller's own."""
    from boundkit.bounds.method import get_method

    accepted = get_method(method).options()
    opts: dict[str, Any] = {}
    if "box" in accepted:
        opts["box"] = box
    if "upper" in accepted:
        opts["upper"] = upper
    opts.update((given or {}).get(method, {}))
    return opts


def _check_names(methods: Any, attack: Any) -> None:
    """Fail before any work on a misspelt method or attack (not after the certificates)."""
    from boundkit.attacks import ATTACKS
    from boundkit.bounds.method import method_names

    known = method_names()
    if isinstance(methods, str) or not all(isinstance(m, str) for m in methods):
        raise BadArgumentError(f"methods must be a sequence of names such as ('sound',), got "
                               f"{methods!r}")
    bad = [m for m in methods if m not in known]
    if bad:
        raise BadArgumentError(f"unknown certification method(s) {bad}; choose from {known}")
    if not isinstance(attack, str):
        raise BadArgumentError(f"attack must be a name of {sorted(ATTACKS)}, got {attack!r}")


def crosscheck(
    model: nn.Module,
    x: torch.Tensor,
    *,
    methods: Sequence[str] = ("sound",),
    attack: str = "best",
    attack_budget: int | None = None,
    y: torch.Tensor | None = None,
    box: tuple[float, float] | None = (0.0, 1.0),
    device: torch.device | str | None = None,
    exact: bool = False,
    indices: Sequence[int] | np.ndarray | None = None,
    chunk_size: int = 128,
    progress: Callable[[str, float], None] | None = None,
    seed: int = 0,
    executor: Any = None,
    reference: torch.Tensor | None = None,
    method_options: Mapping[str, Mapping[str, Any]] | None = None,
) -> CrosscheckResult:
    """Certify and attack ``x``, and compare the two per sample.

    Args:
        model: a classifier in eval mode (logits ``[N, C]``).
        x: inputs ``[N, *input_shape]`` inside ``box``.
        methods: certification methods (names of ``boundkit.available_methods()``).
        attack: an attack name of :data:`boundkit.attacks.ATTACKS` (default ``"best"``).
        attack_budget: gradient steps per sample (per member for ``best``); None: defaults.
        y: true labels (recorded, and used for the accuracy in the summary). The attack
            always targets a change of the *prediction*, which is what a certificate
            bounds.
        box: the input domain of the attack; methods with a ``box`` option (``crown``,
            ``alpha``) certify within it, the others ignore it (their radius bounds the
            box-constrained distance as well).
        device: where to compute.
        exact: also compute the exact minimal radius (small ReLU networks only; when the
            model is too large or unsupported, ``exact_note`` says why and ``exact`` is None).
        indices: sample indices to report (default ``0..N-1``).
        chunk_size: samples per attack chunk (a progress tick per chunk).
        progress: optional callback ``(stage, samples_done)`` for progress bars (``bab``
            reports fractions of samples as its time budget is spent).
        seed: the attack's random seed.
        reference: start points for the ``best`` attack (see :func:`boundkit.attack`): by
            default ``x`` itself, every sample held here (a sample's nearest neighbour of
            another class, bisected onto the boundary, is an upper bound at once); pass a
            larger set (e.g. the whole test split) for closer starts.  Ignored by the other
            attacks.
        executor: run on a cluster instead, e.g. a
            :class:`boundkit.distributed.RayExecutor` (shards of whole ``chunk_size``
            chunks; the result is identical to the local one; ``progress`` is ignored).
        method_options: per method name, options for its ``certify`` call (e.g.
            ``{"bab": {"time_budget": 1.0}}``); the attack runs first, and a method with an
            ``upper`` option (``bab``) searches towards the verified attack norms.

    Returns:
        a :class:`CrosscheckResult`. It does not raise on violations: check
        ``result.has_bug`` (the CLI exits with status 3).
    """
    from boundkit.bounds.engine import certify, graph_for
    from boundkit.bounds.method import get_method

    x = check_call(model, x, device=device, box=box,
               counts={"attack_budget": attack_budget, "chunk_size": chunk_size})
    _check_names(methods, attack)
    if executor is not None:
        if method_options:
            raise BadArgumentError("method_options are not passed through an executor yet: "
                                   "run the cross-check locally")
        return executor.crosscheck(
            model, x, methods=methods, attack=attack, attack_budget=attack_budget, y=y, box=box,
            device=device, exact=exact, indices=indices, chunk_size=chunk_size, seed=seed)
    n = x.shape[0]
    idx_arr = np.arange(n) if indices is None else np.asarray(indices, dtype=np.int64)
    if idx_arr.shape != (n,):
        raise InputShapeError(f"indices must have length {n}, got shape {idx_arr.shape}")
    tick = progress or (lambda stage, k: None)
    seconds: dict[str, float] = {}
    certs: dict[str, Any] = {}
    graph = graph_for(model, x, device)
    with torch.no_grad():  # the class certify speaks about: the float64 graph's argmax
        label = graph.activations(x, ())[graph.output].argmax(1).detach().cpu()

    t0 = time.perf_counter()
    ref = (x if reference is None else reference) if attack == "best" else None
    atk = _attack_chunks(model, x, attack, chunk_size, tick, budget=attack_budget, box=box,
                         device=device, seed=seed, reference=ref)
    seconds[f"attack_{attack}"] = time.perf_counter() - t0
    x_adv, attack_norm, attack_ok = atk.x_adv, atk.norm, atk.success

    # every adversarial example re-checked: adversarial in the model's own dtype or in
    # float64 counts, at its float64 norm
    x_cpu = x.detach().cpu()
    adv64, norm64 = recheck_float64(model, x_cpu, x_adv, label)
    adv64 = (adv64 | recheck_own_dtype(model, x_cpu, x_adv)) & attack_ok.cpu()
    upper = torch.where(adv64, norm64, torch.full_like(norm64, math.inf))
    for m in methods:
        t0 = time.perf_counter()
        opts = _method_options(m, box, upper, method_options)
        ticked = [0.0]
        if progress is not None and "progress" in get_method(m).options():
            def part(k: float, m: str = m, ticked: list[float] = ticked) -> None:
                ticked[0] += k  # bab: ticks as its budget is spent
                tick(f"certify {m}", k)
            opts = {"progress": part, **opts}
        certs[m] = certify(model, x, m, device=device, graph=graph, **opts)
        seconds[f"certify_{m}"] = time.perf_counter() - t0
        tick(f"certify {m}", max(0.0, n - ticked[0]))
    violations = _find_violations(
        model, graph, x_cpu, x_adv, adv64, norm64, certs, idx_arr, "attack"
    )

    exact_arr: np.ndarray | None = None
    note = ""
    if exact:
        t0 = time.perf_counter()
        exact_arr, note, found = _exact_stage(model, graph, x_cpu, label, certs, idx_arr)
        flagged = {(v.index, v.method) for v in violations}
        violations += [v for v in found if (v.index, v.method) not in flagged]
        seconds["exact"] = time.perf_counter() - t0
        tick("exact", n)

    violations.sort(key=lambda v: (not v.bug, v.index, v.method))
    y_np = None if y is None else _np(y).astype(np.int64).reshape(-1)
    if y_np is not None and y_np.shape[0] != n:
        raise InputShapeError(f"y has {y_np.shape[0]} labels for {n} samples")
    return CrosscheckResult(
        index=idx_arr,
        label=_np(label).astype(np.int64),
        true_label=y_np,
        radius={m: _np(c.radius).astype(np.float64) for m, c in certs.items()},
        attack_norm=_np(attack_norm).astype(np.float64),
        attack_success=_np(attack_ok).astype(bool),
        found_by=atk.found_by,
        attack=attack,
        attack_outcome=atk.outcome,
        exact=exact_arr,
        exact_note=note,
        violations=violations,
        certificates=certs,
        seconds=seconds,
    )
