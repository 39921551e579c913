"""verl 0.9.1's config, generated from a `GRPOConfig`, composed with verl's own Hydra tree and checked as `main_ppo`
checks it.

`verl_values(cfg, ...)` is every verl key the run sets: the GRPOConfig fields that verl also has (their keys live
on the fields, `veason_r1.rl.config.verl_key_map`), the engine layout of the config's `verl:` section, and the
plumbing below (our dataset class, reward manager and function, the checkpoint callback). `write_verl_yaml` writes
them as a Hydra primary config (`defaults: [ppo_trainer, _self_]`) into the run folder; `compose` builds the full tree
in-process (Hydra compose API) so `validate` can run verl's own `validate_config` without a GPU, Ray or vLLM, and
`python -m verl.trainer.main_ppo --config-path <run folder> --config-name verl_config` runs the same tree.

Attention (issue 15 item 1): verl's model config defaults to flash_attention_2, and `use_remove_padding` makes its
Qwen2-VL attention patch call `flash_attn_varlen_func` directly; flash-attn ships on PyPI as an sdist only and no
install path here builds it. `attention_settings` keeps flash-attn + padding removal when flash-attn imports and
otherwise switches to sdpa without padding removal, with a warning that says what it costs.

Best checkpoint: verl validates every `test_freq` steps and dumps each validation's generations and scores to
`trainer.validation_data_dir/<step>.jsonl`; `best_checkpoint` reads them back and picks the saved step with the
highest mean validation reward, which the run script then merges to HF.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from veason_r1.rl.config import ARR, GRPOConfig, flatten, verl_overrides

REPO_ROOT = Path(__file__).resolve().parents[2]
TRAINING_SCRIPTS = REPO_ROOT / "training_scripts"
REWARD_FILE = REPO_ROOT / "grpo_reward" / "reward_score.py"
GENERATED_NAME = "verl_config"  # <run folder>/verl_config.yaml
CHECKPOINT_CALLBACK = "veason_r1.rl.verl_callbacks.KeepLastAndBest"

# How our code plugs into verl: not tunable, so not in any YAML.
PLUMBING: dict[str, Any] = {
    "data.prompt_key": "prompt",
    "data.image_key": "images",
    "data.val_max_samples": -1,  # the validation parquet holds exactly the chosen subset
    "data.filter_overlong_prompts": False,  # K <= 6 frames x 400 tokens + text < 7100 by construction
    "data.truncation": "error",
    "data.return_raw_chat": True,
    "data.custom_cls.path": "pkg://veason_r1.rl.data",  # redraws the keyframe and decodes the frames per access
    "data.custom_cls.name": "VeasonRLDataset",
    "reward.custom_reward_function.name": "compute_score",
    "reward.reward_manager.source": "importlib",  # scores a step's rollouts together (veason_r1/reward/verl_manager.py)
    "reward.reward_manager.name": "VeasonGroupRewardManager",
    "reward.reward_manager.module.path": "pkg://veason_r1.reward.verl_manager",
    "trainer.checkpoint_callback_class": CHECKPOINT_CALLBACK,
    "trainer.max_actor_ckpt_to_keep": None,  # verl would delete the best checkpoint too: KeepLastAndBest prunes
}
# Keys verl's YAML tree lacks but its code reads: ours (read by KeepLastAndBest inside verl's trainer) and
# RolloutConfig.limit_images (vllm_async_server would pass it as vLLM's limit_mm_per_prompt = {"image": N}, replacing
# ours and so leaving video at vLLM's default: `rollout_bounds` sets the whole mapping instead and refuses it).
OWN_KEYS = ("trainer.keep_last_checkpoints", f"{ARR}.rollout.limit_images")
# Free-form mappings in verl's tree: any key below them is accepted.
FREE_FORM = ("ray_kwargs.ray_init.runtime_env", f"{ARR}.model.override_config", "reward.custom_reward_function.reward_kwargs",
             f"{ARR}.rollout.engine_kwargs.vllm", "data.mm_processor_kwargs")
VLLM_ARGS = f"{ARR}.rollout.engine_kwargs.vllm"  # verl 0.9.1 passes this mapping to `vllm serve` as CLI flags


def rollout_bounds(cfg: GRPOConfig) -> dict[str, Any]:
    """The vLLM rollout's bounds, derived from the data config (issue 23 item 1).

    Without them vLLM 0.24 sizes its start-up memory profile for the largest input the model could take:
    max_model_len = max_position_embeddings (128,000, verl's fallback), one 14-frame video (video is not limited by
    `limit_images`) and the processor's max_pixels (12,845,056 after the SFT export). Profiled inside
    gpu_memory_utilization = 0.25 of an 80 GB GPU, that leaves the 7B replicas no KV cache. The real prompts are
    at most `data.num_frames` frames of `data.image_size`^2 pixels, prompt + response <= max_prompt_length +
    max_response_length, and never a video: the same bounds the project's vLLM evaluation engine uses."""
    from veason_r1.models.families import family as policy_family
    from veason_r1.models.policy import pixel_bounds

    d = cfg.data
    pixels = pixel_bounds(d.image_size, policy_family(d.family))
    return {
        f"{ARR}.rollout.max_model_len": d.max_prompt_length + d.max_response_length,
        f"{VLLM_ARGS}.limit_mm_per_prompt": {"image": d.num_frames, "video": 0},
        f"{VLLM_ARGS}.mm_processor_kwargs": dict(pixels),
        "data.mm_processor_kwargs": dict(pixels),  # the agent loop's processor call (frames are already S x S)
    }


# What verl 0.9.1 imports from flash-attn whenever the package is installed (transformers' is_flash_attn_2_available
# looks at the metadata only): its Qwen2-VL attention and torch_functional's padding helpers.
FLASH_ATTN_PROBE = ("import flash_attn; from flash_attn import flash_attn_func, flash_attn_varlen_func; "
                    "from flash_attn.bert_padding import pad_input, unpad_input")
FLASH_ATTN_FIX = ("pip uninstall -y flash-attn (verl then runs sdpa), or rebuild it against the installed torch: "
                  "pip install --no-build-isolation --no-cache-dir --force-reinstall flash-attn==2.8.3")


def _flash_attn_installed() -> bool:
    try:
        importlib.metadata.version("flash-attn")
        return True
    except importlib.metadata.PackageNotFoundError:
        return importlib.util.find_spec("flash_attn") is not None


def flash_attn_status(timeout: float = 300.0) -> tuple[str, str]:
    """("absent" | "ok" | "broken", the import error's last line). The import runs in a fresh interpreter: a wheel
    built against another torch fails with an undefined symbol (or crashes the process), and verl's actor workers
    import it whenever it is installed, on the sdpa path too, so "installed" is not "usable"."""
    import subprocess
    import sys

    if not _flash_attn_installed():
        return "absent", ""
    try:
        r = subprocess.run([sys.executable, "-c", FLASH_ATTN_PROBE], capture_output=True, text=True, timeout=timeout,
                           check=False)
    except subprocess.TimeoutExpired:
        return "broken", f"importing flash_attn took more than {timeout:.0f} s"
    if r.returncode == 0:
        return "ok", ""
    lines = [line for line in (r.stderr or r.stdout).strip().splitlines() if line.strip()]
    return "broken", (lines[-1] if lines else f"exit code {r.returncode}")[:300]


def flash_attn_available() -> bool:
    """flash-attn imports (a real import, in a subprocess); raises ValueError when installed but broken."""
    status, error = flash_attn_status()
    if status == "broken":
        raise ValueError(f"flash-attn is installed but does not import ({error}); verl's actor workers import it "
                         f"whenever it is installed, so every worker would die, sdpa or not: {FLASH_ATTN_FIX}")
    return status == "ok"


def attention_settings(cfg: GRPOConfig, has_flash_attn: bool | None = None) -> tuple[dict[str, Any], str]:
    """(verl keys, a warning or '') for the configured attention (`model.attn_implementation`)."""
    has = flash_attn_available() if has_flash_attn is None else has_flash_attn
    want = cfg.model.attn_implementation
    remove_padding = flatten(cfg.verl).get(f"{ARR}.model.use_remove_padding", True)
    if want == "flash_attention_2" and not has:
        raise ValueError("model.attn_implementation = 'flash_attention_2' but flash-attn does not import here: "
                         "install it (docs/reproduce.md) or use 'auto' / 'sdpa'")
    if want == "flash_attention_2" or (want == "auto" and has):
        return {f"{ARR}.model.override_config.attn_implementation": "flash_attention_2",
                f"{ARR}.model.use_remove_padding": bool(remove_padding)}, ""
    note = ""
    if want == "auto":
        note = ("flash-attn is not installed: verl runs the actor and reference with sdpa attention and without "
                "padding removal (use_remove_padding=false), so every micro-batch computes its padding tokens too "
                "(slower and more memory per step; not measured here). Install flash-attn for the fast path "
                "(docs/reproduce.md) or set model.attn_implementation=sdpa to silence this.")
    return {f"{ARR}.model.override_config.attn_implementation": "sdpa", f"{ARR}.model.use_remove_padding": False}, note


# One of each Linear module of Qwen2.5-VL (transformers 5 names; tests/test_rl_verl.py checks them against the
# tiny model): what PEFT's "all-linear" expands to, and the vision tower's share of it.
QWEN25VL_LINEARS = (
    "model.language_model.layers.0.self_attn.q_proj", "model.language_model.layers.0.self_attn.k_proj",
    "model.language_model.layers.0.self_attn.v_proj", "model.language_model.layers.0.self_attn.o_proj",
    "model.language_model.layers.0.mlp.gate_proj", "model.language_model.layers.0.mlp.up_proj",
    "model.language_model.layers.0.mlp.down_proj",
    "model.visual.blocks.0.attn.qkv", "model.visual.blocks.0.attn.proj", "model.visual.blocks.0.mlp.gate_proj",
    "model.visual.blocks.0.mlp.up_proj", "model.visual.blocks.0.mlp.down_proj", "model.visual.merger.mlp.0",
    "model.visual.merger.mlp.2",
)
VISION_EXCLUDE = ".*visual.*"


def lora_vision_modules(target_modules, exclude_modules) -> list[str]:
    """The vision-tower Linear modules PEFT would wrap with these settings (PEFT's own matching rule)."""
    from peft import LoraConfig
    from peft.tuners.tuners_utils import check_target_module_exists

    targets = target_modules
    if isinstance(targets, str) and targets == "all-linear":  # PEFT: every Linear's leaf name except the output
        targets = sorted({n.rsplit(".", 1)[-1] for n in QWEN25VL_LINEARS})
    config = LoraConfig(target_modules=list(targets) if isinstance(targets, (list, tuple)) else targets,
                        exclude_modules=list(exclude_modules) if isinstance(exclude_modules, (list, tuple))
                        else exclude_modules)
    out = []
    for name in QWEN25VL_LINEARS:
        hit = check_target_module_exists(config, name)
        if ".visual." in f".{name}" and hit and type(hit).__name__ != "_ExcludedModule":
            out.append(name)
    return out


def check_lora_vision(cfg: GRPOConfig) -> None:
    """LoRA GRPO (`model.lora_rank > 0`) must leave the vision tower alone (issue 23 item 6): vLLM 0.24 applies
    LoRA adapters to the language model only (no tower LoRA), so rollouts would come from another policy than the
    one trained. `actor.freeze_vision_tower` does not help: verl 0.9.1 declares it but no engine reads it."""
    if cfg.actor.freeze_vision_tower:
        raise ValueError("actor.freeze_vision_tower = True: verl 0.9.1 declares the key but none of its engines reads "
                         "it, so the vision tower would be trained anyway; the verl back-end refuses it (the local "
                         "trainer honours it). With LoRA, keep the tower out with model.exclude_modules='.*visual.*'")
    m = cfg.model
    if m.lora_rank <= 0:
        return
    wrapped = lora_vision_modules(m.target_modules, m.exclude_modules)
    if wrapped:
        raise ValueError(
            f"model.lora_rank = {m.lora_rank} with model.target_modules = {m.target_modules!r} and "
            f"model.exclude_modules = {m.exclude_modules!r} puts LoRA on the vision tower (e.g. {wrapped[0]}), which "
            f"vLLM 0.24's rollouts do not apply: set model.exclude_modules={VISION_EXCLUDE!r} (or list only "
            "language-model modules in model.target_modules), or train without LoRA (model.lora_rank=0)")


def verl_values(cfg: GRPOConfig, *, train_file: str, val_file: str | None, has_flash_attn: bool | None = None,
                pythonpath: str | None = None) -> tuple[dict[str, Any], list[str]]:
    """({verl key: value} for the whole run, notes). `cfg` must already have absolute paths (`launch.absolute`)."""
    run_dir = Path(cfg.trainer.default_local_dir)
    check_lora_vision(cfg)
    values: dict[str, Any] = flatten(cfg.verl)
    bounds = rollout_bounds(cfg)
    generated = {*PLUMBING, *bounds, "data.train_files", "data.val_files", "reward.custom_reward_function.path",
                 "trainer.validation_data_dir", *OWN_KEYS, f"{ARR}.model.override_config.attn_implementation"}
    clash = sorted(k for k in values if k in generated or any(k.startswith(g + ".") for g in generated))
    if clash:
        raise ValueError(f"verl.{clash[0]}: set by veason-r1 itself (how our code plugs into verl, or derived from "
                         "the data section: rollout_bounds); remove it from the verl section")
    values.update(verl_overrides(cfg))
    values.update(PLUMBING)
    values.update(bounds)
    attention, note = attention_settings(cfg, has_flash_attn)
    values.update(attention)
    values["data.train_files"] = train_file
    values["reward.custom_reward_function.path"] = str(REWARD_FILE)
    values["trainer.validation_data_dir"] = str(run_dir / "validation")
    values["trainer.keep_last_checkpoints"] = cfg.trainer.max_ckpt_to_keep
    if val_file:
        values["data.val_files"] = val_file
    else:  # verl needs a val file; the training file stands in and validation never runs
        values.update({"data.val_files": train_file, "trainer.test_freq": -1, "trainer.val_before_train": False})
    env = "ray_kwargs.ray_init.runtime_env.env_vars"
    # workers of an existing Ray cluster start elsewhere: they must import this checkout's packages
    if pythonpath is None:
        parts = [str(REPO_ROOT), *os.environ.get("PYTHONPATH", "").split(os.pathsep)]
        pythonpath = os.pathsep.join(dict.fromkeys(p for p in parts if p))
    values[f"{env}.PYTHONPATH"] = pythonpath
    values[f"{env}.TOKENIZERS_PARALLELISM"] = "false"
    # verl's TensorBoard logger writes to $TENSORBOARD_DIR, else to tensorboard_log/ under the cwd of its driver (a
    # Ray actor: on an existing cluster, the cluster's start directory): keep the events with the run
    values[f"{env}.TENSORBOARD_DIR"] = str(run_dir / "tensorboard")
    return values, [note] if note else []


def nested(values: dict[str, Any]) -> dict:
    out: dict = {}
    for key, value in values.items():
        node = out
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return out


def write_verl_yaml(values: dict[str, Any], path: str | Path, source: str) -> Path:
    """A Hydra primary config: verl's ppo_trainer, then our values (atomic write)."""
    import yaml

    from veason_r1.io_utils import atomic_write_text

    body = {"hydra": {"searchpath": ["pkg://verl.trainer.config"]}, "defaults": ["ppo_trainer", "_self_"],
            **nested(values)}
    header = (f"# GENERATED by `veason-r1 rl --backend verl` from {source}; edit that file, not this one.\n"
              "# python -m verl.trainer.main_ppo --config-path <this folder> --config-name verl_config\n")
    atomic_write_text(path, header + yaml.safe_dump(body, sort_keys=False, default_flow_style=None, width=120))
    return Path(path)


def compose(config_name: str = GENERATED_NAME, overrides: list[str] | None = None, config_dir: str | Path = "."):
    """verl's full PPO config tree with a primary config of ours on top (an OmegaConf DictConfig)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    config_dir = Path(config_dir).resolve()
    if not (config_dir / f"{config_name}.yaml").is_file():
        raise FileNotFoundError(f"no {config_name}.yaml in {config_dir}")
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config_dir), version_base=None):
        return hydra_compose(config_name=config_name, overrides=list(overrides or []))


def base_tree():
    """verl's own ppo_trainer tree, without anything of ours."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="verl.trainer.config", version_base=None):
        return hydra_compose(config_name="ppo_trainer")


def unknown_keys(values: dict[str, Any], base=None) -> list[str]:
    """Keys of `values` that verl's tree does not have (typos in the `verl:` section), outside the free-form maps."""
    from omegaconf import OmegaConf

    base = base_tree() if base is None else base
    out = []
    for key in values:
        if key in OWN_KEYS or any(key.startswith(p + ".") for p in FREE_FORM):
            continue
        parent_key, _, leaf = key.rpartition(".")
        parent = OmegaConf.select(base, parent_key) if parent_key else base
        if not OmegaConf.is_dict(parent) or leaf not in list(parent.keys()):  # keys() lists '???' values too
            out.append(key)
    return out


def validate(tree) -> None:
    """verl's own `validate_config` (what main_ppo runs before starting Ray)."""
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import validate_config

    validate_config(config=tree, use_reference_policy=need_reference_policy(tree), use_critic=need_critic(tree))


def select(tree, key: str) -> Any:
    from omegaconf import OmegaConf

    value = OmegaConf.select(tree, key, throw_on_missing=True)
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def build_tree(cfg: GRPOConfig, run_dir: str | Path, *, train_file: str, val_file: str | None, source: str,
               has_flash_attn: bool | None = None):
    """Write `<run_dir>/verl_config.yaml` from `cfg`, compose it with verl's tree, check our keys exist in verl
    and run verl's validate_config. Returns (tree, values, yaml path, notes for the user)."""
    values, notes = verl_values(cfg, train_file=train_file, val_file=val_file, has_flash_attn=has_flash_attn)
    typos = unknown_keys(values)
    if typos:
        raise ValueError(f"{source}: verl.{typos[0]}: verl 0.9.1 has no such key"
                         + (f" (and {len(typos) - 1} more)" if len(typos) > 1 else ""))
    path = write_verl_yaml(values, Path(run_dir) / f"{GENERATED_NAME}.yaml", source)
    tree = compose(GENERATED_NAME, [], Path(run_dir))
    validate(tree)
    return tree, values, path, notes


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


def best_saved_step(scores: dict[int, float], saved: list[int] | set[int]) -> int | None:
    """The saved step with the highest validation score (ties: the earlier step), or None."""
    candidates = {s: v for s, v in scores.items() if s in set(saved)}
    if not candidates:
        return None
    return max(sorted(candidates), key=lambda s: candidates[s])


def best_checkpoint(validation_dir: str | Path, checkpoint_dir: str | Path) -> BestCheckpoint:
    """The saved `global_step_<N>` with the highest mean validation reward (ties: the earlier step)."""
    from veason_r1.rl.checkpoint import saved_steps

    scores = validation_scores(validation_dir)
    if not scores:
        raise FileNotFoundError(f"no <step>.jsonl validation dumps in {validation_dir}")
    saved = saved_steps(checkpoint_dir)
    step = best_saved_step(scores, saved)
    if step is None:
        raise FileNotFoundError(
            f"none of the validated steps {sorted(scores)} has a checkpoint in {checkpoint_dir} (saved: {saved})"
        )
    return BestCheckpoint(step, scores[step], str(Path(checkpoint_dir) / f"global_step_{step}"), scores)


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
    args = p.parse_args(argv)
    best = best_checkpoint(args.validation_dir, args.checkpoint_dir)
    atomic_write_json(Path(args.checkpoint_dir) / "best_checkpoint.json",
                      {"step": best.step, "score": best.score, "checkpoint_dir": best.checkpoint_dir,
                       "scores": {str(k): v for k, v in sorted(best.scores.items())}}, indent=2)
    print(Path(best.checkpoint_dir) / "actor")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


__all__ = ["PLUMBING", "BestCheckpoint", "attention_settings", "best_checkpoint", "best_saved_step", "build_tree",
           "check_lora_vision", "compose", "flash_attn_available", "flash_attn_status", "lora_vision_modules",
           "rollout_bounds", "select", "unknown_keys", "validate", "validation_scores", "verl_values",
           "write_verl_yaml"]
