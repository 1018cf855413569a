"""Write tiny random-weight Gated-DeltaNet hybrid GGUF files in llama.cpp's exact layout.

One file per architecture (``qwen35``, ``qwen35moe``, ``qwen3next``) and variant (``f32``,
``q8_0``), named ``<arch>-tiny-<variant>.gguf``; shapes, tensors and tokenizer are those of
``corpus/tiny_gguf.py`` (the library tests and benchmarks write them with). Same seed, same
bytes. Usage: ``python examples/make_gguf_models.py [--out DIR] [--arch A]... [--variant V]...``
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root: corpus/
from corpus.tiny_gguf import ARCHS, VARIANTS, write_models  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("examples/models"), help="output folder")
    p.add_argument("--arch", action="append", choices=ARCHS, help="architecture (repeatable)")
    p.add_argument("--variant", action="append", choices=VARIANTS, help="variant (repeatable)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    for path in write_models(args.out, tuple(args.arch or ARCHS), tuple(args.variant or VARIANTS),
                             args.seed):
        print(f"{path} {path.stat().st_size} bytes")


if __name__ == "__main__":
    main()
