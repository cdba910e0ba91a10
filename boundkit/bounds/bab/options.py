"""The search's typed options, checked once at the boundary, and the clock its time
budgets are charged on."""

from __future__ import annotations

import time
from dataclasses import dataclass
from enum import Enum
from typing import Any

from boundkit.errors import BadArgumentError

#: the clock the time budgets are charged on (wall seconds; a benchmark on a shared
#: machine may set ``time.process_time``, this process's CPU seconds: assign
#: ``boundkit.bounds.bab.options.CLOCK``)
CLOCK = time.perf_counter


def now() -> float:
    """The current reading of :data:`CLOCK` (looked up on every call, so a benchmark's
    assignment reaches every module of the package)."""
    return CLOCK()


class Split(str, Enum):
    """What branch and bound branches on (``BabOptions.split``; equal to its word, so
    ``split="relu"`` and ``Split.RELU`` are one choice)."""

    #: the input for a network ReLU splitting refuses (e.g. tanh) whose samples have at
    #: most ``inputsplit.INPUT_SPLIT_MAX_DIM`` features, the ReLUs otherwise
    AUTO = "auto"
    #: sub-boxes of the input (``inputsplit.py``)
    INPUT = "input"
    #: unstable ReLU neurons (``search.py``)
    RELU = "relu"

    def __str__(self) -> str:
        return self.value


#: the branching choices' words (``verify`` / ``bab`` / ``certify`` ``split=``)
SPLITS = tuple(s.value for s in Split)


def check_split(split: object) -> Split:
    """``split`` as a :class:`Split` (a one-line ``BadArgumentError`` otherwise)."""
    if not isinstance(split, str) or split not in SPLITS:
        raise BadArgumentError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    return Split(split)


#: optimisation steps on a domain with no neuron left to split before it is given up
STUCK_ITERATIONS = 30

#: ``refresh`` value meaning "never recompute the intermediate bounds below the root"
NEVER = 1 << 20


@dataclass(frozen=True)
class BabOptions:
    """Typed options of the search (checked at the boundary by :func:`check_options`)."""

    #: seconds of bounding per sample (the batch's wall time is charged to its samples in
    #: proportion to their domains in it)
    time_budget: float = 5.0
    #: domains bounded per sample, at most
    max_domains: int = 20_000
    #: domains per engine call
    batch: int = 512
    #: gradient steps on the slopes and multipliers per batch (0: crown with splits). 3:
    #: on 10 MNIST MLP samples at 2 s per sample median certified / attack 0.964 against
    #: 0.922 with 0 (a quarter of the subproblems, each much tighter: docs/results/bab.md)
    iterations: int = 3
    lr_alpha: float = 0.1
    lr_beta: float = 0.05
    #: keep the slopes and multipliers of a domain for its children while the kept
    #: tensors hold at most this many elements
    warm_elements: int = 1 << 26
    #: recompute the intermediate bounds (the refinement walks, under the splits) once a
    #: domain is this many splits from its last recomputation (1: always; else the
    #: ancestor's bounds are reused, valid on the larger set; the default: the root's)
    refresh: int = NEVER
    #: one domain per (sample, competing class): a one-row final walk each, and splits
    #: chosen for that margin alone
    per_class: bool = True
    #: what is branched on (:class:`Split`)
    split: Split = Split.AUTO

    def __post_init__(self) -> None:
        # the word a caller may give (``split="relu"``) kept as its typed choice
        object.__setattr__(self, "split", check_split(self.split))


def check_options(time_budget: Any, max_domains: Any, batch: Any, iterations: Any,
                  refresh: Any = NEVER, split: Any = Split.AUTO) -> BabOptions:
    """:class:`BabOptions` from user values (a one-line ``BadArgumentError`` otherwise)."""
    from boundkit.validate import check_int, check_positive

    t = check_positive("time_budget", time_budget, maximum=1e7)
    d = check_int("max_domains", max_domains)
    b = check_int("batch", batch, maximum=1 << 16)
    i = check_int("iterations", iterations, minimum=0, maximum=10_000)
    f = check_int("refresh", refresh, maximum=NEVER)
    assert t is not None and d is not None and b is not None and i is not None
    assert f is not None
    return BabOptions(time_budget=t, max_domains=d, batch=b, iterations=i, refresh=f,
                      split=split)  # checked by BabOptions itself

