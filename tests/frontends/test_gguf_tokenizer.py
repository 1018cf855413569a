"""GgufTokenizer against the fixtures' GGUF vocabularies (written by llama.cpp's converter).

Round trips, special tokens, merges, the qwen2 / qwen35 split difference, one-line errors, and an
independent reference (the ``regex`` module plus a plain rank-ordered BPE written here).
"""

from __future__ import annotations

import functools
import os
import unicodedata
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import regex
import tokenizers  # noqa: F401  (a missing library must fail these tests, not skip them)
from gguf import GGUFReader
from hypothesis import given, settings
from hypothesis import strategies as st

from gdnc.errors import InputError, ModelLoadError
from gdnc.frontends.gguf_tokenizer import GgufTokenizer, utf8_pieces

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "gguf"  # copied from ../shared/fixtures
ARCHS = ["qwen35", "qwen3next", "qwen35moe"]
IM_START, IM_END, ENDOFTEXT = 373, 374, 372

# Transcribed independently from llama.cpp src/llama-vocab.cpp (QWEN2 and QWEN35 cases).
REF_PATTERNS = {
    "qwen2": r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
             r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    "qwen35": r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+"
              r"|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
}

ROUND_TRIP = [
    "",
    "hello world",
    "The value of the object is returned by the function.",
    "def f(x):\n    return x  # comment\n\n\tindented\ttabs\r\nwindows line\n",
    "class A:\n        def __init__(self) -> None:\n            self.x = [1, 2, 3]\n",
    "   leading and trailing spaces   \n\n\n",
    "numbers 0 12 345 6789 3.14159 -1e-10 0x1F 1,000,000",
    "I'm can't we'LL they'VE She'S",
    "日本語のテキストと中文混合，标点！",
    "emoji 🎉👍🏽 family 👨‍👩‍👧 flag 🇩🇪",
    "Ünïcödé — “quotes” … ½ ™ ‘x’",
    "नमस्ते दुनिया",
    "Привет, мир! Γειά σου Κόσμε",
    "text<|endoftext|>more [PAD375] literal",
    "\x00\x01\x7f control bytes\x0b\x0c",
]
# strings that NFC changes; they round-trip to their NFC form
NFC_CHANGED = ["e\u0301cole", "A\u030angstro\u0308m", "\u1100\u1161\u11a8 jamo", "s\u0307\u0323 dots"]


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), 256)]
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


B2U = bytes_to_unicode()


@functools.cache
def fixture_meta(arch: str) -> dict[str, Any]:
    path = FIXTURES / f"{arch}-fixture-f32.gguf"
    if not path.exists():
        pytest.fail(f"fixture {path} is missing")
    reader = GGUFReader(path)
    return {name: field.contents() for name, field in reader.fields.items()}


@functools.cache
def fixture_tok(arch: str) -> GgufTokenizer:
    return GgufTokenizer.from_metadata(fixture_meta(arch))


@pytest.fixture(params=ARCHS)
def arch(request) -> str:
    return request.param


def ref_encode(meta: dict[str, Any], text: str) -> list[int]:
    """Independent reference: control tokens verbatim, NFC, regex split, byte map, rank-ordered BPE."""
    tokens = list(meta["tokenizer.ggml.tokens"])
    types = list(meta["tokenizer.ggml.token_type"])
    vocab = {t: i for i, t in enumerate(tokens)}
    ranks = {tuple(m.split(" ")): r for r, m in enumerate(meta["tokenizer.ggml.merges"])}
    split = regex.compile(REF_PATTERNS[str(meta["tokenizer.ggml.pre"])])
    special = sorted((tokens[i] for i, t in enumerate(types) if t in (3, 4)), key=len, reverse=True)
    out: list[int] = []
    for chunk in regex.split("(" + "|".join(regex.escape(s) for s in special) + ")", text):
        if chunk in special:
            out.append(vocab[chunk])
            continue
        for piece in split.findall(unicodedata.normalize("NFC", chunk)):
            syms = [B2U[b] for b in piece.encode("utf-8")]
            while len(syms) > 1:
                rank, k = min((ranks.get((a, b), 1 << 30), k) for k, (a, b) in enumerate(zip(syms, syms[1:])))
                if rank == 1 << 30:
                    break
                syms[k:k + 2] = [syms[k] + syms[k + 1]]
            out.extend(vocab[s] for s in syms)
    return out


def synthetic_meta(pre: str, extra: list[str], merges: list[str], user: Sequence[str] = ()) -> dict[str, Any]:
    """256 byte tokens, then ``extra``, then USER_DEFINED ``user``, then one CONTROL token."""
    tokens = [B2U[b] for b in range(256)] + extra + list(user) + ["<|ctl|>"]
    types = [1] * (256 + len(extra)) + [4] * len(user) + [3]
    return {
        "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": pre, "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": types, "tokenizer.ggml.merges": merges,
        "tokenizer.ggml.eos_token_id": len(tokens) - 1,
    }


# ---------------------------------------------------------------- fixtures (all three files)

def test_fixture_attributes(arch: str) -> None:
    tok = fixture_tok(arch)
    assert tok.vocab_size == 384
    assert (tok.eos_id, tok.bos_id, tok.pad_id) == (374, None, 372)
    assert tok.special_ids == frozenset({ENDOFTEXT, IM_START, IM_END})
    assert tok.token_text(IM_START) == "<|im_start|>"
    assert tok.token_text(375) == "[PAD375]"
    assert fixture_meta(arch)["tokenizer.ggml.pre"] == ("qwen2" if arch == "qwen3next" else "qwen35")


@pytest.mark.parametrize("text", ROUND_TRIP)
def test_round_trip(arch: str, text: str) -> None:
    tok = fixture_tok(arch)
    ids = tok.encode(text)
    assert all(0 <= i < tok.vocab_size for i in ids)
    assert tok.decode(ids) == text


@pytest.mark.parametrize("text", NFC_CHANGED)
def test_round_trip_nfc(arch: str, text: str) -> None:
    nfc = unicodedata.normalize("NFC", text)
    assert nfc != text
    tok = fixture_tok(arch)
    assert tok.decode(tok.encode(text)) == nfc
    assert tok.encode(text) == tok.encode(nfc)


@pytest.mark.parametrize("text", ROUND_TRIP + NFC_CHANGED + ["<|im_start|>user\nthe<|im_end|>\n"])
def test_matches_reference(arch: str, text: str) -> None:
    assert fixture_tok(arch).encode(text) == ref_encode(fixture_meta(arch), text)


def test_chat_markers(arch: str) -> None:
    tok = fixture_tok(arch)
    ids = tok.encode("<|im_start|>hello<|im_end|>")
    assert ids[0] == IM_START and ids[-1] == IM_END
    assert ids[1:-1] == tok.encode("hello")
    assert tok.decode(ids) == "<|im_start|>hello<|im_end|>"


def test_skip_special(arch: str) -> None:
    tok = fixture_tok(arch)
    ids = tok.encode("<|im_start|>user\nwhat is the value?<|im_end|>\n<|endoftext|>")
    assert {IM_START, IM_END, ENDOFTEXT} <= set(ids)
    assert tok.decode(ids, skip_special=True) == "user\nwhat is the value?\n"
    assert tok.decode(ids, skip_special=False).count("<|im_end|>") == 1


def test_merges_applied(arch: str) -> None:
    tok = fixture_tok(arch)
    vocab = {tok.token_text(i): i for i in range(tok.vocab_size)}
    assert "Ġt he" in fixture_meta(arch)["tokenizer.ggml.merges"]
    assert tok.encode(" the") == [vocab["Ġthe"]]
    text = " the value of the object and the class"
    assert len(tok.encode(text)) < len(text.encode("utf-8")) // 2
    # "—" is E2 80 94: the listed merge "â Ģ" joins the first two bytes
    assert tok.encode("—") == [vocab["âĢ"], vocab[B2U[0x94]]]


def test_byte_symbols(arch: str) -> None:
    tok = fixture_tok(arch)
    for b in range(128):
        (i,) = tok.encode(chr(b))
        assert tok.token_text(i) == B2U[b]
    assert [tok.token_text(i) for i in tok.encode("é")] == [B2U[0xC3], B2U[0xA9]]
    assert [tok.token_text(i) for i in tok.encode("€")] == [B2U[0xE2], B2U[0x82], B2U[0xAC]]


def test_digits_are_single(arch: str) -> None:
    tok = fixture_tok(arch)
    assert [tok.token_text(i) for i in tok.encode("2025")] == ["2", "0", "2", "5"]


def test_decode_bad_id(arch: str) -> None:
    with pytest.raises(ValueError):
        fixture_tok(arch).decode([384])


# ---------------------------------------------------------------- synthetic vocabularies

MARK_EXTRA = ["Ìģ", "xÌģ", "Ìģ.", "12"]
MARK_MERGES = ["Ì ģ", "x Ìģ", "Ìģ .", "1 2"]


def test_qwen2_vs_qwen35_marks() -> None:
    """U+0301 (a combining mark) stays with its letter under qwen35 and starts a punctuation run under
    qwen2; the merges see different pieces, so the ids differ. Digits are single under both."""
    text = "x\u0301."
    assert unicodedata.normalize("NFC", text) == text
    q35 = GgufTokenizer.from_metadata(synthetic_meta("qwen35", MARK_EXTRA, MARK_MERGES))
    q2 = GgufTokenizer.from_metadata(synthetic_meta("qwen2", MARK_EXTRA, MARK_MERGES))
    assert [q35.token_text(i) for i in q35.encode(text)] == ["xÌģ", "."]
    assert [q2.token_text(i) for i in q2.encode(text)] == ["x", "Ìģ."]
    for tok, pre in ((q35, "qwen35"), (q2, "qwen2")):
        assert tok.decode(tok.encode(text)) == text
        for s in (text, "नमस्ते x\u0301y 123", "a\u0301\u0302!? q\u0301"):
            assert tok.encode(s) == ref_encode(synthetic_meta(pre, MARK_EXTRA, MARK_MERGES), s)
        assert [tok.token_text(i) for i in tok.encode("123")] == ["1", "2", "3"]


def test_user_defined_verbatim() -> None:
    meta = synthetic_meta("qwen35", [], [], user=["<é tok>", "<é>"])
    tok = GgufTokenizer.from_metadata(meta)
    ids = tok.encode("a<é>b<é tok><|ctl|>")
    assert ids == [ord("a"), 257, ord("b"), 256, 258]
    assert tok.special_ids == frozenset({258})
    assert tok.decode(ids) == "a<é>b<é tok><|ctl|>"
    assert tok.decode(ids, skip_special=True) == "a<é>b<é tok>"


def test_add_bos() -> None:
    meta = {**fixture_meta("qwen35"), "tokenizer.ggml.add_bos_token": True}
    meta["tokenizer.ggml.bos_token_id"] = 372
    tok = GgufTokenizer.from_metadata(meta)
    assert tok.bos_id == 372
    assert tok.encode("hi") == [372, *fixture_tok("qwen35").encode("hi")]


def _bad(**changes: object) -> dict[str, object]:
    meta = dict(fixture_meta("qwen35"))
    for key, value in changes.items():
        full = "tokenizer.ggml." + key
        if value is None:
            meta.pop(full)
        else:
            meta[full] = value
    return meta


_TYPES = list(fixture_meta("qwen35")["tokenizer.ggml.token_type"])
_MERGES = list(fixture_meta("qwen35")["tokenizer.ggml.merges"])
_TOKENS = list(fixture_meta("qwen35")["tokenizer.ggml.tokens"])


@pytest.mark.parametrize(("changes", "needle"), [
    ({"model": "llama"}, "llama"),
    ({"pre": "unknown"}, "unknown"),
    ({"pre": None}, "pre"),
    ({"model": None}, "model"),
    ({"tokens": None}, "tokens"),
    ({"tokens": []}, "tokens"),
    ({"merges": None}, "merges"),
    ({"merges": [*_MERGES, "Ġ zzzq"]}, "zzzq"),
    ({"merges": [*_MERGES, "Ġthe"]}, "Ġthe"),
    ({"token_type": _TYPES[:-1]}, "383"),
    ({"token_type": [*_TYPES[:-1], 9]}, "9"),
    ({"tokens": [*_TOKENS[:-1], "!"]}, "twice"),
    ({"eos_token_id": 384}, "384"),
    ({"padding_token_id": -1}, "-1"),
    ({"add_bos_token": True}, "bos_token_id"),
])
def test_bad_metadata(changes: dict[str, object], needle: str) -> None:
    with pytest.raises(ModelLoadError) as info:
        GgufTokenizer.from_metadata(_bad(**changes))
    message = str(info.value)
    assert "\n" not in message and message
    assert needle in message


def test_llama_cpp_reference(arch: str) -> None:
    """Only where llama-cpp-python is installed: its tokenizer on the same file."""
    llama_cpp = pytest.importorskip("llama_cpp")
    path = str(FIXTURES / f"{arch}-fixture-f32.gguf")
    llm = llama_cpp.Llama(model_path=path, vocab_only=True, verbose=False)
    for text in [*ROUND_TRIP, *NFC_CHANGED, "<|im_start|>user\nthe<|im_end|>"]:
        expected = llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)
        assert fixture_tok(arch).encode(text) == expected, text


# ---------------------------------------------------------------- bytes not UTF-8, missing byte symbols

U2B = {c: b for b, c in B2U.items()}


def _token_bytes(tok: GgufTokenizer, ids: list[int]) -> bytes:
    return b"".join(bytes(U2B[c] for c in tok.token_text(i)) for i in ids)


@settings(max_examples=60, deadline=None)
@given(data=st.binary(max_size=40))
def test_any_bytes_encode_to_their_byte_symbols(data: bytes) -> None:
    """Valid UTF-8 runs are tokenized as text (NFC), each other byte as its byte token; bytes and
    their surrogate-escaped str (a command line's form) give the same ids."""
    tok = fixture_tok("qwen35")
    ids = tok.encode(data)
    want = b"".join(unicodedata.normalize("NFC", p).encode() if isinstance(p, str) else bytes([p])
                    for p in utf8_pieces(data))
    assert _token_bytes(tok, ids) == want
    assert tok.encode(os.fsdecode(data) if os.name == "posix" else data) == ids


def test_a_prompt_that_is_not_utf8() -> None:
    tok = fixture_tok("qwen35")
    vocab = {t: i for i, t in enumerate(_TOKENS)}
    ids = tok.encode(b"caf\xe9 \xff")
    assert ids == [*tok.encode("caf"), vocab[B2U[0xE9]], *tok.encode(" "), vocab[B2U[0xFF]]]
    assert tok.encode("caf\udce9 \udcff") == ids
    with pytest.raises(InputError, match=r"lone surrogate U\+D800 at character 1"):
        tok.encode("a\ud800")


def _without_symbol(byte: int) -> GgufTokenizer:
    """The qwen35 fixture vocabulary with byte ``byte``'s symbol renamed away (in no merge)."""
    symbol = B2U[byte]
    assert not any(symbol in m.split(" ") for m in _MERGES), symbol
    return GgufTokenizer.from_metadata(_bad(tokens=[t if t != symbol else "<gone>" for t in _TOKENS]))


def test_a_missing_byte_symbol_is_an_error_not_a_dropped_character() -> None:
    tok = _without_symbol(ord("K"))
    assert tok.encode("abc") == fixture_tok("qwen35").encode("abc")
    with pytest.raises(InputError, match=r"character 'K' at byte 1 of the text has no token.*byte 0x4B"):
        tok.encode("aKb")
    with pytest.raises(InputError, match=r"character 'K' at byte 14 "):
        tok.encode("é<|im_start|>K")  # bytes: 2 of é, 12 of the control token
    with pytest.raises(InputError, match=r"byte 0xFF at byte 2 of the text is not UTF-8, and the vocabulary"):
        _without_symbol(0xFF).encode(b"ab\xff")


def test_a_missing_byte_symbol_inside_a_control_token_is_fine() -> None:
    tok = _without_symbol(ord("<"))
    assert tok.encode("<|im_start|>hi") == fixture_tok("qwen35").encode("<|im_start|>hi")
    with pytest.raises(InputError, match="character '<' at byte 1"):
        tok.encode("a<b")
