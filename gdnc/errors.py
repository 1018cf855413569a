"""Typed errors. Raised deep in the library, caught once at the CLI boundary."""

from __future__ import annotations


class GdncError(Exception):
    """Base of every error gdnc reports to a user (one line, no traceback)."""


class ModelLoadError(GdncError):
    """A model file is missing, truncated, malformed or unsupported."""


class GraphError(GdncError):
    """The IR is inconsistent (dangling value, cycle, duplicate producer)."""


class UnsupportedOpError(GdncError):
    """The runtime has no implementation for an op (message names it)."""


class ShapeError(GdncError):
    """Tensor shapes or dtypes do not satisfy an op's contract."""


class OpArgumentError(ShapeError):
    """Bad arguments to a kernel (slot out of range, unsorted cu_seqlens ...)."""


class ExecutionError(GdncError):
    """An op failed on the values it was given at run time (an index out of range, a size the
    memory cannot hold); the message names the node."""


class RewriteError(GdncError):
    """A pass could not produce a valid graph."""


class EmitError(GdncError):
    """A fused node cannot be expressed in the requested target."""


class InputError(GdncError):
    """User-supplied inputs (npz files, CLI options) are unusable."""


class GenerationError(GdncError):
    """A sequence failed while generating (non-finite logits); the others completed."""
