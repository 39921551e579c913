"""Check that this node is ready before a run burns GPU hours: GPUs and memory, the NVIDIA driver, the pinned
packages, every configured file (model folder, SAM2 checkpoint, data through `doctor`), free disk against the
checkpoint budget, /dev/shm for Ray, and the composed verl config. Prints a table (PASS / WARN / SKIP / FAIL, the
fix of every FAIL) and exits 1 on any FAIL (2 for a bad config or flag).

  veason-r1 preflight grpo --config training_scripts/grpo_qwen2_5vl_3b.yaml [--set key=value ...]
  veason-r1 preflight sft  --config training_scripts/sft_qwen2_5vl_3b_lora.yaml --data data/sft --model DIR --out DIR
  veason-r1 preflight eval revos --data data/ReVOS --model DIR --sam2 sam2.1_hiera_l --sam2-checkpoint FILE --out PRED
The stage's arguments are those of `veason-r1 rl --backend verl`, `veason-r1 sft` and `veason-r1 predict`. The run
scripts call this first (SKIP_PREFLIGHT=1 skips it). --cpu-ok turns the GPU checks into SKIP (tests, CPU dry runs).
"""

from __future__ import annotations

import argparse
import sys


def add_arguments(p: argparse.ArgumentParser) -> None:
    from veason_r1.commands import predict, sft

    sub = p.add_subparsers(dest="stage", required=True, metavar="{grpo,sft,eval}")
    g = sub.add_parser("grpo", help="before training_scripts/run_grpo.sh (verl)")
    g.add_argument("--config", default=None, help="GRPO YAML (default: training_scripts/grpo_qwen2_5vl_3b.yaml)")
    g.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    s = sub.add_parser("sft", help="before training_scripts/run_sft.sh")
    sft.add_arguments(s)
    e = sub.add_parser("eval", help="before eval/multi_gpu_eval.sh / veason-r1 predict")
    predict.add_arguments(e)
    for q in (g, s, e):
        q.add_argument("--cpu-ok", action="store_true", help="no GPU is not a failure (GPU checks SKIP)")


def _checks(args):
    from veason_r1 import preflight

    if args.stage == "grpo":
        from veason_r1.commands.rl import DEFAULT_VERL_CONFIG
        from veason_r1.rl.config import load_config

        source = args.config or DEFAULT_VERL_CONFIG
        return preflight.grpo_checks(load_config(source, args.overrides), source, cpu_ok=args.cpu_ok)
    if args.stage == "sft":
        import torch

        from veason_r1.commands.sft import _build_config
        from veason_r1.sft.config import launch_world_size

        world = launch_world_size(args.launcher) if torch.cuda.is_available() else max(1, torch.cuda.device_count())
        return preflight.sft_checks(_build_config(args), world, cpu_ok=args.cpu_ok,
                                    check_images=not args.skip_image_check)
    from veason_r1.inference.predict import DEFAULT_SPLITS
    from veason_r1.models.config import propagator_from_args

    split = args.split or DEFAULT_SPLITS.get(args.benchmark)
    return preflight.eval_checks(args.policy_model, args.data, split, propagator_from_args(args), args.out,
                                 cpu_ok=args.cpu_ok)


def run(args: argparse.Namespace) -> int:
    from veason_r1.preflight import FAIL, render

    try:
        checks = _checks(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(render(checks))
    return 1 if any(c.status == FAIL for c in checks) else 0
