"""Predict masks for a benchmark in two cached stages: stage 1 (policy) writes one JSON line per expression under
PRED/.stage1/, stage 2 (SAM2) writes PRED/<video>/<exp_id>/<frame>.png (0/255, original size) - the layout
`veason-r1 eval` reads (ReasonVOS: --pred-layout, default PRED/<source>_<video>_<obj_id>/<exp_id>/). Re-running
skips finished expressions (a killed run resumes with identical results); --shard i/n runs one of n disjoint
shards; --merge joins the shards into PRED/predictions.jsonl.

Example (one GPU): veason-r1 predict revos --data data/ReVOS --model ckpt/veason-r1-3b --sam2 sam2.1_hiera_l
                   --sam2-checkpoint sam2.1_hiera_large.pt --out pred/revos
Several GPUs: eval/multi_gpu_eval.sh (one process per GPU, then merge and evaluate).
"""

from __future__ import annotations

import argparse

from veason_r1.flags import positive_int


def _shard(text: str):
    from veason_r1.errors import UserError
    from veason_r1.inference.predict import Shard

    try:
        return Shard.parse(text)
    except UserError as e:
        raise argparse.ArgumentTypeError(e.what) from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from veason_r1.benchmarks import BENCHMARKS, SPLIT_HELP
    from veason_r1.inference.pipeline import add_model_arguments
    from veason_r1.inference.predict import PredictConfig

    parser.add_argument("benchmark", choices=BENCHMARKS)
    parser.add_argument("--data", required=True, help="benchmark root folder")
    parser.add_argument("--split", default=None, help=SPLIT_HELP)
    parser.add_argument("--out", "--pred", dest="out", required=True, help="prediction folder PRED")
    add_model_arguments(parser, model_required=False)
    parser.add_argument("--shard", type=_shard, default=None, help="i/n: run shard i (0-based) of n")
    parser.add_argument("--stage", choices=("1", "2", "all"), default="all")
    batch_size = PredictConfig.__dataclass_fields__["batch_size"].default  # the default lives in the dataclass
    parser.add_argument("--batch-size", type=positive_int, default=batch_size,
                        help=f"expressions generated together; also the sharding unit (results depend on it; "
                             f"default: {batch_size})")
    parser.add_argument("--limit", type=positive_int, default=None, help="only the first N expressions (smoke runs)")
    parser.add_argument("--oracle-keyframe", action="store_true", help="keyframe = shown frame with largest GT area")
    parser.add_argument("--oracle-boxes", action="store_true", help="boxes = GT boxes of the keyframe")
    parser.add_argument("--merge", action="store_true", help="after this run, merge all shards (fails if incomplete)")
    parser.add_argument("--merge-only", action="store_true", help="only merge the shards' results")
    parser.add_argument("--pred-layout", choices=("current", "obj_id", "exp_id"), default="current",
                        help="ReasonVOS mask folders: PRED/<source>_<video>_<obj_id>/<exp_id>/ (current, default), "
                             "PRED/<video>/<obj_id>/ (VideoLISA's original) or PRED/<video>/<exp_id>/")


def run(args: argparse.Namespace) -> int:
    """Every check that can fail (flags, dataset names and output paths, policy folder, SAM2 config and checkpoint,
    the cache's fingerprint) runs before the first model is loaded; user errors are `UserError`s (exit 2)."""
    import json
    from pathlib import Path

    from veason_r1.errors import BadInput, MissingInput
    from veason_r1.inference.pipeline import InferenceConfig, build_engine
    from veason_r1.inference.predict import (
        PredictConfig,
        Shard,
        merge_predictions,
        open_benchmark,
        prepare_run,
        run_stage1,
        run_stage2,
    )
    from veason_r1.models.config import policy_from_args, propagator_from_args
    from veason_r1.paths import check_output_folder

    shard = args.shard or Shard()
    stages = [] if args.merge_only else [s for s, n in (("stage1", "1"), ("stage2", "2")) if args.stage in (n, "all")]
    config = PredictConfig(
        benchmark=args.benchmark,
        split=args.split,
        policy=policy_from_args(args),
        propagator=propagator_from_args(args),
        inference=InferenceConfig(args.image_size, args.num_frames, args.max_new_tokens),
        batch_size=args.batch_size,
        oracle_keyframe=args.oracle_keyframe,
        oracle_boxes=args.oracle_boxes,
        limit=args.limit,
        data=args.data,
        pred_layout=args.pred_layout,
    )
    if not Path(args.data).is_dir():
        raise MissingInput(f"--data {args.data}", "no such folder")
    check_output_folder(args.out)
    if "stage1" in stages and config.needs_policy:
        if not config.policy.model:
            raise BadInput("--model", "required unless both --oracle-keyframe and --oracle-boxes are given")
        config.policy.model = str(config.policy.folder())  # `toy` -> its folder; an incomplete folder refused
    if "stage2" in stages:
        config.propagator.check()
    dataset = open_benchmark(args.benchmark, args.data, args.split)
    if args.benchmark == "reasonvos":
        print(f"ReasonVOS release: {dataset.release_note}; masks in the {args.pred_layout} layout")
    prepare_run(dataset, args.out, config, stages)  # output paths, queries, fingerprint: before any model loads
    progress = not args.no_progress
    if "stage1" in stages:
        engine = None
        if config.needs_policy:
            engine = build_engine(config.policy, args.image_size, args.batch_size, args.num_frames)
        stats = run_stage1(dataset, engine, args.out, config, shard, progress=progress)
        print(json.dumps({"stage": 1, "shard": shard.tag, **_rounded(stats)}))
        del engine
    if "stage2" in stages:
        stats = run_stage2(dataset, config.propagator.load(config.policy.device), args.out, config, shard, progress=progress)
        print(json.dumps({"stage": 2, "shard": shard.tag, **_rounded(stats)}))
    if args.merge or args.merge_only:
        report = merge_predictions(dataset, args.out, config)
        print(json.dumps({"merge": {"expressions": report.expressions, "stage1_records": report.stage1_records,
                                    "complete_masks": report.complete_masks,
                                    "missing_stage1": len(report.missing_stage1),
                                    "missing_masks": len(report.missing_masks)}}))
        if not report.ok:
            print(f"incomplete: first missing {(report.missing_stage1 + report.missing_masks)[:5]}")
            return 1
    return 0


def _rounded(stats: dict) -> dict:
    return {k: round(v, 3) if isinstance(v, float) else v for k, v in stats.items()}
