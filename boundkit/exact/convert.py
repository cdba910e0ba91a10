"""Convert a small PyTorch ReLU classifier into an explicit affine/ReLU chain in float64.

The result is ``f(z) = W_L relu(W_{L-1} ... relu(W_0 z + b_0) ... ) + b_L`` with ``z`` the
flattened input.  Every maximal run of affine modules between two ReLUs (``Linear``,
``Conv2d``, ``AvgPool2d``, ``BatchNorm`` in eval mode, ``Flatten``, ``Identity``, ``Dropout``
in eval mode) is merged into one matrix by pushing the standard basis through it in float64:
for an affine map ``g``, ``b = g(0)`` and column ``j`` of ``W`` is ``g(e_j) - g(0)``, which
is exact up to float64 rounding because ``g`` is affine.
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
    TrainingModeError,
    UnsupportedLayerError,
)

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


def _check_model(model: nn.Module) -> None:
    for name, sub in model.named_modules():
        if sub.training:
            where = name or "<root>"
            raise TrainingModeError(
                f"module {where!r} ({type(sub).__name__}) is in training mode; call "
                "model.eval() before exact_radius (dropout/batch-norm must be deterministic)"
            )
    for kind, items in (("parameter", model.named_parameters()), ("buffer", model.named_buffers())):
        for name, t in items:
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                raise NonFiniteParameterError(f"{kind} {name!r} holds NaN or infinity")


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
                outb = m(outb)
    except (RuntimeError, ValueError, IndexError) as exc:
        raise InputShapeError(
            f"an input of per-sample shape {tuple(in_shape)} does not fit the model at "
            f"{path!r}: {exc}"
        ) from exc
    out_shape = tuple(out0.shape[1:])
    b = out0.reshape(-1).numpy().copy()
    w = (outb - out0).reshape(d, -1).numpy().T.copy()
    return w, b, out_shape


def to_affine_relu(model: nn.Module, in_shape: tuple[int, ...]) -> AffineReluNet:
    """Convert ``model`` (inputs of per-sample shape ``in_shape``) to an :class:`AffineReluNet`.

    Raises :class:`UnsupportedLayerError` for any module outside the supported set,
    :class:`TrainingModeError` in training mode, :class:`NonFiniteParameterError` for NaN/inf
    parameters or buffers and :class:`InputShapeError` when ``in_shape`` does not fit.
    """
    if not isinstance(model, nn.Module):
        raise ModelError(f"expected a torch.nn.Module, got {type(model).__name__}")
    _check_model(model)
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
