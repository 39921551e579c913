"""Toy-scale reproduction FROM SCRATCH (before the toy world; the H100 run of docs/toy_reproduction.md): CoT SFT of a
random-init model, then GRPO with and without the SAM2 term, on synthetic videos. The current reproduction, from the
shipped toy base and toy SAM2, is bench/toy_reproduction.py.

One script, one GPU, a hard wall-clock budget (`--time-budget`, default 540 s). Stages:
1. synthetic benchmark (`veason_r1.data.synthetic`, ReVOS layout): train and held-out valid videos;
2. CoT with the synthetic teacher (`veason_r1.datacon`: `run_cot` + `SyntheticTeacher`) and the SFT dataset export
   (`veason_r1.sft.dataset.export_llamafactory_dataset`, the LLaMA-Factory sharegpt rows: system, the
   `build_prompt` user turn with N=8 frames, the `format_response` assistant turn, frames resized to the policy size);
3. a small Qwen2.5-VL (tens of millions of parameters, `veason_r1.models.tiny` builder with a larger
   `TinyQwenConfig`, offline BPE tokenizer) trained from random init on exactly those rows with a plain PyTorch loop
   (full fine-tune; loss on the assistant tokens and the closing `<|im_end|>`, as LLaMA-Factory's qwen2_vl template
   trains it). LLaMA-Factory is not installed on the GPU box, and LoRA on a random-init model is pointless;
4. GRPO with the local trainer (`veason_r1.rl.local_trainer`, bf16 autocast over fp32 master weights) from the SFT
   model: arm "grpo_nosam" (format + keyframe + spatial; the authors' no-SAM ablation) and arm "grpo_sam" (plus the
   consistency term from a tiny SAM2 with RANDOM weights, only when the `sam2` package imports), same seed, same
   data order, same number of steps when time allows;
5. held-out evaluation of SFT-only and both GRPO arms on the valid videos' expressions (N=6 RL grid, fixed draws,
   greedy): mean reward and its terms, keyframe hit rate, mean box IoU (the spatial term), parse rate, with paired
   bootstrap confidence intervals of GRPO - SFT; curves (SFT loss, GRPO reward terms per step, held-out reward).

Every stage checks the budget; the JSON (`toy_reproduction.json`) and the PNG curves are written to `--out` after
each stage and at the end, with whatever finished; a watchdog writes them and exits (code 3) if one stage overruns.
The SAM2 term comes from random weights: it is noise, and the no-SAM arm is the comparison that means something.

GPU (default preset):  python bench/toy_reproduction_scratch.py --out $OUT/toy --time-budget 540
CPU smoke (tiny preset, < 3 min on 2 cores): python bench/toy_reproduction_scratch.py --tiny --device cpu --out /tmp/toy
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import random
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from veason_r1.config import FRAMES  # noqa: E402

TERMS = ("format", "keyframe", "spatial", "consistency")


# ------------------------------------------------------------------------------------------------------- settings
@dataclass
class Preset:
    """Everything that sizes the run. GPU is the default; `--tiny` is the CPU smoke test."""

    num_videos: int = 640  # 3/4 train, 1/4 valid (SynthConfig.valid_every=4)
    max_expressions: int = 8
    image_size: int = 112  # policy square: 16 visual tokens per frame
    hidden: int = 512
    intermediate: int = 1536
    layers: int = 8
    heads: int = 8
    kv_heads: int = 4
    mrope: tuple[int, int, int] = (8, 12, 12)  # sums to head_dim / 2 = 32
    vision_depth: int = 4
    vision_hidden: int = 256
    vision_intermediate: int = 1024
    vision_heads: int = 4
    sft_max_rows: int = 4000
    sft_batch: int = 32
    sft_lr: float = 1e-3
    sft_epochs: float = 5.0
    sft_seconds: float = 130.0  # SFT stops at this many seconds even if epochs remain
    max_new_tokens: int = 448  # raised to fit the longest SFT response (+8), never above this cap
    grpo_steps: int = 20
    grpo_prompts: int = 16
    grpo_n: int = 8
    grpo_lr: float = 2e-5
    grpo_micro: int = 32
    grpo_pool: int = 512  # training expressions GRPO draws from
    val_every: int = 5
    val_size: int = 32
    eval_max: int = 256
    eval_batch: int = 128
    loader_workers: int = 8


TINY = Preset(num_videos=12, max_expressions=4, hidden=128, intermediate=256, layers=2, heads=4, kv_heads=2,
              mrope=(4, 6, 6), vision_depth=2, vision_hidden=64, vision_intermediate=128, vision_heads=2,
              sft_max_rows=24, sft_batch=4, sft_lr=1e-3, sft_epochs=1.0, sft_seconds=40.0, max_new_tokens=24,
              grpo_steps=2, grpo_prompts=2, grpo_n=2, grpo_lr=1e-4, grpo_micro=4, grpo_pool=8, val_every=1,
              val_size=2, eval_max=4, eval_batch=4, loader_workers=0)


class BudgetSpent(RuntimeError):
    pass


class Run:
    """Clock, results, and the atomic writer of the JSON and the curves."""

    def __init__(self, out: Path, budget: float):
        self.out = out
        self.budget = budget
        self.t0 = time.perf_counter()
        self.result: dict = {"status": "running", "stages": {}, "notes": []}
        self.lock = threading.Lock()
        self.finished = False
        out.mkdir(parents=True, exist_ok=True)

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def left(self) -> float:
        return self.budget - self.elapsed()

    def log(self, text: str) -> None:
        print(f"[toy {self.elapsed():6.1f}s] {text}", flush=True)

    def need(self, seconds: float, what: str) -> None:
        if self.left() < seconds:
            raise BudgetSpent(f"{what}: needs ~{seconds:.0f}s, {self.left():.0f}s left of {self.budget:.0f}s")

    def stage(self, name: str, seconds: float, **info) -> None:
        self.result["stages"][name] = {"seconds": round(seconds, 2), **info}
        self.log(f"stage {name} done in {seconds:.1f}s")
        self.save()

    def save(self) -> None:
        with self.lock:
            self.result["elapsed_s"] = round(self.elapsed(), 1)
            tmp = self.out / "toy_reproduction.json.tmp"
            tmp.write_text(json.dumps(self.result, indent=2, default=_json_default))
            os.replace(tmp, self.out / "toy_reproduction.json")
            try:
                plot_curves(self.result, self.out)
            except Exception as e:  # noqa: BLE001 - a plot must never lose the JSON
                self.result.setdefault("plot_error", f"{type(e).__name__}: {e}")

    def watchdog(self, grace: float = 15.0) -> None:
        def fire():
            if self.finished:
                return
            self.result["status"] = "stopped by watchdog (a stage overran the time budget)"
            self.save()
            self.log(self.result["status"])
            os._exit(3)

        t = threading.Timer(self.budget + grace, fire)
        t.daemon = True
        t.start()


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


# ---------------------------------------------------------------------------------------------------------- data
def make_data(work: Path, p: Preset, seed: int, run: Run) -> dict:
    """Synthetic benchmark, CoT records (synthetic teacher), SFT export. Returns paths and counts."""
    from veason_r1.data.revos import ReVOSDataset
    from veason_r1.data.synthetic import SynthConfig, write_benchmark
    from veason_r1.datacon.cot import CotConfig, run_cot
    from veason_r1.datacon.teachers import SyntheticTeacher

    synth = work / "synth"
    t = time.perf_counter()
    if not (synth / "meta_expressions_valid_.json").exists():
        write_benchmark(synth, SynthConfig(num_videos=p.num_videos, seed=seed, max_expressions=p.max_expressions))
    run.stage("synthetic_benchmark", time.perf_counter() - t, root=str(synth))
    t = time.perf_counter()
    train = ReVOSDataset(synth, "train", load_foreground=False)
    summary = run_cot(train, SyntheticTeacher.from_root(synth), work / "cot", CotConfig(seed=seed, concurrency=8),
                      progress=False)
    from veason_r1.sft.dataset import load_cot_records

    records = load_cot_records(work / "cot" / "cot_records.json")
    random.Random(seed).shuffle(records)
    records = records[: p.sft_max_rows]
    run.stage("cot", time.perf_counter() - t, records=len(records), summary=summary.format())
    t = time.perf_counter()
    sft_dir = work / "sft_data"
    rows = export_parallel(records, sft_dir, p.image_size, max(1, p.loader_workers))
    run.stage("sft_export", time.perf_counter() - t, rows=len(rows), dataset=str(sft_dir / "veason_cot.json"))
    valid = ReVOSDataset(synth, "valid", load_foreground=False)
    return {"synth": synth, "records": records, "rows": rows, "sft_dir": sft_dir,
            "counts": {"train_videos": len(train.videos), "valid_videos": len(valid.videos),
                       "train_expressions": len(train.expressions), "valid_expressions": len(valid.expressions),
                       "sft_rows": len(rows)}}


def _export_part(args):
    records, out_dir, image_size, name = args
    from veason_r1.sft.dataset import export_llamafactory_dataset

    export_llamafactory_dataset(records, out_dir, name=name, image_size=image_size)
    return json.loads((Path(out_dir) / f"{name}.json").read_text())


def export_parallel(records: list[dict], out_dir: Path, image_size: int, workers: int) -> list[dict]:
    """`export_llamafactory_dataset` over video-disjoint shards in parallel, merged into one `veason_cot.json`
    (row order = record order) with its dataset_info.json entry: the very rows LLaMA-Factory would read."""
    from veason_r1.io_utils import atomic_write_bytes, atomic_write_json
    from veason_r1.sft.dataset import DATASET_INFO, dataset_info_entry

    by_video: dict[str, list[int]] = {}
    for i, r in enumerate(records):
        by_video.setdefault(str(r["video"]), []).append(i)
    shards: list[list[int]] = [[] for _ in range(workers)]
    for j, idx in enumerate(by_video.values()):
        shards[j % workers].extend(idx)
    shards = [s for s in shards if s]
    jobs = [([records[i] for i in s], str(out_dir), image_size, f"part{k}") for k, s in enumerate(shards)]
    if workers > 1 and len(jobs) > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(len(jobs)) as ex:
            parts = list(ex.map(_export_part, jobs))
    else:
        parts = [_export_part(j) for j in jobs]
    rows: list = [None] * len(records)
    for s, part in zip(shards, parts):
        for i, row in zip(s, part):
            rows[i] = row
    atomic_write_bytes(out_dir / "veason_cot.json", json.dumps(rows, indent=2, ensure_ascii=False).encode("utf-8"))
    atomic_write_json(out_dir / DATASET_INFO, {"veason_cot": dataset_info_entry("veason_cot")}, indent=2)
    for k in range(len(jobs)):
        (out_dir / f"part{k}.json").unlink(missing_ok=True)
    return rows


# ---------------------------------------------------------------------------------------------------------- model
def build_model(work: Path, p: Preset, device: str, seed: int):
    """The small Qwen2.5-VL folder (random init, offline tokenizer), loaded in fp32."""
    from veason_r1.models.policy import load_policy
    from veason_r1.models.tiny import TinyQwenConfig, make_tiny_qwen

    cfg = TinyQwenConfig(hidden_size=p.hidden, intermediate_size=p.intermediate, num_hidden_layers=p.layers,
                         num_attention_heads=p.heads, num_key_value_heads=p.kv_heads, mrope_section=list(p.mrope),
                         vision_depth=p.vision_depth, vision_hidden_size=p.vision_hidden,
                         vision_intermediate_size=p.vision_intermediate, vision_num_heads=p.vision_heads,
                         vision_fullatt_block_indexes=[p.vision_depth - 1], initializer_range=0.02)
    folder = work / "policy_init"
    if not (folder / "config.json").exists():
        make_tiny_qwen(folder, seed=seed, config=cfg)
    policy = load_policy(folder, device, dtype="float32")
    return policy, asdict(cfg)


# ------------------------------------------------------------------------------------------------------------ SFT
class SFTRows:
    """Dataset over the exported rows: (images, expression, frame_ids, assistant text) per row. The user turn is
    checked to be `build_prompt(expression, frame_ids)`, so `build_inputs` reproduces the row's prompt exactly."""

    def __init__(self, rows: list[dict], records: list[dict], sft_dir: Path):
        from veason_r1.prompting import build_prompt

        self.items = []
        for row, rec in zip(rows, records):
            frame_ids = [int(t) for t in rec["frame_ids"]]
            if row["messages"][1]["content"] != build_prompt(str(rec["exp"]), frame_ids):
                raise ValueError(f"SFT row of {rec['key']}: user turn differs from build_prompt")
            self.items.append((row["images"], str(rec["exp"]), frame_ids, row["messages"][2]["content"]))
        self.sft_dir = sft_dir

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i):
        from PIL import Image

        images, exp, frame_ids, answer = self.items[i]
        arrays = [np.asarray(Image.open(self.sft_dir / im).convert("RGB")) for im in images]
        return arrays, exp, frame_ids, answer


def sft_collate(processor, image_size: int):
    def collate(items):
        from veason_r1.models.policy import GenerationRequest, build_inputs

        reqs = [GenerationRequest(exp, fids, arrays) for arrays, exp, fids, _ in items]
        responses = [answer + "<|im_end|>" for *_, answer in items]  # the template's end of turn is trained
        return build_inputs(processor, reqs, image_size, responses=responses)

    return collate


def train_sft(policy, data: dict, p: Preset, device: str, seed: int, run: Run) -> dict:
    """Full fine-tune from random init on the SFT rows: AdamW, warm-up + cosine, bf16 autocast on CUDA."""
    import torch

    ds = SFTRows(data["rows"], data["records"], data["sft_dir"])
    g = torch.Generator().manual_seed(seed)
    loader = torch.utils.data.DataLoader(ds, batch_size=p.sft_batch, shuffle=True, generator=g, drop_last=True,
                                         collate_fn=sft_collate(policy.processor, p.image_size),
                                         num_workers=p.loader_workers, persistent_workers=p.loader_workers > 0,
                                         prefetch_factor=4 if p.loader_workers > 0 else None)
    model = policy.model
    model.train()
    total = max(1, int(p.sft_epochs * len(loader)))
    warm = max(1, total // 20)
    opt = torch.optim.AdamW(model.parameters(), lr=p.sft_lr, betas=(0.9, 0.95), weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm) * (
        0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * min(1.0, s / total)))))
    use_amp = device.startswith("cuda")
    losses, step, t0 = [], 0, time.perf_counter()
    deadline = min(p.sft_seconds, max(0.0, run.left() - 120))
    stopped = "epochs done"
    while step < total:
        for batch in loader:
            batch = batch.to(device)
            labels = torch.where(batch["response_mask"].bool(), batch["input_ids"], -100)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_amp):
                out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                            pixel_values=batch["pixel_values"], image_grid_thw=batch["image_grid_thw"], use_cache=False)
            logits = out.logits[:, :-1].float()
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1),
                                                     ignore_index=-100)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            step += 1
            losses.append(float(loss.item()))
            if step % 20 == 0 or step == 1:
                run.log(f"sft step {step}/{total} loss {losses[-1]:.4f}")
            if step >= total:
                break
            if time.perf_counter() - t0 > deadline:
                stopped = f"time cap {deadline:.0f}s"
                break
        if stopped != "epochs done":
            break
    model.eval()
    opt.zero_grad(set_to_none=True)
    del opt
    return {"steps": step, "planned_steps": total, "epochs": step / max(1, len(loader)), "stopped": stopped,
            "losses": losses, "final_loss_mean_last10": float(np.mean(losses[-10:])) if losses else None,
            "rows": len(ds), "batch": p.sft_batch, "lr": p.sft_lr}


def response_budget(rows: list[dict], tokenizer, cap: int) -> tuple[int, int]:
    """(max_new_tokens, longest SFT response in tokens incl. <|im_end|>)."""
    longest = max(len(tokenizer(r["messages"][2]["content"] + "<|im_end|>", add_special_tokens=False)["input_ids"])
                  for r in rows)
    return min(cap, longest + 8), longest


# ----------------------------------------------------------------------------------------------------- evaluation
def eval_samples(synth: Path, p: Preset, seed: int, count: int):
    """Held-out samples: valid expressions with a target, the N=6 RL grid, fixed draws."""
    from veason_r1.data.revos import ReVOSDataset
    from veason_r1.rl.data import RLPool, RLSampleBuilder, select_expressions

    valid = ReVOSDataset(synth, "valid", load_foreground=False)
    builder = RLSampleBuilder(valid, image_size=p.image_size)  # the RL grid and keyframe top-k
    pool = RLPool(builder, select_expressions(valid, None, True, count, seed, builder=builder))
    return [pool.draw(i, seed=f"eval{seed}") for i in range(len(pool))]


def evaluate(model, processor, samples, p: Preset, device: str, max_new: int, propagator=None) -> dict:
    """Greedy answers on `samples`; reward terms (with `propagator`: the random SAM2 consistency too), keyframe hit
    rate, box IoU (the spatial term), parse rate. Per-sample values are kept for paired comparisons."""
    import torch

    from veason_r1.models.policy import GenerationRequest, HFEngine, Policy, SamplingConfig
    from veason_r1.reward import RewardConfig, score_groups
    from veason_r1.reward import terms as rterms
    from veason_r1.rl.local_trainer import _bf16_copy

    gen_model = _bf16_copy(model, torch.bfloat16) if device.startswith("cuda") else model
    was_training = model.training
    model.eval()
    engine = HFEngine(Policy(gen_model, processor, device), p.image_size, batch_size=p.eval_batch)
    reqs = [GenerationRequest(s.expression, s.frame_ids, list(s.frames)) for s in samples]
    texts = [t[0] for t in engine.generate(reqs, SamplingConfig(max_new_tokens=max_new, temperature=0.0))]
    if gen_model is not model:
        del gen_model
        torch.cuda.empty_cache()
    if was_training:
        model.train()
    cfg = RewardConfig(variant="faithful", use_consistency=propagator is not None, image_size=p.image_size)
    results = [g[0] for g in score_groups([([t], s.reward_sample()) for t, s in zip(texts, samples)], propagator, cfg)]
    per = {k: [float(r[k]) for r in results] for k in TERMS}
    per["overall"] = [float(r["overall"]) for r in results]
    per["overall_no_sam"] = [r["format"] + r["keyframe"] + r["spatial"] for r in results]
    per["keyframe_hit"] = [float(r["keyframe"] >= 1.0 - 1e-9) for r in results]
    per["parsed"] = [float(not rterms.parse_answer(t, s.frame_ids).failure) for t, s in zip(texts, samples)]
    summary = {k: float(np.mean(v)) for k, v in per.items()}
    summary.update(n=len(samples), box_iou=summary["spatial"], keyframe_hit_rate=summary["keyframe_hit"],
                   parse_rate=summary["parsed"], mean_response_chars=float(np.mean([len(t) for t in texts])),
                   consistency_from=("random-weight tiny SAM2" if propagator is not None else "not computed (0)"))
    return {"summary": summary, "per_sample": per, "examples": [
        {"key": s.key, "expression": s.expression, "response": t[:600]} for s, t in list(zip(samples, texts))[:3]]}


def paired_bootstrap(a: list[float], b: list[float], seed: int = 0, n: int = 2000) -> dict:
    """Mean of b - a with a 95% bootstrap interval over samples (same held-out samples for both): the library's
    `eval.bootstrap.paired_bootstrap`, in this script's JSON shape."""
    from veason_r1.eval.bootstrap import paired_bootstrap as bootstrap

    if len(a) == 0:
        return {"diff": None}
    out = bootstrap(a, b, resamples=n, seed=seed)
    return {"diff": out["diff"], "ci95": [out["lo"], out["hi"]], "significant": bool(out["lo"] > 0 or out["hi"] < 0)}


def compare(evals: dict) -> dict:
    out = {}
    if "sft" not in evals:
        return out
    for arm in ("grpo_nosam", "grpo_sam"):
        if arm not in evals:
            continue
        out[arm] = {m: paired_bootstrap(evals["sft"]["per_sample"][m], evals[arm]["per_sample"][m])
                    for m in ("overall_no_sam", "overall", "keyframe_hit", "spatial", "format", "parsed")}
        s, g = evals["sft"]["summary"], evals[arm]["summary"]
        out[arm]["grpo_beats_sft_on"] = {
            "mean_reward_no_sam": g["overall_no_sam"] > s["overall_no_sam"],
            "keyframe_hit_rate": g["keyframe_hit_rate"] > s["keyframe_hit_rate"],
            "box_iou": g["box_iou"] > s["box_iou"]}
    return out


# ----------------------------------------------------------------------------------------------------------- GRPO
def grpo_config(data: dict, p: Preset, device: str, seed: int, max_new: int, use_sam: bool, work: Path, arm: str):
    from veason_r1.io_utils import append_jsonl
    from veason_r1.rl.config import load_config

    pool = work / "grpo_pool.jsonl"
    if not pool.exists():
        seen, keys = set(), []
        for rec in data["records"]:  # expressions SFT saw (all have a target), in the shuffled order
            if rec["key"] not in seen:
                seen.add(rec["key"])
                keys.append({"video": rec["video"], "exp_id": str(rec["exp_id"])})
        for k in keys[: p.grpo_pool]:
            append_jsonl(pool, k)
    return load_config(None, [
        f"data.train_root={data['synth']}", f"data.train_pool={pool}", f"data.val_root={data['synth']}",
        "data.val_split=valid", f"rollout.log_prob_micro_batch_size_per_gpu={max(p.grpo_micro, 64)}",
        f"data.val_max_samples={p.val_size}", f"data.image_size={p.image_size}",
        f"data.train_batch_size={p.grpo_prompts}", f"data.max_response_length={max_new}", f"data.seed={seed}",
        "model.path=unused-policy-given", "model.enable_gradient_checkpointing=false",
        f"rollout.n={p.grpo_n}", f"rollout.batch_size={p.grpo_prompts * p.grpo_n}",
        f"actor.lr={p.grpo_lr}", f"actor.ppo_mini_batch_size={p.grpo_prompts}",
        f"actor.ppo_micro_batch_size_per_gpu={p.grpo_micro}",
        f"reward.use_consistency={use_sam}", f"trainer.device={device}",
        f"trainer.dtype={'bfloat16' if device.startswith('cuda') else 'float32'}",
        f"trainer.default_local_dir={work / arm}", "trainer.logger=[]", "trainer.resume_mode=disable",
        f"trainer.total_training_steps={p.grpo_steps}", "trainer.save_freq=-1", "trainer.test_freq=-1",
        f"trainer.seed={seed}",
    ])


def run_grpo(arm: str, sft_model, processor, data: dict, p: Preset, device: str, seed: int, max_new: int,
             propagator, steps: int, budget_s: float, run: Run) -> tuple:
    """`steps` GRPO steps (fewer if `budget_s` runs out) from a copy of the SFT model; per-step metrics and the
    held-out validation curve. Returns (trainer, info)."""
    import torch

    from veason_r1.models.policy import Policy
    from veason_r1.rl.local_trainer import LocalGRPOTrainer

    t_start = time.perf_counter()
    torch.manual_seed(seed)
    policy = Policy(copy.deepcopy(sft_model), processor, device)
    cfg = grpo_config(data, p, device, seed, max_new, propagator is not None, data["work"], arm)
    trainer = LocalGRPOTrainer(cfg, propagator=propagator, policy=policy, verbose=False)
    curve, val_curve = [], []
    val_curve.append({"step": 0, **trainer.validate()})  # the SFT model, scored with this arm's reward
    info = {"planned_steps": steps, "curve": curve, "val_curve": val_curve, "stopped": "steps done",
            "config": {"lr": p.grpo_lr, "prompts": p.grpo_prompts, "n": p.grpo_n, "max_new_tokens": max_new,
                       "kl_coef": cfg.actor.kl_loss_coef, "entropy_coeff": cfg.actor.entropy_coeff,
                       "use_consistency": propagator is not None}}
    step_times: list[float] = []
    val_time = 0.0
    while trainer.step < steps:
        spent = time.perf_counter() - t_start
        est = max(step_times) if step_times else 0.0
        if step_times and spent + est * 1.1 + val_time > budget_s:
            info["stopped"] = f"arm budget {budget_s:.0f}s"
            break
        t = time.perf_counter()
        m = trainer.train_step()
        trainer.step += 1
        step_times.append(time.perf_counter() - t)
        keep = {k: float(v) for k, v in m.items() if k.startswith(("reward/", "actor/", "timing/", "response_length"))}
        curve.append({"step": trainer.step, **keep})
        run.log(f"{arm} step {trainer.step}/{steps}: reward {m['reward/overall']:.3f} "
                f"(fmt {m['reward/format']:.2f} kf {m['reward/keyframe']:.2f} sp {m['reward/spatial']:.2f} "
                f"cons {m['reward/consistency']:.2f}) len {m['response_length/mean']:.0f} {step_times[-1]:.1f}s")
        if trainer.step % p.val_every == 0 or trainer.step == steps:
            tv = time.perf_counter()
            val_curve.append({"step": trainer.step, **trainer.validate()})
            val_time = time.perf_counter() - tv
        run.result.setdefault("grpo", {})[arm] = {**info, "steps": trainer.step}
        run.save()
    info.update(steps=trainer.step, step_seconds_mean=float(np.mean(step_times)) if step_times else None,
                seconds=time.perf_counter() - t_start)
    return trainer, info


# ---------------------------------------------------------------------------------------------------------- plots
def plot_curves(result: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sft = result.get("sft") or {}
    grpo = result.get("grpo") or {}
    if not sft.get("losses") and not grpo:
        return
    fig, axes = plt.subplots(2, 3, figsize=(15, 8))
    ax = axes[0, 0]
    if sft.get("losses"):
        ax.plot(range(1, len(sft["losses"]) + 1), sft["losses"], lw=0.8)
        ax.set_yscale("log")
    ax.set_title("SFT loss (assistant tokens)")
    ax.set_xlabel("SFT step")
    panels = [("reward/overall", "train reward (sum of terms)"), ("reward/format", "format"),
              ("reward/keyframe", "keyframe"), ("reward/spatial", "spatial (box IoU)")]
    for (key, title), ax in zip(panels, [axes[0, 1], axes[0, 2], axes[1, 0], axes[1, 1]]):
        for arm, info in grpo.items():
            c = info.get("curve") or []
            if c:
                ax.plot([r["step"] for r in c], [r.get(key, np.nan) for r in c], marker=".", label=arm)
        ax.set_title(f"GRPO rollouts: {title}")
        ax.set_xlabel("GRPO step")
        ax.legend(fontsize=8)
    ax = axes[1, 2]
    for arm, info in grpo.items():
        v = info.get("val_curve") or []
        if v:
            ax.plot([r["step"] for r in v], [r.get("val/reward", np.nan) for r in v], marker="o", label=f"{arm} total")
            ax.plot([r["step"] for r in v], [r.get("val/reward", np.nan) - r.get("val/consistency", 0.0) for r in v],
                    ls="--", marker="x", label=f"{arm} w/o SAM2 term")
    ax.set_title("held-out greedy reward (val subset)")
    ax.set_xlabel("GRPO step")
    ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = out / "curves.tmp.png"
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    os.replace(tmp, out / "curves.png")
    evals = result.get("evaluation") or {}
    if evals:
        metrics = [("overall_no_sam", "reward w/o SAM2"), ("format", "format"), ("keyframe_hit_rate", "keyframe hit"),
                   ("box_iou", "box IoU"), ("parse_rate", "parse rate")]
        fig, ax = plt.subplots(figsize=(9, 4))
        width = 0.8 / max(1, len(evals))
        for j, (name, summ) in enumerate(evals.items()):
            xs = np.arange(len(metrics)) + j * width
            ax.bar(xs, [summ.get(m, np.nan) for m, _ in metrics], width, label=f"{name} (n={summ.get('n')})")
        ax.set_xticks(np.arange(len(metrics)) + width * (len(evals) - 1) / 2, [t for _, t in metrics])
        ax.set_title("held-out valid expressions, greedy")
        ax.legend(fontsize=8)
        fig.tight_layout()
        tmp = out / "final_eval.tmp.png"
        fig.savefig(tmp, dpi=90)
        plt.close(fig)
        os.replace(tmp, out / "final_eval.png")


# ----------------------------------------------------------------------------------------------------------- main
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="folder for toy_reproduction.json and curves.png")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true", help="CPU smoke preset (tiny model, a few steps)")
    ap.add_argument("--time-budget", type=float, default=540.0, help="hard wall-clock budget in seconds")
    ap.add_argument("--workdir", default=None, help="data/model scratch (default: a temp folder)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-sam-arm", action="store_true", help="skip the GRPO arm with the (random) SAM2 term")
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                    help="override a preset field, e.g. --set grpo_steps=30 --set sft_seconds=200")
    args = ap.parse_args(argv)
    p = copy.deepcopy(TINY if args.tiny else Preset())
    for item in args.set:
        k, _, v = item.partition("=")
        if not hasattr(p, k):
            raise SystemExit(f"--set {item}: unknown field {k!r}; known: {sorted(asdict(p))}")
        setattr(p, k, type(getattr(p, k))(v) if not isinstance(getattr(p, k), tuple) else tuple(json.loads(v)))

    run = Run(Path(args.out), args.time_budget)
    run.watchdog()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    torch.manual_seed(args.seed)
    if args.device == "cpu":
        torch.set_num_threads(1)
    else:
        torch.backends.cuda.matmul.allow_tf32 = True
    import transformers

    work = Path(args.workdir or tempfile.mkdtemp(prefix="toy_repro_"))
    work.mkdir(parents=True, exist_ok=True)
    r = run.result
    r.update(preset="tiny" if args.tiny else "gpu", config=asdict(p), seed=args.seed, device=args.device,
             time_budget_s=args.time_budget, torch=torch.__version__, transformers=transformers.__version__,
             workdir=str(work), sft_trainer="plain PyTorch loop over the exported LLaMA-Factory rows")
    if args.device.startswith("cuda"):
        r["gpu"] = torch.cuda.get_device_name(0)
    from veason_r1.rl.algos import SOURCE

    r["algos"] = SOURCE
    run.save()
    code = 0
    evals: dict = {}
    try:
        data = make_data(work, p, args.seed, run)
        data["work"] = work
        r["data"] = data["counts"]
        t = time.perf_counter()
        policy, model_cfg = build_model(work, p, args.device, args.seed)
        from veason_r1.models.fast_qwen import fast_vision_attention

        patched = fast_vision_attention(policy.model) if args.device.startswith("cuda") else 0
        n_params = sum(x.numel() for x in policy.model.parameters())
        r["model"] = {"params_m": n_params / 1e6, "config": model_cfg, "vision_attention_batched": patched}
        max_new, longest = response_budget(data["rows"], policy.tokenizer, p.max_new_tokens)
        r["model"].update(max_new_tokens=max_new, longest_sft_response_tokens=longest)
        run.stage("build_model", time.perf_counter() - t, params_m=round(n_params / 1e6, 2))
        samples = eval_samples(data["synth"], p, args.seed, p.eval_max)
        r["eval_set"] = {"samples": len(samples), "frames": FRAMES.rl_frames, "decoding": "greedy", "split": "valid"}

        t = time.perf_counter()
        run.need(60, "SFT")
        r["sft"] = train_sft(policy, data, p, args.device, args.seed, run)
        run.stage("sft", time.perf_counter() - t, steps=r["sft"]["steps"], stopped=r["sft"]["stopped"])

        propagator = None
        use_sam = not args.no_sam_arm
        if use_sam:
            try:
                from veason_r1.models.sam2 import load_sam2

                propagator = load_sam2("tiny", device=args.device, seed=args.seed)
            except Exception as e:  # noqa: BLE001 - no sam2 on the box: run the no-SAM arm only
                use_sam = False
                run.result["notes"].append(f"SAM2 arm skipped: {type(e).__name__}: {e}"[:300])

        t = time.perf_counter()
        run.need(30, "SFT evaluation")
        evals["sft"] = evaluate(policy.model, policy.processor, samples, p, args.device, max_new, propagator)
        eval_s = time.perf_counter() - t
        r["evaluation"] = {k: v["summary"] for k, v in evals.items()}
        r["examples"] = {k: v["examples"] for k, v in evals.items()}
        run.stage("eval_sft", eval_s)

        arms = ["grpo_nosam"] + (["grpo_sam"] if use_sam else [])
        steps = p.grpo_steps
        for i, arm in enumerate(arms):
            # the first of two arms gets 45% of what is left: the SAM2 arm's reward is slower, same step count
            frac = 0.45 if len(arms) - i == 2 else 1.0
            share = (run.left() - 10) * frac - eval_s * 1.3
            run.need(max(20.0, eval_s * 1.3 + 5), f"GRPO arm {arm}")
            t = time.perf_counter()
            trainer, info = run_grpo(arm, policy.model, policy.processor, data, p, args.device, args.seed, max_new,
                                     propagator if arm == "grpo_sam" else None, steps, max(10.0, share), run)
            if arm == "grpo_nosam":
                steps = info["steps"]  # the second arm takes the same number of steps
            r.setdefault("grpo", {})[arm] = info
            run.stage(f"grpo_{arm}", time.perf_counter() - t, steps=info["steps"], stopped=info["stopped"])
            t = time.perf_counter()
            run.need(eval_s * 1.1, f"evaluation of {arm}")
            evals[arm] = evaluate(trainer.model, policy.processor, samples, p, args.device, max_new, propagator)
            r["evaluation"] = {k: v["summary"] for k, v in evals.items()}
            r["examples"] = {k: v["examples"] for k, v in evals.items()}
            r["comparison"] = compare(evals)
            run.stage(f"eval_{arm}", time.perf_counter() - t)
            del trainer
            if args.device.startswith("cuda"):
                torch.cuda.empty_cache()
        if "grpo_sam" in r.get("grpo", {}) and "grpo_nosam" in r.get("grpo", {}):
            r["same_steps"] = r["grpo"]["grpo_sam"]["steps"] == r["grpo"]["grpo_nosam"]["steps"]
        r["status"] = "complete"
    except BudgetSpent as e:
        r["status"] = f"stopped: {e}"
        code = 3
    except Exception as e:  # noqa: BLE001 - the JSON says what failed, with what finished before
        r["status"] = f"failed: {type(e).__name__}: {e}"
        r["traceback"] = traceback.format_exc()[-3000:]
        code = 1
    r["evaluation"] = {k: v["summary"] for k, v in evals.items()}
    r["comparison"] = compare(evals)
    run.finished = True
    run.save()
    run.log(f"status: {r['status']}")
    print(json.dumps({"status": r["status"], "evaluation": r["evaluation"],
                      "comparison": {a: c.get("grpo_beats_sft_on") for a, c in r["comparison"].items()}},
                     indent=2, default=_json_default), flush=True)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
