"""Resumable seed-CoT driver and the authors' record format (docs/method.md §6).

Files in the output folder:
- `cot_records.jsonl`: one finished record per line, appended (and fsync'ed) by the main thread the moment a sample
  finishes, so a crash loses at most the samples in flight. A rerun reads it, repairs a torn last line, and skips
  every key already there; keys are unique.
- `cot_failures.jsonl`: samples the latest run gave up on (key, reason, attempts); a rerun tries them again.
- `cot_records.json`: the final list in the authors' record format, rebuilt from the JSONL at the end of every run.
- `cot_summary.json`: counts (done, retried, failed, skipped) and tokens used. `cot_run.json`: seed and frame count
  the folder was started with (a rerun with other values is refused, so one folder never mixes two samplings).
No file holds the API key, nor credentials embedded in the endpoint URL (`veason_r1.redact`).

Bounded concurrency: at most `concurrency` samples are in flight (prepared, requested, validated) at any time.
"""

from __future__ import annotations

import json
import os
import sys
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path

from veason_r1.config import FRAMES
from veason_r1.data.revos import Expression, ReVOSDataset
from veason_r1.datacon.cot_request import CotSample, build_request, prepare_sample
from veason_r1.datacon.teachers import Teacher, TeacherError, TeacherReply
from veason_r1.errors import BadInput
from veason_r1.io_utils import append_jsonl, atomic_write_bytes, atomic_write_json, read_jsonl
from veason_r1.prompting import answer_json, build_prompt, format_response
from veason_r1.redact import redact_urls

RECORDS_JSONL = "cot_records.jsonl"
FAILURES_JSONL = "cot_failures.jsonl"
FINAL_JSON = "cot_records.json"
SUMMARY_JSON = "cot_summary.json"
RUN_JSON = "cot_run.json"


@dataclass(frozen=True)
class CotConfig:
    num_frames: int = FRAMES.sft_frames  # N=8 training grid for CoT / SFT data
    seed: int = 0  # keyframe and worked example per sample derive from (seed, key)
    concurrency: int = 8
    limit: int | None = None  # at most this many expressions (in meta order)
    max_per_video: int | None = None  # the release took the first 10 expressions of each video
    skip_no_target: bool = True  # expressions whose target is never visible get no CoT
    boxed_frames_dir: str | None = None  # keep the boxed frames sent to the teacher (debugging)


@dataclass
class CotSummary:
    total: int = 0  # samples this run covers, finished earlier included
    already_done: int = 0
    done: int = 0  # finished in this run
    failed: int = 0
    skipped: int = 0
    retried: int = 0  # extra attempts over all samples
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0
    aborted: str | None = None
    failures: list[dict] = field(default_factory=list)

    @property
    def complete(self) -> int:
        return self.already_done + self.done

    def format(self) -> str:
        text = (f"cot: {self.complete}/{self.total} done ({self.done} this run, {self.already_done} before), "
                f"{self.failed} failed, {self.skipped} skipped (no target), {self.retried} retries; "
                f"tokens: {self.prompt_tokens} prompt + {self.completion_tokens} completion = "
                f"{self.prompt_tokens + self.completion_tokens}; {self.seconds:.1f} s")
        if self.aborted:
            text += f"\naborted: {redact_urls(self.aborted)}"
        for f in self.failures[:5]:
            text += f"\n  failed {f['key']}: {f['reason']}"
        if len(self.failures) > 5:
            text += f"\n  ... {len(self.failures) - 5} more in {FAILURES_JSONL}"
        return text


def select_expressions(ds: ReVOSDataset, config: CotConfig) -> list[Expression]:
    """Expressions in meta order, at most `max_per_video` per video and `limit` in all."""
    out: list[Expression] = []
    for vm in ds.videos.values():
        exps = list(vm.expressions.values())
        if config.max_per_video is not None:
            exps = exps[: config.max_per_video]
        out += exps
    return out if config.limit is None else out[: config.limit]


def make_record(ds: ReVOSDataset, sample: CotSample, reply: TeacherReply) -> dict:
    """The authors' record: sample meta + CoT, frame_ids, solution and a ShareGPT conversation.

    Differences from the release, on purpose: `CoT` holds the bare reasoning (the conversation wraps it in <think>),
    the human turn is the RL/eval prompt with one <image> per frame (docs/method.md §5 decision), answer boxes are
    integers in 560 space, and `keyframe`, `keyframe_boxes` (original-pixel boxes per target, None = absent),
    `height`, `width`, `type_id` and `key` are added so the SFT export can rebuild boxes at any image size.
    """
    vm = ds.videos[sample.video]
    source = ds.frames(sample.video)
    answer = answer_json(sample.keyframe, sample.keyframe_boxes_560)
    return {
        "key": sample.key,
        "video": sample.video,
        "exp": sample.expression,
        "obj_id": list(sample.obj_ids),
        "anno_id": list(sample.anno_ids),
        "frames": list(vm.frames),
        "exp_id": sample.exp_id,
        "type_id": sample.type_id,
        "category": 0,
        "length": len(vm.frames),
        "frame_path": [str(source.path(i)) for i in range(len(vm.frames))],
        "height": sample.height,
        "width": sample.width,
        "CoT": reply.text,
        "sampled_video_frames": list(sample.frame_paths),
        "frame_ids": list(sample.frame_ids),
        "keyframe": sample.keyframe,
        "keyframe_boxes": sample.keyframe_object_boxes,
        "solution": f"<answer>{answer}</answer>",
        "conversation": [
            {"from": "human", "value": build_prompt(sample.expression, sample.frame_ids)},
            {"from": "gpt", "value": format_response(reply.text, sample.keyframe, sample.keyframe_boxes_560)},
        ],
        "teacher": {"model": reply.model, "attempts": reply.attempts, "example": sample.example_index},
    }


def repair_jsonl_tail(path: Path) -> bool:
    """Cut a torn last line (a writer killed mid-line) so later appends start on a fresh line. True if cut."""
    if not path.exists() or path.stat().st_size == 0:
        return False
    data = path.read_bytes()
    if data.endswith(b"\n"):
        return False
    cut = data.rfind(b"\n") + 1
    atomic_write_bytes(path, data[:cut])
    return True


def load_done(out_dir: Path) -> dict[str, dict]:
    """Finished records by key (first occurrence wins)."""
    done: dict[str, dict] = {}
    for rec in read_jsonl(out_dir / RECORDS_JSONL):
        key = rec.get("key")
        if isinstance(key, str) and key not in done:
            done[key] = rec
    return done


def _check_run_manifest(out_dir: Path, config: CotConfig, teacher: Teacher) -> None:
    manifest = {"seed": config.seed, "num_frames": config.num_frames}
    path = out_dir / RUN_JSON
    if path.exists():
        try:
            with open(path) as f:
                old = json.load(f)
        except json.JSONDecodeError as e:
            raise BadInput(path, f"not valid JSON ({e})", hint="use another --out-dir") from None
        for k, v in manifest.items():
            if old.get(k) != v:
                raise BadInput(path, f"this folder was started with {k}={old.get(k)!r}, not {v!r}",
                               hint="rerun with the same value or use another output folder")
    else:
        atomic_write_json(path, {**manifest, "teacher": redact_urls(repr(teacher)),
                                 "started": time.strftime("%Y-%m-%d %H:%M:%S")}, indent=2)


def _work(ds: ReVOSDataset, teacher: Teacher, expr: Expression, config: CotConfig):
    sample = prepare_sample(ds, expr, config.num_frames, config.seed)
    if config.skip_no_target and not sample.has_target:
        return "skipped", None, None
    request = build_request(ds, sample, config.boxed_frames_dir) if teacher.needs_images else None
    reply = teacher.generate(sample, request)
    return "done", make_record(ds, sample, reply), reply


def write_final(out_dir: Path, order: list[str] | None = None) -> list[dict]:
    """Rebuild `cot_records.json` from the JSONL: unique keys, in `order` (meta order), unknown keys last."""
    records = list(load_done(out_dir).values())
    rank = {k: i for i, k in enumerate(order or [])}
    records.sort(key=lambda r: (rank.get(r["key"], len(rank)), r["key"]))
    atomic_write_bytes(out_dir / FINAL_JSON, json.dumps(records, indent=2, ensure_ascii=False).encode("utf-8"))
    return records


def run_cot(ds: ReVOSDataset, teacher: Teacher, out_dir: str | os.PathLike, config: CotConfig = CotConfig(),
            progress: bool = True) -> CotSummary:
    """Generate CoT records for the selected expressions that are not done yet; see the module docstring."""
    from tqdm import tqdm

    if config.concurrency < 1:
        raise BadInput("--concurrency", f"must be >= 1, got {config.concurrency}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _check_run_manifest(out_dir, config, teacher)
    records_path, failures_path = out_dir / RECORDS_JSONL, out_dir / FAILURES_JSONL
    if repair_jsonl_tail(records_path):
        print(f"cot: cut a torn last line in {records_path}", file=sys.stderr)
    done_keys = set(load_done(out_dir))
    atomic_write_bytes(failures_path, b"")  # the failures of this run only; earlier failures are tried again

    selected = select_expressions(ds, config)
    todo = [e for e in selected if e.key not in done_keys]
    summary = CotSummary(total=len(selected), already_done=len(selected) - len(todo))
    start = time.monotonic()
    bar = tqdm(total=len(selected), initial=summary.already_done, desc="cot", unit="sample", disable=not progress,
               dynamic_ncols=True)

    def update_bar() -> None:
        bar.set_postfix(done=summary.complete, retried=summary.retried, failed=summary.failed, refresh=False)

    executor = ThreadPoolExecutor(max_workers=config.concurrency, thread_name_prefix="cot")
    pending: dict[Future, str] = {}
    queue = iter(todo)
    try:
        while True:
            while summary.aborted is None and len(pending) < config.concurrency:
                expr = next(queue, None)
                if expr is None:
                    break
                pending[executor.submit(_work, ds, teacher, expr, config)] = expr.key
            if not pending:
                break
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in finished:
                key = pending.pop(fut)
                try:
                    status, record, reply = fut.result()
                except TeacherError as e:
                    summary.failed += 1
                    summary.retried += max(e.attempts - 1, 0)
                    failure = {"key": key, "reason": e.reason, "attempts": e.attempts}
                    if e.fatal and summary.aborted is None:
                        summary.aborted = redact_urls(f"{e.reason} (no further samples were sent)")
                except Exception as e:  # noqa: BLE001 - bad data in one sample must not stop the others
                    summary.failed += 1
                    failure = {"key": key, "reason": f"{type(e).__name__}: {e}", "attempts": 0}
                else:
                    failure = None
                    if status == "skipped":
                        summary.skipped += 1
                    elif key not in done_keys:
                        append_jsonl(records_path, record)
                        done_keys.add(key)
                        summary.done += 1
                        summary.retried += reply.attempts - 1
                        summary.prompt_tokens += reply.prompt_tokens
                        summary.completion_tokens += reply.completion_tokens
                if failure is not None:
                    failure["reason"] = redact_urls(str(failure["reason"]))  # error texts may quote the URL
                    summary.failures.append(failure)
                    append_jsonl(failures_path, failure)
                bar.update(1)
                update_bar()
    except BaseException:  # Ctrl-C or a bug: stop retrying, drop what is queued; finished records are on disk
        cancel = getattr(teacher, "cancel", None)
        if cancel is not None:
            cancel()
        for fut in pending:
            fut.cancel()
        executor.shutdown(wait=False, cancel_futures=True)
        bar.close()
        raise
    executor.shutdown(wait=True)
    bar.close()
    summary.seconds = time.monotonic() - start
    write_final(out_dir, [e.key for e in selected])
    atomic_write_json(out_dir / SUMMARY_JSON, {k: v for k, v in asdict(summary).items()}, indent=2)
    return summary
