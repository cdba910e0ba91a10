"""A native ONNX importer: an ONNX classifier -> a plain ``torch.fx.GraphModule`` of
standard torch layers, which :func:`boundkit.graph.capture` turns into the same typed graph
as a hand-written model.

Reads the file with the ``onnx`` package only (``pip install 'boundkit[onnx]'``): no
onnx2torch, no torchvision, nothing from the file is executed. The protobuf is parsed,
tensor sizes are checked against :data:`MAX_ELEMENTS` before any tensor is decoded,
external-data tensors (file references) are refused, and the torch module is generated
from boundkit's own layer choices.

Supported operators (anything else is refused with an error naming the node, its op type
and the file):

=========================================  ==================================================
ONNX                                       torch
=========================================  ==================================================
Gemm, MatMul (+ Add of a constant)         ``nn.Linear`` (bias folded)
Conv (2-D, symmetric pads; asymmetric      ``nn.Conv2d`` (a zero ``Pad`` in front is folded
pads via an explicit zero pad; 1-D with    into its padding when the result is symmetric);
symmetric pads)                            ``nn.Conv1d`` for a 1-D kernel
MaxPool, AveragePool, GlobalAveragePool    ``nn.MaxPool2d``, ``nn.AvgPool2d``
BatchNormalization                         ``nn.BatchNorm1d/2d`` (eval statistics)
LRN (odd size)                             ``nn.LocalResponseNorm``
Relu, Sigmoid, Tanh, Softplus              the same modules
LeakyRelu(a), PRelu(slope: one, or one     ``a*x + (1-a)*relu(x)`` (an add of two branches;
per channel or element)                    ``a`` a constant broadcast to x)
Abs, Softsign (or ``x / (1 + Abs(x))``),   ``torch.abs``, ``nn.Softsign``, ``nn.CELU(a)``
Celu(a)
Selu(a, g)                                 ``nn.ELU(a)`` times ``g`` (the file's constants)
Max, Min of two tensors, or of a tensor    ``torch.maximum`` / ``torch.minimum``; with a
and a constant c                           constant ``c + relu(x - c)``, ``x - relu(x - c)``
Softmax, LogSoftmax (last node only)       the same modules
Flatten, Reshape, Squeeze, Unsqueeze       regrouping views (``reshape``) that keep each
                                           sample whole (the batch may move or merge, below)
Transpose (any perm; the batch may move)   folded into the next ``Gemm``/``MatMul`` columns
                                           or cancelled by another transpose; otherwise
                                           ``permute`` (exact); a gathered or sliced view
                                           that cannot fold: a 0/1 ``nn.Linear``, at most
                                           :data:`MAX_PERMUTATION` elements
Gather, Slice (constant indices)           ``x[:, ..., i]``, ``x[:, a:b:s]`` (the node
                                           ``select``); several indices or a negative
                                           step: a view, folded into the next layer
MatMul on tokens ``[.., T, K] @ W``        ``nn.Linear(K, M)`` on the last axis, exact
MatMul, Mul of two activations             ``torch.matmul``, ``torch.mul`` (equal ranks)
Softmax inside the network                 ``torch.softmax(x, axis)`` (opsets < 13: over the
                                           flattened trailing axes)
LayerNorm decomposed (ReduceMean, Sub,     ``nn.LayerNorm`` without affine parameters (the
Pow 2, ReduceMean, Add eps, Sqrt, Div)     Mul/Add after it stay per-element affine)
ReduceMean, ReduceSum (per-sample axes)    ``x.mean(dim, keepdim)``, ``x.sum(dim, keepdim)``;
                                           no axes with ``noop_with_empty_axes``: nothing
Pad (constant 0)                           folded, or a depthwise one-hot ``nn.Conv2d``
Add/Sub/Mul/Div by a constant              per-element affine as an eval ``BatchNorm``
Add of two tensors, Concat                 ``torch.add`` (residual), ``torch.cat``; a
                                           constant broadcast over the batch (a class token)
                                           concatenated: a 0/1 ``nn.Linear`` with it as bias
TopK (whole axis, largest first, sorted,   :class:`~boundkit.models.layers.GroupSort`
values only: torch's GroupSort/MaxMin)     (``strided`` / ``consecutive`` groups)
Identity, Dropout                          nothing
nn.MultiheadAttention as torch exports it  the ops above on a moved batch axis (below):
(``[T, N, E]``, ``[N*H, T, d]``, a Gemm    per-sample ``linear``, ``permute``, ``reshape``,
on ``[T*N, E]``, ``N*H`` in Reshape)        ``matmul``, ``softmax``
=========================================  ==================================================

**Where the batch is.** An input-dependent value is held per sample, with where the ONNX
tensor keeps its batch axis (:class:`_Moved`): the batch may sit at any axis, alone or
merged row-major with neighbouring per-sample axes (``[T, N, E]``, ``[N*H, T, d]``,
``[T*N, E]``), as torch's export of ``nn.MultiheadAttention`` (``batch_first`` True or
False) writes it. No node name is read: each op proves from the shapes alone that it keeps
samples apart, and is then emitted as the same op per sample. ``Transpose`` moves the batch
(with the axes merged with it); ``Reshape``/``Flatten`` keep it when one target axis holds
the batch as a whole, between factors of the elements before and after it
(:meth:`_Importer.reshape_value`); ``MatMul``/``Gemm`` by a constant, ``Softmax``, the
reductions, ``LayerNormalization``, ``Gather``/``Slice``, ``Squeeze``/``Unsqueeze`` act on
other axes only; element-wise ops, and ``Add``/``Mul``/``MatMul`` of two tensors holding
the batch the same way (not in a matrix axis), keep it where it is; a constant may not vary
along the batch's axis. Refused in one line naming the node: a reduction, softmax,
normalisation, gather or slice over the batch's axis, a product contracting it, a reshape
splitting it across samples, two operands holding it differently, any other op on a tensor
whose batch is not first, and an output that does not hold it first.

Constant subgraphs (initialisers, ``Constant``, ``Shape`` of a tensor whose shape is known,
``Gather``, ``Cast``, ``Slice``, ``Concat``, arithmetic...) are folded with numpy; the batch
dimension is tracked symbolically so that ``x.view(x.size(0), -1)`` exports fold correctly:
``c * N`` (``N * heads``, ``N * T``) is a multiple of a reserved negative int64, which folds
may move (``Gather``, ``Slice``, ``Concat``, ``Squeeze``, ``Unsqueeze``, ``Reshape``,
``Identity``, ``Cast`` to int64) or multiply by a positive integer (``Mul``); any other fold
reading it (a sum, a cast to float, the batch size squared...) is refused, and so is a file
whose own constants hold the reserved value.
A ``ConstantOfShape`` or ``Expand`` to a shape whose first entry is the batch size (torch's
``cls.expand(N, -1, -1)``, with its ``Equal``/``Where`` arithmetic) folds to a constant
broadcast over the batch, which only element-wise folds and a ``Concat`` with
input-dependent tensors may read; the batch size compared with a positive number, placed
after the first axis, or reshaped, is refused with the node's name.

Hostile files (``docs/robustness.md``): the importer never allocates what it has not
sized. Every tensor it decodes (initialisers, ``Constant`` attributes), folds (the result of
each constant-folded node is sized from its inputs' shapes before numpy computes it) or
materialises (layer weights, padding and permutation matrices, the activations of the
load-time checks) is counted against two limits, both settable in :func:`load_onnx` (and
``load_model(..., onnx_options={...})``):

* ``max_tensor_bytes`` (default :data:`MAX_TENSOR_BYTES`, 128 MiB, or 4x the file's size
  when that is larger): the largest single tensor;
* ``max_total_bytes`` (default :data:`MAX_TOTAL_BYTES`, 384 MiB, or 8x the file's size when
  that is larger): everything the import holds at once (tensors are never freed during an
  import, so this bounds its peak, on top of the interpreter and torch themselves).

A graph has at most :data:`MAX_NODES` nodes. The opset of the standard domain must lie in
[:data:`MIN_OPSET`, :data:`MAX_OPSET`] (each op must exist in it), and every
attribute of every node is checked against :data:`ATTRIBUTES` (the attributes the importer
implements for that op, their types and ranges; a float attribute must be finite). Every
failure is an :class:`OnnxImportError` naming the file, the node, its op and the reason.

When ``onnxruntime`` is installed the imported model is compared with it on random inputs
at load time (``check=True``, the default) and refused beyond a relative error of ``rtol``
(``1e-5``).
"""

from __future__ import annotations

import math
import operator
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.fx
from torch import nn

from boundkit.errors import ModelFileError
from boundkit.graph.compositions import MAX_PRELU_SLOPE

PathLike = str | os.PathLike[str]

#: largest tensor (elements) the importer decodes from a file or builds for a layer
MAX_ELEMENTS = 1 << 28
#: default per-tensor limit (bytes) of anything decoded, folded or materialised
MAX_TENSOR_BYTES = 128 << 20
#: default budget (bytes) of everything one import decodes, folds and materialises
MAX_TOTAL_BYTES = 384 << 20
#: the defaults grow with the file: per tensor 4x, in total 8x the file's bytes
TENSOR_BYTES_PER_FILE_BYTE, TOTAL_BYTES_PER_FILE_BYTE = 4, 8
#: the opsets of the standard domain the importer implements
#: (22 to 25 changed the schemas of the implemented ops only by adding element types, which
#: the importer refuses by dtype, or attributes, which it refuses by name)
MIN_OPSET, MAX_OPSET = 7, 25
#: largest per-sample tensor a stand-alone transpose may permute (as a dense matrix)
MAX_PERMUTATION = 4096
#: largest file the importer reads (bytes); protobuf itself is limited to 2 GiB
MAX_FILE_BYTES = 1 << 31
#: most nodes of a graph the importer reads (real classifiers have hundreds to a few thousand)
MAX_NODES = 20_000
#: the symbolic batch size inside folded shape arithmetic: ``c * _BATCH`` stands for ``c * N``
#: (a positive integer multiple of the batch size, e.g. ``N * heads`` in an attention export)
_BATCH = -(1 << 40) - 7
#: the largest ``c`` of a symbolic ``c * N`` (so that ``c * _BATCH`` fits an int64)
MAX_BATCH_FACTOR = 1 << 22


def _sym_mask(x: Any) -> np.ndarray:
    """Which entries of ``x`` stand for a multiple ``c * N`` of the batch size (``c >= 1``):
    the negative int64 multiples of :data:`_BATCH` (no real shape, index or count is one)."""
    x = np.asarray(x)
    if x.dtype != np.int64:
        return np.zeros(x.shape, dtype=bool)
    return (x <= _BATCH) & (x % _BATCH == 0)


def _is_sym(t: int) -> bool:
    return t <= _BATCH and t % _BATCH == 0


def _fmt_dims(dims: Sequence[int]) -> str:
    """A shape with symbolic entries written ``N`` or ``c*N``."""
    out = []
    for t in dims:
        t = int(t)
        out.append(("N" if t == _BATCH else f"{t // _BATCH}*N") if _is_sym(t) else str(t))
    return "[" + ", ".join(out) + "]"


class OnnxImportError(ModelFileError):
    """An ONNX file boundkit cannot import (unsupported node, bad attribute, too large...)."""


@dataclass(frozen=True)
class OnnxLimits:
    """Memory limits of one import (bytes): ``max_tensor_bytes`` per tensor decoded, folded
    or materialised, ``max_total_bytes`` for all of them together."""

    max_tensor_bytes: int = MAX_TENSOR_BYTES
    max_total_bytes: int = MAX_TOTAL_BYTES

    @classmethod
    def for_file(cls, file_bytes: int, max_tensor_bytes: int | None = None,
                 max_total_bytes: int | None = None) -> OnnxLimits:
        """The defaults for a file of ``file_bytes`` bytes, overridden where given."""
        from boundkit.validate import check_int

        for name, v in (("max_tensor_bytes", max_tensor_bytes),
                        ("max_total_bytes", max_total_bytes)):
            check_int(name, v, allow_none=True, minimum=1, maximum=1 << 50)
        per = max(MAX_TENSOR_BYTES, TENSOR_BYTES_PER_FILE_BYTE * file_bytes)
        tot = max(MAX_TOTAL_BYTES, TOTAL_BYTES_PER_FILE_BYTE * file_bytes)
        return cls(int(max_tensor_bytes) if max_tensor_bytes is not None else per,
                   int(max_total_bytes) if max_total_bytes is not None else tot)


# ----------------------------------------------------------------------------- attributes
# One entry per op: attribute name -> (ONNX attribute type, check of the decoded value, which
# returns why the value is refused or None). An attribute the op's entry does not list is
# refused ("not implemented"); ``REQUIRED`` lists those that must be present. A new op adds
# its entry here and inherits the checks (tests/models/test_onnx_hostile.py enforces that
# every handler has one).
_A_INT, _A_FLOAT, _A_STRING, _A_TENSOR, _A_INTS, _A_FLOATS = 2, 1, 3, 4, 7, 6


def _between(lo: int | None = None, hi: int | None = None) -> Any:
    def check(v: Any) -> str | None:
        vals = v if isinstance(v, list) else [v]
        if any((lo is not None and x < lo) or (hi is not None and x > hi) for x in vals):
            rng = f"[{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}]"
            return f"{v} is outside {rng}"
        return None
    return check


def _one_of(*choices: Any) -> Any:
    def check(v: Any) -> str | None:
        return None if v in choices else f"{v!r} is not one of {list(choices)}"
    return check


def _any(v: Any) -> str | None:
    return None


def _dims(n: int | None = None, lo: int = 0) -> Any:
    def check(v: Any) -> str | None:
        if n is not None and len(v) != n:
            return f"{v} does not have {n} values"
        return _between(lo, 1 << 20)(v)
    return check


def _ratio(v: Any) -> str | None:
    return None if 0.0 <= v < 1.0 else f"{v} is outside [0, 1)"


def _pos_float(v: Any) -> str | None:
    return None if v >= 0.0 else f"{v} is negative"


_BOOL = (_A_INT, _one_of(0, 1))
_AXIS = (_A_INT, _between(-64, 64))
_AUTO_PAD = (_A_STRING, _one_of("NOTSET", "VALID", "SAME_UPPER", "SAME_LOWER"))
_POOL = {"auto_pad": _AUTO_PAD, "kernel_shape": (_A_INTS, _dims(lo=1)),
         "pads": (_A_INTS, _dims(lo=0)), "strides": (_A_INTS, _dims(lo=1)),
         "dilations": (_A_INTS, _dims(lo=1)), "ceil_mode": _BOOL}

ATTRIBUTES: dict[str, dict[str, tuple[int, Any]]] = {
    "Constant": {"value": (_A_TENSOR, _any), "value_float": (_A_FLOAT, _any),
                 "value_floats": (_A_FLOATS, _any), "value_int": (_A_INT, _any),
                 "value_ints": (_A_INTS, _any)},
    "Mod": {"fmod": _BOOL},
    "Identity": {}, "Relu": {}, "Sigmoid": {}, "Tanh": {}, "Softplus": {}, "Neg": {},
    "Sqrt": {}, "Reciprocal": {}, "MatMul": {}, "Range": {}, "Size": {},
    "GlobalAveragePool": {},
    "Add": {}, "Sub": {}, "Mul": {}, "Div": {}, "Max": {}, "Min": {}, "Pow": {},
    "Dropout": {"seed": (_A_INT, _any), "ratio": (_A_FLOAT, _ratio), "is_test": _BOOL},
    "Cast": {"to": (_A_INT, _any), "saturate": _BOOL},
    "Shape": {"start": _AXIS, "end": _AXIS},
    "Gather": {"axis": _AXIS},
    "Squeeze": {"axes": (_A_INTS, _between(-64, 64))},
    "Unsqueeze": {"axes": (_A_INTS, _between(-64, 64))},
    "Concat": {"axis": _AXIS},
    "Reshape": {"allowzero": _BOOL},
    "Flatten": {"axis": _AXIS},
    "Transpose": {"perm": (_A_INTS, _between(0, 64))},
    "Slice": {"starts": (_A_INTS, _any), "ends": (_A_INTS, _any), "axes": (_A_INTS, _any)},
    "ConstantOfShape": {"value": (_A_TENSOR, _any)},
    "LeakyRelu": {"alpha": (_A_FLOAT, _any)},
    "Gemm": {"alpha": (_A_FLOAT, _any), "beta": (_A_FLOAT, _any), "transA": _BOOL,
             "transB": _BOOL},
    "Conv": {"auto_pad": _AUTO_PAD, "dilations": (_A_INTS, _dims(lo=1)),
             "group": (_A_INT, _between(1, 1 << 20)), "kernel_shape": (_A_INTS, _dims(lo=1)),
             "pads": (_A_INTS, _dims(lo=0)), "strides": (_A_INTS, _dims(lo=1))},
    "MaxPool": {**_POOL, "storage_order": (_A_INT, _one_of(0))},
    "AveragePool": {**_POOL, "count_include_pad": _BOOL},
    "BatchNormalization": {"epsilon": (_A_FLOAT, _pos_float), "momentum": (_A_FLOAT, _any),
                           "training_mode": _BOOL, "spatial": (_A_INT, _one_of(1)),
                           "is_test": _BOOL},
    "LRN": {"alpha": (_A_FLOAT, _any), "beta": (_A_FLOAT, _any), "bias": (_A_FLOAT, _any),
            "size": (_A_INT, _between(1, 1 << 16))},
    "Softmax": {"axis": _AXIS}, "LogSoftmax": {"axis": _AXIS},
    "TopK": {"axis": _AXIS, "largest": _BOOL, "sorted": _BOOL},
    "Pad": {"mode": (_A_STRING, _one_of("constant", "reflect", "edge", "wrap")),
            "pads": (_A_INTS, _between(0, 1 << 20)), "value": (_A_FLOAT, _any)},
    # issue 24's operators (their handlers check the values they support)
    "Gelu": {"approximate": (_A_STRING, _one_of("none", "tanh"))},
    "Elu": {"alpha": (_A_FLOAT, _any)},
    "HardSwish": {},
    "HardSigmoid": {"alpha": (_A_FLOAT, _any), "beta": (_A_FLOAT, _any)},
    # stop 33's element-wise operators
    "Abs": {}, "Softsign": {}, "PRelu": {},
    "Selu": {"alpha": (_A_FLOAT, _any), "gamma": (_A_FLOAT, _any)},
    "Celu": {"alpha": (_A_FLOAT, _any)},
    "Clip": {"min": (_A_FLOAT, _any), "max": (_A_FLOAT, _any)},
    "Erf": {},
    "ReduceMean": {"axes": (_A_INTS, _between(-64, 64)), "keepdims": _BOOL,
                   "noop_with_empty_axes": _BOOL},
    "ReduceSum": {"axes": (_A_INTS, _between(-64, 64)), "keepdims": _BOOL,
                  "noop_with_empty_axes": _BOOL},
    "ConvTranspose": {"auto_pad": _AUTO_PAD, "dilations": (_A_INTS, _dims(lo=1)),
                      "group": (_A_INT, _between(1, 1 << 20)),
                      "kernel_shape": (_A_INTS, _dims(lo=1)),
                      "output_padding": (_A_INTS, _dims(lo=0)),
                      "output_shape": (_A_INTS, _dims(lo=1)), "pads": (_A_INTS, _dims(lo=0)),
                      "strides": (_A_INTS, _dims(lo=1))},
    "Resize": {"mode": (_A_STRING, _one_of("nearest", "linear", "cubic")),
               "coordinate_transformation_mode": (_A_STRING, _one_of(
                   "half_pixel", "half_pixel_symmetric", "pytorch_half_pixel", "align_corners",
                   "asymmetric", "tf_crop_and_resize")),
               "nearest_mode": (_A_STRING, _one_of("round_prefer_floor", "round_prefer_ceil",
                                                   "floor", "ceil")),
               "antialias": _BOOL, "axes": (_A_INTS, _between(-64, 64)),
               "cubic_coeff_a": (_A_FLOAT, _any), "exclude_outside": _BOOL,
               "extrapolation_value": (_A_FLOAT, _any),
               "keep_aspect_ratio_policy": (_A_STRING, _one_of("stretch", "not_larger",
                                                               "not_smaller"))},
    "LayerNormalization": {"axis": _AXIS, "epsilon": (_A_FLOAT, _pos_float),
                           "stash_type": (_A_INT, _any)},
    # vision transformers: the shape arithmetic of torch's ``expand`` (folded)
    "Expand": {}, "Equal": {}, "Where": {},
}
#: attributes an op cannot do without
REQUIRED: dict[str, tuple[str, ...]] = {
    "Cast": ("to",), "Concat": ("axis",), "LRN": ("size",), "MaxPool": ("kernel_shape",),
    "AveragePool": ("kernel_shape",),
}


def _require_onnx(source: str = "") -> Any:
    try:
        import onnx
    except ImportError:
        raise ModelFileError(
            f"{source + ': ' if source else ''}loading ONNX models needs the optional package "
            "'onnx' (pip install 'boundkit[onnx]')"
        ) from None
    return onnx


def _mib(nbytes: int) -> str:
    return f"{nbytes / (1 << 20):.4g} MiB"


def _first(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


_ATTR_TYPE_NAMES = {1: "FLOAT", 2: "INT", 3: "STRING", 4: "TENSOR", 5: "GRAPH", 6: "FLOATS",
                    7: "INTS", 8: "STRINGS", 9: "TENSORS", 10: "GRAPHS", 11: "SPARSE_TENSOR",
                    12: "SPARSE_TENSORS", 13: "TYPE_PROTO", 14: "TYPE_PROTOS"}


# ----------------------------------------------------------------------------- values


@dataclass
class _Dyn:
    """A value that depends on the input: ``node`` holds a materialised tensor with
    per-sample shape ``base_shape``; the value itself has per-sample shape ``shape`` and
    element ``j`` (row-major) equal to ``base.flat[idx[j]]`` (``idx=None``: the identity)."""

    node: torch.fx.Node
    base_shape: tuple[int, ...]
    shape: tuple[int, ...]
    idx: np.ndarray | None = None
    #: ``(src, axes)`` when the value is ``base.reshape(src).permute(axes)`` regrouped to
    #: ``shape`` (a transpose of tokens): materialised by a ``permute`` node, at any size
    perm: tuple[tuple[int, ...], tuple[int, ...]] | None = None

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass
class _Moved:
    r"""An input-dependent value whose batch axis is not the first axis of the ONNX tensor,
    alone: the per-sample tensor ``v`` (per-sample shape ``s = v.shape``) with the batch
    axis inserted before per-sample axis ``pos`` and merged, row-major, with the per-sample
    axes ``g0 .. g1 - 1`` (``g0 <= pos <= g1``) into the ONNX axis number ``g0``:

    .. math::
        \text{onnx shape} = s_{<g_0} \,\|\, [N \prod_{g_0 \le i < g_1} s_i] \,\|\,
        s_{\ge g_1},\qquad
        \text{onnx}[\dots, (a N + n) B + b, \dots] = v_n[\dots, a, b, \dots]

    with ``a`` ranging over ``s[g0:pos]`` (the factors outside the batch), ``b`` over
    ``s[pos:g1]`` (inside it) and ``B = prod(s[pos:g1])``. Torch's export of
    ``nn.MultiheadAttention`` gives ``[T, N, E]`` (``g0 = pos = g1 = 1``),
    ``[N*H, T, d]`` (``g0 = pos = 0``, ``g1 = 1``) and ``[T*N, E]`` (``g0 = 0``,
    ``pos = g1 = 1``). Every ONNX axis other than ``g0`` is one per-sample axis, so an op
    on those axes is the same op on ``v`` per sample; an op that reads along axis ``g0``
    (a reduction, a contraction, a split that is not at the batch's factors) would mix
    samples and is refused. ``g0 = pos = g1 = 0`` is the usual layout (a :class:`_Dyn`)."""

    v: _Dyn
    g0: int
    pos: int
    g1: int

    @property
    def rank(self) -> int:
        """The rank of the ONNX tensor."""
        return len(self.v.shape) - (self.g1 - self.g0) + 1

    @property
    def factor(self) -> int:
        """``c`` of the batch axis's ONNX size ``c * N``."""
        return math.prod(self.v.shape[self.g0:self.g1])

    def onnx_shape(self) -> list[int]:
        """The ONNX shape, the batch axis as the symbolic ``c * _BATCH``."""
        s = self.v.shape
        return [*s[:self.g0], self.factor * _BATCH, *s[self.g1:]]

    def sample_axis(self, i: int) -> int:
        """The per-sample axis of ONNX axis ``i`` (in ``[0, rank)``, not ``g0``)."""
        return i if i < self.g0 else i - 1 + self.g1 - self.g0

    def describe(self) -> str:
        return _fmt_dims(self.onnx_shape())


def _sym_prod(dims: Sequence[int]) -> int:
    """The product of ONNX dims, one of which may be a symbolic ``c * N``."""
    sym = [int(t) for t in dims if _is_sym(int(t))]
    rest = math.prod(int(t) for t in dims if not _is_sym(int(t)))
    return rest * sym[0] if sym else rest


def _as_moved(v: _Dyn | _Moved) -> _Moved:
    return v if isinstance(v, _Moved) else _Moved(v, 0, 0, 0)


#: ops that read values whose batch axis is moved (:class:`_Moved`); any other op given one
#: is refused by name before its handler runs
_MOVED_OPS = frozenset({
    "Shape", "Identity", "Dropout", "Relu", "Sigmoid", "Tanh", "Softplus", "Gelu", "Elu",
    "HardSwish", "HardSigmoid", "Abs", "Softsign", "Celu",
    "Clip", "Erf", "Pow", "Transpose", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Gather",
    "Slice", "MatMul", "Gemm", "Add", "Sub", "Mul", "Div", "Softmax", "LayerNormalization",
    "ReduceMean", "ReduceSum",
})


class _Importer:
    def __init__(self, model: Any, source: str, layout: str,
                 limits: OnnxLimits | None = None) -> None:
        import onnx

        self.onnx = onnx
        self.model = model
        self.source = source
        self.layout = layout
        self.limits = limits or OnnxLimits()
        self.used_bytes = 0
        self.root = nn.Module()
        self.graph = torch.fx.Graph()
        self.values: dict[str, _Dyn | np.ndarray] = {}
        self.counter: dict[str, int] = {}
        self.consumers: dict[str, list[Any]] = {}
        self.out_name = ""
        self.input_name = ""
        self.onnx_input_shape: tuple[int, ...] = ()
        self.fixed_batch: int | None = None
        self.skip: set[int] = set()
        self.pending_pads: dict[str, list[int]] = {}
        self._attr_cache: dict[int, tuple[Any, dict[str, Any]]] = {}
        self.nodes: list[Any] = []
        self.node_pos: dict[int, int] = {}
        #: constants broadcast over the batch (``ConstantOfShape``/``Expand`` to a shape whose
        #: first entry is the batch size): held with a leading axis of 1 standing for the batch
        self.batch_bcast: set[str] = set()

    # ------------------------------------------------------------------ errors/helpers
    def fail(self, node: Any, why: str) -> OnnxImportError:
        if node is None:
            return OnnxImportError(f"{self.source}: {why}")
        name = node.name or f"#{self._index(node)}"
        return OnnxImportError(f"{self.source}: node {name!r} (op {node.op_type}): {why}")

    # ------------------------------------------------------------------ sizing
    def check_size(self, node: Any, numel: int, itemsize: int, what: str) -> int:
        """Refuse, before it is allocated, a tensor of ``numel`` elements of ``itemsize``
        bytes that exceeds the per-tensor limit or what is left of the total budget;
        returns its size in bytes. Every decode, fold and materialisation calls it."""
        numel, nbytes = int(numel), int(numel) * int(itemsize)
        lim = self.limits
        if numel < 0:
            raise self.fail(node, f"{what} has a negative size")
        if nbytes > lim.max_tensor_bytes:
            raise self.fail(node, f"{what} is too large: {_mib(nbytes)} ({numel} elements), "
                            f"above the per-tensor limit of {_mib(lim.max_tensor_bytes)} "
                            "(max_tensor_bytes)")
        if self.used_bytes + nbytes > lim.max_total_bytes:
            raise self.fail(node, f"{what} is too large: {_mib(nbytes)} with "
                            f"{_mib(self.used_bytes)} already held, above the import's budget of "
                            f"{_mib(lim.max_total_bytes)} (max_total_bytes)")
        return nbytes

    def charge(self, node: Any, numel: int, itemsize: int, what: str) -> None:
        """:meth:`check_size`, then count the tensor as held until the import ends."""
        self.used_bytes += self.check_size(node, numel, itemsize, what)

    def _index(self, node: Any) -> int:
        return self.node_pos.get(id(node), -1)

    def fresh(self, kind: str) -> str:
        i = self.counter.get(kind, 0)
        self.counter[kind] = i + 1
        return f"{kind}_{i}"

    def add_module(self, kind: str, module: nn.Module, arg: torch.fx.Node) -> torch.fx.Node:
        # the builders check their tensors' sizes before building (check_size); the built
        # module's parameters and buffers are held until the end of the import
        held = sum(t.numel() * t.element_size() for t in module.state_dict().values())
        self.charge(None, held, 1, f"the parameters of a {kind} layer")
        name = self.fresh(kind)
        self.root.add_module(name, module)
        return self.graph.call_module(name, (arg,))

    def attrs(self, node: Any) -> dict[str, Any]:
        """The node's attributes, decoded (tensors sized first) and checked against
        :data:`ATTRIBUTES` (cached per node)."""
        cached = self._attr_cache.get(id(node))
        if cached is not None and cached[0] is node:
            return cached[1]
        out: dict[str, Any] = {}
        spec = ATTRIBUTES.get(node.op_type)
        for a in node.attribute:
            if a.type in (self.onnx.AttributeProto.GRAPH, self.onnx.AttributeProto.GRAPHS):
                raise self.fail(node, f"attribute {a.name!r} holds a subgraph (control flow)")
            if a.name in out:
                raise self.fail(node, f"attribute {a.name!r} is given twice")
            if spec is not None and a.name not in spec:
                raise self.fail(node, f"attribute {a.name!r} is not implemented for "
                                f"{node.op_type} (known: {sorted(spec) or 'none'})")
            if spec is not None and a.type != spec[a.name][0]:
                raise self.fail(node, f"attribute {a.name!r} has type "
                                f"{_ATTR_TYPE_NAMES.get(a.type, a.type)}, expected "
                                f"{_ATTR_TYPE_NAMES.get(spec[a.name][0])}")
            if a.type == self.onnx.AttributeProto.TENSOR:
                v = self.tensor(a.t, node)
            elif a.type in (_A_INT, _A_FLOAT, _A_STRING, _A_INTS, _A_FLOATS):
                if a.type in (_A_INTS, _A_FLOATS):
                    n = len(a.ints) if a.type == _A_INTS else len(a.floats)
                    self.charge(node, n, 8, f"attribute {a.name!r}")
                v = self.onnx.helper.get_attribute_value(a)
                v = v.decode(errors="replace") if isinstance(v, bytes) else v
                v = list(v) if isinstance(v, (list, tuple)) or hasattr(v, "__len__") and \
                    not isinstance(v, str) else v
            else:
                raise self.fail(node, f"attribute {a.name!r} has type "
                                f"{_ATTR_TYPE_NAMES.get(a.type, a.type)}, which the importer "
                                "does not read")
            if a.type in (_A_FLOAT, _A_FLOATS) and not np.isfinite(
                    np.asarray(v, dtype=np.float64)).all():
                raise self.fail(node, f"attribute {a.name!r} = {v} is not finite")
            if spec is not None:
                why = spec[a.name][1](v)
                if why:
                    raise self.fail(node, f"attribute {a.name!r}: {why}")
            out[a.name] = v
        for req in REQUIRED.get(node.op_type, ()):
            if req not in out:
                raise self.fail(node, f"the required attribute {req!r} is missing")
        self._attr_cache[id(node)] = (node, out)
        return out

    def tensor(self, t: Any, node: Any = None) -> np.ndarray:
        """Decode a TensorProto after checking its declared size against the limits and
        against the bytes that actually back it."""
        from onnx import helper, numpy_helper

        if node is None:
            where = f"initialiser {t.name!r}"
        else:
            where = f"the tensor attribute{' ' + repr(t.name) if t.name else ''}"
        if t.data_location == self.onnx.TensorProto.EXTERNAL or len(t.external_data):
            raise self.fail(node, f"{where} refers to external data files; boundkit reads "
                            "self-contained ONNX files only")
        if t.HasField("segment"):
            raise self.fail(node, f"{where} is a segment of a tensor (not supported)")
        dims = [int(d) for d in t.dims]
        if any(d < 0 for d in dims) or len(dims) > 64:
            raise self.fail(node, f"{where} declares dims {dims}")
        numel = math.prod(dims)
        if numel > MAX_ELEMENTS:
            raise self.fail(node, f"{where} declares dims {dims} (too large)")
        try:
            dt = np.dtype(helper.tensor_dtype_to_np_dtype(int(t.data_type)))
        except Exception:  # unknown data type code
            raise self.fail(node, f"{where} has unknown data type {t.data_type}") from None
        if dt.kind not in "biuf" or dt.itemsize > 8:
            raise self.fail(node, f"{where} has unsupported dtype {dt}")
        self.charge(node, numel, max(dt.itemsize, 1), where)
        if t.HasField("raw_data"):
            held = len(t.raw_data) // max(dt.itemsize, 1)
            if len(t.raw_data) != numel * dt.itemsize:
                held = -1 if held == numel else held
        else:
            held = max(len(t.float_data), len(t.int32_data), len(t.int64_data),
                       len(t.double_data), len(t.uint64_data))
        if held != numel:
            raise self.fail(node, f"{where} declares dims {dims} ({numel} values) but holds "
                            f"{held}")
        try:
            arr = numpy_helper.to_array(t)
        except Exception as exc:  # malformed payloads raise many types
            raise self.fail(node, f"{where} cannot be decoded: {_first(exc)}") from None
        if arr.dtype.kind not in "biuf":
            raise self.fail(node, f"{where} has unsupported dtype {arr.dtype}")
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise self.fail(node, f"{where} holds NaN or infinity")
        if _sym_mask(arr).any():
            raise self.fail(node, f"{where} holds a value the importer reserves for the "
                            "symbolic batch size")
        return arr if arr.flags.writeable else arr.copy()

    def const(self, node: Any, i: int, what: str) -> np.ndarray:
        v = self.value(node, i)
        if not isinstance(v, np.ndarray):
            raise self.fail(node, f"{what} (input {i}) must be a constant")
        return v

    def named(self, node: Any, i: int, what: str) -> str:
        """``what 'tensor name'`` for messages about input ``i``."""
        name = node.input[i] if i < len(node.input) else ""
        return f"{what} {name!r}" if name else what

    def dyn(self, node: Any, i: int) -> _Dyn:
        v = self.value(node, i)
        if isinstance(v, _Moved):
            raise self.fail(node, self._moved_why(node, i, v))
        if not isinstance(v, _Dyn):
            raise self.fail(node, f"input {i} must depend on the model input")
        return v

    def anydyn(self, node: Any, i: int) -> _Dyn | _Moved:
        """Input ``i``, input-dependent, its batch axis first or moved."""
        v = self.value(node, i)
        if not isinstance(v, (_Dyn, _Moved)):
            raise self.fail(node, f"input {i} must depend on the model input")
        return v

    def _moved_why(self, node: Any, i: int, v: _Moved) -> str:
        return (f"{self.named(node, i, 'input')} of shape {v.describe()} holds the batch in "
                f"axis {v.g0}, not first alone; {node.op_type} on such a tensor is not "
                "supported")

    def place(self, v: _Dyn, g0: int, pos: int, g1: int) -> _Dyn | _Moved:
        """``v`` with its batch axis placed as :class:`_Moved` says, size-1 per-sample axes
        merged with the batch dropped; the usual layout (batch first, alone) is a ``_Dyn``."""
        s = list(v.shape)
        keep = [i for i in range(len(s)) if not (g0 <= i < g1 and s[i] == 1)]
        if len(keep) != len(s):
            pos = g0 + sum(1 for i in keep if g0 <= i < pos)
            g1 = g0 + sum(1 for i in keep if g0 <= i < g1)
            v = self.view(v, [s[i] for i in keep])
        if g0 == pos == g1 == 0:
            return v
        return _Moved(v, g0, pos, g1)

    def value(self, node: Any, i: int) -> _Dyn | np.ndarray | None:
        if i >= len(node.input) or node.input[i] == "":
            return None
        name = node.input[i]
        if name not in self.values:
            raise self.fail(node, f"input {name!r} is not defined before the node")
        return self.values[name]

    def opt_const(self, node: Any, i: int) -> np.ndarray | None:
        v = self.value(node, i)
        if v is not None and not isinstance(v, np.ndarray):
            raise self.fail(node, f"input {i} must be a constant")
        return v

    # ------------------------------------------------------------------ views
    def materialize(self, v: _Dyn, node: Any = None) -> torch.fx.Node:
        """Emit the ops that make ``v`` a real tensor of per-sample shape ``v.shape``."""
        base = math.prod(v.base_shape)
        if v.perm is not None:  # an axis permutation: a permute node (exact, any size)
            src, axes = v.perm
            x = self.reshape(v.node, v.base_shape, src)
            out = self.graph.call_method("permute", (x, 0, *(a + 1 for a in axes)))
            return self.reshape(out, tuple(src[a] for a in axes), v.shape)
        if v.idx is not None and (v.idx.size != base or
                                  not np.array_equal(v.idx, np.arange(v.idx.size))):
            m = v.idx.size
            if max(m, base) > MAX_PERMUTATION:
                where = f"node {node.name!r} (op {node.op_type})" if node is not None else "a node"
                raise OnnxImportError(
                    f"{self.source}: {where} needs a transposed tensor of {m} elements that "
                    f"cannot be folded into a linear layer (limit {MAX_PERMUTATION})"
                )
            flat = self.reshape(v.node, v.base_shape, (base,))
            self.check_size(node, 2 * m * base, 4, "a permutation matrix")
            # a permutation, or a selection (Gather, Slice): row j picks base[idx[j]]
            w = torch.zeros(m, base)
            w[torch.arange(m), torch.as_tensor(v.idx)] = 1.0
            lin = nn.Linear(base, m, bias=False)
            with torch.no_grad():
                lin.weight.copy_(w)
            out = self.add_module("permute", lin, flat)
            return self.reshape(out, (m,), v.shape)
        return self.reshape(v.node, v.base_shape, v.shape)

    def reshape(
        self, n: torch.fx.Node, src: tuple[int, ...], dst: tuple[int, ...]
    ) -> torch.fx.Node:
        if tuple(src) == tuple(dst):
            return n
        if len(dst) == 1 and len(src) >= 1:  # (a per-sample scalar [N] has no axis 1)
            return self.graph.call_function(torch.flatten, (n, 1))
        return self.graph.call_method("reshape", (n, -1, *dst))

    def real(self, v: _Dyn, node: Any = None) -> _Dyn:
        n = self.materialize(v, node)
        return _Dyn(n, v.shape, v.shape)

    def view(self, v: _Dyn, shape: Sequence[int]) -> _Dyn:
        shape = tuple(int(s) for s in shape)
        assert math.prod(shape) == v.numel
        return _Dyn(v.node, v.base_shape, shape, v.idx, v.perm)

    def unary(self, v: _Dyn | _Moved, module: nn.Module, kind: str) -> Any:
        """An element-wise op commutes with any regrouping/permutation, and with where the
        batch axis is: apply it to the base tensor and keep the view (and the layout)."""
        if isinstance(v, _Moved):
            return _Moved(self.unary(v.v, module, kind), v.g0, v.pos, v.g1)
        return _Dyn(self.add_module(kind, module, v.node), v.base_shape, v.shape, v.idx,
                    v.perm)

    def unary_call(self, v: _Dyn | _Moved, fn: Any) -> Any:
        """:meth:`unary` with a torch function (``torch.abs``) instead of a module."""
        if isinstance(v, _Moved):
            return _Moved(self.unary_call(v.v, fn), v.g0, v.pos, v.g1)
        return _Dyn(self.graph.call_function(fn, (v.node,)), v.base_shape, v.shape, v.idx,
                    v.perm)

    # ------------------------------------------------------------------ the walk
    def check_opset(self) -> int:
        """The opset of the standard domain, which must lie in [MIN_OPSET, MAX_OPSET]."""
        found = [int(o.version) for o in self.model.opset_import if o.domain in ("", "ai.onnx")]
        if not found:
            raise OnnxImportError(f"{self.source}: the file declares no opset for the standard "
                                  "ONNX domain")
        if len(set(found)) > 1:
            raise OnnxImportError(f"{self.source}: the file declares opsets {found} for the "
                                  "standard ONNX domain")
        if not MIN_OPSET <= found[0] <= MAX_OPSET:
            raise OnnxImportError(
                f"{self.source}: opset {found[0]} is not one the importer implements "
                f"({MIN_OPSET} to {MAX_OPSET}); re-export the model with an opset in that range")
        return found[0]

    def check_schema(self, node: Any) -> None:
        """The op exists in the file's opset (e.g. ``Range`` needs opset 11)."""
        opset = self.check_opset()
        try:
            schema = self.onnx.defs.get_schema(node.op_type, opset, "")
        except Exception:  # onnx's SchemaError
            raise self.fail(node, f"{node.op_type} does not exist in opset {opset}") from None
        # an input the schema does not have (Unsqueeze-11 given axes as an input) would be
        # read by a handler written for a later opset: the file is not valid ONNX
        for what, n, most in (("inputs", len(node.input), schema.max_input),
                              ("outputs", len(node.output), schema.max_output)):
            if n > most:
                raise self.fail(node, f"has {n} {what}; {node.op_type} in opset {opset} "
                                f"(version {schema.since_version}) takes at most {most}")

    def run(self) -> tuple[torch.fx.GraphModule, tuple[int, ...], tuple[int, ...]]:
        g = self.model.graph
        self.check_opset()
        init_names = set()
        for t in g.initializer:
            if t.name in init_names:
                raise OnnxImportError(f"{self.source}: initialiser {t.name!r} is defined twice")
            self.values[t.name] = self.tensor(t)
            init_names.add(t.name)
        if len(getattr(g, "sparse_initializer", [])):
            raise OnnxImportError(f"{self.source}: sparse initialisers are not supported")
        inputs = [i for i in g.input if i.name not in init_names]
        if len(inputs) != 1:
            raise OnnxImportError(
                f"{self.source}: the graph has {len(inputs)} inputs "
                f"{[i.name for i in inputs]}; a classifier takes exactly one"
            )
        if len(g.output) != 1:
            raise OnnxImportError(
                f"{self.source}: the graph has {len(g.output)} outputs; a classifier returns "
                "one logit tensor"
            )
        inp = inputs[0]
        self.input_name = inp.name
        self.out_name = g.output[0].name
        shape = self._declared_shape(inp)
        self.onnx_input_shape = shape
        x = self.graph.placeholder("x")
        if self.layout == "nhwc":
            if len(shape) != 3:
                raise OnnxImportError(
                    f"{self.source}: layout 'nhwc' needs an image input [N, H, W, C], the "
                    f"file declares [N, {', '.join(map(str, shape))}]"
                )
            h, w, c = shape
            # the module takes NCHW; the ONNX value is its NHWC view
            idx = np.arange(c * h * w).reshape(c, h, w).transpose(1, 2, 0).ravel()
            self.values[inp.name] = _Dyn(x, (c, h, w), shape, idx, ((c, h, w), (1, 2, 0)))
            module_shape: tuple[int, ...] = (c, h, w)
        else:
            self.values[inp.name] = _Dyn(x, shape, shape)
            module_shape = shape
        nodes = list(g.node)
        if len(nodes) > MAX_NODES:
            raise OnnxImportError(f"{self.source}: the graph has {len(nodes)} nodes; the importer "
                                  f"reads at most {MAX_NODES}")
        self.nodes = nodes
        self.node_pos = {id(n): i for i, n in enumerate(nodes)}
        for node in nodes:
            if node.domain not in ("", "ai.onnx"):
                raise self.fail(node, f"operator domain {node.domain!r} is not standard ONNX")
            self.consumers_count(node)
        for k, node in enumerate(nodes):
            if k in self.skip:
                continue
            self.step(k, node)
        if self.out_name not in self.values:
            raise OnnxImportError(f"{self.source}: the graph output {self.out_name!r} is never set")
        out = self.values[self.out_name]
        if isinstance(out, _Moved):
            raise OnnxImportError(f"{self.source}: the output {out.describe()} does not hold "
                                  "the batch in its first axis alone")
        if not isinstance(out, _Dyn):
            raise OnnxImportError(f"{self.source}: the output does not depend on the input")
        if len(out.shape) != 1:
            raise OnnxImportError(
                f"{self.source}: the output has per-sample shape {list(out.shape)}; a classifier "
                "returns logits [N, C]"
            )
        self.graph.output(self.materialize(out))
        gm = torch.fx.GraphModule(self.root, self.graph, class_name="OnnxModel")
        return gm.eval(), module_shape, shape

    def activation_bytes(self) -> int:
        """Bytes (float32) of one sample's materialised activations: every distinct tensor
        the values of the graph are views of, twice (for the layers' internal
        intermediates: the branches of a LeakyRelu, a padding in front of a convolution)."""
        seen: dict[int, int] = {}
        for v in self.values.values():
            v = v.v if isinstance(v, _Moved) else v
            if isinstance(v, _Dyn):
                seen[id(v.node)] = max(seen.get(id(v.node), 0), math.prod(v.base_shape))
        return 2 * 4 * sum(seen.values())

    def consumers_count(self, node: Any) -> None:
        for name in node.input:
            self.consumers.setdefault(name, []).append(node)

    def only_consumer(self, name: str) -> Any | None:
        c = self.consumers.get(name, [])
        if len(c) == 1 and name != self.out_name:
            return c[0]
        return None

    def _declared_shape(self, inp: Any) -> tuple[int, ...]:
        tt = inp.type.tensor_type
        if not inp.type.HasField("tensor_type") or not tt.HasField("shape"):
            raise OnnxImportError(f"{self.source}: input {inp.name!r} has no declared shape")
        if tt.elem_type not in (self.onnx.TensorProto.FLOAT, self.onnx.TensorProto.DOUBLE):
            raise OnnxImportError(f"{self.source}: input {inp.name!r} is not a float tensor")
        dims = []
        for d in tt.shape.dim:
            dims.append(int(d.dim_value) if d.HasField("dim_value") else None)
        if len(dims) < 2:
            raise OnnxImportError(
                f"{self.source}: input {inp.name!r} has shape {dims}; expected [N, ...]"
            )
        rest = dims[1:]
        if any(d is None or d <= 0 for d in rest):
            raise OnnxImportError(
                f"{self.source}: input {inp.name!r} has symbolic or empty non-batch dims {dims}"
            )
        if math.prod(rest) > MAX_ELEMENTS:
            raise OnnxImportError(f"{self.source}: input {inp.name!r} is too large: {dims}")
        self.check_size(None, math.prod(rest), 8, f"one sample of input {inp.name!r} {dims}")
        self.fixed_batch = dims[0]
        return tuple(int(d) for d in rest)  # type: ignore[arg-type]

    def step(self, k: int, node: Any) -> None:
        op = node.op_type
        args = [self.value(node, i) for i in range(len(node.input))]
        present = [a for a in args if a is not None]
        folding = op not in ("Shape", "Size") and all(isinstance(a, np.ndarray) for a in present)
        handler = self.fold if folding else getattr(self, f"op_{op}", None)
        if handler is None:
            raise self.fail(node, "this operator is not supported by boundkit's importer")
        if op not in _MOVED_OPS:
            for i, a in enumerate(args):
                if isinstance(a, _Moved):
                    raise self.fail(node, self._moved_why(node, i, a))
        self.check_schema(node)
        self.attrs(node)  # the attributes are checked for every node, used or not
        if folding:
            self.check_batch_bcast(node, args)
        else:
            self.check_dyn_consts(node, args)
        try:
            with np.errstate(all="ignore"):
                outs = self.fold(node, args) if folding else handler(node, k)
        except ModelFileError:
            raise
        except (ValueError, TypeError, IndexError, KeyError, ZeroDivisionError, OverflowError,
                RuntimeError, AssertionError, MemoryError) as exc:
            # a combination of shapes and attributes no check above anticipated: still named
            raise self.fail(node, f"cannot be imported ({_first(exc)})") from None
        if not isinstance(outs, list):
            outs = [outs]
        for i, name in enumerate(node.output):
            if not name:
                continue
            if name in self.values and self.values[name] is not outs[min(i, len(outs) - 1)]:
                raise self.fail(node, f"output {name!r} is already defined (not a valid graph)")
            if i >= len(outs):
                if self.consumers.get(name) or name == self.out_name:
                    raise self.fail(node, f"output {i} ({name!r}) is not supported")
                continue
            self.values[name] = outs[i]
            if folding and self._makes_batch_bcast(node, args):
                self.batch_bcast.add(name)

    # ------------------------------------------------------------------ batch broadcasts
    #: (op, input) pairs of input-dependent ops that read the symbolic batch size in a
    #: constant input and track it (a Reshape target ``[N, -1]``, Resize sizes ``[N, C, H, W]``)
    _SYM_DYN_INPUTS = frozenset({("Reshape", 1), ("Resize", 3)})
    #: input-dependent ops that take a constant broadcast over the batch (held with a leading
    #: axis of 1) as an element-wise operand or a Concat part
    _BCAST_DYN_OPS = frozenset({"Add", "Sub", "Mul", "Div", "Concat", "Shape"})

    def check_dyn_consts(self, node: Any, args: list[Any]) -> None:
        """Refuse an input-dependent op whose constant input holds the symbolic batch size
        (a Slice step, Gather indices, pads, axes ... read as plain integers would be the
        reserved value, not ``N``) or is a constant broadcast over the batch read as
        anything but an element-wise operand (Gather indices of ``[N]`` entries)."""
        if node.op_type == "Shape":
            return
        for i, x in enumerate(args):
            if not isinstance(x, np.ndarray):
                continue
            if (node.op_type, i) not in self._SYM_DYN_INPUTS and _sym_mask(x).any():
                raise self.fail(node, f"{self.named(node, i, 'input')} ({i}) holds the batch "
                                f"size, which {node.op_type} would read as a plain integer; "
                                "not supported")
            if node.input[i] in self.batch_bcast and node.op_type not in self._BCAST_DYN_OPS:
                raise self.fail(node, f"{self.named(node, i, 'input')} ({i}) is a constant "
                                f"broadcast over the batch, which {node.op_type} cannot read "
                                "(only element-wise operands and Concat parts may be)")

    #: ops that fold a batch-broadcast constant element-wise (its leading axis stays the batch)
    _BCAST_ELEMENTWISE = frozenset({"Add", "Sub", "Mul", "Div", "Max", "Min", "Pow", "Identity",
                                    "Cast", "Neg", "Sqrt", "Reciprocal", "Where", "Expand"})

    def _expand_to_batch(self, node: Any, shape: list[int]) -> tuple[list[int], bool]:
        """A target shape whose first entry may be the symbolic batch size: (the shape with
        1 for the batch, whether it had it); the batch size anywhere else is refused."""
        if any(_is_sym(s) for s in shape[1:]):
            raise self.fail(node, "a constant broadcast to a shape with the batch size after "
                            "its first axis")
        if shape and _is_sym(shape[0]) and shape[0] != _BATCH:
            raise self.fail(node, f"a constant broadcast to {_fmt_dims(shape)} (a multiple of "
                            "the batch size first)")
        if shape and shape[0] == _BATCH:
            return [1, *shape[1:]], True
        return shape, False

    def _makes_batch_bcast(self, node: Any, args: list[Any]) -> bool:
        if node.op_type in ("ConstantOfShape", "Expand"):
            shape = args[0] if node.op_type == "ConstantOfShape" else args[1]
            if shape is not None and shape.size and int(shape.ravel()[0]) == _BATCH:
                return True
        return any(n in self.batch_bcast for n in node.input)

    def check_batch_bcast(self, node: Any, args: list[Any]) -> None:
        """A fold reading a constant broadcast over the batch is element-wise (its leading
        axis stays the batch axis), else refused."""
        held = [x for n, x in zip(node.input, args) if n in self.batch_bcast]
        if not held:
            return
        if node.op_type not in self._BCAST_ELEMENTWISE:
            raise self.fail(node, "this operator on a constant broadcast over the batch "
                            "(from ConstantOfShape or Expand) cannot be folded")
        r = held[0].ndim
        if any(x is not None and x.ndim > r for x in args):
            raise self.fail(node, "a constant broadcast over the batch meets a constant of "
                            "higher rank (the batch axis would move)")

    # ------------------------------------------------------------------ constant folding
    def fold(self, node: Any, args: list[Any]) -> Any:
        """Fold a node whose inputs are all constants: size the result from the inputs'
        shapes (:meth:`fold_size`) and charge it before numpy computes it; refuse a result
        holding NaN or infinity (a weight divided by zero, an overflow...)."""
        op = node.op_type
        a = self.attrs(node)
        f = getattr(self, f"fold_{op}", None)
        if f is None and op in _NP_BINARY:
            f = self._fold_binary
        if f is None:
            raise self.fail(node, "cannot fold this operator on constants")
        for i, x in enumerate(args):
            if x is not None and not isinstance(x, np.ndarray):
                raise self.fail(node, f"input {i} is not a tensor")
        had_sym = self.check_sym_inputs(node, args, a)
        numel, itemsize = self.fold_size(node, args, a)
        nbytes = self.check_size(node, numel, itemsize, "the folded result")
        out = f(node, args, a)
        out = [np.asarray(o) for o in out] if isinstance(out, list) else np.asarray(out)
        outs = out if isinstance(out, list) else [out]
        inputs = [x for x in args if x is not None]
        for i, o in enumerate(outs):
            passed = any(o is x for x in inputs)  # an input passed on (Identity): no bytes
            if o.nbytes > max(nbytes, 64) and not passed:
                raise self.fail(node, f"folded result of shape {list(o.shape)} is larger than "
                                "sized (an importer bug; please report it)")
            if o.dtype.kind not in "biuf":
                raise self.fail(node, f"folded result has unsupported dtype {o.dtype}")
            if o.dtype.kind == "f" and not np.isfinite(o).all():
                raise self.fail(node, f"folding output {node.output[i]!r} gives NaN or infinity "
                                "(e.g. a division by zero or an overflow in the graph's "
                                "constants)")
            if not any(np.may_share_memory(o, x) for x in inputs):
                self.charge(node, o.nbytes, 1, "the folded result")
            if not had_sym and _sym_mask(o).any():
                raise self.fail(node, f"folding output {node.output[i]!r} gives a value the "
                                "importer reserves for the symbolic batch size")
        return out

    #: folds that may read a multiple ``c * N`` of the batch size, and in which inputs
    #: (``None``: all): they move it (a shape vector gathered, sliced, concatenated...) or
    #: multiply it by a positive constant (:meth:`_fold_binary`); ``Equal``, ``Where``,
    #: ``ConstantOfShape`` and ``Expand`` check it themselves. Any other fold reading it is
    #: refused: its result would depend on the batch size in a way the importer does not track.
    _SYM_INPUTS: dict[str, tuple[int, ...] | None] = {
        "Identity": (0,), "Dropout": (0,), "Cast": (0,), "Concat": None, "Gather": (0,),
        "Squeeze": (0,), "Unsqueeze": (0,), "Reshape": (0,), "Slice": (0,), "Mul": None,
        "Equal": None, "Where": (1, 2), "ConstantOfShape": (0,), "Expand": (1,),
    }

    def check_sym_inputs(self, node: Any, args: list[Any], a: dict[str, Any]) -> bool:
        """Refuse a fold that reads the symbolic batch size where it is not tracked;
        whether any input holds it."""
        found = [i for i, x in enumerate(args) if x is not None and _sym_mask(x).any()]
        if not found:
            return False
        ok = self._SYM_INPUTS.get(node.op_type, ())
        if node.op_type == "Cast" and int(a.get("to", 0)) != self.onnx.TensorProto.INT64:
            ok = ()  # a cast to a float or a narrower integer would lose the symbol
        bad = [i for i in found if ok is not None and i not in ok]
        if bad:
            raise self.fail(node, f"arithmetic on the batch size is not supported (input "
                            f"{bad[0]} holds it)")
        return True

    def fold_size(self, node: Any, args: list[Any], a: dict[str, Any]) -> tuple[int, int]:
        """(elements, bytes per element) of a fold's result, computed from the inputs'
        shapes and the attributes only, with the checks that make the fold well defined.
        An op without a ``size_<Op>`` method is element-wise or smaller: at most its
        largest input, at 8 bytes per element."""
        fn = getattr(self, f"size_{node.op_type}", None)
        if fn is None and node.op_type in _NP_BINARY:
            fn = self.size_binary
        if fn is not None:
            return fn(node, args, a)
        sizes = [x.size for x in args if x is not None]
        return (max(sizes) if sizes else 1), 8

    def _rank_axis(self, node: Any, ax: int, r: int, what: str = "axis") -> int:
        if not -r <= ax < r:
            raise self.fail(node, f"{what} {ax} is out of range for a tensor of rank {r}")
        return ax % r

    def _ints_input(self, node: Any, x: Any, what: str) -> list[int]:
        if x is None:
            raise self.fail(node, f"{what} is missing")
        if x.dtype.kind not in "iu" or x.ndim > 1:
            raise self.fail(node, f"{what} must be a 1-D integer tensor, got {x.dtype} of shape "
                            f"{list(x.shape)}")
        return [int(v) for v in x.ravel()]

    def size_binary(self, node: Any, args: list[Any], a: dict[str, Any]) -> tuple[int, int]:
        if len(args) != 2 or args[0] is None or args[1] is None:
            raise self.fail(node, f"expects 2 inputs, got {len(args)}")
        x, y = args
        try:
            shape = np.broadcast_shapes(x.shape, y.shape)
        except ValueError:
            raise self.fail(node, f"constants of shapes {list(x.shape)} and {list(y.shape)} do "
                            "not broadcast") from None
        if node.op_type in ("Div", "Mod") and (y == 0).any():
            raise self.fail(node, f"{self.named(node, 1, 'the divisor')} holds zeros (division "
                            f"by zero of {self.named(node, 0, 'the constant')})")
        return math.prod(shape), np.result_type(x, y).itemsize

    def size_Mod(self, node: Any, args: list[Any], a: dict[str, Any]) -> tuple[int, int]:
        return self.size_binary(node, args, a)

    def size_Constant(self, node: Any, args: list[Any], a: dict[str, Any]) -> tuple[int, int]:
        return 0, 1  # the attribute was sized when it was decoded

    def size_Identity(self, node: Any, args: list[Any], a: dict[str, Any]) -> tuple[int, int]:
        return 0, 1  # no copy

    size_Dropout = size_Identity

    def size_Shape(self, node: Any, args: list[Any], a: dict[str, Any]) -> tuple[int, int]:
        return 64, 8

    def size_Cast(self, node: Any, args: list[Any], a: dict[str, Any]) -> tuple[int, int]:
        from onnx import helper

        try:
            dt = np.dtype(helper.tensor_dtype_to_np_dtype(int(a["to"])))
        except Exception:
            raise self.fail(node, f"cast to unknown data type {a['to']}") from None
        if dt.kind not in "biuf" or dt.itemsize > 8:
            raise self.fail(node, f"cast to unsupported dtype {dt}")
        return args[0].size, dt.itemsize

    def size_Gather(self, node: Any, args: list[Any], a: dict[str, Any]) -> tuple[int, int]:
        data, ind = args[0], args[1] if len(args) > 1 else None
        if ind is None or ind.dtype.kind not in "iu":
            raise self.fail(node, "the indices must be an integer tensor")
        if data.ndim == 0:
            raise self.fail(node, "gathering from a scalar")
        ax = self._rank_axis(node, int(a.get("axis", 0)), data.ndim)
        d = data.shape[ax]
        if ind.size and (ind.min() < -d or ind.max() >= d):
            raise self.fail(node, f"indices outside [-{d}, {d - 1}] on axis {ax}")
        return data.size // max(d, 1) * ind.size if d else 0, data.itemsize

    def size_Concat(self, node: Any, args: list[Any], a: dict[str, Any]) -> tuple[int, int]:
        parts = [x for x in args if x is not None]
        if not parts:
            raise self.fail(node, "nothing to concatenate")
        r = parts[0].ndim
        if r == 0 or any(x.ndim != r for x in parts):
            raise self.fail(node, f"inputs of ranks {[x.ndim for x in parts]} (equal ranks >= 1 "
                            "expected)")
        ax = self._rank_axis(node, int(a["axis"]), r)
        rest = [x.shape[:ax] + x.shape[ax + 1:] for x in parts]
        if any(t != rest[0] for t in rest):
            raise self.fail(node, f"shapes {[list(x.shape) for x in parts]} do not concatenate "
                            f"on axis {ax}")
        return sum(x.size for x in parts), max(x.itemsize for x in parts)

    def size_ConstantOfShape(self, node: Any, args: list[Any], a: dict[str, Any]
                             ) -> tuple[int, int]:
        shape = self._ints_input(node, args[0] if args else None, "the shape")
        shape, _ = self._expand_to_batch(node, shape)
        if any(s < 0 for s in shape) or len(shape) > 64:
            raise self.fail(node, f"bad shape {shape}")
        v = a.get("value")
        if v is not None and v.size != 1:
            raise self.fail(node, f"the value attribute holds {v.size} elements (one expected)")
        return math.prod(shape), 4 if v is None else v.itemsize

    def _expand_shape(self, node: Any, args: list[Any]) -> tuple[int, ...]:
        x = args[0]
        shape = self._ints_input(node, args[1] if len(args) > 1 else None, "the shape")
        shape, _ = self._expand_to_batch(node, shape)
        if any(s < 0 for s in shape) or len(shape) > 64:
            raise self.fail(node, f"bad shape {shape}")
        try:
            return tuple(np.broadcast_shapes(x.shape, tuple(shape)))
        except ValueError:
            raise self.fail(node, f"shape {list(x.shape)} does not expand to {shape}") from None

    def size_Expand(self, node: Any, args: list[Any], a: dict[str, Any]) -> tuple[int, int]:
        return math.prod(self._expand_shape(node, args)), args[0].itemsize

    def fold_Expand(self, node: Any, args: list[Any], a: dict[str, Any]) -> np.ndarray:
        return np.broadcast_to(args[0], self._expand_shape(node, args)).copy()

    def size_Where(self, node: Any, args: list[Any], a: dict[str, Any]) -> tuple[int, int]:
        if len(args) != 3 or any(x is None for x in args):
            raise self.fail(node, "expects 3 inputs")
        if args[0].dtype.kind != "b":
            raise self.fail(node, f"the condition has dtype {args[0].dtype}, expected bool")
        try:
            shape = np.broadcast_shapes(*(x.shape for x in args))
        except ValueError:
            raise self.fail(node, "the inputs do not broadcast") from None
        return math.prod(shape), np.result_type(args[1], args[2]).itemsize

    def fold_Where(self, node: Any, args: list[Any], a: dict[str, Any]) -> np.ndarray:
        return np.where(args[0], args[1], args[2]).astype(np.result_type(args[1], args[2]))

    def fold_Equal(self, node: Any, args: list[Any], a: dict[str, Any]) -> np.ndarray:
        """Element-wise equality; the symbolic batch size compares equal to itself and
        unequal to a number <= 0 (a batch holds at least one sample), anything else is
        refused (the answer would depend on the batch size)."""
        x, y = np.broadcast_arrays(args[0], args[1])
        for p, q in ((x, y), (y, x)):
            if p.dtype.kind in "iu":
                at = _sym_mask(p)
                if (at & ~_sym_mask(q) & (q > 0)).any():
                    raise self.fail(node, "a comparison of the batch size with a positive "
                                    "number (the answer depends on the batch size)")
        return np.equal(x, y)

    def size_Range(self, node: Any, args: list[Any], a: dict[str, Any]) -> tuple[int, int]:
        if len(args) != 3 or any(x is None or x.size != 1 for x in args):
            raise self.fail(node, "start, limit and delta must be three scalars")
        self._no_batch(node, *args)
        start, limit, delta = (float(x.ravel()[0]) for x in args)
        if delta == 0:
            raise self.fail(node, "delta is 0 (an infinite range)")
        if not all(math.isfinite(v) for v in (start, limit, delta)):
            raise self.fail(node, "start, limit and delta must be finite")
        return max(0, math.ceil((limit - start) / delta)), max(args[0].itemsize, 1)

    def size_Reshape(self, node: Any, args: list[Any], a: dict[str, Any]) -> tuple[int, int]:
        x = args[0]
        s = self._ints_input(node, args[1] if len(args) > 1 else None, "the target shape")
        allowzero = int(a.get("allowzero", 0))
        if not allowzero:
            if any(v == 0 and i >= x.ndim for i, v in enumerate(s)):
                raise self.fail(node, f"target {s} copies a dimension the input "
                                f"{list(x.shape)} does not have")
            s = [x.shape[i] if v == 0 else v for i, v in enumerate(s)]
        if s.count(-1) > 1 or any(v < -1 for v in s):
            raise self.fail(node, f"bad target shape {s}")
        known = math.prod(v for v in s if v != -1)
        if (-1 in s and (known == 0 or x.size % known)) or (-1 not in s and known != x.size):
            raise self.fail(node, f"target shape {s} does not fit {x.size} elements "
                            f"(shape {list(x.shape)})")
        return x.size, x.itemsize

    def size_Transpose(self, node: Any, args: list[Any], a: dict[str, Any]) -> tuple[int, int]:
        x, perm = args[0], a.get("perm")
        if perm is not None and sorted(int(p) for p in perm) != list(range(x.ndim)):
            raise self.fail(node, f"perm {list(perm)} is not a permutation of the {x.ndim} "
                            "axes")
        return x.size, x.itemsize

    def size_Flatten(self, node: Any, args: list[Any], a: dict[str, Any]) -> tuple[int, int]:
        x = args[0]
        ax = int(a.get("axis", 1))
        if not -x.ndim <= ax <= x.ndim:
            raise self.fail(node, f"axis {ax} is out of range for a tensor of rank {x.ndim}")
        return x.size, x.itemsize

    def size_Squeeze(self, node: Any, args: list[Any], a: dict[str, Any]) -> tuple[int, int]:
        x = args[0]
        axes = self._axes(node, args, a)
        if axes is not None:
            axes = [self._rank_axis(node, v, x.ndim) for v in axes]
            if len(set(axes)) != len(axes) or any(x.shape[v] != 1 for v in axes):
                raise self.fail(node, f"axes {axes} are not distinct axes of size 1 in "
                                f"{list(x.shape)}")
        return x.size, x.itemsize

    def size_Unsqueeze(self, node: Any, args: list[Any], a: dict[str, Any]) -> tuple[int, int]:
        x = args[0]
        axes = self._axes(node, args, a) or []
        r = x.ndim + len(axes)
        axes = [self._rank_axis(node, v, r) for v in axes]
        if len(set(axes)) != len(axes):
            raise self.fail(node, f"axes {axes} repeat an axis")
        return x.size, x.itemsize

    def size_Slice(self, node: Any, args: list[Any], a: dict[str, Any]) -> tuple[int, int]:
        x = args[0]
        starts, ends, axes, steps = self._slice_args(node, args, a)
        if not len(starts) == len(ends) == len(axes) == len(steps):
            raise self.fail(node, f"starts {starts}, ends {ends}, axes {axes} and steps "
                            f"{steps} differ in length")
        if any(st == 0 for st in steps):
            raise self.fail(node, f"steps {steps} hold a 0")
        axes = [self._rank_axis(node, v, x.ndim) for v in axes]
        if len(set(axes)) != len(axes):
            raise self.fail(node, f"axes {axes} repeat an axis")
        return x.size, x.itemsize

    def _slice_args(self, node: Any, args: list[Any], a: dict[str, Any]
                    ) -> tuple[list[int], list[int], list[int], list[int]]:
        if len(args) >= 3:
            starts = self._ints_input(node, args[1], "starts")
            ends = self._ints_input(node, args[2], "ends")
            axes = self._ints_input(node, args[3], "axes") if len(args) > 3 and \
                args[3] is not None else list(range(len(starts)))
            steps = self._ints_input(node, args[4], "steps") if len(args) > 4 and \
                args[4] is not None else [1] * len(starts)
        else:
            if "starts" not in a or "ends" not in a:
                raise self.fail(node, "starts and ends are missing")
            starts, ends = [int(v) for v in a["starts"]], [int(v) for v in a["ends"]]
            axes = [int(v) for v in a["axes"]] if "axes" in a else list(range(len(starts)))
            steps = [1] * len(starts)
        return starts, ends, axes, steps

    def _no_batch(self, node: Any, *arrs: Any) -> None:
        for x in arrs:
            if isinstance(x, np.ndarray) and _sym_mask(x).any():
                raise self.fail(node, "arithmetic on the batch size is not supported")

    def _fold_binary(self, node: Any, args: list[Any], a: dict[str, Any]) -> np.ndarray:
        x, y = args[0], args[1]
        if node.op_type == "Mul" and (_sym_mask(x).any() or _sym_mask(y).any()):
            return self._fold_sym_mul(node, x, y)
        self._no_batch(node, x, y)
        fn = _NP_BINARY[node.op_type]
        if node.op_type == "Div" and x.dtype.kind in "iu":
            return np.trunc(x / y).astype(x.dtype)
        return np.asarray(fn(x, y)).astype(np.result_type(x, y), copy=False)

    def _fold_sym_mul(self, node: Any, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """``c * N`` times a positive integer ``k``: ``(c k) * N`` (``N * heads`` and
        ``N * T`` in attention exports); the batch size times itself, times a number that
        is not a positive integer, or a factor above :data:`MAX_BATCH_FACTOR` is refused."""
        if x.dtype != np.int64 or y.dtype != np.int64:
            raise self.fail(node, "arithmetic on the batch size is not supported (a product "
                            "with a non-int64 tensor)")
        xb, yb = np.broadcast_arrays(x, y)
        sx, sy = _sym_mask(xb), _sym_mask(yb)
        if (sx & sy).any():
            raise self.fail(node, "arithmetic on the batch size is not supported (the batch "
                            "size times itself)")
        coef = np.where(sx, xb // _BATCH, np.where(sy, yb // _BATCH, 0))
        other = np.where(sx, yb, np.where(sy, xb, 1))
        if ((sx | sy) & ((other < 1) | (other > MAX_BATCH_FACTOR))).any() or (
                coef * np.minimum(other, MAX_BATCH_FACTOR + 1) > MAX_BATCH_FACTOR).any():
            raise self.fail(node, "arithmetic on the batch size is not supported (the batch "
                            f"size times a number outside [1, {MAX_BATCH_FACTOR}], or a "
                            "multiple of it above that)")
        plain = np.where(sx | sy, 1, xb) * np.where(sx | sy, 1, yb)
        if (~(sx | sy) & _sym_mask(plain)).any():
            raise self.fail(node, "folding gives a value the importer reserves for the "
                            "symbolic batch size")
        return np.where(sx | sy, coef * other * _BATCH, plain).astype(np.int64)

    def fold_Mod(self, node: Any, args: list[Any], a: dict[str, Any]) -> np.ndarray:
        """``Mod`` of constants (``fmod=1``: the sign of the dividend, else the divisor's)."""
        x, y = args[0], args[1]
        self._no_batch(node, x, y)
        if int(a.get("fmod", 0)) == 0 and (x.dtype.kind == "f" or y.dtype.kind == "f"):
            raise self.fail(node, "fmod=0 on floating-point tensors (not valid ONNX)")
        fn = np.fmod if int(a.get("fmod", 0)) else np.mod
        return np.asarray(fn(x, y)).astype(np.result_type(x, y), copy=False)

    def fold_Constant(self, node: Any, args: list[Any], a: dict[str, Any]) -> np.ndarray:
        if "value" in a:
            return np.asarray(a["value"])
        for key, dt in (("value_float", np.float32), ("value_int", np.int64)):
            if key in a:
                return np.asarray(a[key], dtype=dt)
        for key, dt in (("value_floats", np.float32), ("value_ints", np.int64)):
            if key in a:
                return np.asarray(a[key], dtype=dt)
        raise self.fail(node, f"unsupported Constant attributes {sorted(a)}")

    def fold_Identity(self, node: Any, args: list[Any], a: dict[str, Any]) -> np.ndarray:
        return args[0]

    def fold_Cast(self, node: Any, args: list[Any], a: dict[str, Any]) -> np.ndarray:
        from onnx import helper

        dt = helper.tensor_dtype_to_np_dtype(int(a["to"]))
        return args[0].astype(dt)

    def fold_Neg(self, node: Any, args: list[Any], a: dict[str, Any]) -> np.ndarray:
        self._no_batch(node, args[0])
        return -args[0]

    def fold_Sqrt(self, node: Any, args: list[Any], a: dict[str, Any]) -> np.ndarray:
        return np.sqrt(args[0])

    def fold_Reciprocal(self, node: Any, args: list[Any], a: dict[str, Any]) -> np.ndarray:
        return (1.0 / args[0]).astype(args[0].dtype)

    def fold_Shape(self, node: Any, args: list[Any], a: dict[str, Any]) -> np.ndarray:
        return np.asarray(args[0].shape, dtype=np.int64)

    def fold_Gather(self, node: Any, args: list[Any], a: dict[str, Any]) -> np.ndarray:
        data, ind = args[0], args[1]
        axis = int(a.get("axis", 0))
        try:
            return np.take(data, ind.astype(np.int64), axis=axis)
        except IndexError as exc:
            raise self.fail(node, str(exc)) from None

    def _axes(self, node: Any, args: list[Any], a: dict[str, Any]) -> list[int] | None:
        """The ``axes`` of Squeeze/Unsqueeze (input or attribute); ``None`` when absent or
        empty (Squeeze reads an empty list as "no axes": every axis of size 1)."""
        if len(args) > 1 and args[1] is not None:
            return [int(v) for v in np.asarray(args[1]).ravel()] or None
        if "axes" in a:
            return [int(v) for v in a["axes"]] or None
        return None

    def fold_Unsqueeze(self, node: Any, args: list[Any], a: dict[str, Any]) -> np.ndarray:
        x = args[0]
        axes = self._axes(node, args, a) or []
        r = x.ndim + len(axes)
        for ax in sorted(v % r for v in axes):
            x = np.expand_dims(x, ax)
        return x

    def fold_Squeeze(self, node: Any, args: list[Any], a: dict[str, Any]) -> np.ndarray:
        x = args[0]
        axes = self._axes(node, args, a)
        if axes is None:
            return np.squeeze(x)
        return np.squeeze(x, axis=tuple(v % x.ndim for v in axes))

    def fold_Concat(self, node: Any, args: list[Any], a: dict[str, Any]) -> np.ndarray:
        return np.concatenate([x for x in args if x is not None], axis=int(a["axis"]))

    def fold_Reshape(self, node: Any, args: list[Any], a: dict[str, Any]) -> np.ndarray:
        x, s = args[0], [int(v) for v in args[1].ravel()]
        if not int(a.get("allowzero", 0)):
            s = [x.shape[i] if v == 0 else v for i, v in enumerate(s)]
        return x.reshape(s)

    def fold_Flatten(self, node: Any, args: list[Any], a: dict[str, Any]) -> np.ndarray:
        ax = int(a.get("axis", 1)) % max(args[0].ndim, 1)
        return args[0].reshape(math.prod(args[0].shape[:ax]), -1)

    def fold_Transpose(self, node: Any, args: list[Any], a: dict[str, Any]) -> np.ndarray:
        perm = a.get("perm")
        return np.transpose(args[0], perm)

    def fold_Slice(self, node: Any, args: list[Any], a: dict[str, Any]) -> np.ndarray:
        x = args[0]
        starts, ends, axes, steps = self._slice_args(node, args, a)  # checked by size_Slice
        sl = [slice(None)] * x.ndim
        for s, e, ax, st in zip(starts, ends, axes, steps):
            big = np.iinfo(np.int64).max // 2
            e = None if e >= big else (None if (st < 0 and e <= -big) else int(e))
            sl[int(ax) % x.ndim] = slice(int(s), e, int(st))
        return x[tuple(sl)]

    def fold_ConstantOfShape(self, node: Any, args: list[Any], a: dict[str, Any]) -> np.ndarray:
        shape = [int(v) for v in args[0].ravel()]  # checked by size_ConstantOfShape
        shape, _ = self._expand_to_batch(node, shape)
        v = a.get("value", np.zeros(1, dtype=np.float32))
        return np.full(shape, v.ravel()[0], dtype=v.dtype)

    def fold_Range(self, node: Any, args: list[Any], a: dict[str, Any]) -> np.ndarray:
        start, limit, delta = (x.ravel()[0] for x in args)  # checked by size_Range
        return np.arange(start, limit, delta, dtype=args[0].dtype)

    # ------------------------------------------------------------------ dynamic ops
    def op_Shape(self, node: Any, k: int) -> np.ndarray:
        v = self.value(node, 0)
        if isinstance(v, np.ndarray):
            full = np.asarray(v.shape, dtype=np.int64)
            if node.input[0] in self.batch_bcast:
                full[0] = _BATCH
        elif isinstance(v, _Moved):
            full = np.asarray(v.onnx_shape(), dtype=np.int64)
        else:
            full = np.asarray([_BATCH, *v.shape], dtype=np.int64)
        a = self.attrs(node)
        start, end = int(a.get("start", 0)), a.get("end")
        return full[start : (int(end) if end is not None else None)]

    def op_Identity(self, node: Any, k: int) -> _Dyn | _Moved:
        return self.anydyn(node, 0)

    def check_inference_dropout(self, node: Any) -> None:
        """Dropout is the identity only in inference mode: the ``training_mode`` input
        (opset >= 12) must be absent or a constant false; in training mode onnxruntime
        draws a random mask (and the ratio then matters)."""
        if len(node.input) > 2 and node.input[2]:
            t = self.value(node, 2)
            if not isinstance(t, np.ndarray) or t.size != 1 or bool(t.reshape(-1)[0]):
                raise self.fail(node, f"{self.named(node, 2, 'training_mode')} is not a "
                                "constant false: Dropout in training mode draws a random "
                                "mask; not supported")

    def fold_Dropout(self, node: Any, args: list[Any], a: dict[str, Any]) -> np.ndarray:
        self.check_inference_dropout(node)
        return self.fold_Identity(node, args, a)

    def op_Dropout(self, node: Any, k: int) -> _Dyn | _Moved:
        self.check_inference_dropout(node)
        for i in range(1, len(node.output)):
            if node.output[i] and self.consumers.get(node.output[i]):
                raise self.fail(node, "the dropout mask output is used")
        return self.anydyn(node, 0)

    def op_Relu(self, node: Any, k: int) -> _Dyn | _Moved:
        return self.unary(self.anydyn(node, 0), nn.ReLU(), "relu")

    def op_Sigmoid(self, node: Any, k: int) -> _Dyn | _Moved:
        return self.unary(self.anydyn(node, 0), nn.Sigmoid(), "sigmoid")

    def op_Tanh(self, node: Any, k: int) -> _Dyn | _Moved:
        return self.unary(self.anydyn(node, 0), nn.Tanh(), "tanh")

    def op_Softplus(self, node: Any, k: int) -> _Dyn:
        # torch's Softplus switches to the identity above `threshold` (error < 2e-9 at 20);
        # a large threshold keeps the function ONNX's log(1 + exp(x)) to float precision.
        return self.unary(self.anydyn(node, 0), nn.Softplus(beta=1.0, threshold=20.0), "softplus")

    # ---- activations of issue 24 (GELU, SiLU, ELU, Clip) and their export patterns
    def op_Gelu(self, node: Any, k: int) -> _Dyn:
        approx = self.attrs(node).get("approximate", "none")
        approx = approx.decode() if isinstance(approx, bytes) else str(approx)
        if approx not in ("none", "tanh"):
            raise self.fail(node, f"approximate={approx!r}")
        return self.unary(self.anydyn(node, 0), nn.GELU(approximate=approx), "gelu")

    def op_Elu(self, node: Any, k: int) -> _Dyn:
        alpha = float(self.attrs(node).get("alpha", 1.0))
        if not math.isfinite(alpha):
            raise self.fail(node, f"alpha={alpha}")
        return self.unary(self.anydyn(node, 0), nn.ELU(alpha=alpha), "elu")

    def hardsigmoid_params(self, node: Any) -> tuple[float, float, bool]:
        """A ``HardSigmoid`` node's ``(alpha, beta)`` and whether they are torch's
        ``Hardsigmoid`` (``alpha = 1/6`` to float32 precision, as exported; ``beta = 1/2``)."""
        a = self.attrs(node)
        alpha, beta = float(a.get("alpha", 0.2)), float(a.get("beta", 0.5))
        return alpha, beta, abs(alpha - 1 / 6) <= 1e-7 and beta == 0.5

    def op_HardSigmoid(self, node: Any, k: int) -> _Dyn:
        """``max(0, min(1, alpha x + beta))`` with torch's parameters: ``nn.Hardsigmoid``;
        other values are refused by name."""
        alpha, beta, torchs = self.hardsigmoid_params(node)
        if not torchs:
            raise self.fail(node, f"HardSigmoid alpha={alpha:g}, beta={beta:g}: boundkit "
                            "supports torch's Hardsigmoid (alpha 1/6, beta 1/2)")
        return self.unary(self.anydyn(node, 0), nn.Hardsigmoid(), "hardsigmoid")

    def op_HardSwish(self, node: Any, k: int) -> _Dyn:
        """``x * max(0, min(1, x / 6 + 1/2))`` (no attributes): torch's Hardswish."""
        return self.unary(self.anydyn(node, 0), nn.Hardswish(), "hardswish")

    def op_Clip(self, node: Any, k: int) -> _Dyn:
        a = self.attrs(node)
        lo = self.opt_const(node, 1) if len(node.input) > 1 else a.get("min")
        hi = self.opt_const(node, 2) if len(node.input) > 2 else a.get("max")
        for what, c in (("min", lo), ("max", hi)):
            c = None if c is None else np.asarray(c)
            if c is not None and (c.size != 1 or c.ndim > 1):  # onnxruntime refuses them too
                raise self.fail(node, f"Clip's {what} of shape {list(c.shape)} is not a scalar")
        lo = None if lo is None else float(np.asarray(lo).reshape(-1)[0])
        hi = None if hi is None else float(np.asarray(hi).reshape(-1)[0])
        v = self.anydyn(node, 0)
        if lo is not None and hi is None and lo == 0.0:
            return self.unary(v, nn.ReLU(), "relu")
        if (lo is None) != (hi is None) and isinstance(v, _Dyn):  # one bound: max / min
            one = lo if hi is None else hi
            if not math.isfinite(one):
                raise self.fail(node, f"Clip(min={lo}, max={hi}): a finite bound is supported")
            return self.extremum_const(node, self.real(v, node), np.asarray(one), hi is None)
        if lo is None or hi is None or not (math.isfinite(lo) and math.isfinite(hi)) or lo > hi:
            raise self.fail(node, f"Clip(min={lo}, max={hi}): two finite bounds (or one, on "
                            "a tensor whose batch axis is first) are supported")
        return self.unary(v, nn.Hardtanh(lo, hi), "hardtanh")

    def _producers(self) -> dict[str, tuple[int, Any]]:
        if not hasattr(self, "_producer_map"):
            self._producer_map = {o: (i, n) for i, n in enumerate(self.nodes) for o in n.output}
        return self._producer_map

    def _const_input(self, node: Any, other: str, rank: int) -> float | None:
        """The scalar constant operand of a binary ``node`` whose other operand is named
        ``other`` and has ONNX rank ``rank`` (``None`` when it is not such a node). A
        one-element constant of higher rank is not a scalar there: ONNX broadcasting would
        prepend axes to the result (a ``[1, 1, 1, E]`` "bias" moves the batch to axis 1)."""
        if node is None or len(node.input) != 2 or other not in node.input:
            return None
        name = node.input[1 - list(node.input).index(other)]
        c = self.values.get(name)
        prod = self._producers().get(name, (None, None))[1]
        if c is None and prod is not None and prod.op_type == "Constant":
            c = self.fold(prod, [])  # a Constant written after its first reader
        if not isinstance(c, np.ndarray) or c.size != 1 or c.ndim > rank:
            return None
        return float(c.reshape(-1)[0])

    def _rank_of(self, name: str) -> int:
        """The ONNX rank of the input-dependent value ``name`` (0 when it is not one)."""
        v = self.values.get(name)
        return _as_moved(v).rank if isinstance(v, (_Dyn, _Moved)) else 0

    def op_Erf(self, node: Any, k: int) -> _Dyn:
        """GELU as exporters write it: ``x * 0.5 * (1 + erf(x / sqrt 2))`` (the ``Div`` or
        ``Mul`` by a constant, ``Erf``, ``Add 1``, two ``Mul`` in either order)."""
        why = "Erf is supported only inside GELU's pattern x * 0.5 * (1 + erf(x / sqrt(2)))"
        prods = self._producers()
        scaled = prods.get(node.input[0], (None, None))[1]
        if scaled is None or scaled.op_type not in ("Div", "Mul"):
            raise self.fail(node, why)
        x_name = scaled.input[0] if isinstance(self.values.get(scaled.input[0]),
                                               (_Dyn, _Moved)) else (
            scaled.input[1])
        c = self._const_input(scaled, x_name, self._rank_of(x_name))
        r2 = math.sqrt(2.0)
        if c is None or not math.isclose(c if scaled.op_type == "Div" else 1 / c, r2,
                                         rel_tol=1e-6):
            raise self.fail(node, why)
        v = self.values[x_name]
        if not isinstance(v, (_Dyn, _Moved)):
            raise self.fail(node, why)
        chain = self._gelu_tail(node, x_name, why)
        return self._replace_chain(v, nn.GELU(), chain)

    def _gelu_tail(self, node: Any, x_name: str, why: str) -> list[Any]:
        """The nodes after GELU's ``erf`` or ``tanh`` node ``node``: ``Add 1``, then
        ``x * (1 + .)`` and ``* 0.5``, or ``(x * 0.5) * (1 + .)``; each the only reader of
        the one before (so nothing else sees the intermediate values)."""
        rank = self._rank_of(x_name)  # every value of the pattern has x's shape
        add = self.only_consumer(node.output[0])
        if add is None or add.op_type != "Add" or not math.isclose(
                self._const_input(add, node.output[0], rank) or 0.0, 1.0, rel_tol=1e-7):
            raise self.fail(node, why)
        mul = self.only_consumer(add.output[0])
        if mul is None or mul.op_type != "Mul" or len(mul.input) != 2:
            raise self.fail(node, why)
        other = mul.input[1 - list(mul.input).index(add.output[0])]
        chain = [add, mul]
        if other == x_name:  # x * (1 + erf), then * 0.5
            half = self.only_consumer(mul.output[0])
            if half is None or half.op_type != "Mul" or not math.isclose(
                    self._const_input(half, mul.output[0], rank) or 0.0, 0.5, rel_tol=1e-7):
                raise self.fail(node, why)
            chain.append(half)
        else:  # (x * 0.5) * (1 + erf)
            hx = self._producers().get(other, (None, None))[1]
            if hx is None or hx.op_type != "Mul" or not math.isclose(
                    self._const_input(hx, x_name, rank) or 0.0, 0.5, rel_tol=1e-7):
                raise self.fail(node, why)
        return chain

    def _replace_chain(self, v: _Dyn, module: nn.Module, chain: list[Any]) -> _Dyn:
        """One activation node for a recognised export pattern: the nodes of ``chain``
        (all after the current one) are skipped, the last one's output is the activation."""
        out = self.unary(v, module, str(module.__class__.__name__).lower())
        for n in chain:
            self.skip.add(self._producers()[n.output[0]][0])
        self.values[chain[-1].output[0]] = out
        return out

    #: the constants of GELU's tanh form, 0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3)))
    _GELU_TANH_C = (0.044715, math.sqrt(2.0 / math.pi))

    def _tanh_gelu(self, node: Any) -> _Dyn | None:
        """GELU(approximate="tanh") as torch's TorchScript exporter writes it, starting at
        the cube's first node ``node`` (``Mul(x, x)`` or ``Pow(x, 3)``): ``x^3``,
        ``* 0.044715``, ``+ x``, ``* sqrt(2 / pi)``, ``Tanh``, then GELU's tail
        (:meth:`_gelu_tail`). ``None`` when ``node`` does not start this pattern."""
        x_name = node.input[0]
        v = self.values.get(x_name)
        if not isinstance(v, (_Dyn, _Moved)):
            return None
        if node.op_type == "Pow":
            p = self._const_input(node, x_name, _as_moved(v).rank)
            if p is None or p != 3.0 or node.input[0] != x_name:
                return None
            cube, chain = node, []
        else:
            if list(node.input) != [x_name, x_name]:
                return None
            cube = self.only_consumer(node.output[0])
            if cube is None or cube.op_type != "Mul" or sorted(cube.input) != sorted(
                    [x_name, node.output[0]]):
                return None
            chain = [cube]
        kappa, beta = self._GELU_TANH_C
        steps: list[tuple[str, float | None]] = [("Mul", kappa), ("Add", None), ("Mul", beta),
                                                 ("Tanh", None)]
        prev = cube
        for op, c in steps:
            nxt = self.only_consumer(prev.output[0])
            if nxt is None or nxt.op_type != op:
                return None
            if c is not None and not math.isclose(
                    self._const_input(nxt, prev.output[0], _as_moved(v).rank) or 0.0, c,
                    rel_tol=1e-6):
                return None
            if op == "Add" and sorted(nxt.input) != sorted([x_name, prev.output[0]]):
                return None
            chain.append(nxt)
            prev = nxt
        why = "a Tanh inside GELU's tanh pattern with a tail that is not GELU's"
        try:
            chain += self._gelu_tail(prev, x_name, why)
        except ModelFileError:
            return None
        return self._replace_chain(v, nn.GELU(approximate="tanh"), chain)

    def op_Pow(self, node: Any, k: int) -> _Dyn:
        """``Pow`` of an input-dependent tensor: only as the cube of GELU's tanh form."""
        out = self._tanh_gelu(node)
        if out is None:
            raise self.fail(node, "Pow of an input-dependent tensor is supported only as "
                            "x^3 inside GELU's tanh pattern")
        return out

    def op_LeakyRelu(self, node: Any, k: int) -> _Dyn:
        alpha = float(self.attrs(node).get("alpha", 0.01))
        return self.slope_relu(node, self.real(self.dyn(node, 0), node), np.asarray(alpha))

    def slope_relu(self, node: Any, v: _Dyn, alpha: np.ndarray) -> _Dyn:
        """``max(x, 0) + alpha * min(x, 0)`` as ``alpha * x + (1 - alpha) * relu(x)`` (exact;
        ``alpha`` a constant ONNX broadcasts against ``x``: LeakyRelu's one slope, PRelu's
        one per channel or element)."""
        if not bool(np.isfinite(alpha).all()):
            raise self.fail(node, "a slope is not finite")
        if alpha.size and float(np.abs(alpha).max()) > MAX_PRELU_SLOPE:
            # alpha x + (1 - alpha) x cancels to x only to about u |alpha x|
            raise self.fail(node, f"a slope of magnitude {float(np.abs(alpha).max()):.3g}: "
                            f"slopes of magnitude <= {MAX_PRELU_SLOPE:g} are supported")
        if alpha.size == 1 and float(alpha.reshape(-1)[0]) == 0.0:
            return self.unary(v, nn.ReLU(), "relu")
        if alpha.ndim > 0:
            self._out_broadcast(node, v, alpha)
        lin = self.scale_shift(v, alpha, None, node, "leaky_linear")
        r = self.unary(v, nn.ReLU(), "relu")
        r = self.scale_shift(r, 1.0 - alpha, None, node, "leaky_relu")
        out = self.graph.call_function(torch.add, (lin.node, r.node))
        return _Dyn(out, v.shape, v.shape)

    def op_PRelu(self, node: Any, k: int) -> _Dyn:
        slope = self._float(node, self.const(node, 1, "the slope"), "the slope")
        return self.slope_relu(node, self.real(self.dyn(node, 0), node), slope)

    def op_Abs(self, node: Any, k: int) -> _Dyn | _Moved:
        return self.unary_call(self.anydyn(node, 0), torch.abs)

    def op_Softsign(self, node: Any, k: int) -> _Dyn | _Moved:
        return self.unary(self.anydyn(node, 0), nn.Softsign(), "softsign")

    def op_Celu(self, node: Any, k: int) -> _Dyn | _Moved:
        alpha = float(self.attrs(node).get("alpha", 1.0))
        if not (math.isfinite(alpha) and alpha > 0):
            raise self.fail(node, f"alpha={alpha}: a finite alpha > 0 is supported")
        return self.unary(self.anydyn(node, 0), nn.CELU(alpha=alpha), "celu")

    def op_Selu(self, node: Any, k: int) -> _Dyn:
        """``gamma * elu_alpha(x)`` with the file's ``alpha`` and ``gamma`` (ONNX's defaults
        are torch's SELU constants rounded to float32)."""
        a = self.attrs(node)
        alpha = float(a.get("alpha", 1.67326319217681884765625))
        gamma = float(a.get("gamma", 1.05070102214813232421875))
        if not (math.isfinite(alpha) and math.isfinite(gamma)):
            raise self.fail(node, f"alpha={alpha}, gamma={gamma}")
        e = self.unary(self.real(self.dyn(node, 0), node), nn.ELU(alpha=alpha), "elu")
        return self.scale_shift(e, np.asarray(gamma), None, node, "selu_scale")

    def _extremum(self, node: Any, fn: Any) -> _Dyn:
        """``Max`` / ``Min`` of two inputs: ``torch.maximum`` / ``torch.minimum`` of two
        tensors of one shape; with a constant ``c``, ``c + relu(x - c)`` /
        ``x - relu(x - c)`` (exact)."""
        if len(node.input) != 2:
            raise self.fail(node, f"{node.op_type} of {len(node.input)} inputs: two are "
                            "supported")
        x, y, _ = self._binary(node)
        if not isinstance(x, _Dyn):
            raise self.fail(node, "an operand whose batch axis is not first")
        v = self.real(x, node)
        if isinstance(y, (_Dyn, _Moved)):
            if not isinstance(y, _Dyn) or tuple(y.shape) != tuple(v.shape):
                raise self.fail(node, f"{node.op_type} of tensors of shapes {list(v.shape)} and "
                                f"{list(_as_moved(y).v.shape)} (broadcasting between inputs)")
            w = self.real(y, node)
            return _Dyn(self.graph.call_function(fn, (v.node, w.node)), v.shape, v.shape)
        return self.extremum_const(node, v, y, fn is torch.maximum)

    def extremum_const(self, node: Any, v: _Dyn, c: np.ndarray, maximum: bool) -> _Dyn:
        """``max(x, c) = c + relu(x - c)`` or ``min(x, c) = x - relu(x - c)`` for a
        constant ``c`` ONNX broadcasts against ``x`` (exact identities)."""
        if not bool(np.isfinite(c).all()):
            raise self.fail(node, "a constant operand is not finite")
        if c.ndim > 0:
            self._out_broadcast(node, v, c)
        d = self.scale_shift(v, None, -c, node, "extremum_diff")
        r = self.unary(d, nn.ReLU(), "relu")
        if maximum:
            return self.scale_shift(r, None, c, node, "extremum_max")
        nr = self.scale_shift(r, np.asarray(-1.0), None, node, "extremum_min")
        return _Dyn(self.graph.call_function(torch.add, (v.node, nr.node)), v.shape, v.shape)

    def op_Max(self, node: Any, k: int) -> _Dyn:
        return self._extremum(node, torch.maximum)

    def op_Min(self, node: Any, k: int) -> _Dyn:
        return self._extremum(node, torch.minimum)

    def op_Flatten(self, node: Any, k: int) -> _Dyn | _Moved:
        val = self.anydyn(node, 0)
        ax = int(self.attrs(node).get("axis", 1))
        m = _as_moved(val)
        r = m.rank
        if not -r <= ax <= r:
            raise self.fail(node, f"axis {ax} is out of range for a tensor of rank {r}")
        ax = ax % r if ax < 0 else ax
        if isinstance(val, _Dyn) and ax == 1:
            return self.view(val, (val.numel,))
        dims = m.onnx_shape()
        return self.reshape_value(node, val, [_sym_prod(dims[:ax]), _sym_prod(dims[ax:])])

    def op_Reshape(self, node: Any, k: int) -> _Dyn | _Moved:
        val = self.anydyn(node, 0)
        s = [int(t) for t in self.const(node, 1, "the target shape").ravel()]
        allowzero = int(self.attrs(node).get("allowzero", 0))
        if not s:
            raise self.fail(node, "empty target shape")
        full = _as_moved(val).onnx_shape()
        shown = _fmt_dims(s)
        if not allowzero:
            if any(t == 0 and i >= len(full) for i, t in enumerate(s)):
                raise self.fail(node, f"target {_fmt_dims(s)} copies a dimension the input "
                                "does not have")
            s = [full[i] if t == 0 else t for i, t in enumerate(s)]
        if (isinstance(val, _Dyn) and self.fixed_batch is not None and s[0] == self.fixed_batch
                and not any(_is_sym(t) for t in s)):
            s[0] = _BATCH  # a file exported at a fixed batch size: its first axis
        return self.reshape_value(node, val, s, shown)

    def reshape_value(self, node: Any, val: _Dyn | _Moved, target: list[int],
                      shown: str | None = None) -> Any:
        r"""A row-major reshape of the ONNX tensor to ``target`` (entries ``c * N``, at most
        one ``-1``), exact per sample when one target axis holds the batch as a whole.

        Per sample, the ONNX tensor's flat index is :math:`(aN + n)Q + j` with ``a`` over the
        ``P`` elements before the batch and ``j`` over the ``Q`` after it. A target
        ``t_{<b}, cN, t_{>b}`` (``A = prod t_{<b}``, ``B = prod t_{>b}``) has flat index
        :math:`(\alpha cN + \beta)B + \gamma`. When ``A | P`` and ``B | Q`` (so
        ``c = (P/A)(Q/B)``), writing :math:`a = \alpha c_1 + a'`, :math:`j = j'B + \gamma`
        gives :math:`\beta = (a'N + n)c_2 + j'`: the batch is the middle factor of target
        axis ``b`` between ``c_1 = P/A`` and ``c_2 = Q/B``, and each sample is its own tensor
        regrouped row-major to ``t_{<b}, c_1, c_2, t_{>b}`` (no data moves). Otherwise some
        target axis would hold parts of two samples: refused."""
        m = _as_moved(val)
        shape = m.v.shape
        p_out, q_in = math.prod(shape[:m.pos]), math.prod(shape[m.pos:])
        fmt = shown or _fmt_dims(target)
        sym = [i for i, t in enumerate(target) if _is_sym(t)]
        free = [i for i, t in enumerate(target) if t == -1]
        if len(sym) > 1:
            raise self.fail(node, f"target shape {fmt} holds the batch size twice")
        if len(free) > 1 or any(t < -1 and not _is_sym(t) or t == 0 for t in target):
            raise self.fail(node, f"bad target shape {fmt}")
        rest = math.prod(t for i, t in enumerate(target) if i not in sym and i not in free)
        if sym:
            b, c = sym[0], target[sym[0]] // _BATCH
        elif free:  # the -1 holds the batch: c N = P N Q / rest
            b, free = free[0], []
            if rest == 0 or (p_out * q_in) % rest:
                raise self.fail(node, f"target {fmt} does not fit {p_out * q_in} elements "
                                "per sample")
            c = p_out * q_in // rest
        else:
            raise self.fail(node, f"target shape {fmt} does not keep the batch dimension "
                            f"(the input is {m.describe()})")
        t = list(target)
        t[b] = c
        if free:
            if rest * c == 0 or (p_out * q_in) % (rest * c):
                raise self.fail(node, f"target {fmt} does not fit {p_out * q_in} elements "
                                "per sample")
            t[free[0]] = p_out * q_in // (rest * c)
        a_out, b_in = math.prod(t[:b]), math.prod(t[b + 1:])
        if a_out * c * b_in != p_out * q_in:
            raise self.fail(node, f"target {fmt} does not fit per-sample shape "
                            f"{list(shape)} (input {m.describe()})")
        if p_out % a_out or q_in % b_in:
            raise self.fail(node, f"target shape {fmt} splits the axis holding the batch "
                            f"across samples (input {m.describe()}: {p_out} elements before "
                            f"the batch, {q_in} after it); samples would mix")
        c1, c2 = p_out // a_out, q_in // b_in
        out = self.view(m.v, [*t[:b], c1, c2, *t[b + 1:]])
        return self.place(out, b, b + 1, b + 2)

    def op_Squeeze(self, node: Any, k: int) -> _Dyn | _Moved:
        val = self.anydyn(node, 0)
        axes = self._axes(node, [None, self.opt_const(node, 1)], self.attrs(node))
        m = _as_moved(val)
        r, s = m.rank, m.v.shape
        if axes is None:
            # ONNX squeezes every axis of size 1, the batch's too where it is N alone (at
            # batch size 1): the result's rank would depend on the batch size
            if m.factor == 1:
                raise self.fail(node, f"Squeeze without axes (or with an empty axes list) on "
                                f"{m.describe()} would also squeeze the batch axis at batch "
                                "size 1; give the axes to squeeze")
            axes = [i for i in range(r) if i != m.g0 and s[m.sample_axis(i)] == 1]
        axes = [self._rank_axis(node, a, r) for a in axes]
        if m.g0 in axes:
            raise self.fail(node, "squeezing the batch dimension")
        if any(s[m.sample_axis(a)] != 1 for a in axes):
            raise self.fail(node, f"axes {axes} are not of size 1 in {m.describe()}")
        drop = {m.sample_axis(a) for a in axes}
        before = sum(1 for a in axes if a < m.g0)
        out = self.view(m.v, [d for i, d in enumerate(s) if i not in drop])
        return self.place(out, m.g0 - before, m.pos - before, m.g1 - before)

    def op_Unsqueeze(self, node: Any, k: int) -> _Dyn | _Moved:
        val = self.anydyn(node, 0)
        axes = self._axes(node, [None, self.opt_const(node, 1)], self.attrs(node)) or []
        m = _as_moved(val)
        r = m.rank + len(axes)
        axes = sorted(self._rank_axis(node, a, r) for a in axes)
        if len(set(axes)) != len(axes):
            raise self.fail(node, f"axes {axes} repeat an axis")
        # the output's ONNX axes: the input's in order, with the new axes of size 1 inserted
        old = iter(range(m.rank))
        shape: list[int] = []
        g0 = 0
        for i in range(r):
            if i in axes:
                shape.append(1)
                continue
            j = next(old)
            if j == m.g0:
                g0 = len(shape)
                shape.extend(m.v.shape[m.g0:m.g1])
            else:
                shape.append(m.v.shape[m.sample_axis(j)])
        out = self.view(m.v, shape)
        return self.place(out, g0, g0 + m.pos - m.g0, g0 + m.g1 - m.g0)

    def op_Transpose(self, node: Any, k: int) -> _Dyn | _Moved:
        """A permutation of the ONNX axes. The batch axis may move (with the per-sample
        axes merged with it, in their order): per sample, a permutation of its axes."""
        val = self.anydyn(node, 0)
        m = _as_moved(val)
        r = m.rank
        perm = self.attrs(node).get("perm") or list(reversed(range(r)))
        perm = [int(p) for p in perm]
        if sorted(perm) != list(range(r)):
            raise self.fail(node, f"perm {perm} is not a permutation of the {r} axes of "
                            f"{m.describe()}")
        order: list[int] = []
        for q in perm:
            if q == m.g0:
                g0 = len(order)
                order.extend(range(m.g0, m.g1))
            else:
                order.append(m.sample_axis(q))
        out = self._permuted(node, m.v, order)
        return self.place(out, g0, g0 + m.pos - m.g0, g0 + m.g1 - m.g0)

    def _permuted(self, node: Any, v: _Dyn, p: list[int]) -> _Dyn:
        """``v`` with its per-sample axes permuted by ``p`` (a view: an index, and a
        ``permute`` when ``v`` is a base tensor or a transpose of one)."""
        if p == list(range(len(p))):
            return v
        self.charge(node, 2 * v.numel, 8, "the index of a transposed view")
        base = v.idx if v.idx is not None else np.arange(v.numel)
        idx = base.reshape(v.shape).transpose(p).ravel()
        shape = tuple(v.shape[q] for q in p)
        perm = None
        if v.idx is None:
            perm = (tuple(v.shape), tuple(p))
        elif v.perm is not None and tuple(v.perm[0][a] for a in v.perm[1]) == tuple(v.shape):
            perm = (v.perm[0], tuple(v.perm[1][q] for q in p))  # a transpose of a transpose
        if perm is not None and perm[1] == tuple(range(len(perm[1]))):
            perm = None  # cancelled: idx is the identity
        return _Dyn(v.node, v.base_shape, shape, idx, perm)

    # ---- linear layers
    def linear(
        self, node: Any, v: _Dyn, w: np.ndarray, b: np.ndarray | None
    ) -> _Dyn:
        """``y = x @ w.T + b`` on a flat value; a pending permutation is folded into w."""
        if len(v.shape) != 1:
            raise self.fail(
                node, f"a matrix product on a tensor of per-sample shape {list(v.shape)} "
                "(only [N, K] inputs are supported)"
            )
        out_f, in_f = w.shape
        if in_f != v.numel:
            raise self.fail(node, f"weight {list(w.shape)} does not fit input {list(v.shape)}")
        base = math.prod(v.base_shape)
        self.check_size(node, out_f * max(in_f, base), 8 + 4, "the linear layer's weight")
        self._bound(node, out_f, "output")
        if v.idx is not None:
            w2 = np.zeros((out_f, base), dtype=w.dtype)
            np.add.at(w2.T, v.idx, w.T)  # y = sum_j w[:, j] base[idx[j]] (idx may repeat)
            w, in_f = w2, base
        x = self.reshape(v.node, v.base_shape, (in_f,))
        lin = nn.Linear(in_f, out_f, bias=b is not None)
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(np.ascontiguousarray(w, dtype=np.float32)))
            if b is not None:
                lin.bias.copy_(torch.from_numpy(np.ascontiguousarray(b, dtype=np.float32)))
        return _Dyn(self.add_module("linear", lin, x), (out_f,), (out_f,))

    def _float(self, node: Any, arr: np.ndarray, what: str) -> np.ndarray:
        if arr.dtype.kind != "f":
            raise self.fail(node, f"{what} has dtype {arr.dtype}, expected float")
        self.check_size(node, arr.size, 8, f"a float64 copy of {what}")
        return arr.astype(np.float64)

    def op_Gemm(self, node: Any, k: int) -> _Dyn | _Moved:
        a = self.attrs(node)
        if int(a.get("transA", 0)):
            raise self.fail(node, "transA=1 (the input transposed) is not supported")
        v = self.anydyn(node, 0)
        if isinstance(v, _Moved) and (v.rank != 2 or v.g0 != 0):
            raise self.fail(node, f"Gemm on {v.describe()} contracts the axis holding the "
                            "batch; samples would mix")
        w = self._float(node, self.const(node, 1, "the weight B"), "B")
        if w.ndim != 2 or w.size == 0:
            raise self.fail(node, f"{self.named(node, 1, 'the weight B')} has shape "
                            f"{list(w.shape)} (a non-empty matrix expected)")
        w = w if int(a.get("transB", 0)) else w.T
        w = w * float(a.get("alpha", 1.0))
        c = self.opt_const(node, 2)
        b = None
        if isinstance(v, _Moved):  # rows [c N]: the same linear map on each row of a sample
            if c is not None:
                c = self._float(node, c, "C") * float(a.get("beta", 1.0))
                b = self.sample_const(node, (*v.v.shape[:-1], w.shape[0]), v, c)
                b = np.asarray(b).reshape(-1, w.shape[0])[0]  # C is 1 along the rows
            return self.token_matmul(node, v.v, w.T, lay=v, bias=b)
        if c is not None:
            c = self._float(node, c, "C") * float(a.get("beta", 1.0))
            try:
                b = np.broadcast_to(c, (1, w.shape[0])).reshape(-1).copy()
            except ValueError:
                raise self.fail(node, f"bias C of shape {list(c.shape)} is per-sample") from None
        return self.linear(node, v, w, b)

    def op_MatMul(self, node: Any, k: int) -> _Dyn | _Moved:
        if isinstance(self.value(node, 1), (_Dyn, _Moved)):
            return self.product(node, torch.matmul)
        v = self.anydyn(node, 0)
        w = self._float(node, self.const(node, 1, "the right-hand matrix"), "the matrix")
        if w.ndim != 2 or w.size == 0:
            raise self.fail(node, f"{self.named(node, 1, 'the right-hand matrix')} has shape "
                            f"{list(w.shape)} (a non-empty matrix expected)")
        if isinstance(v, _Moved):
            if v.g0 == v.rank - 1:
                raise self.fail(node, f"MatMul of {v.describe()} by a matrix contracts the "
                                "axis holding the batch; samples would mix")
            return self.token_matmul(node, v.v, w, lay=v)
        if len(v.shape) > 1:
            return self.token_matmul(node, v, w)
        b = None
        nxt = self.only_consumer(node.output[0])
        if nxt is not None and nxt.op_type == "Add" and len(nxt.input) == 2:
            other = nxt.input[1] if nxt.input[0] == node.output[0] else nxt.input[0]
            c = self.values.get(other)
            if isinstance(c, np.ndarray) and c.dtype.kind == "f":
                try:
                    b = np.broadcast_to(c.astype(np.float64), (1, w.shape[1])).reshape(-1)
                    b = b.copy()
                except ValueError:
                    b = None
                if b is not None:
                    j = self._index(nxt)
                    self.skip.add(j)
                    out = self.linear(node, v, w.T, b)
                    self.values[nxt.output[0]] = out
                    return out
        return self.linear(node, v, w.T, None)

    # ---- convolution, pooling, padding
    def _spatial(self, node: Any, v: _Dyn) -> tuple[int, int, int]:
        if len(v.shape) != 3:
            raise self.fail(node, f"expects an image [N, C, H, W], got [N, {list(v.shape)}]")
        return v.shape  # type: ignore[return-value]

    def _pads(self, node: Any, a: dict[str, Any], ks: Sequence[int]) -> list[int]:
        auto = a.get("auto_pad", "NOTSET")
        if auto not in ("NOTSET", "VALID"):
            raise self.fail(node, f"auto_pad={auto!r}; export with explicit pads")
        pads = [int(p) for p in a.get("pads", [0] * (2 * len(ks)))]
        if len(pads) != 4 or any(p < 0 for p in pads):
            raise self.fail(node, f"pads {pads} (2-D, non-negative expected)")
        return pads

    def zero_pad(self, node: Any, v: _Dyn, pads: list[int]) -> _Dyn:
        """Zero padding [top, left, bottom, right] as a depthwise conv with one-hot kernels
        (every output is a copy of one input or zero: an isometric embedding)."""
        c, h, w = self._spatial(node, v)
        t, l_, b, r = pads
        self._bound(node, c * (h + t + b) * (w + l_ + r), "padded tensor")
        ph, pw = max(t, b), max(l_, r)
        kh, kw = 2 * ph - t - b + 1, 2 * pw - l_ - r + 1
        conv = nn.Conv2d(c, c, (kh, kw), padding=(ph, pw), groups=c, bias=False)
        with torch.no_grad():
            conv.weight.zero_()
            conv.weight[:, 0, ph - t, pw - l_] = 1.0
        n = self.add_module("pad", conv, self.materialize(v, node))
        shape = (c, h + t + b, w + l_ + r)
        return _Dyn(n, shape, shape)

    def op_Pad(self, node: Any, k: int) -> _Dyn:
        v = self.dyn(node, 0)
        a = self.attrs(node)
        mode = a.get("mode", "constant")
        if mode != "constant":
            raise self.fail(node, f"mode {mode!r}; only constant zero padding is supported")
        pads = self.opt_const(node, 1)
        pads = [int(p) for p in (pads.ravel() if pads is not None else a.get("pads", []))]
        value = self.opt_const(node, 2)
        cval = float(value.ravel()[0]) if value is not None and value.size else float(
            a.get("value", 0.0)
        )
        if cval != 0.0:
            raise self.fail(node, f"constant value {cval}; only zero padding is supported")
        if self.opt_const(node, 3) is not None:
            raise self.fail(node, "the axes input is not supported")
        r = len(v.shape) + 1
        if len(pads) != 2 * r or any(p < 0 for p in pads):
            raise self.fail(node, f"pads {pads} (non-negative, 2 per axis expected)")
        if not any(pads):
            return v
        begin, end = pads[:r], pads[r:]
        if r != 4 or begin[0] or end[0] or begin[1] or end[1]:
            raise self.fail(node, f"pads {pads}: only the two spatial axes of [N, C, H, W]")
        box = [begin[2], begin[3], end[2], end[3]]
        nxt = self.only_consumer(node.output[0])
        if nxt is not None and nxt.op_type == "Conv" and nxt.input[0] == node.output[0]:
            # folded into that convolution's padding (its only consumer)
            self.pending_pads[node.output[0]] = box
            return self.real(v, node)
        return self.zero_pad(node, v, box)

    def _kernel(self, node: Any, kind: str, ndims: tuple[int, ...] = (4,)) -> np.ndarray:
        """The constant, finite, non-empty 4-d (or, where ``ndims`` allows, 3-d) kernel of a
        ``Conv`` / ``ConvTranspose`` (its second input), checked before anything is built
        from it."""
        w = self._float(node, self.const(node, 1, "the kernel"), "the kernel")
        if w.ndim not in ndims:
            what = "1-D and 2-D" if 3 in ndims else "2-D"
            raise self.fail(node, f"only {what} {kind} (kernel of shape {list(w.shape)})")
        if w.size == 0:
            raise self.fail(node, f"{self.named(node, 1, 'the kernel')} has shape "
                            f"{list(w.shape)} (empty)")
        return w

    def op_Conv(self, node: Any, k: int) -> _Dyn:
        v = self.dyn(node, 0)
        a = self.attrs(node)
        w = self._kernel(node, "convolutions", ndims=(3, 4))
        b = self.opt_const(node, 2)
        if w.ndim == 3:
            return self._conv1d(node, v, a, w, b)
        c, h, wd = self._spatial(node, v)
        groups, ks = self._groups_kernel(node, a, w, c)
        pads = self._pads(node, a, ks)
        extra = self.pending_pads.pop(node.input[0], None)
        if extra is not None:
            pads = [p + q for p, q in zip(pads, extra)]
        x = self.materialize(v, node)
        if pads[0] != pads[2] or pads[1] != pads[3]:
            pv = self.zero_pad(node, _Dyn(x, v.shape, v.shape), pads)
            x, (c, h, wd), pads = pv.node, pv.shape, [0, 0, 0, 0]
        strides = tuple(int(s) for s in a.get("strides", (1, 1)))
        dil = tuple(int(s) for s in a.get("dilations", (1, 1)))
        self._bound(node, w.shape[0] * (h + 2 * pads[0]) * (wd + 2 * pads[1]), "output")
        if any(s < 1 for s in strides + dil):
            raise self.fail(node, f"strides {strides} / dilations {dil}")
        self.check_size(node, w.size, 4, "the convolution's kernel")
        conv = nn.Conv2d(c, w.shape[0], ks, stride=strides, padding=(pads[0], pads[1]),
                         dilation=dil, groups=groups, bias=b is not None)
        with torch.no_grad():
            conv.weight.copy_(torch.from_numpy(w.astype(np.float32)))
            if b is not None:
                conv.bias.copy_(torch.from_numpy(self._float(node, b, "bias").astype(np.float32)))
        out = self.add_module("conv", conv, x)
        shape = self._out_shape(node, conv, (c, h, wd))
        return _Dyn(out, shape, shape)

    def _groups_kernel(self, node: Any, a: dict[str, Any], w: np.ndarray, c: int
                       ) -> tuple[int, tuple[int, ...]]:
        """A ``Conv``'s ``group`` (fitting its kernel and the ``c`` input channels) and
        ``kernel_shape`` (that of the kernel, when given)."""
        groups = int(a.get("group", 1))
        if groups < 1 or c % groups or w.shape[0] % groups or w.shape[1] * groups != c:
            raise self.fail(node, f"kernel {list(w.shape)} and group {groups} do not fit {c} "
                            "input channels")
        ks = tuple(int(s) for s in a.get("kernel_shape", w.shape[2:]))
        if ks != tuple(w.shape[2:]):
            raise self.fail(node, f"kernel_shape {ks} differs from the kernel {w.shape}")
        return groups, ks

    def _conv1d(self, node: Any, v: _Dyn, a: dict[str, Any], w: np.ndarray,
                b: np.ndarray | None) -> _Dyn:
        """A 1-D ``Conv`` of a sequence ``[N, C, L]``: ``nn.Conv1d`` (which capture writes as
        its 2-d twin), symmetric pads only."""
        if len(v.shape) != 2:
            raise self.fail(node, f"a 1-D convolution expects a sequence [N, C, L], got "
                            f"[N, {list(v.shape)}]")
        c, length = v.shape
        groups, ks = self._groups_kernel(node, a, w, c)
        if a.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
            raise self.fail(node, f"auto_pad={a['auto_pad']!r}; export with explicit pads")
        pads = [int(p) for p in a.get("pads", [0, 0])]
        strides = tuple(int(s) for s in a.get("strides", (1,)))
        dil = tuple(int(s) for s in a.get("dilations", (1,)))
        if self.pending_pads.get(node.input[0]) is not None:
            raise self.fail(node, "a Pad in front of a 1-D convolution")
        if len(pads) != 2 or pads[0] != pads[1] or len(strides) != 1 or len(dil) != 1:
            raise self.fail(node, f"pads {pads}, strides {list(strides)}, dilations "
                            f"{list(dil)}: one symmetric 1-D padding is supported")
        self.check_size(node, w.size, 4, "the convolution's kernel")
        conv = nn.Conv1d(c, w.shape[0], ks[0], stride=strides[0], padding=pads[0],
                         dilation=dil[0], groups=groups, bias=b is not None)
        with torch.no_grad():
            conv.weight.copy_(torch.from_numpy(w.astype(np.float32)))
            if b is not None:
                conv.bias.copy_(torch.from_numpy(self._float(node, b, "bias").astype(np.float32)))
        out = self.add_module("conv1d", conv, self.materialize(v, node))
        shape = self._out_shape(node, conv, (c, length))
        return _Dyn(out, shape, shape)

    def _bound(self, node: Any, numel: int, what: str) -> None:
        """One sample of an activation, at float64 width, within the per-tensor limit."""
        self.check_size(node, numel, 8, f"one sample of the {what}")

    def _out_shape(self, node: Any, module: nn.Module, shape: tuple[int, ...]) -> tuple[int, ...]:
        """The layer's per-sample output shape, computed on PyTorch's ``meta`` device (shapes
        only: nothing is allocated or computed), then sized."""
        from torch.func import functional_call

        meta = {k: torch.empty(v.shape, dtype=v.dtype, device="meta")
                for k, v in module.state_dict().items()}
        try:
            with torch.no_grad():
                y = functional_call(module, meta, (torch.empty(1, *shape, device="meta"),))
        except (RuntimeError, ValueError) as exc:
            raise self.fail(node, f"does not fit input [N, {list(shape)}]: "
                            f"{_first(exc)}") from None
        if any(s <= 0 for s in y.shape):
            raise self.fail(node, "empty output")
        self._bound(node, math.prod(y.shape[1:]), "output")
        return tuple(y.shape[1:])

    def _pool_args(self, node: Any, v: _Dyn) -> tuple[Any, ...]:
        a = self.attrs(node)
        self._spatial(node, v)
        ks = tuple(int(s) for s in a["kernel_shape"])
        if len(ks) != 2:
            raise self.fail(node, f"kernel_shape {ks}: only 2-D pooling")
        pads = self._pads(node, a, ks)
        if pads[0] != pads[2] or pads[1] != pads[3]:
            raise self.fail(node, f"asymmetric pads {pads}")
        strides = tuple(int(s) for s in a.get("strides", (1, 1)))
        ceil = bool(int(a.get("ceil_mode", 0)))
        return a, ks, (pads[0], pads[1]), strides, ceil

    def op_MaxPool(self, node: Any, k: int) -> _Dyn:
        v = self.dyn(node, 0)
        a, ks, pads, strides, ceil = self._pool_args(node, v)
        if len(node.output) > 1 and node.output[1] and self.consumers.get(node.output[1]):
            raise self.fail(node, "the Indices output is used")
        dil = tuple(int(s) for s in a.get("dilations", (1, 1)))
        if pads[0] > ks[0] // 2 or pads[1] > ks[1] // 2:
            raise self.fail(node, f"pads {pads} larger than half the kernel {ks}")
        pool = nn.MaxPool2d(ks, strides, pads, dil, ceil_mode=ceil)
        out = self.add_module("maxpool", pool, self.materialize(v, node))
        shape = self._out_shape(node, pool, v.shape)
        return _Dyn(out, shape, shape)

    def op_AveragePool(self, node: Any, k: int) -> _Dyn:
        v = self.dyn(node, 0)
        a, ks, pads, strides, ceil = self._pool_args(node, v)
        if tuple(int(s) for s in a.get("dilations", (1, 1))) != (1, 1):
            raise self.fail(node, "dilated average pooling")
        if pads[0] > ks[0] // 2 or pads[1] > ks[1] // 2:
            raise self.fail(node, f"pads {pads} larger than half the kernel {ks}")
        include = bool(int(a.get("count_include_pad", 0)))
        pool = nn.AvgPool2d(ks, strides, pads, ceil_mode=ceil, count_include_pad=include)
        out = self.add_module("avgpool", pool, self.materialize(v, node))
        shape = self._out_shape(node, pool, v.shape)
        return _Dyn(out, shape, shape)

    def op_GlobalAveragePool(self, node: Any, k: int) -> _Dyn:
        v = self.dyn(node, 0)
        c, h, w = self._spatial(node, v)
        pool = nn.AvgPool2d((h, w), (h, w))
        out = self.add_module("avgpool", pool, self.materialize(v, node))
        return _Dyn(out, (c, 1, 1), (c, 1, 1))

    def _mean_axes(self, node: Any) -> Any:
        axes = self.attrs(node).get("axes")
        if axes is None and len(node.input) > 1:
            axes = self.opt_const(node, 1)
        return axes

    def _consumer(self, name: str, op: str) -> Any | None:
        """The only consumer of ``name`` when it is an ``op`` node, else ``None``."""
        c = self.only_consumer(name)
        return c if c is not None and c.op_type == op else None

    def _layernorm_pattern(self, node: Any, val: _Dyn | _Moved) -> _Dyn | _Moved | None:
        """LayerNorm as exporters before opset 17 write it, from its first ``ReduceMean``:
        ``d = x - mean(x)``, ``d / sqrt(mean(d ** 2) + eps)`` over trailing axes (the scale and
        shift follow as ordinary ``Mul``/``Add``): one ``nn.LayerNorm`` without affine
        parameters; ``None`` when the nodes differ in any way."""
        axes = self._mean_axes(node)
        m = _as_moved(val)
        v, r = m.v, m.rank
        if axes is None or not int(self.attrs(node).get("keepdims", 1)):
            return None
        dims = sorted({int(d) % r for d in np.asarray(axes).reshape(-1)})
        if not dims or dims != list(range(r - len(dims), r)) or dims[0] <= m.g0:
            return None
        x_name, m_name = node.input[0], node.output[0]
        sub = self._consumer(m_name, "Sub")
        if sub is None or list(sub.input) != [x_name, m_name]:
            return None
        d_name = sub.output[0]
        users = self.consumers.get(d_name, [])
        pw = next((u for u in users if u.op_type == "Pow"), None)
        dv = next((u for u in users if u.op_type == "Div"), None)
        if len(users) != 2 or pw is None or dv is None or d_name == self.out_name:
            return None
        if list(pw.input)[0] != d_name or self._const_input(pw, d_name, r) != 2.0:
            return None
        m2 = self._consumer(pw.output[0], "ReduceMean")
        if m2 is None or m2.input[0] != pw.output[0]:
            return None
        axes2 = self._mean_axes(m2)
        if axes2 is None or sorted({int(d) % r for d in np.asarray(axes2).reshape(-1)}) != dims \
                or not int(self.attrs(m2).get("keepdims", 1)):
            return None
        add = self._consumer(m2.output[0], "Add")
        eps = self._const_input(add, m2.output[0], r)
        if add is None or eps is None or not eps > 0 or not math.isfinite(eps):
            return None
        sq = self._consumer(add.output[0], "Sqrt")
        if sq is None or self._consumer(sq.output[0], "Div") is not dv \
                or list(dv.input) != [d_name, sq.output[0]]:
            return None
        shape = tuple(v.shape[m.sample_axis(dims[0]):])
        ln = nn.LayerNorm(shape, eps=eps)
        out = self.place(_Dyn(self.add_module("layernorm", ln, self.materialize(v, node)),
                               v.shape, v.shape), m.g0, m.pos, m.g1)
        for n in (sub, pw, m2, add, sq, dv):
            self.skip.add(self._index(n))
            for i, o in enumerate(n.output):
                if o and i == 0:
                    self.values[o] = out
        return out

    def op_ReduceMean(self, node: Any, k: int) -> _Dyn | _Moved:
        v = self.anydyn(node, 0)
        ln = self._layernorm_pattern(node, v)
        if ln is not None:
            return ln
        return self._reduce(node, v, "mean")

    def op_ReduceSum(self, node: Any, k: int) -> _Dyn | _Moved:
        return self._reduce(node, self.anydyn(node, 0), "sum")

    def _reduce(self, node: Any, val: _Dyn | _Moved, what: Literal["mean", "sum"]
                ) -> _Dyn | _Moved:
        """``ReduceMean`` / ``ReduceSum`` over per-sample axes: ``x.mean`` / ``x.sum`` with
        ``dim`` the axes (an attribute before opset 18 / 13, the second input since) and
        ``keepdim`` the ``keepdims`` attribute (default 1). No axes with
        ``noop_with_empty_axes=1`` is the identity; without it, a reduction over every axis,
        the batch included, which is refused, as is any axis outside the tensor or the
        axis holding the batch (where it is moved)."""
        a = self.attrs(node)
        axes = self._mean_axes(node)
        flat = [] if axes is None else [int(d) for d in np.asarray(axes).reshape(-1)]
        if not flat:
            if int(a.get("noop_with_empty_axes", 0)):
                return val
            raise self.fail(node, f"no axes: the {what} would run over the batch too")
        m = _as_moved(val)
        v, r = m.v, m.rank
        if any(not -r <= d < r for d in flat):
            raise self.fail(node, f"axes {flat} outside a tensor of rank {r}")
        dims = sorted({d % r for d in flat})
        if len(dims) != len(flat):
            raise self.fail(node, f"repeated axes {flat}")
        if m.g0 in dims:
            raise self.fail(node, f"a {what} over the batch axis (axis {m.g0} of "
                            f"{m.describe()})")
        keep = bool(int(a.get("keepdims", 1)))
        pdims = [m.sample_axis(d) for d in dims]
        x = self.materialize(v, node)
        out = self.graph.call_method(what, (x,), {"dim": tuple(p + 1 for p in pdims),
                                                  "keepdim": keep})
        before = 0
        if keep:
            shape = tuple(1 if i in pdims else s for i, s in enumerate(v.shape))
        else:
            shape = tuple(s for i, s in enumerate(v.shape) if i not in pdims)
            before = sum(1 for p in pdims if p < m.g0)
        return self.place(_Dyn(out, shape, shape), m.g0 - before, m.pos - before,
                           m.g1 - before)

    def op_ConvTranspose(self, node: Any, k: int) -> _Dyn:
        v = self.dyn(node, 0)
        a = self.attrs(node)
        w = self._kernel(node, "transposed convolutions")
        b = self.opt_const(node, 2)
        c, h, wd = self._spatial(node, v)
        groups = int(a.get("group", 1))
        if groups < 1 or w.shape[0] != c or c % groups:
            raise self.fail(node, f"kernel {list(w.shape)} and group {groups} do not fit {c} "
                            "input channels")
        if "output_shape" in a:
            raise self.fail(node, "output_shape: export with pads and output_padding")
        pads = self._pads(node, a, w.shape[2:])
        if pads[0] != pads[2] or pads[1] != pads[3]:
            raise self.fail(node, f"asymmetric pads {pads}")
        strides = tuple(int(s) for s in a.get("strides", (1, 1)))
        dil = tuple(int(s) for s in a.get("dilations", (1, 1)))
        opad = tuple(int(s) for s in a.get("output_padding", (0, 0)))
        if any(s < 1 for s in strides + dil) or any(o < 0 for o in opad):
            raise self.fail(node, f"strides {strides} / dilations {dil} / output_padding {opad}")
        conv = nn.ConvTranspose2d(c, w.shape[1] * groups, tuple(w.shape[2:]), stride=strides,
                                  padding=(pads[0], pads[1]), output_padding=opad,
                                  groups=groups, bias=b is not None, dilation=dil)
        with torch.no_grad():
            conv.weight.copy_(torch.from_numpy(w.astype(np.float32)))
            if b is not None:
                conv.bias.copy_(torch.from_numpy(self._float(node, b, "bias").astype(np.float32)))
        shape = self._out_shape(node, conv, (c, h, wd))
        self._bound(node, math.prod(shape), "output")
        out = self.add_module("convtranspose", conv, self.materialize(v, node))
        return _Dyn(out, shape, shape)

    def op_Resize(self, node: Any, k: int) -> _Dyn:
        """``Resize`` as exporters write ``nn.Upsample`` / ``F.interpolate``: nearest with
        asymmetric coordinates and floor rounding, or linear with (pytorch_)half_pixel or
        align_corners coordinates; scales or sizes on the two spatial axes."""
        v = self.dyn(node, 0)
        a = self.attrs(node)
        dec = {k2: (x.decode() if isinstance(x, bytes) else x) for k2, x in a.items()}
        mode = dec.get("mode", "nearest")
        ctm = dec.get("coordinate_transformation_mode", "half_pixel")
        c, h, wd = self._spatial(node, v)
        scales = self.opt_const(node, 2) if len(node.input) > 2 else None
        sizes = self.opt_const(node, 3) if len(node.input) > 3 else None
        if scales is not None and scales.size == 0:
            scales = None
        if int(a.get("antialias", 0)) or "axes" in a:
            raise self.fail(node, "antialias / axes are not supported")
        if mode == "nearest" and ctm == "asymmetric" and dec.get("nearest_mode",
                                                                 "round_prefer_floor") == "floor":
            kw: dict[str, Any] = {"mode": "nearest"}
        elif mode == "linear" and ctm in ("half_pixel", "pytorch_half_pixel"):
            kw = {"mode": "bilinear", "align_corners": False}
        elif mode == "linear" and ctm == "align_corners":
            kw = {"mode": "bilinear", "align_corners": True}
        else:
            raise self.fail(node, f"mode={mode!r} with coordinate_transformation_mode={ctm!r}"
                            f" and nearest_mode={dec.get('nearest_mode')!r} is not supported")
        if scales is not None:
            sc = [float(t) for t in scales.reshape(-1)]
            if len(sc) != 4 or sc[0] != 1 or sc[1] != 1 or min(sc[2:]) <= 0:
                raise self.fail(node, f"scales {sc}: only the two spatial axes may scale")
            up = nn.Upsample(scale_factor=(sc[2], sc[3]), **kw)
        elif sizes is not None:
            sz = [int(t) for t in sizes.reshape(-1)]
            if len(sz) != 4 or sz[1] != c or min(sz[2:]) < 1:
                raise self.fail(node, f"sizes {sz}: only the two spatial axes may change")
            if sz[0] != _BATCH and sz[0] != self.fixed_batch:
                raise self.fail(node, f"sizes {_fmt_dims(sz)}: the first must be the batch "
                                "size (from Shape), else onnxruntime resizes the batch")
            up = nn.Upsample(size=(sz[2], sz[3]), **kw)
        else:
            raise self.fail(node, "neither scales nor sizes")
        shape = self._out_shape(node, up, (c, h, wd))
        self._bound(node, math.prod(shape), "output")
        out = self.add_module("resize", up, self.materialize(v, node))
        return _Dyn(out, shape, shape)

    def op_LayerNormalization(self, node: Any, k: int) -> _Dyn | _Moved:
        m = _as_moved(self.anydyn(node, 0))
        v = m.v
        a = self.attrs(node)
        r = m.rank
        axis = int(a.get("axis", -1)) % r
        if axis <= m.g0:
            raise self.fail(node, f"normalisation over the batch axis (axis {m.g0} of "
                            f"{m.describe()})")
        shape = tuple(v.shape[m.sample_axis(axis):])
        scale = self._float(node, self.const(node, 1, "the scale"), "the scale")
        bias = self.opt_const(node, 2)
        ln = nn.LayerNorm(shape, eps=float(a.get("epsilon", 1e-5)))
        with torch.no_grad():
            ln.weight.copy_(torch.from_numpy(np.broadcast_to(scale, shape).astype(np.float32)))
            b = np.zeros(shape) if bias is None else np.broadcast_to(
                self._float(node, bias, "bias"), shape)
            ln.bias.copy_(torch.from_numpy(np.asarray(b, dtype=np.float32)))
        out = self.add_module("layernorm", ln, self.materialize(v, node))
        return self.place(_Dyn(out, v.shape, v.shape), m.g0, m.pos, m.g1)

    # ---- normalisation layers
    def op_BatchNormalization(self, node: Any, k: int) -> _Dyn:
        v = self.dyn(node, 0)
        a = self.attrs(node)
        if int(a.get("training_mode", 0)):
            raise self.fail(node, "training_mode=1 (batch statistics)")
        for i in range(1, len(node.output)):
            if node.output[i] and self.consumers.get(node.output[i]):
                raise self.fail(node, "training outputs (running statistics) are used")
        scale, bias, mean, var = (
            self._float(node, self.const(node, i, what), what)
            for i, what in ((1, "scale"), (2, "B"), (3, "mean"), (4, "var"))
        )
        c = v.shape[0] if v.shape else 0
        if any(t.shape != (c,) for t in (scale, bias, mean, var)):
            raise self.fail(node, f"parameters do not have {c} channels")
        if (var < 0).any():
            raise self.fail(node, "negative running variance")
        eps = float(a.get("epsilon", 1e-5))
        bn = self._bn(node, len(v.shape), c, eps)
        with torch.no_grad():
            for t, arr in ((bn.weight, scale), (bn.bias, bias), (bn.running_mean, mean),
                           (bn.running_var, var)):
                t.copy_(torch.from_numpy(arr.astype(np.float32)))
        out = self.add_module("batchnorm", bn, self.materialize(v, node))
        return _Dyn(out, v.shape, v.shape)

    def _bn(self, node: Any, ndim: int, c: int, eps: float) -> nn.Module:
        if ndim == 3:
            return nn.BatchNorm2d(c, eps=eps).eval()
        if ndim in (1, 2):
            return nn.BatchNorm1d(c, eps=eps).eval()
        raise self.fail(node, f"per-channel layer on a tensor of {ndim} dims per sample")

    def op_LRN(self, node: Any, k: int) -> _Dyn:
        v = self.dyn(node, 0)
        a = self.attrs(node)
        size = int(a["size"])
        if size < 1 or size % 2 == 0:
            raise self.fail(node, f"size {size}: only odd sizes (torch's window differs "
                            "from ONNX's for even sizes)")
        self._spatial(node, v)
        lrn = nn.LocalResponseNorm(size, float(a.get("alpha", 1e-4)), float(a.get("beta", 0.75)),
                                   float(a.get("bias", 1.0)))
        out = self.add_module("lrn", lrn, self.materialize(v, node))
        return _Dyn(out, v.shape, v.shape)

    def _squash(self, node: Any, module: nn.Module, kind: str) -> _Dyn:
        v = self.dyn(node, 0)
        if node.output[0] != self.out_name:
            raise self.fail(node, f"{node.op_type} is supported only as the last node")
        ax = int(self.attrs(node).get("axis", -1 if self._opset() >= 13 else 1))
        if len(v.shape) != 1 or ax not in (1, -1):
            raise self.fail(node, f"axis {ax} on per-sample shape {list(v.shape)}")
        return _Dyn(self.add_module(kind, module, self.materialize(v, node)), v.shape, v.shape)

    def _opset(self) -> int:
        return self.check_opset()

    def op_Softmax(self, node: Any, k: int) -> _Dyn | _Moved:
        if node.output[0] == self.out_name:
            return self._squash(node, nn.Softmax(dim=1), "softmax")
        m = _as_moved(self.anydyn(node, 0))
        v, r = m.v, m.rank
        opset = self._opset()
        ax = self._rank_axis(node, int(self.attrs(node).get("axis", -1 if opset >= 13 else 1)), r)
        whole = opset >= 13 or ax == r - 1
        if ax == m.g0 or (not whole and ax < m.g0):
            raise self.fail(node, f"a softmax over the batch axis (axis {ax} of "
                            f"{m.describe()})")
        pa = m.sample_axis(ax)
        x = self.materialize(v, node)
        if whole:
            out = self.graph.call_function(torch.softmax, (x, pa + 1))
        else:  # opsets < 13: over the flattened axes ax..r-1
            inner = (*v.shape[:pa], math.prod(v.shape[pa:]))
            y = self.graph.call_function(torch.softmax, (self.reshape(x, v.shape, inner),
                                                         pa + 1))
            out = self.reshape(y, inner, v.shape)
        return self.place(_Dyn(out, v.shape, v.shape), m.g0, m.pos, m.g1)

    def op_TopK(self, node: Any, k: int) -> _Dyn:
        """``TopK`` keeping every entry of its axis, largest first and sorted, values only:
        a descending sort along a per-sample axis, which is torch's export of
        :class:`~boundkit.models.layers.GroupSort` / ``MaxMin`` (``torch.sort`` of the
        features unflattened into groups). Imported as ``GroupSort`` on the flattened sample
        (sorting the first of two per-sample axes: the ``strided`` layout; the last: the
        ``consecutive`` one; a sample of one axis: one group), reshaped back. Anything
        else (``k`` below the axis length, smallest first, unsorted, the indices used, a
        sample of more than two axes) is refused."""
        v = self.dyn(node, 0)
        a = self.attrs(node)
        r = len(v.shape) + 1
        ax = self._rank_axis(node, int(a.get("axis", -1)), r)
        if ax == 0:
            raise self.fail(node, "a TopK over the batch axis")
        if int(a.get("largest", 1)) != 1 or int(a.get("sorted", 1)) != 1:
            raise self.fail(node, "only TopK with largest=1 and sorted=1 (a descending sort) "
                            "is supported")
        kk = self._ints_input(node, self.const(node, 1, "k"), "k")
        size = v.shape[ax - 1]
        if len(kk) != 1 or kk[0] != size:
            raise self.fail(node, f"k={kk} keeps part of an axis of {size}: only a whole sort "
                            "(k equal to the axis length, as GroupSort exports) is supported")
        if len(v.shape) > 2:
            raise self.fail(node, f"a sort along one axis of a sample of shape "
                            f"{list(v.shape)}: only samples of one or two axes are supported")
        from boundkit.models.layers import GroupSort

        layout = "strided" if len(v.shape) == 2 and ax == 1 else "consecutive"
        n = math.prod(v.shape)
        flat = self.reshape(self.materialize(v, node), v.shape, (n,))
        out = self.add_module("groupsort", GroupSort(size, dim=1, layout=layout), flat)
        return _Dyn(self.reshape(out, (n,), v.shape), v.shape, v.shape)

    def op_LogSoftmax(self, node: Any, k: int) -> _Dyn:
        return self._squash(node, nn.LogSoftmax(dim=1), "log_softmax")

    # ---- element-wise arithmetic
    def scale_shift(
        self, v: _Dyn, scale: np.ndarray | None, shift: np.ndarray | None, node: Any, kind: str
    ) -> _Dyn:
        """``v * scale + shift`` with constants broadcast against the value (not the batch);
        a per-sample scalar (ONNX ``[N]``) as the one-element vector ``[N, 1]``."""
        shape = v.shape
        if not shape:
            for arr in (scale, shift):
                if arr is not None and (arr.size != 1 or arr.ndim > 1):
                    raise self.fail(node, f"constant of shape {list(arr.shape)} does not "
                                    "broadcast to [N] without changing it")
            one = [None if a is None else np.asarray(a).reshape(1) for a in (scale, shift)]
            return self.view(self.scale_shift(self.view(v, (1,)), one[0], one[1], node, kind),
                             ())
        self.check_size(node, 4 * math.prod(shape), 8, "the per-element scale and shift")
        s = np.ones(shape) if scale is None else scale.astype(np.float64)
        t = np.zeros(shape) if shift is None else shift.astype(np.float64)
        r = len(shape) + 1
        for arr in (s, t):
            if arr.ndim > r or (arr.ndim == r and arr.shape[0] != 1):
                raise self.fail(node, f"constant of shape {list(arr.shape)} would broadcast "
                                "over the batch")
        try:
            s = np.broadcast_to(s.reshape(s.shape[-len(shape):] if s.ndim >= r else s.shape),
                                shape)
            t = np.broadcast_to(t.reshape(t.shape[-len(shape):] if t.ndim >= r else t.shape),
                                shape)
        except ValueError:
            raise self.fail(node, f"constant does not broadcast to [N, {list(shape)}]") from None
        x = self.materialize(v, node)
        c = shape[0]
        per_channel = all(
            np.array_equal(arr, np.broadcast_to(arr.reshape(c, *arr.shape[1:])[
                (slice(None),) + (slice(0, 1),) * (len(shape) - 1)], shape))
            for arr in (s, t)
        )
        if per_channel and len(shape) <= 3:
            sc = s.reshape(c, -1)[:, 0]
            sh = t.reshape(c, -1)[:, 0]
            bn = self._bn(node, len(shape), c, 0.0)
            src, dst = x, shape
        else:
            m = math.prod(shape)
            sc, sh = s.reshape(-1), t.reshape(-1)
            bn = nn.BatchNorm1d(m, eps=0.0).eval()
            src, dst = self.reshape(x, shape, (m,)), (m,)
        with torch.no_grad():
            bn.weight.copy_(torch.from_numpy(sc.astype(np.float32)))
            bn.bias.copy_(torch.from_numpy(sh.astype(np.float32)))
            bn.running_mean.zero_()
            bn.running_var.fill_(1.0)
        out = self.add_module(kind, bn, src)
        return _Dyn(self.reshape(out, dst, shape), shape, shape)

    def _binary(self, node: Any) -> tuple[Any, Any, bool]:
        x, y = self.value(node, 0), self.value(node, 1)
        swapped = isinstance(x, np.ndarray)
        if swapped:
            x, y = y, x
        if isinstance(y, np.ndarray):
            y = self._float(node, y, "the constant")
        return x, y, swapped

    def _out_broadcast(self, node: Any, v: _Dyn, c: np.ndarray) -> None:
        try:
            b = np.broadcast_shapes((1, *v.shape), c.shape)
        except ValueError:
            raise self.fail(node, f"constant {list(c.shape)} does not broadcast") from None
        if tuple(b[1:]) != tuple(v.shape) or len(b) != len(v.shape) + 1:
            raise self.fail(node, f"constant {list(c.shape)} would change the shape "
                            f"[N, {list(v.shape)}]")

    def affine(self, node: Any, x: _Dyn | _Moved, scale: np.ndarray | None,
               shift: np.ndarray | None, kind: str) -> _Dyn | _Moved:
        """``x * scale + shift`` with constants ONNX broadcasts against ``x`` (which they may
        not grow); where ``x``'s batch axis is moved, the constants are mapped to per-sample
        ones (:meth:`sample_const`) and the layout kept."""
        if isinstance(x, _Dyn):
            for c in (scale, shift):
                if c is not None and c.ndim > 0:
                    self._out_broadcast(node, x, c)
            return self.scale_shift(x, scale, shift, node, kind)
        sc = None if scale is None else self.sample_const(node, x.v.shape, x, scale)
        sh = None if shift is None else self.sample_const(node, x.v.shape, x, shift)
        return self.place(self.scale_shift(x.v, sc, sh, node, kind), x.g0, x.pos, x.g1)

    def op_Add(self, node: Any, k: int) -> _Dyn | _Moved:
        x, y, _ = self._binary(node)
        if isinstance(y, (_Dyn, _Moved)):
            mx, my = _as_moved(x), _as_moved(y)
            if (mx.g0, mx.pos, mx.g1, mx.v.shape) != (my.g0, my.pos, my.g1, my.v.shape):
                if isinstance(x, _Dyn) and isinstance(y, _Dyn):
                    raise self.fail(node, f"adding tensors of shapes {list(x.shape)} and "
                                    f"{list(y.shape)} (broadcasting between inputs)")
                raise self.fail(node, f"adding tensors of shapes {mx.describe()} and "
                                f"{my.describe()} (the batch held differently, or "
                                "broadcasting between inputs)")
            a, b = self.materialize(mx.v, node), self.materialize(my.v, node)
            sh = mx.v.shape
            if a is b:  # x + x: a scaling by 2 (torch.fx would see one input, i.e. a shift)
                out = self.scale_shift(_Dyn(a, sh, sh), np.asarray(2.0), None, node, "double")
            else:
                out = _Dyn(self.graph.call_function(torch.add, (a, b)), sh, sh)
            return self.place(out, mx.g0, mx.pos, mx.g1)
        return self.affine(node, x, None, y, "add_const")

    def op_Sub(self, node: Any, k: int) -> _Dyn | _Moved:
        x, y, swapped = self._binary(node)
        if isinstance(y, (_Dyn, _Moved)):
            raise self.fail(node, "subtracting two input-dependent tensors is not supported")
        if swapped:  # c - x
            return self.affine(node, x, -np.ones(1), y, "sub_const")
        return self.affine(node, x, None, -y, "sub_const")

    def op_Mul(self, node: Any, k: int) -> _Dyn | _Moved:
        x, y, _ = self._binary(node)
        if isinstance(y, (_Dyn, _Moved)):
            silu = self._silu(node)
            if silu is not None:
                return silu
            hswish = self._hardswish(node)
            if hswish is not None:
                return hswish
            gelu = self._tanh_gelu(node)
            if gelu is not None:
                return gelu
            return self.product(node, torch.mul)
        return self.affine(node, x, y, None, "mul_const")

    def product(self, node: Any, fn: Any) -> _Dyn:
        """``Mul`` or ``MatMul`` of two input-dependent tensors: ``torch.mul`` /
        ``torch.matmul`` (captured as the nodes ``mul`` / ``matmul``). Both operands must
        have the same rank (ONNX broadcasts the full shapes: with different ranks the batch
        axis of one would meet a per-sample axis of the other)."""
        xv, yv = self.value(node, 0), self.value(node, 1)
        if not isinstance(xv, (_Dyn, _Moved)) or not isinstance(yv, (_Dyn, _Moved)):
            raise self.fail(node, "a constant left operand of a product of tensors")
        mx, my = _as_moved(xv), _as_moved(yv)
        x, y = mx.v, my.v
        if mx.rank != my.rank:
            raise self.fail(node, f"operands of shapes {mx.describe()} and {my.describe()} "
                            "(different ranks: the batch axes would not align, samples would "
                            "mix)")
        if (mx.g0, mx.pos, mx.g1) != (my.g0, my.pos, my.g1) or \
                x.shape[mx.g0:mx.g1] != y.shape[my.g0:my.g1]:
            raise self.fail(node, f"operands of shapes {mx.describe()} and {my.describe()} "
                            "hold the batch differently; samples would mix")
        try:
            if fn is torch.matmul:
                if mx.g0 >= mx.rank - 2 and isinstance(xv, _Moved):
                    raise self.fail(node, f"a matrix product of {mx.describe()} and "
                                    f"{my.describe()} along the axis holding the batch; "
                                    "samples would mix")
                if len(x.shape) < 2:
                    raise ValueError("a product of two vectors per sample")
                shape = tuple(np.matmul(np.empty((0, *x.shape), np.float32),
                                        np.empty((0, *y.shape), np.float32)).shape[1:])
            else:
                shape = tuple(np.broadcast_shapes(x.shape, y.shape))
        except ValueError as exc:
            raise self.fail(node, f"operands of shapes {list(x.shape)} and {list(y.shape)} "
                            f"do not multiply ({exc})") from None
        self._bound(node, math.prod(shape), "product")
        a, b = self.materialize(x, node), self.materialize(y, node)
        out = _Dyn(self.graph.call_function(fn, (a, b)), shape, shape)
        return self.place(out, mx.g0, mx.pos, mx.g1)

    def _silu(self, node: Any) -> _Dyn | None:
        """``x * Sigmoid(x)`` (SiLU / swish as exported): one node, or ``None``."""
        prods = self._producers()
        for i in (0, 1):
            sig = prods.get(node.input[i], (None, None))[1]
            if (sig is not None and sig.op_type == "Sigmoid"
                    and sig.input[0] == node.input[1 - i]):
                v = self.values[node.input[1 - i]]
                if isinstance(v, (_Dyn, _Moved)):
                    return self.unary(v, nn.SiLU(), "silu")
        return None

    def _hardswish(self, node: Any) -> _Dyn | None:
        """``x * HardSigmoid(x)`` with torch's parameters (Hardswish as torch exports it):
        one node, or ``None``."""
        prods = self._producers()
        for i in (0, 1):
            hs = prods.get(node.input[i], (None, None))[1]
            if (hs is not None and hs.op_type == "HardSigmoid"
                    and hs.input[0] == node.input[1 - i]):
                if not self.hardsigmoid_params(hs)[2]:
                    return None
                v = self.values[node.input[1 - i]]
                if isinstance(v, (_Dyn, _Moved)):
                    return self.unary(v, nn.Hardswish(), "hardswish")
        return None

    def _softsign(self, node: Any) -> _Dyn | _Moved | None:
        """``x / (1 + Abs(x))`` (Softsign as torch exports it): one node, or ``None``."""
        prods = self._producers()
        add = prods.get(node.input[1], (None, None))[1]
        if add is None or add.op_type != "Add" or len(add.input) != 2:
            return None
        for i in (0, 1):
            ab = prods.get(add.input[i], (None, None))[1]
            one = self.values.get(add.input[1 - i])
            if (ab is not None and ab.op_type == "Abs" and ab.input[0] == node.input[0]
                    and isinstance(one, np.ndarray) and one.size == 1
                    and float(one.reshape(-1)[0]) == 1.0):
                v = self.values[node.input[0]]
                if isinstance(v, (_Dyn, _Moved)):
                    return self.unary(v, nn.Softsign(), "softsign")
        return None

    def op_Div(self, node: Any, k: int) -> _Dyn | _Moved:
        x, y, swapped = self._binary(node)
        if isinstance(y, (_Dyn, _Moved)) and not swapped:
            soft = self._softsign(node)
            if soft is not None:
                return soft
        if isinstance(y, (_Dyn, _Moved)) or swapped:
            raise self.fail(node, "division by an input-dependent tensor is not supported")
        if (y == 0).any():
            raise self.fail(node, "division by zero")
        return self.affine(node, x, 1.0 / y, None, "div_const")

    def op_Concat(self, node: Any, k: int) -> _Dyn:
        parts = [self.value(node, i) for i in range(len(node.input))]
        if any(not isinstance(p, _Dyn) for p in parts):
            return self._concat_constants(node, parts)
        r = len(parts[0].shape) + 1  # type: ignore[union-attr]
        ax = self._rank_axis(node, int(self.attrs(node)["axis"]), r)
        if ax == 0:
            raise self.fail(node, "concatenation along the batch dimension")
        shapes = [p.shape for p in parts]  # type: ignore[union-attr]
        if any(len(s) != r - 1 for s in shapes) or any(
            s[:ax - 1] + s[ax:] != shapes[0][:ax - 1] + shapes[0][ax:] for s in shapes
        ):
            raise self.fail(node, f"shapes {shapes} do not concatenate on axis {ax}")
        nodes = [self.materialize(p, node) for p in parts]  # type: ignore[arg-type]
        shape = list(shapes[0])
        shape[ax - 1] = sum(s[ax - 1] for s in shapes)
        out = self.graph.call_function(torch.cat, (nodes,), {"dim": ax})
        return _Dyn(out, tuple(shape), tuple(shape))

    def _concat_constants(self, node: Any, parts: list[Any]) -> _Dyn:
        """``Concat`` of input-dependent tensors with constants broadcast over the batch (a
        class token ``cls.expand(N, -1, -1)``): one exact linear layer, a 0/1 embedding of
        the input-dependent parts plus the constants as its bias."""
        dyn = [p for p in parts if isinstance(p, _Dyn)]
        r = len(dyn[0].shape) + 1
        ax = self._rank_axis(node, int(self.attrs(node)["axis"]), r)
        if ax == 0:
            raise self.fail(node, "concatenation along the batch dimension")
        shapes: list[tuple[int, ...]] = []
        for name, p in zip(node.input, parts):
            if isinstance(p, _Dyn):
                shapes.append(tuple(p.shape))
            elif p is None or name not in self.batch_bcast or p.ndim != r:
                raise self.fail(node, "concatenating input-dependent tensors with a constant "
                                "that is not broadcast over the batch")
            else:
                shapes.append(tuple(p.shape[1:]))
        if any(len(sh) != r - 1 or sh[:ax - 1] + sh[ax:] != shapes[0][:ax - 1] + shapes[0][ax:]
               for sh in shapes):
            raise self.fail(node, f"shapes {shapes} do not concatenate on axis {ax}")
        out = list(shapes[0])
        out[ax - 1] = sum(sh[ax - 1] for sh in shapes)
        m = math.prod(out)
        m_in = sum(p.numel for p in dyn)
        self.check_size(node, m * m_in, 12, "the embedding of a concatenation")
        pos = np.arange(m).reshape(out)
        w = np.zeros((m, m_in))
        bias = np.zeros(m)
        start = off = 0
        for p, sh in zip(parts, shapes):
            idx = [slice(None)] * (r - 1)
            idx[ax - 1] = slice(start, start + sh[ax - 1])
            where = pos[tuple(idx)].ravel()
            if isinstance(p, _Dyn):
                w[where, off + np.arange(p.numel)] = 1.0
                off += p.numel
            else:
                bias[where] = self._float(node, p, "the constant").reshape(-1)
            start += sh[ax - 1]
        xs = [self.materialize(self.view(p, (p.numel,)), node) for p in dyn]
        x = xs[0] if len(xs) == 1 else self.graph.call_function(torch.cat, (xs,), {"dim": 1})
        flat = _Dyn(x, (m_in,), (m_in,))
        return self.view(self.linear(node, flat, w, bias), out)

    def index(self, node: Any, v: _Dyn, idx: tuple[Any, ...]) -> _Dyn:
        """``x[:, *idx]``: basic indexing of the per-sample axes (ints, slices with positive
        steps), emitted as such (captured as the exact node ``select``)."""
        shape = tuple(np.broadcast_to(np.zeros((), np.bool_), v.shape)[idx].shape)  # no copy
        if 0 in shape:
            raise self.fail(node, "the selection is empty")
        x = self.materialize(v, node)
        out = self.graph.call_function(operator.getitem, (x, (slice(None), *idx)))
        return _Dyn(out, shape, shape)

    def _selection(self, node: Any, v: _Dyn, take: Any, out_numel: int | None = None) -> _Dyn:
        """A view of ``v`` keeping the elements ``take`` picks from its index array, of
        ``out_numel`` elements (at most ``v.numel`` when ``None``): both index arrays are
        charged before they are built."""
        n = max(v.numel, v.numel if out_numel is None else int(out_numel))
        self.charge(node, 2 * n, 8, "the index of a selected view")
        base = v.idx if v.idx is not None else np.arange(v.numel)
        sel = np.asarray(take(base.reshape(v.shape)))
        if sel.size == 0:
            raise self.fail(node, "the selection is empty")
        return _Dyn(v.node, v.base_shape, tuple(sel.shape), sel.ravel())

    def op_Gather(self, node: Any, k: int) -> _Dyn | _Moved:
        """``x[:, i]`` (a class token, the query/key/value of a fused projection): a
        selection on an axis other than the batch's by constant indices."""
        m = _as_moved(self.anydyn(node, 0))
        ind = self.const(node, 1, "the indices")
        if ind.dtype.kind not in "iu":
            raise self.fail(node, "the indices must be an integer tensor")
        ax = self._rank_axis(node, int(self.attrs(node).get("axis", 0)), m.rank)
        if ax == m.g0:
            raise self.fail(node, f"gathering along the batch dimension (axis {ax} of "
                            f"{m.describe()})")
        pa = m.sample_axis(ax)
        d = m.v.shape[pa]
        if ind.size and (ind.min() < -d or ind.max() >= d):
            raise self.fail(node, f"indices outside [-{d}, {d - 1}] on axis {ax}")
        if ind.ndim == 0:  # x[:, ..., i]: a real index (the node select), at any size
            out = self.index(node, m.v, (*(slice(None),) * pa, int(ind) % d))
        else:
            out = self._selection(node, m.v, lambda b: np.take(b, ind.astype(np.int64) % d,
                                                               axis=pa),
                                  out_numel=m.v.numel // d * ind.size)
        shift = ind.ndim - 1 if pa < m.g0 else 0
        return self.place(out, m.g0 + shift, m.pos + shift, m.g1 + shift)

    def op_Slice(self, node: Any, k: int) -> _Dyn | _Moved:
        """``x[:, a:b:s]`` on axes other than the batch's, with constant bounds."""
        m = _as_moved(self.anydyn(node, 0))
        consts = [None] + [self.opt_const(node, i) for i in range(1, len(node.input))]
        a = self.attrs(node)
        starts, ends, axes, steps = self._slice_args(node, consts, a)
        if not len(starts) == len(ends) == len(axes) == len(steps) or 0 in steps:
            raise self.fail(node, f"bad slice starts {starts}, ends {ends}, axes {axes}, "
                            f"steps {steps}")
        r = m.rank
        sl = [slice(None)] * len(m.v.shape)
        for st, en, ax, sp in zip(starts, ends, axes, steps):
            ax = self._rank_axis(node, ax, r)
            if ax == m.g0:
                raise self.fail(node, f"slicing the batch dimension (axis {ax} of "
                                f"{m.describe()})")
            big = np.iinfo(np.int64).max // 2
            e = None if en >= big or (sp < 0 and en <= -big) else int(en)
            pa = m.sample_axis(ax)
            sl[pa] = slice(int(st), e, int(sp))
            if sp > 0:  # clamped to the axis (torch warns about out-of-range bounds)
                sl[pa] = slice(*sl[pa].indices(m.v.shape[pa]))
        if all(q.step is None or q.step > 0 for q in sl):
            out = self.index(node, m.v, tuple(sl))
        else:
            out = self._selection(node, m.v, lambda b: b[tuple(sl)])
        return self.place(out, m.g0, m.pos, m.g1)

    def _token_bias(self, node: Any, c: np.ndarray, out: tuple[int, ...]) -> np.ndarray | None:
        """A constant added to a per-sample value of shape ``out``, broadcast to it (its
        leading axes beyond ``out``'s rank of size 1), or ``None`` when it does not fit."""
        c = c.astype(np.float64)
        if c.ndim > len(out) + 1 or (c.ndim == len(out) + 1 and c.shape[0] != 1):
            return None  # ONNX would add axes in front of [N, *out] or broadcast over N
        if c.ndim == len(out) + 1:
            c = c[0]  # its size-1 axis meets the batch
        try:
            return np.broadcast_to(c, out).reshape(-1).copy()
        except ValueError:
            return None

    def sample_const(self, node: Any, shape: Sequence[int], lay: _Moved,
                     c: np.ndarray, strict: bool = True) -> Any:
        """A constant that ONNX broadcasts against a value of per-sample shape ``shape``
        laid out as ``lay`` (its batch in ONNX axis ``lay.g0``), as the per-sample constant
        of shape ``shape``. It must not vary along the batch axis (size 1 there: it is then
        the same for every factor merged with the batch) nor add axes or grow any axis;
        otherwise refused (``strict``) or ``None``."""
        g0, g1 = lay.g0, lay.g1
        onnx = [*shape[:g0], None, *shape[g1:]]
        r = len(onnx)
        why = None
        cc = c
        if c.ndim > r:
            why = f"has more axes than the {lay.describe()} it is applied to"
        else:
            cc = c.reshape((1,) * (r - c.ndim) + c.shape)
            if cc.shape[g0] != 1:
                why = f"varies along the axis holding the batch of {lay.describe()}"
            elif any(d not in (1, o) for i, (d, o) in enumerate(zip(cc.shape, onnx))
                     if i != g0):
                why = f"does not broadcast to {lay.describe()}"
        if why is not None:
            if strict:
                raise self.fail(node, f"a constant of shape {list(c.shape)} {why}")
            return None
        self.check_size(node, math.prod(shape), 8, "a per-sample constant")
        ps = (*cc.shape[:g0], *(1,) * (g1 - g0), *cc.shape[g0 + 1:])
        return np.broadcast_to(cc.astype(np.float64).reshape(ps), tuple(shape))

    def token_matmul(self, node: Any, v: _Dyn, w: np.ndarray, lay: _Moved | None = None,
                     bias: np.ndarray | None = None) -> Any:
        r"""``x @ W`` on tokens ``[..., K]`` with a constant ``W [K, M]``: ``nn.Linear(K, M)``
        on the last axis of each sample, :math:`y_{t} = W^\top x_{t} + b` for every token
        ``t`` (exact; the same map on every token, as torch's own ``nn.Linear`` on tokens).
        A following ``Add`` of a constant the same for every token is folded into its bias,
        unless ``bias`` (``[M]``) is given. ``lay``: the value's batch is laid out as there
        (not in its last axis), and so is the result's."""
        kk, mm = w.shape
        if v.shape[-1] != kk:
            raise self.fail(node, f"matrix {list(w.shape)} does not fit tokens {list(v.shape)}")
        out = (*v.shape[:-1], mm)
        self.check_size(node, kk * mm, 12, "the weight")
        self._bound(node, math.prod(out), "output")
        b, fused = bias, False
        nxt = self.only_consumer(node.output[0])
        if b is None and nxt is not None and nxt.op_type == "Add" and len(nxt.input) == 2:
            other = nxt.input[1] if nxt.input[0] == node.output[0] else nxt.input[0]
            c = self.values.get(other)
            if isinstance(c, np.ndarray) and c.dtype.kind == "f":
                if lay is None:
                    full = self._token_bias(node, c, out)
                else:
                    full = self.sample_const(node, out, lay, c, strict=False)
                rows = None if full is None else np.asarray(full).reshape(-1, mm)
                if rows is not None and (rows == rows[:1]).all():
                    b, fused = rows[0].copy(), True  # the same bias on every token
                    self.skip.add(self._index(nxt))
        lin = nn.Linear(kk, mm, bias=b is not None)
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(np.ascontiguousarray(w.T, dtype=np.float32)))
            if b is not None:
                lin.bias.copy_(torch.from_numpy(np.ascontiguousarray(b, dtype=np.float32)))
        res = _Dyn(self.add_module("linear", lin, self.materialize(v, node)), out, out)
        val = res if lay is None else self.place(res, lay.g0, lay.pos, lay.g1)
        if fused:
            self.values[nxt.output[0]] = val  # type: ignore[union-attr]
        return val


_NP_BINARY = {
    "Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": np.divide,
    "Max": np.maximum, "Min": np.minimum, "Pow": np.power, "Equal": np.equal,
}


# ----------------------------------------------------------------------------- checks


@dataclass(frozen=True)
class OnnxCheck:
    """Outcome of the comparison with onnxruntime over ``n`` random inputs:
    ``max_rel_error`` is
    :math:`\\max_i\\|f(x_i)-g(x_i)\\|_\\infty/\\max_i\\|g(x_i)\\|_\\infty`."""

    n: int
    max_abs_error: float
    max_rel_error: float


def compare_with_onnxruntime(
    model: nn.Module,
    path: PathLike,
    n: int = 64,
    *,
    layout: str = "nchw",
    seed: int = 0,
    batch: int | None = None,
) -> OnnxCheck:
    """Run ``model`` (the importer's module, ONNX input layout unless ``layout='nhwc'``)
    and onnxruntime on the same ``n`` random inputs (uniform in [0, 1] and standard normal,
    half each) and return the largest errors. The first sample runs alone (batch size 1,
    where ONNX broadcasting and ``Squeeze`` treat the batch axis like any size-1 axis), the
    others ``batch`` at a time (a file with a fixed batch size: that many), so the check never
    holds more than one chunk of inputs and activations; onnxruntime's own log is silenced
    (its failures reach the caller as the exception)."""
    import contextlib
    import io

    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 4  # fatal only: a run-time failure is raised, not printed
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    shape = [d if isinstance(d, int) else None for d in inp.shape]
    rest = [int(d) for d in shape[1:]]  # type: ignore[arg-type]
    rng = np.random.default_rng(seed)
    dtype = np.float32 if inp.type == "tensor(float)" else np.float64
    step = shape[0] if shape[0] is not None else min(n, batch or n)
    if shape[0] is not None and step > max(n, batch or 1):
        raise OnnxImportError(f"{path}: the file's fixed batch size {step} is above what the "
                              f"load-time check may run at once ({max(n, batch or 1)} "
                              "samples); pass check=False to skip it")
    n_uniform = n - n // 2
    p = next(iter(model.parameters()), None)
    dt = p.dtype if p is not None else torch.float32
    refs, gots = [], []
    if shape[0] is None:  # batch size 1 first: where a size-1 batch axis may squeeze or
        # broadcast differently (onnxruntime), then chunks of ``step``
        chunks = [(0, 1)] + [(s, min(s + step, n)) for s in range(1, n, step)]
    else:
        chunks = [(s, s + step) for s in range(0, n, step)]
    for s, e in chunks:
        k = e - s
        u = max(0, min(e, n_uniform) - s)  # the chunk's uniform samples, then normal ones
        x = np.concatenate([rng.random((u, *rest), dtype=dtype),
                            rng.standard_normal((k - u, *rest), dtype=dtype)])
        refs.append(np.asarray(sess.run(None, {inp.name: x})[0]).reshape(k, -1)
                    .astype(np.float64))
        xt = torch.from_numpy(x)
        if layout == "nhwc":
            xt = xt.permute(0, 3, 1, 2).contiguous()
        with torch.no_grad(), contextlib.redirect_stderr(io.StringIO()):  # torch.fx's own
            gots.append(model(xt.to(dt)).double().numpy().reshape(k, -1))  # traceback
        del x, xt
    ref, got = np.concatenate(refs)[:n], np.concatenate(gots)[:n]
    if got.shape != ref.shape:
        raise ModelFileError(f"{path}: output shape {got.shape} differs from onnxruntime's "
                             f"{ref.shape}")
    for what, v in (("onnxruntime's", ref), ("the imported model's", got)):
        if not np.isfinite(v).all():
            raise OnnxImportError(f"{path}: {what} logits are NaN or infinite on the random "
                                  "check inputs (the graph overflows); refusing it")
    abs_err = float(np.abs(got - ref).max())
    scale = float(np.abs(ref).max())
    return OnnxCheck(n, abs_err, abs_err / scale if scale > 0 else abs_err)


# ----------------------------------------------------------------------------- entry


def load_onnx(
    path: PathLike,
    *,
    layout: str = "nchw",
    input_shape: Sequence[int] | None = None,
    normalize: tuple[Any, Any] | None = None,
    check: bool = True,
    check_samples: int = 64,
    rtol: float = 1e-5,
    device: str | torch.device | None = None,
    max_tensor_bytes: int | None = None,
    max_total_bytes: int | None = None,
) -> nn.Module:
    """Import an ONNX classifier as a torch module boundkit can certify and attack.

    Args:
        path: the ``.onnx`` file (self-contained; external data is refused).
        layout: ``"nchw"`` (default) or ``"nhwc"``: the file's image input is channels-last;
            the returned module then takes ``[N, C, H, W]`` like every boundkit data set
            (the file's own leading ``Transpose`` cancels out).
        input_shape: the per-sample shape the returned module should take when it differs
            from the file's (same elements, regrouped row-major, e.g. ``(1, 28, 28)`` for a
            net declaring ``[1, 784, 1]``).
        normalize: ``(mean, std)``, scalars or one per channel: prepend ``(x - mean) / std``
            so that inputs are the pixels in ``[0, 1]`` (for nets whose normalisation lived
            in their training code).
        check: compare with onnxruntime (when installed) on ``check_samples`` random inputs
            and refuse a relative error above ``rtol``.
        device: where the module lives.
        max_tensor_bytes: the largest tensor the import may decode, fold or materialise
            (default :data:`MAX_TENSOR_BYTES` or 4x the file's size, whichever is larger).
        max_total_bytes: the budget of everything the import holds, the activations of its
            checks included (default :data:`MAX_TOTAL_BYTES` or 8x the file's size).

    Raises:
        ModelFileError (:class:`OnnxImportError`): unreadable file, unsupported node, opset
            or attribute, a tensor beyond the limits (each named with the node, its op type
            and the file), mismatch with onnxruntime.
    """
    p = Path(path)
    onnx = _require_onnx(str(p))
    layout = layout.lower()
    if layout not in ("nchw", "nhwc"):
        raise ModelFileError(f"unknown layout {layout!r}; use 'nchw' or 'nhwc'")
    try:
        st = p.stat()
    except OSError as exc:
        raise ModelFileError(f"{p} cannot be read: {exc}") from None
    import stat as _stat

    if not _stat.S_ISREG(st.st_mode):  # a FIFO or a device would block or never end
        raise ModelFileError(f"{p} is not a regular file")
    size = st.st_size
    if size > MAX_FILE_BYTES:
        raise ModelFileError(f"{p} is {size} bytes; the importer reads at most {MAX_FILE_BYTES}")
    limits = OnnxLimits.for_file(size, max_tensor_bytes, max_total_bytes)
    from boundkit.validate import check_int

    check_int("check_samples", check_samples, maximum=1 << 16)
    try:
        proto = onnx.load_model_from_string(p.read_bytes())
    except Exception as exc:  # protobuf's DecodeError and others
        raise ModelFileError(f"{p} is not a readable ONNX file: {exc}") from None
    if not proto.HasField("graph") or not len(proto.graph.node):
        raise ModelFileError(f"{p} is not an ONNX model (no graph)")
    if len(proto.functions):
        raise ModelFileError(f"{p} defines local functions; boundkit does not import them")
    imp = _Importer(proto, str(p), layout, limits)
    gm, module_shape, _ = imp.run()
    # the load-time checks run the graph: size one sample's activations first (shapes from
    # fake tensors, nothing allocated) and run as many samples at once as the budget allows
    per_sample = imp.activation_bytes()
    imp.check_size(None, per_sample, 2, "the activations of one sample (float32, all layers)")
    left = max(limits.max_total_bytes - imp.used_bytes, per_sample)
    batch = max(1, min(check_samples, left // max(4 * per_sample, 1)))
    import contextlib
    import io

    try:  # torch.fx prints its own traceback to stderr when a generated graph fails
        with torch.no_grad(), contextlib.redirect_stderr(io.StringIO()):
            gm(torch.zeros(min(2, batch), *module_shape))
    except Exception as exc:  # shapes inconsistent with the file's declarations
        raise OnnxImportError(f"{p}: the imported graph does not run: {_first(exc)}") from None
    if check:
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            check = False
    if check:
        try:
            res = compare_with_onnxruntime(gm, p, check_samples, layout=layout, batch=batch)
        except ModelFileError:
            raise
        except Exception as exc:  # onnxruntime refuses the file (its own validation)
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise OnnxImportError(
                f"{p}: onnxruntime cannot run the file for the load-time check "
                f"({type(exc).__name__}: {first}); pass check=False to skip it"
            ) from None
        if not res.max_rel_error <= rtol:
            raise OnnxImportError(
                f"{p}: the imported model differs from onnxruntime by {res.max_rel_error:.3g} "
                f"relative (max abs {res.max_abs_error:.3g}) on {res.n} random inputs, above "
                f"{rtol:g}; refusing it"
            )
    model: nn.Module = gm
    if input_shape is not None:
        model = adapt_input_shape(model, module_shape, input_shape, str(p))
        module_shape = tuple(int(s) for s in input_shape)
    if normalize is not None:
        from boundkit.models.preprocess import normalize as _normalize

        model = _normalize(model, normalize[0], normalize[1], module_shape)
    model.boundkit_input_shape = tuple(int(s) for s in module_shape)
    if device is not None:
        model.to(device)
    return model.eval()


def adapt_input_shape(
    model: nn.Module, model_shape: Sequence[int], data_shape: Sequence[int], source: str = ""
) -> nn.Module:
    """Prepend a row-major regrouping so that ``model`` (taking ``model_shape`` per sample)
    accepts ``data_shape``. Allowed when the two agree after dropping size-1 dimensions, or
    when the model's input is flat (one dimension of size > 1): regrouping never reorders."""
    from boundkit.models.preprocess import InputReshape

    ms, ds = tuple(int(s) for s in model_shape), tuple(int(s) for s in data_shape)
    if ms == ds:
        return model
    squeeze = tuple(s for s in ms if s != 1), tuple(s for s in ds if s != 1)
    if math.prod(ms) != math.prod(ds) or not (squeeze[0] == squeeze[1] or len(squeeze[0]) <= 1):
        raise ModelFileError(
            f"{source}: the model takes per-sample shape {list(ms)}, the data has {list(ds)}; "
            "they are not the same elements regrouped (for channels-last files use layout "
            "'nhwc')"
        )
    return nn.Sequential(InputReshape(ms), model).eval()


__all__ = [
    "ATTRIBUTES",
    "MAX_ELEMENTS",
    "MAX_NODES",
    "MAX_OPSET",
    "MAX_PERMUTATION",
    "MAX_TENSOR_BYTES",
    "MAX_TOTAL_BYTES",
    "MIN_OPSET",
    "OnnxCheck",
    "OnnxImportError",
    "OnnxLimits",
    "adapt_input_shape",
    "compare_with_onnxruntime",
    "load_onnx",
]
