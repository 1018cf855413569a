"""Evaluate one IR node with the registered torch implementations."""

from __future__ import annotations

from typing import Any

import torch
from onnx import numpy_helper

import gdnc.opset.onnx_ops  # noqa: F401  (registers the standard ops)
from gdnc.ir.graph import Attr, Node
from gdnc.opset.registry import OpContext, lookup

_TENSOR = 4  # onnx.AttributeProto.TENSOR
_TENSORS = 9


def decoded_attrs(node: Node) -> dict[str, Any]:
    """Attribute values as implementations receive them (TENSOR -> numpy array)."""
    return {name: _decode(a) for name, a in node.attrs.items()}


def _decode(a: Attr) -> Any:
    if a.type == _TENSOR:
        return numpy_helper.to_array(a.value)
    if a.type == _TENSORS:
        return [numpy_helper.to_array(t) for t in a.value]
    return a.value


def op_context(node: Node, opset: int) -> OpContext:
    """The context ``node`` runs in (``run_subgraph`` is bound by the executor per run)."""
    return OpContext(
        op_type=node.op_type,
        domain=node.domain,
        attrs=decoded_attrs(node),
        opset=opset,
        num_outputs=len(node.outputs),
        node_name=node.name,
        num_inputs=len(node.inputs),
    )


def eval_node(node: Node, inputs: list[torch.Tensor | None], opset: int) -> list[torch.Tensor]:
    """Run ``node`` on ``inputs`` (None for omitted optional inputs)."""
    impl = lookup(node.domain, node.op_type, opset)
    return impl(op_context(node, opset), inputs)
