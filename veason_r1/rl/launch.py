"""`veason-r1 rl --backend verl`: everything between a GRPOConfig and a running verl job, checked before Ray starts.

1. `absolute(cfg)`: every path made absolute (model, SAM2 checkpoint, data roots and pool, run folder); the reward
   file and generated data files are absolute too. Workers of an existing Ray cluster run in the cluster's start
   directory, where relative paths point nowhere.
2. `missing_inputs(cfg)`: the model folder, the SAM2 checkpoint, the reward file and the data files must exist; a
   missing one stops the launch (exit 2, the path named).
3. `write_data(cfg)`: the reference parquet rows (`VeasonRLDataset`): training = the pool minus the held-out
   videos; validation = the held-out slice (or, opt-in, `data.val_split`).
4. `verl_config.build_tree`: `<run folder>/verl_config.yaml` generated from the config, composed with verl's tree
   and checked by verl's `validate_config`.
5. `python -m verl.trainer.main_ppo --config-path <run folder> --config-name verl_config`, with TensorBoard's events
   in `<run folder>/tensorboard` (`TENSORBOARD_DIR`, also set for every Ray worker by the generated config); on a
   resume from step S a purge marker (`SessionLog.START` at S + 1, what SummaryWriter's `purge_step` writes) makes
   TensorBoard drop the interrupted run's events after S, so re-trained steps appear once.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from veason_r1.rl.config import GRPOConfig, validation_enabled
from veason_r1.rl.verl_config import GENERATED_NAME, REWARD_FILE, build_tree

DOWNLOAD_HINT = "docs/reproduce.md, 'What to download', says where to get it"


class LaunchError(ValueError):
    """A launch that would fail (a missing input): one line naming the config key and the path."""


def _abs(path: str | None, base: Path) -> str | None:
    if path is None or path == "":
        return path
    p = Path(path).expanduser()
    return str(p if p.is_absolute() else (base / p).resolve())


def _named_policy_folder(path: str) -> str:
    """A registry name (`toy`, `tiny`, ...) as its folder, so verl's workers get a path; any other value unchanged."""
    from veason_r1.models.registry import is_named_policy, resolve_policy

    return str(resolve_policy(path)) if is_named_policy(path) else path


def absolute(cfg: GRPOConfig, base: str | Path | None = None) -> GRPOConfig:
    """A copy with every path of the config absolute (relative ones are taken from `base`, default the cwd)."""
    base = Path(base or os.getcwd()).resolve()
    d, m, r, t = cfg.data, cfg.model, cfg.reward, cfg.trainer
    return dataclasses.replace(
        cfg,
        data=dataclasses.replace(d, train_root=_abs(d.train_root, base), train_pool=_abs(d.train_pool, base),
                                 val_root=_abs(d.val_root, base)),
        model=dataclasses.replace(m, path=_abs(_named_policy_folder(m.path), base)),
        reward=dataclasses.replace(r, propagator=dataclasses.replace(
            r.propagator, checkpoint=_abs(r.propagator.checkpoint, base))),
        trainer=dataclasses.replace(t, default_local_dir=_abs(t.default_local_dir, base)),
    )


def missing_inputs(cfg: GRPOConfig) -> list[str]:
    """'key: path: what is wrong' for every input the run needs and does not find (empty when all are there)."""
    from veason_r1.data.revos import meta_path
    from veason_r1.models.policy import check_model_dir

    problems = []
    try:
        check_model_dir(cfg.model.path)
    except FileNotFoundError as e:
        problems.append(f"model.path: {e} (the SFT-merged model: training_scripts/run_sft.sh writes it)")
    if cfg.reward.use_consistency:  # the checks `predict` makes: a known name, a complete .pt / weights folder
        from veason_r1.errors import UserError
        from veason_r1.models.config import config_keys

        try:
            cfg.reward.propagator.check(config_keys("reward.propagator"))
        except UserError as e:
            problems.append(f"{e} ({e.hint or DOWNLOAD_HINT})")
    if not REWARD_FILE.is_file():
        problems.append(f"reward file: {REWARD_FILE} not found (the checkout is incomplete)")
    d = cfg.data
    roots = [("data.train_root", d.train_root, d.train_split)]
    if d.val_split is not None:
        roots.append(("data.val_root", d.val_root or d.train_root, d.val_split))
    for key, root, split in roots:
        if not root or not Path(root).is_dir():
            problems.append(f"{key}: {root!r} is not a folder (a ReVOS-format root)")
            continue
        try:
            meta = meta_path(Path(root), split)
        except FileNotFoundError as e:
            problems.append(f"{key}: {e}")
            continue
        if not meta.is_file():
            problems.append(f"{key}: {meta} not found (split {split!r})")
    if d.train_pool and not Path(d.train_pool).is_file():
        problems.append(f"data.train_pool: {d.train_pool} not found (veason-r1 sample writes it)")
    return problems


@dataclass
class DataFiles:
    train_file: str
    val_file: str | None
    summary: str
    notes: list[str] = field(default_factory=list)


def write_data(cfg: GRPOConfig, out_dir: str | Path) -> DataFiles:
    """The reference parquet rows for `VeasonRLDataset`: train (redrawn per access) and val (fixed draws)."""
    from veason_r1.data.revos import ReVOSDataset
    from veason_r1.rl.data import RLSampleBuilder, reference_rows, training_pools, write_parquet

    d = cfg.data
    out = Path(out_dir)
    # mask_dict.json parsed once here into a memory-mapped index that every data-loader worker shares
    cache = out / "mask_index"
    train = ReVOSDataset(d.train_root, d.train_split, load_foreground=False, mask_cache=cache)
    builder = RLSampleBuilder(train, d.num_frames, d.image_size, d.keyframe_top_k, family=d.family)
    val_ds = (ReVOSDataset(d.val_root or d.train_root, d.val_split, load_foreground=False, mask_cache=cache)
              if d.val_split else None)
    pools = training_pools(train, d.train_pool, val_size=d.val_max_samples if validation_enabled(cfg) else 0,
                           seed=d.seed, skip_no_target=d.skip_no_target, val_dataset=val_ds, builder=builder)
    draw = {"num_frames": d.num_frames, "image_size": d.image_size, "keyframe_top_k": d.keyframe_top_k, "seed": d.seed,
            "mask_cache": cache, "family": d.family}
    train_file = write_parquet(reference_rows(pools.train, d.train_root, d.train_split, redraw=True, **draw),
                               out / "train.parquet")
    val_file = None
    notes = []
    if pools.val:
        root, split = (d.val_root or d.train_root, d.val_split) if val_ds is not None else (d.train_root, d.train_split)
        val_file = write_parquet(reference_rows(pools.val, root, split, redraw=False, **draw), out / "val.parquet")
    if pools.val_source == "heldout":
        summary = (f"validation: {len(pools.val)} expressions of {len(pools.heldout_videos)} held-out training "
                   f"videos (video-disjoint; {pools.removed_from_train} pool expressions of those videos not trained on)")
    elif pools.val_source == "none":
        summary = "validation: none (trainer.test_freq <= 0 and no val_before_train, or data.val_max_samples 0)"
    else:
        summary = f"validation: {len(pools.val)} expressions of split {pools.val_source!r}"
        notes.append(f"data.val_split={d.val_split!r}: the best checkpoint is selected on split {d.val_split!r}; "
                     "if that split is also the one reported, the reported number is optimistic (docs/rl.md)")
    summary = f"training: {len(pools.train)} expressions -> {train_file}; {summary}"
    return DataFiles(str(Path(train_file).resolve()), str(Path(val_file).resolve()) if val_file else None,
                     summary, notes)


@dataclass
class LaunchPlan:
    cfg: GRPOConfig
    run_dir: Path
    yaml_path: Path
    command: list[str]
    data: DataFiles
    tree: object = None


def prepare(cfg: GRPOConfig, source: str, *, has_flash_attn: bool | None = None) -> LaunchPlan:
    """Steps 1-4 of the module docstring; raises LaunchError before any file is written when an input is missing."""
    cfg = absolute(cfg)
    problems = missing_inputs(cfg)
    if problems:
        raise LaunchError(problems[0] + (f" (and {len(problems) - 1} more: {'; '.join(problems[1:])})"
                                         if len(problems) > 1 else ""))
    run_dir = Path(cfg.trainer.default_local_dir)
    data = write_data(cfg, run_dir / "data")
    tree, _values, yaml_path, notes = build_tree(cfg, run_dir, train_file=data.train_file, val_file=data.val_file,
                                                 source=source, has_flash_attn=has_flash_attn)
    data.notes.extend(notes)
    command = [sys.executable, "-m", "verl.trainer.main_ppo", f"--config-path={run_dir}",
               f"--config-name={GENERATED_NAME}"]
    return LaunchPlan(cfg, run_dir, yaml_path, command, data, tree)


def tensorboard_dir(cfg: GRPOConfig) -> Path:
    return Path(cfg.trainer.default_local_dir) / "tensorboard"


def mark_tensorboard_resume(cfg: GRPOConfig) -> int | None:
    """On a resume from step S (resume_mode auto and a checkpoint tracker in the run folder), write a TensorBoard
    event file whose SessionLog.START at S + 1 purges the events after S that the interrupted run wrote (they are
    trained again). Returns S, or None when this launch is not a resume."""
    from veason_r1.rl.checkpoint import TRACKER

    if cfg.trainer.resume_mode != "auto" or "tensorboard" not in cfg.trainer.logger:
        return None
    tracker = Path(cfg.trainer.default_local_dir) / TRACKER
    text = tracker.read_text().strip() if tracker.is_file() else ""
    if not text.isdigit():
        return None
    step = int(text)
    out = tensorboard_dir(cfg)
    if not out.is_dir():
        return step
    from torch.utils.tensorboard import SummaryWriter

    SummaryWriter(str(out), purge_step=step + 1).close()
    return step


def launch(plan: LaunchPlan) -> int:
    """Run verl (in the run folder's parent process environment; Ray starts here)."""
    mark_tensorboard_resume(plan.cfg)
    env = {**os.environ, "TENSORBOARD_DIR": str(tensorboard_dir(plan.cfg))}
    return subprocess.call(plan.command, env=env)


def main(argv: list[str] | None = None) -> int:
    """`python -m veason_r1.rl.launch run-dir --config YAML [--set k=v ...]` prints the run folder (absolute), for
    the run scripts."""
    import argparse

    from veason_r1.rl.config import load_config

    p = argparse.ArgumentParser(prog="python -m veason_r1.rl.launch")
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run-dir")
    r.add_argument("--config", required=True)
    r.add_argument("--set", dest="overrides", action="append", default=[])
    args = p.parse_args(argv)
    try:
        print(absolute(load_config(args.config, args.overrides)).trainer.default_local_dir)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


__all__ = ["DataFiles", "LaunchError", "LaunchPlan", "absolute", "launch", "mark_tensorboard_resume", "missing_inputs",
           "prepare", "tensorboard_dir", "write_data"]
