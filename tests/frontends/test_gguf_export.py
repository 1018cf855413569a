"""GGUF hybrids written as ONNX (``gdnc convert MODEL.gguf``) run in onnxruntime and match the
gdnc runtime (fused and unfused) and HF's logits; the CLI writes atomically, errors are one line.
"""

from __future__ import annotations

import copy
import json
import re
import subprocess
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from gdnc.commands.gguf_export import export_gguf, parse_lengths
from gdnc.errors import GdncError, InputError, ModelLoadError
from gdnc.models.qwen_hybrid.batch import batch_feeds
from gdnc.models.qwen_hybrid.model import HybridModel
from gdnc.runtime.state_pool import Entry, StatePool
from tests.cli.processes import gdnc
from tests.frontends.test_gguf_models import ARCHS, MAX_ABS, gguf_path, reference

DATA_SUFFIX = r"\.[0-9a-f]{8}\.data"  # save_onnx names each data file for its write


@pytest.fixture(scope="module", params=ARCHS)
def arch(request) -> str:
    if not gguf_path(request.param).exists():
        pytest.fail(f"fixture {gguf_path(request.param)} is missing")
    return request.param


def _tokens(n: int, seed: int) -> tuple[int, ...]:
    return tuple(int(t) for t in np.random.default_rng(seed).integers(0, 384, n))


def _session(path: Path) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _run_ort(sess: ort.InferenceSession, model: HybridModel, pool: StatePool, batch: list[Entry]
             ) -> dict[str, np.ndarray]:
    """One batch through the exported model on (a copy of) ``pool``; outputs by name."""
    feeds = batch_feeds(model.cfg, pool, batch, all_logits=True)
    pools = {k: v.numpy().copy() for k, v in pool.tensors.items()}
    names = [i.name for i in sess.get_inputs()]
    outs = sess.run(None, {n: feeds[n] if n in feeds else pools[n] for n in names})
    return dict(zip([o.name for o in sess.get_outputs()], outs))


def _run_gdnc(model: HybridModel, pool: StatePool, batch: list[Entry]) -> dict[str, np.ndarray]:
    pool = copy.deepcopy(pool)
    logits = np.concatenate([x.numpy() for x in model.forward(pool, batch, all_logits=True)])
    return {"logits": logits, **{f"{k}.out": v.numpy() for k, v in pool.tensors.items()}}


def _warm_pool(model: HybridModel, slots: int) -> StatePool:
    """A pool whose slots hold a few tokens of state already (non-zero pools)."""
    pool = model.new_pool(slots, 32)
    batch = [Entry(pool.allocate(), _tokens(2 + s, 100 + s)) for s in range(slots)]
    model.forward(pool, batch)
    assert all(float(t.abs().sum()) > 0 for t in pool.tensors.values())
    return pool


def _max_diff(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    assert set(a) == set(b)
    for k in a:
        assert a[k].shape == b[k].shape, k
    return max(float(np.abs(a[k] - b[k]).max()) for k in a)


@pytest.fixture(scope="module")
def exported(arch, tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp(f"export_{arch}")
    paths = {"unfused": d / "unfused.onnx", "fused": d / "fused.onnx"}
    rep = export_gguf(gguf_path(arch), paths["unfused"], unfused=True, lengths=(5, 3))
    assert rep["composition"] == [5, 3] and rep["gated_delta_net_nodes"] == 0
    rep = export_gguf(gguf_path(arch), paths["fused"], unfused=False)
    assert rep["architecture"] == arch and rep["gated_delta_net_nodes"] == rep["recurrent_layers"] == 3
    assert re.fullmatch(re.escape(str(paths["fused"])) + DATA_SUFFIX, rep["external_data"])
    return paths


def test_files_are_valid_onnx_with_relative_external_data(exported):
    for path in exported.values():
        onnx.checker.check_model(str(path), full_check=True)
        proto = onnx.load(str(path), load_external_data=False)
        locations = {e.value for t in proto.graph.initializer for e in t.external_data
                     if e.key == "location"}
        (location,) = locations
        assert re.fullmatch(re.escape(path.name) + DATA_SUFFIX, location)
        assert sorted(p.name for p in path.parent.iterdir() if p.name.startswith(path.name)) == \
            [path.name, location]


def test_unfused_export_matches_gdnc_unfused_and_fused(arch, exported):
    unfused, fused = (HybridModel(str(gguf_path(arch)), fused=f) for f in (False, True))
    pool = _warm_pool(unfused, 2)
    batch = [Entry(0, _tokens(5, 1)), Entry(1, _tokens(3, 2))]
    got = _run_ort(_session(exported["unfused"]), unfused, pool, batch)
    assert got["logits"].shape == (8, unfused.cfg.n_vocab)
    assert _max_diff(got, _run_gdnc(unfused, pool, batch)) <= MAX_ABS
    assert _max_diff(got, _run_gdnc(fused, pool, batch)) <= MAX_ABS


@pytest.mark.parametrize("lengths", [(4, 1, 6), (1,)])
def test_fused_export_serves_any_composition(arch, exported, lengths):
    model = HybridModel(str(gguf_path(arch)), fused=True)
    pool = _warm_pool(model, 3)
    slots = [2, 0, 1][: len(lengths)]  # out of slot order; with (1,), slots 0 and 1 stay as they were
    batch = [Entry(s, _tokens(n, 10 + s)) for s, n in zip(slots, lengths)]
    got = _run_ort(_session(exported["fused"]), model, pool, batch)
    assert got["logits"].shape == (sum(lengths), model.cfg.n_vocab)
    assert _max_diff(got, _run_gdnc(model, pool, batch)) <= MAX_ABS


def test_unfused_export_matches_hf(arch, tmp_path):
    ref = reference(arch)
    path = tmp_path / "p0.onnx"
    export_gguf(gguf_path(arch), path, unfused=True, lengths=(len(ref["prompt0"]),))
    model = HybridModel(str(gguf_path(arch)), fused=False)
    pool = model.new_pool(1, 16)
    batch = [Entry(pool.allocate(), tuple(int(t) for t in ref["prompt0"]))]
    logits = _run_ort(_session(path), model, pool, batch)["logits"]
    assert np.abs(logits - ref["hf_0"]).max() <= MAX_ABS
    assert (logits.argmax(-1) == ref["hf_0"].argmax(-1)).all()


# ------------------------------------------------------------------ errors, atomic writes, CLI

def test_bad_lengths_and_target_are_input_errors(tmp_path):
    assert parse_lengths("5, 3") == (5, 3)
    for text in ("", "5,", "a", "0", "3,-1"):
        with pytest.raises(InputError) as exc:
            parse_lengths(text)
        assert "\n" not in str(exc.value)
    with pytest.raises(InputError, match="need >= 1 sequence"):
        export_gguf(gguf_path("qwen35"), tmp_path / "x.onnx", unfused=True, lengths=())
    with pytest.raises(InputError, match="unknown target 'tpu'"):
        export_gguf(gguf_path("qwen35"), tmp_path / "x.onnx", unfused=False, target="tpu")
    assert list(tmp_path.iterdir()) == []


def test_failed_write_leaves_no_output(tmp_path, monkeypatch):
    out = tmp_path / "out.onnx"

    def broken_write(proto, file, location):
        Path(file).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr("gdnc.ir.to_onnx._write_external", broken_write)
    with pytest.raises(GdncError, match="disk full") as exc:
        export_gguf(gguf_path("qwen35"), out, unfused=True, lengths=(2,))
    assert "\n" not in str(exc.value)
    assert list(tmp_path.iterdir()) == []


def test_truncated_gguf_is_refused_without_output(tmp_path):
    bad = tmp_path / "cut.gguf"
    bad.write_bytes(gguf_path("qwen35").read_bytes()[:5000])
    with pytest.raises(ModelLoadError):
        export_gguf(bad, tmp_path / "x.onnx", unfused=False)
    assert [p.name for p in tmp_path.iterdir()] == ["cut.gguf"]


def _one_line_error(proc: subprocess.CompletedProcess, needle: str) -> None:
    assert proc.returncode != 0
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and needle in lines[0], proc.stderr


def test_cli_convert_gguf(tmp_path):
    src = gguf_path("qwen35")
    out = tmp_path / "u.onnx"
    proc = gdnc("convert", src, "-o", out, "--unfused", "--lengths", "5,3", "--json")
    assert proc.returncode == 0, proc.stderr
    rep = json.loads(proc.stdout)
    assert rep["composition"] == [5, 3] and rep["output"] == str(out)
    assert out.exists() and Path(rep["external_data"]).exists()
    assert [i.name for i in _session(out).get_inputs()][0] == "tokens"

    proc = gdnc("convert", src, "-o", tmp_path / "f.onnx", "--lengths", "5,3")
    _one_line_error(proc, "--lengths needs --unfused")
    bad = tmp_path / "cut.gguf"
    bad.write_bytes(src.read_bytes()[:5000])
    proc = gdnc("convert", bad, "-o", tmp_path / "g.onnx")
    _one_line_error(proc, str(bad))
    data = Path(rep["external_data"]).name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cut.gguf", "u.onnx", data]
