"""The fused-graph cache: a second build of the same weight-free graph is read back equal, a
changed graph is a new key, a broken entry is rebuilt, ``off`` and an unwritable folder cost
only time."""

from __future__ import annotations

from pathlib import Path

import pytest

from gdnc.ir.builder import FLOAT, GraphBuilder
from gdnc.ir.graph import Model
from gdnc.ir.to_onnx import model_to_proto
from gdnc.passes import graph_cache
from gdnc.passes.graph_cache import cached_graph, graph_key
from gdnc.passes.shapes import infer_shapes


def _source(width: int = 4) -> Model:
    e = GraphBuilder.new("src")
    x = e.input("x", FLOAT, ["T", width])
    e.output(e.op("Relu", e.op("Neg", x)), "y")
    return e.model()


def _builder(calls: list[int]):
    def build(model: Model) -> Model:
        calls.append(1)
        return model
    return build


def _bytes(model: Model) -> bytes:
    return model_to_proto(model).SerializeToString(deterministic=True)


def test_second_build_reads_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GDNC_CACHE_DIR", str(tmp_path))
    calls: list[int] = []
    first = cached_graph(_source(), "t", _builder(calls))
    second = cached_graph(_source(), "t", _builder(calls))
    assert calls == [1] and _bytes(first) == _bytes(second)
    assert len(list((tmp_path / "graphs").iterdir())) == 1
    cached_graph(_source(width=5), "t", _builder(calls))  # another graph: another key
    assert calls == [1, 1]
    assert graph_key(_source(), "t") != graph_key(_source(), "u")


def test_a_broken_entry_is_rebuilt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GDNC_CACHE_DIR", str(tmp_path))
    calls: list[int] = []
    cached_graph(_source(), "t", _builder(calls))
    [entry] = (tmp_path / "graphs").iterdir()
    entry.write_bytes(b"\x08\x07garbage")
    rebuilt = cached_graph(_source(), "t", _builder(calls))
    assert calls == [1, 1] and _bytes(rebuilt) == _bytes(_source())


@pytest.mark.parametrize("where", ["off", "file"])
def test_disabled_or_unwritable_cache_only_builds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  where: str) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("GDNC_CACHE_DIR", "off" if where == "off" else str(blocker / "below"))
    calls: list[int] = []
    for _ in range(2):
        cached_graph(_source(), "t", _builder(calls))
    assert calls == [1, 1]
    assert graph_cache.cache_dir() is None if where == "off" else not (blocker / "below").exists()


def test_a_cached_graph_keeps_every_value_shape(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The passes after the cache (targets) read intermediate shapes: they must survive."""
    monkeypatch.setenv("GDNC_CACHE_DIR", str(tmp_path))

    def shaped(model: Model) -> Model:
        infer_shapes(model)
        return model

    built = cached_graph(_source(), "s", shaped)
    read = cached_graph(_source(), "s", lambda m: pytest.fail("rebuilt"))
    inner = [n for n in built.graph.values if built.graph.producer(n) is not None]
    assert inner and all(read.graph.values[n].shape == built.graph.values[n].shape == ("T", 4)
                         for n in inner)


@pytest.mark.parametrize("where", ["off", "folder"])
def test_built_read_back_or_uncached_the_graph_is_the_same(tmp_path: Path, where: str,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """A converted file must not depend on whether its fused graph came from the cache: the
    graph returned on a miss (or with the cache off) is the one a later hit reads back, with
    the intermediate value's shape listed."""
    typed = _source()
    infer_shapes(typed)
    assert any(v.shape is not None for n, v in typed.graph.values.items() if n not in ("x", "y"))
    monkeypatch.setenv("GDNC_CACHE_DIR", str(tmp_path))
    hit_source = cached_graph(typed, "t", lambda m: m)  # fills the cache
    hit = cached_graph(typed, "t", lambda m: m)
    monkeypatch.setenv("GDNC_CACHE_DIR", "off" if where == "off" else str(tmp_path / "other"))
    built = cached_graph(typed, "t", lambda m: m)
    assert _bytes(built) == _bytes(hit) == _bytes(hit_source)
    assert model_to_proto(hit).graph.value_info  # the intermediate shapes, listed
