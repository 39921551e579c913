"""CoT SFT: LoRA training with LLaMA-Factory's own trainer, then the adapter merged into a full HF model.

Why LLaMA-Factory's trainer and not our own loop: the authors trained with it, and its `qwen2_vl` template and
Qwen2-VL multimodal plugin tokenize a sharegpt row exactly as Qwen2.5-VL's chat template does (one
`<|vision_start|><|image_pad|>*n<|vision_end|>` block per `<image>`), so SFT sees the very token sequence RL and
inference build with `veason_r1.models.policy.build_inputs` (tests/test_sft.py checks it token for token).

Two launchers:
- "inprocess": `llamafactory.train.tuner.run_exp(args)` / `export_model(args)` in this process (one device; CPU
  tests, one GPU).
- "cli": `llamafactory-cli train|export <yaml>` in a subprocess; with more than one visible GPU LLaMA-Factory starts
  torchrun itself (DDP).

Resumable: a finished stage leaves a marker (`sft_done.json` in the adapter folder, `merge_done.json` in the merged
folder) and is skipped next time unless `force`; an interrupted training resumes from the last `checkpoint-*`
(LLaMA-Factory does that when `overwrite_output_dir` is false). The merged model is written to a temporary folder
and moved in place only when complete.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from veason_r1.errors import BadInput, MissingInput, UserError
from veason_r1.io_utils import atomic_write_json, atomic_write_text, honour_umask
from veason_r1.paths import is_owned, mark_owned, remove_owned_tree
from veason_r1.prompting import IMAGE_PLACEHOLDER
from veason_r1.sft.config import SFTConfig

TRAIN_DONE = "sft_done.json"
MERGE_DONE = "merge_done.json"
TRAIN_YAML = "llamafactory_train.yaml"
MERGE_YAML = "llamafactory_merge.yaml"
LAUNCHERS = ("inprocess", "cli")


@dataclass
class DatasetSummary:
    """What `check_dataset` found: the data file, its size, and the image size every frame has."""

    data_file: Path
    num_samples: int
    num_images: int
    image_size: int


@dataclass
class SFTResult:
    adapter_dir: Path
    merged_dir: Path | None
    losses: list[float] = field(default_factory=list)  # logged training losses, in step order
    metrics: dict[str, Any] = field(default_factory=dict)  # LLaMA-Factory's train_results.json
    skipped: list[str] = field(default_factory=list)  # stages skipped because already done


# ---------------------------------------------------------------------------------------------------------------------
# Data checks: fail before loading a 3B model, naming the file, row and field.


def _dataset_entry(dataset_dir: Path, dataset: str) -> tuple[dict, Path]:
    info_path = dataset_dir / "dataset_info.json"
    if not info_path.is_file():
        raise MissingInput(info_path, "not found",
                           hint="--data must be the folder written by the SFT data export (`veason-r1 cot` writes "
                                "OUT/sft; veason_r1.sft.dataset.export_llamafactory_dataset)")
    try:
        info = json.loads(info_path.read_text())
    except json.JSONDecodeError as e:
        raise BadInput(info_path, f"not valid JSON ({e})") from None
    if dataset not in info:
        raise BadInput(info_path, f"no dataset named {dataset!r} (has {sorted(info)}); set --dataset")
    entry = info[dataset]
    if entry.get("formatting") != "sharegpt":
        raise BadInput(info_path, f"{dataset}.formatting must be 'sharegpt', got {entry.get('formatting')!r}")
    data_file = dataset_dir / entry.get("file_name", "")
    if not data_file.is_file():
        raise MissingInput(info_path, f"{dataset}.file_name -> {data_file} does not exist")
    return entry, data_file


def _load_rows(data_file: Path) -> list[dict]:
    text = data_file.read_text()
    if data_file.suffix == ".jsonl":
        rows = []
        for i, line in enumerate(text.splitlines()):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise BadInput(f"{data_file}:{i + 1}", f"not valid JSON ({e})") from None
        return rows
    try:
        rows = json.loads(text)
    except json.JSONDecodeError as e:
        raise BadInput(data_file, f"not valid JSON ({e})") from None
    if not isinstance(rows, list):
        raise BadInput(data_file, f"expected a list of rows, got {type(rows).__name__}")
    return rows


def check_dataset(dataset_dir: str | Path, dataset: str, image_size: int, check_images: bool = True) -> DatasetSummary:
    """Validate a LLaMA-Factory sharegpt dataset against the SFT contract.

    Each row: messages = [system?, user, assistant] with role/content keys, one `<image>` in the user turn per entry
    of `images`, and (when `check_images`) every image file present and exactly image_size x image_size, so that
    LLaMA-Factory never resizes a frame and the token count matches RL and inference.
    """
    from PIL import Image

    dataset_dir = Path(dataset_dir)
    entry, data_file = _dataset_entry(dataset_dir, dataset)
    columns = entry.get("columns", {})
    tags = entry.get("tags", {})
    msg_key, img_key = columns.get("messages", "conversations"), columns.get("images")
    role_key, content_key = tags.get("role_tag", "from"), tags.get("content_tag", "value")
    user_tag, assistant_tag = tags.get("user_tag", "human"), tags.get("assistant_tag", "gpt")
    system_tag = tags.get("system_tag", "system")
    if img_key is None:
        raise BadInput(dataset_dir / 'dataset_info.json', f"{dataset}.columns has no 'images' column")
    media_dir = Path(entry.get("media_dir", dataset_dir))
    rows = _load_rows(data_file)
    if not rows:
        raise BadInput(data_file, "no rows")
    num_images = 0
    for i, row in enumerate(rows):
        where = f"{data_file} row {i}"
        messages = row.get(msg_key)
        if not isinstance(messages, list) or not messages:
            raise BadInput(where, f"'{msg_key}' must be a non-empty list of messages")
        roles = [m.get(role_key) if isinstance(m, dict) else None for m in messages]
        turns = roles[1:] if roles[0] == system_tag else roles
        if turns != [user_tag, assistant_tag]:
            raise BadInput(where, f"roles {roles}; expected [{system_tag}?, {user_tag}, {assistant_tag}]")
        user = messages[-2].get(content_key)
        images = row.get(img_key)
        if not isinstance(user, str) or not isinstance(images, list) or not images:
            raise BadInput(where, f"user '{content_key}' must be a string and '{img_key}' a non-empty list")
        if user.count(IMAGE_PLACEHOLDER) != len(images):
            raise BadInput(where, f"{user.count(IMAGE_PLACEHOLDER)} {IMAGE_PLACEHOLDER} placeholders for {len(images)} images"
            )
        num_images += len(images)
        if not check_images:
            continue
        for img in images:
            path = Path(img) if Path(img).is_absolute() else media_dir / img
            if not path.is_file():
                raise MissingInput(where, f"image {path} does not exist")
            with Image.open(path) as im:  # reads the header only
                if im.size != (image_size, image_size):
                    raise BadInput(where, f"image {path} is {im.size[0]}x{im.size[1]}, expected {image_size}x{image_size} "
                        "(export the SFT data at the policy's image_size)"
                    )
    return DatasetSummary(data_file=data_file, num_samples=len(rows), num_images=num_images, image_size=image_size)


# ---------------------------------------------------------------------------------------------------------------------
# Training and merging


def _llamafactory_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TRANSFORMERS_OFFLINE", "1")
    env.setdefault("WANDB_MODE", "offline")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


def _run_cli(command: str, yaml_path: Path) -> None:
    exe = shutil.which("llamafactory-cli") or str(Path(sys.executable).with_name("llamafactory-cli"))
    if not Path(exe).exists():
        raise FileNotFoundError("llamafactory-cli not found: pip install 'veason-r1[sft]' (llamafactory==0.9.5)")
    proc = subprocess.run([exe, command, str(yaml_path)], check=False, env=_llamafactory_env())
    if proc.returncode != 0:
        raise RuntimeError(f"llamafactory-cli {command} {yaml_path} failed with exit code {proc.returncode}")


def read_losses(adapter_dir: str | Path) -> list[float]:
    """Logged training losses from LLaMA-Factory's trainer_log.jsonl (step order; empty when none were logged)."""
    path = Path(adapter_dir) / TRAINER_LOG
    if not path.is_file():
        return []
    losses = []
    for line in path.read_text().splitlines():
        if line.strip():
            rec = json.loads(line)
            if "loss" in rec and rec["loss"] is not None:
                losses.append(float(rec["loss"]))
    return losses


TRAINER_LOG = "trainer_log.jsonl"  # LLaMA-Factory's LogCallback appends one line per logging step


def truncate_trainer_log(adapter_dir: str | Path) -> int | None:
    """Cut `trainer_log.jsonl` back to the checkpoint the next training resumes from (LLaMA-Factory's choice:
    transformers' `get_last_checkpoint`), so an interrupted and resumed run logs each step once, not twice.
    No checkpoint: training starts over, so the whole log goes. Returns the step kept up to (None: no log)."""
    from transformers.trainer_utils import get_last_checkpoint

    out = Path(adapter_dir)
    path = out / TRAINER_LOG
    if not path.is_file():
        return None
    last = get_last_checkpoint(str(out)) if out.is_dir() else None
    step = int(Path(last).name.rsplit("-", 1)[-1]) if last else 0
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines(keepends=True):
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line torn by the kill
        if isinstance(rec, dict) and int(rec.get("current_steps", 0)) <= step:
            kept.append(line if line.endswith("\n") else line + "\n")
    atomic_write_text(path, "".join(kept))
    return step


def train_lora(config: SFTConfig, launcher: str = "inprocess", force: bool = False) -> tuple[Path, bool]:
    """Train the LoRA adapter into config.output_dir. Returns (adapter_dir, skipped_because_done)."""
    if launcher not in LAUNCHERS:
        raise ValueError(f"launcher must be one of {LAUNCHERS}, got {launcher!r}")
    out = Path(config.output_dir)
    if (out / TRAIN_DONE).is_file() and not force:
        return out, True
    args = config.to_llamafactory(include_export=False)
    if force:
        args["overwrite_output_dir"] = True
        (out / TRAIN_DONE).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    if not force:
        truncate_trainer_log(out)  # a resumed run appends from its checkpoint's step on
    yaml_path = out.parent / f"{out.name}.{TRAIN_YAML}"  # beside, not inside: LLaMA-Factory checks output_dir
    import yaml

    atomic_write_text(yaml_path, yaml.safe_dump(args, sort_keys=False))
    start = time.time()
    if launcher == "cli":
        _run_cli("train", yaml_path)
    else:
        os.environ.update({k: v for k, v in _llamafactory_env().items() if k not in os.environ})
        from llamafactory.train.tuner import run_exp

        run_exp(dict(args))
    if not (out / "adapter_model.safetensors").is_file() and not (out / "adapter_model.bin").is_file():
        raise RuntimeError(f"LLaMA-Factory finished but wrote no adapter weights in {out}")
    honour_umask(out)  # PEFT's safetensors are written 0600
    metrics = json.loads((out / "train_results.json").read_text()) if (out / "train_results.json").is_file() else {}
    atomic_write_json(
        out / TRAIN_DONE,
        {"seconds": round(time.time() - start, 2), "metrics": metrics, "config": dataclasses.asdict(config)},
        indent=2,
    )
    return out, False


def merge_lora(
    config: SFTConfig,
    adapter_dir: str | Path | None = None,
    merged_dir: str | Path | None = None,
    launcher: str = "inprocess",
    force: bool = False,
) -> tuple[Path, bool]:
    """Merge the adapter into the base with LLaMA-Factory's export (weights + tokenizer + processor files).

    Returns (merged_dir, skipped_because_done). Written to `<merged_dir>.tmp` first and moved in when complete.
    """
    if launcher not in LAUNCHERS:
        raise ValueError(f"launcher must be one of {LAUNCHERS}, got {launcher!r}")
    adapter = Path(adapter_dir if adapter_dir is not None else config.output_dir)
    if merged_dir is None and config.export_dir is None:
        raise ValueError("merge_lora: no merged_dir given and SFTConfig.export_dir is None")
    target = Path(merged_dir if merged_dir is not None else config.export_dir)
    if (target / MERGE_DONE).is_file() and not force:
        return target, True
    if not (adapter / "adapter_config.json").is_file():
        raise FileNotFoundError(f"merge_lora: {adapter} holds no LoRA adapter (adapter_config.json missing)")
    tmp = target.with_name(f".{target.name}.tmp")
    if (target.exists() or target.is_symlink()) and not is_owned(target, MERGE_DONE):
        raise UserError(target, f"exists but is not a merged model written by `veason-r1 sft` (no {MERGE_DONE}): "
                                "refusing to replace it", hint="choose another --out, or move the folder away")
    remove_owned_tree(tmp, tmp.parent)  # a killed merge's private folder (marked when created)
    mark_owned(tmp, "sft")
    args = config.to_merge_args(adapter_dir=adapter, export_dir=tmp)
    import yaml

    yaml_path = target.parent / f"{target.name}.{MERGE_YAML}"
    yaml_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(yaml_path, yaml.safe_dump({**args, "export_dir": str(target)}, sort_keys=False))
    if launcher == "cli":
        tmp_yaml = tmp.with_suffix(".yaml")
        atomic_write_text(tmp_yaml, yaml.safe_dump(args, sort_keys=False))
        try:
            _run_cli("export", tmp_yaml)
        finally:
            tmp_yaml.unlink(missing_ok=True)
    else:
        os.environ.update({k: v for k, v in _llamafactory_env().items() if k not in os.environ})
        from llamafactory.train.tuner import export_model

        export_model(dict(args))
    missing = [n for n in ("config.json", "tokenizer_config.json") if not (tmp / n).is_file()]
    if not any(tmp.glob("*.safetensors")):
        missing.append("*.safetensors")
    if not ((tmp / "preprocessor_config.json").is_file() or (tmp / "processor_config.json").is_file()):
        missing.append("processor config")
    if missing:
        raise RuntimeError(f"LLaMA-Factory export left an incomplete model in {tmp}: missing {missing}")
    honour_umask(tmp)  # safetensors' shards are written 0600
    atomic_write_json(tmp / MERGE_DONE, {"base": config.model_name_or_path, "adapter": str(adapter)}, indent=2)
    remove_owned_tree(target, target.parent, marker=MERGE_DONE)  # an earlier merge (--force): ours, checked above
    tmp.rename(target)
    return target, False


def run_sft(
    config: SFTConfig,
    launcher: str = "inprocess",
    force: bool = False,
    check_images: bool = True,
) -> SFTResult:
    """Check the data, train the adapter (or resume / skip), merge it when config.export_dir is set."""
    check_dataset(config.dataset_dir, config.dataset, config.image_size, check_images=check_images)
    adapter, skipped_train = train_lora(config, launcher=launcher, force=force)
    merged, skipped_merge = None, False
    if config.export_dir is not None:
        merged, skipped_merge = merge_lora(config, adapter, launcher=launcher, force=force or not skipped_train)
    metrics = {}
    if (adapter / "train_results.json").is_file():
        metrics = json.loads((adapter / "train_results.json").read_text())
    skipped = [name for name, s in (("train", skipped_train), ("merge", skipped_merge)) if s]
    return SFTResult(adapter_dir=adapter, merged_dir=merged, losses=read_losses(adapter), metrics=metrics,
                     skipped=skipped)


__all__ = [
    "DatasetSummary",
    "SFTResult",
    "check_dataset",
    "merge_lora",
    "read_losses",
    "run_sft",
    "train_lora",
]
