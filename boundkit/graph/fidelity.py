r"""The fidelity check: is the captured graph the function the model computes?

Every certificate is a statement about the float64 graph. Before one is returned, the graph's
output on the very inputs being certified is compared with the model's own forward, run in
the model's own dtype on a copy of the inputs:

* the outputs must agree within a tolerance derived from the model's dtype,
  :math:`|z^{\mathrm{model}}_{ij}-z^{64}_{ij}|\le\sqrt{\epsilon}\,\max_j|z^{64}_{ij}|` (with
  :math:`\epsilon` the dtype's machine epsilon: :math:`3.5\cdot10^{-4}` relative for
  float32, :math:`0.09` for bfloat16, :math:`1.5\cdot10^{-8}` for float64). A real
  discrepancy (a hook, a lost keyword argument, an in-place update the trace misread, stale
  weights) is of the order of the outputs themselves; rounding is orders below.
  A mismatch raises :class:`~boundkit.errors.FidelityError` naming the first node where the
  graph and the model part (intermediate outputs compared through forward hooks on the
  model's layers);
* per sample, the model's own predicted class is reported, and whether the graph's margin
  lies within the model's rounding of a tie (the band :math:`4\,\delta_i+8\epsilon s_i`,
  with :math:`\delta_i` the observed discrepancy and :math:`s_i` the output scale). A
  certificate is worthless for a sample where the model predicts another class or where its
  own rounding can decide the class, and :func:`boundkit.certify` sets those radii to 0.

The check costs one forward pass of the model in its own dtype.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn

from boundkit.errors import FidelityError
from boundkit.graph.graph import Graph
from boundkit.margin import label_margin


@dataclass(frozen=True)
class Fidelity:
    """What the fidelity check saw, per sample.

    Attributes:
        model_label: int64 [N], the class the model itself (in its dtype) predicts.
        agrees: bool [N], the model predicts the graph's class.
        near_tie: bool [N], the graph's top-two margin is within the model's rounding band.
        discrepancy: float64 [N], :math:`\\max_j|z^{\\mathrm{model}}_{ij}-z^{64}_{ij}|`.
        tolerance: float64 [N], the largest discrepancy accepted.
        overflows: bool [N], the model's own dtype overflows on the sample: its output is
            not finite where the float64 graph's is, and some float64 value of the graph
            lies beyond the dtype's largest number (not a mismatch: the model computes
            nothing meaningful there).
    """

    model_label: torch.Tensor
    agrees: torch.Tensor
    near_tie: torch.Tensor
    discrepancy: torch.Tensor
    tolerance: torch.Tensor
    overflows: torch.Tensor


def model_dtype_eps(dtype: torch.dtype) -> float:
    """Machine epsilon of the model's floating dtype."""
    return float(torch.finfo(dtype).eps) if dtype.is_floating_point else float(
        torch.finfo(torch.float32).eps
    )


def _model_forward(model: nn.Module, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    device = next((p.device for p in model.parameters()), x.device)
    with torch.no_grad():
        try:
            z = model(x.detach().to(device=device, dtype=dtype).clone())
        except Exception as exc:  # the model's own code: any exception type
            raise FidelityError(
                f"the model's own forward fails on these inputs ({type(exc).__name__}: "
                f"{exc}) although its trace runs: it depends on the batch in a way the "
                "graph does not"
            ) from exc
    if not isinstance(z, torch.Tensor) or z.dim() != 2 or z.shape[0] != x.shape[0]:
        raise FidelityError(
            "the model's own forward does not return logits [N, C] on these inputs"
        )
    return z.detach().to(device=x.device, dtype=torch.float64)


def check_fidelity(
    model: nn.Module, graph: Graph, x: torch.Tensor, out64: torch.Tensor
) -> Fidelity:
    """Compare the graph's output ``out64`` [N, C] (float64, at ``x``) with ``model(x)``.

    Raises:
        FidelityError: the two differ beyond the dtype's tolerance on some sample (the
            message names the first node where they part), or the model's forward fails.
    """
    dtype = graph.run_dtype
    # the machine epsilon of the arithmetic the model runs in (its dtype, TF32 or bfloat16
    # products, autocast: graph.model_arithmetic)
    arith = graph.model_arithmetic
    eps = max(model_dtype_eps(dtype), 2 * arith.unit)
    z = _model_forward(model, x, dtype).to(out64.device)
    scale = out64.abs().amax(1)
    disc = (z - out64).abs().amax(1)
    tol = math.sqrt(eps) * scale
    bad = ~(disc <= tol)  # NaN in the model's output is a mismatch too
    overflows = _overflows(graph, x, z, out64, bad)
    bad &= ~overflows
    if bool(bad.any()):
        i = int(bad.nonzero()[0, 0])
        where = locate_divergence(model, graph, x[i : i + 1], dtype)
        raise FidelityError(
            f"the captured graph does not compute what the model computes: on sample {i} "
            f"the outputs differ by {float(disc[i]):.3g} (tolerance {float(tol[i]):.3g} for "
            f"{arith.name}); {where}. No certificate is returned"
        )
    model_label = z.argmax(1)
    band = 4 * disc + 8 * eps * scale
    return Fidelity(
        model_label=model_label,
        agrees=(model_label == out64.argmax(1)) & ~overflows,
        near_tie=label_margin(out64, out64.argmax(1)) <= band,
        discrepancy=disc,
        tolerance=tol,
        overflows=overflows,
    )


def _overflows(graph: Graph, x: torch.Tensor, z: torch.Tensor, out64: torch.Tensor,
               bad: torch.Tensor) -> torch.Tensor:
    """[N] bool: among the samples ``bad``, those whose model output ``z`` is not finite
    while the graph's ``out64`` is, and where some float64 value of the graph exceeds the
    model dtype's largest finite number (the model's dtype overflowed)."""
    dtype = graph.run_dtype
    out = torch.zeros_like(bad)
    if dtype == torch.float64 or not dtype.is_floating_point:
        return out
    cand = bad & ~torch.isfinite(z).all(1) & torch.isfinite(out64).all(1)
    if not bool(cand.any()):
        return out
    idx = cand.nonzero().flatten()
    big = float(torch.finfo(dtype).max)
    beyond = torch.zeros(idx.numel(), dtype=torch.bool, device=bad.device)
    for v in graph.activations(x[idx].to(torch.float64)).values():
        beyond |= (v.reshape(idx.numel(), -1).abs() > big).any(1).to(bad.device)
    out[idx] = beyond
    return out


def locate_divergence(model: nn.Module, graph: Graph, x: torch.Tensor, dtype: torch.dtype) -> str:
    """Name the first node (in graph order) whose value in the graph differs from the
    model's, comparing the outputs of the model's layers recorded by forward hooks."""
    modules = dict(model.named_modules())
    recorded: dict[str, torch.Tensor] = {}
    handles = []
    for n in graph.nodes:
        m = modules.get(n.target) if n.module is not None else None
        if m is None:
            continue

        def hook(_m: nn.Module, _i: object, out: object, name: str = n.name) -> None:
            if isinstance(out, torch.Tensor):
                recorded[name] = out.detach().to(torch.float64).cpu()

        handles.append(m.register_forward_hook(hook))
    try:
        _model_forward(model, x, dtype)
    except FidelityError:
        pass
    finally:
        for h in handles:
            h.remove()
    values = graph.activations(x)
    eps = max(model_dtype_eps(dtype), 2 * graph.model_arithmetic.unit)
    last_ok = graph.input.name
    for n in graph.nodes:
        if n.name not in recorded or n.name not in values:
            continue
        g = values[n.name].cpu()
        r = recorded[n.name]
        if r.shape != g.shape or not bool(
            (r - g).abs().amax() <= math.sqrt(eps) * (g.abs().amax() + r.abs().amax())
        ):
            return (
                f"they part at node {n.name!r} ({n.op}, module {n.target!r}): the layer "
                "computes something else than the graph reads from it"
            )
        last_ok = n.name
    return (
        f"the layers agree up to node {last_ok!r}; they part at a functional operation "
        "after it (an argument read wrongly, an in-place update, or code the trace does "
        "not see)"
    )
