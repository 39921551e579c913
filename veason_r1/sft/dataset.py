"""CoT records -> an SFT dataset LLaMA-Factory loads (sharegpt formatting, the policy family's template).

Each row is the RL/eval prompt layout (docs/method.md §5 decision): system message, the user turn
`build_prompt(expression, frame_ids)` with one `<image>` placeholder per frame, and the assistant turn
`format_response(CoT, keyframe, boxes)` with boxes in the image_size x image_size space; `images` lists the sampled
frames resized to image_size x image_size (bilinear, aspect not kept), saved once per (video, frame) under
`out_dir/images/` with paths relative to `out_dir` (LLaMA-Factory resolves them against its `media_dir`, which
defaults to the dataset folder). `dataset_info.json` in `out_dir` gets (or updates) the entry `name`.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from veason_r1.config import IMAGE_SIZE, PromptConfig
from veason_r1.io_utils import atomic_write_bytes, atomic_write_json
from veason_r1.models.families import DEFAULT_FAMILY
from veason_r1.models.families import family as policy_family
from veason_r1.prompting import IMAGE_PLACEHOLDER, answer_payload, build_prompt, format_response

DATASET_INFO = "dataset_info.json"


def dataset_info_entry(name: str) -> dict[str, Any]:
    """The dataset_info.json entry for a sharegpt file with `messages` and `images` columns."""
    return {
        "file_name": f"{name}.json",
        "formatting": "sharegpt",
        "columns": {"messages": "messages", "images": "images"},
        "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant",
                 "system_tag": "system"},
    }


def record_boxes(record: Mapping[str, Any], image_size: int) -> list[list[float]]:
    """Keyframe answer boxes in image_size space.

    From `keyframe_boxes` (original pixels) with height/width when the record has them, so any size is exact;
    otherwise the 560-space boxes of `solution`, rescaled.
    """
    from veason_r1.data.masks import boxes_to_square

    if record.get("keyframe_boxes") is not None and record.get("height") and record.get("width"):
        return boxes_to_square(record["keyframe_boxes"], int(record["height"]), int(record["width"]), image_size)
    payload = answer_payload(str(record.get("solution", "")))
    if not isinstance(payload, dict) or not isinstance(payload.get("bbox_2d_list"), list):
        raise ValueError(f"record {record.get('key', record.get('video'))!r}: no boxes in 'solution'")
    s = image_size / IMAGE_SIZE
    return [[float(v) * s for v in b] for b in payload["bbox_2d_list"]]


def record_keyframe(record: Mapping[str, Any]) -> int:
    if record.get("keyframe") is not None:
        return int(record["keyframe"])
    payload = answer_payload(str(record.get("solution", "")))
    if not isinstance(payload, dict) or "keyframe_timestamp" not in payload:
        raise ValueError(f"record {record.get('key', record.get('video'))!r}: no keyframe in 'solution'")
    return int(payload["keyframe_timestamp"])


def _save_frame(src: Path, dst: Path, image_size: int) -> None:
    from PIL import Image

    if dst.exists():
        return
    try:
        with Image.open(src) as im:
            small = im.convert("RGB").resize((image_size, image_size), Image.BILINEAR)
    except FileNotFoundError:
        raise FileNotFoundError(f"SFT export: missing frame image {src}") from None
    buf = io.BytesIO()
    small.save(buf, format="JPEG", quality=95)
    atomic_write_bytes(dst, buf.getvalue())


def export_llamafactory_dataset(records: Iterable[Mapping[str, Any]], out_dir: str | os.PathLike,
                                name: str = "veason_cot", image_size: int = IMAGE_SIZE,
                                prompt_config: PromptConfig = PromptConfig(), progress: bool = False,
                                family: str = DEFAULT_FAMILY.name) -> Path:
    """Write `out_dir/<name>.json`, the resized frames and the dataset_info.json entry; return dataset_info's path.

    `family`: the policy family trained on it (models/families.py): the prompt's text and the targets' box
    convention follow its row (train with its `sft_template`).

    Frames already exported (same video and frame) are reused, so a rerun after adding records is cheap.
    """
    from tqdm import tqdm

    out_dir = Path(out_dir)
    row = policy_family(family)
    row.check_image_size(image_size)
    rows = []
    for record in tqdm(records, desc="sft export", unit="row", disable=not progress):
        where = record.get("key", record.get("video"))
        for field_name in ("exp", "CoT", "frame_ids", "sampled_video_frames"):
            if field_name not in record:
                raise ValueError(f"SFT export: record {where!r} has no {field_name!r}")
        frame_ids = [int(t) for t in record["frame_ids"]]
        paths = [Path(p) for p in record["sampled_video_frames"]]
        if len(paths) != len(frame_ids):
            raise ValueError(f"SFT export: record {where!r}: {len(paths)} frame paths for {len(frame_ids)} frame ids")
        keyframe = record_keyframe(record)
        if keyframe not in frame_ids:
            raise ValueError(f"SFT export: record {where!r}: keyframe {keyframe} is not one of the frames {frame_ids}")
        images = []
        for t, src in zip(frame_ids, paths):
            rel = Path("images") / str(record["video"]) / f"{t:05d}_{src.stem}.jpg"
            _save_frame(src, out_dir / rel, image_size)
            images.append(rel.as_posix())
        user = build_prompt(str(record["exp"]), frame_ids, prompt_config, row)
        assert user.count(IMAGE_PLACEHOLDER) == len(images)
        rows.append({
            "messages": [
                {"role": "system", "content": prompt_config.system},
                {"role": "user", "content": user},
                {"role": "assistant",
                 "content": format_response(str(record["CoT"]), keyframe, record_boxes(record, image_size), row,
                                            image_size)},
            ],
            "images": images,
        })
    atomic_write_bytes(out_dir / f"{name}.json", json.dumps(rows, indent=2, ensure_ascii=False).encode("utf-8"))
    info_path = out_dir / DATASET_INFO
    info: dict[str, Any] = {}
    if info_path.exists():
        with open(info_path) as f:
            info = json.load(f)
        if not isinstance(info, dict):
            raise ValueError(f"{info_path}: expected a JSON object")
    info[name] = dataset_info_entry(name)
    atomic_write_json(info_path, info, indent=2)
    return info_path


def load_cot_records(path: str | os.PathLike) -> list[dict]:
    """CoT records from the final `.json` list or the `.jsonl` stream."""
    from veason_r1.io_utils import read_jsonl

    path = Path(path)
    if path.suffix == ".jsonl":
        return list(read_jsonl(path))
    with open(path) as f:
        data = json.load(f)
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of CoT records")
    return data
