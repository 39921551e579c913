"""Paired bootstrap of a mean difference: is model B better than model A on the same held-out items?

Why paired: both models answer the same expressions, and expressions differ far more from each other than the two
models do, so resampling the per-item differences (not the two means apart) gives the interval that matters.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def paired_bootstrap(before: Sequence[float], after: Sequence[float], resamples: int = 10000, seed: int = 0,
                     level: float = 0.95) -> dict[str, float]:
    """Means of both, the mean difference after - before, and its percentile bootstrap interval at `level`."""
    a, b = np.asarray(before, dtype=np.float64), np.asarray(after, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or len(a) == 0:
        raise ValueError(f"paired_bootstrap: need two equal-length non-empty lists, got {a.shape} and {b.shape}")
    if resamples < 1 or not 0 < level < 1:
        raise ValueError(f"paired_bootstrap: resamples must be >= 1 and level in (0, 1), got {resamples}, {level}")
    diff = b - a
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, len(diff), size=(resamples, len(diff)))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return {"n": int(len(diff)), "before": float(a.mean()), "after": float(b.mean()), "diff": float(diff.mean()),
            "lo": float(lo), "hi": float(hi), "level": float(level), "resamples": int(resamples)}
