#!/usr/bin/env bash
# Multi-GPU evaluation check: eval/multi_gpu_eval.sh over the synthetic benchmark, once as one process and once as
# two disjoint shards, then checks that the shards are disjoint and cover every expression and that the merged
# predictions (stage-1 records and every mask PNG) equal the single-process run. Times both.
#
#   bash bench/shard_check.sh WORKDIR [POLICY=3b|tiny] [SEQUENTIAL=1]
#
# On a machine with 2+ GPUs the two shards run at once (one per GPU); with SEQUENTIAL=1 (one GPU) they run one after
# the other on the same GPU. Policy: a Qwen2.5-VL-3B-architecture model with random weights (or the tiny one) and
# SAM2.1 Hiera-L with random weights: the numbers are wall times and equality, never accuracy.
set -euo pipefail
cd "$(dirname "$0")/.."
W=${1:?usage: bench/shard_check.sh WORKDIR}
POLICY=${POLICY:-3b}
PY=${PYTHON:-python3}
export VEASON="$PY -m veason_r1" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
mkdir -p "$W"
[[ -f "$W/synth/mask_dict.json" ]] || $PY -m veason_r1 synth --out "$W/synth" --videos 16 --seed 0 --no-progress
if [[ ! -f "$W/policy/config.json" ]]; then
    if [[ $POLICY == tiny ]]; then $PY -m veason_r1 make-tiny --out "$W/policy"
    else $PY -m veason_r1.models.real_size "$W/policy" "$POLICY"; fi
fi
SAM=${SAM2:-sam2.1_hiera_l}
ARGS=(--sam2 "$SAM" --max-new-tokens "${MAX_NEW_TOKENS:-128}" --batch-size "${BATCH:-8}")
NGPU=$(nvidia-smi --list-gpus 2>/dev/null | wc -l || echo 0)
[[ $NGPU -ge 1 ]] || NGPU=1

t0=$(date +%s.%N)
NUM_GPUS=1 NUM_SHARDS=1 bash eval/multi_gpu_eval.sh revos "$W/synth" "$W/policy" "$W/single" "${ARGS[@]}"
t1=$(date +%s.%N)
NUM_GPUS=$((NGPU >= 2 ? 2 : 1)) NUM_SHARDS=2 SEQUENTIAL=${SEQUENTIAL:-$((NGPU >= 2 ? 0 : 1))} \
    bash eval/multi_gpu_eval.sh revos "$W/synth" "$W/policy" "$W/sharded" "${ARGS[@]}"
t2=$(date +%s.%N)

$PY - "$W" "$t0" "$t1" "$t2" "$NGPU" "$POLICY" <<'PY'
import json, sys
from pathlib import Path
w, t0, t1, t2, ngpu, policy = Path(sys.argv[1]), *map(float, sys.argv[2:5]), int(sys.argv[5]), sys.argv[6]
def records(p):
    return [json.loads(l) for l in (p / "predictions.jsonl").read_text().splitlines() if l.strip()]
shards = [{json.loads(l)["key"] for l in f.read_text().splitlines() if l.strip()}
          for f in sorted((w / "sharded" / ".stage1").glob("stage1.shard*of2.jsonl"))]
single, sharded = records(w / "single"), records(w / "sharded")
pngs = sorted(p.relative_to(w / "single") for p in (w / "single").rglob("*.png"))
pngs_sharded = sorted(p.relative_to(w / "sharded") for p in (w / "sharded").rglob("*.png"))
same_png = pngs == pngs_sharded and all((w / "single" / p).read_bytes() == (w / "sharded" / p).read_bytes()
                                        for p in pngs)
res = {
    "policy": policy, "gpus": ngpu, "expressions": len(single),
    "shard_sizes": [len(s) for s in shards], "shards_disjoint": not (shards[0] & shards[1]),
    "shards_cover_all": (shards[0] | shards[1]) == {r["key"] for r in single},
    "records_equal": single == sharded, "mask_pngs": len(pngs), "mask_pngs_byte_identical": same_png,
    "single_process_wall_s": round(t1 - t0, 1), "two_shards_wall_s": round(t2 - t1, 1),
    "results_single": json.loads((w / "single" / "results.json").read_text())["overall"],
    "results_sharded": json.loads((w / "sharded" / "results.json").read_text())["overall"],
}
print(json.dumps(res, indent=2))
(w / "shard_check.json").write_text(json.dumps(res, indent=2))
PY
