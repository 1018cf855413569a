"""gdnc: find unfused gated-delta-rule subgraphs, fuse them into one GatedDeltaNet op, run them."""

from __future__ import annotations

from gdnc.errors import GdncError

__all__ = ["GdncError", "__version__"]
__version__ = "0.1.0"
