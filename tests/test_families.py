"""Every policy family of models/families.py through the offline pipeline, on its tiny random-weight folder.

The tiny folders are built by the registry (`tiny`, `tiny-qwen3_vl`, `tiny-qwen3_5`) into a per-session cache. Their
outputs are random: these tests check that each stage runs and follows the family's conventions, not results.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from veason_r1.models.families import FAMILIES, QWEN2_5_VL, QWEN3_VL
from veason_r1.prompting import build_prompt, format_response, parse_prediction

NAMES = {"qwen2_5_vl": "tiny", "qwen3_vl": "tiny-qwen3_vl", "qwen3_5": "tiny-qwen3_5"}


@pytest.fixture(scope="session")
def family_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("family_cache")


@pytest.fixture
def cached(family_cache, monkeypatch):
    monkeypatch.setenv("VEASON_R1_CACHE", str(family_cache))
    return family_cache


def small_size(row) -> int:
    return 4 * row.factor  # 16 visual tokens per frame in every family


def test_every_family_has_a_tiny_name():
    from veason_r1.models.registry import POLICIES

    assert set(NAMES) == set(FAMILIES)
    assert all(name in POLICIES and POLICIES[name].random_weights for name in NAMES.values())


def test_the_paper_family_prompt_is_unchanged_and_others_state_their_grid():
    assert build_prompt("The dog.", [0, 5]) == build_prompt("The dog.", [0, 5], family=QWEN2_5_VL)
    assert "relative" not in build_prompt("The dog.", [0, 5])
    assert "0 to 1000" in build_prompt("The dog.", [0, 5], family=QWEN3_VL)


@pytest.mark.parametrize("name", list(NAMES))
def test_a_box_means_the_same_region_in_every_family(name):
    """SFT target (pixels of the frame -> the family's convention) then the parser (-> pixels): the same box."""
    row = FAMILIES[name]
    size = row.default_image_size
    box = [0.25 * size, 0.1 * size, 0.75 * size, size]
    text = format_response("r", 5, [box], row, size)
    answer = json.loads(text.split("<answer>")[1].split("</answer>")[0])
    assert answer["bbox_2d_list"] == ([[140, 56, 420, 560]] if row.box_grid is None else [[250, 100, 750, 1000]])
    parsed = parse_prediction(text, [0, 5], row, size)
    assert parsed.keyframe == 5 and np.allclose(parsed.boxes, [box], atol=size / 1000)


@pytest.mark.parametrize("name", list(NAMES))
def test_tiny_policy_generates_with_its_own_patch_rule(name, cached):
    from veason_r1.models.policy import GenerationRequest, HFEngine, SamplingConfig, build_inputs, load_policy
    from veason_r1.models.registry import resolve_policy

    row = FAMILIES[name]
    policy = load_policy(resolve_policy(NAMES[name]))
    assert policy.family is row
    size = small_size(row)
    images = [np.full((size, size, 3), 40 * i, np.uint8) for i in range(3)]
    batch = build_inputs(policy.processor, [GenerationRequest("the dog", [0, 4, 8], images)], size)
    side = size // row.patch_size
    assert batch["image_grid_thw"].tolist() == [[1, side, side]] * 3
    image_pad = policy.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert int((batch["input_ids"] == image_pad).sum()) == 3 * row.visual_tokens_per_frame(size)
    (texts,) = HFEngine(policy, image_size=size).generate([GenerationRequest("the dog", [0, 4, 8], images)],
                                                          SamplingConfig(max_new_tokens=6))
    assert len(texts) == 1 and isinstance(texts[0], str)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(NAMES))
def test_cli_predict_then_eval_by_name(name, cached, synth_root, tmp_path):
    from veason_r1.cli import main

    row = FAMILIES[name]
    pred = tmp_path / "pred"
    assert main(["predict", "revos", "--data", str(synth_root), "--model", NAMES[name], "--sam2", "tiny",
                 "--image-size", str(small_size(row)), "--max-new-tokens", "8", "--device", "cpu", "--no-progress",
                 "--limit", "3", "--out", str(pred), "--merge"]) == 0
    out = tmp_path / "results.json"
    assert main(["eval", "revos", "--data", str(synth_root), "--pred", str(pred), "--out", str(out), "--workers", "1",
                 "--no-progress"]) == 0
    assert 0 <= json.loads(out.read_text())["overall"]["JF"] <= 100


# ----------------------------------------------------------------------------------------------------------------
# GRPO: the verl config composes and validates through verl's own code, the verl dataset class draws the family's
# prompt and GT boxes, and the local trainer takes a step.

GRPO_YAML = {"qwen2_5_vl": "training_scripts/grpo_qwen2_5vl_3b.yaml",
             "qwen3_vl": "training_scripts/grpo_qwen3vl_4b.yaml",
             "qwen3_5": "training_scripts/grpo_qwen3_5_2b.yaml"}


@pytest.mark.parametrize("name", list(NAMES))
def test_verl_config_per_family_validates_through_verl(name, cached, synth_root, tmp_path):
    pytest.importorskip("verl")
    import torch

    from veason_r1.models.registry import resolve_policy
    from veason_r1.rl.config import load_config
    from veason_r1.rl.launch import prepare
    from veason_r1.rl.verl_config import select

    row = FAMILIES[name]
    ckpt = tmp_path / "sam2_hiera_large.pt"
    torch.save({"model": {}}, ckpt)  # a complete checkpoint file (the launch checks it; nothing loads it here)
    size = small_size(row)
    cfg = load_config(GRPO_YAML[name], [f"data.train_root={synth_root}", "data.train_pool=null",
                                        f"model.path={resolve_policy(NAMES[name])}", f"reward.propagator.checkpoint={ckpt}",
                                        f"trainer.default_local_dir={tmp_path / 'run'}", "data.val_max_samples=2",
                                        f"data.image_size={size}", f"data.family={name}"])
    plan = prepare(cfg, GRPO_YAML[name], has_flash_attn=False)  # runs verl's validate_config on the composed tree
    assert select(plan.tree, "data.mm_processor_kwargs") == {"min_pixels": size * size, "max_pixels": size * size}
    import pyarrow.parquet as pq

    rows = pq.read_table(tmp_path / "run" / "data" / "train.parquet").to_pylist()
    assert rows and all(r["extra_info"].get("family", "qwen2_5_vl") == name for r in rows)


def test_a_family_folder_and_data_family_must_agree(cached, synth_root):
    from veason_r1.models.registry import resolve_policy
    from veason_r1.rl.config import load_config
    from veason_r1.structured_config import ConfigError

    with pytest.raises(ConfigError, match="data.family.*set data.family=qwen3_vl"):
        load_config(GRPO_YAML["qwen2_5_vl"], [f"data.train_root={synth_root}",
                                              f"model.path={resolve_policy(NAMES['qwen3_vl'])}"])
    with pytest.raises(ConfigError, match="data.image_size.*multiple of 32"):
        load_config(GRPO_YAML["qwen3_vl"], [f"data.train_root={synth_root}", "data.image_size=560"])


@pytest.mark.parametrize("name", ["qwen3_vl", "qwen3_5"])
def test_verl_dataset_rows_follow_the_family(name, cached, synth_root, tmp_path):
    pytest.importorskip("verl")
    from transformers import AutoProcessor
    from verl.trainer.ppo.utils import create_rl_dataset
    from verl.utils.dataset.rl_dataset import RLHFDataset

    from veason_r1.data.revos import ReVOSDataset
    from veason_r1.models.registry import resolve_policy
    from veason_r1.reward.verl_hook import parse_ground_truth
    from veason_r1.rl.data import RLSampleBuilder, reference_rows, select_expressions, write_parquet
    from veason_r1.rl.verl_config import PLUMBING, compose, write_verl_yaml

    row = FAMILIES[name]
    size = small_size(row)
    ds = ReVOSDataset(synth_root, "train")
    exprs = select_expressions(ds, builder=RLSampleBuilder(ds))[:2]
    draw = {"num_frames": 6, "image_size": size, "keyframe_top_k": 5, "family": name}
    train = write_parquet(reference_rows(exprs, synth_root, "train", redraw=True, **draw), tmp_path / "t.parquet")
    processor = AutoProcessor.from_pretrained(str(resolve_policy(NAMES[name])), local_files_only=True)
    write_verl_yaml(PLUMBING, tmp_path / "verl_config.yaml", "test")
    data_cfg = compose("verl_config", [f"+data.cache_dir={tmp_path / 'cache'}"], tmp_path).data
    dataset = create_rl_dataset([str(train)], data_cfg, processor.tokenizer, processor, is_train=True)
    item = dataset[0]
    sample = parse_ground_truth(item["reward_model"]["ground_truth"], item["extra_info"])
    assert sample.family == name
    every = [v for boxes in sample.gt_boxes.values() for b in boxes for v in b]
    assert max(every) <= row.box_grid and max(every) > size  # GT boxes on the 0-1000 grid, not in pixels
    imgs, _, _ = RLHFDataset._process_multi_modal_info(item["raw_prompt"], row.patch_size, data_cfg)
    text = processor.apply_chat_template(item["raw_prompt"], tokenize=False, add_generation_prompt=True)
    assert "0 to 1000" in text
    inputs = processor(text=[text], images=imgs, return_tensors="pt")
    pad = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert int((inputs["input_ids"] == pad).sum()) == len(sample.frame_ids) * row.visual_tokens_per_frame(size)


def test_reward_reads_answers_in_the_family_convention():
    """The same region answered in pixels (Qwen2.5-VL) or on the grid (Qwen3-VL) scores the same."""
    from veason_r1.models.propagator import PropagatorBase
    from veason_r1.prompting import format_response
    from veason_r1.reward.scoring import RewardSample, score_group

    size = 64
    masks = np.zeros((2, size, size), bool)
    masks[1, 16:33, 8:41] = True
    frames = np.zeros((2, size, size, 3), np.uint8)
    seen = []

    class Box(PropagatorBase):
        def propagate(self, fr, k, boxes, *, progress=False):
            seen.append(np.asarray(boxes).round(3).tolist())
            out = np.zeros((2, size, size), bool)
            for x0, y0, x1, y1 in np.asarray(boxes).round().astype(int):
                out[:, y0:y1 + 1, x0:x1 + 1] = True
            return out

    scores = []
    for row in (QWEN2_5_VL, QWEN3_VL):
        gt = {"0": [[0, 0, 0, 0]], "1": row.to_answer_boxes([[8, 16, 40, 32]], size)}
        sample = RewardSample([0, 7], gt, masks, frames, family=row.name)
        (r,) = score_group([format_response("x", 7, [[8, 16, 40, 32]], row, size)], sample, Box())
        scores.append(r)
    assert seen[0] == seen[1] == [[8.0, 16.0, 40.0, 32.0]]  # SAM2 gets pixels in both families
    assert scores[0]["spatial"] == pytest.approx(1.0) and scores[1]["spatial"] == pytest.approx(1.0)
    assert scores[0]["consistency"] == scores[1]["consistency"]


@pytest.mark.slow
@pytest.mark.parametrize("name", list(NAMES))
def test_local_grpo_step_per_family(name, cached, synth_root, tmp_path):
    pytest.importorskip("verl")
    from veason_r1.models.registry import load_propagator, resolve_policy
    from veason_r1.rl.config import load_config
    from veason_r1.rl.local_trainer import LocalGRPOTrainer

    row = FAMILIES[name]
    cfg = load_config("configs/grpo_local_tiny.yaml", [
        f"data.train_root={synth_root}", f"model.path={resolve_policy(NAMES[name])}", f"data.family={name}",
        f"data.image_size={small_size(row)}", f"trainer.default_local_dir={tmp_path}", "trainer.logger=[console]",
        "trainer.total_training_steps=1", "trainer.save_freq=-1", "trainer.test_freq=-1", "rollout.n=2",
        "rollout.batch_size=4", "data.max_response_length=8"])
    trainer = LocalGRPOTrainer(cfg, propagator=load_propagator("tiny", device="cpu"), verbose=False)
    stats = trainer.train_step()
    assert all(np.isfinite(v) for v in stats.values() if isinstance(v, float))


# ----------------------------------------------------------------------------------------------------------------
# SFT export: LLaMA-Factory's own template and plugin tokenize each family's rows as the policy's inputs do.

SFT_SAMPLES = [("The dog that jumps over the fence.", [0, 4, 8], 8, [[10, 20, 60, 90]], "Step 1: a dog jumps."),
               ("the person in the red shirt", [1, 3, 5], 3, [[30, 5, 100, 110], [0, 0, 20, 40]], "Step 1: red.")]


def _export(out_dir, row, size):
    from PIL import Image

    from veason_r1.sft.dataset import export_llamafactory_dataset

    records = []
    for s, (expr, frame_ids, keyframe, boxes, cot) in enumerate(SFT_SAMPLES):
        paths = []
        for t in frame_ids:
            path = out_dir.parent / "src" / f"v{s}" / f"{t:05d}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((64, 96, 3), 20 * t + 40 * s, np.uint8)).save(path)
            paths.append(str(path))
        records.append({"key": f"v{s}/0", "video": f"v{s}", "exp": expr, "CoT": cot, "frame_ids": frame_ids,
                        "keyframe": keyframe, "sampled_video_frames": paths, "height": 64, "width": 96,
                        "keyframe_boxes": boxes})
    return export_llamafactory_dataset(records, out_dir, image_size=size, family=row.name)


@pytest.mark.parametrize("name", list(NAMES))
def test_sft_export_tokenizes_with_the_family_template_as_the_policy_inputs(name, cached, tmp_path,
                                                                            llamafactory_sft):
    pytest.importorskip("llamafactory")
    from PIL import Image

    from veason_r1.models.policy import GenerationRequest, build_inputs, load_processor
    from veason_r1.models.registry import resolve_policy
    from veason_r1.sft.config import SFTConfig

    row = FAMILIES[name]
    size = small_size(row)
    folder = resolve_policy(NAMES[name])
    data_dir = _export(tmp_path / "sft", row, size).parent
    exported = json.loads((data_dir / "veason_cot.json").read_text())
    answer = json.loads(exported[0]["messages"][2]["content"].split("<answer>")[1].split("</answer>")[0])
    from veason_r1.data.masks import boxes_to_square

    square = boxes_to_square([[10, 20, 60, 90]], 64, 96, size)  # the one rule for pixels of the S x S frame
    want = [round(float(v)) for v in row.to_answer_boxes(square, size)[0]]
    assert answer["bbox_2d_list"][0] == want
    if row.box_grid is not None:  # on the grid: the same region whatever the frame side
        assert want == [round(v * 1000 / size) for v in square[0]]
    cfg = SFTConfig(model_name_or_path=str(folder), dataset_dir=str(data_dir), output_dir=str(tmp_path / "a"),
                    export_dir=None, image_size=size, cutoff_len=1024, bf16=False, use_cpu=True,
                    template=row.sft_template, preprocessing_num_workers=None, dataloader_num_workers=0,
                    report_to="none")
    ds, _ = llamafactory_sft(cfg.to_llamafactory())
    processor = load_processor(folder)
    tok = processor.tokenizer
    end = [tok.convert_tokens_to_ids("<|im_end|>")] + tok("\n", add_special_tokens=False)["input_ids"]
    for i, (expr, frame_ids, _, _, _) in enumerate(SFT_SAMPLES):
        images = [np.asarray(Image.open(data_dir / p).convert("RGB")) for p in exported[i]["images"]]
        response = exported[i]["messages"][2]["content"]
        ref = build_inputs(processor, [GenerationRequest(expr, frame_ids, images)], size, responses=[response])
        assert ds[i]["input_ids"] == ref["input_ids"][0].tolist() + end, name
        pad = tok.convert_tokens_to_ids("<|image_pad|>")
        assert ds[i]["input_ids"].count(pad) == len(frame_ids) * row.visual_tokens_per_frame(size)


def test_the_paper_frame_side_with_another_family_is_a_one_line_error(cached, synth_root, tmp_path, capsys):
    from veason_r1.cli import main

    rc = main(["predict", "revos", "--data", str(synth_root), "--model", "tiny-qwen3_vl", "--sam2", "tiny",
               "--device", "cpu", "--no-progress", "--limit", "1", "--out", str(tmp_path / "pred")])
    err = capsys.readouterr().err
    assert rc == 2 and "--image-size: 560 must be a positive multiple of 32" in err and "--image-size 640" in err


def test_cot_refuses_a_frame_side_the_family_cannot_take(synth_root, tmp_path, capsys):
    from veason_r1.cli import main

    rc = main(["cot", "--root", str(synth_root), "--split", "train", "--teacher", "synthetic", "--family", "qwen3_vl",
               "--out-dir", str(tmp_path / "cot"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "--image-size: 560 must be a positive multiple of 32" in err and "640" in err


def test_cot_exports_sft_rows_in_the_family_convention(synth_root, tmp_path):
    from veason_r1.cli import main

    out = tmp_path / "cot"
    assert main(["cot", "--root", str(synth_root), "--split", "train", "--teacher", "synthetic", "--family",
                 "qwen3_vl", "--image-size", "640", "--limit", "2", "--out-dir", str(out), "--no-progress"]) == 0
    rows = json.loads((out / "sft" / "veason_cot.json").read_text())
    assert rows and all("0 to 1000" in r["messages"][1]["content"] for r in rows)
    for r in rows:
        answer = json.loads(r["messages"][2]["content"].split("<answer>")[1].split("</answer>")[0])
        assert all(0 <= v <= 1000 for b in answer["bbox_2d_list"] for v in b)
