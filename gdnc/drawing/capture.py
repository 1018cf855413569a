"""What ``inspect --draw`` shows of one layer, taken from the pipeline as it runs.

``LayerCapture`` is a ``dump_after`` hook of ``fuse_model``. Right before fusion it asks the
matcher for the chains (``find_chains``, the very call the fusion makes next) and keeps, per
chain, token 0's step op by op and the op count of every step; right after fusion it finds
the first fused node and which chains it replaced (each chain's per-token outputs ``o_t``
become ``Gather(o, t)`` of the node); at the end it reads that node's final inputs and
attributes. Plain data only: the graph may change under it afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass

from gdnc.drawing.symbols import StepLabels
from gdnc.ir.graph import Graph, Model
from gdnc.opset.gated_delta_net import is_fused, named_inputs, named_outputs
from gdnc.passes.delta_net import Chain, find_chains
from gdnc.passes.pipeline import STAGES

_NAMES = [name for name, _ in STAGES]
BEFORE_FUSE, FUSE, LAST = _NAMES[_NAMES.index("fuse") - 1], "fuse", _NAMES[-1]
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


def _chain_view(g: Graph, chain: Chain, order: dict[int, int]) -> ChainView:
    """``chain`` as plain data; ``order`` ranks the graph's nodes topologically."""
    step = chain.steps[0]
    labels = StepLabels(g, step)
    boxes = []
    for nid in sorted(step.nodes, key=order.__getitem__):
        node = g.node(nid)
        boxes.append(OpBox(
            op=node.op_type, name=node.name or node.outputs[0], label=labels.label(node),
            inputs=tuple(labels.reads(node)),
            outputs=tuple(node.outputs)))
    values = (step.prev, step.q, step.k, step.v, step.gate, step.beta, step.new, step.o)
    return ChainView(
        first_step=tuple(boxes), terminals=dict(zip((*STEP_INPUTS, "S′", "o"), values)),
        step_ops=tuple(len(s.nodes) for s in chain.steps), final_state=chain.steps[-1].new)


class LayerCapture:
    """``dump_after`` hook; after ``fuse_model`` ran, ``layer`` is the first fused layer, or
    None when nothing was fused."""

    def __init__(self) -> None:
        self.layer: LayerView | None = None
        self._chains: list[ChainView] = []
        self._o_of: dict[str, int] = {}
        self._members: tuple[int, ...] = ()
        self._node = ""

    def __call__(self, stage: str, model: Model) -> None:
        g = model.graph
        if stage == BEFORE_FUSE:
            chains, _ = find_chains(g)
            order = {nid: i for i, nid in enumerate(g.topological_order())}
            self._chains = [_chain_view(g, c, order) for c in chains]
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
