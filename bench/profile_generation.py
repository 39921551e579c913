"""Where batched HF generation spends its time (3B random policy, 8 frames of 560x560, greedy).

For each variant (batch size, vision attention per chunk or batched, dynamic or static+compiled KV cache) it
times, in order: building the inputs on the CPU (chat template + image processor), the vision encoder alone, a
prefill (`generate` with 1 new token) and a `generate` with `--new-tokens`. The decode cost per step is the
median gap between successive token steps inside that one `generate` call (a logits processor stamps each step,
device synchronised), so it never mixes two calls' noise: (generate - prefill) from two calls went negative on a
busy CPU. It also profiles a few eager decode steps at batch 16 (top ops by CPU and
by CUDA time, fast paths on), and checks that the batched vision attention gives bit-identical features.

Random weights: the numbers measure speed only.

    PYTHONPATH=.:<sam2-free site> python bench/profile_generation.py --out $OUT/profile_generation.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from veason_r1.config import FRAMES, IMAGE_SIZE  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--variants", default="b1,b1,b16,b16v,b16vg,b32vg,b64vg",
                   help="comma list: b<batch>[v: batched vision attention][g: grouped decode attention]"
                        "[s: static cache + compile]; the first runs cold (warm-up)")
    p.add_argument("--text-layers", type=int, default=36)
    p.add_argument("--vision-depth", type=int, default=32)
    p.add_argument("--image-size", type=int, default=IMAGE_SIZE)
    p.add_argument("--profile-steps", type=int, default=4, help="eager decode steps profiled at batch 16 (0: skip)")
    return p.parse_args(argv)


def sync(device):
    import torch

    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def timed(device, fn, *args, **kwargs):
    """(fn(*args, **kwargs), seconds), with the device synchronised before and after."""
    sync(device)
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    sync(device)
    return out, time.perf_counter() - t0


def make_requests(n: int, image_size: int):
    from veason_r1.models.policy import GenerationRequest

    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 255, (image_size, image_size, 3), dtype=np.uint8) for _ in range(FRAMES.eval_frames)]
    ids = [round(i * 99 / (FRAMES.eval_frames - 1)) for i in range(FRAMES.eval_frames)]  # 0, 14, 28, 42, 57, ...
    return [GenerationRequest(f"the object number {i} that moves to the left", ids, frames) for i in range(n)]


def parse_variant(v: str):
    body = v[1:]
    digits = "".join(ch for ch in body if ch.isdigit())
    return int(digits), "v" in body, "g" in body, "s" in body


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch
    import transformers
    from transformers import LogitsProcessorList

    from veason_r1.models.fast_qwen import (
        fast_vision_attention,
        patch_text_attention,
        unpatch_text_attention,
        unpatch_vision_attention,
    )
    from veason_r1.models.policy import HFEngine, Policy, SamplingConfig, StepClock, build_inputs
    from veason_r1.models.real_size import build_real_size_model

    dev = args.device
    model, processor = build_real_size_model("3b", dev, args.dtype, text_layers=args.text_layers,
                                             vision_depth=args.vision_depth)
    processor.tokenizer.padding_side = "left"
    engine = HFEngine(Policy(model, processor, dev), args.image_size)
    result = {"what": "HF generation profile (random weights: speed only)",
              "device": torch.cuda.get_device_name(0) if dev.startswith("cuda") else "cpu",
              "versions": {"python": platform.python_version(), "torch": torch.__version__,
                           "transformers": transformers.__version__},
              "args": {k: v for k, v in vars(args).items() if k != "out"}, "variants": {}}
    dtype = next(model.parameters()).dtype

    # identity of the batched vision attention on real inputs
    batch = build_inputs(processor, make_requests(2, args.image_size), args.image_size).to(dev)
    pv, grid = batch["pixel_values"].to(dtype), batch["image_grid_thw"]
    with torch.inference_mode():
        ref, _ = timed(dev, model.model.visual, pv, grid_thw=grid)
        fast_vision_attention(model)
        new, _ = timed(dev, model.model.visual, pv, grid_thw=grid)
        unpatch_vision_attention(model)
    ref = getattr(ref, "pooler_output", ref)
    new = getattr(new, "pooler_output", new)
    result["vision_identity"] = {"frames": int(grid.shape[0]), "bit_identical": bool(torch.equal(ref, new)),
                                 "max_abs_diff": float((ref.float() - new.float()).abs().max())}
    print(json.dumps(result["vision_identity"]), flush=True)

    for variant in args.variants.split(","):
        bs, fast_vision, grouped, static = parse_variant(variant)
        (fast_vision_attention if fast_vision else unpatch_vision_attention)(model)
        (patch_text_attention if grouped else unpatch_text_attention)(model)
        reqs = make_requests(bs, args.image_size)
        batch, t_proc = timed("cpu", build_inputs, processor, reqs, args.image_size)
        batch = batch.to(dev)
        batch["pixel_values"] = batch["pixel_values"].to(dtype)
        row = {"batch": bs, "batched_vision_attention": fast_vision, "grouped_decode_attention": grouped,
               "static_compiled_cache": static,
               "prompt_tokens": int(batch["input_ids"].shape[1]), "inputs_s": round(t_proc, 3)}
        try:
            torch.cuda.reset_peak_memory_stats() if dev.startswith("cuda") else None
            with torch.inference_mode():
                _, t_vis = timed(dev, model.model.visual, batch["pixel_values"], grid_thw=batch["image_grid_thw"])
                row["vision_s"] = round(t_vis, 3)
                kw = engine.generate_kwargs(SamplingConfig(max_new_tokens=1))
                if static:
                    kw["cache_implementation"] = "static"
                _, t_pre = timed(dev, model.generate, **batch, **kw)
                row["prefill_s"] = round(t_pre, 3)
                kw["max_new_tokens"] = args.new_tokens
                if static:  # first call compiles; time the second
                    _, row["first_generate_s"] = timed(dev, model.generate, **batch, **kw)
                    row["first_generate_s"] = round(row["first_generate_s"], 2)
                clock = StepClock(dev, every_step=True)
                kw["logits_processor"] = LogitsProcessorList([*kw.get("logits_processor", []), clock])
                out, t_gen = timed(dev, model.generate, **batch, **kw)
            new_tok = out.shape[1] - batch["input_ids"].shape[1]
            step_ms = clock.decode_ms_per_step()
            row.update(generate_s=round(t_gen, 3), new_tokens=int(new_tok), decode_ms_per_step=step_ms)
            if step_ms is not None:
                row["per_expression_s_at_256_tokens"] = round((t_pre + 255 * step_ms / 1000) / bs, 3)
            if dev.startswith("cuda"):
                row["peak_gpu_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        except Exception as e:  # noqa: BLE001 - a failing variant is a result too
            row["error"] = f"{type(e).__name__}: {e}"[:500]
        print(json.dumps(row), flush=True)
        result["variants"][f"{len(result['variants'])}:{variant}"] = row
        Path(args.out).write_text(json.dumps(result, indent=2))

    if args.profile_steps > 0:
        from torch.profiler import ProfilerActivity, profile

        fast_vision_attention(model)
        patch_text_attention(model)
        reqs = make_requests(16, args.image_size)
        batch = build_inputs(processor, reqs, args.image_size).to(dev)
        batch["pixel_values"] = batch["pixel_values"].to(dtype)
        kw = engine.generate_kwargs(SamplingConfig(max_new_tokens=1 + args.profile_steps))
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.startswith("cuda") else [])
        prof = profile(activities=acts)
        from transformers import LogitsProcessor, LogitsProcessorList

        class StartAfterPrefill(LogitsProcessor):  # first call = end of the prefill: profile decode steps only
            started = False

            def __call__(self, input_ids, scores):
                if not self.started:
                    self.started = True
                    prof.start()
                return scores

        with torch.inference_mode():
            model.generate(**batch, **kw, logits_processor=LogitsProcessorList([StartAfterPrefill()]))
            sync(dev)
        prof.stop()
        key = "self_cuda_time_total" if dev.startswith("cuda") else "self_cpu_time_total"
        result["profile_decode_steps"] = args.profile_steps
        result["profile_by_cpu"] = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25)
        result["profile_by_device"] = prof.key_averages().table(sort_by=key, row_limit=25)
        print(result["profile_by_cpu"], flush=True)
        print(result["profile_by_device"], flush=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
