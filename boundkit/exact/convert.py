"""Convert a small PyTorch ReLU classifier into an explicit affine/ReLU chain in float64.

The result is ``f(z) = W_L relu(W_{L-1} ... relu(W_0 z + b_0) ... ) + b_L`` with ``z`` the
flattened input.  Every maximal run of affine modules between two ReLUs (``Linear``,
``Conv2d``, ``AvgPool2d``, ``BatchNorm`` in eval mode, ``Flatten``, ``Identity``, ``Dropout``
in eval mode) is merged into one matrix by pushing the standard basis through it in float64:
for an affine map ``g = l + g(0)`` with linear part ``l``, ``b = g(0)`` and column ``j`` of
``W`` is ``l(e_j)``, computed by the same modules with their offsets set to zero (a Linear's
or Conv2d's bias, a BatchNorm's running mean and shift).  Not ``g(e_j) - g(0)``: where the
offset is much larger than the weights (a layer whose bias carries the product of the earlier
layers' scales) that difference cancels catastrophically - a bias ``1e15`` times the weights
leaves no correct digit of ``W``.
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

_AFFINE = (
    nn.Linear,
    nn.Conv2d,
    nn.AvgPool2d,
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.Flatten,
    nn.Identity,
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
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
        return AffineReluNet(tuple(ws), tuple(bs), self.in_shape)

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
    if not isinstance(m, _AFFINE):
        raise UnsupportedLayerError(
            path,
            op,
            "exact",
            "exact_radius supports nn.Sequential chains of Linear, Conv2d, AvgPool2d, "
            "BatchNorm1d/2d (eval), Flatten, Identity, Dropout (eval) and ReLU, with an "
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
        if isinstance(lin, (nn.Linear, nn.Conv2d)) and lin.bias is not None:
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


def to_affine_relu(model: nn.Module, in_shape: tuple[int, ...]) -> AffineReluNet:
    """Convert ``model`` (inputs of per-sample shape ``in_shape``) to an :class:`AffineReluNet`.

    Raises :class:`UnsupportedLayerError` for any module outside the supported set,
    :class:`TrainingModeError` in training mode, :class:`NonFiniteParameterError` for NaN/inf
    parameters or buffers and :class:`InputShapeError` when ``in_shape`` does not fit.
    """
    if not isinstance(model, nn.Module):
        raise ModelError(f"expected a torch.nn.Module, got {type(model).__name__}")
    check_model(model)
    leaves = _leaves(model, "")
    for i, (path, m) in enumerate(leaves):
        _check_leaf(path, m, is_last=all(isinstance(n, _MONOTONE_HEAD) for _, n in leaves[i:]))
    leaves = [(p, m) for p, m in leaves if not isinstance(m, _MONOTONE_HEAD)]
    if not leaves:
        raise ModelError("the model has no layers")

    weights: list[np.ndarray] = []
    biases: list[np.ndarray] = []
    shape = tuple(int(s) for s in in_shape)
    seg: list[nn.Module] = []
    seg_path = leaves[0][0]
    prev_relu = False
    for path, m in leaves:
        if isinstance(m, nn.ReLU):
            if prev_relu and not seg:
                continue  # relu(relu(y)) = relu(y)
            w, b, shape = _segment_affine(seg, shape, seg_path)
            weights.append(w)
            biases.append(b)
            seg = []
            prev_relu = True
            continue
        if not seg:
            seg_path = path
        seg.append(copy.deepcopy(m).double().eval())
        prev_relu = False
    w, b, shape = _segment_affine(seg, shape, seg_path)
    weights.append(w)
    biases.append(b)
    if len(shape) != 1 or shape[0] < 2:
        raise ModelError(
            f"the model must output logits of shape [N, K] with K >= 2; got per-sample output "
            f"shape {shape}"
        )
    for w, b in zip(weights, biases):
        if not (np.isfinite(w).all() and np.isfinite(b).all()):
            raise NonFiniteParameterError("the model's affine maps are not finite in float64")
    return AffineReluNet(tuple(weights), tuple(biases), tuple(int(s) for s in in_shape))
