"""Veason-R1 GRPO reward, loaded by verl by file path:

    custom_reward_function.path=grpo_reward/reward_score.py custom_reward_function.name=compute_score

or, batched per step (the GRPO YAMLs), through `VeasonGroupRewardManager` (veason_r1/reward/verl_manager.py),
which calls `compute_score_batch`. Thin: the logic lives in `veason_r1.reward` (docs/reward.md).
"""

from veason_r1.reward.scoring import RewardConfig, RewardSample, score_group, score_groups, score_response
from veason_r1.reward.verl_hook import compute_score, compute_score_batch, make_ground_truth

__all__ = [
    "RewardConfig",
    "RewardSample",
    "compute_score",
    "compute_score_batch",
    "make_ground_truth",
    "score_group",
    "score_groups",
    "score_response",
]
