"""Stratified sampling of the training expression pool (docs/method.md §3).

Reads a ReVOS-format meta_expressions file, draws exactly --target-size expressions with quotas
round(r_type * r_inst * T) over the (referring|reasoning) x (single|multi) strata, tops up at random (never with
no-target expressions unless --topup-no-target) and writes `meta_expressions_train_select.json` in the input's
format. The same --seed and input give the same pool. Prints the strata counts.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

DEFAULT_OUT_NAME = "meta_expressions_train_select.json"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--meta", type=Path, help="input meta_expressions JSON (e.g. ReVOS meta_expressions_train_.json)")
    src.add_argument("--root", type=Path, help="dataset root; the meta file of --split is found there")
    parser.add_argument("--split", default="train", help="split to read with --root (default: train)")
    parser.add_argument("--out", type=Path, default=None,
                        help=f"output JSON (default: {DEFAULT_OUT_NAME} next to the input meta)")
    parser.add_argument("--target-size", type=int, default=10_000, help="exact pool size T (default: 10000)")
    parser.add_argument("--seed", type=int, default=0, help="RNG seed (default: 0)")
    parser.add_argument("--topup-no-target", action="store_true",
                        help="faithful to the release: allow the top-up to draw type_id 2 (no-target) expressions")


def run(args: argparse.Namespace) -> int:
    from veason_r1.data.revos import meta_path
    from veason_r1.datacon.stratified import StratifiedConfig, sample_meta_file

    meta_file = args.meta if args.meta is not None else meta_path(args.root, args.split)
    out = args.out if args.out is not None else meta_file.parent / DEFAULT_OUT_NAME
    if out.resolve() == meta_file.resolve():
        print(f"error: --out {out} would overwrite the input meta", file=sys.stderr)
        return 2
    config = StratifiedConfig(target_size=args.target_size, seed=args.seed, topup_no_target=args.topup_no_target)
    try:
        report = sample_meta_file(meta_file, out, config)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(report.format())
    print(f"wrote {out}")
    return 0
