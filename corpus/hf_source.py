"""transformers' own functions, found under whatever wrappers transformers puts around them.

transformers decorates its reference delta-rule functions so that a hub kernel or fla can
replace them: a ``functools.wraps`` wrapper (``inspect.unwrap`` sees through it) up to 5.24,
and since 5.25, with the ``kernels`` package installed, a ``torch.nn.Module`` instance whose
``forward`` closes over that wrapper (``inspect.unwrap`` does not). Tests need the function
itself: its globals (to run it in fp64) and its body (to export the reference loop, never a
kernel), so :func:`hf_function` walks every wrapper until it reaches the function defined in
the modeling file under that name.
"""

from __future__ import annotations

import types
from collections import deque
from typing import Any

import torch


def _inner(obj: Any) -> list[Any]:
    """What ``obj`` wraps: ``__wrapped__``, a module's ``forward``, closure cells, ``__func__``."""
    found = [getattr(obj, "__wrapped__", None), getattr(obj, "__func__", None)]
    if isinstance(obj, torch.nn.Module):
        found.append(type(obj).forward)
    if isinstance(obj, types.FunctionType):
        for cell in obj.__closure__ or ():
            try:
                found.append(cell.cell_contents)
            except ValueError:  # an empty cell
                continue
    return [f for f in found if callable(f)]


def hf_function(module: types.ModuleType, name: str) -> types.FunctionType:
    """The plain Python function ``name`` as written in ``module``'s source file (no hub
    kernel, fla or module wrapper around it). Raises ``LookupError`` naming the module when
    no wrapper leads to it, so a new transformers release fails loudly, not silently."""
    start = getattr(module, name)
    queue, seen = deque([start]), set()
    while queue:
        obj = queue.popleft()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if (isinstance(obj, types.FunctionType) and obj.__name__ == name
                and obj.__code__.co_filename == module.__file__):
            return obj
        queue.extend(_inner(obj))
    raise LookupError(f"{module.__name__}.{name}: no wrapper of {type(start).__name__} leads to the "
                      f"function defined in {module.__file__}")
