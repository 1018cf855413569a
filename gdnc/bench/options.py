"""What ``gdnc bench`` measures: the grid, the rounds, the device; parsed from CLI strings."""

from __future__ import annotations

from dataclasses import dataclass

from gdnc.errors import InputError

DEFAULT_BATCHES = (1, 2, 4, 8)
DEFAULT_LENGTHS = (16, 64, 256)
DEFAULT_ROUNDS = 10
QUICK_BATCHES = (1, 2)
QUICK_LENGTHS = (16, 64)
QUICK_ROUNDS = 5
MAX_GRID = 4096  # a batch size or length above this is a typo, not a benchmark
MAX_DIM = 1024  # heads, key and value dims of --shape


@dataclass(frozen=True)
class GdnShape:
    """Value heads, key dim, value dim of one GatedDeltaNet (q/k have HV heads too)."""

    HV: int
    K: int
    V: int

    @property
    def state_bytes(self) -> int:
        """fp32 bytes of one sequence's state."""
        return self.HV * self.K * self.V * 4

    @property
    def label(self) -> str:
        return f"{self.HV}x{self.K}x{self.V}"


@dataclass(frozen=True)
class BenchOptions:
    """One ``gdnc bench`` run: ``shapes`` are extra op-level shapes beside the model's."""

    device: str
    batches: tuple[int, ...]
    lengths: tuple[int, ...]
    rounds: int
    shapes: tuple[GdnShape, ...] = ()
    threads: int | None = None


def parse_ints(text: str, option: str, limit: int = MAX_GRID, distinct: bool = True) -> tuple[int, ...]:
    """``"1,2,4"`` -> (1, 2, 4): integers in 1..limit in the order given (``distinct``: none
    twice); InputError naming ``option`` otherwise."""
    try:
        values = tuple(int(part) for part in text.replace(" ", "").split(","))
    except ValueError:
        raise InputError(f"{option}: {text!r} is not a comma-separated list of integers") from None
    if not all(1 <= v <= limit for v in values):
        raise InputError(f"{option}: {text!r}: every value must be in 1..{limit}")
    if distinct and len(set(values)) != len(values):
        raise InputError(f"{option}: {text!r} lists a value twice")
    return values


def parse_shape(text: str) -> GdnShape:
    """``"32,128,128"`` -> GdnShape(HV=32, K=128, V=128); InputError otherwise."""
    values = parse_ints(text, "--shape", limit=MAX_DIM, distinct=False)
    if len(values) != 3:
        raise InputError(f"--shape: {text!r} is not HV,K,V (e.g. 32,128,128)")
    return GdnShape(*values)


def bench_options(device: str, batches: str | None, lengths: str | None, rounds: int | None,
                  quick: bool, shapes: list[str], threads: int | None) -> BenchOptions:
    """The options of one run from the CLI's strings (``quick``: the small grid, few rounds,
    unless given explicitly); InputError for a bad value."""
    if rounds is not None and not 1 <= rounds <= 1000:
        raise InputError(f"--rounds: {rounds} is not in 1..1000")
    if threads is not None and not 1 <= threads <= 1024:
        raise InputError(f"--threads: {threads} is not in 1..1024")
    return BenchOptions(
        device=device,
        batches=parse_ints(batches, "--batches") if batches else QUICK_BATCHES if quick else DEFAULT_BATCHES,
        lengths=parse_ints(lengths, "--lengths") if lengths else QUICK_LENGTHS if quick else DEFAULT_LENGTHS,
        rounds=rounds or (QUICK_ROUNDS if quick else DEFAULT_ROUNDS),
        shapes=tuple(parse_shape(s) for s in shapes), threads=threads)
