"""Benchmark the per-frame metrics: ours (veason_r1.eval.metrics) vs a literal implementation of the reference rules
(tests/reference_metrics.py: DAVIS seg2bmap + whole-frame disk dilation of both boundary maps per frame), in one run,
on the same frames, checking that every per-frame value is identical.

Data: `--frames` (100) frames of `--height`x`--width` (720x1280), tolerance radius 12. Each GT is 1-3 ellipses or
rectangles (some touching the frame border, some frames empty); each prediction is the GT shifted by a few pixels,
grown or shrunk, with stray blobs, stored as 0/255 (so A and R run on 0/255 values). Masks are made before timing.

Timed, single-threaded (run with one core: `taskset -c 0`; numpy/scipy here do not spawn threads):
- ours: `frame_scores(gt, pred, foreground_area)` -> J, F, A, R, R_scale_free per frame;
- literal (rows): J, F, A, R per frame with whole-frame dilation computed as an OR of shifted whole-frame runs
  (about the speed of cv2.dilate, which VISA's copy of the DAVIS code uses);
- literal (ndimage): the same with scipy.ndimage.binary_dilation (what skimage's binary_dilation, used by the
  original DAVIS code, runs); slow, so on the first `--ndimage-frames` frames only, timed per frame.

    python bench/bench_metrics.py --out bench_metrics.json          # CPU; no GPU involved
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import importlib.util

_spec = importlib.util.spec_from_file_location("reference_metrics", ROOT / "tests" / "reference_metrics.py")
ref = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ref)  # tests/ is not a package (and verl ships a top-level `tests`)

from veason_r1.eval.metrics import boundary_radius, frame_scores


def make_frames(n: int, h: int, w: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    frames = []
    for t in range(n):
        gt = np.zeros((h, w), bool)
        if t % 10 != 9:  # every 10th frame: object absent
            for _ in range(rng.integers(1, 4)):
                cy, cx = rng.uniform(0, h), rng.uniform(0, w)
                ry, rx = rng.uniform(0.04, 0.3) * h, rng.uniform(0.04, 0.3) * w
                if rng.random() < 0.6:
                    gt |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
                else:
                    gt[int(max(cy - ry, 0)):int(cy + ry), int(max(cx - rx, 0)):int(cx + rx)] = True
        pred = np.roll(gt, (int(rng.integers(-6, 7)), int(rng.integers(-6, 7))), axis=(0, 1))
        if rng.random() < 0.5:  # grow or shrink by a few pixels
            from scipy import ndimage

            k = int(rng.integers(1, 4))
            pred = ndimage.binary_dilation(pred, iterations=k) if rng.random() < 0.5 else \
                ndimage.binary_erosion(pred, iterations=k)
        for _ in range(rng.integers(0, 3)):  # stray false-positive blobs
            cy, cx = int(rng.integers(0, h - 20)), int(rng.integers(0, w - 20))
            pred[cy:cy + int(rng.integers(3, 20)), cx:cx + int(rng.integers(3, 20))] = True
        fg = gt.copy()
        fg[: h // 8, : w // 8] |= True  # another annotated object of the video
        frames.append((gt.astype(np.uint8), pred.astype(np.uint8) * 255, int(fg.sum()), fg.astype(np.uint8)))
    return frames


def literal_frame(gt, pred, fg, dilation):
    j = float(ref.db_eval_iou(gt, pred))
    f = float(ref.db_eval_boundary(gt, pred, dilation=dilation))
    a = float(ref.r2vos_accuracy([gt], [pred])[0])
    r = float(ref.r2vos_robustness([gt], [pred], [fg])[0])
    return j, f, a, r


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--frames", type=int, default=100)
    ap.add_argument("--height", type=int, default=720)
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--ndimage-frames", type=int, default=10, help="frames for the slow ndimage literal (0: none)")
    ap.add_argument("--repeats", type=int, default=3, help="best of N for ours")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)

    frames = make_frames(args.frames, args.height, args.width)
    radius = boundary_radius((args.height, args.width))

    best = float("inf")
    ours = []
    for _ in range(max(args.repeats, 1)):
        t0 = time.perf_counter()
        ours = [frame_scores(g, p, fga) for g, p, fga, _ in frames]
        best = min(best, time.perf_counter() - t0)

    t0 = time.perf_counter()
    lit = [literal_frame(g, p, fg, "rows") for g, p, _, fg in frames]
    t_rows = time.perf_counter() - t0

    n_nd = min(args.ndimage_frames, len(frames))
    t0 = time.perf_counter()
    lit_nd = [literal_frame(g, p, fg, "ndimage") for g, p, _, fg in frames[:n_nd]]
    t_nd = time.perf_counter() - t0

    mismatches = [t for t, (s, l) in enumerate(zip(ours, lit)) if (s.J, s.F, s.A, s.R) != l]
    mismatches_nd = [t for t, (s, l) in enumerate(zip(ours, lit_nd)) if (s.J, s.F, s.A, s.R) != l]
    result = {
        "frames": len(frames), "height": args.height, "width": args.width, "radius": radius,
        "ours_s": best, "literal_rows_s": t_rows,
        "literal_ndimage_frames": n_nd, "literal_ndimage_s": t_nd,
        "literal_ndimage_s_per_frame": t_nd / n_nd if n_nd else None,
        "speedup_vs_rows": t_rows / best,
        "speedup_vs_ndimage": (t_nd / n_nd) / (best / len(frames)) if n_nd else None,
        "identical": not mismatches and not mismatches_nd,
        "mismatched_frames": mismatches, "mismatched_frames_ndimage": mismatches_nd,
        "mean_J": float(np.mean([s.J for s in ours])), "mean_F": float(np.mean([s.F for s in ours])),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cpus visible, "
                   f"python {platform.python_version()}, numpy {np.__version__}",
        "goal": "ours <= 0.2 s for 100 frames of 720x1280, identical values",
    }
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0 if result["identical"] else 1


if __name__ == "__main__":
    sys.exit(main())
