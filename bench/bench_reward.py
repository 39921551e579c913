"""Benchmark one GRPO step's reward (16 prompts x 8 rollouts): the authors' way vs ours, in one run.

Authors' way: per rollout a fresh stock SAM2 inference state (frames encoded again), boxes added, propagate forward
and backward, fp32 -- 128 serial SAM2 runs. Also timed: the same in bf16 (the agreement reference). Ours:
`score_groups` (frames of each prompt encoded once, all rollouts' objects of all prompts tracked in lock-step batches
through SAM2's own track_step, identical objects once), bf16 autocast.

Reports both times, the ratio, mask agreement (mean IoU per rollout and frame vs per-rollout bf16 stock
propagation) and the largest reward difference. Random weights at real model size (no checkpoint needed); the
numbers are speed and agreement only, never method results.

GPU box:  python bench/bench_reward.py --device cuda --model sam2.1_hiera_l --profile --out bench_reward.json
CPU smoke: python bench/bench_reward.py --device cpu --tiny --groups 2 --rollouts 3 --profile --out /tmp/b.json

Warm-up: each path first runs once on a different set of groups of the same sizes (another seed: other batch
sizes per keyframe, as the next GRPO step has). `--repeats N` times ours N times and reports the median (and every
run; the first one meets this set's batch shapes for the first time).
`--profile`: per-stage seconds of ours (preprocess, encode, keyframe_step, track_steps, upsample_threshold, union,
iou, reward_terms, reward_finish; CUDA synchronised at each stage's ends, so from an extra untimed run) and, on
CUDA, torch.profiler's top kernels of one more untimed run.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from veason_r1.config import IMAGE_SIZE  # noqa: E402


def make_group(rng: np.random.Generator, frames_n: int, size: int, rollouts: int):
    """Frames with 1-2 moving bright rectangles, GT masks/boxes, and rollout answers with jittered boxes
    (about a third repeat an earlier rollout, as GRPO groups do)."""
    from veason_r1.prompting import format_response
    from veason_r1.reward import RewardSample

    n_obj = int(rng.integers(1, 3))
    frames = (rng.random((frames_n, size, size, 3)) * 60 + 40).astype(np.uint8)
    masks = np.zeros((frames_n, size, size), bool)
    boxes: dict[str, list[list[float]]] = {}
    starts = rng.integers(size // 8, size // 2, (n_obj, 2))
    extent = rng.integers(size // 8, size // 3, (n_obj, 2))
    for t in range(frames_n):
        frame_boxes = []
        for o in range(n_obj):
            x0, y0 = (starts[o] + t * size // 40).clip(0, size - 1)
            x1, y1 = min(size - 1, x0 + extent[o, 0]), min(size - 1, y0 + extent[o, 1])
            frames[t, y0 : y1 + 1, x0 : x1 + 1] = (200 + 25 * o, 80 * o, 220 - 60 * o)
            masks[t, y0 : y1 + 1, x0 : x1 + 1] = True
            frame_boxes.append([float(x0), float(y0), float(x1), float(y1)])
        boxes[str(t)] = frame_boxes
    frame_ids = [int(i * 5) for i in range(frames_n)]
    responses: list[str] = []
    for r in range(rollouts):
        if responses and rng.random() < 0.33:
            responses.append(responses[int(rng.integers(0, len(responses)))])
            continue
        pos = int(rng.integers(0, frames_n))
        jitter = rng.normal(0, size / 40, (n_obj, 4))
        pred = (np.array(boxes[str(pos)]) + jitter).clip(0, size - 1)
        responses.append(format_response("thinking", frame_ids[pos], pred.tolist()))
    return responses, RewardSample(frame_ids, boxes, masks, frames)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def per_rollout(groups, propagator, record: list | None = None) -> tuple[list[list[dict]], float]:
    """The authors' way: each rollout on its own fresh stock inference state."""
    from veason_r1.models.sam2_reference import propagate_reference
    from veason_r1.reward import score_response

    def propagate(frames, position, boxes):
        masks = propagate_reference(propagator, frames, position, boxes)
        if record is not None:
            record.append(masks)
        return masks

    _sync(str(propagator.device))
    start = time.perf_counter()
    results = [[score_response(r, s.frame_ids, s.gt_boxes, s.gt_masks, s.frames, propagate) for r in responses]
               for responses, s in groups]
    _sync(str(propagator.device))
    return results, time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default=None, help="cuda | cpu (default: cuda when available)")
    parser.add_argument("--model", default="sam2.1_hiera_l", help="SAM2/SAM2.1 config name or yaml path")
    parser.add_argument("--tiny", action="store_true", help="the ~1M-parameter test SAM2 (CPU smoke test)")
    parser.add_argument("--checkpoint", default=None, help="optional .pt (random weights otherwise)")
    parser.add_argument("--groups", type=int, default=16)
    parser.add_argument("--rollouts", type=int, default=8)
    parser.add_argument("--frames", type=int, default=5)
    parser.add_argument("--size", type=int, default=IMAGE_SIZE)
    parser.add_argument("--max-batch-objects", type=int, default=256)
    parser.add_argument("--encode-batch", type=int, default=32, help="frames per backbone call (ours)")
    parser.add_argument("--repeats", type=int, default=1, help="timed runs of ours (median reported)")
    parser.add_argument("--cudnn-attention", action="store_true",
                        help="let ours use cuDNN SDPA (builds a plan per new shape; off by default)")
    parser.add_argument("--profile", action="store_true", help="per-stage breakdown of ours (+ CUDA top kernels)")
    parser.add_argument("--skip-fp32", action="store_true", help="skip the slow fp32 authors' run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)

    import torch

    from veason_r1.io_utils import atomic_write_json
    from veason_r1.models.sam2 import SAM2Propagator, build_sam2_model
    from veason_r1.reward import score_groups
    from veason_r1.reward.terms import mask_iou

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu":
        torch.set_num_threads(max(1, torch.get_num_threads()))
    name = "tiny" if args.tiny else args.model
    model = build_sam2_model(name, args.checkpoint, device, args.seed)
    ours = SAM2Propagator(model, max_batch_objects=args.max_batch_objects, precision="auto")
    ours.encode_batch = args.encode_batch
    ours.avoid_cudnn_attention = not args.cudnn_attention
    ref_bf16 = SAM2Propagator(model, precision="auto")
    ref_fp32 = SAM2Propagator(model, precision="fp32")
    rng = np.random.default_rng(args.seed)
    groups = [make_group(rng, args.frames, args.size, args.rollouts) for _ in range(args.groups)]
    warm_rng = np.random.default_rng(args.seed + 1000)
    warm = [make_group(warm_rng, args.frames, args.size, args.rollouts) for _ in range(args.groups)]
    n_objects = sum(len(s.gt_boxes["0"]) * len(r) for r, s in groups)

    # warm-up (kernels, allocator) on other groups of the same sizes: a GRPO step after the first is warm
    score_groups(warm, ours)
    per_rollout(warm[:1], ref_bf16)
    if not args.skip_fp32:
        per_rollout(warm[:1], ref_fp32)

    fp32_results, fp32_s = (None, None) if args.skip_fp32 else per_rollout(groups, ref_fp32)
    ref_masks: list[np.ndarray] = []
    bf16_results, bf16_s = per_rollout(groups, ref_bf16, ref_masks)
    times = []
    for _ in range(max(1, args.repeats)):
        _sync(device)
        start = time.perf_counter()
        our_results = score_groups(groups, ours)
        _sync(device)
        times.append(time.perf_counter() - start)
    ours_s = float(np.median(times))

    profile = None
    if args.profile:
        ours.profile = {}
        _sync(device)
        start = time.perf_counter()
        score_groups(groups, ours)
        _sync(device)
        total = time.perf_counter() - start
        stages = dict(ours.profile)
        ours.profile = None
        stages["other"] = total - sum(stages.values())
        profile = {"total_synced_s": total, "stages_s": stages}
        print("ours, per stage (s, CUDA-synchronised):")
        for k, v in stages.items():
            print(f"  {k:20s} {v:8.3f}")
        if device.startswith("cuda"):
            from torch.profiler import ProfilerActivity
            from torch.profiler import profile as torch_profile

            with torch_profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                score_groups(groups, ours)
                _sync(device)
            table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=30)
            print(table)
            profile["top_cuda_ops"] = table

    # agreement: our masks for the same prompts (one more batched call, not timed)
    from veason_r1.reward.scoring import _score_without_sam2

    jobs = []
    for responses, s in groups:
        prompts = [p.prompt for p in (_score_without_sam2(r, s, ours_cfg()) for r in responses) if p.prompt]
        jobs.append((s.frames, prompts))
    our_masks = [m for group in ours.propagate_groups(jobs) for m in group]
    ious = [mask_iou(a[t], b[t]) for a, b in zip(our_masks, ref_masks) for t in range(len(a))]
    flat = lambda rs: [x for g in rs for x in g]  # noqa: E731
    diffs = [abs(a["overall"] - b["overall"]) for a, b in zip(flat(our_results), flat(bf16_results))]
    fp32_diffs = [abs(a["overall"] - b["overall"]) for a, b in zip(flat(our_results), flat(fp32_results or []))]
    result = {
        "device": torch.cuda.get_device_name(0) if device.startswith("cuda") else "cpu",
        "model": name,
        "random_weights": args.checkpoint is None,
        "groups": args.groups,
        "rollouts": args.rollouts,
        "frames": args.frames,
        "size": args.size,
        "prompted_objects": n_objects,
        "authors_fp32_s": fp32_s,
        "authors_bf16_s": bf16_s,
        "ours_s": ours_s,
        "ours_runs_s": times,
        "encode_batch": args.encode_batch,
        "max_batch_objects": args.max_batch_objects,
        "ours_cudnn_attention": args.cudnn_attention,
        "speedup_vs_authors_fp32": (fp32_s / ours_s) if fp32_s else None,
        "speedup_vs_authors_bf16": bf16_s / ours_s,
        "mask_mean_iou_vs_bf16": float(np.mean(ious)) if ious else None,
        "mask_min_iou_vs_bf16": float(np.min(ious)) if ious else None,
        "max_reward_diff_vs_bf16": max(diffs) if diffs else 0.0,
        "max_reward_diff_vs_fp32": max(fp32_diffs) if fp32_diffs else None,
        "torch": torch.__version__,
        "profile": profile,
    }
    print(json.dumps(result, indent=2))
    if args.out:
        atomic_write_json(args.out, result)
    return 0


def ours_cfg():
    from veason_r1.reward import RewardConfig

    return RewardConfig()


if __name__ == "__main__":
    raise SystemExit(main())
