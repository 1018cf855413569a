"""The files one command reads and writes, checked before any work: no output is an input.

``check(models=..., inputs=..., outputs=...)``: every output (``-o``, ``--report``, ``--plot``,
``--draw``, a ``--dump-after`` graph ...) is a place a file can go (``gdnc.atomic.check_target``)
and, unless it is a stream written in place, is not the same file as an input, nor as another
output: not the same path, nor a hard link or a symlink to it. The inputs of an ONNX model
(any model file but a ``.gguf`` one) include the external data files it refers to. The result is
every input file, for ``gdnc.atomic.keeping`` (no write of the run removes or replaces one).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from gdnc.atomic import check_outputs


def check(*, models: Iterable[str | Path] = (), inputs: Iterable[str | Path | None] = (),
          outputs: Iterable[str | Path | None] = ()) -> list[Path]:
    """InputError (one line naming both files) for an output that is an input or an earlier
    output; GdncError for an output no file can be put at. ``models``: model files that may be
    ONNX (all but ``.gguf`` ones are read as such); ``inputs``: other files read (a GGUF-only
    model too); ``None``: an option not given. Returns the input files: ``models`` with their
    external data files, then ``inputs``."""
    files: dict[Path, str] = {}
    for model in map(Path, models):
        files.setdefault(model, f"the input {model}")
        if model.suffix.lower() != ".gguf":
            from gdnc.ir.to_onnx import external_data_files  # onnx: imported for ONNX models only

            for data in external_data_files(model):
                files.setdefault(data, f"the external data of the input {model} ({data.name})")
    files.update((Path(path), f"the input {path}") for path in inputs if path is not None)
    check_outputs(outputs, files)
    return list(files)
