"""Synthetic instruct tasks for the toy base policy: what Qwen2.5-VL-Instruct can already do before Veason-R1.

Three tasks over synthetic videos, each a plain JSON answer (never `<think>` nor the Veason prompt: CoT SFT teaches
those later):
- `ground`: one frame, "Locate <query> in the image." -> `{"bbox_2d_list": [[x1, y1, x2, y2], ...]}` in the
  policy's square pixel space, one box per visible target, `[[0, 0, 0, 0]]` when there is none.
- `when`: several timestamped frames (as the Veason prompt shows them: "(7s)<image>, ..."), "At which timestamp is
  <query> best represented?" -> `{"keyframe_timestamp": t}`, t the shown frame with the largest target area.
- `ground_at`: the same frames, "Locate <query> in the frame at <t>s." -> the boxes in that frame.
Queries are the benchmark generator's own expressions plus per-frame appearance phrases, so the vocabulary matches
what the policy meets later. Every sample is drawn fresh from a seeded stream: the model never sees one twice, so
it has to learn to ground rather than memorise.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field

import numpy as np

from veason_r1.config import FRAMES, PromptConfig
from veason_r1.data.masks import box_to_square, mask_to_box
from veason_r1.data.sampling import eval_frames, training_frames
from veason_r1.data.synthetic import COLORS, SHAPES, SynthConfig, make_video
from veason_r1.data.video import resize_frame
from veason_r1.prompting import IMAGE_PLACEHOLDER, chat_messages, frame_listing, normalize_expression, timestamp_label

TASKS = ("ground", "when", "ground_at")


@dataclass
class GroundingConfig:
    """The task mix and the frames it is drawn from (the demo's video sizes, the toy policy's 112 px)."""

    image_size: int = 112
    task_weights: tuple[float, float, float] = (0.5, 0.25, 0.25)  # ground, when, ground_at
    # frames shown in multi-frame tasks: the RL grid and the SFT / eval grid
    frame_counts: tuple[int, ...] = (FRAMES.rl_frames, FRAMES.sft_frames)
    samples_per_video: int = 12  # samples drawn from one rendered video before the next
    # share of absent-target grounding samples (answer [[0, 0, 0, 0]]) kept: < 1 thins the absent-box spike
    # that greedy decoding falls into (bench/toy_policy_probe.py); 1 keeps the stream as it was
    absent_keep: float = 1.0
    synth: SynthConfig = field(default_factory=lambda: SynthConfig(min_frames=8, max_frames=24))


@dataclass
class ToySample:
    task: str
    prompt: str  # user text with one `<image>` per frame
    images: list[np.ndarray]  # (S, S, 3) uint8
    answer: str  # the assistant's JSON
    boxes: list[list[int]] | None = None  # GT boxes (ground tasks)
    keyframe: int | None = None  # GT timestamp (when)
    frame_ids: list[int] | None = None


def frame_boxes(masks: list[np.ndarray], height: int, width: int, size: int) -> list[list[int]]:
    """Integer square-space boxes of the visible masks, left to right; [[0, 0, 0, 0]] when none is visible."""
    boxes = []
    for m in masks:
        box = mask_to_box(m)
        if box is not None:
            boxes.append([int(round(v)) for v in box_to_square(box, height, width, size)])
    return sorted(boxes) or [[0, 0, 0, 0]]


def boxes_answer(boxes: list[list[int]]) -> str:
    return json.dumps({"bbox_2d_list": boxes})


def _frame_queries(video, t: int, rng: random.Random) -> list[tuple[str, list[int]]]:
    """(query, object ids) pairs that pick exactly their objects among the objects visible in frame t."""
    objs = video.objects
    visible = [o for o in objs if video.visible[o.obj_id][t].any()]
    out: list[tuple[str, list[int]]] = []
    for e in video.expressions:
        if e.type_id == 0:
            out.append((e.text, [k for k in e.obj_ids if video.visible[k][t].any()]))
        elif e.type_id == 2 and e.kind == "no_target":
            out.append((e.text, []))
    for o in visible:
        for keys in (("color", "shape"), ("shape",), ("color",), ("size", "color", "shape")):
            same = [p for p in visible if all(getattr(p, a) == getattr(o, a) for a in keys)]
            words = " ".join(getattr(o, a) for a in keys)
            if keys == ("color",):
                words += " shape"
            if len(same) == 1:
                out.append((f"the {words}", [o.obj_id]))
            elif keys != ("size", "color", "shape"):
                plural = words + ("es" if words.endswith(("sh", "ch", "x", "s")) else "s")
                out.append((f"the {plural}", [p.obj_id for p in same]))
    colours = {o.color for o in objs}
    absent = sorted(c for c in COLORS if c not in colours)
    if absent:
        out.append((f"the {rng.choice(absent)} {rng.choice(SHAPES)}", []))
    return out


class SampleStream:
    """An endless, seeded stream of `ToySample`s: `next()` renders a new video every `samples_per_video` draws."""

    def __init__(self, cfg: GroundingConfig, seed: int, first_index: int = 0, stride: int = 1):
        self.cfg, self.rng = cfg, random.Random(seed)
        self.synth = SynthConfig(**{**asdict(cfg.synth), "seed": seed})
        self.index, self.stride = first_index, stride
        self.video, self.left = None, 0

    def _next_video(self):
        self.video = make_video(self.index, self.synth)
        self.index += self.stride
        self.left = self.cfg.samples_per_video
        h, w = self.video.frames[0].shape[:2]
        self.hw = (h, w)
        self.square = [resize_frame(f, self.cfg.image_size) for f in self.video.frames]

    def __iter__(self):
        return self

    def __next__(self) -> ToySample:
        while True:
            if self.left <= 0 or self.video is None:
                self._next_video()
            self.left -= 1
            task = self.rng.choices(TASKS, weights=self.cfg.task_weights)[0]
            sample = getattr(self, f"_{task}")()
            if sample is None:
                continue
            if (self.cfg.absent_keep < 1 and sample.boxes == [[0, 0, 0, 0]]
                    and self.rng.random() >= self.cfg.absent_keep):
                continue
            return sample

    def _masks(self, obj_ids, t):
        return [self.video.visible[k][t] for k in obj_ids]

    def _ground(self) -> ToySample | None:
        v, size = self.video, self.cfg.image_size
        t = self.rng.randrange(v.num_frames)
        queries = _frame_queries(v, t, self.rng)
        if not queries:
            return None
        text, ids = self.rng.choice(queries)
        boxes = frame_boxes(self._masks(ids, t), *self.hw, size)
        prompt = (f"{IMAGE_PLACEHOLDER}\nLocate {normalize_expression(text)} in the image. "
                  "Output the bounding box(es) in JSON.")
        return ToySample("ground", prompt, [self.square[t]], boxes_answer(boxes), boxes=boxes, frame_ids=[t])

    def _frames_for(self, areas) -> list[int]:
        n = self.rng.choice(self.cfg.frame_counts)
        if self.rng.random() < 0.5:
            return list(training_frames(areas, n, self.rng)[0])
        return list(eval_frames(len(areas), n))

    def _targets(self):
        exprs = [e for e in self.video.expressions if e.type_id in (0, 1) and e.obj_ids]
        if not exprs:
            return None
        e = self.rng.choice(exprs)
        areas = [int(sum(self.video.visible[k][t].sum() for k in e.obj_ids)) for t in range(self.video.num_frames)]
        return e, areas

    def _when(self) -> ToySample | None:
        picked = self._targets()
        if picked is None:
            return None
        e, areas = picked
        ids = self._frames_for(areas)
        best = max(ids, key=lambda t: (areas[t], -t))
        if areas[best] == 0:
            return None
        prompt = (f"{frame_listing(ids)}\nAt which timestamp is {normalize_expression(e.text)} best represented? "
                  "Output the timestamp in JSON.")
        return ToySample("when", prompt, [self.square[t] for t in ids], json.dumps({"keyframe_timestamp": best}),
                         keyframe=best, frame_ids=ids)

    def _ground_at(self) -> ToySample | None:
        picked = self._targets()
        if picked is None:
            return None
        e, areas = picked
        ids = self._frames_for(areas)
        shown = [t for t in ids if areas[t] > 0]
        if not shown:
            return None
        t = self.rng.choice(shown)
        boxes = frame_boxes(self._masks(e.obj_ids, t), *self.hw, self.cfg.image_size)
        prompt = (f"{frame_listing(ids)}\nLocate {normalize_expression(e.text)} in the frame at "
                  f"{timestamp_label(t)[1:-1]}. "
                  "Output the bounding box(es) in JSON.")
        return ToySample("ground_at", prompt, [self.square[i] for i in ids], boxes_answer(boxes), boxes=boxes,
                         frame_ids=ids)


def messages(sample: ToySample, system: str = PromptConfig().system) -> list[dict]:
    """Qwen2.5-VL chat messages of a sample's user turn (images in their `<image>` slots)."""
    return chat_messages(sample.prompt, None, system)
