"""Exceptions raised by boundkit.

Every error names the problem (which node, which method, which file) so that a user
never gets a wrong number where a clear refusal was due.
"""

from __future__ import annotations


class BoundkitError(Exception):
    """Base class of every error boundkit raises on purpose."""


class UnsupportedLayerError(BoundkitError):
    """A node of the model has no rule for the requested method (or cannot be captured)."""

    def __init__(self, node: str, op: str, method: str | None = None, why: str = "") -> None:
        self.node, self.op, self.method, self.why = node, op, method, why
        where = f" for method {method!r}" if method else ""
        msg = f"node {node!r} (op {op!r}) is not supported{where}"
        if why:
            msg += f": {why}"
        super().__init__(msg)

    def for_method(self, requested: str) -> UnsupportedLayerError:
        """The same refusal named for the method the user asked for (``crown``, ``bab``...),
        when it came from a method that one builds on (``sound``'s rules, which every
        linear-relaxation method runs first)."""
        if self.method is None or self.method == requested:
            return self
        why = f"it builds on method {self.method!r}, which has no rule for it"
        return UnsupportedLayerError(self.node, self.op, requested,
                                     why=f"{why}: {self.why}" if self.why else why)


class ModelError(BoundkitError):
    """The model cannot be analysed as given (training mode, NaN weights, wrong file, ...)."""


class TrainingModeError(ModelError):
    """The model (or one of its submodules) is in training mode."""


class NonFiniteParameterError(ModelError):
    """A parameter or buffer of the model holds NaN or infinity."""


class InputShapeError(BoundkitError, ValueError):
    """The input tensor does not have the shape (or dtype, or values) the model expects."""


class ModelFileError(ModelError):
    """A model file could not be read safely: not a model, wrong shapes, unknown architecture."""


class FidelityError(ModelError):
    """The captured graph does not compute what the model computes (checked on the inputs
    being certified before any certificate is returned)."""


class BadArgumentError(BoundkitError, ValueError):
    """An argument is out of range or of the wrong type (a budget <= 0, a negative count...)."""


class DeviceError(BoundkitError, ValueError):
    """The requested device does not exist on this machine (e.g. ``cuda`` without CUDA)."""


class OutputPathError(BoundkitError, ValueError):
    """An output path would overwrite an input (the model, its sidecar, the data) or mix runs."""


class UntrustedCodeError(ModelFileError):
    """A model file would execute its own code and the user did not allow it."""
