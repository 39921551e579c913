"""The reward terms against hand-computed cases (docs/method.md §7)."""

from __future__ import annotations

import numpy as np
import pytest

from veason_r1.reward import RewardConfig, RewardSample, score_group, score_response
from veason_r1.reward.terms import format_reward, iou_matrix, keyframe_reward, spatial_reward


def ans(ts, boxes, think="ok"):
    import json

    return f"<think>{think}</think>\n<answer>{json.dumps({'keyframe_timestamp': ts, 'bbox_2d_list': boxes})}</answer>"


@pytest.mark.parametrize(
    "response, expected",
    [
        (ans(3, [[1, 2, 3, 4]]), 2.0),
        (ans(3, [[1, 2, 3, 4], [1, 2, 3]]), 1.5),
        (ans(3, [[1, 2, 3, "4"], [1, 2, 3, 4], [0, 0, 0, 0], 5]), 1.5),
        (ans(3, []), 1.0),  # empty list: the box part gives 0
        (ans("3", [[1, 2, 3, 4]]), 1.0),  # the format term needs a true int
        (ans(3.0, [[1, 2, 3, 4]]), 1.0),
        (ans(True, [[1, 2, 3, 4]]), 1.0),
        (ans(3, [[1.5, 2, 3e3, -4]]), 2.0),
        ('<answer>{"keyframe_timestamp": 3, "bbox_2d_list": [[1,2,3,4]]}</answer>', 1.0),  # no think
        ("<think>a</think> text <answer>{}</answer>", 0.0),
        (ans(3, [[1, 2, 3, 4]]) + " trailing", 1.0),  # not the whole response
        ("<think>a</think><answer>[1, 2]</answer>", 1.0),
        ("", 0.0),
    ],
)
def test_format(response, expected):
    assert format_reward(response) == pytest.approx(expected)


def test_keyframe():
    areas = [0, 100, 50, 0]
    assert keyframe_reward(2, areas) == 0.5
    assert keyframe_reward(1, areas) == 1.0
    assert keyframe_reward(None, areas) == 0.0
    assert keyframe_reward(1, [0, 0, 0, 0]) == 0.0


@pytest.mark.parametrize(
    "pred, gt, expected",
    [
        ([[0, 0, 9, 9]], [[0, 0, 9, 9]], 1.0),
        ([[0, 0, 4, 9]], [[0, 0, 9, 9]], 0.5),  # +1 convention: 50 / 100
        ([[0, 0, 9, 9], [50, 50, 60, 60]], [[0, 0, 9, 9]], 0.5),  # / max(M, N)
        ([[20, 20, 29, 29]], [[0, 0, 9, 9], [20, 20, 29, 29]], 0.5),
        ([[0, 0, 0, 0]], [[0, 0, 0, 0]], 1.0),  # dummy GT matched by a dummy prediction
        ([[0, 0, 1, 1]], [[0, 0, 0, 0]], 0.25),
        ([[0, 0, 9, 9], [0, 0, 19, 19]], [[0, 0, 19, 19], [0, 0, 9, 9]], 1.0),  # Hungarian, not greedy
        ([[10, 10, 0, 0]], [[0, 0, 20, 20]], 0.0),  # inverted box
        ([[5, 0, 3, 20]], [[0, 0, 0, 0]], 0.0),  # zero/negative union: 0, no exception
        ([[0, 0, 1e308, 1e308]], [[0, 0, 9, 9]], 0.0),  # overflow: 0
        ([[0, 0, 9, 9]], [[0, 0, 9, 9]] * 2 + [[100, 100, 109, 109]], pytest.approx(1 / 3)),
    ],
)
def test_spatial(pred, gt, expected):
    assert spatial_reward(np.array(pred, float), np.array(gt, float)).reward == pytest.approx(expected)


def test_matched_boxes_in_prediction_order():
    pred = np.array([[100, 100, 110, 110], [0, 0, 9, 9], [200, 200, 210, 210], [50, 50, 59, 59]], float)
    gt = np.array([[50, 50, 59, 59], [0, 0, 9, 9]], float)
    res = spatial_reward(pred, gt)
    assert res.matched_pred == [1, 3] and res.reward == pytest.approx(0.5)
    assert iou_matrix(pred[:1], pred[:1])[0, 0] == 1.0


def _sample():
    masks = np.zeros((3, 4, 4), bool)
    masks[1, :2, :2] = True  # 4 px
    masks[2, :, :2] = True  # 8 px
    frames = np.zeros((3, 4, 4, 3), np.uint8)
    boxes = {"0": [[0, 0, 0, 0]], "1": [[0, 0, 1, 1]], "2": [[0, 0, 1, 3], [3, 3, 3, 3]]}
    return [5, 10, 15], boxes, masks, frames


def test_score_response_table():
    fids, boxes, masks, frames = _sample()
    calls = []

    def propagate(fr, position, b):
        calls.append((position, b.tolist()))
        out = np.zeros((3, 4, 4), bool)
        out[1, :2, :2] = True  # frame 0: both empty -> 1; frame 1: 4/4 -> 1; frame 2: 4/8 -> 0.5
        out[2, :2, :2] = True
        return out

    r = score_response(ans(15, [[9, 9, 9, 9], [3, 3, 3, 3], [0, 0, 1, 3]]), fids, boxes, masks, frames, propagate)
    assert r["format"] == 2.0 and r["keyframe"] == 1.0
    assert r["spatial"] == pytest.approx(2 / 3)
    assert calls == [(2, [[3, 3, 3, 3], [0, 0, 1, 3]])]  # matched boxes, ascending prediction order
    assert r["consistency"] == pytest.approx((1 + 1 + 0.5) / 3)
    assert r["overall"] == pytest.approx(2 + 1 + 2 / 3 + 2.5 / 3) and r["failure"] == ""
    # string and float timestamps count for keyframe/spatial (int()), not "12.5"; unknown frame -> 0
    assert score_response(ans("10", [[0, 0, 1, 1]]), fids, boxes, masks)["keyframe"] == 0.5
    assert score_response(ans(10.0, [[0, 0, 1, 1]]), fids, boxes, masks)["spatial"] == 1.0
    bad = score_response(ans("10.5", [[0, 0, 1, 1]]), fids, boxes, masks)
    assert bad["keyframe"] == 0 and bad["spatial"] == 0 and "keyframe_timestamp" in bad["failure"]
    assert score_response(ans(11, [[0, 0, 1, 1]]), fids, boxes, masks)["keyframe"] == 0
    # dummy GT on an empty frame, propagate=None -> consistency 0
    r0 = score_response(ans(5, [[0, 0, 0, 0]]), fids, boxes, masks, frames, None)
    assert r0["keyframe"] == 0 and r0["spatial"] == 1.0 and r0["consistency"] == 0.0
    # boxes that are not an (M,4) array of numbers: spatial and consistency 0, format partial
    rs = score_response(ans(10, [[0, 0, 1, "1"]]), fids, boxes, masks, frames, propagate)
    assert rs["spatial"] == 0 and rs["consistency"] == 0 and rs["format"] == 1.0 and rs["keyframe"] == 0.5


def test_strict_variant_drops_dummy_gt_and_clips():
    fids, boxes, masks, frames = _sample()
    strict = RewardConfig(variant="strict", image_size=4)
    assert score_response(ans(5, [[0, 0, 0, 0]]), fids, boxes, masks, config=strict)["spatial"] == 0.0
    # clipped to [0, 4] and no +1: [0,0,2,2] vs GT [0,0,1,1] -> 1/4
    assert score_response(ans(10, [[-5, -5, 2, 2]]), fids, boxes, masks, config=strict)["spatial"] == pytest.approx(0.25)
    with pytest.raises(ValueError, match="variant"):
        RewardConfig(variant="lenient")


def test_score_group_matches_score_response_and_bad_gt_raises():
    fids, boxes, masks, frames = _sample()

    from veason_r1.models.propagator import PropagatorBase

    class Fake(PropagatorBase):
        def propagate(self, fr, pos, b, *, progress=False):
            out = np.zeros((3, 4, 4), bool)
            out[pos] = True
            return out

        def propagate_groups(self, groups):
            return [[self.propagate(fr, p, b) for p, b in prompts] for fr, prompts in groups]

    responses = [ans(10, [[0, 0, 1, 1]]), "junk", ans(15, [[0, 0, 1, 3]])]
    group = score_group(responses, RewardSample(fids, boxes, masks, frames), Fake())
    single = [score_response(r, fids, boxes, masks, frames, Fake().propagate) for r in responses]
    assert group == single
    with pytest.raises(ValueError, match="gt_masks"):
        RewardSample(fids, boxes, masks[:2])


def test_spatial_is_the_best_one_to_one_matching():
    """The Hungarian match (scipy, a hard dependency) finds the matching with the largest IoU sum: brute force over
    every one-to-one assignment of small random box sets agrees, ties included."""
    from itertools import permutations

    rng = np.random.default_rng(0)
    for m, n in [(1, 1), (2, 3), (3, 2), (3, 3), (1, 4), (4, 2)]:
        for _ in range(5):
            xy = rng.integers(0, 40, (m + n, 2))
            wh = rng.integers(1, 30, (m + n, 2))
            boxes = np.concatenate([xy, xy + wh], axis=1).astype(float)
            pred, gt = boxes[:m], boxes[m:]
            iou = iou_matrix(pred, gt)
            small, large = (m, n) if m <= n else (n, m)
            best = max(sum(iou[i, j] if m <= n else iou[j, i] for i, j in zip(range(small), perm))
                       for perm in permutations(range(large), small))
            got = spatial_reward(pred, gt)
            assert got.reward == pytest.approx(best / max(m, n))
            assert len(got.matched_pred) == small and got.matched_pred == sorted(set(got.matched_pred))
