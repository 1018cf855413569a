"""Building, planning and fusing the unfused graph of a GGUF model is linear in tokens.

The work is counted as Python lines executed (exact, unlike timings on a shared machine) at T,
2T and 4T tokens. Linear work f(T) = a + bT grows from 2T to 4T by twice what it grew from T
to 2T (increment ratio 2); a quadratic term pushes the ratio towards 4 (building a graph of
48 tokens with a ``fresh_name`` that scans every name taken gave 3.5).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from gdnc.frontends.gguf_file import GgufFile
from gdnc.models.qwen_hybrid.graph import Composition, build_unfused
from gdnc.passes.pipeline import fuse_model
from gdnc.runtime.executor import Executor

MODEL = Path(__file__).parents[2] / "examples" / "tiny-qwen35-f16.gguf"
TOKENS = (12, 24, 48)


@contextmanager
def lines_executed() -> Iterator[list[int]]:
    """Count the Python lines run inside the block (into the one-item list it yields)."""
    count = [0]

    def local(frame, event, arg):  # noqa: ANN001, ANN202 - sys.settrace's signature
        count[0] += event == "line"
        return local

    previous = sys.gettrace()  # a coverage tool's, say
    sys.settrace(lambda frame, event, arg: local)
    try:
        yield count
    finally:
        sys.settrace(previous)


@pytest.fixture(scope="module")
def work() -> dict[str, list[int]]:
    """Lines run by each stage at each size of ``TOKENS`` (two sequences, 2:1)."""
    gguf = GgufFile(MODEL)
    stages: dict[str, list[int]] = {"build": [], "plan": [], "fuse": []}
    for tokens in TOKENS:
        with lines_executed() as built:
            model = build_unfused(gguf, Composition.of(tokens - tokens // 3, tokens // 3))
        with lines_executed() as planned:
            Executor(model)
        with lines_executed() as fused:
            fuse_model(model)
        for stage, count in zip(stages.values(), (built, planned, fused)):
            stage.append(count[0])
    return stages


@pytest.mark.parametrize("stage", ["build", "plan", "fuse"])
def test_work_is_linear_in_tokens(work, stage) -> None:
    small, middle, large = work[stage]
    ratio = (large - middle) / (middle - small)
    assert 1.5 < ratio < 2.5, f"{stage}: {work[stage]} lines at {TOKENS} tokens (increment ratio {ratio:.2f})"
