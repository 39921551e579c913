#!/usr/bin/env bash
# Build both toy checkpoints on one GPU, side by side (how the shipped ones were made; docs/toy_reproduction.md).
# Usage on a GPU node with the project installed: SAM2_S=380 POLICY_S=420 OUT=dir bash bench/make_toy_gpu.sh
# On the project's lent GPU box (Python 3.12, its own torch, no sam2): the py3.12 wheels in .whl/ (transformers
# 5.5.4, tokenizers 0.22.2, pycocotools, tensordict, pyvers) are installed into /tmp/site and the pure-Python
# packages copied from the venv into .carry/site (sam2 with its `training` package, hydra, omegaconf, antlr4, iopath,
# portalocker) go on PYTHONPATH; docs/benchmarks.md says how to make both.
# SAM2_SET / POLICY_SET: extra `--set KEY=VALUE` flags; SAM2_ARGS / POLICY_ARGS: extra make-toy flags.
# POLICY_B_SET: a second policy build with these `--set` flags, trained at the same time (variant "b").
# $OUT gets one tarball per build (checkpoint, manifest, curve, log) and the logs' tails: the device returns at most
# 8 files of 16 MiB. Each build is packed as soon as it ends.
# DEADLINE (seconds from the start; 0 = none): builds still running then are stopped and what they have is packed,
# so a call that runs long still returns every log and every finished checkpoint. SAM2_S / POLICY_S bound only the
# training loops: set DEADLINE below the call's limit (the held-out measurement after training takes 1-3 minutes).
set -u
OUT=${OUT:-toy_build}
SAM2_S=${SAM2_S:-380}
POLICY_S=${POLICY_S:-420}
DEVICE=${DEVICE:-cuda}
mkdir -p "$OUT"
if [ -d .whl ] && [ -z "${SKIP_WHL:-}" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
fi
export PYTHONPATH=/tmp/site:$PWD/.carry/site:$PWD
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TQDM_MININTERVAL=15
python3 - <<'PY' || exit 1
import torch, transformers, sam2, training.utils.data_utils, hydra, tensordict
print("torch", torch.__version__, "transformers", transformers.__version__, "sam2 ok;",
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "NO GPU")
PY
echo "cpus $(nproc)"
W=${WORK:-/tmp/toy_build}; mkdir -p $W  # the builds' folders (WORK: elsewhere, e.g. a test's)
T0=$(date +%s)

pack() {  # NAME: the build's folder (without its _work, nor the tokenizer files every toy policy shares) and log
  local name=$1
  [ -f $W/$name.log ] || return 0
  cp $W/$name.log $W/$name/build.log 2>/dev/null
  [ -f $W/$name/curve.json ] || cp $W/$name/_work/curve.json $W/$name/curve.json 2>/dev/null  # stopped: the curve so far
  tar -C $W/$name -czf "$OUT/$name.tgz" --exclude=_work --exclude=tokenizer.json --exclude=vocab.json \
    --exclude=merges.txt --exclude=tokenizer_config.json . 2>/dev/null
  echo "$name packed at $(( $(date +%s) - T0 )) s" >> "$OUT/packed.txt"
}

policy() {  # NAME WORKERS SET...
  local name=$1 workers=$2; shift 2
  python3 -m veason_r1 make-toy policy --out $W/$name --device $DEVICE --time-budget "$POLICY_S" --workers $workers \
    --heldout ${POLICY_HELDOUT:-100} --set eval_every=${EVAL_EVERY:-1000} ${POLICY_ARGS:-} "$@" > $W/$name.log 2>&1
  echo "$name rc=$?" >> $W/$name.log
  sha256sum $W/$name/tokenizer.json $W/$name/config.json >> $W/$name.log 2>&1
  pack $name
}

( python3 -m veason_r1 make-toy sam2 --out $W/sam2 --device $DEVICE --time-budget "$SAM2_S" \
    --workers ${SAM2_WORKERS:-5} ${SAM2_ARGS:-} ${SAM2_SET:-} > $W/sam2.log 2>&1; echo "sam2 rc=$?" >> $W/sam2.log
  pack sam2 ) &
BUILDS=$!
if [ -n "${POLICY_B_SET:-}" ]; then
  policy policy_b ${POLICY_B_WORKERS:-5} $POLICY_B_SET &
  BUILDS="$BUILDS $!"
fi
policy policy ${POLICY_WORKERS:-10} ${POLICY_SET:-} &
BUILDS="$BUILDS $!"
WATCH=""
if [ "${DEADLINE:-0}" -gt 0 ]; then
  ( sleep "$DEADLINE"; echo "DEADLINE ${DEADLINE} s: stopping the builds still running" >> "$OUT/packed.txt"
    pkill -TERM -f "veason_r1 make-toy [a-z0-9]+ --out $W/" ) &  # this script's builds only
  WATCH=$!
fi
wait $BUILDS  # every build (each packs itself when it ends), not the watchdog
[ -n "$WATCH" ] && { pkill -P $WATCH 2>/dev/null; kill $WATCH 2>/dev/null; }
for name in sam2 policy policy_b; do
  [ -f $W/$name.log ] || continue
  [ -f "$OUT/$name.tgz" ] || pack $name  # stopped at the deadline: what it has
  echo "== $name"; tail -c 1200 $W/$name.log
done
