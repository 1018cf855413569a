"""``import gdnc`` as a library user meets it: submodules are attributes, loaded on first use."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

PROBE = """
import sys
import gdnc
assert "torch" not in sys.modules and "onnx" not in sys.modules, "import gdnc loaded torch or onnx"
assert "gated_delta_net" in dir(gdnc) and "runtime" in dir(gdnc)
op = gdnc.gated_delta_net
assert op is gdnc.lowering.gated_delta_net.gated_delta_net and "torch" in sys.modules
assert gdnc.errors.GdncError is gdnc.GdncError and gdnc.runtime.__name__ == "gdnc.runtime"
try:
    gdnc.no_such_thing
except AttributeError as exc:
    assert "no attribute 'no_such_thing'" in str(exc)
else:
    raise AssertionError("gdnc.no_such_thing did not raise")
print("ok")
"""


def test_submodules_are_attributes_and_import_gdnc_stays_light() -> None:
    proc = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=300,
                          cwd=ROOT)
    assert proc.returncode == 0 and proc.stdout == "ok\n", proc.stderr
