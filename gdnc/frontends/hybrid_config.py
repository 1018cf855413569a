"""Hyper-parameters of a Gated-DeltaNet hybrid (qwen35, qwen35moe, qwen3next) from GGUF keys.

Key names and meanings follow llama.cpp (SPEC §4). Value-head order: qwen35* store value
heads tiled (head j uses key head j % H, ``head_map="tile"``), qwen3next grouped (j // (HV/H),
``"interleave"``).
"""

from __future__ import annotations

from dataclasses import dataclass

from gdnc.errors import ModelLoadError
from gdnc.frontends.gguf_file import GgufFile

ARCHITECTURES = ("qwen35", "qwen35moe", "qwen3next")
MOE_ARCHITECTURES = ("qwen35moe", "qwen3next")


@dataclass(frozen=True)
class HybridConfig:
    arch: str
    n_layer: int
    n_embd: int
    n_vocab: int
    eps: float
    # full attention
    n_head: int
    n_head_kv: int
    head_dim: int
    rope_dim: int
    rope_base: float
    # gated delta net
    conv_kernel: int
    n_k_heads: int  # H
    n_v_heads: int  # HV
    k_dim: int  # K (= V)
    v_dim: int
    recurrent: tuple[bool, ...]
    # feed-forward
    moe: bool
    n_ff: int
    n_expert: int
    n_expert_used: int
    n_ff_exp: int
    n_ff_shexp: int

    @property
    def head_map(self) -> str:
        return "interleave" if self.arch == "qwen3next" else "tile"

    @property
    def conv_channels(self) -> int:
        return 2 * self.n_k_heads * self.k_dim + self.n_v_heads * self.v_dim


def hybrid_config(f: GgufFile) -> HybridConfig:
    """Read and check the hyper-parameters; ModelLoadError names what is wrong."""
    arch = f.architecture
    if arch not in ARCHITECTURES:
        raise ModelLoadError(f"{f.path}: architecture {arch!r} is not supported "
                             f"(supported: {', '.join(ARCHITECTURES)})")

    def num(key: str, kind: type = int, default: object = ...) -> int:
        return f.key(f"{arch}.{key}", kind, default)  # type: ignore[return-value]

    n_layer = num("block_count")
    interval = num("full_attention_interval", int, 4)
    if interval <= 0 or n_layer <= 0:
        raise ModelLoadError(f"{f.path}: block_count {n_layer} / full_attention_interval "
                             f"{interval} must be positive")
    recurrent = tuple((i + 1) % interval != 0 for i in range(n_layer))
    listed = f.metadata.get(f"{arch}.attention.recurrent_layers")
    if isinstance(listed, list) and tuple(bool(x) for x in listed) != recurrent:
        raise ModelLoadError(f"{f.path}: attention.recurrent_layers {listed} disagrees with "
                             f"full_attention_interval {interval}")
    tokens = f.metadata.get("tokenizer.ggml.tokens")
    embd = f.key(f"{arch}.embedding_length", int)
    n_vocab = len(tokens) if isinstance(tokens, list) else 0
    moe = arch in MOE_ARCHITECTURES
    cfg = HybridConfig(
        arch=arch, n_layer=n_layer, n_embd=embd,  # type: ignore[arg-type]
        n_vocab=n_vocab, eps=float(num("attention.layer_norm_rms_epsilon", float)),
        n_head=num("attention.head_count"), n_head_kv=num("attention.head_count_kv"),
        head_dim=num("attention.key_length"), rope_dim=num("rope.dimension_count"),
        rope_base=float(num("rope.freq_base", float, 10000.0)),
        conv_kernel=num("ssm.conv_kernel"), n_k_heads=num("ssm.group_count"),
        n_v_heads=num("ssm.time_step_rank"), k_dim=num("ssm.state_size"),
        v_dim=num("ssm.inner_size") // max(num("ssm.time_step_rank"), 1),
        recurrent=recurrent, moe=moe,
        n_ff=num("feed_forward_length", int, 0),
        n_expert=num("expert_count", int, 0) if moe else 0,
        n_expert_used=num("expert_used_count", int, 0) if moe else 0,
        n_ff_exp=num("expert_feed_forward_length", int, 0) if moe else 0,
        n_ff_shexp=num("expert_shared_feed_forward_length", int, 0) if moe else 0,
    )
    _check(f, cfg)
    return cfg


def _check(f: GgufFile, c: HybridConfig) -> None:
    problems = []
    if c.n_vocab <= 0:
        problems.append("tokenizer.ggml.tokens is missing or empty")
    if c.n_k_heads <= 0 or c.n_v_heads % c.n_k_heads:
        problems.append(f"ssm.time_step_rank {c.n_v_heads} is not a multiple of "
                        f"ssm.group_count {c.n_k_heads}")
    if c.n_head_kv <= 0 or c.n_head % c.n_head_kv:
        problems.append(f"head_count {c.n_head} is not a multiple of head_count_kv {c.n_head_kv}")
    if c.rope_dim % 2 or not 0 < c.rope_dim <= c.head_dim:
        problems.append(f"rope.dimension_count {c.rope_dim} must be even and <= {c.head_dim}")
    if c.conv_kernel < 1:
        problems.append(f"ssm.conv_kernel {c.conv_kernel} must be >= 1")
    if c.moe and not (0 < c.n_expert_used <= c.n_expert):
        problems.append(f"expert_used_count {c.n_expert_used} / expert_count {c.n_expert}")
    if not c.moe and c.n_ff <= 0:
        problems.append("feed_forward_length is missing")
    if problems:
        raise ModelLoadError(f"{f.path}: {problems[0]}")
