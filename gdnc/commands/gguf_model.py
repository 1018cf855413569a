"""The GGUF model the commands run, opened for them here alone (through its family,
``gdnc.models.registry``), and the logits of one batch of prompts."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from gdnc.frontends.gguf_file import GgufFile
from gdnc.models.gguf_model import GgufModel
from gdnc.models.registry import open_gguf
from gdnc.runtime.state_pool import Entry


def load_hybrid(path: str | Path, *, fused: bool, device: str, file: GgufFile | None = None,
                prefill_chunk: int | None = None, compiled: bool = True) -> GgufModel:
    """The model of the GGUF file ``path`` (``file``: that file, already read) on ``device``, its
    fused graph (compiled, or interpreted) or unfused ones; ``prefill_chunk``: prompts fed in
    chunks of that many tokens."""
    return open_gguf(str(path), fused=fused, device=device, file=file, prefill_chunk=prefill_chunk,
                     compiled=compiled)


def batch_logits(model: GgufModel, prompts: Sequence[Sequence[int]]) -> list[torch.Tensor]:
    """Logits [len(prompt), n_vocab] of every position of each prompt, the prompts run as ONE
    batch, each from an empty state (the model's dtype and device)."""
    pool = model.new_pool(len(prompts), max(len(p) for p in prompts))
    return model.forward(pool, [Entry(pool.allocate(), tuple(p)) for p in prompts], all_logits=True)
