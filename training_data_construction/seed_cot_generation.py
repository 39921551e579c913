"""Seed chain-of-thought generation (thin entry over `veason-r1 cot`).

Example (any OpenAI-compatible endpoint; the key comes from $OPENAI_API_KEY and is never written anywhere):
    python training_data_construction/seed_cot_generation.py --root /data/ReVOS \
        --meta /data/ReVOS/meta_expressions_train_select.json --out-dir cot_out \
        --base-url https://api.example.com/v1 --model some-vlm --concurrency 8
Offline, on the synthetic benchmark: add `--teacher synthetic` (template reasoning from the generator's ground truth).
"""

import sys

from veason_r1.cli import main

if __name__ == "__main__":
    sys.exit(main(["cot", *sys.argv[1:]]))
