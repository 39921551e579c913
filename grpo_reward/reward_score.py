"""Veason-R1 GRPO reward, loaded by verl by file path:

    custom_reward_function.path=<checkout>/grpo_reward/reward_score.py custom_reward_function.name=compute_score

or, batched per step (what `veason-r1 rl --backend verl` configures), through `VeasonGroupRewardManager`
(veason_r1/reward/verl_manager.py), which calls `compute_score_batch`. Both take explicit keyword options
(`RewardOptions`: sam2_model, sam2_checkpoint, sam2_device, variant, use_consistency, use_keyframe): a misspelt reward_kwargs key
raises. Thin: the logic lives in `veason_r1.reward` (docs/reward.md).
"""

from veason_r1.reward.scoring import RewardConfig, RewardSample, score_group, score_groups, score_response
from veason_r1.reward.verl_hook import RewardOptions, compute_score, compute_score_batch, make_ground_truth

__all__ = [
    "RewardConfig",
    "RewardOptions",
    "RewardSample",
    "compute_score",
    "compute_score_batch",
    "make_ground_truth",
    "score_group",
    "score_groups",
    "score_response",
]
