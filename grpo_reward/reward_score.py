"""Veason-R1 GRPO reward, loaded by verl by file path:

    custom_reward_function.path=<checkout>/grpo_reward/reward_score.py custom_reward_function.name=compute_score

or, batched per step (what `veason-r1 rl --backend verl` configures), through `VeasonGroupRewardManager`
(veason_r1/reward/verl_manager.py), which calls `compute_score_batch`. Both take explicit keyword options, the
fields of `RewardConfig` (variant, use_consistency, use_keyframe, image_size, propagator: {name, checkpoint, device,
offload}, max_sam2_load_failures, group_window_s, max_wait_s): a misspelt reward_kwargs key raises. Thin: the logic
lives in `veason_r1.reward` (docs/reward.md).
"""

from veason_r1.reward.config import RewardConfig, reward_config
from veason_r1.reward.scoring import RewardSample, score_group, score_groups, score_response
from veason_r1.reward.verl_hook import compute_score, compute_score_batch, make_ground_truth

__all__ = [
    "RewardConfig",
    "RewardSample",
    "compute_score",
    "compute_score_batch",
    "make_ground_truth",
    "reward_config",
    "score_group",
    "score_groups",
    "score_response",
]
