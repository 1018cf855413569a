"""The tiny GGUF models of ``corpus/tiny_gguf.py`` (``examples/make_gguf_models.py``) load in
gdnc's GGUF frontend.

For each architecture and variant: config, every tensor, Q8_0 error against the F32 variant,
byte-identical rewrites, the tokenizer, and the unfused graph.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from corpus import tiny_gguf
from corpus.tiny_gguf import ARCHS, VARIANTS
from gdnc.frontends.gguf_file import GgufFile
from gdnc.frontends.gguf_tokenizer import GgufTokenizer
from gdnc.ir.graph import Model
from gdnc.models.qwen_hybrid.config import hybrid_config
from gdnc.models.qwen_hybrid.graph import Composition, build_unfused


@pytest.fixture(scope="module")
def script():
    return tiny_gguf


@pytest.fixture(scope="module")
def models(script, tmp_path_factory) -> dict[tuple[str, str], Path]:
    paths = script.write_models(tmp_path_factory.mktemp("tiny_gguf"))
    return {(p.name.split("-")[0], p.name.split("-")[-1].removesuffix(".gguf")): p for p in paths}


def test_writes_every_file(models):
    assert sorted(models) == sorted((a, v) for a in ARCHS for v in VARIANTS)
    for (arch, variant), p in models.items():
        assert p.name == f"{arch}-tiny-{variant}.gguf"
    assert not [p for p in next(iter(models.values())).parent.iterdir() if p.suffix == ".tmp"]


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("arch", ARCHS)
def test_config(models, arch, variant):
    f = GgufFile(models[arch, variant])
    cfg = hybrid_config(f)
    assert cfg.arch == arch
    assert cfg.n_layer == 4 and cfg.n_embd == 64
    assert cfg.recurrent == (True, True, True, False)
    assert cfg.n_k_heads == 2 and cfg.n_v_heads == 2 * cfg.n_k_heads
    assert cfg.k_dim == cfg.v_dim == 16 and cfg.conv_kernel == 4
    assert (cfg.n_head, cfg.n_head_kv, cfg.head_dim, cfg.rope_dim) == (4, 2, 32, 8)
    assert cfg.moe == (arch != "qwen35")
    if cfg.moe:
        assert (cfg.n_expert, cfg.n_expert_used, cfg.n_ff_exp, cfg.n_ff_shexp) == (4, 2, 32, 32)
    else:
        assert cfg.n_ff == 128
    assert f.key("general.file_type", int) == (0 if variant == "f32" else 7)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("arch", ARCHS)
def test_every_tensor_dequantizes(models, arch, variant):
    f = GgufFile(models[arch, variant])
    n_vocab = hybrid_config(f).n_vocab
    assert f.tensor("token_embd.weight", (n_vocab, 64)).shape == (n_vocab, 64)
    for name in f.tensor_names():
        t = f.tensor(name)
        assert t.dtype == np.float32 and np.isfinite(t).all(), name
    types = set(f.tensor_types().values())
    assert types == ({"F32"} if variant == "f32" else {"F32", "Q8_0"})


@pytest.mark.parametrize("arch", ARCHS)
def test_q8_0_is_close_to_f32(models, arch):
    f32, q8 = GgufFile(models[arch, "f32"]), GgufFile(models[arch, "q8_0"])
    assert f32.tensor_names() == q8.tensor_names()
    types = q8.tensor_types()
    assert types["token_embd.weight"] == types["output.weight"] == "Q8_0"
    assert types["blk.0.attn_qkv.weight"] == types["blk.3.attn_q.weight"] == "Q8_0"
    assert types["blk.0.ssm_conv1d.weight"] == types["blk.0.ssm_a"] == "F32"
    for name in f32.tensor_names():
        want, got = f32.tensor(name), q8.tensor(name)
        assert got.shape == want.shape, name
        if types[name] == "F32":
            np.testing.assert_array_equal(got, want, err_msg=name)
        else:
            assert np.abs(got - want).max() <= 0.01 * np.abs(want).max(), name


def test_writing_twice_is_byte_identical(script, models, tmp_path):
    again = script.write_models(tmp_path)
    assert len(again) == len(models)
    for p in again:
        first = models[p.name.split("-")[0], p.name.split("-")[-1].removesuffix(".gguf")]
        assert p.read_bytes() == first.read_bytes(), p.name


def test_seed_changes_weights(script, models, tmp_path):
    (p,) = script.write_models(tmp_path, archs=("qwen35",), variants=("f32",), seed=1)
    assert p.read_bytes() != models["qwen35", "f32"].read_bytes()


@pytest.mark.parametrize("arch", ARCHS)
def test_tokenizer_round_trips(models, arch):
    meta = GgufFile(models[arch, "q8_0"]).metadata
    tok = GgufTokenizer.from_metadata(meta)
    assert tok.vocab_size == len(meta["tokenizer.ggml.tokens"])
    text = "The quick brown fox jumps over the lazy dog, then returns 42 objects.\n"
    ids = tok.encode(text)
    assert len(ids) < len(text.encode())  # the merges are used
    assert tok.decode(ids) == text
    chat = "<|im_start|>user\nhello<|im_end|>"
    ids = tok.encode(chat)
    assert ids[0] == meta["tokenizer.ggml.tokens"].index("<|im_start|>")  # one CONTROL id
    assert ids[-1] == tok.eos_id
    assert tok.decode(ids) == chat


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("arch", ARCHS)
def test_unfused_graph_builds(models, arch, variant):
    # the graph's Composition is being changed to per-sequence lengths; accept either form
    comp = Composition.of(3) if hasattr(Composition, "of") else Composition(3)
    model = build_unfused(GgufFile(models[arch, variant]), comp)
    assert isinstance(model, Model)
