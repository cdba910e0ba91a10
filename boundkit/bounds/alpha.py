r"""``alpha``: CROWN with the lower slopes of unstable ReLUs optimised (alpha-CROWN).

Every slope :math:`\alpha\in[0,1]` gives a valid lower line :math:`\alpha z\le\mathrm{ReLU}(z)`
on :math:`[l,u]` with :math:`l<0<u` (``docs/theory/linear_relaxation.md`` §ReLU), so the
slopes are free parameters of the bound: for each margin :math:`f_y-f_j` and each ReLU of
the final backward walk, one slope per neuron, chosen by projected gradient ascent (Adam)
on the margin's bound :math:`c_j-\varepsilon\nu_j` at the radius being tried (Xu et al.,
*Fast and Complete*, ICLR 2021). Whatever the optimiser does, the bound returned is
recomputed without gradients from slopes clamped to :math:`[0,1]`, with the rounding
margins of ``crown``: the optimisation changes tightness, never validity.

The search starts from the ``crown`` radius (itself from the ``sound`` one) and runs the
same per-sample search with the optimised relaxation; the slopes of a sample are kept
from one radius to the next (warm start) and the best iterate per sample and margin is
the one used. Intermediate bounds are those of ``crown``.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from boundkit.bounds.activation import ReLURelaxation
from boundkit.bounds.crown import (
    CrownMethod,
    CrownPlan,
    CrownRun,
    RadiusStep,
    radius_step,
    search_radius,
)
from boundkit.bounds.method import register_method
from boundkit.graph.graph import Graph

#: the key prefix of the final walk's slopes in ``RelaxContext.slopes``
FINAL = "final"


class AlphaRun(CrownRun):
    """A :class:`CrownRun` whose final walk uses optimised ReLU lower slopes (once
    :attr:`optimise` is set)."""

    def __init__(self, graph: Graph, plan: CrownPlan, x0: torch.Tensor,
                 box: tuple[float, float] | None, iterations: int, lr: float) -> None:
        super().__init__(graph, plan, x0, box)
        self.iterations, self.lr = iterations, lr
        self.optimise = False
        #: warm start: slopes per final-walk ReLU, [N, S, *shape] in [0, 1]
        self.params: dict[str, torch.Tensor] = {}

    def _subset_state(self, sub: CrownRun, idx: torch.Tensor) -> None:
        assert isinstance(sub, AlphaRun)
        sub.iterations, sub.lr, sub.optimise = self.iterations, self.lr, self.optimise
        sub.params = {k: v[idx] for k, v in self.params.items()}

    def absorb(self, sub: CrownRun, idx: torch.Tensor) -> None:
        assert isinstance(sub, AlphaRun)
        for k, v in sub.params.items():
            mine = self.params.get(k)
            if mine is None:
                # rows never optimised stay NaN: they start from crown's choice
                mine = torch.full((self.n, *v.shape[1:]), math.nan, dtype=v.dtype,
                                  device=v.device)
                self.params[k] = mine
            mine[idx] = v

    def _relus(self) -> list[str]:
        return [n.name for n in self.plan.nodes
                if isinstance(self.plan.rules.get(n.name), ReLURelaxation)]

    def evaluate(self, eps: torch.Tensor, label: torch.Tensor) -> RadiusStep:
        if not self.optimise:
            return super().evaluate(eps, label)
        ctx = self.intervals(eps)
        spec = self.margin_spec(label)
        s = spec.shape[1]
        params: dict[str, torch.Tensor] = {}
        floor: dict[str, float] = {}
        for name in self._relus():
            key = f"{FINAL}:{name}"
            node = self.graph[name]
            rule = self.plan.rules[name]
            assert isinstance(rule, ReLURelaxation)
            floor[key] = rule.slope(node)
            iv = ctx.intervals[node.inputs[0]]
            # crown's choice (1 where u > -l, else the negative slope), unless a slope was
            # optimised at another radius
            start = torch.where(iv.hi > -iv.lo, 1.0, floor[key]).unsqueeze(1).expand(
                self.n, s, *iv.hi.shape[1:])
            warm = self.params.get(key)
            if warm is not None:
                start = torch.where(torch.isnan(warm), start, warm)
            params[key] = start.detach().clone().requires_grad_(True)
        if not params:
            return super().evaluate(eps, label)
        best = {k: v.detach().clone() for k, v in params.items()}
        best_val = torch.full((self.n, s), -math.inf, dtype=spec.dtype, device=spec.device)
        opt = torch.optim.Adam(list(params.values()), lr=self.lr)
        with torch.enable_grad():
            for _ in range(self.iterations):
                ctx.slopes = params
                val = self.backward(self.graph.logits, spec, ctx).at(eps)
                with torch.no_grad():
                    better = val > best_val
                    best_val = torch.where(better, val, best_val)
                    for k, p in params.items():
                        m = better.reshape(*better.shape, *([1] * (p.dim() - 2)))
                        best[k] = torch.where(m, p.detach(), best[k])
                loss = -torch.where(torch.isfinite(val), val, torch.zeros_like(val)).sum()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                with torch.no_grad():
                    for k, p in params.items():
                        p.clamp_(floor[k], 1.0)
        # the bound used: recomputed without gradients from the best slopes (the rule
        # clamps them into [s, 1] again)
        self.params = {k: v.clamp(floor[k], 1.0) for k, v in best.items()}
        with torch.no_grad():
            ctx.slopes = self.params
            conc = self.backward(self.graph.logits, spec, ctx)
        ctx.slopes = self.slopes
        return radius_step(conc, eps, label)


class AlphaMethod(CrownMethod):
    """``crown`` with optimised ReLU lower slopes; radius by the same per-sample search,
    started from the ``crown`` radius."""

    name = "alpha"
    is_guarantee = True
    description = ("crown with the ReLU lower slopes optimised per margin "
                   "(alpha-CROWN; iterations, lr)")

    def options(self) -> tuple[str, ...]:
        return ("box", "rtol", "iterations", "lr")

    def make_run(self, graph: Graph, plan: CrownPlan, x0: torch.Tensor,
                 box: tuple[float, float] | None, options: dict[str, Any]) -> CrownRun:
        return AlphaRun(graph, plan, x0, box, _check_iterations(options.get("iterations", 20)),
                        _check_lr(options.get("lr", 0.1)))

    def search(self, run: CrownRun, label: torch.Tensor, lo: torch.Tensor,
               margin: torch.Tensor, options: dict[str, Any]) -> torch.Tensor:
        assert isinstance(run, AlphaRun)
        r = super().search(run, label, lo, margin, options)
        run.optimise = True
        rtol = float(options.get("rtol", 1e-3))
        return search_radius(run, label, torch.maximum(r, lo), margin, rtol, first=1.05)


def _check_iterations(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"iterations must be a positive integer, got {value!r}")
    return value


def _check_lr(value: Any) -> float:
    try:
        lr = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"lr must be a positive number, got {value!r}") from None
    if not (lr > 0.0 and math.isfinite(lr)):
        raise ValueError(f"lr must be a positive finite number, got {value!r}")
    return lr


register_method(AlphaMethod())
