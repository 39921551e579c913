"""What the two toy trainers share: the learning-rate schedule, fitting the step count to a time budget, and the
resumable train state (model + optimizer + step + loss history, written atomically)."""

from __future__ import annotations

import io
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from veason_r1.io_utils import atomic_write_bytes, atomic_write_json


@dataclass
class TrainState:
    """Where a run is: resumed from `path` when it exists (`load`), saved every `checkpoint_every` steps (`save`)."""

    path: Path
    config: dict | None = None  # the settings that change the weights: a resume with other settings is refused
    step: int = 0
    total: int | None = None  # the step count fixed by StepBudget (a resumed run keeps its schedule)
    history: list | None = None

    RUNTIME_KEYS = ("workers", "checkpoint_every", "heldout_seed", "heldout_videos", "heldout_samples", "eval_every",
                    "eval_samples")

    def _fingerprint(self) -> dict:
        return {k: v for k, v in (self.config or {}).items() if k not in self.RUNTIME_KEYS}

    def load(self, model, optimizer, device: str) -> bool:
        import torch

        from veason_r1.errors import BadInput

        if not Path(self.path).is_file():
            self.history = []
            return False
        state = torch.load(self.path, map_location=device, weights_only=False)
        have, want = state.get("config", {}), self._fingerprint()
        diff = sorted(k for k in set(have) | set(want) if have.get(k) != want.get(k))
        if diff:
            raise BadInput(self.path, "a run with other settings was stopped here ("
                           + ", ".join(f"{k}: {have.get(k)!r} -> {want.get(k)!r}" for k in diff) + ")",
                           hint="re-run with the same settings to resume, or delete the _work folder to start over")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        self.step, self.history, self.total = int(state["step"]), list(state["history"]), state.get("total")
        return True

    def save(self, model, optimizer, total: int) -> None:
        import torch

        buf = io.BytesIO()
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": self.step,
                    "history": self.history, "total": total, "config": self._fingerprint()}, buf)
        atomic_write_bytes(self.path, buf.getvalue())

    @property
    def curve_path(self) -> Path:
        """The learning curve so far, next to the state file: a build stopped between checkpoints (a GPU call's
        deadline) still leaves every logged point (make-toy writes the final `curve.json` itself)."""
        return Path(self.path).parent / "curve.json"

    def log(self, **values: Any) -> None:
        self.history.append({"step": self.step, **values})
        atomic_write_json(self.curve_path, self.history)


def cosine_lr(step: int, total: int, lr: float, warmup: int, min_ratio: float) -> float:
    """Linear warm-up over `warmup` steps, then cosine from `lr` down to `min_ratio * lr` at `total`."""
    if step < warmup:
        return lr * (step + 1) / warmup
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    return lr * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * t)))


class StepBudget:
    """Fits the total step count to a time budget from the measured speed.

    Why: a cosine schedule must know its length (one cut short leaves the learning rate high), and the speed of a
    machine is known only once it runs, and only after the data loaders have warmed up. The speed is measured over
    steps `warm`..`probe` of this run and again over each doubling of `probe` while the run is in its first quarter,
    so the total settles early; the manifest records the final total, and `--steps N` reproduces the run anywhere.
    """

    def __init__(self, requested: int, seconds: float | None, start_step: int = 0, warm: int = 20, probe: int = 80):
        self.total, self.requested, self.seconds = requested, requested, seconds
        self.mark, self.next = start_step + warm, start_step + probe
        self.t0, self.t_mark = time.time(), None
        self.fixed = seconds is None

    def update(self, step: int) -> int:
        """Call once per step; returns the total for this step."""
        if self.fixed:
            return self.total
        now = time.time()
        if step == self.mark and self.t_mark is None:
            self.t_mark = now
        elif step >= self.next and self.t_mark is not None:
            rate = (step - self.mark) / max(now - self.t_mark, 1e-6)
            fits = step + int(rate * max(0.0, self.seconds - (now - self.t0)))
            self.total = max(step, min(self.requested, fits))
            self.mark, self.t_mark, self.next = step, now, 2 * step
            self.fixed = self.next > self.total // 4
        return self.total
