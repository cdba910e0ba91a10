r"""Ranking models by robustness without ranking the looseness of their bounds.

Per sample, a model's true minimal perturbation :math:`\rho^*` lies in
:math:`[\underline\rho,\overline\rho]`: the certified radius below, the norm of the best
verified adversarial example above (:math:`+\infty` where the attack found none). A ranking of
two models is **decided by proof** only where these intervals say so:

* in the median: :math:`\operatorname{med}\underline\rho_A>\operatorname{med}\overline\rho_B`
  implies :math:`\operatorname{med}\rho^*_A\ge\operatorname{med}\underline\rho_A>
  \operatorname{med}\overline\rho_B\ge\operatorname{med}\rho^*_B` (the median is monotone:
  :math:`u\le v` element-wise gives :math:`\operatorname{med}u\le\operatorname{med}v`);
* per sample: :math:`\underline\rho_A(s)>\overline\rho_B(s)` proves that sample farther from
  A's decision boundary than from B's.

Otherwise the order is **undecided at this budget**: a tighter certificate (``crown``,
``bab``) or a stronger attack may decide it. The models are listed by median certified
radius, then median attack norm, and every adjacent pair carries its label
(``docs/user-guide.md`` §Comparing models).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from boundkit.stats import median

#: the label of an adjacent pair whose order the intervals prove
DECIDED = "decided by proof"
#: the label of an adjacent pair whose order they do not
UNDECIDED = "undecided at this budget"


@dataclass(frozen=True)
class ModelBounds:
    """One model's per-sample interval on the same samples as the others."""

    name: str
    #: certified radii [N] (0 where nothing is certified)
    certified: np.ndarray
    #: attack norms [N] (``inf`` where no adversarial example was found)
    attack: np.ndarray

    @property
    def median_certified(self) -> float:
        return median(self.certified)

    @property
    def median_attack(self) -> float:
        """The median of the upper ends, failures counted as ``inf`` (an upper bound)."""
        return median(self.attack)


@dataclass(frozen=True)
class PairVerdict:
    """Whether ``above`` is proven more robust than ``below``."""

    above: str
    below: str
    label: str
    #: fraction of samples with ``certified_above > attack_below`` (proven farther in A)
    samples_decided: float
    #: fraction with ``certified_below > attack_above`` (proven the other way)
    samples_reversed: float

    def to_dict(self) -> dict[str, object]:
        return {"above": self.above, "below": self.below, "label": self.label,
                "samples_decided": self.samples_decided,
                "samples_reversed": self.samples_reversed}


def rank(models: Sequence[ModelBounds]) -> tuple[list[ModelBounds], list[PairVerdict]]:
    """The models by median certified radius (then median attack norm), best first, and a
    verdict for each adjacent pair (module docstring)."""
    def key(m: ModelBounds) -> tuple[float, float]:
        c, a = m.median_certified, m.median_attack
        return (-(c if c == c else -math.inf), -(a if a == a else -math.inf))

    sizes = {m.certified.size for m in models} | {m.attack.size for m in models}
    if len(sizes) > 1:
        raise ValueError(f"models compared on different numbers of samples: {sorted(sizes)}")
    order = sorted(models, key=key)
    verdicts = []
    for hi, lo in zip(order, order[1:]):
        n = hi.certified.size
        decided = float(np.mean(hi.certified > lo.attack)) if n else math.nan
        reverse = float(np.mean(lo.certified > hi.attack)) if n else math.nan
        proven = hi.median_certified > lo.median_attack
        verdicts.append(PairVerdict(hi.name, lo.name, DECIDED if proven else UNDECIDED,
                                    decided, reverse))
    return order, verdicts
