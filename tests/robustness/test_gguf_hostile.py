"""Hostile GGUF files through ``gdnc inspect`` and ``gdnc run``, held to the promise of
``harness.py``: a non-zero exit with ONE ``error:`` line naming the problem, no traceback, within
the deadline and the memory limit. Files that are still valid (a cut in the trailing padding, a
flip in tensor data or token text) may load.

The files are built from a valid example model (``qwen35`` / ``qwen35moe``, Q8_0), cut into its
parts by ``Layout``: truncations at every structural boundary and one byte either side;
hypothesis byte flips, mostly in the fixed-size fields of the header, the metadata and the
tensor infos; hand-made absurd counts, shapes, types and offsets; structurally valid files whose
metadata or tensors make no usable model; a few cases as a real ``python -m gdnc`` process.
``pytest -m slow`` runs many more flips and a file at the metadata size limit.
"""

from __future__ import annotations

import math
import struct
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from gguf import GGUF_DEFAULT_ALIGNMENT, GGMLQuantizationType, GGUFReader, GGUFValueType, GGUFWriter
from gguf.quants import dequantize
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from corpus.tiny_gguf import write_models
from gdnc.frontends.gguf_file import GgufFile
from gdnc.frontends.gguf_validate import MAX_ARRAY_ITEMS, MAX_KEYS, MAX_TENSORS
from tests.robustness.harness import Outcome, hold_to_promise, run_cli

# a warning would be one more stderr line for a user: here it fails the case
pytestmark = pytest.mark.filterwarnings("error")
SUITE = "gguf"
V, Q = GGUFValueType, GGMLQuantizationType
PACK = GGUFWriter._simple_value_packing  # value type -> struct format of one scalar
BIG = (1 << 40, 1 << 63, (1 << 64) - 1)
COMMANDS = {"inspect": ["inspect"], "run": ["run", "-p", "hi", "-n", "2"],
            "quick": ["inspect", "--lengths", "1"]}  # quick: the cheapest full load (1 token)
NORM = "blk.0.attn_norm.weight"  # F32 [64]


# --- a small GGUF encoder and a valid file cut into its parts -----------------------------

def gguf_string(text: str | bytes) -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    return struct.pack("<Q", len(raw)) + raw


def gguf_value(vtype: int, value: object, item_type: int = V.UINT8) -> bytes:
    """The encoding of ``value`` without its type field; an array holds ``item_type`` items."""
    if vtype == V.STRING:
        return gguf_string(value)  # type: ignore[arg-type]
    if vtype == V.ARRAY:
        items = list(value)  # type: ignore[call-overload]
        return struct.pack("<IQ", item_type, len(items)) + b"".join(
            gguf_value(item_type, item) for item in items)
    return struct.pack("<" + PACK[V(vtype)], value)


def kv_entry(key: str | bytes, vtype: int, value: object, item_type: int = V.UINT8) -> bytes:
    return gguf_string(key) + struct.pack("<I", vtype) + gguf_value(vtype, value, item_type)


def tensor_info(name: str | bytes, dims: tuple[int, ...], ggml_type: int, offset: int) -> bytes:
    return gguf_string(name) + struct.pack(f"<I{len(dims)}QIQ", len(dims), *dims, ggml_type, offset)


@dataclass(frozen=True)
class Tensor:
    """A tensor info of the valid file: ggml dims (ne0 first), type, offset in the data."""

    dims: tuple[int, ...]
    ggml_type: int
    offset: int
    nbytes: int


@dataclass(frozen=True)
class Layout:
    """A valid GGUF file cut into its parts (offsets are absolute, into ``raw``).

    ``boundaries``: where a structural field starts or ends (the header fields, the parts of
    each key/value entry up to its first array items, the parts of each tensor info, the data
    start, the start, middle and end of each tensor's data). ``fields``: the byte ranges of the
    header, of each entry (without the array items past the first) and of each tensor info."""

    raw: bytes
    kvs: dict[str, bytes]  # key -> its whole entry, in file order
    values: dict[str, object]
    tensors: dict[str, Tensor]
    data_start: int
    boundaries: tuple[int, ...]
    fields: tuple[tuple[int, int], ...]

    @classmethod
    def of(cls, path: Path) -> Layout:
        reader = GGUFReader(path)
        base, raw = reader.data.ctypes.data, path.read_bytes()

        def spans(parts) -> list[tuple[int, int]]:
            return [(p.ctypes.data - base, p.ctypes.data - base + p.nbytes) for p in parts]

        kvs, values, tensors = {}, {}, {}
        bounds, fields = {0, 4, 8, 16, 24, reader.data_offset}, [(0, 24)]
        for name, field in reader.fields.items():
            if name.startswith("GGUF."):
                continue
            parts = spans(field.parts)
            kvs[name], values[name] = raw[parts[0][0]:parts[-1][1]], field.contents()
            bounds.update(start for start, _ in parts[:7])
            bounds.add(parts[-1][1])
            fields.append((parts[0][0], parts[:7][-1][1]))
        for t in reader.tensors:
            parts = spans(t.field.parts)
            bounds.update(start for start, _ in parts)
            bounds.update((parts[-1][1], t.data_offset, t.data_offset + t.n_bytes // 2,
                           t.data_offset + t.n_bytes))
            fields.append((parts[0][0], parts[-1][1]))
            tensors[t.name] = Tensor(tuple(int(d) for d in t.shape), int(t.tensor_type),
                                     t.data_offset - reader.data_offset, t.n_bytes)
        return cls(raw, kvs, values, tensors, reader.data_offset, tuple(sorted(bounds)),
                   tuple(fields))

    @property
    def data_end(self) -> int:
        """Where the last tensor's data ends (padding follows)."""
        return self.data_start + max(t.offset + t.nbytes for t in self.tensors.values())

    def info(self, name: str, *, rename: str | bytes | None = None, dims: tuple[int, ...] | None = None,
             ggml_type: int | None = None, offset: int | None = None) -> bytes:
        """The tensor info of ``name``, with what is given changed."""
        t = self.tensors[name]
        return tensor_info(name if rename is None else rename, t.dims if dims is None else dims,
                           t.ggml_type if ggml_type is None else ggml_type,
                           t.offset if offset is None else offset)

    def infos(self, changes: dict[str, bytes | None] | None = None) -> list[bytes]:
        """Every tensor info in file order, those in ``changes`` replaced (None: dropped)."""
        changes = changes or {}
        infos = (changes[n] if n in changes else self.info(n) for n in self.tensors)
        return [info for info in infos if info is not None]

    def reinfo(self, name: str, **changes) -> bytes:
        """The file with the tensor info of ``name`` changed (``info``'s keywords)."""
        return self.assemble(infos=self.infos({name: self.info(name, **changes)}))

    def entries(self, changes: dict[str, bytes | None]) -> list[bytes]:
        """Every entry in file order, those of the keys in ``changes`` replaced (new keys
        appended, None: dropped)."""
        kvs: dict[str, bytes | None] = {**self.kvs, **changes}
        return [e for e in kvs.values() if e is not None]

    def edit(self, key: str, vtype: int, value: object, item_type: int = V.UINT8) -> bytes:
        """The file with ``key`` set to ``value``."""
        return self.assemble(self.entries({key: kv_entry(key, vtype, value, item_type)}))

    def set_ints(self, **values: int) -> bytes:
        """The file with UINT32 keys of the model's architecture set (dots spelled ``__``)."""
        arch = self.values["general.architecture"]
        return self.assemble(self.entries({
            key: kv_entry(key, V.UINT32, value)
            for key, value in ((f"{arch}.{k.replace('__', '.')}", v) for k, v in values.items())}))

    def drop(self, key: str) -> bytes:
        return self.assemble(self.entries({key: None}))

    def patch(self, key: str, at: int, fmt: str, value: int) -> bytes:
        """The file with the entry of ``key`` overwritten at ``at`` bytes past its key."""
        entry = bytearray(self.kvs[key])
        struct.pack_into("<" + fmt, entry, 8 + len(key.encode()) + at, value)
        return self.assemble(self.entries({key: bytes(entry)}))

    def assemble(self, kvs: list[bytes] | None = None, infos: list[bytes] | None = None, *,
                 counts: tuple[int, int] | None = None, version: int = 3,
                 alignment: int = GGUF_DEFAULT_ALIGNMENT) -> bytes:
        """A file of these entries and infos (default: the valid file's) before the valid
        file's data section; ``counts`` (tensors, keys) stands in for the true counts."""
        kvs = list(self.kvs.values()) if kvs is None else kvs
        infos = self.infos() if infos is None else infos
        n_tensors, n_keys = counts or (len(infos), len(kvs))
        head = b"GGUF" + struct.pack("<IQQ", version, n_tensors, n_keys) + b"".join(kvs + infos)
        return head + bytes(-len(head) % alignment) + self.raw[self.data_start:]


# --- running a case -----------------------------------------------------------------------

def check(path: Path, command: str, case: str, *, mention: str | None = None,
          may_succeed: bool = False) -> None:
    """``gdnc COMMAND path ...`` in-process, held to the promise and tallied."""
    name, *options = COMMANDS[command]
    hold_to_promise(SUITE, f"{case} [{command}]", run_cli([name, str(path), *options]),
                    mention=mention, may_succeed=may_succeed)


@dataclass(frozen=True)
class Case:
    """A hand-made file: ``build`` turns the valid file's layout into its bytes; the error
    must contain ``mention``."""

    name: str
    build: Callable[[Layout], bytes]
    mention: str | None
    model: str = "qwen35"
    commands: tuple[str, ...] = ("inspect", "run")
    may_succeed: bool = False


def first_of_type(layout: Layout, ggml_type: int) -> str:
    return next(n for n, t in layout.tensors.items() if t.ggml_type == ggml_type)


def one_string_file(declared: int, present: bytes) -> bytes:
    """A file whose only entry, general.name, declares ``declared`` bytes and holds ``present``."""
    entry = gguf_string("general.name") + struct.pack("<IQ", V.STRING, declared) + present
    return b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + entry


A = "qwen35."  # the key prefix of the qwen35 model
STRUCTURE = [
    Case("empty file", lambda L: b"", "empty"),
    Case("text file", lambda L: b"not a model\n" * 100, "not a GGUF file"),
    Case("zip file", lambda L: b"PK\x03\x04" + bytes(100), "not a GGUF file"),
    Case("magic only", lambda L: b"GGUF", "GGUF version"),
    Case("no counts", lambda L: b"GGUF" + struct.pack("<IQ", 3, 0), "metadata key count"),
    *[Case(f"version {v:#x}", lambda L, v=v: L.assemble(version=v), "version")
      for v in (0, 1, 4, 0x03000000, (1 << 32) - 1)],
    Case("version 2", lambda L: L.assemble(version=2), None, commands=("quick",), may_succeed=True),
    *[Case(f"tensor count {n}", lambda L, n=n: L.assemble(counts=(n, len(L.kvs))), "tensor count")
      for n in BIG],
    *[Case(f"key count {n}", lambda L, n=n: L.assemble(counts=(len(L.tensors), n)),
           "metadata key count") for n in BIG],
    Case("tensor count over the limit", lambda L: L.assemble(counts=(MAX_TENSORS + 1, len(L.kvs))),
         "more than gdnc reads"),
    Case("key count over the limit", lambda L: L.assemble(counts=(len(L.tensors), MAX_KEYS + 1)),
         "more than gdnc reads"),
    *[Case(f"{what} count off by {d:+d}", lambda L, i=i, d=d: L.assemble(
        counts=tuple(n + d * (j == i) for j, n in enumerate((len(L.tensors), len(L.kvs))))), None)
      for i, what in enumerate(("tensor", "key")) for d in (-1, 1)],
    *[Case(f"{n} tokens", lambda L, n=n: L.patch("tokenizer.ggml.tokens", 8, "Q", n),
           "tokenizer.ggml.tokens") for n in BIG],
    Case("token types 2^40", lambda L: L.patch("tokenizer.ggml.token_type", 8, "Q", 1 << 40),
         "tokenizer.ggml.token_type"),
    Case("array items over the limit", lambda L: L.assemble(L.entries({
        "x.bytes": gguf_string("x.bytes") + struct.pack("<IIQ", V.ARRAY, V.UINT8, MAX_ARRAY_ITEMS)
        + bytes(MAX_ARRAY_ITEMS)})), "more than gdnc reads"),
    Case("string length 2^40", lambda L: L.patch("general.name", 4, "Q", 1 << 40), "general.name"),
    Case("string length one past the end", lambda L: one_string_file(4, b"abc"), "general.name"),
    Case("key length 2^40", lambda L: b"GGUF" + struct.pack("<IQQQ", 3, 0, 1, 1 << 40) + bytes(64),
         "key 0"),
    Case("unknown value type 17", lambda L: L.patch("general.name", 0, "I", 17), "unknown value type 17"),
    Case("unknown item type 13", lambda L: L.patch("tokenizer.ggml.tokens", 4, "I", 13),
         "unknown value type 13"),
    Case("array of arrays", lambda L: L.patch("tokenizer.ggml.tokens", 4, "I", V.ARRAY),
         "array of arrays"),
    Case("key not UTF-8", lambda L: L.assemble(L.entries({"x": kv_entry(b"\xff\xfe", V.UINT8, 1)})),
         "not valid UTF-8"),
    Case("tensor name not UTF-8", lambda L: L.reinfo(NORM, rename=b"\xc3("),
         "not valid UTF-8"),
    Case("string value not UTF-8", lambda L: L.edit("general.name", V.STRING, b"\xff\xfe"),
         "'general.name' holds a string that is not valid UTF-8"),
    Case("token not UTF-8", lambda L: L.edit("tokenizer.ggml.tokens", V.ARRAY,
                                             [b"\xff", *L.values["tokenizer.ggml.tokens"][1:]], V.STRING),
         "'tokenizer.ggml.tokens' holds a string that is not valid UTF-8"),
    Case("reserved key", lambda L: L.edit("GGUF.version", V.UINT32, 3), "reserved"),
    Case("duplicate key", lambda L: L.assemble([*L.kvs.values(), L.kvs["general.name"]]),
         "duplicate metadata key 'general.name'"),
    Case("duplicate tensor name", lambda L: L.assemble(infos=[*L.infos(), L.info(NORM)]),
         f"duplicate tensor name '{NORM}'"),
    *[Case(f"{n} dimensions", lambda L, n=n: L.reinfo(NORM, dims=(64,) + (1,) * (n - 1) if n else ()),
           "dimensions (1 to 4)") for n in (0, 5)],
    Case("2^32-1 dimensions", lambda L: L.assemble(infos=L.infos(
        {NORM: gguf_string(NORM) + struct.pack("<I", (1 << 32) - 1) + bytes(64)})), "dimensions (1 to 4)"),
    Case("zero dimension", lambda L: L.reinfo(NORM, dims=(64, 0)),
         "zero dimension"),
    Case("2^40 elements", lambda L: L.reinfo(NORM, dims=(1 << 40,)),
         f"tensor '{NORM}' data"),
    *[Case(f"dims {dims}", lambda L, dims=dims: L.reinfo(NORM, dims=dims),
           "more than 2^63") for dims in ((1 << 32, 1 << 32), ((1 << 64) - 1,), (64, (1 << 58) + 1))],
    *[Case(f"ggml type {t}", lambda L, t=t: L.reinfo(NORM, ggml_type=t),
           f"unknown ggml type {t}") for t in (4, 99, (1 << 32) - 1)],
    Case("first dim off the block size", lambda L: L.reinfo(first_of_type(L, Q.Q8_0), dims=(33, 576)),
         "block size 32"),
    Case("misaligned offset", lambda L: L.reinfo(NORM, offset=L.tensors[NORM].offset + 1),
         "not a multiple of general.alignment 32"),
    *[Case(f"offset {o}", lambda L, o=o: L.reinfo(NORM, offset=o),
           "runs past the end of the file") for o in (1 << 40, (1 << 64) - 32)],
    Case("overlapping tensors", lambda L: L.reinfo(NORM, offset=32),
         "overlaps"),
    *[Case(f"general.alignment {a}", lambda L, a=a: L.edit("general.alignment", V.UINT32, a),
           "not a power of two") for a in (0, 48)],
    Case("general.alignment UINT64", lambda L: L.edit("general.alignment", V.UINT64, 32), "want UINT32"),
    Case("general.alignment 64 over 32-aligned data", lambda L: L.assemble(
        L.entries({"general.alignment": kv_entry("general.alignment", V.UINT32, 64)}), alignment=64),
        "general.alignment 64"),
    Case("no keys, no tensors", lambda L: b"GGUF" + struct.pack("<IQQ", 3, 0, 0), "general.architecture"),
    Case("I32 tensor", lambda L: L.reinfo(NORM, ggml_type=Q.I32),
         "quant type I32"),
]

SEMANTICS = [
    Case("architecture llama", lambda L: L.edit("general.architecture", V.STRING, "llama"),
         "architecture 'llama' is not supported"),
    Case("architecture a number", lambda L: L.edit("general.architecture", V.UINT32, 7),
         "general.architecture"),
    *[Case(f"no {key}", lambda L, key=key: L.drop(key), key) for key in (
        "general.architecture", A + "block_count", A + "embedding_length", A + "attention.head_count",
        A + "ssm.state_size", A + "attention.layer_norm_rms_epsilon", "tokenizer.ggml.tokens")],
    Case("block_count a string", lambda L: L.edit(A + "block_count", V.STRING, "4"), "has type str"),
    Case("block_count a bool", lambda L: L.edit(A + "block_count", V.BOOL, True), "is a bool"),
    Case("head_count a float", lambda L: L.edit(A + "attention.head_count", V.FLOAT32, 4.0),
         "has type float"),
    Case("epsilon an int", lambda L: L.edit(A + "attention.layer_norm_rms_epsilon", V.UINT32, 1),
         "want float"),
    *[Case(f"{key} {value}", lambda L, key=key, vtype=vtype, value=value: L.edit(A + key, vtype, value),
           f"{key} = {value} is outside")
      for key, vtype, value in (
          ("attention.head_count", V.INT32, -4), ("attention.head_count", V.UINT32, 0),
          ("attention.head_count", V.UINT32, (1 << 32) - 1), ("attention.head_count_kv", V.UINT32, 0),
          ("block_count", V.UINT64, 1 << 62), ("ssm.group_count", V.UINT32, 0),
          ("ssm.time_step_rank", V.INT64, -(1 << 63)), ("ssm.state_size", V.UINT32, 1 << 20),
          ("ssm.conv_kernel", V.UINT32, 0), ("full_attention_interval", V.UINT32, 0),
          ("embedding_length", V.UINT32, 1 << 31))],
    Case("block_count 5 for 4 blocks", lambda L: L.edit(A + "block_count", V.UINT32, 5),
         "tensors for 4 block(s)"),
    Case("block_count 3 for 4 blocks", lambda L: L.edit(A + "block_count", V.UINT32, 3), None,
         commands=("quick",), may_succeed=True),
    Case("value head dim 16384", lambda L: L.set_ints(ssm__inner_size=1 << 16),
         "ssm.inner_size / ssm.time_step_rank = 16384 is more than 1024"),
    Case("delta-net state of 2^30", lambda L: L.set_ints(
        ssm__inner_size=1 << 20, ssm__time_step_rank=1 << 10, ssm__state_size=1 << 10),
         "a delta-net state of 1024 x 1024 x 1024 values"),
    Case("KV cache row of 2^20", lambda L: L.set_ints(
        attention__head_count=1 << 10, attention__head_count_kv=1 << 10, attention__key_length=1 << 10),
         "a KV cache row of 1024 x 1024 values"),
    Case("odd rope dims", lambda L: L.edit(A + "rope.dimension_count", V.UINT32, 7), "must be even"),
    Case("inner size off the heads", lambda L: L.edit(A + "ssm.inner_size", V.UINT32, 63),
         "not a multiple of ssm.time_step_rank"),
    *[Case(f"{key} {value}", lambda L, key=key, value=value: L.edit(A + key, V.FLOAT32, value),
           "must be finite and > 0")
      for key, value in (("attention.layer_norm_rms_epsilon", math.nan),
                         ("attention.layer_norm_rms_epsilon", -1.0), ("rope.freq_base", math.inf),
                         ("rope.freq_base", 0.0))],
    *[Case(f"{key} {value} against the tensors",
           lambda L, key=key, value=value: L.edit(A + key, V.UINT32, value), tensor)
      for key, value, tensor in (
        ("embedding_length", 65, "'token_embd.weight' has shape [576, 64], expected [576, 65]"),
        ("attention.head_count_kv", 1, "attn_k.weight"), ("attention.head_count", 2, "attn_q.weight"),
        ("attention.key_length", 16, "attn_k_norm.weight"), ("ssm.state_size", 8, "ssm_conv1d.weight"),
        ("ssm.conv_kernel", 3, "ssm_conv1d.weight"), ("ssm.time_step_rank", 2, "ssm_a"))],
    Case("fewer tokens than embedding rows", lambda L: L.edit(
        "tokenizer.ggml.tokens", V.ARRAY, L.values["tokenizer.ggml.tokens"][:500], V.STRING),
         "500 tokenizer.ggml.tokens"),
    Case("no tokens", lambda L: L.edit("tokenizer.ggml.tokens", V.ARRAY, [], V.STRING),
         "tokenizer.ggml.tokens is missing or empty"),
    Case("layer 1 qkv transposed", lambda L: L.reinfo("blk.1.attn_qkv.weight", dims=(128, 64)),
         "'blk.1.attn_qkv.weight' has shape [64, 128], expected [128, 64]"),
    Case("tensor missing", lambda L: L.assemble(infos=L.infos({"blk.2.ssm_out.weight": None})),
         "tensor 'blk.2.ssm_out.weight' is missing"),
    *[Case(f"moe {key} {value}", lambda L, key=key, value=value: L.edit("qwen35moe." + key, V.UINT32, value),
           mention, model="qwen35moe") for key, value, mention in (
        ("expert_count", 0, "outside"), ("expert_count", 1 << 20, "outside"),
        ("expert_used_count", 5, "expert_used_count 5 > expert_count 4"),
        ("expert_count", 8, "ffn_gate_inp.weight"), ("expert_feed_forward_length", 16, "ffn_gate_exps"))],
    Case("moe without shared expert size", lambda L: L.drop("qwen35moe.expert_shared_feed_forward_length"),
         "expert_shared_feed_forward_length", model="qwen35moe"),
]

T = "tokenizer.ggml."
TOKENIZER = [Case(name, build, mention, commands=("run",)) for name, build, mention in (
    ("tokens are numbers", lambda L: L.edit(T + "tokens", V.ARRAY, range(576), V.INT32),
     "tokens is not a list of strings"),
    ("token types short", lambda L: L.edit(T + "token_type", V.ARRAY, [1] * 575, V.INT32),
     "token_type has 575 for 576 tokens"),
    ("token type 9", lambda L: L.edit(T + "token_type", V.ARRAY, [9] * 576, V.INT32), "unknown token type 9"),
    ("merge of one token", lambda L: L.edit(T + "merges", V.ARRAY, ["abc"], V.STRING),
     "is not two tokens and a space"),
    ("merge of unknown tokens", lambda L: L.edit(T + "merges", V.ARRAY, ["zq qz"], V.STRING),
     "names unknown token"),
    ("no merges", lambda L: L.drop(T + "merges"), "merges"),
    ("model llama", lambda L: L.edit(T + "model", V.STRING, "llama"), "only 'gpt2'"),
    ("pre llama3", lambda L: L.edit(T + "pre", V.STRING, "llama3"), "pre is 'llama3'"),
    ("eos outside the vocabulary", lambda L: L.edit(T + "eos_token_id", V.UINT32, 9999),
     "outside the vocabulary"),
    ("duplicate token", lambda L: L.edit(T + "tokens", V.ARRAY, ["!", *L.values[T + "tokens"][:-1]],
                                         V.STRING), "appears twice"),
    ("bos wanted, none given", lambda L: L.edit(T + "add_bos_token", V.BOOL, True), "bos_token_id"),
)]

CASES = STRUCTURE + SEMANTICS + TOKENIZER


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    paths = write_models(tmp_path_factory.mktemp("gguf"), ["qwen35", "qwen35moe"], variants=("q8_0",))
    return {p.name.split("-")[0]: p for p in paths}


@pytest.fixture(scope="module")
def layouts(models) -> dict[str, Layout]:
    return {name: Layout.of(path) for name, path in models.items()}


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    """One file that the loops and hypothesis examples overwrite."""
    return tmp_path_factory.mktemp("hostile") / "hostile.gguf"


def test_example_models_load(layouts, scratch):
    for name, layout in layouts.items():
        scratch.write_bytes(layout.assemble())  # the encoder reproduces the file exactly
        assert scratch.read_bytes() == layout.raw, name
        check(scratch, "quick", f"valid {name}", may_succeed=True)


def test_gguf_file_reads_what_the_gguf_package_reads(models):
    """GgufFile's faster reader gives the stock reader's metadata and tensors."""
    fixtures = sorted((Path(__file__).parents[1] / "fixtures" / "gguf").glob("*.gguf"))
    assert fixtures
    for path in [*models.values(), *fixtures]:
        stock, ours = GGUFReader(path), GgufFile(path)
        assert ours.metadata == {k: f.contents() for k, f in stock.fields.items()
                                 if not k.startswith("GGUF.")}, path
        for t in stock.tensors:
            assert (ours.tensor(t.name) == dequantize(t.data, t.tensor_type)
                    .reshape(ours.tensor_shape(t.name))).all(), (path, t.name)


@pytest.mark.parametrize(("case", "command"), [(c, cmd) for c in CASES for cmd in c.commands],
                         ids=lambda x: x.name if isinstance(x, Case) else x)
def test_hand_made(layouts, tmp_path, case, command):
    path = tmp_path / "hostile.gguf"
    path.write_bytes(case.build(layouts[case.model]))
    check(path, command, case.name, mention=case.mention, may_succeed=case.may_succeed)


def test_a_directory_and_a_missing_file(tmp_path):
    (tmp_path / "folder.gguf").mkdir()
    for name in ("folder.gguf", "absent.gguf"):
        for command in ("inspect", "run"):
            check(tmp_path / name, command, name, mention="no such file")


@pytest.mark.parametrize("share", [3, pytest.param(1, marks=pytest.mark.slow)],
                         ids=["every-third-cut", "every-cut"])
def test_truncation_at_every_boundary(layouts, scratch, share):
    """Cut the file at and one byte either side of every boundary (by default every third of
    those cuts, all of them under ``-m slow``); a cut in the trailing padding leaves a valid
    file. Every tenth cut also goes through ``run``."""
    layout = layouts["qwen35"]
    every = sorted({c for b in layout.boundaries for c in (b - 1, b, b + 1) if 0 <= c < len(layout.raw)})
    assert len(every) > 1000
    cuts = every[::share]
    failures = []
    for i, cut in enumerate(cuts):
        scratch.write_bytes(layout.raw[:cut])
        valid = cut >= layout.data_end
        mention = "empty" if cut == 0 else "not a GGUF file" if cut < 4 else "end of the file"
        for command in ("inspect", "run") if i % 10 == 0 else ("inspect",):
            try:
                check(scratch, command, f"cut at {cut}", mention=None if valid else mention,
                      may_succeed=valid)
            except AssertionError as exc:
                failures.append(str(exc))
    assert not failures, "\n".join(failures[:20])


def flips(ranges: list[tuple[int, int]]) -> st.SearchStrategy[list[tuple[int, int]]]:
    """1 to 3 (position, xor mask) pairs, positions drawn from ``ranges``."""
    position = st.sampled_from(ranges).flatmap(lambda r: st.integers(r[0], r[1] - 1))
    return st.lists(st.tuples(position, st.integers(1, 255)), min_size=1, max_size=3)


def flipped(layout: Layout, changes: list[tuple[int, int]]) -> bytes:
    raw = bytearray(layout.raw)
    for position, mask in changes:
        raw[position] ^= mask
    return bytes(raw)


def header_ranges(layout: Layout) -> list[tuple[int, int]]:
    """The fixed-size fields, and (one draw in five) anywhere before the data."""
    return [*layout.fields, *[(0, layout.data_start)] * (len(layout.fields) // 4)]


FLIP_SETTINGS = dict(derandomize=True, deadline=None, database=None,
                     suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@settings(max_examples=150, **FLIP_SETTINGS)  # type: ignore[arg-type]
@given(data=st.data())
def test_byte_flips_in_the_header(layouts, scratch, data):
    layout = layouts["qwen35"]
    changes = data.draw(flips(header_ranges(layout)))
    scratch.write_bytes(flipped(layout, changes))
    check(scratch, "quick", f"flips {changes}", may_succeed=True)


@settings(max_examples=4, **FLIP_SETTINGS)  # type: ignore[arg-type]
@given(data=st.data())
def test_byte_flips_in_the_data(layouts, scratch, data):
    layout = layouts["qwen35"]
    changes = data.draw(flips([(layout.data_start, len(layout.raw))]))
    scratch.write_bytes(flipped(layout, changes))
    check(scratch, "run", f"data flips {changes}", may_succeed=True)


def test_as_a_real_process(layouts, tmp_path):
    """A few cases through ``python -m gdnc``, as a user meets them."""
    layout = layouts["qwen35"]
    cases = {
        "tensor-count": (layout.assemble(counts=((1 << 64) - 1, len(layout.kvs))), "inspect"),
        "string-length": (layout.patch("general.name", 4, "Q", 1 << 40), "run"),
        "architecture": (layout.edit("general.architecture", V.STRING, "llama"), "inspect"),
    }

    def gdnc(name: str) -> Outcome:
        data, command = cases[name]
        path = tmp_path / f"{name}.gguf"
        path.write_bytes(data)
        sub, *options = COMMANDS[command]
        args = [sub, str(path), *options]
        proc = subprocess.run([sys.executable, "-m", "gdnc", *args], capture_output=True, text=True,
                              timeout=60)
        # time and memory are the in-process cases' to check: here a fresh interpreter imports torch
        return Outcome(args, proc.returncode, proc.stdout, proc.stderr, seconds=0.0, peak_bytes=0)

    with ThreadPoolExecutor(max_workers=len(cases)) as pool:
        outcomes = dict(zip(cases, pool.map(gdnc, cases)))
    for name, outcome in outcomes.items():
        hold_to_promise(SUITE, f"process {name}", outcome)


@pytest.mark.slow
@settings(max_examples=2000, **FLIP_SETTINGS)  # type: ignore[arg-type]
@given(data=st.data())
def test_many_byte_flips(layouts, scratch, data):
    layout = layouts[data.draw(st.sampled_from(sorted(layouts)))]
    whole = [(0, len(layout.raw))] * (len(layout.fields) // 4)
    changes = data.draw(flips([*header_ranges(layout), *whole]))
    scratch.write_bytes(flipped(layout, changes))
    check(scratch, data.draw(st.sampled_from(["quick", "run"])), f"flips {changes}",
          may_succeed=True)


@pytest.mark.slow
def test_metadata_at_the_array_limit(layouts, scratch):
    """Empty strings up to the metadata's array item limit: loads, within the deadline."""
    layout = layouts["qwen35"]
    used = sum(len(v) for v in layout.values.values() if isinstance(v, list))
    n = MAX_ARRAY_ITEMS - used
    entry = gguf_string("x.strings") + struct.pack("<IIQ", V.ARRAY, V.STRING, n) + gguf_string("") * n
    scratch.write_bytes(layout.assemble(layout.entries({"x.strings": entry})))
    check(scratch, "quick", f"{n} empty strings", may_succeed=True)
