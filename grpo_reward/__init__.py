"""Entry point verl loads by path (custom_reward_function.path=grpo_reward/reward_score.py, name=compute_score)."""
