"""Where gdnc keeps what it derives once and reuses: fused graphs (``passes/graph_cache.py``) and
compiled native kernels (``lowering/native.py``).

``$GDNC_CACHE_DIR``, else ``$XDG_CACHE_HOME/gdnc``, else ``~/.cache/gdnc``; the value ``off``
disables caching (every start derives everything again).
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path | None:
    """The cache folder (None: disabled)."""
    chosen = os.environ.get("GDNC_CACHE_DIR")
    if chosen == "off":
        return None
    if chosen:
        return Path(chosen)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "gdnc"
