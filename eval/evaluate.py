"""Thin entry point, same as `veason-r1 eval ...`:

    python eval/evaluate.py revos --data data/ReVOS --pred pred/revos --out pred/revos/results.json
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from veason_r1.cli import main

if __name__ == "__main__":
    sys.exit(main(["eval", *sys.argv[1:]]))
