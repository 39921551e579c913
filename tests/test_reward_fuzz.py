"""The reward never raises, whatever the response string (hypothesis, >= 1,000 adversarial responses)."""

from __future__ import annotations

import json
import math

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from veason_r1.reward import RewardSample, score_group, score_response

FIDS = [0, 4, 8]
MASKS = np.zeros((3, 16, 16), bool)
MASKS[1:, 4:10, 4:10] = True
FRAMES = np.random.default_rng(0).integers(0, 255, (3, 16, 16, 3), dtype=np.uint8)
BOXES = {"0": [[0, 0, 0, 0]], "1": [[4, 4, 9, 9]], "2": [[4, 4, 9, 9], [0, 0, 0, 0]]}
KEYS = ("format", "keyframe", "spatial", "consistency", "overall")

numbers = st.one_of(
    st.integers(-(10**30), 10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0, 4, 8, 1e308, -1e308, 2**63, float("nan"), float("inf")]),
)
scalars = st.one_of(numbers, st.text(max_size=8), st.booleans(), st.none())
junk = st.recursive(scalars, lambda c: st.one_of(st.lists(c, max_size=5), st.dictionaries(st.text(max_size=5), c, max_size=4)),
                    max_leaves=20)
box = st.one_of(st.lists(numbers, min_size=4, max_size=4), st.lists(scalars, max_size=6), junk)
payload = st.fixed_dictionaries(
    {},
    optional={
        "keyframe_timestamp": st.one_of(st.sampled_from([0, 4, 8, "4", 4.0, "4.5", 4.5]), scalars, junk),
        "bbox_2d_list": st.one_of(st.lists(box, max_size=8), junk,
                                  st.just([[1, 1, 5, 5]] * 10_000), st.just([[float("nan")] * 4] * 3)),
    },
)


def dump(obj) -> str:
    try:
        return json.dumps(obj)  # NaN/Infinity literals included, as a model could write them
    except (ValueError, TypeError, OverflowError):
        return str(obj)


fragments = st.sampled_from(["<think>", "</think>", "<answer>", "</answer>", "{", "}", "[", "]", '"', ",", ":", "\n",
                             "keyframe_timestamp", "bbox_2d_list", "NaN", "Infinity", "1e999", "\\u0000"])
responses = st.one_of(
    st.text(max_size=200),
    st.lists(st.one_of(fragments, st.text(max_size=10)), max_size=40).map("".join),
    st.builds(lambda think, p, cut, tail: (f"<think>{think}</think><answer>{dump(p)}</answer>"[: cut or None] + tail),
              st.text(max_size=30), payload, st.integers(0, 300), st.text(max_size=10)),
    st.builds(lambda p: f"<answer>{dump(p)}", payload),
    st.builds(lambda p: f"<think></think><answer>{dump(p)}</answer><answer>{dump(p)}</answer>", payload),
    st.builds(lambda j: f"<think>x</think><answer>{dump(j)}</answer>", junk),
    st.just("<think>" + "[" * 5000 + "</think><answer>" + "[" * 100_000 + "]" * 100_000 + "</answer>"),
)


def fake_propagate(frames, position, boxes):
    assert boxes.ndim == 2 and boxes.shape[1] == 4 and np.isfinite(boxes).all()
    out = np.zeros(MASKS.shape, bool)
    out[:, 4:8, 4:8] = True
    return out


def _check(result):
    for k in KEYS:
        assert isinstance(result[k], float) and math.isfinite(result[k]), (k, result)
    assert 0 <= result["format"] <= 2 and all(0 <= result[k] <= 1 for k in ("keyframe", "spatial", "consistency"))
    assert abs(result["overall"] - sum(result[k] for k in KEYS[:4])) < 1e-9
    assert isinstance(result["failure"], str)


@settings(max_examples=1000, deadline=None, suppress_health_check=list(HealthCheck))
@given(responses)
def test_score_response_never_raises(response):
    _check(score_response(response, FIDS, BOXES, MASKS, FRAMES, fake_propagate))


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(responses, min_size=1, max_size=4))
def test_score_group_with_tiny_sam2_never_raises(group):
    from veason_r1.models.config import PropagatorConfig
    from veason_r1.reward.verl_hook import get_propagator

    propagator = get_propagator(PropagatorConfig("tiny", device="cpu"))
    for result in score_group(group, RewardSample(FIDS, BOXES, MASKS, FRAMES), propagator):
        _check(result)


def test_non_string_responses_score_zero():
    for bad in (None, 12, b"<think>", ["x"]):
        r = score_response(bad, FIDS, BOXES, MASKS, FRAMES, fake_propagate)
        assert r["overall"] == 0.0 and "not str" in r["failure"]
