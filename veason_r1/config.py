"""Dataclasses shared by every stage: frame counts, image size, prompt variant, faithful switches.

One place holds the numbers of docs/method.md so SFT data, RL, inference and evaluation cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass

from veason_r1.models.families import DEFAULT_FAMILY

# every frame shown to the policy is resized to 560x560 (bilinear, aspect not kept): the paper's family's frame side
IMAGE_SIZE = DEFAULT_FAMILY.default_image_size
RESPONSE_BUDGET = 1024  # new tokens per response (generation, rollouts, the teacher's CoT): the one home
MAX_BOXES = 120  # the reward considers at most this many boxes per side


@dataclass(frozen=True)
class FrameConfig:
    """How many frames the policy sees at each stage (docs/method.md §4)."""

    sft_frames: int = 8  # training grid for CoT / SFT data
    rl_frames: int = 6  # training grid for GRPO
    eval_frames: int = 8  # linspace at inference / evaluation
    keyframe_top_k: int = 5  # keyframe drawn among the top-k union-area frames
    image_size: int = IMAGE_SIZE


# The method's frame numbers: every default for frame counts, the keyframe top-k and the policy frame size reads them
# from here (function defaults, dataclass defaults, argparse defaults), so a change is made once.
FRAMES = FrameConfig()


@dataclass(frozen=True)
class PromptConfig:
    """Prompt switches. `schema_example` is our documented deviation (default on); the release omits it."""

    schema_example: bool = True
    system: str = "You are a helpful assistant."
