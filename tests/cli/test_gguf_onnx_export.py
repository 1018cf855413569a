"""``gdnc convert MODEL.gguf`` at real size: quantized weights keep their size in the ONNX file
and their values (onnxruntime's logits within 1e-4 of gdnc's over a mixed batch, then a decode
step); ``--target ort`` serves the same batches through ``LinearAttention``; the export streams
the weights (its peak memory is about one tensor, not the model widened to float32); (slow) a
model past protobuf's 2 GB is written and run by onnxruntime."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from gguf import GGMLQuantizationType

from corpus.gguf_rewrite import rewrite
from corpus.sized_gguf import PRESETS, write_sized
from gdnc.commands.gguf_export import export_gguf
from gdnc.frontends.gguf_file import GgufFile
from gdnc.ir.to_onnx import external_data_files
from gdnc.models.qwen_hybrid.batch import batch_feeds
from gdnc.models.qwen_hybrid.model import HybridModel
from gdnc.runtime.state_pool import Entry

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "gguf"
GDNC = Path(sys.executable).parent / "gdnc"
MAX_ABS = 1e-4
MAX_SIZE_RATIO = 1.3  # exported files (model and data) against the GGUF's tensor bytes
# qwen35, one Gated DeltaNet block and one attention block, every row a multiple of 256 (K-quants)
SMALL = dataclasses.replace(PRESETS["0.5b"], hidden=256, layers=2, interval=2, k_heads=1, v_heads=2,
                            attn_heads=1, attn_kv_heads=1, ffn=256, vocab=640)
# as SMALL, but one tensor dwarfs the rest: the (tied) embedding, 2^18 x 256 (256 MiB as float32)
BIG_EMBEDDING = dataclasses.replace(SMALL, vocab=1 << 18)


def fixture(arch: str) -> Path:
    return FIXTURES / f"{arch}-fixture-f32.gguf"


def _session(path: Path) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def max_diff_over_steps(onnx_path: Path, gguf_path: Path) -> float:
    """Max |onnxruntime - gdnc| over logits and pools: two sequences (slots 1 and 0) prefill 5
    and 3 tokens in one batch, then each decodes one token; every step starts from gdnc's pools."""
    model = HybridModel(str(gguf_path), fused=True)
    pool = model.new_pool(2, 16)
    slots = [pool.allocate() for _ in range(2)][::-1]
    rng = np.random.default_rng(0)
    steps = [[Entry(s, tuple(rng.integers(0, 300, n).tolist())) for s, n in zip(slots, (5, 3))],
             [Entry(s, (int(rng.integers(0, 300)),)) for s in slots]]
    session, worst = _session(onnx_path), 0.0
    for batch in steps:
        feeds = batch_feeds(model.cfg, pool, batch, all_logits=True)
        feeds.update({name: t.numpy().copy() for name, t in pool.tensors.items()})
        got = dict(zip([o.name for o in session.get_outputs()],
                       session.run(None, {i.name: feeds[i.name] for i in session.get_inputs()})))
        want = {"logits": np.concatenate([x.numpy() for x in model.forward(pool, batch, all_logits=True)]),
                **{f"{name}.out": t.numpy() for name, t in pool.tensors.items()}}
        assert set(got) == set(want)
        worst = max(worst, *(float(np.abs(got[k] - want[k]).max()) for k in want))
    return worst


def _exported_bytes(onnx_path: Path) -> int:
    return onnx_path.stat().st_size + sum(p.stat().st_size for p in external_data_files(onnx_path))


def _tensor_bytes(gguf_path: Path) -> int:
    f = GgufFile(gguf_path)
    return sum(f.tensor_nbytes(n) for n in f.tensor_names())


@pytest.fixture(scope="module")
def quantized(tmp_path_factory) -> dict[str, Path]:
    """The qwen35 fixture in F16, Q8_0 and Q4_0 (gguf's quantizer), and a small random Q4_K_M
    model (Q4_K, Q5_K and Q6_K matrices)."""
    out = tmp_path_factory.mktemp("quantized")
    files = {q: rewrite(fixture("qwen35"), out / f"{q}.gguf", qtype=GGMLQuantizationType[q])
             for q in ("F16", "Q8_0", "Q4_0")}
    files["Q4_K_M"] = write_sized(out / "q4_k_m.gguf", SMALL, "q4_k")
    return files


@pytest.mark.parametrize("qtype", ["F16", "Q8_0", "Q4_0", "Q4_K_M"])
def test_quantized_export_keeps_size_and_logits(quantized, qtype, tmp_path):
    src = quantized[qtype]
    types = set(GgufFile(src).tensor_types().values())
    assert types == ({"F32", "Q4_K", "Q5_K", "Q6_K"} if qtype == "Q4_K_M" else {"F32", qtype})
    out = tmp_path / "m.onnx"
    export_gguf(src, out, unfused=False)
    assert _exported_bytes(out) <= MAX_SIZE_RATIO * _tensor_bytes(src)
    proto = onnx.load(str(out), load_external_data=False)
    assert max(len(t.raw_data) for t in proto.graph.initializer) <= 4096  # weights all outside
    assert max_diff_over_steps(out, src) <= MAX_ABS


@pytest.mark.parametrize("name", ["tiny-qwen35-f16", "qwen35", "qwen3next", "qwen35moe"])
def test_ort_target_serves_mixed_batches(name, tmp_path):
    src = ROOT / "examples" / f"{name}.gguf" if name.startswith("tiny") else fixture(name)
    out = tmp_path / "ort.onnx"
    if name.startswith("tiny"):  # through the command line once
        proc = subprocess.run([str(GDNC), "convert", str(src), "-o", str(out), "--target", "ort", "--json"],
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
        report = json.loads(proc.stdout)
    else:
        report = export_gguf(src, out, unfused=False, target="ort")
    assert report["target"] == "ort" and report["gated_delta_net_nodes"] == 0
    ops = {(n.domain, n.op_type) for n in onnx.load(str(out), load_external_data=False).graph.node}
    assert ("com.microsoft", "LinearAttention") in ops and not any(d == "ai.gdnc" for d, _ in ops)
    assert max_diff_over_steps(out, src) <= MAX_ABS


_PEAK = """
import resource, sys
from gdnc.commands.gguf_export import export_gguf
export_gguf(sys.argv[1], sys.argv[2], unfused=True, lengths=(1,))
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
"""


def export_peak_bytes(src: Path, out: Path) -> int:
    """The peak resident memory of a process exporting ``src`` (unfused: no fusion to wait for)."""
    proc = subprocess.run([sys.executable, "-c", _PEAK, str(src), str(out)], capture_output=True,
                          text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    return int(proc.stdout.split()[-1])


def test_export_memory_is_about_one_tensor(tmp_path):
    small = write_sized(tmp_path / "small.gguf", SMALL, "q8_0")
    big = write_sized(tmp_path / "big.gguf", BIG_EMBEDDING, "q8_0")
    embedding = GgufFile(big).tensor_shape("token_embd.weight")
    fp32 = 4 * int(np.prod(embedding))
    assert fp32 > 100 * _tensor_bytes(small)  # the big file is its embedding
    overhead = export_peak_bytes(small, tmp_path / "small.onnx")
    peak = export_peak_bytes(big, tmp_path / "big.onnx")
    print(f"export peak: {peak / 2**20:.0f} MiB for a {fp32 / 2**20:.0f} MiB (float32) embedding; "
          f"{overhead / 2**20:.0f} MiB for the small model")
    assert peak < overhead + 2 * fp32
    assert peak < overhead + 0.75 * fp32  # the Q8_0 codes and the file's pages, not float32


@pytest.mark.slow
def test_export_past_two_gigabytes_runs_in_onnxruntime(tmp_path):
    """The 4B preset cut to 16 blocks, Q8_0: a 2.4 GB GGUF, exported in about one tensor's
    memory, loaded and run by onnxruntime (its logits those of gdnc)."""
    shape = dataclasses.replace(PRESETS["4b"], layers=16)
    src = write_sized(tmp_path / "big.gguf", shape, "q8_0")
    out = tmp_path / "big.onnx"
    peak = export_peak_bytes(src, out)
    f = GgufFile(src)
    largest = max(int(np.prod(f.tensor_shape(n))) for n in f.tensor_names())
    written = _exported_bytes(out)
    print(f"exported {written / 2**30:.2f} GiB ({_tensor_bytes(src) / 2**30:.2f} GiB in the GGUF) "
          f"with a peak of {peak / 2**30:.2f} GiB; largest tensor {4 * largest / 2**30:.2f} GiB as float32")
    assert 2**31 < written <= MAX_SIZE_RATIO * _tensor_bytes(src)
    assert peak < 2**30 + 2 * 4 * largest
    fused = tmp_path / "fused.onnx"
    export_gguf(src, fused, unfused=False)
    assert max_diff_over_steps(fused, src) <= MAX_ABS
