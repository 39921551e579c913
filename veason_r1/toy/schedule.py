"""What the two toy trainers share: the learning-rate schedule and fitting the step count to a time budget."""

from __future__ import annotations

import math
import time


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
