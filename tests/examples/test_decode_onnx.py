"""The trained tiny qwen35 as an ONNX decode step (``corpus/decode_onnx.py``).

The file is the committed ``examples/tiny-qwen35-decode.onnx`` (``train_tiny.py`` writes it);
while it is missing, one exported from the checkpoint ``examples/tiny-qwen35/`` into a temporary
folder. ``GDNC_TINY_DIR=<a train_tiny.py --out folder>`` tests another run's files instead.
gdnc fuses each Gated DeltaNet layer's chain into one node; decode loops with states rolled
from outputs to inputs give the same logits in onnxruntime (original), gdnc (converted) and
HF transformers with its own cache.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from gdnc.commands.onnx_compare import compare_file
from gdnc.frontends.onnx_model import load_onnx
from gdnc.ir.graph import Model
from gdnc.opset import gated_delta_net as fused_op
from gdnc.passes.convert import convert_model, inspect_model
from gdnc.passes.pipeline import ConversionReport
from gdnc.runtime.executor import Executor

ROOT = Path(__file__).resolve().parents[2]
TINY = Path(os.environ.get("GDNC_TINY_DIR", ROOT / "examples"))
DECODE = TINY / "tiny-qwen35-decode.onnx"
CHECKPOINT = TINY / "tiny-qwen35"
MAX_BYTES = 9_000_000
FUSED = f"{fused_op.DOMAIN}::{fused_op.OP_TYPE}"
STEPS = 8
TOL = 1e-5  # relative L2, fp32 recurrent (SPEC §6)
HF_TOL = 1e-4  # HF's prefill runs the chunked form (SPEC §6: fp32 chunked, CPU)

Feeds = dict[str, np.ndarray]
Step = Callable[[Feeds], Mapping[str, np.ndarray]]


def _has_checkpoint() -> bool:
    return (CHECKPOINT / "model.safetensors").is_file()


@pytest.fixture(scope="module")
def decode_path(tmp_path_factory) -> Path:
    if DECODE.is_file():
        return DECODE
    if not _has_checkpoint():
        pytest.skip(f"neither {DECODE} nor a checkpoint {CHECKPOINT}/model.safetensors to export it from")
    from corpus.decode_onnx import export_decode_step, load_checkpoint

    return export_decode_step(load_checkpoint(CHECKPOINT), tmp_path_factory.mktemp("decode") / "decode.onnx")


@pytest.fixture(scope="module")
def original(decode_path) -> Model:
    return load_onnx(decode_path)


@pytest.fixture(scope="module")
def converted(decode_path) -> tuple[Model, ConversionReport]:
    model = load_onnx(decode_path)
    return model, convert_model(model)


def _ort_step(path: Path) -> Step:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return lambda feeds: dict(zip(names, session.run(None, feeds)))


def _gdnc_step(model: Model) -> Step:
    executor = Executor(model)
    return lambda feeds: {k: v.numpy() for k, v in executor.run(feeds).items()}


def _state_shapes(model: Model, batch: int, past: int) -> dict[str, tuple[int, ...]]:
    """Every float input's shape, its ``batch`` and ``past`` dims given."""
    g = model.graph
    sizes = {"batch": batch, "past": past}
    return {n: tuple(d if isinstance(d, int) else sizes[str(d)] for d in g.value(n).shape)
            for n in g.inputs if n not in g.initializers and g.value(n).dtype == 1}


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a.astype(np.float64) - b) / np.linalg.norm(b.astype(np.float64)))


def _decode(step: Step, states: Feeds, tokens: np.ndarray, mask: np.ndarray,
            positions: np.ndarray) -> tuple[list[np.ndarray], Feeds]:
    """Feed ``tokens[:, t]`` at ``positions + t``, the mask growing by one attended column a
    step, states rolled from each step's outputs: (logits [B, vocab] of every step, final states)."""
    logits = []
    for t in range(tokens.shape[1]):
        mask = np.concatenate([mask, np.ones_like(mask[:, :1])], axis=1)
        out = step({"input_ids": tokens[:, t:t + 1], "position_ids": positions[:, None] + t,
                    "attention_mask": mask, **states})
        logits.append(out["logits"][:, 0])
        states = {name: out[f"present.{name}"] for name in states}
    return logits, states


def test_committed_file_exists_and_is_small() -> None:
    assert DECODE.is_file(), f"{DECODE} is committed (train_tiny.py writes it)"
    assert DECODE.stat().st_size <= MAX_BYTES


def test_interface_states_in_and_out_batch_and_past_dynamic(original) -> None:
    g = original.graph
    inputs = [n for n in g.inputs if n not in g.initializers]
    gdn = [f"{kind}.{i}" for i in range(3) for kind in ("conv_state", "recurrent_state")]
    states = [*gdn, "key.3", "value.3"]
    assert inputs == ["input_ids", "position_ids", "attention_mask", *states]
    assert g.outputs == ["logits", *(f"present.{n}" for n in states)]
    assert all(not isinstance(g.value(n).shape[0], int) for n in inputs + g.outputs)  # batch
    assert not isinstance(g.value("key.3").shape[2], int)  # past
    assert g.value("recurrent_state.0").shape[1:] == (6, 32, 32)  # [B, HV, K, V]
    assert all(g.consumers(n) for n in inputs), "every input is read (none folded into a constant)"


def test_converts_to_one_fused_node_per_gdn_layer(converted) -> None:
    model, report = converted
    assert model.graph.op_histogram()[FUSED] == 3
    # one token, HV = 6 value heads of K = V = 32 (train_tiny.py), states given as inputs
    assert [(c.steps, c.heads, c.key_dim, c.value_dim, c.initial_state) for c in report.chains] == [
        (1, 6, 32, 32, True)] * 3
    again = inspect_model(model)
    assert again.chains == [] and not any(m.rule.startswith("delta-net") for m in again.misses)


def test_decode_loop_onnxruntime_matches_gdnc(decode_path, original, converted) -> None:
    """B = 2, random initial states and 3 cached positions (the first masked out in row 1),
    fresh random tokens each step; each runtime rolls its own states."""
    seed = int(np.random.default_rng().integers(1 << 31))
    rng = np.random.default_rng(seed)
    batch, past = 2, 3
    states = {n: rng.standard_normal(s).astype(np.float32)
              for n, s in _state_shapes(original, batch, past).items()}
    vocab = original.graph.value("logits").shape[-1]
    tokens = rng.integers(0, vocab, (batch, STEPS))
    mask = np.ones((batch, past), dtype=np.int64)
    mask[1, 0] = 0
    positions = np.array([past, past - 1])
    ref, ref_states = _decode(_ort_step(decode_path), states, tokens, mask, positions)
    got, got_states = _decode(_gdnc_step(converted[0]), states, tokens, mask, positions)
    for a, b in zip(got, ref):
        assert np.isfinite(a).all() and _rel(a, b) <= TOL, f"seed {seed}"
        assert (a.argmax(-1) == b.argmax(-1)).all(), f"seed {seed}"
    for name, value in ref_states.items():
        assert _rel(got_states[name], value) <= TOL, f"{name}, seed {seed}"
    assert ref_states["key.3"].shape == (batch, 2, past + STEPS, 32)


@pytest.mark.parametrize("target", ["native", "ort"])
def test_gdnc_compare_on_random_inputs(decode_path, target) -> None:
    """What ``gdnc compare FILE [--target ort]`` runs: inputs drawn for the declared dims
    (``past + 1`` for the mask)."""
    result = compare_file(decode_path, target=target)
    assert result.chains == 3 and result.passed, result.to_json()


def _hf_states(model, cache) -> Feeds:
    """Copies of the states in HF's cache, named as the decode step's inputs."""
    states = {}
    for i, layer in enumerate(cache.layers):
        if model.config.layer_types[i] == "linear_attention":
            states[f"conv_state.{i}"] = layer.conv_states[0].numpy().copy()
            states[f"recurrent_state.{i}"] = layer.recurrent_states[0].numpy().copy()
        else:
            states[f"key.{i}"], states[f"value.{i}"] = layer.keys.numpy().copy(), layer.values.numpy().copy()
    return states


def test_logits_match_hf_with_its_own_cache(decode_path, converted) -> None:
    """HF prefills a random prompt (its chunked form) into its cache; the ONNX step starts from
    those states and decodes the same tokens as HF's cached decode: same logits every step and
    the same states in the end."""
    if not _has_checkpoint():
        pytest.skip(f"no HF checkpoint {CHECKPOINT}/model.safetensors (train_tiny.py writes it)")
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from corpus.decode_onnx import load_checkpoint

    model = load_checkpoint(CHECKPOINT)
    seed = int(np.random.default_rng().integers(1 << 31))
    gen = torch.Generator().manual_seed(seed)
    batch, prompt_len = 2, 5
    prompt = torch.randint(0, model.config.vocab_size, (batch, prompt_len), generator=gen)
    tokens = torch.randint(0, model.config.vocab_size, (batch, STEPS), generator=gen)
    with torch.no_grad():
        cache = model(input_ids=prompt, use_cache=True).cache
        states = _hf_states(model, cache)
        hf = [model(input_ids=tokens[:, t:t + 1], cache=cache, use_cache=True).logits[:, 0].numpy()
              for t in range(STEPS)]
    hf_final = _hf_states(model, cache)
    mask = np.ones((batch, prompt_len), dtype=np.int64)
    positions = np.full(batch, prompt_len)
    for step in (_ort_step(decode_path), _gdnc_step(converted[0])):
        got, final = _decode(step, states, tokens.numpy(), mask, positions)
        for a, b in zip(got, hf):
            assert _rel(a, b) <= HF_TOL, f"seed {seed}"
            assert (a.argmax(-1) == b.argmax(-1)).all(), f"seed {seed}"
        for name, value in hf_final.items():
            assert _rel(final[name], value) <= HF_TOL, f"{name}, seed {seed}"
