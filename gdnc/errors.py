"""Typed errors. Raised deep in the library, caught once at the CLI boundary."""

from __future__ import annotations


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first line of ``exc``'s message (its type name if empty), cut at ``limit`` characters:
    what a one-line error quotes of an exception from below."""
    text = [line.strip() for line in str(exc).splitlines() if line.strip()]
    line = text[0] if text else type(exc).__name__
    return line if len(line) <= limit else line[:limit] + " ..."


def foreign_error(exc: BaseException) -> str | None:
    """The one line a user sees for an exception from below gdnc that bad input can cause but no
    check turned into a ``GdncError`` (arithmetic on a value, memory, onnxruntime refusing a
    model or a feed); None for any other exception (a bug)."""
    if isinstance(exc, MemoryError):
        return f"out of memory ({first_line(exc)})"
    if isinstance(exc, ArithmeticError):
        return f"arithmetic on a value of the input failed: {type(exc).__name__}: {first_line(exc)}"
    if type(exc).__module__.startswith("onnxruntime"):  # its exception types share no base class
        return f"onnxruntime: {first_line(exc)}"
    return None


class GdncError(Exception):
    """Base of every error gdnc reports to a user (one line, no traceback); ``fix``: what the
    user can do about it, when there is one thing to do (shown after the message)."""

    def __init__(self, message: str, *, fix: str | None = None) -> None:
        super().__init__(message)
        self.fix = fix


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
    """A sequence failed while generating (non-finite logits); any others completed."""


class GdncWarning(UserWarning):
    """Something a user should know that does not stop the work (the CLI prints it as one
    ``warning: ...`` line)."""
