"""verl integration on CPU: our YAML composed into verl's Hydra config and checked by verl's validate_config; our RL
data through verl's dataset machinery and the Qwen2.5-VL processor; GRPO advantage and losses from verl's core_algos.
(verl's trainer itself needs GPUs, Ray workers and vLLM: not run here. The Ray reward-loop test is the reward's.)"""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("verl")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    from veason_r1.models.tiny import make_tiny_qwen

    return make_tiny_qwen(tmp_path_factory.mktemp("tiny_qwen"), seed=0)


# --------------------------------------------------------------------------------------------------- configs


@pytest.fixture(scope="module")
def sam2_ckpt(tmp_path_factory):
    """A complete `torch.save` file where the SAM2 checkpoint must be (the launch checks it; nothing loads it here)."""
    import torch

    path = tmp_path_factory.mktemp("ckpt") / "sam2_hiera_large.pt"
    torch.save({"model": {}}, path)
    return path


def launch_plan(synth_root, tiny_dir, sam2_ckpt, out, config="training_scripts/grpo_qwen2_5vl_3b.yaml", *extra,
                has_flash_attn=None):
    from veason_r1.rl.config import load_config
    from veason_r1.rl.launch import prepare

    cfg = load_config(config, [f"data.train_root={synth_root}", "data.train_pool=null", f"model.path={tiny_dir}",
                               f"reward.propagator.checkpoint={sam2_ckpt}", f"trainer.default_local_dir={out}",
                               "data.val_max_samples=4", "data.image_size=112", *extra])
    return prepare(cfg, config, has_flash_attn=has_flash_attn)


@pytest.mark.parametrize("size,gpus", [("3b", 2), ("7b", 4)])
def test_generated_verl_config_validates_and_holds_the_grpo_config(synth_root, tiny_dir, sam2_ckpt, tmp_path, size,
                                                                    gpus):
    """The verl config is generated from GRPOConfig (one home per hyper-parameter): every mapped key of the composed
    tree equals the config's value, and verl's own validate_config and typed configs accept it."""
    from verl.utils.config import omega_conf_to_dataclass

    from veason_r1.rl.config import GRPOConfig, get_field, verl_key_map
    from veason_r1.rl.verl_config import select

    plan = launch_plan(synth_root, tiny_dir, sam2_ckpt, tmp_path / "run", f"training_scripts/grpo_qwen2_5vl_{size}.yaml")
    tree, cfg = plan.tree, plan.cfg
    assert plan.yaml_path == tmp_path / "run" / "verl_config.yaml" and "GENERATED" in plan.yaml_path.read_text()
    scored = dataclasses.replace(cfg, reward=cfg.reward_config())  # reward.image_size: data.image_size
    for ours, keys in verl_key_map().items():
        want = get_field(scored, ours)
        if ours == "rollout.log_prob_micro_batch_size_per_gpu" and want is None:
            want = cfg.actor.ppo_micro_batch_size_per_gpu
        for key in keys:
            got = select(tree, key)
            assert (list(want) if isinstance(want, tuple) else want) == (
                pytest.approx(got) if isinstance(got, float) else got), (ours, key)
    d = GRPOConfig()  # the method's numbers reach verl unchanged (docs/method.md §8)
    for key, value in {"data.train_batch_size": 16, "actor_rollout_ref.rollout.n": 8,
                       "actor_rollout_ref.actor.optim.lr": 1e-6, "actor_rollout_ref.actor.kl_loss_coef": 5e-3,
                       "actor_rollout_ref.actor.entropy_coeff": 1e-3, "actor_rollout_ref.actor.kl_loss_type":
                       "low_var_kl", "algorithm.norm_adv_by_std_in_grpo": True}.items():
        assert select(tree, key) == value
    assert d.actor.lr == 1e-6 and select(tree, "trainer.n_gpus_per_node") == gpus
    assert select(tree, "reward.custom_reward_function.reward_kwargs.propagator.name") == "sam2_hiera_l"
    assert "VEASON_SAM2_DEVICE" not in select(tree, "ray_kwargs.ray_init.runtime_env.env_vars")  # the kwargs carry it
    assert select(tree, "data.custom_cls.name") == "VeasonRLDataset"
    assert select(tree, "trainer.checkpoint_callback_class") == "veason_r1.rl.verl_callbacks.KeepLastAndBest"
    assert select(tree, "trainer.max_actor_ckpt_to_keep") is None and select(tree, "trainer.keep_last_checkpoints") == 2
    actor = omega_conf_to_dataclass(tree.actor_rollout_ref.actor)  # verl's typed config accepts our values
    assert (actor.kl_loss_coef, actor.entropy_coeff, actor.optim.lr, actor.clip_ratio) == (5e-3, 1e-3, 1e-6, 0.2)
    rollout = omega_conf_to_dataclass(tree.actor_rollout_ref.rollout)
    assert (rollout.n, rollout.prompt_length, rollout.response_length, rollout.limit_images) == (8, 7100, 1024, None)


def test_reward_kwargs_are_one_nested_reward_config(synth_root, tiny_dir, sam2_ckpt, tmp_path):
    """verl's reward_kwargs are the GRPO config's `reward:` as one nested mapping (the propagator nested), with the
    policy's frame side from data.image_size (before, the strict variant clipped to the default 560 on verl), and
    they are exactly what the reward worker reads back (`reward_config`)."""
    from veason_r1.reward.config import reward_config
    from veason_r1.rl.verl_config import select

    plan = launch_plan(synth_root, tiny_dir, sam2_ckpt, tmp_path / "run", "training_scripts/grpo_qwen2_5vl_3b.yaml",
                       "reward.variant=strict")
    kwargs = select(plan.tree, "reward.custom_reward_function.reward_kwargs")
    assert kwargs == {"variant": "strict", "use_consistency": True, "use_keyframe": True, "image_size": 112,
                      "propagator": {"name": "sam2_hiera_l", "checkpoint": str(sam2_ckpt), "device": "cuda",
                                     "offload": False},
                      "max_sam2_load_failures": 3, "group_window_s": 0.05, "max_wait_s": 2.0}
    text = plan.yaml_path.read_text()  # one mapping in the generated file, not flat dotted keys
    assert "propagator:" in text and "reward_kwargs.propagator" not in text and "sam2_model" not in text
    read = reward_config(**plan.tree.reward.custom_reward_function.reward_kwargs)  # OmegaConf, as verl passes it
    assert read == plan.cfg.reward_config() and read.frame_side == 112


@pytest.mark.parametrize("size", ["3b", "7b"])
def test_vllm_rollout_bounds_are_derived_from_the_data_config(synth_root, tiny_dir, sam2_ckpt, tmp_path, size):
    """Issue 23 item 1: without these, vLLM 0.24 profiles a 128,000-token context with one 14-frame video of
    12.8 MP frames inside 0.25 of the GPU and the 7B replicas start with no KV cache. The bounds reach vLLM the way
    verl 0.9.1 passes them: RolloutConfig.max_model_len, and engine_kwargs.vllm as `vllm serve` flags (dicts as JSON);
    `limit_images` stays unset because verl would replace the whole limit_mm_per_prompt mapping with {"image": N}."""
    from verl.utils.config import omega_conf_to_dataclass

    from veason_r1.rl.verl_config import select

    plan = launch_plan(synth_root, tiny_dir, sam2_ckpt, tmp_path / "run", f"training_scripts/grpo_qwen2_5vl_{size}.yaml")
    d = plan.cfg.data
    rollout = omega_conf_to_dataclass(plan.tree.actor_rollout_ref.rollout)  # what vllm_async_server reads
    assert rollout.max_model_len == d.max_prompt_length + d.max_response_length == 8124
    assert rollout.limit_images is None
    vllm_args = rollout.engine_kwargs["vllm"]
    assert isinstance(vllm_args["limit_mm_per_prompt"], dict)  # verl json.dumps dicts for the CLI
    assert vllm_args["limit_mm_per_prompt"] == {"image": d.num_frames, "video": 0} == {"image": 6, "video": 0}
    pixels = {"min_pixels": 112 * 112, "max_pixels": 112 * 112}  # image_size=112 in these tests (560 -> 313,600)
    assert vllm_args["mm_processor_kwargs"] == pixels and select(plan.tree, "data.mm_processor_kwargs") == pixels
    assert rollout.max_num_batched_tokens >= rollout.max_model_len  # one whole prompt fits a prefill batch
    text = plan.yaml_path.read_text()
    assert "max_model_len: 8124" in text and "video: 0" in text


def test_vllm_bounds_have_one_home(synth_root, tiny_dir, sam2_ckpt, tmp_path):
    for key in ("verl.actor_rollout_ref.rollout.max_model_len=128000", "verl.actor_rollout_ref.rollout.limit_images=8",
                "verl.actor_rollout_ref.rollout.engine_kwargs.vllm.limit_mm_per_prompt.video=1"):
        with pytest.raises(ValueError, match="set by veason-r1 itself"):
            launch_plan(synth_root, tiny_dir, sam2_ckpt, tmp_path / "run", "training_scripts/grpo_qwen2_5vl_3b.yaml",
                        key)


def test_verl_validate_rejects_a_bad_batch_layout(synth_root, tiny_dir, sam2_ckpt, tmp_path):
    from veason_r1.rl.config import load_config
    from veason_r1.rl.verl_config import validate
    from veason_r1.structured_config import ConfigError

    with pytest.raises(ConfigError, match="actor.ppo_mini_batch_size = 32: must divide data.train_batch_size"):
        load_config("training_scripts/grpo_qwen2_5vl_3b.yaml", ["actor.ppo_mini_batch_size=32"])
    tree = launch_plan(synth_root, tiny_dir, sam2_ckpt, tmp_path / "run").tree
    tree.actor_rollout_ref.actor.ppo_mini_batch_size = 32  # what verl itself refuses too
    with pytest.raises(ValueError, match="ppo_mini_batch_size"):
        validate(tree)


def test_engine_section_cannot_hold_a_method_key_and_typos_are_refused(synth_root, tiny_dir, sam2_ckpt, tmp_path):
    from veason_r1.rl.config import load_config
    from veason_r1.rl.verl_config import unknown_keys, verl_overrides
    from veason_r1.structured_config import ConfigError

    with pytest.raises(ConfigError, match="verl.actor_rollout_ref.rollout.n: owned by the GRPO field 'rollout.n'"):
        load_config(None, ["verl.actor_rollout_ref.rollout.n=4"])
    assert unknown_keys(verl_overrides(load_config(None))) == []  # every key on the fields exists in verl 0.9.1
    with pytest.raises(ValueError, match="verl.actor_rollout_ref.rollout.gpu_memory_utilisation: verl 0.9.1 has no"):
        launch_plan(synth_root, tiny_dir, sam2_ckpt, tmp_path / "typo", "training_scripts/grpo_qwen2_5vl_3b.yaml",
                    "verl.actor_rollout_ref.rollout.gpu_memory_utilisation=0.3")


def test_best_checkpoint_picks_the_best_saved_step(tmp_path):
    from veason_r1.rl.verl_config import best_checkpoint, main

    val, ck = tmp_path / "val", tmp_path / "ckpt"
    for step, scores in {0: [1.0, 1.2], 100: [2.0, 2.4], 200: [3.0, 3.1], 300: [2.5, 2.5]}.items():
        val.mkdir(exist_ok=True)
        (val / f"{step}.jsonl").write_text("".join(json.dumps({"score": s, "step": step}) + "\n" for s in scores))
    for step in (100, 300):  # step 200 was validated but not saved
        (ck / f"global_step_{step}" / "actor").mkdir(parents=True)
    best = best_checkpoint(val, ck)
    assert best.step == 300 and best.score == pytest.approx(2.5)
    (ck / "global_step_200" / "actor").mkdir(parents=True)
    assert best_checkpoint(val, ck).step == 200
    assert main(["best", str(val), str(ck)]) == 0
    assert json.loads((ck / "best_checkpoint.json").read_text())["step"] == 200


# ------------------------------------------------------------------------------------------------------ data


def test_samples_decode_only_the_sampled_frames(synth_root, monkeypatch):
    from veason_r1.data.revos import ReVOSDataset
    from veason_r1.data.video import JpegFolderSource
    from veason_r1.rl.data import RLSampleBuilder, select_expressions

    ds = ReVOSDataset(synth_root, "train")
    builder = RLSampleBuilder(ds, num_frames=6, image_size=112)
    expr = select_expressions(ds, builder=builder)[0]
    decoded = []
    orig = JpegFolderSource.get
    monkeypatch.setattr(JpegFolderSource, "get", lambda self, i: decoded.append(i) or orig(self, i))
    s = builder.build(expr, random.Random(0))
    assert decoded == s.frame_ids and s.keyframe in s.frame_ids
    K = len(s.frame_ids)
    assert s.frames.shape == (K, 112, 112, 3) and s.gt_masks.shape == (K, 112, 112)
    assert sorted(s.gt_boxes) == sorted(str(i) for i in range(K))
    assert s.prompt.count("<image>") == K and f"({s.frame_ids[0]}s)<image>" in s.prompt
    areas = ds.gt_areas(expr)
    top5 = sorted(range(len(areas)), key=lambda i: (-areas[i], i))[:5]
    keys = {builder.build(expr, random.Random(seed)).keyframe for seed in range(40)}
    assert keys <= set(top5) and len(keys) > 1  # the keyframe is redrawn among the top-5 area frames
    # boxes: the GT union's extent in the 112 square (+0.5 convention) on the keyframe
    pos = s.frame_ids.index(s.keyframe)
    ys, xs = np.nonzero(s.gt_masks[pos])
    box = np.asarray(s.gt_boxes[str(pos)]).reshape(-1, 4)
    assert box[:, 0].min() == pytest.approx(xs.min(), abs=2) and box[:, 2].max() == pytest.approx(xs.max(), abs=2)


def test_no_target_and_unknown_pool_entries(synth_root, tmp_path):
    from veason_r1.data.revos import ReVOSDataset
    from veason_r1.rl.data import select_expressions

    ds = ReVOSDataset(synth_root, "train")
    kept = select_expressions(ds)
    assert all(e.type_id != 2 for e in kept)
    pool = tmp_path / "pool.jsonl"
    pool.write_text(json.dumps({"video": "nope", "exp_id": "0"}) + "\n")
    with pytest.raises(KeyError, match="nope/0"):
        select_expressions(ds, pool)


def _verl_data_config(tmp_path, image_size):
    from veason_r1.rl.verl_config import PLUMBING, compose, write_verl_yaml

    write_verl_yaml(PLUMBING, tmp_path / "verl_config.yaml", "test")
    cfg = compose("verl_config", [f"+data.cache_dir={tmp_path / 'cache'}"], tmp_path)
    return cfg.data


def test_verl_dataset_class_with_processor_redraws_train_rows(synth_root, tiny_dir, tmp_path):
    from transformers import AutoProcessor
    from verl.trainer.ppo.utils import create_rl_dataset
    from verl.utils.dataset.rl_dataset import RLHFDataset, collate_fn

    from veason_r1.data.revos import ReVOSDataset
    from veason_r1.reward.verl_hook import parse_ground_truth
    from veason_r1.rl.data import RLSampleBuilder, VeasonRLDataset, reference_rows, select_expressions, write_parquet

    ds = ReVOSDataset(synth_root, "train")
    exprs = select_expressions(ds, builder=RLSampleBuilder(ds))[:3]
    draw = {"num_frames": 6, "image_size": 112, "keyframe_top_k": 5}
    train = write_parquet(reference_rows(exprs, synth_root, "train", redraw=True, **draw), tmp_path / "train.parquet")
    val = write_parquet(reference_rows(exprs, synth_root, "train", redraw=False, **draw), tmp_path / "val.parquet")
    processor = AutoProcessor.from_pretrained(str(tiny_dir), local_files_only=True)
    data_cfg = _verl_data_config(tmp_path, 112)
    dataset = create_rl_dataset([str(train)], data_cfg, processor.tokenizer, processor, is_train=True)
    assert isinstance(dataset, VeasonRLDataset) and isinstance(dataset, RLHFDataset) and len(dataset) == 3

    row = dataset[0]
    K = len(row["extra_info"]["frame_ids"])
    user = row["raw_prompt"][1]["content"]
    images = [c["image"] for c in user if c["type"] == "image"]
    assert len(images) == K and all(im.size == (112, 112) for im in images)
    sample = parse_ground_truth(row["reward_model"]["ground_truth"], row["extra_info"])
    assert sample.frame_ids == row["extra_info"]["frame_ids"] and sample.frames.shape == (K, 112, 112, 3)
    # what verl's agent loop does with raw_prompt: vision extraction + chat template + processor
    imgs, _, _ = RLHFDataset._process_multi_modal_info(row["raw_prompt"], 14, data_cfg)
    text = processor.apply_chat_template(row["raw_prompt"], tokenize=False, add_generation_prompt=True)
    inputs = processor(text=[text], images=imgs, return_tensors="pt")
    pad_id = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert int((inputs["input_ids"] == pad_id).sum()) == K * (112 // 28) ** 2
    assert "identify the timestamp" in text and f"({row['extra_info']['frame_ids'][0]}s)" in text

    keyframes = {tuple(dataset[0]["extra_info"]["frame_ids"]) + (dataset[0]["extra_info"]["keyframe"],)
                 for _ in range(12)}
    assert len(keyframes) > 1  # a fresh keyframe per access
    batch = collate_fn([dataset[0], dataset[1]])
    assert batch["raw_prompt"].shape == (2,)

    vset = create_rl_dataset([str(val)], data_cfg, processor.tokenizer, processor, is_train=False)
    draws = {json.dumps(vset[1]["extra_info"]["frame_ids"]) + str(vset[1]["extra_info"]["keyframe"]) for _ in range(5)}
    assert len(draws) == 1  # validation rows are fixed


def test_mask_dict_is_parsed_once_and_shared_by_the_data_loader_workers(synth_root, tiny_dir, tmp_path, monkeypatch):
    """Issue 23 item 10: every data-loader worker parsed the whole mask_dict.json (hundreds of MB on ReVOS, 8 copies).
    The launcher now parses it once into a memory-mapped index (`veason_r1.data.mask_index`); the workers' datasets
    map it (page cache shared across processes) and never read the JSON; the index equals the parsed JSON."""
    import shutil

    from transformers import AutoProcessor
    from verl.trainer.ppo.utils import create_rl_dataset

    from veason_r1.data import revos
    from veason_r1.data.mask_index import MaskIndex, build_mask_index
    from veason_r1.data.revos import ReVOSDataset
    from veason_r1.rl.data import RLSampleBuilder, reference_rows, select_expressions, write_parquet

    root = tmp_path / "root"
    shutil.copytree(synth_root, root)
    masks = json.loads((root / "mask_dict.json").read_text())
    first = next(iter(masks))
    masks["uncompressed"] = [{"size": [2, 2], "counts": [0, 4]}, None]  # kept exactly, whatever the RLE form
    masks["broken"] = "not a list"
    (root / "mask_dict.json").write_text(json.dumps(masks))
    cache = tmp_path / "cache"
    index = MaskIndex(build_mask_index(root / "mask_dict.json", cache))
    assert dict(index) == masks and index.get("nope") is None and "broken" in index
    assert isinstance(index._blob, np.memmap) and build_mask_index(root / "mask_dict.json", cache) == index.folder

    ds = ReVOSDataset(root, "train")
    exprs = select_expressions(ds, builder=RLSampleBuilder(ds))[:3]
    draw = {"num_frames": 6, "image_size": 112, "keyframe_top_k": 5}
    train = write_parquet(reference_rows(exprs, root, "train", redraw=True, mask_cache=cache, **draw),
                          tmp_path / "train.parquet")
    read = []
    real_load = revos.load_json
    monkeypatch.setattr(revos, "load_json", lambda path: read.append(Path(path).name) or real_load(path))
    real_json_load = json.load

    def guarded_load(f, *a, **k):
        assert not str(getattr(f, "name", "")).endswith("mask_dict.json"), "a worker parsed mask_dict.json"
        return real_json_load(f, *a, **k)

    monkeypatch.setattr(json, "load", guarded_load)
    processor = AutoProcessor.from_pretrained(str(tiny_dir), local_files_only=True)
    dataset = create_rl_dataset([str(train)], _verl_data_config(tmp_path, 112), processor.tokenizer, processor,
                                is_train=True)
    row = dataset[0]  # what a worker does on its first access
    assert "mask_dict.json" not in read and row["reward_model"]["ground_truth"]
    worker_ds = next(iter(dataset._datasets.values()))
    assert isinstance(worker_ds.mask_dict, MaskIndex) and worker_ds.mask_dict[first] == masks[first]


def test_static_parquet_loads_with_stock_rlhf_dataset(synth_root, tiny_dir, tmp_path):
    from transformers import AutoProcessor
    from verl.utils.dataset.rl_dataset import RLHFDataset

    from veason_r1.data.revos import ReVOSDataset
    from veason_r1.reward.verl_hook import parse_ground_truth
    from veason_r1.rl.data import RLSampleBuilder, export_static_parquet, select_expressions

    ds = ReVOSDataset(synth_root, "valid")
    builder = RLSampleBuilder(ds, 6, 112)
    exprs = select_expressions(ds, builder=builder)[:2]
    path = export_static_parquet(builder, exprs, tmp_path / "static.parquet")
    processor = AutoProcessor.from_pretrained(str(tiny_dir), local_files_only=True)
    cfg = _verl_data_config(tmp_path, 112)
    cfg.custom_cls.path = None
    dataset = RLHFDataset([str(path)], processor.tokenizer, cfg, processor)
    row = dataset[1]
    n_images = sum(c["type"] == "image" for c in row["raw_prompt"][1]["content"])
    sample = parse_ground_truth(row["reward_model"]["ground_truth"])
    assert n_images == len(sample.frame_ids) == len(row["extra_info"]["frame_ids"])


# ------------------------------------------------------------------------------------------------ core_algos


def test_grpo_advantage_is_group_normalised_with_unbiased_std():
    from verl.trainer.ppo.core_algos import compute_grpo_outcome_advantage

    rewards = torch.tensor([1.0, 2.0, 4.0, 0.5, 0.5, 3.0])
    index = np.array([0, 0, 0, 1, 1, 1])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [1, 0, 0], [1, 1, 1], [1, 1, 0], [1, 0, 0]], dtype=torch.float32)
    token_rewards = torch.zeros_like(mask)
    token_rewards[torch.arange(6), mask.sum(-1).long() - 1] = rewards
    adv, _ = compute_grpo_outcome_advantage(token_rewards, mask, index, epsilon=1e-6, norm_adv_by_std_in_grpo=True)
    for g in (0, 1):
        r = rewards[index == g]
        want = (r - r.mean()) / (r.std(unbiased=True) + 1e-6)
        rows = adv[torch.as_tensor(index == g)]
        for i, w in enumerate(want):
            got = rows[i][mask[torch.as_tensor(index == g)][i].bool()]
            assert torch.allclose(got, torch.full_like(got, float(w)), atol=1e-5)
    assert (adv[mask == 0] == 0).all()


def test_low_var_kl_and_clipped_policy_loss_formulas():
    from verl.trainer.ppo.core_algos import agg_loss, get_policy_loss_fn, kl_penalty
    from verl.workers.config import ActorConfig

    logp = torch.tensor([[-1.0, -2.0, -0.5]])
    ref = torch.tensor([[-1.5, -2.0, 30.0]])
    kl = kl_penalty(logp, ref, "low_var_kl")
    d = (ref - logp).clamp(-20, 20)
    assert torch.allclose(kl, (d.exp() - d - 1).clamp(-10, 10))
    assert kl[0, 2] == 10  # clamped

    cfg = ActorConfig(strategy="fsdp", rollout_n=1, ppo_micro_batch_size_per_gpu=1, clip_ratio=0.2,
                      clip_ratio_low=0.2, clip_ratio_high=0.2)
    old = torch.zeros(1, 3)
    new = torch.log(torch.tensor([[1.5, 0.5, 1.1]]))  # ratios 1.5, 0.5, 1.1
    adv = torch.tensor([[1.0, -1.0, 1.0]])
    mask = torch.ones(1, 3, dtype=torch.bool)
    loss, metrics = get_policy_loss_fn("vanilla")(old_log_prob=old, log_prob=new, advantages=adv, response_mask=mask,
                                                  loss_agg_mode="token-mean", config=cfg)
    # per token: -min(r*A, clip(r)*A) = [-1.2, 0.8, -1.1] -> mean
    assert float(loss) == pytest.approx((-1.2 + 0.8 - 1.1) / 3, abs=1e-6)
    assert metrics["actor/pg_clipfrac"] == pytest.approx(2 / 3)
    assert float(agg_loss(torch.tensor([[1.0, 3.0]]), torch.tensor([[1.0, 1.0]]), "token-mean")) == 2.0


def test_cli_verl_dry_run_writes_data_and_validates(synth_root, tiny_dir, sam2_ckpt, tmp_path, capsys):
    import pyarrow.parquet as pq

    from veason_r1.cli import main

    out = tmp_path / "run"
    rc = main(["rl", "--backend", "verl", "--config", "training_scripts/grpo_qwen2_5vl_3b.yaml",
               "--set", f"data.train_root={synth_root}", "--set", "data.train_pool=null",
               "--set", f"model.path={tiny_dir}", "--set", f"reward.propagator.checkpoint={sam2_ckpt}",
               "--set", f"trainer.default_local_dir={out}", "--set", "data.val_max_samples=2", "--dry-run"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "-m verl.trainer.main_ppo" in text and f"--config-path={out}" in text and "--config-name=verl_config" in text
    train = pq.read_table(out / "data" / "train.parquet").to_pylist()
    val = pq.read_table(out / "data" / "val.parquet").to_pylist()
    assert len(val) == 2 and all(not r["extra_info"]["redraw"] for r in val)
    assert train and all(r["extra_info"]["redraw"] and r["extra_info"]["num_frames"] == 6 for r in train)
    assert not {r["extra_info"]["video"] for r in train} & {r["extra_info"]["video"] for r in val}  # held out


def test_pool_accepts_the_data_sampling_output(synth_root, tmp_path):
    """The stratified-sampling output (a meta_expressions JSON) is a valid RL pool, as is a JSONL of keys."""
    from veason_r1.datacon.stratified import StratifiedConfig, sample_meta_file
    from veason_r1.rl.data import read_pool

    out = tmp_path / "meta_expressions_train_select.json"
    sample_meta_file(synth_root / "meta_expressions_train_.json", out, StratifiedConfig(target_size=5, seed=0))
    pairs = read_pool(out)
    meta = json.loads(out.read_text())
    assert sorted(pairs) == sorted((v, e) for v, d in meta["videos"].items() for e in d["expressions"])
    assert len(pairs) == 5


@pytest.mark.gpu
def test_vllm_starts_with_the_generated_rollout_bounds(synth_root, tiny_dir, sam2_ckpt, tmp_path):  # pragma: no cover
    """On a GPU node: vLLM takes the generated bounds as verl passes them (max_model_len, limit_mm_per_prompt with
    video 0, mm_processor_kwargs) and reports the KV cache it could allocate inside 0.25 of the GPU."""
    vllm = pytest.importorskip("vllm")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA")
    from verl.utils.config import omega_conf_to_dataclass

    plan = launch_plan(synth_root, tiny_dir, sam2_ckpt, tmp_path / "run")
    rollout = omega_conf_to_dataclass(plan.tree.actor_rollout_ref.rollout)
    llm = vllm.LLM(model=str(tiny_dir), max_model_len=rollout.max_model_len,
                   gpu_memory_utilization=rollout.gpu_memory_utilization, enforce_eager=True,
                   **rollout.engine_kwargs["vllm"])
    config = llm.llm_engine.model_config
    assert config.max_model_len == 8124
    assert dict(config.multimodal_config.limit_per_prompt)["video"] in (0, {"count": 0}) or \
        getattr(config.multimodal_config.limit_per_prompt["video"], "count", None) == 0
    print("kv cache blocks:", llm.llm_engine.vllm_config.cache_config.num_gpu_blocks)


def test_lora_grpo_on_the_vision_tower_is_refused(synth_root, tiny_dir, sam2_ckpt, tmp_path):
    """Issue 23 item 6: verl wraps every Linear with LoRA ("all-linear"), the vision tower's included, and vLLM 0.24
    does not apply tower LoRA, so rollouts would come from another policy than the one trained. Refused, naming the
    keys, unless model.exclude_modules keeps the tower out; what the check assumes is checked with PEFT on the tiny
    Qwen2.5-VL (the module names, and that the suggested exclusion leaves the tower unwrapped)."""
    import re

    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText

    from veason_r1.rl.verl_config import QWEN25VL_LINEARS, VISION_EXCLUDE, lora_vision_modules

    model = AutoModelForImageTextToText.from_pretrained(str(tiny_dir))
    linears = {re.sub(r"\.\d+\.", ".0.", n) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    assert linears - {"lm_head"} == set(QWEN25VL_LINEARS)

    def wrapped_vision(**kw):
        peft_model = get_peft_model(AutoModelForImageTextToText.from_pretrained(str(tiny_dir)),
                                    LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", **kw))
        return [n for n, _ in peft_model.named_modules() if ".visual." in n and n.endswith("lora_A")]

    assert wrapped_vision() and lora_vision_modules("all-linear", None)  # what verl would build: tower wrapped
    assert wrapped_vision(exclude_modules=VISION_EXCLUDE) == [] == lora_vision_modules("all-linear", VISION_EXCLUDE)
    assert lora_vision_modules(["q_proj", "v_proj"], None) == []  # language-model names only
    assert lora_vision_modules(["q_proj", "gate_proj"], None) == ["model.visual.blocks.0.mlp.gate_proj"]

    with pytest.raises(ValueError, match=r"model.lora_rank = 8 with model.target_modules = 'all-linear' and "
                                         r"model.exclude_modules = None puts LoRA on the vision tower"):
        launch_plan(synth_root, tiny_dir, sam2_ckpt, tmp_path / "lora", "training_scripts/grpo_qwen2_5vl_3b.yaml",
                    "model.lora_rank=8")
    from veason_r1.rl.config import load_config
    from veason_r1.rl.launch import absolute
    from veason_r1.rl.verl_config import unknown_keys, verl_values

    # "frozen" is no way out on verl 0.9.1: actor.freeze_vision_tower is declared there but read by no engine
    with pytest.raises(ValueError, match="actor.freeze_vision_tower = True: verl 0.9.1 declares the key but none"):
        launch_plan(synth_root, tiny_dir, sam2_ckpt, tmp_path / "frozen", "training_scripts/grpo_qwen2_5vl_3b.yaml",
                    "model.lora_rank=8", "actor.freeze_vision_tower=true")

    # (verl's validate_config wants vLLM installed for any LoRA run, so the accepted one stops at the values here)
    cfg = absolute(load_config("training_scripts/grpo_qwen2_5vl_3b.yaml",
                               ["model.lora_rank=8", f"model.exclude_modules={VISION_EXCLUDE}"]))
    values, _ = verl_values(cfg, train_file="/data/train.parquet", val_file=None, has_flash_attn=False)
    assert values["actor_rollout_ref.model.exclude_modules"] == VISION_EXCLUDE and unknown_keys(values) == []


def test_mask_index_refuses_what_the_json_refuses(synth_root, tmp_path):
    """The shared index keeps ReVOSDataset's checks: a short per-frame list and a non-list entry are still refused."""
    import shutil

    from veason_r1.data.revos import ReVOSDataset
    from veason_r1.errors import BadInput

    root = tmp_path / "root"
    shutil.copytree(synth_root, root)
    masks = json.loads((root / "mask_dict.json").read_text())
    ds = ReVOSDataset(root, "train", mask_cache=tmp_path / "cache")
    anno = ds.expressions[0].anno_ids[0]
    assert ds.mask_dict.frame_count(anno) == len(masks[anno])
    for bad, message in ((masks[anno][:-1], "masks for the video's"), ("oops", "expected a list")):
        (root / "mask_dict.json").write_text(json.dumps({**masks, anno: bad}))
        for cache in (None, tmp_path / "cache"):
            with pytest.raises(BadInput, match=message):
                ReVOSDataset(root, "train", mask_cache=cache)
