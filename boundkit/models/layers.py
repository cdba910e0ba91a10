r"""Layers of the L2 1-Lipschitz literature that boundkit certifies natively.

* :class:`GroupSort` (Anil, Lucas, Grosse, ICML 2019, "Sorting out Lipschitz function
  approximation"): the features along ``dim`` split into groups of ``group_size``, each group
  sorted in descending order. Groups are consecutive features (``layout="consecutive"``) or
  strided ones, feature ``j`` with ``j + C/g``, ``j + 2C/g``... (``layout="strided"``).
* :class:`MaxMin`: GroupSort with groups of two on the two halves,
  :math:`[\max(a,b),\min(a,b)]` for :math:`x=[a,b]` (the activation of Anil et al. and of
  the orthogonal / SOC / Cayley networks that followed).

Both are permutations within each group, hence 1-Lipschitz in L2 and gradient-norm
preserving (``docs/theory/groupsort.md``).
"""

from __future__ import annotations

import torch
import torch.fx
import torch.nn as nn


def group_sort(x: torch.Tensor, group_size: int, layout: str = "consecutive",
               dim: int = 1) -> torch.Tensor:
    """Sort each group of ``group_size`` features along ``dim`` in descending order."""
    dim = dim % x.dim()
    c = x.shape[dim]
    if group_size < 1 or c % group_size:
        raise ValueError(f"{c} features do not split into groups of {group_size}")
    if layout == "consecutive":
        shape, axis = (c // group_size, group_size), dim + 1
    elif layout == "strided":
        shape, axis = (group_size, c // group_size), dim
    else:
        raise ValueError(f"layout={layout!r}: 'consecutive' or 'strided'")
    out = torch.sort(x.unflatten(dim, shape), dim=axis, descending=True).values
    return out.flatten(dim, dim + 1)


# one opaque call in any torch.fx trace (its shape checks are Python control flow)
torch.fx.wrap("group_sort")


class GroupSort(nn.Module):
    """Sort groups of ``group_size`` features along ``dim`` (descending)."""

    def __init__(self, group_size: int = 2, dim: int = 1, layout: str = "consecutive") -> None:
        super().__init__()
        if layout not in ("consecutive", "strided"):
            raise ValueError(f"layout={layout!r}: 'consecutive' or 'strided'")
        self.group_size, self.dim, self.layout = int(group_size), int(dim), layout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return group_sort(x, self.group_size, self.layout, self.dim)

    def extra_repr(self) -> str:
        return f"group_size={self.group_size}, dim={self.dim}, layout={self.layout!r}"


class MaxMin(GroupSort):
    """:math:`[\\max(a,b),\\min(a,b)]` of the two halves ``a``, ``b`` of ``dim``."""

    def __init__(self, dim: int = 1) -> None:
        super().__init__(2, dim, "strided")

    def extra_repr(self) -> str:
        return f"dim={self.dim}"
