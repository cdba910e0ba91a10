r"""Acceleration: the first step of a refinement walk read off a table.

A walk from :math:`\pm e_j` through an affine single-input node :math:`h=Lz+c` starts with
:math:`\pm L^\top e_j`: a row of a table of the node's unit transposes, planned once per
model and shape (docs/theory/linear_relaxation.md §Unit tables). The table is exact (each
entry one parameter times 1), so the step equals the general one with the same charge.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

from boundkit.bounds.crown import plan as planning
from boundkit.bounds.relaxation import AffineRelaxation
from boundkit.graph.graph import Node

if TYPE_CHECKING:
    from boundkit.bounds.crown.run import CrownRun

#: the most elements of a node's table of unit transposes: 2^21 float64, 16 MiB
UNIT_TABLE = 1 << 21


class UnitTables:
    """Where a table applies (an affine single-input node whose table fits ``UNIT_TABLE``;
    split constraints do not matter: the table is the node's own map) and the table."""

    @staticmethod
    def table(run: CrownRun, node: Node) -> torch.Tensor | None:
        r""":math:`L^\top e_j` for every output :math:`j` of ``node`` (as it stands: a window
        copy has its own) [M, *in]; ``None`` where the acceleration does not apply."""
        rule = run.plan.rules.get(node.name)
        if not isinstance(rule, AffineRelaxation) or len(node.inputs) != 1:
            return None
        key = (node.name, tuple(node.out_shape), tuple(node.in_shapes[0]),
               repr(node.attrs.get("padding")))
        if key not in run.plan.units:
            m, k = math.prod(node.out_shape), math.prod(node.in_shapes[0])
            table = None
            if m * k <= UNIT_TABLE:
                per = max(1, planning.CHUNK_ELEMENTS // max(m, k))
                table = torch.cat([rule.unit_rows(node, slice(j, j + per), run.x0.dtype,
                                                  run.x0.device) for j in range(0, m, per)])
            run.plan.units[key] = table
        return run.plan.units[key]


#: the one instance the engine uses
UNITS = UnitTables()
