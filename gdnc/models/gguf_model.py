"""What every model family's model offers (``registry.open_gguf`` returns one): batches for
the scheduler (``BatchModel``), its GGUF file, fused or unfused graphs and their sizes,
one-sequence logits."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch

from gdnc.frontends.gguf_file import GgufFile
from gdnc.runtime.batch_model import BatchModel
from gdnc.runtime.executor import Executor


@dataclass
class GraphStats:
    """How many graphs were built and how large they are (node counts; unfused graphs by the
    new-token counts of the batch they run)."""

    fused_nodes: int | None = None
    fused_builds: int = 0
    unfused_builds: int = 0
    unfused_nodes: dict[tuple[int, ...], int] = field(default_factory=dict)


class GgufModel(BatchModel, Protocol):
    path: str
    file: GgufFile
    fused: bool  # fused graphs (one fused graph serves every batch) or unfused ones per batch
    stats: GraphStats
    device: torch.device

    @property
    def n_vocab(self) -> int:
        """Rows of the logits: the vocabulary's size."""
        ...

    def fused_executor(self) -> Executor:
        """The fused graph's executor, built on first use; RewriteError when the fusion pass
        leaves a layer unfused."""
        ...

    def logits(self, tokens: list[int] | np.ndarray) -> torch.Tensor:
        """Logits [T, n_vocab] of every position of one sequence from an empty state."""
        ...
