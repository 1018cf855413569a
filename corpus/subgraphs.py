"""Small valid models whose If / Loop / Scan subgraphs read values of enclosing graphs.

In each, ``u`` is made by a node of the main graph and read only inside a subgraph (nested
ones read it two levels down), so a pass or a runtime that ignores reads from subgraphs loses
it. ``feeds(name, rng)`` draws inputs for a model; every model passes
``onnx.checker.check_model(full_check=True)`` and runs in onnxruntime.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

F, B, I64 = TensorProto.FLOAT, TensorProto.BOOL, TensorProto.INT64
OPSET = 18


def _vi(name: str, elem: int, shape: list[int]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, shape)


def _graph(nodes: list[onnx.NodeProto], name: str, inputs: list, outputs: list,
           initializer: list | None = None) -> onnx.GraphProto:
    return helper.make_graph(nodes, name, inputs, outputs, initializer=initializer)


def _model(graph: onnx.GraphProto) -> onnx.ModelProto:
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=9)


def if_reads_produced() -> onnx.ModelProto:
    """y = If(c, then: u*u, else: u+x) with u = -x; also e = Exp(u) read directly first, so
    ``u``'s last reader is the If (a runtime freeing it after Exp loses it)."""
    then = _graph([helper.make_node("Mul", ["u", "u"], ["t"], name="Mul")], "then", [], [_vi("t", F, [3])])
    other = _graph([helper.make_node("Add", ["u", "x"], ["s"], name="Add")], "else", [], [_vi("s", F, [3])])
    return _model(_graph(
        [helper.make_node("Neg", ["x"], ["u"], name="Neg"),
         helper.make_node("Exp", ["u"], ["e"], name="Exp"),
         helper.make_node("If", ["c"], ["y"], name="If", then_branch=then, else_branch=other)],
        "main", [_vi("x", F, [3]), _vi("c", B, [])], [_vi("y", F, [3]), _vi("e", F, [3])]))


def if_reads_identities() -> onnx.ModelProto:
    """If(c, then: v * w, else: u + v) where v = Identity(u) and the graph output w = Identity(u):
    cleaning the Identities away makes the branches read u, then u renamed to w."""
    then = _graph([helper.make_node("Mul", ["v", "w"], ["t"], name="Mul")], "then", [], [_vi("t", F, [3])])
    other = _graph([helper.make_node("Add", ["u", "v"], ["s"], name="Add")], "else", [], [_vi("s", F, [3])])
    return _model(_graph(
        [helper.make_node("Neg", ["x"], ["u"], name="Neg"),
         helper.make_node("Identity", ["u"], ["v"], name="v"),
         helper.make_node("Identity", ["u"], ["w"], name="w"),
         helper.make_node("If", ["c"], ["y"], name="If", then_branch=then, else_branch=other)],
        "main", [_vi("x", F, [3]), _vi("c", B, [])], [_vi("y", F, [3]), _vi("w", F, [3])]))


def loop_reads_produced() -> onnx.ModelProto:
    """n steps of acc += u (u = sin(x)), each step's acc * u stacked as ``ys``."""
    body = _graph(
        [helper.make_node("Identity", ["cond"], ["cond_out"]),
         helper.make_node("Add", ["acc", "u"], ["acc_out"], name="Add"),
         helper.make_node("Mul", ["acc", "u"], ["scan"], name="Mul")],
        "body", [_vi("i", I64, []), _vi("cond", B, []), _vi("acc", F, [3])],
        [_vi("cond_out", B, []), _vi("acc_out", F, [3]), _vi("scan", F, [3])])
    return _model(_graph(
        [helper.make_node("Sin", ["x"], ["u"], name="Sin"),
         helper.make_node("Loop", ["n", "", "x"], ["y", "ys"], name="Loop", body=body)],
        "main", [_vi("n", I64, []), _vi("x", F, [3])], [_vi("y", F, [3]), _vi("ys", F, [None, 3])]))


def scan_reads_produced() -> onnx.ModelProto:
    """A Scan over the rows of x [4, 3], backwards: s += x_t * u (u = |w|); the states stacked
    along axis 1."""
    body = _graph(
        [helper.make_node("Mul", ["x_t", "u"], ["p"], name="Mul"),
         helper.make_node("Add", ["s", "p"], ["s_out"], name="Add"),
         helper.make_node("Identity", ["s_out"], ["row"])],
        "body", [_vi("s", F, [3]), _vi("x_t", F, [3])], [_vi("s_out", F, [3]), _vi("row", F, [3])])
    return _model(_graph(
        [helper.make_node("Abs", ["w"], ["u"], name="Abs"),
         helper.make_node("Scan", ["w", "x"], ["s_final", "rows"], name="Scan", body=body,
                          num_scan_inputs=1, scan_input_directions=[1], scan_output_axes=[1])],
        "main", [_vi("w", F, [3]), _vi("x", F, [4, 3])], [_vi("s_final", F, [3]), _vi("rows", F, [3, 4])]))


def nested_reads_two_levels_up() -> onnx.ModelProto:
    """If(c, then: If(d, then: u * k, else: u), else: -u): u = x + 1 and the initializer k
    are read only two levels down."""
    inner_then = _graph([helper.make_node("Mul", ["u", "k"], ["a"], name="Mul")], "inner_then", [],
                        [_vi("a", F, [3])])
    inner_else = _graph([helper.make_node("Identity", ["u"], ["b"])], "inner_else", [], [_vi("b", F, [3])])
    outer_then = _graph([helper.make_node("If", ["d"], ["t"], name="inner", then_branch=inner_then,
                                          else_branch=inner_else)], "outer_then", [], [_vi("t", F, [3])])
    outer_else = _graph([helper.make_node("Neg", ["u"], ["n"], name="Neg")], "outer_else", [],
                        [_vi("n", F, [3])])
    return _model(_graph(
        [helper.make_node("Add", ["x", "one"], ["u"], name="Add"),
         helper.make_node("If", ["c"], ["y"], name="outer", then_branch=outer_then, else_branch=outer_else)],
        "main", [_vi("x", F, [3]), _vi("c", B, []), _vi("d", B, [])], [_vi("y", F, [3])],
        initializer=[numpy_helper.from_array(np.float32([1, 2, 3]), "k"),
                     numpy_helper.from_array(np.float32(1), "one")]))


MODELS: dict[str, Callable[[], onnx.ModelProto]] = {
    "If": if_reads_produced,
    "If reading Identity outputs": if_reads_identities,
    "Loop": loop_reads_produced,
    "Scan": scan_reads_produced,
    "nested If": nested_reads_two_levels_up,
}


def feeds(model: onnx.ModelProto, rng: np.random.Generator, trips: int = 3) -> dict[str, np.ndarray]:
    """Random inputs for one of ``MODELS``: floats normal, flags fair coins, trip counts ``trips``."""
    out: dict[str, np.ndarray] = {}
    for vi in model.graph.input:
        tt = vi.type.tensor_type
        shape = [d.dim_value for d in tt.shape.dim]
        if tt.elem_type == B:
            out[vi.name] = np.array(rng.integers(0, 2) == 1)
        elif tt.elem_type == I64:
            out[vi.name] = np.array(trips, dtype=np.int64)
        else:
            out[vi.name] = rng.standard_normal(shape).astype(np.float32)
    return out


def run_ort(model: onnx.ModelProto, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in model.graph.output]
    return dict(zip(names, session.run(names, inputs)))
