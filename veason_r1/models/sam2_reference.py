"""The stock sam2 path on in-memory frames: the reference that `SAM2Propagator`'s batched tracking must match.

`propagate_reference` runs sam2 1.1.0's own `SAM2VideoPredictor` API (one inference state, `add_new_points_or_box` per
object, `propagate_in_video` forward then reverse) on the frames an `EncodedVideo` holds, so agreement tests and the
benchmarks compare against the authors' way without writing JPEG folders. Stock sam2 stores `maskmem_features` as
bf16 even in fp32 runs; on CPU (no autocast) `stock_fp32_memory_patch` casts them back when memory attention reads
them, the same cast the batched path applies (otherwise an fp32 CPU run fails with a dtype mismatch).
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from collections import OrderedDict
from typing import Any

import numpy as np

from veason_r1.models.sam2_frames import EncodedVideo, check_boxes


def propagate_reference(propagator, frames, keyframe_index: int, boxes: np.ndarray, per_object: bool = False):
    """The stock sam2 API on one fresh inference state (add_new_points_or_box per object, then propagate_in_video
    forward and reverse) with `propagator`'s model, device and precision: the authors' way, for agreement tests and
    the benchmarks. (K, H, W) union masks, or (N, K, H, W) per object."""
    import torch

    video = propagator.encode(frames)
    boxes = check_boxes(boxes)
    model = propagator.model
    per = np.zeros((len(boxes), video.num_frames, video.height, video.width), dtype=bool)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if propagator.bf16 else contextlib.nullcontext()
    with propagator.lock, torch.inference_mode(), autocast, stock_fp32_memory_patch(model, propagator.device), quiet():
        state = stock_inference_state(model, video)
        for i, b in enumerate(boxes.tolist()):
            model.add_new_points_or_box(state, frame_idx=int(keyframe_index), obj_id=i, box=np.asarray(b, np.float32))
        for reverse in (False, True):
            for t, _, masks in model.propagate_in_video(state, reverse=reverse):
                per[:, t] = (masks[:, 0] > 0).cpu().numpy()
    return per if per_object else per.any(axis=0)


def stock_inference_state(model, video: EncodedVideo) -> dict:
    """The dict `SAM2VideoPredictor.init_state` builds (sam2 1.1.0), from in-memory frames instead of a folder."""
    import torch

    state: dict[str, Any] = {
        "images": video.stock_images,
        "num_frames": video.num_frames,
        "offload_video_to_cpu": False,
        "offload_state_to_cpu": False,
        "video_height": video.height,
        "video_width": video.width,
        "device": model.device,
        "storage_device": model.device,
        "point_inputs_per_obj": {},
        "mask_inputs_per_obj": {},
        "cached_features": {},
        "constants": {},
        "obj_id_to_idx": OrderedDict(),
        "obj_idx_to_id": OrderedDict(),
        "obj_ids": [],
        "output_dict_per_obj": {},
        "temp_output_dict_per_obj": {},
        "frames_tracked_per_obj": {},
    }
    with torch.inference_mode():
        model._get_image_feature(state, frame_idx=0, batch_size=1)
    return state


@contextlib.contextmanager
def quiet():
    """Silence stock tqdm bars and the missing-CUDA-extension warning of hole filling."""
    import sam2.sam2_video_predictor as svp

    original = svp.tqdm
    svp.tqdm = functools.partial(original, disable=True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        svp.tqdm = original


@contextlib.contextmanager
def stock_fp32_memory_patch(model, device):
    """On CPU (no autocast) make the stock path cast stored bf16 memories back to fp32 when it reads them."""
    import torch

    if device.type == "cuda" and torch.is_autocast_enabled("cuda"):
        yield
        return
    original = model.memory_attention.forward

    def forward(curr, memory, curr_pos=None, memory_pos=None, num_obj_ptr_tokens=0, **kw):
        dtype = curr[0].dtype if isinstance(curr, list) else curr.dtype
        return original(curr=curr, memory=memory.to(dtype), curr_pos=curr_pos,
                        memory_pos=memory_pos.to(dtype) if memory_pos is not None else None,
                        num_obj_ptr_tokens=num_obj_ptr_tokens, **kw)

    model.memory_attention.forward = forward
    try:
        yield
    finally:
        del model.memory_attention.forward
