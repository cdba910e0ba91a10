"""The two generic graph walkers every method runs on.

* :func:`forward` visits steps in topological order; each step's transfer maps the states of
  its inputs to the state of its output (moduli, rounding errors, intervals).
* :func:`backward` visits steps in reverse topological order; each step's transfer maps the
  state at its output to one state per input (kappas, linear bounds); where a value feeds
  several consumers (a fork), the contributions are summed with the state's ``+``.

A *step* is anything with ``name`` (the value it produces) and ``inputs`` (the values it
reads): a graph :class:`~boundkit.graph.graph.Node`, or a method's stage spanning several
nodes. The walkers know no method and no op.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

S = TypeVar("S")


def forward(
    steps: Iterable[Any],
    seeds: dict[str, S],
    transfer: Callable[[Any, list[S | None]], S | None],
) -> dict[str, S]:
    """States of every step output reachable from ``seeds``.

    ``transfer(step, input_states)`` receives ``None`` for inputs with no state and returns
    the output state, or ``None`` when the output does not depend on the seeds."""
    state: dict[str, S] = dict(seeds)
    for st in steps:
        if st.name in seeds:
            continue
        ins = [state.get(i) for i in st.inputs]
        out = transfer(st, ins)
        if out is not None:
            state[st.name] = out
    return state


def backward(
    steps: Sequence[Any],
    seeds: dict[str, S],
    transfer: Callable[[Any, S], Sequence[S | None]],
    stop: Callable[[Any], bool] | None = None,
) -> dict[str, S]:
    """States at every step input reached backwards from ``seeds``.

    ``transfer(step, output_state)`` returns one state (or ``None``) per input of the step;
    contributions meeting at one value are summed (``a + b``). ``stop(step)`` ends the walk
    at a step (its output state is kept, its inputs are not visited)."""
    state: dict[str, S] = dict(seeds)
    for st in reversed(list(steps)):
        out = state.get(st.name)
        if out is None or (stop is not None and stop(st)):
            continue
        for name, contrib in zip(st.inputs, transfer(st, out)):
            if contrib is None:
                continue
            prev = state.get(name)
            state[name] = contrib if prev is None else prev + contrib  # type: ignore[operator]
    return state
