"""Run a GGUF hybrid model one sequence at a time: prefill, then decode, state carried along.

A graph is built per composition (T new tokens after n_past: positions and the causal mask
are graph constants), fused through the pass when asked, and kept in a small LRU cache (each
decode step is a new composition until positions become graph inputs); the sequence's
recurrent states, conv states and KV caches live in a ``SequenceState`` between calls.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from gdnc.errors import InputError
from gdnc.frontends.gguf_file import GgufFile
from gdnc.frontends.hybrid_config import HybridConfig, hybrid_config
from gdnc.frontends.hybrid_graph import Composition, build_unfused
from gdnc.passes.pipeline import fuse_model
from gdnc.runtime.executor import Executor

CACHED_GRAPHS = 8


@dataclass
class SequenceState:
    """Named state tensors of one sequence (graph input names) and its cached length."""

    tensors: dict[str, torch.Tensor]
    n_past: int = 0


@dataclass
class HybridRunner:
    """``logits, state = runner.forward(tokens, state)``; ``fused`` picks the fused graph."""

    path: str
    fused: bool = True
    device: str = "cpu"
    file: GgufFile = field(init=False)
    cfg: HybridConfig = field(init=False)
    _executors: dict[Composition, Executor] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        self.file = GgufFile(self.path)
        self.cfg = hybrid_config(self.file)

    def executor(self, comp: Composition) -> Executor:
        if comp in self._executors:
            self._executors[comp] = self._executors.pop(comp)  # most recently used last
        else:
            model = build_unfused(self.file, comp, self.cfg)
            if self.fused:
                fuse_model(model)
            self._executors[comp] = Executor(model, self.device)
            while len(self._executors) > CACHED_GRAPHS:
                del self._executors[next(iter(self._executors))]
        return self._executors[comp]

    def graph_nodes(self, comp: Composition) -> int:
        return len(self.executor(comp).model.graph)

    def new_state(self) -> SequenceState:
        c, dev = self.cfg, self.device
        tensors = {}
        for i, rec in enumerate(c.recurrent):
            if rec:
                tensors[f"ssm_state.{i}"] = torch.zeros(c.n_v_heads, c.k_dim, c.v_dim, device=dev)
                tensors[f"conv_state.{i}"] = torch.zeros(c.conv_kernel - 1, c.conv_channels,
                                                         device=dev)
            else:
                for name in ("k_cache", "v_cache"):
                    tensors[f"{name}.{i}"] = torch.zeros(0, c.n_head_kv, c.head_dim, device=dev)
        return SequenceState(tensors)

    def forward(self, tokens: list[int] | np.ndarray, state: SequenceState
                ) -> tuple[torch.Tensor, SequenceState]:
        """Logits [T, n_vocab] for ``tokens`` after ``state``, and the state after them."""
        ids = torch.as_tensor(np.asarray(tokens, dtype=np.int64)).reshape(-1)
        bad = ids[(ids < 0) | (ids >= self.cfg.n_vocab)]
        if ids.numel() == 0 or bad.numel():
            raise InputError(f"tokens: need >= 1 id in 0..{self.cfg.n_vocab - 1}, got "
                             f"{bad[0].item() if bad.numel() else 'none'}")
        comp = Composition(int(ids.numel()), state.n_past)
        outs = self.executor(comp).run({"tokens": ids, **state.tensors})
        new = {name: outs[f"{name}.out"] for name in state.tensors}
        return outs["logits"], SequenceState(new, state.n_past + comp.n_tokens)
