"""``examples/drive_exported_onnx.py``: docs/gguf-onnx.md's recipe, numpy and onnxruntime only,
drives an exported GGUF model (native and ort targets) to gdnc's logits within 1e-4: two
sequences prefill prompts of different lengths in one batch, then decode a token each; its
index inputs are gdnc's own (``batch_feeds``)."""

from __future__ import annotations

import ast
import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from gdnc.commands.gguf_export import export_gguf
from gdnc.models.qwen_hybrid.batch import batch_feeds
from gdnc.models.qwen_hybrid.model import HybridModel
from gdnc.runtime.state_pool import Entry

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "drive_exported_onnx.py"
GGUF = ROOT / "examples" / "tiny-qwen35-f16.gguf"
MAX_ABS = 1e-4
N_CTX = 32


def _load_example():
    spec = importlib.util.spec_from_file_location("drive_exported_onnx", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


drive = _load_example()


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("drive")
    paths = {target: folder / f"{target}.onnx" for target in ("native", "ort")}
    for target, path in paths.items():
        export_gguf(GGUF, path, unfused=False, target=target)
    return paths


def test_the_example_imports_no_gdnc():
    tree = ast.parse(EXAMPLE.read_text())
    names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    names += [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module]
    assert not [m for m in names if m.split(".")[0] == "gdnc"]


def test_its_index_inputs_are_gdncs():
    model = HybridModel(str(GGUF))
    pool = model.new_pool(3, N_CTX)
    for slot, past in ((pool.allocate(), 4), (pool.allocate(), 0), (pool.allocate(), 9)):
        pool.n_past[slot] = past
    rng = np.random.default_rng(0)
    for lengths, slots in (((5, 3), (0, 1)), ((1, 1, 1), (2, 0, 1)), ((2, 7, 1), (1, 2, 0))):
        batch = [Entry(s, tuple(rng.integers(0, 300, n).tolist())) for s, n in zip(slots, lengths)]
        seqs = [drive.Sequence(e.slot, pool.n_past[e.slot], list(e.tokens)) for e in batch]
        for all_logits in (True, False):
            want = batch_feeds(model.cfg, pool, batch, all_logits)
            got = drive.batch_inputs(seqs, N_CTX, model.cfg.conv_kernel, all_logits)
            assert set(got) == set(want)
            for name in want:
                assert got[name].dtype == np.int64 and np.array_equal(got[name], want[name]), name


@pytest.mark.parametrize("target", ["native", "ort"])
def test_it_drives_the_file_to_gdncs_logits(exported, target):
    session = ort.InferenceSession(str(exported[target]), providers=["CPUExecutionProvider"])
    pools = drive.Pools(session, slots=2, n_ctx=N_CTX)
    model = HybridModel(str(GGUF))
    pool = model.new_pool(2, N_CTX)
    slots = [pool.allocate(), pool.allocate()]
    prompts = [[11, 22, 33, 44, 55], [66, 77, 88]]
    steps = [prompts, [[5], [7]]]
    for tokens in steps:
        seqs = [drive.Sequence(s, pool.n_past[s], t) for s, t in zip(slots, tokens)]
        got = drive.step(session, pools, seqs)
        want = model.forward(pool, [Entry(s, tuple(t)) for s, t in zip(slots, tokens)], all_logits=True)
        assert np.abs(got - np.concatenate([w.numpy() for w in want])).max() <= MAX_ABS
    for name, tensor in pool.tensors.items():
        assert np.abs(pools.arrays[name] - tensor.numpy()).max() <= MAX_ABS, name


def test_the_script_runs(exported):
    proc = subprocess.run([sys.executable, str(EXAMPLE), str(exported["native"])], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("prefill: next tokens [") and "decode:  next tokens [" in proc.stdout
