"""The shipped toy checkpoints, by name: `--model toy` (a Qwen2.5-VL folder) and `--sam2 toy` (a SAM2 `.pt`).

They are ordinary checkpoints read by the ordinary loaders (`models.policy.load_policy`, `models.sam2.load_sam2`);
this module only knows where they live and what architecture they have. `veason-r1 make-toy` rebuilds them
(`veason_r1/toy/`); `manifest.json` beside each records its sha256, data seed, steps and held-out metrics.
"""

from __future__ import annotations

from pathlib import Path

from veason_r1.models.tiny import TinyQwenConfig

TOY_ROOT = Path(__file__).resolve().parent.parent / "assets" / "toy"
TOY_POLICY_DIR = TOY_ROOT / "policy"
TOY_SAM2_CHECKPOINT = TOY_ROOT / "sam2" / "sam2_toy.pt"
TOY_NAME = "toy"

# The toy SAM2's architecture is veason_r1/models/configs/sam2.1_toy.yaml (next to the tiny test config).


# ~5.6M parameters (~11 MB in bf16): 4 text layers of 256 (GQA 4/2 heads of 64), a depth-4 vision tower of 128, the
# integers 0-999 as tokens.
# RoPE base 10, not Qwen's 1e6: the language model knows where an image token sits only through M-RoPE, whose width
# section always gets the slowest of the head's 32 frequencies. With base 1e6 that section turns by at most 1.8e-4
# rad per image column (height 0.032), so columns are indistinguishable and a toy model cannot localise; with base
# 10 the width section turns 0.11-0.24 rad per column, the height section 0.25-0.56, the temporal/text one 0.6-1.0
# (docs/toy_reproduction.md).
TOY_ROPE_THETA = 10.0
TOY_POLICY_CONFIG = TinyQwenConfig(hidden_size=256, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
                                   num_key_value_heads=2, mrope_section=[8, 12, 12], rope_theta=TOY_ROPE_THETA,
                                   vision_depth=4, vision_hidden_size=128, vision_intermediate_size=256,
                                   vision_num_heads=2, vision_fullatt_block_indexes=[1, 3], initializer_range=0.02,
                                   number_tokens=1000)


def is_toy(name: str | Path | None) -> bool:
    return str(name) == TOY_NAME


def toy_policy_dir() -> Path:
    """The shipped toy base policy folder (a full Qwen2.5-VL folder: config, safetensors, processor)."""
    if not (TOY_POLICY_DIR / "config.json").is_file():
        raise FileNotFoundError(
            f"the toy policy is not in this checkout ({TOY_POLICY_DIR}); rebuild it with `veason-r1 make-toy policy`"
        )
    return TOY_POLICY_DIR


def toy_sam2_checkpoint() -> Path:
    if not TOY_SAM2_CHECKPOINT.is_file():
        raise FileNotFoundError(
            f"the toy SAM2 is not in this checkout ({TOY_SAM2_CHECKPOINT}); rebuild it with `veason-r1 make-toy sam2`"
        )
    return TOY_SAM2_CHECKPOINT
