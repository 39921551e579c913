"""Local-trainer checkpoints, laid out like verl's: `<dir>/global_step_<N>/` plus `latest_checkpointed_iteration.txt`.

A step folder holds `model/` (a complete Hugging Face folder with the processor for full fine-tuning, so
`load_policy` and evaluation read it directly; a PEFT adapter for LoRA), `optimizer.pt` and `trainer_state.json`
(step, best validation, RNG state). The tracker file is written last, so a crash mid-save leaves the previous
checkpoint as the resume point. `best_checkpoint.json` names the step with the best validation reward.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from veason_r1.io_utils import atomic_write_json, atomic_write_text

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


def prune(root: str | Path, keep: int | None, protect: set[int]) -> list[int]:
    """Delete the oldest step folders beyond `keep`, never the protected ones (the best, the latest)."""
    if not keep or keep <= 0:
        return []
    steps = sorted(int(p.name.split("_")[-1]) for p in Path(root).glob("global_step_*") if p.name.split("_")[-1].isdigit())
    removable = [s for s in steps if s not in protect]
    excess = len(steps) - keep
    removed = []
    for s in removable[: max(0, excess)]:
        shutil.rmtree(step_dir(root, s))
        removed.append(s)
    return removed
