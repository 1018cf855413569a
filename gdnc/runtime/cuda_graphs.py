"""Runs of a compiled graph replayed from CUDA graphs: one capture per shape of the inputs.

A decode step of a compiled graph is ~1,000 small kernels; launched from Python they cost
tens of milliseconds of host time per step, far more than the GPU needs. ``CudaGraphs``
captures a run once per *key* (the names, shapes and dtypes of the index feeds, and the pool
tensors' storage) and replays it: the host then only writes the feeds into static buffers
(one pinned staging buffer and one host-to-device copy per dtype) and launches the graph.

The first run of a key runs eagerly (it compiles what the kernels need; a capture may not), the
second captures and replays, later ones replay. The pools must be updated in place by the
graph (donated inputs): a pool output that is a new tensor is copied back into the pool inside
the graph. Outputs that are not pools (logits) are cloned, since the next replay overwrites
them. Every run, eager or captured, hands the feeds' host copies to the ops that check index
values (``lowering.host_values``), so no value is read back from the GPU. A run that cannot be
captured (an op that reads a value back, or allocates from the host) fails its capture once:
``refused`` then says why (the node, as the interpreter names it) and every later run of this
graph is eager. At most ``MAX_GRAPHS`` captures are kept (least recently used dropped).

Contract of the caller (the batch runner): feeds hold the same *kind* of batch for one key
(decode: one token per sequence, distinct slots), and their values were checked on the host
before the run (token ids, slots), since a replay runs no check.
"""

from __future__ import annotations

import os
import warnings
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from gdnc.errors import GdncError, GdncWarning, first_line
from gdnc.lowering.host_values import known
from gdnc.runtime.compiled import CompiledGraph

MAX_GRAPHS = 16
Key = tuple


def cuda_graphs_enabled(device: torch.device) -> bool:
    """Whether compiled graphs on ``device`` replay CUDA graphs: on CUDA unless the environment
    says ``GDNC_CUDA_GRAPHS=off`` (every step then launches its kernels from Python)."""
    return device.type == "cuda" and os.environ.get("GDNC_CUDA_GRAPHS", "on").lower() != "off"


class _StaticFeeds:
    """Device buffers holding one key's feeds, loaded from a pinned staging copy: one buffer
    and one transfer per dtype."""

    def __init__(self, feeds: Mapping[str, np.ndarray], device: torch.device) -> None:
        by_dtype: dict[np.dtype, list[str]] = {}
        for name, array in feeds.items():
            by_dtype.setdefault(array.dtype, []).append(name)
        self.views: dict[str, torch.Tensor] = {}
        self._groups: list[tuple[list[str], np.ndarray, torch.Tensor, torch.Tensor]] = []
        for dtype, names in by_dtype.items():
            total = sum(feeds[n].size for n in names)
            staging = torch.from_numpy(np.empty(total, dtype=dtype)).pin_memory()
            buffer = torch.empty(total, dtype=staging.dtype, device=device)
            start = 0
            for name in names:
                size = feeds[name].size
                self.views[name] = buffer[start:start + size].view(feeds[name].shape)
                start += size
            self._groups.append((names, staging.numpy(), staging, buffer))
        self._copied = torch.cuda.Event()
        self._copied.record()

    def load(self, feeds: Mapping[str, np.ndarray]) -> None:
        """Write ``feeds`` (the key's names and shapes) into the device buffers: the transfers
        are queued on the current stream; the staging buffers are reused once the previous
        ones are done."""
        self._copied.synchronize()
        for names, host, staging, buffer in self._groups:
            np.concatenate([feeds[n].reshape(-1) for n in names], out=host)
            buffer.copy_(staging, non_blocking=True)
        self._copied.record()


@dataclass
class _Captured:
    graph: torch.cuda.CUDAGraph
    feeds: _StaticFeeds
    outputs: list[torch.Tensor]


class CudaGraphs:
    """``run(feeds, pools)`` of a ``CompiledGraph`` on a CUDA device, replayed from CUDA graphs
    (see the module). ``pool_outputs``: graph output position -> the pool input it updates;
    ``captures`` and ``replays`` count what happened; ``refused``: why capturing failed (None
    while it has not)."""

    def __init__(self, compiled: CompiledGraph, device: torch.device,
                 pool_outputs: Mapping[int, str]) -> None:
        self._compiled, self._device, self._pool_outputs = compiled, device, dict(pool_outputs)
        self._graphs: OrderedDict[Key, _Captured] = OrderedDict()
        self._seen: OrderedDict[Key, None] = OrderedDict()
        self.refused: str | None = None
        self.captures = self.replays = 0

    def run(self, feeds: Mapping[str, np.ndarray], pools: Mapping[str, torch.Tensor]) -> list[torch.Tensor]:
        """The graph's outputs for host ``feeds`` (index inputs) and device ``pools`` (updated in
        place); outputs that are not pools are fresh tensors."""
        key = (tuple((n, a.shape, a.dtype.str) for n, a in feeds.items()),
               tuple((n, t.data_ptr(), t.shape) for n, t in pools.items()))
        captured = self._graphs.get(key)
        if captured is None and self.refused is None and key in self._seen:
            captured = self._capture(key, feeds, pools)
        if captured is None:
            self._seen[key] = None
            while len(self._seen) > 4 * MAX_GRAPHS:
                self._seen.popitem(last=False)
            return self._eager(feeds, pools)
        self._graphs.move_to_end(key)
        captured.feeds.load(feeds)
        captured.graph.replay()
        self.replays += 1
        return [out if j in self._pool_outputs else out.clone() for j, out in enumerate(captured.outputs)]

    def _eager(self, feeds: Mapping[str, np.ndarray], pools: Mapping[str, torch.Tensor]
               ) -> list[torch.Tensor]:
        tensors = {n: torch.from_numpy(a).to(self._device) for n, a in feeds.items()}
        with known((tensors[n], a) for n, a in feeds.items()):
            return self._compiled.run({**tensors, **pools})

    def _capture(self, key: Key, feeds: Mapping[str, np.ndarray], pools: Mapping[str, torch.Tensor]
                 ) -> _Captured | None:
        """Capture a run of ``key`` (None, ``refused`` set, when it cannot be captured)."""
        static = _StaticFeeds(feeds, self._device)
        static.load(feeds)
        graph = torch.cuda.CUDAGraph()
        try:
            with known((static.views[n], a) for n, a in feeds.items()), torch.cuda.graph(graph):
                outputs = self._compiled.run({**static.views, **pools})
                for j, name in self._pool_outputs.items():
                    if outputs[j].data_ptr() != pools[name].data_ptr():  # not updated in place
                        pools[name].copy_(outputs[j])
                        outputs[j] = pools[name]
        except (GdncError, RuntimeError) as exc:
            self.refused = first_line(exc)
            warnings.warn(f"CUDA graphs off for this model, its steps run eagerly: {self.refused}",
                          GdncWarning, stacklevel=3)
            torch.cuda.synchronize(self._device)
            return None
        captured = self._graphs[key] = _Captured(graph, static, outputs)
        self.captures += 1
        while len(self._graphs) > MAX_GRAPHS:
            self._graphs.popitem(last=False)
        return captured
