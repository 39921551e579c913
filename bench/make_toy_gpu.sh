#!/usr/bin/env bash
# Build both toy checkpoints on one GPU, side by side (how the shipped ones were made; docs/demo.md).
# Usage on a GPU node with the project installed: SAM2_S=360 POLICY_S=400 OUT=dir bash bench/make_toy_gpu.sh
# (on the project's lent GPU box the wheels in .whl/ are installed first; see docs/benchmarks.md).
# SAM2_SET / POLICY_SET: extra `--set KEY=VALUE` flags, e.g. the next policy build suggested by
# bench/toy_policy_probe.py: POLICY_SET="--set coord_sigma=1.5 --set tasks.absent_keep=0.3"
set -u
OUT=${OUT:-toy_build}
SAM2_S=${SAM2_S:-360}
POLICY_S=${POLICY_S:-400}
mkdir -p "$OUT"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
fi
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TQDM_MININTERVAL=10
python3 -c "import torch, transformers, sam2; print('torch', torch.__version__, 'transformers', transformers.__version__, torch.cuda.get_device_name(0))"
nproc
W=/tmp/toy_build; mkdir -p $W
( python3 -m veason_r1 make-toy sam2 --out $W/sam2 --device cuda --time-budget "$SAM2_S" --workers 4 ${SAM2_SET:-} > "$OUT/sam2.log" 2>&1; echo "sam2 rc=$?" >> "$OUT/sam2.log" ) &
python3 -m veason_r1 make-toy policy --out $W/policy --device cuda --time-budget "$POLICY_S" --workers 11 --heldout 200 ${POLICY_SET:-} > "$OUT/policy.log" 2>&1
echo "policy rc=$?" >> "$OUT/policy.log"
wait
cp $W/sam2/sam2_toy.pt "$OUT/" 2>/dev/null; cp $W/sam2/manifest.json "$OUT/sam2_manifest.json" 2>/dev/null
cp $W/policy/model.safetensors "$OUT/policy_model.safetensors" 2>/dev/null
cp $W/policy/manifest.json "$OUT/policy_manifest.json" 2>/dev/null
sha256sum $W/policy/tokenizer.json $W/policy/config.json | tee "$OUT/policy_files.sha256"
tail -c 1500 "$OUT/sam2.log"; tail -c 2500 "$OUT/policy.log"
