"""Write random-weight Gated-DeltaNet hybrid GGUF files of real size in llama.cpp's layout.

The layout (metadata keys and types, tensor names, ggml shapes and order, tokenizer) is that of
:mod:`corpus.tiny_gguf`, at any :class:`~corpus.tiny_gguf.Shape`; ``PRESETS`` holds Qwen3.5-like
shapes named by their parameter count (embeddings included). Weight types (``TYPES``):

- ``f32``: every tensor F32 (``general.file_type = 0``);
- ``f16``: matrices F16 (1);
- ``q8_0``: matrices Q8_0 (7);
- ``q4_k``: Q4_K_M-like (15): matrices Q4_K; as llama-quantize's Q4_K_M, ``attn_qkv`` Q5_K, the
  output matrix (``token_embd`` when tied) Q6_K, and ``attn_v`` / ``ffn_down`` Q6_K in the
  blocks its ``use_more_bits`` picks.

In every type, 1-D tensors (norms, ``ssm_a``, ``ssm_dt.bias``), ``ssm_conv1d`` and the MoE
router stay F32 (``tiny_gguf.keep_f32``, as llama.cpp's converter). A quantized matrix's rows
must hold whole blocks (32 values for Q8_0, 256 for the K-quants): ValueError otherwise.

Weights are random and streamed: small tensors are drawn as the tiny models' are; a matrix is
drawn chunk by chunk while it is written, never whole. F32 / F16: N(0, 0.02). Quantized: valid
blocks of uniformly random codes under fixed scales chosen so that the dequantized weights
have mean ~0 and std ~0.02 (an init's), so no quantizer runs. The tokenizer is the tiny models'
BPE padded with ``[PAD<id>]`` UNUSED tokens to the shape's vocab.

Usage: ``python -m corpus.sized_gguf --preset 0.5b --type q8_0 -o PATH [--seed S]
[--hidden N --layers N ...]`` (every Shape field can be overridden). It prints the parameter
count. The 4b Q4_K file (2.7 GB) takes ~25 s and ~170 MB of memory on 2 cores.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from math import prod, sqrt
from pathlib import Path

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from corpus.tiny_gguf import (
    ARCHS,
    FILE_TYPES,
    Q,
    RandomInit,
    Shape,
    StoredTensor,
    layout,
    metadata,
    stored_type,
    train_tokenizer,
    write_stored,
)

TYPES = tuple(FILE_TYPES)
STD = 0.02  # every matrix's std (HF's initializer_range)
CHUNK_BYTES = 16 << 20  # a matrix is drawn and written this many bytes at a time (about)
K_SUB_SCALE = 32  # the 6-bit sub-block scale (and min) of every Q4_K / Q5_K sub-block
Q6_SCALE = 16  # the int8 sub-block scale of every Q6_K sub-block

# Qwen3.5-like: 3 Gated DeltaNet blocks per attention block, GVA (value heads = 2 x key heads)
# of dim 128, gated attention with 4x fewer KV heads (head dim 256, RoPE on 1/4 of it), rope
# theta 1e7. Every row length is a multiple of 256, so every type can store every preset.
PRESETS = {
    "135m": Shape(hidden=512, layers=24, interval=4, k_heads=4, v_heads=8, ssm_head_dim=128,
                  attn_heads=4, attn_kv_heads=1, attn_head_dim=256, rope_dim=64, ffn=1536,
                  vocab=49152, rope_theta=1e7, tied=True),
    "0.5b": Shape(hidden=1536, layers=16, interval=4, k_heads=8, v_heads=16, ssm_head_dim=128,
                  attn_heads=8, attn_kv_heads=2, attn_head_dim=256, rope_dim=64, ffn=4096,
                  vocab=16384, rope_theta=1e7, tied=True),
    "4b": Shape(hidden=2560, layers=32, interval=4, k_heads=16, v_heads=32, ssm_head_dim=128,
                attn_heads=16, attn_kv_heads=4, attn_head_dim=256, rope_dim=64, ffn=9216,
                vocab=248320, rope_theta=1e7, tied=True),
}
NOMINAL = {"135m": 135e6, "0.5b": 0.5e9, "4b": 4e9}  # what each preset's name claims


@dataclass(frozen=True)
class MatPlan:
    """A weight matrix drawn only when written: its numpy shape (``size``/``ndim`` as numpy's)."""

    shape: tuple[int, ...]

    @property
    def size(self) -> int:
        return prod(self.shape)

    @property
    def ndim(self) -> int:
        return len(self.shape)


class PlannedInit(RandomInit):
    """Small tensors drawn now, as the tiny models' are; matrices planned (:class:`MatPlan`,
    all of std ``STD``, whatever scale the layout asks of the tiny models)."""

    def mat(self, *shape: int, std: float = STD) -> MatPlan:
        return MatPlan(shape)


@dataclass(frozen=True)
class BlockKind:
    """Random valid blocks of one quantized type: ``template`` is one block with its scale
    fields set; its bytes ``codes`` are replaced by random bytes in every block."""

    template: bytes
    codes: slice

    def blocks(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` blocks, (n, block bytes) uint8."""
        out = np.empty((n, len(self.template)), np.uint8)
        out[:] = np.frombuffer(self.template, np.uint8)
        width = self.codes.stop - self.codes.start
        out[:, self.codes] = np.frombuffer(rng.bytes(n * width), np.uint8).reshape(n, width)
        return out


def _f16(x: float) -> bytes:
    return np.float16(x).tobytes()


def _uniform_std(bits: int) -> float:
    """The std of a code drawn uniformly from ``2**bits`` consecutive integers."""
    return sqrt((4.0 ** bits - 1) / 12)


def _k_scales(scale: int) -> bytes:
    """The 12 packed bytes of a Q4_K / Q5_K block whose 8 sub-blocks all have 6-bit scale and
    min ``scale`` (the inverse of ggml's ``get_scale_min_k4``)."""
    low = scale & 63 | (scale >> 4) << 6  # sub-block j < 4, with the top bits of sub-block j + 4
    return bytes([low] * 8 + [(scale & 15) | (scale & 15) << 4] * 4)


def block_kinds(std: float = STD) -> dict[GGMLQuantizationType, BlockKind]:
    """Every quantized type this module writes. Q8_0: ``d * q``, q int8; Q4_K / Q5_K:
    ``d * sc * q - dmin * m`` with ``dmin * m`` the mean of ``d * sc * q`` (zero mean); Q6_K:
    ``d * sc * (q - 32)``. ``d`` makes the std of the values ``std``."""
    s = K_SUB_SCALE
    q8, q4 = std / _uniform_std(8), std / (s * _uniform_std(4))
    q5, q6 = std / (s * _uniform_std(5)), std / (Q6_SCALE * _uniform_std(6))
    return {  # ggml's block structs: block_q8_0, block_q4_K, block_q5_K, block_q6_K
        Q.Q8_0: BlockKind(_f16(q8) + bytes(32), slice(2, 34)),
        Q.Q4_K: BlockKind(_f16(q4) + _f16(7.5 * q4) + _k_scales(s) + bytes(128), slice(16, 144)),
        Q.Q5_K: BlockKind(_f16(q5) + _f16(15.5 * q5) + _k_scales(s) + bytes(160), slice(16, 176)),
        Q.Q6_K: BlockKind(bytes(192) + bytes([Q6_SCALE] * 16) + _f16(q6), slice(0, 192)),
    }


BLOCKS = block_kinds()
FLOATS = {Q.F32: np.float32, Q.F16: np.float16}


def _more_bits(i: int, n: int) -> bool:
    """llama.cpp's ``use_more_bits``: the first and last eighth of ``n`` layers, every third
    between them."""
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def q4_k_m_type(name: str, s: Shape) -> GGMLQuantizationType:
    """What llama-quantize's Q4_K_M stores a matrix in that its base type would make Q4_K
    (``llama_tensor_get_type``, for a dense model)."""
    if name == "output.weight" or (s.tied and name == "token_embd.weight"):
        return Q.Q6_K
    block = int(name.split(".")[1]) if name.startswith("blk.") else -1
    if ".attn_v." in name:
        attention = [i for i, r in enumerate(s.recurrent) if not r]
        return Q.Q6_K if _more_bits(attention.index(block), len(attention)) else Q.Q4_K
    if ".ffn_down" in name:
        return Q.Q6_K if _more_bits(block, s.layers) else Q.Q4_K
    return Q.Q5_K if ".attn_qkv." in name else Q.Q4_K


def sized_type(name: str, t: MatPlan | np.ndarray, variant: str, s: Shape) -> GGMLQuantizationType:
    """The type a ``variant`` file stores tensor ``name`` in; ValueError when its rows do not
    hold whole blocks of that type."""
    qtype = stored_type(name, t, variant)
    if qtype == Q.Q4_K:
        qtype = q4_k_m_type(name, s)
    block = GGML_QUANT_SIZES[qtype][0]
    if t.shape[-1] % block:
        raise ValueError(f"{name}: a {variant} file stores it as {qtype.name}, whose rows need a "
                         f"multiple of {block} values, but its rows have {t.shape[-1]}: choose "
                         f"hidden / ffn / head sizes that are multiples of {block}")
    return qtype


def random_rows(plan: MatPlan, qtype: GGMLQuantizationType, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """The stored bytes of a random matrix ``plan`` in ``qtype``, about ``CHUNK_BYTES`` at a time."""
    n_rows, row = prod(plan.shape[:-1]), plan.shape[-1]
    block, block_bytes = GGML_QUANT_SIZES[qtype]
    per_chunk = max(1, CHUNK_BYTES // (row // block * block_bytes))
    for start in range(0, n_rows, per_chunk):
        n = min(per_chunk, n_rows - start)
        if qtype in FLOATS:
            yield (rng.standard_normal(n * row, dtype=np.float32) * STD).astype(FLOATS[qtype])
        else:
            yield BLOCKS[qtype].blocks(n * row // block, rng)


def stored_tensors(tensors: dict[str, MatPlan | np.ndarray], variant: str, s: Shape,
                   seed: int) -> list[StoredTensor]:
    """Each tensor as :func:`~corpus.tiny_gguf.write_stored` takes it: a drawn array as F32
    (the only type ``keep_f32`` gives those), a matrix drawn from its own seeded generator."""
    out = []
    for i, (name, t) in enumerate(tensors.items()):
        qtype = sized_type(name, t, variant, s)
        if isinstance(t, MatPlan):
            def chunks(t=t, qtype=qtype, i=i):
                return random_rows(t, qtype, np.random.default_rng([seed, i]))
        else:
            def chunks(data=np.asarray(t, np.float32)):
                return (data,)
        out.append(StoredTensor(name, t.shape, qtype, chunks))
    return out


def plan(s: Shape, arch: str = "qwen35", seed: int = 0) -> dict[str, MatPlan | np.ndarray]:
    """The tensors of an ``arch`` model of shape ``s`` in file order (matrices as plans)."""
    return layout(arch, s, PlannedInit(np.random.default_rng(seed)))


def n_params(s: Shape, arch: str = "qwen35") -> int:
    """The parameter count of an ``arch`` model of shape ``s`` (embeddings included)."""
    return sum(t.size for t in plan(s, arch).values())


def write_sized(path: Path, s: Shape, variant: str, arch: str = "qwen35", seed: int = 0) -> Path:
    """Write a random ``arch`` model of shape ``s`` stored as ``variant`` to ``path``
    (atomically, streaming); returns ``path``. Same arguments, same bytes."""
    if variant not in TYPES:
        raise ValueError(f"unknown type {variant!r}: one of {', '.join(TYPES)}")
    tensors = plan(s, arch, seed)
    stored = stored_tensors(tensors, variant, s, seed)
    kv = metadata(arch, variant, tensors, train_tokenizer(s.vocab), dims=s,
                  name=f"{arch} random {variant}")
    return write_stored(Path(path), arch, kv, stored)


def _shape_args(p: argparse.ArgumentParser) -> None:
    """A ``--<field>`` option per Shape field, overriding the preset's value."""
    for f in dataclasses.fields(Shape):
        flag = "--" + f.name.replace("_", "-")
        if f.type == "bool":
            p.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None)
        else:
            p.add_argument(flag, dest=f.name, type=float if f.type == "float" else int, default=None,
                           metavar="N", help=f"override the preset's {f.name}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", choices=PRESETS, default="135m")
    p.add_argument("--type", choices=TYPES, default="f16", dest="variant")
    p.add_argument("--arch", choices=ARCHS, default="qwen35")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-o", "--out", type=Path, required=True, help="the .gguf file to write")
    _shape_args(p)
    args = p.parse_args(argv)
    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(Shape)
                 if getattr(args, f.name) is not None}
    s = dataclasses.replace(PRESETS[args.preset], **overrides)
    start = time.perf_counter()
    print(f"{args.arch} {args.preset} {args.variant}: {n_params(s, args.arch):,} parameters", flush=True)
    path = write_sized(args.out, s, args.variant, args.arch, args.seed)
    print(f"{path}: {path.stat().st_size:,} bytes in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    sys.exit(main())
