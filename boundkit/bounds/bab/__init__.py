r"""Branch and bound on the ReLUs that can switch: ``bk.verify`` and the ``bab`` method.

A *domain* is a sample with split constraints on some of its unstable ReLU neurons
(:class:`~boundkit.bounds.relaxation.Splits`: :math:`y_i\ge0` or :math:`y_i\le0` on the
neuron's input) and the set :math:`\mathcal{B}\cap S` of the ball's points that satisfy
them. A domain is bounded on the ``crown`` engine (:class:`~boundkit.bounds.crown.CrownRun`)
under its splits: every interval and linear bound then holds on
:math:`\mathcal{B}\cap S` (the split neuron's interval is clamped to its side, so it is
relaxed exactly), and a domain whose constraints contradict the sound interval of their
neuron is empty: proven. On top of that, the final walk carries

* optimised lower slopes :math:`\alpha\in[s,1]` of the unstable ReLUs (alpha-CROWN), and
* beta multipliers :math:`\beta_i\ge0` of the split constraints (beta-CROWN, Wang et al.
  2021): on :math:`S`, :math:`\sigma_i y_i\ge0` (:math:`\sigma_i=\pm1` the split's side), so
  any bound :math:`f\ge\langle a,y\rangle+c` also gives
  :math:`f\ge\langle a-\beta\odot\sigma,y\rangle+c` there, with the rounding of the
  subtraction charged (``docs/theory/branch_and_bound.md``).

Both are parameters of the bound, chosen by projected gradient ascent; every iterate is a
valid bound, and per margin the best iterate is kept. A domain is proven when every margin
:math:`f_y-f_j`, :math:`j\ne y`, has a positive lower bound (margins proven in an ancestor
stay proven: the child's set is a subset). Otherwise one unstable neuron is split, chosen by
a BaBSR-style score (Bunel et al. 2020): the bound loses
:math:`|a_i^-|\,\frac{-l_iu_i}{u_i-l_i}` to the intercept of the neuron's upper line
(:math:`a_i^-` the negative part of its backward coefficient for the margins still open),
which the split removes. The domains of all samples are bounded together in batches
(one engine call per batch, no per-domain loop).

``verify`` says per sample: *verified* (every domain proven: no perturbation of L2 norm
below the radius, inside the box, changes the class), *falsified* (a counterexample inside
the ball and the box, checked by re-running the model in its own dtype) or *unknown*
(budget spent, with the reason).

The package, one idea per module:

* :mod:`~boundkit.bounds.bab.domains`: domains and their split bookkeeping, the radius a
  domain certifies;
* :mod:`~boundkit.bounds.bab.bounding`: the split ReLU rule (beta terms), the plan, and
  bounding a batch of domains with optimised slopes and multipliers;
* :mod:`~boundkit.bounds.bab.branching`: the branching score and the split;
* :mod:`~boundkit.bounds.bab.loop`: the loop both searches share (batches, priorities,
  budgets) and its typed per-sample answer (:class:`Verdict`, :class:`Reason`,
  :class:`Solved`);
* :mod:`~boundkit.bounds.bab.search`: the search on ReLU splits (its roots and one
  batch's bounding and branching);
* :mod:`~boundkit.bounds.bab.inputsplit`: the search on sub-boxes of the input;
* :mod:`~boundkit.bounds.bab.counterexample`: the attack inside the ball;
* :mod:`~boundkit.bounds.bab.verifying`: ``bk.verify``;
* :mod:`~boundkit.bounds.bab.radius`: the anytime radius method ``bab``;
* :mod:`~boundkit.bounds.bab.options`: typed options and the clock of the budgets.
"""

from boundkit.bounds.bab.bounding import (
    BabPlan,
    Bounded,
    Bounder,
    SplitReLU,
    bab_plan,
    plan_bab,
)
from boundkit.bounds.bab.counterexample import pgd_counterexample
from boundkit.bounds.bab.domains import Domains, domain_radius
from boundkit.bounds.bab.loop import Reason, Search, Solved, Verdict
from boundkit.bounds.bab.options import (
    NEVER,
    STUCK_ITERATIONS,
    BabOptions,
    Split,
    check_options,
)
from boundkit.bounds.bab.radius import (
    BAB_RTOL,
    FIRST_GROWTH,
    FIRST_STEP,
    REOPEN_RTOL,
    TRACE_POINTS,
    BabMethod,
    RadiusTrace,
)
from boundkit.bounds.bab.search import FALSIFIED, UNKNOWN, VERIFIED, BranchAndBound
from boundkit.bounds.bab.verifying import VerifyResult, verify, verify_graph

__all__ = [
    "BAB_RTOL", "FALSIFIED", "FIRST_GROWTH", "FIRST_STEP", "NEVER", "REOPEN_RTOL",
    "STUCK_ITERATIONS", "TRACE_POINTS",
    "UNKNOWN", "VERIFIED",
    "BabMethod", "BabOptions", "BabPlan", "Bounded", "Bounder", "BranchAndBound", "Domains",
    "RadiusTrace", "Reason", "Search", "Solved", "Split", "SplitReLU", "Verdict", "VerifyResult",
    "bab_plan", "check_options",
    "domain_radius",
    "pgd_counterexample", "plan_bab", "verify", "verify_graph",
]
