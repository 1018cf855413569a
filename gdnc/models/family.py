"""A model family's entry in the registry (``gdnc.models.registry``): the GGUF architectures it
handles and how it opens a file of one. Cheap to import (the CLI's help lists the
architectures): a loader imports its model only when called."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gdnc.frontends.gguf_file import GgufFile
    from gdnc.models.gguf_model import GgufModel

# (path, its opened file, fused, device, prefill_chunk, compiled) -> the family's model
Loader = Callable[[str, "GgufFile", bool, str, "int | None", bool], "GgufModel"]


@dataclass(frozen=True)
class Family:
    name: str
    architectures: tuple[str, ...]  # values of ``general.architecture``
    load: Loader
