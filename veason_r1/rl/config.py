"""GRPO configuration: the one home of every GRPO hyper-parameter, for both back-ends.

`GRPOConfig` holds the method's numbers (defaults: the 3B run of docs/method.md §8), the run's paths and the
local trainer's knobs. The verl back-end never reads a second copy: each field that verl also has carries its verl
key in its metadata (`setting(..., key="actor_rollout_ref.actor.optim.lr")`), and `veason-r1 rl --backend verl`
writes the verl config from this dataclass (`verl_overrides`, `veason_r1.rl.verl_config`). What verl needs beyond
the method (GPU layout, vLLM memory, offloading: engine settings, not hyper-parameters) sits in the `verl` section,
which may not set a key that a field here owns. The `reward` section is the reward's own `RewardConfig`
(reward/config.py), written whole as verl's `reward_kwargs` (one nested mapping, `propagator` nested, `image_size`
from `data.image_size`): its key sits on the section and every field below it inherits it.

One grammar for every change: a YAML file (`training_scripts/grpo_qwen2_5vl_3b.yaml`, `configs/grpo_local_tiny.yaml`)
then `--set section.key=value` dotlists, checked strictly against these types and ranges before anything runs
(`veason_r1.structured_config`): `actor.use_kl_loss: "no"` or `rollout.n: 2.5` stop with the file, key and value.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from veason_r1.config import FRAMES, RESPONSE_BUDGET
from veason_r1.models.families import DEFAULT_FAMILY, FAMILIES, family_of_folder
from veason_r1.models.families import family as policy_family
from veason_r1.reward.config import RewardConfig
from veason_r1.structured_config import ConfigError, as_dict, flatten, load_structured, nested_dataclass, setting

ARR = "actor_rollout_ref"
REWARD_KWARGS = "reward.custom_reward_function.reward_kwargs"
LOGGERS = ("console", "tensorboard", "wandb")


def _sft_merged_default() -> str:
    """Where `run_sft.sh` writes the merged 3B model: the GRPO run starts from it (one default for both)."""
    from veason_r1.sft.config import SFTConfig

    return str(SFTConfig.__dataclass_fields__["export_dir"].default)


@dataclass
class DataConfig:
    train_root: str = setting("", doc="a ReVOS-format root: JPEGImages/, mask_dict.json, meta_expressions_<split>_.json")
    train_split: str = "train"
    train_pool: str | None = setting(None, doc="the sampled pool (meta_expressions JSON or JSONL); None = whole split")
    # Validation (best-checkpoint selection). None: a held-out slice of the training split's videos, seeded and
    # video-disjoint from what is trained on. A split name (e.g. "valid") validates on that split of `val_root`,
    # which selects the checkpoint on the split that is then reported: opt-in only (docs/rl.md).
    val_split: str | None = None
    val_root: str | None = setting(None, doc="with val_split: the root holding it (None = train_root)")
    val_max_samples: int = setting(64, ge=0, doc="expressions validated every trainer.test_freq steps")
    num_frames: int = setting(FRAMES.rl_frames, ge=1)
    keyframe_top_k: int = setting(FRAMES.keyframe_top_k, ge=1)
    image_size: int = setting(FRAMES.image_size, gt=0)
    family: str = setting(DEFAULT_FAMILY.name, choices=tuple(FAMILIES),
                          doc="the policy family of model.path (models/families.py): prompt text and box convention")
    train_batch_size: int = setting(16, ge=1, key="data.train_batch_size", doc="prompts per step")
    max_prompt_length: int = setting(7100, ge=1, key="data.max_prompt_length")
    max_response_length: int = setting(RESPONSE_BUDGET, ge=1, key="data.max_response_length")
    shuffle: bool = setting(True, key="data.shuffle")
    seed: int = setting(0, key="data.seed")
    skip_no_target: bool = True  # type_id 2 has no GT: RL drops it (docs/method.md §3)


@dataclass
class ModelConfig:
    path: str = setting(_sft_merged_default(), key=f"{ARR}.model.path", doc="the SFT-merged Hugging Face folder")
    enable_gradient_checkpointing: bool = setting(True, key=f"{ARR}.model.enable_gradient_checkpointing")
    lora_rank: int = setting(0, ge=0, key=f"{ARR}.model.lora_rank", doc="0 = full fine-tune (the paper)")
    lora_alpha: int = setting(16, ge=1, key=f"{ARR}.model.lora_alpha")
    target_modules: str | list[str] = setting("all-linear", key=f"{ARR}.model.target_modules")  # noqa: RUF009
    # LoRA: modules PEFT must not wrap (a regex matched in full, or names matched as suffixes). The verl back-end
    # refuses LoRA on the vision tower (vLLM 0.24 would not apply it to rollouts): exclude it, e.g. ".*visual.*".
    exclude_modules: str | list[str] | None = setting(None, key=f"{ARR}.model.exclude_modules")  # noqa: RUF009
    # verl: "auto" = flash_attention_2 with padding removal when flash-attn imports, else sdpa without it (slower,
    # said at launch); the local trainer always runs sdpa.
    attn_implementation: Literal["auto", "flash_attention_2", "sdpa"] = "auto"


@dataclass
class ActorConfig:
    lr: float = setting(1e-6, gt=0, key=f"{ARR}.actor.optim.lr")
    weight_decay: float = setting(0.01, ge=0, key=f"{ARR}.actor.optim.weight_decay")
    betas: tuple[float, float] = setting((0.9, 0.999), key=f"{ARR}.actor.optim.betas")
    lr_scheduler_type: Literal["constant", "cosine"] = setting("constant", key=f"{ARR}.actor.optim.lr_scheduler_type")
    lr_warmup_steps_ratio: float = setting(0.0, ge=0, le=1, key=f"{ARR}.actor.optim.lr_warmup_steps_ratio")
    grad_clip: float = setting(1.0, gt=0, key=(f"{ARR}.actor.optim.clip_grad", f"{ARR}.actor.grad_clip"))
    clip_ratio: float = setting(0.2, gt=0, lt=1, key=(f"{ARR}.actor.clip_ratio", f"{ARR}.actor.clip_ratio_low",
                                                       f"{ARR}.actor.clip_ratio_high"))
    clip_ratio_c: float = setting(3.0, gt=1, key=f"{ARR}.actor.clip_ratio_c")
    loss_agg_mode: Literal["token-mean", "seq-mean-token-mean"] = setting("token-mean", key=f"{ARR}.actor.loss_agg_mode")
    entropy_coeff: float = setting(1e-3, ge=0, key=f"{ARR}.actor.entropy_coeff")
    use_kl_loss: bool = setting(True, key=f"{ARR}.actor.use_kl_loss")
    kl_loss_coef: float = setting(5e-3, ge=0, key=f"{ARR}.actor.kl_loss_coef")
    kl_loss_type: Literal["low_var_kl", "k3", "kl", "k1"] = setting("low_var_kl", key=f"{ARR}.actor.kl_loss_type")
    ppo_epochs: int = setting(1, ge=1, key=f"{ARR}.actor.ppo_epochs")
    ppo_mini_batch_size: int = setting(16, ge=1, key=f"{ARR}.actor.ppo_mini_batch_size",
                                       doc="prompts per optimizer step (= train_batch_size: one update per batch)")
    ppo_micro_batch_size_per_gpu: int = setting(4, ge=1, key=f"{ARR}.actor.ppo_micro_batch_size_per_gpu",
                                                doc="sequences per forward/backward (gradient accumulation)")
    freeze_vision_tower: bool = setting(False, key=f"{ARR}.actor.freeze_vision_tower", doc="the paper trains it")


@dataclass
class RolloutConfig:
    n: int = setting(8, ge=2, key=f"{ARR}.rollout.n", doc="rollouts per prompt (GRPO needs >= 2)")
    temperature: float = setting(1.0, ge=0, key=f"{ARR}.rollout.temperature")
    top_p: float = setting(1.0, gt=0, le=1, key=f"{ARR}.rollout.top_p")
    top_k: int = setting(-1, ge=-1, key=f"{ARR}.rollout.top_k", doc="-1 = off")
    val_temperature: float = setting(0.0, ge=0, key=f"{ARR}.rollout.val_kwargs.temperature", doc="0 = greedy")
    val_n: int = setting(1, ge=1, key=f"{ARR}.rollout.val_kwargs.n")
    # sequences per no-grad old/ref log-prob forward; None = actor.ppo_micro_batch_size_per_gpu
    log_prob_micro_batch_size_per_gpu: int | None = setting(
        None, ge=1, key=(f"{ARR}.rollout.log_prob_micro_batch_size_per_gpu", f"{ARR}.ref.log_prob_micro_batch_size_per_gpu"))
    batch_size: int = setting(16, ge=1, doc="local trainer: sequences per generate() call")


@dataclass
class AlgorithmConfig:
    adv_estimator: Literal["grpo"] = setting("grpo", key="algorithm.adv_estimator")
    norm_adv_by_std_in_grpo: bool = setting(True, key="algorithm.norm_adv_by_std_in_grpo")
    use_kl_in_reward: bool = setting(False, key="algorithm.use_kl_in_reward", doc="KL is a loss term, not a penalty")
    epsilon: float = setting(1e-6, gt=0, doc="(R - mean) / (std + epsilon); verl's built-in value")


@dataclass
class TrainerConfig:
    project_name: str = setting("veason_r1", key="trainer.project_name")
    experiment_name: str = setting("grpo_qwen2_5vl_3b", key="trainer.experiment_name")
    # The run folder: checkpoints (global_step_N/), validation dumps, metrics, the generated verl config.
    default_local_dir: str = setting("outputs/rl/grpo_qwen2_5vl_3b", key="trainer.default_local_dir")
    total_epochs: int = setting(1, ge=1, key="trainer.total_epochs")
    total_training_steps: int | None = setting(None, ge=1, key="trainer.total_training_steps",
                                               doc="None = one pass over the pool (625 steps for 10k prompts / 16)")
    # Every 25 steps (model + optimizer): a crash loses at most 25 steps; validation on the same steps so that every
    # saved checkpoint has a score. (The paper saves every 100.) -1 = never.
    save_freq: int = setting(25, ge=-1, key="trainer.save_freq")
    test_freq: int = setting(25, ge=-1, key="trainer.test_freq")
    val_before_train: bool = setting(True, key="trainer.val_before_train")
    resume_mode: Literal["auto", "disable"] = setting("auto", key="trainer.resume_mode")
    logger: list[str] = setting(factory=lambda: ["console", "tensorboard"], key="trainer.logger")  # noqa: RUF009
    # The last K checkpoints are kept plus the best by validation reward (the best RL step is often mid-run);
    # older ones are deleted. None = keep all (~45 GB each at 3B, ~100 GB at 7B).
    max_ckpt_to_keep: int | None = setting(2, ge=1)
    device: str = setting("auto", doc="local trainer: auto | cpu | cuda | cuda:N")
    # compute dtype (fp32 master weights are kept on both back-ends)
    dtype: Literal["bfloat16", "float16", "float32"] = setting(
        "bfloat16", key=(f"{ARR}.actor.fsdp_config.dtype", f"{ARR}.ref.fsdp_config.dtype"))
    seed: int = 0
    # local trainer speed knobs (none changes the maths): rollouts from a transient bf16 copy of the weights (CUDA
    # + bf16/fp16, full fine-tune), and the vision attention path ("auto": batched on CUDA)
    rollout_copy: bool = True
    vision_attention: Literal["auto", "batched", "hf"] = "auto"


@dataclass
class GRPOConfig:
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    actor: ActorConfig = dataclasses.field(default_factory=ActorConfig)
    rollout: RolloutConfig = dataclasses.field(default_factory=RolloutConfig)
    algorithm: AlgorithmConfig = dataclasses.field(default_factory=AlgorithmConfig)
    # the reward (reward/config.py), written whole as verl's reward_kwargs: every field below it maps to
    # `reward.custom_reward_function.reward_kwargs.<field>` (`propagator` a nested mapping), `image_size` from
    # data.image_size (its one home)
    reward: RewardConfig = setting(factory=RewardConfig, key=REWARD_KWARGS)  # noqa: RUF009
    trainer: TrainerConfig = dataclasses.field(default_factory=TrainerConfig)
    # verl engine settings (nested verl keys): GPUs, tensor parallelism, vLLM memory, offloading, micro-batches of
    # the reference model. Read only by the verl back-end; a key owned by a field above is refused.
    verl: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict:
        return as_dict(self)

    def validate(self, source: str = "config") -> None:
        """Checks across fields (each field's own type and range were checked when it was read)."""

        def need(ok: bool, key: str, why: str) -> None:
            if not ok:
                raise ConfigError(f"{source}: {key} = {get_field(self, key)!r}: {why}")

        d, a, t, r = self.data, self.actor, self.trainer, self.reward
        row = policy_family(d.family)
        need(row.image_size_problem(d.image_size) is None, "data.image_size",
             row.image_size_problem(d.image_size) or "")
        folder = family_of_folder(self.model.path)  # None until the folder exists (a config may be written first)
        need(folder is None or folder is row, "data.family",
             f"model.path is a {folder.name if folder else ''} folder: set data.family={folder.name if folder else ''}")
        need(a.ppo_mini_batch_size <= d.train_batch_size and d.train_batch_size % a.ppo_mini_batch_size == 0,
             "actor.ppo_mini_batch_size", f"must divide data.train_batch_size ({d.train_batch_size})")
        need(t.save_freq != 0, "trainer.save_freq", "use -1 for never, or a positive step count")
        need(t.test_freq != 0, "trainer.test_freq", "use -1 for never, or a positive step count")
        need(self.rollout.top_k != 0, "rollout.top_k", "use -1 for off, or a positive count")
        unknown = sorted(set(t.logger) - set(LOGGERS))
        need(not unknown, "trainer.logger", f"unknown logger(s) {unknown}; known: {', '.join(LOGGERS)}")
        need(r.image_size in (None, d.image_size), "reward.image_size",
             f"the policy's frame side is data.image_size ({d.image_size}), its one home: leave reward.image_size "
             "unset (the reward reads data.image_size)")
        problem = r.sam2_problem("reward.")
        need(problem is None, *(problem or ("", "")))
        leaves, mappings = _walk_keys()
        owner = {k: f for f, keys in leaves.items() for k in keys}
        for key in sorted(flatten(self.verl)):
            field = owner.get(key) or next((f for o, f in owner.items() if key.startswith(o + ".")), None)
            field = field or next((f for m, f in mappings.items() if key == m or key.startswith(m + ".")), None)
            if field:
                raise ConfigError(f"{source}: verl.{key}: owned by the GRPO field {field!r}; set it there (one home "
                                  "per hyper-parameter)")

    def reward_config(self) -> RewardConfig:
        """The reward as the run scores it: `reward` with the policy's frame side (`data.image_size`)."""
        return dataclasses.replace(self.reward, image_size=self.data.image_size)


# ---------------------------------------------------------------------------------------------------------------
# reading


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> GRPOConfig:
    """A GRPO YAML (sections data/model/actor/rollout/algorithm/reward/trainer/verl) plus `section.key=value`
    overrides, typed and validated; every error names the file or override, the key and the value."""
    return load_structured(GRPOConfig, path, list(overrides))


def validation_enabled(cfg: GRPOConfig) -> bool:
    """Validation runs (and a held-out slice is kept out of training) only when the trainer will use it."""
    return cfg.data.val_max_samples > 0 and (cfg.trainer.test_freq > 0 or cfg.trainer.val_before_train)


def get_field(cfg: Any, dotted: str) -> Any:
    obj: Any = cfg
    for p in dotted.split("."):
        obj = getattr(obj, p)
    return obj


# ---------------------------------------------------------------------------------------------------------------
# the verl key map, read off the fields


def _walk_keys() -> tuple[dict[str, tuple[str, ...]], dict[str, str]]:
    """(our dotted leaf field -> its verl key(s), verl mapping -> the field that owns it whole). A nested dataclass
    whose field carries a key is written as that verl mapping: each of its fields maps to `<key>.<name>`, nested
    ones recursively (`reward.propagator.name` -> `reward.custom_reward_function.reward_kwargs.propagator.name`)."""
    import typing

    leaves: dict[str, tuple[str, ...]] = {}
    mappings: dict[str, str] = {}

    def walk(cls, ours: str, inherited: str | None) -> None:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            name = f"{ours}{f.name}"
            key = f.metadata.get("key")
            below = f"{inherited}.{f.name}" if inherited else None
            sub = nested_dataclass(hints[f.name])
            if sub is not None:
                if key:
                    mappings[key] = name
                walk(sub, f"{name}.", key or below)
            elif key:
                leaves[name] = (key,) if isinstance(key, str) else tuple(key)
            elif below:
                leaves[name] = (below,)

    walk(GRPOConfig, "", None)
    return leaves, mappings


def verl_key_map() -> dict[str, tuple[str, ...]]:
    """Our dotted field -> the verl 0.9.1 key(s) holding the same value (from the fields' metadata)."""
    return _walk_keys()[0]


def verl_mappings() -> dict[str, str]:
    """verl mappings written whole from one GRPO section (the reward's `reward_kwargs`) -> that section."""
    return _walk_keys()[1]


def verl_overrides(cfg: GRPOConfig) -> dict[str, Any]:
    """verl key -> value for every field that verl also has (what the verl back-end writes into its config). The
    reward's fields become one nested `reward_kwargs` mapping (`verl_config.nested`), `image_size` included."""
    out: dict[str, Any] = {}
    resolved = dataclasses.replace(cfg, reward=cfg.reward_config())
    for ours, keys in verl_key_map().items():
        value = get_field(resolved, ours)
        if ours == "rollout.log_prob_micro_batch_size_per_gpu" and value is None:
            value = cfg.actor.ppo_micro_batch_size_per_gpu
        if isinstance(value, tuple):
            value = list(value)
        for key in keys:
            out[key] = value
    out[f"{ARR}.rollout.val_kwargs.do_sample"] = cfg.rollout.val_temperature > 0
    return out


__all__ = ["ActorConfig", "AlgorithmConfig", "ConfigError", "DataConfig", "GRPOConfig", "ModelConfig",
           "RewardConfig", "RolloutConfig", "TrainerConfig", "flatten", "get_field", "load_config",
           "validation_enabled", "verl_key_map", "verl_mappings", "verl_overrides"]
