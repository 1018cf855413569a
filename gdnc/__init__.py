"""gdnc: find unfused gated-delta-rule subgraphs, fuse them into one GatedDeltaNet op, run them.

Submodules are attributes imported on first use, and so is the public op ``gdnc.gated_delta_net``
(``gdnc.lowering.gated_delta_net``): ``import gdnc`` stays cheap, it loads neither torch nor onnx.
"""

from __future__ import annotations

import importlib
import pkgutil

from gdnc.errors import GdncError

__all__ = ["GdncError", "__version__", "gated_delta_net"]
__version__ = "0.1.0"


def _submodules() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))


def __getattr__(name: str) -> object:
    if name == "gated_delta_net":
        return importlib.import_module(f"{__name__}.lowering.gated_delta_net").gated_delta_net
    if name in _submodules():
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_submodules(), "gated_delta_net"})
