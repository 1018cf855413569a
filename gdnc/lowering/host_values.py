"""Host copies of index tensors that a caller already holds.

Ops that check index values (the GatedDeltaNet call's slots and ``cu_seqlens``, ``embed``'s
ids) read them on the host. For tensors on a GPU that is a device-to-host transfer: a stall of
the whole stream, and an error while a CUDA graph is being captured. A runtime that built the
index inputs on the host hands its copies over for the duration of a run
(``with known([(tensor, array), ...])``); ``host_copy(tensor)`` then returns the array instead
of reading the tensor back. A copy is matched by the tensor's data pointer, element count and
dtype, so a view of the same elements (a reshape) finds it too. The table is per thread.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import numpy as np
import torch

_local = threading.local()
_Key = tuple[int, int, torch.dtype]


def _key(t: torch.Tensor) -> _Key:
    return (t.data_ptr(), t.numel(), t.dtype)


@contextmanager
def known(pairs: Iterable[tuple[torch.Tensor, np.ndarray]]) -> Iterator[None]:
    """Within the block, ``host_copy(t)`` is ``array`` (flattened) for each pair's tensor ``t``:
    the caller guarantees that ``t`` holds ``array``'s values and stays alive (its memory is not
    reused) throughout the block."""
    table = {_key(t): np.asarray(a).reshape(-1) for t, a in pairs}
    previous = getattr(_local, "table", None)
    _local.table = table
    try:
        yield
    finally:
        _local.table = previous


def host_copy(t: torch.Tensor) -> np.ndarray | None:
    """The caller's host copy of ``t``'s elements (1-D, in order), None where none is known."""
    table = getattr(_local, "table", None)
    if not table or not t.is_contiguous():
        return None
    return table.get(_key(t))


def capturing(t: torch.Tensor) -> bool:
    """Whether ``t`` is a CUDA tensor and this thread's current stream is capturing a CUDA graph
    (no value may be read back; no host-to-device copy may be made)."""
    return t.is_cuda and torch.cuda.is_current_stream_capturing()
