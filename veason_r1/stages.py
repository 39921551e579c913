"""The pipeline's stages as library calls on one synthetic ReVOS-format root, one function per stage.

`veason-r1 demo` (veason_r1/demo.py) and bench/toy_reproduction.py run these through `veason_r1.runner`; each
takes the stage's own config dataclass (SynthConfig, CotConfig, SFTConfig, GRPOConfig, ...) plus the paths it
reads and writes, and returns (one-line summary, info dict) for the run's state file and report.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

from veason_r1.io_utils import atomic_write_json, atomic_write_text


def build_synthetic(root: Path, config, doctor_file: Path, progress: bool = True) -> tuple[str, dict]:
    """The synthetic benchmark (`SynthConfig`), checked by the doctor (its findings in `doctor_file`)."""
    from veason_r1.data.doctor import diagnose
    from veason_r1.data.synthetic import summarize, write_benchmark

    write_benchmark(root, config, fmt="revos", progress=progress)
    report = diagnose(root, decode=True, progress=False)
    atomic_write_text(doctor_file, "\n".join([*(str(i) for i in report.issues), report.summary()]) + "\n")
    if not report.ok:
        raise RuntimeError(f"the synthetic benchmark failed the doctor: {report.errors[0]} (all issues in "
                           f"{doctor_file})")
    s = summarize(root)
    types = s["type_ids"]
    summary = (f"{s['videos']} videos ({s['splits'].get('train', 0)} train / {s['splits'].get('valid', 0)} "
               f"valid), {sum(types.values())} expressions (referring {types.get('0', 0)}, reasoning "
               f"{types.get('1', 0)}, no-target {types.get('2', 0)}); doctor: {len(report.errors)} errors, "
               f"{len(report.warnings)} warnings, {report.frames_checked} frames decoded")
    return summary, {"summary": s, "doctor": report.summary()}


def sample_pool(root: Path, select_meta: Path, pool_file: Path, size: int, seed: int,
                report_file: Path) -> tuple[str, dict]:
    """The stratified training pool (at most `size`, capped at the eligible train expressions) as a meta file and
    as the RL pool JSONL."""
    from veason_r1.data.revos import load_json, meta_path
    from veason_r1.datacon.stratified import StratifiedConfig, expression_entries, sample_meta_file

    meta_file = meta_path(root, "train")
    eligible = sum(1 for e in expression_entries(load_json(meta_file), str(meta_file)) if e.type_id in (0, 1))
    report = sample_meta_file(meta_file, select_meta, StratifiedConfig(target_size=min(size, eligible), seed=seed))
    atomic_write_text(report_file, report.format() + "\n")
    atomic_write_text(pool_file, "".join(json.dumps({"video": v, "exp_id": e}) + "\n" for v, e in report.selected))
    final = report.final
    summary = (f"{len(report.selected)} of {report.counts['total']} train expressions (ref_single "
               f"{final.get('ref_single', 0)}, ref_multi {final.get('ref_multi', 0)}, reason_single "
               f"{final.get('reason_single', 0)}, reason_multi {final.get('reason_multi', 0)})")
    return summary, {"selected": len(report.selected), "final": final, "r_ref": report.r_ref,
                     "r_single": report.r_single}


def build_cot(root: Path, select_meta: Path, cot_dir: Path, sft_dir: Path, config, image_size: int,
              brief: bool = True, progress: bool = True) -> tuple[str, dict]:
    """Seed CoT with the synthetic teacher (`CotConfig`) and its LLaMA-Factory dataset at the policy's size."""
    from veason_r1.data.revos import ReVOSDataset
    from veason_r1.datacon.cot import FINAL_JSON, run_cot
    from veason_r1.datacon.teachers import SyntheticTeacher
    from veason_r1.sft.dataset import export_llamafactory_dataset, load_cot_records

    ds = ReVOSDataset(root, "train", meta_file=select_meta, load_foreground=False)
    result = run_cot(ds, SyntheticTeacher.from_root(root, brief=brief), cot_dir, config, progress=progress)
    if result.aborted or result.failed:
        raise RuntimeError(f"CoT generation did not finish: {result.format()}")
    records = load_cot_records(cot_dir / FINAL_JSON)
    export_llamafactory_dataset(records, sft_dir, name="veason_cot", image_size=image_size, progress=progress)
    chars = [len(r["CoT"]) for r in records]
    summary = (f"{len(records)} CoT records ({result.skipped} skipped: target never visible), "
               f"{sum(chars) / max(1, len(chars)):.0f} characters of reasoning on average; SFT dataset at "
               f"{image_size}x{image_size}")
    return summary, {"records": len(records), "skipped": result.skipped}


def count_parameters(model_dir: Path) -> int:
    from safetensors import safe_open

    total = 0
    for f in sorted(Path(model_dir).glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as st:
            for k in st.keys():  # noqa: SIM118 - safe_open is not a dict
                n = 1
                for s in st.get_slice(k).get_shape():
                    n *= int(s)
                total += n
    return total


def train_sft(config, log_file: Path) -> tuple[str, dict]:
    """LoRA CoT SFT with LLaMA-Factory in this process (`SFTConfig`, adapted to the device), merged."""
    import torch

    from veason_r1.sft.train import run_sft

    config, _notes = config.for_device(torch.cuda.is_available())
    threads = torch.get_num_threads()
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "a") as log, contextlib.redirect_stdout(log), hf_verbosity("warning"):
        # LLaMA-Factory's printed example and the trainer's loss dicts go to the log; the trainer shows its
        # progress bar only when transformers logs at warning level or lower
        result = run_sft(config, launcher="inprocess")
    torch.set_num_threads(threads)  # the HF trainer may reset it
    losses = result.losses
    steps, batch = config.max_steps, config.per_device_train_batch_size
    summary = (f"{steps} LoRA steps (batch {batch}), loss {losses[0]:.3f} -> {losses[-1]:.3f}" if losses
               else f"{steps} LoRA steps (batch {batch})")
    return summary, {"losses": losses, "merged": str(result.merged_dir)}


def final_model(config) -> Path:
    """The model folder a GRPO run (`GRPOConfig`) leaves after its last step."""
    from veason_r1.rl.checkpoint import step_dir

    return step_dir(Path(config.trainer.default_local_dir), config.trainer.total_training_steps) / "model"


def train_grpo(config, propagator=None, progress: bool = True) -> tuple[str, dict]:
    """GRPO with the local one-device trainer (`GRPOConfig`), the reward's SAM2 shared with the caller."""
    from veason_r1.io_utils import read_jsonl
    from veason_r1.rl.local_trainer import LocalGRPOTrainer

    trainer = LocalGRPOTrainer(config, propagator=propagator, verbose=progress)
    summary = trainer.fit()
    metrics = [m for m in read_jsonl(Path(config.trainer.default_local_dir) / "metrics.jsonl")
               if "reward/overall" in m]
    first, last = metrics[0], metrics[-1]
    batch, n = config.data.train_batch_size, config.rollout.n
    model = final_model(config)
    text = (f"{summary['step']} GRPO steps ({batch} prompts x {n} rollouts), reward {first['reward/overall']:.2f} "
            f"(step {first['step']}) -> {last['reward/overall']:.2f} (step {last['step']}); model {model}")
    return text, {"steps": summary["step"], "model": str(model)}


def predict_and_evaluate(root: Path, model_dir: Path, pred: Path, propagator, image_size: int, max_new_tokens: int,
                         batch_size: int, progress: bool = True) -> tuple[str, dict]:
    """Two-stage prediction (policy, then SAM2) of the valid split and its ReVOS evaluation, on CPU."""
    from veason_r1.config import FRAMES
    from veason_r1.eval.evaluators import EvalConfig, evaluate_revos, per_expression_csv
    from veason_r1.inference.pipeline import InferenceConfig, build_engine
    from veason_r1.inference.predict import PredictConfig, merge_predictions, open_benchmark, run_stage1, run_stage2
    from veason_r1.models.config import PolicyConfig

    dataset = open_benchmark("revos", root, "valid")
    policy = PolicyConfig(str(model_dir), device="cpu", dtype="float32")
    config = PredictConfig(benchmark="revos", split="valid", policy=policy,
                           inference=InferenceConfig(image_size, FRAMES.eval_frames, max_new_tokens),
                           batch_size=batch_size)
    engine = build_engine(policy, image_size, batch_size)
    s1 = run_stage1(dataset, engine, pred, config, progress=progress)
    del engine
    s2 = run_stage2(dataset, propagator, pred, config, progress=progress)
    merge = merge_predictions(dataset, pred, config)
    if not merge.ok:
        raise RuntimeError(f"{pred}: incomplete predictions: {(merge.missing_stage1 + merge.missing_masks)[:5]}")
    summary, results = evaluate_revos(root, pred, EvalConfig("revos", "valid", "zero", workers=1, progress=progress))
    atomic_write_json(pred / "results.json", summary, indent=2)
    atomic_write_text(pred / "results_per_expression.csv",
                      per_expression_csv(results, ["J", "F", "A", "R", "R_scale_free"], "zero"))
    parsed = answer_shares(pred)
    o = summary["overall"]
    text = (f"{merge.expressions} expressions, answers in the exact think/answer format: {parsed['format_ok']}, "
            f"with boxes: {parsed['with_boxes']}; overall J {o['J']:.1f}  F {o['F']:.1f}  J&F {o['JF']:.1f}")
    return text, {"stage1": s1, "stage2": s2, "overall": o, **parsed}


def answer_shares(pred: Path) -> dict[str, int]:
    """What the policy wrote in a prediction folder: answers, exact format, usable boxes, parser notes."""
    from veason_r1.io_utils import read_jsonl
    from veason_r1.prompting import FORMAT_PATTERN

    recs = list(read_jsonl(pred / "predictions.jsonl"))

    def noted(text: str) -> int:
        return sum(1 for r in recs if any(text in n for n in r["notes"]))

    return {"answers": len(recs), "with_boxes": sum(1 for r in recs if r["boxes"]),
            "format_ok": sum(1 for r in recs if FORMAT_PATTERN.fullmatch(r["response"].strip())),
            "keyframe_not_shown": noted("not shown"), "no_keyframe": noted("no keyframe"),
            "no_valid_boxes": noted("no valid boxes")}


def heldout_comparison(root: Path, models: dict[str, Path], propagator, config, out_file: Path,
                       reward=None, baseline: str = "sft", seed: int = 0) -> tuple[str, dict]:
    """Greedy GRPO reward of each model on the valid split's target expressions (fixed RL grids, `HeldoutConfig`)
    and the paired bootstrap interval of each model minus `baseline`. Writes per-expression rows to `out_file`."""
    from veason_r1.eval.bootstrap import paired_bootstrap
    from veason_r1.reward import RewardConfig
    from veason_r1.rl.heldout import heldout_rewards, heldout_samples, summarize

    samples = heldout_samples(root, config)
    reward = reward or RewardConfig(image_size=config.image_size)
    rows = {name: heldout_rewards(model, samples, propagator, config, reward) for name, model in models.items()}
    base = [r["overall"] for r in rows[baseline]]
    diffs = {name: paired_bootstrap(base, [r["overall"] for r in rows[name]], seed=seed)
             for name in rows if name != baseline}
    out: dict[str, Any] = {"expressions": len(samples), **{name: summarize(r) for name, r in rows.items()},
                           "diffs": diffs, "per_expression": rows}
    atomic_write_json(out_file, out, indent=2)
    text = "; ".join(f"{name} {d['after']:.3f} vs {baseline} {d['before']:.3f} (diff {d['diff']:+.3f}, 95% CI "
                     f"[{d['lo']:+.3f}, {d['hi']:+.3f}])" for name, d in diffs.items())
    return f"{len(samples)} held-out expressions: {text}", {k: v for k, v in out.items() if k != "per_expression"}


def offline_runtime(threads: int | None):
    """Offline environment (no hub, no wandb), torch threads and quiet transformers logs for an in-process run of
    the stages; returns the function that restores the threads and the log settings."""
    import os

    import torch
    from transformers.utils import logging as hf_logging

    for key, value in (("HF_HUB_OFFLINE", "1"), ("TRANSFORMERS_OFFLINE", "1"), ("WANDB_MODE", "offline"),
                       ("TOKENIZERS_PARALLELISM", "false"), ("HF_DATASETS_OFFLINE", "1"),
                       ("LLAMAFACTORY_VERBOSITY", "WARN")):
        os.environ.setdefault(key, value)
    before, verbosity = torch.get_num_threads(), hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    if threads is not None:
        torch.set_num_threads(threads)
    hf_logging.set_verbosity_error()  # transformers' info logs would bury the stage lines
    hf_logging.disable_progress_bar()  # "Loading weights" bars of a few-MB model

    def restore() -> None:
        torch.set_num_threads(before)
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()

    return restore


@contextlib.contextmanager
def hf_verbosity(level: str):
    from transformers.utils import logging as hf_logging

    before = hf_logging.get_verbosity()
    getattr(hf_logging, f"set_verbosity_{level}")()
    try:
        yield
    finally:
        hf_logging.set_verbosity(before)


__all__ = ["answer_shares", "build_cot", "build_synthetic", "count_parameters", "final_model", "heldout_comparison",
           "hf_verbosity", "offline_runtime", "predict_and_evaluate", "sample_pool", "train_grpo", "train_sft"]
