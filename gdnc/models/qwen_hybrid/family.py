"""The qwen hybrid family in the registry: its architectures and its loader."""

from __future__ import annotations

from typing import TYPE_CHECKING

from gdnc.models.family import Family

if TYPE_CHECKING:
    from gdnc.frontends.gguf_file import GgufFile
    from gdnc.models.qwen_hybrid.model import HybridModel

ARCHITECTURES = ("qwen35", "qwen35moe", "qwen3next")


def load(path: str, file: GgufFile, fused: bool, device: str, prefill_chunk: int | None,
         compiled: bool) -> HybridModel:
    from gdnc.models.qwen_hybrid.model import HybridModel  # torch loads with the first model

    return HybridModel(path, fused=fused, device=device, file=file, prefill_chunk=prefill_chunk,
                       compiled=compiled)


FAMILY = Family("qwen_hybrid", ARCHITECTURES, load)
