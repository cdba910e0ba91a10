"""The result of :func:`boundkit.certify`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class Certificate:
    """Per-sample certified L2 radii.

    Attributes:
        radius: float64 [N]. For ``method="sound"``: no perturbation ``r`` with
            ``||r||_2 < radius`` changes the argmax of the (exact-arithmetic) network.
            For ``method="peck2017"``: the thesis's number, *not* a guarantee.
        label: int64 [N], the class predicted at ``x`` (argmax of the float64 logits).
        runner_up: int64 [N], the class whose pairwise bound was the smallest at the
            margin stage (the most threatening competitor).
        margin: float64 [N], the logit margin ``f_label - max_other f`` at ``x``.
        trace: node name -> float64 [N]: the bound on the perturbation of that node's
            *output* needed to change the class, given the layers after it; in graph
            order, from the input (equal to ``radius``) to the margin stage.
        method: the method that produced it.
        node_ops: node name -> op kind, for the nodes of ``trace``.
    """

    radius: torch.Tensor
    label: torch.Tensor
    runner_up: torch.Tensor
    margin: torch.Tensor
    trace: dict[str, torch.Tensor]
    method: str
    node_ops: dict[str, str] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

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
        """Mean / median / min / max of the radius."""
        r = self.radius
        return {
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
            "info": {k: v for k, v in self.info.items() if isinstance(v, (int, float, str))},
        }

    def __repr__(self) -> str:
        s = self.summary()
        return (
            f"Certificate(method={self.method!r}, n={len(self)}, median radius "
            f"{s['median']:.4g}, min {s['min']:.4g}, max {s['max']:.4g})"
        )
