"""The compiled program (``runtime.compiled``) against the interpreter it replaces: the same
values on every test model, the same errors, the same donation; each op's specialized function
against the op's implementation on drawn shapes, bounds and axes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gdnc.errors import ExecutionError
from gdnc.ir.builder import FLOAT, INT64, GraphBuilder
from gdnc.models.qwen_hybrid.model import HybridModel
from gdnc.opset.registry import OpContext, lookup, specialized
from gdnc.runtime.compiled import CompiledGraph
from gdnc.runtime.executor import Executor, GraphRunner
from gdnc.runtime.state_pool import Entry

ROOT = Path(__file__).resolve().parents[2]
MODELS = [ROOT / "tests" / "fixtures" / "gguf" / f"{arch}-fixture-f32.gguf"
          for arch in ("qwen35", "qwen3next", "qwen35moe")] + \
         [ROOT / "examples" / f"tiny-qwen35-{t}.gguf" for t in ("f16", "q8_0")]
INT64_MAX = 2**63 - 1


def _generate(model: HybridModel, prompts: list[tuple[int, ...]], steps: int) -> list[torch.Tensor]:
    """Every run's logits: the prompts as one prefill batch, then ``steps`` greedy decodes of all."""
    pool = model.new_pool(len(prompts), 32)
    slots = [pool.allocate() for _ in prompts]
    seen = []
    batch = [Entry(s, p) for s, p in zip(slots, prompts)]
    for _ in range(steps + 1):
        logits = model.forward(pool, batch)
        seen.append(torch.stack(logits))
        batch = [Entry(s, (int(row.argmax()),)) for s, row in zip(slots, logits)]
    return seen


DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device")])]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("path", MODELS, ids=lambda p: p.stem)
def test_the_compiled_fused_graph_computes_exactly_what_the_interpreter_does(
        path: Path, device: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Bit for bit, every run's logits (prefill and greedy decode, three sequences together).
    On CUDA without CUDA graphs: their padded decode runs are checked in test_cuda_graphs."""
    monkeypatch.setenv("GDNC_CUDA_GRAPHS", "off")
    rng = np.random.default_rng()
    compiled, interpreted = (HybridModel(str(path), compiled=c, device=device) for c in (True, False))
    assert isinstance(compiled.fused_executor().runner, CompiledGraph)
    assert isinstance(interpreted.fused_executor().runner, GraphRunner)
    prompts = [tuple(int(t) for t in rng.integers(0, compiled.n_vocab, n)) for n in (5, 1, 9)]
    for got, want in zip(_generate(compiled, prompts, 4), _generate(interpreted, prompts, 4), strict=True):
        assert torch.equal(got, want)


def _gather_model():
    e = GraphBuilder.new("gather")
    table = e.input("table", FLOAT, [4, 3])
    ids = e.input("ids", INT64, [2])
    e.output(e.op("Relu", e.op("Gather", table, ids, axis=0, name="pick")), "y")
    return e.model()


def test_a_failing_node_is_named_as_the_interpreter_names_it() -> None:
    feeds = {"table": np.ones((4, 3), np.float32), "ids": np.array([1, 7])}
    messages = []
    for compiled in (True, False):
        with pytest.raises(ExecutionError) as caught:
            Executor(_gather_model(), compiled=compiled).run(feeds)
        messages.append(str(caught.value))
    assert messages[0] == messages[1] and messages[0].startswith("node 'pick' (Gather): ")


def test_constant_subgraphs_are_evaluated_once_and_bound_weights_are_constants() -> None:
    e = GraphBuilder.new("folded")
    x = e.input("x", FLOAT, [2, 3])
    w = e.input("w", FLOAT, [4, 3])
    e.output(e.op("MatMul", x, e.op("Transpose", w, perm=[1, 0])), "y")
    weight = torch.randn(4, 3)
    ex = Executor(e.model(), bound={"w": weight}, compiled=True)
    assert isinstance(ex.runner, CompiledGraph)
    runner = ex.runner
    assert runner.folded == 1 and runner.specialized_steps == runner.steps - 1  # the transpose, once
    x_value = torch.randn(2, 3)
    assert torch.equal(ex.run({"x": x_value})["y"], x_value @ weight.T)


def test_a_donated_pool_is_still_updated_in_place() -> None:
    e = GraphBuilder.new("donate")
    pool = e.input("pool", FLOAT, [4, 3])
    idx = e.input("idx", INT64, [1, 1])
    upd = e.input("upd", FLOAT, [1, 3])
    e.output(e.op("ScatterND", pool, idx, upd), "pool.out")
    tensor = torch.randn(4, 3)
    outs = Executor(e.model(), donate=["pool"], compiled=True).run(
        {"pool": tensor, "idx": np.array([[2]]), "upd": np.ones((1, 3), np.float32)})
    assert outs["pool.out"].data_ptr() == tensor.data_ptr() and torch.equal(tensor[2], torch.ones(3))


def test_a_graph_with_subgraphs_stays_interpreted() -> None:
    e = GraphBuilder.new("branch")
    c = e.input("c", INT64, [])
    then, other = e.sub("then"), e.sub("else")
    then.output(then.const([1.0]), "t")
    other.output(other.const([2.0]), "o")
    e.output(e.op("If", e.op("Cast", c, to=9), then_branch=then.graph, else_branch=other.graph), "y")
    ex = Executor(e.model(), compiled=True)
    assert isinstance(ex.runner, GraphRunner)
    assert ex.run({"c": np.array(0)})["y"].tolist() == [2.0]


# --- each specialized function against its op's implementation ---------------------------------

def _agree(op: str, attrs: dict, inputs: list, constant: set[int], opset: int = 18) -> bool:
    """Whether the specialized function of ``op`` (inputs at ``constant`` known) computes what
    the implementation does, raising where it raises; returns whether there was one."""
    impl = lookup("", op, opset)
    ctx = OpContext(op_type=op, domain="", attrs=attrs, opset=opset, num_outputs=1,
                    num_inputs=len(inputs))
    fn = specialized(impl, ctx, {j: inputs[j] for j in constant})
    if fn is None:
        return False
    try:
        want = impl(ctx, inputs)[0]
    except Exception as exc:  # noqa: BLE001  (any error the op raises, the function must raise)
        with pytest.raises(Exception):  # noqa: B017
            fn(*(x for j, x in enumerate(inputs) if j not in constant))
        assert exc is not None
        return True
    got = fn(*(x for j, x in enumerate(inputs) if j not in constant))
    assert got.dtype == want.dtype and got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=0, atol=0, equal_nan=True)
    return True


shapes = st.lists(st.integers(0, 4), min_size=1, max_size=4)
bounds = st.one_of(st.integers(-6, 6), st.sampled_from([INT64_MAX, -INT64_MAX - 1]))


def _tensor(shape: list[int]) -> torch.Tensor:
    return torch.randn(shape)


@settings(max_examples=150, deadline=None)
@given(shape=shapes, data=st.data())
def test_slice_specialized(shape: list[int], data) -> None:
    rank = len(shape)
    axes = data.draw(st.lists(st.integers(0, rank - 1), min_size=1, max_size=rank, unique=True))
    starts = data.draw(st.lists(bounds, min_size=len(axes), max_size=len(axes)))
    ends = data.draw(st.lists(bounds, min_size=len(axes), max_size=len(axes)))
    steps = data.draw(st.lists(st.integers(1, 3), min_size=len(axes), max_size=len(axes)))
    inputs = [_tensor(shape), torch.tensor(starts), torch.tensor(ends), torch.tensor(axes),
              torch.tensor(steps)]
    assert _agree("Slice", {}, inputs, {1, 2, 3, 4})


@settings(max_examples=100, deadline=None)
@given(shape=st.lists(st.integers(1, 4), min_size=1, max_size=4), data=st.data())
def test_reshape_unsqueeze_transpose_specialized(shape: list[int], data) -> None:
    x = _tensor(shape)
    flat = [x.numel()]
    target = data.draw(st.sampled_from([flat, [-1], [1, -1], [*shape[::-1]], [-1, shape[-1]]]))
    assert _agree("Reshape", {}, [x, torch.tensor(target)], {1})
    axes = data.draw(st.lists(st.integers(0, len(shape)), min_size=1, max_size=2, unique=True))
    assert _agree("Unsqueeze", {}, [x, torch.tensor(axes)], {1})
    perm = data.draw(st.permutations(range(len(shape))))
    assert _agree("Transpose", {"perm": list(perm)}, [x], set())


@settings(max_examples=100, deadline=None)
@given(shape=shapes, data=st.data())
def test_reductions_softmax_and_elementwise_specialized(shape: list[int], data) -> None:
    x = _tensor(shape)
    rank = len(shape)
    axes = data.draw(st.lists(st.integers(-rank, rank - 1), min_size=1, max_size=rank, unique=True))
    keep = data.draw(st.sampled_from([0, 1]))
    for op in ("ReduceMean", "ReduceSum", "ReduceMax"):
        assert _agree(op, {"keepdims": keep}, [x, torch.tensor(axes)], {1})
    assert _agree("Softmax", {"axis": data.draw(st.integers(-rank, rank - 1))}, [x], set())
    other = _tensor(data.draw(st.sampled_from([shape, shape[-1:], [1]])))
    for op in ("Add", "Mul", "Sub", "Div"):
        for constant in (set(), {0}, {1}):
            assert _agree(op, {}, [x, other], constant)
    assert _agree("Sigmoid", {}, [x], set())
    assert _agree("Cast", {"to": 7}, [x * 10], set())
    assert _agree("Concat", {"axis": data.draw(st.integers(-rank, rank - 1))}, [x, x], set())


def test_integer_division_keeps_its_truncation_when_specialized() -> None:
    a, b = torch.tensor([-7, 7, -8]), torch.tensor([2, -2, 3])
    assert _agree("Div", {}, [a, b], {1})
    assert _agree("ReduceMean", {"keepdims": 0}, [torch.tensor([[-3, 2], [5, 1]]), torch.tensor([1])], {1})
