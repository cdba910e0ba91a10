"""Which neurons feeding a max pooling can change its relaxation (the ``live`` and ``pool``
refinement modes of :class:`~boundkit.bounds.crown.plan.Refine`)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from boundkit.bounds.relaxation import Interval
from boundkit.graph.graph import Graph, Node


def live_neurons(graph: Graph, node: Node, iv: Interval, through_relu: bool = True
                 ) -> torch.Tensor:
    r"""The neurons of ``node`` (read by one ReLU read by one max pooling, or, without
    ``through_relu``, read by the max pooling itself: relu below is then the identity
    and no neuron is dead) whose bounds can change the pooling's relaxation: not dead
    (:math:`u>0`) and not dominated,
    :math:`\mathrm{relu}(u_i)\ge\min_{w\ni i}\max_{i'\in w}\mathrm{relu}(l_{i'})`. A
    dominated neuron is never a window's maximum, nor its best lower bound, nor its
    largest upper bound, and refining bounds only raises the right-hand side and lowers
    :math:`u_i` (docs/theory/linear_relaxation.md §Refined neurons)."""
    if through_relu:
        relu = graph[graph.consumers(node.name)[0]]
        pool = graph[graph.consumers(relu.name)[0]]
        lo_r, hi_r = iv.lo.clamp(min=0), iv.hi.clamp(min=0)
    else:  # the pooling reads the node itself
        pool = graph[graph.consumers(node.name)[0]]
        lo_r, hi_r = iv.lo, iv.hi
    a = pool.attrs
    best = F.max_pool2d(lo_r, a["kernel_size"], a["stride"], a["padding"], a["dilation"])
    p = a["padding"]
    n, c, h, w = lo_r.shape
    padded = (h + 2 * p[0], w + 2 * p[1])
    pos = torch.arange(padded[0] * padded[1], dtype=lo_r.dtype, device=lo_r.device)
    pos_w = F.unfold(pos.reshape(1, 1, *padded), a["kernel_size"], dilation=a["dilation"],
                     stride=a["stride"])[0].long()  # [k, L]
    k, nw = pos_w.shape
    vals = (-best.reshape(n, c, 1, nw)).expand(n, c, k, nw).reshape(n, c, k * nw)
    neg_thr = torch.full((n, c, padded[0] * padded[1]), -math.inf, dtype=lo_r.dtype,
                         device=lo_r.device)
    neg_thr.scatter_reduce_(2, pos_w.reshape(1, 1, -1).expand(n, c, -1), vals, "amax")
    thr = -neg_thr.reshape(n, c, *padded)[..., p[0]:p[0] + h, p[1]:p[1] + w]
    live = hi_r >= thr
    return live & (iv.hi > 0) if through_relu else live
