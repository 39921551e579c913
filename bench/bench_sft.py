"""Benchmark LoRA CoT SFT at the real Qwen2.5-VL-3B (or 7B) size: training samples/s and peak GPU memory.

Random weights, built offline from a config (no hub): the tiny tokenizer/processor of veason_r1.models.tiny with the
real 3B/7B text and vision sizes (vocab padded to the real 151936/152064 rows, so the embedding, LM head and logits
cost what they cost in the real model). Data: synthetic CoT samples with the real prompt (8 frames of 560x560 =
3200 visual tokens) and a ~`--cot-words`-word reasoning, exported in the SFT format. Training runs through
LLaMA-Factory's own trainer with the recipe of training_scripts/sft_qwen2_5vl_3b_lora.yaml (LoRA r16 on the LLM,
vision frozen, bf16, gradient checkpointing), `--warmup` steps untimed, then `--steps` timed steps.
`--engine peft` measures the same step with a plain transformers + peft loop (a fallback where LLaMA-Factory cannot
be imported). Numbers come from random weights: they measure speed and memory, never quality.

GPU:  python bench/bench_sft.py --device cuda --size 3b --out bench_sft_3b.json
CPU smoke (tiny model, 112px frames):  python bench/bench_sft.py --device cpu --tiny --out /tmp/bench_sft.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("DISABLE_VERSION_CHECK", "1")  # LLaMA-Factory 0.9.5 pins transformers<=5.6 (GPU box: newer)

from veason_r1.config import FRAMES, IMAGE_SIZE  # noqa: E402
from veason_r1.models.real_size import REAL_SIZES as SIZES  # noqa: E402  (real Qwen2.5-VL 3B/7B sizes)

WORDS = ("the dog runs across the yard while a person in a red shirt throws a ball near the fence and then "
         "walks to the left side of the frame where the target is clearly visible").split()


def build_model(out_dir: Path, size: str, tiny: bool, device: str) -> dict:
    """Write a random-weight Qwen2.5-VL folder at the real size (or the tiny one) and return its stats."""
    import torch

    from veason_r1.models.real_size import build_real_size_model
    from veason_r1.models.tiny import make_tiny_qwen

    if tiny:
        make_tiny_qwen(out_dir, seed=0)
        return {"params": None}
    init_device = "cuda" if device.startswith("cuda") else "cpu"
    model, processor = build_real_size_model(size, init_device, "bfloat16", seed=0)
    n_params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    del model
    if init_device == "cuda":
        torch.cuda.empty_cache()
    return {"params": n_params}


def write_data(out_dir: Path, n_samples: int, frames: int, image_size: int, cot_words: int) -> Path:
    """n synthetic CoT samples in the SFT export format (same prompt/answer builders as RL and inference)."""
    import numpy as np
    from PIL import Image

    from veason_r1.prompting import build_prompt, format_response

    rng = random.Random(0)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for s in range(n_samples):
        frame_ids = sorted(rng.sample(range(8 * frames), frames))
        images = []
        for j, t in enumerate(frame_ids):
            rel = f"images/{s:04d}_{t:03d}.jpg"
            arr = np.random.default_rng(s * 100 + j).integers(0, 256, (image_size, image_size, 3), dtype=np.uint8)
            Image.fromarray(arr).save(out_dir / rel, quality=90)
            images.append(rel)
        cot = " ".join(rng.choice(WORDS) for _ in range(cot_words))
        box = [rng.randint(0, 200), rng.randint(0, 200), rng.randint(300, IMAGE_SIZE), rng.randint(300, IMAGE_SIZE)]
        rows.append({
            "messages": [
                {"role": "system", "content": "You are a helpful assistant."},
                {"role": "user", "content": build_prompt("the dog that runs to the fence", frame_ids)},
                {"role": "assistant", "content": format_response(cot, rng.choice(frame_ids), [box])},
            ],
            "images": images,
        })
    (out_dir / "veason_cot.json").write_text(json.dumps(rows))
    info = {"veason_cot": {
        "file_name": "veason_cot.json", "formatting": "sharegpt",
        "columns": {"messages": "messages", "images": "images"},
        "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant",
                 "system_tag": "system"},
    }}
    (out_dir / "dataset_info.json").write_text(json.dumps(info))
    return out_dir


class _Timer:
    """Per-step wall times (device synchronised), peak memory from the first timed step on."""

    def __init__(self, warmup: int, device: str):
        self.warmup, self.device = warmup, device
        self.times: list[float] = []
        self.step = 0
        self._t = 0.0

    def _sync(self):
        import torch

        if self.device.startswith("cuda"):
            torch.cuda.synchronize()

    def begin(self):
        import torch

        self._sync()
        if self.step == self.warmup and self.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        self._t = time.perf_counter()

    def end(self):
        self._sync()
        if self.step >= self.warmup:
            self.times.append(time.perf_counter() - self._t)
        self.step += 1


def run_llamafactory(model_dir: Path, data_dir: Path, work: Path, args, timer: _Timer) -> dict:
    import dataclasses

    from transformers import TrainerCallback

    from veason_r1.sft.config import SFTConfig

    class Cb(TrainerCallback):
        def on_step_begin(self, *a, **k):
            timer.begin()

        def on_step_end(self, *a, **k):
            timer.end()

    cfg = SFTConfig(
        model_name_or_path=str(model_dir), dataset_dir=str(data_dir), output_dir=str(work / "adapter"),
        export_dir=None, image_size=args.image_size, max_steps=args.warmup + args.steps,
        per_device_train_batch_size=args.batch_size, gradient_accumulation_steps=args.grad_accum,
        logging_steps=1, save_steps=10**9, save_total_limit=1, plot_loss=False,
        preprocessing_num_workers=None,  # a few dozen samples: worker start-up would cost more than it saves
        dataloader_num_workers=0 if args.tiny else 4, gradient_checkpointing=not args.no_gradient_checkpointing,
        flash_attn=args.attn,
    )
    cfg, _ = cfg.for_device(args.device.startswith("cuda"))
    if args.tiny:
        cfg = dataclasses.replace(cfg, cutoff_len=2048)
    from llamafactory.train.tuner import run_exp

    run_exp(cfg.to_llamafactory(include_export=False), callbacks=[Cb()])
    res = json.loads((work / "adapter" / "train_results.json").read_text())
    return {"recipe": {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("dataset_dir", "output_dir")},
            "llamafactory_train_results": res}


def run_peft(model_dir: Path, data_dir: Path, args, timer: _Timer) -> dict:
    """The same LoRA step with transformers + peft (LoRA r16/a32 on the LLM linears, vision frozen)."""
    import numpy as np
    import torch
    from peft import LoraConfig, get_peft_model
    from PIL import Image

    from veason_r1.models.policy import GenerationRequest, build_inputs, load_policy
    from veason_r1.sft.config import SFTConfig

    rec = SFTConfig()
    dtype = "bfloat16" if args.device.startswith("cuda") else "float32"
    policy = load_policy(model_dir, device=args.device, dtype=dtype, attn="sdpa" if args.attn == "auto" else args.attn)
    model = policy.model
    targets = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
    model = get_peft_model(model, LoraConfig(r=rec.lora_rank, lora_alpha=rec.lora_alpha,
                                             lora_dropout=rec.lora_dropout, target_modules=targets))
    for n, p in model.named_parameters():
        if "lora_" in n:
            p.data = p.data.float()
    if not args.no_gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=rec.learning_rate, weight_decay=0.0)
    rows = json.loads((data_dir / "veason_cot.json").read_text())
    import re

    def batch_of(i):
        reqs, resps = [], []
        for r in rows[i * args.batch_size:(i + 1) * args.batch_size]:
            user = r["messages"][1]["content"]
            frame_ids = [int(x) for x in re.findall(r"\((\d+)s\)<image>", user)]
            expr = re.search(r"expression: '(.*?)'", user).group(1)
            imgs = [np.asarray(Image.open(data_dir / p).convert("RGB")) for p in r["images"]]
            reqs.append(GenerationRequest(expr, frame_ids, imgs))
            resps.append(r["messages"][2]["content"] + "<|im_end|>\n")
        b = build_inputs(policy.processor, reqs, args.image_size, responses=resps)
        labels = b["input_ids"].masked_fill(b.pop("response_mask") == 0, -100)
        b = b.to(args.device)
        b["pixel_values"] = b["pixel_values"].to(next(model.parameters()).dtype)
        return b, labels.to(args.device)

    step = 0
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if args.device.startswith("cuda") else None
    for _ in range(args.warmup + args.steps):
        timer.begin()
        for _ in range(args.grad_accum):
            b, labels = batch_of(step % max(1, len(rows) // args.batch_size))
            step += 1
            if autocast is not None:
                with autocast:
                    loss = model(**b, labels=labels).loss / args.grad_accum
            else:
                loss = model(**b, labels=labels).loss / args.grad_accum
            loss.backward()
        torch.nn.utils.clip_grad_norm_(params, rec.max_grad_norm)
        opt.step()
        opt.zero_grad(set_to_none=True)
        timer.end()
    return {"trainable_params": sum(p.numel() for p in params)}


def mean_sequence_length(data_dir: Path, model_dir: Path, image_size: int) -> float:
    """Tokens per sample as the policy tokenizes it (prompt incl. visual tokens + response)."""
    from veason_r1.models.policy import load_processor, visual_tokens_per_frame

    proc = load_processor(model_dir)
    rows = json.loads((data_dir / "veason_cot.json").read_text())[:8]
    lens = []
    for r in rows:
        text = proc.apply_chat_template([
            {"role": "system", "content": r["messages"][0]["content"]},
            {"role": "user", "content": r["messages"][1]["content"].replace("<image>", "")},
            {"role": "assistant", "content": r["messages"][2]["content"]},
        ], tokenize=False)
        per_image = visual_tokens_per_frame(image_size) + 2  # + <|vision_start|>, <|vision_end|>
        lens.append(len(proc.tokenizer(text)["input_ids"]) + len(r["images"]) * per_image)
    return sum(lens) / len(lens)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--size", choices=sorted(SIZES), default="3b")
    p.add_argument("--tiny", action="store_true", help="tiny model and 112px frames (CPU smoke test)")
    p.add_argument("--engine", choices=("llamafactory", "peft"), default="llamafactory")
    p.add_argument("--frames", type=int, default=FRAMES.sft_frames)
    p.add_argument("--image-size", type=int, default=None, help=f"default {IMAGE_SIZE} (112 with --tiny)")
    p.add_argument("--batch-size", type=int, default=2, help="per-device batch (recipe: 2)")
    p.add_argument("--grad-accum", type=int, default=1, help="micro-batches per timed optimizer step")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--steps", type=int, default=8, help="timed optimizer steps")
    p.add_argument("--cot-words", type=int, default=150, help="reasoning length of the synthetic answers")
    p.add_argument("--attn", default="auto", help="LLaMA-Factory flash_attn: auto, sdpa, fa2, disabled")
    p.add_argument("--no-gradient-checkpointing", action="store_true")
    p.add_argument("--workdir", type=Path, default=None, help="where the model/data go (default: a temp dir)")
    p.add_argument("--out", type=Path, default=None, help="write the results JSON here")
    args = p.parse_args(argv)
    args.image_size = args.image_size or (112 if args.tiny else IMAGE_SIZE)

    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("error: --device cuda but no CUDA device; use --device cpu --tiny", file=sys.stderr)
        return 2
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench_sft_"))
    work.mkdir(parents=True, exist_ok=True)
    model_dir, data_dir = work / "model", work / "data"
    t0 = time.perf_counter()
    stats = build_model(model_dir, args.size, args.tiny, args.device)
    build_s = time.perf_counter() - t0
    n_samples = (args.warmup + args.steps) * args.batch_size * args.grad_accum
    write_data(data_dir, n_samples, args.frames, args.image_size, args.cot_words)
    seq_len = mean_sequence_length(data_dir, model_dir, args.image_size)
    timer = _Timer(args.warmup, args.device)
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    if args.engine == "llamafactory":
        extra = run_llamafactory(model_dir, data_dir, work, args, timer)
    else:
        extra = run_peft(model_dir, data_dir, args, timer)
    times = sorted(timer.times)
    samples_per_step = args.batch_size * args.grad_accum
    result = {
        "bench": "sft_lora",
        "engine": args.engine,
        "model": "tiny" if args.tiny else f"qwen2.5-vl-{args.size} (random weights)",
        "params": stats["params"],
        "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or "cpu",
        "frames": args.frames,
        "image_size": args.image_size,
        "mean_tokens_per_sample": round(seq_len, 1),
        "batch_size": args.batch_size,
        "grad_accum": args.grad_accum,
        "gradient_checkpointing": not args.no_gradient_checkpointing,
        "timed_steps": len(times),
        "step_time_s_mean": sum(times) / len(times) if times else None,
        "step_time_s_median": times[len(times) // 2] if times else None,
        "samples_per_s": samples_per_step * len(times) / sum(times) if times else None,
        "tokens_per_s": seq_len * samples_per_step * len(times) / sum(times) if times else None,
        "peak_mem_allocated_gib": torch.cuda.max_memory_allocated() / 2**30 if args.device.startswith("cuda") else None,
        "peak_mem_reserved_gib": torch.cuda.max_memory_reserved() / 2**30 if args.device.startswith("cuda") else None,
        "build_model_s": round(build_s, 1),
        "versions": _versions(),
        **extra,
    }
    shown = {k: v for k, v in result.items() if k not in ("recipe", "versions")}
    print(json.dumps(shown, indent=2, default=str))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2, default=str))
        print(f"wrote {args.out}")
    return 0


def _versions() -> dict:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for name in ("torch", "transformers", "tokenizers", "peft", "accelerate", "llamafactory", "datasets", "trl"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = None
    return out


if __name__ == "__main__":
    sys.exit(main())
