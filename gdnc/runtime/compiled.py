"""A graph's plan compiled once into a list of prepared calls: no per-op dispatch at run time.

``compile_plan(runner)`` turns a ``GraphRunner``'s plan into instructions over a register file
(a list, one slot per value): each node becomes one prepared call of either its op's
specialized function (attributes and constant inputs decided once:
``opset.registry.Specializer``) or, where the op has none, its implementation with the context
prepared once; each call reads its registers directly. The ``Linear`` nodes of one input run as
one call (``linear_groups``). Nodes whose inputs are all constants (a weight's transpose) are
evaluated at compile time; intermediates are dropped after their last reader, as the
interpreter frees them. A failing node is named exactly as the interpreter names it. No code
is generated: nothing is compiled or executed from text. Graphs with subgraphs (If, Loop, Scan)
are not compiled (``compile_plan`` returns None): the interpreter runs them.

The interpreter (``GraphRunner.run``) stays the reference: the same plan, the same
implementations, one op at a time.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
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
Registers = list[Any]


@dataclass(frozen=True)
class _Instruction:
    """``call(registers)`` gives the node's one output (``out`` >= 0) or its outputs, stored at
    ``outs`` (register, position) pairs; then the registers ``frees`` are dropped."""

    call: Callable[[Registers], Any]
    out: int
    outs: tuple[tuple[int, int], ...]
    frees: tuple[int, ...]
    node: tuple[str, str]  # name, qualified op


class CompiledGraph:
    """``run(feeds) -> outputs`` of a graph, as ``GraphRunner.run`` computes them.
    ``constants``: every value known before a run (initializers, bound weights, folded nodes);
    ``steps``: the plan's nodes, ``folded`` of them evaluated at compile time,
    ``specialized_steps`` of the others calling a specialized function."""

    def __init__(self, code: list[_Instruction], registers: Registers, feeds: list[tuple[str, int]],
                 outputs: list[int], constants: dict[str, Any], steps: int, folded: int,
                 specialized_steps: int) -> None:
        self._code, self._registers, self._feeds, self._outputs = code, registers, feeds, outputs
        self.constants = constants
        self.steps, self.folded, self.specialized_steps = steps, folded, specialized_steps

    def run(self, feeds: Mapping[str, torch.Tensor]) -> list[torch.Tensor]:
        regs = list(self._registers)
        for name, r in self._feeds:
            regs[r] = feeds[name]
        instruction = None
        try:
            for instruction in self._code:
                if instruction.out >= 0:
                    regs[instruction.out] = instruction.call(regs)
                else:
                    result = instruction.call(regs)
                    for r, j in instruction.outs:
                        regs[r] = result[j]
                for r in instruction.frees:
                    regs[r] = None
        except (GdncError, *_TORCH_ERRORS) as exc:
            if instruction is None:
                raise
            name, op = instruction.node
            if isinstance(exc, GdncError):
                raise type(exc)(f"node {name!r} ({op}): {exc}", fix=exc.fix) from exc
            raise ExecutionError(f"node {name!r} ({op}): {first_line(exc)}") from exc
        return [regs[r] for r in self._outputs]


class _Registers:
    """Register numbers of values, handed out in order; constants keep their values."""

    def __init__(self, constants: Mapping[str, Any]) -> None:
        self.constants = constants
        self.index: dict[str, int] = {}
        self.values: Registers = []

    def of(self, name: str) -> int:
        if name not in self.index:
            self.index[name] = len(self.values)
            self.values.append(self.constants.get(name))
        return self.index[name]


def compile_plan(runner: Any) -> CompiledGraph | None:
    """``runner`` (a ``GraphRunner``) as a ``CompiledGraph``; None when its graph has subgraphs."""
    if runner.subrunners:
        return None
    graph = runner.graph
    constants: dict[str, Any] = dict(runner.constants)
    regs = _Registers(constants)
    feeds = [(name, regs.of(name)) for name in graph.inputs if name not in constants]
    code: list[_Instruction] = []
    fast = folded = 0
    groups = linear_groups(runner.steps, constants)
    grouped = {member for members in groups.values() for member in members[1:]}
    for k, step in enumerate(runner.steps):
        host = dict(step.host_args)
        if k in groups:
            members = [runner.steps[j] for j in groups[k]]
            group = LinearGroup([constants[m.inputs[1]] for m in members])
            code.append(_instruction(_caller(group, (regs.of(step.inputs[0]),)),
                                     [m.outputs[0] for m in members], step, regs, False))
            fast += len(members)
            continue
        if k in grouped:  # computed with the first of its group; only its frees are left
            if step.frees:
                code.append(_instruction(_nothing, [], step, regs, False))
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
            args = tuple(regs.of(n) for j, n in enumerate(step.inputs) if j not in known)
            code.append(_instruction(_caller(fn, args), list(step.outputs), step, regs, True))
            fast += 1
        else:
            slots = tuple(-1 - j if j in host else regs.of(n) if n else None
                          for j, n in enumerate(step.inputs))
            code.append(_instruction(_generic(step.impl, step.ctx, slots, host), list(step.outputs), step,
                                     regs, False))
    outputs = [regs.of(n) for n in graph.outputs]
    return CompiledGraph(code, regs.values, feeds, outputs, constants, len(runner.steps), folded, fast)


def _instruction(call: Callable[[Registers], Any], outputs: Sequence[str], step: Any, regs: _Registers,
                 single: bool) -> _Instruction:
    """The instruction of ``step``: ``call`` gives its one output (``single``) or a sequence of
    ``outputs`` (an empty name: not stored); its last reads are dropped after it."""
    outs = tuple((regs.of(n), j) for j, n in enumerate(outputs) if n)
    out = outs[0][0] if single and outs else -1
    frees = tuple(regs.index[n] for n in step.frees if n in regs.index and n not in regs.constants)
    return _Instruction(call, out, () if single else outs, frees, (step.name, step.op))


def _caller(fn: Callable[..., Any], args: tuple[int, ...]) -> Callable[[Registers], Any]:
    """``fn`` of the registers ``args``."""
    if len(args) == 1:
        (a,) = args
        return lambda r: fn(r[a])
    if len(args) == 2:
        a, b = args
        return lambda r: fn(r[a], r[b])
    return lambda r: fn(*[r[i] for i in args])


def _nothing(r: Registers) -> tuple:
    return ()


def _generic(impl: Callable[..., Any], ctx: Any, slots: tuple[int | None, ...],
             host: Mapping[int, Any]) -> Callable[[Registers], Any]:
    """``impl(ctx, inputs)``: inputs from registers, None for an omitted one, host copies of
    constants at the op's host positions (slot -1 - position)."""

    def call(r: Registers) -> Any:
        return impl(ctx, [None if s is None else host[-1 - s] if s < 0 else r[s] for s in slots])

    return call


def _foldable(step: Any, constants: Mapping[str, Any]) -> bool:
    """Whether ``step`` reads only constant tensors (no weight held as the file holds it)."""
    return step.implicit is None and step.op.split("::")[-1] not in _NOT_FOLDED and all(
        not n or (n in constants and isinstance(constants[n], torch.Tensor)) for n in step.inputs)
