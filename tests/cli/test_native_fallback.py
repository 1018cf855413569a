"""``gdnc run`` where the native weight kernel cannot be built (no C compiler): one ``warning:``
line, the run completes on the torch path and ``--json`` says so; with the kernel switched off on
purpose (``GDNC_NATIVE=off``) no warning; with a compiler, the kernel runs. Real processes: the
build is once per process."""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from gdnc.lowering import native
from tests.cli.processes import gdnc

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "examples" / "tiny-qwen35-q8_0.gguf"


def test_a_missing_compiler_is_one_warning_and_the_torch_path(tmp_path: Path) -> None:
    envs = [{"CC": str(tmp_path / "no-such-cc")}, {"GDNC_NATIVE": "off"}, {}]
    with ThreadPoolExecutor(max_workers=2) as pool:
        missing, off, default = pool.map(lambda env: gdnc(
            "run", MODEL, "-p", "hello", "-n", 3, "--json",
            env={**os.environ, "GDNC_CACHE_DIR": str(tmp_path / "cache"), **env}), envs)
    for done in (missing, off, default):
        assert done.returncode == 0, done.stderr
    warnings = [line for line in missing.stderr.splitlines() if line.startswith("warning:")]
    assert warnings == ["warning: the native weight kernel is unavailable (no C compiler found (set CC, "
                        "or install cc/gcc/clang)); matmuls take the slower torch path"]
    assert "warning" not in off.stderr and "warning" not in default.stderr
    timing = {name: json.loads(done.stdout.splitlines()[-1])["timing"]
              for name, done in (("missing", missing), ("off", off), ("default", default))}
    assert not timing["missing"]["native_weights"] and not timing["off"]["native_weights"]
    assert timing["default"]["native_weights"] == (native.compiler() is not None)
