"""Tiny random-weight folders for the transformers trackers (`tiny-hf-sam2`, `tiny-sam3`, `tiny-edgetam`).

Why: every propagator must run through the offline pipeline tests (reward, predict, app) with no download. The
folders are written once into the cache like the tiny policy (`registry.default_cache_dir()`), then loaded as a
user's folder would be (`hf_tracker.load_tracker_model`). Random weights: their masks are noise, never a result.
`tiny-hf-sam2` is our `--sam2 tiny` (same seed) converted, so it gives the masks `tiny` gives.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

_log = logging.getLogger(__name__)

TINY_SIDE = {"hf-sam2": 128, "sam3": 112, "edgetam": 128}


# 128-d features: the trackers hard-code a 64-channel memory in their cross-attention and split each object
# pointer into hidden / 64 memory tokens; with hidden == 64 the unsplit pointer keeps an extra axis and
# `torch.cat` fails in transformers 5.5.4 (sam3_tracker_video `_process_object_pointers`), so hidden = 2 x 64.


def _sam3_config():
    from transformers import Sam3TrackerVideoConfig
    from transformers.models.sam3.configuration_sam3 import Sam3VisionConfig, Sam3ViTConfig

    side = TINY_SIDE["sam3"]
    vit = Sam3ViTConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                        image_size=side, patch_size=14, window_size=4, global_attn_indexes=[1],
                        pretrain_image_size=side)
    vision = Sam3VisionConfig(backbone_config=vit, fpn_hidden_size=128,
                              backbone_feature_sizes=[[side * 4 // 14] * 2, [side * 2 // 14] * 2, [side // 14] * 2])
    return Sam3TrackerVideoConfig(
        vision_config=vision, prompt_encoder_config={"hidden_size": 128, "image_size": side, "patch_size": 14},
        mask_decoder_config={"hidden_size": 128, "mlp_dim": 64, "iou_head_hidden_dim": 32},
        image_size=side, memory_attention_hidden_size=128, memory_attention_num_layers=1,
        memory_attention_feed_forward_hidden_size=64, memory_encoder_hidden_size=128, mask_downsampler_embed_dim=128,
        memory_fuser_embed_dim=128, memory_fuser_intermediate_dim=64, memory_fuser_num_layers=1,
    )


def _edgetam_config():
    from transformers import EdgeTamVideoConfig, TimmWrapperConfig
    from transformers.models.edgetam.configuration_edgetam import EdgeTamVisionConfig

    side = TINY_SIDE["edgetam"]
    dims = [8, 16, 32, 64]  # a 4-stage RepViT (EdgeTAM's backbone family), one block per stage
    backbone = TimmWrapperConfig(architecture="repvit_m1", do_pooling=False, model_args={
        "in_chans": 3, "features_only": True, "out_indices": [0, 1, 2, 3], "embed_dim": tuple(dims),
        "depth": (1, 1, 1, 1)})
    vision = EdgeTamVisionConfig(backbone_config=backbone, backbone_channel_list=dims[::-1], fpn_hidden_size=128,
                                 backbone_feature_sizes=[[side // 4] * 2, [side // 8] * 2, [side // 16] * 2])
    return EdgeTamVideoConfig(
        vision_config=vision, prompt_encoder_config={"hidden_size": 128, "image_size": side},
        mask_decoder_config={"hidden_size": 128, "mlp_dim": 64, "iou_head_hidden_dim": 32},
        image_size=side, memory_attention_hidden_size=128, memory_attention_num_layers=1,
        memory_attention_mlp_hidden_size=64, memory_attention_rope_feat_sizes=[side // 16] * 2,
        memory_attention_rope_k_sizes=[4, 4], perceiver_resampler_num_latents=16,
        perceiver_resampler_num_latents_2d=16, perceiver_resampler_num_layers=1, memory_encoder_hidden_size=128,
        mask_downsampler_embed_dim=128, memory_fuser_embed_dim=128, memory_fuser_intermediate_dim=64,
        memory_fuser_num_layers=1,
    )


def build_tiny_tracker(name: str, out_dir: str | Path, seed: int = 0) -> Path:
    """Write the tiny random-weight folder of tracker `name` to `out_dir` (moved in whole, never half written)."""
    import torch

    from veason_r1.models.hf_tracker import TRACKERS, offline_config

    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        if name == "hf-sam2":
            from veason_r1.models.hf_sam2_convert import convert_sam2_folder

            convert_sam2_folder("tiny", None, tmp, seed=seed)
        else:
            import transformers

            with offline_config(name):
                config = {"sam3": _sam3_config, "edgetam": _edgetam_config}[name]()
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                model = getattr(transformers, TRACKERS[name].model_class)(config)
            with offline_config(name):
                model.save_pretrained(tmp)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    _log.warning("tiny %s written to %s: RANDOM WEIGHTS (tests and demos only)", name, out)
    return out


def tiny_tracker_folder(name: str, cache_dir: Path, seed: int = 0) -> Path:
    """The cached tiny folder of tracker `name`, built on first use."""
    folder = Path(cache_dir) / "models" / f"tiny_{name.replace('-', '_')}_seed{seed}"
    if not (folder / "config.json").is_file():
        build_tiny_tracker(name, folder, seed)
    return folder


__all__ = ["TINY_SIDE", "build_tiny_tracker", "tiny_tracker_folder"]
