"""GRPO configuration as dataclasses, mirrored by YAML, with leaf names taken from verl 0.9.1.

One config drives both back-ends: the local one-device trainer reads it directly, and the verl path writes the same
numbers into verl keys (`verl_overrides`). Where a field has a verl counterpart its name is verl's leaf name
(`actor.kl_loss_coef` <-> `actor_rollout_ref.actor.kl_loss_coef`); `VERL_KEYS` lists every mapping. Defaults are the
3B run of docs/method.md §8.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from veason_r1.config import FRAMES, IMAGE_SIZE


@dataclass
class DataConfig:
    train_root: str = ""  # a ReVOS-format root (JPEGImages/, mask_dict.json, meta_expressions_<split>_.json)
    train_split: str = "train"
    train_pool: str | None = None  # optional JSONL of {"video", "exp_id"} (the sampled 10k pool); None = whole split
    val_root: str | None = None  # held-out subset for periodic validation; None = no validation
    val_split: str = "valid"
    val_max_samples: int = 64  # size of the held-out subset (deterministic: first N after a seeded shuffle)
    num_frames: int = FRAMES.rl_frames  # N of the RL training grid (docs/method.md §4)
    keyframe_top_k: int = FRAMES.keyframe_top_k
    image_size: int = IMAGE_SIZE
    train_batch_size: int = 16  # prompts per step
    max_prompt_length: int = 7100
    max_response_length: int = 1024
    shuffle: bool = True
    seed: int = 0
    skip_no_target: bool = True  # type_id 2 has no GT: RL drops it (docs/method.md §3)


@dataclass
class ModelConfig:
    path: str = ""  # the SFT-merged Hugging Face folder
    enable_gradient_checkpointing: bool = True
    lora_rank: int = 0  # 0 = full fine-tune (the paper); > 0 = LoRA on the language model's linear layers
    lora_alpha: int = 16
    target_modules: str | list[str] = "all-linear"


@dataclass
class ActorConfig:
    lr: float = 1e-6
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    lr_scheduler_type: str = "constant"
    grad_clip: float = 1.0
    clip_ratio: float = 0.2
    clip_ratio_c: float = 3.0
    loss_agg_mode: str = "token-mean"
    entropy_coeff: float = 1e-3
    use_kl_loss: bool = True
    kl_loss_coef: float = 5e-3
    kl_loss_type: str = "low_var_kl"
    ppo_epochs: int = 1
    ppo_mini_batch_size: int = 16  # prompts per optimizer step (= train_batch_size: one update per rollout batch)
    ppo_micro_batch_size_per_gpu: int = 4  # sequences per forward/backward (gradient accumulation)
    freeze_vision_tower: bool = False  # the paper trains the vision tower


@dataclass
class RolloutConfig:
    n: int = 8
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    val_temperature: float = 0.0  # greedy validation, as verl's val_kwargs default
    val_n: int = 1
    batch_size: int = 16  # sequences per generate() call in the local trainer


@dataclass
class AlgorithmConfig:
    adv_estimator: str = "grpo"
    norm_adv_by_std_in_grpo: bool = True
    epsilon: float = 1e-6


@dataclass
class RewardSettings:
    variant: str = "faithful"
    use_consistency: bool = True
    sam2: str = "tiny"  # load_sam2 name; the real run uses hiera_large (docs/method.md §7)
    sam2_checkpoint: str | None = None
    sam2_device: str | None = None  # None = same device as the policy


@dataclass
class TrainerConfig:
    project_name: str = "veason_r1"
    experiment_name: str = "grpo_qwen2_5vl_3b"
    default_local_dir: str = "outputs/rl/grpo"
    total_epochs: int = 1
    total_training_steps: int | None = None  # None = one pass over the pool (625 steps for 10k prompts / 16)
    save_freq: int = 100
    test_freq: int = 100
    val_before_train: bool = False
    resume_mode: str = "auto"  # auto | disable
    logger: list[str] = field(default_factory=lambda: ["console", "tensorboard"])
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    dtype: str = "bfloat16"  # compute dtype of the local trainer (fp32 master weights are kept)
    max_ckpt_to_keep: int | None = None
    seed: int = 0


@dataclass
class GRPOConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    actor: ActorConfig = field(default_factory=ActorConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    reward: RewardSettings = field(default_factory=RewardSettings)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# our field -> verl 0.9.1 key (actor_rollout_ref.* / data.* / algorithm.* / trainer.*)
VERL_KEYS: dict[str, str] = {
    "data.train_batch_size": "data.train_batch_size",
    "data.max_prompt_length": "data.max_prompt_length",
    "data.max_response_length": "data.max_response_length",
    "data.shuffle": "data.shuffle",
    "data.val_max_samples": "data.val_max_samples",
    "model.path": "actor_rollout_ref.model.path",
    "model.enable_gradient_checkpointing": "actor_rollout_ref.model.enable_gradient_checkpointing",
    "model.lora_rank": "actor_rollout_ref.model.lora_rank",
    "model.lora_alpha": "actor_rollout_ref.model.lora_alpha",
    "model.target_modules": "actor_rollout_ref.model.target_modules",
    "actor.lr": "actor_rollout_ref.actor.optim.lr",
    "actor.weight_decay": "actor_rollout_ref.actor.optim.weight_decay",
    "actor.betas": "actor_rollout_ref.actor.optim.betas",
    "actor.lr_scheduler_type": "actor_rollout_ref.actor.optim.lr_scheduler_type",
    "actor.grad_clip": "actor_rollout_ref.actor.optim.clip_grad",
    "actor.clip_ratio": "actor_rollout_ref.actor.clip_ratio",
    "actor.clip_ratio_c": "actor_rollout_ref.actor.clip_ratio_c",
    "actor.loss_agg_mode": "actor_rollout_ref.actor.loss_agg_mode",
    "actor.entropy_coeff": "actor_rollout_ref.actor.entropy_coeff",
    "actor.use_kl_loss": "actor_rollout_ref.actor.use_kl_loss",
    "actor.kl_loss_coef": "actor_rollout_ref.actor.kl_loss_coef",
    "actor.kl_loss_type": "actor_rollout_ref.actor.kl_loss_type",
    "actor.ppo_epochs": "actor_rollout_ref.actor.ppo_epochs",
    "actor.ppo_mini_batch_size": "actor_rollout_ref.actor.ppo_mini_batch_size",
    "actor.ppo_micro_batch_size_per_gpu": "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu",
    "actor.freeze_vision_tower": "actor_rollout_ref.actor.freeze_vision_tower",
    "rollout.n": "actor_rollout_ref.rollout.n",
    "rollout.temperature": "actor_rollout_ref.rollout.temperature",
    "rollout.top_p": "actor_rollout_ref.rollout.top_p",
    "rollout.top_k": "actor_rollout_ref.rollout.top_k",
    "rollout.val_temperature": "actor_rollout_ref.rollout.val_kwargs.temperature",
    "rollout.val_n": "actor_rollout_ref.rollout.val_kwargs.n",
    "algorithm.adv_estimator": "algorithm.adv_estimator",
    "algorithm.norm_adv_by_std_in_grpo": "algorithm.norm_adv_by_std_in_grpo",
    "trainer.project_name": "trainer.project_name",
    "trainer.experiment_name": "trainer.experiment_name",
    "trainer.default_local_dir": "trainer.default_local_dir",
    "trainer.total_epochs": "trainer.total_epochs",
    "trainer.total_training_steps": "trainer.total_training_steps",
    "trainer.save_freq": "trainer.save_freq",
    "trainer.test_freq": "trainer.test_freq",
    "trainer.val_before_train": "trainer.val_before_train",
    "trainer.resume_mode": "trainer.resume_mode",
    "trainer.logger": "trainer.logger",
    "trainer.max_ckpt_to_keep": "trainer.max_actor_ckpt_to_keep",
}


def _build(cls, values: dict, where: str):
    if not isinstance(values, dict):
        raise ValueError(f"{where}: expected a mapping, got {type(values).__name__}")
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; known: {sorted(names)}")
    kwargs = {}
    for key, value in values.items():
        default = getattr(cls(), key)
        if dataclasses.is_dataclass(default):
            kwargs[key] = _build(type(default), value or {}, f"{where}.{key}")
        elif isinstance(default, tuple) and isinstance(value, list):
            kwargs[key] = tuple(value)
        elif isinstance(default, float) and isinstance(value, (str, int)) and not isinstance(value, bool):
            try:  # YAML 1.1 reads "1e-3" as a string
                kwargs[key] = float(value)
            except ValueError:
                raise ValueError(f"{where}.{key}: expected a number, got {value!r}") from None
        else:
            kwargs[key] = value
    return cls(**kwargs)


def config_from_dict(values: dict, where: str = "config") -> GRPOConfig:
    """A GRPOConfig from a nested mapping; unknown keys are an error that names them."""
    return _build(GRPOConfig, values or {}, where)


def apply_overrides(values: dict, overrides: list[str]) -> dict:
    """`section.key=value` strings (YAML-parsed values) applied on a nested mapping (copy)."""
    import copy

    import yaml

    out = copy.deepcopy(values)
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r}: expected section.key=value")
        key, raw = item.split("=", 1)
        node = out
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = yaml.safe_load(raw)
    return out


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> GRPOConfig:
    """Load a GRPO YAML (sections data/model/actor/rollout/algorithm/reward/trainer) plus CLI overrides."""
    import yaml

    values: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"GRPO config not found: {path}")
        values = yaml.safe_load(path.read_text()) or {}
    values = apply_overrides(values, overrides or [])
    return config_from_dict(values, where=str(path or "config"))


def get_field(cfg: GRPOConfig, dotted: str) -> Any:
    obj: Any = cfg
    for p in dotted.split("."):
        obj = getattr(obj, p)
    return obj


def verl_overrides(cfg: GRPOConfig) -> dict[str, Any]:
    """verl key -> value for every mirrored field (what `veason-r1 rl --backend verl` passes to Hydra)."""
    out = {}
    for ours, theirs in VERL_KEYS.items():
        value = get_field(cfg, ours)
        out[theirs] = list(value) if isinstance(value, tuple) else value
    return out
