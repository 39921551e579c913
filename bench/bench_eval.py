"""Evaluation throughput: the authors' way vs ours, in one run, plus SAM2 peak memory on a long video.

What runs (GPU box, defaults): a Qwen2.5-VL-3B-architecture policy with RANDOM weights (bf16, real sizes, real
151,936-token vocabulary; the tokenizer is the project's offline tiny BPE, so generated ids beyond it decode to
nothing - outputs are compared as token ids), SAM2.1 Hiera-L with random weights, and a synthetic benchmark of
100-frame 1280x720 JPEG videos (two moving rectangles per video, 4 expressions per video).

- authors' way, per expression: open ALL frames of the video as PIL images, pick 8 linspace frames, HF `generate`
  one expression at a time (greedy, `--max-new-tokens`), parse, then the stock `SAM2VideoPredictor` in fp32
  (`init_state` on the JPEG folder, `add_new_points_or_box` per box, `propagate_in_video` forward then reverse),
  write PNGs. Stock sam2 1.1.0 stores memories as bf16, which breaks fp32 attention; the same fp32 cast patch
  `veason_r1.models.sam2` uses for its reference path is applied so the baseline runs at all.
- ours: `veason_r1.inference.predict.run_stage1` (8 frames decoded per expression, HF batched generation with left
  padding, `--batch-size`) then `run_stage2` (frames of a video decoded and encoded once for all its expressions,
  batched objects, bf16 autocast), PNGs written into atomic folders.
- Both use the same boxes for SAM2: the GT boxes of the keyframe the policy picked (`--oracle-boxes`), since a
  random policy's boxes are garbage and SAM2 must do real work in both ways.
- Agreement: greedy token ids of the authors' way vs ours for the same expressions (identical count, first
  divergence), and the mean per-frame IoU of the two ways' masks (fp32 stock vs bf16 batched SAM2).
- Long video: `--long-frames` frames of `--long-height`x`--long-width` through SAM2 (one box) with frames and
  memories offloaded to CPU; peak GPU memory (goal: 1,000 frames of 1080p within 16 GB with Hiera-L).

Numbers from random weights measure speed and memory only, never segmentation quality.

Run on the GPU box (needs sam2 + hydra-core + omegaconf importable; see docs/bench_eval.md):
    python bench/bench_eval.py --out bench_eval.json
CPU smoke test (tiny models, seconds):
    python bench/bench_eval.py --device cpu --tiny --out /tmp/bench_eval.json
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from veason_r1.config import IMAGE_SIZE  # noqa: E402

# ----------------------------------------------------------------------------------------------------------------
# Arguments


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="JSON file for the results")
    p.add_argument("--device", default="cuda")
    p.add_argument("--tiny", action="store_true", help="tiny policy + tiny SAM2 + small videos (CPU smoke test)")
    p.add_argument("--videos", type=int, default=6)
    p.add_argument("--exps-per-video", type=int, default=4)
    p.add_argument("--frames", type=int, default=100)
    p.add_argument("--height", type=int, default=720)
    p.add_argument("--width", type=int, default=1280)
    p.add_argument("--authors-exps", type=int, default=6, help="expressions run the authors' way (it is slow)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--image-size", type=int, default=IMAGE_SIZE)
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--policy-dtype", default="bfloat16")
    p.add_argument("--no-fast-paths", action="store_true",
                   help="ours without veason_r1.models.fast_qwen (transformers' own attention code)")
    p.add_argument("--agreement-exps", type=int, default=None,
                   help="expressions whose greedy tokens are compared in fp32, authors' way vs ours "
                        "(default: --authors-exps; 0 skips)")
    p.add_argument("--sam2", default="sam2.1_hiera_l")
    p.add_argument("--policy", choices=("3b", "tiny"), default=None,
                   help="3b: Qwen2.5-VL-3B sizes, random weights (default); tiny: the project's tiny folder (--tiny)")
    p.add_argument("--text-layers", type=int, default=36, help="policy decoder layers (36 = 3B)")
    p.add_argument("--vision-depth", type=int, default=32, help="vision tower blocks (32 = 3B)")
    p.add_argument("--long-frames", type=int, default=1000)
    p.add_argument("--long-height", type=int, default=1080)
    p.add_argument("--long-width", type=int, default=1920)
    p.add_argument("--skip-long", action="store_true")
    p.add_argument("--long-only", action="store_true")
    p.add_argument("--workdir", default=None, help="scratch folder (default: a temp dir, removed at the end)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    args.policy = args.policy or ("tiny" if args.tiny else "3b")
    if args.tiny:
        small = dict(videos=3, exps_per_video=2, frames=12, height=72, width=128, authors_exps=3, batch_size=4,
                     image_size=112, max_new_tokens=16, policy_dtype="float32", sam2="tiny", long_frames=40,
                     long_height=90, long_width=160)
        for k, v in small.items():
            if getattr(args, k) == p.get_default(k):
                setattr(args, k, v)
    return args


# ----------------------------------------------------------------------------------------------------------------
# The synthetic benchmark (JPEG folders; GT is analytic, so no RLE is needed)


@dataclass(frozen=True)
class BenchExpression:
    video: str
    exp_id: str
    text: str
    objects: tuple[int, ...]

    @property
    def key(self) -> str:
        return f"{self.video}/{self.exp_id}"


TEXTS = ["the red box that moves to the right", "which object is closer to the top of the frame?",
         "the blue rectangle", "both moving boxes", "the object that starts on the left side",
         "what would you grab first if you had to pick one of the moving things?"]


class BenchDataset:
    """Videos of two moving rectangles; the reader interface `predict.py` and the oracles use."""

    def __init__(self, root: Path, videos: int, exps_per_video: int, frames: int, height: int, width: int):
        self.root, self.num_frames, self.height, self.width = root, frames, height, width
        self.names = [f"{t:05d}" for t in range(frames)]
        self.video_names = [f"vid{v:02d}" for v in range(videos)]
        self.expressions = []
        for v, name in enumerate(self.video_names):
            for e in range(exps_per_video):
                objs = (0, 1) if e % 4 == 3 else (e % 2,)
                self.expressions.append(BenchExpression(name, str(e), TEXTS[(v + e) % len(TEXTS)], objs))

    def box(self, video: str, obj: int, t: int) -> tuple[int, int, int, int]:
        v = int(video[3:])
        h, w = self.height, self.width
        bw, bh = w // 6 + 7 * obj, h // 4 + 5 * v % 11
        x = int((0.05 + 0.6 * t / max(1, self.num_frames - 1) + 0.2 * obj) * w) % (w - bw)
        y = int((0.15 + 0.4 * obj + 0.05 * v % 3) * h) % (h - bh)
        return x, y, x + bw - 1, y + bh - 1

    def frame(self, video: str, t: int) -> np.ndarray:
        h, w = self.height, self.width
        yy = np.linspace(0, 180, h, dtype=np.float32)[:, None]
        xx = np.linspace(0, 120, w, dtype=np.float32)[None, :]
        img = np.empty((h, w, 3), np.uint8)
        img[..., 0] = (yy + xx * 0.5 + 3 * t) % 255
        img[..., 1] = (yy * 0.5 + xx) % 255
        img[..., 2] = 90
        for obj, color in ((0, (230, 40, 40)), (1, (40, 60, 230))):
            x1, y1, x2, y2 = self.box(video, obj, t)
            img[y1 : y2 + 1, x1 : x2 + 1] = color
        return img

    def write(self) -> None:
        from PIL import Image

        for video in self.video_names:
            folder = self.root / video
            folder.mkdir(parents=True, exist_ok=True)
            for t, name in enumerate(self.names):
                Image.fromarray(self.frame(video, t)).save(folder / f"{name}.jpg", quality=90)

    # reader interface ---------------------------------------------------------------------------------------
    def frames(self, video: str):
        from veason_r1.data.video import JpegFolderSource

        return JpegFolderSource(self.root / video, self.names)

    def size(self, video: str) -> tuple[int, int]:
        return self.height, self.width

    def object_masks(self, expr: BenchExpression, t: int) -> list[np.ndarray]:
        out = []
        for obj in expr.objects:
            m = np.zeros((self.height, self.width), bool)
            x1, y1, x2, y2 = self.box(expr.video, obj, t)
            m[y1 : y2 + 1, x1 : x2 + 1] = True
            out.append(m)
        return out

    def gt_areas(self, expr: BenchExpression) -> list[int]:
        return [int(np.logical_or.reduce(self.object_masks(expr, t)).sum()) for t in range(self.num_frames)]


# ----------------------------------------------------------------------------------------------------------------
# Policy


def build_policy(args, workdir: Path):
    """(Policy, description). --tiny: the project's tiny folder; else 3B sizes with random weights on the device."""
    from veason_r1.models import policy as policy_lib
    from veason_r1.models.tiny import make_tiny_qwen

    if args.policy == "tiny":
        folder = make_tiny_qwen(workdir / "tiny_qwen", seed=args.seed)
        return policy_lib.load_policy(folder, device=args.device, dtype=args.policy_dtype), "tiny Qwen2.5-VL"
    from veason_r1.models.real_size import build_real_size_model

    model, processor = build_real_size_model("3b", args.device, args.policy_dtype, seed=args.seed,
                                             text_layers=args.text_layers, vision_depth=args.vision_depth)
    processor.tokenizer.padding_side = "left"
    tokenizer = processor.tokenizer
    from transformers import GenerationConfig

    model.eval()
    stop = [tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.convert_tokens_to_ids("<|endoftext|>")]
    model.generation_config = GenerationConfig(bos_token_id=stop[1], pad_token_id=stop[1], eos_token_id=stop,
                                               do_sample=False)
    params = sum(p.numel() for p in model.parameters())
    desc = (f"Qwen2.5-VL-3B architecture ({args.text_layers} text layers, {args.vision_depth} vision blocks), "
            f"random weights, {params / 1e9:.2f}B parameters, {args.policy_dtype}")
    return policy_lib.Policy(model=model, processor=processor, device=args.device), desc


class GenerateRecorder:
    """Wraps `model.generate` to keep each row's new token ids (trimmed after the first stop token)."""

    def __init__(self, model, stop_ids):
        self.model, self.stop, self.rows = model, set(stop_ids), []
        self._orig = model.generate
        model.generate = self

    def __call__(self, *args, **kwargs):
        out = self._orig(*args, **kwargs)
        prompt_len = kwargs["input_ids"].shape[1]
        for row in out[:, prompt_len:].tolist():
            cut = next((i + 1 for i, tok in enumerate(row) if tok in self.stop), len(row))
            self.rows.append(row[:cut])
        return out

    def take(self) -> list[list[int]]:
        rows, self.rows = self.rows, []
        return rows


# ----------------------------------------------------------------------------------------------------------------
# Timing helpers


def rounded_batches(stats: list[dict]) -> list[dict]:
    return [{k: round(v, 3) if isinstance(v, float) else v for k, v in b.items()} for b in stats]


def sync(device: str) -> None:
    if str(device).startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def reset_peak(device: str) -> None:
    if str(device).startswith("cuda"):
        import torch

        torch.cuda.reset_peak_memory_stats()


def peak_gb(device: str) -> float | None:
    if str(device).startswith("cuda"):
        import torch

        return round(torch.cuda.max_memory_allocated() / 2**30, 3)
    return None


def host_peak_gb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)


# ----------------------------------------------------------------------------------------------------------------
# The authors' way


def authors_request(ds: BenchDataset, e: BenchExpression, size: int):
    """The authors' prompt frames: every frame of the video opened as PIL, the eval linspace frames resized
    (bilinear)."""
    from PIL import Image

    from veason_r1.data.sampling import eval_frames
    from veason_r1.models.policy import GenerationRequest

    pil = [Image.open(ds.root / e.video / f"{name}.jpg").convert("RGB") for name in ds.names]
    ids = eval_frames(len(pil))
    return GenerationRequest(e.text, ids, [np.asarray(pil[i].resize((size, size), Image.BILINEAR)) for i in ids])


def authors_way(ds: BenchDataset, exprs, policy, sam_model, args, out_dir: Path) -> dict:
    """One expression at a time: all frames as PIL, HF generate batch 1, stock fp32 SAM2 on the JPEG folder."""
    import torch
    from PIL import Image

    from veason_r1.inference.oracle import oracle_boxes
    from veason_r1.inference.pipeline import (
        InferenceConfig,
        boxes_to_original,
        generate_responses,
        make_answer,
    )
    from veason_r1.models.fast_qwen import remove_fast_paths
    from veason_r1.models.policy import HFEngine
    from veason_r1.models.sam2_reference import quiet, stock_fp32_memory_patch

    remove_fast_paths(policy.model)  # the authors run transformers' own code
    engine = HFEngine(policy, image_size=args.image_size, batch_size=1)
    config = InferenceConfig(image_size=args.image_size, max_new_tokens=args.max_new_tokens)
    times = {"load_s": 0.0, "generate_s": 0.0, "sam2_s": 0.0, "write_s": 0.0}
    masks_out, answers = {}, {}
    for e in exprs:
        sync(args.device)
        t0 = time.perf_counter()
        request = authors_request(ds, e, args.image_size)
        ids = request.frame_ids
        times["load_s"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        (response,) = generate_responses(engine, [request], config)
        sync(args.device)
        times["generate_s"] += time.perf_counter() - t0
        answer = make_answer(response, ids, ds.height, ds.width, args.image_size)
        boxes = boxes_to_original(oracle_boxes(ds, e, answer.keyframe, args.image_size), ds.height, ds.width,
                                  args.image_size)
        answers[e.key] = answer
        t0 = time.perf_counter()
        masks = np.zeros((ds.num_frames, ds.height, ds.width), bool)
        # stock API, fp32 (no autocast); the fp32 memory cast patch is forced on (cpu device) for CUDA too
        with torch.inference_mode(), stock_fp32_memory_patch(sam_model, torch.device("cpu")), quiet():
            state = sam_model.init_state(video_path=str(ds.root / e.video))
            for i, b in enumerate(boxes):
                sam_model.add_new_points_or_box(state, frame_idx=answer.keyframe, obj_id=i,
                                                box=np.asarray(b, np.float32))
            for reverse in (False, True):
                for t, _, logits in sam_model.propagate_in_video(state, reverse=reverse):
                    masks[t] = (logits[:, 0] > 0).any(0).cpu().numpy()
            del state
        sync(args.device)
        times["sam2_s"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        folder = out_dir / e.video / e.exp_id
        folder.mkdir(parents=True, exist_ok=True)
        for name, m in zip(ds.names, masks):  # the release: one PIL save per frame, no temp files
            Image.fromarray((m * 255).astype(np.uint8)).save(folder / f"{name}.png")
        times["write_s"] += time.perf_counter() - t0
        masks_out[e.key] = masks
    total = sum(times.values())
    return {"expressions": len(exprs), "seconds": round(total, 3), "generate_batches": rounded_batches(engine.batch_stats),
            "per_expression_s": {k: round(v / len(exprs), 4) for k, v in times.items()},
            "expressions_per_hour": round(3600 * len(exprs) / total, 1), "masks": masks_out, "answers": answers}


# ----------------------------------------------------------------------------------------------------------------
# Ours


def our_way(ds: BenchDataset, policy, propagator, args, pred: Path) -> dict:
    from veason_r1.inference.pipeline import InferenceConfig
    from veason_r1.inference.predict import PredictConfig, load_stage1, run_stage1, run_stage2
    from veason_r1.models.fast_qwen import apply_fast_paths, remove_fast_paths
    from veason_r1.models.policy import HFEngine

    (remove_fast_paths if args.no_fast_paths else apply_fast_paths)(policy.model)
    engine = HFEngine(policy, image_size=args.image_size, batch_size=args.batch_size)
    config = PredictConfig(benchmark="bench", batch_size=args.batch_size, oracle_boxes=True,
                           inference=InferenceConfig(image_size=args.image_size, max_new_tokens=args.max_new_tokens))
    reset_peak(args.device)
    sync(args.device)
    t0 = time.perf_counter()
    s1 = run_stage1(ds, engine, pred, config, progress=False)
    sync(args.device)
    stage1_s = time.perf_counter() - t0
    peak1 = peak_gb(args.device)
    reset_peak(args.device)
    t0 = time.perf_counter()
    s2 = run_stage2(ds, propagator, pred, config, progress=False)
    sync(args.device)
    stage2_s = time.perf_counter() - t0
    n = len(ds.expressions)
    total = stage1_s + stage2_s
    return {
        "expressions": n, "seconds": round(total, 3),
        "per_expression_s": {"stage1_s": round(stage1_s / n, 4), "generate_s": round(s1["generate_s"] / n, 4),
                             "frames_s": round(s1["frames_s"] / n, 4), "stage2_s": round(stage2_s / n, 4),
                             "sam2_s": round(s2["sam2_s"] / n, 4), "write_s": round(s2["write_s"] / n, 4),
                             "write_wait_s": round(s2["write_wait_s"] / n, 4)},
        "expressions_per_hour": round(3600 * n / total, 1),
        "peak_gpu_gb": {"stage1": peak1, "stage2": peak_gb(args.device)},
        "generate_batches": rounded_batches(engine.batch_stats),
        "records": load_stage1(pred),
    }


# ----------------------------------------------------------------------------------------------------------------
# Greedy agreement without bf16 rounding


def fp32_agreement(ds: BenchDataset, policy, recorder: GenerateRecorder, args, n: int) -> dict:
    """Greedy token ids of the authors' way (transformers' code, one expression at a time, frames via PIL) vs ours
    (fast paths, one batch of `--batch-size`, frames via our reader) with the policy in fp32 and TF32 off.

    In bf16 any change of batch shape changes kernel rounding, and a random-weight model's near-tied argmaxes flip
    (vLLM has the same property); in fp32 the rounding is ~1e-7, so a token that still differs is a real difference
    in what the two ways compute.
    """
    import torch

    from veason_r1.inference.pipeline import policy_images, sample_frame_ids
    from veason_r1.models.fast_qwen import apply_fast_paths, remove_fast_paths
    from veason_r1.models.policy import GenerationRequest, HFEngine, SamplingConfig

    size = args.image_size
    exprs = ds.expressions[: max(n, min(args.batch_size, len(ds.expressions)))]
    ours_reqs = []
    for e in exprs:
        src = ds.frames(e.video)
        ids = sample_frame_ids(len(src))
        ours_reqs.append(GenerationRequest(e.text, ids, policy_images(src, ids, size)))
    authors_reqs = [authors_request(ds, e, size) for e in exprs[:n]]
    same_inputs = all(a.frame_ids == b.frame_ids and all(np.array_equal(x, y) for x, y in zip(a.images, b.images))
                      for a, b in zip(authors_reqs, ours_reqs))
    model = policy.model
    dtype = next(model.parameters()).dtype
    flags = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    model.float()
    sampling = SamplingConfig(max_new_tokens=args.max_new_tokens)
    try:
        t0 = time.perf_counter()
        remove_fast_paths(model)
        authors_engine = HFEngine(policy, size, batch_size=1)
        for r in authors_reqs:
            authors_engine.generate([r], sampling)
        authors_ids = recorder.take()
        if not args.no_fast_paths:
            apply_fast_paths(model)
        HFEngine(policy, size, batch_size=args.batch_size).generate(ours_reqs, sampling)
        ours_ids = recorder.take()[:n]
        seconds = time.perf_counter() - t0
    finally:
        model.to(dtype)
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = flags
    return {"dtype": "float32", "tf32": False, "compared": n, "ours_batch": len(ours_reqs),
            "same_input_frames": bool(same_inputs),
            "identical_greedy_token_ids": int(sum(a == b for a, b in zip(authors_ids, ours_ids))),
            "first_divergence_positions": [first_divergence(a, b) for a, b in zip(authors_ids, ours_ids)],
            "generated_tokens": [len(a) for a in authors_ids], "seconds": round(seconds, 1)}


# ----------------------------------------------------------------------------------------------------------------
# Long video


def long_video(args, sam_name: str) -> dict:
    import torch

    from veason_r1.data.video import ArraySource
    from veason_r1.models.sam2 import load_sam2

    n, h, w = args.long_frames, args.long_height, args.long_width
    frames = np.empty((n, h, w, 3), np.uint8)
    yy = np.linspace(0, 200, h, dtype=np.float32)[:, None]
    for t in range(n):
        frames[t, ..., 0] = (yy + 2 * t) % 255
        frames[t, ..., 1] = 100
        frames[t, ..., 2] = 60
        x = int((0.1 + 0.6 * t / max(1, n - 1)) * w)
        frames[t, h // 3 : h // 3 + h // 4, x : x + w // 8] = (230, 40, 40)
    box = np.asarray([[int(0.1 * w), h // 3, int(0.1 * w) + w // 8 - 1, h // 3 + h // 4 - 1]], np.float32)
    propagator = load_sam2(sam_name, device=args.device, offload=True)
    if str(args.device).startswith("cuda"):
        torch.cuda.empty_cache()
    reset_peak(args.device)
    sync(args.device)
    t0 = time.perf_counter()
    masks = propagator.propagate(ArraySource(frames), 0, box)
    sync(args.device)
    seconds = time.perf_counter() - t0
    out = {"frames": n, "height": h, "width": w, "sam2": sam_name, "offload": True, "seconds": round(seconds, 2),
           "frames_per_s": round(n / seconds, 2), "peak_gpu_gb": peak_gb(args.device),
           "host_peak_rss_gb": host_peak_gb(), "mask_frames_nonempty": int(masks.reshape(n, -1).any(1).sum())}
    if out["peak_gpu_gb"] is not None:
        out["within_16gb"] = out["peak_gpu_gb"] <= 16.0
    del propagator, masks, frames
    return out


# ----------------------------------------------------------------------------------------------------------------


def first_divergence(a: list[int], b: list[int]) -> int | None:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over frames of the per-frame IoU (1 where both are empty) of two (K, H, W) mask stacks."""
    from veason_r1.data.masks import iou_from_counts

    inter = np.logical_and(a, b).reshape(len(a), -1).sum(1)
    union = np.logical_or(a, b).reshape(len(a), -1).sum(1)
    return float(iou_from_counts(inter, union).mean())


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    if args.device == "cpu":
        torch.set_num_threads(1)  # shared CPU machines; the smoke test is tiny
    import transformers

    from veason_r1.models.sam2 import SAM2Propagator, build_sam2_model

    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="bench_eval_"))
    workdir.mkdir(parents=True, exist_ok=True)
    result: dict = {
        "what": "eval throughput: authors' way vs ours (random weights: speed and memory only)",
        "device": torch.cuda.get_device_name(0) if args.device.startswith("cuda") else platform.processor() or "cpu",
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "transformers": transformers.__version__},
        "fast_paths": not args.no_fast_paths,
        "args": {k: v for k, v in vars(args).items() if k != "out"},
    }
    try:
        if not args.long_only:
            ds = BenchDataset(workdir / "videos", args.videos, args.exps_per_video, args.frames, args.height,
                              args.width)
            t0 = time.perf_counter()
            ds.write()
            result["dataset"] = {"videos": args.videos, "expressions": len(ds.expressions), "frames": args.frames,
                                 "size": [args.height, args.width], "write_s": round(time.perf_counter() - t0, 1)}
            t0 = time.perf_counter()
            policy, desc = build_policy(args, workdir)
            result["policy"] = desc
            result["policy_load_s"] = round(time.perf_counter() - t0, 1)
            from veason_r1.inference.pipeline import policy_images, sample_frame_ids
            from veason_r1.models.policy import GenerationRequest, _stop_ids, build_inputs

            e0 = ds.expressions[0]
            src = ds.frames(e0.video)
            ids = sample_frame_ids(len(src))
            batch = build_inputs(policy.processor, [GenerationRequest(e0.text, ids, policy_images(src, ids,
                                                                                                 args.image_size))],
                                 args.image_size)
            result["prompt_tokens"] = int(batch["input_ids"].shape[1])
            recorder = GenerateRecorder(policy.model, _stop_ids(policy.processor.tokenizer))

            sam_model = build_sam2_model(args.sam2, None, args.device, seed=args.seed)  # fp32 weights
            propagator = SAM2Propagator(sam_model)  # one set of weights for both ways (ours: bf16 autocast on CUDA)

            # warm-up (kernels, allocator) so neither way pays start-up costs
            our_warm = workdir / "warm"
            warm_ds = BenchDataset(workdir / "videos", 1, 1, args.frames, args.height, args.width)
            our_way(warm_ds, policy, propagator, args, our_warm)
            authors_way(warm_ds, warm_ds.expressions[:1], policy, sam_model, args, workdir / "warm_authors")
            recorder.take()

            n_auth = min(args.authors_exps, len(ds.expressions))
            reset_peak(args.device)
            authors = authors_way(ds, ds.expressions[:n_auth], policy, sam_model, args, workdir / "authors")
            authors["peak_gpu_gb"] = peak_gb(args.device)
            authors_ids = recorder.take()
            ours = our_way(ds, policy, propagator, args, workdir / "ours")
            ours_ids = recorder.take()[:n_auth]

            same = [a == b for a, b in zip(authors_ids, ours_ids)]
            div = [first_divergence(a, b) for a, b in zip(authors_ids, ours_ids)]
            ious = []
            from PIL import Image

            for e in ds.expressions[:n_auth]:
                saved = np.stack([np.asarray(Image.open(workdir / "ours" / e.video / e.exp_id / f"{n}.png")) > 0
                                  for n in ds.names])
                ious.append(mask_iou(authors["masks"][e.key], saved))
            keyframes_same = sum(authors["answers"][e.key].keyframe == ours["records"][e.key]["keyframe"]
                                 for e in ds.expressions[:n_auth])
            for part in (authors, ours):
                part.pop("masks", None), part.pop("answers", None), part.pop("records", None)
            result["authors_way"] = authors
            result["ours"] = ours
            result["speedup"] = round(ours["expressions_per_hour"] / authors["expressions_per_hour"], 2)
            result["generation_speedup"] = round(
                authors["per_expression_s"]["generate_s"] / max(ours["per_expression_s"]["generate_s"], 1e-9), 2)
            result["agreement"] = {
                "compared": len(same), "identical_greedy_token_ids": int(sum(same)),
                "first_divergence_positions": div, "generated_tokens": [len(a) for a in authors_ids],
                "keyframes_equal": int(keyframes_same), "mask_mean_iou_fp32_stock_vs_ours": round(float(np.mean(ious)), 4),
                "policy_dtype": args.policy_dtype,
            }
            n_agree = n_auth if args.agreement_exps is None else min(args.agreement_exps, len(ds.expressions))
            if n_agree > 0:
                result["agreement_fp32"] = fp32_agreement(ds, policy, recorder, args, n_agree)
            del policy, propagator, sam_model, recorder
            if args.device.startswith("cuda"):
                torch.cuda.empty_cache()
        if not args.skip_long:
            result["long_video"] = long_video(args, args.sam2)
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
