r"""Logit margins: the one place they are computed.

For logits :math:`f\in\mathbb R^{N\times C}` and a class :math:`y_i` per sample:

* :func:`class_margins`: :math:`m_{ij}=f_{iy_i}-f_{ij}` for every class :math:`j`, and
  :math:`+\infty` at :math:`j=y_i` (so a minimum over :math:`j` never picks the class itself);
  the certificates (``bounds.output``, ``sound-local``, the exact linear distance) read it;
* :func:`label_margin`: :math:`f_{iy_i}-\max_{j\ne y_i}f_{ij}`, positive exactly when
  :math:`y_i` is the unique argmax; the attack criteria, branch and bound's attack and the
  fidelity check's near-tie test read it. It is differentiable (the maximum is ``amax``,
  whose gradient splits evenly between tied logits).

Both are exact in the sense that matters: floating-point subtraction is monotone, so
``class_margins(f, y).min(1)`` and ``label_margin(f, y)`` are the same numbers, bit for bit.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def class_margins(logits: Tensor, label: Tensor) -> Tensor:
    """``[N, C]``: :math:`f_y - f_j` per class, ``+inf`` at the class ``label`` itself."""
    idx = label.long().unsqueeze(1)
    m = logits.gather(1, idx) - logits
    return m.scatter_(1, idx, math.inf)


def label_margin(logits: Tensor, label: Tensor) -> Tensor:
    """``[N]``: :math:`f_y-\\max_{j\\ne y}f_j` (differentiable; ``+inf`` with one class)."""
    idx = label.long().unsqueeze(1)
    own = logits.gather(1, idx).squeeze(1)
    mask = torch.zeros_like(logits, dtype=torch.bool).scatter_(1, idx, True)
    return own - logits.masked_fill(mask, -math.inf).amax(1)
