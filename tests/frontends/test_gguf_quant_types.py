"""The GGUF reader's quant types: every type it claims to dequantize, and refusals for the rest.

F16, BF16 and Q4_0 are written by ``gguf.quants.quantize`` over the qwen35 fixture (via
``gguf_rewrite.rewrite``): each tensor dequantizes to the F32 original within that type's error,
and the model still runs (fused == unfused, close to HF's fp32 logits). gguf-py 0.19 cannot
quantize the K-quants in numpy, so Q4_K, Q5_K and Q6_K are checked on small hand-built files of
raw blocks against ``gguf.quants.dequantize``: type dispatch and shape handling. Unsupported
types and truncated tensor data are one-line ``ModelLoadError``s.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFReader, GGUFWriter
from gguf.quants import dequantize, quantize

from corpus.gguf_rewrite import rewrite
from gdnc.errors import ModelLoadError
from gdnc.frontends.gguf_file import GgufFile
from gdnc.models.qwen_hybrid.model import HybridModel

Q = GGMLQuantizationType
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "gguf"
F32_PATH = FIXTURES / "qwen35-fixture-f32.gguf"
MAX_ABS = 1e-4  # fused vs unfused on the same weights

# relative L2 of the fused logits (prompt1, 70 tokens) against hf_1; measured with gguf 0.19:
# F16 4.2e-4, BF16 3.3e-3, Q4_0 0.169 (Q8_0, for comparison: 1.05e-2). Bounds leave ~3x headroom
# below and above, so a type that silently stays F32 (rel ~4e-7) or decodes garbage fails.
REL_L2 = {Q.F16: (1e-5, 2e-3), Q.BF16: (3e-4, 1e-2), Q.Q4_0: (5e-2, 0.35)}


def _one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert msg and "\n" not in msg, msg
    return msg


def _quantizable(shape: tuple[int, ...], qtype: GGMLQuantizationType) -> bool:
    """The rule gguf_rewrite applies: 2-D+ weights whose numpy last dim fills whole blocks."""
    return len(shape) >= 2 and shape[-1] % GGML_QUANT_SIZES[qtype][0] == 0


@pytest.fixture(scope="module")
def f32_tensors() -> dict[str, np.ndarray]:
    src = GgufFile(F32_PATH)
    return {name: src.tensor(name) for name in src.tensor_names()}


@pytest.fixture(scope="module")
def reference() -> dict[str, np.ndarray]:
    return dict(np.load(FIXTURES / "qwen35-fixture-ref.npz"))


@pytest.fixture(scope="module", params=[Q.F16, Q.BF16, Q.Q4_0], ids=lambda q: q.name)
def quantized(request, tmp_path_factory) -> tuple[GGMLQuantizationType, Path]:
    qtype = request.param
    path = tmp_path_factory.mktemp("quant") / f"qwen35-{qtype.name}.gguf"
    return qtype, rewrite(F32_PATH, path, qtype=qtype)


def test_gguf_py_quantizes_these_types_but_not_k_quants():
    """Why the K-quants below use hand-built raw blocks (revisit if gguf-py learns them)."""
    x = np.linspace(-1, 1, 512, dtype=np.float32).reshape(2, 256)
    for qtype in (Q.F16, Q.BF16, Q.Q4_0):
        assert quantize(x, qtype).size > 0
    for qtype in (Q.Q4_K, Q.Q5_K, Q.Q6_K):
        with pytest.raises(NotImplementedError):
            quantize(x, qtype)


def test_tensor_types_show_the_quant_type(quantized, f32_tensors):
    qtype, path = quantized
    types = GgufFile(path).tensor_types()
    assert set(types) == set(f32_tensors)
    for name, arr in f32_tensors.items():
        assert types[name] == (qtype.name if _quantizable(arr.shape, qtype) else "F32"), name
    assert types["token_embd.weight"] == types["blk.0.attn_qkv.weight"] == qtype.name
    assert types["blk.0.ssm_a"] == "F32"


def test_each_tensor_dequantizes_within_the_type_error(quantized, f32_tensors):
    qtype, path = quantized
    g = GgufFile(path)
    n_checked = 0
    for name, want in f32_tensors.items():
        got = g.tensor(name, want.shape)
        assert got.dtype == np.float32 and got.shape == want.shape and got.flags.c_contiguous
        if g.tensor_types()[name] == "F32":
            np.testing.assert_array_equal(got, want, err_msg=name)
            continue
        n_checked += 1
        err = np.abs(got - want)
        if qtype == Q.F16:  # round to nearest: half an ulp (2^-11 relative), 2^-25 in subnormals
            assert (err <= 2.0**-11 * np.abs(want) + 2.0**-25).all(), name
        elif qtype == Q.BF16:  # 8 mantissa bits: 2^-8 relative at worst, measured 3.9e-3
            assert (err <= 2.0**-8 * np.abs(want)).all(), name
            assert err.max() > 0, name
        else:  # Q4_0: d = max/-8, the far side clips at +7d: error <= block max/8 (+ fp16 d)
            block = GGML_QUANT_SIZES[qtype][0]
            absmax = np.abs(want).reshape(-1, block).max(axis=1)
            worst = err.reshape(-1, block).max(axis=1)
            assert (worst <= absmax / 7).all(), name
            assert err.mean() <= np.abs(want).mean() / 8, name  # typical error much smaller
            assert err.max() > 0, name
    assert n_checked == sum(_quantizable(a.shape, qtype) for a in f32_tensors.values()) > 30


def test_quantized_model_runs_fused_equals_unfused_and_near_hf(quantized, reference):
    qtype, path = quantized
    tokens, want = reference["prompt1"], reference["hf_1"]
    out = {fused: HybridModel(str(path), fused=fused).logits(tokens).numpy() for fused in (False, True)}
    assert out[True].shape == want.shape
    assert np.isfinite(out[True]).all()
    assert np.abs(out[True] - out[False]).max() <= MAX_ABS
    rel = np.linalg.norm(out[True] - want) / np.linalg.norm(want)
    low, high = REL_L2[qtype]
    assert low < rel < high, f"{qtype.name}: rel L2 {rel:.3g} not in ({low}, {high})"


# --- K-quants from raw blocks --------------------------------------------------------------

def _scales(rng: np.random.Generator, n: int) -> np.ndarray:
    """n sane fp16 super-block scales as bytes [n, 2]."""
    return rng.uniform(1e-3, 1e-2, size=(n, 1)).astype(np.float16).view(np.uint8)


def _raw_k_blocks(qtype: GGMLQuantizationType, n_blocks: int, seed: int) -> np.ndarray:
    """Random K-quant blocks [n_blocks, type_size] with finite fp16 scales (gguf quants.py layout)."""
    block, type_size = GGML_QUANT_SIZES[qtype]
    assert block == 256
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, 256, size=(n_blocks, type_size), dtype=np.uint8)
    if qtype in (Q.Q4_K, Q.Q5_K):  # d (fp16), dmin (fp16), 12 scale/min bytes, [qh 32], qs 128
        raw[:, 0:2] = _scales(rng, n_blocks)
        raw[:, 2:4] = _scales(rng, n_blocks)
    elif qtype == Q.Q6_K:  # ql 128, qh 64, 16 int8 scales, d (fp16) last
        raw[:, type_size - 2:] = _scales(rng, n_blocks)
    else:
        raise AssertionError(qtype)
    return raw


def _write(path: Path, tensors: list[tuple[str, np.ndarray, tuple[int, ...], GGMLQuantizationType]]) -> Path:
    """A GGUF holding raw uint8 tensors; the shape is the numpy-order *byte* shape."""
    writer = GGUFWriter(path, "qwen35")
    for name, raw, byte_shape, qtype in tensors:
        writer.add_tensor(name, raw, raw_shape=byte_shape, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


# ggml ne (ne0 first) -> numpy shape reversed
NE_SHAPES = [(256, 3), (512, 3), (256, 2, 4)]


@pytest.mark.parametrize("qtype", [Q.Q4_K, Q.Q5_K, Q.Q6_K], ids=lambda q: q.name)
def test_k_quants_dequantize_with_numpy_shape(tmp_path, qtype):
    block, type_size = GGML_QUANT_SIZES[qtype]
    entries, want = [], {}
    for i, ne in enumerate(NE_SHAPES):
        shape = tuple(reversed(ne))
        n_blocks = int(np.prod(shape)) // block
        raw = _raw_k_blocks(qtype, n_blocks, seed=100 * i + int(qtype))
        byte_shape = (*shape[:-1], shape[-1] // block * type_size)
        name = f"t{i}.weight"
        # flat bytes + raw_shape for the 3-D one, bytes already shaped for the others
        stored = raw.reshape(-1) if len(ne) == 3 else raw.reshape(byte_shape)
        entries.append((name, stored, byte_shape, qtype))
        want[name] = dequantize(raw.reshape(byte_shape), qtype).reshape(shape)
        assert np.isfinite(want[name]).all() and np.abs(want[name]).max() > 0
    g = GgufFile(_write(tmp_path / f"{qtype.name}.gguf", entries))
    assert g.tensor_types() == {name: qtype.name for name in want}
    for (name, _, _, _), ne in zip(entries, NE_SHAPES, strict=True):
        shape = tuple(reversed(ne))
        got = g.tensor(name, shape)
        assert got.dtype == np.float32 and got.shape == shape
        np.testing.assert_array_equal(got, want[name], err_msg=name)
        assert np.array_equal(g.tensor(name), got)  # no shape check: same tensor
        with pytest.raises(ModelLoadError) as exc:
            g.tensor(name, shape[::-1])
        assert f"tensor {name!r} has shape {list(shape)}" in _one_line(exc)


def test_k_quant_rows_are_independent(tmp_path):
    """Row r of ne [256, 3] is exactly the dequantized block r (no row/block mix-up)."""
    raw = _raw_k_blocks(Q.Q6_K, 3, seed=7)
    g = GgufFile(_write(tmp_path / "rows.gguf", [("w", raw, raw.shape, Q.Q6_K)]))
    got = g.tensor("w", (3, 256))
    for r in range(3):
        np.testing.assert_array_equal(got[r], dequantize(raw[r:r + 1], Q.Q6_K)[0])


# --- refusals ------------------------------------------------------------------------------

@pytest.mark.parametrize("qtype", [Q.Q2_K, Q.IQ4_NL, Q.Q4_1], ids=lambda q: q.name)
def test_unsupported_type_is_refused_by_name(tmp_path, qtype):
    block, type_size = GGML_QUANT_SIZES[qtype]
    raw = np.random.default_rng(3).integers(0, 256, size=(2, 256 // block * type_size), dtype=np.uint8)
    path = _write(tmp_path / f"{qtype.name}.gguf", [("blk.0.odd.weight", raw, raw.shape, qtype)])
    g = GgufFile(path)  # opening is fine: only reading the tensor is refused
    assert g.tensor_types() == {"blk.0.odd.weight": qtype.name}
    for shape in (None, (2, 256)):
        with pytest.raises(ModelLoadError) as exc:
            g.tensor("blk.0.odd.weight", shape)
        msg = _one_line(exc)
        assert str(path) in msg and "'blk.0.odd.weight'" in msg and qtype.name in msg


@pytest.mark.parametrize("qtype", [Q.Q4_K, Q.Q6_K, Q.Q8_0, Q.F16], ids=lambda q: q.name)
def test_truncated_tensor_data_is_one_line_error(tmp_path, qtype):
    block, type_size = GGML_QUANT_SIZES[qtype]
    if block == 256:
        raw = _raw_k_blocks(qtype, 3, seed=11)
    else:
        raw = quantize(np.linspace(-1, 1, 3 * 256, dtype=np.float32).reshape(3, 256), qtype)
        raw = raw.view(np.uint8).reshape(3, -1)
    full = _write(tmp_path / "full.gguf", [("a.weight", raw, raw.shape, qtype)])
    assert GgufFile(full).tensor("a.weight", (3, 256)).shape == (3, 256)
    (t,) = GGUFReader(full).tensors
    end = t.data_offset + t.n_bytes
    assert t.n_bytes == raw.nbytes and end <= full.stat().st_size
    data = full.read_bytes()
    for cut in (end - 1, end - type_size - 5, t.data_offset + 1, t.data_offset):
        path = tmp_path / f"cut{cut}.gguf"
        path.write_bytes(data[:cut])
        with pytest.raises(ModelLoadError) as exc:
            GgufFile(path).tensor("a.weight", (3, 256))
        assert str(path) in _one_line(exc)
