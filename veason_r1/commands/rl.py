"""GRPO (Stage 2): `--backend verl` writes the RL data and launches verl's `main_ppo` with our YAML (GPUs, Ray,
vLLM); `--backend local` trains on one device (CPU or one GPU) with verl's algorithms and the same reward.

Examples:
  veason-r1 rl --backend local --config configs/grpo_local_tiny.yaml --set data.train_root=outputs/demo/synth
  veason-r1 rl --backend verl --verl-config grpo_qwen2_5vl_3b --train-root data/revos --pool outputs/pool.jsonl \
      --val-root data/revos --model outputs/sft/qwen2_5vl_3b_merged --dry-run
"""

from __future__ import annotations

import argparse
import sys

from veason_r1.config import FRAMES, IMAGE_SIZE


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", choices=["local", "verl"], default="local")
    p.add_argument("--config", help="local: a GRPO YAML (configs/grpo_local_tiny.yaml); defaults = docs/method.md numbers")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="local: override a config field (repeatable)")
    p.add_argument("--max-steps", type=int, help="local: stop after this many more steps (resumable)")
    p.add_argument("--verl-config", default="grpo_qwen2_5vl_3b", help="verl: training_scripts/<name>.yaml")
    p.add_argument("--train-root", help="verl: ReVOS-format root of the training split")
    p.add_argument("--train-split", default="train")
    p.add_argument("--pool", help="verl: JSONL of sampled expressions (video, exp_id); default the whole split")
    p.add_argument("--val-root", help="verl: ReVOS-format root of the held-out validation subset")
    p.add_argument("--val-split", default="valid")
    p.add_argument("--val-size", type=int, default=64, help="verl: held-out expressions validated every test_freq")
    p.add_argument("--model", help="verl: the SFT-merged model folder")
    p.add_argument("--data-dir", default="outputs/rl/data", help="verl: where the parquet rows are written")
    p.add_argument("--image-size", type=int, default=IMAGE_SIZE)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dry-run", action="store_true", help="verl: write data, compose + validate, print the command")
    p.add_argument("hydra_overrides", nargs="*", help="verl: extra Hydra overrides (key=value)")


def run_local(args) -> int:
    from veason_r1.rl.config import load_config
    from veason_r1.rl.local_trainer import LocalGRPOTrainer

    cfg = load_config(args.config, args.overrides)
    trainer = LocalGRPOTrainer(cfg)
    summary = trainer.fit(max_steps=args.max_steps)
    best = summary["best"]
    print(f"done: step {summary['step']}/{summary['total_steps']}, checkpoints in {cfg.trainer.default_local_dir}"
          + (f", best validation step {best['step']} (reward {best['score']:.4f})" if best.get("step") else ""))
    return 0


def write_verl_data(args) -> tuple[str, str | None]:
    """Reference parquet rows for VeasonRLDataset: train (redraw per access) and val (fixed draws)."""
    from pathlib import Path

    from veason_r1.data.revos import ReVOSDataset
    from veason_r1.rl.data import RLSampleBuilder, reference_rows, select_expressions, write_parquet

    out = Path(args.data_dir)
    train = ReVOSDataset(args.train_root, args.train_split, load_foreground=False)
    exprs = select_expressions(train, args.pool, True, builder=RLSampleBuilder(train))
    train_file = write_parquet(reference_rows(exprs, args.train_root, args.train_split, redraw=True,
                                              num_frames=FRAMES.rl_frames, image_size=args.image_size,
                                              seed=args.seed), out / "train.parquet")
    val_file = None
    if args.val_root:
        val = ReVOSDataset(args.val_root, args.val_split, load_foreground=False)
        vexprs = select_expressions(val, None, True, args.val_size, args.seed, builder=RLSampleBuilder(val))
        val_file = write_parquet(reference_rows(vexprs, args.val_root, args.val_split, redraw=False,
                                                num_frames=FRAMES.rl_frames, image_size=args.image_size,
                                                seed=args.seed), out / "val.parquet")
    print(f"wrote {len(exprs)} training rows to {train_file}" + (f", {len(vexprs)} validation rows to {val_file}" if val_file else ""))
    return str(train_file.resolve()), (str(val_file.resolve()) if val_file else None)


def run_verl(args) -> int:
    import subprocess

    from veason_r1.rl.verl_config import TRAINING_SCRIPTS, check_method_hparams, compose, validate

    if not args.train_root:
        raise SystemExit("--backend verl needs --train-root")
    train_file, val_file = write_verl_data(args)
    overrides = [f"data.train_files={train_file}"]
    if val_file:
        overrides.append(f"data.val_files={val_file}")
    else:
        overrides += ["trainer.test_freq=-1", "trainer.val_before_train=false"]
    if args.model:
        overrides.append(f"actor_rollout_ref.model.path={args.model}")
    overrides += list(args.hydra_overrides)
    cfg = compose(args.verl_config, overrides)
    validate(cfg)
    for line in check_method_hparams(cfg):
        print(f"note: differs from docs/method.md §8: {line}")
    cmd = [sys.executable, "-m", "verl.trainer.main_ppo", f"--config-path={TRAINING_SCRIPTS}",
           f"--config-name={args.verl_config}", *overrides]
    print(" ".join(cmd))
    if args.dry_run:
        return 0
    return subprocess.call(cmd)


def run(args) -> int:
    return run_local(args) if args.backend == "local" else run_verl(args)
