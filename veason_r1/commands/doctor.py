"""Validate a ReVOS / MeViS / ReasonVOS-format dataset: frames, RLEs, anno_ids, names, JSON.

Prints a summary (videos, expressions per type, frames checked, errors, warnings) and every problem with the file
and key it is in. Exit code 1 when there is any error (warnings alone give 0).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from veason_r1.flags import nonnegative_int


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("root", type=Path, help="dataset root (folder with JPEGImages/ and the meta JSON)")
    p.add_argument("--split", action="append", default=None,
                   help="split to check (repeatable); default: every split present")
    p.add_argument("--decode", action="store_true", help="fully decode every frame and RLE (slower)")
    p.add_argument("--max-issues", type=nonnegative_int, default=200, help="print at most this many issues (all are counted)")
    p.add_argument("--no-progress", action="store_true", help="no tqdm bar")


def run(args: argparse.Namespace) -> int:
    from veason_r1.data.doctor import diagnose

    report = diagnose(args.root, splits=args.split, decode=args.decode, progress=not args.no_progress)
    shown = report.errors + report.warnings
    for issue in shown[: args.max_issues]:
        print(issue)
    if len(shown) > args.max_issues:
        print(f"... {len(shown) - args.max_issues} more issues not shown")
    print(report.summary())
    return 0 if report.ok else 1
