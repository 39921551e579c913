"""hf-sam2 (transformers' Sam2VideoModel, weights converted by models/hf_sam2_convert.py) against the sam2 package on
the same weights: per-frame agreement of the masks on the synthetic benchmark's videos (CPU, fp32, one thread).

    OMP_NUM_THREADS=1 python bench/hf_sam2_equivalence.py --out bench/results/cpu_hf_sam2_equivalence.json

For each of `--sam2` (default: tiny and toy), for the first `--videos` videos of the synthetic benchmark (SynthConfig
defaults, seed 0: 8-40 frames of 256x192, 1-4 objects), keyframes first / middle / last, every object visible on the
keyframe is prompted with its GT box: the sam2 package (`SAM2Propagator`, exact to the stock predictor) and hf-sam2
each propagate it; frames compared pixel for pixel and by IoU. Also checks hf-sam2's `propagate_many` union of all
objects equals the sam2 union.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def main() -> None:
    from veason_r1.data.masks import mask_iou
    from veason_r1.data.synthetic import SynthConfig, make_video
    from veason_r1.models.hf_sam2_convert import sam2_to_hf
    from veason_r1.models.hf_tracker import TRACKERS, HFTrackerPropagator
    from veason_r1.models.sam2 import load_sam2

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sam2", nargs="+", default=["tiny", "toy"])
    parser.add_argument("--videos", type=int, default=12)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    cfg = SynthConfig(num_videos=max(2, args.videos), seed=0)
    results = {}
    for name in args.sam2:
        ref = load_sam2(name, device="cpu")
        hf = HFTrackerPropagator(sam2_to_hf(name)[0], TRACKERS["hf-sam2"])
        frames_seen = identical = objects = 0
        worst, unions_equal, start = 1.0, True, time.perf_counter()
        for i in range(args.videos):
            v = make_video(i, cfg)
            frames = np.stack(v.frames)
            for kf in sorted({0, v.num_frames // 2, v.num_frames - 1}):
                boxes = []
                for vis in v.visible:
                    if vis[kf].any():
                        ys, xs = np.nonzero(vis[kf])
                        boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
                if not boxes:
                    continue
                boxes = np.asarray(boxes, float)
                a = ref.propagate(frames, kf, boxes, per_object=True)
                b = np.stack([hf.propagate(frames, kf, box[None]) for box in boxes])
                objects += len(boxes)
                for pa, pb in zip(a, b):
                    for x, y in zip(pa, pb):
                        frames_seen += 1
                        identical += bool(np.array_equal(x, y))
                        worst = min(worst, mask_iou(x, y))
                unions_equal &= bool(np.array_equal(hf.propagate_many(frames, [(kf, boxes)])[0], a.any(axis=0)))
        results[name] = {"videos": args.videos, "keyframes": "first, middle, last", "objects": objects,
                         "frames": frames_seen, "identical_frames": identical, "min_frame_iou": worst,
                         "unions_equal": unions_equal, "seconds": round(time.perf_counter() - start, 1)}
        print(name, results[name], flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
