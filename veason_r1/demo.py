"""The whole Veason-R1 method on the synthetic benchmark with tiny models, offline, on CPU: `veason-r1 demo`.

Stages (each one a library call of the stage it names, resumable, skipped when its outputs already exist):
  synth -> sample -> cot -> tiny -> sft -> rl -> eval_sft -> eval_rl -> report
1. `synth`: the synthetic ReVOS-format benchmark (`veason_r1.data.synthetic`) checked by the doctor.
2. `sample`: the stratified training pool (`veason_r1.datacon.stratified`), also written as the RL pool JSONL.
3. `cot`: seed CoT with the synthetic teacher (`veason_r1.datacon.cot`), exported as a LLaMA-Factory dataset at
   the policy's small image size.
4. `tiny`: a tiny random-init Qwen2.5-VL (`veason_r1.models.tiny`).
5. `sft`: LoRA CoT SFT with LLaMA-Factory, merged into a full model (`veason_r1.sft.train`).
6. `rl`: GRPO with the local one-device trainer and the four-term reward with the tiny SAM2 (`veason_r1.rl`).
7. `eval_sft` / 8. `eval_rl`: two-stage prediction (policy, then SAM2) on the valid split and ReVOS evaluation,
   the same path for the model before RL (the SFT model) and after RL (the last GRPO step).
9. `report`: `report.md`, `reward_terms.png`, `jf_before_after.png`, `overlay.gif` (`veason_r1.report`).

Rerunning with the same settings continues where a previous run stopped; `demo_state.json` remembers each stage's
time and summary, and a rerun with different settings is refused (use another --out or --force).
Tiny random-init models measure the pipeline, not the method: no number here is a Veason-R1 result.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from veason_r1.config import FRAMES
from veason_r1.errors import BadInput
from veason_r1.io_utils import atomic_write_json, atomic_write_text

STATE_FILE = "demo_state.json"
STAGES: tuple[tuple[str, str], ...] = (
    ("synth", "synthetic ReVOS-format benchmark + doctor"),
    ("sample", "stratified sampling of the training pool"),
    ("cot", "seed CoT with the synthetic teacher + SFT dataset export"),
    ("base", "the base policy: the shipped toy base (or a random-init tiny model)"),
    ("sft", "LoRA CoT SFT (LLaMA-Factory) + merge"),
    ("rl", "GRPO, local trainer, four-term reward with the demo's SAM2"),
    ("eval_sft", "predict + evaluate the valid split: before RL (SFT model)"),
    ("eval_rl", "predict + evaluate the valid split: after RL (last GRPO step)"),
    ("heldout", "held-out GRPO reward of both models, paired bootstrap"),
    ("report", "report.md, plots, overlay GIF"),
)
# settings that only change how the demo runs, not what it computes (a rerun may change them freely)
RUNTIME_FIELDS = ("out", "threads", "progress", "force", "verbose")


@dataclass
class DemoConfig:
    """Every size of the demo. Defaults: the whole method in ~5 minutes on 2 CPU cores (docs/demo.md)."""

    out: str = "demo_out"
    seed: int = 0
    # synthetic benchmark
    videos: int = 24  # ~75% train, ~25% valid
    height: int = 192
    width: int = 256
    min_frames: int = 8
    max_frames: int = 24
    # data construction
    pool_size: int = 64  # stratified pool (capped at the eligible train expressions)
    cot_frames: int = FRAMES.sft_frames  # training grid for CoT / SFT (docs/method.md §4)
    cot_brief: bool = True  # the synthetic teacher's short style: a toy model learns it in a few CPU steps
    # policy inputs: 112 px -> 16 visual tokens per frame (560 -> 400 on the real model)
    image_size: int = 112
    # the models the recipe starts from: "toy" = the shipped trained toy checkpoints (veason_r1/assets/toy,
    # `veason-r1 make-toy`), "tiny" = random-init tiny models (fast pipeline checks; they cannot learn much)
    policy: str = "toy"
    sam2: str = "toy"
    # policy "tiny" only: the tiny model's random lm_head is scaled so that LoRA (which leaves lm_head and the
    # final norm frozen) can
    # make it confident: at the stock init a perfectly aligned hidden state reaches a softmax of only ~0.14 over
    # the 3k vocabulary, so SFT plateaus near loss 2.5 and temperature-1 rollouts are noise. 1 = stock init.
    lm_head_scale: float = 4.0
    # SFT (LoRA; rates larger than the 3B recipe so a few CPU steps learn the format). The output layer trains in
    # full beside the adapter: the toy base answered only JSON in its own training, so its lm_head pushes every
    # English word down (measured: LoRA alone 11.8 -> 6.9 loss in 300 steps; with lm_head 12.6 -> 2.2 in 40).
    sft_steps: int = 150
    sft_batch_size: int = 4
    sft_learning_rate: float = 5e-3
    sft_lora_rank: int = 64
    sft_cutoff_len: int = 2048
    sft_additional_target: str | None = "lm_head"
    # GRPO (configs/grpo_local_tiny.yaml, these fields overridden)
    rl_config: str | None = None  # None: configs/grpo_local_tiny.yaml of this checkout
    rl_steps: int = 16
    rl_batch_size: int = 2  # prompts per step
    rl_rollout_n: int = 4
    rl_max_response_length: int = 384
    rl_learning_rate: float | None = None  # None: the YAML's
    # prediction / evaluation
    max_new_tokens: int = 384
    predict_batch_size: int = 8
    # runtime
    threads: int | None = 2  # torch intra-op threads (None: leave as is)
    progress: bool = True
    force: bool = False  # delete `out` and start over
    verbose: bool = True

    def validate(self, source: str = "DemoConfig") -> None:
        def need(cond: bool, name: str, why: str) -> None:
            if not cond:
                raise DemoSetupError(source, f"{name} = {getattr(self, name)!r}: {why}")

        need(self.videos >= 4, "videos", "needs >= 4 (train and valid both need videos)")
        need(self.image_size > 0 and self.image_size % 28 == 0, "image_size", "must be a positive multiple of 28")
        need(self.pool_size >= 1, "pool_size", "must be >= 1")
        need(self.sft_steps >= 1, "sft_steps", "must be >= 1")
        need(self.rl_steps >= 1, "rl_steps", "must be >= 1")
        need(self.rl_rollout_n >= 2, "rl_rollout_n", "GRPO needs >= 2 rollouts per prompt")
        need(self.rl_batch_size >= 1, "rl_batch_size", "must be >= 1")
        need(self.max_new_tokens >= 1 and self.rl_max_response_length >= 1, "max_new_tokens", "must be >= 1")
        need(self.threads is None or self.threads >= 1, "threads", "must be >= 1 or None")
        need(self.policy in ("toy", "tiny"), "policy", "must be 'toy' (the shipped toy base) or 'tiny' (random init)")
        need(self.sam2 in ("toy", "tiny"), "sam2", "must be 'toy' (the shipped toy SAM2) or 'tiny' (random init)")

    def fingerprint(self) -> dict[str, Any]:
        """The settings that decide the outputs (a rerun must match them to continue)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in RUNTIME_FIELDS}


class DemoSetupError(BadInput):
    """Bad settings or an output folder the demo cannot continue (raised before any stage runs): a user error."""


@dataclass
class StageRecord:
    name: str
    description: str
    status: str = "pending"  # ran | reused | pending | failed
    seconds: float = 0.0  # this run (0 when reused)
    first_seconds: float | None = None  # when it was computed (this run or an earlier one)
    summary: str = ""
    info: dict[str, Any] = field(default_factory=dict)


class Paths:
    """Every location the demo writes, under one output folder."""

    def __init__(self, out: str | os.PathLike):
        self.out = Path(out)
        self.state = self.out / STATE_FILE
        self.synth = self.out / "data" / "synth"
        self.select_meta = self.synth / "meta_expressions_train_select.json"
        self.pool = self.out / "data" / "pool.jsonl"
        self.cot = self.out / "cot"
        self.sft_data = self.cot / "sft"
        self.tiny = self.out / "models" / "tiny_qwen"
        self.heldout = self.out / "heldout.json"
        self.sft = self.out / "sft"
        self.sft_merged = self.sft / "merged"
        self.rl = self.out / "rl"
        self.pred_sft = self.out / "pred" / "before_rl"
        self.pred_rl = self.out / "pred" / "after_rl"
        self.report = self.out / "report.md"
        self.reward_plot = self.out / "reward_terms.png"
        self.jf_plot = self.out / "jf_before_after.png"
        self.gif = self.out / "overlay.gif"
        self.results = self.out / "results.json"

    def rl_model(self, step: int) -> Path:
        from veason_r1.rl.checkpoint import step_dir

        return step_dir(self.rl, step) / "model"


def default_rl_config() -> Path:
    """configs/grpo_local_tiny.yaml of the checkout this package is installed from (editable install)."""
    path = Path(__file__).resolve().parents[1] / "configs" / "grpo_local_tiny.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"the demo's GRPO config {path} is missing; pass DemoConfig.rl_config (--rl-config)")
    return path


class Demo:
    """Runs the stages in order; each stage returns (one-line summary, info) and is skipped when already done."""

    def __init__(self, cfg: DemoConfig):
        cfg.validate()
        self.cfg = cfg
        self.paths = Paths(cfg.out)
        self.records: dict[str, StageRecord] = {n: StageRecord(n, d) for n, d in STAGES}
        self._propagator = None
        self.start = time.perf_counter()

    # ------------------------------------------------------------------------------------------------- state
    def _load_state(self) -> None:
        p = self.paths
        if self.cfg.force and p.out.exists():
            if p.state.is_file() or not any(p.out.iterdir()):
                shutil.rmtree(p.out)
            else:
                raise DemoSetupError("--force", f"would delete {p.out}, which is not a demo output folder "
                                                f"(no {STATE_FILE})")
        if not p.state.is_file():
            if p.out.exists() and any(p.out.iterdir()):
                raise DemoSetupError(p.out, f"exists and is not a demo output folder (no {STATE_FILE})",
                                     hint="choose another --out")
            p.out.mkdir(parents=True, exist_ok=True)
            self._save_state()
            return
        state = json.loads(p.state.read_text())
        have, want = state.get("config", {}), self.cfg.fingerprint()
        diff = sorted(k for k in set(have) | set(want) if have.get(k) != want.get(k))
        if diff:
            changes = ", ".join(f"{k}: {have.get(k)!r} -> {want.get(k)!r}" for k in diff)
            raise DemoSetupError(p.out, f"was made with other settings ({changes})",
                                 hint="rerun with the same settings to continue, or use another --out, or --force "
                                      "to start over")
        for name, rec in (state.get("stages") or {}).items():
            if name in self.records and rec.get("status") in ("ran", "reused"):
                r = self.records[name]
                r.status, r.first_seconds = "done_before", rec.get("first_seconds")
                r.summary, r.info = rec.get("summary", ""), rec.get("info", {})

    def _save_state(self) -> None:
        stages = {}
        for n, r in self.records.items():
            d = dataclasses.asdict(r)
            if r.status == "done_before":
                d["status"] = "reused"
            stages[n] = d
        atomic_write_json(self.paths.state, {"config": self.cfg.fingerprint(), "stages": stages}, indent=2)

    # ------------------------------------------------------------------------------------------------ running
    def log(self, text: str) -> None:
        if self.cfg.verbose:
            from tqdm import tqdm

            tqdm.write(text, file=sys.stdout)
            sys.stdout.flush()

    def run_stage(self, index: int, name: str, fn: Callable[[], tuple[str, dict]], outputs_exist: Callable[[], bool]):
        rec = self.records[name]
        tag = f"[{index}/{len(STAGES)}] {name}"
        if rec.status == "done_before" and outputs_exist():
            rec.status, rec.seconds = "reused", 0.0
            took = f", took {rec.first_seconds:.1f} s then" if rec.first_seconds is not None else ""
            self.log(f"{tag}: done before ({rec.summary}{took}) - skipped")
            self._save_state()
            return rec
        self.log(f"{tag}: {rec.description} ...")
        t0 = time.perf_counter()
        try:
            summary, info = fn()
        except BaseException:
            rec.status, rec.seconds = "failed", time.perf_counter() - t0
            self._save_state()
            raise
        rec.status, rec.seconds = "ran", time.perf_counter() - t0
        rec.first_seconds, rec.summary, rec.info = rec.seconds, summary, info
        self._save_state()
        self.log(f"{tag}: done in {rec.seconds:.1f} s - {summary}")
        return rec

    def run(self) -> dict[str, Any]:
        self._load_state()
        restore = self._setup_runtime()
        try:
            return self._run_stages()
        finally:
            restore()

    def _run_stages(self) -> dict[str, Any]:
        p = self.paths
        plan = [
            ("synth", self.stage_synth, lambda: (p.synth / "synthetic_facts.json").is_file()),
            ("sample", self.stage_sample, lambda: p.select_meta.is_file() and p.pool.is_file()),
            ("cot", self.stage_cot, lambda: (p.sft_data / "dataset_info.json").is_file()),
            ("base", self.stage_base, lambda: (self.base_model / "config.json").is_file()),
            ("sft", self.stage_sft, lambda: (p.sft_merged / "merge_done.json").is_file()),
            ("rl", self.stage_rl, lambda: (p.rl_model(self.cfg.rl_steps) / "config.json").is_file()),
            ("eval_sft", lambda: self.stage_eval(p.sft_merged, p.pred_sft),
             lambda: (p.pred_sft / "results.json").is_file()),
            ("eval_rl", lambda: self.stage_eval(p.rl_model(self.cfg.rl_steps), p.pred_rl),
             lambda: (p.pred_rl / "results.json").is_file()),
            ("heldout", self.stage_heldout, lambda: p.heldout.is_file()),
        ]
        for i, (name, fn, exists) in enumerate(plan, start=1):
            self.run_stage(i, name, fn, exists)
        results = self.collect_results()
        self.run_stage(len(STAGES), "report", lambda: self.stage_report(results), lambda: False)
        total = time.perf_counter() - self.start
        from veason_r1.report import format_results_table, write_report

        results["total_seconds"] = total
        results["stages"] = [dataclasses.asdict(r) for r in self.records.values()]
        write_report(p.report, self._report_context(results))  # again, now with the report stage's own time
        atomic_write_json(p.results, results, indent=2)
        table = format_results_table(results)
        self.log("")
        self.log(table)
        self.log(f"\ntotal wall time {total:.1f} s; report: {p.report}")
        return {**results, "out": str(p.out), "report": str(p.report), "table": table,
                "files": {"report": str(p.report), "reward_plot": str(p.reward_plot), "jf_plot": str(p.jf_plot),
                          "gif": str(p.gif), "results": str(p.results), "state": str(p.state)}}

    def _setup_runtime(self) -> Callable[[], None]:
        """Offline environment, torch threads and quiet transformers logs; returns what undoes the last two."""
        import torch
        from transformers.utils import logging as hf_logging

        for key, value in (("HF_HUB_OFFLINE", "1"), ("TRANSFORMERS_OFFLINE", "1"), ("WANDB_MODE", "offline"),
                           ("TOKENIZERS_PARALLELISM", "false"), ("HF_DATASETS_OFFLINE", "1"),
                           ("LLAMAFACTORY_VERBOSITY", "WARN")):
            os.environ.setdefault(key, value)
        threads, verbosity = torch.get_num_threads(), hf_logging.get_verbosity()
        bars = hf_logging.is_progress_bar_enabled()
        if self.cfg.threads is not None:
            torch.set_num_threads(self.cfg.threads)
        hf_logging.set_verbosity_error()  # transformers' info logs would bury the stage lines
        hf_logging.disable_progress_bar()  # "Loading weights" bars of a 1M-parameter model

        def restore() -> None:
            torch.set_num_threads(threads)
            hf_logging.set_verbosity(verbosity)
            if bars:
                hf_logging.enable_progress_bar()

        return restore

    @property
    def propagator(self):
        """The demo's SAM2 (CPU): the shipped toy checkpoint or a random-init tiny one, loaded once for the reward,
        both evaluations and the held-out reward."""
        if self._propagator is None:
            from veason_r1.models.sam2 import load_sam2

            self._propagator = load_sam2(self.cfg.sam2, device="cpu", seed=self.cfg.seed)
        return self._propagator

    @property
    def base_model(self) -> Path:
        """The folder SFT starts from: the shipped toy base policy, or the demo's own random-init tiny model."""
        from veason_r1.models.toy import toy_policy_dir

        return toy_policy_dir() if self.cfg.policy == "toy" else self.paths.tiny

    # -------------------------------------------------------------------------------------------------- stages
    def stage_synth(self) -> tuple[str, dict]:
        from veason_r1.data.doctor import diagnose
        from veason_r1.data.synthetic import SynthConfig, summarize, write_benchmark

        c, p = self.cfg, self.paths
        scfg = SynthConfig(num_videos=c.videos, seed=c.seed, height=c.height, width=c.width,
                           min_frames=c.min_frames, max_frames=c.max_frames)
        write_benchmark(p.synth, scfg, fmt="revos", progress=c.progress)
        report = diagnose(p.synth, decode=True, progress=False)
        atomic_write_text(p.out / "data" / "doctor.txt",
                          "\n".join([*(str(i) for i in report.issues), report.summary()]) + "\n")
        if not report.ok:
            raise RuntimeError(f"the synthetic benchmark failed the doctor: {report.errors[0]} "
                               f"(all issues in {p.out / 'data' / 'doctor.txt'})")
        s = summarize(p.synth)
        types = s["type_ids"]
        summary = (f"{s['videos']} videos ({s['splits'].get('train', 0)} train / {s['splits'].get('valid', 0)} "
                   f"valid), {sum(types.values())} expressions (referring {types.get('0', 0)}, reasoning "
                   f"{types.get('1', 0)}, no-target {types.get('2', 0)}); doctor: {len(report.errors)} errors, "
                   f"{len(report.warnings)} warnings, {report.frames_checked} frames decoded")
        return summary, {"summary": s, "doctor": report.summary()}

    def stage_sample(self) -> tuple[str, dict]:
        from veason_r1.data.revos import load_json, meta_path
        from veason_r1.datacon.stratified import StratifiedConfig, expression_entries, sample_meta_file
        from veason_r1.io_utils import atomic_write_text as write

        c, p = self.cfg, self.paths
        meta_file = meta_path(p.synth, "train")
        eligible = sum(1 for e in expression_entries(load_json(meta_file), str(meta_file)) if e.type_id in (0, 1))
        target = min(c.pool_size, eligible)
        report = sample_meta_file(meta_file, p.select_meta, StratifiedConfig(target_size=target, seed=c.seed))
        atomic_write_text(p.out / "data" / "sampling.txt", report.format() + "\n")
        write(p.pool, "".join(json.dumps({"video": v, "exp_id": e}) + "\n" for v, e in report.selected))
        final = report.final
        summary = (f"{len(report.selected)} of {report.counts['total']} train expressions (ref_single "
                   f"{final.get('ref_single', 0)}, ref_multi {final.get('ref_multi', 0)}, reason_single "
                   f"{final.get('reason_single', 0)}, reason_multi {final.get('reason_multi', 0)})")
        return summary, {"selected": len(report.selected), "final": final, "r_ref": report.r_ref,
                         "r_single": report.r_single}

    def stage_cot(self) -> tuple[str, dict]:
        from veason_r1.data.revos import ReVOSDataset
        from veason_r1.datacon.cot import FINAL_JSON, CotConfig, run_cot
        from veason_r1.datacon.teachers import SyntheticTeacher
        from veason_r1.sft.dataset import export_llamafactory_dataset, load_cot_records

        c, p = self.cfg, self.paths
        ds = ReVOSDataset(p.synth, "train", meta_file=p.select_meta, load_foreground=False)
        result = run_cot(ds, SyntheticTeacher.from_root(p.synth, brief=c.cot_brief), p.cot,
                         CotConfig(num_frames=c.cot_frames, seed=c.seed, concurrency=2), progress=c.progress)
        if result.aborted or result.failed:
            raise RuntimeError(f"CoT generation did not finish: {result.format()}")
        records = load_cot_records(p.cot / FINAL_JSON)
        export_llamafactory_dataset(records, p.sft_data, name="veason_cot", image_size=c.image_size,
                                    progress=c.progress)
        chars = [len(r["CoT"]) for r in records]
        summary = (f"{len(records)} CoT records ({result.skipped} skipped: target never visible), "
                   f"{sum(chars) / max(1, len(chars)):.0f} characters of reasoning on average; SFT dataset at "
                   f"{c.image_size}x{c.image_size}")
        return summary, {"records": len(records), "skipped": result.skipped}

    def stage_base(self) -> tuple[str, dict]:
        c = self.cfg
        if c.policy == "toy":
            manifest = json.loads((self.base_model / "manifest.json").read_text())
            held = manifest["heldout"]
            params = self._count_params(self.base_model)
            return (f"toy base policy, {params / 1e6:.2f}M parameters (held-out: box IoU {held['box_iou']:.2f}, "
                    f"parse rate {held['parse_rate']:.2f}, keyframe {held['when']['exact']:.2f})",
                    {"parameters": params, "path": str(self.base_model), "heldout": held})
        from veason_r1.models.tiny import make_tiny_qwen

        path = make_tiny_qwen(self.paths.tiny, seed=c.seed)
        scale_output_layer(path, c.lm_head_scale)
        params = self._count_params(path)
        return (f"{params / 1e6:.2f}M parameters, random init (seed {c.seed}), lm_head x{c.lm_head_scale:g}",
                {"parameters": params, "lm_head_scale": c.lm_head_scale})

    @staticmethod
    def _count_params(model_dir: Path) -> int:
        from safetensors import safe_open

        total = 0
        for f in sorted(Path(model_dir).glob("*.safetensors")):
            with safe_open(str(f), framework="pt") as st:
                for k in st.keys():  # noqa: SIM118 - safe_open is not a dict
                    total += _numel(st.get_slice(k).get_shape())
        return total

    def stage_sft(self) -> tuple[str, dict]:
        import torch

        from veason_r1.sft.config import SFTConfig
        from veason_r1.sft.train import run_sft

        c, p = self.cfg, self.paths
        config = SFTConfig(
            model_name_or_path=str(self.base_model), dataset="veason_cot", dataset_dir=str(p.sft_data),
            output_dir=str(p.sft / "adapter"), export_dir=str(p.sft_merged), image_size=c.image_size,
            cutoff_len=c.sft_cutoff_len, preprocessing_num_workers=None, dataloader_num_workers=0,
            lora_rank=c.sft_lora_rank, lora_alpha=2 * c.sft_lora_rank, lora_dropout=0.0,
            learning_rate=c.sft_learning_rate, max_steps=c.sft_steps, per_device_train_batch_size=c.sft_batch_size,
            gradient_accumulation_steps=1, lr_scheduler_type="cosine", warmup_steps=0.05,
            logging_steps=max(1, c.sft_steps // 30), save_steps=max(1, c.sft_steps // 2), save_total_limit=1,
            gradient_checkpointing=False, bf16=False, seed=c.seed, infer_dtype="float32",
            additional_target=c.sft_additional_target,
        )
        config, _notes = config.for_device(torch.cuda.is_available())
        threads = torch.get_num_threads()
        log_file = p.sft / "llamafactory.log"
        log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(log_file, "a") as log, contextlib.redirect_stdout(log), _hf_verbosity("warning"):
            # LLaMA-Factory's printed example and the trainer's loss dicts go to the log; the trainer shows its
            # progress bar only when transformers logs at warning level or lower
            result = run_sft(config, launcher="inprocess")
        torch.set_num_threads(threads)  # the HF trainer may reset it
        losses = result.losses
        summary = (f"{c.sft_steps} LoRA steps (batch {c.sft_batch_size}), loss {losses[0]:.3f} -> {losses[-1]:.3f}"
                   if losses else f"{c.sft_steps} LoRA steps (batch {c.sft_batch_size})")
        return summary, {"losses": losses, "merged": str(result.merged_dir)}

    def stage_rl(self) -> tuple[str, dict]:
        from veason_r1.io_utils import read_jsonl
        from veason_r1.rl.config import load_config
        from veason_r1.rl.local_trainer import LocalGRPOTrainer

        c, p = self.cfg, self.paths
        overrides = [
            f"data.train_root={p.synth}", f"data.train_pool={p.pool}", "data.val_root=null",
            f"data.image_size={c.image_size}", f"data.train_batch_size={c.rl_batch_size}",
            f"data.max_response_length={c.rl_max_response_length}", f"data.seed={c.seed}",
            f"model.path={p.sft_merged}", f"rollout.n={c.rl_rollout_n}",
            f"rollout.batch_size={c.rl_batch_size * c.rl_rollout_n}",
            f"actor.ppo_mini_batch_size={c.rl_batch_size}",
            f"trainer.default_local_dir={p.rl}", f"trainer.total_training_steps={c.rl_steps}",
            f"trainer.save_freq={max(1, c.rl_steps // 2)}", "trainer.test_freq=-1", "trainer.val_before_train=false",
            "trainer.logger=[console]", "trainer.device=cpu", "trainer.dtype=float32", f"trainer.seed={c.seed}",
            "trainer.max_ckpt_to_keep=2", f"reward.sam2={c.sam2}",
        ]
        if c.rl_learning_rate is not None:
            overrides.append(f"actor.lr={c.rl_learning_rate}")
        cfg = load_config(c.rl_config or default_rl_config(), overrides)
        trainer = LocalGRPOTrainer(cfg, propagator=self.propagator, verbose=c.progress)
        summary = trainer.fit()
        metrics = [m for m in read_jsonl(p.rl / "metrics.jsonl") if "reward/overall" in m]
        first, last = metrics[0], metrics[-1]
        text = (f"{summary['step']} GRPO steps ({c.rl_batch_size} prompts x {c.rl_rollout_n} rollouts), reward "
                f"{first['reward/overall']:.2f} (step {first['step']}) -> {last['reward/overall']:.2f} "
                f"(step {last['step']}); model {p.rl_model(c.rl_steps)}")
        return text, {"steps": summary["step"], "model": str(p.rl_model(c.rl_steps))}

    def stage_eval(self, model_dir: Path, pred: Path) -> tuple[str, dict]:
        from veason_r1.eval.evaluators import EvalConfig, evaluate_revos, per_expression_csv
        from veason_r1.inference.pipeline import InferenceConfig, build_engine
        from veason_r1.inference.predict import (
            PredictConfig,
            merge_predictions,
            open_benchmark,
            run_stage1,
            run_stage2,
        )

        c = self.cfg
        dataset = open_benchmark("revos", self.paths.synth, "valid")
        config = PredictConfig(benchmark="revos", split="valid", model=str(model_dir),
                               inference=InferenceConfig(c.image_size, FRAMES.eval_frames, c.max_new_tokens),
                               batch_size=c.predict_batch_size)
        engine = build_engine("hf", model_dir, c.image_size, c.predict_batch_size, device="cpu", dtype="float32")
        s1 = run_stage1(dataset, engine, pred, config, progress=c.progress)
        del engine
        s2 = run_stage2(dataset, self.propagator, pred, config, progress=c.progress)
        merge = merge_predictions(dataset, pred, config)
        if not merge.ok:
            raise RuntimeError(f"{pred}: incomplete predictions: {(merge.missing_stage1 + merge.missing_masks)[:5]}")
        summary, results = evaluate_revos(self.paths.synth, pred, EvalConfig("revos", "valid", "zero", workers=1,
                                                                              progress=c.progress))
        atomic_write_json(pred / "results.json", summary, indent=2)
        atomic_write_text(pred / "results_per_expression.csv",
                          per_expression_csv(results, ["J", "F", "A", "R", "R_scale_free"], "zero"))
        parsed = self._parsed_share(pred)
        o = summary["overall"]
        text = (f"{merge.expressions} expressions, answers in the exact think/answer format: {parsed['format_ok']}, "
                f"with boxes: {parsed['with_boxes']}; overall J {o['J']:.1f}  F {o['F']:.1f}  J&F {o['JF']:.1f}")
        return text, {"stage1": s1, "stage2": s2, "overall": o, **parsed}

    def stage_heldout(self) -> tuple[str, dict]:
        """Greedy GRPO reward of the SFT and the RL model on the valid split's target expressions (fixed RL grids),
        and the paired bootstrap interval of the difference."""
        from veason_r1.eval.bootstrap import paired_bootstrap
        from veason_r1.reward import RewardConfig
        from veason_r1.rl.heldout import HeldoutConfig, heldout_rewards, heldout_samples, summarize

        c, p = self.cfg, self.paths
        cfg = HeldoutConfig(image_size=c.image_size, max_new_tokens=c.rl_max_response_length, seed=c.seed,
                            batch_size=c.predict_batch_size)
        samples = heldout_samples(p.synth, cfg)
        reward = RewardConfig(image_size=c.image_size)
        rows = {name: heldout_rewards(model, samples, self.propagator, cfg, reward)
                for name, model in (("sft", p.sft_merged), ("grpo", p.rl_model(c.rl_steps)))}
        boot = paired_bootstrap([r["overall"] for r in rows["sft"]], [r["overall"] for r in rows["grpo"]],
                                seed=c.seed)
        out = {"expressions": len(samples), "sft": summarize(rows["sft"]), "grpo": summarize(rows["grpo"]),
               "diff": boot, "per_expression": rows}
        atomic_write_json(p.heldout, out, indent=2)
        return (f"{len(samples)} held-out expressions: reward SFT {boot['before']:.3f} -> GRPO {boot['after']:.3f} "
                f"(diff {boot['diff']:+.3f}, 95% CI [{boot['lo']:+.3f}, {boot['hi']:+.3f}])",
                {k: v for k, v in out.items() if k != "per_expression"})

    @staticmethod
    def _parsed_share(pred: Path) -> dict[str, int]:
        from veason_r1.io_utils import read_jsonl
        from veason_r1.prompting import FORMAT_PATTERN

        recs = list(read_jsonl(pred / "predictions.jsonl"))

        def noted(text: str) -> int:
            return sum(1 for r in recs if any(text in n for n in r["notes"]))

        return {"answers": len(recs), "with_boxes": sum(1 for r in recs if r["boxes"]),
                "format_ok": sum(1 for r in recs if FORMAT_PATTERN.fullmatch(r["response"].strip())),
                "keyframe_not_shown": noted("not shown"), "no_keyframe": noted("no keyframe"),
                "no_valid_boxes": noted("no valid boxes")}

    def stage_report(self, results: dict) -> tuple[str, dict]:
        from veason_r1.report import make_overlay_gif, plot_jf_before_after, plot_reward_terms, write_report

        p = self.paths
        plot_reward_terms(results["reward"]["per_step"], p.reward_plot)
        plot_jf_before_after(results["before_rl"], results["after_rl"], p.jf_plot)
        gif = make_overlay_gif(p.synth, "valid", p.pred_rl, p.gif, before_pred=p.pred_sft)
        results["overlay"] = gif
        write_report(p.report, self._report_context(results))
        return f"{p.report.name}, {p.reward_plot.name}, {p.jf_plot.name}, {p.gif.name} ({gif['frames']} frames)", \
            {"overlay": gif}

    # ------------------------------------------------------------------------------------------------- results
    def collect_results(self) -> dict[str, Any]:
        from veason_r1.io_utils import read_jsonl

        p = self.paths
        out: dict[str, Any] = {}
        for key, pred in (("before_rl", p.pred_sft), ("after_rl", p.pred_rl)):
            summary = json.loads((pred / "results.json").read_text())
            out[key] = {split: {m: summary[split][m] for m in ("J", "F", "JF")}
                        for split in ("referring", "reasoning", "overall")}
            out[key]["num_expressions"] = summary["num_expressions"]
            out[key]["no_target"] = {m: summary["no_target"][m] for m in ("J", "F", "JF")}
            out[key]["answers"] = self._parsed_share(pred)
        per_step = [m for m in read_jsonl(p.rl / "metrics.jsonl") if "reward/overall" in m]
        per_step = sorted({m["step"]: m for m in per_step}.values(), key=lambda m: m["step"])
        terms = ("format", "keyframe", "spatial", "consistency", "overall")
        window = max(1, len(per_step) // 3)

        def mean_of(rows: list[dict]) -> dict[str, float]:
            return {t: sum(r[f"reward/{t}"] for r in rows) / len(rows) for t in terms}

        out["config"] = dataclasses.asdict(self.cfg)
        held = json.loads(p.heldout.read_text())
        out["heldout_reward"] = {"expressions": held["expressions"], "sft": held["sft"], "grpo": held["grpo"],
                                 "diff": held["diff"]}
        out["reward"] = {
            "steps": len(per_step), "window": window,
            "first": mean_of(per_step[:window]), "last": mean_of(per_step[-window:]),
            "per_step": [{"step": r["step"], **{t: r[f"reward/{t}"] for t in terms},
                          "response_length": r.get("response_length/mean")} for r in per_step],
        }
        return out

    def _report_context(self, results: dict) -> dict:
        return {"config": dataclasses.asdict(self.cfg), "results": results,
                "stages": [dataclasses.asdict(r) for r in self.records.values()],
                "total_seconds": time.perf_counter() - self.start, "paths": self.paths}


def scale_output_layer(model_dir: str | os.PathLike, factor: float) -> None:
    """Multiply the saved `lm_head.weight` by `factor` (see DemoConfig.lm_head_scale); 1 leaves the file alone."""
    if factor == 1:
        return
    from safetensors.torch import load_file, save_file

    path = Path(model_dir) / "model.safetensors"
    state = load_file(str(path))
    if "lm_head.weight" not in state:
        raise ValueError(f"{path}: no lm_head.weight to scale (tied embeddings?)")
    state["lm_head.weight"] = state["lm_head.weight"] * factor
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(state, str(tmp), metadata={"format": "pt"})
    os.replace(tmp, path)


@contextlib.contextmanager
def _hf_verbosity(level: str):
    from transformers.utils import logging as hf_logging

    before = hf_logging.get_verbosity()
    getattr(hf_logging, f"set_verbosity_{level}")()
    try:
        yield
    finally:
        hf_logging.set_verbosity(before)


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


def demo_config(overrides: list[str] | tuple[str, ...] = (), **values: Any) -> DemoConfig:
    """`DemoConfig` from keyword values (the CLI's flags) then `key=value` overrides, in the grammar every config
    here uses (`veason_r1.structured_config`: unknown keys refused, types strict, errors naming the override)."""
    from veason_r1.structured_config import load_structured

    return load_structured(DemoConfig, None, overrides, base=values)


def run_demo(cfg: DemoConfig) -> dict[str, Any]:
    """Run (or continue) the whole demo; returns the results (J/F/J&F per split before and after RL, reward terms
    first vs last RL steps), the stage records, the total seconds, the printed table and the written files."""
    return Demo(cfg).run()


__all__ = ["STAGES", "DemoConfig", "DemoSetupError", "Paths", "StageRecord", "demo_config", "run_demo",
           "scale_output_layer"]
