"""GRPO samples from a ReVOS-format split (docs/method.md §4, §5, §7).

Every access draws a fresh keyframe (uniform among the top-5 GT-area frames) and the N=6 grid anchored on it, as
the paper's dataset does, then decodes only those frames, resizes them to the policy square and brings the GT
masks and boxes into that square for the reward.

verl's stock `RLHFDataset` serves fixed parquet rows, which cannot redraw the keyframe per access, so verl gets
`VeasonRLDataset` (a `RLHFDataset` subclass selected with `data.custom_cls`): its parquet rows only reference the
expression (`extra_info`: root, split, video, exp_id, draw settings) and every `__getitem__` builds the frames,
the prompt with `<image>` placeholders and `reward_model.ground_truth` (via `veason_r1.reward.verl_hook`).
Validation rows carry `redraw=False`: their draw is seeded by the row index so every validation sees the same frames.
`export_static_parquet` writes fixed rows with embedded images for verl's stock dataset class instead.
"""

from __future__ import annotations

import io
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from veason_r1.config import FRAMES, IMAGE_SIZE, PromptConfig
from veason_r1.data.masks import gt_boxes_in_square, resize_mask, union_masks
from veason_r1.data.revos import Expression, ReVOSDataset
from veason_r1.data.sampling import training_frames
from veason_r1.data.video import resize_frame
from veason_r1.models.families import DEFAULT_FAMILY
from veason_r1.models.families import family as policy_family
from veason_r1.prompting import build_prompt

DATA_SOURCE = "revos"
ABILITY = "video_reasoning_segmentation"


@dataclass
class RLSample:
    """One drawn training sample: what the policy sees and what the reward needs (all in policy space)."""

    key: str
    expression: str
    frame_ids: list[int]
    keyframe: int
    frames: np.ndarray  # (K, S, S, 3) uint8, S = image_size
    gt_masks: np.ndarray  # (K, S, S) bool, GT union per sampled frame
    gt_boxes: dict[str, list[list[float]]]  # str(position 0..K-1) -> boxes in S space ([[0,0,0,0]] when empty),
    # written in the policy family's box convention (a relative-grid family: on its grid)
    prompt: str  # user turn with one <image> per frame
    family: str = DEFAULT_FAMILY.name

    def images(self):
        from PIL import Image

        return [Image.fromarray(f) for f in self.frames]

    def reward_sample(self):
        from veason_r1.reward import RewardSample

        return RewardSample(frame_ids=list(self.frame_ids), gt_boxes=self.gt_boxes, gt_masks=self.gt_masks,
                            frames=self.frames, family=self.family)

    def messages(self, system: str = PromptConfig().system) -> list[dict]:
        """Chat rows as verl's parquet `prompt` column holds them (content strings with <image>)."""
        return [{"role": "system", "content": system}, {"role": "user", "content": self.prompt}]


class RLSampleBuilder:
    """Draws RL samples from one ReVOS-format split; keeps per-expression GT areas (computed from RLEs once)."""

    def __init__(self, dataset: ReVOSDataset, num_frames: int = FRAMES.rl_frames, image_size: int = IMAGE_SIZE,
                 keyframe_top_k: int = FRAMES.keyframe_top_k, prompt_config: PromptConfig = PromptConfig(),
                 family: str = DEFAULT_FAMILY.name):
        self.family = policy_family(family)  # the prompt's and the GT boxes' convention
        self.family.check_image_size(image_size)
        self.dataset = dataset
        self.num_frames = num_frames
        self.image_size = image_size
        self.keyframe_top_k = keyframe_top_k
        self.prompt_config = prompt_config
        self._areas: dict[str, list[int]] = {}

    def areas(self, expr: Expression) -> list[int]:
        if expr.key not in self._areas:
            self._areas[expr.key] = self.dataset.gt_areas(expr)
        return self._areas[expr.key]

    def build(self, expr: Expression, rng: random.Random) -> RLSample:
        frame_ids, keyframe = training_frames(self.areas(expr), self.num_frames, rng, self.keyframe_top_k)
        return self.build_frames(expr, frame_ids, keyframe)

    def build_frames(self, expr: Expression, frame_ids: Sequence[int], keyframe: int | None = None) -> RLSample:
        size = self.image_size
        h, w = self.dataset.size(expr.video)
        source = self.dataset.frames(expr.video)
        frames, masks, boxes = [], [], {}
        for pos, t in enumerate(frame_ids):  # decode only the sampled frames
            frames.append(resize_frame(source.get(int(t)), size))
            objects = self.dataset.object_masks(expr, int(t))
            masks.append(resize_mask(union_masks(objects, (h, w)), size, size))
            boxes[str(pos)] = self.family.to_answer_boxes(gt_boxes_in_square(objects, h, w, size), size)
        return RLSample(
            key=expr.key,
            expression=expr.text,
            frame_ids=[int(t) for t in frame_ids],
            keyframe=int(frame_ids[0] if keyframe is None else keyframe),
            frames=np.stack(frames).astype(np.uint8),
            gt_masks=np.stack(masks).astype(bool),
            gt_boxes=boxes,
            prompt=build_prompt(expr.text, frame_ids, self.prompt_config, self.family),
            family=self.family.name,
        )


def read_pool(path: str | Path) -> list[tuple[str, str]]:
    """(video, exp_id) pairs from a pool: the data-sampling output (`meta_expressions_train_select.json`, the
    meta_expressions format) or a JSONL (records with `video` and `exp_id`, or `key` = 'video/exp_id')."""
    from veason_r1.io_utils import read_jsonl

    path = Path(path)
    if path.suffix == ".json":
        from veason_r1.data.revos import load_json, parse_meta

        videos = parse_meta(load_json(path), path)
        pairs = [(v.name, e) for v in videos.values() for e in v.expressions]
        if not pairs:
            raise ValueError(f"{path}: empty pool")
        return pairs
    out = []
    for i, rec in enumerate(read_jsonl(path)):
        if "video" in rec and "exp_id" in rec:
            out.append((str(rec["video"]), str(rec["exp_id"])))
        elif "key" in rec:
            video, _, exp_id = str(rec["key"]).rpartition("/")
            out.append((video, exp_id))
        else:
            raise ValueError(f"{path}: record {i} has neither video+exp_id nor key")
    if not out:
        raise ValueError(f"{path}: empty pool")
    return out


def select_expressions(dataset: ReVOSDataset, pool: str | Path | None = None, skip_no_target: bool = True,
                       max_samples: int = -1, seed: int = 0, builder: RLSampleBuilder | None = None) -> list[Expression]:
    """The expressions RL trains or validates on: the pool (or the whole split), without no-target expressions
    (type_id 2) nor expressions whose GT is empty in every frame; `max_samples` > 0 keeps a seeded subset."""
    if pool is not None:
        index = {(e.video, e.exp_id): e for e in dataset.expressions}
        exprs = []
        for video, exp_id in read_pool(pool):
            if (video, exp_id) not in index:
                raise KeyError(f"{pool}: expression {video}/{exp_id} not in {dataset.meta_file}")
            exprs.append(index[(video, exp_id)])
    else:
        exprs = list(dataset.expressions)
    builder = builder or RLSampleBuilder(dataset)
    kept = []
    for e in exprs:
        if skip_no_target and (e.type_id == 2 or not e.anno_ids):
            continue
        if skip_no_target and max(builder.areas(e), default=0) <= 0:
            continue
        kept.append(e)
    if max_samples > 0 and len(kept) > max_samples:
        rng = random.Random(seed)
        kept = sorted(rng.sample(kept, max_samples), key=lambda e: e.key)
    if not kept:
        raise ValueError(f"no usable expressions in {dataset.meta_file} (pool={pool})")
    return kept


@dataclass
class Pools:
    """What a GRPO run trains and validates on (`training_pools`)."""

    train: list[Expression]
    val: list[Expression]
    val_source: str  # "heldout" (videos of the training split kept out of training), "<split>", or "none"
    heldout_videos: list[str]
    removed_from_train: int  # pool expressions dropped because their video was held out


def heldout_videos(dataset: ReVOSDataset, candidates: Sequence[Expression], pool: Sequence[Expression], size: int,
                   seed: int) -> list[str]:
    """Videos whose eligible expressions (`candidates`) reach `size`, drawn seeded: videos with no expression in
    the training `pool` first (holding them out costs no training data), then pool videos."""
    by_video: dict[str, int] = {}
    for e in candidates:
        by_video[e.video] = by_video.get(e.video, 0) + 1
    in_pool = {e.video for e in pool}
    rng = random.Random(f"heldout:{seed}")
    outside = sorted(v for v in by_video if v not in in_pool)
    inside = sorted(v for v in by_video if v in in_pool)
    rng.shuffle(outside)
    rng.shuffle(inside)
    chosen, count = [], 0
    for v in outside + inside:
        if count >= size:
            break
        chosen.append(v)
        count += by_video[v]
    return sorted(chosen)


def training_pools(dataset: ReVOSDataset, pool: str | Path | None, *, val_size: int, seed: int,
                   skip_no_target: bool = True, val_dataset: ReVOSDataset | None = None,
                   builder: RLSampleBuilder | None = None) -> Pools:
    """The training expressions and the validation subset of one run (docs/rl.md, "Validation").

    `val_dataset` None: validation is a held-out slice of the training split, video-disjoint from training (the
    held-out videos' expressions are removed from the pool) and seeded, so the best checkpoint is never picked on
    the split that is reported. With `val_dataset` (opt-in `data.val_split`): a seeded subset of that split.
    `val_size` 0: no validation."""
    builder = builder or RLSampleBuilder(dataset)
    train = select_expressions(dataset, pool, skip_no_target, builder=builder)
    if val_size <= 0:
        return Pools(train, [], "none", [], 0)
    if val_dataset is not None:
        vb = builder if val_dataset is dataset else RLSampleBuilder(val_dataset, builder.num_frames,
                                                                     builder.image_size, builder.keyframe_top_k)
        val = select_expressions(val_dataset, None, True, val_size, seed, builder=vb)
        return Pools(train, val, val_dataset.split, [], 0)
    candidates = select_expressions(dataset, None, True, builder=builder)
    held = set(heldout_videos(dataset, candidates, train, val_size, seed))
    kept = [e for e in train if e.video not in held]
    if not kept:
        raise ValueError(f"{dataset.meta_file}: holding out {val_size} validation expressions leaves no training "
                         f"expression (the pool spans {len({e.video for e in train})} videos); lower "
                         "data.val_max_samples or give data.val_split")
    val = [e for e in candidates if e.video in held]
    if len(val) > val_size:
        val = sorted(random.Random(f"heldout-expr:{seed}").sample(val, val_size), key=lambda e: e.key)
    return Pools(kept, val, "heldout", sorted(held), len(train) - len(kept))


class RLPool:
    """A list of expressions served as RL samples; `draw(i, seed)` gives a fresh keyframe draw per call."""

    def __init__(self, builder: RLSampleBuilder, expressions: Sequence[Expression]):
        self.builder = builder
        self.expressions = list(expressions)

    def __len__(self) -> int:
        return len(self.expressions)

    def draw(self, index: int, seed: int) -> RLSample:
        """Sample `index` with the keyframe drawn from `seed` (the local trainer passes (run seed, step))."""
        return self.builder.build(self.expressions[index], random.Random(f"{seed}:{index}"))


# ---------------------------------------------------------------------------------------------------------------
# verl


def reference_rows(expressions: Sequence[Expression], root: str | Path, split: str, *, redraw: bool,
                   num_frames: int, image_size: int, keyframe_top_k: int = FRAMES.keyframe_top_k,
                   seed: int = 0, mask_cache: str | Path | None = None, family: str = DEFAULT_FAMILY.name
                   ) -> list[dict]:
    """Parquet rows for `VeasonRLDataset`: verl's columns, the expression's reference in `extra_info`.
    `mask_cache`: the folder of the shared mask_dict index the workers open (`veason_r1.data.mask_index`)."""
    rows = []
    for i, e in enumerate(expressions):
        rows.append({
            "data_source": DATA_SOURCE,
            "prompt": [{"role": "user", "content": e.text}],  # replaced per access by the drawn prompt
            "ability": ABILITY,
            "reward_model": {"style": "rule", "ground_truth": ""},  # filled per access
            "extra_info": {
                "index": i, "root": str(Path(root).resolve()), "split": split, "video": e.video,
                "exp_id": e.exp_id, "redraw": bool(redraw), "num_frames": int(num_frames),
                "image_size": int(image_size), "keyframe_top_k": int(keyframe_top_k), "seed": int(seed),
                "mask_cache": str(Path(mask_cache).resolve()) if mask_cache else "",
                **({} if family == DEFAULT_FAMILY.name else {"family": family}),
            },
        })
    return rows


def write_parquet(rows: list[dict], path: str | Path) -> Path:
    """Atomic parquet write (pyarrow)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from veason_r1.io_utils import atomic_write_bytes

    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buf)
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


def ground_truth_for(sample: RLSample):
    """What `reward_model.ground_truth` holds for the verl reward hook (the reward engineer's encoding)."""
    from veason_r1.reward.verl_hook import make_ground_truth

    return make_ground_truth(sample.frame_ids, sample.gt_boxes, sample.gt_masks, sample.frames, family=sample.family)


def export_static_parquet(builder: RLSampleBuilder, expressions: Sequence[Expression], path: str | Path,
                          seed: int = 0) -> Path:
    """Fixed rows with embedded PNG frames for verl's stock RLHFDataset (one draw per row, no redraw)."""
    rows = []
    for i, e in enumerate(expressions):
        s = builder.build(e, random.Random(f"{seed}:{i}"))
        images = []
        for im in s.images():
            b = io.BytesIO()
            im.save(b, format="PNG")
            images.append({"bytes": b.getvalue()})
        gt = ground_truth_for(s)
        rows.append({
            "data_source": DATA_SOURCE,
            "prompt": s.messages(),
            "images": images,
            "ability": ABILITY,
            "reward_model": {"style": "rule", "ground_truth": gt if isinstance(gt, str) else json.dumps(gt)},
            "extra_info": {"index": i, "video": e.video, "exp_id": e.exp_id, "frame_ids": s.frame_ids},
        })
    return write_parquet(rows, path)


def _verl_base():
    try:
        from verl.utils.dataset.rl_dataset import RLHFDataset
    except ImportError:  # verl is optional outside RL; the class then only works standalone
        from torch.utils.data import Dataset as RLHFDataset
    return RLHFDataset


class VeasonRLDataset(_verl_base()):
    """verl `data.custom_cls`: reference rows in, a freshly drawn multimodal row out on every access."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._builders: dict[tuple, RLSampleBuilder] = {}
        self._datasets: dict[tuple[str, str], ReVOSDataset] = {}
        self._access: dict[int, int] = {}

    def maybe_filter_out_long_prompts(self, dataframe=None):
        """Prompts are K frames (K <= 6, 400 tokens each at 560) plus ~150 text tokens: always < 7100."""
        return dataframe

    def _builder(self, info: dict) -> RLSampleBuilder:
        dkey = (info["root"], info["split"])
        if dkey not in self._datasets:  # per worker; the masks are one shared memory-mapped index when given
            self._datasets[dkey] = ReVOSDataset(info["root"], info["split"], load_foreground=False,
                                                mask_cache=info.get("mask_cache") or None)
        family = info.get("family") or DEFAULT_FAMILY.name
        bkey = (*dkey, int(info["num_frames"]), int(info["image_size"]), int(info["keyframe_top_k"]), family)
        if bkey not in self._builders:
            self._builders[bkey] = RLSampleBuilder(self._datasets[dkey], int(info["num_frames"]),
                                                   int(info["image_size"]), int(info["keyframe_top_k"]),
                                                   family=family)
        return self._builders[bkey]

    def draw(self, item: int) -> tuple[dict, RLSample]:
        row = dict(self.dataframe[item])
        info = dict(row["extra_info"])
        builder = self._builder(info)
        expr = builder.dataset.videos[info["video"]].expressions[info["exp_id"]]
        if info.get("redraw", True):
            count = self._access.get(item, 0)
            self._access[item] = count + 1
            rng = random.Random(f"{info['seed']}:{item}:{count}:{random.getrandbits(32)}")
        else:
            rng = random.Random(f"{info['seed']}:{item}")
        return row, builder.build(expr, rng)

    def __getitem__(self, item):
        row, sample = self.draw(item)
        row["prompt"] = sample.messages()
        row[self.image_key] = sample.images()
        row["reward_model"] = {"style": "rule", "ground_truth": ground_truth_for(sample)}
        row["extra_info"] = {**row["extra_info"], "frame_ids": sample.frame_ids, "keyframe": sample.keyframe}
        # what RLHFDataset.__getitem__ does after reading its row
        row["raw_prompt"] = self._build_messages(row, key=self.prompt_key)
        row.pop(self.image_key, None)
        import torch

        row["dummy_tensor"] = torch.tensor([0], dtype=torch.uint8)
        row["index"] = row["extra_info"].get("index", item)
        row["tools_kwargs"] = {}
        row["interaction_kwargs"] = {}
        return row
