"""The graphs and GGUF files gdnc's tests, benchmarks and examples are built from (not shipped).

- :mod:`corpus.spellings`: one :class:`~corpus.spellings.Spelling` record per spelling of the
  per-token gated delta rule (its module, exporters, whether it must fuse, its expected miss);
  :mod:`corpus.variants` holds the torch modules, :mod:`corpus.hf_source` finds HF's function.
- :mod:`corpus.zoo`: ``torch.onnx.export`` of those spellings and of many chained layers, cached.
- :mod:`corpus.subgraphs`: small models whose If / Loop / Scan bodies read outer values.
- :mod:`corpus.tiny_gguf`: tiny random-weight hybrid GGUF files in llama.cpp's layout;
  :mod:`corpus.gguf_rewrite`: a GGUF file copied with edits.
- :mod:`corpus.decode_onnx`: one decode step of a HF Qwen3.5 model exported as ONNX.

``corpus`` lives at the repository root, outside the ``gdnc`` wheel. It is imported with the
root on ``sys.path``: pytest puts it there (``pythonpath = ["."]`` in pyproject.toml); scripts
under ``benchmarks/`` and ``examples/`` put it there themselves, first thing, with
``sys.path.insert(0, str(Path(__file__).resolve().parents[1]))``.
"""
