"""Run a GGUF hybrid model on batches of sequences that live in slots of a state pool.

``HybridModel`` owns the graphs: the fused one is built ONCE (the fusion pass on a template
batch, its sequence layout lifted to an input) and serves every batch; unfused graphs depend on the
batch's token counts and are built per composition, kept in an LRU cache. ``StatePool``
owns the tensors that outlive a call (delta-net states, conv states, KV caches: one slot
per sequence) and the slot allocator. ``HybridModel.forward(pool, batch)`` runs one mixed
prefill/decode batch: it splits the batch into runs of bounded size (``batch_plan``: long
prompts go in chunks), computes each run's index inputs of ``hybrid_graph`` and swaps the
updated pools in. ``new_pool`` refuses, before allocating, a context whose pools and runs need
more memory than the device has available (``memory``), and warns of one beyond the context
the model was trained on (as llama.cpp does).
"""

from __future__ import annotations

import math
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
import torch

from gdnc.errors import GdncWarning, InputError, RewriteError
from gdnc.frontends.gguf_file import GgufFile
from gdnc.ir.graph import Model
from gdnc.models.qwen_hybrid.config import HybridConfig, hybrid_config
from gdnc.models.qwen_hybrid.graph import BATCH_INPUTS, Composition, build_unfused
from gdnc.passes.composition import CU_SEQLENS, lift_sequence_layout
from gdnc.passes.pipeline import fuse_model
from gdnc.runtime import memory
from gdnc.runtime.batch_plan import DEFAULT_CHUNK, Limits, max_score_elements, plan_runs
from gdnc.runtime.device import runtime_device
from gdnc.runtime.executor import Executor

CACHED_UNFUSED = 16
TEMPLATE = Composition.of(2, 3)  # the batch the fused graph is derived from
DEFAULT_CTX = 2048


@dataclass(frozen=True)
class Entry:
    """One sequence of a batch: its pool slot and its new tokens."""

    slot: int
    tokens: tuple[int, ...]


class PoolFullError(InputError):
    """Every slot of the state pool holds a live sequence."""


def pool_shapes(cfg: HybridConfig, slots: int, n_ctx: int) -> dict[str, tuple[int, ...]]:
    """The tensors of a state pool (``StatePool``), by input name."""
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


class StatePool:
    """Pools of per-sequence state, ``slots`` rows each, and which slot holds what.

    Tensors: ``ssm_state.l`` [P, HV, K, V], ``conv_state.l`` [P, C-1, channels] per recurrent
    layer; ``k_cache.l`` / ``v_cache.l`` [P, n_ctx, n_kv, head_dim] per attention layer.
    ``n_past[slot]`` counts the tokens a slot has seen.
    """

    def __init__(self, cfg: HybridConfig, slots: int, n_ctx: int, device: str | torch.device) -> None:
        if slots < 1 or n_ctx < 1:
            raise InputError(f"state pool: need >= 1 slot and context >= 1 (got {slots}, {n_ctx})")
        self.slots, self.n_ctx = slots, n_ctx
        shapes = pool_shapes(cfg, slots, n_ctx)
        try:
            self.tensors = {name: torch.zeros(shape, device=device) for name, shape in shapes.items()}
        except (RuntimeError, MemoryError) as exc:
            gib = sum(math.prod(s) for s in shapes.values()) * 4 / 2**30
            raise InputError(f"state pool: {gib:.1f} GiB for {slots} slot(s) of context {n_ctx} cannot "
                             f"be allocated on {device}; lower --parallel or --ctx") from exc
        self.n_past = [0] * slots
        self.live = [False] * slots

    def allocate(self) -> int:
        """A free slot, zeroed; PoolFullError when every slot is live."""
        for slot, live in enumerate(self.live):
            if not live:
                with torch.inference_mode():  # the pools are the executor's outputs
                    for t in self.tensors.values():
                        t[slot].zero_()
                self.live[slot], self.n_past[slot] = True, 0
                return slot
        raise PoolFullError(f"state pool full: all {self.slots} slots hold live sequences")

    def release(self, slot: int) -> None:
        self._check(slot)
        self.live[slot] = False

    def free_slots(self) -> int:
        return self.live.count(False)

    def _check(self, slot: int) -> None:
        if not 0 <= slot < self.slots or not self.live[slot]:
            raise InputError(f"slot {slot} is not a live slot of the state pool (0..{self.slots - 1})")


def batch_feeds(cfg: HybridConfig, pool: StatePool, batch: list[Entry], all_logits: bool
                ) -> dict[str, np.ndarray]:
    """The index inputs of ``hybrid_graph`` for ``batch`` (contract there)."""
    C, N = cfg.conv_kernel, len(batch)
    lengths = [len(e.tokens) for e in batch]
    cu = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    past = np.array([pool.n_past[e.slot] for e in batch], dtype=np.int64)
    tokens = np.concatenate([np.asarray(e.tokens, dtype=np.int64) for e in batch])
    seq = np.repeat(np.arange(N), lengths)
    offset = np.arange(len(tokens)) - cu[seq]  # j: index of each token within its sequence

    def conv_row(n: np.ndarray, p: np.ndarray) -> np.ndarray:
        """Row of [conv states (N*(C-1)); new inputs] holding input position p of sequence n."""
        return np.where(p >= 0, N * (C - 1) + cu[n] + p, n * (C - 1) + (C - 1) + p)

    taps = np.arange(C) - (C - 1)
    conv_rows = conv_row(seq[:, None], offset[:, None] + taps[None, :])
    last = np.arange(C - 1) - (C - 1)
    conv_state_rows = conv_row(np.arange(N)[:, None], np.asarray(lengths)[:, None] + last[None, :])
    slots = np.array([e.slot for e in batch], dtype=np.int64)
    positions = past[seq] + offset
    lens = np.asarray(lengths)
    # attention, padded per sequence: query j of n is token row cu[n] + j (padding repeats n's
    # last token), key s is n's cache position s (padding reads n's position 0, hidden: the
    # graph hides keys after a query's position)
    query = np.minimum(np.arange(max(lengths))[None, :], lens[:, None] - 1)  # [N, Lq]
    seen = past + lens
    key_pos = np.arange(int(seen.max()))[None, :]  # [1, S]
    rows = np.arange(len(tokens)) if all_logits else cu[1:] - 1
    return {
        "tokens": tokens, "positions": positions, "state_slots": slots,
        "conv_rows": conv_rows.astype(np.int64), "conv_state_rows": conv_state_rows.astype(np.int64),
        "kv_write": np.stack([slots[seq], positions], 1),
        "q_rows": cu[:-1, None] + query,
        "kv_read": slots[:, None] * pool.n_ctx + np.where(key_pos < seen[:, None], key_pos, 0),
        "o_rows": seq * max(lengths) + offset,
        "logit_rows": rows.astype(np.int64), CU_SEQLENS: cu,
    }


def build_fused(f: GgufFile, cfg: HybridConfig | None = None) -> Model:
    """The fused graph serving every batch: the fusion pass on the ``TEMPLATE`` batch, then its
    sequence layout lifted to the ``cu_seqlens`` input (a fresh Model on each call).
    RewriteError unless every recurrent layer became ONE multi-sequence node."""
    c = cfg or hybrid_config(f)
    model = build_unfused(f, TEMPLATE, c)
    fuse_model(model)
    lifted = lift_sequence_layout(model, TEMPLATE.cu_seqlens, BATCH_INPUTS)
    if lifted != sum(c.recurrent):
        raise RewriteError(f"{f.path}: {lifted} multi-sequence GatedDeltaNet node(s) for "
                           f"{sum(c.recurrent)} recurrent layers")
    return model


@dataclass
class GraphStats:
    """How many graphs were built and how large they are (node counts)."""

    fused_nodes: int | None = None
    fused_builds: int = 0
    unfused_builds: int = 0
    unfused_nodes: dict[tuple[int, ...], int] = field(default_factory=dict)


def _pool_inputs(model: Model) -> list[str]:
    """The pool inputs of a batch graph: ``forward`` replaces them by their ``.out`` outputs,
    so the executor may update them in place."""
    return [n for n in model.graph.inputs if f"{n}.out" in model.graph.outputs]


class HybridModel:
    """A GGUF hybrid: ``logits = model.forward(pool, batch)`` (fused or unfused graphs)."""

    def __init__(self, path: str, fused: bool = True, device: str = "cpu",
                 file: GgufFile | None = None, prefill_chunk: int | None = None) -> None:
        """``file``: an already opened ``path`` to share (its dequantized weights too);
        ``prefill_chunk``: most new tokens of a sequence per run (default ``DEFAULT_CHUNK``)."""
        if prefill_chunk is not None and prefill_chunk < 1:
            raise InputError(f"prefill chunk must be >= 1, got {prefill_chunk}")
        self.path, self.fused, self.device = str(path), fused, runtime_device(device)
        self.limits = Limits(chunk=prefill_chunk or DEFAULT_CHUNK)
        self.file = file or GgufFile(path)
        self.cfg = hybrid_config(self.file)
        self.stats = GraphStats()
        self._fused: Executor | None = None
        self._unfused: OrderedDict[Composition, Executor] = OrderedDict()

    @property
    def trained_context(self) -> int | None:
        """The context length the model was trained on (GGUF metadata), if the file says."""
        n = self.file.metadata.get(f"{self.cfg.arch}.context_length")
        return n if isinstance(n, int) and not isinstance(n, bool) and n > 0 else None

    def new_pool(self, slots: int = 1, n_ctx: int | None = None, kept_logits: int = 0) -> StatePool:
        """A pool of ``slots`` sequences of context ``n_ctx`` (default: the trained context, at
        most ``DEFAULT_CTX``); MemoryShortError when it and a run over it (and the caller's
        ``kept_logits`` rows) cannot fit the device's available memory."""
        if n_ctx is not None and n_ctx < 1:
            raise InputError(f"the context must be >= 1 token, got {n_ctx}")
        trained = self.trained_context
        ctx = n_ctx or min(DEFAULT_CTX, trained or DEFAULT_CTX)
        memory.require(context_bytes(self.cfg, slots, ctx, self.limits, kept_logits), self.device,
                       f"a context of {ctx} tokens for {slots} sequence(s)",
                       fix="use a smaller context (--ctx, or fewer tokens)"
                           + (" or fewer sequences at once (--parallel)" if slots > 1 else ""))
        if trained is not None and ctx > trained:
            warnings.warn(f"a context of {ctx} tokens is beyond the {trained} that {self.path} was "
                          f"trained on: output past {trained} tokens may degrade", GdncWarning,
                          stacklevel=2)
        return StatePool(self.cfg, slots, ctx, self.device)

    def fused_executor(self) -> Executor:
        if self._fused is None:
            model = build_fused(self.file, self.cfg)
            self._fused = Executor(model, self.device, donate=_pool_inputs(model))
            self.stats.fused_builds += 1
            self.stats.fused_nodes = len(model.graph)
        return self._fused

    def unfused_executor(self, comp: Composition) -> Executor:
        if comp in self._unfused:
            self._unfused.move_to_end(comp)
        else:
            model = build_unfused(self.file, comp, self.cfg)
            self._unfused[comp] = Executor(model, self.device, donate=_pool_inputs(model))
            self.stats.unfused_builds += 1
            self.stats.unfused_nodes[comp.lengths] = len(model.graph)
            while len(self._unfused) > CACHED_UNFUSED:
                self._unfused.popitem(last=False)
        return self._unfused[comp]

    def forward(self, pool: StatePool, batch: list[Entry], all_logits: bool = False) -> list[torch.Tensor]:
        """Run ``batch`` (mixed prefill/decode), update ``pool``; per entry the logits of its
        last token [n_vocab] (``all_logits``: of every new token, [T_n, n_vocab]). The batch
        goes in runs within ``self.limits`` (``batch_plan``)."""
        self._check(pool, batch)
        runs = plan_runs([len(e.tokens) for e in batch], [pool.n_past[e.slot] for e in batch],
                         self.cfg.n_head, self.limits)
        if len(runs) == 1:
            return self._run(pool, batch, all_logits)
        pieces: list[list[torch.Tensor]] = [[] for _ in batch]
        for run in runs:
            part = [Entry(batch[p.index].slot, batch[p.index].tokens[p.start:p.end]) for p in run]
            for p, logits in zip(run, self._run(pool, part, all_logits)):
                pieces[p.index].append(logits)
        return [torch.cat(rows) if all_logits else rows[-1] for rows in pieces]

    def _run(self, pool: StatePool, batch: list[Entry], all_logits: bool) -> list[torch.Tensor]:
        """``forward`` of one run."""
        feeds = batch_feeds(self.cfg, pool, batch, all_logits)
        comp = Composition(tuple(len(e.tokens) for e in batch))
        ex = self.fused_executor() if self.fused else self.unfused_executor(comp)
        wanted = {n: feeds[n] for n in ex.input_names if n in feeds}
        outs = ex.run({**wanted, **pool.tensors})
        for name in pool.tensors:
            pool.tensors[name] = outs[f"{name}.out"]
        for e in batch:
            pool.n_past[e.slot] += len(e.tokens)
        logits = outs["logits"]
        if all_logits:
            return list(torch.split(logits, list(comp.lengths)))
        return list(logits)

    def _check(self, pool: StatePool, batch: list[Entry]) -> None:
        if not batch:
            raise InputError("empty batch")
        slots = [e.slot for e in batch]
        if len(set(slots)) != len(slots):
            raise InputError(f"batch: slot listed twice ({slots})")
        for e in batch:
            pool._check(e.slot)
            bad = next((t for t in e.tokens if not 0 <= t < self.cfg.n_vocab), None)
            if not e.tokens or bad is not None:
                raise InputError(f"tokens: need >= 1 id in 0..{self.cfg.n_vocab - 1}, got "
                                 f"{'none' if bad is None else bad} (the vocabulary has "
                                 f"{self.cfg.n_vocab} tokens)")
            if pool.n_past[e.slot] + len(e.tokens) > pool.n_ctx:
                raise InputError(f"slot {e.slot}: {pool.n_past[e.slot]} + {len(e.tokens)} tokens exceed the "
                                 f"context of {pool.n_ctx}")

    def logits(self, tokens: list[int] | np.ndarray) -> torch.Tensor:
        """Logits [T, n_vocab] of every position of one sequence from an empty state."""
        ids = tuple(int(t) for t in np.asarray(tokens).reshape(-1))
        pool = self.new_pool(1, max(len(ids), 1), kept_logits=2 * len(ids))
        return self.forward(pool, [Entry(pool.allocate(), ids)], all_logits=True)[0]
