"""The model family registry: which family opens a GGUF file, by ``general.architecture``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from corpus.gguf_rewrite import rewrite
from gdnc.errors import InputError, ModelLoadError
from gdnc.frontends.gguf_file import GgufFile
from gdnc.models import registry
from gdnc.models.family import Family
from gdnc.models.qwen_hybrid.config import hybrid_config
from gdnc.models.qwen_hybrid.family import FAMILY as QWEN_HYBRID
from gdnc.models.qwen_hybrid.model import HybridModel

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "gguf"
ARCHS = ["qwen35", "qwen35moe", "qwen3next"]


def _fixture(arch: str) -> Path:
    return FIXTURES / f"{arch}-fixture-f32.gguf"


def test_supported_architectures():
    assert registry.supported_architectures() == tuple(ARCHS)
    assert {a for f in registry.FAMILIES for a in f.architectures} == set(ARCHS)


@pytest.mark.parametrize("arch", ARCHS)
def test_open_gguf_picks_the_family(arch):
    file = GgufFile(_fixture(arch))
    assert registry.family_of(file) is QWEN_HYBRID
    model = registry.open_gguf(str(_fixture(arch)), fused=False, file=file, prefill_chunk=7)
    assert isinstance(model, HybridModel)
    assert (model.file, model.fused, model.limits.chunk, model.path) == (file, False, 7, str(_fixture(arch)))


def test_unknown_architecture_is_refused(tmp_path):
    path = rewrite(_fixture("qwen35"), tmp_path / "llama.gguf", arch="llama")
    for attempt in (lambda: registry.open_gguf(str(path)), lambda: HybridModel(str(path))):
        with pytest.raises(ModelLoadError) as exc:
            attempt()
        assert str(exc.value) == f"{path}: architecture 'llama' is not supported"
        assert exc.value.fix == "gdnc runs qwen35, qwen35moe, qwen3next models"


def test_another_family_gets_its_files(tmp_path, monkeypatch):
    """A file of another family's architecture goes to that family's loader, and the qwen
    hybrid's config refuses it."""
    path = rewrite(_fixture("qwen35"), tmp_path / "llama.gguf", arch="llama")
    opened = []

    def load(*args):
        opened.append(args)
        return "model"

    other = Family("other", ("llama",), load)
    monkeypatch.setattr(registry, "FAMILIES", (QWEN_HYBRID, other))
    assert registry.supported_architectures() == (*ARCHS, "llama")
    assert registry.open_gguf(str(path), fused=False, prefill_chunk=7, compiled=False) == "model"
    ((got_path, got_file, fused, device, chunk, compiled),) = opened
    assert (got_path, got_file.path, fused, device, chunk, compiled) == \
        (str(path), path, False, "cpu", 7, False)
    with pytest.raises(ModelLoadError, match="architecture 'llama' is not a qwen_hybrid model"):
        hybrid_config(GgufFile(path))


@pytest.mark.parametrize(("options", "message"), [
    ({"prefill_chunk": 0}, "prefill chunk must be >= 1"), ({"device": "tpu"}, "is not a device name")])
def test_options_are_checked_before_the_file_is_read(tmp_path, options, message):
    """As before families existed: a bad option is reported even when the file is bad too."""
    with pytest.raises(InputError, match=message):
        registry.open_gguf(str(tmp_path / "missing.gguf"), **options)


def test_registry_import_is_cheap():
    """The CLI's help lists the architectures: the registry loads no numpy, gguf or torch."""
    code = ("import sys; from gdnc.models.registry import supported_architectures; "
            "supported_architectures(); "
            "print(sorted(m for m in ('numpy', 'gguf', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
