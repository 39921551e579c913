"""transformers' video trackers behind the propagator seam: `hf-sam2` (Sam2VideoModel), `sam3`
(Sam3TrackerVideoModel), `edgetam` (EdgeTamVideoModel), all from the pinned transformers.

Why one module: the three share one inference API (an inference session holding frames, a feature cache and
per-object memories; `forward` on one frame; `propagate_in_video_iterator`), so one propagator drives them and
only the model class, the session class and the pixel normalisation differ (`TRACKERS`).

What it does, as `SAM2Propagator` does: frames from memory, resized like sam2's loader (PIL bilinear to the model
side); the frame features of a video computed once, in batches, and put into the session's cache for every prompt;
box prompts on the keyframe; propagation to the last frame then back to the first in one session (the backward pass
sees the forward pass's memories); low-res logits upsampled bilinearly to the video size and thresholded at 0.
All objects of all prompts that share a keyframe are added to one session and advance together frame by frame;
identical (keyframe, box) objects are tracked once. The HF `forward` still runs the mask decoder one object at a
time (its own note: per-object prompts differ) and batches only the memory encoder across objects, so this is one
pass over the frames per keyframe, not one batched matmul per frame as in our SAM2 engine.

Weights come from a local folder (config.json + safetensors): `from_pretrained(..., local_files_only=True)`, so
nothing downloads; a folder written by `hf_sam2_convert` with a non-64 memory is rebuilt and loaded directly.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from veason_r1.models.propagator import PropagatorBase
from veason_r1.models.sam2_frames import IMG_MEAN, IMG_STD, as_frame_list, check_boxes, resize_frames


@dataclass(frozen=True)
class Tracker:
    """One transformers video tracker: its classes (by name, imported late) and its pixel normalisation."""

    name: str
    model_class: str
    config_class: str
    session_class: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    label: str


TRACKERS: dict[str, Tracker] = {
    "hf-sam2": Tracker("hf-sam2", "Sam2VideoModel", "Sam2VideoConfig", "Sam2VideoInferenceSession",
                       IMG_MEAN, IMG_STD, "SAM2/SAM2.1 through transformers (Sam2VideoModel)"),
    # Sam3's image processor normalises with IMAGENET_STANDARD_MEAN/STD (0.5, 0.5, 0.5)
    "sam3": Tracker("sam3", "Sam3TrackerVideoModel", "Sam3TrackerVideoConfig", "Sam3TrackerVideoInferenceSession",
                    (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "SAM 3 tracker (Sam3TrackerVideoModel)"),
    "edgetam": Tracker("edgetam", "EdgeTamVideoModel", "EdgeTamVideoConfig", "EdgeTamVideoInferenceSession",
                       IMG_MEAN, IMG_STD, "EdgeTAM (EdgeTamVideoModel)"),
}


def _cls(name: str):
    import transformers

    return getattr(transformers, name)


@contextlib.contextmanager
def offline_config(tracker_name: str):
    """EdgeTAM configs build and save offline. In transformers 5.5.4 a default `EdgeTamVisionConfig()` fetches its
    backbone config from the Hub (timm/repvit_m1.dist_in1k), and defaults are built behind the scenes: for the
    repr in a type-validation message when `vision_config` is set, and as the baseline of `save_pretrained`'s diff.
    For the duration, a default gets the same backbone described locally (timm's repvit_m1, feature maps only)."""
    if tracker_name != "edgetam":
        yield
        return
    from transformers import TimmWrapperConfig
    from transformers.models.edgetam.configuration_edgetam import EdgeTamVisionConfig

    saved = EdgeTamVisionConfig.__post_init__

    def post_init(self, **kwargs):
        if self.backbone_config is None:
            self.backbone_config = TimmWrapperConfig(architecture="repvit_m1.dist_in1k", do_pooling=False, model_args={
                "in_chans": 3, "features_only": True, "out_indices": [0, 1, 2, 3]})
        saved(self, **kwargs)

    EdgeTamVisionConfig.__post_init__ = post_init
    try:
        yield
    finally:
        EdgeTamVisionConfig.__post_init__ = saved


def load_tracker_model(tracker: Tracker, folder: str | Path):
    """The model in `folder` (a local HF folder; nothing is downloaded). One-line errors for a wrong folder."""
    from veason_r1.errors import BadInput, MissingInput
    from veason_r1.models.hf_sam2_convert import MEMORY_KV_KEY, fit_memory_dim

    folder = Path(folder).expanduser()
    if not (folder / "config.json").is_file():
        raise MissingInput(folder, f"{tracker.name}: not a model folder (no config.json)",
                           hint="give the local folder of the downloaded weights (docs/models.md)")
    doc = json.loads((folder / "config.json").read_text())
    if MEMORY_KV_KEY in doc:  # our conversion of a small sam2 model: rebuild with its memory width, load as is
        from safetensors.torch import load_file

        config = _cls(tracker.config_class).from_pretrained(str(folder), local_files_only=True)
        model = _cls(tracker.model_class)(config)
        fit_memory_dim(model, int(doc[MEMORY_KV_KEY]))
        model.load_state_dict(load_file(str(folder / "model.safetensors")), strict=True)
        return model.eval()
    try:
        with offline_config(tracker.name):
            return _cls(tracker.model_class).from_pretrained(str(folder), local_files_only=True).eval()
    except (OSError, ValueError, KeyError) as e:
        raise BadInput(folder, f"{tracker.name}: the folder does not load ({str(e).splitlines()[0][:200]})") from None


class HFTrackerPropagator(PropagatorBase):
    """Box prompts on a keyframe -> masks on every frame (forward then backward) with a transformers video tracker.

    Thread safe: one lock guards the model (verl runs reward functions in a thread pool).
    """

    def __init__(self, model, tracker: Tracker, *, offload: bool = False, progress: bool = False,
                 max_batch_objects: int = 64, precision: str = "auto", encode_batch: int = 16):
        import torch

        if precision not in ("auto", "fp32", "bf16"):
            raise ValueError(f"precision: {precision!r} is not one of 'auto', 'fp32', 'bf16'")
        self.model = model
        self.tracker = tracker
        self.device = next(model.parameters()).device
        self.bf16 = self.device.type == "cuda" and precision != "fp32"
        self.offload = offload
        self.progress = progress
        self.max_batch_objects = max(1, int(max_batch_objects))
        self.encode_batch = max(1, int(encode_batch))
        self.profile: dict[str, float] | None = None
        self.lock = threading.RLock()
        self._mean = torch.tensor(tracker.mean).view(1, 3, 1, 1)
        self._std = torch.tensor(tracker.std).view(1, 3, 1, 1)

    @property
    def image_size(self) -> int:
        size = self.model.config.image_size
        return int(size[0] if isinstance(size, (list, tuple)) else size)

    def _autocast(self):
        import torch

        if not self.bf16:
            return contextlib.nullcontext()
        return torch.autocast("cuda", dtype=torch.bfloat16)

    # -- one video -----------------------------------------------------------------------------------------------

    def encode(self, frames: Any, *, cache_frames: int = 64) -> Any:
        """An inference session holding the video's normalised frames and every frame's features (computed once)."""
        if isinstance(frames, _Video):
            return frames
        import torch

        arrays = as_frame_list(frames)
        height, width = arrays[0].shape[:2]
        storage = torch.device("cpu") if self.offload else self.device
        with self._stage("preprocess"):
            pixels = torch.from_numpy(np.stack(resize_frames(arrays, self.image_size))).permute(0, 3, 1, 2)
            pixels = ((pixels.float() / 255.0) - self._mean) / self._std
        session = _cls(self.tracker.session_class)(
            video=pixels, video_height=height, video_width=width, inference_device=self.device,
            inference_state_device=storage, video_storage_device=storage, dtype=torch.float32,
            max_vision_features_cache_size=len(arrays),
        )
        with self.lock, self._stage("encode"), torch.inference_mode(), self._autocast():
            for start in range(0, len(arrays), self.encode_batch):
                batch = pixels[start : start + self.encode_batch].to(self.device)
                out = self.model.get_image_features(batch, return_dict=True)
                for i in range(batch.shape[0]):  # (HW, B, C) per level -> one frame's (HW, 1, C)
                    session.cache.cache_vision_features(start + i, {
                        "vision_feats": [f[:, i : i + 1] for f in out.fpn_hidden_states],
                        "vision_pos_embeds": [p[:, i : i + 1] for p in out.fpn_position_encoding],
                    })
        return _Video(session, len(arrays), height, width)

    def propagate(self, frames, keyframe_index: int, boxes: np.ndarray, *, progress: bool = False) -> np.ndarray:
        return self.propagate_many(frames, [(keyframe_index, boxes)])[0]

    def propagate_many(self, frames, prompts: Sequence[tuple[int, np.ndarray]]) -> list[np.ndarray]:
        """Union masks (K, H, W) per prompt on one video: one encoding, objects sharing a keyframe tracked together,
        identical objects once."""
        import torch

        video = self.encode(frames)
        plan, unique = [], {}
        for keyframe, boxes in prompts:
            boxes = check_boxes(boxes)
            keyframe = int(keyframe)
            if not 0 <= keyframe < video.num_frames:
                raise ValueError(f"keyframe_index {keyframe} is outside the video's {video.num_frames} frames")
            keys = [(keyframe, tuple(b)) for b in boxes.tolist()]
            for key in keys:
                unique.setdefault(key, None)
            plan.append(keys)
        by_frame: dict[int, list[tuple]] = {}
        for key in unique:
            by_frame.setdefault(key[0], []).append(key)
        with self.lock:
            for keyframe, keys in sorted(by_frame.items()):
                for start in range(0, len(keys), self.max_batch_objects):
                    chunk = keys[start : start + self.max_batch_objects]
                    masks = self._track(video, keyframe, [k[1] for k in chunk])
                    for key, m in zip(chunk, masks):
                        unique[key] = m
        out = []
        for keys in plan:
            union = torch.zeros((video.num_frames, video.height, video.width), dtype=torch.bool)
            for key in keys:
                union |= unique[key]
            out.append(union.numpy())
        return out

    def _track(self, video: _Video, keyframe: int, boxes: list[tuple]) -> Any:
        """(N, K, H, W) bool masks (host) of `boxes` prompted on `keyframe`, forward then backward in one session."""
        import torch
        import torch.nn.functional as F

        session, size = video.session, self.image_size
        session.reset_tracking_data()  # memories of the last keyframe's objects go, the feature cache stays
        scale = torch.tensor([size / video.width, size / video.height] * 2, dtype=torch.float32)
        for obj_id, box in enumerate(boxes):
            idx = session.obj_id_to_idx(obj_id)
            coords = (torch.tensor(box, dtype=torch.float32) * scale).reshape(1, 1, 2, 2)
            session.add_point_inputs(idx, keyframe, {"point_coords": coords,
                                                     "point_labels": torch.tensor([[[2, 3]]], dtype=torch.int32)})
        session.obj_with_new_inputs = list(range(len(boxes)))
        masks = torch.zeros((len(boxes), video.num_frames, video.height, video.width), dtype=torch.bool)

        def emit(out) -> None:
            logits = out.pred_masks.float()  # (N, 1, h, w) low-res logits
            if logits.shape[-2:] != (video.height, video.width):
                logits = F.interpolate(logits, size=(video.height, video.width), mode="bilinear", align_corners=False)
            masks[:, out.frame_idx] = (logits[:, 0] > 0).cpu()

        with self._stage("track"), torch.inference_mode(), self._autocast():
            emit(self.model(inference_session=session, frame_idx=keyframe))
            for reverse in (False, True):
                for out in self.model.propagate_in_video_iterator(session, start_frame_idx=keyframe, reverse=reverse,
                                                                  show_progress_bar=self.progress):
                    if out.frame_idx != keyframe:
                        emit(out)
        session.reset_tracking_data()
        return masks


@dataclass
class _Video:
    """An encoded video: the HF inference session (frames + feature cache) and the original frame size."""

    session: Any
    num_frames: int
    height: int
    width: int


def load_hf_tracker(name: str, folder: str | Path, device: str | None = None, *, offload: bool = False,
                    progress: bool = False, max_batch_objects: int = 64, precision: str = "auto",
                    seed: int = 0) -> HFTrackerPropagator:
    """A ready propagator for tracker `name` ("hf-sam2" | "sam3" | "edgetam") from a local folder: CUDA when
    visible (bf16 autocast unless precision="fp32"), else CPU fp32. `seed` is unused (the weights are loaded)."""
    import torch

    tracker = TRACKERS[name]
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model = load_tracker_model(tracker, folder).to(device)
    return HFTrackerPropagator(model, tracker, offload=offload, progress=progress,
                               max_batch_objects=max_batch_objects, precision=precision)


__all__ = ["TRACKERS", "HFTrackerPropagator", "Tracker", "load_hf_tracker", "load_tracker_model"]
