#!/usr/bin/env bash
# Sharded benchmark prediction on every visible GPU, then merge and score.
#
#   eval/multi_gpu_eval.sh BENCHMARK DATA_ROOT MODEL_DIR PRED_DIR [extra `veason-r1 predict` args...]
#   e.g. eval/multi_gpu_eval.sh revos data/ReVOS ckpt/veason-r1-3b pred/revos \
#            --sam2 sam2.1_hiera_l --sam2-checkpoint ckpt/sam2.1_hiera_large.pt
#
# One process per GPU (CUDA_VISIBLE_DEVICES=i, --shard i/N): the shards are disjoint blocks of expressions, so
# the merged predictions equal a single-process run (greedy). Each shard logs to PRED_DIR/logs/shard<i>.log.
# The script waits for all shards and fails if any failed; re-running it resumes (finished expressions are
# skipped). Then `veason-r1 predict --merge-only` checks completeness and writes PRED_DIR/predictions.jsonl, and
# `veason-r1 eval` writes PRED_DIR/results.json.
#
# Environment: CUDA_VISIBLE_DEVICES (when set, the GPUs used, e.g. 2,3: shard i runs on its (i mod N)-th entry;
# otherwise GPUs 0..NUM_GPUS-1), NUM_GPUS (default: the CUDA_VISIBLE_DEVICES count, else the nvidia-smi count),
# NUM_SHARDS (default: NUM_GPUS), SEQUENTIAL=1 (run the shards one after another, e.g. 2 shards on 1 GPU),
# VEASON (default: the active venv's `veason-r1`, else this checkout's .venv/bin/veason-r1), SPLIT (optional
# --split), EVAL_OUT (default: PRED_DIR/results.json), SKIP_PREFLIGHT=1 (skip `veason-r1 preflight eval`),
# PREFLIGHT_ARGS (extra preflight flags, e.g. --cpu-ok).
set -euo pipefail

if [[ $# -lt 4 ]]; then
    sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
fi
BENCH=$1; DATA=$2; MODEL=$3; PRED=$4; shift 4
# `veason-r1`: $VEASON if set; else the active virtualenv's; else this checkout's .venv (what `make venv` makes).
REPO=$(cd "$(dirname "$0")/.." && pwd)
if [[ -z "${VEASON:-}" ]]; then
    if [[ -z "${VIRTUAL_ENV:-}" && -x "$REPO/.venv/bin/veason-r1" ]]; then VEASON="$REPO/.venv/bin/veason-r1"
    else VEASON=veason-r1; fi
fi
# The GPUs the shards may use: an inherited CUDA_VISIBLE_DEVICES is the user's choice (GPUs kept for something
# else stay untouched); without it, GPUs 0..NUM_GPUS-1.
GPU_IDS=()
if [[ -n "${CUDA_VISIBLE_DEVICES+set}" ]]; then
    IFS=',' read -r -a GPU_IDS <<< "${CUDA_VISIBLE_DEVICES// /}"
    if [[ ${#GPU_IDS[@]} -eq 0 ]]; then
        echo "multi_gpu_eval.sh: CUDA_VISIBLE_DEVICES is set but empty: no GPU to use" >&2
        exit 1
    fi
    NUM_GPUS=${NUM_GPUS:-${#GPU_IDS[@]}}
    if [[ "$NUM_GPUS" -gt ${#GPU_IDS[@]} ]]; then
        echo "multi_gpu_eval.sh: NUM_GPUS=$NUM_GPUS but CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES lists ${#GPU_IDS[@]}" >&2
        exit 2
    fi
elif [[ -z "${NUM_GPUS:-}" ]]; then
    NUM_GPUS=$(nvidia-smi --list-gpus 2>/dev/null | wc -l || echo 0)
fi
if [[ "$NUM_GPUS" -lt 1 ]]; then
    echo "multi_gpu_eval.sh: no GPU found (set NUM_GPUS to override)" >&2
    exit 1
fi
if [[ ${#GPU_IDS[@]} -eq 0 ]]; then
    for ((g = 0; g < NUM_GPUS; g++)); do GPU_IDS+=("$g"); done
fi
SPLIT_ARGS=()
if [[ -n "${SPLIT:-}" ]]; then SPLIT_ARGS=(--split "$SPLIT"); fi
EVAL_OUT=${EVAL_OUT:-$PRED/results.json}
# `veason-r1 preflight eval` checks the node and every input (GPUs, packages, model folder, SAM2 config and
# checkpoint, the dataset through `doctor`, disk) before any shard starts; it exits 1 on a FAIL.
if [[ "${SKIP_PREFLIGHT:-0}" != 1 ]]; then
    # shellcheck disable=SC2086  # PREFLIGHT_ARGS is a list of flags (e.g. --cpu-ok for CPU dry runs)
    $VEASON preflight eval "$BENCH" --data "$DATA" --model "$MODEL" --out "$PRED" "${SPLIT_ARGS[@]}" \
        ${PREFLIGHT_ARGS:-} "$@"
fi
mkdir -p "$PRED/logs"

pids=()
rcs=()
cleanup() {  # Ctrl-C stops our shard processes (by id), never anything else
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
}
trap cleanup INT TERM

NUM_SHARDS=${NUM_SHARDS:-$NUM_GPUS}
echo "predict $BENCH: $NUM_SHARDS shard(s) on $NUM_GPUS GPU(s) (CUDA devices ${GPU_IDS[*]:0:$NUM_GPUS}) -> $PRED"
start=$(date +%s)
for ((i = 0; i < NUM_SHARDS; i++)); do
    CUDA_VISIBLE_DEVICES=${GPU_IDS[$((i % NUM_GPUS))]} $VEASON predict "$BENCH" --data "$DATA" --model "$MODEL" --out "$PRED" \
        "${SPLIT_ARGS[@]}" --shard "$i/$NUM_SHARDS" --no-progress "$@" >"$PRED/logs/shard$i.log" 2>&1 &
    pids+=($!)
    if [[ ${SEQUENTIAL:-0} == 1 ]]; then  # shards one after another (e.g. several shards on one GPU)
        rc=0; wait "${pids[$i]}" || rc=$?
        rcs+=("$rc")
    fi
done
if [[ ${SEQUENTIAL:-0} != 1 ]]; then
    for i in "${!pids[@]}"; do
        rc=0; wait "${pids[$i]}" || rc=$?
        rcs+=("$rc")
    done
fi

failed=0
for i in "${!rcs[@]}"; do
    if [[ ${rcs[$i]} -ne 0 ]]; then
        echo "shard $i/$NUM_SHARDS failed: see $PRED/logs/shard$i.log" >&2
        tail -n 20 "$PRED/logs/shard$i.log" >&2 || true
        failed=1
    fi
done
trap - INT TERM
echo "prediction wall time: $(( $(date +%s) - start )) s"
if [[ $failed -ne 0 ]]; then
    echo "some shards failed; fix and re-run the same command to resume" >&2
    exit 1
fi

$VEASON predict "$BENCH" --data "$DATA" --model "$MODEL" --out "$PRED" "${SPLIT_ARGS[@]}" --merge-only "$@"
EVAL_SPLIT=()
if [[ -n "${SPLIT:-}" ]]; then EVAL_SPLIT=(--split "$SPLIT"); fi
$VEASON eval "$BENCH" --data "$DATA" --pred "$PRED" "${EVAL_SPLIT[@]}" --out "$EVAL_OUT"
echo "results: $EVAL_OUT"
