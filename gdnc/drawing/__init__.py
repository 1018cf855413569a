"""``gdnc inspect MODEL --draw FILE``: one layer before and after fusion, and the op histogram.

``InspectDrawing(path, model_name)`` checks ``path`` at once and cheaply (a place a file can
go, suffix .svg or .png: ``FORMATS``), gives ``capture`` to pass as the pipeline's
``dump_after``, and ``write(report)`` draws and writes the file atomically, returning the line
to print.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from gdnc.atomic import check_target
from gdnc.errors import InputError

if TYPE_CHECKING:
    from gdnc.passes.pipeline import ConversionReport

FORMATS = {".svg": "svg", ".png": "png"}


class InspectDrawing:
    def __init__(self, path: str | Path, model_name: str) -> None:
        self.path = check_target(path)
        if self.path.suffix.lower() not in FORMATS:
            raise InputError(f"--draw {self.path}: unsupported suffix {self.path.suffix or '(none)'!r} "
                             f"(use {' or '.join(FORMATS)})")
        from gdnc.drawing.capture import LayerCapture

        self.model_name = model_name
        self.capture = LayerCapture()

    def write(self, report: ConversionReport) -> str:
        from gdnc.drawing.page import NO_CHAIN, inspection_figure, save_figure

        save_figure(inspection_figure(self.model_name, report, self.capture.layer), self.path)
        return f"drew {self.path}" + ("" if self.capture.layer is not None else f" ({NO_CHAIN})")


__all__ = ["FORMATS", "InspectDrawing"]
