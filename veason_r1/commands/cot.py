"""Seed CoT generation (docs/method.md §6): a teacher VLM writes a 3-step reasoning for each sampled expression.

Each sample shows the teacher the N=8 training-grid frames (at most 640x480, "[<t> second]" before each, red boxes on
the targets) and the chosen keyframe. Output folder: `cot_records.jsonl` (appended as samples finish; a rerun skips
finished samples), `cot_records.json` (the authors' record format), `cot_failures.jsonl`, `cot_summary.json`, and
`sft/` (the LLaMA-Factory dataset: `sft/dataset_info.json`, `sft/<name>.json`, `sft/images/`).

Teachers: `openai` (default) = any OpenAI-compatible endpoint; the key is read from the environment variable named by
--api-key-env (OPENAI_API_KEY) or from --api-key, and is never written to a file or printed. `synthetic` = template
reasoning from the synthetic benchmark's ground truth (synthetic_facts.json), offline: it tests the pipeline and
teaches the output format; it is not real CoT data.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from veason_r1.config import IMAGE_SIZE
from veason_r1.flags import (
    nonnegative_float,
    nonnegative_int,
    policy_image_size,
    positive_float,
    positive_int,
)
from veason_r1.models.families import DEFAULT_FAMILY, FAMILIES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from veason_r1.datacon.cot import CotConfig
    from veason_r1.datacon.teachers import EndpointConfig

    end, cot = EndpointConfig(base_url=None, model=""), CotConfig()  # the defaults live in the dataclasses
    parser.add_argument("--root", type=Path, required=True,
                        help="ReVOS-format dataset root (frames and mask_dict.json)")
    parser.add_argument("--meta", type=Path, default=None,
                        help="meta file to generate for (default: ROOT/meta_expressions_train_select.json if it "
                             "exists, else the --split meta)")
    parser.add_argument("--split", default="train", help="split used to find the masks/meta (default: train)")
    parser.add_argument("--out-dir", type=Path, required=True, help="output folder (resumable)")
    parser.add_argument("--teacher", choices=("openai", "synthetic"), default="openai")
    g = parser.add_argument_group("OpenAI-compatible endpoint")
    g.add_argument("--base-url", default=os.environ.get("OPENAI_BASE_URL"),
                   help="endpoint base URL, e.g. https://host/v1 (default: $OPENAI_BASE_URL); a URL with "
                        "user:password@ is refused (it would be sent as HTTP Basic auth)")
    g.add_argument("--model", default=os.environ.get("OPENAI_MODEL"), help="model name (default: $OPENAI_MODEL)")
    g.add_argument("--api-key-env", default="OPENAI_API_KEY", help="environment variable holding the API key")
    g.add_argument("--api-key", default=None,
                   help="API key (prefer the environment variable: a flag is visible in the process list)")
    g.add_argument("--concurrency", type=positive_int, default=cot.concurrency,
                   help=f"samples in flight at once (default: {cot.concurrency})")
    g.add_argument("--timeout", type=positive_float, default=end.timeout,
                   help=f"seconds per request attempt (default: {end.timeout:g})")
    g.add_argument("--max-attempts", type=positive_int, default=end.max_attempts,
                   help=f"attempts per sample before it is failed (default: {end.max_attempts})")
    g.add_argument("--backoff-base", type=nonnegative_float, default=end.backoff_base,
                   help=f"first retry delay in seconds; doubles (default: {end.backoff_base:g})")
    g.add_argument("--backoff-max", type=nonnegative_float, default=end.backoff_max,
                   help=f"longest retry delay in seconds (default: {end.backoff_max:g})")
    g.add_argument("--max-tokens", type=nonnegative_int, default=end.max_tokens,
                   help=f"completion token limit (0 = endpoint default; default: {end.max_tokens})")
    g.add_argument("--temperature", type=nonnegative_float, default=end.temperature)
    s = parser.add_argument_group("sampling")
    s.add_argument("--frames", type=positive_int, default=cot.num_frames,
                   help=f"training-grid size N (default: {cot.num_frames}, docs/method.md §4)")
    s.add_argument("--seed", type=nonnegative_int, default=cot.seed,
                   help=f"seed of the keyframe and worked-example draws (default: {cot.seed})")
    s.add_argument("--limit", type=positive_int, default=cot.limit, help="at most this many expressions")
    s.add_argument("--max-per-video", type=positive_int, default=cot.max_per_video,
                   help="at most this many expressions per video (the release used 10)")
    s.add_argument("--save-boxed-frames", action="store_true", help="also save the boxed frames sent to the teacher")
    e = parser.add_argument_group("SFT export")
    e.add_argument("--sft-name", default="veason_cot", help="dataset name in sft/dataset_info.json")
    e.add_argument("--family", choices=list(FAMILIES), default=DEFAULT_FAMILY.name,
                   help="policy family the SFT set is for: its prompt text and box convention (models/families.py); "
                        "give its frame side with --image-size (e.g. 640 for qwen3_vl / qwen3_5)")
    e.add_argument("--image-size", type=policy_image_size, default=IMAGE_SIZE,
                   help=f"SFT frame size (default: {IMAGE_SIZE})")
    e.add_argument("--no-sft", action="store_true", help="do not write the LLaMA-Factory dataset")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _meta_file(args: argparse.Namespace) -> Path | None:
    if args.meta is not None:
        return args.meta
    select = args.root / "meta_expressions_train_select.json"
    return select if select.is_file() else None


def _teacher(args: argparse.Namespace):
    from veason_r1.datacon.teachers import EndpointConfig, OpenAITeacher, SyntheticTeacher
    from veason_r1.errors import BadInput, MissingInput

    if not args.root.is_dir():
        raise MissingInput(f"--root {args.root}", "no such folder")
    if args.teacher == "synthetic":
        facts = args.root / "synthetic_facts.json"
        if not facts.is_file():
            raise MissingInput(facts, "--teacher synthetic needs the synthetic benchmark's facts file",
                               hint="it is written by `veason-r1 synth`; other datasets need --teacher openai")
        return SyntheticTeacher.from_root(args.root)
    if not args.base_url or not args.model:
        raise BadInput("--base-url/--model", "--teacher openai needs both",
                       hint="pass them or set $OPENAI_BASE_URL and $OPENAI_MODEL")
    key = args.api_key or os.environ.get(args.api_key_env, "")
    if not key:
        raise MissingInput(f"${args.api_key_env}", "no API key", hint=f"set ${args.api_key_env} (or pass --api-key)")
    config = EndpointConfig(base_url=args.base_url, model=args.model, timeout=args.timeout,
                            max_attempts=args.max_attempts, backoff_base=args.backoff_base,
                            backoff_max=args.backoff_max, max_tokens=args.max_tokens or None,
                            temperature=args.temperature)
    return OpenAITeacher(config, key, seed=args.seed)


def run(args: argparse.Namespace) -> int:
    """User errors (flags, dataset, folder) are `UserError`s: `veason-r1` prints one line and exits 2."""
    from veason_r1.data.revos import ReVOSDataset
    from veason_r1.datacon.cot import CotConfig, run_cot
    from veason_r1.errors import BadInput
    from veason_r1.paths import output_dir
    from veason_r1.sft.dataset import export_llamafactory_dataset

    row = FAMILIES[args.family]
    if not args.no_sft and row.image_size_problem(args.image_size):  # before hours of teacher calls
        raise BadInput("--image-size", f"{args.image_size} {row.image_size_problem(args.image_size)}",
                       hint=f"--family {row.name} exports frames of --image-size {row.default_image_size}")
    sft_dir = output_dir(args.out_dir, "sft", key="SFT dataset folder")  # refused if a link leads outside
    boxed = output_dir(args.out_dir, "boxed_frames", key="boxed frames folder") if args.save_boxed_frames else None
    teacher = _teacher(args)
    ds = ReVOSDataset(args.root, args.split, meta_file=_meta_file(args), load_foreground=False)
    config = CotConfig(num_frames=args.frames, seed=args.seed, concurrency=args.concurrency, limit=args.limit,
                       max_per_video=args.max_per_video,
                       boxed_frames_dir=str(boxed) if boxed is not None else None)
    print(f"cot: {len(ds.expressions)} expressions in {ds.meta_file}; teacher {teacher!r}", file=sys.stderr)
    summary = run_cot(ds, teacher, args.out_dir, config, progress=not args.no_progress)
    print(summary.format())
    if not args.no_sft:
        from veason_r1.datacon.cot import FINAL_JSON
        from veason_r1.sft.dataset import load_cot_records

        records = load_cot_records(args.out_dir / FINAL_JSON)
        info = export_llamafactory_dataset(records, sft_dir, name=args.sft_name,
                                           image_size=args.image_size, progress=not args.no_progress,
                                           family=args.family)
        print(f"SFT dataset: {len(records)} rows, {info} (entry {args.sft_name!r})")
    if summary.aborted:
        return 1
    return 0 if summary.failed == 0 else 3
