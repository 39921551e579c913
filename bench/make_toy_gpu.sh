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
# 8 files of 16 MiB.
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
W=/tmp/toy_build; mkdir -p $W

policy() {  # NAME WORKERS SET...
  local name=$1 workers=$2; shift 2
  python3 -m veason_r1 make-toy policy --out $W/$name --device $DEVICE --time-budget "$POLICY_S" --workers $workers \
    --heldout 200 --set eval_every=${EVAL_EVERY:-1000} ${POLICY_ARGS:-} "$@" > $W/$name.log 2>&1
  echo "$name rc=$?" >> $W/$name.log
  sha256sum $W/$name/tokenizer.json $W/$name/config.json >> $W/$name.log 2>&1
}

( python3 -m veason_r1 make-toy sam2 --out $W/sam2 --device $DEVICE --time-budget "$SAM2_S" \
    --workers ${SAM2_WORKERS:-5} ${SAM2_ARGS:-} ${SAM2_SET:-} > $W/sam2.log 2>&1; echo "sam2 rc=$?" >> $W/sam2.log ) &
if [ -n "${POLICY_B_SET:-}" ]; then
  policy policy_b ${POLICY_B_WORKERS:-5} $POLICY_B_SET &
fi
policy policy ${POLICY_WORKERS:-10} ${POLICY_SET:-}
wait
for name in sam2 policy policy_b; do
  [ -f $W/$name.log ] || continue
  cp $W/$name.log $W/$name/build.log 2>/dev/null
  tar -C $W/$name -czf "$OUT/$name.tgz" --exclude=_work --exclude=tokenizer.json --exclude=vocab.json \
    --exclude=merges.txt --exclude=tokenizer_config.json . 2>/dev/null
  echo "== $name"; tail -c 1200 $W/$name.log
done
