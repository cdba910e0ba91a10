"""The result of :func:`boundkit.certify`."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

import torch


class SampleStatus(IntEnum):
    """Why a sample's radius is what it is (``Certificate.status``)."""

    #: the radius is the method's bound
    OK = 0
    #: the model itself, in its own dtype, predicts another class than the float64 graph:
    #: radius 0 (nothing is certified about the class the model outputs)
    MODEL_DISAGREES = 1
    #: the float64 margin is within the model's own rounding of a tie: radius 0
    MODEL_NEAR_TIE = 2
    #: some value left float64's analysed range (subnormal, overflowing or non-finite
    #: intermediates, ``docs/theory/numerics.md``): radius 0
    UNSAFE_NUMERICS = 3
    #: the sample lies outside the method's input box (``box=`` of ``crown``/``alpha``): the
    #: box says nothing about it, so its radius is the method's bound over the whole L2 ball
    #: (as with ``box=None``), sound but possibly smaller than the box would allow; the
    #: radius is kept
    OUTSIDE_BOX = 4
    #: the model's own dtype overflows on this input (its output is not finite where the
    #: float64 graph's is): radius 0, nothing is certified about what the model outputs
    MODEL_OVERFLOWS = 5

    @property
    def zeroes_radius(self) -> bool:
        """Whether a sample with this status gets radius 0."""
        return self in (SampleStatus.MODEL_DISAGREES, SampleStatus.MODEL_NEAR_TIE,
                        SampleStatus.UNSAFE_NUMERICS, SampleStatus.MODEL_OVERFLOWS)

    @staticmethod
    def zeroed(status: torch.Tensor) -> torch.Tensor:
        """bool [N]: the samples whose status sets their radius to 0."""
        return torch.isin(status, torch.tensor([int(s) for s in SampleStatus if s.zeroes_radius],
                                               dtype=status.dtype, device=status.device))

    def describe(self) -> str:
        return {
            SampleStatus.OK: "certified by the method",
            SampleStatus.MODEL_DISAGREES: "the model's own dtype predicts another class: 0",
            SampleStatus.MODEL_NEAR_TIE: "within the model's rounding of a tie: 0",
            SampleStatus.UNSAFE_NUMERICS: "values outside float64's analysed range: 0",
            SampleStatus.OUTSIDE_BOX: "outside the method's input box: certified over the whole "
                                      "L2 ball without the box (as with box=None)",
            SampleStatus.MODEL_OVERFLOWS: "the model's own dtype overflows on this input: 0",
        }[self]


@dataclass
class Certificate:
    """Per-sample certified L2 radii.

    Attributes:
        radius: float64 [N]. For a guarantee (``sound``, ``crown``, ``alpha``, ``bab``...):
            no perturbation ``r`` with ``||r||_2 < radius`` (inside the method's box)
            changes the class the model predicts, run in its own dtype (float32 as well as
            float64: the model's own rounding is charged at every node over the whole ball,
            ``docs/theory/numerics.md`` §4), nor that of the exact-arithmetic network. For
            ``method="peck2017"``: the thesis's number, *not* a guarantee.
        label: int64 [N], the class predicted at ``x`` (argmax of the float64 logits).
        runner_up: int64 [N], the class whose pairwise bound was the smallest at the
            margin stage (the most threatening competitor).
        margin: float64 [N], the logit margin ``f_label - max_other f`` at ``x``.
        trace: node name -> float64 [N]: the bound on the perturbation of that node's
            *output* needed to change the class, given the layers after it; in graph
            order, from the input (equal to ``radius``) to the margin stage.
        method: the method that produced it.
        node_ops: node name -> op kind, for the nodes of ``trace``.
        status: int8 [N], a :class:`SampleStatus` per sample; ``MODEL_DISAGREES``,
            ``MODEL_NEAR_TIE`` and ``UNSAFE_NUMERICS`` set the radius to 0, ``OUTSIDE_BOX``
            keeps the method's radius over the whole ball (see :meth:`reasons`).
        model_label: int64 [N], the class the model itself predicts in its own dtype.
        is_guarantee: False for methods whose numbers are not proven (``peck2017``).
    """

    radius: torch.Tensor
    label: torch.Tensor
    runner_up: torch.Tensor
    margin: torch.Tensor
    trace: dict[str, torch.Tensor]
    method: str
    node_ops: dict[str, str] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    status: torch.Tensor | None = None
    model_label: torch.Tensor | None = None
    is_guarantee: bool = True

    def __post_init__(self) -> None:
        if self.status is None:
            self.status = torch.zeros(self.radius.shape[0], dtype=torch.int8)
        if self.model_label is None:
            self.model_label = self.label.clone()

    def reasons(self) -> list[str]:
        """Per sample, why its radius is what it is (:meth:`SampleStatus.describe`), with the
        radius when the status does not set it to 0 and the box when one was used."""
        box = self.info.get("box")
        out = []
        for s, r in zip(self.status.tolist(), self.radius.tolist()):
            st = SampleStatus(int(s))
            text = st.describe()
            if st == SampleStatus.OUTSIDE_BOX:
                where = f" {list(box)}" if isinstance(box, (tuple, list)) else ""
                text = (f"outside the method's input box{where}: radius {r:.6g}, certified over "
                        "the whole L2 ball without the box (as with box=None)")
            out.append(text)
        return out

    def __len__(self) -> int:
        return int(self.radius.shape[0])

    def losses(self) -> dict[str, torch.Tensor]:
        """Per node, the factor by which the bound shrinks across it (kappa_out / kappa_in),
        per sample; 1 means the node loses nothing."""
        names = list(self.trace)
        out: dict[str, torch.Tensor] = {}
        for prev, cur in zip(names[:-1], names[1:]):
            a, b = self.trace[prev], self.trace[cur]
            out[cur] = torch.where(a > 0, b / a, torch.full_like(a, float("inf")))
        return out

    def bottleneck(self) -> list[str]:
        """Per sample, the node across which the bound shrinks the most."""
        losses = self.losses()
        if not losses:
            return ["-"] * len(self)
        names = list(losses)
        stacked = torch.stack([losses[n] for n in names], 1)
        idx = stacked.argmax(1)
        return [names[i] for i in idx.tolist()]

    def summary(self) -> dict[str, float]:
        """Mean / median / min / max of the radius, the number of samples per non-OK status,
        and ``guarantee`` (1.0 for a proven method, 0.0 for ``peck2017``)."""
        r = self.radius
        counts = {
            f"n_{SampleStatus(k).name.lower()}": float((self.status == k).sum())
            for k in SampleStatus
            if k != SampleStatus.OK
        }
        return {
            "guarantee": float(self.is_guarantee),
            **counts,
            "n": float(r.numel()),
            "mean": float(r.mean()),
            "median": float(r.median()),
            "min": float(r.min()),
            "max": float(r.max()),
        }

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (lists of floats)."""
        return {
            "method": self.method,
            "radius": self.radius.tolist(),
            "label": self.label.tolist(),
            "runner_up": self.runner_up.tolist(),
            "margin": self.margin.tolist(),
            "trace": {k: v.tolist() for k, v in self.trace.items()},
            "node_ops": dict(self.node_ops),
            "is_guarantee": self.is_guarantee,
            "status": [SampleStatus(int(v)).name for v in self.status.tolist()],
            "model_label": self.model_label.tolist(),
            "info": {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.info.items()
                     if isinstance(v, (int, float, str, tuple))},
        }

    def __repr__(self) -> str:
        s = self.summary()
        flagged = int(sum(v for k, v in s.items() if k.startswith("n_") and k != "n"
                          and k != "n_outside_box"))
        extra = f", {flagged} set to 0 (see reasons())" if flagged else ""
        if s.get("n_outside_box"):
            extra += f", {int(s['n_outside_box'])} outside the box (see reasons())"
        kind = "" if self.is_guarantee else ", NOT a guarantee"
        return (
            f"Certificate(method={self.method!r}{kind}, n={len(self)}, median radius "
            f"{s['median']:.4g}, min {s['min']:.4g}, max {s['max']:.4g}{extra})"
        )
