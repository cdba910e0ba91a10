r"""The bound engine: ``certify(model, x, method)``.

Both methods start from the logit margins at ``x`` and carry a bound on the size of a
class-changing perturbation back to the input, node by node (thesis Algorithm 5.1).

* ``"peck2017"``: the thesis's formulas as published, a backward chain of
  :class:`~boundkit.bounds.registry.BackwardRule` (output: Lemma 3.5; fully-connected
  block: Theorem 4.2; convolution 5.1; pooling 5.3; batch norm 5.6; LRN 5.9; flatten
  5.2.5). Several do not hold (``docs/theory/peck2017.md``): these numbers are *not*
  certificates.
* ``"sound"`` (default): every stage contributes a proven modulus of continuity
  (:mod:`boundkit.bounds.modulus`); moduli compose forward over the graph (sums over a
  residual ``add``, quadrature over ``cat``), and the radius is
  :math:`\sup\{t:\omega_{x\to h}(t)<\kappa_h\}` with :math:`\kappa_h` the per-class-pair
  margin bound at the input :math:`h` of the affine tail (:mod:`boundkit.bounds.output`).
  Float64 rounding is bounded and subtracted (:mod:`boundkit.bounds.numerics`).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn as nn

from boundkit.bounds.certificate import Certificate, SampleStatus
from boundkit.bounds.mlp import FC_ACTIVATIONS, SMOOTH_OPS, PeckBlock, SmoothBlock, find_blocks
from boundkit.bounds.modulus import Modulus
from boundkit.bounds.numerics import underflow_error, unsafe_range
from boundkit.bounds.output import PeckOutput, SoundOutput
from boundkit.bounds.registry import BackwardRule, SoundRule, custom_module_ops, get_rule
from boundkit.bounds.structural import merge_factors
from boundkit.errors import InputShapeError, UnsupportedLayerError
from boundkit.graph.cache import check_graph
from boundkit.graph.cache import graph_for as cached_graph
from boundkit.graph.capture import capture as capture_graph
from boundkit.graph.fidelity import check_fidelity
from boundkit.graph.graph import MERGE_OPS, Graph, Node
from boundkit.validate import check_call


def graph_for(model: nn.Module, x: torch.Tensor, device: torch.device | str | None) -> Graph:
    """The graph of ``model`` (:func:`boundkit.graph.cache.graph_for`), with the module
    classes users registered rules for captured as single nodes."""
    return cached_graph(model, x, device, leaf_modules=custom_module_ops())


def capture(
    model: nn.Module,
    example: torch.Tensor | tuple[int, ...],
    *,
    device: torch.device | str | None = None,
) -> Graph:
    """:func:`boundkit.graph.capture` with the module classes users registered rules for
    (:func:`~boundkit.bounds.registry.register_rule`) captured as single nodes."""
    return capture_graph(model, example, device=device, leaf_modules=custom_module_ops())


def check_input(graph: Graph, x: torch.Tensor) -> None:
    """Clear errors for inputs that do not fit the captured model."""
    if not isinstance(x, torch.Tensor):
        raise InputShapeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise InputShapeError(f"x must be a floating-point tensor, got dtype {x.dtype}")
    if tuple(x.shape[1:]) != graph.input_shape:
        raise InputShapeError(
            f"x has shape {tuple(x.shape)}, the model expects [N, "
            f"{', '.join(map(str, graph.input_shape))}]"
        )
    if x.shape[0] == 0:
        raise InputShapeError("x is an empty batch")
    if not torch.isfinite(x).all():
        raise InputShapeError("x contains NaN or infinite values")


# ---------------------------------------------------------------------------- plans
class _NodeStage:
    """A single node with its rule."""

    def __init__(self, node: Node, rule: Any) -> None:
        self.node = node
        self.nodes = [node]
        self.rule = rule

    def needs(self, graph: Graph) -> set[str]:
        return self.rule.needs(self.node, graph)


def _rule(node: Node, method: str) -> Any:
    rule = get_rule(node.op, method)
    if rule is None:
        what = node.attrs.get("module_type", node.target)
        raise UnsupportedLayerError(
            node.name, node.op if node.op != "unknown" else what, method,
            f"module path {node.target!r}: no rule for this node kind; register one with "
            "boundkit.register_rule",
        )
    return rule


def _plan_sound(graph: Graph) -> dict[str, Any]:
    out = SoundOutput(graph)
    covered = {n.name for n in out.tail}
    upstream = [n for n in graph.upstream() if n.name not in covered and n.op != "input"]
    # group (Linear, smooth activation) runs along single-consumer chains
    blocks: list[list[Node]] = []
    i = 0
    while i < len(upstream):
        run: list[Node] = []
        j = i
        while j + 1 < len(upstream):
            lin, act = upstream[j], upstream[j + 1]
            ok = (
                lin.op == "linear"
                and act.op in SMOOTH_OPS
                and act.inputs == [lin.name]
                and graph.consumers(lin.name) == [act.name]
                and (not run or lin.inputs == [run[-1].name])
                and (not run or graph.consumers(run[-1].name) == [lin.name])
            )
            if not ok:
                break
            run += [lin, act]
            j += 2
        if run:
            blocks.append(run)
            i = j
        else:
            i += 1
    in_block = {n.name: b for b in blocks for n in b}
    stages: list[Any] = []
    seen: set[str] = set()
    for n in upstream:
        if n.name in seen:
            continue
        if n.name in in_block:
            b = in_block[n.name]
            stages.append(SmoothBlock(b))
            seen.update(x.name for x in b)
        else:
            stages.append(_NodeStage(n, _rule(n, "sound")))
            seen.add(n.name)
    for n in upstream:  # nodes inside smooth blocks still need their own rule (rounding)
        _rule(n, "sound")
    return {"output": out, "stages": stages}


def _plan_peck(graph: Graph) -> dict[str, Any]:
    chain = graph.path_to_logits()
    if chain is None:
        merge = next((n for n in graph.upstream() if len(n.inputs) > 1), graph.logits)
        raise UnsupportedLayerError(
            merge.name, merge.op, "peck2017",
            "the thesis's backward pass (Algorithm 5.1) handles chains only; "
            "use method='sound' for residual or concatenating graphs",
        )
    out = PeckOutput(graph)
    body = chain[1:-1]  # without input and the output linear
    stages: list[Any] = []
    blocks = find_blocks(body, FC_ACTIVATIONS)
    tail_block = blocks[-1] if blocks and blocks[-1][-1] is body[-1] else None
    rest = body[: len(body) - len(tail_block)] if tail_block else body
    for n in rest:
        stages.append(_NodeStage(n, _rule(n, "peck2017")))
    if tail_block:
        stages.append(PeckBlock(tail_block))
    return {"output": out, "stages": stages}


def _plan(graph: Graph, method: str) -> dict[str, Any]:
    key = ("plan", method)
    if key not in graph.cache:
        if method == "sound":
            graph.cache[key] = _plan_sound(graph)
        elif method == "peck2017":
            graph.cache[key] = _plan_peck(graph)
        else:
            raise ValueError(f"unknown method {method!r}; choose 'sound' or 'peck2017'")
    return graph.cache[key]


# ---------------------------------------------------------------------------- passes
def _rounding_errors(
    graph: Graph, norms: dict[str, torch.Tensor], bsz: int
) -> dict[str, torch.Tensor]:
    """Per-node upper bounds on the L2 error of the float64 forward pass at x."""
    dev = graph.device
    err: dict[str, torch.Tensor] = {}
    for n in graph.upstream():
        if n.op == "input":
            err[n.name] = torch.zeros(bsz, dtype=torch.float64, device=dev)
            continue
        rule = _rule(n, "sound")
        assert isinstance(rule, SoundRule)
        ins = [err[i] for i in n.inputs]
        lip = rule.lipschitz(n, graph)
        if n.op in MERGE_OPS:
            factors = merge_factors(n)
            if n.op == "cat":
                carried = torch.sqrt(sum(e * e for e in ins))
            else:
                carried = sum(f * e for f, e in zip(factors, ins))
            in_norm = sum(f * norms[i] for f, i in zip(factors, n.inputs))
            shift = n.attrs.get("shift")
            if shift is not None:
                in_norm = in_norm + float(shift.broadcast_to(n.out_shape).norm())
        else:
            carried = lip * ins[0] if ins else torch.zeros(bsz, dtype=torch.float64, device=dev)
            in_norm = norms[n.inputs[0]] if n.inputs else torch.zeros_like(carried)
        inj = rule.rounding(n, graph, in_norm, norms[n.name]) + underflow_error(n)
        dev_bound = getattr(rule, "deviation", None)
        extra = dev_bound(n, graph) if dev_bound is not None else 0.0
        err[n.name] = (carried + inj + extra) * (1 + 1e-6)
    return err


def _stage_modulus(stage: Any, graph: Graph, acts: dict[str, torch.Tensor]) -> Modulus:
    if isinstance(stage, SmoothBlock):
        return stage.modulus(graph, acts)
    return stage.rule.modulus(stage.node, graph, acts)


def _compose_forward(
    graph: Graph,
    stages: list[Any],
    mods: dict[str, Modulus],
    source: str,
) -> dict[str, Modulus]:
    """Moduli from the output of ``source`` to every stage output, moving ``source`` alone."""
    omega: dict[str, Modulus] = {source: Modulus.identity()}
    for st in stages:
        first, last = st.nodes[0], st.nodes[-1]
        if first.op in MERGE_OPS:
            parts = [omega.get(i) for i in first.inputs]
            if all(p is None for p in parts):
                continue
            factors = merge_factors(first)
            scaled = [
                (p if p is not None else Modulus.zero()).scale(f) for p, f in zip(parts, factors)
            ]
            if first.op == "add":
                total = scaled[0]
                for p in scaled[1:]:
                    total = total + p
                omega[last.name] = total
            else:
                omega[last.name] = Modulus.euclid(scaled)
            continue
        inner = omega.get(first.inputs[0])
        if inner is None:
            continue
        omega[last.name] = mods[last.name].compose(inner)
    return omega


def _certify_sound(
    graph: Graph,
    xb: torch.Tensor,
    plan: dict[str, Any],
    want_trace: bool,
    extra_needs: set[str] | None = None,
) -> tuple[Any, ...]:
    """(radius, label, runner-up, margin, trace, activations, unsafe); the activations
    include the rounding bounds as ``__err__<node>`` and the nodes of ``extra_needs``;
    ``unsafe`` [N] marks samples whose values leave float64's safe range
    (:func:`~boundkit.bounds.numerics.unsafe_range`)."""
    out: SoundOutput = plan["output"]
    stages = plan["stages"]
    needs: set[str] = set(extra_needs or ())
    for st in stages:
        needs |= st.needs(graph)
    peaks: dict[str, torch.Tensor] = {}
    acts, norms = graph.activations_and_norms(xb, needs | {out.start.name}, peaks=peaks)
    bsz = xb.shape[0]
    err = _rounding_errors(graph, norms, bsz)
    unsafe = unsafe_range(graph, peaks)
    for name, e in err.items():
        acts[f"__err__{name}"] = e
    logits = acts[graph.logits.name]
    kappa, label, runner, margin = out.kappa(graph, logits, err[graph.logits.name])
    mods = {}
    for st in stages:
        if st.nodes[0].op in MERGE_OPS:
            continue
        mods[st.nodes[-1].name] = _stage_modulus(st, graph, acts)
    source = graph.input.name
    omega = _compose_forward(graph, stages, mods, source)
    target = out.start.name
    if target == source:
        radius = kappa
    elif target in omega:
        radius = omega[target].inverse(kappa)
    else:  # the logits do not depend on the input
        radius = torch.full_like(kappa, math.inf)
    trace: dict[str, torch.Tensor] = {}
    if want_trace:
        trace[source] = radius
        chain = graph.path_to_logits() is not None and not any(
            st.nodes[0].op in MERGE_OPS for st in stages
        )
        if chain:
            # backward: kappa at a stage's input = inverse of its modulus at its output's kappa
            k = kappa
            trace_rev = [(target, kappa)]
            for st in reversed(stages):
                k = mods[st.nodes[-1].name].inverse(k)
                trace_rev.append((st.nodes[0].inputs[0], k))
            for name, val in reversed(trace_rev):
                if name != source:
                    trace[name] = val
        else:
            for st in stages:
                v = st.nodes[-1].name
                om = _compose_forward(graph, stages, mods, v)
                trace[v] = om[target].inverse(kappa) if target in om else kappa
            trace[target] = kappa
    return radius, label, runner, margin, trace, acts, unsafe


def _certify_peck(
    graph: Graph, xb: torch.Tensor, plan: dict[str, Any], want_trace: bool
) -> tuple[torch.Tensor, ...]:
    out: PeckOutput = plan["output"]
    stages = plan["stages"]
    needs: set[str] = set()
    for st in stages:
        needs |= st.needs(graph)
    acts = graph.activations(xb, needs)
    logits = acts[graph.logits.name]
    kappa, label, runner, margin = out.kappa(graph, logits)
    unsafe = torch.zeros_like(kappa, dtype=torch.bool)
    trace_rev = [(out.start.name, kappa)]
    k = kappa
    for st in reversed(stages):
        if isinstance(st, PeckBlock):
            k = st.backward(graph, k, acts)
        else:
            rule = st.rule
            assert isinstance(rule, BackwardRule)
            k = rule.backward(st.node, graph, k, acts)
        trace_rev.append((st.nodes[0].inputs[0], k))
    trace = {name: val for name, val in reversed(trace_rev)} if want_trace else {}
    return k, label, runner, margin, trace, acts, unsafe


def certify(
    model: nn.Module,
    x: torch.Tensor,
    method: str = "sound",
    *,
    device: torch.device | str | None = None,
    batch_size: int = 1024,
    trace: bool = True,
    graph: Graph | None = None,
    executor: Any = None,
) -> Certificate:
    """Certify the L2 robustness of ``model`` at every sample of ``x``.

    Args:
        model: a classifier in eval mode returning logits ``[N, C]`` (a final softmax or
            log-softmax is allowed).
        x: inputs ``[N, *input_shape]`` (any float dtype; computations are float64).
        method: ``"sound"`` (default; a proven lower bound on the minimal class-changing
            perturbation), ``"sound-local"`` (``sound`` refined by ReLU stability on the
            certified ball, :mod:`boundkit.bounds.local`: tighter on ReLU networks, costs
            per-sample eigen-solves) or ``"peck2017"`` (the thesis's formulas, not a
            guarantee).
        device: where to compute (default: the model's device).
        batch_size: samples per chunk (bounds memory; results do not depend on it).
        trace: keep the per-node bounds (``Certificate.trace``).
        graph: a graph from :func:`boundkit.capture` to reuse.
        executor: run on a cluster instead, e.g. a
            :class:`boundkit.distributed.RayExecutor` (identical radii and traces).

    Returns:
        a :class:`~boundkit.Certificate`.

    Raises:
        UnsupportedLayerError: a node without a rule for ``method`` (named in the message).
        TrainingModeError, NonFiniteParameterError, InputShapeError: bad model or input.
    """
    check_call(model, x, device=device, counts={"batch_size": batch_size}, run=graph is None)
    if not isinstance(x, torch.Tensor):
        raise InputShapeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() < 2:
        raise InputShapeError(f"x must be a batch [N, ...], got shape {tuple(x.shape)}")
    if executor is not None:
        return executor.certify(model, x, method, device=device)
    if graph is None:
        graph = graph_for(model, x, device)
    else:
        check_graph(graph, model)
        if device is not None and graph.device != torch.device(device):
            graph.to(device)
    check_input(graph, x)
    if method not in ("sound", "sound-local", "peck2017"):
        raise ValueError(
            f"unknown method {method!r}; choose 'sound', 'sound-local' or 'peck2017'"
        )
    base = "sound" if method == "sound-local" else method
    plan = _plan(graph, base)
    parts: list[tuple[Any, ...]] = []
    statuses: list[torch.Tensor] = []
    model_labels: list[torch.Tensor] = []
    for s in range(0, x.shape[0], batch_size):
        xb = x[s : s + batch_size].to(graph.device)
        if method == "sound-local":
            from boundkit.bounds.local import local_needs, refine

            part = _certify_sound(graph, xb, plan, trace, local_needs(graph, plan["output"]))
            part = (refine(graph, plan["output"], part[5], part[0]), *part[1:])
        elif base == "sound":
            part = _certify_sound(graph, xb, plan, trace)
        else:
            part = _certify_peck(graph, xb, plan, trace)
        acts, unsafe = part[5], part[6]
        fid = check_fidelity(model, graph, xb, acts[graph.output])
        status = torch.full_like(fid.model_label, SampleStatus.OK, dtype=torch.int8)
        status[fid.near_tie] = SampleStatus.MODEL_NEAR_TIE
        status[~fid.agrees] = SampleStatus.MODEL_DISAGREES
        status[unsafe] = SampleStatus.UNSAFE_NUMERICS
        statuses.append(status)
        model_labels.append(fid.model_label)
        parts.append(part[:5])
    radius = torch.cat([p[0] for p in parts]).to(torch.float64)
    status = torch.cat(statuses).cpu()
    if base == "sound":
        radius = torch.nan_to_num(radius, nan=0.0).clamp_min(0.0)
    radius = torch.where(status.to(radius.device) != SampleStatus.OK, 0.0, radius)
    label = torch.cat([p[1] for p in parts])
    runner = torch.cat([p[2] for p in parts])
    margin = torch.cat([p[3] for p in parts])
    tr: dict[str, torch.Tensor] = {}
    if trace:
        for name in parts[0][4]:
            tr[name] = torch.cat([p[4][name] for p in parts])
        order = {n.name: i for i, n in enumerate(graph.nodes)}
        tr = dict(sorted(tr.items(), key=lambda kv: order.get(kv[0], 0)))
    return Certificate(
        radius=radius,
        label=label,
        runner_up=runner,
        margin=margin,
        trace=tr,
        method=method,
        node_ops={n: graph[n].op for n in tr},
        info={"nodes": len(graph), "num_classes": graph.num_classes},
        status=status,
        model_label=torch.cat(model_labels).cpu(),
        is_guarantee=method != "peck2017",
    )
