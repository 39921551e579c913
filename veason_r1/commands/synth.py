"""Write the synthetic video reasoning-segmentation benchmark (ReVOS, MeViS or ReasonVOS layout).

Coloured shapes move over a textured background (entering, leaving, overtaking, occluding); expressions of every
kind (referring, reasoning, multi-object, no-target) come with exact GT masks and a `synthetic_facts.json` that a
synthetic CoT teacher can read. Same arguments -> byte-identical files.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, type=Path, help="output folder (created)")
    p.add_argument("--videos", type=int, default=12, help="number of videos (>= 2; ~25%% go to valid)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--format", choices=("revos", "mevis", "reasonvos", "reasonvos-original"), default="revos",
                   help="reasonvos: VideoLISA's 2024-12-27 release; reasonvos-original: its first release")
    p.add_argument("--height", type=int, default=192)
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--min-frames", type=int, default=8)
    p.add_argument("--max-frames", type=int, default=40)
    p.add_argument("--no-progress", action="store_true", help="no tqdm bar")


def run(args: argparse.Namespace) -> int:
    from veason_r1.data.synthetic import SynthConfig, summarize, write_benchmark

    cfg = SynthConfig(num_videos=args.videos, seed=args.seed, height=args.height, width=args.width,
                      min_frames=args.min_frames, max_frames=args.max_frames)
    try:
        cfg.validate()
    except ValueError as e:
        print(f"error: {e}")
        return 2
    start = time.perf_counter()
    out = write_benchmark(args.out, cfg, fmt=args.format, progress=not args.no_progress)
    print(f"wrote {args.format} benchmark to {out} in {time.perf_counter() - start:.1f}s")
    print(json.dumps(summarize(out), indent=1))
    return 0
