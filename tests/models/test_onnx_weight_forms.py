"""Each ggml type's ONNX form (``gdnc.models.onnx_weight_forms``) holds exactly the GGUF's values:
a tensor of random valid blocks, written into an ONNX file through ``store_weights`` and
``save_onnx(bound=...)``, reads back in onnxruntime bit for bit as ``gguf.quants.dequantize``
gives it, whether read whole, gathered by rows (an embedding) or multiplied (``x @ W^T``, for
x = I exactly W^T), a 2-D matrix and a 3-D stack alike; each form's bytes are about the GGUF's."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFWriter
from gguf.quants import dequantize

from gdnc.frontends.ggml_fields import FIELDS
from gdnc.frontends.gguf_file import GgufFile
from gdnc.ir.builder import FLOAT, INT64, GraphBuilder
from gdnc.ir.graph import Model
from gdnc.ir.to_onnx import external_data_files, save_onnx
from gdnc.models.onnx_weight_forms import FORMS
from gdnc.models.onnx_weights import store_weights

Q = GGMLQuantizationType
N, K, EXPERTS = 48, 512, 3
# the form's bytes against the GGUF's (the module docstring's table), for these shapes
MAX_RATIO = {"F32": 1.0, "F16": 1.0, "BF16": 1.0, "Q8_0": 1.0, "Q4_0": 1.0, "Q4_K": 1.03, "Q6_K": 1.31,
             "Q5_K": 1.58}
F16_FIELDS = {"d": 0, "dmin": 2}  # byte offsets of the float16 fields in a block (Q6_K: d at 208)


def random_blocks(qtype: str, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Valid ``qtype`` data of ``shape`` (numpy order): uint8 [..., row bytes], every byte random
    but the float16 scales (finite, of either sign, spread over magnitudes)."""
    block, nbytes = GGML_QUANT_SIZES[Q[qtype]]
    blocks = rng.integers(0, 256, (*shape[:-1], shape[-1] // block, nbytes), dtype=np.uint8)
    at = {"d": 208} if qtype == "Q6_K" else {f: F16_FIELDS[f] for f in FIELDS[qtype] if f in F16_FIELDS}
    for offset in at.values():
        scale = rng.standard_normal(blocks.shape[:-1]) * np.exp2(rng.integers(-12, 0, blocks.shape[:-1]))
        blocks[..., offset:offset + 2] = scale.astype(np.float16)[..., None].view(np.uint8)
    return blocks.reshape(*shape[:-1], -1)


def _values(qtype: str, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Data of ``shape`` in ``qtype``, as ``GGUFWriter.add_tensor(raw_dtype=...)`` takes it."""
    if qtype in FIELDS:
        return random_blocks(qtype, shape, rng)
    values = rng.standard_normal(shape).astype(np.float32)
    if qtype == "BF16":
        return (values.view(np.uint32) >> 16).astype(np.uint16)
    return values.astype(np.float16 if qtype == "F16" else np.float32)


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict[str, dict]:
    """Per type: a GGUF of a matrix and a stack of matrices, exported with readers of each kind;
    the onnxruntime session, the GGUF's values and both files' sizes."""
    out: dict[str, dict] = {}
    folder = tmp_path_factory.mktemp("forms")
    for i, qtype in enumerate(FORMS):
        rng = np.random.default_rng(i)
        path = folder / f"{qtype}.gguf"
        writer = GGUFWriter(path, "test")
        for name, shape in (("w", (N, K)), ("stack", (EXPERTS, N, K))):
            writer.add_tensor(name, _values(qtype, shape, rng), raw_dtype=Q[qtype])
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        f = GgufFile(path)
        onnx_path = folder / f"{qtype}.onnx"
        model = _model()
        save_onnx(model, onnx_path, external_data=True, bound=store_weights(f, model))
        out[qtype] = {
            "session": ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"]),
            "file": f, "proto": onnx.load(str(onnx_path), load_external_data=False), "model": model,
            "values": {n: f.tensor(n) for n in ("w", "stack")},
            "gguf_bytes": sum(f.tensor_nbytes(n) for n in ("w", "stack")),
            "onnx_bytes": sum(p.stat().st_size for p in external_data_files(onnx_path)),
        }
    return out


def _model() -> Model:
    """x [M, K] @ w^T, rows ``ids`` of w, w itself, x @ stack^T ([3, M, N]) and stack itself."""
    e = GraphBuilder.new("forms")
    x, ids = e.input("x", FLOAT, ["M", K]), e.input("ids", INT64, ["I"])
    w, stack = e.input("w", FLOAT, [N, K]), e.input("stack", FLOAT, [EXPERTS, N, K])
    e.output(e.linear(x, w), "product")
    e.output(e.op("Gather", w, ids, axis=0), "rows")
    e.output(w, "whole")
    e.output(e.linear(x, stack, rank=3), "stack_product")
    e.output(stack, "stack_whole")
    for name in e.graph.outputs:
        e.typed(name, FLOAT)
    return e.model()


def _run(entry: dict, x: np.ndarray, ids: np.ndarray) -> dict[str, np.ndarray]:
    sess = entry["session"]
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"x": x, "ids": ids})))


@pytest.mark.parametrize("qtype", list(FORMS))
def test_reads_are_exactly_the_gguf_values(exported, qtype):
    entry = exported[qtype]
    w, stack = entry["values"]["w"], entry["values"]["stack"]
    assert np.array_equal(w, dequantize(entry["file"].raw("w")[0], Q[qtype]).reshape(N, K))
    ids = np.array([3, 0, N - 1, 3])
    got = _run(entry, np.eye(K, dtype=np.float32), ids)
    assert np.isfinite(w).all()
    for name, want in (("whole", w), ("rows", w[ids]), ("product", w.T), ("stack_whole", stack),
                       ("stack_product", np.swapaxes(stack, 1, 2))):
        assert got[name].dtype == np.float32 and np.array_equal(got[name], want), name


@pytest.mark.parametrize("qtype", list(FORMS))
def test_products_match_within_float32_summation(exported, qtype):
    entry = exported[qtype]
    x = np.random.default_rng(7).standard_normal((5, K)).astype(np.float32)
    got = _run(entry, x, np.array([0]))
    for name, weight in (("product", entry["values"]["w"]), ("stack_product", entry["values"]["stack"])):
        want = x.astype(np.float64) @ np.swapaxes(weight, -1, -2).astype(np.float64)
        assert np.abs(got[name] - want).max() <= 1e-5 * np.abs(want).max(), name


@pytest.mark.parametrize("qtype", list(FORMS))
def test_the_file_stores_the_form_and_no_float_copy(exported, qtype):
    entry = exported[qtype]
    proto, model = entry["proto"], entry["model"]
    assert {i.name for i in proto.graph.input} == {"x", "ids"}
    stored = {t.name: t for t in proto.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL}
    parts = {p.suffix for p in FORMS[qtype].parts((N, K))}
    assert set(stored) == {f"{w}{s}" for w in ("w", "stack") for s in parts}
    assert not any(t.HasField("raw_data") and len(t.raw_data) > 4096 for t in proto.graph.initializer)
    ops = {n.op_type for n in proto.graph.node}
    assert ("MatMulNBits" in ops) == (FORMS[qtype].linear is not None)
    assert ("DequantizeLinear" in ops) == (model.opset("") == 21)
    assert entry["onnx_bytes"] <= MAX_RATIO[qtype] * entry["gguf_bytes"]
