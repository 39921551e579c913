"""Write a tiny random-weight Qwen2.5-VL folder (real architecture, offline BPE tokenizer, Qwen chat template).

For pipeline tests only (SFT, GRPO, inference, demo on CPU): its outputs are random, never method results.
The folder loads like Qwen/Qwen2.5-VL-3B-Instruct with transformers, LLaMA-Factory (template qwen2_vl) and verl.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="output folder (created; files inside are replaced)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the tokenizer corpus and of the weights")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32", help="saved weight dtype")


def run(args: argparse.Namespace) -> int:
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from veason_r1.models.tiny import make_tiny_qwen

    out = make_tiny_qwen(args.out, seed=args.seed, dtype=args.dtype)
    print(f"tiny Qwen2.5-VL written to {out}")
    return 0
