"""The one prompt/answer module: exact docs/method.md §5 text, release-exact parsing (section 7) and the
documented behaviour of the robust inference parser."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from veason_r1.config import PromptConfig
from veason_r1.prompting import (
    answer_payload,
    boxes_array,
    build_messages,
    build_prompt,
    format_json,
    format_response,
    normalize_expression,
    parse_prediction,
    release_int,
)

EXPECTED_QUESTION = (
    "You are given 3 frames uniformly sampled from a 1 FPS video. Each image is preceded by its timestamp. Given the "
    "following expression: 'the dog that ends up on the sofa', identify the timestamp where the target is best "
    "represented. Then, locate the target in that frame by predicting the bounding box(es). First, output the "
    "thinking process in <think> </think> tags, and then output the result in the following format within "
    "<answer> </answer> tags."
)


def test_prompt_text_is_the_method_text():
    no_schema = build_prompt("The dog that ends up on the sofa..", [0, 5, 10], PromptConfig(schema_example=False))
    assert no_schema == "(0s)<image>, (5s)<image>, (10s)<image>\n" + EXPECTED_QUESTION
    with_schema = build_prompt("The dog that ends up on the sofa", [0, 5, 10])
    assert with_schema == no_schema + ' {"keyframe_timestamp": 12, "bbox_2d_list": [[x1, y1, x2, y2]]}'


def test_normalize_expression():
    assert normalize_expression("  The Red Circle.  ") == "the red circle"
    assert normalize_expression("A.B. ...") == "a.b"


def test_messages_interleave_timestamps_and_images():
    imgs = [np.zeros((4, 4, 3), np.uint8) + i for i in range(2)]
    msgs = build_messages("the cat", [3, 7], imgs)
    assert msgs[0] == {"role": "system", "content": [{"type": "text", "text": "You are a helpful assistant."}]}
    content = msgs[1]["content"]
    assert [c["type"] for c in content] == ["text", "image", "text", "image", "text"]
    assert content[0]["text"] == "(3s)" and content[2]["text"] == ", (7s)"
    assert content[1]["image"] is imgs[0] and content[3]["image"] is imgs[1]
    assert content[4]["text"].startswith("\nYou are given 2 frames")
    with pytest.raises(ValueError, match="3 images for 2 frame ids"):
        build_messages("the cat", [3, 7], imgs + imgs[:1])


def test_format_response_round_trips_through_the_release_parsers():
    text = format_response("  the dog moves.  ", 12, [[10.4, 20.6, 30, 40], [1, 2, 3, 4]])
    assert text == ('<think>the dog moves.</think>\n<answer>{"keyframe_timestamp": 12, "bbox_2d_list": '
                    '[[10, 21, 30, 40], [1, 2, 3, 4]]}</answer>')
    assert format_json(text) == {"keyframe_timestamp": 12, "bbox_2d_list": [[10, 21, 30, 40], [1, 2, 3, 4]]}
    assert answer_payload(text) == format_json(text)


def test_release_parsers_differ_as_the_release_does():
    # the format term's regex needs a {...} object; the keyframe/spatial terms parse the whole answer body
    text = "<think>x</think><answer>[1, 2]</answer>"
    assert format_json(text) is None and answer_payload(text) == [1, 2]
    assert format_json("<answer>{bad json}</answer>") is None and answer_payload("no tags") is None


@pytest.mark.parametrize("value,expected", [(12, 12), (12.0, 12), ("12", 12), (-3, -3), ("12.5", None),
                                            (None, None), (True, None), ([12], None), (math.nan, None),
                                            (math.inf, None)])
def test_release_int(value, expected):
    assert release_int(value) == expected


def test_boxes_array():
    assert boxes_array([[1, 2, 3, 4]], 120).tolist() == [[1, 2, 3, 4]]
    for bad in ([], "x", [[1, 2, 3]], [[1, 2, 3, "4"]], [[1, 2, 3, math.nan]], [[True, 2, 3, 4]], [1, 2, 3, 4]):
        assert boxes_array(bad, 120) is None, bad
    assert boxes_array([[0, 0, 1, 1]] * 200, 120).shape == (120, 4)


def test_parse_prediction_documented_fallbacks():
    ids = [0, 10, 20, 30]
    p = parse_prediction("<think>r</think><answer>{'keyframe_timestamp': 20, 'bbox_2d_list': [[5, 6, 7, 8]]}"
                         "</answer> trailing words", ids)
    assert (p.reasoning, p.keyframe, p.boxes, p.notes) == ("r", 20, [[5.0, 6.0, 7.0, 8.0]], [])
    snapped = parse_prediction('<answer>{"keyframe_timestamp": 17, "bbox_2d_list": [[1, 1, 2, 2]]}</answer>', ids)
    assert snapped.keyframe == 20 and "keyframe 17 not shown: snapped to 20" in snapped.notes
    missing = parse_prediction('<answer>{"bbox_2d_list": [[700, -5, 3, 9], [1, 2, "x", 4]]}', ids)
    assert missing.keyframe == 20 and "no keyframe: used the middle shown frame" in missing.notes
    assert missing.boxes == [[3.0, 0.0, 560.0, 9.0]]  # clipped to [0, 560], corners ordered
    assert any(n.startswith("dropped malformed box") for n in missing.notes)
    flat = parse_prediction('{"keyframe_timestamp": "10", "bbox_2d_list": [1, 2, 3, 4]}', ids)
    assert flat.keyframe == 10 and flat.boxes == [[1.0, 2.0, 3.0, 4.0]] and flat.ok
    empty = parse_prediction("nothing useful", ids)
    assert not empty.ok and "no valid boxes" in empty.notes


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300), st.lists(st.integers(0, 1000), max_size=8))
def test_parse_prediction_never_raises(text, ids):
    p = parse_prediction(text, ids)
    assert p.keyframe is None or p.keyframe in ids
    assert all(len(b) == 4 and 0 <= min(b) and max(b) <= 560 for b in p.boxes)
