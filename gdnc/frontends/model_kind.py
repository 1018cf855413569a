"""What a MODEL path holds, by its content: a GGUF file or an ONNX model, or a one-line error
saying what it is instead (a Hugging Face checkpoint folder, a safetensors file, another file).

Every command that takes MODEL dispatches on ``model_kind`` (a GGUF file named ``.bin`` is
GGUF). A file named ``.gguf`` or ``.onnx`` goes to that loader even when damaged, so its
error names what is wrong inside; one named ``.onnx`` that starts like GGUF is refused.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

from gdnc.errors import ModelLoadError

GGUF, ONNX = "gguf", "onnx"
_TAKES = "gdnc takes a GGUF file or an ONNX model"
_CONVERT = ("convert it with llama.cpp's convert_hf_to_gguf.py (or export ONNX with "
            "torch.onnx.export)")
# the first byte of a serialized onnx.ModelProto: the tag of one of its fields (ir_version,
# producer_name, producer_version, domain, model_version, doc_string, graph, opset_import,
# metadata_props, training_info, functions), written in field order
_ONNX_FIRST_BYTES = frozenset(b"\x08\x12\x1a\x22\x28\x32\x3a\x42\x72\xa2\xca")


def model_kind(path: Path) -> str:
    """GGUF or ONNX for ``path``; ModelLoadError (one line) for anything else."""
    if path.is_dir():
        if (path / "config.json").is_file():
            raise ModelLoadError(f"{path} is a Hugging Face checkpoint folder; {_TAKES}", fix=_CONVERT)
        raise ModelLoadError(f"{path}: no such file (it is a folder); {_TAKES}")
    if not path.is_file():
        raise ModelLoadError(f"{path}: no such file")
    try:
        with path.open("rb") as fh:
            head = fh.read(4096)
    except OSError as exc:
        raise ModelLoadError(f"{path}: cannot read the file ({exc.strerror})") from None
    suffix = path.suffix.lower()
    if head.startswith(b"GGUF") and suffix == ".onnx":
        raise ModelLoadError(f"{path} starts like a GGUF file, not an ONNX model as its name says",
                             fix="if it is GGUF, rename it to .gguf")
    if head.startswith(b"GGUF") or suffix == ".gguf":
        return GGUF
    if _is_safetensors(head, path.stat().st_size):
        raise ModelLoadError(f"{path} is a safetensors weights file (as in a Hugging Face checkpoint); "
                             f"{_TAKES}", fix=_CONVERT)
    if suffix == ".onnx" or head[:1] and head[0] in _ONNX_FIRST_BYTES:
        return ONNX
    what = "the file is empty" if not head else f"it starts with {head[:8]!r}"
    raise ModelLoadError(f"{path}: not a GGUF file or an ONNX model ({what}); {_TAKES}")


def _is_safetensors(head: bytes, size: int) -> bool:
    """A little-endian u64 header length, then that many bytes of JSON object."""
    if len(head) < 9 or head[8:9] != b"{":
        return False
    (length,) = struct.unpack("<Q", head[:8])
    if 8 + length > size:
        return False
    if 8 + length > len(head):
        return True  # a header longer than we read: its length and first byte fit
    try:
        return isinstance(json.loads(head[8:8 + length]), dict)
    except ValueError:
        return False


def require_gguf(path: Path, command: str) -> None:
    """ModelLoadError unless ``path`` holds a GGUF model (``command`` takes nothing else)."""
    if model_kind(path) != GGUF:
        raise ModelLoadError(f"{path} is an ONNX model; gdnc {command} takes a GGUF model")
