"""Collapse regions of pure data-movement ops into one Transpose/Reshape (or flat Gather).

Exported per-token loops read token ``i`` with ``Gather(x, i)`` and write results back with
``ScatterElements``/``ScatterND`` into a zeros buffer, or stack them with ``Concat``. Such a
region moves elements of ONE source tensor around under constant indices. We evaluate the
region on an index *marker* (``arange(numel(source))`` in the source's shape): the result
says, for every output element, which source element lands there (-1: none). A complete
marker that is a permutation becomes a Transpose (+ Reshape); this folds every write-back
and read spelling the same way, without matching any op string.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import networkx as nx
import numpy as np
import torch

from gdnc.ir.builder import GraphBuilder
from gdnc.ir.graph import Graph
from gdnc.opset.node_eval import eval_node
from gdnc.passes.patterns import ONNX_DOMAINS, static_shape
from gdnc.passes.rewrite import Miss

MOVEMENT_OPS = frozenset({
    "Gather", "GatherElements", "GatherND", "Slice", "Squeeze", "Unsqueeze", "Reshape", "Flatten",
    "Expand", "Transpose", "Concat", "Split", "Identity", "ScatterND", "ScatterElements", "Tile",
})
_MAX_SOURCE_ELEMENTS = 1 << 24
_FLOAT_TYPES = {1, 10, 11, 16}  # float, float16, double, bfloat16
_MAX_REGION = 100_000
_READS = frozenset({"Gather", "GatherElements", "GatherND", "Slice"})


@dataclass(frozen=True)
class Region:
    source: str
    nodes: list[int]  # topological order


def movement_region(g: Graph, value: str) -> Region | None:
    """The data-movement nodes computing ``value`` and its one non-constant float source."""
    sources: set[str] = set()
    seen: set[int] = set()
    stack = [value]
    while stack:
        current = stack.pop()
        if not current or g.const_value(current) is not None:
            continue
        nid = g.producer(current)
        node = None if nid is None else g.node(nid)
        if node is None or node.domain not in ONNX_DOMAINS or node.op_type not in MOVEMENT_OPS:
            sources.add(current)
            continue
        assert nid is not None
        if nid in seen:
            continue
        seen.add(nid)
        if len(seen) > _MAX_REGION:
            return None
        if node.op_type in _READS:
            # the tensor a per-token read slices is the source; what made it stays as it is
            sources.add(node.inputs[0])
            stack.extend(node.inputs[1:])
        else:
            stack.extend(node.inputs)
    if len(sources) != 1:
        return None
    (source,) = sources
    if g.value(source).dtype not in _FLOAT_TYPES:
        return None
    order = list(nx.topological_sort(g.nx.subgraph(seen)))
    return Region(source, order)


def movement_marker(g: Graph, region: Region, value: str, opset: int) -> np.ndarray | None:
    shape = static_shape(g, region.source)
    if shape is None or int(np.prod(shape)) > _MAX_SOURCE_ELEMENTS:
        return None
    env: dict[str, torch.Tensor] = {
        region.source: torch.arange(int(np.prod(shape)), dtype=torch.int64).reshape(shape)
    }

    def read(name: str) -> torch.Tensor | None:
        if not name:
            return None
        if name in env:
            return env[name]
        const = g.const_value(name)
        assert const is not None  # every other leaf of a region is constant
        tensor = torch.from_numpy(np.array(const))
        # float constants are data (e.g. a zeros buffer): no source element lands there
        return torch.full(tensor.shape, -1, dtype=torch.int64) if tensor.is_floating_point() else tensor

    for nid in region.nodes:
        node = g.node(nid)
        try:
            outs = eval_node(node, [read(i) for i in node.inputs], opset)
        except (RuntimeError, ValueError, TypeError, IndexError):
            return None  # bad index values in the model: not folded, the runtime reports them
        env.update(zip(node.outputs, outs))
    return env[value].numpy()


def _as_layout_ops(marker: np.ndarray, src_shape: tuple[int, ...]) -> tuple[list[int], bool] | None:
    """(perm, needs_reshape) with ``marker == index.transpose(perm).reshape(marker.shape)``."""
    if marker.size != int(np.prod(src_shape)):
        return None
    index = np.arange(marker.size).reshape(src_shape)
    perms = list(itertools.permutations(range(len(src_shape))))
    for reshape in (False, True):  # a plain transpose when one fits
        for perm in perms:
            moved = index.transpose(perm)
            if (moved.shape != marker.shape) == reshape and np.array_equal(
                moved.reshape(marker.shape), marker
            ):
                return list(perm), reshape
    return None


@dataclass(frozen=True)
class FoldDataMovement:
    """Replace a Concat/Scatter result that is a pure rearrangement of one source tensor."""

    name: str = "fold-data-movement"
    ops: tuple[str, ...] = ("Concat", "ScatterND", "ScatterElements")
    opset: int = 18

    def apply(self, g: Graph, nid: int) -> bool | Miss:
        node = g.node(nid)
        out = node.outputs[0]
        out_shape = static_shape(g, out)
        if node.domain not in ONNX_DOMAINS or out_shape is None:
            return False
        if any(g.node(c).op_type in self.ops for c in g.consumers(out)):
            return False  # only the end of a region is folded
        region = movement_region(g, out)
        if region is None:
            return False
        marker = movement_marker(g, region, out, self.opset)
        if marker is None:
            return False
        if np.any(marker < 0):
            return False  # a partial write: the end of a region is further on, if anywhere
        src_shape = static_shape(g, region.source)
        assert src_shape is not None
        layout = _as_layout_ops(marker, src_shape)
        if layout is None:
            return Miss(self.name, f"{out!r} is not a transpose/reshape of {region.source!r}", value=out,
                        node=node.name)
        perm, reshape = layout
        value = region.source
        b = GraphBuilder(g, position=g.position(nid))
        if perm != sorted(perm):
            value = b.op("Transpose", value, hint=out + "_t", perm=perm)
        if reshape:
            value = b.op("Reshape", value, b.const(out_shape, hint=out + "_shape"), hint=out + "_r")
        b.typed(value, g.value(region.source).dtype, out_shape)
        return g.bypass(nid, out, value)

