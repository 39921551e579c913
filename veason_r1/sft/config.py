"""SFTConfig: the CoT SFT recipe (LoRA on Qwen2.5-VL with LLaMA-Factory), one dataclass mirrored by the YAML.

The paper gives no SFT hyper-parameters; the defaults below are this project's choice and each says why. Field
names are LLaMA-Factory's own keys, so `training_scripts/sft_qwen2_5vl_3b_lora.yaml` is at the same time a valid
`llamafactory-cli train` file and `SFTConfig.from_yaml`'s input. The one key of ours is `image_size`: the YAML
writes it as LLaMA-Factory's `image_max_pixels` = `image_min_pixels` = image_size**2, which pins every frame at
exactly image_size x image_size (the frames are already square at that size, so LLaMA-Factory never resizes them
and the policy sees the same 400 visual tokens per 560x560 frame as in RL and evaluation).

Every field is also a CLI flag (`--lora-rank 32`, `--no-bf16`, ...): see `add_config_flags` / `apply_flags`.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import types
import typing
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from veason_r1.config import IMAGE_SIZE
from veason_r1.errors import BadInput, MissingInput
from veason_r1.models.families import DEFAULT_FAMILY, FAMILIES

# Keys every run sets the same way: the stage is LoRA SFT, nothing else. They are written to the YAML so it runs
# under `llamafactory-cli train`, and a YAML that sets them differently is refused.
FIXED_TRAIN_KEYS: dict[str, Any] = {
    "stage": "sft",
    "do_train": True,
    "finetuning_type": "lora",
    "trust_remote_code": False,
}

# Paths are not hyper-parameters: the command takes them as --model / --data / --out, not as config flags.
PATH_FIELDS = ("model_name_or_path", "dataset_dir", "output_dir", "export_dir")

# Merge (LLaMA-Factory export) keys; ModelArguments fields, so `llamafactory-cli train` accepts them too.
EXPORT_FIELDS = ("export_dir", "export_size", "infer_dtype")



def optimizer_names() -> list[str]:
    """The `optim` values transformers accepts (its `OptimizerNames`); a value outside them crashed `sft` only after
    the data checks, and `preflight sft` passed it. Validated here, so both go through the one check."""
    try:
        from transformers.training_args import OptimizerNames
    except ImportError:  # transformers absent: the recipe's own choices only
        return ["adamw_torch", "adamw_torch_fused", "adafactor", "sgd"]
    return [o.value for o in OptimizerNames]

@dataclass
class SFTConfig:
    """LoRA CoT SFT. Defaults are the 3B recipe on one 80 GB GPU (effective batch 16)."""

    # --- model and data -----------------------------------------------------------------------------------------
    model_name_or_path: str = "Qwen/Qwen2.5-VL-3B-Instruct"
    dataset: str = "veason_cot"  # the entry of dataset_info.json written by data construction
    dataset_dir: str = "data/sft"  # folder holding dataset_info.json (image paths are relative to it)
    output_dir: str = "outputs/sft_3b/adapter"  # LoRA adapter + checkpoints
    export_dir: str | None = "outputs/sft_3b/merged"  # full HF model after merging (None: do not merge)
    # LLaMA-Factory's template of the policy family (models/families.py): qwen2_vl == Qwen2.5-VL's chat_template;
    # the family (its patch rule, its box convention) is the row whose template this is
    template: str = DEFAULT_FAMILY.sft_template
    # Frames are image_size x image_size: 560 -> 400 visual tokens each, as in RL and evaluation (docs/method.md §5).
    image_size: int = IMAGE_SIZE
    # 8 frames x 400 tokens + ~200 prompt tokens + a CoT of a few hundred tokens is ~3.7k; 8192 covers RL's largest
    # prompt (7100) plus its response budget (1024), so no sample is ever cut (a cut inside the image tokens would
    # break the sample).
    cutoff_len: int = 8192
    max_samples: int | None = None  # None: the whole pool (10,000 CoT samples)
    preprocessing_num_workers: int | None = 16
    dataloader_num_workers: int = 4

    # --- LoRA ---------------------------------------------------------------------------------------------------
    # SFT is a cold start: it teaches the <think>/<answer> format, the keyframe schema and the reasoning style, not
    # new perception, so a small adapter suffices and keeps the merged model close to the base for GRPO to explore.
    # Rank 16 / alpha 32 (scale 2, LLaMA-Factory's convention) on every linear layer of the language model.
    lora_rank: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_target: str = "all"  # all linear layers of the LLM (LLaMA-Factory skips the frozen vision tower)
    # Modules trained in full beside the adapter (LLaMA-Factory `additional_target`, saved in the merge), e.g.
    # "lm_head" for the toy base, which never saw English words as targets (the real base has; None for it).
    additional_target: str | None = None
    # The vision tower and merger stay frozen in SFT (LLaMA-Factory's default): GRPO trains them later (docs/method.md §8).
    freeze_vision_tower: bool = True
    freeze_multi_modal_projector: bool = True

    # --- optimisation ---------------------------------------------------------------------------------------------
    # 1e-4 is the usual LoRA rate for Qwen2.5-VL SFT (LLaMA-Factory's examples); with a cosine decay and 10% warmup.
    learning_rate: float = 1.0e-4
    # One epoch: GRPO runs on the same 10k expressions, so more SFT epochs would memorise the very boxes RL must learn
    # to earn; the format is learned well within one pass (625 optimizer steps at batch 16).
    num_train_epochs: float = 1.0
    max_steps: int = -1  # > 0 overrides epochs (tests, benchmarks)
    per_device_train_batch_size: int = 2
    gradient_accumulation_steps: int = 8  # 2 x 8 = 16 per GPU, the same 16 prompts per step as GRPO
    lr_scheduler_type: str = "cosine"
    warmup_steps: float = 0.1  # < 1: a fraction of the total steps (transformers 5)
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0  # as GRPO
    optim: str = "adamw_torch"
    seed: int = 42
    bf16: bool = True  # as the released checkpoints; switched off automatically on CPU
    use_cpu: bool = False  # set automatically when no CUDA device is present
    gradient_checkpointing: bool = True  # ~3.7k-token multimodal samples; written as disable_gradient_checkpointing
    flash_attn: str = "auto"  # LLaMA-Factory picks FA2 when installed, else SDPA
    deepspeed: str | None = None  # a DeepSpeed JSON for multi-GPU 7B if wanted; LoRA 3B/7B fits one 80 GB GPU

    # --- logging and checkpoints -----------------------------------------------------------------------------------
    logging_steps: int = 10
    save_steps: int = 200  # a crashed run resumes from the last checkpoint in output_dir
    save_total_limit: int = 3
    plot_loss: bool = True  # LLaMA-Factory writes training_loss.png next to the adapter
    report_to: str = "none"

    # --- merge (LLaMA-Factory export) -------------------------------------------------------------------------------
    export_size: int = 5  # GB per safetensors shard
    infer_dtype: str = "auto"  # auto: the base model's dtype (bf16 for Qwen2.5-VL; fp32 stays fp32 without bf16)

    def __post_init__(self) -> None:
        self.validate()

    # ----------------------------------------------------------------------------------------------------------------
    def validate(self) -> None:
        """Types (booleans are booleans, counts integers) and ranges of every field. A `BadInput` whose `where` is
        the field name; `from_dict` and `apply_flags` re-raise it naming the file or the flag."""
        hints = typing.get_type_hints(type(self))
        for f in fields(self):
            _check_type(hints[f.name], getattr(self, f.name), f.name)

        def need(cond: bool, field_name: str, why: str) -> None:
            if not cond:
                raise BadInput(field_name, f"{why}, got {getattr(self, field_name)!r}")

        rows = [r for r in FAMILIES.values() if r.sft_template == self.template]
        need(bool(rows), "template",
             f"must be a policy family's template ({', '.join(r.sft_template for r in FAMILIES.values())})")
        need(rows[0].image_size_problem(self.image_size) is None, "image_size",
             rows[0].image_size_problem(self.image_size) or "")
        need(self.cutoff_len > 0, "cutoff_len", "must be positive")
        need(self.max_samples is None or self.max_samples > 0, "max_samples", "must be positive (or null: all)")
        need(self.preprocessing_num_workers is None or self.preprocessing_num_workers > 0,
             "preprocessing_num_workers", "must be positive (or null)")
        need(self.dataloader_num_workers >= 0, "dataloader_num_workers", "must be >= 0")
        need(self.lora_rank > 0, "lora_rank", "must be positive")
        need(self.lora_alpha > 0, "lora_alpha", "must be positive")
        need(0.0 <= self.lora_dropout < 1.0, "lora_dropout", "must be in [0, 1)")
        need(bool(self.lora_target.strip()), "lora_target", "must name the LoRA target modules (e.g. all)")
        need(self.learning_rate > 0 and math.isfinite(self.learning_rate), "learning_rate", "must be positive")
        need(self.num_train_epochs > 0 or self.max_steps > 0, "num_train_epochs", "needs > 0 unless max_steps > 0")
        need(self.max_steps == -1 or self.max_steps > 0, "max_steps", "must be -1 (use epochs) or positive")
        need(self.per_device_train_batch_size > 0, "per_device_train_batch_size", "must be positive")
        need(self.gradient_accumulation_steps > 0, "gradient_accumulation_steps", "must be positive")
        need(self.warmup_steps >= 0, "warmup_steps", "must be >= 0 (< 1: a fraction of the steps)")
        need(self.weight_decay >= 0, "weight_decay", "must be >= 0")
        need(self.max_grad_norm > 0, "max_grad_norm", "must be positive")
        need(self.seed >= 0, "seed", "must be >= 0")
        need(self.lr_scheduler_type in LR_SCHEDULERS, "lr_scheduler_type",
             f"must be one of {', '.join(LR_SCHEDULERS)}")
        optims = optimizer_names()
        need(self.optim in optims, "optim", f"must be an optimizer transformers knows (e.g. {', '.join(optims[:4])})")
        need(self.flash_attn in FLASH_ATTN, "flash_attn", f"must be one of {', '.join(FLASH_ATTN)}")
        need(self.infer_dtype in ("auto", "float16", "bfloat16", "float32"), "infer_dtype",
             "must be auto, float16, bfloat16 or float32")
        need(self.logging_steps > 0, "logging_steps", "must be positive")
        need(self.save_steps > 0, "save_steps", "must be positive")
        need(self.save_total_limit is None or self.save_total_limit > 0, "save_total_limit", "must be positive")
        need(self.export_size > 0, "export_size", "must be a positive number of GB per shard")

    @property
    def image_pixels(self) -> int:
        return self.image_size * self.image_size

    @property
    def effective_batch_size(self) -> int:
        """Samples per optimizer step as written: per-device batch x accumulation on one device. The recipe's
        16; `for_world_size` keeps it whatever the GPU count."""
        return self.per_device_train_batch_size * self.gradient_accumulation_steps

    def for_world_size(self, world_size: int) -> tuple[SFTConfig, str]:
        """A copy whose gradient accumulation keeps `effective_batch_size` on `world_size` data-parallel GPUs
        (torchrun/DDP multiplies the batch by the GPU count), and the line that says so."""
        world = max(1, int(world_size))
        target, per = self.effective_batch_size, self.per_device_train_batch_size
        if target % (per * world):
            raise ValueError(
                f"SFTConfig: effective batch {target} (per_device_train_batch_size {per} x gradient_accumulation_steps "
                f"{self.gradient_accumulation_steps}) is not divisible by {per} x {world} GPUs; set "
                "per_device_train_batch_size / gradient_accumulation_steps so that it is"
            )
        accum = target // (per * world)
        scaled = dataclasses.replace(self, gradient_accumulation_steps=accum) if accum != self.gradient_accumulation_steps \
            else self
        return scaled, f"effective batch {target} = {per} per device x {accum} accumulation x {world} GPU(s)"

    # ----------------------------------------------------------------------------------------------------------------
    def to_llamafactory(self, include_export: bool = True) -> dict[str, Any]:
        """The `llamafactory-cli train` / `run_exp` argument dict (also the YAML's content, in this order)."""
        out: dict[str, Any] = dict(FIXED_TRAIN_KEYS)
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "image_size":
                out["image_max_pixels"] = self.image_pixels
                out["image_min_pixels"] = self.image_pixels
            elif f.name == "gradient_checkpointing":
                out["disable_gradient_checkpointing"] = not value
            elif f.name in EXPORT_FIELDS and not include_export:
                continue
            elif value is not None:
                out[f.name] = value
        out["overwrite_output_dir"] = False  # resume from the last checkpoint instead of starting over
        out["save_strategy"] = "steps"
        return out

    def to_merge_args(self, adapter_dir: str | Path | None = None, export_dir: str | Path | None = None) -> dict:
        """The `llamafactory-cli export` / `export_model` argument dict that merges the adapter into the base."""
        target = export_dir if export_dir is not None else self.export_dir
        if target is None:
            raise ValueError("SFTConfig.export_dir is None: nowhere to write the merged model")
        return {
            "model_name_or_path": self.model_name_or_path,
            "adapter_name_or_path": str(adapter_dir if adapter_dir is not None else self.output_dir),
            "template": self.template,
            "finetuning_type": "lora",
            "trust_remote_code": False,
            "image_max_pixels": self.image_pixels,
            "image_min_pixels": self.image_pixels,
            "export_dir": str(target),
            "export_size": self.export_size,
            "export_device": "cpu",
            "infer_dtype": self.infer_dtype,
        }

    def for_device(self, has_cuda: bool, world_size: int = 1) -> tuple[SFTConfig, list[str]]:
        """A copy adjusted to the machine (CPU: no bf16, `use_cpu`; several GPUs: accumulation scaled so the
        effective batch stays the recipe's) and the notes saying what changed."""
        scaled, batch_note = self.for_world_size(world_size if has_cuda else 1)
        notes = [batch_note] if scaled is not self else []
        if has_cuda:
            return scaled, notes
        changes: dict[str, Any] = {}
        if self.bf16:
            changes["bf16"] = False
            notes.append("no CUDA device: bf16 off (fp32 on CPU)")
        if not self.use_cpu:
            changes["use_cpu"] = True
            notes.append("no CUDA device: use_cpu on")
        if self.deepspeed:
            changes["deepspeed"] = None
            notes.append("no CUDA device: deepspeed off")
        return dataclasses.replace(scaled, **changes), notes

    # ----------------------------------------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> SFTConfig:
        """From our keys or LLaMA-Factory's (image_max_pixels/image_min_pixels, disable_gradient_checkpointing)."""
        data = dict(data)
        names = {f.name for f in fields(cls)}
        for key, fixed in FIXED_TRAIN_KEYS.items():
            if key in data and data.pop(key) != fixed:
                raise BadInput(source, f"`{key}` must be {fixed!r} for veason-r1 LoRA SFT")
        for key in ("overwrite_output_dir", "save_strategy"):
            data.pop(key, None)  # written by to_llamafactory; resuming is controlled by `veason-r1 sft --force`
        if "disable_gradient_checkpointing" in data:
            data["gradient_checkpointing"] = not bool(data.pop("disable_gradient_checkpointing"))
        max_px, min_px = data.pop("image_max_pixels", None), data.pop("image_min_pixels", None)
        if max_px is not None or min_px is not None:
            if max_px != min_px:
                raise BadInput(source, f"image_max_pixels ({max_px}) and image_min_pixels ({min_px}) must be equal: "
                                       "frames are pinned at image_size x image_size")
            side = math.isqrt(int(max_px))
            if side * side != int(max_px):
                raise BadInput(source, f"image_max_pixels {max_px} is not a square (image_size**2)")
            if "image_size" in data and int(data["image_size"]) != side:
                raise BadInput(source, f"image_size {data['image_size']} disagrees with image_max_pixels {max_px}")
            data["image_size"] = side
        unknown = sorted(set(data) - names)
        if unknown:
            raise BadInput(source, f"unknown SFT key(s) {unknown}", hint=f"known keys: {sorted(names)}")
        values = cls._checked(data, source)
        try:
            return cls(**values)
        except BadInput as e:  # the dataclass's own checks, named in the file they came from
            raise BadInput(source, f"{e.where}: {e.what}") from None

    @classmethod
    def from_yaml(cls, path: str | Path) -> SFTConfig:

        from veason_r1.structured_config import read_yaml

        path = Path(path)
        if not path.is_file():
            raise MissingInput(path, "SFT config does not exist")
        return cls.from_dict(read_yaml(path), source=str(path))  # a YAML syntax error names the file and line

    def with_overrides(self, overrides: list[str] | tuple[str, ...]) -> SFTConfig:
        """`key=value` dotlists (the grammar of every config here: OmegaConf values) applied on this config, each
        checked like a file (unknown keys, strict types, ranges); errors name the override."""
        from veason_r1.structured_config import parse_overrides

        changes: dict[str, Any] = {}
        for text, parsed in parse_overrides(list(overrides)):
            changes.update(self._checked(parsed, f"override {text!r}"))
        try:
            return dataclasses.replace(self, **changes) if changes else self
        except BadInput as e:  # the dataclass's own range checks, named with the overrides that set them
            raise BadInput(f"overrides {list(overrides)}", f"{e.where}: {e.what}") from None

    @classmethod
    def _checked(cls, values: dict, source: str) -> dict:
        """Known keys, each coerced strictly to its field's type (YAML booleans stay booleans); `BadInput` naming
        the source and the key."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise BadInput(source, f"unknown SFT key(s) {unknown}", hint=f"known keys: {sorted(names)}")
        hints = typing.get_type_hints(cls)
        out = {}
        for k, v in values.items():
            try:
                out[k] = _coerce(hints[k], v, k, strict=True)
            except BadInput as e:
                raise BadInput(source, f"{e.where}: {e.what}") from None
        return out

    def to_yaml(self, header: str = "") -> str:
        import yaml

        body = yaml.safe_dump(self.to_llamafactory(), sort_keys=False, default_flow_style=False)
        return (header if header.endswith("\n") or not header else header + "\n") + body


# ---------------------------------------------------------------------------------------------------------------------
# YAML values and CLI flags


def _base_type(hint: Any) -> tuple[type, bool]:
    """(scalar type, optional) of a field annotation such as `int | None`."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        non_none = [a for a in args if a is not type(None)]
        return non_none[0], len(non_none) < len(args)
    return hint, False


# transformers' SchedulerType values (tests/test_sft.py checks the mirror)
LR_SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
                 "inverse_sqrt", "reduce_lr_on_plateau", "cosine_with_min_lr", "cosine_warmup_with_min_lr",
                 "warmup_stable_decay", "greedy")
FLASH_ATTN = ("auto", "disabled", "sdpa", "fa2", "fa3")  # LLaMA-Factory's AttentionFunction


def _coerce(hint: Any, value: Any, where: str, strict: bool = False) -> Any:
    """A YAML value (`strict`: booleans must be YAML booleans, numbers must not be booleans) or flag text as the
    field's type; `BadInput` naming `where` otherwise. `use_cpu: "no"` is refused, never read as truthy."""
    base, optional = _base_type(hint)
    if value is None:
        if optional:
            return None
        raise BadInput(where, "may not be null")
    if base is bool:
        if isinstance(value, bool):
            return value
        if not strict and isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise BadInput(where, f"expected true or false, got {value!r} ({type(value).__name__})")
    if base in (int, float) and isinstance(value, bool):
        raise BadInput(where, f"expected {'an integer' if base is int else 'a number'}, got {value!r}")
    try:
        if base in (int, float) and isinstance(value, bool):
            raise ValueError
        if base is int and isinstance(value, float) and not value.is_integer():
            raise ValueError
        out = base(value)
    except (TypeError, ValueError):
        raise BadInput(where, f"expected {'an integer' if base is int else base.__name__}, got {value!r}") from None
    if base is float and not math.isfinite(out):
        raise BadInput(where, f"expected a finite number, got {value!r}")
    return out


def _check_type(hint: Any, value: Any, where: str) -> None:
    """A field set from Python (not YAML) has its declared type: no bool for int, no str for bool."""
    base, optional = _base_type(hint)
    if value is None:
        if not optional:
            raise BadInput(where, "may not be None")
        return
    ok = {bool: isinstance(value, bool),
          int: isinstance(value, int) and not isinstance(value, bool),
          float: isinstance(value, (int, float)) and not isinstance(value, bool),
          str: isinstance(value, str)}.get(base, True)
    if not ok:
        raise BadInput(where, f"expected {base.__name__}, got {value!r} ({type(value).__name__})")


_NONE = object()  # a flag given as "none"


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_config_flags(parser: argparse.ArgumentParser, skip: tuple[str, ...] = PATH_FIELDS) -> None:
    """One flag per SFTConfig field (default None = keep the config's value). Bools get --x / --no-x."""
    group = parser.add_argument_group("SFT hyper-parameters (override --config; defaults: the 3B recipe)")
    hints = typing.get_type_hints(SFTConfig)
    defaults = SFTConfig()
    for f in fields(SFTConfig):
        if f.name in skip:
            continue
        base, optional = _base_type(hints[f.name])
        default = getattr(defaults, f.name)
        help_text = f"(recipe: {default})"
        if base is bool:
            group.add_argument(_flag(f.name), dest=f"cfg_{f.name}", action=argparse.BooleanOptionalAction,
                               default=None, help=help_text)
        else:
            def parse(text: str, _base=base, _opt=optional, _name=f.name):
                if _opt and text.lower() in ("none", "null"):
                    return _NONE  # "set to None", distinct from "flag not given"
                try:
                    return _coerce(_base, text, _flag(_name))
                except BadInput as e:
                    raise argparse.ArgumentTypeError(e.what) from None

            metavar = base.__name__.upper() + ("|none" if optional else "")
            group.add_argument(_flag(f.name), dest=f"cfg_{f.name}", type=parse, default=None, metavar=metavar,
                               help=help_text)


def apply_flags(config: SFTConfig, args: argparse.Namespace) -> SFTConfig:
    """The config with every flag the user gave (not None) applied; validated again."""
    changes = {}
    for f in fields(SFTConfig):
        value = getattr(args, f"cfg_{f.name}", None)
        if value is not None:
            changes[f.name] = None if value is _NONE else value
    if not changes:
        return config
    try:
        return dataclasses.replace(config, **changes)
    except BadInput as e:
        raise BadInput(_flag(e.where) if e.where in changes else f"SFTConfig.{e.where}", e.what) from None


def launch_world_size(launcher: str, device_count: int | None = None, environ: dict | None = None) -> int:
    """Data-parallel processes the SFT run will have: "inprocess" is one; "cli" is what LLaMA-Factory 0.9.5's
    launcher starts (torchrun with NNODES x NPROC_PER_NODE, default the visible GPU count, when there is more than
    one GPU or FORCE_TORCHRUN is set; llamafactory/launcher.py)."""
    if launcher != "cli":
        return 1
    env = os.environ if environ is None else environ
    if device_count is None:
        import torch

        device_count = torch.cuda.device_count()
    forced = str(env.get("FORCE_TORCHRUN", "")).lower() in ("1", "true", "y", "yes")
    if not forced and device_count <= 1:
        return 1
    return int(env.get("NNODES", "1")) * int(env.get("NPROC_PER_NODE", str(device_count)))


__all__ = ["FIXED_TRAIN_KEYS", "PATH_FIELDS", "SFTConfig", "add_config_flags", "apply_flags", "launch_world_size"]
