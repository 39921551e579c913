"""What the teacher VLM sees for one sample (docs/method.md §6).

One request = the N=8 training-grid frames (keyframe-anchored, section 4), each resized to at most 640x480
(landscape) or 480x640 (portrait, squares included, as the release), each preceded by the text "[<t> second]", with a
red rectangle (thickness 2) on every target's box; then the instruction (1 fps frames, the red boxes are only a
reference and must never be mentioned, the expression, the chosen keyframe, the three reasoning steps, do not pick
another keyframe) and one of three worked examples drawn at random.

Fix over the release: each object's box comes from that object's own mask (the release OR-ed the masks as it went, so
object k's box covered objects 0..k). Boxes are drawn on the resized frame, so the rectangle stays 2 px wide in what
the teacher sees (the release drew on the full-size frame and then downscaled it).
"""

from __future__ import annotations

import base64
import io
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from veason_r1.config import FRAMES
from veason_r1.data.masks import Box, gt_boxes_in_square, mask_to_box
from veason_r1.data.revos import Expression, ReVOSDataset
from veason_r1.data.sampling import training_frames

TEACHER_LANDSCAPE = (480, 640)  # (max height, max width) for frames wider than tall
TEACHER_PORTRAIT = (640, 480)  # for frames taller than wide, and squares (as the release)
BOX_COLOR = (255, 0, 0)  # RGB red
BOX_THICKNESS = 2

WORKED_EXAMPLES: tuple[str, ...] = (
    "Example:\n"
    "Object description: 'identify the man standing beside the white truck.'\n"
    "Keyframe timestamp: 2\n"
    "Step 1: I analyze the video by reviewing all frames. It shows a street scene with a white truck parked on the "
    "right. A man gradually approaches the truck from the left across the frames.\n"
    "Step 2: Based on the expression 'identify the man standing beside the white truck', frame at timestamp 2 is the "
    "most suitable keyframe. In this frame, the man is standing right next to the truck, and both are clearly "
    "visible.\n"
    "Step 3: In frame 2, the man is located on the right side of the image, beside the truck, standing upright and "
    "facing forward.",
    "Example:\n"
    "Object description: 'locate the person who is starting to wave their hand.'\n"
    "Keyframe timestamp: 4\n"
    "Step 1: The video shows a person standing still and then gradually raising one hand.\n"
    "Step 2: Frame at timestamp 4 is the best keyframe because it captures the moment the hand is lifted above "
    "shoulder level, clearly initiating a waving gesture.\n"
    "Step 3: In frame 4, the person is centered in the image, standing upright with their right arm partially raised "
    "in a wave.",
    "Example:\n"
    "Object description: 'identify the child jumping off the bench.'\n"
    "Keyframe timestamp: 3\n"
    "Step 1: The frames show a child climbing onto a bench, standing, and then jumping down.\n"
    "Step 2: Considering the expression 'identify the child jumping off the bench', frame at timestamp 3 is the best "
    "keyframe since it captures the child mid-air, just after leaving the bench.\n"
    "Step 3: In frame 3, the child is above ground level, positioned in the center, with bent knees and arms raised "
    "to balance.",
)

INSTRUCTION_TEMPLATE = (
    "You are given a sequence of video frames (1 frame per second). One or more objects are marked with red "
    "rectangles in each frame - these red boxes are **only for your reference** and **should not be mentioned or "
    "relied upon** in your answer.\n"
    "Your task is to analyze the visual content of the video and determine how the provided expression relates to "
    "the frames. Use the following structured reasoning process:\n"
    'Given the object description: **"{expression}"**\n'
    "Keyframe Timestamp: '{keyframe}'\n"
    "We have selected the frame at timestamp **{keyframe}** as the keyframe. You must base your reasoning on this "
    "frame, and explain why it best matches the target described.\n"
    "### Please follow this reasoning process step-by-step:\n"
    "1. Briefly describe what is happening across all frames in the video.\n"
    "2. Justify why the frame at timestamp {keyframe} best represents the described target.\n"
    "3. Describe what the target is doing and precisely where it is located in the selected frame.\n"
    "**Important:**\n"
    "- You must analyze the provided keyframe '{keyframe}' - do not choose a different one.\n"
    "- Do not refer to or describe the red rectangles.\n"
    "- Write naturally, but follow the reasoning steps clearly.\n"
)


def build_instruction(expression: str, keyframe: int, example_index: int) -> str:
    """The instruction text that follows the frames, with worked example `example_index` (0..2)."""
    if not 0 <= example_index < len(WORKED_EXAMPLES):
        raise ValueError(f"example_index must be in 0..{len(WORKED_EXAMPLES) - 1}, got {example_index}")
    return INSTRUCTION_TEMPLATE.format(expression=expression, keyframe=int(keyframe)) + WORKED_EXAMPLES[example_index]


def timestamp_text(t: int) -> str:
    """The text shown before each frame (frames are 1 fps, so the timestamp is the original frame index)."""
    return f"[{int(t)} second]"


@dataclass
class CotSample:
    """One expression ready for the teacher: its frame grid, keyframe, and per-object boxes.

    `object_boxes[i][j]` is the inclusive extent box (original pixels) of target j in shown frame i, or None when the
    object is absent there. `keyframe_boxes_560` is the answer (docs/method.md §5 rules).
    """

    video: str
    exp_id: str
    expression: str
    obj_ids: tuple[int, ...]
    anno_ids: tuple[str, ...]
    type_id: int | None
    height: int
    width: int
    frame_ids: list[int]
    keyframe: int
    object_boxes: list[list[Box | None]]
    keyframe_boxes_560: list[Box]
    areas: list[int]  # GT union area in each shown frame
    example_index: int
    frame_paths: list[str] = field(default_factory=list)  # image files of the shown frames

    @property
    def key(self) -> str:
        return f"{self.video}/{self.exp_id}"

    @property
    def keyframe_object_boxes(self) -> list[Box | None]:
        return self.object_boxes[self.frame_ids.index(self.keyframe)]

    @property
    def has_target(self) -> bool:
        return any(a > 0 for a in self.areas)


def sample_rng(seed: int, key: str) -> random.Random:
    """Per-sample RNG: the keyframe and worked example of a sample do not depend on order, threads or resumes."""
    return random.Random(f"veason-cot:{seed}:{key}")


def prepare_sample(ds: ReVOSDataset, expr: Expression, num_frames: int = FRAMES.sft_frames,
                   seed: int = 0) -> CotSample:
    """Frame grid, keyframe, per-object boxes (each from its own mask) and answer boxes for one expression."""
    rng = sample_rng(seed, expr.key)
    all_areas = ds.gt_areas(expr)
    frame_ids, keyframe = training_frames(all_areas, num_frames, rng)
    example_index = rng.randrange(len(WORKED_EXAMPLES))
    h, w = ds.size(expr.video)
    object_boxes = []
    keyframe_masks = None
    for t in frame_ids:
        masks = ds.object_masks(expr, t)
        if t == keyframe:
            keyframe_masks = masks
        object_boxes.append([mask_to_box(m) for m in masks])
    source = ds.frames(expr.video)
    return CotSample(
        video=expr.video, exp_id=expr.exp_id, expression=expr.text, obj_ids=tuple(expr.obj_ids),
        anno_ids=tuple(expr.anno_ids), type_id=expr.type_id, height=int(h), width=int(w), frame_ids=list(frame_ids),
        keyframe=int(keyframe), object_boxes=object_boxes,
        keyframe_boxes_560=gt_boxes_in_square(keyframe_masks or [], h, w), areas=[int(all_areas[t]) for t in frame_ids],
        example_index=example_index, frame_paths=[str(source.path(t)) for t in frame_ids],
    )


# ------------------------------------------------------------------------------------------------------------------
# Images


def teacher_frame_size(height: int, width: int) -> tuple[int, int]:
    """(h, w) within 640x480 (landscape) or 480x640 (portrait/square), aspect kept, never upscaled."""
    max_h, max_w = TEACHER_LANDSCAPE if height < width else TEACHER_PORTRAIT
    if height <= max_h and width <= max_w:
        return height, width
    scale = min(max_h / height, max_w / width)
    return max(1, int(height * scale)), max(1, int(width * scale))


def resize_for_teacher(frame: np.ndarray) -> np.ndarray:
    h, w = frame.shape[:2]
    nh, nw = teacher_frame_size(h, w)
    if (nh, nw) == (h, w):
        return frame
    return np.asarray(Image.fromarray(frame).resize((nw, nh), Image.BILINEAR))


def draw_boxes(frame: np.ndarray, boxes: list[Box | None], color: tuple[int, int, int] = BOX_COLOR,
               thickness: int = BOX_THICKNESS) -> np.ndarray:
    """A copy of `frame` with a rectangle outline (inclusive pixel box, `thickness` px) for every box not None."""
    out = frame.copy()
    h, w = out.shape[:2]
    lo = thickness // 2  # the line straddles the edge as cv2.rectangle does: 2 px = edge-1 .. edge
    for b in boxes:
        if b is None:
            continue
        x1, y1, x2, y2 = (int(round(v)) for v in b)
        xa, xb = max(x1 - lo, 0), min(x2 - lo + thickness, w)
        ya, yb = max(y1 - lo, 0), min(y2 - lo + thickness, h)
        for y in (y1, y2):  # horizontal edges
            out[max(y - lo, 0):min(y - lo + thickness, h), xa:xb] = color
        for x in (x1, x2):  # vertical edges
            out[ya:yb, max(x - lo, 0):min(x - lo + thickness, w)] = color
    return out


def scale_box(box: Box, sy: float, sx: float) -> Box:
    return [box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy]


def boxed_teacher_frame(frame: np.ndarray, boxes: list[Box | None]) -> np.ndarray:
    """Resize to the teacher's size, then draw the (rescaled) boxes so they stay `BOX_THICKNESS` px wide."""
    h, w = frame.shape[:2]
    small = resize_for_teacher(frame)
    sy, sx = small.shape[0] / h, small.shape[1] / w
    return draw_boxes(small, [None if b is None else scale_box(b, sy, sx) for b in boxes])


def encode_jpeg_base64(frame: np.ndarray, quality: int = 90) -> str:
    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="JPEG", quality=quality)
    return base64.b64encode(buf.getvalue()).decode("ascii")


@dataclass
class TeacherRequest:
    """Chat-completions content for one sample: per frame "[t second]" then the image; the instruction last."""

    content: list[dict]
    instruction: str

    def messages(self) -> list[dict]:
        return [{"role": "user", "content": self.content}]


def build_request(ds: ReVOSDataset, sample: CotSample, save_dir: str | Path | None = None) -> TeacherRequest:
    """Load the shown frames, box the targets, encode as JPEG data URLs. `save_dir` keeps the boxed frames (debug)."""
    source = ds.frames(sample.video)
    content: list[dict] = []
    for i, t in enumerate(sample.frame_ids):
        image = boxed_teacher_frame(source.get(t), sample.object_boxes[i])
        if save_dir is not None:
            p = Path(save_dir) / f"{sample.video}/{sample.exp_id}/{t:05d}.jpg"
            p.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(p, quality=90)
        content.append({"type": "text", "text": timestamp_text(t)})
        url = f"data:image/jpeg;base64,{encode_jpeg_base64(image)}"
        content.append({"type": "image_url", "image_url": {"url": url}})
    instruction = build_instruction(sample.expression, sample.keyframe, sample.example_index)
    content.append({"type": "text", "text": instruction})
    return TeacherRequest(content, instruction)
