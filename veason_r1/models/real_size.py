"""Random-weight Qwen2.5-VL at the real 3B / 7B sizes, built offline for GPU benchmarks.

Speed and memory depend on the architecture, not on the weights, so benchmarks at real size need no download: the
config is the release's (`config.json` of Qwen2.5-VL-{3B,7B}-Instruct), the vocabulary is padded to the real row
count (embedding, LM head and logits cost what they cost), and the project's offline tokenizer/processor is used.
Nothing built here is ever a method result.
"""

from __future__ import annotations

from pathlib import Path

from veason_r1.models.tiny import TinyQwenConfig, build_config, build_processor, build_tokenizer

# Real Qwen2.5-VL sizes (config.json of the Instruct releases).
REAL_SIZES: dict[str, dict] = {
    "3b": dict(hidden_size=2048, intermediate_size=11008, num_hidden_layers=36, num_attention_heads=16,
               num_key_value_heads=2, mrope_section=[16, 24, 24], tie_word_embeddings=True, vocab_size=151936),
    "7b": dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
               num_key_value_heads=4, mrope_section=[16, 24, 24], tie_word_embeddings=False, vocab_size=152064),
}
REAL_VISION = dict(vision_depth=32, vision_hidden_size=1280, vision_intermediate_size=3420, vision_num_heads=16,
                   vision_fullatt_block_indexes=[7, 15, 23, 31])


def real_size_config(size: str = "3b", text_layers: int | None = None, vision_depth: int | None = None):
    """(transformers config, processor) of a real-size Qwen2.5-VL; `text_layers`/`vision_depth` may shrink it."""
    if size not in REAL_SIZES:
        raise ValueError(f"unknown size {size!r}: choose from {sorted(REAL_SIZES)}")
    sizes = dict(REAL_SIZES[size])
    vocab = sizes.pop("vocab_size")
    vision = dict(REAL_VISION)
    if text_layers is not None:
        sizes["num_hidden_layers"] = text_layers
    if vision_depth is not None:
        vision["vision_depth"] = vision_depth
        vision["vision_fullatt_block_indexes"] = [i for i in (7, 15, 23, 31) if i < vision_depth] or [vision_depth - 1]
    cfg = TinyQwenConfig(**sizes, **vision, initializer_range=0.02, max_position_embeddings=128000)
    tokenizer = build_tokenizer(cfg.bpe_vocab_size, seed=0)
    processor = build_processor(tokenizer)
    config = build_config(tokenizer, cfg)
    config.text_config.vocab_size = vocab
    config.vocab_size = vocab
    config.vision_config.window_size = 112
    return config, processor


def build_real_size_model(size: str = "3b", device: str = "cuda", dtype: str = "bfloat16", seed: int = 0,
                          text_layers: int | None = None, vision_depth: int | None = None):
    """(model, processor) with random weights, initialised directly on `device` in `dtype` (no CPU round trip)."""
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration

    config, processor = real_size_config(size, text_layers, vision_depth)
    torch.manual_seed(seed)
    torch_dtype = getattr(torch, dtype)
    prev = torch.get_default_dtype()
    torch.set_default_dtype(torch_dtype)
    try:
        with torch.device(device):
            model = Qwen2_5_VLForConditionalGeneration(config)
    finally:
        torch.set_default_dtype(prev)
    model.config.dtype = torch_dtype
    return model.eval(), processor


def save_real_size_policy(out_dir: str | Path, size: str = "3b", device: str = "cuda", dtype: str = "bfloat16",
                          seed: int = 0) -> Path:
    """Write a loadable random-weight policy folder (model + processor) for `load_policy` / `veason-r1 predict`."""
    import torch

    out = Path(out_dir)
    model, processor = build_real_size_model(size, device, dtype, seed)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    from veason_r1.io_utils import honour_umask

    honour_umask(out)  # safetensors writes 0600
    del model
    if str(device).startswith("cuda"):
        torch.cuda.empty_cache()
    return out


if __name__ == "__main__":  # python -m veason_r1.models.real_size OUT [3b|7b]
    import sys

    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(save_real_size_policy(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "3b", device))
