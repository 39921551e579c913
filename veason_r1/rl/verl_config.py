"""Compose verl 0.9.1's Hydra config with our training_scripts YAML and check it the way `main_ppo` does.

`python -m verl.trainer.main_ppo --config-path training_scripts --config-name grpo_qwen2_5vl_3b` composes the same
tree; here it is composed in-process (Hydra compose API) so CPU tests and `veason-r1 rl --backend verl --dry-run`
can run verl's own `validate_config` and our docs/method.md §8 checks without a GPU, Ray or vLLM.

Best-checkpoint tracking: verl validates every `test_freq` steps and dumps each validation's generations and scores to
`trainer.validation_data_dir/<step>.jsonl`; `best_checkpoint` reads them back and picks the saved step with the
highest mean validation reward (the best RL checkpoint is often mid-run), which the run scripts then merge to HF.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
TRAINING_SCRIPTS = REPO_ROOT / "training_scripts"

# docs/method.md §8, as verl keys. `check_method_hparams` compares a composed config against this table.
METHOD_HPARAMS: dict[str, Any] = {
    "data.train_batch_size": 16,
    "actor_rollout_ref.rollout.n": 8,
    "actor_rollout_ref.actor.ppo_mini_batch_size": 16,
    "actor_rollout_ref.actor.ppo_epochs": 1,
    "actor_rollout_ref.actor.optim.lr": 1e-6,
    "actor_rollout_ref.actor.optim.lr_scheduler_type": "constant",
    "actor_rollout_ref.actor.optim.lr_warmup_steps_ratio": 0.0,
    "actor_rollout_ref.actor.optim.weight_decay": 0.01,
    "actor_rollout_ref.actor.optim.clip_grad": 1.0,
    "actor_rollout_ref.actor.grad_clip": 1.0,
    "actor_rollout_ref.actor.clip_ratio": 0.2,
    "actor_rollout_ref.actor.use_kl_loss": True,
    "actor_rollout_ref.actor.kl_loss_type": "low_var_kl",
    "actor_rollout_ref.actor.kl_loss_coef": 5e-3,
    "actor_rollout_ref.actor.entropy_coeff": 1e-3,
    "actor_rollout_ref.actor.freeze_vision_tower": False,
    "actor_rollout_ref.actor.fsdp_config.model_dtype": "fp32",
    "actor_rollout_ref.actor.fsdp_config.dtype": "bfloat16",
    "actor_rollout_ref.model.enable_gradient_checkpointing": True,
    "actor_rollout_ref.model.lora_rank": 0,
    "actor_rollout_ref.rollout.name": "vllm",
    "actor_rollout_ref.rollout.temperature": 1.0,
    "actor_rollout_ref.rollout.top_p": 1.0,
    "actor_rollout_ref.rollout.gpu_memory_utilization": 0.25,
    "data.max_prompt_length": 7100,
    "data.max_response_length": 1024,
    "algorithm.adv_estimator": "grpo",
    "algorithm.norm_adv_by_std_in_grpo": True,
    "algorithm.use_kl_in_reward": False,
    "trainer.save_freq": 100,
    "trainer.total_epochs": 1,
    "reward.custom_reward_function.name": "compute_score",
}


def compose(config_name: str = "grpo_qwen2_5vl_3b", overrides: list[str] | None = None,
            config_dir: str | Path = TRAINING_SCRIPTS):
    """verl's full PPO config tree with our YAML on top (a resolved-able OmegaConf DictConfig)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    config_dir = Path(config_dir).resolve()
    if not (config_dir / f"{config_name}.yaml").is_file():
        raise FileNotFoundError(f"no {config_name}.yaml in {config_dir}")
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config_dir), version_base=None):
        return hydra_compose(config_name=config_name, overrides=list(overrides or []))


def validate(cfg) -> None:
    """verl's own `validate_config` (what main_ppo runs before starting Ray) plus our docs/method.md checks."""
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import validate_config

    validate_config(config=cfg, use_reference_policy=need_reference_policy(cfg), use_critic=need_critic(cfg))


def select(cfg, key: str) -> Any:
    from omegaconf import OmegaConf

    value = OmegaConf.select(cfg, key, throw_on_missing=True)
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def check_method_hparams(cfg, expected: dict[str, Any] = METHOD_HPARAMS) -> list[str]:
    """Mismatches between a composed config and docs/method.md §8 ('key: got X, want Y'); empty when faithful."""
    problems = []
    for key, want in expected.items():
        got = select(cfg, key)
        same = math.isclose(got, want, rel_tol=1e-9) if isinstance(want, float) and isinstance(got, (int, float)) \
            else got == want
        if not same:
            problems.append(f"{key}: got {got!r}, want {want!r}")
    return problems


# ---------------------------------------------------------------------------------------------------------------
# best checkpoint


@dataclass
class BestCheckpoint:
    step: int
    score: float
    checkpoint_dir: str | None
    scores: dict[int, float]


def validation_scores(validation_dir: str | Path) -> dict[int, float]:
    """step -> mean `score` over the rows of `<validation_dir>/<step>.jsonl` (verl's validation dumps)."""
    from veason_r1.io_utils import read_jsonl

    out = {}
    for path in sorted(Path(validation_dir).glob("*.jsonl")):
        if not path.stem.isdigit():
            continue
        scores = [float(r["score"]) for r in read_jsonl(path) if "score" in r]
        if scores:
            out[int(path.stem)] = sum(scores) / len(scores)
    return out


def best_checkpoint(validation_dir: str | Path, checkpoint_dir: str | Path) -> BestCheckpoint:
    """The saved `global_step_<N>` with the highest mean validation reward (ties: the earlier step)."""
    scores = validation_scores(validation_dir)
    if not scores:
        raise FileNotFoundError(f"no <step>.jsonl validation dumps in {validation_dir}")
    saved = {int(p.name.split("_")[-1]) for p in Path(checkpoint_dir).glob("global_step_*") if p.is_dir()}
    candidates = {s: v for s, v in scores.items() if s in saved}
    if not candidates:
        raise FileNotFoundError(
            f"none of the validated steps {sorted(scores)} has a checkpoint in {checkpoint_dir} (saved: {sorted(saved)})"
        )
    step = max(sorted(candidates), key=lambda s: candidates[s])
    return BestCheckpoint(step, candidates[step], str(Path(checkpoint_dir) / f"global_step_{step}"), scores)


def main(argv: list[str] | None = None) -> int:
    """`python -m veason_r1.rl.verl_config best VALIDATION_DIR CHECKPOINT_DIR` prints the best actor folder
    (what the run scripts merge) and writes best_checkpoint.json next to the checkpoints."""
    import argparse

    from veason_r1.io_utils import atomic_write_json

    p = argparse.ArgumentParser(prog="python -m veason_r1.rl.verl_config")
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("best")
    b.add_argument("validation_dir")
    b.add_argument("checkpoint_dir")
    v = sub.add_parser("validate")
    v.add_argument("--config-name", default="grpo_qwen2_5vl_3b")
    v.add_argument("overrides", nargs="*")
    args = p.parse_args(argv)
    if args.cmd == "best":
        best = best_checkpoint(args.validation_dir, args.checkpoint_dir)
        atomic_write_json(Path(args.checkpoint_dir) / "best_checkpoint.json",
                          {"step": best.step, "score": best.score, "checkpoint_dir": best.checkpoint_dir,
                           "scores": {str(k): v for k, v in sorted(best.scores.items())}}, indent=2)
        print(Path(best.checkpoint_dir) / "actor")
        return 0
    cfg = compose(args.config_name, args.overrides)
    validate(cfg)
    problems = check_method_hparams(cfg)
    for line in problems:
        print("METHOD mismatch:", line)
    print(json.dumps({"config": args.config_name, "method_mismatches": len(problems)}))
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
