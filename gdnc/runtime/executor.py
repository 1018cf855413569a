"""Execute an IR graph with torch on CPU or CUDA.

The plan (topological order, implementations, attribute decoding, last uses) is built once,
for every subgraph too; ``run`` then only moves tensors. Intermediate tensors are freed after
their last reader, a node whose subgraphs read a value counting as one (implicit inputs). An
op with subgraphs (If, Loop, Scan) runs them through ``OpContext.run_subgraph(graph, inputs)``,
which sees the enclosing scopes' values its subgraphs read.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from onnx import numpy_helper

import gdnc.runtime.fused_ops  # noqa: F401  (registers ai.gdnc ops)
from gdnc.errors import ExecutionError, GdncError, InputError, ShapeError, first_line
from gdnc.ir.graph import Graph, Model
from gdnc.opset.node_eval import op_context
from gdnc.opset.onnx_ops.dtypes import tensor_from_array, torch_dtype
from gdnc.opset.registry import OpContext, OpImpl, host_inputs, lookup
from gdnc.runtime.compiled import CompiledGraph, compile_plan
from gdnc.runtime.cuda_graphs import CudaGraphs, cuda_graphs_enabled
from gdnc.runtime.device import runtime_device


@dataclass(frozen=True)
class _Step:
    impl: OpImpl
    ctx: OpContext
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    frees: tuple[str, ...]
    implicit: tuple[str, ...] | None  # enclosing-scope names its subgraphs read; None: no subgraphs
    host_args: tuple[tuple[int, torch.Tensor], ...] = ()  # (position, host copy of a constant)
    name: str = ""
    op: str = ""


# ops whose outputs never alias their inputs: a reader of this kind that ran earlier leaves a
# donated input free to be overwritten by its last reader
_COPYING_OPS = frozenset({"Gather"})


def _donations(graph: Graph, nid: int, position: int, last_use: Mapping[str, int],
               donate: set[str]) -> frozenset[int]:
    """Input positions of node ``nid`` (at ``position`` in the plan) it may overwrite: donated
    graph inputs it reads once, last, after only copying readers."""
    node = graph.node(nid)
    out = set()
    for j, name in enumerate(node.inputs):
        if name not in donate or node.inputs.count(name) != 1 or last_use.get(name) != position \
                or name in graph.implicit_inputs(nid):
            continue
        others = [graph.node(c) for c in graph.consumers(name) if c != nid]
        if all(o.op_type in _COPYING_OPS and o.domain in ("", "ai.onnx") for o in others):
            out.add(j)
    return frozenset(out)


class GraphRunner:
    """A compiled plan for one graph (the main graph or a subgraph)."""

    def __init__(self, graph: Graph, opsets: Mapping[str, int], device: torch.device,
                 donate: Iterable[str] = (), bound: Mapping[str, object] | None = None) -> None:
        self.graph = graph
        self.device = device
        order = graph.topological_order()
        reads = [graph.reads(nid) for nid in order]
        read = {name for names in reads for name in names} | set(graph.outputs)
        host = {name: _initializer(name, t) for name, t in graph.initializers.items() if name in read}
        self.constants: dict[str, object] = {name: t.to(device) for name, t in host.items()}
        self.constants.update(bound or {})
        last_use = {name: i for i, names in enumerate(reads) for name in names}
        keep = set(graph.outputs) | set(self.constants)
        donate = {n for n in donate if n in graph.inputs and n not in keep}
        self.subrunners: dict[int, GraphRunner] = {}  # id(subgraph) -> its plan
        steps = []
        for i, nid in enumerate(order):
            node = graph.node(nid)
            opset = opsets.get("" if node.domain == "ai.onnx" else node.domain, 1)
            impl = lookup(node.domain, node.op_type, opset)
            frees = tuple(n for n in reads[i] if last_use[n] == i and n not in keep)
            ctx = op_context(node, opset)
            donated = _donations(graph, nid, i, last_use, donate) if donate else frozenset()
            if donated:
                ctx = replace(ctx, donated=donated)
            host_args = tuple((j, host[name]) for j, name in enumerate(node.inputs)
                              if j in host_inputs(node.domain, node.op_type) and name in host)
            subs = node.subgraphs()
            for sub in subs:
                self.subrunners[id(sub)] = GraphRunner(sub, opsets, device)
            steps.append(_Step(impl, ctx, tuple(node.inputs), tuple(node.outputs), frees,
                               graph.implicit_inputs(nid) if subs else None,
                               host_args if device.type != "cpu" else (), node.name or f"#{nid}",
                               node.qualified_op))
        self.steps = steps

    def _with_scope(self, step: _Step, env: Mapping[str, torch.Tensor]) -> OpContext:
        """``step``'s context whose ``run_subgraph`` runs a subgraph of its node seeing the values
        of ``env`` the subgraphs read."""
        outer = {name: env[name] for name in step.implicit or ()}

        def run_subgraph(graph: Graph, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
            return self.subrunners[id(graph)].run(dict(zip(graph.inputs, inputs)), outer)

        return replace(step.ctx, run_subgraph=run_subgraph)

    def run(
        self, feeds: Mapping[str, torch.Tensor], outer: Mapping[str, torch.Tensor] | None = None
    ) -> list[torch.Tensor]:
        env: dict[str, Any] = dict(outer or {})  # tensors, and bound weights (``PackedWeight``)
        env.update(self.constants)
        env.update(feeds)
        for step in self.steps:
            args = [env[n] if n else None for n in step.inputs]
            for j, value in step.host_args:
                args[j] = value
            ctx = step.ctx if step.implicit is None else self._with_scope(step, env)
            try:
                outs = step.impl(ctx, args)
            except GdncError as exc:
                raise type(exc)(f"node {step.name!r} ({step.op}): {exc}", fix=exc.fix) from exc
            except (RuntimeError, IndexError, ValueError, TypeError, ArithmeticError, MemoryError) as exc:
                # what torch says about bad values (indices, sizes) in a model: one line naming the node
                raise ExecutionError(f"node {step.name!r} ({step.op}): {first_line(exc)}") from exc
            for name, value in zip(step.outputs, outs):
                if name:
                    env[name] = value
            for name in step.frees:
                env.pop(name, None)
        return [env[name] for name in self.graph.outputs]


def _initializer(name: str, tensor) -> torch.Tensor:
    """Initializer ``name`` as a host tensor; ShapeError naming it when torch cannot hold it."""
    try:
        return tensor_from_array(numpy_helper.to_array(tensor))
    except ShapeError as exc:
        raise ShapeError(f"initializer {name!r}: {exc}") from None


class Executor:
    """Run a Model: ``Executor(model).run({"x": array}) -> {"y": tensor}``.

    ``donate`` names graph inputs whose tensors the caller hands over: the run may update them
    in place (a state pool written back by ScatterND or a GatedDeltaNet node), so the caller
    must not read them afterwards, only the outputs."""

    def __init__(self, model: Model, device: str | torch.device = "cpu", donate: Iterable[str] = (),
                 bound: Mapping[str, object] | None = None, compiled: bool = False) -> None:
        """``bound``: values of graph inputs given once, on ``device`` (a model's weights: tensors,
        or ``PackedWeight`` for the ``ai.gdnc`` ops that read them); they are no feeds.
        ``compiled``: run the plan as prepared calls (``runtime.compiled``; graphs with
        subgraphs stay interpreted) instead of op by op."""
        self.model = model
        self.device = runtime_device(device)
        self.bound = frozenset(bound or ())
        self.runner: GraphRunner | CompiledGraph = GraphRunner(model.graph, model.opset_imports,
                                                               self.device, donate, bound)
        if compiled:
            self.runner = compile_plan(self.runner) or self.runner
        self.graphs: CudaGraphs | None = None  # decode runs replayed from CUDA graphs
        self._host_dtypes: dict[str, np.dtype | None] = {}
        outputs = model.graph.outputs
        if isinstance(self.runner, CompiledGraph) and cuda_graphs_enabled(self.device):
            donated = set(donate)
            self.graphs = CudaGraphs(self.runner, self.device, {
                j: name.removesuffix(".out") for j, name in enumerate(outputs)
                if name.endswith(".out") and name.removesuffix(".out") in donated})

    @functools.cached_property
    def input_names(self) -> list[str]:
        """The graph inputs a run is fed (not initializers, not bound): found once."""
        g = self.model.graph
        return [n for n in g.inputs if n not in g.initializers and n not in self.bound]

    def _feed(self, name: str, value: np.ndarray | torch.Tensor) -> torch.Tensor:
        spec = self.model.graph.value(name)
        try:
            dtype = torch_dtype(spec.dtype) if spec.dtype else None
            tensor = value if isinstance(value, torch.Tensor) else tensor_from_array(value, raw_as=dtype)
        except ShapeError as exc:
            raise InputError(f"input {name!r}: {exc}") from None
        if dtype is not None and dtype != tensor.dtype:
            raise InputError(f"input {name!r}: dtype {tensor.dtype} given, the model wants {dtype}")
        if spec.shape is not None:
            if len(spec.shape) != tensor.dim():
                raise InputError(f"input {name!r}: rank {tensor.dim()} given, the model wants "
                                 f"{len(spec.shape)} {list(spec.shape)}")
            for want, got in zip(spec.shape, tensor.shape):
                if isinstance(want, int) and want != got:
                    raise InputError(f"input {name!r}: shape {list(tensor.shape)} given, the model "
                                     f"wants {list(spec.shape)}")
        return tensor.to(self.device)

    def _check_names(self, names: Iterable[str]) -> None:
        given = set(names)
        missing = [n for n in self.input_names if n not in given]
        if missing:
            raise InputError(f"missing model input(s): {', '.join(missing)}")
        unknown = sorted(given - set(self.input_names))
        if unknown:
            raise InputError(f"unknown model input(s): {', '.join(unknown)}")

    def run(self, feeds: Mapping[str, np.ndarray | torch.Tensor]) -> dict[str, torch.Tensor]:
        self._check_names(feeds)
        tensors = {name: self._feed(name, value) for name, value in feeds.items()}
        with torch.inference_mode():
            outs = self.runner.run(tensors)
        return dict(zip(self.model.graph.outputs, outs))

    def _host_dtype(self, name: str) -> np.dtype | None:
        """The numpy dtype of input ``name`` (None: not typed), looked up once."""
        if name not in self._host_dtypes:
            spec = self.model.graph.value(name)
            self._host_dtypes[name] = (torch.empty(0, dtype=torch_dtype(spec.dtype)).numpy().dtype
                                       if spec.dtype else None)
        return self._host_dtypes[name]

    def run_replayed(self, feeds: Mapping[str, np.ndarray], pools: Mapping[str, torch.Tensor]
                     ) -> dict[str, torch.Tensor]:
        """``run`` through ``self.graphs`` (a CUDA device, compiled): ``feeds`` the index inputs
        as host arrays, ``pools`` the donated inputs, on the device. The caller checked the
        feeds' values: a replayed run checks none (``runtime.cuda_graphs``)."""
        if self.graphs is None:
            raise ExecutionError("this executor replays no CUDA graphs (CPU, interpreted, or "
                                 "GDNC_CUDA_GRAPHS=off): use run()")
        self._check_names([*feeds, *pools])
        for name, value in feeds.items():
            want = self._host_dtype(name)
            if want is not None and value.dtype != want:
                raise InputError(f"input {name!r}: dtype {value.dtype} given, the model wants {want}")
        with torch.inference_mode():
            outs = self.graphs.run(feeds, pools)
        return dict(zip(self.model.graph.outputs, outs))
