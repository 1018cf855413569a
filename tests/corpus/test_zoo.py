"""Smoke tests of the exported model zoo and its spelling records (exports are cached per process
by corpus/zoo.py)."""

from __future__ import annotations

import collections
import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from corpus import zoo
from corpus.spellings import EXPORTERS, SPELLINGS, VARIANT_NAMES, Spelling, spelling
from corpus.variants import HFLoop

CATALOG = zoo.catalog(T=4)


def _run_ort(path: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(None, inputs)))


def _op_counts(path: str) -> collections.Counter:
    return collections.Counter(n.op_type for n in onnx.load(path).graph.node)


@pytest.mark.parametrize("builder", [b for _, b in CATALOG], ids=[i for i, _ in CATALOG])
def test_zoo_model_checks_and_runs(builder):
    z = builder()
    model = onnx.load(z.path)
    onnx.checker.check_model(model, full_check=True)
    assert [i.name for i in model.graph.input] == list(z.inputs)
    assert {o.name for o in model.graph.output} == set(z.reference)
    ops = {n.op_type for n in model.graph.node}
    assert not ops & {"Loop", "Scan", "If"}, "exporters unroll the token loop"
    got = _run_ort(z.path, z.inputs)
    for name, ref in z.reference.items():
        assert np.isfinite(got[name]).all()
        np.testing.assert_allclose(got[name], ref, rtol=1e-5, atol=1e-6, err_msg=name)


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("gva", [False, True])
def test_hf_export_matches_hf_function(exporter, gva):
    """ORT on the exported graph == the HF function called directly (not via the zoo)."""
    from transformers.models.qwen3_next.modeling_qwen3_next import (
        torch_recurrent_gated_delta_rule,
    )

    z = zoo.export_hf(T=4, exporter=exporter, l2norm=True, gva=gva, with_initial_state=True)
    t = {k: torch.from_numpy(v) for k, v in z.inputs.items()}
    with torch.no_grad():
        o, s = torch_recurrent_gated_delta_rule(
            t["q"],
            t["k"],
            t["v"],
            t["g"],
            t["beta"],
            t["initial_state"],
            output_final_state=True,
            use_qk_l2norm_in_kernel=True,
        )
    got = _run_ort(z.path, z.inputs)
    np.testing.assert_allclose(got["o"], o.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got["final_state"], s.numpy(), rtol=1e-5, atol=1e-6)
    assert got["o"].shape == (2, 4, 4 if gva else 2, 8)


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_unrolled_structure(exporter):
    """Facts the fusion pass relies on: one Exp and one write-back scatter per token.

    (Uses the T=4 catalog models, which are cached already.)
    """
    T = 4
    ops = _op_counts(zoo.export_hf(T=T, exporter=exporter, l2norm=False).path)
    assert ops["Exp"] == T
    assert ops["ScatterElements" if exporter == "dynamo" else "ScatterND"] == T
    assert "Exp" not in _op_counts(zoo.export_variant(name="direct_decay", T=T, exporter=exporter).path)
    assert _op_counts(zoo.export_variant(name="einsum", T=T, exporter=exporter).path)["Einsum"] == 3 * T
    assert _op_counts(zoo.export_variant(name="matmul", T=T, exporter=exporter).path)["MatMul"] == 3 * T


def test_tmp_dir_copy_and_isolation(tmp_path):
    a = zoo.export_hf(tmp_path, T=4, exporter="torchscript", l2norm=False)
    assert os.path.dirname(a.path) == str(tmp_path) and os.path.exists(a.path)
    a.inputs["q"][...] = 0.0  # callers get copies; the cache is not affected
    b = zoo.export_hf(T=4, exporter="torchscript", l2norm=False)
    assert b.path != a.path and np.abs(b.inputs["q"]).sum() > 0
    assert a.expect_fused == 1 and a.meta["HV"] == 2


def test_nearmiss_flags():
    for record in SPELLINGS:
        if record.name == "hf":
            continue
        z = zoo.export_variant(name=record.name, T=4, exporter="torchscript")
        assert z.expect_fused == (1 if record.must_fuse else 0) == int(z.meta["fusable"])
        assert record.name.startswith("nearmiss") != record.must_fuse
        assert (record.expected_miss is None) == record.must_fuse
        assert list(z.reference) == ["o", "final_state", *record.extra_outputs]
        assert record.notes in z.description


def test_spelling_records():
    names = [s.name for s in SPELLINGS]
    assert len(set(names)) == len(names) and names[0] == "hf" and tuple(names[1:]) == VARIANT_NAMES
    assert spelling("matmul").must_fuse and spelling("nearmiss_wrong_axis").square_state
    with pytest.raises(KeyError, match="unknown variant 'matmull'"):
        spelling("matmull")
    with pytest.raises(ValueError, match="an expected miss exactly when it must not fuse"):
        Spelling("x", HFLoop, must_fuse=True, expected_miss="state")
    with pytest.raises(ValueError, match="an expected miss exactly when it must not fuse"):
        Spelling("x", HFLoop, must_fuse=False)
    with pytest.raises(ValueError, match="needs K == V"):
        zoo.export_variant(name="nearmiss_wrong_axis", T=2, K=8, V=4)
    with pytest.raises(ValueError, match="exporter must be one of"):
        zoo.export_variant(name="matmul", T=2, exporter="onnxscript")  # type: ignore[arg-type]


def test_many_layers_stitched_matches_full_export():
    st = zoo.export_many_layers(n_layers=3, T=4, exporter="dynamo")
    full = zoo.export_many_layers(n_layers=3, T=4, exporter="dynamo", stitched=False)
    assert _op_counts(st.path) == _op_counts(full.path)
    got = _run_ort(st.path, st.inputs)
    for name, ref in full.reference.items():
        np.testing.assert_allclose(got[name], ref, rtol=1e-5, atol=1e-6, err_msg=name)
