"""Local-trainer checkpoints, laid out like verl's: `<dir>/global_step_<N>/` plus `latest_checkpointed_iteration.txt`.

A step folder holds `model/` (a complete Hugging Face folder with the processor for full fine-tuning, so
`load_policy` and evaluation read it directly; a PEFT adapter for LoRA), `optimizer.pt` and `trainer_state.json`
(step, best validation, RNG state). The tracker file is written last, so a crash mid-save leaves the previous
checkpoint as the resume point. `best_checkpoint.json` names the step with the best validation reward. `prune`
keeps the last K steps plus the best (verl's checkpoints, same layout, go through it too: `verl_callbacks`).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from veason_r1.io_utils import atomic_write_json, atomic_write_text, honour_umask

TRACKER = "latest_checkpointed_iteration.txt"
BEST = "best_checkpoint.json"


def step_dir(root: str | Path, step: int) -> Path:
    return Path(root) / f"global_step_{int(step)}"


def latest_step(root: str | Path) -> int | None:
    """The step of the last complete checkpoint under `root`, or None."""
    tracker = Path(root) / TRACKER
    if not tracker.is_file():
        return None
    text = tracker.read_text().strip()
    if not text.isdigit():
        raise ValueError(f"{tracker}: expected a step number, got {text!r}")
    step = int(text)
    if not (step_dir(root, step) / "trainer_state.json").is_file():
        raise FileNotFoundError(f"{tracker} names step {step} but {step_dir(root, step)} is incomplete")
    return step


def save(root: str | Path, step: int, model, processor, optimizer, state: dict[str, Any]) -> Path:
    """Write one checkpoint, then move the tracker to it."""
    import torch

    out = step_dir(root, step)
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    (tmp / "model").mkdir(parents=True)
    model.save_pretrained(str(tmp / "model"))
    if processor is not None:
        processor.save_pretrained(str(tmp / "model"))
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    atomic_write_json(tmp / "trainer_state.json", state, indent=2)
    honour_umask(tmp)  # safetensors' files are written 0600
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    atomic_write_text(Path(root) / TRACKER, str(int(step)))
    return out


def load_model_weights(model, folder: str | Path, lora: bool) -> None:
    """Load a checkpoint's `model/` weights into an already built model (full state dict or LoRA adapter)."""
    folder = Path(folder)
    if lora:
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        set_peft_model_state_dict(model, load_file(str(folder / "adapter_model.safetensors")))
        return
    # save_pretrained writes the hub's key layout; from_pretrained maps it back, then the tensors are copied in
    src = type(model).from_pretrained(str(folder), dtype=next(model.parameters()).dtype, local_files_only=True)
    try:
        model.load_state_dict(src.state_dict(), strict=True)
    except RuntimeError as e:
        raise RuntimeError(f"{folder}: checkpoint does not fit the model ({str(e).splitlines()[0]})") from None
    finally:
        del src


def saved_steps(root: str | Path) -> list[int]:
    """Steps with a `global_step_<N>` folder under `root`, ascending."""
    return sorted(int(p.name.split("_")[-1]) for p in Path(root).glob("global_step_*")
                  if p.is_dir() and p.name.split("_")[-1].isdigit())


def prune(root: str | Path, keep: int | None, protect: set[int]) -> list[int]:
    """Keep the newest `keep` step folders and the protected ones (the best, the latest); delete the others.
    `keep` None keeps everything. The step the tracker names is never deleted."""
    if keep is None:
        return []
    steps = saved_steps(root)
    tracker = Path(root) / TRACKER
    text = tracker.read_text().strip() if tracker.is_file() else ""
    tracked = int(text) if text.isdigit() else None
    keep_set = set(steps[-keep:]) | set(protect) | ({tracked} if tracked is not None else set())
    removed = []
    for s in steps:
        if s not in keep_set:
            shutil.rmtree(step_dir(root, s))
            removed.append(s)
    return removed


def truncate_log(path: str | Path, step: int) -> int:
    """Drop the JSONL records of `path` whose "step" is after `step` (atomic rewrite); returns how many."""
    import json

    path = Path(path)
    if not path.is_file():
        return 0
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    kept = []
    for line in lines:
        try:
            record_step = json.loads(line).get("step", 0)
        except json.JSONDecodeError:  # a torn last line of a killed run
            continue
        if int(record_step) <= step:
            kept.append(line)
    if len(kept) != len(lines):
        atomic_write_text(path, "".join(line + "\n" for line in kept))
    return len(lines) - len(kept)
