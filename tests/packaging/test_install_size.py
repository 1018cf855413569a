"""A CPU user's ``pip install gdnc`` stays CPU-sized: GPU-only packages only in the ``gpu`` extra.

Measured on a fresh venv with torch's CPU build (2.13.0): ``pip install .`` is 1.3 GB in all
(torch 754 MB, onnxruntime 78 MB), no ``nvidia-*``, no triton; ``gdnc run`` generates on CPU.
"""

from __future__ import annotations

import re
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[2]
GPU_ONLY = re.compile(r"^(onnxruntime-gpu|triton|nvidia-|cupy|flash-attn)", re.IGNORECASE)


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def test_default_dependencies_are_cpu_packages():
    gpu = [dep for dep in _project()["dependencies"] if GPU_ONLY.match(dep)]
    assert gpu == [], f"GPU-only packages in the default install: {gpu}"


def test_gpu_extra_brings_the_triton_kernels():
    assert any(dep.startswith("triton") for dep in _project()["optional-dependencies"]["gpu"])


def test_readme_says_how_to_get_torch_cpu_build():
    readme = (ROOT / "README.md").read_text()
    assert "CPU-only build" in readme and "'.[gpu]'" in readme


def test_constraints_pin_every_dev_tool():
    pins = (ROOT / "scripts" / "constraints.txt").read_text().split()
    pinned = {line.split("==")[0].lower() for line in pins if "==" in line}
    tools = {re.split(r"[<>=;\s]", dep)[0].lower() for dep in _project()["optional-dependencies"]["dev"]}
    assert tools <= pinned, f"dev tools without a pin in scripts/constraints.txt: {tools - pinned}"


def test_wheel_ships_gdnc_alone():
    """corpus/ (the test and benchmark models) stays out of the wheel but is importable here."""
    from setuptools import find_packages

    include = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    shipped = find_packages(str(ROOT), **include)
    assert "gdnc" in shipped and {p.split(".")[0] for p in shipped} == {"gdnc"}, shipped
    assert "corpus" in find_packages(str(ROOT))
