"""Loading and running a model never runs code from it, and gdnc never touches the network.

Model files carrying code-like payloads in every free-text place (GGUF strings, a Jinja chat
template, ONNX metadata and doc strings, an op in a domain named like a Python module, a
pickled array in an input file) go through inspect, run, convert and compare in a probe
process under a Python audit hook (``audit_probe.py``). Once the commands' own imports are
warm, the hook must see no unpickling, no exec/compile (but numpy's literal-only parse of
.npy headers), no import, no ctypes, no process, no
socket or URL access, and no file opened outside the model's folder, the output folder,
gdnc's graph cache and the Python installation; the payloads' marker file must not appear.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import onnx
import pytest

from corpus.gguf_rewrite import rewrite
from corpus.tiny_gguf import write_models
from gdnc.cache_dir import cache_dir
from tests.robustness.harness import TALLY

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_ONNX = ROOT / "examples" / "hf_recurrent_gated_delta_rule_t16.onnx"
# numpy reads a .npy header with ast.literal_eval: compiled to a syntax tree, never executed
NUMPY_HEADER_PARSE = "/numpy/lib/_format_impl.py:"


def _payloads(marker: Path) -> dict[str, str]:
    touch = f"__import__('os').system('touch {marker}')"
    return {
        "python": touch,
        "jinja": "{{ cycler.__init__.__globals__.os.popen('touch " + str(marker) + "').read() }}",
        "pickle": "cos\nsystem\n(S'touch " + str(marker) + "'\ntR.",
        "url": "http://127.0.0.1:9/model-update",
    }


def _hostile_gguf(src: Path, dst: Path, marker: Path) -> Path:
    p = _payloads(marker)
    return rewrite(src, dst, strings={
        "general.name": p["python"], "general.description": p["pickle"],
        "general.source.url": p["url"], "tokenizer.chat_template": p["jinja"],
        "general.license": "exec(open('/etc/passwd').read())",
    })


def _hostile_onnx(dst: Path, marker: Path, *, foreign_op: bool) -> Path:
    p = _payloads(marker)
    model = onnx.load(str(EXAMPLE_ONNX))
    for key, value in p.items():
        model.metadata_props.add(key=key, value=value)
    model.doc_string = p["python"]
    model.graph.doc_string = p["jinja"]
    model.graph.node[0].doc_string = p["pickle"]
    if foreign_op:  # an op in a domain named like a Python module, on the output path
        out = model.graph.output[0].name
        producer = next(n for n in model.graph.node if out in n.output)
        producer.output[list(producer.output).index(out)] = "before_eval"
        model.graph.node.append(onnx.helper.make_node("system", ["before_eval"], [out], domain="os"))
        model.opset_import.append(onnx.helper.make_opsetid("os", 1))
    onnx.save(model, str(dst))
    return dst


def _feeds(path: Path, model: Path) -> Path:
    rng = np.random.default_rng()
    proto = onnx.load(str(model))
    inits = {i.name for i in proto.graph.initializer}
    arrays = {vi.name: rng.standard_normal([d.dim_value for d in vi.type.tensor_type.shape.dim])
              .astype(np.float32) for vi in proto.graph.input if vi.name not in inits}
    np.savez(path, **arrays)
    return path


def _pickled_feeds(path: Path, marker: Path) -> Path:
    np.savez(path, q=np.array([{"touch": str(marker)}], dtype=object))  # an object array: pickled
    return path


def _commands(models: Path, out: Path, gguf: Path, onnx_model: Path, feeds: Path) -> list[list[str]]:
    return [
        ["inspect", str(gguf)],
        ["run", str(gguf), "-p", "The for statement", "-n", "3", "-q"],
        ["convert", str(gguf), "-o", str(out / "g.onnx")],
        ["compare", str(gguf), "-p", "import os"],
        ["inspect", str(onnx_model)],
        ["convert", str(onnx_model), "-o", str(out / "o.onnx"), "--report", str(out / "r.json")],
        ["compare", str(onnx_model)],
        ["run", str(onnx_model), "--inputs", str(feeds), "-o", str(out / "x.npz")],
    ]


def _allowed_roots(*folders: Path) -> list[str]:
    paths = sysconfig.get_paths()
    roots = {sys.prefix, sys.base_prefix, sys.exec_prefix, paths["stdlib"], paths["purelib"],
             paths["platlib"], str(ROOT / "gdnc"), "/proc/", "/sys/", "/dev/"}
    roots |= {str(f.resolve()) for f in folders}
    return sorted(os.path.realpath(r) for r in roots)


def test_models_never_run_code_or_reach_out(tmp_path):
    clean, models, out = (tmp_path / d for d in ("clean", "model", "out"))
    for d in (clean, models, out):
        d.mkdir()
    marker = tmp_path / "PWNED"
    gguf_clean = write_models(clean, ["qwen35"], variants=("f32",))[0]
    onnx_clean = clean / "delta.onnx"
    onnx_clean.write_bytes(EXAMPLE_ONNX.read_bytes())
    gguf = _hostile_gguf(gguf_clean, models / "hostile.gguf", marker)
    onnx_model = _hostile_onnx(models / "hostile.onnx", marker, foreign_op=False)
    foreign = _hostile_onnx(models / "foreign-op.onnx", marker, foreign_op=True)
    feeds = _feeds(models / "feeds.npz", onnx_model)
    pickled = _pickled_feeds(models / "pickled.npz", marker)
    warm_out = tmp_path / "warm"
    warm_out.mkdir()
    control = tmp_path / "elsewhere" / "control.gguf"  # the hook's positive control
    control.parent.mkdir()
    control.write_bytes(gguf_clean.read_bytes())
    armed = _commands(models, out, gguf, onnx_model, feeds) + [
        ["run", str(foreign), "--inputs", str(feeds)],
        ["run", str(onnx_model), "--inputs", str(pickled)],
        ["inspect", str(control)],
    ]
    plan = {"warmup": _commands(clean, warm_out, gguf_clean, onnx_clean, feeds)
            + [["run", str(gguf_clean), "-p", "x", "-n", "1", "--json"], *armed[-3:]],
            "armed": armed}
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    proc = subprocess.run([sys.executable, "-m", "tests.robustness.audit_probe", str(tmp_path / "plan.json")],
                          capture_output=True, text=True, cwd=ROOT, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["exits"] == [0] * 8 + [1, 1, 0], report["exits"]  # the foreign op, the pickle: refused
    # gdnc's own graph cache (weight-free fused graphs it wrote itself) is read and written too
    roots = _allowed_roots(models, out, Path(os.environ.get("TMPDIR", "/tmp")) / ".triton",
                           *filter(None, [cache_dir()]))
    opened_outside, code_events = [], []
    for event, detail in report["events"]:
        TALLY.note("no-code", "file/code/network events audited")
        if event in ("open", "os.listdir", "os.scandir"):
            path = os.path.realpath(detail) if not detail.isdigit() else None
            if path is not None and not any(path == r or path.startswith(r.rstrip("/") + "/") for r in roots):
                opened_outside.append(f"{event} {detail}")
        elif not (event == "compile" and NUMPY_HEADER_PARSE in detail):
            code_events.append(f"{event} {detail}")
    assert not code_events, f"code, imports, processes or network after warm-up: {code_events[:20]}"
    assert set(opened_outside) == {f"open {control}"}, \
        f"files touched outside the model/output folders (only the control may be): {opened_outside[:20]}"
    assert not marker.exists()
    for name in ("g.onnx", "o.onnx", "r.json", "x.npz"):
        assert (out / name).is_file(), name


@pytest.mark.parametrize("module", ["pickle", "marshal", "socket", "urllib", "http", "requests", "shelve"])
def test_gdnc_does_not_import_code_loading_or_network_modules(module):
    """No gdnc source imports them (numpy's npz reading is pinned to allow_pickle=False)."""
    TALLY.note("no-code", "sources checked for code-loading / network imports")
    for path in (ROOT / "gdnc").rglob("*.py"):
        for line in path.read_text().splitlines():
            stripped = line.strip()
            assert not stripped.startswith((f"import {module}", f"from {module}")), f"{path}: {line}"
            assert "allow_pickle=True" not in stripped and "torch.load(" not in stripped, f"{path}: {line}"
            assert not re.search(r"(?<![\w.])(eval|exec)\(", stripped), f"{path}: {line}"
