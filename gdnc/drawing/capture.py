"""What ``inspect --draw`` shows of one layer, taken from the pipeline as it runs.

``LayerCapture`` is a ``dump_after`` hook of ``fuse_model``. Before canonicalisation it copies
the graph's nodes (the step as the file spells it); right before fusion it asks the matcher for
the chains (``find_chains``, the very call the fusion makes next) and keeps, per chain, token
0's step op by op as the file spells it and the op count of every step; right after fusion it finds
the first fused node and which chains it replaced (each chain's per-token outputs ``o_t``
become ``Gather(o, t)`` of the node); at the end it reads that node's final inputs and
attributes. Plain data only: the graph may change under it afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from gdnc.drawing.symbols import StepLabels
from gdnc.ir.graph import Graph, Model
from gdnc.opset.gated_delta_net import is_fused, named_inputs, named_outputs
from gdnc.passes.delta_net import Chain, find_chains
from gdnc.passes.delta_net.steps import Step
from gdnc.passes.pipeline import STAGES

_NAMES = [name for name, _ in STAGES]
BEFORE_FUSE, FUSE, LAST = _NAMES[_NAMES.index("fuse") - 1], "fuse", _NAMES[-1]
AS_SPELLED = _NAMES[_NAMES.index("canonicalize") - 1]
# the roles of token 0's boundary values, in the order terminals are listed
STEP_INPUTS = ("S", "q", "k", "v", "g", "β")


@dataclass(frozen=True)
class OpBox:
    """One op of the expanded step: what it computes and which (non-constant) values it links."""

    op: str
    name: str
    label: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]


@dataclass(frozen=True)
class ChainView:
    """One sequence's chain: token 0's ops (topological order) and boundary values by role
    (``STEP_INPUTS`` and "S′", "o"), the op count of every step, the final state."""

    first_step: tuple[OpBox, ...]
    terminals: dict[str, str]
    step_ops: tuple[int, ...]
    final_state: str

    @property
    def ops(self) -> int:
        return sum(self.step_ops)


@dataclass(frozen=True)
class FusedView:
    """The fused node after the whole pipeline: its (role, value) inputs and outputs."""

    name: str
    op: str
    inputs: tuple[tuple[str, str], ...]
    outputs: tuple[tuple[str, str], ...]
    attrs: dict[str, object]


@dataclass(frozen=True)
class LayerView:
    """The first fused layer: its chains in sequence order, and the node that replaced them."""

    chains: tuple[ChainView, ...]
    fused: FusedView


@dataclass(frozen=True)
class Spelled:
    """The graph as the file spells it (before canonicalisation): a copy of every node, the
    initializers shared; ``order`` ranks its nodes topologically."""

    graph: Graph
    order: dict[int, int]

    @classmethod
    def of(cls, g: Graph) -> Spelled:
        copy = Graph(g.name)
        copy.initializers = dict(g.initializers)
        for _, node in g.nodes():
            copy.add_node(replace(node, inputs=list(node.inputs), outputs=list(node.outputs),
                                  attrs=dict(node.attrs)))
        return cls(copy, {nid: i for i, nid in enumerate(copy.topological_order())})

    def step_nodes(self, step: Step) -> list[int]:
        """The nodes computing ``step`` (its new state and output from its inputs), in order."""
        g, stop = self.graph, {step.prev, step.q, step.k, step.v, step.gate, step.beta}
        found: set[int] = set()
        todo = [step.new, step.o]
        while todo:
            value = todo.pop()
            nid = g.producer(value)
            if value in stop or nid is None or nid in found or g.const_value(value) is not None:
                continue
            found.add(nid)
            todo.extend(x for x in g.node(nid).inputs if x)
        return sorted(found, key=self.order.__getitem__)


def _chain_view(g: Graph, chain: Chain, spelled: Spelled) -> ChainView:
    """``chain`` (matched in ``g``) as plain data, its ops as ``spelled`` has them."""
    steps = [spelled.step_nodes(s) for s in chain.steps]
    step = chain.steps[0]
    labels = StepLabels(g, step, spelled.graph, steps[0])
    boxes = []
    for nid in steps[0]:
        node = spelled.graph.node(nid)
        boxes.append(OpBox(
            op=node.op_type, name=node.name or node.outputs[0], label=labels.label(node),
            inputs=tuple(labels.reads(node)),
            outputs=tuple(node.outputs)))
    values = (step.prev, step.q, step.k, step.v, step.gate, step.beta, step.new, step.o)
    return ChainView(
        first_step=tuple(boxes), terminals=dict(zip((*STEP_INPUTS, "S′", "o"), values)),
        step_ops=tuple(len(s) for s in steps), final_state=chain.steps[-1].new)


class LayerCapture:
    """``dump_after`` hook; after ``fuse_model`` ran, ``layer`` is the first fused layer, or
    None when nothing was fused."""

    def __init__(self) -> None:
        self.layer: LayerView | None = None
        self._chains: list[ChainView] = []
        self._o_of: dict[str, int] = {}
        self._members: tuple[int, ...] = ()
        self._node = ""
        self._spelled: Spelled | None = None

    def __call__(self, stage: str, model: Model) -> None:
        g = model.graph
        if stage == AS_SPELLED:
            self._spelled = Spelled.of(g)
        elif stage == BEFORE_FUSE:
            chains, _ = find_chains(g)
            assert self._spelled is not None  # AS_SPELLED is the stage before canonicalisation
            self._chains = [_chain_view(g, c, self._spelled) for c in chains]
            self._spelled = None
            self._o_of = {s.o: i for i, c in enumerate(chains) for s in c.steps}
        elif stage == FUSE:
            self._pick_node(g)
        elif stage == LAST and self._node:
            self.layer = LayerView(tuple(self._chains[i] for i in self._members), self._fused_view(g))

    def _pick_node(self, g: Graph) -> None:
        """The fused node that replaced the earliest chain, and its chains in sequence order."""
        best: tuple[tuple[int, ...], str] | None = None
        for _, node in g.nodes():
            if not is_fused(node):
                continue
            rows = [self._o_of[o] for r in g.consumers(node.outputs[0]) for o in g.node(r).outputs
                    if o in self._o_of]
            members = tuple(dict.fromkeys(rows))
            if members and (best is None or min(members) < min(best[0])):
                best = members, node.name
        if best is not None:
            self._members, self._node = best

    def _fused_view(self, g: Graph) -> FusedView:
        node = next(n for _, n in g.nodes() if is_fused(n) and n.name == self._node)
        return FusedView(
            name=node.name, op=node.qualified_op,
            inputs=tuple(named_inputs(node)), outputs=tuple(named_outputs(node)),
            attrs={k: node.attr(k) for k in sorted(node.attrs)})
