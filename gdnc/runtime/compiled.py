"""A graph's plan compiled into one generated Python function: no per-op dispatch at run time.

``compile_plan(runner)`` turns a ``GraphRunner``'s plan into straight-line code over local
variables: each node becomes one line calling either its op's specialized function (attributes
and constant inputs decided once: ``opset.registry.Specializer``) or, where the op has none, its
implementation with the context prepared once. The ``Linear`` nodes of one input run as one call
(``linear_groups``). Nodes whose inputs are all constants (a weight's transpose) are evaluated
at compile time; intermediates are deleted after their last reader, as
the interpreter frees them. A failing node is named exactly as the interpreter names it: the
traceback's line in the generated code gives the node. Graphs with subgraphs (If, Loop, Scan)
are not compiled (``compile_plan`` returns None): the interpreter runs them.

The interpreter (``GraphRunner.run``) stays the reference: the same plan, the same
implementations, one op at a time.
"""

from __future__ import annotations

import itertools
import linecache
from collections.abc import Callable, Mapping
from typing import Any

import torch

from gdnc.errors import ExecutionError, GdncError, first_line
from gdnc.lowering.quant.packed import LinearGroup
from gdnc.opset.registry import specialized
from gdnc.runtime.linear_groups import linear_groups

# ops whose value is not a function of their inputs: never evaluated at compile time
_NOT_FOLDED = ("RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike",
               "Multinomial", "Bernoulli")
_TORCH_ERRORS = (RuntimeError, IndexError, ValueError, TypeError, ArithmeticError, MemoryError)
_serial = itertools.count()


class CompiledGraph:
    """``run(feeds) -> outputs`` of a graph, as ``GraphRunner.run`` computes them."""

    def __init__(self, program: Callable[[Mapping[str, Any]], tuple], filename: str,
                 lines: Mapping[int, tuple[str, str]], steps: int, folded: int,
                 specialized_steps: int) -> None:
        """``steps``: the plan's nodes, ``folded`` of them evaluated at compile time,
        ``specialized_steps`` of the others calling a specialized function."""
        self._program, self._filename, self._lines = program, filename, lines
        self.steps, self.folded, self.specialized_steps = steps, folded, specialized_steps

    def run(self, feeds: Mapping[str, torch.Tensor]) -> list[torch.Tensor]:
        try:
            return list(self._program(feeds))
        except (GdncError, *_TORCH_ERRORS) as exc:
            node = self._failing_node(exc)
            if node is None:
                raise
            name, op = node
            if isinstance(exc, GdncError):
                raise type(exc)(f"node {name!r} ({op}): {exc}", fix=exc.fix) from exc
            raise ExecutionError(f"node {name!r} ({op}): {first_line(exc)}") from exc

    def _failing_node(self, exc: BaseException) -> tuple[str, str] | None:
        """(name, op) of the node whose line of the program raised ``exc``."""
        tb = exc.__traceback__
        found = None
        while tb is not None:
            if tb.tb_frame.f_code.co_filename == self._filename:
                found = self._lines.get(tb.tb_lineno)
            tb = tb.tb_next
        return found


def compile_plan(runner: Any) -> CompiledGraph | None:
    """``runner`` (a ``GraphRunner``) as a ``CompiledGraph``; None when its graph has subgraphs."""
    if runner.subrunners:
        return None
    graph = runner.graph
    namespace: dict[str, Any] = {}
    constants: dict[str, Any] = dict(runner.constants)
    local: dict[str, str] = {}  # value name -> its expression in the program

    def constant(name: str) -> str:
        if name not in local:
            local[name] = f"c{len(namespace)}"
            namespace[local[name]] = constants[name]
        return local[name]

    body = [f"v{i} = feeds[{name!r}]" for i, name in enumerate(_feeds(graph, constants))]
    local.update({name: f"v{i}" for i, name in enumerate(_feeds(graph, constants))})
    lines: dict[int, tuple[str, str]] = {}
    fast = folded = 0
    groups = linear_groups(runner.steps, constants)
    grouped = {member for members in groups.values() for member in members[1:]}
    for k, step in enumerate(runner.steps):
        host = dict(step.host_args)
        if k in grouped:  # computed with the first of its group
            line = "pass"
        elif k in groups:
            members = [runner.steps[j] for j in groups[k]]
            namespace[f"s{k}"] = LinearGroup([constants[m.inputs[1]] for m in members])
            targets = _targets(local, tuple(m.outputs[0] for m in members))
            line = f"{targets}, = s{k}({_read(local, constant, step.inputs[0])})"
            fast += len(members)
        if k in grouped or k in groups:
            _append(body, lines, line, step, local, constants)
            continue
        if _foldable(step, constants):
            try:
                outs = step.impl(step.ctx, [host.get(j, constants[n]) if n else None
                                            for j, n in enumerate(step.inputs)])
            except (GdncError, *_TORCH_ERRORS):
                outs = None  # left to fail at run time, named as the interpreter names it
            if outs is not None:
                constants.update({n: v for n, v in zip(step.outputs, outs) if n})
                folded += 1
                continue
        known = {j: (host[j] if j in host else constants[n] if n else None)
                 for j, n in enumerate(step.inputs) if not n or n in constants}
        fn = specialized(step.impl, step.ctx, known)
        if fn is not None:
            namespace[f"s{k}"] = fn
            args = ", ".join(_read(local, constant, n) for j, n in enumerate(step.inputs) if j not in known)
            line = f"{_targets(local, step.outputs)} = s{k}({args})"
            fast += 1
        else:
            namespace[f"g{k}"], namespace[f"x{k}"] = step.impl, step.ctx
            args = ", ".join(_host_constant(namespace, k, j, host[j]) if j in host else
                             _read(local, constant, n) if n else "None"
                             for j, n in enumerate(step.inputs))
            named = [(j, n) for j, n in enumerate(step.outputs) if n]
            line = f"r = g{k}(x{k}, [{args}])"
            if named:
                picks = "".join(f"r[{j}], " for j, _ in named)
                line += f"; {_targets(local, tuple(n for _, n in named))}, = ({picks})"
        _append(body, lines, line, step, local, constants)
    body.append(f"return ({''.join(_read(local, constant, n) + ', ' for n in graph.outputs)})")
    filename = f"<gdnc program {next(_serial)}>"
    source = "def program(feeds):\n" + "".join(f"    {line}\n" for line in body)
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    exec(compile(source, filename, "exec"), namespace)  # noqa: S102  (our own generated code)
    return CompiledGraph(namespace["program"], filename, lines, len(runner.steps), folded, fast)


def _append(body: list[str], lines: dict[int, tuple[str, str]], line: str, step: Any,
            local: Mapping[str, str], constants: Mapping[str, Any]) -> None:
    """Adds ``step``'s ``line`` to the program, deleting the values it read last."""
    dead = [local[n] for n in step.frees if n in local and n not in constants]
    if dead:
        line += f"; del {', '.join(dead)}"
    lines[len(body) + 2] = (step.name, step.op)  # body line k is file line k + 2
    body.append(line)


def _feeds(graph: Any, constants: Mapping[str, Any]) -> list[str]:
    """The graph inputs a run feeds (not constants or bound values)."""
    return [n for n in graph.inputs if n not in constants]


def _foldable(step: Any, constants: Mapping[str, Any]) -> bool:
    """Whether ``step`` reads only constant tensors (no weight held as the file holds it)."""
    return step.implicit is None and step.op.split("::")[-1] not in _NOT_FOLDED and all(
        not n or (n in constants and isinstance(constants[n], torch.Tensor)) for n in step.inputs)


def _targets(local: dict[str, str], outputs: tuple[str, ...]) -> str:
    """The program's new locals for ``outputs`` ("_" for an unnamed one), comma-separated."""
    names = []
    for name in outputs:
        if name:
            local[name] = f"v{len(local)}"
        names.append(local[name] if name else "_")
    return ", ".join(names)


def _read(local: Mapping[str, str], constant: Callable[[str], str], name: str) -> str:
    return local[name] if name in local else constant(name)


def _host_constant(namespace: dict[str, Any], k: int, j: int, value: torch.Tensor) -> str:
    namespace[f"h{k}_{j}"] = value
    return f"h{k}_{j}"
