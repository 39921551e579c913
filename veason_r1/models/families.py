"""The policy-family table: one row per VLM generation the recipe runs on (EasyR1-style).

Every family-specific number or name (the patch rule, visual tokens per frame, the recipe's frame size, the
LLaMA-Factory template, the HF class, the box convention) is read from a row here and typed nowhere else
(tests/test_single_source.py checks). Adding a family is one row + its tiny builder (docs/extending.md).

Conventions were read from the pinned sources: transformers 5.5.4 `models/<family>/configuration_*.py` (patch size,
spatial merge), LLaMA-Factory 0.9.5 `data/template.py` (template names), and the families' grounding conventions
(Qwen2.5-VL answers absolute pixels of the frame it was shown; Qwen3-VL and Qwen3.5 answer on a relative 0-1000 grid).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class PolicyFamily:
    """One VLM generation. Frames are squares of `image_size` (aspect not kept) so each stays unresized by the
    processor when its side is a multiple of `factor` = patch x merge."""

    name: str  # the name users give (`--set model.family=...`), equal to the config's model_type
    model_type: str  # config.json's `model_type`
    hf_class: str  # the transformers class that loads a folder of this family
    patch_size: int
    merge_size: int  # spatial merge: merge x merge patches become one visual token
    default_image_size: int  # the recipe's frame side for this family (~400 visual tokens per frame)
    sft_template: str  # LLaMA-Factory template for SFT export / training
    box_grid: int | None  # None: boxes in absolute pixels of the shown frame; N: relative 0..N grid
    # The local trainer's log-prob forward passes the processor's `mm_token_type_ids`, so it scores rollouts with
    # the positions generation used (M-RoPE). Every family needs it: without them Qwen3-VL / Qwen3.5 raise, and
    # transformers 5.5.4 silently gives Qwen2.5-VL 1-D positions, i.e. GRPO then optimised another model than the
    # one that sampled (tests/test_rl_local.py). A field so a future family without token types can say so.
    forward_token_types: bool = True
    tiny_builder: str = ""  # "module:function(out_dir, seed) -> Path" of its random-weight tiny folder ("" = none)
    notes: str = ""  # verl / vLLM support, what the pinned set lacks

    @property
    def factor(self) -> int:
        return self.patch_size * self.merge_size

    def image_size_problem(self, image_size: int) -> str | None:
        """Why `image_size` cannot be this family's frame side (None when it can)."""
        if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size <= 0 \
                or image_size % self.factor:
            return (f"must be a positive multiple of {self.factor} ({self.name}: patch {self.patch_size} x merge "
                    f"{self.merge_size}), e.g. {self.default_image_size}")
        return None

    def check_image_size(self, image_size: int) -> int:
        problem = self.image_size_problem(image_size)
        if problem:
            raise ValueError(f"image_size {image_size!r}: {problem}")
        return image_size

    def pixel_bounds(self, image_size: int) -> dict[str, int]:
        """min_pixels = max_pixels = S*S: the processor's smart_resize then keeps an S x S frame as it is."""
        self.check_image_size(image_size)
        return {"min_pixels": image_size * image_size, "max_pixels": image_size * image_size}

    def grid_side(self, image_size: int) -> int:
        """Patches per side (the processor's image_grid_thw is [1, side, side] per frame)."""
        return self.check_image_size(image_size) // self.patch_size

    def visual_tokens_per_frame(self, image_size: int) -> int:
        """Tokens one S x S frame becomes after merging: (S / factor)^2."""
        return (self.check_image_size(image_size) // self.factor) ** 2

    # -- the box convention: the reward's GT, the SFT targets and the parser all go through these two ------------

    def to_answer_boxes(self, boxes: Sequence[Sequence[float]], image_size: int) -> list[list[float]]:
        """Boxes in pixels of the S x S frame -> the family's answer convention (identity for absolute pixels)."""
        if self.box_grid is None:
            return [list(b) for b in boxes]
        scale = self.box_grid / float(image_size)
        return [[float(v) * scale for v in b] for b in boxes]

    def from_answer_boxes(self, boxes: Sequence[Sequence[float]], image_size: int) -> list[list[float]]:
        """The family's answer convention -> pixels of the S x S frame (identity for absolute pixels)."""
        if self.box_grid is None:
            return [list(b) for b in boxes]
        scale = float(image_size) / self.box_grid
        return [[float(v) * scale for v in b] for b in boxes]

    def answer_extent(self, image_size: int) -> int:
        """The largest coordinate an answer box may have (the frame side, or the grid)."""
        return image_size if self.box_grid is None else self.box_grid


QWEN2_5_VL = PolicyFamily(
    name="qwen2_5_vl", model_type="qwen2_5_vl", hf_class="Qwen2_5_VLForConditionalGeneration",
    patch_size=14, merge_size=2, default_image_size=560, sft_template="qwen2_vl", box_grid=None,
    tiny_builder="veason_r1.models.tiny:make_tiny_qwen",
    notes="the paper's family; verl 0.9.1 and vLLM 0.24 support it; HF fast paths in models/fast_qwen.py",
)
QWEN3_VL = PolicyFamily(
    name="qwen3_vl", model_type="qwen3_vl", hf_class="Qwen3VLForConditionalGeneration",
    patch_size=16, merge_size=2, default_image_size=640, sft_template="qwen3_vl_nothink", box_grid=1000,
    tiny_builder="veason_r1.models.tiny_qwen3:make_tiny_qwen3_vl",
    notes="640 x 640 keeps 400 visual tokens per frame (the paper's 560 for Qwen2.5-VL); Instruct checkpoints use "
          "the nothink template (the recipe writes its own <think>); verl 0.9.1 patches it, vLLM 0.24 serves it; no "
          "HF fast paths here (transformers' own code runs)",
)
QWEN3_5 = PolicyFamily(
    name="qwen3_5", model_type="qwen3_5", hf_class="Qwen3_5ForConditionalGeneration",
    patch_size=16, merge_size=2, default_image_size=640, sft_template="qwen3_5_nothink", box_grid=1000,
    tiny_builder="veason_r1.models.tiny_qwen3:make_tiny_qwen3_5",
    notes="natively multimodal, hybrid linear attention (Gated DeltaNet): without flash-linear-attention and "
          "causal-conv1d transformers runs its slow torch path; verl 0.9.1 patches it, vLLM 0.24 serves it",
)

FAMILIES: dict[str, PolicyFamily] = {f.name: f for f in (QWEN2_5_VL, QWEN3_VL, QWEN3_5)}
DEFAULT_FAMILY = QWEN2_5_VL  # the paper's


def family(name: str) -> PolicyFamily:
    """The row named `name` (a family name or a config's model_type)."""
    row = FAMILIES.get(name)
    if row is None:
        raise ValueError(f"unknown policy family {name!r}; choose one of {', '.join(FAMILIES)}")
    return row


def make_tiny(row: PolicyFamily, out_dir, seed: int = 0):
    """Build the row's random-weight tiny folder (pipeline tests, `--model tiny-<family>`)."""
    import importlib

    if not row.tiny_builder:
        raise ValueError(f"policy family {row.name!r} has no tiny builder")
    module, function = row.tiny_builder.split(":")
    return getattr(importlib.import_module(module), function)(out_dir, seed=seed)


def family_of_processor(processor) -> PolicyFamily:
    """The row whose input conventions (patch, merge, box grid) a loaded processor follows: by its class and patch
    size (Qwen3.5 folders use Qwen3-VL's processor and share its conventions)."""
    patch = getattr(getattr(processor, "image_processor", None), "patch_size", DEFAULT_FAMILY.patch_size)
    for row in FAMILIES.values():
        if row.patch_size == patch:
            return row
    raise ValueError(f"no policy family has patch size {patch} ({type(processor).__name__})")


def family_of_folder(path) -> PolicyFamily | None:
    """The family of a local model folder, from its config.json's model_type (None when unknown or unreadable)."""
    import json
    from pathlib import Path

    try:
        model_type = json.loads((Path(path) / "config.json").read_text()).get("model_type")
    except (OSError, ValueError, AttributeError):
        return None
    return FAMILIES.get(model_type) if isinstance(model_type, str) else None


__all__ = [
    "DEFAULT_FAMILY",
    "FAMILIES",
    "QWEN2_5_VL",
    "QWEN3_5",
    "QWEN3_VL",
    "PolicyFamily",
    "family",
    "family_of_folder",
    "family_of_processor",
    "make_tiny",
]
