"""Input transforms prepended to a model as data: normalisation and input reshaping.

Both are standard torch layers that :func:`boundkit.graph.capture` already knows, so a
certificate or an attack on the wrapped model is stated in the space the user reasons in
(pixels in ``[0, 1]``), and the bound methods see the transform as one more affine node:

* :func:`normalize` prepends :math:`x\\mapsto(x-\\mu)/\\sigma` per channel as an eval-mode
  ``BatchNorm`` with ``running_mean = mu``, ``running_var = 1``, ``eps = 0``,
  ``weight = 1/sigma``, ``bias = 0`` (its operator norm, :math:`\\max_c 1/\\sigma_c`, is what
  the batch-norm rule computes).
* :class:`InputReshape` regroups the elements of each sample (row-major, no reordering), e.g.
  MNIST images ``[1, 28, 28]`` into a network that declares ``[784, 1]``: an isometry.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from boundkit.errors import InputShapeError


class InputReshape(nn.Module):
    """``x.reshape(-1, *shape)``: regroups each sample's elements in row-major order."""

    def __init__(self, shape: Sequence[int]) -> None:
        super().__init__()
        self.shape = tuple(int(s) for s in shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(-1, *self.shape)

    def extra_repr(self) -> str:
        return f"shape={self.shape}"


def _floats(v: float | Sequence[float] | torch.Tensor, what: str) -> torch.Tensor:
    t = torch.as_tensor(v, dtype=torch.float64).reshape(-1)
    if t.numel() == 0:
        raise InputShapeError(f"normalisation {what} is empty")
    if not bool(torch.isfinite(t).all()):
        raise InputShapeError(f"normalisation {what} must be finite, got {t.tolist()}")
    return t


def normalization_layer(
    mean: float | Sequence[float] | torch.Tensor,
    std: float | Sequence[float] | torch.Tensor,
    channels: int,
    ndim: int,
    dtype: torch.dtype = torch.float32,
) -> nn.Module:
    """An eval-mode ``BatchNorm{1d,2d}`` computing ``(x - mean) / std`` per channel.

    ``mean`` and ``std`` are scalars or one value per channel; ``ndim`` is the number of
    per-sample dimensions (1: features ``[C]``, 2: ``[C, L]``, 3: images ``[C, H, W]``)."""
    m, s = _floats(mean, "mean"), _floats(std, "std")
    if bool((s <= 0).any()):
        raise InputShapeError(f"normalisation std must be positive, got {s.tolist()}")
    for name, t in (("mean", m), ("std", s)):
        if t.numel() not in (1, channels):
            raise InputShapeError(
                f"normalisation {name} has {t.numel()} values; the input has {channels} "
                "channels (give one value or one per channel)"
            )
    m, s = m.expand(channels).clone(), s.expand(channels).clone()
    bn: nn.Module
    if ndim == 3:
        bn = nn.BatchNorm2d(channels, eps=0.0)
    elif ndim in (1, 2):
        bn = nn.BatchNorm1d(channels, eps=0.0)
    else:
        raise InputShapeError(
            f"normalisation needs inputs [N, C], [N, C, L] or [N, C, H, W]; got {ndim} "
            "dimensions per sample"
        )
    with torch.no_grad():
        bn.running_mean.copy_(m)
        bn.running_var.fill_(1.0)
        bn.weight.copy_(1.0 / s)
        bn.bias.zero_()
    return bn.to(dtype).eval()


def normalize(
    model: nn.Module,
    mean: float | Sequence[float] | torch.Tensor,
    std: float | Sequence[float] | torch.Tensor,
    input_shape: Sequence[int],
) -> nn.Module:
    """Prepend ``(x - mean) / std`` (per channel, channels on dimension 1) to ``model``.

    ``input_shape`` is the per-sample shape the wrapped model takes (``[C, H, W]`` for
    images). Returns ``nn.Sequential(normalize=..., model=model)`` in eval mode, so that
    certificates and attacks on it are in the un-normalised input space."""
    shape = tuple(int(s) for s in input_shape)
    if not shape or math.prod(shape) == 0:
        raise InputShapeError(f"bad input shape {shape} for the normalisation")
    dtype = next((p.dtype for p in model.parameters()), torch.float32)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    layer = normalization_layer(mean, std, shape[0], len(shape), dtype).to(device)
    return nn.Sequential(
        _ordered(normalize=layer, model=model)
    ).eval()


def _ordered(**mods: nn.Module):  # noqa: ANN202 - an OrderedDict for nn.Sequential
    from collections import OrderedDict

    return OrderedDict(mods)


def prepare_model(
    model: nn.Module,
    data_shape: Sequence[int],
    *,
    normalize: tuple[Sequence[float], Sequence[float]] | None = None,
) -> nn.Module:
    """Fit ``model`` to data of per-sample shape ``data_shape``: regroup the input when the
    model declares another grouping of the same elements (``boundkit_input_shape``, set by
    the ONNX importer), then prepend the normalisation ``(mean, std)`` if given."""
    from boundkit.models.onnx import adapt_input_shape

    shape = tuple(int(s) for s in data_shape)
    declared = getattr(model, "boundkit_input_shape", None)
    if declared is not None and tuple(declared) != shape:
        model = adapt_input_shape(model, declared, shape, "the model")
    if normalize is not None:
        model = globals()["normalize"](model, normalize[0], normalize[1], shape)
    return model


def parse_normalize(text: str) -> tuple[list[float], list[float]]:
    """``"mean,std"`` or ``"m1,...,mC,s1,...,sC"`` (as in ``--normalize``) -> (means, stds)."""
    try:
        vals = [float(v) for v in text.replace(" ", "").split(",") if v != ""]
    except ValueError:
        raise InputShapeError(
            f"--normalize expects numbers 'mean,std' or 'm1,...,mC,s1,...,sC', got {text!r}"
        ) from None
    if len(vals) < 2 or len(vals) % 2:
        raise InputShapeError(
            f"--normalize expects 'mean,std' or C means then C stds, got {len(vals)} numbers"
        )
    half = len(vals) // 2
    return vals[:half], vals[half:]


__all__ = [
    "InputReshape", "normalization_layer", "normalize", "parse_normalize", "prepare_model",
]
