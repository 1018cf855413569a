"""Hyper-parameters of a Gated-DeltaNet hybrid (qwen35, qwen35moe, qwen3next) from GGUF keys.

Key names and meanings follow llama.cpp (SPEC §4). Value-head order: qwen35* store value
heads tiled (head j uses key head j % H, ``head_map="tile"``), qwen3next grouped (j // (HV/H),
``"interleave"``).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import cast

from gdnc.errors import ModelLoadError
from gdnc.frontends.gguf_file import GgufFile
from gdnc.models.qwen_hybrid.family import FAMILY
from gdnc.models.registry import family_of

MOE_ARCHITECTURES = ("qwen35moe", "qwen3next")
BLOCK_TENSOR = re.compile(r"blk\.(\d+)\.")
# upper bounds far above any released model (heads <= 128, head dims <= 256, a delta-net state
# of 2^19 values, KV rows of 8192): a larger value is a broken file, refused before the state
# pools and caches are sized from it (block_count is also bounded by the blocks in the file)
MAX_HEADS, MAX_HEAD_DIM = 1 << 10, 1 << 10
MAX_STATE = 1 << 24  # HV * K * V, the delta-net state of one sequence in one layer
MAX_KV_ROW = 1 << 16  # head_count_kv * key_length, one position of one layer's KV cache
LIMITS = {
    "block_count": 1 << 12, "full_attention_interval": 1 << 12, "embedding_length": 1 << 16,
    "feed_forward_length": 1 << 20, "attention.head_count": MAX_HEADS,
    "attention.head_count_kv": MAX_HEADS, "attention.key_length": MAX_HEAD_DIM,
    "rope.dimension_count": MAX_HEAD_DIM, "ssm.conv_kernel": 1 << 6, "ssm.group_count": MAX_HEADS,
    "ssm.time_step_rank": MAX_HEADS, "ssm.state_size": MAX_HEAD_DIM,
    "ssm.inner_size": MAX_HEADS * MAX_HEAD_DIM, "expert_count": 1 << 10, "expert_used_count": 1 << 10,
    "expert_feed_forward_length": 1 << 20, "expert_shared_feed_forward_length": 1 << 20,
}


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
    """Read and check the hyper-parameters; ModelLoadError names what is wrong (first: an
    architecture outside this family, ``registry.family_of``).

    Every count is checked (positive, within ``LIMITS``, consistent with the others) and so are
    the shapes of the tensors that carry the sizes the runtime allocates from the config (state
    pools, KV caches, the vocabulary), before anything is sized from them."""
    if family_of(f) is not FAMILY:
        raise ModelLoadError(f"{f.path}: architecture {f.architecture!r} is not a {FAMILY.name} model")
    arch = f.architecture

    def count(key: str, default: object = ...) -> int:
        """Integer key ``arch.key`` in 1..LIMITS[key]."""
        value = cast(int, f.key(f"{arch}.{key}", int, default))
        if not 1 <= value <= LIMITS[key]:
            raise ModelLoadError(f"{f.path}: {arch}.{key} = {value} is outside 1..{LIMITS[key]}")
        return value

    def real(key: str, default: object = ...) -> float:
        """Float key ``arch.key``, finite and > 0."""
        value = cast(float, f.key(f"{arch}.{key}", float, default))
        if not 0 < value < math.inf:
            raise ModelLoadError(f"{f.path}: {arch}.{key} = {value} must be finite and > 0")
        return value

    n_layer = count("block_count")
    _check_blocks(f, n_layer)
    interval = count("full_attention_interval", 4)
    recurrent = tuple((i + 1) % interval != 0 for i in range(n_layer))
    listed = f.metadata.get(f"{arch}.attention.recurrent_layers")
    if isinstance(listed, list) and tuple(bool(x) for x in listed) != recurrent:
        raise ModelLoadError(f"{f.path}: attention.recurrent_layers {listed} disagrees with "
                             f"full_attention_interval {interval}")
    tokens = f.metadata.get("tokenizer.ggml.tokens")
    n_v_heads, inner = count("ssm.time_step_rank"), count("ssm.inner_size")
    if inner % n_v_heads:
        raise ModelLoadError(f"{f.path}: ssm.inner_size {inner} is not a multiple of "
                             f"ssm.time_step_rank {n_v_heads}")
    moe = arch in MOE_ARCHITECTURES
    cfg = HybridConfig(
        arch=arch, n_layer=n_layer, n_embd=count("embedding_length"),
        n_vocab=len(tokens) if isinstance(tokens, list) else 0,
        eps=real("attention.layer_norm_rms_epsilon"),
        n_head=count("attention.head_count"), n_head_kv=count("attention.head_count_kv"),
        head_dim=count("attention.key_length"), rope_dim=count("rope.dimension_count"),
        rope_base=real("rope.freq_base", 10000.0),
        conv_kernel=count("ssm.conv_kernel"), n_k_heads=count("ssm.group_count"),
        n_v_heads=n_v_heads, k_dim=count("ssm.state_size"), v_dim=inner // n_v_heads,
        recurrent=recurrent, moe=moe,
        n_ff=0 if moe else count("feed_forward_length"),
        n_expert=count("expert_count") if moe else 0,
        n_expert_used=count("expert_used_count") if moe else 0,
        n_ff_exp=count("expert_feed_forward_length") if moe else 0,
        n_ff_shexp=count("expert_shared_feed_forward_length") if moe else 0,
    )
    _check(f, cfg)
    _check_shapes(f, cfg)
    return cfg


def _check_blocks(f: GgufFile, n_layer: int) -> None:
    """The file holds tensors for every block 0 .. n_layer-1 (extra blocks are ignored)."""
    blocks = {int(m.group(1)) for name in f.tensor_names() if (m := BLOCK_TENSOR.match(name))}
    if n_layer > len(blocks):
        raise ModelLoadError(f"{f.path}: block_count {n_layer}, but the file holds tensors for "
                             f"{len(blocks)} block(s)")
    missing = sorted(set(range(n_layer)) - blocks)
    if missing:
        raise ModelLoadError(f"{f.path}: block_count {n_layer}, but the file holds no tensors "
                             f"for blk.{missing[0]}")


def _check(f: GgufFile, c: HybridConfig) -> None:
    problems = []
    if c.n_vocab <= 0:
        problems.append("tokenizer.ggml.tokens is missing or empty")
    if c.n_v_heads % c.n_k_heads:
        problems.append(f"ssm.time_step_rank {c.n_v_heads} is not a multiple of "
                        f"ssm.group_count {c.n_k_heads}")
    if c.n_head % c.n_head_kv:
        problems.append(f"head_count {c.n_head} is not a multiple of head_count_kv {c.n_head_kv}")
    if c.rope_dim % 2 or c.rope_dim > c.head_dim:
        problems.append(f"rope.dimension_count {c.rope_dim} must be even and <= {c.head_dim}")
    if c.v_dim > MAX_HEAD_DIM:
        problems.append(f"ssm.inner_size / ssm.time_step_rank = {c.v_dim} is more than {MAX_HEAD_DIM}")
    if c.n_v_heads * c.k_dim * c.v_dim > MAX_STATE:
        problems.append(f"a delta-net state of {c.n_v_heads} x {c.k_dim} x {c.v_dim} values is more "
                        f"than {MAX_STATE}")
    if c.n_head_kv * c.head_dim > MAX_KV_ROW:
        problems.append(f"a KV cache row of {c.n_head_kv} x {c.head_dim} values is more than "
                        f"{MAX_KV_ROW}")
    if c.n_expert_used > c.n_expert:
        problems.append(f"expert_used_count {c.n_expert_used} > expert_count {c.n_expert}")
    if problems:
        raise ModelLoadError(f"{f.path}: {problems[0]}")


def _check_shapes(f: GgufFile, c: HybridConfig) -> None:
    """The config against the shapes of the tensors that carry its sizes: the embedding (the
    vocabulary), one recurrent layer (state and conv pools), one attention layer (KV cache),
    the router of layer 0 (experts)."""
    vocabulary = f"{c.n_vocab} tokenizer.ggml.tokens and embedding_length {c.n_embd}"
    expect: list[tuple[str, tuple[int, ...], str]] = [
        ("token_embd.weight", (c.n_vocab, c.n_embd), vocabulary)]
    if True in c.recurrent:
        i = c.recurrent.index(True)
        expect += [
            (f"blk.{i}.ssm_conv1d.weight", (c.conv_channels, c.conv_kernel),
             "ssm.group_count, ssm.state_size, ssm.inner_size and ssm.conv_kernel"),
            (f"blk.{i}.ssm_a", (c.n_v_heads,), "ssm.time_step_rank"),
            (f"blk.{i}.ssm_norm.weight", (c.v_dim,), "ssm.inner_size / ssm.time_step_rank")]
    if False in c.recurrent:
        i = c.recurrent.index(False)
        expect += [
            (f"blk.{i}.attn_k_norm.weight", (c.head_dim,), "attention.key_length"),
            (f"blk.{i}.attn_k.weight", (c.n_head_kv * c.head_dim, c.n_embd),
             "attention.head_count_kv and key_length"),
            (f"blk.{i}.attn_q.weight", (2 * c.n_head * c.head_dim, c.n_embd),
             "attention.head_count and key_length")]
    if c.moe:
        expect.append(("blk.0.ffn_gate_inp.weight", (c.n_expert, c.n_embd), "expert_count"))
    for name, shape, keys in expect:
        actual = f.tensor_shape(name)
        if actual is None:
            raise ModelLoadError(f"{f.path}: tensor {name!r} is missing")
        if actual != shape:
            raise ModelLoadError(f"{f.path}: tensor {name!r} has shape {list(actual)}, expected "
                                 f"{list(shape)} from {keys}")
