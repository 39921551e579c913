"""CoT SFT (LLaMA-Factory LoRA + merge) on the tiny Qwen2.5-VL, CPU, 112x112 frames.

One module-scoped run through `veason-r1 sft` (8 LoRA steps on one repeated batch, then the merge) feeds most tests.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("llamafactory")

from veason_r1.prompting import format_response
from veason_r1.sft.config import PATH_FIELDS, SFTConfig, add_config_flags, apply_flags
from veason_r1.sft.train import MERGE_DONE, TRAIN_DONE, check_dataset

ROOT = Path(__file__).resolve().parents[1]
SIZE = 112  # 16 visual tokens per frame
STEPS = 8

SAMPLES = [  # (expression, frame ids, keyframe, boxes, reasoning)
    ("The dog that jumps over the fence.", [0, 4, 8, 12], 8, [[10, 20, 60, 90]],
     "Step 1: a dog runs across the yard. Step 2: in frame 8 the dog is in mid air. Step 3: it is on the left."),
    ("the person in the red shirt", [1, 3, 5, 7], 3, [[30, 5, 100, 110], [0, 0, 20, 40]],
     "Step 1: two people walk. Step 2: frame 3 shows the red shirt clearly. Step 3: the person stands in the center."),
]


def write_sharegpt(out_dir: Path, size: int = SIZE, samples=SAMPLES, name: str = "veason_cot") -> Path:
    """SFT data through the real export (`export_llamafactory_dataset`) from CoT records of a 96x64 fake video.

    Returns the dataset_info.json path. The frames are flat colours with the first target box inverted.
    """
    from PIL import Image

    from veason_r1.prompting import answer_json
    from veason_r1.sft.dataset import export_llamafactory_dataset

    src = out_dir.parent / f"{out_dir.name}_src"
    records = []
    for s, (expr, frame_ids, keyframe, boxes, cot) in enumerate(samples):
        paths = []
        for t in frame_ids:
            rng = np.random.default_rng(100 * s + t)
            img = np.full((64, 96, 3), rng.integers(0, 256, 3), dtype=np.uint8)
            x1, y1, x2, y2 = (int(v * d / 560) for v, d in zip(boxes[0], (96, 64, 96, 64)))
            img[y1:y2, x1:x2] = 255 - img[y1:y2, x1:x2]
            path = src / f"v{s}" / f"{t:05d}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(path)
            paths.append(str(path))
        records.append({"key": f"v{s}/0", "video": f"v{s}", "exp": expr, "CoT": cot, "frame_ids": frame_ids,
                        "keyframe": keyframe, "sampled_video_frames": paths,
                        "solution": f"<answer>{answer_json(keyframe, boxes)}</answer>"})
    return export_llamafactory_dataset(records, out_dir, name=name, image_size=size)


def tiny_flags() -> list[str]:
    """CPU-fast settings: one repeated batch (both samples), constant high LR, no dropout, no warmup."""
    return [
        "--image-size", str(SIZE), "--cutoff-len", "1024", "--max-steps", str(STEPS),
        "--per-device-train-batch-size", "2", "--gradient-accumulation-steps", "1",
        "--learning-rate", "1e-2", "--lr-scheduler-type", "constant", "--warmup-steps", "0",
        "--lora-dropout", "0", "--lora-rank", "8", "--lora-alpha", "16",
        "--logging-steps", "1", "--save-steps", "1000", "--no-bf16",
        "--preprocessing-num-workers", "none", "--dataloader-num-workers", "0", "--infer-dtype", "float32",
    ]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    from veason_r1.models.tiny import make_tiny_qwen

    return make_tiny_qwen(tmp_path_factory.mktemp("tiny") / "qwen", seed=0)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return write_sharegpt(tmp_path_factory.mktemp("sftdata")).parent


@pytest.fixture(scope="module")
def sft_out(tiny_dir, data_dir, tmp_path_factory) -> Path:
    from veason_r1.cli import main

    out = tmp_path_factory.mktemp("sft") / "run"
    rc = main(["sft", "--data", str(data_dir), "--model", str(tiny_dir), "--out", str(out), *tiny_flags()])
    assert rc == 0
    return out


# ---------------------------------------------------------------------------------------------------------------------
# Training and merge


def test_lora_sft_drives_loss_down_on_repeated_batch(sft_out):
    from veason_r1.sft.train import read_losses

    adapter = sft_out / "adapter"
    losses = read_losses(adapter)
    assert len(losses) == STEPS
    assert all(np.isfinite(losses))
    # the same 2 samples every step: the adapter must fit them, (nearly) every step lowering the loss
    assert losses[-1] < losses[0] - 1.0, losses
    assert sum(b < a for a, b in itertools.pairwise(losses)) >= STEPS - 2, losses
    for name in ("adapter_config.json", "adapter_model.safetensors", TRAIN_DONE, "training_loss.png"):
        assert (adapter / name).is_file(), name
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    assert cfg["r"] == 8 and cfg["lora_alpha"] == 16
    targets = cfg["target_modules"]  # LLaMA-Factory lists the LLM's linear layers, never the frozen vision tower
    assert targets and all("language_model" in t and "visual" not in t for t in targets)
    assert {t.rsplit(".", 1)[-1] for t in targets} == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                       "up_proj", "down_proj"}
    # the recorded LLaMA-Factory config pins frames at 112x112
    import yaml

    args = yaml.safe_load((sft_out / "adapter.llamafactory_train.yaml").read_text())
    assert args["image_max_pixels"] == args["image_min_pixels"] == SIZE * SIZE
    assert args["template"] == "qwen2_vl" and args["finetuning_type"] == "lora" and args["bf16"] is False


def _state(model_dir: Path) -> dict:
    from safetensors.torch import load_file

    out = {}
    for f in sorted(model_dir.glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


def test_merged_model_is_full_hf_folder_with_lora_folded_in(sft_out, tiny_dir):
    merged = sft_out / "merged"
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja", MERGE_DONE):
        assert (merged / name).is_file(), name
    assert (merged / "processor_config.json").is_file() or (merged / "preprocessor_config.json").is_file()
    base, new = _state(tiny_dir), _state(merged)
    assert set(base) == set(new)  # no lora_A/lora_B left, same parameter names as the base
    q = [k for k in base if "layers.0.self_attn.q_proj.weight" in k and "visual" not in k]
    assert q and not torch.equal(base[q[0]], new[q[0]])  # LoRA delta merged into the LLM
    vis = [k for k in base if "visual" in k]
    assert vis and all(torch.equal(base[k], new[k]) for k in vis)  # vision tower frozen in SFT
    assert all(new[k].dtype == torch.float32 for k in new)  # --infer-dtype float32


def test_merged_equals_base_plus_adapter(sft_out, tiny_dir):
    """The merge is exact: merged logits == peft(base + adapter) logits on an SFT-style input."""
    from peft import PeftModel

    from veason_r1.models.policy import GenerationRequest, build_inputs, load_policy

    merged = load_policy(sft_out / "merged", device="cpu", dtype="float32")
    base = load_policy(tiny_dir, device="cpu", dtype="float32")
    peft_model = PeftModel.from_pretrained(base.model, str(sft_out / "adapter")).eval()
    rng = np.random.default_rng(0)
    req = GenerationRequest("the dog", [0, 4], [rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)] * 2)
    batch = build_inputs(merged.processor, [req], SIZE)
    with torch.no_grad():
        a = merged.model(**batch).logits
        b = peft_model(**batch).logits
        with peft_model.disable_adapter():
            c = peft_model(**batch).logits
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    assert (a - c).abs().max() > 1e-3  # and the adapter did change the model


def test_merged_model_loads_with_real_loader_and_generates(sft_out):
    from veason_r1.models.policy import GenerationRequest, HFEngine, SamplingConfig, load_policy

    policy = load_policy(sft_out / "merged", device="cpu", dtype="float32")
    rng = np.random.default_rng(1)
    req = GenerationRequest("the person in the red shirt", [1, 3, 5, 7],
                            [rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8) for _ in range(4)])
    out = HFEngine(policy, image_size=SIZE).generate([req], SamplingConfig(max_new_tokens=12))
    assert len(out) == 1 and len(out[0]) == 1 and isinstance(out[0][0], str) and out[0][0]


def test_merged_model_is_consumed_by_veason_r1_infer(sft_out, tmp_path):
    """`veason-r1 infer --model OUT/merged` runs end to end (random tiny SAM2, JPEG-folder video)."""
    from PIL import Image

    from veason_r1.cli import main

    video = tmp_path / "video"
    video.mkdir()
    for t in range(6):
        Image.fromarray(np.full((64, 96, 3), 40 * t, dtype=np.uint8)).save(video / f"{t:05d}.jpg")
    out = tmp_path / "infer"
    rc = main(["infer", "--video", str(video), "--query", "the dog", "--out", str(out), "--model",
               str(sft_out / "merged"), "--sam2", "tiny", "--device", "cpu", "--dtype", "float32",
               "--image-size", str(SIZE), "--num-frames", "4", "--max-new-tokens", "16", "--no-overlay",
               "--no-progress"])
    assert rc == 0
    assert len(list((out / "masks").glob("*.png"))) == 6
    assert json.loads((out / "result.json").read_text())["query"] == "the dog"


def test_rerun_skips_finished_stages(sft_out, tiny_dir, data_dir, capsys):
    from veason_r1.cli import main

    before = (sft_out / "merged" / MERGE_DONE).stat().st_mtime_ns
    rc = main(["sft", "--data", str(data_dir), "--model", str(tiny_dir), "--out", str(sft_out), *tiny_flags()])
    assert rc == 0
    text = capsys.readouterr().out
    assert "train: already done" in text and "merge: already done" in text
    assert (sft_out / "merged" / MERGE_DONE).stat().st_mtime_ns == before


def test_resumed_training_logs_each_step_once(tiny_dir, data_dir, tmp_path):
    """Issue 16: an interrupted then resumed SFT appended the steps after its checkpoint twice to trainer_log.jsonl."""
    from veason_r1.cli import main
    from veason_r1.sft.train import TRAINER_LOG, read_losses

    out = tmp_path / "run"
    flags = tiny_flags()
    flags[flags.index("--max-steps") + 1] = "4"
    flags[flags.index("--save-steps") + 1] = "2"
    argv = ["sft", "--data", str(data_dir), "--model", str(tiny_dir), "--out", str(out), "--no-merge", *flags]
    assert main(argv) == 0
    adapter = out / "adapter"
    uninterrupted = [json.loads(line)["current_steps"] for line in (adapter / TRAINER_LOG).read_text().splitlines()]
    assert sorted(set(uninterrupted)) == [1, 2, 3, 4]
    # as if killed after logging step 4 but before checkpoint-4 was saved: the run resumes from checkpoint-2
    import shutil

    shutil.rmtree(adapter / "checkpoint-4")
    (adapter / TRAIN_DONE).unlink()
    assert main(argv) == 0
    steps = [json.loads(line)["current_steps"] for line in (adapter / TRAINER_LOG).read_text().splitlines()]
    assert steps == uninterrupted  # steps 3 and 4 once each (the last line is the end-of-training summary)
    assert len(read_losses(adapter)) == 4


# ---------------------------------------------------------------------------------------------------------------------
# SFT inputs == RL / inference inputs


def test_sft_tokens_equal_policy_inputs(tiny_dir, data_dir, tmp_path, llamafactory_sft):
    """LLaMA-Factory's tokenized SFT sample == policy.build_inputs(prompt + response) + <|im_end|>\\n, and only the
    response (plus the end tokens) is supervised."""
    from veason_r1.models.policy import GenerationRequest, build_inputs, load_processor

    cfg = SFTConfig(model_name_or_path=str(tiny_dir), dataset_dir=str(data_dir), output_dir=str(tmp_path / "a"),
                    export_dir=None, image_size=SIZE, cutoff_len=1024, bf16=False, use_cpu=True,
                    preprocessing_num_workers=None, dataloader_num_workers=0, report_to="none")
    ds, _ = llamafactory_sft(cfg.to_llamafactory())
    processor = load_processor(tiny_dir)
    tok = processor.tokenizer
    end = [tok.convert_tokens_to_ids("<|im_end|>")] + tok("\n", add_special_tokens=False)["input_ids"]
    from PIL import Image

    exported = json.loads((data_dir / "veason_cot.json").read_text())
    assert len(ds) == len(SAMPLES) == len(exported)
    for i, (expr, frame_ids, keyframe, boxes, cot) in enumerate(SAMPLES):
        row = ds[i]
        images = [np.asarray(Image.open(data_dir / p).convert("RGB")) for p in exported[i]["images"]]
        response = exported[i]["messages"][2]["content"]
        scaled = [[round(v * SIZE / 560) for v in b] for b in boxes]  # the export rescales 560-space boxes
        assert response == format_response(cot, keyframe, scaled)
        ref = build_inputs(processor, [GenerationRequest(expr, frame_ids, images)], SIZE, responses=[response])
        ref_ids = ref["input_ids"][0].tolist()
        assert row["input_ids"] == ref_ids + end
        n_resp = int(ref["response_mask"][0].sum())
        labels = row["labels"]
        assert all(v == -100 for v in labels[: len(ref_ids) - n_resp])
        assert labels[len(ref_ids) - n_resp:] == ref_ids[-n_resp:] + end
        image_pad = tok.convert_tokens_to_ids("<|image_pad|>")
        assert row["input_ids"].count(image_pad) == len(frame_ids) * (SIZE // 28) ** 2


# ---------------------------------------------------------------------------------------------------------------------
# Config, YAML and flags


def test_shipped_3b_yaml_is_the_recipe_and_valid_for_llamafactory():
    from llamafactory.hparams.parser import _parse_train_args

    cfg = SFTConfig.from_yaml(ROOT / "training_scripts/sft_qwen2_5vl_3b_lora.yaml")
    default = SFTConfig()
    for f in dataclasses.fields(SFTConfig):
        if f.name not in PATH_FIELDS:
            assert getattr(cfg, f.name) == getattr(default, f.name), f.name
    assert cfg.image_size == 560 and cfg.template == "qwen2_vl"
    for name in ("sft_qwen2_5vl_3b_lora.yaml", "sft_qwen2_5vl_7b_lora.yaml"):
        c = SFTConfig.from_yaml(ROOT / "training_scripts" / name)
        args = c.for_device(has_cuda=False)[0].to_llamafactory()
        model_args, _data_args, training_args, finetuning_args, _ = _parse_train_args(args)  # unknown keys raise
        assert model_args.image_max_pixels == model_args.image_min_pixels == 560 * 560
        assert finetuning_args.lora_rank == c.lora_rank and training_args.learning_rate == c.learning_rate
    c7 = SFTConfig.from_yaml(ROOT / "training_scripts/sft_qwen2_5vl_7b_lora.yaml")
    assert "7B" in c7.model_name_or_path


def test_merge_yaml_is_valid_for_llamafactory_export():
    import yaml
    from llamafactory.hparams.parser import _parse_infer_args

    args = yaml.safe_load((ROOT / "training_scripts/sft_merge_3b.yaml").read_text())
    model_args, _data_args, finetuning_args, _ = _parse_infer_args(args)
    assert model_args.export_dir and finetuning_args.finetuning_type == "lora"
    assert args["template"] == "qwen2_vl" and args["image_max_pixels"] == 560 * 560
    assert args == SFTConfig.from_yaml(ROOT / "training_scripts/sft_qwen2_5vl_3b_lora.yaml").to_merge_args()


def test_yaml_round_trip_and_bad_keys(tmp_path):
    cfg = SFTConfig(image_size=112, lora_rank=4, max_samples=10, gradient_checkpointing=False)
    path = tmp_path / "c.yaml"
    path.write_text(cfg.to_yaml("# test"))
    assert SFTConfig.from_yaml(path) == cfg
    path.write_text("lora_rnak: 8\n")
    with pytest.raises(ValueError, match="lora_rnak"):
        SFTConfig.from_yaml(path)
    path.write_text("finetuning_type: full\n")
    with pytest.raises(ValueError, match="finetuning_type"):
        SFTConfig.from_yaml(path)
    path.write_text("image_max_pixels: 313600\nimage_min_pixels: 12544\n")
    with pytest.raises(ValueError, match="must be equal"):
        SFTConfig.from_yaml(path)
    path.write_text("lora_rank: eight\n")
    with pytest.raises(ValueError, match="lora_rank"):
        SFTConfig.from_yaml(path)
    with pytest.raises(ValueError, match="image_size"):
        SFTConfig(image_size=100)


def test_every_hyper_parameter_is_a_flag():
    parser = argparse.ArgumentParser()
    add_config_flags(parser)
    dests = {a.dest for a in parser._actions}
    for f in dataclasses.fields(SFTConfig):
        assert (f"cfg_{f.name}" in dests) == (f.name not in PATH_FIELDS), f.name
    args = parser.parse_args(["--lora-rank", "32", "--no-bf16", "--max-samples", "none", "--deepspeed", "ds.json",
                              "--no-freeze-vision-tower", "--learning-rate", "2e-5"])
    cfg = apply_flags(SFTConfig(max_samples=5), args)
    assert (cfg.lora_rank, cfg.bf16, cfg.max_samples, cfg.deepspeed) == (32, False, None, "ds.json")
    assert cfg.freeze_vision_tower is False and cfg.learning_rate == 2e-5
    assert cfg.lora_alpha == SFTConfig().lora_alpha  # untouched flags keep the config's value
    with pytest.raises(SystemExit):
        parser.parse_args(["--lora-rank", "x"])


def test_for_device_turns_off_bf16_on_cpu():
    cfg, notes = SFTConfig().for_device(has_cuda=False)
    assert cfg.bf16 is False and cfg.use_cpu is True and notes
    same, none = SFTConfig().for_device(has_cuda=True)
    assert same.bf16 is True and none == []


# ---------------------------------------------------------------------------------------------------------------------
# Data checks


def test_check_dataset_accepts_export_and_rejects_bad_rows(tmp_path):
    info = write_sharegpt(tmp_path / "ok")
    summary = check_dataset(info.parent, "veason_cot", SIZE)
    assert (summary.num_samples, summary.num_images) == (2, 8)
    with pytest.raises(ValueError, match=r"00000_00000\.jpg is 112x112, expected 560x560"):
        check_dataset(info.parent, "veason_cot", 560)
    with pytest.raises(ValueError, match="no dataset named 'other'"):
        check_dataset(info.parent, "other", SIZE)
    rows = json.loads((info.parent / "veason_cot.json").read_text())
    rows[1]["images"] = rows[1]["images"][:-1]
    (info.parent / "veason_cot.json").write_text(json.dumps(rows))
    with pytest.raises(ValueError, match=r"row 1: 4 <image> placeholders for 3 images"):
        check_dataset(info.parent, "veason_cot", SIZE)
    with pytest.raises(FileNotFoundError, match="dataset_info.json"):
        check_dataset(tmp_path / "missing", "veason_cot", SIZE)


def test_cli_reports_bad_data_clearly(tmp_path, tiny_dir, capsys):
    from veason_r1.cli import main

    info = write_sharegpt(tmp_path / "d", size=56)
    rc = main(["sft", "--data", str(info.parent), "--model", str(tiny_dir), "--out", str(tmp_path / "o"),
               "--image-size", str(SIZE)])
    assert rc == 2
    assert "expected 112x112" in capsys.readouterr().err
    assert not (tmp_path / "o" / "adapter").exists()


# ---------------------------------------------------------------------------------------------------------------------
# GPU benchmark script: CPU smoke at tiny size


def test_bench_sft_tiny_smoke(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_sft", ROOT / "bench/bench_sft.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "bench.json"
    assert bench.main(["--device", "cpu", "--tiny", "--steps", "2", "--warmup", "0", "--batch-size", "1",
                       "--cot-words", "20", "--workdir", str(tmp_path / "w"), "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["engine"] == "llamafactory" and res["timed_steps"] == 2 and res["samples_per_s"] > 0
    assert res["image_size"] == SIZE and res["frames"] == 8
    assert res["mean_tokens_per_sample"] > 8 * (SIZE // 28) ** 2  # 8 frames of 16 visual tokens + text
    assert res["llamafactory_train_results"]["train_loss"] > 0
    assert res["recipe"]["lora_rank"] == SFTConfig().lora_rank
