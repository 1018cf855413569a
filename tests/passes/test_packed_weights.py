"""The packed-weights rewrite: ``MatMul(x, Transpose(W))`` -> ``Linear``, ``Gather(W, ids)`` ->
``Embed`` for the named weight inputs only; every other read of a weight is left as it is,
and the rewritten graph computes the same (float weights bound as plain tensors)."""

from __future__ import annotations

import numpy as np
import torch

from gdnc.ir.builder import FLOAT, INT64, GraphBuilder
from gdnc.ir.graph import Model
from gdnc.passes.packed_weights import pack_weight_reads
from gdnc.runtime.executor import Executor

SHAPES = {"table": (11, 8), "proj": (6, 8), "experts": (3, 5, 6), "norm": (8,), "shared": (6, 8),
          "free": (6, 8)}
NAMED = ("table", "proj", "experts", "norm", "shared")  # "free" is not named: left alone


def _model() -> Model:
    e = GraphBuilder.new("packed")
    ids = e.input("ids", INT64, ["T"])
    w = {n: e.input(n, FLOAT, list(s)) for n, s in SHAPES.items()}
    x = e.op("Mul", e.op("Gather", w["table"], ids, axis=0), w["norm"])  # [T, 8]
    e.output(e.linear(e.linear(x, w["proj"]), w["experts"], rank=3), "experts_out")  # [3, T, 5]
    shared_t = e.op("Transpose", w["shared"], perm=[1, 0])  # [8, 6], read twice
    e.output(e.op("MatMul", x, shared_t), "shared_out")
    e.output(e.op("Add", shared_t, e.const(1.0, np.float32)), "shared_plus")
    e.output(e.linear(x, w["free"]), "free_out")
    e.output(e.op("Gather", w["table"], ids, axis=1), "columns")  # [11, T]: not an embedding
    return e.model()


def _run(model: Model, rng_seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(rng_seed)
    bound = {n: torch.from_numpy(rng.standard_normal(s).astype(np.float32)) for n, s in SHAPES.items()}
    ids = np.array([3, 0, 7, 7], dtype=np.int64)
    out = Executor(model, bound=bound).run({"ids": ids})
    return {k: v.numpy() for k, v in out.items()}


def test_named_weight_reads_become_packed_ops_and_compute_the_same() -> None:
    seed = int(np.random.default_rng().integers(1 << 30))
    model = _model()
    before = _run(model, seed)
    assert pack_weight_reads(model, NAMED) == 4  # proj, experts, shared's MatMul, table's Gather
    g = model.graph
    ops = sorted(g.node(n).qualified_op for n in g.node_ids() if g.node(n).domain == "ai.gdnc")
    assert ops == ["ai.gdnc::Embed", "ai.gdnc::Linear", "ai.gdnc::Linear", "ai.gdnc::Linear"]
    assert model.opset_imports["ai.gdnc"] == 1
    readers = {n: sorted(g.node(c).op_type for c in g.consumers(n)) for n in SHAPES}
    assert readers["shared"] == ["Linear", "Transpose"]  # the Transpose stays for its Add
    assert readers["free"] == ["Transpose"] and readers["norm"] == ["Mul"]
    assert readers["table"] == ["Embed", "Gather"]
    after = _run(model, seed)
    for name, value in before.items():
        np.testing.assert_allclose(after[name], value, rtol=1e-6, atol=1e-6)


def test_bound_inputs_are_no_feeds() -> None:
    model = _model()
    bound = {n: torch.zeros(s) for n, s in SHAPES.items()}
    assert Executor(model, bound=bound).input_names == ["ids"]
