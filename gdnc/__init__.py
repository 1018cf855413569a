"""gdnc: find unfused gated-delta-rule subgraphs, fuse them into one GatedDeltaNet op, run them.

Submodules are attributes imported on first use (``gdnc.ops.gated_delta_net``), so ``import
gdnc`` stays cheap: it loads neither torch nor onnx.
"""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType

from gdnc.errors import GdncError

__all__ = ["GdncError", "__version__"]
__version__ = "0.1.0"


def _submodules() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))


def __getattr__(name: str) -> ModuleType:
    if name in _submodules():
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_submodules()})
