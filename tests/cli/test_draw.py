"""``gdnc inspect MODEL --draw FILE``: the picture of one layer before and after fusion.

The SVG keeps its text as text; the texts checked carry ids (``gdnc/drawing/figure.py``):
``step-op-N`` (op N of the expanded token step; ``step-op-N-1`` its label, ``-2`` its node),
``in-S`` / ``in-S-1`` (the state terminal and its value), ``more-steps``, ``other-sequences``,
``fused-node``, ``hist-before-OP`` / ``hist-after-OP``.
"""

from __future__ import annotations

import json
import re
import subprocess
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

import matplotlib.image
import onnx
import pytest
from onnx import TensorProto, helper

from gdnc.passes.pipeline import ConversionReport
from tests.cli import processes

ROOT = Path(__file__).resolve().parents[2]
ONNX_EXAMPLE = ROOT / "examples" / "hf_recurrent_gated_delta_rule_t16.onnx"
GGUF_EXAMPLE = ROOT / "examples" / "tiny-qwen35-f16.gguf"
SVG = "{http://www.w3.org/2000/svg}"

# One token of HF's torch_recurrent_gated_delta_rule, read off its source: g_t.exp() unsqueezed
# (the exporter folds the two unsqueezes into one), beta_t.unsqueeze, S * g_t,
# (S * k_t.unsqueeze(-1)).sum(-2), (v_t - kv_mem) * beta_t, k_t.unsqueeze(-1) * delta.unsqueeze(-2),
# S + that, (S * q_t.unsqueeze(-1)).sum(-2); k_t.unsqueeze(-1) is computed once.
HF_STEP = Counter({"Mul": 5, "Unsqueeze": 5, "ReduceSum": 2, "Exp": 1, "Sub": 1, "Add": 1})
# gdnc's GGUF builder (models/qwen_hybrid/graph.py _delta_net) spells the same token with the
# decay's two unsqueezes kept apart
GGUF_STEP = HF_STEP + Counter({"Unsqueeze": 1})


def gdnc(*args: str | Path) -> subprocess.CompletedProcess:
    return processes.gdnc(*args, cwd=ROOT)


def gdnc_all(*calls: tuple) -> list[subprocess.CompletedProcess]:
    return processes.gdnc_all(*calls, cwd=ROOT)


def texts(svg: Path) -> dict[str, str]:
    """Text of every element with an id, the SVG parsed as XML (which it must be)."""
    root = ET.parse(svg).getroot()
    assert root.tag == f"{SVG}svg"
    return {e.get("id"): "".join(e.itertext()).strip() for e in root.iter() if e.get("id")}


def step_ops(found: dict[str, str]) -> list[str]:
    return [found[f"step-op-{i}"] for i in range(sum(1 for k in found if re.fullmatch(r"step-op-\d+", k)))]


def step_labels(found: dict[str, str]) -> set[tuple[str, str]]:
    """(op, label) of each op of the expanded step."""
    return {(op, found[f"step-op-{i}-1"]) for i, op in enumerate(step_ops(found))}


# what the recurrence's main ops compute, in the drawing's symbols
ROLES = {("Exp", "exp(g)"), ("Mul", "Ŝ = S·exp(g)"), ("ReduceSum", "u = Σ(Ŝ·k)"), ("Sub", "v − u"),
         ("Mul", "δ = (v − u)·β"), ("Mul", "k ⊗ δ"), ("Add", "S′ = Ŝ + k ⊗ δ"), ("ReduceSum", "o = Σ(S′·q)")}


def check_histogram(found: dict[str, str], report: dict) -> None:
    for which in ("before", "after"):
        counts = report[f"ops_{which}"]
        drawn = {k.removeprefix(f"hist-{which}-"): v for k, v in found.items()
                 if k.startswith(f"hist-{which}-")}
        assert drawn == {op: str(n) for op, n in counts.items()}


def without_seconds(text: str) -> str:
    return re.sub(r"\d+\.\d+ s\b", "_ s", text)


@pytest.fixture(scope="module")
def onnx_runs(tmp_path_factory) -> tuple[Path, Path, list[subprocess.CompletedProcess]]:
    tmp = tmp_path_factory.mktemp("draw")
    svg, png = tmp / "before_after.svg", tmp / "before_after.png"
    runs = gdnc_all(("inspect", ONNX_EXAMPLE), ("inspect", ONNX_EXAMPLE, "--draw", svg),
                    ("inspect", ONNX_EXAMPLE, "--json", "--draw", png))
    for proc in runs:
        assert proc.returncode == 0, proc.stderr
    return svg, png, runs


def test_onnx_svg_shows_one_token_expanded_and_the_fused_node(onnx_runs) -> None:
    svg, _, (_, _, as_json) = onnx_runs
    report = json.loads(as_json.stdout)
    (chain,) = report["chains"]
    found = texts(svg)
    ops = step_ops(found)
    assert Counter(ops) == HF_STEP
    t = chain["steps"]
    assert found["more-steps"] == f"× {t - 1} more steps, {(t - 1) * len(ops)} ops"
    assert step_labels(found) >= ROLES
    # token 0: the step that reads the graph's initial state; the last one writes its output
    assert (found["in-S"], found["in-S-1"]) == ("S · state in", "initial_state")
    assert (found["out-S"], found["out-S-1"]) == ("S · final state", "final_state")
    assert found["fused-node"] == "ai.gdnc::GatedDeltaNet"
    body = "\n".join(ET.parse(svg).getroot().itertext())
    for text in ("q · token 0", f"T = {t} tokens", "state_layout = kv", "qk_l2norm = 1",
                 f"{report['nodes_before']} nodes → {report['nodes_after']}"):
        assert text in body, text
    check_histogram(found, report)


def test_text_output_is_unchanged_but_for_the_drew_line(onnx_runs) -> None:
    svg, png, (plain, drawn, as_json) = onnx_runs
    lines = drawn.stdout.rstrip("\n").split("\n")
    assert lines[-1] == f"drew {svg}"
    assert without_seconds("\n".join(lines[:-1]) + "\n") == without_seconds(plain.stdout)
    data = json.loads(as_json.stdout)
    assert data.pop("drawing") == str(png)
    assert set(data) == set(ConversionReport(nodes_before=0).to_json())


def test_png_is_an_image(onnx_runs) -> None:
    _, png, _ = onnx_runs
    image = matplotlib.image.imread(png)
    assert image.ndim == 3 and image.shape[0] > 800 and image.shape[1] > 800
    assert image[..., :3].std() > 0.05  # not blank


def test_gguf_draws_the_sequences_of_one_layer(tmp_path) -> None:
    svg = tmp_path / "gguf.svg"
    proc = gdnc("inspect", GGUF_EXAMPLE, "--lengths", "2,3", "--json", "--draw", svg)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["drawing"] == str(svg)
    first = report["chains"][0]
    assert (first["sequences"], first["steps"]) == (2, 5)
    found = texts(svg)
    ops = step_ops(found)
    assert Counter(ops) == GGUF_STEP and step_labels(found) >= ROLES
    # layer 0, sequence 0, token 0: the state comes from the pool (Gather), the names are layer 0's
    assert found["in-S-1"].startswith("l0_gather")
    assert all(found[f"step-op-{i}-2"].startswith("l0_") for i in range(len(ops)))
    assert found["more-steps"] == f"× 1 more step, {len(ops)} ops"
    assert found["other-sequences"] == f"+ sequence 1: 3 steps, {3 * len(ops)} ops"
    body = "\n".join(ET.parse(svg).getroot().itertext())
    for text in ("cu_seqlens", "state_in_index", "T = 5 tokens, 2 sequences"):
        assert text in body, text
    check_histogram(found, report)


def test_nothing_to_fuse_draws_the_histogram_and_says_so(tmp_path) -> None:
    model = tmp_path / "relu.onnx"
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "relu", [x], [y])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), model)
    svg = tmp_path / "none.svg"
    proc = gdnc("inspect", model, "--draw", svg)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.rstrip().split("\n")[-1] == f"drew {svg} (no delta-net chain found)"
    found = texts(svg)
    assert "no delta-net chain found" in found["no-chain"]
    assert found["hist-before-Relu"] == found["hist-after-Relu"] == "1"
    assert not any(k.startswith("step-op-") for k in found)


def test_bad_targets_are_one_line_errors_before_loading(tmp_path) -> None:
    missing_model = tmp_path / "missing.onnx"  # never read: the target is checked first
    calls = [
        (("inspect", missing_model, "--draw", tmp_path / "x.pdf"), "unsupported suffix '.pdf'"),
        (("inspect", missing_model, "--draw", tmp_path / "nope" / "x.svg"), "no folder"),
        (("inspect", missing_model, "--draw", tmp_path), "is a directory"),
    ]
    for proc, (_, needle) in zip(gdnc_all(*(args for args, _ in calls)), calls):
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        assert proc.returncode == 1 and len(lines) == 1 and needle in lines[0], proc.stderr
        assert "Traceback" not in proc.stderr
    assert list(tmp_path.iterdir()) == []
