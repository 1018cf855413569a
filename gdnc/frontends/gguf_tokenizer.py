"""The byte-level BPE tokenizer stored in a GGUF file (llama.cpp ``gpt2`` layout, Qwen pre-tokenizers).

Built on the HF ``tokenizers`` library: NFC, the llama.cpp split regex chosen by
``tokenizer.ggml.pre``, GPT-2 byte-level mapping, BPE over ``tokenizer.ggml.merges``. CONTROL and
USER_DEFINED tokens are matched verbatim in the input text. Every metadata problem is a one-line
``ModelLoadError``; a text the vocabulary cannot encode (a byte with no token) a one-line ``InputError``.
"""

from __future__ import annotations

import operator
import re
import unicodedata
from collections.abc import Mapping, Sequence

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

from gdnc.errors import InputError, ModelLoadError, first_line

# tokenizer.ggml.token_type values (llama.cpp's llama_token_type)
TOKEN_UNDEFINED, TOKEN_NORMAL, TOKEN_UNKNOWN, TOKEN_CONTROL = 0, 1, 2, 3
TOKEN_USER_DEFINED, TOKEN_UNUSED, TOKEN_BYTE = 4, 5, 6

_CONTRACTIONS = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"

# llama.cpp src/llama-vocab.cpp, LLAMA_VOCAB_PRE_TYPE_QWEN2 and LLAMA_VOCAB_PRE_TYPE_QWEN35. They differ
# only in combining marks (\p{M}): qwen35 keeps them in words and out of punctuation runs.
SPLIT_PATTERNS: dict[str, str] = {
    "qwen2": _CONTRACTIONS
    + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    "qwen35": _CONTRACTIONS
    + r"|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
}

_KEY = "tokenizer.ggml."


def _byte_symbols() -> list[str]:
    """GPT-2's byte-level alphabet: entry b is the symbol of byte b (printable Latin-1 bytes stand
    for themselves, the others for U+0100 on, in byte order)."""
    printable = {*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), 256)}
    others = iter(range(256, 512))
    return [chr(b) if b in printable else chr(next(others)) for b in range(256)]


BYTE_SYMBOLS = _byte_symbols()
_STRAY_BYTE = re.compile("([\udc80-\udcff])")  # a surrogate escape: one byte that is not UTF-8


def utf8_pieces(text: str | bytes) -> list[str | int]:
    """``text`` cut into runs of valid UTF-8 (str) and the bytes between them that are not UTF-8
    (int). In a str, surrogate escapes U+DC80..U+DCFF stand for such bytes (``os.fsdecode``'s
    convention, which command-line arguments follow); another lone surrogate is an InputError."""
    try:
        data = text.encode("utf-8", "surrogateescape") if isinstance(text, str) else text
    except UnicodeEncodeError as exc:
        raise InputError(f"the text has a lone surrogate U+{ord(exc.object[exc.start]):04X} at character "
                         f"{exc.start}, which is no character and no byte") from None
    pieces: list[str] = _STRAY_BYTE.split(data.decode("utf-8", "surrogateescape"))
    return [ord(p) - 0xDC00 if _STRAY_BYTE.fullmatch(p) else p for p in pieces if p]


def _str_list(meta: Mapping[str, object], key: str) -> list[str]:
    value = meta.get(_KEY + key)
    if value is None:
        raise ModelLoadError(f"GGUF tokenizer: no {_KEY + key} key")
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise ModelLoadError(f"GGUF tokenizer: {_KEY + key} is not a list of strings")
    return list(value)


def _int(value: object, what: str) -> int:
    if isinstance(value, bool):
        raise ModelLoadError(f"GGUF tokenizer: {what} is a bool, not an integer")
    try:  # not isinstance(value, SupportsIndex): a Protocol check costs ~10 us, once per token
        return operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise ModelLoadError(f"GGUF tokenizer: {what} is {value!r}, not an integer") from None


def _token_id(meta: Mapping[str, object], key: str, n_vocab: int) -> int | None:
    if _KEY + key not in meta:
        return None
    i = _int(meta[_KEY + key], _KEY + key)
    if not 0 <= i < n_vocab:
        raise ModelLoadError(f"GGUF tokenizer: {_KEY + key} = {i} is outside the vocabulary [0, {n_vocab})")
    return i


def _flag(meta: Mapping[str, object], key: str) -> bool:
    value = meta.get(_KEY + key, False)
    if not isinstance(value, bool):
        raise ModelLoadError(f"GGUF tokenizer: {_KEY + key} is {value!r}, not a bool")
    return value


class GgufTokenizer:
    """Text <-> token ids for a GGUF ``gpt2`` (byte-level BPE) vocabulary.

    ``special_ids`` are the CONTROL tokens; ``eos_id`` / ``bos_id`` / ``pad_id`` are the
    ``tokenizer.ggml.*_token_id`` keys (None when absent).
    """

    def __init__(
        self,
        tokenizer: Tokenizer,
        tokens: list[str],
        token_types: list[int],
        *,
        eos_id: int | None,
        bos_id: int | None,
        pad_id: int | None,
        add_bos: bool,
        add_eos: bool,
    ) -> None:
        self._tok = tokenizer
        self._tokens = tokens
        self.vocab_size = len(tokens)
        self.eos_id = eos_id
        self.bos_id = bos_id
        self.pad_id = pad_id
        self.add_bos = add_bos
        self.add_eos = add_eos
        self.special_ids = frozenset(i for i, t in enumerate(token_types) if t == TOKEN_CONTROL)
        # tokens whose text is stored verbatim, not byte-level encoded
        self._verbatim_ids = frozenset(
            i for i, t in enumerate(token_types) if t in (TOKEN_CONTROL, TOKEN_USER_DEFINED))
        self._byte_ids = [tokenizer.token_to_id(symbol) for symbol in BYTE_SYMBOLS]
        self._missing_bytes = frozenset(b for b, i in enumerate(self._byte_ids) if i is None)

    @classmethod
    def from_metadata(cls, meta: Mapping[str, object]) -> GgufTokenizer:
        """Build from GGUF metadata (key -> Python value); ModelLoadError when unusable."""
        model = meta.get(_KEY + "model")
        if model != "gpt2":
            raise ModelLoadError(
                f"GGUF tokenizer: {_KEY}model is {model!r}; only 'gpt2' (byte-level BPE) is supported")
        pre = meta.get(_KEY + "pre")
        if not isinstance(pre, str) or pre not in SPLIT_PATTERNS:
            raise ModelLoadError(
                f"GGUF tokenizer: {_KEY}pre is {pre!r}; supported: {', '.join(sorted(SPLIT_PATTERNS))}")

        tokens = _str_list(meta, "tokens")
        if not tokens:
            raise ModelLoadError(f"GGUF tokenizer: {_KEY}tokens is empty")
        vocab: dict[str, int] = {}
        for i, text in enumerate(tokens):
            if text in vocab:
                raise ModelLoadError(f"GGUF tokenizer: token {text!r} appears twice (ids {vocab[text]}, {i})")
            vocab[text] = i

        if _KEY + "token_type" in meta:
            raw_types = meta[_KEY + "token_type"]
            if not isinstance(raw_types, (list, tuple)):
                raise ModelLoadError(f"GGUF tokenizer: {_KEY}token_type is not a list")
            if len(raw_types) != len(tokens):
                raise ModelLoadError(
                    f"GGUF tokenizer: {_KEY}token_type has {len(raw_types)} for {len(tokens)} tokens")
            token_types = [_int(t, f"{_KEY}token_type entry") for t in raw_types]
            bad = next((t for t in token_types if not TOKEN_UNDEFINED <= t <= TOKEN_BYTE), None)
            if bad is not None:
                raise ModelLoadError(f"GGUF tokenizer: unknown token type {bad} in {_KEY}token_type")
        else:
            token_types = [TOKEN_NORMAL] * len(tokens)

        merges: list[tuple[str, str]] = []
        for rank, merge in enumerate(_str_list(meta, "merges")):
            parts = merge.split(" ")
            if len(parts) != 2 or not parts[0] or not parts[1]:
                raise ModelLoadError(f"GGUF tokenizer: merge {rank} {merge!r} is not two tokens and a space")
            for part in (*parts, parts[0] + parts[1]):
                if part not in vocab:
                    raise ModelLoadError(
                        f"GGUF tokenizer: merge {rank} {merge!r} names unknown token {part!r}")
            merges.append((parts[0], parts[1]))

        n = len(tokens)
        eos_id = _token_id(meta, "eos_token_id", n)
        bos_id = _token_id(meta, "bos_token_id", n)
        pad_id = _token_id(meta, "padding_token_id", n)
        add_bos, add_eos = _flag(meta, "add_bos_token"), _flag(meta, "add_eos_token")
        if add_bos and bos_id is None:
            raise ModelLoadError(f"GGUF tokenizer: {_KEY}add_bos_token is true but there is no bos_token_id")
        if add_eos and eos_id is None:
            raise ModelLoadError(f"GGUF tokenizer: {_KEY}add_eos_token is true but there is no eos_token_id")

        try:
            hf = Tokenizer(models.BPE(vocab=vocab, merges=merges))
        except Exception as exc:  # tokenizers raises a bare Exception
            raise ModelLoadError(f"GGUF tokenizer: cannot build the BPE model ({first_line(exc)})") from exc
        hf.normalizer = normalizers.NFC()
        hf.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(SPLIT_PATTERNS[pre]), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
        hf.decoder = decoders.ByteLevel()
        hf.add_special_tokens([
            AddedToken(tokens[i], special=True, normalized=False)
            for i, t in enumerate(token_types) if t == TOKEN_CONTROL
        ])
        hf.add_tokens([
            AddedToken(tokens[i], special=False, normalized=False)
            for i, t in enumerate(token_types) if t == TOKEN_USER_DEFINED
        ])
        return cls(hf, tokens, token_types, eos_id=eos_id, bos_id=bos_id, pad_id=pad_id,
                   add_bos=add_bos, add_eos=add_eos)

    def encode(self, text: str | bytes) -> list[int]:
        """Token ids of ``text`` (a str, or bytes meant as UTF-8); CONTROL / USER_DEFINED token texts
        in it become their ids.

        A byte that is not part of valid UTF-8 (in a str: its surrogate escape) becomes its byte
        token, the text either side tokenized on its own. A character or byte whose byte symbol
        the vocabulary lacks is an InputError naming it and its byte offset (the BPE would drop
        it). BOS is prepended only when ``tokenizer.ggml.add_bos_token`` is true (EOS likewise
        appended for ``add_eos_token``).
        """
        ids: list[int] = []
        offset = 0
        for piece in utf8_pieces(text):
            if isinstance(piece, int):
                ids.append(self._byte_token(piece, offset))
                offset += 1
                continue
            ids.extend(self._encode_utf8(piece, offset))
            offset += len(piece.encode())
        if self.add_bos and self.bos_id is not None:
            ids.insert(0, self.bos_id)
        if self.add_eos and self.eos_id is not None:
            ids.append(self.eos_id)
        return ids

    def _byte_token(self, byte: int, offset: int) -> int:
        token = self._byte_ids[byte]
        if token is None:
            raise InputError(f"byte 0x{byte:02X} at byte {offset} of the text is not UTF-8, and the "
                             f"vocabulary has no token for it")
        return token

    def _encode_utf8(self, text: str, offset: int) -> list[int]:
        """The ids of valid text; with byte symbols missing from the vocabulary, checked to
        decode back to its NFC form (InputError at the first character that was dropped)."""
        ids: list[int] = self._tok.encode(text, add_special_tokens=False).ids
        if not self._missing_bytes:
            return ids
        want, got = unicodedata.normalize("NFC", text), self.decode(ids)
        at = next((k for k, (a, b) in enumerate(zip(want, got)) if a != b), len(got))
        lost = [b for b in want[at:at + 1].encode() if b in self._missing_bytes]
        if lost:
            raise InputError(
                f"character {want[at]!r} at byte {offset + len(want[:at].encode())} of the text has no "
                f"token: the vocabulary has no symbol for byte {', '.join(f'0x{b:02X}' for b in lost)}")
        return ids

    def decode(self, ids: Sequence[int], skip_special: bool = False) -> str:
        """Text of ``ids``. CONTROL / USER_DEFINED tokens give their text verbatim; CONTROL tokens
        are dropped when ``skip_special``. Invalid UTF-8 byte runs decode to U+FFFD. An id outside
        the vocabulary is a ValueError."""
        pieces: list[str] = []
        run: list[int] = []
        for raw in ids:
            i = operator.index(raw)
            if not 0 <= i < self.vocab_size:
                raise ValueError(f"token id {i} is outside the vocabulary [0, {self.vocab_size})")
            if i not in self._verbatim_ids:
                run.append(i)
                continue
            if run:
                pieces.append(self._tok.decode(run, skip_special_tokens=False))
                run = []
            if not (skip_special and i in self.special_ids):
                pieces.append(self._tokens[i])
        if run:
            pieces.append(self._tok.decode(run, skip_special_tokens=False))
        return "".join(pieces)

    def token_text(self, i: int) -> str:
        """The vocabulary entry of id ``i`` as stored (byte-level symbols for normal tokens)."""
        if not 0 <= i < self.vocab_size:
            raise ValueError(f"token id {i} is outside the vocabulary [0, {self.vocab_size})")
        return self._tokens[i]
