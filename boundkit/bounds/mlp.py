r"""Fully-connected blocks: runs of ``Linear`` layers each followed by an activation.

**peck2017** (thesis Theorem 4.2 with Algorithm 4.1): for the block
:math:`h_L(x)=g_L(V_L\cdots g_1(V_1x+b_1)\cdots+b_L)` that feeds the output layer,

.. math:: \kappa_{in}=\frac{\sqrt{\|J(x)\|^2+2M\sqrt n\,\kappa}-\|J(x)\|}{M\sqrt n},

with :math:`n` the block's output size, :math:`J(x)` its Jacobian at :math:`x` and
:math:`M` from Algorithm 4.1 (:math:`s_i=\max_j\sum_k|v_{ijk}|`,
:math:`M_i=B_iN_{i-1}^2s_i^2+A_iM_{i-1}s_i`, :math:`N_i=A_iN_{i-1}s_i`) with the Table 4.1
constants as printed (ReLU: :math:`B=1`). Theorem A.1's remainder
:math:`\tfrac M2\sqrt n\|r\|^2` misses a factor of the input dimension :math:`d`: an entry
bound :math:`M` on the Hessian of each output gives :math:`|r^THr|\le M\|r\|_1^2\le Md\|r\|^2`
(``docs/theory/peck2017.md``). ReLU is not twice differentiable, so no Taylor bound holds
through it at all.

**Sound rule** for blocks of *smooth* activations (tanh, sigmoid, softplus;
``docs/theory/mlp.md``): with :math:`A_l=\sup|g_l'|`, :math:`B_l=\sup|g_l''|`,

.. math:: N_l=A_l\|V_l\|N_{l-1},\qquad
          M_l=B_l\|V_l\|^2N_{l-1}^2+A_l\|V_l\|M_{l-1},\qquad N_0=1,\ M_0=0,

bounds the operator norms :math:`\|Dh_l(z)\|\le N_l` and
:math:`\|D^2h_l(z)[r,r]\|\le M_l\|r\|^2` everywhere (chain rule plus
:math:`\|g''(z)\odot u^2\|_2\le B\|u\|_4^2\le B\|u\|_2^2`), so Taylor's theorem with integral
remainder gives the modulus :math:`\omega(t)=\min(N_Lt,\ \|J(x)\|t+\tfrac{M_L}2t^2)`.
ReLU layers are not grouped: each is 1-Lipschitz on its own.
"""

from __future__ import annotations

import math

import torch

from boundkit.bounds.activation import sound_bounds, thesis_table_4_1
from boundkit.bounds.linear import schur_bound, spectral_norm
from boundkit.bounds.modulus import Modulus
from boundkit.bounds.numerics import gamma, inflate
from boundkit.bounds.state import rounding_error
from boundkit.graph.graph import Graph, Node
from boundkit.graph.optable import ops_where

#: activations of the smooth blocks (twice differentiable, bounded g' and g'')
SMOOTH_OPS = ops_where("smooth")
#: activations of peck2017's fully connected blocks (thesis Table 4.1)
FC_ACTIVATIONS = ops_where("fc_activation")
#: blocks whose Jacobian has at most this many entries get the exact spectral norm
EXACT_JACOBIAN_LIMIT = 200_000


def activation_derivative(node: Node, z: torch.Tensor) -> torch.Tensor:
    """g'(z) of an activation node, element-wise (float64)."""
    if node.op == "relu":
        return (z > 0).to(z.dtype)
    if node.op == "tanh":
        return 1 - torch.tanh(z) ** 2
    if node.op == "sigmoid":
        s = torch.sigmoid(z)
        return s * (1 - s)
    if node.op == "softplus":
        beta = float(node.attrs.get("beta", 1.0))
        return torch.sigmoid(beta * z)
    raise KeyError(node.op)


def _layers(nodes: list[Node]) -> list[tuple[Node, Node]]:
    return [(nodes[i], nodes[i + 1]) for i in range(0, len(nodes), 2)]


def jacobian_norm(
    nodes: list[Node], acts: dict[str, torch.Tensor], *, upper: bool, iters: int = 60
) -> torch.Tensor:
    """Per-sample spectral norm of the block Jacobian :math:`D_LV_L\\cdots D_1V_1` at the
    current activations.

    Exact (largest eigenvalue of the smaller Gram matrix, float64) when the Jacobian has at
    most :data:`EXACT_JACOBIAN_LIMIT` entries. Otherwise: with ``upper=True`` the product
    of the per-layer norms :math:`\\prod\\|D_l\\|\\|V_l\\|` (an upper bound); with
    ``upper=False`` batched power iteration (converges from below; used by peck2017).
    """
    layers = _layers(nodes)
    ds = [activation_derivative(act, acts[lin.name]) for lin, act in layers]
    ws = [lin.params["weight"] for lin, _ in layers]
    d_in, n_out = ws[0].shape[1], ws[-1].shape[0]
    bsz = ds[0].shape[0]
    if d_in * n_out <= EXACT_JACOBIAN_LIMIT:
        chunk = max(1, int(4_000_000 // max(d_in * max(w.shape[0] for w in ws), 1)))
        out = []
        for s in range(0, bsz, chunk):
            jac = ws[0].unsqueeze(0) * ds[0][s : s + chunk].unsqueeze(2)
            for w, d in zip(ws[1:], ds[1:]):
                jac = (w.unsqueeze(0) @ jac) * d[s : s + chunk].unsqueeze(2)
            gram = jac @ jac.transpose(1, 2) if n_out <= d_in else jac.transpose(1, 2) @ jac
            out.append(torch.linalg.eigvalsh(gram)[:, -1].clamp_min(0).sqrt())
        return torch.cat(out)
    if upper:
        total = torch.ones(bsz, dtype=torch.float64, device=ds[0].device)
        for w, d in zip(ws, ds):
            total = total * d.abs().max(1).values * spectral_norm(w)
        return total
    gen = torch.Generator(device="cpu").manual_seed(0)
    v = torch.randn(bsz, d_in, generator=gen, dtype=torch.float64).to(ds[0].device)
    v = v / v.norm(dim=1, keepdim=True)
    sigma = torch.zeros(bsz, dtype=torch.float64, device=v.device)
    for _ in range(iters):
        u = v
        for w, d in zip(ws, ds):
            u = (u @ w.T) * d
        new_sigma = u.norm(dim=1)
        for w, d in zip(reversed(ws), reversed(ds)):
            u = (u * d) @ w
        nv = u.norm(dim=1, keepdim=True)
        v = torch.where(nv > 0, u / nv.clamp_min(1e-300), v)
        done = bool(((new_sigma - sigma).abs() <= 1e-6 * new_sigma).all())
        sigma = new_sigma
        if done:
            break
    return sigma


class Stage:
    """A run of nodes handled as one step by a walker (``name``: the value it produces,
    ``inputs``: the values it reads)."""

    def __init__(self, nodes: list[Node]) -> None:
        self.nodes = nodes

    @property
    def name(self) -> str:
        return self.nodes[-1].name

    @property
    def inputs(self) -> list[str]:
        return self.nodes[0].inputs


class SmoothBlock(Stage):
    """Sound stage for a run of (Linear, smooth activation) pairs."""

    def needs(self, graph: Graph) -> set[str]:
        return {lin.name for lin, _ in _layers(self.nodes)}

    def constants(self, graph: Graph) -> dict[str, float | list[float]]:
        key = ("smooth_block", self.nodes[0].name, self.nodes[-1].name)
        if key not in graph.cache:
            n_prev, m_prev = 1.0, 0.0
            norms, a_list, b_list, abs_norms, fan = [], [], [], [], 0
            for lin, act in _layers(self.nodes):
                w = lin.params["weight"]
                v = spectral_norm(w)
                a, b = sound_bounds(act)
                b = float(inflate(b))
                m_prev = float(inflate(b * v * v * n_prev * n_prev + a * v * m_prev))
                n_prev = float(inflate(a * v * n_prev))
                norms.append(v)
                a_list.append(a)
                b_list.append(b)
                abs_norms.append(schur_bound(w))
                fan += w.shape[1]
            graph.cache[key] = {
                "N": n_prev, "M": m_prev, "norms": norms, "A": a_list, "B": b_list,
                "abs_norms": abs_norms, "fan": fan,
            }
        return graph.cache[key]

    def modulus(self, graph: Graph, acts: dict[str, torch.Tensor]) -> Modulus:
        c = self.constants(graph)
        glob = Modulus.lipschitz(c["N"])
        layers = _layers(self.nodes)
        d_in, n_out = layers[0][0].in_numel, layers[-1][0].out_numel
        if d_in * n_out > EXACT_JACOBIAN_LIMIT:
            return glob
        jn = jacobian_norm(self.nodes, acts, upper=True)
        # rounding of the computed Jacobian: products of |D||V| with gamma(total fan-in),
        # plus the effect of the error e_z on each pre-activation through g' (|g''| <= B)
        prod_abs = math.prod(a * v for a, v in zip(c["A"], c["abs_norms"]))
        err = float(gamma(c["fan"] + len(layers))) * prod_abs
        err_t = torch.zeros_like(jn)
        norms, a_s, b_s = c["norms"], c["A"], c["B"]
        for i, (lin, _) in enumerate(layers):
            e_z = rounding_error(acts, lin.name)
            if e_z is None:
                continue
            before = math.prod(a * v for a, v in zip(a_s[:i], norms[:i]))
            after = math.prod(a * v for a, v in zip(a_s[i + 1 :], norms[i + 1 :]))
            err_t = err_t + after * b_s[i] * e_z * norms[i] * before
        jn = inflate(jn) + err + err_t
        local = Modulus.quadratic(jn, c["M"] / 2.0)
        return local.minimum(glob)

    def lipschitz(self, graph: Graph) -> float:
        return float(self.constants(graph)["N"])


def algorithm_4_1(nodes: list[Node], table: dict[str, tuple[float, float]]) -> float:
    """M of thesis Algorithm 4.1 with the given (A, B) table."""
    m_prev, n_prev = 0.0, 1.0
    for lin, act in _layers(nodes):
        s = float(lin.params["weight"].abs().sum(dim=1).max())
        a, b = table[act.op]
        m_prev = b * n_prev**2 * s**2 + a * m_prev * s
        n_prev = a * n_prev * s
    return m_prev


class PeckBlock(Stage):
    """peck2017 stage: Theorem 4.2 over the fully-connected block before the output."""

    def needs(self, graph: Graph) -> set[str]:
        return {lin.name for lin, _ in _layers(self.nodes)}

    def backward(
        self, graph: Graph, kappa: torch.Tensor, acts: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        key = ("peck_M", self.nodes[0].name)
        if key not in graph.cache:
            graph.cache[key] = algorithm_4_1(self.nodes, thesis_table_4_1())
        m = graph.cache[key]
        n = self.nodes[-1].out_numel
        jn = jacobian_norm(self.nodes, acts, upper=False)
        msn = m * math.sqrt(n)
        if msn == 0:
            return torch.where(jn > 0, kappa / jn, torch.full_like(jn, math.inf))
        return (torch.sqrt(jn**2 + 2 * msn * kappa) - jn) / msn


def _vector_linear(node: Node) -> bool:
    """A ``linear`` node on vectors (the blocks' matrices; ``Linear`` on tokens is not one)."""
    return node.op == "linear" and len(node.in_shapes[0]) == 1


def find_blocks(chain: list[Node], allowed: frozenset[str]) -> list[list[Node]]:
    """Maximal runs ``[Linear, act, Linear, act, ...]`` in a chain of nodes, where every
    activation is in ``allowed``."""
    blocks: list[list[Node]] = []
    i = 0
    while i < len(chain) - 1:
        if _vector_linear(chain[i]) and chain[i + 1].op in allowed:
            j = i
            while (j < len(chain) - 1 and _vector_linear(chain[j])
                   and chain[j + 1].op in allowed):
                j += 2
            blocks.append(chain[i:j])
            i = j
        else:
            i += 1
    return blocks
