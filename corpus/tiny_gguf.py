"""Write tiny random-weight Gated-DeltaNet hybrid GGUF files in llama.cpp's exact layout.

One file per architecture (``qwen35``, ``qwen35moe``, ``qwen3next``) and variant, named
``<arch>-tiny-<variant>.gguf``:

- ``f32``: every tensor F32, ``general.file_type = 0``;
- ``q8_0``: weight matrices Q8_0 (``gguf.quants.quantize``), ``general.file_type = 7``. As
  llama.cpp's converter does, 1-D tensors (norms, ``ssm_a``, ``ssm_dt.bias``), ``ssm_conv1d``
  and the MoE router ``ffn_gate_inp`` stay F32.

Shape (``TINY``): vocab 576 (512 BPE tokens, 3 control, 61 padding), hidden 64, 4 blocks
``[recurrent x3, full attention]``. Gated DeltaNet: 2 key heads, 4 value heads, head dim 16,
conv kernel 4. Attention: 4 query heads (with output gate), 2 KV heads, head dim 32, partial
RoPE over 8 dims, theta 1e4. FFN: dense SwiGLU ff 128 (``qwen35``), or 4 experts top-2 with
ff 32 plus a gated shared expert with ff 32 (``qwen35moe``, ``qwen3next``). Metadata keys, their
value types, tensor names, ggml shapes and tensor order are those of the llama.cpp-converted
fixtures in ``tests/fixtures/gguf`` (see its README for the weight-init scales used here).

The tokenizer is a byte-level BPE trained with ``tokenizers`` on Python's ``pydoc_data.topics``.
Same seed, same bytes. The command line is ``examples/make_gguf_models.py``.

The pieces are shared with :mod:`corpus.sized_gguf` (the same layout at any size): the
:class:`Shape` of a model, :func:`layout` (its tensors in file order, drawn by an init object),
:func:`metadata`, :func:`stored_type` and :func:`write_stored`, which streams the tensors'
bytes to the file one chunk at a time.
"""

from __future__ import annotations

import json
import os
import pydoc_data.topics
import tempfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from math import prod
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFValueType, GGUFWriter, size_label
from gguf.quants import quant_shape_to_byte_shape, quantize
from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers

from gdnc.frontends.gguf_tokenizer import SPLIT_PATTERNS

ARCHS = ("qwen35", "qwen35moe", "qwen3next")
VARIANTS = ("f32", "q8_0")
NAMES = {"qwen35": "Qwen35 Tiny", "qwen35moe": "Qwen35Moe Tiny", "qwen3next": "Qwen3Next Tiny"}
SEED_OFFSET = {"qwen35": 0, "qwen35moe": 100, "qwen3next": 200}
N_MERGES_VOCAB = 512
SPECIAL = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
U32, I32, F32, BOOL, STR = (GGUFValueType.UINT32, GGUFValueType.INT32, GGUFValueType.FLOAT32,
                            GGUFValueType.BOOL, GGUFValueType.STRING)
Q = GGMLQuantizationType
FILE_TYPES = {"f32": 0, "f16": 1, "q8_0": 7, "q4_k": 15}  # general.file_type (llama_ftype; 15: Q4_K_M)
MATRIX_TYPES = {"f32": Q.F32, "f16": Q.F16, "q8_0": Q.Q8_0, "q4_k": Q.Q4_K}  # a variant's weight type
Tok = tuple[list[str], list[int], list[str]]  # tokens, token types, merges


@dataclass(frozen=True)
class Shape:
    """A hybrid model's dimensions (GGUF key in brackets, without the architecture prefix).

    Block ``i`` is full attention when ``(i + 1) % interval == 0``, else Gated DeltaNet.
    ``tied``: no ``output.weight``; the logits use ``token_embd.weight`` (as Qwen3.5's small
    models). The MoE fields apply to ``qwen35moe`` / ``qwen3next`` only.
    """

    hidden: int  # [embedding_length]
    layers: int  # [block_count]
    interval: int  # [full_attention_interval]
    k_heads: int  # Gated DeltaNet key heads [ssm.group_count]
    v_heads: int  # Gated DeltaNet value heads [ssm.time_step_rank]
    ssm_head_dim: int  # Gated DeltaNet key = value head dim [ssm.state_size]
    attn_heads: int  # [attention.head_count]
    attn_kv_heads: int  # [attention.head_count_kv]
    attn_head_dim: int  # [attention.key_length] = [attention.value_length]
    rope_dim: int  # rotated dims of an attention head [rope.dimension_count]
    ffn: int  # dense SwiGLU width [feed_forward_length]
    vocab: int  # tokens, padded with UNUSED tokens past the tokenizer's own
    conv: int = 4  # [ssm.conv_kernel]
    ctx: int = 4096  # [context_length]
    eps: float = 1e-6  # [attention.layer_norm_rms_epsilon]
    rope_theta: float = 10000.0  # [rope.freq_base]
    experts: int = 4  # [expert_count]
    experts_used: int = 2  # [expert_used_count]
    ffn_expert: int = 32  # [expert_feed_forward_length]
    ffn_shexp: int = 32  # [expert_shared_feed_forward_length]
    tied: bool = False

    @property
    def channels(self) -> int:
        """The q | k | v channels of ``attn_qkv`` and ``ssm_conv1d``."""
        return (2 * self.k_heads + self.v_heads) * self.ssm_head_dim

    @property
    def recurrent(self) -> list[bool]:
        """Per block: Gated DeltaNet (True) or full attention."""
        return [(i + 1) % self.interval != 0 for i in range(self.layers)]

    @property
    def rope_sections(self) -> list[int]:
        """``rope.dimension_sections``: the ``rope_dim / 2`` rotated pairs split over 3 sections,
        the remainder to the first ones (Qwen3.5: 64 dims -> [11, 11, 10, 0]), then a 0."""
        base, rem = divmod(self.rope_dim // 2, 3)
        return [base + (i < rem) for i in range(3)] + [0]

    def with_dims(self, dims: Mapping[str, float]) -> Shape:
        """This shape with ``dims`` keyed by the names of the former module constants (``E``,
        ``N_LAYER``, ``N_FF``, ... as ``examples/train_tiny.py`` gives them) replaced."""
        return replace(self, **{LEGACY_DIMS[k]: v for k, v in dims.items()})


LEGACY_DIMS = {"E": "hidden", "N_LAYER": "layers", "INTERVAL": "interval", "CTX": "ctx", "EPS": "eps",
               "H": "k_heads", "HV": "v_heads", "K": "ssm_head_dim", "CONV": "conv",
               "N_HEAD": "attn_heads", "N_HEAD_KV": "attn_kv_heads", "HEAD_DIM": "attn_head_dim",
               "ROPE_DIM": "rope_dim", "N_FF": "ffn", "N_EXPERT": "experts", "N_USED": "experts_used",
               "N_FF_EXP": "ffn_expert", "N_FF_SHEXP": "ffn_shexp"}
TINY = Shape(hidden=64, layers=4, interval=4, k_heads=2, v_heads=4, ssm_head_dim=16, attn_heads=4,
             attn_kv_heads=2, attn_head_dim=32, rope_dim=8, ffn=128, vocab=576)


def train_tokenizer(n_vocab: int = TINY.vocab) -> Tok:
    """(tokens, token types, merges) of a 512-token byte-level BPE, then control tokens, then
    ``[PAD<id>]`` tokens (UNUSED) up to ``n_vocab``; ValueError when ``n_vocab`` is too small."""
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
    n_pad = n_vocab - len(tokens)
    if n_pad < 0:
        raise ValueError(f"a vocab of {n_vocab} is smaller than the tokenizer's {len(tokens)} tokens")
    tokens += [f"[PAD{i}]" for i in range(len(tokens), n_vocab)]
    return tokens, types + [5] * n_pad, merges  # UNUSED


class RandomInit:
    """The tiny models' random weights (float64 numpy arrays), drawn from ``rng`` in call order;
    the scales are the fixtures' (tests/fixtures/gguf/README.md), as llama.cpp stores them."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng

    def mat(self, *shape: int, std: float = 0.06) -> np.ndarray:
        return self.rng.normal(0.0, std, shape)

    def norm(self, n: int) -> np.ndarray:
        """An RMSNorm weight: llama.cpp stores it with the +1 added."""
        return 1.0 + self.rng.normal(0.0, 0.1, n)

    def dt_bias(self, n: int) -> np.ndarray:
        """softplus⁻¹(dt), dt log-uniform in [1e-3, 1e-1]."""
        dt = np.exp(self.rng.uniform(np.log(1e-3), np.log(1e-1), n))
        return np.log(np.expm1(dt))

    def ssm_a(self, n: int) -> np.ndarray:
        """-exp(A_log), A_log = log U(1, 16)."""
        return -np.exp(np.log(self.rng.uniform(1.0, 16.0, n)))

    def conv(self, channels: int, kernel: int) -> np.ndarray:
        return self.rng.uniform(-0.5, 0.5, (channels, kernel))


def layout(arch: str, s: Shape, init: RandomInit) -> dict:
    """Every tensor of an ``arch`` model of shape ``s`` in file order: name -> what ``init``
    returns for it (its numpy shape is the ggml ``ne`` reversed)."""
    moe = arch != "qwen35"
    E, HV, K = s.hidden, s.v_heads, s.ssm_head_dim
    nh, nkv, hd = s.attn_heads, s.attn_kv_heads, s.attn_head_dim

    def ffn() -> dict:
        if not moe:
            return {"ffn_down": init.mat(E, s.ffn), "ffn_gate": init.mat(s.ffn, E),
                    "ffn_up": init.mat(s.ffn, E)}
        n, ff, sh = s.experts, s.ffn_expert, s.ffn_shexp
        return {"ffn_down_exps": init.mat(n, E, ff), "ffn_gate_exps": init.mat(n, ff, E),
                "ffn_up_exps": init.mat(n, ff, E), "ffn_gate_inp": init.mat(n, E, std=0.3),
                "ffn_down_shexp": init.mat(E, sh), "ffn_gate_shexp": init.mat(sh, E),
                "ffn_up_shexp": init.mat(sh, E), "ffn_gate_inp_shexp": init.mat(1, E)}

    out = {} if s.tied else {"output.weight": init.mat(s.vocab, E, std=0.2)}
    out["token_embd.weight"] = init.mat(s.vocab, E, std=1.0)
    for i, recurrent in enumerate(s.recurrent):
        blk = {"attn_norm": init.norm(E)}
        if recurrent:  # Gated DeltaNet block
            dt_bias = init.dt_bias(HV)
            blk |= {"ssm_a": init.ssm_a(HV), "ssm_conv1d": init.conv(s.channels, s.conv),
                    "ssm_dt.bias": dt_bias}
            if arch == "qwen3next":
                blk["ssm_ba"] = init.mat(2 * HV, E)
            else:
                blk |= {"ssm_alpha": init.mat(HV, E), "ssm_beta": init.mat(HV, E)}
            blk |= {"attn_qkv": init.mat(s.channels, E), "attn_gate": init.mat(HV * K, E),
                    "ssm_norm": init.norm(K), "ssm_out": init.mat(E, HV * K), **ffn(),
                    "post_attention_norm": init.norm(E)}
        else:  # full attention block
            blk |= {**ffn(), "post_attention_norm": init.norm(E), "attn_k_norm": init.norm(hd),
                    "attn_k": init.mat(nkv * hd, E), "attn_output": init.mat(E, nh * hd),
                    "attn_q_norm": init.norm(hd), "attn_q": init.mat(2 * nh * hd, E),
                    "attn_v": init.mat(nkv * hd, E)}
        for name, value in blk.items():
            suffix = "" if name in ("ssm_a", "ssm_dt.bias") else ".weight"
            out[f"blk.{i}.{name}{suffix}"] = value
    out["output_norm.weight"] = init.norm(E)
    return out


def make_tensors(arch: str, s: Shape, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """The tensors of :func:`layout` drawn by :class:`RandomInit`, as float32 arrays."""
    return {name: np.ascontiguousarray(v, dtype=np.float32)
            for name, v in layout(arch, s, RandomInit(rng)).items()}


def keep_f32(name: str, t) -> bool:
    """llama.cpp's converter keeps these F32 in a quantized file (``t``: anything with ``ndim``
    and ``shape``, numpy's order)."""
    return (t.ndim < 2 or t.shape[-1] % 32 != 0 or ".ssm_conv1d." in name
            or name.endswith(".ffn_gate_inp.weight"))


def stored_type(name: str, t, variant: str) -> GGMLQuantizationType:
    """The type a ``variant`` file stores tensor ``name`` in: F32 where :func:`keep_f32` says,
    else the variant's ``MATRIX_TYPES`` entry."""
    return Q.F32 if keep_f32(name, t) else MATRIX_TYPES[variant]


def metadata(arch: str, variant: str, tensors: Mapping[str, object], tok: Tok,
             dims: Shape | Mapping[str, float] | None = None,
             name: str | None = None) -> list[tuple[str, object, GGUFValueType]]:
    """(key, value, type) in the fixtures' key order; general.architecture comes from the writer.

    ``tensors``: name -> anything with ``size`` (the parameter counts of ``general.size_label``).
    ``dims``: the model's :class:`Shape` (default ``TINY``), or overrides of ``TINY`` by the
    former constant names (:meth:`Shape.with_dims`); ``name`` overrides ``general.name``.
    """
    s = dims if isinstance(dims, Shape) else TINY.with_dims(dims or {})
    moe = arch != "qwen35"
    expert = sum(t.size for n, t in tensors.items() if "_exps." in n) // s.experts if moe else 0
    total = sum(t.size for t in tensors.values())
    label = size_label(total, total - s.experts * expert, expert, s.experts if moe else 0)
    a = arch + "."
    experts = [(a + "expert_count", s.experts, U32), (a + "expert_used_count", s.experts_used, U32)]
    kv: list[tuple[str, object, GGUFValueType]] = [
        ("general.type", "model", STR), ("general.name", name or NAMES[arch], STR),
        ("general.size_label", label, STR), (a + "block_count", s.layers, U32),
        (a + "context_length", s.ctx, U32), (a + "embedding_length", s.hidden, U32),
        *([(a + "feed_forward_length", s.ffn, U32)] if arch != "qwen35moe" else []),
        (a + "attention.head_count", s.attn_heads, U32),
        (a + "attention.head_count_kv", s.attn_kv_heads, U32),
        *([(a + "rope.dimension_sections", s.rope_sections, I32)] if arch != "qwen3next" else []),
        (a + "rope.freq_base", s.rope_theta, F32), (a + "attention.layer_norm_rms_epsilon", s.eps, F32),
        *(experts if moe else []),
        (a + "attention.key_length", s.attn_head_dim, U32),
        (a + "attention.value_length", s.attn_head_dim, U32),
        ("general.file_type", FILE_TYPES[variant], U32),
        *([(a + "expert_feed_forward_length", s.ffn_expert, U32),
           (a + "expert_shared_feed_forward_length", s.ffn_shexp, U32)] if moe else []),
        (a + "ssm.conv_kernel", s.conv, U32), (a + "ssm.state_size", s.ssm_head_dim, U32),
        (a + "ssm.group_count", s.k_heads, U32), (a + "ssm.time_step_rank", s.v_heads, U32),
        (a + "ssm.inner_size", s.v_heads * s.ssm_head_dim, U32),
        (a + "attention.recurrent_layers", s.recurrent, BOOL),
        (a + "full_attention_interval", s.interval, U32), (a + "rope.dimension_count", s.rope_dim, U32),
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


@dataclass(frozen=True)
class StoredTensor:
    """One tensor as a file stores it: ``shape`` in numpy's order (ggml ``ne`` reversed), ggml
    type ``qtype``, and ``chunks()``: its bytes in file order as arrays (``nbytes`` in all)."""

    name: str
    shape: tuple[int, ...]
    qtype: GGMLQuantizationType
    chunks: Callable[[], Iterable[np.ndarray]]

    @property
    def nbytes(self) -> int:
        return prod(quant_shape_to_byte_shape(self.shape, self.qtype))


def write_stored(path: Path, arch: str, kv: list[tuple[str, object, GGUFValueType]],
                 tensors: list[StoredTensor]) -> Path:
    """Write metadata ``kv`` and ``tensors`` to ``path`` atomically (a temp file in the same
    folder, then a rename), streaming: one chunk of one tensor in memory at a time. The bytes
    are those of ``GGUFWriter.write_tensors_to_file`` (each tensor aligned and padded)."""
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
        for t in tensors:
            w.add_tensor_info(t.name, t.shape, np.dtype(np.float32), t.nbytes, raw_dtype=t.qtype)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        fout = w.fout[0]
        for t in tensors:
            w.write_padding(fout, fout.tell())
            written = 0
            for chunk in t.chunks():
                chunk.tofile(fout)
                written += chunk.nbytes
            if written != t.nbytes:
                raise AssertionError(f"{t.name}: wrote {written} bytes, its info says {t.nbytes}")
            w.write_padding(fout, written)
        w.close()
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def write_gguf(path: Path, arch: str, variant: str, kv: list[tuple[str, object, GGUFValueType]],
               tensors: dict[str, np.ndarray]) -> Path:
    """Write metadata ``kv`` and F32 ``tensors`` (stored as ``variant``: see
    :func:`stored_type`; ``gguf.quants.quantize`` converts) to ``path`` atomically."""
    stored = []
    for name, t in tensors.items():
        qtype = stored_type(name, t, variant)
        data = quantize(t, qtype)
        stored.append(StoredTensor(name, t.shape, qtype, lambda data=data: (data,)))
    return write_stored(path, arch, kv, stored)


def write_model(path: Path, arch: str, variant: str, tok: Tok, seed: int = 0) -> Path:
    """Write one tiny model to ``path`` atomically."""
    tensors = make_tensors(arch, replace(TINY, vocab=len(tok[0])),
                           np.random.default_rng(seed + SEED_OFFSET[arch]))
    return write_gguf(path, arch, variant, metadata(arch, variant, tensors, tok), tensors)


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
