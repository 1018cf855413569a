"""The qwen hybrid's batch layout: its state pool tensors, the index inputs of one batch
(contract: ``gdnc.models.qwen_hybrid.graph``) and the memory a context takes."""

from __future__ import annotations

import math

import numpy as np

from gdnc.models.qwen_hybrid.config import HybridConfig
from gdnc.passes.composition import CU_SEQLENS
from gdnc.runtime.batch_plan import Limits, max_score_elements
from gdnc.runtime.state_pool import Entry, StatePool


def pool_shapes(cfg: HybridConfig, slots: int, n_ctx: int) -> dict[str, tuple[int, ...]]:
    """The tensors of a state pool (``StatePool``), by input name: ``ssm_state.l`` [P, HV, K, V],
    ``conv_state.l`` [P, C-1, channels] per recurrent layer; ``k_cache.l`` / ``v_cache.l``
    [P, n_ctx, n_kv, head_dim] per attention layer (P = ``slots``)."""
    shapes: dict[str, tuple[int, ...]] = {}
    for i, rec in enumerate(cfg.recurrent):
        if rec:
            shapes[f"ssm_state.{i}"] = (slots, cfg.n_v_heads, cfg.k_dim, cfg.v_dim)
            shapes[f"conv_state.{i}"] = (slots, cfg.conv_kernel - 1, cfg.conv_channels)
        else:
            for name in ("k_cache", "v_cache"):
                shapes[f"{name}.{i}"] = (slots, n_ctx, cfg.n_head_kv, cfg.head_dim)
    return shapes


def context_bytes(cfg: HybridConfig, slots: int, n_ctx: int, limits: Limits, kept_logits: int = 0
                  ) -> dict[str, int]:
    """Bytes (float32) for ``slots`` sequences of context ``n_ctx``: the pools, the largest run
    ``limits`` allow (a few live tensors as wide as the widest per-token layer; the attention
    scores, their mask and the keys and values gathered per sequence) and ``kept_logits`` rows
    of logits kept by the caller."""
    pools = sum(math.prod(s) for s in pool_shapes(cfg, slots, n_ctx).values())
    width = max(cfg.n_embd, cfg.conv_channels, cfg.n_ff, cfg.n_expert * cfg.n_ff_exp, cfg.n_vocab)
    run = 3 * slots * min(limits.chunk, n_ctx) * width
    if not all(cfg.recurrent):
        run += 3 * max_score_elements(slots, n_ctx, cfg.n_head, limits)
        run += 4 * slots * n_ctx * cfg.n_head * cfg.head_dim
    return {"KV cache and states": 4 * pools, "one batch": 4 * run,
            "logits": 4 * kept_logits * cfg.n_vocab}


def batch_feeds(cfg: HybridConfig, pool: StatePool, batch: list[Entry], all_logits: bool,
                key_bucket: int = 1) -> dict[str, np.ndarray]:
    """The index inputs of the batch graph (``graph.py``) for ``batch`` (contract there); the
    key dim S padded to a multiple of ``key_bucket`` (at most the context): runs of one shape
    for many steps (``batch_runner.KEY_BUCKET``). A batch of one token per sequence takes the
    short path (``decode_layout``; a replayed GPU step spends its host time here)."""
    slots = np.array([e.slot for e in batch], dtype=np.int64)
    past = np.array([pool.n_past[e.slot] for e in batch], dtype=np.int64)
    lengths = np.array([len(e.tokens) for e in batch], dtype=np.int64)
    if lengths.max() == 1:
        feeds = decode_layout(cfg.conv_kernel, np.array([e.tokens[0] for e in batch], dtype=np.int64),
                              past, slots)
    else:
        feeds = packed_layout(cfg.conv_kernel, [e.tokens for e in batch], past, slots, all_logits)
    seen = past + lengths
    keys = int(seen.max())
    # key s of sequence n is its cache position s (padding reads n's position 0, hidden: the
    # graph hides keys after a query's position)
    key_pos = np.arange(min(-(-keys // key_bucket) * key_bucket, max(pool.n_ctx, keys)))[None, :]  # [1, S]
    feeds["kv_read"] = slots[:, None] * pool.n_ctx + np.where(key_pos < seen[:, None], key_pos, 0)
    return feeds


def packed_layout(C: int, tokens: list[tuple[int, ...]], past: np.ndarray, slots: np.ndarray,
                  all_logits: bool) -> dict[str, np.ndarray]:
    """The index inputs but ``kv_read`` of sequences of ``tokens`` (any lengths >= 1) after
    ``past`` tokens in ``slots``, conv kernel ``C``."""
    N = len(tokens)
    lengths = [len(t) for t in tokens]
    cu = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    flat = np.concatenate([np.asarray(t, dtype=np.int64) for t in tokens])
    seq = np.repeat(np.arange(N), lengths)
    offset = np.arange(len(flat)) - cu[seq]  # j: index of each token within its sequence

    def conv_row(n: np.ndarray, p: np.ndarray) -> np.ndarray:
        """Row of [conv states (N*(C-1)); new inputs] holding input position p of sequence n."""
        return np.where(p >= 0, N * (C - 1) + cu[n] + p, n * (C - 1) + (C - 1) + p)

    taps = np.arange(C) - (C - 1)
    conv_rows = conv_row(seq[:, None], offset[:, None] + taps[None, :])
    last = np.arange(C - 1) - (C - 1)
    conv_state_rows = conv_row(np.arange(N)[:, None], np.asarray(lengths)[:, None] + last[None, :])
    positions = past[seq] + offset
    lens = np.asarray(lengths)
    # attention, padded per sequence: query j of n is token row cu[n] + j (padding repeats n's
    # last token)
    query = np.minimum(np.arange(max(lengths))[None, :], lens[:, None] - 1)  # [N, Lq]
    rows = np.arange(len(flat)) if all_logits else cu[1:] - 1
    return {
        "tokens": flat, "positions": positions, "state_slots": slots,
        "conv_rows": conv_rows.astype(np.int64), "conv_state_rows": conv_state_rows.astype(np.int64),
        "kv_write": np.stack([slots[seq], positions], 1),
        "q_rows": cu[:-1, None] + query,
        "o_rows": seq * max(lengths) + offset,
        "logit_rows": rows.astype(np.int64), CU_SEQLENS: cu,
    }


def decode_layout(C: int, tokens: np.ndarray, past: np.ndarray, slots: np.ndarray) -> dict[str, np.ndarray]:
    """``packed_layout`` of one token per sequence, in closed form: sequence n's conv window is
    its C-1 state rows then its token's row, its new conv state the window's last C-1 rows;
    every other index is n itself."""
    N = len(tokens)
    n = np.arange(N, dtype=np.int64)[:, None]
    states = n * (C - 1) + np.arange(C - 1, dtype=np.int64)[None, :]  # [N, C-1]
    new = N * (C - 1) + n  # [N, 1]: the row of n's token after every state row
    window = np.concatenate([states, new], 1)  # [N, C]
    return {
        "tokens": tokens, "positions": past, "state_slots": slots,
        "conv_rows": window, "conv_state_rows": np.ascontiguousarray(window[:, 1:]),
        "kv_write": np.stack([slots, past], 1), "q_rows": n, "o_rows": n[:, 0], "logit_rows": n[:, 0],
        CU_SEQLENS: np.arange(N + 1, dtype=np.int64),
    }
