"""Benchmark evaluators: ReVOS, MeViS (valid_u), ReasonVOS. One expression = one task, scored frame by frame
(memory: one frame of GT and prediction at a time), in parallel worker processes with a progress bar.

Predictions: `PRED/<video>/<exp_id>/<frame>.png` (nested video names allowed) for ReVOS / MeViS; ReasonVOS in one of
`veason_r1.data.reasonvos.PRED_LAYOUTS` (default: VideoLISA's current `PRED/<source>_<vid>_<obj_id>/<exp_id>/`).
PNGs are read as the reference scripts read them (OpenCV grey levels, `veason_r1.data.mask_png`; never resized). A
prediction whose size differs from the GT is an error naming the file. An expression with any frame PNG missing is
"missing": scored 0 on every metric (`missing="zero"`, ReVOS/MeViS reference) or left out (`"skip"`, ReasonVOS
reference); the count is always reported.

ReVOS A and R: `r_mode="literal"` (default) scores them on VISA's GT, the uint8 sum of the expression's objects
(overlaps hold 2), exactly as its script does; `"union"` on the boolean union. `A_scale_free` / `R_scale_free` are
always the clean variants (union GT, binarised prediction).
"""

from __future__ import annotations

import csv
import io
import multiprocessing as mp
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from veason_r1.benchmarks import DEFAULT_MISSING, DEFAULT_SPLITS  # noqa: F401 - DEFAULT_MISSING re-exported
from veason_r1.eval.metrics import SCORE_KEYS, FrameScore, aggregate_frames, mean, score_masks
from veason_r1.eval.packed import MaskBits, from_bits, mask_from_png, mask_from_rles, pack_mask, words

MISSING_MODES = ("zero", "skip")
R_MODES = ("literal", "union")
METRIC_KEYS = SCORE_KEYS


@dataclass(frozen=True)
class EvalConfig:
    benchmark: str = "revos"
    split: str | None = None
    missing: str = "zero"
    workers: int = 1
    progress: bool = True
    pred_layout: str = "current"  # ReasonVOS: see veason_r1.data.reasonvos.PRED_LAYOUTS
    r_mode: str = "literal"  # ReVOS A/R: "literal" (VISA's summed uint8 GT) or "union" (boolean union GT)

    def __post_init__(self):
        from veason_r1.data.reasonvos import PRED_LAYOUTS

        if self.missing not in MISSING_MODES:
            raise ValueError(f"missing must be one of {MISSING_MODES}, got {self.missing!r}")
        if self.pred_layout not in PRED_LAYOUTS:
            raise ValueError(f"pred_layout must be one of {tuple(PRED_LAYOUTS)}, got {self.pred_layout!r}")
        if self.r_mode not in R_MODES:
            raise ValueError(f"r_mode must be one of {R_MODES}, got {self.r_mode!r}")


@dataclass
class ExpressionResult:
    """Per-expression means (fractions) or None for every metric when missing."""

    video: str
    exp_id: str
    text: str
    type_id: int | None
    num_frames: int
    missing_frames: int = 0
    scores: dict[str, float] = field(default_factory=dict)

    @property
    def missing(self) -> bool:
        return self.missing_frames > 0


# ---------------------------------------------------------------------------------------------------------------
# Reading predictions and GT


def read_prediction(path: Path, out: np.ndarray | None = None) -> MaskBits:
    """A prediction PNG read as the reference reads it, packed; errors name the file. `out`: see mask_from_png."""
    return mask_from_png(path, "prediction", out)


def _check_size(pred: MaskBits, shape: tuple[int, int], path: Path) -> None:
    if pred.shape != tuple(shape):
        raise ValueError(f"{path}: prediction is {pred.shape[0]}x{pred.shape[1]} (HxW) but the ground truth is "
                         f"{shape[0]}x{shape[1]}; predictions must be at the original frame size")


def revos_gt(ds, e, t: int, shape: tuple[int, int], literal: bool) -> MaskBits:
    """GT of a ReVOS/MeViS expression in frame t from mask_dict.json (literal: VISA's uint8 sum)."""
    rles = []
    for a in e.anno_ids:
        try:
            per_frame = ds.mask_dict[str(a)]
        except KeyError:
            raise KeyError(f"{ds.mask_dict_file}: unknown anno_id {a!r}") from None
        rles.append(per_frame[t] if t < len(per_frame) else None)
    try:
        return mask_from_rles(rles, shape, literal=literal)
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{ds.mask_dict_file}: anno_id {list(e.anno_ids)} frame {t}: {err}") from None


def reasonvos_gt(ds, e, t: int, shape: tuple[int, int]) -> MaskBits:
    """GT of a ReasonVOS expression in frame t: its GT folders' PNGs read as the reference reads them."""
    from veason_r1.eval import kernels

    found = []
    for a in e.anno_ids:
        path = ds.gt_png(a, t, e.video)
        if path.is_file():
            m = mask_from_png(path, "GT mask")
            if m.shape != tuple(shape):
                raise ValueError(f"{path}: GT mask is {m.shape[0]}x{m.shape[1]}, frames are {shape[0]}x{shape[1]}")
            found.append(m)
    if len(found) == 1:
        return found[0]
    union = np.zeros((shape[0], words(shape[1])), np.uint64)
    for m in found:
        kernels.or_into(union, m.bits)
    return from_bits(union, shape[1])


# ---------------------------------------------------------------------------------------------------------------
# Tasks: what one worker needs to score one expression


@dataclass(frozen=True)
class Task:
    index: int
    expression: Any  # veason_r1.data.revos.Expression
    pred_dir: Path
    frame_ids: tuple[int, ...]  # indices into the video's frames that are scored
    frame_names: tuple[str, ...]


@dataclass(frozen=True)
class Scoring:
    """How a benchmark's tasks are scored: which GT reader, whether A/R are computed, VISA's literal GT."""

    gt: str  # "revos" (mask_dict RLEs) or "reasonvos" (GT PNG folders)
    revos_terms: bool = False
    literal: bool = True


def _revos_foreground_area(ds, video: str, t: int) -> int:
    from veason_r1.data.masks import rle_area

    rles = ds.foreground.get(video, {}).get("masks_rle")
    if rles is None:
        raise KeyError(f"mask_dict_foreground.json: no entry for video {video!r}")
    return rle_area(rles[t] if t < len(rles) else None)


def score_task(ds, task: Task, scoring: Scoring) -> ExpressionResult:
    """Score one expression; frames are read one at a time."""
    e = task.expression
    if not task.frame_names:
        raise ValueError(f"{e.key}: no frame to score (no GT frames listed for this expression)")
    paths = [task.pred_dir / f"{name}.png" for name in task.frame_names]
    present = [p.is_file() for p in paths]
    res = ExpressionResult(e.video, e.exp_id, e.text, e.type_id, len(paths), missing_frames=present.count(False))
    if res.missing:
        return res
    shape = tuple(ds.size(e.video))
    frames: list[FrameScore] = []
    buffer = np.empty(shape, np.uint8)  # each frame's prediction pixels, scored before the next one is read
    for t, path in zip(task.frame_ids, paths):
        if scoring.gt == "reasonvos":
            gt = reasonvos_gt(ds, e, t, shape)
        else:
            gt = revos_gt(ds, e, t, shape, scoring.literal)
        pred = read_prediction(path, buffer)
        _check_size(pred, shape, path)
        fg = _revos_foreground_area(ds, e.video, t) if scoring.revos_terms else None
        frames.append(score_masks(gt, pred, fg, with_accuracy=scoring.revos_terms))
    res.scores = aggregate_frames(frames)
    return res


def warm_up() -> None:
    """Compile (or load from numba's cache) every kernel once, before worker processes fork."""
    h, w = 4, 70
    a = np.zeros((h, w), np.uint8)
    a[1:3, 2:5] = 255
    b = a.copy()
    b[0, 60] = 7
    score_masks(pack_mask(a), pack_mask(b), 10, with_accuracy=True)
    mask_from_rles([{"size": [h, w], "counts": [5, 3, 272]}, {"size": [h, w], "counts": [6, 2, 272]}], (h, w))
    from veason_r1.data.mask_png import decode_mask_png

    buf = io.BytesIO()
    from PIL import Image

    Image.fromarray(a).save(buf, "PNG")
    decode_mask_png(buf.getvalue())


# ---------------------------------------------------------------------------------------------------------------
# Parallel runner (fork: workers share the parsed dataset copy-on-write; spawn: each worker re-opens it)

_WORKER: dict[str, Any] = {}


def _init_worker(open_dataset: Callable[[], Any], scoring: Scoring) -> None:
    if "ds" not in _WORKER:
        _WORKER["ds"] = open_dataset()
    _WORKER["scoring"] = scoring


def _run_one(task: Task) -> tuple[int, ExpressionResult]:
    return task.index, score_task(_WORKER["ds"], task, _WORKER["scoring"])


def run_tasks(ds, open_dataset: Callable[[], Any], tasks: Sequence[Task], scoring: Scoring,
              workers: int = 1, progress: bool = True, desc: str = "eval") -> list[ExpressionResult]:
    from tqdm import tqdm

    warm_up()
    results: list[ExpressionResult | None] = [None] * len(tasks)
    bar = tqdm(total=len(tasks), desc=desc, unit="expr", disable=not progress, dynamic_ncols=True)
    try:
        if workers <= 1 or len(tasks) <= 1:
            for task in tasks:
                results[task.index] = score_task(ds, task, scoring)
                bar.update(1)
        else:
            methods = mp.get_all_start_methods()
            if "fork" in methods:
                ctx = mp.get_context("fork")
                _WORKER["ds"] = ds  # inherited by the forked workers
            else:  # pragma: no cover - macOS/Windows
                ctx = mp.get_context("spawn")
            try:
                with ctx.Pool(workers, initializer=_init_worker, initargs=(open_dataset, scoring)) as pool:
                    for idx, res in pool.imap_unordered(_run_one, tasks, chunksize=1):
                        results[idx] = res
                        bar.update(1)
            finally:
                _WORKER.clear()
    finally:
        bar.close()
    return [r for r in results if r is not None]


# ---------------------------------------------------------------------------------------------------------------
# Summaries


def summarize(results: Sequence[ExpressionResult], keys: Sequence[str], missing: str) -> dict[str, float | None]:
    """Mean over expressions (x100, unrounded) of each key; missing expressions count 0 ("zero") or not at all."""
    out: dict[str, float | None] = {}
    for k in keys:
        vals = []
        for r in results:
            if r.missing:
                if missing == "zero":
                    vals.append(0.0)
            else:
                vals.append(r.scores[k])
        m = mean(vals)
        out[k] = None if np.isnan(m) else 100 * m
    if "J" in out and "F" in out:
        out["JF"] = None if out["J"] is None or out["F"] is None else (out["J"] + out["F"]) / 2
    return out


def counted(results: Sequence[ExpressionResult], missing: str) -> int:
    return sum(1 for r in results if not (r.missing and missing == "skip"))


def per_expression_csv(results: Sequence[ExpressionResult], keys: Sequence[str], missing: str) -> str:
    """One row per expression: ids, type, frames, status and the metrics in percent (blank where not scored)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["video", "exp_id", "type_id", "num_frames", "missing_frames", "status", *keys, "JF", "exp"])
    for r in results:
        if r.missing:
            status = "missing_zero" if missing == "zero" else "missing_skipped"
            vals = [0.0] * len(keys) if missing == "zero" else [None] * len(keys)
        else:
            status = "ok"
            vals = [100 * r.scores[k] for k in keys]
        jf = None if vals[0] is None else (vals[keys.index("J")] + vals[keys.index("F")]) / 2
        w.writerow([r.video, r.exp_id, "" if r.type_id is None else r.type_id, r.num_frames, r.missing_frames,
                    status, *["" if v is None else repr(float(v)) for v in vals], "" if jf is None else repr(jf),
                    r.text])
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------------------------
# ReVOS / MeViS


def _revos_tasks(ds, pred: Path, expressions) -> list[Task]:
    tasks = []
    for i, e in enumerate(expressions):
        names = tuple(ds.videos[e.video].frames)
        tasks.append(Task(i, e, pred / e.video / e.exp_id, tuple(range(len(names))), names))
    return tasks


def _open_revos(root: str, split: str):
    from veason_r1.data.revos import ReVOSDataset

    return ReVOSDataset(root, split=split)


def evaluate_revos(data: str | os.PathLike, pred: str | os.PathLike, config: EvalConfig = EvalConfig()) -> tuple[
        dict, list[ExpressionResult]]:
    """ReVOS: per expression J, F, A, R, R_scale_free (means over all frames); splits by type_id (0 referring,
    1 reasoning), overall = plain mean of the two split values, no-target (type_id 2) reported apart."""
    from functools import partial

    split = config.split or DEFAULT_SPLITS["revos"]
    ds = _open_revos(str(data), split)
    if not ds.foreground:
        raise FileNotFoundError(f"{data}: ReVOS needs mask_dict_foreground.json for R")
    tasks = _revos_tasks(ds, Path(pred), ds.expressions)
    scoring = Scoring("revos", revos_terms=True, literal=config.r_mode == "literal")
    results = run_tasks(ds, partial(_open_revos, str(data), split), tasks, scoring, config.workers, config.progress,
                        desc="ReVOS")
    summary = revos_summary(results, config.missing)
    summary["r_mode"] = config.r_mode
    return summary, results


def revos_summary(results: Sequence[ExpressionResult], missing: str) -> dict:
    keys = list(METRIC_KEYS)
    by_type = {t: [r for r in results if r.type_id == t] for t in (0, 1, 2)}
    unknown = sorted({r.type_id for r in results} - {0, 1, 2}, key=str)
    if unknown:
        raise ValueError(f"ReVOS expressions need type_id 0, 1 or 2; found {unknown}")
    ref = summarize(by_type[0], keys, missing)
    rea = summarize(by_type[1], keys, missing)
    present = [s for s, rs in ((ref, by_type[0]), (rea, by_type[1])) if counted(rs, missing)]
    overall = {k: (mean(s[k] for s in present) if present else None) for k in ref}
    out = {
        "referring": ref,
        "reasoning": rea,
        "overall": overall,
        "num_expressions": {"referring": counted(by_type[0], missing), "reasoning": counted(by_type[1], missing)},
        "missing_predictions": sum(r.missing for r in results),
        "missing_mode": missing,
    }
    if len(present) < 2:
        out["note"] = "one of the two splits has no expression: overall is the other split alone"
    out["no_target"] = summarize(by_type[2], keys, missing)
    out["num_expressions"]["no_target"] = counted(by_type[2], missing)
    return out


def evaluate_mevis(data: str | os.PathLike, pred: str | os.PathLike, config: EvalConfig = EvalConfig()) -> tuple[
        dict, list[ExpressionResult]]:
    """MeViS valid_u (or any MeViS split that ships mask_dict.json): J, F, J&F over all expressions."""
    from functools import partial

    split = config.split or DEFAULT_SPLITS["mevis"]
    ds = _open_revos(str(data), split)
    tasks = _revos_tasks(ds, Path(pred), ds.expressions)
    results = run_tasks(ds, partial(_open_revos, str(data), split), tasks, Scoring("revos"), config.workers,
                        config.progress, desc="MeViS")
    summary = summarize(results, ["J", "F"], config.missing)
    summary.update(num_expressions=counted(results, config.missing),
                   missing_predictions=sum(r.missing for r in results), missing_mode=config.missing)
    return summary, results


# ---------------------------------------------------------------------------------------------------------------
# ReasonVOS


def _open_reasonvos(root: str):
    from veason_r1.data.reasonvos import ReasonVOSDataset

    return ReasonVOSDataset(root)


def evaluate_reasonvos(data: str | os.PathLike, pred: str | os.PathLike, config: EvalConfig = EvalConfig(
        benchmark="reasonvos", missing="skip")) -> tuple[dict, list[ExpressionResult]]:
    """ReasonVOS (either release, detected): J, F, J&F over expressions, scored on the frames that have a GT PNG.

    `config.pred_layout` says where predictions are (veason_r1.data.reasonvos.PRED_LAYOUTS): "current" (default)
    and "exp_id" give one score per expression; "obj_id" (VideoLISA's original scripts) one per (video, obj_id),
    as that script scored it."""
    from functools import partial

    ds = _open_reasonvos(str(data))
    pred = Path(pred)
    tasks: list[Task] = []
    seen: set[tuple[str, str]] = set()
    for e in ds.expressions:
        folder = ds.prediction_folder(e, config.pred_layout)
        if config.pred_layout == "obj_id":
            if folder in seen:
                continue
            seen.add(folder)
        frame_ids = tuple(ds.annotated_frames(e))
        names = tuple(ds.videos[e.video].frames[t] for t in frame_ids)
        tasks.append(Task(len(tasks), e, pred.joinpath(*folder), frame_ids, names))
    results = run_tasks(ds, partial(_open_reasonvos, str(data)), tasks, Scoring("reasonvos"), config.workers,
                        config.progress, desc="ReasonVOS")
    summary = summarize(results, ["J", "F"], config.missing)
    summary.update(num_expressions=counted(results, config.missing),
                   missing_predictions=sum(r.missing for r in results), missing_mode=config.missing,
                   release=ds.release, release_note=ds.release_note, pred_layout=config.pred_layout)
    return summary, results
