"""Convert a small PyTorch ReLU classifier into an explicit affine/ReLU chain in float64.

The result is ``f(z) = W_L relu(W_{L-1} ... relu(W_0 z + b_0) ... ) + b_L`` with ``z`` the
flattened input.  Every maximal run of affine modules between two ReLUs (``Linear``,
``Conv1d/2d/3d``, ``AvgPool1d/2d/3d``, ``BatchNorm`` in eval mode, ``Flatten``,
``Unflatten``, ``Identity``, ``Dropout`` in eval mode) is merged into one matrix by pushing
the standard basis through it in float64:
for an affine map ``g = l + g(0)`` with linear part ``l``, ``b = g(0)`` and column ``j`` of
``W`` is ``l(e_j)``, computed by the same modules with their offsets set to zero (a Linear's
or a convolution's bias, a BatchNorm's running mean and shift).  Not ``g(e_j) - g(0)``: where the
offset is much larger than the weights (a layer whose bias carries the product of the earlier
layers' scales) that difference cancels catastrophically - a bias ``1e15`` times the weights
leaves no correct digit of ``W``.

Max pooling (``MaxPool1d/2d/3d``, ``AdaptiveMaxPool1d/2d/3d``) is written as ReLU layers, a
tournament per window (:func:`max_pool_layers`): ``max(a, b) = b + relu(a - b)``, the
survivor ``b`` carried through the ReLU layer as ``relu(b)`` where the pooled values are
ReLU outputs (``b >= 0``, so ``relu(b) = b``) and as ``relu(b) - relu(-b)`` otherwise; a
window of ``k`` inputs takes ``ceil(log2 k)`` layers.  Each window's members are read from
torch's own pooling of the standard basis (padding, dilation, ``ceil_mode`` and adaptive
windows as torch computes them).  The chain then equals the model everywhere, so its
activation regions are polyhedra on which it is affine, which is what the exact search needs
(``docs/exact.md`` §Max pooling).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from boundkit.errors import (
    InputShapeError,
    ModelError,
    NonFiniteParameterError,
    UnsupportedLayerError,
)
from boundkit.validate import check_model

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_AFFINE = (
    nn.Linear,
    *_CONV,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AvgPool3d,
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.Flatten,
    nn.Identity,
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Unflatten,
)
#: modules that leave every value as it is (a ReLU output stays >= 0 through them)
_VALUE_PRESERVING = (
    nn.Flatten, nn.Unflatten, nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d,
)
_MAX_POOL = (
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.MaxPool3d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
    nn.AdaptiveMaxPool3d,
)
_MONOTONE_HEAD = (nn.Softmax, nn.LogSoftmax)


@dataclass(frozen=True)
class AffineReluNet:
    """``f(z) = W_L relu(... relu(W_0 z + b_0) ...) + b_L`` in float64.

    ``weights[i]`` has shape ``[n_i, n_{i-1}]`` (``n_{-1} = d``, the flattened input size);
    the hidden ReLU layers are the outputs of ``weights[0..L-1]``.
    """

    weights: tuple[np.ndarray, ...]
    biases: tuple[np.ndarray, ...]
    in_shape: tuple[int, ...]
    #: per hidden layer, the units whose pre-activation is ``>= 0`` for every input (a max
    #: pooling's carry of ReLU outputs, :func:`max_pool_layers`): always active, so the
    #: exact search fixes them instead of branching on them (bool ``[n_i]`` each; empty:
    #: none)
    fixed_active: tuple[np.ndarray, ...] = ()
    #: per hidden layer, pairs ``(u, v)`` of units reading ``b`` and ``-b`` (a pooling's
    #: carry ``b = relu(b) - relu(-b)`` of a value of either sign): a split of one fixes the
    #: other to the opposite side, whose constraint it implies (int64 ``[k_i, 2]`` each;
    #: empty: none)
    twins: tuple[np.ndarray, ...] = ()
    #: the hidden layers that write the model's max poolings (:func:`max_pool_layers`)
    pool_layers: tuple[int, ...] = ()
    #: those of them whose matrix is the tournament's own (entries 0 and +-1, a few per
    #: row) on the previous hidden layer's outputs
    tournament_layers: tuple[int, ...] = ()

    @property
    def pool_units(self) -> int:
        """Hidden units that write the model's max poolings."""
        return int(sum(self.weights[i].shape[0] for i in self.pool_layers))

    def always_active(self, i: int) -> np.ndarray:
        """Hidden layer ``i``'s always-active units (bool ``[n_i]``)."""
        if self.fixed_active:
            return self.fixed_active[i]
        return np.zeros(self.weights[i].shape[0], dtype=bool)

    def twin_pairs(self, i: int) -> np.ndarray:
        """Hidden layer ``i``'s twin units (int64 ``[k, 2]``)."""
        if self.twins:
            return self.twins[i]
        return np.zeros((0, 2), dtype=np.int64)

    @property
    def in_dim(self) -> int:
        return int(self.weights[0].shape[1])

    @property
    def num_classes(self) -> int:
        return int(self.weights[-1].shape[0])

    @property
    def hidden_sizes(self) -> tuple[int, ...]:
        return tuple(int(w.shape[0]) for w in self.weights[:-1])

    @property
    def num_hidden(self) -> int:
        """Total number of hidden ReLU neurons."""
        return int(sum(self.hidden_sizes))

    def canonical(self) -> AffineReluNet:
        """The same decision function with every hidden neuron's input row of unit norm.

        ReLU is positively homogeneous, ``relu(s y) = s relu(y)`` for ``s > 0``, so dividing
        row ``j`` of ``(W_i, b_i)`` by ``s_j > 0`` and multiplying column ``j`` of ``W_{i+1}``
        by ``s_j`` leaves ``f`` unchanged; dividing the last layer by one ``s > 0`` scales
        every logit alike and leaves ``argmax f`` (and every margin's sign) unchanged.  With
        ``s_j = ||W_i[j]||`` (``|b_i[j]|`` for a constant neuron) every activation region and
        every decision boundary is the same set, but the pre-activations are distances-like
        numbers of order one whatever the layers' scales: a net whose layers are multiplied
        by positive factors over many orders of magnitude has (up to rounding) the same
        canonical form, so the search's geometry cannot depend on them.  Only exact zeros
        are left alone (a dead row stays zero).
        """
        ws = [w.copy() for w in self.weights]
        bs = [b.copy() for b in self.biases]
        for i in range(len(ws) - 1):
            nrm = np.linalg.norm(ws[i], axis=1)
            s = np.where(nrm > 0, nrm, np.abs(bs[i]))
            s = np.where(s > 0, s, 1.0)
            ws[i] /= s[:, None]
            bs[i] /= s
            ws[i + 1] *= s[None, :]
        top = float(np.linalg.norm(ws[-1], axis=1).max(initial=0.0))
        top = top if top > 0 else float(np.abs(bs[-1]).max(initial=0.0))
        if top > 0 and np.isfinite(top):
            ws[-1] /= top
            bs[-1] /= top
        for w, b in zip(ws, bs):
            if not (np.isfinite(w).all() and np.isfinite(b).all()):
                raise NonFiniteParameterError(
                    "the model's layers are not representable in float64 once rescaled "
                    "(a product of layer scales overflows)")
        return AffineReluNet(tuple(ws), tuple(bs), self.in_shape, self.fixed_active,
                             self.twins, self.pool_layers, self.tournament_layers)

    def forward(self, z: np.ndarray) -> np.ndarray:
        """Logits for a batch ``z`` of shape ``[B, d]``."""
        h = np.asarray(z, dtype=np.float64)
        for w, b in zip(self.weights[:-1], self.biases[:-1]):
            h = np.maximum(h @ w.T + b, 0.0)
        return h @ self.weights[-1].T + self.biases[-1]


def _leaves(module: nn.Module, prefix: str) -> list[tuple[str, nn.Module]]:
    if isinstance(module, nn.Sequential):
        out: list[tuple[str, nn.Module]] = []
        for name, child in module.named_children():
            out.extend(_leaves(child, f"{prefix}.{name}" if prefix else name))
        return out
    return [(prefix or type(module).__name__, module)]


def _check_leaf(path: str, m: nn.Module, is_last: bool) -> None:
    op = type(m).__name__
    if isinstance(m, _MONOTONE_HEAD):
        if not is_last:
            raise UnsupportedLayerError(
                path, op, "exact", "Softmax/LogSoftmax is only allowed as the last module"
            )
        if m.dim not in (None, 1, -1):
            raise UnsupportedLayerError(path, op, "exact", f"dim={m.dim} is not the class dim")
        return
    if isinstance(m, nn.ReLU):
        return
    if isinstance(m, _MAX_POOL):
        if getattr(m, "return_indices", False):
            raise UnsupportedLayerError(path, op, "exact", "return_indices=True makes the "
                                        "pooling return a pair, not a tensor")
        return
    if not isinstance(m, _AFFINE):
        raise UnsupportedLayerError(
            path,
            op,
            "exact",
            "exact_radius supports nn.Sequential chains of Linear, Conv1d/2d/3d, "
            "AvgPool1d/2d/3d, MaxPool1d/2d/3d, AdaptiveMaxPool1d/2d/3d, BatchNorm1d/2d "
            "(eval), Flatten, Unflatten, Identity, Dropout (eval) and ReLU, with an "
            "optional trailing Softmax/LogSoftmax",
        )
    if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)) and (
        not m.track_running_stats or m.running_mean is None or m.running_var is None
    ):
        raise UnsupportedLayerError(
            path, op, "exact", "batch norm without running statistics uses batch statistics "
            "even in eval mode, so it is not a fixed affine map"
        )


def _linear_part(m: nn.Module) -> nn.Module:
    """A copy of the affine module ``m`` with its offset set to zero (its linear part)."""
    lin = copy.deepcopy(m)
    with torch.no_grad():
        if isinstance(lin, (nn.Linear, *_CONV)) and lin.bias is not None:
            lin.bias.zero_()
        if isinstance(lin, (nn.BatchNorm1d, nn.BatchNorm2d)):
            lin.running_mean.zero_()
            if lin.bias is not None:
                lin.bias.zero_()
    return lin


def _segment_affine(
    mods: list[nn.Module], in_shape: tuple[int, ...], path: str
) -> tuple[np.ndarray, np.ndarray, tuple[int, ...]]:
    d = math.prod(in_shape)
    if d == 0:
        raise ModelError(f"the layer before {path!r} outputs no value (shape {in_shape})")
    basis = torch.eye(d, dtype=torch.float64).reshape(d, *in_shape)
    zero = torch.zeros((1, *in_shape), dtype=torch.float64)
    try:
        with torch.no_grad():
            out0 = zero
            outb = basis
            for m in mods:
                out0 = m(out0)
                outb = _linear_part(m)(outb)
    except (RuntimeError, ValueError, IndexError) as exc:
        raise InputShapeError(
            f"an input of per-sample shape {tuple(in_shape)} does not fit the model at "
            f"{path!r}: {exc}"
        ) from exc
    out_shape = tuple(out0.shape[1:])
    b = out0.reshape(-1).numpy().copy()
    w = outb.reshape(d, -1).numpy().T.copy()
    return w, b, out_shape


#: basis vectors pooled per call in :func:`pool_windows` is ``_PROBE_ELEMENTS // d``
_PROBE_ELEMENTS = 1 << 24


def pool_windows(
    pool: nn.Module, in_shape: tuple[int, ...], path: str
) -> tuple[list[np.ndarray], tuple[int, ...]]:
    """Each output's window of the max pooling ``pool`` on inputs of per-sample shape
    ``in_shape``, as torch computes it: input ``j`` is in the window of output ``o`` iff
    ``pool(e_j)[o] = 1`` (``e_j`` the ``j``-th standard basis vector: every other input is 0,
    padding is ``-inf``, so the maximum is 1 exactly when ``j`` is read by ``o``).

    Returns the sorted flat input indices of every output's window (flat output order) and
    the per-sample output shape.  Raises :class:`InputShapeError` when the shape does not
    fit and :class:`ModelError` for a window that reads no input.
    """
    d = math.prod(in_shape)
    try:
        with torch.no_grad():
            out_shape = tuple(int(s) for s in pool(torch.zeros((1, *in_shape))).shape[1:])
    except (RuntimeError, ValueError, IndexError) as exc:
        raise InputShapeError(
            f"an input of per-sample shape {tuple(in_shape)} does not fit the model at "
            f"{path!r}: {exc}"
        ) from exc
    n_out = math.prod(out_shape)
    if n_out == 0:
        raise ModelError(f"the pooling at {path!r} outputs no value (shape {out_shape})")
    outs: list[np.ndarray] = []
    ins: list[np.ndarray] = []
    step = max(1, _PROBE_ELEMENTS // max(d, 1))
    with torch.no_grad():
        for lo in range(0, d, step):
            k = min(step, d - lo)
            probe = torch.zeros((k, d))
            probe[torch.arange(k), lo + torch.arange(k)] = 1.0
            hit = pool(probe.reshape(k, *in_shape)).reshape(k, n_out) == 1.0
            j, o = torch.nonzero(hit, as_tuple=True)
            ins.append((j + lo).numpy())
            outs.append(o.numpy())
    o_all = np.concatenate(outs) if outs else np.zeros(0, dtype=np.int64)
    j_all = np.concatenate(ins) if ins else np.zeros(0, dtype=np.int64)
    order = np.lexsort((j_all, o_all))
    o_all, j_all = o_all[order], j_all[order]
    bounds = np.searchsorted(o_all, np.arange(n_out + 1))
    members = [j_all[bounds[i]:bounds[i + 1]] for i in range(n_out)]
    if any(len(m) == 0 for m in members):
        raise ModelError(f"the pooling at {path!r} has a window that reads no input")
    return members, out_shape


def max_pool_layers(
    members: list[np.ndarray], n_in: int, nonneg: bool
) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray], np.ndarray]:
    """The max over each window ``members[o]`` of a vector ``v`` of size ``n_in``, as ReLU
    layers: ``max_o v = V relu(S_L ... relu(S_1 v))``.

    One tournament round per layer: each pair ``(a, b)`` of a window's surviving values
    becomes ``max(a, b) = b + relu(a - b)`` (exact for all reals), the survivor ``b`` and an
    unpaired value carried through the layer as ``relu(b)`` when ``nonneg`` (every ``v_j >=
    0``, hence every survivor, so ``relu(b) = b``) and as ``relu(b) - relu(-b)`` otherwise.
    A window of ``k`` members is done after ``ceil(log2 k)`` rounds; the layers run until
    every window is.  Every coefficient is 0 or +-1 and each unit reads one difference or
    one value, so the maps are exact in float64.

    Returns the layers' matrices ``S_1 [n_1, n_in], S_2 [n_2, n_1], ...`` (biases 0), each
    layer's carry units of nonnegative values (bool ``[n_l]``: their pre-activation is a
    sum of ReLU outputs with coefficient +1, so ``>= 0`` everywhere and in float64), each
    layer's twin carries ``relu(b), relu(-b)`` (int64 ``[k_l, 2]``) and
    ``V [n_out, n_L]`` (``[n_out, n_in]``, a selection, when every window has one member).
    """
    # each value: a dict {unit of the previous layer (or input index): coefficient}
    vals: list[list[dict[int, float]]] = [[{int(j): 1.0} for j in mem] for mem in members]
    n_prev = n_in
    layers: list[np.ndarray] = []
    fixed: list[np.ndarray] = []
    twins: list[np.ndarray] = []
    while any(len(v) > 1 for v in vals):
        layer = _UnitLayer(nonneg)
        nxt: list[list[dict[int, float]]] = []
        for v in vals:
            nv: list[dict[int, float]] = []
            for i in range(0, len(v) - 1, 2):
                a, b = v[i], v[i + 1]
                diff = dict(a)
                for c, w in b.items():
                    diff[c] = diff.get(c, 0.0) - w
                nv.append({layer.unit(diff, 1.0): 1.0, **layer.carry(b)})
            if len(v) % 2:
                nv.append(layer.carry(v[-1]))
            nxt.append(nv)
        layers.append(layer.matrix(n_prev))
        fixed.append(layer.fixed())
        twins.append(np.asarray(layer.twins, dtype=np.int64).reshape(-1, 2))
        vals, n_prev = nxt, len(layers[-1])
    out = np.zeros((len(vals), n_prev))
    for o, (expr,) in enumerate(vals):
        for c, w in expr.items():
            out[o, c] += w
    return layers, fixed, twins, out


class _UnitLayer:
    """The ReLU units of one tournament round of :func:`max_pool_layers`, as COO entries
    (unit, unit or input of the previous layer, coefficient) of its matrix."""

    def __init__(self, nonneg: bool) -> None:
        self.nonneg = nonneg
        self.rows: list[int] = []
        self.cols: list[int] = []
        self.data: list[float] = []
        self.count = 0
        self.carries: list[int] = []  # units carrying a nonnegative value
        self.twins: list[tuple[int, int]] = []  # units carrying b and -b

    def unit(self, expr: dict[int, float], sign: float) -> int:
        """A new unit ``relu(sign * expr)``; its index."""
        u = self.count
        for c, w in expr.items():
            self.rows.append(u)
            self.cols.append(c)
            self.data.append(sign * w)
        self.count += 1
        return u

    def carry(self, expr: dict[int, float]) -> dict[int, float]:
        """The value ``expr`` in this layer's units: ``relu(e)`` if values are ``>= 0``,
        else ``relu(e) - relu(-e)``."""
        if self.nonneg:
            u = self.unit(expr, 1.0)
            self.carries.append(u)
            return {u: 1.0}
        pos, neg = self.unit(expr, 1.0), self.unit(expr, -1.0)
        self.twins.append((pos, neg))
        return {pos: 1.0, neg: -1.0}

    def fixed(self) -> np.ndarray:
        mask = np.zeros(self.count, dtype=bool)
        mask[np.asarray(self.carries, dtype=np.int64)] = True
        return mask

    def matrix(self, n_prev: int) -> np.ndarray:
        s_mat = np.zeros((self.count, n_prev))
        np.add.at(s_mat, (np.asarray(self.rows, dtype=np.int64),
                          np.asarray(self.cols, dtype=np.int64)), np.asarray(self.data))
        return s_mat


def supported_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The model's leaf modules in order (path, module), a trailing Softmax/LogSoftmax
    left out, once every one is checked to be in the exact solver's set.

    Raises :class:`UnsupportedLayerError` naming the first module outside it,
    :class:`ModelError` for a model in training mode or with no layers and
    :class:`NonFiniteParameterError` for NaN/inf parameters or buffers."""
    if not isinstance(model, nn.Module):
        raise ModelError(f"expected a torch.nn.Module, got {type(model).__name__}")
    check_model(model)
    leaves = _leaves(model, "")
    for i, (path, m) in enumerate(leaves):
        _check_leaf(path, m, is_last=all(isinstance(n, _MONOTONE_HEAD) for _, n in leaves[i:]))
    leaves = [(p, m) for p, m in leaves if not isinstance(m, _MONOTONE_HEAD)]
    if not leaves:
        raise ModelError("the model has no layers")
    return leaves


def to_affine_relu(model: nn.Module, in_shape: tuple[int, ...]) -> AffineReluNet:
    """Convert ``model`` (inputs of per-sample shape ``in_shape``) to an :class:`AffineReluNet`.

    Raises :class:`UnsupportedLayerError` for any module outside the supported set,
    :class:`TrainingModeError` in training mode, :class:`NonFiniteParameterError` for NaN/inf
    parameters or buffers and :class:`InputShapeError` when ``in_shape`` does not fit.
    Max poolings become ReLU layers (:func:`max_pool_layers`).
    """
    leaves = supported_layers(model)
    # relu(max_W v) = max_W relu(v) (relu is monotone): a pooling followed by a ReLU pools
    # ReLU outputs instead, whose survivors need one carry unit, not two
    for i in range(len(leaves) - 1):
        if isinstance(leaves[i][1], _MAX_POOL) and isinstance(leaves[i + 1][1], nn.ReLU):
            leaves[i], leaves[i + 1] = leaves[i + 1], leaves[i]

    weights: list[np.ndarray] = []
    biases: list[np.ndarray] = []
    fixed: list[np.ndarray] = []  # per hidden layer: its always-active units
    twins: list[np.ndarray] = []  # per hidden layer: its twin units
    pool_layers: list[int] = []
    tournament_layers: list[int] = []
    shape = tuple(int(s) for s in in_shape)
    seg: list[nn.Module] = []
    seg_path = leaves[0][0]
    # the segment's input is pend_w @ h + pend_b, h the last hidden layer's output (or the
    # flattened input); None: the identity (a max pooling's output map sets it)
    pend_w: np.ndarray | None = None
    pend_b: np.ndarray | None = None
    nonneg = False  # the segment's input values are ReLU outputs (or maxima of them)

    def close() -> tuple[np.ndarray | None, np.ndarray, tuple[int, ...]]:
        """The segment's output as ``W h + b`` (``W`` None: the identity)."""
        if not seg:
            d = math.prod(shape)
            return pend_w, (np.zeros(d) if pend_b is None else pend_b), shape
        w, b, out_shape = _segment_affine(seg, shape, seg_path)
        if pend_w is not None:
            assert pend_b is not None
            b = w @ pend_b + b
            w = w @ pend_w
        return w, b, out_shape

    for path, m in leaves:
        if isinstance(m, nn.ReLU):
            if nonneg and not seg:
                continue  # relu(y) = y for y >= 0 (a ReLU's output, or a max of them)
            w, b, shape = close()
            weights.append(np.eye(len(b)) if w is None else w)
            biases.append(b)
            fixed.append(np.zeros(len(b), dtype=bool))
            twins.append(np.zeros((0, 2), dtype=np.int64))
            seg, pend_w, pend_b = [], None, None
            nonneg = True
            continue
        if isinstance(m, _MAX_POOL):
            w, b, pool_in = close()
            nonneg = nonneg and all(isinstance(t, _VALUE_PRESERVING) for t in seg)
            members, shape = pool_windows(m, pool_in, path)
            levels, carries, pairs, out_map = max_pool_layers(members, math.prod(pool_in),
                                                              nonneg)
            if levels:
                first = len(weights)
                pool_layers.extend(range(first, first + len(levels)))
                tournament_layers.extend(range(first + (w is not None and first > 0),
                                               first + len(levels)))
                weights.append(levels[0] if w is None else levels[0] @ w)
                biases.append(levels[0] @ b)
                for s_mat in levels[1:]:
                    weights.append(s_mat)
                    biases.append(np.zeros(s_mat.shape[0]))
                fixed.extend(carries)
                twins.extend(pairs)
                pend_w, pend_b = out_map, np.zeros(out_map.shape[0])
            else:
                pend_w = out_map if w is None else out_map @ w
                pend_b = out_map @ b
            seg = []
            continue
        if not seg:
            seg_path = path
        seg.append(copy.deepcopy(m).double().eval())
    w, b, shape = close()
    weights.append(np.eye(len(b)) if w is None else w)
    biases.append(b)
    if len(shape) != 1 or shape[0] < 2:
        raise ModelError(
            f"the model must output logits of shape [N, K] with K >= 2; got per-sample output "
            f"shape {shape}"
        )
    for w, b in zip(weights, biases):
        if not (np.isfinite(w).all() and np.isfinite(b).all()):
            raise NonFiniteParameterError("the model's affine maps are not finite in float64")
    return AffineReluNet(tuple(weights), tuple(biases), tuple(int(s) for s in in_shape),
                         tuple(fixed) if any(f.any() for f in fixed) else (),
                         tuple(twins) if any(len(t) for t in twins) else (),
                         tuple(pool_layers), tuple(t for t in tournament_layers if t > 0))
