"""A disk cache of fused graphs, keyed by the weight-free graph they were derived from.

Model graphs are weight-free (a model's tensors are inputs), so a fused graph depends only on
the unfused graph it came from and on gdnc's code: the key is the SHA-256 of both (the
serialised source graph, every ``gdnc`` source file). A second start of the same model
configuration reads the fused graph (kilobytes) instead of running the fusion pass.

Where: ``gdnc/cache_dir.py`` (``$GDNC_CACHE_DIR``; ``off`` disables it). A cache that cannot be
read or written is passed over silently (an unreadable or stale entry is rebuilt and replaced):
it only ever saves time.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from functools import cache
from pathlib import Path

import onnx

from gdnc.atomic import open_replacing
from gdnc.cache_dir import cache_dir
from gdnc.ir.from_onnx import model_from_proto
from gdnc.ir.graph import Model
from gdnc.ir.to_onnx import model_to_proto, proto_with_value_info

PACKAGE = Path(__file__).resolve().parents[1]


@cache
def _code_digest() -> bytes:
    """SHA-256 of every gdnc source file (path and bytes): a code change is a new key."""
    h = hashlib.sha256()
    for path in sorted(PACKAGE.rglob("*.py")):
        h.update(str(path.relative_to(PACKAGE)).encode())
        h.update(path.read_bytes())
    return h.digest()


def graph_key(source: Model, stage: str) -> str:
    """The key of what ``stage`` makes of ``source`` (a hex digest)."""
    h = hashlib.sha256(_code_digest())
    h.update(stage.encode())
    h.update(model_to_proto(source).SerializeToString(deterministic=True))
    return h.hexdigest()


def _read(path: Path) -> Model | None:
    try:
        return model_from_proto(onnx.load_model(str(path), load_external_data=False))
    except Exception:  # noqa: BLE001 - a missing, truncated or foreign entry: rebuild it
        return None


def _write(path: Path, proto: onnx.ModelProto) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open_replacing(path, "wb") as fh:
            fh.write(proto.SerializeToString())
    except Exception:  # noqa: BLE001 - a read-only or full disk costs the next start time, no more
        pass


def cached_graph(source: Model, stage: str, build: Callable[[Model], Model]) -> Model:
    """``build(source)``, or the graph it made for the same source and code before. Either way
    the graph as the cache stores it (every value's type listed), so what follows (a converted
    file, say) is the same whether the graph was built, read back, or the cache is off."""
    folder = cache_dir()
    path = None if folder is None else folder / "graphs" / f"{stage}-{graph_key(source, stage)[:32]}.onnx"
    found = _read(path) if path is not None and path.is_file() else None
    if found is not None:
        return found
    proto = proto_with_value_info(build(source))
    if path is not None:
        _write(path, proto)
    return model_from_proto(proto)
