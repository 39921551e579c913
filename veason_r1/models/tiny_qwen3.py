"""Tiny random-weight Qwen3-VL and Qwen3.5 folders, built offline, so the pipeline tests run over every family.

Same idea as `models/tiny.py` (whose offline byte-level BPE and Qwen added tokens they reuse): the real classes
(`Qwen3VLForConditionalGeneration` / `Qwen3_5ForConditionalGeneration`, `Qwen3VLProcessor`), the real patch 16 /
merge 2 / temporal patch 2 from the family row (a 640 x 640 frame is still 400 visual tokens), smaller sizes. Their
outputs are random: pipeline tests only, never method results.

The chat template is the Qwen Instruct layout for what the recipe sends (a system turn, a user turn of text and
images, the assistant header): `<|im_start|>role\\n...<|im_end|>\\n`, each image `<|vision_start|><|image_pad|>
<|vision_end|>`, no default system turn and no thinking preamble (LLaMA-Factory's `*_nothink` templates write the
same tokens, so SFT and generation agree).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from veason_r1.models.families import QWEN3_5, QWEN3_VL, PolicyFamily
from veason_r1.models.tiny import QWEN_ADDED_TOKENS, QWEN_EXTRA_SPECIAL_TOKENS, build_tokenizer

QWEN3_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
HALF = [0.5, 0.5, 0.5]  # Qwen3-VL's image mean and std


def build_processor(tokenizer, row: PolicyFamily):
    from transformers import Qwen3VLProcessor
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor

    common = {"patch_size": row.patch_size, "temporal_patch_size": 2, "merge_size": row.merge_size,
              "image_mean": HALF, "image_std": HALF, "do_rescale": True, "rescale_factor": 1 / 255,
              "do_normalize": True, "do_convert_rgb": True}
    image_processor = Qwen2VLImageProcessor(min_pixels=row.factor ** 2, max_pixels=16384 * row.factor ** 2, **common)
    video_processor = Qwen3VLVideoProcessor(**common)
    return Qwen3VLProcessor(image_processor=image_processor, tokenizer=tokenizer, video_processor=video_processor,
                            chat_template=QWEN3_CHAT_TEMPLATE)


def build_config(tokenizer, row: PolicyFamily):
    """The family's config class with special token ids matching `tokenizer` (vocab padded to a multiple of 64)."""
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t, _ in QWEN_ADDED_TOKENS}
    vocab_size = ((len(tokenizer) + 63) // 64) * 64
    text = {"vocab_size": vocab_size, "hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 32, "max_position_embeddings": 32768,
            "rms_norm_eps": 1e-6, "initializer_range": 0.05, "tie_word_embeddings": False,
            "rope_parameters": {"rope_type": "default", "rope_theta": 5000000.0, "mrope_section": [4, 6, 6],
                                "mrope_interleaved": True},
            "bos_token_id": ids["<|endoftext|>"], "eos_token_id": ids["<|im_end|>"],
            "pad_token_id": ids["<|endoftext|>"]}
    vision = {"depth": 2, "hidden_size": 64, "intermediate_size": 128, "num_heads": 2, "in_channels": 3,
              "patch_size": row.patch_size, "spatial_merge_size": row.merge_size, "temporal_patch_size": 2,
              "out_hidden_size": 128, "num_position_embeddings": 2304, "initializer_range": 0.05}
    tokens = {"image_token_id": ids["<|image_pad|>"], "video_token_id": ids["<|video_pad|>"],
              "vision_start_token_id": ids["<|vision_start|>"], "vision_end_token_id": ids["<|vision_end|>"],
              "tie_word_embeddings": False}
    if row is QWEN3_VL:
        from transformers import Qwen3VLConfig

        return Qwen3VLConfig(text_config=text, vision_config={**vision, "deepstack_visual_indexes": [0]}, **tokens)
    if row is QWEN3_5:
        from transformers import Qwen3_5Config

        # hybrid attention: one linear-attention (Gated DeltaNet) layer, one full-attention layer, as the real 3:1
        text.update(layer_types=["linear_attention", "full_attention"], linear_num_key_heads=2,
                    linear_num_value_heads=4, linear_key_head_dim=32, linear_value_head_dim=32,
                    linear_conv_kernel_dim=4)
        text["rope_parameters"] = {**text["rope_parameters"], "partial_rotary_factor": 0.5, "mrope_section": [2, 3, 3]}
        return Qwen3_5Config(text_config=text, vision_config=vision, **tokens)
    raise ValueError(f"no tiny builder for {row.name}")


def _make(row: PolicyFamily, out_dir, seed: int = 0) -> Path:
    import importlib

    import torch
    from transformers import GenerationConfig

    tokenizer = build_tokenizer(3000, seed=seed)
    processor = build_processor(tokenizer, row)
    config = build_config(tokenizer, row)
    model_class = getattr(importlib.import_module("transformers"), row.hf_class)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_class(config).eval()
    stop = [tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.convert_tokens_to_ids("<|endoftext|>")]
    model.generation_config = GenerationConfig(bos_token_id=stop[1], pad_token_id=stop[1], eos_token_id=stop,
                                               do_sample=False)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save_pretrained(tmp)
    processor.save_pretrained(tmp)
    cfg = json.loads((tmp / "tokenizer_config.json").read_text())
    cfg.update(additional_special_tokens=QWEN_EXTRA_SPECIAL_TOKENS, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    (tmp / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2))
    (tmp / "tiny_config.json").write_text(json.dumps({"seed": seed, "family": row.name}, indent=2))
    for f in tmp.iterdir():
        f.replace(out / f.name)
    tmp.rmdir()
    return out


def make_tiny_qwen3_vl(out_dir, seed: int = 0) -> Path:
    return _make(QWEN3_VL, out_dir, seed)


def make_tiny_qwen3_5(out_dir, seed: int = 0) -> Path:
    return _make(QWEN3_5, out_dir, seed)


__all__ = ["QWEN3_CHAT_TEMPLATE", "make_tiny_qwen3_5", "make_tiny_qwen3_vl"]
