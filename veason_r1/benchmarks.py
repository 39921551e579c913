"""The evaluation benchmarks in one table (docs/method.md §9): their names, default splits and how the reference
scripts count a missing prediction. `predict`, `eval`, the readers and the evaluators all read it from here."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Benchmark:
    name: str
    default_split: str | None  # None: the release ships one split (ReasonVOS)
    missing: str  # "zero": a missing prediction scores 0 (ReVOS, MeViS, ViCaS scripts); "skip": left out (ReasonVOS)


TABLE: dict[str, Benchmark] = {
    b.name: b
    for b in (
        Benchmark("revos", "valid", "zero"),
        Benchmark("mevis", "valid_u", "zero"),
        Benchmark("reasonvos", None, "skip"),
        Benchmark("vicas", "val", "zero"),
    )
}
BENCHMARKS = tuple(TABLE)
DEFAULT_SPLITS = {name: b.default_split for name, b in TABLE.items()}
DEFAULT_MISSING = {name: b.missing for name, b in TABLE.items()}
SPLIT_HELP = "split (defaults: " + ", ".join(f"{n} {s}" for n, s in DEFAULT_SPLITS.items() if s) + "; " + \
    ", ".join(n for n, s in DEFAULT_SPLITS.items() if not s) + " has one)"


def benchmark(name: str) -> Benchmark:
    """The table row of `name` (case-insensitive), or a ValueError that lists the known benchmarks."""
    row = TABLE.get(str(name).lower())
    if row is None:
        raise ValueError(f"unknown benchmark {name!r}; choose one of {', '.join(BENCHMARKS)}")
    return row
