"""SFT dataset export for LLaMA-Factory: rows, images, boxes, dataset_info.json, and LLaMA-Factory's own loader."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from veason_r1.data.masks import box_to_square
from veason_r1.prompting import build_prompt, format_response
from veason_r1.sft.dataset import dataset_info_entry, export_llamafactory_dataset, load_cot_records


def make_record(tmp: Path, video="cat/v1", frame_ids=(0, 3, 6), keyframe=3, h=40, w=80,
                keyframe_boxes=([10.0, 5.0, 29.0, 24.0], None)) -> dict:
    d = tmp / "frames" / video
    d.mkdir(parents=True, exist_ok=True)
    paths = []
    for t in frame_ids:
        p = d / f"{t:05d}.jpg"
        Image.fromarray(np.full((h, w, 3), 20 * t, np.uint8)).save(p)
        paths.append(str(p))
    return {"key": f"{video}/0", "video": video, "exp": "The cat on the left.", "exp_id": "0", "CoT": "Step 1: x.",
            "frame_ids": list(frame_ids), "sampled_video_frames": paths, "keyframe": keyframe,
            "keyframe_boxes": [list(b) if b else None for b in keyframe_boxes], "height": h, "width": w,
            "solution": ('<answer>{"keyframe_timestamp": 3, "bbox_2d_list": [[70, 70, 203, 343], [0, 0, 0, 0]]}'
                         "</answer>")}


def test_rows_images_and_boxes(tmp_path):
    rec = make_record(tmp_path)
    info = export_llamafactory_dataset([rec], tmp_path / "sft", name="mini", image_size=112)
    assert info == tmp_path / "sft" / "dataset_info.json"
    assert json.loads(info.read_text()) == {"mini": dataset_info_entry("mini")}
    entry = dataset_info_entry("mini")
    assert entry["formatting"] == "sharegpt" and entry["columns"] == {"messages": "messages", "images": "images"}
    assert entry["tags"] == {"role_tag": "role", "content_tag": "content", "user_tag": "user",
                             "assistant_tag": "assistant", "system_tag": "system"}
    rows = json.loads((tmp_path / "sft" / "mini.json").read_text())
    assert len(rows) == 1
    msgs = rows[0]["messages"]
    assert [m["role"] for m in msgs] == ["system", "user", "assistant"]
    assert msgs[0]["content"] == "You are a helpful assistant."
    assert msgs[1]["content"] == build_prompt("The cat on the left.", [0, 3, 6])
    box = box_to_square([10.0, 5.0, 29.0, 24.0], 40, 80, 112)
    assert msgs[2]["content"] == format_response("Step 1: x.", 3, [box, [0, 0, 0, 0]])
    assert len(rows[0]["images"]) == 3
    for rel, t in zip(rows[0]["images"], [0, 3, 6]):
        assert not Path(rel).is_absolute()
        with Image.open(tmp_path / "sft" / rel) as im:
            assert im.size == (112, 112)
            assert abs(int(np.asarray(im)[50, 50, 0]) - 20 * t) <= 3


def test_fallback_to_solution_boxes_and_info_merge(tmp_path):
    rec = make_record(tmp_path)
    rec.pop("keyframe_boxes")
    rec.pop("keyframe")
    out = tmp_path / "sft"
    out.mkdir()
    (out / "dataset_info.json").write_text(json.dumps({"other": {"file_name": "o.json"}}))
    export_llamafactory_dataset([rec], out, name="mini", image_size=280)
    info = json.loads((out / "dataset_info.json").read_text())
    assert set(info) == {"other", "mini"}
    answer = json.loads(out.joinpath("mini.json").read_text())[0]["messages"][2]["content"]
    assert answer.endswith('{"keyframe_timestamp": 3, "bbox_2d_list": [[35, 35, 102, 172], [0, 0, 0, 0]]}</answer>')


def test_bad_records_are_named(tmp_path):
    rec = make_record(tmp_path, keyframe=4)
    with pytest.raises(ValueError, match=r"'cat/v1/0'.*keyframe 4"):
        export_llamafactory_dataset([rec], tmp_path / "sft")
    rec = make_record(tmp_path)
    rec["sampled_video_frames"][1] = str(tmp_path / "nope.jpg")
    with pytest.raises(FileNotFoundError, match="nope.jpg"):
        export_llamafactory_dataset([rec], tmp_path / "sft2")
    rec = make_record(tmp_path)
    rec.pop("CoT")
    with pytest.raises(ValueError, match="'CoT'"):
        export_llamafactory_dataset([rec], tmp_path / "sft3")


@pytest.fixture(scope="module")
def tiny_qwen(tmp_path_factory) -> Path:
    from veason_r1.models.tiny import make_tiny_qwen

    return make_tiny_qwen(tmp_path_factory.mktemp("tiny_qwen"), seed=0)


def test_llamafactory_loader_reads_the_export(synth_root, tiny_qwen, tmp_path, llamafactory_sft):
    """LLaMA-Factory's own get_dataset (qwen2_vl template, tiny offline tokenizer/processor) tokenizes every row
    with one block of image tokens per frame, and trains on exactly the assistant turn."""
    from veason_r1.cli import main

    out = tmp_path / "cot"
    assert main(["cot", "--root", str(synth_root), "--meta", str(synth_root / "meta_expressions_train_.json"),
                 "--out-dir", str(out), "--teacher",
                 "synthetic", "--limit", "4", "--no-progress", "--image-size", "112"]) == 0
    records = load_cot_records(out / "cot_records.jsonl")
    assert len(records) == 4

    train, tok = llamafactory_sft(dict(
        stage="sft", do_train=True, model_name_or_path=str(tiny_qwen), dataset="veason_cot",
        dataset_dir=str(out / "sft"), template="qwen2_vl", cutoff_len=8192, output_dir=str(tmp_path / "lf"),
        finetuning_type="lora", overwrite_cache=True, report_to="none", cache_dir=str(tmp_path / "hf_cache")))
    assert len(train) == 4
    pad = tok.convert_tokens_to_ids("<|image_pad|>")
    rows = json.loads((out / "sft" / "veason_cot.json").read_text())
    by_answer = {r["messages"][2]["content"]: r for r in rows}
    for ex in train:
        labels = tok.decode([i for i in ex["labels"] if i != -100])
        answer = labels.split("<|im_end|>")[0]
        row = by_answer[answer]  # the trained span is exactly one row's assistant turn
        n_frames = len(row["images"])
        assert sum(i == pad for i in ex["input_ids"]) == n_frames * (112 // 28) ** 2
        text = tok.decode(ex["input_ids"])
        assert text.count("<|vision_start|>") == n_frames
        assert row["messages"][1]["content"].split("\n", 1)[1] in text  # the question text, unchanged
        keyframe = json.loads(answer.split("<answer>")[1][: -len("</answer>")])["keyframe_timestamp"]
        assert f"({keyframe}s)<|vision_start|>" in text
