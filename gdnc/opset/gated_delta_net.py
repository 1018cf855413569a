"""Contract of the fused ``ai.gdnc::GatedDeltaNet`` graph node (SPEC §2).

Inputs (positional; an optional one may be the empty name ""):

====  ================  ===============================================================
idx   name              shape (batch layout / packed layout)
====  ================  ===============================================================
0     q                 [B, T, H, K]      / [T_total, H, K]
1     k                 same as q
2     v                 [B, T, HV, V]     / [T_total, HV, V]
3     g                 log-decay: [B, T, HV] (GDA) or [B, T, HV, K] (KDA) / packed alike
4     beta              [B, T, HV]        / [T_total, HV]
5     state             optional. Without indices: initial states [N, HV, K, V] ("kv") or
                        [N, HV, V, K] ("vk"); absent = zeros. With indices: a pool [P, ...].
6     cu_seqlens        optional int64 [N+1], packed layout only; absent = one sequence
                        (packed) or N = B sequences of length T (batch).
7     state_in_index    optional int64 [N]: pool slot of each sequence's initial state
                        (negative = zeros). Needs ``state``.
8     state_out_index   optional int64 [N]: slot receiving the final state (negative = not
                        written); default state_in_index.
====  ================  ===============================================================

Outputs: 0 ``o`` (shape and dtype of v); 1 ``final_state`` (optional): [N, HV, K, V] (or vk)
without indices, else the updated pool [P, ...] (functional copy); 2 ``token_states``
(optional): [T_total, HV, K, V] (or vk), the state after every token.

Attributes: ``scale`` (float, default K**-0.5), ``qk_l2norm`` (int 0/1, l2-normalise q and k
with eps ``L2NORM_EPS`` = 1e-6 inside the sqrt), ``head_map`` ("interleave": value head hv reads key head
hv // (HV/H); "tile": hv % H), ``state_layout`` ("kv" or "vk").

Graph passes address a node's inputs, outputs and attributes by these names (``input_of``,
``output_of``, ``attrs_of``, ``set_attr``, ``fused_node``), never by position.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from gdnc.ir.graph import Graph, Node, make_attrs

DOMAIN = "ai.gdnc"
OP_TYPE = "GatedDeltaNet"
QUALIFIED_OP = f"{DOMAIN}::{OP_TYPE}"  # as ``Node.qualified_op`` and op histograms spell it
OPSET_VERSION = 1

INPUTS = (
    "q", "k", "v", "g", "beta", "state", "cu_seqlens", "state_in_index", "state_out_index",
)
INPUT_INDEX = {name: i for i, name in enumerate(INPUTS)}
REQUIRED_INPUTS = INPUTS[:5]
OUTPUTS = ("o", "final_state", "token_states")
OUTPUT_INDEX = {name: i for i, name in enumerate(OUTPUTS)}
ATTRIBUTES = ("scale", "qk_l2norm", "head_map", "state_layout")
HEAD_MAPS = ("interleave", "tile")
STATE_LAYOUTS = ("kv", "vk")
L2NORM_EPS = 1e-6  # qk_l2norm: x / sqrt(sum(x*x, -1) + L2NORM_EPS), as HF's l2norm

T = TypeVar("T")


@dataclass(frozen=True)
class GdnAttrs:
    """Attributes of one fused node; ``scale=None`` means K**-0.5."""

    scale: float | None = None
    qk_l2norm: bool = False
    head_map: str = "interleave"
    state_layout: str = "kv"

    def to_onnx(self) -> dict[str, Any]:
        """Attribute dict for an ONNX/IR node (every attribute written explicitly)."""
        out: dict[str, Any] = {
            "qk_l2norm": int(self.qk_l2norm),
            "head_map": self.head_map,
            "state_layout": self.state_layout,
        }
        if self.scale is not None:
            out["scale"] = float(self.scale)
        return out

    @classmethod
    def from_onnx(cls, attrs: dict[str, Any]) -> GdnAttrs:
        scale = attrs.get("scale")
        return cls(
            scale=None if scale is None else float(scale),
            qk_l2norm=bool(attrs.get("qk_l2norm", 0)),
            head_map=str(attrs.get("head_map", "interleave")),
            state_layout=str(attrs.get("state_layout", "kv")),
        )


def _check_name(name: str, names: Mapping[str, int], what: str) -> int:
    if name not in names:
        raise KeyError(f"GatedDeltaNet has no {what} {name!r} (it has {list(names)})")
    return names[name]


def is_fused(node: Node) -> bool:
    """Whether ``node`` is an ``ai.gdnc::GatedDeltaNet`` node."""
    return node.domain == DOMAIN and node.op_type == OP_TYPE


def input_of(node: Node, name: str) -> str:
    """The value ``node`` reads as input ``name`` ("" when absent); KeyError for an unknown name."""
    i = _check_name(name, INPUT_INDEX, "input")
    return node.inputs[i] if i < len(node.inputs) else ""


def output_of(node: Node, name: str) -> str:
    """The value ``node`` writes as output ``name`` ("" when absent)."""
    i = _check_name(name, OUTPUT_INDEX, "output")
    return node.outputs[i] if i < len(node.outputs) else ""


def named_inputs(node: Node) -> list[tuple[str, str]]:
    """(input name, value) of every input ``node`` is given, in contract order."""
    return [(name, x) for name, x in zip(INPUTS, node.inputs) if x]


def named_outputs(node: Node) -> list[tuple[str, str]]:
    """(output name, value) of every output ``node`` writes, in contract order."""
    return [(name, x) for name, x in zip(OUTPUTS, node.outputs) if x]


def set_input_of(g: Graph, nid: int, name: str, value: str) -> None:
    """Make node ``nid`` of ``g`` read ``value`` as input ``name`` (padding with "" up to it)."""
    i = _check_name(name, INPUT_INDEX, "input")
    node = g.node(nid)
    if i >= len(node.inputs):
        node.inputs.extend([""] * (i + 1 - len(node.inputs)))
    g.set_input(nid, i, value)


def by_position(named: Mapping[str, T], names: tuple[str, ...], absent: T) -> list[T]:
    """``named`` as a positional list over ``names`` (INPUTS or OUTPUTS), up to the last name
    given, ``absent`` for a name before it that is not; KeyError for a name not in ``names``."""
    index = {name: i for i, name in enumerate(names)}
    last = max((_check_name(name, index, "input/output") for name in named), default=-1)
    return [named.get(name, absent) for name in names[:last + 1]]


def attrs_of(node: Node) -> GdnAttrs:
    """The node's attributes, defaults filled in."""
    return GdnAttrs.from_onnx({name: node.attr(name) for name in node.attrs})


def set_attr(node: Node, name: str, value: float | int | str) -> None:
    """Write one attribute of ``node`` (KeyError for a name not in ATTRIBUTES)."""
    if name not in ATTRIBUTES:
        raise KeyError(f"GatedDeltaNet has no attribute {name!r} (it has {list(ATTRIBUTES)})")
    node.attrs.update(make_attrs(**{name: value}))


def fused_node(inputs: Mapping[str, str], outputs: Mapping[str, str], attrs: GdnAttrs,
               name: str = "") -> Node:
    """A new GatedDeltaNet node reading ``inputs`` and writing ``outputs`` (by contract name;
    omitted optional ones are "") with every attribute of ``attrs`` written."""
    return Node(OP_TYPE, by_position(inputs, INPUTS, ""), by_position(outputs, OUTPUTS, ""),
                domain=DOMAIN, attrs=make_attrs(**attrs.to_onnx()), name=name)
