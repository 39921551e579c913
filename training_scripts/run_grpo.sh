#!/usr/bin/env bash
# Veason-R1 Stage 2: GRPO of Qwen2.5-VL with verl 0.9.1 + Ray + vLLM (GPU node; see docs/rl.md).
# Usage: run_grpo.sh 3b|7b [hydra overrides...]  (run_qwen2_5_{3b,7b}_grpo.sh call this)
# 1. writes the RL parquet rows and launches verl.trainer.main_ppo with training_scripts/grpo_qwen2_5vl_<size>.yaml
#    (resumable: trainer.resume_mode=auto picks up the last global_step_N);
# 2. picks the best checkpoint from the periodic validation dumps (the best RL step is often mid-run);
# 3. merges that FSDP checkpoint into a Hugging Face folder with verl's model merger.
# Env: TRAIN_ROOT (ReVOS root), POOL (optional: meta_expressions_train_select.json from data sampling, or a JSONL), VAL_ROOT (held-out split root), SFT_MODEL,
#      VAL_SIZE (default 64), OUT_HF (merged output). Extra args are passed to Hydra (key=value).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
SIZE=${1:?usage: run_grpo.sh 3b|7b [hydra overrides...]}
shift
case "$SIZE" in 3b|7b) ;; *) echo "run_grpo.sh: size must be 3b or 7b, got $SIZE" >&2; exit 2;; esac
NAME=grpo_qwen2_5vl_$SIZE
TRAIN_ROOT=${TRAIN_ROOT:?set TRAIN_ROOT to the ReVOS root}
VAL_ROOT=${VAL_ROOT:-$TRAIN_ROOT}
SFT_MODEL=${SFT_MODEL:-outputs/sft/qwen2_5vl_${SIZE}_merged}
VAL_SIZE=${VAL_SIZE:-64}
RUN_DIR=outputs/rl/$NAME
OUT_HF=${OUT_HF:-$RUN_DIR/best_hf}
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

POOL_ARGS=()
if [[ -n "${POOL:-}" ]]; then POOL_ARGS=(--pool "$POOL"); fi

"$PY" -m veason_r1 rl --backend verl --verl-config "$NAME" --train-root "$TRAIN_ROOT" "${POOL_ARGS[@]}" \
  --val-root "$VAL_ROOT" --val-size "$VAL_SIZE" --model "$SFT_MODEL" --data-dir "$RUN_DIR/data" "$@"

BEST_ACTOR=$("$PY" -m veason_r1.rl.verl_config best "$RUN_DIR/validation" "$RUN_DIR/checkpoints")
echo "best checkpoint: $BEST_ACTOR"
"$PY" -m verl.model_merger merge --backend fsdp --local_dir "$BEST_ACTOR" --target_dir "$OUT_HF"
echo "merged Hugging Face model: $OUT_HF"
