"""One video, one query -> keyframe, boxes and a mask per frame (docs/method.md §4, §5 and §1.5).

The flow is the evaluation protocol: `FrameConfig.eval_frames` linspace frames resized to the policy's square size,
the docs/method.md prompt, greedy decoding, the robust answer parser, boxes mapped back to original pixels, then SAM2
from the keyframe over every frame. `veason-r1 infer` and the benchmark predictor (`predict.py`) share these
functions, so a prediction for one video and for a benchmark are made the same way.

Parser behaviour (documented, never a crash; see `veason_r1.prompting.parse_prediction`): single-quoted JSON and
trailing text are accepted; a keyframe that is not a shown frame snaps to the nearest shown frame; no keyframe
falls back to the middle shown frame; no valid box gives empty masks on every frame. `notes` records each fallback.
"""

from __future__ import annotations

import io
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from veason_r1.config import FRAMES, IMAGE_SIZE, RESPONSE_BUDGET
from veason_r1.data.masks import box_from_square
from veason_r1.data.sampling import eval_frames
from veason_r1.data.video import FrameSource, open_video, resize_frame
from veason_r1.errors import BadInput, UserError
from veason_r1.flags import policy_image_size, positive_int
from veason_r1.models.config import PolicyConfig, add_policy_flags, add_propagator_flags
from veason_r1.models.families import DEFAULT_FAMILY, PolicyFamily
from veason_r1.paths import OWNER_MARKER, is_owned, mark_owned, name_problem, remove_owned_tree
from veason_r1.prompting import parse_prediction


@dataclass(frozen=True)
class InferenceConfig:
    """Eval-time settings (docs/method.md §4/§5). `image_size` is the policy's square side (the CPU demo: 112)."""

    image_size: int = IMAGE_SIZE
    num_frames: int = FRAMES.eval_frames
    max_new_tokens: int = RESPONSE_BUDGET


@dataclass
class Answer:
    """What the policy said about one (video, query) and how it maps onto the original frames."""

    response: str  # raw generated text
    frame_ids: list[int]  # the shown frames (original indices)
    reasoning: str
    keyframe: int  # original frame index (always one of `frame_ids`)
    boxes_policy: list[list[float]]  # boxes in the policy's size x size frame
    boxes: list[list[int]]  # boxes in original pixels of the keyframe
    notes: list[str] = field(default_factory=list)  # parser fallbacks and oracle replacements

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Answer:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


def sample_frame_ids(num_video_frames: int, num_frames: int = FRAMES.eval_frames) -> list[int]:
    """The frames the policy sees at evaluation: linspace(0, L-1, n), all frames when L <= n."""
    return eval_frames(num_video_frames, num_frames)


def policy_images(source: FrameSource, frame_ids: Sequence[int], image_size: int) -> list[np.ndarray]:
    """The shown frames resized to image_size x image_size (bilinear, aspect not kept)."""
    return [resize_frame(f, image_size) for f in source.get_many(list(frame_ids))]


def boxes_to_original(boxes: Sequence[Sequence[float]], height: int, width: int, size: int) -> list[list[int]]:
    """Policy-space boxes -> original pixels (the release's x*W/size + 0.5 then int), clipped into the frame."""
    out = []
    for b in boxes:
        x1, y1, x2, y2 = box_from_square(b, height, width, size)
        out.append([min(max(x1, 0), width - 1), min(max(y1, 0), height - 1),
                    min(max(x2, 0), width - 1), min(max(y2, 0), height - 1)])
    return out


def make_answer(response: str, frame_ids: Sequence[int], height: int, width: int, size: int,
                family: PolicyFamily = DEFAULT_FAMILY) -> Answer:
    """Parse a response robustly (in the policy family's box convention) and map its boxes to original pixels.

    The shared parser clips boxes to [0, 560]; for another policy size the boxes are clipped to [0, size] here.
    """
    parsed = parse_prediction(response, frame_ids, family, size)
    boxes_policy = [[min(max(float(v), 0.0), float(size)) for v in b] for b in parsed.boxes]
    keyframe = parsed.keyframe if parsed.keyframe is not None else int(frame_ids[len(frame_ids) // 2])
    return Answer(
        response=response,
        frame_ids=[int(t) for t in frame_ids],
        reasoning=parsed.reasoning,
        keyframe=int(keyframe),
        boxes_policy=boxes_policy,
        boxes=boxes_to_original(boxes_policy, height, width, size),
        notes=list(parsed.notes),
    )


DIRECTIONS = ("both", "forward", "backward")


class FrameRange(FrameSource):
    """Frames [start, stop) of another source, read lazily (SAM2 over one side of the keyframe only)."""

    def __init__(self, source: FrameSource, start: int, stop: int):
        if not 0 <= start < stop <= len(source):
            raise ValueError(f"FrameRange: [{start}, {stop}) is not inside a {len(source)}-frame source")
        self.source, self.start = source, start
        self.names = list(source.names[start:stop])

    def get(self, index: int) -> np.ndarray:
        return self.source.get(self.start + index)

    def get_many(self, indices: Sequence[int]) -> list[np.ndarray]:
        return self.source.get_many([self.start + int(i) for i in indices])

    @property
    def size(self) -> tuple[int, int]:
        return self.source.size


def propagate(
    propagator: Any,
    source: FrameSource,
    keyframe: int,
    boxes: Sequence[Sequence[float]],
    progress: bool = False,
    encoded: Any = None,
    direction: str = "both",
) -> np.ndarray:
    """(L, H, W) bool masks over every frame from SAM2 prompted with `boxes` (original pixels) on `keyframe`.

    No box means no target: every mask is empty and SAM2 is not run. `encoded` (from `propagator.encode(source)`)
    reuses one video's preprocessed frames and features across the expressions of that video.
    `direction`: "both" (the method: forward to the end, then backward to the start, docs/method.md §7), or
    "forward" / "backward" only (SAM2 runs on the frames on that side of the keyframe; the other side stays empty),
    a knob for looking at a result, never used by evaluation.
    """
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    height, width = source.size
    if not boxes:
        return np.zeros((len(source), height, width), dtype=bool)
    if direction != "both":
        if encoded is not None:
            raise ValueError("propagate: `encoded` covers the whole video; it cannot be used with one direction")
        keyframe = int(keyframe)
        start, stop, key = (keyframe, len(source), 0) if direction == "forward" else (0, keyframe + 1, keyframe)
        part = propagate(propagator, FrameRange(source, start, stop), key, boxes, progress)
        masks = np.zeros((len(source), height, width), dtype=bool)
        masks[start:stop] = part
        return masks
    box_array = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    masks = propagator.propagate(source if encoded is None else encoded, int(keyframe), box_array, progress=progress)
    masks = np.asarray(masks).astype(bool, copy=False)
    if masks.shape != (len(source), height, width):
        raise ValueError(f"SAM2 returned masks of shape {masks.shape}, expected {(len(source), height, width)}")
    return masks


def mask_png_bytes(mask: np.ndarray) -> bytes:
    """A (H, W) mask as an 8-bit grey PNG holding 0 and 255 (what the evaluators and the published R assume)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.multiply(np.asarray(mask, dtype=bool), 255, dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def write_mask_png(path: str | os.PathLike, mask: np.ndarray) -> None:
    """One mask PNG, written atomically."""
    from veason_r1.io_utils import atomic_write_bytes

    atomic_write_bytes(path, mask_png_bytes(mask))


def generate_responses(engine: Any, requests: list, config: InferenceConfig, sampling: Any = None) -> list[str]:
    """One response per request with any engine (HFEngine / VLLMEngine): greedy (the evaluation protocol) unless
    `sampling` (a `SamplingConfig` with n=1, e.g. the app's "sampled" setting) is given."""
    from veason_r1.models.policy import SamplingConfig

    if sampling is None:
        sampling = SamplingConfig(max_new_tokens=config.max_new_tokens, temperature=0.0, top_p=1.0, n=1)
    elif sampling.n != 1:
        raise ValueError(f"generate_responses: one response per request, got sampling.n={sampling.n}")
    outputs = engine.generate(requests, sampling)
    if len(outputs) != len(requests):
        raise RuntimeError(f"engine returned {len(outputs)} outputs for {len(requests)} requests")
    return [out[0] if out else "" for out in outputs]


@dataclass
class VideoResult:
    """Everything `infer` produces for one video."""

    query: str
    frame_names: list[str]
    height: int
    width: int
    answer: Answer
    masks: np.ndarray  # (L, H, W) bool
    timings: dict[str, float]

    def to_json(self) -> dict:
        a = self.answer
        return {
            "query": self.query,
            "reasoning": a.reasoning,
            "response": a.response,
            "keyframe_index": a.keyframe,
            "keyframe_name": self.frame_names[a.keyframe],
            "shown_frames": a.frame_ids,
            "boxes": a.boxes,
            "boxes_policy": a.boxes_policy,
            "parser_notes": a.notes,
            "num_frames": len(self.frame_names),
            "height": self.height,
            "width": self.width,
            "mask_area": [int(m.sum()) for m in self.masks],
            "timings": {k: round(v, 4) for k, v in self.timings.items()},
        }


def answer_query(
    source: FrameSource,
    query: str,
    engine: Any,
    config: InferenceConfig = InferenceConfig(),
    sampling: Any = None,
) -> tuple[Answer, dict[str, float]]:
    """The policy half of `segment_video`: shown frames -> response -> parsed `Answer` (+ its timings).

    Exposed so a caller can show the answer before SAM2 has run (the web app streams it).
    """
    from veason_r1.models.policy import GenerationRequest

    if not query or not query.strip():
        raise BadInput("query", "the query is empty", hint="give the expression to segment, e.g. 'the dog'")
    if len(source) == 0:
        raise BadInput("video", "the video has no frames")
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    height, width = source.size
    frame_ids = sample_frame_ids(len(source), config.num_frames)
    images = policy_images(source, frame_ids, config.image_size)
    timings["decode_shown_frames_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    (response,) = generate_responses(engine, [GenerationRequest(query, frame_ids, images)], config, sampling)
    timings["generate_s"] = time.perf_counter() - t0
    return make_answer(response, frame_ids, height, width, config.image_size, engine.family), timings


def segment_video(
    video: str | os.PathLike | FrameSource,
    query: str,
    engine: Any,
    propagator: Any,
    config: InferenceConfig = InferenceConfig(),
    progress: bool = True,
) -> VideoResult:
    """Run the whole pipeline on one video (an mp4, a JPEG folder, or a FrameSource)."""
    if not query or not query.strip():
        raise BadInput("--query", "the query is empty", hint="give the expression to segment, e.g. 'the dog'")
    t0 = time.perf_counter()
    source = video if isinstance(video, FrameSource) else open_video(video)
    if len(source) == 0:
        raise BadInput(str(video), "the video has no frames")
    open_s = time.perf_counter() - t0
    answer, timings = answer_query(source, query, engine, config)
    timings["decode_shown_frames_s"] += open_s

    t0 = time.perf_counter()
    masks = propagate(propagator, source, answer.keyframe, answer.boxes, progress=progress)
    timings["sam2_s"] = time.perf_counter() - t0
    height, width = source.size
    return VideoResult(query, list(source.names), height, width, answer, masks, timings)


def write_result(
    result: VideoResult,
    source: FrameSource,
    out_dir: str | os.PathLike,
    overlay: bool = True,
    overlay_fps: float = 10.0,
    overlay_max_side: int | None = 640,
    progress: bool = True,
) -> Path:
    """Write `masks/<frame>.png` (0/255, original size), `result.json`, and `overlay.mp4`; returns out_dir.

    The masks go to a private folder that then replaces `masks/` whole, so a reused OUT never keeps another
    video's frames beside the new ones, and without an overlay an earlier run's `overlay.mp4` is removed. An
    existing `masks/` is replaced only if an earlier `infer` made it (it holds the ownership marker); anything else
    there is refused before writing."""
    from veason_r1.inference.overlay import OverlayStyle, overlay_frames, write_mp4
    from veason_r1.io_utils import atomic_write_json

    out = Path(out_dir)
    masks_dir, tmp_dir = out / "masks", out / ".masks.partial"
    check_infer_out(out, result.frame_names)
    out.mkdir(parents=True, exist_ok=True)
    remove_owned_tree(tmp_dir, out)  # a killed run's leftovers
    mark_owned(tmp_dir, "infer")
    t0 = time.perf_counter()
    for name, mask in _progress(zip(result.frame_names, result.masks), progress, len(result.masks), "masks"):
        (tmp_dir / f"{name}.png").write_bytes(mask_png_bytes(mask))
    reused = is_owned(masks_dir)  # an earlier `infer` wrote this OUT: its overlay.mp4 is ours too
    remove_owned_tree(masks_dir, out)
    os.replace(tmp_dir, masks_dir)
    result.timings["write_masks_s"] = time.perf_counter() - t0
    if not overlay and reused:  # --no-overlay must not leave the previous video's overlay beside the new masks
        (out / "overlay.mp4").unlink(missing_ok=True)
    if overlay:
        t0 = time.perf_counter()
        frames = iter_frames(source)
        drawn = overlay_frames(frames, result.masks, result.answer.keyframe, result.answer.boxes,
                               result.frame_names, OverlayStyle(max_side=overlay_max_side))
        write_mp4(out / "overlay.mp4", _progress(drawn, progress, len(source), "overlay"), fps=overlay_fps)
        result.timings["overlay_s"] = time.perf_counter() - t0
    atomic_write_json(out / "result.json", result.to_json(), indent=2)
    return out


def check_infer_out(out: Path, frame_names: Sequence[str]) -> None:
    """Before anything is written: every frame name is a safe file name, and an existing OUT/masks (or its private
    partial folder) was made by `infer` (holds the marker); otherwise a `UserError` naming the folder."""
    for t, name in enumerate(frame_names):
        problem = name_problem(name)
        if problem:
            raise BadInput(out, f"frame {t}: unsafe frame name: {problem}")
    for folder in (out / "masks", out / ".masks.partial"):
        if (folder.exists() or folder.is_symlink()) and not is_owned(folder):
            raise UserError(folder, f"exists but was not written by `veason-r1 infer` (no {OWNER_MARKER} marker): "
                                    "refusing to replace it", hint="choose another --out folder")


def iter_frames(source: FrameSource):
    """Every frame in order, decoding a video file in one sequential pass (index access would re-decode)."""
    from veason_r1.data.video import Mp4Source

    if isinstance(source, Mp4Source):
        import av

        with av.open(str(source.path)) as container:
            for i, frame in enumerate(container.decode(video=0)):
                if i >= len(source):
                    break
                yield frame.to_ndarray(format="rgb24")
        return
    for i in range(len(source)):
        yield source.get(i)


def _progress(it, enabled: bool, total: int, desc: str):
    if not enabled or total < 50:  # a bar only where it helps: long videos
        return it
    from tqdm import tqdm

    return tqdm(it, total=total, desc=desc, unit="frame")


def build_engine(policy: PolicyConfig, image_size: int = IMAGE_SIZE, batch_size: int = 16,
                 num_frames: int = FRAMES.eval_frames) -> Any:
    """A generation engine for `policy` (models/config.py): "hf" (batched `generate`, left padding; CPU or GPU) or
    "vllm" (GPU nodes only). `num_frames`: the most frames one prompt shows (vLLM reserves room for them)."""
    from veason_r1.models import policy as policy_lib
    from veason_r1.models.families import family_of_folder

    model_dir = policy_lib.check_model_dir(policy.model)  # a name (`toy`) -> its folder; an incomplete one refused
    row = family_of_folder(model_dir) or DEFAULT_FAMILY
    problem = row.image_size_problem(image_size)
    if problem:  # e.g. the paper's 560 default with a Qwen3-VL folder
        raise BadInput("--image-size", f"{image_size} {problem}",
                       hint=f"{model_dir} is a {row.name} policy: give --image-size {row.default_image_size}")
    if policy.engine == "hf":
        device = policy.device
        if device is None:
            import torch

            device = "cuda" if torch.cuda.is_available() else "cpu"
        model = policy_lib.load_policy(str(model_dir), device=device, dtype=policy.dtype, fast_paths=policy.fast_paths)
        return policy_lib.HFEngine(model, image_size=image_size, batch_size=batch_size)
    if policy.engine == "vllm":
        return policy_lib.VLLMEngine(str(model_dir), image_size=image_size,
                                     tensor_parallel_size=policy.tensor_parallel_size,
                                     max_images=max(FRAMES.eval_frames, num_frames))
    raise ValueError(f"unknown engine {policy.engine!r}: choose hf or vllm")


def add_model_arguments(parser: Any, model_required: bool = True) -> None:
    """Arguments shared by `infer` and `predict`: the policy and propagator flag groups (models/config.py), sizes."""
    add_policy_flags(parser, model_required=model_required)
    add_propagator_flags(parser)
    defaults = InferenceConfig()  # the defaults live in the dataclass
    parser.add_argument("--image-size", type=policy_image_size, default=defaults.image_size,
                        help=f"policy square frame side, a multiple of the family's patch x merge "
                             f"({DEFAULT_FAMILY.factor} for Qwen2.5-VL, default: {defaults.image_size})")
    parser.add_argument("--num-frames", type=positive_int, default=defaults.num_frames,
                        help=f"frames shown to the policy (linspace; default: {defaults.num_frames})")
    parser.add_argument("--max-new-tokens", type=positive_int, default=defaults.max_new_tokens,
                        help=f"completion token limit (default: {defaults.max_new_tokens})")
    parser.add_argument("--no-progress", action="store_true")

