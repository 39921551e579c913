"""CoT SFT with LLaMA-Factory (LoRA), then merge the adapter into a full model ready for RL and inference.

`veason-r1 sft --data DIR --model DIR --out DIR [--config YAML] [flags]`: DIR of --data holds dataset_info.json
(written by the SFT data export); --model is a local Qwen2.5-VL folder (the Instruct model or `veason-r1 make-tiny`).
Writes OUT/adapter (LoRA adapter, checkpoints, trainer_log.jsonl, training_loss.png) and OUT/merged (a full HF
folder with the processor files, loadable by `veason_r1.models.policy.load_policy` and `veason-r1 infer --model`).

Hyper-parameters: the 3B recipe (training_scripts/sft_qwen2_5vl_3b_lora.yaml, same values as SFTConfig's
defaults), overridden by --config, then by flags. Without a CUDA device bf16 is switched off (said on stderr).
Re-running skips finished stages and resumes an interrupted training from its last checkpoint; --force redoes all.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from veason_r1.sft.config import add_config_flags

    parser.add_argument("--data", type=Path, default=None, help="folder with dataset_info.json (default: the config's)")
    parser.add_argument("--model", type=str, default=None, help="base model folder (default: the config's)")
    parser.add_argument("--out", type=Path, required=True, help="output folder: OUT/adapter and OUT/merged")
    parser.add_argument("--config", type=Path, default=None,
                        help="SFT YAML (LLaMA-Factory keys, e.g. training_scripts/sft_qwen2_5vl_3b_lora.yaml)")
    parser.add_argument("--launcher", choices=("inprocess", "cli"), default="inprocess",
                        help="inprocess: run_exp in this process (one device); cli: llamafactory-cli (multi-GPU)")
    parser.add_argument("--no-merge", action="store_true", help="train the adapter only")
    parser.add_argument("--skip-image-check", action="store_true",
                        help="do not open every image to check it is image_size x image_size")
    parser.add_argument("--force", action="store_true", help="retrain and re-merge even if finished")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key (repeatable; the GRPO grammar, e.g. --set lora_rank=32)")
    add_config_flags(parser)


def _build_config(args: argparse.Namespace):
    import dataclasses

    from veason_r1.sft.config import SFTConfig, apply_flags

    config = SFTConfig.from_yaml(args.config) if args.config is not None else SFTConfig()
    config = config.with_overrides(getattr(args, "overrides", []) or [])
    config = apply_flags(config, args)
    paths = {"output_dir": str(args.out / "adapter"), "export_dir": None if args.no_merge else str(args.out / "merged")}
    if args.data is not None:
        paths["dataset_dir"] = str(args.data)
    if args.model is not None:
        from veason_r1.models.registry import resolve_policy

        paths["model_name_or_path"] = str(resolve_policy(args.model))  # a name (`toy`, `tiny`, ...) -> its folder
    if args.data is None and args.config is None:
        from veason_r1.errors import BadInput

        raise BadInput("--data", "missing", hint="give --data (the folder with dataset_info.json) or a --config "
                                                 "that sets dataset_dir")
    return dataclasses.replace(config, **paths)


def run(args: argparse.Namespace) -> int:
    import torch

    from veason_r1.models.policy import check_model_dir
    from veason_r1.paths import check_output_folder
    from veason_r1.sft.config import launch_world_size
    from veason_r1.sft.train import check_dataset, run_sft

    # user errors (config file, flags, data, base model) are `UserError`s: one line, exit 2, before any training
    config = _build_config(args)
    check_output_folder(args.out)  # the same check `preflight sft` makes
    world = launch_world_size(args.launcher) if torch.cuda.is_available() else 1
    _, batch_line = config.for_world_size(world)  # the recipe's effective batch, whatever the GPU count
    config, notes = config.for_device(torch.cuda.is_available(), world)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    summary = check_dataset(config.dataset_dir, config.dataset, config.image_size,
                            check_images=not args.skip_image_check)
    if Path(config.model_name_or_path).exists() or args.model is not None:
        check_model_dir(config.model_name_or_path)  # a hub name (no such folder) is LLaMA-Factory's to resolve
    print(f"SFT data: {summary.num_samples} samples, {summary.num_images} frames of "
          f"{config.image_size}x{config.image_size} ({summary.data_file})")
    print(f"LoRA r={config.lora_rank} alpha={config.lora_alpha} lr={config.learning_rate} "
          f"{batch_line}, epochs={config.num_train_epochs} max_steps={config.max_steps}")
    result = run_sft(config, launcher=args.launcher, force=args.force, check_images=False)
    for stage in result.skipped:
        print(f"{stage}: already done (use --force to redo)")
    if result.losses:
        print(f"loss: first {result.losses[0]:.4f} -> last {result.losses[-1]:.4f} ({len(result.losses)} logged)")
    print(f"adapter: {result.adapter_dir}")
    if result.merged_dir is not None:
        print(f"merged model: {result.merged_dir}")
    return 0
