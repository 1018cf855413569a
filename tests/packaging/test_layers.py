"""The layer contract: a lower layer never imports a higher one (``docs/architecture.md``).

Every ``import`` in ``gdnc/`` (module level, inside functions and under ``TYPE_CHECKING`` alike)
is read with ``ast`` and checked against ``ALLOWED``: the layers each layer may import. A module
outside every layer fails the test, so a new top-level module has to be placed first.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "gdnc"

# first component under gdnc/ -> layer (a module file or a package folder)
LAYER_OF = {
    "cli": "face", "__main__": "face", "commands": "face", "bench": "face", "drawing": "face",
    "models": "models",
    "frontends": "frontends",
    "passes": "passes",
    "runtime": "runtime",
    "lowering": "lowering",
    "opset": "opset",
    "ir": "ir",
    "__init__": "base", "errors": "base", "progress": "base", "atomic": "base", "interrupt": "base",
    "cache_dir": "base",
}

_BELOW_MODELS = {"frontends", "passes", "runtime", "lowering", "opset", "ir", "base"}
ALLOWED = {
    "face": {"face", "models", *_BELOW_MODELS},
    "models": {"models", *_BELOW_MODELS},
    "frontends": {"frontends", "ir", "base"},
    "passes": {"passes", "opset", "ir", "base"},
    "runtime": {"runtime", "lowering", "opset", "ir", "base"},
    "lowering": {"lowering", "opset", "base"},
    "opset": {"opset", "ir", "base"},
    "ir": {"ir", "base"},
    "base": {"base"},
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return LAYER_OF.get(parts[1] if len(parts) > 1 else "__init__")


def _is_submodule(name: str) -> bool:
    return (PACKAGE / f"{name}.py").is_file() or (PACKAGE / name / "__init__.py").is_file()


def _imports(path: Path) -> set[str]:
    """The gdnc modules ``path`` imports (``from gdnc import x`` counts as ``gdnc.x``)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "gdnc")
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "gdnc":  # a submodule, or a name of the package itself
                found.update(f"gdnc.{a.name}" if _is_submodule(a.name) else "gdnc" for a in node.names)
            elif node.module.startswith("gdnc."):
                found.add(node.module)
    return found


def _sources() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_every_module_has_a_layer() -> None:
    unplaced = [_module_name(p) for p in _sources() if _layer(_module_name(p)) is None]
    assert not unplaced, f"modules outside every layer (place them in LAYER_OF): {unplaced}"


@pytest.mark.parametrize("path", _sources(), ids=lambda p: _module_name(p))
def test_imports_follow_the_layers(path: Path) -> None:
    module = _module_name(path)
    layer = _layer(module)
    if layer is None:
        pytest.skip("unplaced (see test_every_module_has_a_layer)")
    wrong = {}
    for target in _imports(path):
        target_layer = _layer(target) if target != "gdnc" else "base"
        if target_layer not in ALLOWED[layer]:
            wrong[target] = target_layer
    assert not wrong, f"{module} ({layer}) imports higher layers: {wrong}"


def test_the_checker_sees_function_level_and_package_imports(tmp_path: Path) -> None:
    src = tmp_path / "m.py"
    src.write_text("def f():\n    from gdnc import cli, __version__\n    import gdnc.passes.pipeline\n"
                   "from gdnc.ir.graph import Model\n")
    assert _imports(src) == {"gdnc.cli", "gdnc", "gdnc.passes.pipeline", "gdnc.ir.graph"}
    assert _layer("gdnc.runtime.executor") == "runtime" and _layer("gdnc") == "base"
    assert "passes" not in ALLOWED["runtime"] and "face" not in ALLOWED["models"]
