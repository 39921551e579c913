"""One local GRPO step at the real Qwen2.5-VL-3B size with random weights: time per phase and peak GPU memory.

Runs `veason_r1.rl.local_trainer` (the same code as `veason-r1 rl --backend local`) on the synthetic benchmark
with 560x560 frames, N=6 frames, fp32 master weights + bf16 autocast, gradient checkpointing, a bf16 reference
model, and the METHOD.md batch (16 prompts x 8 rollouts) unless told otherwise. Random weights never emit a stop
token, so every response runs to --max-new-tokens: the worst-case length. SAM2 (the consistency term) is used when
the `sam2` package is importable (tiny SAM2 config, random weights: the timing of the term, not its value);
otherwise the reward runs without it and the JSON says so. Numbers are throughput/memory only, never method results.

GPU:  python bench/bench_grpo.py --out bench_grpo.json
CPU smoke (tiny model): python bench/bench_grpo.py --device cpu --tiny --out /tmp/bench_grpo.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

QWEN2_5_VL_3B = dict(
    text=dict(hidden_size=2048, intermediate_size=11008, num_hidden_layers=36, num_attention_heads=16,
              num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True,
              rope_scaling={"type": "mrope", "mrope_section": [16, 24, 24], "rope_type": "default"}),
    vision=dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=2048,
                fullatt_block_indexes=[7, 15, 23, 31], window_size=112, patch_size=14, spatial_merge_size=2,
                temporal_patch_size=2, in_chans=3),
)


def build_real_size_model(tiny_dir: Path, device: str):
    """Qwen2.5-VL-3B architecture with random weights (fp32), using the tiny folder's processor and tokenizer.
    The config is rebuilt from a dict so derived fields (layer_types...) follow the real layer count; the tiny
    folder's special-token ids are kept (they lie inside the real vocabulary size)."""
    import torch
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    d = json.loads((tiny_dir / "config.json").read_text())
    text = {k: v for k, v in d.get("text_config", {}).items() if k not in ("layer_types",)}
    t = dict(QWEN2_5_VL_3B["text"])
    rope = t.pop("rope_scaling")
    text.update(t, max_window_layers=t["num_hidden_layers"])
    if "rope_parameters" in text:
        text["rope_parameters"] = {**text["rope_parameters"], "mrope_section": rope["mrope_section"]}
    top = {k: v for k, v in d.items() if k not in ("text_config", "vision_config", "layer_types")}
    top.update(t, max_window_layers=t["num_hidden_layers"], rope_scaling={**d.get("rope_scaling", {}), **rope})
    vision = {**d["vision_config"], **{k: v for k, v in QWEN2_5_VL_3B["vision"].items() if k != "in_chans"}}
    cfg = Qwen2_5_VLConfig(**top, text_config=text, vision_config=vision)
    with torch.device(device):
        model = Qwen2_5_VLForConditionalGeneration._from_config(cfg, dtype=torch.float32)
    return model.eval()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--tiny", action="store_true", help="tiny model, 112 px, 2 prompts x 2 (CPU smoke)")
    p.add_argument("--prompts", type=int, default=16)
    p.add_argument("--n", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=256, help="1024 in the paper; random weights use it all")
    p.add_argument("--rollout-batch", type=int, default=64, help="sequences per generate() call")
    p.add_argument("--micro-batch", type=int, default=2, help="sequences per forward/backward")
    p.add_argument("--image-size", type=int, default=560)
    p.add_argument("--no-sam2", action="store_true")
    p.add_argument("--workdir", default=None)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    if args.tiny:
        args.prompts, args.n, args.max_new_tokens, args.image_size = min(args.prompts, 2), min(args.n, 2), 8, 112

    import torch

    torch.set_num_threads(max(1, min(8, os.cpu_count() or 1)) if args.device != "cpu" else 1)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from veason_r1.data.synthetic import SynthConfig, write_benchmark
    from veason_r1.models.policy import Policy, load_processor
    from veason_r1.models.tiny import make_tiny_qwen
    from veason_r1.rl.config import load_config
    from veason_r1.rl.local_trainer import LocalGRPOTrainer

    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_grpo_"))
    synth, tiny = work / "synth", work / "tiny"
    if not (synth / "mask_dict.json").exists():
        write_benchmark(synth, SynthConfig(num_videos=max(8, args.prompts), seed=0))
    if not (tiny / "config.json").exists():
        make_tiny_qwen(tiny, seed=0)

    result: dict = {"device": args.device, "tiny": args.tiny, "prompts": args.prompts, "n": args.n,
                    "max_new_tokens": args.max_new_tokens, "image_size": args.image_size,
                    "micro_batch": args.micro_batch, "rollout_batch": args.rollout_batch,
                    "torch": torch.__version__}
    if args.device.startswith("cuda"):
        result["gpu"] = torch.cuda.get_device_name(0)
    use_sam2 = not args.no_sam2
    if use_sam2:
        try:
            import sam2  # noqa: F401
        except ImportError:
            use_sam2 = False
            result["note"] = "sam2 not installed: reward without the consistency term"
    result["sam2"] = use_sam2
    from veason_r1.rl.algos import SOURCE

    result["algos"] = SOURCE  # "verl" (core_algos) or "port" (verl not importable on this machine)
    try:
        t0 = time.perf_counter()
        if args.tiny:
            from veason_r1.models.policy import load_policy

            policy = load_policy(tiny, args.device, dtype="float32")
        else:
            policy = Policy(build_real_size_model(tiny, args.device), load_processor(tiny), args.device, tiny)
        result["params_b"] = sum(x.numel() for x in policy.model.parameters()) / 1e9
        cfg = load_config(None, [
            f"data.train_root={synth}", "data.val_root=null", f"data.image_size={args.image_size}",
            f"data.train_batch_size={args.prompts}", f"data.max_response_length={args.max_new_tokens}",
            f"model.path={tiny}", f"model.enable_gradient_checkpointing={not args.tiny}",
            f"rollout.n={args.n}", f"rollout.batch_size={args.rollout_batch}",
            f"actor.ppo_mini_batch_size={args.prompts}", f"actor.ppo_micro_batch_size_per_gpu={args.micro_batch}",
            f"reward.use_consistency={use_sam2}", f"trainer.device={args.device}",
            f"trainer.dtype={'float32' if args.device == 'cpu' else 'bfloat16'}",
            f"trainer.default_local_dir={work / 'run'}", "trainer.logger=[]", "trainer.resume_mode=disable",
            "trainer.total_training_steps=1", "trainer.save_freq=-1", "trainer.test_freq=-1",
        ])
        propagator = None
        if use_sam2:
            from veason_r1.models.sam2 import load_sam2

            propagator = load_sam2("tiny", device=args.device)
        trainer = LocalGRPOTrainer(cfg, propagator=propagator, policy=policy, verbose=False)
        result["setup_s"] = time.perf_counter() - t0
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            result["memory_after_setup_gib"] = torch.cuda.memory_allocated() / 2**30
        t0 = time.perf_counter()
        metrics = trainer.train_step()
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
            result["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
        result["step_s"] = time.perf_counter() - t0
        result["phases_s"] = {k.split("/", 1)[1]: v for k, v in metrics.items() if k.startswith("timing/")}
        result["sequences"] = args.prompts * args.n
        result["response_length_mean"] = metrics["response_length/mean"]
        result["loss"] = metrics["actor/loss"]
        result["ok"] = bool(torch.isfinite(torch.tensor(metrics["actor/loss"])))
    except torch.OutOfMemoryError as e:  # say what did not fit
        result.update(ok=False, error=f"CUDA out of memory: {str(e).splitlines()[0]}")
        if args.device.startswith("cuda"):
            result["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    except Exception as e:  # noqa: BLE001 - the JSON records the failure for the lead
        result.update(ok=False, error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc()[-2000:])
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return 0 if result.get("ok") else 1


if __name__ == "__main__":
    raise SystemExit(main())
