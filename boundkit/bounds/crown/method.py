"""``crown`` as a registered :class:`~boundkit.bounds.method.Method`: samples in groups,
one :class:`CrownRun` per group, the radius searched from the ``sound`` one."""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch

from boundkit.bounds.crown import plan as planning
from boundkit.bounds.crown.plan import CrownPlan, plan_crown
from boundkit.bounds.crown.run import DEFAULT_BOX, CrownRun
from boundkit.bounds.crown.search import MAX_EVALUATIONS, RadiusSearch, search_radius
from boundkit.bounds.method import BatchResult, Method, register_method
from boundkit.bounds.output import margins
from boundkit.graph.graph import Graph
from boundkit.validate import check_box


class CrownMethod(Method):
    """Linear relaxation bounds (CROWN) over the graph, radius by a per-sample search."""

    name = "crown"
    is_guarantee = True
    description = "linear relaxation bounds (CROWN) backwards over the graph, L2 ball and box"

    default_box = DEFAULT_BOX

    def options(self) -> tuple[str, ...]:
        return ("box", "rtol")

    def prepare(self, graph: Graph) -> CrownPlan:
        return plan_crown(graph)

    def run(self, graph: Graph, x: torch.Tensor, plan: Any, *, trace: bool,
            **options: Any) -> BatchResult:
        box = options.get("box", self.default_box)
        box = check_box(box)
        x0 = x.to(device=graph.device, dtype=torch.float64)
        # samples in groups small enough that one neuron's walk fits in CHUNK_ELEMENTS
        # (each sample's radius does not depend on its group)
        widest = max(math.prod(n.out_shape) for n in plan.nodes)
        group = max(1, planning.CHUNK_ELEMENTS // (2 * widest))
        if x0.shape[0] > group:
            return BatchResult.cat([self._run_group(graph, x0[s:s + group], plan, box, trace,
                                                    options)
                                    for s in range(0, x0.shape[0], group)])
        return self._run_group(graph, x0, plan, box, trace, options)

    def _run_group(self, graph: Graph, x0: torch.Tensor, plan: CrownPlan,
                   box: tuple[float, float] | None, trace: bool, options: dict[str, Any]
                   ) -> BatchResult:
        run = self.make_run(graph, plan, x0, box, options)
        base = run.sound.result
        sound_r = torch.nan_to_num(base.radius, nan=0.0).clamp_min(0.0)
        label, m = margins(run.sound.acts[graph.logits.name])
        margin = m.min(1).values
        found = self.search(run, label, sound_r, margin, options)
        r = found.radius
        capped = int(found.capped.sum())
        if capped:
            warnings.warn(f"{self.name}: the radius search stopped at its limit of "
                          f"{MAX_EVALUATIONS} relaxations on {capped} sample(s) before "
                          "closing to rtol; their radii are certified, but may lie further "
                          "below what the relaxation certifies (info['search_capped'])",
                          RuntimeWarning, stacklevel=2)
        radius = torch.maximum(r, sound_r)
        return BatchResult(radius, base.label, base.runner_up, base.margin,
                           {graph.input.name: radius} if trace else {},
                           {"from_sound": sound_r >= r, "search_capped": found.capped,
                            "search_evaluations": found.evaluations},
                           outputs=base.outputs, unsafe=base.unsafe,
                           outside_box=None if box is None else ~run.in_box)

    def make_run(self, graph: Graph, plan: CrownPlan, x0: torch.Tensor,
                 box: tuple[float, float] | None, options: dict[str, Any]) -> CrownRun:
        return CrownRun(graph, plan, x0, box)

    def search(self, run: CrownRun, label: torch.Tensor, lo: torch.Tensor,
               margin: torch.Tensor, options: dict[str, Any]) -> RadiusSearch:
        return search_radius(run, label, lo, margin, check_rtol(options.get("rtol", 1e-3)),
                             reach=run.reach)


def check_rtol(rtol: Any) -> float:
    """The search's relative tolerance: a number in (0, 1)."""
    try:
        if isinstance(rtol, bool):
            raise TypeError
        value = float(rtol)
    except (TypeError, ValueError):
        raise ValueError(f"rtol must be a number in (0, 1), got {rtol!r}") from None
    if not 0.0 < value < 1.0:
        raise ValueError(f"rtol must be a number in (0, 1), got {rtol!r}")
    return value


register_method(CrownMethod())
