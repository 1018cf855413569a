"""The model families gdnc runs, by GGUF ``general.architecture``.

``open_gguf`` opens a GGUF file with its family's model; ``family_of`` says which family
handles a file (ModelLoadError naming the supported architectures when none does). Cheap to
import: the CLI's help lists ``supported_architectures()``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gdnc.errors import ModelLoadError
from gdnc.models.family import Family
from gdnc.models.qwen_hybrid.family import FAMILY as QWEN_HYBRID

if TYPE_CHECKING:
    from gdnc.frontends.gguf_file import GgufFile
    from gdnc.models.gguf_model import GgufModel

FAMILIES: tuple[Family, ...] = (QWEN_HYBRID,)


def supported_architectures() -> tuple[str, ...]:
    """Every ``general.architecture`` some family handles, in registry order."""
    return tuple(arch for family in FAMILIES for arch in family.architectures)


def family_of(f: GgufFile) -> Family:
    """The family handling ``f``'s architecture; ModelLoadError when none does."""
    arch = f.architecture
    for family in FAMILIES:
        if arch in family.architectures:
            return family
    raise ModelLoadError(f"{f.path}: architecture {arch!r} is not supported",
                         fix=f"gdnc runs {', '.join(supported_architectures())} models")


def open_gguf(path: str, fused: bool = True, device: str = "cpu", file: GgufFile | None = None,
              prefill_chunk: int | None = None, compiled: bool = True) -> GgufModel:
    """The model of GGUF file ``path`` (``file``: it already opened, to share), built by its
    family: fused or unfused graphs on ``device``, prompts fed ``prefill_chunk`` tokens at a
    time (None: the family's default), the fused graph ``compiled`` or interpreted. The options
    are checked before the file is read."""
    from gdnc.frontends.gguf_file import GgufFile  # numpy and gguf load with the first model
    from gdnc.runtime.batch_plan import Limits
    from gdnc.runtime.device import runtime_device

    Limits.for_prefill_chunk(prefill_chunk)
    runtime_device(device)
    f = file or GgufFile(path)
    return family_of(f).load(str(path), f, fused, device, prefill_chunk, compiled)
