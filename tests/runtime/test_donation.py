"""Donated graph inputs: updated in place only when nothing can read them afterwards."""

from __future__ import annotations

import numpy as np
import torch

from gdnc.ir.builder import FLOAT, INT64, GraphBuilder
from gdnc.runtime.executor import Executor, GraphRunner


def _pool_graph(extra_reader: str | None):
    """out = ScatterND(pool, idx, upd) (+ an extra reader of pool whose result is an output)."""
    e = GraphBuilder.new("donate")
    pool = e.input("pool", FLOAT, [4, 3])
    idx = e.input("idx", INT64, [1, 1])
    upd = e.input("upd", FLOAT, [1, 3])
    if extra_reader == "Gather":
        e.output(e.op("Gather", pool, e.const([0]), axis=0), "first")
    elif extra_reader == "Reshape":
        e.output(e.reshape(pool, [12]), "flat")
    e.output(e.op("ScatterND", pool, idx, upd), "pool.out")
    return e.model()


def _run(extra_reader: str | None, donate: bool):
    pool = torch.from_numpy(np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32))
    before = pool.clone()
    ex = Executor(_pool_graph(extra_reader), donate=["pool"] if donate else [])
    outs = ex.run({"pool": pool, "idx": np.array([[2]]), "upd": np.ones((1, 3), np.float32)})
    want = before.clone()
    want[2] = 1.0
    assert torch.equal(outs["pool.out"], want)
    return pool, before, outs


def test_donated_pool_is_updated_in_place():
    pool, before, outs = _run(None, donate=True)
    assert outs["pool.out"].data_ptr() == pool.data_ptr()


def test_pool_not_donated_stays_intact():
    pool, before, outs = _run(None, donate=False)
    assert torch.equal(pool, before)


def test_donated_pool_read_by_a_copying_gather_first_is_still_in_place():
    pool, before, outs = _run("Gather", donate=True)
    assert torch.equal(outs["first"], before[:1])
    assert outs["pool.out"].data_ptr() == pool.data_ptr()


def test_donated_pool_with_a_view_reader_is_copied():
    pool, before, outs = _run("Reshape", donate=True)
    assert torch.equal(pool, before) and torch.equal(outs["flat"], before.reshape(12))


def test_constant_shape_inputs_are_planned_on_the_host():
    """On an accelerator, a Reshape's constant shape is read from a host copy (no sync), while
    the data constants live on the device ("meta" stands in for one here)."""
    e = GraphBuilder.new("host")
    x = e.input("x", FLOAT, [2, 3])
    e.output(e.op("Add", e.reshape(x, [3, 2]), e.weight("w", np.ones((3, 2)))), "y")
    model = e.model()
    runner = GraphRunner(model.graph, model.opset_imports, torch.device("meta"))
    reshape = next(s for s in runner.steps if s.ctx.op_type == "Reshape")
    ((position, shape),) = reshape.host_args
    assert position == 1 and shape.device.type == "cpu" and shape.tolist() == [3, 2]
    add = next(s for s in runner.steps if s.ctx.op_type == "Add")
    assert add.host_args == () and runner.constants["w"].device.type == "meta"
