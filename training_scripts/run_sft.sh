#!/usr/bin/env bash
# Stage 1 of Veason-R1: CoT SFT (LoRA, LLaMA-Factory) of Qwen2.5-VL, then merge into a full HF model for RL.
#
#   bash training_scripts/run_sft.sh --data data/sft --model /models/Qwen2.5-VL-3B-Instruct --out outputs/sft_3b
#   bash training_scripts/run_sft.sh --config training_scripts/sft_qwen2_5vl_7b_lora.yaml \
#        --data data/sft --model /models/Qwen2.5-VL-7B-Instruct --out outputs/sft_7b --learning-rate 5e-5
#
# --data: folder with dataset_info.json from the SFT data export. Writes OUT/adapter and OUT/merged (the model RL
# and `veason-r1 infer` start from; the GRPO YAMLs' model.path is outputs/sft_3b/merged / outputs/sft_7b/merged).
# Any SFT hyper-parameter can be overridden by a flag or --set key=value (`veason-r1 sft --help`).
# With more than one visible GPU, LLaMA-Factory's CLI launches torchrun (DDP) and `veason-r1 sft` divides the
# gradient accumulation by the GPU count, so the effective batch stays the recipe's 16 (it prints it); with one
# GPU, training runs in-process. `veason-r1 preflight sft` checks the node first (SKIP_PREFLIGHT=1 skips it).
# Re-running resumes an interrupted training and skips finished stages (--force redoes them).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# Python: $PYTHON if set; else the active virtualenv's `python`; else this checkout's .venv (what `make venv` makes).
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -z "${VIRTUAL_ENV:-}" && -x "${HERE}/../.venv/bin/python" ]]; then PYTHON="$(cd "${HERE}/.." && pwd)/.venv/bin/python"
  else PYTHON=python; fi
fi
CONFIG="${HERE}/sft_qwen2_5vl_3b_lora.yaml"

NGPU="$("${PYTHON}" -c 'import torch; print(torch.cuda.device_count())' 2>/dev/null || echo 0)"
LAUNCHER=inprocess
if [ "${NGPU}" -gt 1 ]; then
  LAUNCHER=cli
fi

export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}"
export TOKENIZERS_PARALLELISM="${TOKENIZERS_PARALLELISM:-false}"

# Defaults first: a --config / --launcher given by the caller comes later and wins.
if [ "${SKIP_PREFLIGHT:-0}" != 1 ]; then
  "${PYTHON}" -m veason_r1 preflight sft --config "${CONFIG}" --launcher "${LAUNCHER}" "$@"
fi
exec "${PYTHON}" -m veason_r1 sft --config "${CONFIG}" --launcher "${LAUNCHER}" "$@"
