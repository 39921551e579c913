"""A resumable run of named stages in one output folder: the demo and bench/toy_reproduction.py use it.

Each stage is a function returning (one-line summary, info dict). The runner keeps a state file (atomic JSON) with
the run's fingerprint (every setting that changes outputs) and each stage's status, time and summary. A rerun with
the same fingerprint skips a stage that finished before and whose outputs still exist; a rerun with other settings
is refused, naming what changed. A stage that raises is recorded as failed (and rerun next time); nothing finished
is lost. `force` starts over, deleting only what this runner wrote: the top-level entries its stages created
(recorded in the state file as they appear) and the names the caller declares (`outputs`); a file the user added
inside the folder stays, and a folder without this runner's state file (or a symbolic link) is refused.
"""

from __future__ import annotations

import dataclasses
import json
import os
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
                 error: type[BadInput] = BadInput, outputs: Sequence[str] = ()):
        self.out, self.state = Path(out), Path(out) / state_file
        self.fingerprint, self.what, self.force, self.verbose, self.error = fingerprint, what, force, verbose, error
        self.records: dict[str, StageRecord] = {n: StageRecord(n, d) for n, d in stages}
        self.outputs = tuple(outputs)  # top-level names the run always writes (deleted by --force)
        self.written: set[str] = set()  # top-level names the stages created, recorded in the state file
        self.start = time.perf_counter()

    # ------------------------------------------------------------------------------------------------- state
    def _read_state(self) -> dict:
        try:
            state = json.loads(self.state.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise self.error(self.state, f"cannot be read as a {self.what} state file ({type(e).__name__}: {e})",
                             hint="--force starts over (it deletes only what this command wrote)") from None
        if not isinstance(state, dict) or not isinstance(state.get("config", {}), dict) \
                or not isinstance(state.get("stages") or {}, dict):
            raise self.error(self.state, f"is not a {self.what} state file (no config/stages mappings)",
                             hint="--force starts over (it deletes only what this command wrote)")
        return state

    def _start_over(self) -> None:
        """--force: delete what this runner wrote (recorded entries, declared outputs, the state file), nothing
        else; refuse a folder that is not this kind of run, a symbolic link, or a file."""
        from veason_r1.paths import name_problem

        out, name = self.out, self.state.name
        if out.is_symlink():
            raise self.error("--force", f"{out} is a symbolic link; --force deletes only inside a real folder",
                             hint="pass the folder it points to as --out")
        if not out.exists():
            return
        if not out.is_dir():
            raise self.error(out, "is a file, not a folder", hint="choose another --out")
        if not self.state.is_file():
            if any(out.iterdir()):
                raise self.error("--force", f"would delete {out}, which is not a {self.what} output folder "
                                            f"(no {name})", hint="choose another --out")
            return
        try:
            recorded = json.loads(self.state.read_text()).get("written") or []
        except (OSError, ValueError, AttributeError):
            recorded = []  # a corrupt state file: the declared outputs are still ours
        for entry in sorted({*self.outputs, *(n for n in recorded if isinstance(n, str))}):
            if entry == name or name_problem(entry):
                continue
            path = out / entry
            if path.is_symlink() or path.is_file():
                path.unlink()
            elif path.is_dir():
                shutil.rmtree(path)
        self.state.unlink()

    def _check_links(self) -> None:
        """Every folder the run writes into stays inside `out` (`paths.output_dir`: a symbolic link that leads
        outside is refused before any stage runs)."""
        from veason_r1.paths import name_problem, output_dir

        for entry in sorted({*self.outputs, *self.written}):
            if not name_problem(entry):
                try:
                    output_dir(self.out, entry, key=f"{self.what} output")
                except BadInput as e:
                    raise self.error(e.where, e.what, hint="remove the link; the run writes only inside --out") \
                        from None

    def open(self) -> StageRunner:
        """Create or continue the folder; refuse a folder of other settings or one that is not this kind of run."""
        out, name = self.out, self.state.name
        if self.force:
            self._start_over()
        if out.exists() and not out.is_dir():
            raise self.error(out, "is a file, not a folder", hint="choose another --out")
        if not self.state.is_file():
            if not self.force and out.exists() and any(out.iterdir()):
                raise self.error(out, f"exists and is not a {self.what} output folder (no {name})",
                                 hint="choose another --out")
            out.mkdir(parents=True, exist_ok=True)
            self._check_links()
            self.save()
            return self
        state = self._read_state()
        self.written = {n for n in state.get("written") or [] if isinstance(n, str)}
        self._check_links()
        have, want = state.get("config", {}), self.fingerprint
        diff = sorted(k for k in set(have) | set(want) if have.get(k) != want.get(k))
        if diff:
            changes = ", ".join(f"{k}: {_short(have.get(k))} -> {_short(want.get(k))}" for k in diff)
            raise self.error(out, f"was made with other settings ({changes})",
                             hint="rerun with the same settings to continue, or use another --out, or --force "
                                  "to start over")
        for stage, rec in (state.get("stages") or {}).items():
            if stage in self.records and isinstance(rec, dict) and rec.get("status") in ("ran", "reused"):
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
        atomic_write_json(self.state, {"config": self.fingerprint, "stages": stages,
                                       "written": sorted(self.written)}, indent=2)

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
        before = set(os.listdir(self.out))
        try:
            summary, info = fn()
        except BaseException:
            rec.status, rec.seconds = "failed", time.perf_counter() - t0
            self.written |= set(os.listdir(self.out)) - before
            self.save()
            raise
        self.written |= set(os.listdir(self.out)) - before
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
