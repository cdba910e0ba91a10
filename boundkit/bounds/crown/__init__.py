"""``crown``: linear relaxation bounds propagated backwards over the graph (CROWN), on the
L2 ball intersected with the input box; ``alpha`` (``boundkit.bounds.alpha``) builds on it.

The package reads as the method does:

- ``plan.py``: per model, each node's rule and which nodes' bounds are refined;
- ``run.py``: per batch, the intervals, the refinement walks and the final walk
  (:class:`CrownRun`, with its per-sample state in :class:`Samples`);
- ``concrete.py``: a bound at the input minimised over the ball and the box;
- ``search.py``: the per-sample radius search;
- ``kept.py``, ``windows.py``, ``units.py``: the accelerations, each saying when it applies;
- ``liveness.py``: the neurons a max pooling's relaxation depends on;
- ``method.py``: the registered method.
"""

from boundkit.bounds.crown.concrete import Concrete, RadiusStep, concretise, radius_step
from boundkit.bounds.crown.method import CrownMethod, check_rtol
from boundkit.bounds.crown.plan import CHUNK_ELEMENTS, CrownPlan, Refine, plan_crown
from boundkit.bounds.crown.run import DEFAULT_BOX, CrownRun, Samples, Scratch
from boundkit.bounds.crown.search import RadiusSearch, search_radius

__all__ = [
    "CHUNK_ELEMENTS",
    "DEFAULT_BOX",
    "Concrete",
    "CrownMethod",
    "CrownPlan",
    "CrownRun",
    "RadiusSearch",
    "RadiusStep",
    "Refine",
    "Samples",
    "Scratch",
    "check_rtol",
    "concretise",
    "plan_crown",
    "radius_step",
    "search_radius",
]
