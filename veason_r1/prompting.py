"""The only place that knows the prompt text, the answer schema and how answers are parsed.

SFT data, GRPO rollouts and inference all build their inputs here (docs/method.md §5), and the reward and the
inference pipeline parse answers here (section 7), so a change to the prompt or schema is one edit.

The canonical prompt is a string with one `<image>` placeholder per frame (the form LLaMA-Factory's `qwen2_vl`
template and verl's RLHFDataset both consume); `build_messages` turns it into Qwen2.5-VL chat messages.
"""

from __future__ import annotations

import ast
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from veason_r1.config import IMAGE_SIZE, PromptConfig
from veason_r1.models.families import DEFAULT_FAMILY, PolicyFamily

IMAGE_PLACEHOLDER = "<image>"
SCHEMA_EXAMPLE = '{"keyframe_timestamp": 12, "bbox_2d_list": [[x1, y1, x2, y2]]}'

QUESTION_TEMPLATE = (
    "You are given {num_frames} frames uniformly sampled from a 1 FPS video. Each image is preceded by its "
    "timestamp. Given the following expression: '{expression}', identify the timestamp where the target is best "
    "represented. Then, locate the target in that frame by predicting the bounding box(es). First, output the "
    "thinking process in <think> </think> tags, and then output the result in the following format within "
    "<answer> </answer> tags."
)

# Parsing exactly as the release (docs/method.md §7).
FORMAT_PATTERN = re.compile(r"<think>.*?</think>\s*<answer>.*?</answer>", re.DOTALL)
FORMAT_JSON_PATTERN = re.compile(r"<answer>\s*(\{.*?\})\s*</answer>", re.DOTALL)
ANSWER_PATTERN = re.compile(r"<answer>\s*(.*?)\s*</answer>", re.DOTALL)
THINK_PATTERN = re.compile(r"<think>(.*?)</think>", re.DOTALL)


def normalize_expression(expression: str) -> str:
    """Lower-cased, trailing periods and whitespace stripped."""
    return expression.strip().lower().rstrip(". ")


def coordinate_text(family: PolicyFamily) -> str:
    """The sentence that states a relative-grid family's box convention ("" for absolute pixels: the paper's prompt,
    byte for byte)."""
    if family.box_grid is None:
        return ""
    return (f"Box coordinates are relative to the frame: 0 to {family.box_grid} from left to right and from top to "
            "bottom.")


def question_text(expression: str, num_frames: int, config: PromptConfig = PromptConfig(),
                  family: PolicyFamily = DEFAULT_FAMILY) -> str:
    text = QUESTION_TEMPLATE.format(num_frames=num_frames, expression=normalize_expression(expression))
    if config.schema_example:
        text += " " + SCHEMA_EXAMPLE
    if family.box_grid is not None:
        text += " " + coordinate_text(family)
    return text


def timestamp_label(frame_id: int) -> str:
    return f"({int(frame_id)}s)"


def frame_listing(frame_ids: Sequence[int]) -> str:
    """The shown frames as the prompt lists them: '(0s)<image>, (5s)<image>, ...'."""
    return ", ".join(f"{timestamp_label(t)}{IMAGE_PLACEHOLDER}" for t in frame_ids)


def build_prompt(expression: str, frame_ids: Sequence[int], config: PromptConfig = PromptConfig(),
                 family: PolicyFamily = DEFAULT_FAMILY) -> str:
    """User turn as one string: '(0s)<image>, (5s)<image>, ...' then a newline and the question."""
    return f"{frame_listing(frame_ids)}\n{question_text(expression, len(frame_ids), config, family)}"


def build_messages(
    expression: str,
    frame_ids: Sequence[int],
    images: Sequence[Any] | None = None,
    config: PromptConfig = PromptConfig(),
    family: PolicyFamily = DEFAULT_FAMILY,
) -> list[dict]:
    """Qwen2.5-VL chat messages (system + user with interleaved text and images) from the canonical prompt.

    `images` (PIL or arrays, already 560x560) fill the image slots in order; without them the slots hold `None`.
    """
    if images is not None and len(images) != len(frame_ids):
        raise ValueError(f"build_messages: {len(images)} images for {len(frame_ids)} frame ids")
    return chat_messages(build_prompt(expression, frame_ids, config, family), images, config.system)


def chat_messages(prompt: str, images: Sequence[Any] | None = None, system: str = PromptConfig().system) -> list[dict]:
    """System + user chat messages from a user turn with `<image>` placeholders (each filled from `images` in order,
    or `None`): the one place that turns the placeholder form into Qwen2.5-VL messages."""
    parts = prompt.split(IMAGE_PLACEHOLDER)
    content: list[dict] = []
    for i, text in enumerate(parts):
        if text:
            content.append({"type": "text", "text": text})
        if i < len(parts) - 1:
            content.append({"type": "image", "image": None if images is None else images[i]})
    return [
        {"role": "system", "content": [{"type": "text", "text": system}]},
        {"role": "user", "content": content},
    ]


def answer_json(keyframe: int, boxes: Sequence[Sequence[float]], family: PolicyFamily = DEFAULT_FAMILY,
                image_size: int = IMAGE_SIZE) -> str:
    """The answer payload: {"keyframe_timestamp": int, "bbox_2d_list": [[x1,y1,x2,y2], ...]}; `boxes` are in pixels
    of the image_size frame, written in the family's convention (Qwen2.5-VL: those pixels, as ints)."""
    boxes = family.to_answer_boxes(boxes, image_size)
    return json.dumps(
        {"keyframe_timestamp": int(keyframe), "bbox_2d_list": [[int(round(float(v))) for v in b] for b in boxes]}
    )


def format_response(reasoning: str, keyframe: int, boxes: Sequence[Sequence[float]],
                    family: PolicyFamily = DEFAULT_FAMILY, image_size: int = IMAGE_SIZE) -> str:
    """A complete assistant turn: <think>...</think> then <answer>{json}</answer>."""
    return f"<think>{reasoning.strip()}</think>\n<answer>{answer_json(keyframe, boxes, family, image_size)}</answer>"


# ----------------------------------------------------------------------------------------------------------------
# Release-exact parsing, used by the reward.


def format_json(response: str) -> dict | None:
    """The format term's JSON: regex `<answer>\\s*(\\{.*?\\})\\s*</answer>` then json.loads; None on failure."""
    m = FORMAT_JSON_PATTERN.search(response)
    if not m:
        return None
    try:
        obj = json.loads(m.group(1))
    except (ValueError, RecursionError):
        return None
    return obj if isinstance(obj, dict) else None


def answer_payload(response: str) -> Any:
    """The keyframe/spatial terms' JSON: whole text between the first <answer> and the next </answer>."""
    m = ANSWER_PATTERN.search(response)
    if not m:
        return None
    try:
        return json.loads(m.group(1))
    except (ValueError, RecursionError):
        return None


def release_int(value: Any) -> int | None:
    """int() as the release applies it to the timestamp: 12, 12.0 and "12" pass; "12.5", NaN, inf, bools... fail.

    bool is rejected although int(True) works, since a boolean timestamp is never a frame index a model meant.
    """
    if isinstance(value, bool):
        return None
    try:
        out = int(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return out


def boxes_array(value: Any, max_boxes: int):
    """The boxes as an (M, 4) float array when they are a non-empty list of 4-number lists; else None.

    At most `max_boxes` boxes are taken. Strings are not numbers; NaN/inf are rejected (they cannot be boxes).
    """
    import numpy as np

    if not isinstance(value, list) or not value:
        return None
    rows = []
    for b in value[:max_boxes]:
        if not isinstance(b, list) or len(b) != 4:
            return None
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in b):
            return None
        if not all(math.isfinite(float(v)) for v in b):
            return None
        rows.append([float(v) for v in b])
    return np.asarray(rows, dtype=np.float64).reshape(-1, 4)


# ----------------------------------------------------------------------------------------------------------------
# Robust parsing for inference: never raises, says what it did.


@dataclass
class ParsedPrediction:
    """What inference takes from a response. `notes` say which fallbacks were used."""

    reasoning: str = ""
    keyframe: int | None = None  # an original frame index (always one of the shown frames when not None)
    boxes: list[list[float]] = field(default_factory=list)  # 560-space boxes
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.keyframe is not None and bool(self.boxes)


def _loads_lenient(text: str) -> Any:
    for loader in (json.loads, ast.literal_eval):
        try:
            return loader(text)
        except Exception:  # noqa: BLE001 - any parse failure means "try the next way"
            continue
    return None


def parse_prediction(response: str, frame_ids: Sequence[int], family: PolicyFamily = DEFAULT_FAMILY,
                     image_size: int = IMAGE_SIZE) -> ParsedPrediction:
    """Parse a model answer for inference.

    Documented behaviour: accepts single-quoted (Python-literal) JSON, text after the JSON, a missing </answer>,
    and keys found anywhere in the text. A keyframe that is not one of the shown frames snaps to the nearest shown
    frame (noted); no keyframe at all falls back to the middle shown frame (noted). Boxes that are not 4 finite
    numbers are dropped (noted); coordinates are clipped to [0, IMAGE_SIZE]. A relative-grid family's boxes are
    clipped to its grid and returned in pixels of the image_size frame, so `boxes` always mean that frame's pixels.
    """
    out = ParsedPrediction()
    think = THINK_PATTERN.search(response)
    out.reasoning = think.group(1).strip() if think else ""
    start = response.find("<answer>")
    body = response[start + len("<answer>") :] if start >= 0 else response
    end = body.find("</answer>")
    if end >= 0:
        body = body[:end]
    obj = None
    brace = body.find("{")
    while brace >= 0 and obj is None:  # the first balanced {...} that parses
        depth = 0
        for j in range(brace, len(body)):
            depth += body[j] == "{"
            depth -= body[j] == "}"
            if depth == 0:
                cand = _loads_lenient(body[brace : j + 1])
                if isinstance(cand, dict):
                    obj = cand
                break
        brace = body.find("{", brace + 1) if obj is None else brace
    if obj is None:
        out.notes.append("no JSON object in answer")
        obj = {}
        m = re.search(r"keyframe_timestamp['\"]?\s*:\s*(-?\d+)", response)
        if m:
            obj["keyframe_timestamp"] = int(m.group(1))
        m = re.search(r"bbox_2d_list['\"]?\s*:\s*(\[.*\]\s*\])", response, re.DOTALL)
        if m:
            obj["bbox_2d_list"] = _loads_lenient(m.group(1))
    ts = release_int(obj.get("keyframe_timestamp")) if isinstance(obj.get("keyframe_timestamp"), (int, float, str)) else None
    shown = [int(t) for t in frame_ids]
    if ts is None:
        if shown:
            out.keyframe = shown[len(shown) // 2]
            out.notes.append("no keyframe: used the middle shown frame")
    elif ts in shown:
        out.keyframe = ts
    elif shown:
        out.keyframe = min(shown, key=lambda t: (abs(t - ts), t))
        out.notes.append(f"keyframe {ts} not shown: snapped to {out.keyframe}")
    boxes = obj.get("bbox_2d_list")
    if isinstance(boxes, list) and boxes and all(isinstance(v, (int, float)) for v in boxes) and len(boxes) == 4:
        boxes = [boxes]  # a single flat box
    for b in boxes if isinstance(boxes, list) else []:
        if (
            isinstance(b, (list, tuple))
            and len(b) == 4
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in b)
        ):
            extent = float(IMAGE_SIZE if family.box_grid is None else family.box_grid)
            x1, y1, x2, y2 = (min(max(float(v), 0.0), extent) for v in b)
            box = [min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)]
            out.boxes.append(box if family.box_grid is None else family.from_answer_boxes([box], image_size)[0])
        else:
            out.notes.append(f"dropped malformed box {str(b)[:40]}")
    if not out.boxes:
        out.notes.append("no valid boxes")
    return out
