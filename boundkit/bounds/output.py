r"""The output stage: from the logit margins to a bound at the input of the last layer(s).

**peck2017** (thesis Lemma 3.5 / Theorem 3.6, eq. 3.12): with the last layer
:math:`f=Wh+b` and :math:`c=\arg\max f`,

.. math:: \kappa=\min_{c'\ne c}\frac{|(w_{c'}-w_c)\cdot h+b_{c'}-b_c|}{\|w_{c'}-w_c\|}.

It is exact for a linear classifier (Theorem 3.7; :math:`h=x`).

**Sound rule** (``docs/theory/output.md``): let :math:`T` be the longest run of *affine*
nodes ending at the logits (linear, convolution, batch norm, average pooling, reshapes),
:math:`h` its input and :math:`A=\partial f/\partial h` its constant Jacobian. For any
perturbation :math:`q` of :math:`h`,
:math:`f_c(h+q)-f_{c'}(h+q)=m_{c'}+(A_c-A_{c'})q\ge m_{c'}-\|A_c-A_{c'}\|\|q\|`, so the class
cannot change while :math:`\|q\|<\kappa=\min_{c'}m_{c'}/\|A_c-A_{c'}\|`. This is Lemma 3.5
applied to the whole affine tail at once (tighter than multiplying the norms of its layers,
and per class pair rather than with a generic :math:`\sqrt2\|A\|`). Margins are reduced by
:math:`\sqrt2` times the bound on the float64 rounding error of the logits.
"""

from __future__ import annotations

import math

import torch

from boundkit.bounds.numerics import gamma, inflate
from boundkit.errors import UnsupportedLayerError
from boundkit.graph.arithmetic import Arithmetic
from boundkit.graph.graph import OUTPUT_SQUASH_OPS, Graph, Node
from boundkit.graph.optable import ops_where
from boundkit.margin import class_margins

#: the affine ops the sound output stage folds into its tail (their rounding is charged in
#: :meth:`SoundOutput.jacobian_error`)
TAIL_OPS = ops_where("output_tail")


def squash_charge(graph: Graph, lo: torch.Tensor, hi: torch.Tensor,
                  arithmetic: Arithmetic) -> torch.Tensor:
    r"""Per sample [N], what the logit margin must exceed for the model's own final softmax
    or log-softmax, in its arithmetic, to keep the order of the two classes
    (``docs/theory/numerics.md`` §4), the logits :math:`z` lying in ``[lo, hi]`` [N, C],
    :math:`\Delta=\max_ih_i-\min_il_i\ge|z_i-z_j|`:

    * log-softmax :math:`(z_i-m)-L` with :math:`L` one number shared by all classes (or
      :math:`z_i-(m+L)`): each of the two class outputs is rounded twice, by at most
      :math:`u(\Delta+\log C+1)`, so the margin needs :math:`2u(2\Delta+\log C+2)`;
    * softmax: each output to a relative :math:`\epsilon=\gamma_{C+12}+3u\Delta+2C\eta`
      (:meth:`SoftmaxRelaxation.evaluation_error`; the largest output is at least
      :math:`1/C`), so the order holds once :math:`e^{z_y-z_j}>(1+\epsilon)/(1-\epsilon)`,
      i.e. a margin of :math:`2\epsilon/(1-\epsilon)`.

    Zero when the model outputs the logits; ``inf`` (radius 0) past two squashes or once
    :math:`\epsilon\ge1/2`."""
    zero = torch.zeros(lo.shape[0], dtype=lo.dtype, device=lo.device)
    node, squashes = graph[graph.output], []
    while node.name != graph.logits.name:
        if node.op in OUTPUT_SQUASH_OPS:
            squashes.append(node.op)
        node = graph.producer(node)
    if not squashes:
        return zero
    if len(squashes) > 1:
        return zero + math.inf
    c = lo.shape[1]
    u = arithmetic.unit
    spread = (hi.amax(1) - lo.amin(1)).clamp(min=0)
    if squashes[0] == "log_softmax":
        out = 2 * u * (2 * spread + math.log(c) + 2)
    else:
        e = arithmetic.gamma(c + 12) + 3 * u * spread + 2 * c * arithmetic.eta
        out = torch.where(e < 0.5, 2 * e / (1 - e), torch.full_like(e, math.inf))
    return out * (1 + 1e-9)


def affine_tail(graph: Graph) -> tuple[list[Node], Node]:
    """The longest chain of affine nodes ending at the logits, and the node feeding it."""
    tail: list[Node] = []
    node = graph.logits
    while node.op in TAIL_OPS and len(node.inputs) == 1:
        prev = graph[node.inputs[0]]
        tail.append(node)
        if prev.op == "input" or len(graph.consumers(prev.name)) != 1:
            node = prev
            break
        node = prev
    return list(reversed(tail)), node


def tail_jacobian(graph: Graph, start: Node) -> torch.Tensor:
    """The constant Jacobian ``A`` [C, numel(start)] of the logits with respect to the
    output of ``start`` (the tail is affine), by one vector-Jacobian product per class."""
    dev = graph.device
    h = torch.zeros((1, *start.out_shape), dtype=torch.float64, device=dev, requires_grad=True)
    logits_name = graph.logits.name
    with torch.enable_grad():  # certify may be called under torch.no_grad()
        values, _ = graph.evaluate({start.name: h}, {logits_name})
    captured = {"f": values[logits_name]}
    rows = []
    with torch.enable_grad():
        f = captured["f"].reshape(-1)
        for c in range(f.shape[0]):
            if not f.requires_grad:
                rows.append(torch.zeros_like(h).reshape(-1))
                continue
            (g,) = torch.autograd.grad(f[c], h, retain_graph=True, allow_unused=True)
            rows.append(torch.zeros_like(h).reshape(-1) if g is None else g.reshape(-1))
    return torch.stack(rows).detach()


def pair_norms(a: torch.Tensor) -> torch.Tensor:
    """``||A_c - A_c'||`` for all class pairs [C, C], inflated to upper bounds (the
    Jacobian of an affine tail is exact up to the rounding of a few products, covered by
    the relative inflation)."""
    diff = a.unsqueeze(0) - a.unsqueeze(1)
    return inflate(diff.norm(dim=2), rtol=1e-8)


def margins(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Predicted class and the margins ``f_c - f_c'`` [N, C] (``inf`` at c itself)."""
    label = logits.argmax(dim=1)
    return label, class_margins(logits, label)


class SoundOutput:
    """Sound output stage over the affine tail (see module docstring)."""

    def __init__(self, graph: Graph) -> None:
        self.tail, self.start = affine_tail(graph)
        self.nodes = self.tail

    def jacobian(self, graph: Graph) -> torch.Tensor:
        """The tail's constant Jacobian ``A`` [C, numel(start)] (the identity when the logits
        node itself is not affine), computed once per model."""
        key = ("tail_jacobian", self.start.name)
        if key not in graph.cache:
            if self.tail:
                graph.cache[key] = tail_jacobian(graph, self.start)
            else:
                c = graph.num_classes
                graph.cache[key] = torch.eye(c, dtype=torch.float64, device=graph.device)
        return graph.cache[key]

    def norms(self, graph: Graph) -> torch.Tensor:
        """Upper bounds on ``||A_c - A_c'||`` [C, C], rounding of ``A`` included."""
        key = ("tail_pair_norms", self.start.name)
        if key not in graph.cache:
            err = 2.0 * self.jacobian_error(graph) if self.tail else 0.0
            graph.cache[key] = pair_norms(self.jacobian(graph)) + err
        return graph.cache[key]

    def jacobian_error(self, graph: Graph) -> float:
        """Bound on ``||A_hat - A||_2`` for the float64 Jacobian of the tail: entry-wise
        ``|E| <= gamma_k |T_m| ... |T_1|`` (Higham 2002, Sec. 3.5), so
        ``||E||_2 <= gamma_k prod ||abs(T_i)||_2``; each row difference errs by at most
        twice that."""
        from boundkit.bounds.conv import schur_bound_conv
        from boundkit.bounds.linear import schur_bound
        from boundkit.bounds.registry import get_rule

        prod, fan = 1.0, 1
        for n in self.tail:
            if n.op == "linear":
                prod *= schur_bound(n.params["weight"])
                fan += n.params["weight"].shape[1]
            elif n.op == "conv2d":
                w = n.params["weight"]
                prod *= schur_bound_conv(w)
                fan += w.shape[1] * w.shape[2] * w.shape[3]
            elif n.op in ("batchnorm", "avgpool2d"):
                prod *= get_rule(n.op, "sound").lipschitz(n, graph)  # type: ignore[union-attr]
                fan += 2 if n.op == "batchnorm" else math.prod(n.attrs["kernel_size"])
            elif n.op == "conv_transpose2d":
                w = n.params["weight"]
                prod *= schur_bound_conv(w)
                fan += (w.shape[0] + w.shape[1]) * w.shape[2] * w.shape[3]
            elif n.op == "resize":
                prod *= get_rule(n.op, "sound").lipschitz(n, graph)  # type: ignore[union-attr]
                fan += math.prod(n.in_shapes[0][1:])
            elif n.op in ("adaptive_avgpool2d", "mean", "sum"):
                from boundkit.bounds.average import window_size

                prod *= get_rule(n.op, "sound").lipschitz(n, graph)  # type: ignore[union-attr]
                fan += window_size(n)
        return float(gamma(fan)) * prod

    def kappa(
        self, graph: Graph, logits: torch.Tensor, rounding: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(kappa at the tail input, label, runner-up, margin) per sample."""
        label, m = margins(logits)
        m_safe = m - math.sqrt(2.0) * rounding.unsqueeze(1)
        n = self.norms(graph)[label]  # [N, C]
        ratio = torch.where(
            m_safe > 0,
            torch.where(n > 0, m_safe / n, torch.full_like(n, math.inf)),
            torch.zeros_like(n),
        )
        ratio.scatter_(1, label.unsqueeze(1), math.inf)
        kappa, runner = ratio.min(dim=1)
        margin = m.min(dim=1).values
        return kappa.clamp_min(0.0) * (1 - 2.0**-50), label, runner, margin


class PeckOutput:
    """peck2017 output stage: thesis Lemma 3.5 on the last linear layer."""

    def __init__(self, graph: Graph) -> None:
        node = graph.logits
        if node.op != "linear":
            raise UnsupportedLayerError(
                node.name, node.op, "peck2017",
                "the thesis's output bound (Lemma 3.5) needs a final linear layer",
            )
        self.start = graph[node.inputs[0]]
        self.nodes = [node]
        w = node.params["weight"]
        self.pair = (w.unsqueeze(0) - w.unsqueeze(1)).norm(dim=2)

    def kappa(
        self, graph: Graph, logits: torch.Tensor, rounding: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        label, m = margins(logits)
        n = self.pair.to(logits.device)[label]
        ratio = torch.where(n > 0, m.abs() / n, torch.full_like(n, math.inf))
        ratio.scatter_(1, label.unsqueeze(1), math.inf)
        kappa, runner = ratio.min(dim=1)
        return kappa, label, runner, m.min(dim=1).values
