#!/usr/bin/env bash
# Veason-R1 Stage 2: GRPO of Qwen2.5-VL with verl 0.9.1 + Ray + vLLM (GPU node; see docs/rl.md).
# Usage: run_grpo.sh 3b|7b [section.key=value ...]   (run_qwen2_5_{3b,7b}_grpo.sh call this)
# 0. `veason-r1 preflight grpo` checks the node and every input first (SKIP_PREFLIGHT=1 skips it);
# 1. `veason-r1 rl --backend verl` writes the RL parquet rows and <run>/verl_config.yaml (generated from
#    training_scripts/grpo_qwen2_5vl_<size>.yaml) and runs verl.trainer.main_ppo (resumable: re-run to resume);
# 2. picks the best checkpoint from the periodic validation dumps (the best RL step is often mid-run);
# 3. merges that FSDP checkpoint into a Hugging Face folder with verl's model merger (<run>/best_hf).
# Every setting is a GRPOConfig key: pass `key=value` arguments, or these environment variables:
#   TRAIN_ROOT (data.train_root), POOL (data.train_pool), SFT_MODEL (model.path), SAM2_CKPT
#   (reward.propagator.checkpoint), VAL_SIZE (data.val_max_samples), VAL_SPLIT (data.val_split: opt-in validation on a
#   named split, e.g. "valid"; the default is a held-out slice of the training videos). OUT_HF: merged output.
# Python: $PYTHON if set; else the active virtualenv's `python`; else this checkout's .venv (what `make venv` makes).
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -n "${PYTHON:-}" ]]; then PY=$PYTHON
elif [[ -z "${VIRTUAL_ENV:-}" && -x .venv/bin/python ]]; then PY="$PWD/.venv/bin/python"
else PY=python; fi
SIZE=${1:?usage: run_grpo.sh 3b|7b [section.key=value ...]}
shift
case "$SIZE" in 3b|7b) ;; *) echo "run_grpo.sh: size must be 3b or 7b, got $SIZE" >&2; exit 2;; esac
CONFIG=training_scripts/grpo_qwen2_5vl_$SIZE.yaml
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

SETS=()
add() { if [[ -n "${2:-}" ]]; then SETS+=(--set "$1=$2"); fi; }
add data.train_root "${TRAIN_ROOT:-}"
add data.train_pool "${POOL:-}"
add model.path "${SFT_MODEL:-}"
add reward.propagator.checkpoint "${SAM2_CKPT:-}"
add data.val_max_samples "${VAL_SIZE:-}"
add data.val_split "${VAL_SPLIT:-}"
for kv in "$@"; do SETS+=(--set "$kv"); done

if [[ "${SKIP_PREFLIGHT:-0}" != 1 ]]; then
  "$PY" -m veason_r1 preflight grpo --config "$CONFIG" "${SETS[@]}"
fi
"$PY" -m veason_r1 rl --backend verl --config "$CONFIG" "${SETS[@]}"

RUN_DIR=$("$PY" -m veason_r1.rl.launch run-dir --config "$CONFIG" "${SETS[@]}")
OUT_HF=${OUT_HF:-$RUN_DIR/best_hf}
BEST_ACTOR=$("$PY" -m veason_r1.rl.verl_config best "$RUN_DIR/validation" "$RUN_DIR")
echo "best checkpoint: $BEST_ACTOR"
"$PY" -m verl.model_merger merge --backend fsdp --local_dir "$BEST_ACTOR" --target_dir "$OUT_HF"
echo "merged Hugging Face model: $OUT_HF"
