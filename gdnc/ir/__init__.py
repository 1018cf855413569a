"""The graph IR (networkx-based) and its ONNX writer."""

from __future__ import annotations

from gdnc.ir.graph import Attr, Graph, Model, Node, Value, make_attrs

__all__ = ["Attr", "Graph", "Model", "Node", "Value", "make_attrs"]
