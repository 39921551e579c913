"""Stratified 10k training pool from the ReVOS train split (thin entry over `veason-r1 sample`).

Example: python training_data_construction/data_sampling.py --meta /data/ReVOS/meta_expressions_train_.json \
    --out /data/ReVOS/meta_expressions_train_select.json --target-size 10000 --seed 0
"""

import sys

from veason_r1.cli import main

if __name__ == "__main__":
    sys.exit(main(["sample", *sys.argv[1:]]))
