"""The native weight kernel (``gdnc.lowering.quant.native_linear``, ``linear_rows.c``) against
fp64 math on gguf's own dequantized values, its AVX2 and portable paths alike, into poisoned
outputs; a NaN in one row of x stays in that row; ``packed.linear`` takes it for few rows only;
the build (``gdnc.lowering.native``) reports why it cannot run and reuses what it built."""

from __future__ import annotations

import math
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gdnc.errors import GdncWarning, ShapeError
from gdnc.lowering import native
from gdnc.lowering.quant import native_linear
from gdnc.lowering.quant.blocks import block_layout
from gdnc.lowering.quant.packed import LinearGroup, PackedWeight, linear
from tests.lowering.test_quant import assert_matmul_close, random_bytes, reference

QTYPES = sorted(native_linear.QTYPES)
needs_kernel = pytest.mark.skipif(native_linear.reason() is not None,
                                  reason=f"native kernel unavailable: {native_linear.reason()}")
PATHS = [True, pytest.param(False, id="portable")]


def _weight(rng: np.random.Generator, qtype: str, rows: int, blocks: int) -> tuple[torch.Tensor, np.ndarray]:
    """Random ``qtype`` bytes uint8 [rows, row_bytes] of ``blocks`` blocks a row (sane values;
    a row a multiple of 32 elements) and their reference values float32 [rows, cols]."""
    cols = blocks * max(block_layout(qtype)[0], 32)
    raw = random_bytes(rng, qtype, (rows, cols), sane=True)
    return torch.from_numpy(raw), reference(raw, qtype)


@needs_kernel
@settings(max_examples=40, deadline=None)
@given(qtype=st.sampled_from(QTYPES), rows=st.integers(1, 37), blocks=st.integers(1, 3),
       m=st.integers(1, 11), threads=st.integers(1, 3), vector=st.booleans(),
       seed=st.integers(0, 2**32 - 1))
def test_matches_fp64_on_the_reference_values(qtype: str, rows: int, blocks: int, m: int, threads: int,
                                              vector: bool, seed: int) -> None:
    rng = np.random.default_rng(seed)
    raw, values = _weight(rng, qtype, rows, blocks)
    x = torch.from_numpy(rng.standard_normal((m, values.shape[1])).astype(np.float32))
    out = torch.full((m, rows), math.nan)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        native_linear.linear_rows(x, raw, qtype, out, vector=vector)
    finally:
        torch.set_num_threads(before)
    assert_matmul_close(out, x, values)


@needs_kernel
@pytest.mark.parametrize("vector", PATHS)
@pytest.mark.parametrize("qtype", ["F16", "Q8_0", "Q4_K", "Q6_K"])
def test_strided_rows_of_x_and_out(qtype: str, vector: bool) -> None:
    """x and out with row strides beyond their widths (views into larger buffers)."""
    rng = np.random.default_rng(3)
    raw, values = _weight(rng, qtype, 9, 2)
    cols = values.shape[1]
    x = torch.from_numpy(rng.standard_normal((6, cols + 40)).astype(np.float32))[:, 8:8 + cols]
    out = torch.full((6, 30), math.nan)
    native_linear.linear_rows(x, raw, qtype, out[:, 5:14], vector=vector)
    assert_matmul_close(out[:, 5:14], x, values)
    assert out[:, :5].isnan().all() and out[:, 14:].isnan().all()


@needs_kernel
@pytest.mark.parametrize("vector", PATHS)
@pytest.mark.parametrize("qtype", QTYPES)
def test_a_nan_in_one_row_of_x_stays_in_its_row(qtype: str, vector: bool) -> None:
    rng = np.random.default_rng(4)
    raw, values = _weight(rng, qtype, 5, 1)
    x = torch.from_numpy(rng.standard_normal((7, values.shape[1])).astype(np.float32))
    x[2, 3], x[5, 0] = math.nan, math.inf
    out = torch.empty(7, 5)
    native_linear.linear_rows(x, raw, qtype, out, vector=vector)
    assert out[[0, 1, 3, 4, 6]].isfinite().all()
    assert out[2].isnan().all() and not out[5].isfinite().any()


@needs_kernel
def test_refuses_what_breaks_its_contract() -> None:
    raw, _ = _weight(np.random.default_rng(5), "Q8_0", 4, 1)
    x, out = torch.randn(2, 32), torch.empty(2, 4)
    for xb, rb, ob in [(x, raw[:, :-1], out), (x.double(), raw, out), (x, raw, out[:, :3]),
                       (x, raw, torch.empty(4, 2).t()), (torch.randn(2, 64), raw, out)]:
        with pytest.raises(ShapeError, match="linear_rows"):
            native_linear.linear_rows(xb, rb, "Q8_0", ob)


@needs_kernel
@pytest.mark.parametrize(("m", "native_calls"), [(1, 1), (native_linear.MAX_ROWS["Q4_K"], 1),
                                                 (native_linear.MAX_ROWS["Q4_K"] + 1, 0)])
def test_packed_linear_takes_the_kernel_for_few_rows(monkeypatch: pytest.MonkeyPatch, m: int,
                                                    native_calls: int) -> None:
    calls: list[str] = []
    kernel = native_linear.linear_rows

    def spy(x: torch.Tensor, raw: torch.Tensor, qtype: str, out: torch.Tensor) -> None:
        calls.append(qtype)
        kernel(x, raw, qtype, out)

    monkeypatch.setattr(native_linear, "linear_rows", spy)
    rng = np.random.default_rng(6)
    raw, values = _weight(rng, "Q4_K", 3, 1)
    w = PackedWeight.from_buffer(raw.numpy().reshape(-1), "Q4_K", values.shape)
    x = torch.from_numpy(rng.standard_normal((m, values.shape[1])).astype(np.float32))
    assert_matmul_close(linear(x, w), x, values)
    assert len(calls) == native_calls


@needs_kernel
@settings(max_examples=25, deadline=None)
@given(qtypes=st.lists(st.sampled_from(QTYPES), min_size=1, max_size=4),
       rows=st.lists(st.integers(1, 19), min_size=4, max_size=4), m=st.integers(1, 9),
       threads=st.integers(1, 3), vector=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_a_group_of_weights_is_each_weight_alone(qtypes: list[str], rows: list[int], m: int, threads: int,
                                                 vector: bool, seed: int) -> None:
    """One call over several weights (types mixed, rows split over threads across weights)
    writes exactly what one call per weight writes."""
    rng = np.random.default_rng(seed)
    cols = 256
    raws = [torch.from_numpy(random_bytes(rng, q, (r, cols), sane=True)) for q, r in zip(qtypes, rows)]
    x = torch.from_numpy(rng.standard_normal((m, cols)).astype(np.float32))
    together = [torch.full((m, r.shape[0]), math.nan) for r in raws]
    alone = [torch.full((m, r.shape[0]), math.nan) for r in raws]
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        native_linear.linear_rows_many(x, raws, qtypes, together, vector=vector)
        for raw, qtype, out in zip(raws, qtypes, alone):
            native_linear.linear_rows(x, raw, qtype, out, vector=vector)
    finally:
        torch.set_num_threads(before)
    for a, b in zip(together, alone):
        assert torch.equal(a, b)


@needs_kernel
def test_linear_group_takes_one_call_where_the_kernel_takes_every_weight(
        monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    kernel = native_linear.Weights.__call__

    def spy(self: native_linear.Weights, x: torch.Tensor, outs: list, **kw: bool) -> None:
        calls.append(len(outs))
        kernel(self, x, outs, **kw)

    monkeypatch.setattr(native_linear.Weights, "__call__", spy)
    rng = np.random.default_rng(8)
    weights = []
    for qtype, n in (("Q8_0", 5), ("F16", 3), ("Q4_K", 7)):
        raw, values = _weight(rng, qtype, n, 256 // max(block_layout(qtype)[0], 32))
        weights.append((PackedWeight.from_buffer(raw.numpy().reshape(-1), qtype, values.shape), values))
    for m, want in ((3, [3]), (native_linear.MAX_ROWS["F16"] + 1, [1, 1])):  # F16 leaves the group
        calls.clear()
        x = torch.from_numpy(rng.standard_normal((1, m, 256)).astype(np.float32))
        outs = LinearGroup([w for w, _ in weights])(x)
        for out, (w, values) in zip(outs, weights):
            assert out.shape == (1, m, w.shape[0])
            assert_matmul_close(out[0], x[0], values)
        assert calls == want


def test_without_the_kernel_linear_takes_the_torch_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(native_linear, "_kernel", lambda: "no C compiler found")
    native_linear._warn.cache_clear()
    assert native_linear.reason() == "no C compiler found" and not native_linear.simd()
    rng = np.random.default_rng(7)
    raw, values = _weight(rng, "F16", 4, 2)
    w = PackedWeight.from_buffer(raw.numpy().reshape(-1), "F16", values.shape)
    x = torch.from_numpy(rng.standard_normal((2, values.shape[1])).astype(np.float32))
    with pytest.warns(GdncWarning, match=r"unavailable \(no C compiler found\); matmuls take the slower"):
        assert_matmul_close(linear(x, w), x, values)
    native_linear._warn.cache_clear()
    with pytest.raises(native.NativeUnavailable, match="no C compiler found"):
        native_linear.linear_rows(x, raw, "F16", torch.empty(2, 4))


# ----------------------------------------------------------------------------- the build


@pytest.fixture
def source(tmp_path: Path) -> Path:
    path = tmp_path / "src" / "twice.c"
    path.parent.mkdir()
    path.write_text("int twice(int v) { return 2 * v; }\n")
    return path


def _build(source: Path) -> object:
    native.library.cache_clear()
    try:
        return native.library(source)
    finally:
        native.library.cache_clear()


@pytest.mark.skipif(native.compiler() is None, reason="no C compiler")
def test_a_build_is_kept_and_reused(source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GDNC_CACHE_DIR", str(tmp_path / "cache"))
    assert _build(source).twice(21) == 42  # type: ignore[attr-defined]
    built = list((tmp_path / "cache" / "native").iterdir())
    assert [p.suffix for p in built] == [".so"]
    monkeypatch.setattr(subprocess, "run", None)  # a second start compiles nothing
    assert _build(source).twice(4) == 8  # type: ignore[attr-defined]


@pytest.mark.skipif(native.compiler() is None, reason="no C compiler")
def test_with_the_cache_off_nothing_is_left(source: Path, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GDNC_CACHE_DIR", "off")
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    assert _build(source).twice(5) == 10  # type: ignore[attr-defined]
    assert not list((tmp_path / "tmp").iterdir())


@pytest.mark.parametrize(("env", "message"), [
    ({"GDNC_NATIVE": "off"}, "GDNC_NATIVE=off"),
    ({"CC": "/nonexistent/cc"}, "no C compiler found"),
    ({"CC": "false"}, "false could not build twice.c: exit status 1"),
])
def test_why_it_cannot_run_is_one_line(source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       env: dict[str, str], message: str) -> None:
    monkeypatch.setenv("GDNC_CACHE_DIR", str(tmp_path / "cache"))
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(native.NativeUnavailable, match=message) as info:
        _build(source)
    assert "\n" not in str(info.value)
    assert not list((tmp_path / "cache").rglob("*.tmp"))


@pytest.mark.skipif(native.compiler() is None, reason="no C compiler")
def test_a_compile_error_names_the_compilers_last_line(source: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GDNC_CACHE_DIR", str(tmp_path / "cache"))
    source.write_text("int broken( {\n")
    with pytest.raises(native.NativeUnavailable, match="could not build twice.c: .+") as info:
        _build(source)
    assert "\n" not in str(info.value)


def test_an_unwritable_cache_builds_in_a_temporary_folder(source: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    if native.compiler() is None:
        pytest.skip("no C compiler")
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("GDNC_CACHE_DIR", str(blocker / "below"))
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    assert _build(source).twice(3) == 6  # type: ignore[attr-defined]
    assert not list((tmp_path / "tmp").iterdir())
    monkeypatch.setattr(tempfile, "tempdir", str(blocker / "tmp"))  # nowhere to write at all
    with pytest.raises(native.NativeUnavailable, match="cannot write the native build") as info:
        _build(source)
    assert "\n" not in str(info.value)
