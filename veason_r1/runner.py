"""A resumable run of named stages in one output folder: the demo and bench/toy_reproduction.py use it.

Each stage is a function returning (one-line summary, info dict). The runner keeps a state file (atomic JSON) with
the run's fingerprint (every setting that changes outputs) and each stage's status, time and summary. A rerun with
the same fingerprint skips a stage that finished before and whose outputs still exist; a rerun with other settings
is refused, naming what changed. A stage that raises is recorded as failed (and rerun next time); nothing finished
is lost. `force` deletes the folder first, and only when it holds this runner's state file (or nothing).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from veason_r1.errors import BadInput
from veason_r1.io_utils import atomic_write_json


@dataclass
class StageRecord:
    name: str
    description: str
    status: str = "pending"  # ran | reused | pending | failed (done_before while loading)
    seconds: float = 0.0  # this run (0 when reused)
    first_seconds: float | None = None  # when it was computed (this run or an earlier one)
    summary: str = ""
    info: dict[str, Any] = field(default_factory=dict)


class StageRunner:
    """Runs stages in order in `out`, resumable (see the module docstring)."""

    def __init__(self, out: str | Path, stages: Sequence[tuple[str, str]], fingerprint: dict[str, Any], *,
                 state_file: str = "state.json", what: str = "run", force: bool = False, verbose: bool = True,
                 error: type[BadInput] = BadInput):
        self.out, self.state = Path(out), Path(out) / state_file
        self.fingerprint, self.what, self.force, self.verbose, self.error = fingerprint, what, force, verbose, error
        self.records: dict[str, StageRecord] = {n: StageRecord(n, d) for n, d in stages}
        self.start = time.perf_counter()

    # ------------------------------------------------------------------------------------------------- state
    def open(self) -> StageRunner:
        """Create or continue the folder; refuse a folder of other settings or one that is not this kind of run."""
        out, name = self.out, self.state.name
        if self.force and out.exists():
            if self.state.is_file() or not any(out.iterdir()):
                shutil.rmtree(out)
            else:
                raise self.error("--force", f"would delete {out}, which is not a {self.what} output folder (no {name})")
        if not self.state.is_file():
            if out.exists() and any(out.iterdir()):
                raise self.error(out, f"exists and is not a {self.what} output folder (no {name})",
                                 hint="choose another --out")
            out.mkdir(parents=True, exist_ok=True)
            self.save()
            return self
        state = json.loads(self.state.read_text())
        have, want = state.get("config", {}), self.fingerprint
        diff = sorted(k for k in set(have) | set(want) if have.get(k) != want.get(k))
        if diff:
            changes = ", ".join(f"{k}: {_short(have.get(k))} -> {_short(want.get(k))}" for k in diff)
            raise self.error(out, f"was made with other settings ({changes})",
                             hint="rerun with the same settings to continue, or use another --out, or --force "
                                  "to start over")
        for stage, rec in (state.get("stages") or {}).items():
            if stage in self.records and rec.get("status") in ("ran", "reused"):
                r = self.records[stage]
                r.status, r.first_seconds = "done_before", rec.get("first_seconds")
                r.summary, r.info = rec.get("summary", ""), rec.get("info", {})
        return self

    def save(self) -> None:
        stages = {}
        for n, r in self.records.items():
            d = dataclasses.asdict(r)
            if r.status == "done_before":
                d["status"] = "reused"
            stages[n] = d
        atomic_write_json(self.state, {"config": self.fingerprint, "stages": stages}, indent=2)

    # ------------------------------------------------------------------------------------------------ running
    def log(self, text: str) -> None:
        if self.verbose:
            from tqdm import tqdm

            tqdm.write(text, file=sys.stdout)
            sys.stdout.flush()

    def run(self, name: str, fn: Callable[[], tuple[str, dict]], outputs_exist: Callable[[], bool]) -> StageRecord:
        """Run stage `name` unless it finished before and `outputs_exist()`; its record."""
        rec = self.records[name]
        names = list(self.records)
        tag = f"[{names.index(name) + 1}/{len(names)}] {name}"
        if rec.status == "done_before" and outputs_exist():
            rec.status, rec.seconds = "reused", 0.0
            took = f", took {rec.first_seconds:.1f} s then" if rec.first_seconds is not None else ""
            self.log(f"{tag}: done before ({rec.summary}{took}) - skipped")
            self.save()
            return rec
        self.log(f"{tag}: {rec.description} ...")
        t0 = time.perf_counter()
        try:
            summary, info = fn()
        except BaseException:
            rec.status, rec.seconds = "failed", time.perf_counter() - t0
            self.save()
            raise
        rec.status, rec.seconds = "ran", time.perf_counter() - t0
        rec.first_seconds, rec.summary, rec.info = rec.seconds, summary, info
        self.save()
        self.log(f"{tag}: done in {rec.seconds:.1f} s - {summary}")
        return rec

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def stage_dicts(self) -> list[dict]:
        return [dataclasses.asdict(r) for r in self.records.values()]


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


__all__ = ["StageRecord", "StageRunner"]
