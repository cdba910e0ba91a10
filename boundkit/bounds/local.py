r"""``method="sound-local"``: the sound certificate refined by ReLU stability on the ball.

The global method multiplies Lipschitz constants that hold everywhere. Near a given
:math:`x` most ReLUs cannot switch: on the ball :math:`\|r\|\le\varepsilon`, a neuron with
pre-activation :math:`z_j(x)<-\rho_j(\varepsilon)` (its largest possible change) stays
off, so it contributes nothing to the output's change. For a chain ending in
``Linear -> ReLU -> ... -> Linear -> ReLU -> affine tail`` (any Lipschitz prefix before the
first such layer), with :math:`U_l(\varepsilon)` the neurons of ReLU layer :math:`l` that
are not provably off and :math:`P_U` the coordinate projection (``docs/theory/local.md``):

.. math::
   s_0=L_{\text{prefix}}\,\varepsilon,\qquad
   \rho_{l,j}=\|(V_l)_{j,U_{l-1}}\|\,s_{l-1},\qquad
   U_l=\{j: z_{l,j}(x)\ge-\rho_{l,j}-e_{l}\},\qquad
   s_l=\|P_{U_l}V_lP_{U_{l-1}}\|_2\,s_{l-1},

where :math:`e_l` bounds the float64 rounding of :math:`z_l`. By induction every neuron
outside :math:`U_l` is off at every :math:`x+r`, and :math:`\|h_l(x+r)-h_l(x)\|\le s_l`
with the change supported on :math:`U_l`. With the tail's Jacobian :math:`A`, the margin
to class :math:`c'` stays positive while
:math:`m_{c'}>\|(A_c-A_{c'})_{U_L}\|\,s_L(\varepsilon)`. Every quantity grows with
:math:`\varepsilon` (larger balls free more neurons; submatrix norms grow with the index
set), so the certified set of radii is an interval and a per-sample bisection finds its
end; the returned radius is the largest bisection point that passed (a proof for it), and
never less than the global ``sound`` radius.

Masked spectral norms are exact (float64 symmetric eigensolver on the masked Gram matrix)
for layers of at most :data:`EXACT_MASK_LIMIT` neurons; wider layers use the smaller of the
global norm and a Gershgorin bound on the masked Gram matrix (both upper bounds).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from boundkit.bounds.linear import spectral_norm
from boundkit.bounds.method import BatchResult, Method, register_method
from boundkit.bounds.numerics import inflate, round_down
from boundkit.bounds.output import SoundOutput
from boundkit.bounds.registry import SoundRule, get_rule
from boundkit.bounds.sound import (
    RoundingErrors,
    SoundPlan,
    finalize_radius,
    model_error,
    plan_sound,
    sound_pass,
)
from boundkit.graph.graph import Graph, Node
from boundkit.margin import class_margins

#: ReLU layers up to this width get exact masked spectral norms (per-sample eigensolves)
EXACT_MASK_LIMIT = 256


def relu_pairs(
    graph: Graph, out: SoundOutput
) -> tuple[list[Node], list[tuple[Node, Node]]] | None:
    """Split the chain before the affine tail into a Lipschitz prefix and a suffix of
    (Linear, ReLU) pairs; ``None`` when the structure does not fit."""
    chain = graph.path_to_logits()
    if chain is None:
        return None
    body = [n for n in chain[1:] if n.name not in {t.name for t in out.tail}]
    pairs: list[tuple[Node, Node]] = []
    i = len(body)
    while (i >= 2 and body[i - 1].op == "relu" and body[i - 2].op == "linear"
           and len(body[i - 2].in_shapes[0]) == 1):  # the pairs' matrices act on vectors
        pairs.insert(0, (body[i - 2], body[i - 1]))
        i -= 2
    if not pairs:
        return None
    return body[:i], pairs


def _masked_norm(gram: torch.Tensor, mask: torch.Tensor, global_norm: float) -> torch.Tensor:
    """Upper bound of ``||P_U V P_W||`` from the (column-masked) Gram matrix ``V P_W V^T``
    [N, n, n] (or [n, n]) and the row mask ``U`` [N, n]; never above ``global_norm``."""
    m = mask.to(gram.dtype)
    g = gram * m.unsqueeze(1) * m.unsqueeze(2) if gram.dim() == 3 else (
        gram.unsqueeze(0) * m.unsqueeze(1) * m.unsqueeze(2)
    )
    n = g.shape[-1]
    if n <= EXACT_MASK_LIMIT:
        lam = torch.linalg.eigvalsh(g)[:, -1].clamp_min(0.0)
    else:  # Gershgorin: lambda_max <= max_i sum_j |G_ij|
        lam = g.abs().sum(2).max(1).values
    return torch.clamp(inflate(torch.sqrt(lam * (1 + 1e-12))), max=global_norm)


def local_needs(graph: Graph, out: SoundOutput) -> set[str]:
    """Activations :func:`refine` reads: the pre-activations of the (Linear, ReLU) pairs."""
    split = relu_pairs(graph, out)
    return set() if split is None else {lin.name for lin, _ in split[1]}


def refine(
    graph: Graph,
    out: SoundOutput,
    acts: dict[str, torch.Tensor],
    err: RoundingErrors,
    base_radius: torch.Tensor,
    steps: int = 30,
    extra: torch.Tensor | None = None,
) -> torch.Tensor:
    """The sound-local radius (never below ``base_radius``), from the activations and
    rounding bounds of the sound pass at the same inputs; ``extra`` [N] adds to the logits'
    rounding (the model's own, :func:`~boundkit.bounds.sound.model_error`)."""
    split = relu_pairs(graph, out)
    if split is None:
        return base_radius
    prefix, pairs = split
    prefix_lip = 1.0
    for n in prefix:
        rule = get_rule(n.op, "sound")
        if not isinstance(rule, SoundRule) or rule.merges:
            return base_radius
        prefix_lip *= rule.lipschitz(n, graph)  # type: ignore[union-attr]
    bsz = base_radius.shape[0]
    logits = acts[graph.logits.name]
    a_rows = out.jacobian(graph)
    # the computed rows of A err by at most jacobian_error each; a pair difference by twice
    a_err = 2.0 * out.jacobian_error(graph) if out.tail else 0.0
    label = logits.argmax(1)
    rounding = err[graph.logits.name] + (0.0 if extra is None else extra)
    margin = class_margins(logits, label) - math.sqrt(2.0) * rounding[:, None]
    # margin: [N, C], inf at the label
    diff0 = a_rows[label].unsqueeze(1) - a_rows.unsqueeze(0)  # [N, C, n_L]
    diff = diff0.abs()
    weights = [lin.params["weight"] for lin, _ in pairs]
    grams_full = [w @ w.T for w in weights]
    globals_ = [spectral_norm(w) for w in weights]

    def certified(eps: torch.Tensor) -> torch.Tensor:
        s = eps * inflate(prefix_lip)
        prev_mask: torch.Tensor | None = None
        states: list[tuple[torch.Tensor, torch.Tensor]] = []  # (can be on, surely on)
        for (lin, _), w, g_full, gn in zip(pairs, weights, grams_full, globals_):
            z = acts[lin.name]
            if prev_mask is None:
                row_norm = w.norm(dim=1).unsqueeze(0).expand(bsz, -1)
                gram = g_full
            else:
                pm = prev_mask.to(w.dtype)
                row_norm = torch.sqrt(((w * w).unsqueeze(0) * pm.unsqueeze(1)).sum(2))
                gram = torch.einsum("ik,nk,jk->nij", w, pm, w)
            rho = inflate(row_norm) * s.unsqueeze(1)
            slack = rho + err[lin.name].unsqueeze(1) * 1.0001
            mask = z >= -slack
            states.append((mask, z > slack))
            s = _masked_norm(gram, mask, gn) * s
            prev_mask = mask
        assert prev_mask is not None
        pair = torch.sqrt((diff * diff * prev_mask.unsqueeze(1).to(diff.dtype)).sum(2))
        pair = inflate(pair, rtol=1e-8)
        need = torch.minimum(pair * s.unsqueeze(1), _interval_lipschitz(states, weights, diff0)
                             * inflate(prefix_lip) * eps.unsqueeze(1))
        need = need + a_err * s.unsqueeze(1)  # |(A_hat - A) dh_L| <= a_err * s_L
        own = torch.arange(margin.shape[1], device=margin.device)[None, :] == label[:, None]
        ok = (margin > need) | own
        return ok.all(1)

    lo = base_radius.clone()
    lo = torch.where(torch.isfinite(lo), lo, torch.zeros_like(lo))
    # upper end of the bracket: radius where every neuron is free is the global one; grow
    hi = torch.where(lo > 0, lo * 64.0, torch.full_like(lo, 1e-3))
    for _ in range(12):  # extend the bracket while hi still certifies
        ok = certified(hi)
        if not bool(ok.any()):
            break
        lo = torch.where(ok, hi, lo)
        hi = torch.where(ok, hi * 8.0, hi)
    for _ in range(steps):
        mid = 0.5 * (lo + hi)
        ok = certified(mid)
        lo = torch.where(ok, mid, lo)
        hi = torch.where(ok, hi, mid)
    return torch.maximum(round_down(lo), base_radius)


def _interval_lipschitz(
    states: list[tuple[torch.Tensor, torch.Tensor]],
    weights: list[torch.Tensor],
    u: torch.Tensor,
) -> torch.Tensor:
    r"""Upper bound [N, C] of the gradient norm of every pairwise margin over the ball.

    On the ball, the gradient of :math:`(A_c-A_{c'})h_L` with respect to the prefix output is
    :math:`V_1^TD_1\cdots V_L^TD_L(A_c-A_{c'})^T` with each :math:`D_l` diagonal, its entries
    0 (provably off), 1 (provably on) or anywhere in [0, 1] (unstable). Carry an interval
    vector backwards: :math:`d\cdot[l,h]` for :math:`d\in[0,1]` is
    :math:`[\min(0,l),\max(0,h)]`, and :math:`V^T[l,h]` has centre :math:`V^Tc` and radius
    :math:`|V|^Tr` (interval arithmetic, Moore 1966); the norm of the gradient is at most the
    norm of the entry-wise largest magnitudes (Fast-Lip, Weng et al. 2018, in L2)."""
    lo, hi = u, u
    for (can_on, sure_on), w in zip(reversed(states), reversed(weights)):
        off = (~can_on).unsqueeze(1)
        unstable = (can_on & ~sure_on).unsqueeze(1)
        lo = torch.where(off, torch.zeros_like(lo), torch.where(unstable, lo.clamp(max=0), lo))
        hi = torch.where(off, torch.zeros_like(hi), torch.where(unstable, hi.clamp(min=0), hi))
        c, r = (lo + hi) * 0.5, (hi - lo) * 0.5
        gc, gr = c @ w, r @ w.abs()
        lo, hi = gc - gr, gc + gr
    mag = torch.maximum(lo.abs(), hi.abs())
    return inflate(mag.norm(dim=2), rtol=1e-8)


class SoundLocalMethod(Method):
    """``sound`` refined by ReLU stability on the certified ball (see module docstring)."""

    name = "sound-local"
    is_guarantee = True
    description = "sound refined by ReLU stability on the ball (tighter on ReLU nets)"

    def prepare(self, graph: Graph) -> SoundPlan:
        return plan_sound(graph)

    def run(self, graph: Graph, x: torch.Tensor, plan: Any, *, trace: bool,
            **options: Any) -> BatchResult:
        sp = sound_pass(graph, x, plan, trace, local_needs(graph, plan.output))
        res = sp.result
        exact = refine(graph, plan.output, sp.acts, sp.errors, res.radius)
        # the model's own rounding over the ball of the exact network's radius
        # (sound.model_error) bounds it over the smaller ball found with it
        extra = model_error(graph, sp.norms, exact, sp.acts[graph.logits.name], x)
        res.radius = refine(graph, plan.output, sp.acts, sp.errors, res.radius, extra=extra)
        return finalize_radius(res)


register_method(SoundLocalMethod())
