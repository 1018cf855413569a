"""Run a GGUF hybrid model on batches of sequences that live in slots of a state pool.

``HybridModel`` owns the graphs, weight-free (the file's tensors are inputs, bound once per
device as the file holds them: ``GgufWeights``): the fused one is built ONCE (the fusion pass on a template
batch, its sequence layout lifted to an input) and serves every batch; unfused graphs depend on the
batch's token counts and are built per composition, kept in an LRU cache. The pools (delta-net
states, conv states, KV caches: ``batch.pool_shapes``) live in a ``StatePool``.
``HybridModel.forward(pool, batch)`` runs one mixed prefill/decode batch through a
``BatchRunner`` (runs within ``limits``, the index inputs of ``batch.batch_feeds``). ``new_pool``
refuses, before allocating, a context whose pools and runs need more memory than the device has
available (``memory``), and warns of one beyond the context the model was trained on (as
llama.cpp does).
"""

from __future__ import annotations

import warnings
from collections import OrderedDict
from functools import partial

import numpy as np
import torch

from gdnc.errors import GdncWarning, InputError, RewriteError
from gdnc.frontends.gguf_file import GgufFile
from gdnc.ir.graph import Model
from gdnc.models.gguf_model import GraphStats
from gdnc.models.gguf_weights import GgufWeights
from gdnc.models.qwen_hybrid.batch import batch_feeds, context_bytes, pool_shapes
from gdnc.models.qwen_hybrid.config import HybridConfig, hybrid_config
from gdnc.models.qwen_hybrid.graph import BATCH_INPUTS, Composition, build_unfused
from gdnc.passes.composition import lift_sequence_layout
from gdnc.passes.graph_cache import cached_graph
from gdnc.passes.pipeline import fuse_model
from gdnc.runtime import memory
from gdnc.runtime.batch_plan import Limits
from gdnc.runtime.batch_runner import BatchRunner, pooled_executor
from gdnc.runtime.device import runtime_device
from gdnc.runtime.executor import Executor
from gdnc.runtime.state_pool import Entry, StatePool

CACHED_UNFUSED = 16
TEMPLATE = Composition.of(2, 3)  # the batch the fused graph is derived from
DEFAULT_CTX = 2048


def build_fused(f: GgufFile, cfg: HybridConfig | None = None) -> Model:
    """The fused graph serving every batch (weight-free, a fresh Model on each call): the
    fusion pass on the ``TEMPLATE`` batch, then its sequence layout lifted to the
    ``cu_seqlens`` input; read from the graph cache when this configuration was fused before
    (``graph_cache``). RewriteError unless every recurrent layer became ONE multi-sequence
    node."""
    c = cfg or hybrid_config(f)

    def fuse(model: Model) -> Model:
        fuse_model(model)
        lifted = lift_sequence_layout(model, TEMPLATE.cu_seqlens, BATCH_INPUTS)
        if lifted != sum(c.recurrent):
            raise RewriteError(f"{f.path}: {lifted} multi-sequence GatedDeltaNet node(s) for "
                               f"{sum(c.recurrent)} recurrent layers")
        return model

    return cached_graph(build_unfused(f, TEMPLATE, c), "fused", fuse)


class HybridModel:
    """A GGUF hybrid: ``logits = model.forward(pool, batch)`` (fused or unfused graphs)."""

    def __init__(self, path: str, fused: bool = True, device: str = "cpu",
                 file: GgufFile | None = None, prefill_chunk: int | None = None,
                 compiled: bool = True) -> None:
        """``file``: an already opened ``path`` to share (its dequantized weights too);
        ``prefill_chunk``: most new tokens of a sequence per run (default ``DEFAULT_CHUNK``);
        ``compiled``: the fused graph runs as prepared calls (``runtime.compiled``), not op by op (the
        interpreter; unfused graphs always are interpreted)."""
        self.compiled = compiled
        self.limits = Limits.for_prefill_chunk(prefill_chunk)
        self.path, self.fused, self.device = str(path), fused, runtime_device(device)
        self.file = file or GgufFile(path)
        self.cfg = hybrid_config(self.file)
        self.stats = GraphStats()
        self.weights = GgufWeights(self.file, self.device)
        self._fused: Executor | None = None
        self._unfused: OrderedDict[Composition, Executor] = OrderedDict()
        self._runner = BatchRunner(self.cfg.n_vocab, self.cfg.n_head, partial(batch_feeds, self.cfg),
                                   self._executor)

    @property
    def n_vocab(self) -> int:
        return self.cfg.n_vocab

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
        parts = {**context_bytes(self.cfg, slots, ctx, self.limits, kept_logits),
                 "weights": self.weights.unbound_bytes()}
        memory.require(parts, self.device,
                       f"a context of {ctx} tokens for {slots} sequence(s)",
                       fix="use a smaller context (--ctx, or fewer tokens)"
                           + (" or fewer sequences at once (--parallel)" if slots > 1 else "")
                           + ", or a smaller model or quantization")
        if trained is not None and ctx > trained:
            warnings.warn(f"a context of {ctx} tokens is beyond the {trained} that {self.path} was "
                          f"trained on: output past {trained} tokens may degrade", GdncWarning,
                          stacklevel=2)
        return StatePool(pool_shapes(self.cfg, slots, ctx), ctx, self.device)

    def fused_executor(self) -> Executor:
        if self._fused is None:
            model = build_fused(self.file, self.cfg)
            self._fused = pooled_executor(model, self.device, self.weights.prepare(model),
                                          compiled=self.compiled)
            self.stats.fused_builds += 1
            self.stats.fused_nodes = len(model.graph)
        return self._fused

    def unfused_executor(self, comp: Composition) -> Executor:
        if comp in self._unfused:
            self._unfused.move_to_end(comp)
        else:
            model = build_unfused(self.file, comp, self.cfg)
            self._unfused[comp] = pooled_executor(model, self.device, self.weights.prepare(model))
            self.stats.unfused_builds += 1
            self.stats.unfused_nodes[comp.lengths] = len(model.graph)
            while len(self._unfused) > CACHED_UNFUSED:
                self._unfused.popitem(last=False)
        return self._unfused[comp]

    def _executor(self, lengths: tuple[int, ...]) -> Executor:
        """The graph of one run of sequences with ``lengths`` new tokens."""
        return self.fused_executor() if self.fused else self.unfused_executor(Composition(lengths))

    def forward(self, pool: StatePool, batch: list[Entry], all_logits: bool = False) -> list[torch.Tensor]:
        """Run ``batch`` (mixed prefill/decode), update ``pool``; per entry the logits of its
        last token [n_vocab] (``all_logits``: of every new token, [T_n, n_vocab]). The batch
        goes in runs within ``self.limits`` (``batch_plan``)."""
        return self._runner.forward(pool, batch, self.limits, all_logits)

    def logits(self, tokens: list[int] | np.ndarray) -> torch.Tensor:
        """Logits [T, n_vocab] of every position of one sequence from an empty state."""
        ids = tuple(int(t) for t in np.asarray(tokens).reshape(-1))
        pool = self.new_pool(1, max(len(ids), 1), kept_logits=2 * len(ids))
        return self.forward(pool, [Entry(pool.allocate(), ids)], all_logits=True)[0]
