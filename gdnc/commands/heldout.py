"""Perplexity of a text under a GGUF model's fused and unfused graphs, and under the HF
checkpoint the model came from, on the same token windows.

The text is tokenized with the GGUF file's tokenizer and cut into consecutive windows of
``width + 1`` tokens overlapping by one: each window is run from an empty state and scores its
last ``width`` tokens (the next-token NLL of each given the ones before it in the window).
Perplexity is ``exp(sum NLL / scored tokens)``, in float64.
"""

from __future__ import annotations

import importlib.util
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from gdnc import progress
from gdnc.commands.gguf_model import batch_logits
from gdnc.errors import InputError, ModelLoadError, first_line

if TYPE_CHECKING:
    from gdnc.models.gguf_model import GgufModel

MAX_TEXT_BYTES = 64 << 20
# fused vs unfused: equal to 4 significant digits; on CUDA the chunked Triton kernel's dots run in
# tf32 (SPEC §6: <= 2e-3 relative L2 per call), which moves a perplexity by up to ~5e-4
FUSED_TOLERANCE = {"cpu": 5e-5, "cuda": 1e-3}
# windows per batch: the fused graph serves any batch; an unfused graph is built per batch
# composition, so batches of one window reuse one graph (windows all have the same length)
FUSED_BATCH, UNFUSED_BATCH = 8, 1


@dataclass(frozen=True)
class Window:
    """``inputs`` run from an empty state; ``targets[i]`` is the token after ``inputs[i]``."""

    inputs: tuple[int, ...]
    targets: tuple[int, ...]


def check_options(width: int, max_tokens: int | None) -> None:
    """InputError unless ``width`` >= 1 and ``max_tokens`` is None or >= 1."""
    if width < 1:
        raise InputError(f"--window must be >= 1, got {width}")
    if max_tokens is not None and max_tokens < 1:
        raise InputError(f"--max-tokens must be >= 1, got {max_tokens}")


def windows(ids: list[int], width: int, max_tokens: int | None = None) -> list[Window]:
    """The scoring windows of ``ids`` (module docstring), at most ``max_tokens`` scored."""
    check_options(width, max_tokens)
    end = len(ids) if max_tokens is None else min(len(ids), max_tokens + 1)
    return [Window(tuple(ids[s:min(s + width, end - 1)]), tuple(ids[s + 1:min(s + width + 1, end)]))
            for s in range(0, end - 1, width)]


def nll(logits: torch.Tensor, targets: tuple[int, ...]) -> float:
    """Sum of -log softmax(logits)[target] over positions (logits [T, n_vocab]), float64."""
    logp = torch.log_softmax(logits.double(), dim=-1)
    index = torch.tensor(targets, device=logp.device).view(-1, 1)
    return float(-logp.gather(1, index).sum())


@dataclass
class HeldOut:
    """Perplexities by runner ("fused", "unfused", "hf") of ``tokens`` scored tokens."""

    text: str
    tokens: int
    windows: int
    width: int
    perplexity: dict[str, float] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    hf: str | None = None
    device: str = "cpu"

    @property
    def fused_tolerance(self) -> float:
        """Relative: 5e-5 (4 significant digits) on CPU, 1e-3 on CUDA (``FUSED_TOLERANCE``)."""
        return FUSED_TOLERANCE[self.device]

    @property
    def fused_matches_unfused(self) -> bool:
        return _close(self.perplexity["fused"], self.perplexity["unfused"], self.fused_tolerance)

    @property
    def hf_matches(self) -> bool | None:
        """Fused within 1e-3 (relative) of HF's; None without an HF checkpoint."""
        if "hf" not in self.perplexity:
            return None
        return _close(self.perplexity["fused"], self.perplexity["hf"], 1e-3)

    @property
    def passed(self) -> bool:
        return self.fused_matches_unfused and self.hf_matches is not False

    def to_json(self) -> dict:
        return {"text": self.text, "tokens": self.tokens, "windows": self.windows, "width": self.width,
                "perplexity": self.perplexity, "seconds": self.seconds, "hf_checkpoint": self.hf,
                "device": self.device, "fused_tolerance": self.fused_tolerance,
                "fused_matches_unfused": self.fused_matches_unfused, "hf_matches": self.hf_matches,
                "passed": self.passed}


def relative_diff(a: float, b: float) -> float:
    """(a - b) relative to the larger of |a|, |b|: what the tolerances bound (0 when both are 0)."""
    scale = max(abs(a), abs(b))
    return (a - b) / scale if scale else 0.0


def _close(a: float, b: float, rel: float) -> bool:
    return math.isfinite(a) and math.isfinite(b) and abs(relative_diff(a, b)) <= rel


def read_text(path: Path) -> str:
    """The UTF-8 text of ``path``; InputError if it is missing, too large or not text."""
    if not path.is_file():
        raise InputError(f"{path}: no such file (--eval takes a text file)")
    if path.stat().st_size > MAX_TEXT_BYTES:
        raise InputError(f"{path}: over {MAX_TEXT_BYTES >> 20} MiB of text", fix="give a shorter file")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not UTF-8 text ({first_line(exc)})") from exc


def gdnc_perplexity(model: GgufModel, wins: list[Window], batch: int, label: str) -> float:
    """Perplexity of ``wins`` under ``model`` (``batch`` windows per forward pass)."""
    total, count = 0.0, 0
    bar = progress.task(label, len(wins))
    for start in range(0, len(wins), batch):
        group = wins[start:start + batch]
        for w, logits in zip(group, batch_logits(model, [w.inputs for w in group])):
            total += nll(logits, w.targets)
            count += len(w.targets)
        bar.advance(len(group))
    return math.exp(total / count)


def check_checkpoint(folder: Path) -> None:
    """InputError unless ``folder`` looks like an HF checkpoint and transformers is installed."""
    if not (folder / "config.json").is_file():
        raise InputError(f"{folder}: not an HF checkpoint folder (no config.json)")
    if importlib.util.find_spec("transformers") is None:
        raise InputError("--hf needs the transformers package", fix="pip install transformers")


def hf_perplexity(folder: Path, wins: list[Window], n_vocab: int) -> float:
    """Perplexity of ``wins`` under the HF transformers checkpoint in ``folder`` (float32, CPU,
    its own forward without a cache); windows of one length are batched."""
    check_checkpoint(folder)
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # its notes on slower fallback kernels are not ours to print
    hf_logging.disable_progress_bar()
    with progress.step(f"loading HF checkpoint {folder.name}"):
        try:
            hf = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            raise ModelLoadError(f"{folder}: the HF checkpoint does not load ({first_line(exc)})") from exc
    if hf.config.vocab_size != n_vocab:
        raise InputError(f"{folder}: vocabulary of {hf.config.vocab_size} tokens, the GGUF model's "
                         f"has {n_vocab}", fix="give the checkpoint the GGUF file was converted from")
    hf.eval()
    total, count = 0.0, 0
    bar = progress.task("HF transformers", len(wins))
    with torch.no_grad():
        for start in range(0, len(wins), FUSED_BATCH):
            group = wins[start:start + FUSED_BATCH]
            for length in dict.fromkeys(len(w.inputs) for w in group):
                same = [w for w in group if len(w.inputs) == length]
                logits = hf(torch.tensor([w.inputs for w in same]), use_cache=False).logits
                for w, lg in zip(same, logits):
                    total += nll(lg, w.targets)
                    count += len(w.targets)
            bar.advance(len(group))
    return math.exp(total / count)


def evaluate(fused: GgufModel, unfused: GgufModel, ids: list[int], text: str, width: int,
             max_tokens: int | None, hf: Path | None) -> HeldOut:
    """Perplexity of ``ids`` (the tokens of file ``text``) under both graphs and, with ``hf``,
    under that HF checkpoint (module docstring)."""
    wins = windows(ids, width, max_tokens)
    if not wins:
        raise InputError(f"{text}: fewer than 2 tokens, nothing to score")
    result = HeldOut(text, sum(len(w.targets) for w in wins), len(wins), width,
                     hf=None if hf is None else str(hf), device=fused.device.type)
    runs = [("fused", lambda: gdnc_perplexity(fused, wins, FUSED_BATCH, "fused graph")),
            ("unfused", lambda: gdnc_perplexity(unfused, wins, UNFUSED_BATCH, "unfused graphs"))]
    if hf is not None:
        runs.append(("hf", lambda: hf_perplexity(hf, wins, fused.n_vocab)))
    for name, run in runs:
        start = time.perf_counter()
        result.perplexity[name] = run()
        result.seconds[name] = time.perf_counter() - start
    return result
