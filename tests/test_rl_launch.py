"""The verl launch on CPU, item by item of issue 15: what a fresh 2-GPU node would hit in its first hour.

verl's trainer, vLLM and flash-attn cannot run here; each test goes through verl's real pieces instead (Hydra
compose + validate_config, HFModelConfig, the FSDP engine's model builder, the checkpoint callback hook)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("verl")

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    from veason_r1.models.tiny import make_tiny_qwen

    return make_tiny_qwen(tmp_path_factory.mktemp("tiny_qwen_launch"), seed=0)


@pytest.fixture(scope="module")
def sam2_ckpt(tmp_path_factory):
    """A complete `torch.save` file where the SAM2 checkpoint must be (the launch checks its zip directory, as
    `predict` does; nothing loads it here)."""
    import torch

    path = tmp_path_factory.mktemp("ckpt") / "sam2_hiera_large.pt"
    torch.save({"model": {}}, path)
    return path


def grpo_cfg(synth_root, tiny_dir, sam2_ckpt, out, *extra, config=ROOT / "training_scripts/grpo_qwen2_5vl_3b.yaml"):
    from veason_r1.rl.config import load_config

    return load_config(config, [f"data.train_root={synth_root}", "data.train_pool=null", f"model.path={tiny_dir}",
                                f"reward.propagator.checkpoint={sam2_ckpt}", f"trainer.default_local_dir={out}",
                                "data.val_max_samples=4", "data.image_size=112", *extra])


# ------------------------------------------------------------------------------------ item 1: attention

ENGINE_LOAD = r"""
import json, sys, torch
from types import SimpleNamespace
torch.set_num_threads(1)
from verl.utils.config import omega_conf_to_dataclass
from verl.workers.engine.fsdp.transformer_impl import FSDPEngine
from veason_r1.rl.verl_config import compose
tree = compose("verl_config", [], sys.argv[1])
model_config = omega_conf_to_dataclass(tree.actor_rollout_ref.model)        # verl's HFModelConfig
engine_config = omega_conf_to_dataclass(tree.actor_rollout_ref.actor.fsdp_config)
engine = SimpleNamespace(model_config=model_config, engine_config=engine_config,
                         use_remove_padding=model_config.use_remove_padding, ulysses_sequence_parallel_size=1,
                         device_mesh=SimpleNamespace(get_coordinate=lambda: [0]))  # rank 0 of the FSDP mesh
try:
    module = FSDPEngine._build_module(engine)   # what the FSDP engine runs: from_pretrained + verl's patches
except ImportError as e:
    print(json.dumps({"error": str(e).splitlines()[0]})); sys.exit(0)
import numpy as np
from veason_r1.models.policy import GenerationRequest, build_inputs
frames = [np.full((112, 112, 3), 40 * i, np.uint8) for i in range(2)]
batch = build_inputs(model_config.processor, [GenerationRequest("the red square", [0, 3], frames)], 112)
ids, mask = batch["input_ids"], batch["attention_mask"]
types = (ids == model_config.tokenizer.convert_tokens_to_ids("<|image_pad|>")).long()  # as the agent loop builds them
vision_pos, _ = module.model.get_rope_index(input_ids=ids, mm_token_type_ids=types,
                                            image_grid_thw=batch["image_grid_thw"], attention_mask=mask)
text_pos = torch.arange(ids.shape[1])[None, None]  # (1, 1, L): as verl's agent loop builds them, text row first
position_ids = torch.cat([text_pos, vision_pos.transpose(0, 1)], dim=1).transpose(0, 1)  # (4, 1, L)
with torch.no_grad():
    out = module(input_ids=ids, attention_mask=mask, position_ids=position_ids,
                 pixel_values=batch["pixel_values"], image_grid_thw=batch["image_grid_thw"])
print(json.dumps({"attn": module.config._attn_implementation, "remove_padding": model_config.use_remove_padding,
                  "dtype": str(next(module.parameters()).dtype), "finite": bool(torch.isfinite(out.logits).all())}))
"""


def _engine_load(run_dir: Path) -> dict:
    """In a fresh process: verl's monkey patches replace Qwen2.5-VL class methods for the whole process."""
    import os

    r = subprocess.run([sys.executable, "-c", ENGINE_LOAD, str(run_dir)], capture_output=True, text=True, timeout=600,
                       cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}, check=False)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_tiny_model_loads_as_verls_fsdp_engine_loads_it(synth_root, tiny_dir, sam2_ckpt, tmp_path):
    """Without flash-attn the shipped YAML (flash_attention_2 + use_remove_padding, verl's defaults) cannot load the
    model at all; the generated config falls back to sdpa without padding removal, says so, and the model loads
    through verl's own HFModelConfig and FSDP engine builder and runs a multimodal forward."""
    from veason_r1.rl.launch import prepare
    from veason_r1.rl.verl_config import flash_attn_available

    assert not flash_attn_available()  # this machine: the situation of a fresh GPU node with the pinned set
    cfg = grpo_cfg(synth_root, tiny_dir, sam2_ckpt, tmp_path / "as_shipped", "model.attn_implementation=auto")
    as_shipped = prepare(cfg, "test", has_flash_attn=True)  # what the YAML meant before the fallback existed
    assert "FlashAttention2" in _engine_load(as_shipped.run_dir)["error"]

    plan = prepare(grpo_cfg(synth_root, tiny_dir, sam2_ckpt, tmp_path / "run"), "test")
    assert any("flash-attn is not installed" in n and "use_remove_padding=false" in n for n in plan.data.notes)
    loaded = _engine_load(plan.run_dir)
    assert loaded == {"attn": "sdpa", "remove_padding": False, "dtype": "torch.float32", "finite": True}


def test_flash_attention_is_kept_when_installed_and_refused_when_asked_for_without_it(synth_root, tiny_dir,
                                                                                      sam2_ckpt, tmp_path):
    from veason_r1.rl.verl_config import attention_settings

    cfg = grpo_cfg(synth_root, tiny_dir, sam2_ckpt, tmp_path)
    keep, note = attention_settings(cfg, has_flash_attn=True)
    assert keep == {"actor_rollout_ref.model.override_config.attn_implementation": "flash_attention_2",
                    "actor_rollout_ref.model.use_remove_padding": True} and note == ""
    forced = grpo_cfg(synth_root, tiny_dir, sam2_ckpt, tmp_path, "model.attn_implementation=flash_attention_2")
    with pytest.raises(ValueError, match="flash-attn does not import here"):
        attention_settings(forced, has_flash_attn=False)
    quiet, note = attention_settings(grpo_cfg(synth_root, tiny_dir, sam2_ckpt, tmp_path, "model.attn_implementation=sdpa"),
                                     has_flash_attn=False)
    assert note == "" and quiet["actor_rollout_ref.model.use_remove_padding"] is False


# ------------------------------------------------------------------- item 2: one path, refuse missing inputs


def test_sft_output_is_the_grpo_input_for_both_sizes():
    from veason_r1.rl.config import GRPOConfig, load_config
    from veason_r1.sft.config import SFTConfig

    for size in ("3b", "7b"):
        sft = SFTConfig.from_yaml(ROOT / f"training_scripts/sft_qwen2_5vl_{size}_lora.yaml")
        grpo = load_config(ROOT / f"training_scripts/grpo_qwen2_5vl_{size}.yaml")
        assert grpo.model.path == sft.export_dir == f"outputs/sft_{size}/merged"
    assert GRPOConfig().model.path == SFTConfig().export_dir
    old = "outputs/sft/" + "qwen2_5vl"  # the RL input path before both stages shared one default
    stale = [p for p in ROOT.rglob("*") if p.is_file() and p.suffix in (".py", ".sh", ".yaml", ".md")
             and ".git" not in p.parts and old in p.read_text(errors="ignore")]
    assert stale == []


@pytest.mark.parametrize("broken,message", [
    ("model", "model.path: {model}: policy folder not found"),
    ("sam2", "{ckpt}: reward.propagator.checkpoint: checkpoint not found"),
    ("data", "data.train_root: '{data}' is not a folder"),
    ("pool", "data.train_pool: {pool} not found"),
])
def test_verl_launch_refuses_missing_inputs_before_ray(synth_root, tiny_dir, sam2_ckpt, tmp_path, capsys, broken,
                                                       message):
    from veason_r1.cli import main

    out = tmp_path / "run"
    paths = {"model": str(tiny_dir), "sam2": str(sam2_ckpt), "data": str(synth_root), "pool": "null"}
    missing = {"model": str(tmp_path / "no_model"), "sam2": str(tmp_path / "no.pt"), "data": str(tmp_path / "no_data"),
               "pool": str(tmp_path / "no_pool.jsonl")}
    paths[broken] = missing[broken]
    rc = main(["rl", "--backend", "verl", "--set", f"model.path={paths['model']}",
               "--set", f"reward.propagator.checkpoint={paths['sam2']}", "--set", f"data.train_root={paths['data']}",
               "--set", f"data.train_pool={paths['pool']}", "--set", f"trainer.default_local_dir={out}"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ")
    assert message.format(ckpt=missing["sam2"], data=missing["data"], pool=missing["pool"],
                          model=missing["model"]) in err
    assert not out.exists()  # nothing written, Ray never started


def test_verl_launch_refuses_an_unknown_sam2_name(synth_root, tiny_dir, sam2_ckpt, tmp_path):
    from veason_r1.rl.launch import LaunchError, prepare

    cfg = grpo_cfg(synth_root, tiny_dir, sam2_ckpt, tmp_path / "run", "reward.propagator.name=sam2_hiera_xl")
    with pytest.raises(LaunchError, match="reward.propagator.name: unknown SAM2 config 'sam2_hiera_xl'"):
        prepare(cfg, "test")


def test_verl_launch_takes_a_transformers_tracker_with_its_weights_folder(synth_root, tiny_dir, sam2_ckpt, tmp_path):
    """issue 25: reward.propagator.name=sam3 / edgetam / hf-sam2 is a known name whose checkpoint is a folder, not a .pt."""
    from veason_r1.rl.launch import LaunchError, prepare

    cfg = grpo_cfg(synth_root, tiny_dir, sam2_ckpt, tmp_path / "run", "reward.propagator.name=sam3")
    with pytest.raises(LaunchError, match="reward.propagator.checkpoint: sam3 takes its weights folder") as e:
        prepare(cfg, "test")
    assert "unknown SAM2 config" not in str(e.value)


# ----------------------------------------------------------------------------- item 3: absolute paths


def test_every_path_reaching_verl_is_absolute(synth_root, tiny_dir, sam2_ckpt, tmp_path, monkeypatch):
    from veason_r1.rl.launch import prepare
    from veason_r1.rl.verl_config import select

    monkeypatch.chdir(tmp_path)
    (tmp_path / "ck").mkdir()
    shutil.copyfile(sam2_ckpt, tmp_path / "ck" / "sam2.pt")
    shutil.copytree(tiny_dir, tmp_path / "model")
    cfg = grpo_cfg(synth_root, "model", "ck/sam2.pt", "outputs/rl/run")  # all relative
    tree = prepare(cfg, "test").tree
    keys = ["actor_rollout_ref.model.path", "reward.custom_reward_function.path",
            "reward.custom_reward_function.reward_kwargs.propagator.checkpoint", "trainer.default_local_dir",
            "trainer.validation_data_dir", "data.train_files", "data.val_files"]
    for key in keys:
        value = select(tree, key)
        assert Path(value).is_absolute(), (key, value)
    assert select(tree, "actor_rollout_ref.model.path") == str(tmp_path / "model")
    assert select(tree, "trainer.default_local_dir") == str(tmp_path / "outputs/rl/run")
    assert str(ROOT) in select(tree, "ray_kwargs.ray_init.runtime_env.env_vars.PYTHONPATH")
    import pyarrow.parquet as pq

    rows = pq.read_table(tmp_path / "outputs/rl/run/data/train.parquet").to_pylist()
    assert all(Path(r["extra_info"]["root"]).is_absolute() for r in rows)


# -------------------------------------------------------------------------- item 5: held-out validation


def test_default_validation_is_a_seeded_video_disjoint_slice_of_the_training_split(synth_root):
    from veason_r1.data.revos import ReVOSDataset
    from veason_r1.rl.data import RLSampleBuilder, training_pools

    ds = ReVOSDataset(synth_root, "train")
    b = RLSampleBuilder(ds, 6, 112)
    a = training_pools(ds, None, val_size=4, seed=0, builder=b)
    again = training_pools(ds, None, val_size=4, seed=0, builder=b)
    other = training_pools(ds, None, val_size=4, seed=1, builder=b)
    assert a.val_source == "heldout" and len(a.val) == 4 and [e.key for e in a.val] == [e.key for e in again.val]
    assert not {e.video for e in a.train} & {e.video for e in a.val}  # video-disjoint
    assert {e.video for e in a.val} == set(a.heldout_videos) and a.removed_from_train > 0
    assert [e.key for e in other.val] != [e.key for e in a.val]  # seeded
    valid = ReVOSDataset(synth_root, "valid")
    opt_in = training_pools(ds, None, val_size=3, seed=0, val_dataset=valid, builder=b)
    assert opt_in.val_source == "valid" and {e.video for e in opt_in.val} <= set(valid.videos)
    assert len(opt_in.train) == len(a.train) + a.removed_from_train  # nothing held out of training then


def test_val_split_is_opt_in_and_flagged(synth_root, tiny_dir, sam2_ckpt, tmp_path):
    from veason_r1.rl.launch import prepare

    plan = prepare(grpo_cfg(synth_root, tiny_dir, sam2_ckpt, tmp_path / "a"), "test")
    assert "held-out training videos" in plan.data.summary and not any("selected on split" in n for n in plan.data.notes)
    flagged = prepare(grpo_cfg(synth_root, tiny_dir, sam2_ckpt, tmp_path / "b", "data.val_split=valid"), "test")
    assert any("best checkpoint is selected on split 'valid'" in n for n in flagged.data.notes)


# --------------------------------------------------------------------------- item 6: disk and cadence


def _fake_verl_run(root: Path, steps, scores: dict[int, float]):
    for s in steps:
        (root / f"global_step_{s}" / "actor").mkdir(parents=True)
        (root / f"global_step_{s}" / "data.pt").write_bytes(b"x")
    (root / "latest_checkpointed_iteration.txt").write_text(str(max(steps)))
    val = root / "validation"
    val.mkdir(exist_ok=True)
    for s, v in scores.items():
        (val / f"{s}.jsonl").write_text(json.dumps({"score": v}) + "\n")


def test_checkpoint_callback_keeps_the_last_two_and_the_best(tmp_path):
    """verl calls `trainer.checkpoint_callback_class.on_save` after each save: KeepLastAndBest prunes the run to
    the last K (trainer.keep_last_checkpoints) plus the best validated step."""
    from omegaconf import OmegaConf
    from verl.trainer.ppo.checkpoint_callback import build_checkpoint_callback

    root = tmp_path / "run"
    _fake_verl_run(root, [25, 50, 75, 100], {0: 0.1, 25: 3.0, 50: 1.0, 75: 2.0})
    config = OmegaConf.create({"trainer": {"default_local_dir": str(root), "validation_data_dir": str(root / "validation"),
                                           "keep_last_checkpoints": 2,
                                           "checkpoint_callback_class": "veason_r1.rl.verl_callbacks.KeepLastAndBest"}})
    callback = build_checkpoint_callback(config)  # verl's own loader
    callback.on_save(trainer=None, global_step=100, checkpoint_dir=str(root / "global_step_100"))
    assert sorted(p.name for p in root.glob("global_step_*")) == ["global_step_100", "global_step_25", "global_step_75"]
    _fake_verl_run(root, [125], {100: 4.0})
    callback.on_save(trainer=None, global_step=125, checkpoint_dir=str(root / "global_step_125"))
    assert sorted(p.name for p in root.glob("global_step_*")) == ["global_step_100", "global_step_125"]


def test_cadence_and_disk_budget():
    from veason_r1.preflight import checkpoint_budget
    from veason_r1.rl.config import GRPOConfig

    t = GRPOConfig().trainer
    assert (t.save_freq, t.test_freq, t.max_ckpt_to_keep) == (25, 25, 2)
    total, how = checkpoint_budget(3.75e9, t.max_ckpt_to_keep, None, t.save_freq)
    # issue 23 item 3: verl writes the new checkpoint before KeepLastAndBest prunes: K + 2 at the peak
    assert how.startswith("2 last + best + the one being written before pruning: 4 checkpoints at 45 GB each")
    assert round(total / 1e9) == 188
    total7, _ = checkpoint_budget(8.29e9, 2, None, 25)
    assert round(total7 / 1e9) == 414
    keep_all, how_all = checkpoint_budget(3.75e9, None, 625, 25)
    assert how_all.startswith("all 25 checkpoints") and keep_all > 1e12


def test_disk_check_on_resume_counts_the_checkpoints_already_there(tmp_path, monkeypatch):
    """Re-running run_grpo.sh resumes: the checkpoints on disk are part of the peak, not on top of it. Before, the
    check asked for the whole budget in free space and stopped the documented resume."""
    import shutil
    from collections import namedtuple

    from veason_r1 import preflight

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**13, 0, 30 * 10**9))  # 30 GB free
    params = 1e9  # 12 GB a checkpoint, 2 GB merged: peak 4 x 12 + 2 = 50 GB
    run = tmp_path / "run"
    fresh = preflight.grpo_disk_check(run, params, 2, None, 25)
    assert fresh.status == "FAIL" and "needs 50 GB" in fresh.detail
    for step in (25, 50, 75):  # an interrupted run: the last 2 + the best (sparse files: no real disk used)
        (run / f"global_step_{step}" / "actor").mkdir(parents=True)
        with open(run / f"global_step_{step}" / "actor" / "model.pt", "wb") as f:
            f.truncate(12 * 10**9)
    resumed = preflight.grpo_disk_check(run, params, 2, None, 25)
    assert resumed.status == "PASS" and "needs 14 GB" in resumed.detail and "36 GB of checkpoints already" in resumed.detail
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**13, 0, 10 * 10**9))
    assert preflight.grpo_disk_check(run, params, 2, None, 25).status == "FAIL"  # never less than one new + merged


def test_tensorboard_events_land_in_the_run_folder_and_a_resume_does_not_duplicate_steps(synth_root, tiny_dir,
                                                                                          sam2_ckpt, tmp_path,
                                                                                          monkeypatch):
    """Issue 23 item 8. verl's TensorBoard logger (its own adapter class, used here) wrote to tensorboard_log/ under
    its driver's cwd (the launch directory, or a Ray cluster's start directory), and a resume appended the re-trained
    steps a second time. The generated config gives every Ray worker TENSORBOARD_DIR=<run>/tensorboard, and a resume
    from step S writes a purge marker so TensorBoard keeps the interrupted run's events up to S only."""
    import os
    import time

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from verl.utils.tracking import _TensorboardAdapter

    from veason_r1.rl.launch import mark_tensorboard_resume, prepare
    from veason_r1.rl.verl_config import select

    plan = prepare(grpo_cfg(synth_root, tiny_dir, sam2_ckpt, tmp_path / "run"), "test")
    env = select(plan.tree, "ray_kwargs.ray_init.runtime_env.env_vars")
    assert env["TENSORBOARD_DIR"] == str(plan.run_dir / "tensorboard")
    elsewhere = tmp_path / "ray_start_dir"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the Ray driver's cwd
    monkeypatch.setenv("TENSORBOARD_DIR", env["TENSORBOARD_DIR"])
    assert mark_tensorboard_resume(plan.cfg) is None  # a fresh run: nothing to purge
    first = _TensorboardAdapter("veason_r1", "grpo")
    for step in range(1, 11):
        first.log({"critic/score/mean": 1.0}, step)
    first.finish()
    assert not (elsewhere / "tensorboard_log").exists() and list((plan.run_dir / "tensorboard").glob("events.*"))

    (plan.run_dir / "latest_checkpointed_iteration.txt").write_text("5")  # crashed after step 10, saved at 5
    time.sleep(1.1)  # event files are read in name (= creation second) order
    assert mark_tensorboard_resume(plan.cfg) == 5
    time.sleep(1.1)
    second = _TensorboardAdapter("veason_r1", "grpo")
    for step in range(6, 9):
        second.log({"critic/score/mean": 2.0}, step)
    second.finish()
    events = EventAccumulator(os.environ["TENSORBOARD_DIR"])
    events.Reload()
    got = [(e.step, e.value) for e in events.Scalars("critic/score/mean")]
    assert got == [(s, 1.0) for s in range(1, 6)] + [(s, 2.0) for s in range(6, 9)]


# ----------------------------------------------------------------------------------- item 8: vLLM pin


def test_vllm_is_pinned_to_the_version_verl_091_was_released_with():
    import importlib.metadata

    requires = importlib.metadata.requires("verl") or []
    verl_vllm = [r for r in requires if r.startswith("vllm==") and 'extra == "vllm"' in r]
    assert verl_vllm, requires
    want = verl_vllm[0].split(";")[0].strip()
    pins = [line.strip() for line in (ROOT / "constraints/gpu-vllm.txt").read_text().splitlines()
            if line.strip().startswith("vllm")]
    assert pins == [want] == ["vllm==0.24.0"]
    torch_pin = next(r for r in requires if r.startswith("torch==") and 'extra == "vllm"' in r).split(";")[0].strip()
    assert torch_pin in (ROOT / "constraints/gpu-vllm.txt").read_text()
