r"""The tightest guarantee that fits a per-sample time budget (``--method auto``).

The rule, in order (``docs/user-guide.md`` §Which method by default):

1. time ``crown`` on a probe of the first ``min(4, N)`` samples (one call, wall clock);
2. if a ``bab`` method is registered, supports the model (it splits ReLUs and keeps
   max poolings relaxed, nothing else) and
   ``crown`` took at most a quarter of the budget per sample: ``bab`` with ``time_budget`` =
   the budget (it starts from the ``crown`` radius and stops at the budget, every radius on
   the way a certificate);
3. else, if ``crown`` took at most the budget per sample: ``crown``;
4. else (or where ``crown`` does not support the model): ``sound``.

Every choice is a guarantee method; the choice and its reason are recorded with the results.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from boundkit.bounds.engine import certify
from boundkit.bounds.method import method_names
from boundkit.errors import UnsupportedLayerError
from boundkit.validate import check_positive

#: samples the probe certifies with ``crown``
PROBE = 4
#: ``bab`` is chosen where ``crown`` takes at most this fraction of the budget
BAB_SHARE = 0.25


@dataclass(frozen=True)
class Choice:
    """The method chosen, the options to pass it, and why."""

    method: str
    options: dict[str, Any] = field(default_factory=dict)
    reason: str = ""
    #: ``crown``'s measured wall time per sample on the probe (NaN where it did not run)
    crown_seconds: float = float("nan")

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "options": dict(self.options), "reason": self.reason,
                "crown_seconds_per_sample": self.crown_seconds}


def tightest_affordable(model: nn.Module, x: torch.Tensor, time_budget: float, *,
                        device: Any = None, allow_bab: bool = True, **options: Any) -> Choice:
    """The method the rule of the module docstring picks for ``model`` on ``x`` with
    ``time_budget`` seconds per sample (``options``: passed to the probe, e.g. ``box``;
    ``allow_bab=False`` leaves ``bab`` out, e.g. where its options cannot be passed)."""
    budget = check_positive("time_budget", time_budget)
    probe = x[:PROBE]
    t0 = time.perf_counter()
    try:
        certify(model, probe, "crown", device=device, trace=False, **options)
    except UnsupportedLayerError as exc:
        return Choice("sound", reason=f"crown does not support the model ({exc})")
    per = (time.perf_counter() - t0) / probe.shape[0]
    if allow_bab and per <= BAB_SHARE * budget and _supports(model, probe, "bab", device):
        return Choice("bab", {"time_budget": budget, **options},
                      f"crown takes {per:.3g} s per sample, at most {BAB_SHARE:g} of the "
                      f"{budget:g} s budget: branch and bound has the rest", per)
    if per <= budget:
        return Choice("crown", dict(options),
                      f"crown takes {per:.3g} s per sample, within the {budget:g} s budget", per)
    return Choice("sound", reason=f"crown takes {per:.3g} s per sample, over the {budget:g} s "
                                  "budget", crown_seconds=per)


def _supports(model: nn.Module, x: torch.Tensor, method: str, device: Any) -> bool:
    """Whether ``method`` is registered and plans ``model`` (no node it refuses)."""
    if method not in method_names():
        return False
    from boundkit.bounds.engine import graph_for
    from boundkit.bounds.method import get_method

    try:
        get_method(method).prepare(graph_for(model, x, device))
    except UnsupportedLayerError:
        return False
    return True
