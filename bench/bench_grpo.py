"""One local GRPO step at the real Qwen2.5-VL-3B size with random weights: time per phase and peak GPU memory.

Runs `veason_r1.rl.local_trainer` (the same code as `veason-r1 rl --backend local`) on the synthetic benchmark
with 560x560 frames, N=6 frames, fp32 master weights + bf16 autocast, gradient checkpointing, a bf16 reference
model, and the docs/method.md batch (16 prompts x 8 rollouts) unless told otherwise. Random weights never emit a stop
token, so every response runs to --max-new-tokens: the worst-case length. SAM2 (the consistency term) is used when
the `sam2` package is importable (tiny SAM2 config, random weights: the timing of the term, not its value);
otherwise the reward runs without it and the JSON says so. Random responses never parse, so SAM2 is not actually
called: the reward phase here times the text terms only. Numbers are throughput/memory only, never method results.

Every phase (prepare data, build model, trainer setup, data, each rollout chunk, reward, old/ref log-probs,
update) is printed as it starts and ends (flushed), and the JSON is rewritten after each one, so a run killed by a
time limit still leaves what it measured. `--time-budget S` stops cleanly: between phases when the budget is spent,
and from a watchdog thread (JSON written, exit code 3) when one phase alone overruns it.

The 3B model is built directly on the GPU (`torch.device("cuda")`, no CPU init, nothing written to disk); only the
tiny folder (~1 MB, for the tokenizer and processor) is saved. Rollouts decode with a transient bf16 copy of the
weights (verl's vLLM rollout also holds bf16 weights); `--no-rollout-copy` times the old autocast-over-fp32 path.

GPU:  python bench/bench_grpo.py --out bench_grpo.json --time-budget 280
CPU smoke (tiny model): python bench/bench_grpo.py --device cpu --tiny --out /tmp/bench_grpo.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
import traceback
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


class BudgetSpent(RuntimeError):
    """Raised at a phase boundary once --time-budget is spent."""


def build_real_size_model(tiny_dir: Path, device: str, dtype: str = "float32"):
    """Qwen2.5-VL-3B architecture with random weights, created directly on `device` (no CPU init, no disk)
    (`veason_r1.models.real_size`); generation stops at the tiny folder's eos/pad ids (same tokenizer)."""
    from veason_r1.models import real_size

    model, _ = real_size.build_real_size_model("3b", device, dtype, seed=0)
    d = json.loads((tiny_dir / "config.json").read_text())
    stop = [d.get("eos_token_id"), d.get("pad_token_id") or d.get("bos_token_id")]
    model.generation_config.eos_token_id = [s for s in stop if s is not None]
    model.generation_config.pad_token_id = stop[-1]
    return model.eval()


class Recorder:
    """The result dict, rewritten atomically to --out after every phase; prints each phase with flush."""

    def __init__(self, out: Path, budget: float | None, device: str):
        self.out = out
        self.budget = budget
        self.device = device
        self.t_start = time.perf_counter()
        self.result: dict = {"ok": False, "phases_s": {}, "phase_order": [], "current_phase": None}
        self.lock = threading.Lock()
        self.done = False

    def elapsed(self) -> float:
        return time.perf_counter() - self.t_start

    def memory(self) -> dict:
        if not self.device.startswith("cuda"):
            return {}
        import torch

        return {"alloc_gib": round(torch.cuda.memory_allocated() / 2**30, 2),
                "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)}

    def write(self) -> None:
        with self.lock:
            self.result["elapsed_s"] = round(self.elapsed(), 2)
            self.out.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.out.with_name(self.out.name + ".tmp")
            tmp.write_text(json.dumps(self.result, indent=2, default=str))
            os.replace(tmp, self.out)

    def log(self, text: str) -> None:
        print(f"[bench_grpo {self.elapsed():7.1f}s] {text}", flush=True)

    def start(self, name: str) -> None:
        if self.budget is not None and self.elapsed() > self.budget:
            raise BudgetSpent(f"time budget {self.budget:.0f}s spent before phase {name!r}")
        self.result["current_phase"] = name
        self.log(f"start {name} {self.memory() or ''}")

    def end(self, name: str, seconds: float) -> None:
        self.result["phases_s"][name] = round(self.result["phases_s"].get(name, 0.0) + seconds, 3)
        self.result["phase_order"].append(name)
        self.result["current_phase"] = None
        mem = self.memory()
        if mem:
            self.result.setdefault("memory_by_phase_gib", {})[name] = mem
        self.log(f"end   {name}: {seconds:.2f}s {mem or ''}")
        self.write()

    def hook(self, name: str, event: str, seconds: float) -> None:
        """`LocalGRPOTrainer(phase_hook=...)`."""
        self.start(name) if event == "start" else self.end(name, seconds)

    @contextmanager
    def phase(self, name: str):
        self.start(name)
        t0 = time.perf_counter()
        yield
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.synchronize()
        self.end(name, time.perf_counter() - t0)

    def watchdog(self) -> None:
        """Hard stop when one phase overruns the budget: write what was measured, exit 3."""
        if self.budget is None:
            return

        def fire():
            if self.done:
                return
            self.result.update(ok=False, stopped="time budget", error=(
                f"time budget {self.budget:.0f}s spent inside phase {self.result.get('current_phase')!r}"))
            self.result["memory_at_stop_gib"] = self.memory()
            self.write()
            self.log(f"STOP: {self.result['error']} (partial JSON in {self.out})")
            os._exit(3)

        timer = threading.Timer(max(1.0, self.budget - self.elapsed()), fire)
        timer.daemon = True
        timer.start()


def main(argv=None) -> int:
    from veason_r1.config import IMAGE_SIZE

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--tiny", action="store_true", help="tiny model, 112 px, 2 prompts x 2 (CPU smoke)")
    p.add_argument("--prompts", type=int, default=16)
    p.add_argument("--n", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=256, help="1024 in the paper; random weights use it all")
    p.add_argument("--rollout-batch", type=int, default=64, help="sequences per generate() call")
    p.add_argument("--micro-batch", type=int, default=2, help="sequences per forward/backward (update)")
    p.add_argument("--log-prob-micro-batch", type=int, default=8, help="sequences per no-grad old/ref forward")
    p.add_argument("--image-size", type=int, default=IMAGE_SIZE)
    p.add_argument("--steps", type=int, default=1, help="GRPO steps (2: the second has AdamW states allocated)")
    p.add_argument("--no-rollout-copy", action="store_true",
                   help="generate with autocast over the fp32 master weights (the old path) instead of a bf16 copy")
    p.add_argument("--vision-attention", choices=["auto", "batched", "hf"], default="auto",
                   help="batched window attention (default on CUDA) or transformers' per-window loop")
    p.add_argument("--no-sam2", action="store_true")
    p.add_argument("--time-budget", type=float, default=None, help="seconds; stop cleanly and keep the partial JSON")
    p.add_argument("--workdir", default=None)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    if args.tiny:
        args.prompts, args.n, args.max_new_tokens, args.image_size = min(args.prompts, 2), min(args.n, 2), 8, 112

    rec = Recorder(Path(args.out), args.time_budget, args.device)
    rec.watchdog()
    rec.log(f"args {vars(args)}")
    import torch

    torch.set_num_threads(max(1, min(8, os.cpu_count() or 1)) if args.device != "cpu" else 1)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from veason_r1.data.synthetic import SynthConfig, write_benchmark
    from veason_r1.models.policy import Policy, load_processor
    from veason_r1.models.tiny import make_tiny_qwen
    from veason_r1.rl.config import load_config
    from veason_r1.rl.local_trainer import LocalGRPOTrainer

    result = rec.result
    result.update({"device": args.device, "tiny": args.tiny, "prompts": args.prompts, "n": args.n,
                   "max_new_tokens": args.max_new_tokens, "image_size": args.image_size,
                   "micro_batch": args.micro_batch, "log_prob_micro_batch": args.log_prob_micro_batch,
                   "rollout_batch": args.rollout_batch, "rollout_copy": not args.no_rollout_copy,
                   "vision_attention": args.vision_attention, "time_budget_s": args.time_budget,
                   "torch": torch.__version__})
    import transformers

    result["transformers"] = transformers.__version__
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
    rec.write()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_grpo_"))
    synth, tiny = work / "synth", work / "tiny"
    code = 1
    try:
        with rec.phase("prepare_data"):  # synthetic videos + the tiny folder (tokenizer/processor only, ~1 MB)
            if not (synth / "mask_dict.json").exists():
                write_benchmark(synth, SynthConfig(num_videos=max(8, args.prompts), seed=0))
            if not (tiny / "config.json").exists():
                make_tiny_qwen(tiny, seed=0)
        with rec.phase("build_model"):
            if args.tiny:
                from veason_r1.models.policy import load_policy

                policy = load_policy(tiny, args.device, dtype="float32")
            else:
                policy = Policy(build_real_size_model(tiny, args.device), load_processor(tiny), args.device, tiny)
            result["params_b"] = sum(x.numel() for x in policy.model.parameters()) / 1e9
        with rec.phase("trainer_setup"):  # bf16 reference copy, optimizer, SAM2
            cfg = load_config(None, [
                f"data.train_root={synth}", "data.val_root=null", f"data.image_size={args.image_size}",
                f"data.train_batch_size={args.prompts}", f"data.max_response_length={args.max_new_tokens}",
                f"model.path={tiny}", f"model.enable_gradient_checkpointing={not args.tiny}",
                f"rollout.n={args.n}", f"rollout.batch_size={args.rollout_batch}",
                f"actor.ppo_mini_batch_size={args.prompts}", f"actor.ppo_micro_batch_size_per_gpu={args.micro_batch}",
                f"reward.use_consistency={use_sam2}", f"trainer.device={args.device}",
                f"trainer.dtype={'float32' if args.device == 'cpu' else 'bfloat16'}",
                f"trainer.default_local_dir={work / 'run'}", "trainer.logger=[]", "trainer.resume_mode=disable",
                f"trainer.total_training_steps={args.steps}", "trainer.save_freq=-1", "trainer.test_freq=-1",
                "data.val_max_samples=0", f"trainer.rollout_copy={not args.no_rollout_copy}",
                f"trainer.vision_attention={args.vision_attention}",
                f"rollout.log_prob_micro_batch_size_per_gpu={args.log_prob_micro_batch or 'null'}",
            ])
            propagator = None
            if use_sam2:
                from veason_r1.models.sam2 import load_sam2

                propagator = load_sam2("tiny", device=args.device)
            trainer = LocalGRPOTrainer(cfg, propagator=propagator, policy=policy, verbose=False, phase_hook=rec.hook)
            result["vision_attention_patched_modules"] = trainer.vision_attention_patched
            result["rollout_copy_active"] = trainer.rollout_copy
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            result["memory_after_setup_gib"] = torch.cuda.memory_allocated() / 2**30
        result["steps"] = []
        for step in range(args.steps):
            rec.log(f"GRPO step {step + 1}/{args.steps}")
            t0 = time.perf_counter()
            metrics = trainer.train_step()
            trainer.step += 1
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            step_s = time.perf_counter() - t0
            seqs = args.prompts * args.n
            info = {
                "step_s": step_s,
                "phases_s": {k.split("/", 1)[1]: v for k, v in metrics.items() if k.startswith("timing/")},
                "response_length_mean": metrics["response_length/mean"],
                "rollout_tokens_per_s": seqs * metrics["response_length/mean"] / max(metrics["timing/rollout"], 1e-9),
                "loss": metrics["actor/loss"],
                "peak_memory_gib": (torch.cuda.max_memory_allocated() / 2**30
                                    if args.device.startswith("cuda") else None),
            }
            result["steps"].append(info)
            result.update(step_s=step_s, sequences=seqs, response_length_mean=info["response_length_mean"],
                          loss=info["loss"], peak_memory_gib=info["peak_memory_gib"])
            rec.write()
            rec.log(f"step {step + 1}: {step_s:.1f}s, loss {info['loss']:.4f}, "
                    f"rollout {info['rollout_tokens_per_s']:.0f} tok/s")
        result["ok"] = all(bool(torch.isfinite(torch.tensor(s["loss"]))) for s in result["steps"])
        code = 0 if result["ok"] else 1
    except BudgetSpent as e:
        result.update(ok=False, stopped="time budget", error=str(e))
        code = 3
    except torch.OutOfMemoryError as e:  # say what did not fit
        result.update(ok=False, error=f"CUDA out of memory in {result.get('current_phase')}: {str(e).splitlines()[0]}")
        if args.device.startswith("cuda"):
            result["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    except Exception as e:  # noqa: BLE001 - the JSON records the failure for the lead
        result.update(ok=False, error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc()[-2000:])
    rec.done = True
    rec.write()
    print(json.dumps(result, indent=2, default=str), flush=True)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
