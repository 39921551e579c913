"""A `sam2`-package SAM2/SAM2.1 model -> transformers' `Sam2VideoModel` with the same weights (`hf-sam2`).

Why here: transformers 5.5.4 ships no SAM2 conversion script in its wheel, so the key mapping is written out below,
read off the two state dicts. The HF config is derived from the sam2 config we instantiate (our `tiny` / `toy` yamls
or sam2's own), so one sam2 checkpoint gives an `hf-sam2` folder with no download.

One real gap (docs/models.md): `Sam2VideoMemoryAttentionLayer` builds its memory cross-attention with `kv_in_dim=64`
hard-coded, i.e. only memory encoders with 64 output channels (every released SAM2/SAM2.1 size) fit. Smaller memories
(our `tiny`: 16, the toy: 32) are fitted by resizing those two projections after construction (`fit_memory_dim`);
the folder records it in `config.json` (`veason_r1_memory_kv_dim`) and `hf_tracker` applies it again on load.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

MEMORY_KV_KEY = "veason_r1_memory_kv_dim"  # in config.json: the memory channels when they are not 64

# (sam2 pattern, HF replacement), applied in order to each key after the MLP / Sequential renames below
_RENAMES: list[tuple[str, str]] = [
    (r"^image_encoder\.trunk\.", "vision_encoder.backbone."),
    (r"^vision_encoder\.backbone\.patch_embed\.proj\.", "vision_encoder.backbone.patch_embed.projection."),
    (r"^(vision_encoder\.backbone\.blocks\.\d+)\.norm(\d)\.", r"\1.layer_norm\2."),
    (r"^image_encoder\.neck\.convs\.(\d+)\.conv\.", r"vision_encoder.neck.convs.\1."),
    (r"^sam_prompt_encoder\.pe_layer\.positional_encoding_gaussian_matrix$",
     "prompt_encoder.shared_embedding.positional_embedding"),
    (r"^sam_prompt_encoder\.", "prompt_encoder."),
    (r"^sam_mask_decoder\.", "mask_decoder."),
    (r"\.norm_final_attn\.", ".layer_norm_final_attn."),
    (r"^(mask_decoder\.transformer\.layers\.\d+)\.norm(\d)\.", r"\1.layer_norm\2."),
    (r"^(memory_attention\.layers\.\d+)\.norm(\d)\.", r"\1.layer_norm\2."),
    (r"^memory_attention\.norm\.", "memory_attention.layer_norm."),
    (r"\.out_proj\.(weight|bias)$", r".o_proj.\1"),
    (r"^memory_encoder\.pix_feat_proj\.", "memory_encoder.feature_projection."),
    (r"^memory_encoder\.o_proj\.", "memory_encoder.projection."),
    (r"^memory_encoder\.fuser\.layers\.(\d+)\.gamma$", r"memory_encoder.memory_fuser.layers.\1.scale"),
    (r"^memory_encoder\.fuser\.layers\.(\d+)\.dwconv\.", r"memory_encoder.memory_fuser.layers.\1.depthwise_conv."),
    (r"^memory_encoder\.fuser\.layers\.(\d+)\.norm\.", r"memory_encoder.memory_fuser.layers.\1.layer_norm."),
    (r"^memory_encoder\.fuser\.layers\.(\d+)\.pwconv(\d)\.", r"memory_encoder.memory_fuser.layers.\1.pointwise_conv\2."),
    (r"^maskmem_tpos_enc$", "memory_temporal_positional_encoding"),
    (r"^no_mem_embed$", "no_memory_embedding"),
    (r"^no_mem_pos_enc$", "no_memory_positional_encoding"),
    (r"^no_obj_ptr$", "no_object_pointer"),
    (r"^no_obj_embed_spatial$", "occlusion_spatial_embedding_parameter"),
    (r"^obj_ptr_proj\.", "object_pointer_proj."),
    (r"^obj_ptr_tpos_proj\.", "temporal_positional_encoding_projection_layer."),
]

# sam2's nn.Sequential indices -> HF's named layers
_SEQUENTIALS: dict[str, dict[int, str]] = {
    "sam_prompt_encoder.mask_downscaling": {0: "prompt_encoder.mask_embed.conv1", 1: "prompt_encoder.mask_embed.layer_norm1",
                                            3: "prompt_encoder.mask_embed.conv2", 4: "prompt_encoder.mask_embed.layer_norm2",
                                            6: "prompt_encoder.mask_embed.conv3"},
    "sam_mask_decoder.output_upscaling": {0: "mask_decoder.upscale_conv1", 1: "mask_decoder.upscale_layer_norm",
                                          3: "mask_decoder.upscale_conv2"},
}


def _mlp_layer_counts(state: dict[str, Any]) -> dict[str, int]:
    """Number of linear layers of every sam2 `MLP` (a `.layers.<i>.weight` family), by its prefix."""
    counts: dict[str, int] = {}
    for key in state:
        m = re.match(r"^(.*\.(?:mlp|output_hypernetworks_mlps\.\d+|iou_prediction_head|pred_obj_score_head)"
                     r"|obj_ptr_proj)\.layers\.(\d+)\.weight$", key)
        if m:
            counts[m.group(1)] = max(counts.get(m.group(1), 0), int(m.group(2)) + 1)
    return counts


def convert_state_dict(state: dict[str, Any]) -> dict[str, Any]:
    """sam2 state dict -> `Sam2VideoModel` state dict (same tensors, HF names). Every key is placed or it fails."""
    counts = _mlp_layer_counts(state)
    down_layers = max(int(m.group(1)) for k in state
                      if (m := re.match(r"^memory_encoder\.mask_downsampler\.encoder\.(\d+)\.weight$", k)))
    out: dict[str, Any] = {}
    points = {}
    for key, value in state.items():
        new = key
        m = re.match(r"^(.*)\.layers\.(\d+)\.(weight|bias)$", key)
        if m and m.group(1) in counts:  # MLP: first -> proj_in, last -> proj_out, middle -> layers.<i-1>
            n, i = counts[m.group(1)], int(m.group(2))
            name = "proj_in" if i == 0 else "proj_out" if i == n - 1 else f"layers.{i - 1}"
            new = f"{m.group(1)}.{name}.{m.group(3)}"
        m = re.match(r"^(.*)\.(\d+)\.(weight|bias)$", key)
        if m and m.group(1) in _SEQUENTIALS:
            new = f"{_SEQUENTIALS[m.group(1)][int(m.group(2))]}.{m.group(3)}"
            out[new] = value
            continue
        m = re.match(r"^memory_encoder\.mask_downsampler\.encoder\.(\d+)\.(weight|bias)$", key)
        if m:  # conv, norm, activation per stride step, then the final 1x1 conv
            i = int(m.group(1))
            name = "final_conv" if i == down_layers else f"layers.{i // 3}.{'conv' if i % 3 == 0 else 'layer_norm'}"
            out[f"memory_encoder.mask_downsampler.{name}.{m.group(2)}"] = value
            continue
        m = re.match(r"^sam_prompt_encoder\.point_embeddings\.(\d+)\.weight$", key)
        if m:
            points[int(m.group(1))] = value
            continue
        for pattern, repl in _RENAMES:
            new = re.sub(pattern, repl, new)
        out[new] = value
        if key == "sam_prompt_encoder.pe_layer.positional_encoding_gaussian_matrix":
            out["shared_image_embedding.positional_embedding"] = value  # HF keeps two copies of one matrix
    if points:
        import torch

        out["prompt_encoder.point_embed.weight"] = torch.cat([points[i] for i in sorted(points)], dim=0)
    return out


def hf_config_from_sam2(model_cfg: dict[str, Any]):
    """A `Sam2VideoConfig` for a sam2 `model:` config (a plain dict after our overrides, OmegaConf-resolved)."""
    from transformers.models.sam2.configuration_sam2 import Sam2HieraDetConfig, Sam2VisionConfig
    from transformers.models.sam2_video.configuration_sam2_video import (
        Sam2VideoConfig,
        Sam2VideoMaskDecoderConfig,
        Sam2VideoPromptEncoderConfig,
    )

    enc, mem_att, mem_enc = model_cfg["image_encoder"], model_cfg["memory_attention"], model_cfg["memory_encoder"]
    trunk, neck = enc["trunk"], enc["neck"]
    size = int(model_cfg["image_size"])
    embed, heads = int(trunk["embed_dim"]), int(trunk["num_heads"])
    stages = list(trunk.get("stages", [2, 3, 16, 3]))
    backbone = Sam2HieraDetConfig(
        hidden_size=embed, num_attention_heads=heads, image_size=[size, size], blocks_per_stage=stages,
        embed_dim_per_stage=[embed * 2**i for i in range(len(stages))],
        num_attention_heads_per_stage=[heads * 2**i for i in range(len(stages))],
        window_size_per_stage=list(trunk.get("window_spec", [8, 4, 14, 7])),
        global_attention_blocks=list(trunk.get("global_att_blocks", [12, 16, 20])),
        window_positional_embedding_background_size=list(trunk.get("window_pos_embed_bkg_spatial_size", [14, 14])),
    )
    d_model = int(neck["d_model"])
    vision = Sam2VisionConfig(
        backbone_config=backbone, backbone_channel_list=list(neck["backbone_channel_list"]),
        backbone_feature_sizes=[[size // 4] * 2, [size // 8] * 2, [size // 16] * 2], fpn_hidden_size=d_model,
        fpn_top_down_levels=list(neck.get("fpn_top_down_levels", [2, 3])),
    )
    layer = mem_att["layer"]
    fuser = mem_enc["fuser"]
    return Sam2VideoConfig(
        vision_config=vision,
        prompt_encoder_config=Sam2VideoPromptEncoderConfig(hidden_size=d_model, image_size=size, patch_size=16),
        mask_decoder_config=Sam2VideoMaskDecoderConfig(hidden_size=d_model),
        image_size=size,
        num_maskmem=int(model_cfg.get("num_maskmem", 7)),
        memory_attention_hidden_size=int(mem_att["d_model"]),
        memory_attention_num_layers=int(mem_att["num_layers"]),
        memory_attention_num_attention_heads=int(layer["self_attention"].get("num_heads", 1)),
        memory_attention_feed_forward_hidden_size=int(layer["dim_feedforward"]),
        memory_attention_rope_theta=int(layer["self_attention"].get("rope_theta", 10000)),
        memory_attention_rope_feat_sizes=list(layer["self_attention"]["feat_sizes"]),
        memory_encoder_hidden_size=int(mem_enc.get("in_dim", 256)),
        memory_encoder_output_channels=int(mem_enc["out_dim"]),
        mask_downsampler_embed_dim=int(mem_enc["mask_downsampler"].get("embed_dim", 256)),
        memory_fuser_num_layers=int(fuser["num_layers"]),
        memory_fuser_embed_dim=int(fuser["layer"]["dim"]),
        memory_fuser_intermediate_dim=4 * int(fuser["layer"]["dim"]),
    )


def fit_memory_dim(model, kv_dim: int) -> None:
    """Resize the memory cross-attention's key/value projections to `kv_dim` input channels (HF hard-codes 64)."""
    from torch import nn

    for layer in model.memory_attention.layers:
        attn = layer.cross_attn_image
        if attn.kv_in_dim == kv_dim:
            continue
        attn.kv_in_dim = kv_dim
        attn.k_proj = nn.Linear(kv_dim, attn.internal_dim)
        attn.v_proj = nn.Linear(kv_dim, attn.internal_dim)


def sam2_model_config(name: str) -> dict[str, Any]:
    """The resolved sam2 `model:` config of a propagator name as `build_sam2_model` builds it."""
    from omegaconf import OmegaConf

    from veason_r1.models.sam2 import VIDEO_PREDICTOR_OVERRIDES, _config_path

    path, overrides = _config_path(name)
    cfg = OmegaConf.load(path)
    for key, value in {**overrides, **VIDEO_PREDICTOR_OVERRIDES}.items():
        OmegaConf.update(cfg, key, value, force_add=True)
    OmegaConf.resolve(cfg)
    return OmegaConf.to_container(cfg.model)


def sam2_to_hf(name: str, checkpoint: str | Path | None = None, seed: int = 0):
    """(`Sam2VideoModel`, memory kv dim or None) with the weights of `build_sam2_model(name, checkpoint, seed=seed)`."""
    from transformers import Sam2VideoModel

    from veason_r1.models.sam2 import build_sam2_model

    source_model = build_sam2_model(name, None if checkpoint is None else str(checkpoint), "cpu", seed)
    model_cfg = sam2_model_config(name)
    config = hf_config_from_sam2(model_cfg)
    model = Sam2VideoModel(config)
    kv = int(model_cfg["memory_encoder"]["out_dim"])
    if kv != 64:
        fit_memory_dim(model, kv)
    state = convert_state_dict(source_model.state_dict())
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"sam2 -> hf-sam2 for {name!r}: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return model.eval(), (kv if kv != 64 else None)


def convert_sam2_folder(name: str, checkpoint: str | Path | None, out_dir: str | Path, seed: int = 0) -> Path:
    """Write an `hf-sam2` folder (config.json + model.safetensors) from a sam2 config name and checkpoint."""
    model, kv = sam2_to_hf(name, checkpoint, seed)
    out = Path(out_dir)
    model.save_pretrained(out)
    if kv is not None:
        path = out / "config.json"
        doc = json.loads(path.read_text())
        doc[MEMORY_KV_KEY] = kv
        path.write_text(json.dumps(doc, indent=2))
    return out


def cached_conversion(name: str, cache_dir: str | Path) -> Path:
    """`hf-sam2` folder of a named sam2 propagator with its own weights (the shipped `toy`), converted into the cache
    on first use (written to a temporary folder, then moved in whole)."""
    import shutil
    import tempfile

    out = Path(cache_dir) / "models" / f"{name}_hf_sam2"
    if (out / "config.json").is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        convert_sam2_folder(name, None, tmp)
        if not (out / "config.json").is_file():
            shutil.rmtree(out, ignore_errors=True)
            tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def main(argv: list[str] | None = None) -> int:
    """python -m veason_r1.models.hf_sam2_convert NAME CHECKPOINT OUT: a sam2 checkpoint -> an `hf-sam2` folder."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m veason_r1.models.hf_sam2_convert", description=main.__doc__)
    parser.add_argument("name", help="the sam2 config: sam2.1_hiera_{t,s,b+,l}, sam2_hiera_*, tiny, toy or a yaml")
    parser.add_argument("checkpoint", help="its sam2 checkpoint (.pt); '-' for the named propagator's own / random")
    parser.add_argument("out", help="the folder to write (config.json + model.safetensors)")
    args = parser.parse_args(argv)
    out = convert_sam2_folder(args.name, None if args.checkpoint == "-" else args.checkpoint, args.out)
    print(f"hf-sam2 folder written: {out} (use --sam2 hf-sam2 --sam2-checkpoint {out})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


__all__ = ["MEMORY_KV_KEY", "cached_conversion", "convert_sam2_folder", "convert_state_dict", "fit_memory_dim", "hf_config_from_sam2",
           "sam2_model_config", "sam2_to_hf"]
