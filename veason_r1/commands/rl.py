"""GRPO (Stage 2): `--backend verl` writes the RL data and a verl config generated from the GRPO YAML, then launches
verl's `main_ppo` (GPUs, Ray, vLLM); `--backend local` trains on one device (CPU or one GPU) with verl's algorithms
and the same reward. Both read one GRPOConfig YAML, changed with `--set section.key=value` (repeatable).

Examples:
  veason-r1 rl --backend local --config configs/grpo_local_tiny.yaml --set data.train_root=outputs/demo/synth
  veason-r1 rl --backend verl --config training_scripts/grpo_qwen2_5vl_3b.yaml --set data.train_root=data/ReVOS \
      --set data.train_pool=data/ReVOS/meta_expressions_train_select.json --dry-run
"""

from __future__ import annotations

import argparse
import sys

DEFAULT_VERL_CONFIG = "training_scripts/grpo_qwen2_5vl_3b.yaml"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", choices=["local", "verl"], default="local")
    p.add_argument("--config", help="a GRPOConfig YAML (local default: the dataclass defaults = docs/method.md §8; "
                                    f"verl default: {DEFAULT_VERL_CONFIG})")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a config field (repeatable), e.g. --set rollout.n=4 --set data.val_split=valid; "
                        "verl engine keys as --set verl.actor_rollout_ref.rollout.gpu_memory_utilization=0.3")
    p.add_argument("--max-steps", type=int, help="local: stop after this many more steps (resumable)")
    p.add_argument("--dry-run", action="store_true",
                   help="verl: check the inputs, write the data and the verl config, validate, print the command")


def _fail(text: str) -> int:
    print(f"error: {text}", file=sys.stderr)
    return 2


def run_local(args) -> int:
    from veason_r1.rl.config import load_config
    from veason_r1.rl.local_trainer import LocalGRPOTrainer

    try:
        cfg = load_config(args.config, args.overrides)
    except (ValueError, FileNotFoundError) as e:
        return _fail(str(e))
    trainer = LocalGRPOTrainer(cfg)
    summary = trainer.fit(max_steps=args.max_steps)
    best = summary["best"]
    print(f"done: step {summary['step']}/{summary['total_steps']}, checkpoints in {cfg.trainer.default_local_dir}"
          + (f", best validation step {best['step']} (reward {best['score']:.4f})" if best.get("step") else ""))
    return 0


def run_verl(args) -> int:
    from veason_r1.rl.config import load_config
    from veason_r1.rl.launch import LaunchError, launch, prepare

    source = args.config or DEFAULT_VERL_CONFIG
    try:
        cfg = load_config(source, args.overrides)
        plan = prepare(cfg, source)
    except (LaunchError, ValueError, FileNotFoundError) as e:
        return _fail(str(e))
    for note in plan.data.notes:
        print(f"note: {note}", file=sys.stderr)
    print(plan.data.summary)
    print(f"verl config: {plan.yaml_path}")
    print(" ".join(plan.command))
    if args.dry_run:
        return 0
    return launch(plan)


def run(args) -> int:
    return run_local(args) if args.backend == "local" else run_verl(args)
