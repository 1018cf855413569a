"""Write tiny random-weight Gated-DeltaNet hybrid GGUF files in llama.cpp's exact layout.

One file per architecture (``qwen35``, ``qwen35moe``, ``qwen3next``) and variant, named
``<arch>-tiny-<variant>.gguf``:

- ``f32``: every tensor F32, ``general.file_type = 0``;
- ``q8_0``: weight matrices Q8_0 (``gguf.quants.quantize``), ``general.file_type = 7``. As
  llama.cpp's converter does, 1-D tensors (norms, ``ssm_a``, ``ssm_dt.bias``), ``ssm_conv1d``
  and the MoE router ``ffn_gate_inp`` stay F32.

Shape: vocab 576 (512 BPE tokens, 3 control, 61 padding), hidden 64, 4 blocks
``[recurrent x3, full attention]``. Gated DeltaNet: 2 key heads, 4 value heads, head dim 16,
conv kernel 4. Attention: 4 query heads (with output gate), 2 KV heads, head dim 32, partial
RoPE over 8 dims, theta 1e4. FFN: dense SwiGLU ff 128 (``qwen35``), or 4 experts top-2 with
ff 32 plus a gated shared expert with ff 32 (``qwen35moe``, ``qwen3next``). Metadata keys, their
value types, tensor names, ggml shapes and tensor order are those of the llama.cpp-converted
fixtures in ``tests/fixtures/gguf`` (see its README for the weight-init scales used here).

The tokenizer is a byte-level BPE trained with ``tokenizers`` on Python's ``pydoc_data.topics``.
Same seed, same bytes. The command line is ``examples/make_gguf_models.py``.
"""

from __future__ import annotations

import json
import os
import pydoc_data.topics
import tempfile
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFValueType, GGUFWriter, size_label
from gguf.quants import quantize
from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers

from gdnc.frontends.gguf_tokenizer import SPLIT_PATTERNS

ARCHS = ("qwen35", "qwen35moe", "qwen3next")
VARIANTS = ("f32", "q8_0")
NAMES = {"qwen35": "Qwen35 Tiny", "qwen35moe": "Qwen35Moe Tiny", "qwen3next": "Qwen3Next Tiny"}
SEED_OFFSET = {"qwen35": 0, "qwen35moe": 100, "qwen3next": 200}
E, N_LAYER, INTERVAL, CTX, EPS = 64, 4, 4, 4096, 1e-6
H, HV, K, CONV = 2, 4, 16, 4  # GDN key heads, value heads, head dim (key = value), conv kernel
N_HEAD, N_HEAD_KV, HEAD_DIM, ROPE_DIM = 4, 2, 32, 8
N_FF, N_EXPERT, N_USED, N_FF_EXP, N_FF_SHEXP = 128, 4, 2, 32, 32
N_MERGES_VOCAB, VOCAB_MULTIPLE = 512, 64
SPECIAL = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
U32, I32, F32, BOOL, STR = (GGUFValueType.UINT32, GGUFValueType.INT32, GGUFValueType.FLOAT32,
                            GGUFValueType.BOOL, GGUFValueType.STRING)


def train_tokenizer() -> tuple[list[str], list[int], list[str]]:
    """(tokens, token types, merges) of a 512-token byte-level BPE, then control and pad tokens."""
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(SPLIT_PATTERNS["qwen35"]), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    trainer = trainers.BpeTrainer(vocab_size=N_MERGES_VOCAB, show_progress=False, special_tokens=[],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    topics = pydoc_data.topics.topics
    tok.train_from_iterator([topics[k] for k in sorted(topics)], trainer=trainer)
    model = json.loads(tok.to_str())["model"]
    tokens = [t for t, _ in sorted(model["vocab"].items(), key=lambda kv: kv[1])]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    types = [1] * len(tokens) + [3] * len(SPECIAL)  # NORMAL, CONTROL
    tokens += SPECIAL
    n_pad = -len(tokens) % VOCAB_MULTIPLE
    tokens += [f"[PAD{i}]" for i in range(len(tokens), len(tokens) + n_pad)]
    return tokens, types + [5] * n_pad, merges  # UNUSED


def make_tensors(arch: str, n_vocab: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Tensors in file order, numpy shapes (ggml ``ne`` reversed), llama.cpp's stored values."""
    moe = arch != "qwen35"

    def mat(*shape: int, std: float = 0.06) -> np.ndarray:
        return rng.normal(0.0, std, shape)

    def norm(n: int) -> np.ndarray:  # llama.cpp stores RMSNorm weights with the +1 added
        return 1.0 + rng.normal(0.0, 0.1, n)

    def ffn() -> dict[str, np.ndarray]:
        if not moe:
            return {"ffn_down": mat(E, N_FF), "ffn_gate": mat(N_FF, E), "ffn_up": mat(N_FF, E)}
        return {"ffn_down_exps": mat(N_EXPERT, E, N_FF_EXP), "ffn_gate_exps": mat(N_EXPERT, N_FF_EXP, E),
                "ffn_up_exps": mat(N_EXPERT, N_FF_EXP, E), "ffn_gate_inp": mat(N_EXPERT, E, std=0.3),
                "ffn_down_shexp": mat(E, N_FF_SHEXP), "ffn_gate_shexp": mat(N_FF_SHEXP, E),
                "ffn_up_shexp": mat(N_FF_SHEXP, E), "ffn_gate_inp_shexp": mat(1, E)}

    out = {"output.weight": mat(n_vocab, E, std=0.2), "token_embd.weight": mat(n_vocab, E, std=1.0)}
    channels = 2 * H * K + HV * K
    for i in range(N_LAYER):
        blk: dict[str, np.ndarray] = {"attn_norm": norm(E)}
        if (i + 1) % INTERVAL:  # Gated DeltaNet block
            dt = np.exp(rng.uniform(np.log(1e-3), np.log(1e-1), HV))
            blk |= {"ssm_a": -np.exp(np.log(rng.uniform(1.0, 16.0, HV))),
                    "ssm_conv1d": rng.uniform(-0.5, 0.5, (channels, CONV)),
                    "ssm_dt.bias": np.log(np.expm1(dt))}
            if arch == "qwen3next":
                blk["ssm_ba"] = mat(2 * HV, E)
            else:
                blk |= {"ssm_alpha": mat(HV, E), "ssm_beta": mat(HV, E)}
            blk |= {"attn_qkv": mat(channels, E), "attn_gate": mat(HV * K, E), "ssm_norm": norm(K),
                    "ssm_out": mat(E, HV * K), **ffn(), "post_attention_norm": norm(E)}
        else:  # full attention block
            blk |= {**ffn(), "post_attention_norm": norm(E), "attn_k_norm": norm(HEAD_DIM),
                    "attn_k": mat(N_HEAD_KV * HEAD_DIM, E), "attn_output": mat(E, N_HEAD * HEAD_DIM),
                    "attn_q_norm": norm(HEAD_DIM), "attn_q": mat(2 * N_HEAD * HEAD_DIM, E),
                    "attn_v": mat(N_HEAD_KV * HEAD_DIM, E)}
        for name, value in blk.items():
            suffix = "" if name in ("ssm_a", "ssm_dt.bias") else ".weight"
            out[f"blk.{i}.{name}{suffix}"] = value
    out["output_norm.weight"] = norm(E)
    return {name: np.ascontiguousarray(v, dtype=np.float32) for name, v in out.items()}


def keep_f32(name: str, t: np.ndarray) -> bool:
    """llama.cpp's converter keeps these F32 in a quantized file."""
    return (t.ndim < 2 or t.shape[-1] % 32 != 0 or ".ssm_conv1d." in name
            or name.endswith(".ffn_gate_inp.weight"))


FILE_TYPES = {"f32": 0, "f16": 1, "q8_0": 7}  # general.file_type (llama_ftype)


def metadata(arch: str, variant: str, tensors: dict[str, np.ndarray],
             tok: tuple[list[str], list[int], list[str]], dims: dict[str, int] | None = None,
             name: str | None = None) -> list[tuple[str, object, GGUFValueType]]:
    """(key, value, type) in the fixtures' key order; general.architecture comes from the writer.

    ``dims`` overrides this module's shape constants by name (``E``, ``N_LAYER``, ``N_FF``,
    ``K``, ...) for models of another size; ``name`` overrides ``general.name``.
    """
    d = {k: globals()[k] for k in ("E", "N_LAYER", "INTERVAL", "CTX", "EPS", "H", "HV", "K", "CONV",
                                   "N_HEAD", "N_HEAD_KV", "HEAD_DIM", "ROPE_DIM", "N_FF",
                                   "N_EXPERT", "N_USED", "N_FF_EXP", "N_FF_SHEXP")}
    d |= dims or {}
    E, N_LAYER, INTERVAL, CTX, EPS = d["E"], d["N_LAYER"], d["INTERVAL"], d["CTX"], d["EPS"]
    H, HV, K, CONV = d["H"], d["HV"], d["K"], d["CONV"]
    N_HEAD, N_HEAD_KV, HEAD_DIM, ROPE_DIM = d["N_HEAD"], d["N_HEAD_KV"], d["HEAD_DIM"], d["ROPE_DIM"]
    N_FF, N_EXPERT, N_USED = d["N_FF"], d["N_EXPERT"], d["N_USED"]
    N_FF_EXP, N_FF_SHEXP = d["N_FF_EXP"], d["N_FF_SHEXP"]
    moe = arch != "qwen35"
    expert = sum(t.size for n, t in tensors.items() if "_exps." in n) // N_EXPERT if moe else 0
    total = sum(t.size for t in tensors.values())
    label = size_label(total, total - N_EXPERT * expert, expert, N_EXPERT if moe else 0)
    a = arch + "."
    experts = [(a + "expert_count", N_EXPERT, U32), (a + "expert_used_count", N_USED, U32)]
    kv: list[tuple[str, object, GGUFValueType]] = [
        ("general.type", "model", STR), ("general.name", name or NAMES[arch], STR),
        ("general.size_label", label, STR), (a + "block_count", N_LAYER, U32),
        (a + "context_length", CTX, U32), (a + "embedding_length", E, U32),
        *([(a + "feed_forward_length", N_FF, U32)] if arch != "qwen35moe" else []),
        (a + "attention.head_count", N_HEAD, U32), (a + "attention.head_count_kv", N_HEAD_KV, U32),
        *([(a + "rope.dimension_sections", [2, 1, 1, 0], I32)] if arch != "qwen3next" else []),
        (a + "rope.freq_base", 10000.0, F32), (a + "attention.layer_norm_rms_epsilon", EPS, F32),
        *(experts if moe else []),
        (a + "attention.key_length", HEAD_DIM, U32), (a + "attention.value_length", HEAD_DIM, U32),
        ("general.file_type", FILE_TYPES[variant], U32),
        *([(a + "expert_feed_forward_length", N_FF_EXP, U32),
           (a + "expert_shared_feed_forward_length", N_FF_SHEXP, U32)] if moe else []),
        (a + "ssm.conv_kernel", CONV, U32), (a + "ssm.state_size", K, U32),
        (a + "ssm.group_count", H, U32), (a + "ssm.time_step_rank", HV, U32),
        (a + "ssm.inner_size", HV * K, U32),
        (a + "attention.recurrent_layers", [(i + 1) % INTERVAL != 0 for i in range(N_LAYER)], BOOL),
        (a + "full_attention_interval", INTERVAL, U32), (a + "rope.dimension_count", ROPE_DIM, U32),
        ("general.quantization_version", 2, U32),
        ("tokenizer.ggml.model", "gpt2", STR),
        ("tokenizer.ggml.pre", "qwen2" if arch == "qwen3next" else "qwen35", STR),
        ("tokenizer.ggml.tokens", tok[0], STR), ("tokenizer.ggml.token_type", tok[1], I32),
        ("tokenizer.ggml.merges", tok[2], STR),
        ("tokenizer.ggml.eos_token_id", tok[0].index("<|im_end|>"), U32),
        ("tokenizer.ggml.padding_token_id", tok[0].index("<|endoftext|>"), U32),
        ("tokenizer.ggml.add_bos_token", False, BOOL),
    ]
    return kv


def write_model(path: Path, arch: str, variant: str, tok: tuple[list[str], list[int], list[str]],
                seed: int = 0) -> Path:
    """Write one model to ``path`` atomically (temp file in the same folder, then rename)."""
    tensors = make_tensors(arch, len(tok[0]), np.random.default_rng(seed + SEED_OFFSET[arch]))
    return write_gguf(path, arch, variant, metadata(arch, variant, tensors, tok), tensors)


def write_gguf(path: Path, arch: str, variant: str, kv: list[tuple[str, object, GGUFValueType]],
               tensors: dict[str, np.ndarray]) -> Path:
    """Write metadata ``kv`` and F32 ``tensors`` (stored as ``variant``) to ``path`` atomically.

    ``f16``/``q8_0``: 2-D weights become F16/Q8_0; what ``keep_f32`` names stays F32, as in
    llama.cpp's converter.
    """
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o644)  # mkstemp makes it private; a model file is normally world-readable
    try:
        w = GGUFWriter(tmp, arch)
        for key, value, vtype in kv:
            if isinstance(value, list):
                w.add_key_value(key, value, GGUFValueType.ARRAY, sub_type=vtype)
            else:
                w.add_key_value(key, value, vtype)
        for name, t in tensors.items():
            if variant == "f32" or keep_f32(name, t):
                w.add_tensor(name, t)
            elif variant == "f16":
                w.add_tensor(name, t.astype(np.float16))
            else:
                w.add_tensor(name, quantize(t, GGMLQuantizationType.Q8_0),
                             raw_dtype=GGMLQuantizationType.Q8_0)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def write_models(out_dir: Path, archs=ARCHS, variants=VARIANTS, seed: int = 0) -> list[Path]:
    """Write ``<arch>-tiny-<variant>.gguf`` for every arch and variant; returns the paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in (*archs, *variants):
        if name not in ARCHS + VARIANTS:
            raise ValueError(f"unknown architecture or variant {name!r}")
    tok = train_tokenizer()
    return [write_model(out_dir / f"{arch}-tiny-{variant}.gguf", arch, variant, tok, seed)
            for arch in archs for variant in variants]

