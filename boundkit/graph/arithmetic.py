r"""The floating-point arithmetic a captured model runs in (:attr:`Graph.model_arithmetic
<boundkit.graph.graph.Graph.model_arithmetic>`).

A certificate is about the model as it runs, in its own dtype: the bound methods charge, at
every node, the rounding of the model's own evaluation of that node in this arithmetic
(``docs/theory/numerics.md`` §4).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Arithmetic:
    r"""The floating-point arithmetic a model runs in: every rounded operation returns
    :math:`(a\circ b)(1+\delta)+\varepsilon`, :math:`|\delta|\le` ``unit``,
    :math:`|\varepsilon|\le` ``eta`` (Higham 2002, eq. 2.8), as long as no value reaches
    ``largest`` (then it overflows).

    Attributes:
        unit: the unit roundoff (:math:`2^{-24}` for float32, :math:`2^{-11}` where float32
            products may run in TF32, :math:`2^{-8}` in bfloat16).
        eta: the smallest normal number of the dtype: it bounds the absolute error of a
            result with gradual underflow and with results flushed to zero
            (``torch.set_flush_denormal(True)``, whose state PyTorch does not expose); an
            operand read as zero (the same flag) is charged per term by the rules.
        largest: the largest finite number of the dtype.
        name: what it is, for messages and docs.
    """

    unit: float
    eta: float
    largest: float
    name: str

    def gamma(self, k: int | float) -> float:
        r""":math:`\gamma_k=ku/(1-ku)` in this arithmetic (``inf`` once :math:`ku\ge1/2`: no
        bound is claimed there)."""
        ku = float(k) * self.unit
        return ku / (1.0 - ku) if ku < 0.5 else math.inf

    def overflows(self, mag: torch.Tensor) -> torch.Tensor:
        """bool, element-wise: a value of magnitude up to ``mag`` (rounding included) may
        reach ``largest``, where the model's value becomes infinite."""
        return ~(mag < self.largest * (1 - 4 * self.unit))


def _of(dtype: torch.dtype, unit: float, name: str) -> Arithmetic:
    info = torch.finfo(dtype)
    return Arithmetic(unit, float(info.tiny), float(info.max), name)


#: each floating dtype's arithmetic
_ARITHMETIC = {
    torch.float64: _of(torch.float64, 2.0**-53, "float64"),
    torch.float32: _of(torch.float32, 2.0**-24, "float32"),
    torch.float16: _of(torch.float16, 2.0**-11, "float16"),
    torch.bfloat16: _of(torch.bfloat16, 2.0**-8, "bfloat16"),
}
#: float32 products in TF32 (10 explicit mantissa bits) or in bfloat16 (7), by
#: ``torch.get_float32_matmul_precision()``
_FLOAT32_REDUCED = {
    "high": _of(torch.float32, 2.0**-11, "float32 with TF32 products"),
    "medium": _of(torch.float32, 2.0**-8, "float32 with bfloat16 products"),
}
#: the charge where a value may overflow: no margin survives it, and it stays finite
#: through the float64 bound computations (``docs/theory/numerics.md`` §4)
OVERFLOW_CHARGE = 1e100


#: the dtype of the inputs being certified (:func:`inputs_in`): a model without floating
#: parameters or buffers runs in it
_INPUT_DTYPE: ContextVar[torch.dtype] = ContextVar("boundkit_input_dtype", default=torch.float32)


@contextlib.contextmanager
def inputs_in(dtype: torch.dtype) -> Iterator[None]:
    """Within it, a model without floating parameters or buffers runs in ``dtype`` (the
    inputs' own, when floating; float32 otherwise): its arithmetic and its fidelity check."""
    token = _INPUT_DTYPE.set(dtype if dtype.is_floating_point else torch.float32)
    try:
        yield
    finally:
        _INPUT_DTYPE.reset(token)


def input_dtype() -> torch.dtype:
    """The dtype set by :func:`inputs_in` (float32 outside it)."""
    return _INPUT_DTYPE.get()


def model_arithmetic(dtypes: set[torch.dtype], on_cuda: bool) -> Arithmetic:
    r"""The coarsest arithmetic among a model's floating dtypes (with none, that of the
    inputs being certified, :func:`inputs_in`: such a model runs in its inputs' dtype).
    float32 is taken as reduced where PyTorch may compute its products with fewer mantissa
    bits: ``torch.get_float32_matmul_precision()`` other than ``"highest"`` (CPU and CUDA),
    or on CUDA ``torch.backends.cuda.matmul.allow_tf32`` or
    ``torch.backends.cudnn.allow_tf32`` (on by default for convolutions); within
    ``torch.autocast`` (on the model's device) its dtype counts too. Read at each call: the
    flags are global and can change between calls."""
    dtypes = set(dtypes) or {input_dtype()}
    # under torch.autocast the model's products run in the autocast dtype
    for dev in ("cuda",) if on_cuda else ("cpu",):
        if torch.is_autocast_enabled(dev):
            dtypes.add(torch.get_autocast_dtype(dev))
    out: list[Arithmetic] = []
    for dt in dtypes:
        ar = _ARITHMETIC.get(dt, _ARITHMETIC[torch.float32])
        if dt == torch.float32:
            precision = torch.get_float32_matmul_precision()
            if precision in _FLOAT32_REDUCED:
                ar = _FLOAT32_REDUCED[precision]
            elif on_cuda and (torch.backends.cuda.matmul.allow_tf32
                              or torch.backends.cudnn.allow_tf32):
                ar = _FLOAT32_REDUCED["high"]
        out.append(ar)
    return Arithmetic(max(a.unit for a in out), max(a.eta for a in out),
                      min(a.largest for a in out), " and ".join(sorted({a.name for a in out})))
