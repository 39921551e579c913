#!/usr/bin/env bash
# GRPO of Qwen2.5-VL-3B (2 GPUs): training_scripts/grpo_qwen2_5vl_3b.yaml through run_grpo.sh (env and
# steps documented there and in docs/rl.md). Extra arguments are GRPOConfig `section.key=value` settings.
exec bash "$(dirname "$0")/run_grpo.sh" 3b "$@"
