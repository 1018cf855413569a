"""``save_onnx(..., bound=...)``: graph inputs written as initializers whose values are made one
at a time while the file is written (into the data file, or inline when asked), never held in
the ModelProto; a wrong binding is a one-line error that leaves no output."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from gdnc.errors import GdncError
from gdnc.ir.builder import FLOAT, GraphBuilder
from gdnc.ir.graph import Model
from gdnc.ir.to_onnx import external_data_files, save_onnx

A = np.arange(12, dtype=np.float32).reshape(3, 4)
B = np.full((4,), 0.5, np.float16)


def _model() -> Model:
    e = GraphBuilder.new("bound")
    x = e.input("x", FLOAT, [3, 4])
    a, b = e.input("a", FLOAT, [3, 4]), e.input("b", onnx.TensorProto.FLOAT16, [4])
    e.output(e.op("Add", e.op("Mul", x, a), e.op("Cast", b, to=FLOAT)), "y")
    e.typed("y", FLOAT, (3, 4))
    return e.model()


def _run(path) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["x"]
    return sess.run(None, {"x": np.ones((3, 4), np.float32)})[0]


@pytest.mark.parametrize("external", [True, False])
def test_bound_inputs_become_initializers_made_in_turn(tmp_path, external):
    made: list[str] = []

    def make(name, value):
        def produce():
            made.append(name)
            return value
        return produce

    path = tmp_path / "m.onnx"
    model = _model()
    save_onnx(model, path, external_data=external, bound={"a": make("a", A), "b": make("b", B)})
    assert made == ["a", "b"] and model.graph.inputs == ["x", "a", "b"]  # the model stays as it was
    proto = onnx.load(str(path), load_external_data=False)
    stored = {t.name: t for t in proto.graph.initializer}
    assert {"a", "b"} <= set(stored)
    assert all((t.data_location == onnx.TensorProto.EXTERNAL) == external for t in (stored["a"], stored["b"]))
    assert len(external_data_files(path)) == int(external)
    assert np.array_equal(_run(path), A + 0.5)


def test_a_wrong_binding_is_one_line_and_writes_nothing(tmp_path):
    path = tmp_path / "m.onnx"
    for bound, message in (({"c": lambda: A}, "cannot bind 'c': the model has no such input"),
                           ({"a": lambda: A[:2], "b": lambda: B}, "cannot write 'a': 32 bytes made for 48")):
        with pytest.raises(GdncError) as exc:
            save_onnx(_model(), path, external_data=True, bound=bound)
        assert message in str(exc.value) and "\n" not in str(exc.value)
    assert list(tmp_path.iterdir()) == []
