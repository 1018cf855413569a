"""GGUF hybrids end to end against the fixtures llama.cpp's converter wrote (HF logits).

Unfused graph and fused graph (the fusion pass run on it) both match HF transformers' fp32
logits; prefill-then-decode matches the one-shot logits; bad files are one-line errors.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType

from corpus.gguf_rewrite import rewrite
from gdnc.errors import InputError, ModelLoadError
from gdnc.frontends.gguf_file import GgufFile
from gdnc.models.qwen_hybrid.graph import Composition
from gdnc.models.qwen_hybrid.model import HybridModel
from gdnc.runtime.state_pool import Entry

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "gguf"  # copied from ../shared/fixtures
ARCHS = ["qwen35", "qwen3next", "qwen35moe"]
MAX_ABS = 1e-4  # fixture README: F32 implementation vs hf_*


def gguf_path(arch: str) -> Path:
    return FIXTURES / f"{arch}-fixture-f32.gguf"


def reference(arch: str) -> dict[str, np.ndarray]:
    return dict(np.load(FIXTURES / f"{arch}-fixture-ref.npz"))


@pytest.fixture(scope="module", params=ARCHS)
def arch(request) -> str:
    if not gguf_path(request.param).exists():
        pytest.fail(f"fixture {gguf_path(request.param)} is missing")
    return request.param


@pytest.mark.parametrize("fused", [False, True], ids=["unfused", "fused"])
@pytest.mark.parametrize("prompt", [0, 1])
def test_logits_match_hf(arch, prompt, fused):
    ref = reference(arch)
    logits = HybridModel(str(gguf_path(arch)), fused=fused).logits(ref[f"prompt{prompt}"]).numpy()
    want = ref[f"hf_{prompt}"]
    assert np.abs(logits - want).max() <= MAX_ABS
    assert (logits.argmax(-1) == want.argmax(-1)).all()


def test_fusion_makes_one_multi_sequence_node_per_recurrent_layer(arch):
    model = HybridModel(str(gguf_path(arch)), fused=True)
    graph = model.fused_executor().model.graph
    n_recurrent = sum(model.cfg.recurrent)
    assert graph.op_histogram().get("ai.gdnc::GatedDeltaNet") == n_recurrent
    gdn = [n for _, n in graph.nodes() if n.op_type == "GatedDeltaNet"]
    assert {n.attr("head_map") for n in gdn} == {model.cfg.head_map}
    assert all(n.attr("qk_l2norm") == 1 for n in gdn)
    assert all(n.inputs[5:] == [f"ssm_state.{n.inputs[5].split('.')[1]}", "cu_seqlens", "state_slots",
                                "state_slots"] for n in gdn)
    unfused = HybridModel(str(gguf_path(arch)), fused=False)
    unfused.unfused_executor(Composition.of(5, 7))
    assert model.stats.fused_nodes < unfused.stats.unfused_nodes[(5, 7)] / 3


@pytest.mark.parametrize("fused", [False, True], ids=["unfused", "fused"])
def test_prefill_then_decode_matches_one_shot(arch, fused):
    """Conv states, delta-net states and KV caches carried across calls."""
    ref = reference(arch)
    tokens, want = ref["prompt1"], ref["hf_1"]
    model = HybridModel(str(gguf_path(arch)), fused=fused)
    pool = model.new_pool(2, 80)
    other = pool.allocate()  # a neighbour in slot 0 that must not disturb slot 1
    slot = pool.allocate()
    rows = [model.forward(pool, [Entry(other, (3, 4, 5)), Entry(slot, tuple(tokens[:60]))],
                          all_logits=True)[1].numpy()]
    for t in range(60, 66):
        rows.append(model.forward(pool, [Entry(slot, (int(tokens[t]),))], all_logits=True)[0].numpy())
    rows.append(model.forward(pool, [Entry(slot, tuple(tokens[66:])), Entry(other, (6,))],
                              all_logits=True)[0].numpy())
    assert np.abs(np.concatenate(rows) - want).max() <= MAX_ABS


def test_q8_0_file_loads_and_fused_equals_unfused(tmp_path):
    path = rewrite(gguf_path("qwen35"), tmp_path / "q8.gguf", qtype=GGMLQuantizationType.Q8_0)
    types = set(GgufFile(path).tensor_types().values())
    assert "Q8_0" in types
    ref = reference("qwen35")
    out = {}
    for fused in (False, True):
        out[fused] = HybridModel(str(path), fused=fused).logits(ref["prompt1"]).numpy()
    assert np.abs(out[True] - out[False]).max() <= MAX_ABS
    rel = np.linalg.norm(out[True] - ref["hf_1"]) / np.linalg.norm(ref["hf_1"])
    assert 1e-5 < rel < 5e-2  # quantized, yet close to the F32 model


def _one_line_error(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


def test_other_architecture_is_refused(tmp_path):
    path = rewrite(gguf_path("qwen35"), tmp_path / "llama.gguf", arch="llama")
    with pytest.raises(ModelLoadError) as exc:
        HybridModel(str(path))
    assert "architecture 'llama' is not supported" in _one_line_error(exc)


def test_truncated_file_is_refused(tmp_path):
    data = gguf_path("qwen35").read_bytes()
    for cut in (10, 1000, len(data) // 2, len(data) - 7):
        path = tmp_path / f"cut{cut}.gguf"
        path.write_bytes(data[:cut])
        with pytest.raises(ModelLoadError) as exc:
            HybridModel(str(path)).logits([1, 2])
        assert str(path) in _one_line_error(exc)


def test_wrong_tensor_shape_and_missing_tensor_are_refused(tmp_path):
    name = "blk.1.attn_gate.weight"
    wrong = np.zeros((96, 95), dtype=np.float32) + 0.5
    path = rewrite(gguf_path("qwen35"), tmp_path / "shape.gguf", tensors={name: wrong})
    with pytest.raises(ModelLoadError) as exc:
        HybridModel(str(path)).unfused_executor(Composition.of(3))
    assert f"tensor '{name}' has shape [96, 95], expected [96, 96]" in _one_line_error(exc)
    path = rewrite(gguf_path("qwen35"), tmp_path / "drop.gguf", drop=("blk.2.ssm_out.weight",))
    with pytest.raises(ModelLoadError) as exc:
        HybridModel(str(path)).unfused_executor(Composition.of(3))
    assert "tensor 'blk.2.ssm_out.weight' is missing" in _one_line_error(exc)


def test_out_of_range_tokens_are_refused():
    with pytest.raises(InputError, match="tokens: need >= 1 id in 0..383, got 384"):
        HybridModel(str(gguf_path("qwen35"))).logits([1, 384])


def test_older_qwen3next_layout_with_ssm_in(tmp_path):
    """Older qwen3next files hold q, k, v and z in one ``ssm_in``, grouped per key head."""
    src = GgufFile(gguf_path("qwen3next"))
    H, K, E = 3, 16, 96  # fixture: 3 key heads, head dim 16, 2 value heads per key head
    tensors, drop = {}, []
    for i in range(3):
        qkv = src.tensor(f"blk.{i}.attn_qkv.weight")
        gate = src.tensor(f"blk.{i}.attn_gate.weight")
        q, k = qkv[:H * K].reshape(H, K, E), qkv[H * K:2 * H * K].reshape(H, K, E)
        v, z = qkv[2 * H * K:].reshape(H, -1, E), gate.reshape(H, -1, E)
        tensors[f"blk.{i}.ssm_in.weight"] = np.concatenate([q, k, v, z], axis=1).reshape(-1, E)
        drop += [f"blk.{i}.attn_qkv.weight", f"blk.{i}.attn_gate.weight"]
    path = rewrite(gguf_path("qwen3next"), tmp_path / "old.gguf", tensors=tensors, drop=tuple(drop))
    assert not GgufFile(path).has_tensor("blk.0.attn_qkv.weight")
    ref = reference("qwen3next")
    for fused in (False, True):
        logits = HybridModel(str(path), fused=fused).logits(ref["prompt1"]).numpy()
        assert np.abs(logits - ref["hf_1"]).max() <= MAX_ABS
