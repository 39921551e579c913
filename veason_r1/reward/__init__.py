"""GRPO reward: its options (`config`), pure terms (`terms`), scoring of responses and groups (`scoring`), verl
hookup (`verl_hook`)."""

from veason_r1.reward.config import RewardConfig, reward_config
from veason_r1.reward.scoring import RewardSample, score_group, score_groups, score_response

__all__ = ["RewardConfig", "RewardSample", "reward_config", "score_group", "score_groups", "score_response"]
