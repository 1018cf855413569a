"""Weights as the file holds them: a GGUF model's graphs are weight-free, its matrices are bound
as packed views of the memory map (no float32 copy of the model), and the logits equal those
of the same weights dequantized to F32 (llama.cpp's converter's F32 twin written here)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType, GGUFReader
from gguf.quants import dequantize

from corpus.gguf_rewrite import rewrite
from gdnc.lowering.quant import native_linear
from gdnc.lowering.quant.packed import PackedWeight
from gdnc.models.qwen_hybrid.model import HybridModel, build_fused
from gdnc.runtime import memory

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = {"f16": ROOT / "examples/tiny-qwen35-f16.gguf", "q8_0": ROOT / "examples/tiny-qwen35-q8_0.gguf"}
FIXTURE = ROOT / "tests/fixtures/gguf/qwen35-fixture-f32.gguf"


def _f32_twin(src: Path, dst: Path) -> Path:
    """``src`` with every tensor dequantized to F32 (same values, the widest type)."""
    reader = GGUFReader(src)
    tensors = {t.name: dequantize(np.asarray(t.data), GGMLQuantizationType(t.tensor_type))
               .reshape([int(d) for d in reversed(t.shape)]).astype(np.float32) for t in reader.tensors}
    return rewrite(src, dst, tensors=tensors)


def _tokens(model: HybridModel, n: int = 12) -> list[int]:
    return np.random.default_rng().integers(0, model.n_vocab, n).tolist()


def test_the_fused_graph_holds_no_weights() -> None:
    from gdnc.frontends.gguf_file import GgufFile
    model = build_fused(GgufFile(EXAMPLES["f16"]))
    g = model.graph
    biggest = max((t.ByteSize() for t in g.initializers.values()), default=0)
    assert biggest < 4096, f"an initializer of {biggest} bytes in a weight-free graph"
    assert "token_embd.weight" in g.inputs and "blk.0.attn_qkv.weight" in g.inputs


@pytest.mark.parametrize("kind", sorted(EXAMPLES))
def test_matrices_stay_packed_views_of_the_file(kind: str) -> None:
    model = HybridModel(str(EXAMPLES[kind]))
    model.logits(_tokens(model, 4))
    bound = model.fused_executor().runner.constants
    packed = {n: w for n, w in bound.items() if isinstance(w, PackedWeight)}
    assert {"token_embd.weight", "blk.0.attn_qkv.weight", "blk.0.ffn_down.weight"} <= set(packed)
    assert {w.qtype for w in packed.values()} == {kind.upper()}
    mapped = np.asarray(model.file.raw("blk.0.ffn_down.weight")[0])
    assert packed["blk.0.ffn_down.weight"].raw.data_ptr() == mapped.ctypes.data  # not a copy
    dense = {n: t for n, t in bound.items() if n in model.file.tensor_names() and n not in packed}
    assert all(t.dtype == torch.float32 and t.dim() <= 2 and t.numel() < 10_000 for t in dense.values())
    file_bytes = sum(model.file.tensor_nbytes(n) for n in model.file.tensor_names())
    assert model.weights.nbytes < 1.1 * file_bytes  # nothing widened to float32


@pytest.mark.parametrize("path", ["native", "torch"])
@pytest.mark.parametrize("kind", sorted(EXAMPLES))
def test_logits_equal_the_f32_twin(kind: str, path: str, tmp_path: Path,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Both matmul paths of a packed weight: the native kernel (12 rows of x) and dequantize +
    torch.mm."""
    if path == "torch":
        monkeypatch.setattr(native_linear, "takes", lambda x, qtype: False)
    elif native_linear.reason() is not None:
        pytest.skip(f"native kernel unavailable: {native_linear.reason()}")
    twin = HybridModel(str(_f32_twin(EXAMPLES[kind], tmp_path / "twin.gguf")))
    packed = HybridModel(str(EXAMPLES[kind]))
    tokens = _tokens(packed)
    want = twin.logits(tokens)
    got = packed.logits(tokens)
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-4), (got - want).abs().max()


def test_q4_0_matrices_run_and_equal_their_twin(tmp_path: Path) -> None:
    q4 = rewrite(FIXTURE, tmp_path / "q4_0.gguf", qtype=GGMLQuantizationType.Q4_0)
    twin = HybridModel(str(_f32_twin(q4, tmp_path / "twin.gguf")))
    model = HybridModel(str(q4))
    tokens = _tokens(model)
    assert torch.allclose(model.logits(tokens), twin.logits(tokens), rtol=1e-4, atol=1e-4)


def test_weights_that_cannot_fit_are_refused_naming_them(monkeypatch: pytest.MonkeyPatch) -> None:
    model = HybridModel(str(EXAMPLES["f16"]))
    monkeypatch.setattr(memory, "available_bytes", lambda device: 1 << 20)
    with pytest.raises(memory.MemoryShortError) as exc:
        model.new_pool(1, 8)
    assert "weights " + memory.size(model.weights.unbound_bytes()) in str(exc.value)
