"""eval.bootstrap.paired_bootstrap: the paired interval of a mean difference."""

from __future__ import annotations

import numpy as np
import pytest

from veason_r1.eval.bootstrap import paired_bootstrap


def test_a_constant_shift_has_a_zero_width_interval():
    a = [0.1, 0.5, 0.9, 0.3]
    out = paired_bootstrap(a, [x + 0.25 for x in a], resamples=500)
    assert out["diff"] == pytest.approx(0.25) and out["lo"] == pytest.approx(0.25) and out["hi"] == pytest.approx(0.25)
    assert out["before"] == pytest.approx(np.mean(a)) and out["n"] == 4


def test_pairing_removes_the_spread_between_items():
    rng = np.random.default_rng(0)
    items = rng.uniform(0, 5, 200)  # items differ a lot, the models by +0.1 +- 0.05
    after = items + 0.1 + rng.normal(0, 0.05, 200)
    out = paired_bootstrap(items, after, seed=1)
    assert 0 < out["lo"] < out["diff"] < out["hi"] < 0.2
    # unpaired, the same means would give an interval about the items' spread (~1.4/sqrt(200)) wide
    assert out["hi"] - out["lo"] < 0.03


def test_same_seed_same_interval_and_bad_input_refused():
    a, b = [0.0, 1.0, 0.0, 1.0], [1.0, 1.0, 0.0, 0.0]
    assert paired_bootstrap(a, b, seed=3) == paired_bootstrap(a, b, seed=3)
    with pytest.raises(ValueError, match="equal-length"):
        paired_bootstrap([1.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="equal-length"):
        paired_bootstrap([], [])
