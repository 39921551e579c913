"""Score predicted masks: `veason-r1 eval {revos,mevis,reasonvos,vicas} --data ROOT --pred PRED --out results.json`.

Predictions: PRED/<video>/<exp_id>/<frame>.png at the original frame size (0/1 or 0/255), read as the reference
scripts read them (OpenCV grey levels); ReasonVOS: --pred-layout (default VideoLISA's current
PRED/<source>_<video>_<obj_id>/<exp_id>/). ReVOS A and R: --r-mode literal (VISA's numbers, default) or union. Writes
results.json (percent, unrounded) and a per-expression CSV beside it (<out stem>_per_expression.csv). Missing
predictions are counted and printed; --missing zero|skip decides whether they score 0 or are left out (defaults:
the reference scripts' choice: zero for ReVOS/MeViS/ViCaS, skip for ReasonVOS). MeViS `valid` has no public GT:
the command builds the evaluation server's zip instead (--submission-zip). See docs/evaluation.md.
"""

from __future__ import annotations

import argparse

from veason_r1.benchmarks import BENCHMARKS, DEFAULT_MISSING, DEFAULT_SPLITS, SPLIT_HELP
from veason_r1.flags import positive_int


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("benchmark", choices=BENCHMARKS)
    parser.add_argument("--data", required=True, help="benchmark root folder")
    parser.add_argument("--pred", required=True, help="prediction folder PRED")
    parser.add_argument("--out", default=None, help="results JSON (default: PRED/results.json)")
    parser.add_argument("--split", default=None, help=SPLIT_HELP)
    parser.add_argument("--missing", choices=("zero", "skip"), default=None,
                        help="missing predictions score 0 or are skipped (default: the benchmark's reference)")
    parser.add_argument("--workers", type=positive_int, default=None, help="worker processes (default: min(4, CPUs))")
    parser.add_argument("--pred-layout", choices=("current", "obj_id", "exp_id"), default="current",
                        help="ReasonVOS: PRED/<source>_<video>_<obj_id>/<exp_id>/ (current, default), "
                             "PRED/<video>/<obj_id>/ (VideoLISA's original) or PRED/<video>/<exp_id>/")
    parser.add_argument("--r-mode", choices=("literal", "union"), default="literal",
                        help="ReVOS A/R: on VISA's GT, the uint8 sum of the objects (literal, its numbers) or on "
                             "their boolean union; A/R_scale_free are always reported")
    parser.add_argument("--submission-zip", default=None,
                        help="MeViS valid: where to write the server zip (default: next to --out)")
    parser.add_argument("--zip-root", choices=("Annotations", "flat"), default="Annotations",
                        help="MeViS zip layout: Annotations/<video>/... (default) or <video>/... at the top")
    parser.add_argument("--vicas-version", default="v0.1", help="ViCaS annotation version folder")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.2f}"


def run(args: argparse.Namespace) -> int:
    """Bad input (a damaged or misnamed file, a wrong size, a malformed meta) is one line naming it, exit 2."""
    import sys

    from veason_r1.errors import UserError

    try:
        return _run(args)
    except UserError:
        raise  # cli.main prints it (one line + hint, exit 2; --debug: traceback)
    except (ValueError, FileNotFoundError, KeyError) as e:  # library errors that name their file
        if getattr(args, "debug", False):  # `veason-r1 eval ... --debug` (cli.py)
            raise
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"error: {msg}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    import os
    from pathlib import Path

    from veason_r1.eval.evaluators import EvalConfig, per_expression_csv
    from veason_r1.io_utils import atomic_write_json, atomic_write_text

    pred = Path(args.pred)
    out = Path(args.out) if args.out else pred / "results.json"
    missing = args.missing or DEFAULT_MISSING[args.benchmark]
    workers = args.workers if args.workers is not None else max(1, min(4, os.cpu_count() or 1))
    progress = not args.no_progress
    from veason_r1.errors import MissingInput

    if not pred.is_dir():
        raise MissingInput(f"--pred {pred}", "prediction folder does not exist",
                           hint="run `veason-r1 predict` first, or pass the folder it wrote")
    if not Path(args.data).is_dir():
        raise MissingInput(f"--data {args.data}", "no such folder")

    split = args.split or DEFAULT_SPLITS[args.benchmark]
    if args.benchmark == "mevis" and split == "valid" and not _has_mask_dict(args.data, "valid"):
        from veason_r1.eval.submission import build_submission_zip

        zpath = Path(args.submission_zip) if args.submission_zip else out.with_name("mevis_valid_submission.zip")
        info = build_submission_zip(args.data, pred, zpath, split="valid", root=args.zip_root)
        print(f"MeViS valid has no public GT: wrote {info['files']} PNGs of {info['expressions']} expressions to "
              f"{info['zip']} (root {info['root']}); upload it to the MeViS evaluation server")
        return 0

    if args.benchmark == "vicas":
        from veason_r1.eval.vicas import evaluate_vicas

        summary, rows = evaluate_vicas(args.data, pred, split=split, version=args.vicas_version,
                                       missing=missing, progress=progress)
        atomic_write_json(out, summary, indent=2)
        lines = ["video_id,referral,num_gt,missing_frames,num_pred,best_track_iou,prompt"]
        import csv
        import io

        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(lines[0].split(","))
        for r in rows:
            w.writerow([r.video_id, r.index, r.num_gt, r.missing_frames, r.num_pred,
                        "" if r.best_iou is None else repr(r.best_iou), r.prompt])
        atomic_write_text(_csv_path(out), buf.getvalue())
        print(f"ViCaS LG-VIS {summary['split']}: mAP {_fmt(summary['mAP'])}  AP@50 {_fmt(summary['AP@50'])}  "
              f"AP@75 {_fmt(summary['AP@75'])}  AP@90 {_fmt(summary['AP@90'])}  "
              f"({summary['num_referrals']} referrals)")
        print(f"missing predictions: {summary['missing_predictions']} (--missing {missing})")
        print(f"wrote {out} and {_csv_path(out)}")
        return 0

    from veason_r1.eval import evaluators

    config = EvalConfig(benchmark=args.benchmark, split=args.split, missing=missing, workers=workers,
                        progress=progress, pred_layout=args.pred_layout, r_mode=args.r_mode)
    fn = {"revos": evaluators.evaluate_revos, "mevis": evaluators.evaluate_mevis,
          "reasonvos": evaluators.evaluate_reasonvos}[args.benchmark]
    summary, results = fn(args.data, pred, config)
    keys = list(evaluators.METRIC_KEYS) if args.benchmark == "revos" else ["J", "F"]
    atomic_write_json(out, summary, indent=2)
    atomic_write_text(_csv_path(out), per_expression_csv(results, keys, missing))
    if args.benchmark == "revos":
        print(f"A and R: --r-mode {args.r_mode}; scale-free: union GT, binarised prediction")
        for name in ("referring", "reasoning", "overall", "no_target"):
            s = summary[name]
            print(f"{name:>10}: J {_fmt(s['J'])}  F {_fmt(s['F'])}  J&F {_fmt(s['JF'])}  A {_fmt(s['A'])}  "
                  f"R {_fmt(s['R'])}  A(scale-free) {_fmt(s['A_scale_free'])}  "
                  f"R(scale-free) {_fmt(s['R_scale_free'])}")
        print(f"expressions: {summary['num_expressions']}")
    else:
        if args.benchmark == "reasonvos":
            print(f"ReasonVOS release: {summary['release_note']}; predictions read in the "
                  f"{summary['pred_layout']} layout")
        print(f"{args.benchmark}: J {_fmt(summary['J'])}  F {_fmt(summary['F'])}  J&F {_fmt(summary['JF'])}  "
              f"({summary['num_expressions']} expressions)")
    print(f"missing predictions: {summary['missing_predictions']} (--missing {missing})")
    print(f"wrote {out} and {_csv_path(out)}")
    return 0


def _csv_path(out):
    return out.with_name(f"{out.stem}_per_expression.csv")


def _has_mask_dict(data: str, split: str) -> bool:
    from pathlib import Path

    root = Path(data)
    return (root / "mask_dict.json").is_file() or (root / split / "mask_dict.json").is_file()
