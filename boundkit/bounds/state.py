"""Typed state shared by the walkers and the rules."""

from __future__ import annotations

import torch


class Activations(dict[str, torch.Tensor]):
    """Float64 node outputs at x (name -> [N, ...]), with :attr:`errors`: per-node upper
    bounds [N] on the L2 rounding error of those values (empty when not computed)."""

    def __init__(self, values: dict[str, torch.Tensor],
                 errors: dict[str, torch.Tensor] | None = None) -> None:
        super().__init__(values)
        self.errors: dict[str, torch.Tensor] = dict(errors or {})


def rounding_error(acts: dict[str, torch.Tensor], name: str) -> torch.Tensor | None:
    """The rounding bound of node ``name`` carried by ``acts`` (``None`` when unknown)."""
    errors = getattr(acts, "errors", None)
    return None if errors is None else errors.get(name)
