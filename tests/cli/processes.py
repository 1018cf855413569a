"""``gdnc`` run as a real process (``python -m gdnc``), the way the command-line tests call it.

Every such process pays the interpreter's and torch's start-up (~3 s on a 2-core machine):
``gdnc_all`` runs independent calls two at a time.
"""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


def gdnc(*args: object, env: dict[str, str] | None = None, cwd: Path | None = None,
         timeout: float = 600) -> subprocess.CompletedProcess:
    """``gdnc ARGS...`` (each argument as ``str``), its output captured as text."""
    return subprocess.run([sys.executable, "-m", "gdnc", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env=env, cwd=cwd)


def gdnc_all(*calls: tuple, cwd: Path | None = None) -> list[subprocess.CompletedProcess]:
    """Several independent ``gdnc`` calls (argument tuples), two at a time; results in call order."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        return list(pool.map(lambda args: gdnc(*args, cwd=cwd), calls))
