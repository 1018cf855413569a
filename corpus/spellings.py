"""One record per spelling of the per-token gated delta rule: how it is built and exported,
whether the fusion pass must fuse it, and the miss it must report when it must not.

Tests that enumerate spellings iterate :data:`SPELLINGS` (or :func:`fusable` /
:func:`near_misses`); :mod:`corpus.zoo` exports a record with ``export_variant(name=...)``.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from . import variants as v

EXPORTERS: tuple[str, ...] = ("dynamo", "torchscript")


@dataclass(frozen=True)
class Spelling:
    """``module(l2norm)`` is the torch module; :func:`corpus.zoo.export_variant` exports it
    with each of ``exporters`` (``torch.onnx.export``). ``must_fuse``: the fusion pass turns
    its loop into one fused node; otherwise ``expected_miss`` is a regular expression that one
    of the pass's miss reasons matches. ``extra_outputs``: graph outputs after ``o`` and
    ``final_state``; ``square_state``: needs K == V to run."""

    name: str
    module: type[nn.Module]
    must_fuse: bool
    expected_miss: str | None = None
    exporters: tuple[str, ...] = EXPORTERS
    extra_outputs: tuple[str, ...] = ()
    square_state: bool = False

    def __post_init__(self) -> None:
        if self.must_fuse == (self.expected_miss is not None):
            raise ValueError(f"spelling {self.name!r}: an expected miss exactly when it must not fuse")

    @property
    def notes(self) -> str:
        """The first line of the module's docstring."""
        return (self.module.__doc__ or "").strip().splitlines()[0]


SPELLINGS: tuple[Spelling, ...] = (
    Spelling("hf", v.HFDeltaNet, must_fuse=True),
    Spelling("hf_spelling", v.HFLoop, must_fuse=True),
    Spelling("matmul", v.MatMulLoop, must_fuse=True),
    Spelling("einsum", v.EinsumLoop, must_fuse=True),
    Spelling("state_vk", v.TransposedStateLoop, must_fuse=True),
    Spelling("direct_decay", v.DirectDecayLoop, must_fuse=True),
    Spelling("kda", v.KDALoop, must_fuse=True),
    Spelling("mul_scale", v.MulScaleLoop, must_fuse=True),
    Spelling("nearmiss_state_sum", v.NearMissStateSum, must_fuse=False,
             expected_miss=r"state .* is also read by node"),
    Spelling("nearmiss_state_output", v.NearMissStateOutput, must_fuse=False,
             expected_miss=r"state .* (is also read by node|is a graph output)",
             extra_outputs=("state_step1",)),
    Spelling("nearmiss_wrong_axis", v.NearMissWrongAxis, must_fuse=False,
             expected_miss=r"sums the state over the value axis", square_state=True),
)
"""``hf`` is HF's own function; the others are :mod:`corpus.variants` modules."""

VARIANT_NAMES: tuple[str, ...] = tuple(s.name for s in SPELLINGS if s.name != "hf")


def spelling(name: str) -> Spelling:
    """The record named ``name``; KeyError naming the known ones."""
    for s in SPELLINGS:
        if s.name == name:
            return s
    raise KeyError(f"unknown variant {name!r}; known: {VARIANT_NAMES}")


def fusable() -> list[Spelling]:
    """The records the fusion pass must fuse."""
    return [s for s in SPELLINGS if s.must_fuse]


def near_misses() -> list[Spelling]:
    """The records the fusion pass must leave alone, each with its expected miss."""
    return [s for s in SPELLINGS if not s.must_fuse]
