"""The reward's one option set, `RewardConfig`: what scores a rollout and which SAM2 scores its consistency term.

One dataclass for every place the reward is configured, in one spelling:

- the GRPO config's `reward:` section (`GRPOConfig.reward`, YAML + `--set reward.propagator.checkpoint=...`);
- verl's `reward.custom_reward_function.reward_kwargs`, which `veason-r1 rl --backend verl` writes as one nested
  mapping of these fields (`image_size` from `data.image_size`), read back by `reward_config(**reward_kwargs)`;
- the explicit keyword parameters of `compute_score` / `compute_score_batch` (verl_hook.py), which are exactly these
  fields (a test keeps them equal);
- `score_response` / `score_group(s)` (scoring.py), which read the SAM2-free fields.

    reward:
      variant: faithful            # faithful | strict (scoring.py)
      use_consistency: true        # false: the SAM2 term is 0 (cheap runs, ablations)
      use_keyframe: true           # false: the keyframe term is 0 (the no-keyframe ablation)
      image_size: null             # the policy's frame side (strict clipping); GRPO: data.image_size
      propagator: {name: sam2_hiera_l, checkpoint: checkpoints/sam2_hiera_large.pt, device: cuda, offload: false}
      max_sam2_load_failures: 3    # failed SAM2 loads in a row (per reward worker) before the run stops
      group_window_s: 0.05         # verl's VeasonGroupRewardManager: batch flush window
      max_wait_s: 2.0

Checks: the field types and ranges (`structured_config`, the grammar of every config here: a misspelt key, a
string for a bool, `max_sam2_load_failures: 0` are each one line naming the key), and `sam2_problem`: with
`use_consistency` a propagator name is required, and a propagator that is not a registered name (`toy`, `tiny`, ...)
needs its checkpoint: a real SAM2 never scores with random weights.

There are no environment-variable fallbacks: the nested `propagator` mapping carries the name, checkpoint and device
to every reward worker, and the generated verl config sets no propagator variable in the workers' environment.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from veason_r1.config import IMAGE_SIZE
from veason_r1.models.config import PropagatorConfig
from veason_r1.structured_config import ConfigError, as_dict, build, check_layer, setting

# The release's reward SAM2 (v1 Hiera-L, docs/method.md §7) at the path docs/reproduce.md downloads it to. A real
# SAM2 always needs its checkpoint; the random-weight "tiny" model only when asked for by name (tests, demo).
REWARD_PROPAGATOR = "sam2_hiera_l"
REWARD_CHECKPOINT = "checkpoints/sam2_hiera_large.pt"
VERL_SOURCE = "reward.custom_reward_function"  # where verl's reward_kwargs live (named by their errors)


def release_propagator() -> PropagatorConfig:
    """The reward's default propagator: the release's SAM2 (device None: the worker's GPU when one is visible)."""
    return PropagatorConfig(name=REWARD_PROPAGATOR, checkpoint=REWARD_CHECKPOINT)


@dataclass
class RewardConfig:
    variant: Literal["faithful", "strict"] = setting("faithful", doc="scoring.py's module docstring")
    use_consistency: bool = setting(True, doc="False: the SAM2 term is 0 (cheap runs, ablations)")
    use_keyframe: bool = setting(True, doc="False: the keyframe term is 0 (the no-keyframe ablation)")
    # the policy's square frame side, for the strict variant's clipping; None = IMAGE_SIZE (560). GRPO fills it
    # from data.image_size (its one home), which is also what the verl reward_kwargs carry.
    image_size: int | None = setting(None, gt=0)
    propagator: PropagatorConfig = setting(factory=release_propagator,  # noqa: RUF009
                                           doc="the SAM2 of the consistency term")
    # Failed SAM2 loads in a row (per reward worker) after which the run stops: each failed batch scores its
    # consistency term 0 (verl's `sam2_ok` metric shows it); a SAM2 that never loads must not train silently.
    max_sam2_load_failures: int = setting(3, ge=1)
    # verl's VeasonGroupRewardManager: flush a batch this long after the last arrival, at most max_wait_s after
    # the first (streamed rollouts)
    group_window_s: float = setting(0.05, ge=0)
    max_wait_s: float = setting(2.0, gt=0)

    def __post_init__(self) -> None:
        check_layer(RewardConfig, plain(self), "RewardConfig")  # types and ranges, as a YAML or reward_kwargs

    @property
    def frame_side(self) -> int:
        """The side the strict variant clips predicted boxes to (`image_size`, default IMAGE_SIZE)."""
        return IMAGE_SIZE if self.image_size is None else self.image_size

    def sam2_problem(self, prefix: str = "") -> tuple[str, str] | None:
        """(the key at fault, after `prefix`, and why) when the consistency term cannot be scored as configured:
        with `use_consistency` a propagator name is required, and one that is not a registered name (`tiny`, `toy`,
        ...: they bring their weights or are random by request) needs its checkpoint."""
        if not self.use_consistency:
            return None
        p = self.propagator
        if not p.name:
            why = (f"the SAM2 consistency term needs a propagator (the release's is sam2_hiera_l, with "
                   f"{prefix}propagator.checkpoint); set {prefix}use_consistency to false to drop the term")
            return f"{prefix}propagator.name", why
        if p.checkpoint is None and p.needs_checkpoint:
            why = (f"{prefix}propagator.name={p.name!r} needs its checkpoint: a real SAM2 never scores with random "
                   "weights (only registered names such as tiny go without)")
            return f"{prefix}propagator.checkpoint", why
        return None


FIELDS = tuple(f.name for f in dataclasses.fields(RewardConfig))


def plain(value: Any) -> Any:
    """Plain Python containers from a RewardConfig / PropagatorConfig, an OmegaConf node (verl hands the nested
    `propagator` over as a DictConfig) or any Mapping; other values unchanged."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return as_dict(value)
    try:
        from omegaconf import OmegaConf

        if OmegaConf.is_config(value):
            return OmegaConf.to_container(value, resolve=True)
    except ImportError:  # pragma: no cover - omegaconf comes with every install set
        pass
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
    return value


def reward_config(**kwargs: Any) -> RewardConfig:
    """The RewardConfig of verl's `reward_kwargs` (or `compute_score`'s keyword options): an unknown key (nested ones
    too: `propagator.chekpoint`), a wrong type or a bad value raises `ConfigError` (a ValueError) in one line naming
    `reward_kwargs.<key>` and, for an unknown key, the known ones. `propagator` may be a PropagatorConfig or a
    mapping (a partial one overrides the default, the release's SAM2, key by key)."""
    values = {k: plain(v) for k, v in kwargs.items()}
    check_layer(RewardConfig, values, VERL_SOURCE, prefix="reward_kwargs.")
    config = build(RewardConfig, values, RewardConfig())
    problem = config.sam2_problem("reward_kwargs.")
    if problem:
        raise ConfigError(f"{VERL_SOURCE}: {problem[0]}: {problem[1]}")
    return config


__all__ = ["FIELDS", "REWARD_CHECKPOINT", "REWARD_PROPAGATOR", "RewardConfig", "plain", "release_propagator",
           "reward_config"]
