"""Veason-R1 GRPO reward, loaded by verl by file path:

    custom_reward_function.path=grpo_reward/reward_score.py custom_reward_function.name=compute_score

Thin: the logic lives in `veason_r1.reward` (docs/reward.md).
"""

from veason_r1.reward.scoring import RewardConfig, RewardSample, score_group, score_groups, score_response
from veason_r1.reward.verl_hook import compute_score, make_ground_truth

__all__ = [
    "RewardConfig",
    "RewardSample",
    "compute_score",
    "make_ground_truth",
    "score_group",
    "score_groups",
    "score_response",
]
