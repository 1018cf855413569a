"""Real-size random GGUF files (corpus/sized_gguf.py): small shapes in every type read back with
gguf-py and with gdnc's reader, with the types llama.cpp would store and init-like weights; the
presets are as big as their names; (slow) the 135m preset generates through ``gdnc run``."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFReader
from gguf.quants import dequantize

from corpus import sized_gguf
from corpus.sized_gguf import NOMINAL, PRESETS, TYPES, MatPlan, n_params, random_rows, write_sized
from corpus.tiny_gguf import Q
from gdnc.frontends.gguf_file import GgufFile
from gdnc.models.qwen_hybrid.config import hybrid_config

# block 0 Gated DeltaNet, block 1 attention; every row a multiple of 256; ~1.2M parameters
SMALL = dataclasses.replace(PRESETS["0.5b"], hidden=256, layers=2, interval=2, k_heads=1, v_heads=2,
                            attn_heads=1, attn_kv_heads=1, ffn=256, vocab=640)
F32_ALWAYS = ("norm.weight", "ssm_a", "ssm_dt.bias", "ssm_conv1d.weight")
# Q4_K_M (llama_tensor_get_type) for SMALL: use_more_bits(i, 2) holds for block 1 only, and
# for the one attn_v (i = 0 of 1)
Q4_K_M = {"token_embd.weight": Q.Q6_K, "blk.0.attn_qkv.weight": Q.Q5_K, "blk.1.attn_v.weight": Q.Q6_K,
          "blk.1.ffn_down.weight": Q.Q6_K}
MATRIX = {"f32": Q.F32, "f16": Q.F16, "q8_0": Q.Q8_0, "q4_k": Q.Q4_K}


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("sized")
    return {v: write_sized(out / f"small-{v}.gguf", SMALL, v) for v in TYPES}


def _expected_type(name: str, variant: str) -> Q:
    if name.endswith(F32_ALWAYS):
        return Q.F32
    return Q4_K_M.get(name, Q.Q4_K) if variant == "q4_k" else MATRIX[variant]


@pytest.mark.parametrize("variant", TYPES)
def test_reads_back_with_llamacpp_types(files, variant):
    r = GGUFReader(files[variant])
    types = {t.name: Q(t.tensor_type) for t in r.tensors}
    assert "output.weight" not in types  # tied, as the presets
    assert types == {name: _expected_type(name, variant) for name in types}
    assert len(types) == 1 + 1 + 14 + 11  # embd, output norm, a GDN block, an attention block
    assert r.fields["general.file_type"].contents() == {"f32": 0, "f16": 1, "q8_0": 7, "q4_k": 15}[variant]


@pytest.mark.parametrize("variant", TYPES)
def test_weights_look_like_an_init(files, variant):
    for t in GGUFReader(files[variant]).tensors:
        w = dequantize(t.data, t.tensor_type)
        assert w.shape == tuple(reversed(t.shape.tolist())) and np.isfinite(w).all(), t.name
        if w.ndim == 2 and "conv1d" not in t.name:
            assert abs(w.mean()) < 2e-3 and 0.017 < w.std() < 0.023, (t.name, w.mean(), w.std())
        elif t.name.endswith("norm.weight"):
            assert abs(w.mean() - 1) < 0.05, t.name


@pytest.mark.parametrize("variant", TYPES)
def test_gdnc_reads_the_config(files, variant):
    cfg = hybrid_config(GgufFile(files[variant]))
    assert (cfg.arch, cfg.n_layer, cfg.n_embd, cfg.n_vocab) == ("qwen35", 2, 256, 640)
    assert cfg.recurrent == (True, False) and not cfg.moe and cfg.n_ff == 256
    assert (cfg.n_k_heads, cfg.n_v_heads, cfg.k_dim, cfg.conv_kernel) == (1, 2, 128, 4)
    assert (cfg.n_head, cfg.n_head_kv, cfg.head_dim, cfg.rope_dim) == (1, 1, 256, 64)


def test_tokenizer_is_padded_to_the_vocab(files):
    fields = GGUFReader(files["f16"]).fields
    tokens, types = fields["tokenizer.ggml.tokens"].contents(), fields["tokenizer.ggml.token_type"].contents()
    assert len(tokens) == len(types) == SMALL.vocab
    first_pad = tokens.index("<|im_end|>") + 1
    assert tokens[first_pad:] == [f"[PAD{i}]" for i in range(first_pad, SMALL.vocab)]
    assert set(types[first_pad:]) == {5}  # UNUSED


@pytest.mark.parametrize("arch", ["qwen35moe", "qwen3next"])
def test_moe_archs(tmp_path, arch):
    path = write_sized(tmp_path / "moe.gguf", SMALL, "q8_0", arch=arch)
    cfg = hybrid_config(GgufFile(path))
    assert cfg.arch == arch and cfg.moe and (cfg.n_expert, cfg.n_ff_exp) == (4, 32)


def test_same_seed_same_bytes(tmp_path, files):
    again = write_sized(tmp_path / "again.gguf", SMALL, "q4_k")
    assert again.read_bytes() == files["q4_k"].read_bytes()
    other = write_sized(tmp_path / "other.gguf", SMALL, "q4_k", seed=1)
    assert other.stat().st_size == again.stat().st_size and other.read_bytes() != again.read_bytes()


def test_rows_must_hold_whole_blocks(tmp_path):
    with pytest.raises(ValueError, match="multiple of 256"):
        write_sized(tmp_path / "bad.gguf", dataclasses.replace(SMALL, hidden=288), "q4_k")
    assert not list(tmp_path.iterdir())


def test_matrices_are_streamed_in_chunks(monkeypatch):
    monkeypatch.setattr(sized_gguf, "CHUNK_BYTES", 4096)
    chunks = list(random_rows(MatPlan((100, 512)), Q.Q4_K, np.random.default_rng(0)))
    assert len(chunks) > 1 and max(c.nbytes for c in chunks) <= 4096
    assert sum(c.nbytes for c in chunks) == 100 * 2 * 144


def test_q4_k_m_ffn_down_blocks_as_llama_quantize():
    s = PRESETS["4b"]
    six = [i for i in range(s.layers) if sized_gguf.q4_k_m_type(f"blk.{i}.ffn_down.weight", s) == Q.Q6_K]
    assert six == [0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 28, 29, 30, 31]


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_sizes_match_their_names(preset):
    assert abs(n_params(PRESETS[preset]) / NOMINAL[preset] - 1) <= 0.15


@pytest.mark.slow
def test_135m_generates_with_the_cli(tmp_path):
    path = write_sized(tmp_path / "135m-f16.gguf", PRESETS["135m"], "f16")
    gdnc = Path(sys.executable).with_name("gdnc")
    done = subprocess.run([str(gdnc), "run", str(path), "-p", "hello", "-n", "4", "-t", "2"],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
