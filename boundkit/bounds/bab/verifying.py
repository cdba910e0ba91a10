r"""``bk.verify``: per sample, *verified* (every domain of the branch and bound proven: no
perturbation of L2 norm below the radius, inside the box, changes the class), *falsified*
(a counterexample inside the ball and the box, checked by re-running the model in its own
dtype) or *unknown* (budget spent, with the reason and the radius certified on the way)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from boundkit.bounds.bab import options as _clock
from boundkit.bounds.bab.bounding import BabPlan, bab_plan
from boundkit.bounds.bab.counterexample import pgd_counterexample
from boundkit.bounds.bab.inputsplit import (
    InputSplit,
    InputSplitPlan,
    RegionRun,
    input_split_plan,
    resolve_split,
)
from boundkit.bounds.bab.loop import Reason, Verdict
from boundkit.bounds.bab.options import NEVER, BabOptions, Split, check_options
from boundkit.bounds.bab.search import BranchAndBound
from boundkit.bounds.crown import CrownRun
from boundkit.bounds.output import margins
from boundkit.errors import BadArgumentError, UnsupportedLayerError
from boundkit.graph.graph import Graph


@dataclass
class VerifyResult:
    """Per sample: the ``verdict`` (int8 :class:`Verdict` codes; ``status`` spells them:
    ``"verified"``: no perturbation of L2 norm below ``radius`` inside the box changes the
    class; ``"falsified"``: ``counterexample`` does, checked on the model; ``"unknown"``),
    ``why`` (int8 :class:`Reason` codes; ``reason`` is their text), the class ``label``,
    the counterexample (in the model's dtype) and its float64 norm (the clean input and
    ``inf`` where none), the subproblems bounded, the seconds charged and the radius
    certified on the way."""

    radius: torch.Tensor
    label: torch.Tensor
    verdict: torch.Tensor
    why: torch.Tensor
    counterexample: torch.Tensor
    counterexample_norm: torch.Tensor
    domains: torch.Tensor
    seconds: torch.Tensor
    #: per sample, a radius proven on the way: ``radius`` where verified; where unknown,
    #: the smallest radius the open subproblems certify (their bounds hold on every
    #: smaller ball), possibly 0; 0 where falsified; ``inf`` where that radius's ball
    #: holds the whole box (:attr:`~boundkit.bounds.crown.CrownRun.reach`): the class is
    #: constant on the box, every radius is certified (as ``crown`` reports it)
    certified: torch.Tensor = field(default_factory=lambda: torch.zeros(0))

    @property
    def status(self) -> list[str]:
        """Per sample ``"verified"``, ``"falsified"`` or ``"unknown"``."""
        return [Verdict(v).word for v in self.verdict.tolist()]

    @property
    def reason(self) -> list[str]:
        """Per sample, why its verdict is what it is (:meth:`Reason.describe`)."""
        return [Reason(v).describe() for v in self.why.tolist()]

    @property
    def verified(self) -> torch.Tensor:
        return self.verdict == Verdict.VERIFIED

    @property
    def falsified(self) -> torch.Tensor:
        return self.verdict == Verdict.FALSIFIED


def verify_graph(model: nn.Module | None, graph: Graph, x: torch.Tensor, radius: torch.Tensor,
                 box: tuple[float, float] | None, options: BabOptions,
                 attack_steps: int = 40, budget: torch.Tensor | None = None,
                 plan: BabPlan | None = None, tick: Callable[[float], None] | None = None,
                 max_domains: torch.Tensor | None = None, run: CrownRun | None = None
                 ) -> VerifyResult:
    """:func:`verify` on a captured graph (inputs checked by the caller). Without
    ``model`` no counterexample is searched (and the labels are the graph's). ``tick``:
    called with the seconds of every batch of the search (progress bars).
    ``budget`` / ``max_domains`` [N]: per-sample seconds / subproblems (default: the
    options'). ``run``: a :class:`CrownRun` (a :class:`RegionRun` when the input is split)
    of ``plan.crown`` on these very ``x`` and ``box`` made by the caller (several calls on
    the same samples then share its sound pass); by default a new one."""
    by_input = resolve_split(options.split, graph) == Split.INPUT
    try:
        if by_input:  # sub-boxes of the input (inputsplit.py)
            plan = plan if isinstance(plan, InputSplitPlan) else input_split_plan(graph)
        elif plan is None or isinstance(plan, InputSplitPlan):
            plan = bab_plan(graph)
    except UnsupportedLayerError as exc:
        raise exc.for_method("bab") from None
    x0 = x.to(device=graph.device, dtype=torch.float64)
    radius = radius.to(device=graph.device, dtype=torch.float64)
    n = x0.shape[0]
    kind = RegionRun if by_input else CrownRun
    if run is None:
        run = kind(graph, plan.crown, x0, box)
    elif (type(run) is not kind or run.plan is not plan.crown or run.box != box
          or not torch.equal(run.x0, x0)):
        raise BadArgumentError("verify_graph: the run given was made for other samples, "
                               "box, plan or split")
    label, _ = margins(run.sound.acts[graph.logits.name])
    model_label = label
    if model is not None:
        with torch.no_grad():
            model_label = model(x.to(next((p.device for p in model.parameters()), x.device),
                                    next((p.dtype for p in model.parameters()), x.dtype))
                                ).argmax(1).to(label.device)
    verdict = torch.full((n,), Verdict.OPEN, dtype=torch.int8)
    why = torch.full((n,), Reason.NONE, dtype=torch.int8)

    def decide(rows: torch.Tensor, v: Verdict, r: Reason) -> None:
        """Give the still open samples among ``rows`` (bool [N]) the verdict ``v``, ``r``."""
        rows = rows & (verdict == Verdict.OPEN)
        verdict[rows], why[rows] = v, r

    # counterexamples in the model's dtype: the very points the model was re-run on
    mdtype = x.dtype if model is None else next((p.dtype for p in model.parameters()), x.dtype)
    cex = x.detach().to(mdtype).clone()
    cex_norm = torch.full((n,), math.inf, dtype=torch.float64)
    domains = torch.zeros(n, dtype=torch.long)
    seconds = torch.zeros(n, dtype=torch.float64)
    certified = torch.zeros(n, dtype=torch.float64)
    outside = torch.zeros(n, dtype=torch.bool)
    if box is not None:
        flat = x0.flatten(1)
        outside = ~((flat >= box[0]) & (flat <= box[1])).all(1).cpu()
    decide((model_label != label).cpu(), Verdict.UNKNOWN, Reason.NEAR_TIE)
    decide(outside, Verdict.UNKNOWN, Reason.OUTSIDE_BOX)
    decide((radius == 0).cpu(), Verdict.VERIFIED, Reason.RADIUS_ZERO)
    todo = verdict == Verdict.OPEN
    if model is not None and attack_steps > 0 and bool(todo.any()):
        t0 = _clock.now()
        sel = torch.nonzero(todo).flatten()
        found, xa, nm = pgd_counterexample(model, x[sel], label[sel.to(label.device)],
                                           radius[sel.to(radius.device)], box, steps=attack_steps)
        seconds[sel] += (_clock.now() - t0) / max(1, sel.numel())
        hit = found.cpu()
        decide(torch.zeros(n, dtype=torch.bool).index_fill_(0, sel[hit], True),
               Verdict.FALSIFIED, Reason.ATTACK)
        cex[sel[hit].to(cex.device)] = xa[hit.to(xa.device)].to(cex)
        cex_norm[sel[hit]] = nm[hit.to(nm.device)].detach().cpu().to(torch.float64)
    todo = verdict == Verdict.OPEN
    if bool(todo.any()):
        bb = (InputSplit if by_input else BranchAndBound)(graph, plan, run, label, radius,
                                                          options)
        sol = bb.solve(todo.to(radius.device), budget, tick, max_domains)
        verdict[todo], why[todo] = sol.verdict[todo], sol.reason[todo]
        certified[todo] = sol.certified[todo]
        domains += sol.domains
        seconds += sol.seconds
    # a proven ball holding the whole box: the class is constant on the box
    certified = torch.where(certified >= run.reach.cpu(), math.inf, certified)
    return VerifyResult(radius.cpu(), label.cpu(), verdict, why, cex, cex_norm, domains,
                        seconds, certified)


def verify(model: nn.Module, x: torch.Tensor, radius: float | torch.Tensor, *,
           box: tuple[float, float] | None = (0.0, 1.0), time_budget: float = 5.0,
           max_domains: int = 20_000, batch: int = 512, iterations: int = 3,
           refresh: int = NEVER, split: Split | str = Split.AUTO,
           device: torch.device | str | None = None) -> VerifyResult:
    r"""Is every input within L2 distance ``radius`` of ``x`` classified like ``x``?

    Per sample: ``"verified"`` (no perturbation of norm below ``radius`` inside ``box``
    changes the class: every subproblem of the branch and bound proven), ``"falsified"``
    (a counterexample inside the ball and the box, checked by re-running the model in its
    own dtype) or ``"unknown"`` (budget spent; ``reason`` says which). "verified" is, like
    every certificate, about the model as it runs in its own dtype (its rounding charged
    at every node, ``docs/theory/numerics.md`` §4) and about the exact-arithmetic network;
    "falsified" about the model as it runs. ``radius``: a number
    or one per sample [N], finite and >= 0. ``time_budget``: seconds of bounding per sample
    (samples are bounded together; each batch's time is charged to its samples);
    ``max_domains``: subproblems per sample; ``batch``: subproblems per engine call;
    ``iterations``: gradient steps on the slopes and beta multipliers per batch;
    ``refresh``: recompute the intermediate bounds under the splits every ``refresh``
    splits (1: every subproblem; larger reuses an ancestor's, cheaper and looser; the
    default: only the root's). ``split``: what is branched on, ``"relu"`` (unstable ReLU
    neurons), ``"input"`` (halves of sub-boxes of the input, for low-dimensional inputs
    and any activation ``crown`` bounds) or ``"auto"`` (the input for a network ReLU
    splitting refuses, e.g. tanh or sigmoid, whose samples have at most
    ``INPUT_SPLIT_MAX_DIM`` = 16 features; the ReLUs otherwise).

    Models: ReLU / LeakyReLU networks of any affine layers (linear, convolution, batch
    norm, average pooling, residual additions) and max poolings (kept relaxed on each
    subproblem's own intervals, not split); a node ReLU splitting neither splits nor
    keeps relaxed (smooth activations, nodes without a linear relaxation) is refused by
    name. Input splitting keeps every ``crown`` relaxation (smooth activations included)
    and refuses only nodes without one.
    """
    from boundkit.bounds.engine import graph_for
    from boundkit.graph.arithmetic import inputs_in
    from boundkit.validate import check_batch, check_box, check_call

    box = check_box(box)
    x = check_call(model, x, device=device, box=box)
    opts = check_options(time_budget, max_domains, batch, iterations, refresh, split)
    n = x.shape[0]
    r = _check_radius(radius, n)
    graph = graph_for(model, x, device)
    check_batch(x, shape=graph.input_shape)
    with inputs_in(x.dtype):  # a model without parameters runs in its inputs' dtype
        return verify_graph(model, graph, x, r, box, opts)


def _check_radius(radius: Any, n: int) -> torch.Tensor:
    """``radius`` as float64 [n]: a finite number >= 0, or one per sample."""
    if isinstance(radius, bool):
        raise BadArgumentError("radius must be a number or a tensor [N], got a bool")
    if isinstance(radius, (int, float)):
        r = torch.full((n,), float(radius), dtype=torch.float64)
    elif isinstance(radius, torch.Tensor):
        r = radius.detach().to(device="cpu", dtype=torch.float64).flatten()
        if r.numel() == 1:
            r = r.expand(n).clone()
        if r.numel() != n:
            raise BadArgumentError(f"radius has {r.numel()} values for {n} samples")
    else:
        raise BadArgumentError(f"radius must be a number or a tensor [N], got "
                               f"{type(radius).__name__}")
    if not bool(torch.isfinite(r).all()) or bool((r < 0).any()):
        raise BadArgumentError("radius must be finite and >= 0")
    return r


