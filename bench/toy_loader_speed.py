"""Time the toy policy build's data path on one core: per-sample cost of rendering + encoding, the way the first
build's loader worked (float pixels made in the loader, a new video every 12 samples) against the current one
(uint8 frames patchified later on the device, a new video every 24 samples), both with `encode`'s exact layout.

Usage: python bench/toy_loader_speed.py [--samples 300] [--out bench/results/cpu_toy_loader_speed.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path


def _per_sample_ms(processor, tasks, pixels: bool, n: int) -> tuple[float, float]:
    from veason_r1.toy.grounding import SampleStream
    from veason_r1.toy.policy_train import encode

    stream = SampleStream(tasks, seed=11)
    encode(processor, next(stream), tasks.image_size, pixels=pixels)  # warm-up
    t, nbytes = time.perf_counter(), 0
    for _ in range(n):
        item = encode(processor, next(stream), tasks.image_size, pixels=pixels)
        x = item["pixel_values"] if pixels else item["images"]
        nbytes += x.numel() * x.element_size()
    return (time.perf_counter() - t) / n * 1000, nbytes / n / 1e6


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--samples", type=int, default=300)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    import tempfile

    import torch

    torch.set_num_threads(1)
    from veason_r1.models.policy import load_processor
    from veason_r1.toy.policy_train import ToyPolicyTrainConfig, init_model_dir

    folder = init_model_dir(Path(tempfile.mkdtemp()) / "init", seed=0)
    processor = load_processor(folder)
    tasks = ToyPolicyTrainConfig().tasks
    old_ms, old_mb = _per_sample_ms(processor, dataclasses.replace(tasks, samples_per_video=12), True, args.samples)
    new_ms, new_mb = _per_sample_ms(processor, tasks, False, args.samples)
    result = {"samples": args.samples, "threads": 1,
              "first_build_path": {"ms_per_sample": round(old_ms, 2), "mb_per_sample": round(old_mb, 3)},
              "current_path": {"ms_per_sample": round(new_ms, 2), "mb_per_sample": round(new_mb, 3)},
              "speedup": round(old_ms / new_ms, 2)}
    print(json.dumps(result, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
