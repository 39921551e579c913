"""GRPO reward: pure terms (`terms`), scoring of responses and groups (`scoring`), verl hookup (`verl_hook`)."""

from veason_r1.reward.scoring import RewardConfig, RewardSample, score_group, score_groups, score_response

__all__ = ["RewardConfig", "RewardSample", "score_group", "score_groups", "score_response"]
