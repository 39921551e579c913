"""Benchmark prediction in two cached stages, sharded across processes, resumable, merged exactly.

Stage 1 (policy): one JSON line per expression (response, reasoning, keyframe, boxes) appended to
`PRED/.stage1/stage1.shard<i>of<n>.jsonl`. Stage 2 (SAM2): the masks of every frame written to
`PRED/<video>/<exp_id>/<frame>.png` (0/255, original size), the layout the evaluators read (ReVOS, MeViS, ViCaS;
ReasonVOS in `PredictConfig.pred_layout`, by default VideoLISA's `PRED/<source>_<video>_<obj_id>/<exp_id>/`).
Re-running skips what is finished, so a killed run resumes where it stopped.

Why results do not depend on sharding or on being killed: expressions are cut, in the dataset's order, into fixed
blocks of `batch_size`; a block is the unit of both generation and sharding (shard i owns blocks b with
b % n == i). A block is always generated as one batch with the same members, so its greedy outputs are the same in
a single run, in any shard, and after a resume (a partly written block is regenerated whole and only its missing
records are appended). Stage-2 masks go to a private temporary folder that is renamed into place when complete, so
an expression folder either holds every frame or does not exist. `merge_predictions` then joins the shards'
records in dataset order into `PRED/predictions.jsonl` and checks every mask folder.

Untrusted datasets and resumes (docs/inference.md, "What predict refuses"): before anything is written, every
output path built from a video name, expression id or frame name must stay inside PRED (`veason_r1.paths`), and the
run's fingerprint (`PredictConfig.fingerprint`: data, both models and checkpoints by whole-content hash, sizes,
frames, decoding) must equal the one cached in `.stage1/config.json`, else the run stops naming the differing keys.
Each mask folder holds a manifest (`MASK_MANIFEST`: byte size and CRC-32 of every PNG, and the digest of the
settings that made it): it is the folder's ownership marker (a folder without one is never deleted or replaced)
and the completeness test (a corrupt or missing PNG, or masks made with other settings, are not complete).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from veason_r1.benchmarks import BENCHMARKS, DEFAULT_SPLITS, benchmark  # noqa: F401 - BENCHMARKS re-exported
from veason_r1.errors import BadInput
from veason_r1.inference.pipeline import (
    Answer,
    InferenceConfig,
    boxes_to_original,
    generate_responses,
    make_answer,
    mask_png_bytes,
    policy_images,
    sample_frame_ids,
)
from veason_r1.io_utils import append_jsonl, atomic_write_json, atomic_write_text, file_identity, read_jsonl
from veason_r1.models.config import PolicyConfig, PropagatorConfig
from veason_r1.models.families import DEFAULT_FAMILY, family_of_folder
from veason_r1.models.registry import resolve_policy
from veason_r1.paths import mark_owned, name_problem, output_dir, remove_owned_tree, safe_join

STAGE1_DIR = ".stage1"
PARTIAL_DIR = ".partial"
MERGED_FILE = "predictions.jsonl"
MASK_MANIFEST = ".veason-r1-masks.json"  # inside every mask folder: ownership marker and completeness record
STAGES = ("stage1", "stage2")


# ----------------------------------------------------------------------------------------------------------------
# Datasets


def open_benchmark(name: str, root: str | os.PathLike, split: str | None = None,
                   vicas_version: str = "v0.1") -> Any:
    """The reader of a benchmark. Every reader offers `.expressions` (with `.key`, `.video`, `.exp_id`, `.text`),
    `.frames(video)` (a FrameSource), `.size(video)`, and for the oracles `.gt_areas(expr)`, `.object_masks(expr, t)`.

    ViCaS: the LG-VIS referrals of a split (`veason_r1.inference.vicas_source`), one expression per referral.
    """
    name = benchmark(name).name
    split = split or DEFAULT_SPLITS[name]
    if name == "revos":
        from veason_r1.data.revos import ReVOSDataset

        return ReVOSDataset(root, split=split)
    if name == "mevis":
        from veason_r1.data.revos import MeViSDataset

        return MeViSDataset(root, split=split)
    if name == "reasonvos":
        from veason_r1.data.reasonvos import ReasonVOSDataset

        return ReasonVOSDataset(root)
    if name == "vicas":
        from veason_r1.inference.vicas_source import ViCaSPredictionSet

        return ViCaSPredictionSet(root, split=split, version=vicas_version)
    raise AssertionError(f"no reader for benchmark {name!r}")  # every row of benchmarks.TABLE has one


# ----------------------------------------------------------------------------------------------------------------
# Shards and blocks


@dataclass(frozen=True)
class Shard:
    """Shard `index` of `count` (0-based): it owns the blocks b with b % count == index."""

    index: int = 0
    count: int = 1

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise BadInput("--shard", f"{self.index}/{self.count}: need 0 <= i < n")

    @classmethod
    def parse(cls, text: str | None) -> Shard:
        """'i/n' (0-based i) -> Shard; None or '' -> the whole set."""
        if not text:
            return cls()
        try:
            i, n = (int(x) for x in str(text).split("/"))
        except ValueError:
            raise BadInput("--shard", f"{text!r}: expected i/n, e.g. 0/4") from None
        return cls(i, n)

    def owns(self, block: int) -> bool:
        return block % self.count == self.index

    @property
    def tag(self) -> str:
        return f"shard{self.index}of{self.count}"


def make_blocks(expressions: Sequence[Any], batch_size: int) -> list[list[Any]]:
    """Expressions in dataset order cut into consecutive blocks of `batch_size` (the last may be shorter)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    keys = [e.key for e in expressions]
    if len(set(keys)) != len(keys):
        dup = next(k for k in keys if keys.count(k) > 1)
        raise BadInput("dataset", f"duplicate expression key {dup!r}: two expressions would share one mask folder")
    return [list(expressions[i : i + batch_size]) for i in range(0, len(expressions), batch_size)]


def owned_blocks(blocks: Sequence[list[Any]], shard: Shard) -> Iterator[tuple[int, list[Any]]]:
    for b, block in enumerate(blocks):
        if shard.owns(b):
            yield b, block


# ----------------------------------------------------------------------------------------------------------------
# Configuration and cache


@dataclass(frozen=True)
class PredictConfig:
    """Everything that changes the results; its fingerprint is stored in the cache so a resume cannot mix settings."""

    benchmark: str
    split: str | None = None
    # the policy (None model only with both oracles: no policy needed) and the mask propagator (models/config.py)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    # name None: not named here (a caller that passes its own loaded propagator to `run_stage2`, e.g. the demo)
    propagator: PropagatorConfig = field(default_factory=lambda: PropagatorConfig(name=None))
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    batch_size: int = 16
    oracle_keyframe: bool = False
    oracle_boxes: bool = False
    limit: int | None = None  # first N expressions in dataset order (smoke runs)
    data: str | None = None  # the benchmark root (--data)
    pred_layout: str = "current"  # ReasonVOS mask folders (veason_r1.data.reasonvos.PRED_LAYOUTS); stage 2 only

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise BadInput("--batch-size", f"must be >= 1, got {self.batch_size}")
        if self.limit is not None and self.limit < 1:
            raise BadInput("--limit", f"must be a positive number of expressions, got {self.limit}")

    @property
    def needs_policy(self) -> bool:
        return not (self.oracle_keyframe and self.oracle_boxes)

    def fingerprint(self) -> dict[str, dict]:
        """The settings that change outputs, by stage: `common` (what is predicted and how it is batched), `stage1`
        (policy, its files by whole-content hash, frames, sizes, decoding, oracles), `stage2` (SAM2 config and
        checkpoint by content hash)."""
        common = {"benchmark": self.benchmark, "split": self.split, "limit": self.limit,
                  "batch_size": self.batch_size, "data": _resolved(self.data)}
        stage1 = {"oracle_keyframe": self.oracle_keyframe, "oracle_boxes": self.oracle_boxes,
                  **{f"inference.{k}": v for k, v in asdict(self.inference).items()}}
        if self.needs_policy:
            p = self.policy
            stage1.update({"policy.model": _resolved(p.model), "policy.files": model_files_identity(p.model),
                           "policy.engine": p.engine, "policy.dtype": p.dtype})
        prop = self.propagator
        yaml = prop.name if prop.name and Path(prop.name).is_file() else None
        stage2 = {"propagator.name": prop.name, "propagator.yaml": file_identity(yaml) if yaml else None,
                  "propagator.checkpoint": _resolved(prop.checkpoint),
                  "propagator.checkpoint_files": _checkpoint_identity(prop.checkpoint),
                  "pred_layout": self.pred_layout}  # where stage 2 writes (ReasonVOS), not what stage 1 generates
        return {"common": common, "stage1": stage1, "stage2": stage2}


def _resolved(path: str | None) -> str | None:
    return str(Path(path).resolve()) if path else None


def _checkpoint_identity(path: str | None) -> dict | None:
    """Content identity of a propagator checkpoint: the `.pt` file, or every file of a tracker's weights folder."""
    if not path:
        return None
    p = Path(path)
    if p.is_dir():
        return {f.name: file_identity(f) for f in sorted(p.iterdir()) if f.is_file()}
    return {p.name: file_identity(p)}


MODEL_FILE_PATTERNS = ("config.json", "generation_config.json", "*.safetensors", "pytorch_model*.bin",
                       "tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt",
                       "preprocessor_config.json", "processor_config.json", "chat_template*")


def model_files_identity(model_dir: str | None) -> dict[str, dict] | None:
    """Content identity (whole-file sha256) of every file of a policy folder that can change its outputs."""
    if not model_dir or not Path(model_dir).is_dir():
        return None
    root = Path(model_dir)
    files = sorted({p for pattern in MODEL_FILE_PATTERNS for p in root.glob(pattern) if p.is_file()})
    return {p.name: file_identity(p) for p in files}


def stage1_dir(pred: str | os.PathLike) -> Path:
    """PRED/.stage1, refused when it leads outside PRED (a symbolic link): `veason_r1.paths.output_dir`."""
    return output_dir(pred, STAGE1_DIR, key="stage-1 cache folder")


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 80 else text[:77] + "..."


def check_cache_config(pred: str | os.PathLike, config: PredictConfig, stages: Sequence[str] = ("stage1",)) -> dict:
    """Compare the run's fingerprint with the cache's for `common` and the given stages; record the sections the
    cache does not have yet. A difference is refused naming every differing key. Returns the cache's fingerprint."""
    path = stage1_dir(pred) / "config.json"
    want = config.fingerprint()
    have: dict = {}
    if path.exists():
        try:
            have = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise BadInput(path, f"not valid JSON ({e})", hint="use another --out folder") from None
        if not isinstance(have, dict) or not set(have) <= {"common", *STAGES} or "common" not in have:
            raise BadInput(path, "the cache was written by an older veason-r1 (no per-stage fingerprint)",
                           hint=f"use another --out folder, or delete {stage1_dir(pred)} and the mask folders")
    sections = ["common", *stages]
    diffs = []
    for section in sections:
        old = have.get(section)
        if old is None:
            continue
        new = want[section]
        for k in sorted(set(old) | set(new)):
            if old.get(k) != new.get(k):
                diffs.append(f"{section}.{k}: cached {_short(old.get(k))}, now {_short(new.get(k))}")
    if diffs:
        raise BadInput(path, "the cached predictions were made with different settings: " + "; ".join(diffs),
                       hint="rerun with the same flags, or use another --out folder (a resume never mixes settings)")
    missing = [s for s in sections if s not in have]
    if missing:
        have = {**have, **{s: want[s] for s in missing}}
        atomic_write_text(path, json.dumps(have, indent=2, sort_keys=True))
    return have


def masks_digest(cached: dict) -> str | None:
    """The digest of the settings that make the masks (common + stage 1 + stage 2), or None before stage 2."""
    if "stage2" not in cached:
        return None
    parts = {k: cached.get(k) for k in ("common", *STAGES)}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def check_output_paths(dataset: Any, pred: str | os.PathLike, expressions: Sequence[Any],
                       config: PredictConfig | None = None) -> None:
    """Every mask folder and PNG name of `expressions` lies inside PRED, and every video has frames; raises (before
    any write) naming the key."""
    seen_videos: set[str] = set()
    for e in expressions:
        expression_dir(pred, *(prediction_parts(dataset, e, config) if config else (e.video, e.exp_id)))
        if e.video in seen_videos:
            continue
        seen_videos.add(e.video)
        names = dataset.frames(e.video).names
        if not len(names):  # nothing to sample, segment or score
            raise BadInput(getattr(dataset, "meta_file", None) or pred, f"video {e.video!r} has no frames",
                           hint="add its frames or remove the video (`veason-r1 doctor` lists such videos)")
        for t, name in enumerate(names):
            problem = name_problem(name)
            if problem:
                raise BadInput(pred, f"video {e.video!r}, frame {t}: unsafe frame name: {problem}")


def check_queries(expressions: Sequence[Any], where: Any) -> None:
    """An empty query gives the policy nothing to segment: refused (docs/inference.md), naming the expressions."""
    empty = [e.key for e in expressions if not str(e.text).strip()]
    if empty:
        raise BadInput(where, f"{len(empty)} expression(s) with an empty query: {', '.join(map(repr, empty[:5]))}"
                              + (" ..." if len(empty) > 5 else ""),
                       hint="fill in or remove those expressions (`veason-r1 doctor` lists them)")


def prepare_run(dataset: Any, pred: str | os.PathLike, config: PredictConfig, stages: Sequence[str]) -> dict:
    """All checks before the first expensive or writing step: output paths, queries, the cache fingerprint."""
    expressions = select_expressions(dataset, config)
    check_output_paths(dataset, pred, expressions, config)
    if "stage1" in stages and config.needs_policy:
        check_queries(expressions, getattr(dataset, "meta_file", getattr(dataset, "root", "dataset")))
    return check_cache_config(pred, config, [s for s in stages if s in STAGES])


def load_stage1(pred: str | os.PathLike) -> dict[str, dict]:
    """Every stage-1 record of every shard file, by expression key. Conflicting duplicates are an error."""
    records: dict[str, dict] = {}
    for path in sorted(stage1_dir(pred).glob("stage1.*.jsonl")):
        for rec in read_jsonl(path):
            key = rec["key"]
            if key in records and records[key] != rec:
                raise BadInput(path, f"expression {key!r} has a different record in another shard file",
                               hint="the folder mixes two runs; use another --out folder")
            records[key] = rec
    return records


# ----------------------------------------------------------------------------------------------------------------
# Stage 1: policy


def apply_oracles(answer: Answer, dataset: Any, expression: Any, config: PredictConfig) -> Answer:
    """Replace the keyframe and/or boxes with ground truth (see `veason_r1.inference.oracle`)."""
    from veason_r1.inference.oracle import oracle_boxes, oracle_keyframe

    size = config.inference.image_size
    if config.oracle_keyframe:
        key = oracle_keyframe(dataset, expression, answer.frame_ids)
        if key != answer.keyframe:
            answer.notes.append(f"oracle keyframe {key} replaced {answer.keyframe}")
        answer.keyframe = key
    if config.oracle_boxes:
        height, width = dataset.size(expression.video)
        answer.boxes_policy = oracle_boxes(dataset, expression, answer.keyframe, size)
        answer.boxes = boxes_to_original(answer.boxes_policy, height, width, size)
        answer.notes.append("oracle boxes")
    return answer


def stage1_record(expression: Any, block: int, answer: Answer) -> dict:
    return {"key": expression.key, "video": expression.video, "exp_id": expression.exp_id,
            "expression": expression.text, "block": block, **answer.to_dict()}


def run_stage1(
    dataset: Any,
    engine: Any,
    pred: str | os.PathLike,
    config: PredictConfig,
    shard: Shard = Shard(),
    progress: bool = True,
) -> dict:
    """Generate answers for the shard's unfinished blocks; returns counts and timings of this call."""
    from veason_r1.models.policy import GenerationRequest

    prepare_run(dataset, pred, config, ["stage1"])
    expressions = select_expressions(dataset, config)
    blocks = make_blocks(expressions, config.batch_size)
    out_file = stage1_dir(pred) / f"stage1.{shard.tag}.jsonl"
    drop_torn_tail(out_file)  # a killed writer's half line must not end up in the middle of the file
    done = load_stage1(pred)
    todo = [(b, blk) for b, blk in owned_blocks(blocks, shard) if any(e.key not in done for e in blk)]
    stats = {"blocks": len(todo), "written": 0, "skipped": 0, "generate_s": 0.0, "frames_s": 0.0}
    stats["skipped"] = sum(len(blk) for _, blk in owned_blocks(blocks, shard)) - sum(
        sum(e.key not in done for e in blk) for _, blk in todo)
    size = config.inference.image_size
    # the policy folder's family reads its answers (its box convention); no folder (oracles) -> the paper's
    row = (family_of_folder(resolve_policy(config.policy.model)) if config.policy.model else None) or DEFAULT_FAMILY
    for b, block in _bar(todo, progress, "stage 1 (policy)"):
        t0 = time.perf_counter()
        frame_ids, requests, sizes = [], [], []
        for e in block:
            source = dataset.frames(e.video)
            ids = sample_frame_ids(len(source), config.inference.num_frames)
            frame_ids.append(ids)
            sizes.append(dataset.size(e.video))
            if config.needs_policy:
                requests.append(GenerationRequest(e.text, ids, policy_images(source, ids, size)))
        stats["frames_s"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        # the whole block, even when part of it is done: identical batch members -> identical greedy outputs
        responses = generate_responses(engine, requests, config.inference) if config.needs_policy else [""] * len(block)
        stats["generate_s"] += time.perf_counter() - t0
        for e, ids, (h, w), response in zip(block, frame_ids, sizes, responses):
            if e.key in done:
                continue
            answer = make_answer(response, ids, h, w, size, row)
            if not config.needs_policy:
                answer.notes = []  # no policy ran: the parser's "no JSON" notes would only be noise
            answer = apply_oracles(answer, dataset, e, config)
            append_jsonl(out_file, stage1_record(e, b, answer))
            stats["written"] += 1
    return stats


def drop_torn_tail(path: Path) -> None:
    """Truncate a JSONL file after its last complete line (a record cut short by a kill is regenerated)."""
    if not path.is_file():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with open(path, "r+b") as f:
            f.truncate(data.rfind(b"\n") + 1)
            f.flush()
            os.fsync(f.fileno())


def select_expressions(dataset: Any, config: PredictConfig) -> list[Any]:
    expressions = list(dataset.expressions)
    return expressions[: config.limit] if config.limit is not None else expressions


# ----------------------------------------------------------------------------------------------------------------
# Stage 2: SAM2 -> PNGs


def prediction_parts(dataset: Any, expression: Any, config: PredictConfig) -> tuple[str, str]:
    """(folder, subfolder) of an expression's masks under PRED: <video>/<exp_id>, or the ReasonVOS layout chosen
    in config.pred_layout (the reader's `prediction_folder`)."""
    folder = getattr(dataset, "prediction_folder", None)
    return folder(expression, config.pred_layout) if folder else (expression.video, expression.exp_id)


def expression_dir(pred: str | os.PathLike, video: str, exp_id: str) -> Path:
    """PRED/<video>/<exp_id>, refused (BadInput naming the key) when a name would leave PRED."""
    return safe_join(pred, video, str(exp_id), key=f"expression {video}/{exp_id}", write=True)


def read_manifest(folder: Path) -> dict | None:
    try:
        manifest = json.loads((folder / MASK_MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) and isinstance(manifest.get("frames"), dict) else None


def is_complete(pred: str | os.PathLike, video: str, exp_id: str, frame_names: Sequence[str],
                digest: str | None = None) -> bool:
    """The folder holds our manifest listing exactly `frame_names`, every PNG has the size and CRC-32 the manifest
    recorded (a truncated or overwritten PNG is not complete), and, when `digest` is given, the masks were made with
    those settings."""
    folder = expression_dir(pred, video, exp_id)
    manifest = read_manifest(folder) if folder.is_dir() else None
    if manifest is None or set(manifest["frames"]) != set(frame_names):
        return False
    if digest is not None and manifest.get("settings") != digest:
        return False
    for name in frame_names:
        try:
            data = (folder / f"{name}.png").read_bytes()
        except OSError:
            return False
        if [len(data), zlib.crc32(data)] != manifest["frames"][name]:
            return False
    return True


_PNG_POOL = None


def _png_pool():
    """One process-wide thread pool for mask PNG writing (created on first use)."""
    global _PNG_POOL
    if _PNG_POOL is None:
        from concurrent.futures import ThreadPoolExecutor

        _PNG_POOL = ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1), thread_name_prefix="png")
    return _PNG_POOL


def write_expression_masks(pred: str | os.PathLike, video: str, exp_id: str, frame_names: Sequence[str],
                           masks: np.ndarray, partial_root: Path, digest: str | None = None) -> Path:
    """Write all PNGs of one expression and its manifest into a private folder, then rename it into place (all or
    nothing). An existing folder there is replaced only if it is ours (holds a manifest); otherwise refused."""
    if len(masks) != len(frame_names):
        raise ValueError(f"{video}/{exp_id}: {len(masks)} masks for {len(frame_names)} frames")
    final = expression_dir(pred, video, exp_id)
    tmp = partial_root / hashlib.sha1(f"{video}\0{exp_id}".encode()).hexdigest()[:20]
    if tmp.exists():  # a hashed name inside this run's private partial root (created and marked by run_stage2)
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)

    def write(item: tuple[str, np.ndarray]) -> tuple[str, list[int]]:
        data = mask_png_bytes(item[1])
        (tmp / f"{item[0]}.png").write_bytes(data)
        return item[0], [len(data), zlib.crc32(data)]

    # PNG encoding (zlib) and file writes release the GIL: a few threads overlap them (100 PNGs per expression)
    frames = dict(_png_pool().map(write, zip(frame_names, masks)))
    atomic_write_json(tmp / MASK_MANIFEST, {"video": video, "exp_id": str(exp_id), "settings": digest,
                                            "frames": frames})
    if final.exists() or final.is_symlink():  # a stale or incomplete folder of an earlier run: ours only
        remove_owned_tree(final, pred, marker=MASK_MANIFEST)
    final.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, final)
    return final



MASK_BUDGET_BYTES = 2**31  # masks of one SAM2 group held in host memory at once
FEATURE_CACHE_FRAMES = 128  # SAM2 image features kept per video (about 8-17 MB per frame with Hiera-L)


def video_groups(dataset: Any, blocks: Sequence[list[Any]], shard: Shard,
                 budget: int = MASK_BUDGET_BYTES) -> list[list[Any]]:
    """The shard's SAM2 work units: consecutive expressions of one video within one block (split so their masks
    fit in `budget` bytes). Units have fixed members, so a resumed or sharded run batches SAM2 the same way."""
    groups: list[list[Any]] = []
    for _, block in owned_blocks(blocks, shard):
        run: list[Any] = []
        for e in block + [None]:
            if run and (e is None or e.video != run[0].video):
                h, w = dataset.size(run[0].video)
                per = max(1, len(dataset.frames(run[0].video)) * h * w)
                size = max(1, budget // per)
                groups.extend(run[i : i + size] for i in range(0, len(run), size))
                run = []
            if e is not None:
                run.append(e)
    return groups


def propagate_group(propagator: Any, source: Any, records: Sequence[dict]) -> list[np.ndarray]:
    """Union masks (L, H, W) for several expressions of one video: one SAM2 pass over the video for all their
    objects (`Propagator.propagate_many`); empty masks for expressions without boxes."""
    height, width = source.size
    with_boxes = [i for i, r in enumerate(records) if r["boxes"]]
    out = [np.zeros((len(source), height, width), dtype=bool) for _ in records]
    if not with_boxes:
        return out
    # keep every frame's features (up to FEATURE_CACHE_FRAMES): groups with several keyframes walk the video
    # once per keyframe and should not re-encode it
    encoded = propagator.encode(source, cache_frames=min(len(source), FEATURE_CACHE_FRAMES))
    prompts = [(int(records[i]["keyframe"]), np.asarray(records[i]["boxes"], np.float32).reshape(-1, 4))
               for i in with_boxes]
    for i, masks in zip(with_boxes, propagator.propagate_many(encoded, prompts)):
        out[i] = np.asarray(masks).astype(bool, copy=False)
    for i, m in enumerate(out):
        if m.shape != (len(source), height, width):
            raise ValueError(f"SAM2 returned masks of shape {m.shape}, expected {(len(source), height, width)}")
    return out


def run_stage2(
    dataset: Any,
    propagator: Any,
    pred: str | os.PathLike,
    config: PredictConfig,
    shard: Shard = Shard(),
    progress: bool = True,
) -> dict:
    """SAM2 for the shard's expressions whose stage-1 record exists and whose mask folder is not complete.

    Work goes in `video_groups`: every object of a group is tracked in one pass over the video (frames decoded and
    encoded once). A group runs only when all its members have stage-1 records, and always whole (finished members
    are recomputed, not rewritten), so a resumed run batches exactly as an uninterrupted one.
    """
    cached = prepare_run(dataset, pred, config, ["stage2"])
    digest = masks_digest(cached)
    records = load_stage1(pred)
    blocks = make_blocks(select_expressions(dataset, config), config.batch_size)
    partial_root = output_dir(pred, PARTIAL_DIR, shard.tag, key="temporary mask folder")
    remove_owned_tree(partial_root, pred)  # leftovers of this shard's killed run (refused if not ours)
    stats = {"written": 0, "skipped": 0, "missing_stage1": 0, "sam2_s": 0.0, "write_s": 0.0, "write_wait_s": 0.0}
    owner: dict[tuple[str, str], str] = {}  # a folder shared by several expressions (ReasonVOS obj_id layout): first
    for e in select_expressions(dataset, config):
        owner.setdefault(prediction_parts(dataset, e, config), e.key)
    todo = []
    for group in video_groups(dataset, blocks, shard):
        missing = [e for e in group if e.key not in records]
        if missing:
            stats["missing_stage1"] += len(missing)
            continue
        names = dataset.frames(group[0].video).names
        pending = [e for e in group if owner[prediction_parts(dataset, e, config)] == e.key
                   and not is_complete(pred, *prediction_parts(dataset, e, config), names, digest)]
        stats["skipped"] += len(group) - len(pending)
        if pending:
            todo.append((group, pending))

    def write_group(group, pending, names, all_masks) -> None:
        t0 = time.perf_counter()
        for e, masks in zip(group, all_masks):
            if e in pending:
                write_expression_masks(pred, *prediction_parts(dataset, e, config), names, masks, partial_root, digest)
                stats["written"] += 1
        stats["write_s"] += time.perf_counter() - t0

    # A group's PNGs are written by a background thread while SAM2 tracks the next group (at most one group's masks
    # wait in memory). A failure in either surfaces here; a write in flight always finishes first.
    from concurrent.futures import ThreadPoolExecutor

    if todo:
        mark_owned(partial_root, "predict")
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="stage2-writer") as writer:
        in_flight = None
        for group, pending in _bar(todo, progress, "stage 2 (SAM2)"):
            t0 = time.perf_counter()
            source = dataset.frames(group[0].video)
            all_masks = propagate_group(propagator, source, [records[e.key] for e in group])
            stats["sam2_s"] += time.perf_counter() - t0
            t0 = time.perf_counter()
            if in_flight is not None:
                in_flight.result()
            stats["write_wait_s"] += time.perf_counter() - t0
            in_flight = writer.submit(write_group, group, pending, list(source.names), all_masks)
        t0 = time.perf_counter()
        if in_flight is not None:
            in_flight.result()
        stats["write_wait_s"] += time.perf_counter() - t0
    remove_owned_tree(partial_root, pred)
    return stats


# ----------------------------------------------------------------------------------------------------------------
# Merge


@dataclass
class MergeReport:
    expressions: int
    stage1_records: int
    complete_masks: int
    missing_stage1: list[str]
    missing_masks: list[str]

    @property
    def ok(self) -> bool:
        return not self.missing_stage1 and not self.missing_masks


def merge_predictions(dataset: Any, pred: str | os.PathLike, config: PredictConfig) -> MergeReport:
    """Join every shard's stage-1 records in dataset order into PRED/predictions.jsonl; check the mask folders.

    A mask folder counts as complete only if its manifest matches every PNG and records the settings cached in
    `.stage1/config.json` (folders made with another SAM2 checkpoint, or corrupt ones, are reported missing)."""
    cached = prepare_run(dataset, pred, config, [])
    digest = masks_digest(cached)
    records = load_stage1(pred)
    expressions = select_expressions(dataset, config)
    lines, missing_stage1, missing_masks, complete = [], [], [], 0
    for e in expressions:
        rec = records.get(e.key)
        if rec is None:
            missing_stage1.append(e.key)
            continue
        lines.append(json.dumps(rec))
        if digest is not None and is_complete(pred, *prediction_parts(dataset, e, config),
                                              dataset.frames(e.video).names, digest):
            complete += 1
        else:
            missing_masks.append(e.key)
    atomic_write_text(Path(pred) / MERGED_FILE, "".join(line + "\n" for line in lines))
    report = MergeReport(len(expressions), len(lines), complete, missing_stage1, missing_masks)
    atomic_write_json(Path(pred) / "merge_report.json", asdict(report), indent=2)
    return report


def _bar(items: list, enabled: bool, desc: str):
    if not enabled:
        return items
    from tqdm import tqdm

    return tqdm(items, desc=desc, unit="group" if "2" in desc else "batch")
