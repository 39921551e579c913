"""The whole Veason-R1 method on the synthetic benchmark with toy models, offline, on CPU: `veason-r1 demo`.

Stages (each a function of `veason_r1.stages`, run by `veason_r1.runner`: resumable, skipped when done):
  synth -> sample -> cot -> base -> sft -> rl -> eval_sft -> eval_rl -> heldout -> report
1. `synth`: the synthetic ReVOS-format benchmark (`veason_r1.data.synthetic`) checked by the doctor.
2. `sample`: the stratified training pool (`veason_r1.datacon.stratified`), also written as the RL pool JSONL.
3. `cot`: seed CoT with the synthetic teacher (`veason_r1.datacon.cot`), exported as a LLaMA-Factory dataset at
   the policy's small image size.
4. `base`: the policy SFT starts from: the shipped toy base (`veason_r1/assets/toy`) or a random-init tiny model.
5. `sft`: LoRA CoT SFT with LLaMA-Factory, merged into a full model (`veason_r1.sft.train`).
6. `rl`: GRPO with the local one-device trainer and the four-term reward with the demo's SAM2 (`veason_r1.rl`).
7. `eval_sft` / 8. `eval_rl`: two-stage prediction (policy, then SAM2) on the valid split and ReVOS evaluation,
   the same path for the model before RL (the SFT model) and after RL (the last GRPO step).
9. `heldout`: the greedy GRPO reward of both models on the valid split, with a paired bootstrap interval.
10. `report`: `report.md`, `reward_terms.png`, `jf_before_after.png`, `overlay.gif` (`veason_r1.report`).

`DemoConfig` nests each stage's own config (SynthConfig, CotConfig, SFTConfig, GRPOConfig from
configs/grpo_demo.yaml); `--set sft.max_steps=300` or `--set rl.rollout.n=8` changes one value, in the grammar every
config here uses. Rerunning with the same settings continues where a previous run stopped (`demo_state.json`); a
rerun with different settings is refused (use another --out or --force). Toy models measure the recipe and the
code, not the method: no number here is a Veason-R1 result.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from veason_r1 import stages
from veason_r1.data.synthetic import SynthConfig
from veason_r1.datacon.cot import CotConfig
from veason_r1.errors import BadInput
from veason_r1.models.config import PolicyConfig, PropagatorConfig
from veason_r1.models.families import DEFAULT_FAMILY
from veason_r1.rl.config import GRPOConfig
from veason_r1.runner import StageRecord, StageRunner
from veason_r1.sft.config import SFTConfig
from veason_r1.structured_config import as_dict, flatten, merge_layers

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
# the models the demo can start from: named ones, which need no download
DEMO_POLICIES = ("toy", "tiny")
DEMO_PROPAGATORS = ("toy", "tiny", "toy-hf-sam2")
# stage-config fields the demo fills in itself (paths under `out`, `seed`, `image_size`, the models): `--set` on them
# is refused rather than silently overwritten
OWNED = frozenset({
    "synth.seed", "cot.seed",
    "sft.model_name_or_path", "sft.dataset", "sft.dataset_dir", "sft.output_dir", "sft.export_dir",
    "sft.image_size", "sft.seed",
    "rl.data.train_root", "rl.data.train_pool", "rl.data.val_root", "rl.data.image_size", "rl.data.seed",
    "rl.model.path", "rl.trainer.default_local_dir", "rl.trainer.seed", "rl.reward.propagator.name",
    "rl.reward.propagator.checkpoint", "rl.reward.propagator.device", "rl.reward.propagator.offload",
    "rl.reward.image_size",
})


def demo_rl_yaml() -> Path:
    """configs/grpo_demo.yaml of the checkout this package is installed from (editable install)."""
    path = Path(__file__).resolve().parents[1] / "configs" / "grpo_demo.yaml"
    if not path.is_file():
        from veason_r1.errors import MissingInput

        raise MissingInput(path, "the demo's GRPO config is missing", hint="pass --rl-config")
    return path


def demo_rl() -> GRPOConfig:
    from veason_r1.rl.config import load_config

    return load_config(demo_rl_yaml())


def demo_sft() -> SFTConfig:
    """LoRA SFT sized for a few CPU minutes; rates larger than the 3B recipe so the toy model learns the format.
    The output layer trains in full beside the adapter (`additional_target`): the toy base answered only JSON in
    its own training, so its lm_head pushes every English word down (measured: LoRA alone 11.8 -> 6.9 loss in 300
    steps; with lm_head 12.6 -> 2.2 in 40)."""
    return SFTConfig(
        max_steps=150, per_device_train_batch_size=4, learning_rate=5e-3, lora_rank=64, lora_alpha=128,
        lora_dropout=0.0, cutoff_len=2048, additional_target="lm_head", preprocessing_num_workers=None,
        dataloader_num_workers=0, gradient_accumulation_steps=1, lr_scheduler_type="cosine", warmup_steps=0.05,
        logging_steps=5, save_steps=75, save_total_limit=1, gradient_checkpointing=False, bf16=False,
        infer_dtype="float32")


@dataclass
class DemoEval:
    """Prediction on the valid split (and the held-out reward's generation)."""

    max_new_tokens: int = 384
    batch_size: int = 8


@dataclass
class DemoConfig:
    """The demo: its models, sizes and each stage's own config. Defaults: the whole method in ~7 minutes on 2 CPU
    cores (docs/demo.md)."""

    out: str = "demo_out"
    seed: int = 0  # data, models and training (filled into each stage's config)
    # policy inputs: 112 px -> 16 visual tokens per frame (560 -> 400 on the real model)
    image_size: int = 112
    # the models the recipe starts from (models/config.py, on the CPU): "toy" = the shipped trained toy checkpoints
    # (veason_r1/assets/toy, `veason-r1 make-toy`), "tiny" = random-init tiny models (fast pipeline checks; they
    # cannot learn much); the propagator also "toy-hf-sam2" (the toy weights through transformers)
    policy: PolicyConfig = field(default_factory=lambda: PolicyConfig(model="toy", device="cpu", dtype="float32"))
    propagator: PropagatorConfig = field(default_factory=lambda: PropagatorConfig(name="toy", device="cpu"))
    # policy "tiny" only: its random lm_head is scaled so that LoRA (which leaves lm_head and the final norm
    # frozen) can make it confident: at the stock init a perfectly aligned hidden state reaches a softmax of only
    # ~0.14 over the 3k vocabulary, so SFT plateaus near loss 2.5 and temperature-1 rollouts are noise.
    lm_head_scale: float = 4.0
    synth: SynthConfig = field(default_factory=lambda: SynthConfig(num_videos=24, min_frames=8, max_frames=24))
    pool_size: int = 64  # stratified pool (capped at the eligible train expressions)
    cot: CotConfig = field(default_factory=lambda: CotConfig(concurrency=2))
    cot_brief: bool = True  # the synthetic teacher's short style: a toy model learns it in a few CPU steps
    sft: SFTConfig = field(default_factory=demo_sft)
    rl: GRPOConfig = field(default_factory=demo_rl)
    eval: DemoEval = field(default_factory=DemoEval)
    # runtime
    threads: int | None = 2  # torch intra-op threads (None: leave as is)
    progress: bool = True
    force: bool = False  # delete `out` and start over
    verbose: bool = True

    def validate(self, source: str = "DemoConfig") -> None:
        def need(cond: bool, name: str, why: str) -> None:
            if not cond:
                value = flatten(as_dict(self)).get(name, getattr(self, name, None))
                raise DemoSetupError(source, f"{name} = {value!r}: {why}")

        need(self.synth.num_videos >= 4, "synth.num_videos", "needs >= 4 (train and valid both need videos)")
        need(DEFAULT_FAMILY.image_size_problem(self.image_size) is None, "image_size",
             DEFAULT_FAMILY.image_size_problem(self.image_size) or "")
        need(self.pool_size >= 1, "pool_size", "must be >= 1")
        need(self.sft.max_steps >= 1, "sft.max_steps", "must be >= 1 (the demo trains by steps)")
        need((self.rl.trainer.total_training_steps or 0) >= 1, "rl.trainer.total_training_steps", "must be >= 1")
        need(self.eval.max_new_tokens >= 1, "eval.max_new_tokens", "must be >= 1")
        need(self.eval.batch_size >= 1, "eval.batch_size", "must be >= 1")
        need(self.threads is None or self.threads >= 1, "threads", "must be >= 1 or None")
        need(self.policy.model in DEMO_POLICIES, "policy.model",
             "must be 'toy' (the shipped toy base) or 'tiny' (random init)")
        need(self.policy.device == "cpu", "policy.device", "the demo runs on the CPU")
        need(self.policy.dtype in ("auto", "float32"), "policy.dtype", "the demo trains and predicts in float32")
        need(self.propagator.device == "cpu", "propagator.device", "the demo runs on the CPU")
        need(self.propagator.name in DEMO_PROPAGATORS, "propagator.name", "must be 'toy' (the shipped toy SAM2), "
             "'toy-hf-sam2' (the same weights through transformers) or 'tiny' (random init)")
        need(self.propagator.checkpoint is None, "propagator.checkpoint",
             "the demo's propagators are named ones, which bring their own weights")
        self.synth.validate()
        self.rl.validate(source)

    def fingerprint(self) -> dict[str, Any]:
        """The settings that decide the outputs, as dotted keys (a rerun must match them to continue)."""
        return {k: v for k, v in flatten(as_dict(self)).items() if k.split(".")[0] not in RUNTIME_FIELDS}

    # the stage configs with what the demo fills in
    def synth_config(self) -> SynthConfig:
        return dataclasses.replace(self.synth, seed=self.seed)

    def cot_config(self) -> CotConfig:
        return dataclasses.replace(self.cot, seed=self.seed)

    def sft_config(self, paths: Paths, base_model: Path) -> SFTConfig:
        return dataclasses.replace(
            self.sft, model_name_or_path=str(base_model), dataset="veason_cot", dataset_dir=str(paths.sft_data),
            output_dir=str(paths.sft / "adapter"), export_dir=str(paths.sft_merged), image_size=self.image_size,
            seed=self.seed)

    def rl_config(self, paths: Paths) -> GRPOConfig:
        rl = self.rl
        return dataclasses.replace(
            rl,
            data=dataclasses.replace(rl.data, train_root=str(paths.synth), train_pool=str(paths.pool), val_root=None,
                                     image_size=self.image_size, seed=self.seed),
            model=dataclasses.replace(rl.model, path=str(paths.sft_merged)),
            trainer=dataclasses.replace(rl.trainer, default_local_dir=str(paths.rl), seed=self.seed),
            reward=dataclasses.replace(rl.reward, propagator=self.propagator))


class DemoSetupError(BadInput):
    """Bad settings or an output folder the demo cannot continue (raised before any stage runs): a user error."""


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

    def top_level(self) -> list[str]:
        """The names directly inside `out` the demo writes: what `--force` may delete (and nothing else)."""
        return sorted({p.relative_to(self.out).parts[0] for p in vars(self).values()
                       if isinstance(p, Path) and p != self.out})


class Demo:
    """The demo's stages, in order, through one `StageRunner`."""

    def __init__(self, cfg: DemoConfig):
        cfg.validate()
        self.cfg = cfg
        self.paths = Paths(cfg.out)
        self.runner = StageRunner(cfg.out, STAGES, cfg.fingerprint(), state_file=STATE_FILE, what="demo",
                                  force=cfg.force, verbose=cfg.verbose, error=DemoSetupError,
                                  outputs=self.paths.top_level())
        self._propagator = None

    def run(self) -> dict[str, Any]:
        self.runner.open()
        restore = self._setup_runtime()
        try:
            return self._run_stages()
        finally:
            restore()

    def _run_stages(self) -> dict[str, Any]:
        from veason_r1.report import demo_results, format_results_table, write_report
        from veason_r1.rl.heldout import HeldoutConfig

        c, p, run = self.cfg, self.paths, self.runner.run
        sft, rl = c.sft_config(p, self.base_model), c.rl_config(p)
        rl_model = stages.final_model(rl)
        ev = c.eval
        run("synth", lambda: stages.build_synthetic(p.synth, c.synth_config(), p.out / "data" / "doctor.txt",
                                                    c.progress),
            lambda: (p.synth / "synthetic_facts.json").is_file())
        run("sample", lambda: stages.sample_pool(p.synth, p.select_meta, p.pool, c.pool_size, c.seed,
                                                 p.out / "data" / "sampling.txt"),
            lambda: p.select_meta.is_file() and p.pool.is_file())
        run("cot", lambda: stages.build_cot(p.synth, p.select_meta, p.cot, p.sft_data, c.cot_config(), c.image_size,
                                            c.cot_brief, c.progress),
            lambda: (p.sft_data / "dataset_info.json").is_file())
        run("base", self.stage_base, lambda: (self.base_model / "config.json").is_file())
        run("sft", lambda: stages.train_sft(sft, p.sft / "llamafactory.log"),
            lambda: (p.sft_merged / "merge_done.json").is_file())
        run("rl", lambda: stages.train_grpo(rl, self.propagator, c.progress),
            lambda: (rl_model / "config.json").is_file())
        for name, model, pred in (("eval_sft", p.sft_merged, p.pred_sft), ("eval_rl", rl_model, p.pred_rl)):
            run(name, lambda m=model, d=pred: stages.predict_and_evaluate(
                p.synth, m, d, self.propagator, c.image_size, ev.max_new_tokens, ev.batch_size, c.progress),
                lambda d=pred: (d / "results.json").is_file())
        held = HeldoutConfig(image_size=c.image_size, max_new_tokens=rl.data.max_response_length, seed=c.seed,
                             batch_size=ev.batch_size)
        run("heldout", lambda: stages.heldout_comparison(p.synth, {"sft": p.sft_merged, "grpo": rl_model},
                                                         self.propagator, held, p.heldout, seed=c.seed),
            lambda: p.heldout.is_file())
        results = demo_results(p, as_dict(c))
        run("report", lambda: self.stage_report(results), lambda: False)
        total = self.runner.elapsed()
        results["total_seconds"] = total
        results["stages"] = self.runner.stage_dicts()
        write_report(p.report, self._report_context(results))  # again, now with the report stage's own time
        from veason_r1.io_utils import atomic_write_json

        atomic_write_json(p.results, results, indent=2)
        table = format_results_table(results)
        self.runner.log("")
        self.runner.log(table)
        self.runner.log(f"\ntotal wall time {total:.1f} s; report: {p.report}")
        return {**results, "out": str(p.out), "report": str(p.report), "table": table,
                "files": {"report": str(p.report), "reward_plot": str(p.reward_plot), "jf_plot": str(p.jf_plot),
                          "gif": str(p.gif), "results": str(p.results), "state": str(p.state)}}

    def _setup_runtime(self) -> Callable[[], None]:
        return stages.offline_runtime(self.cfg.threads)

    @property
    def propagator(self):
        """The demo's SAM2 (CPU): the shipped toy checkpoint or a random-init tiny one, loaded once for the reward,
        both evaluations and the held-out reward."""
        if self._propagator is None:
            self._propagator = self.cfg.propagator.load(seed=self.cfg.seed)
        return self._propagator

    @property
    def base_model(self) -> Path:
        """The folder SFT starts from: the shipped toy base policy, or the demo's own random-init tiny model."""
        from veason_r1.models.toy import toy_policy_dir

        return toy_policy_dir() if self.cfg.policy.model == "toy" else self.paths.tiny

    def stage_base(self) -> tuple[str, dict]:
        c = self.cfg
        if c.policy.model == "toy":
            manifest = json.loads((self.base_model / "manifest.json").read_text())
            held = manifest["heldout"]
            params = stages.count_parameters(self.base_model)
            summary = (f"toy base policy, {params / 1e6:.2f}M parameters (held-out: box IoU {held['box_iou']:.2f}, "
                       f"parse rate {held['parse_rate']:.2f}, keyframe {held['when']['exact']:.2f})")
            return summary, {"parameters": params, "path": str(self.base_model), "heldout": held}
        from veason_r1.models.tiny import make_tiny_qwen

        path = make_tiny_qwen(self.paths.tiny, seed=c.seed)
        scale_output_layer(path, c.lm_head_scale)
        params = stages.count_parameters(path)
        return (f"{params / 1e6:.2f}M parameters, random init (seed {c.seed}), lm_head x{c.lm_head_scale:g}",
                {"parameters": params, "lm_head_scale": c.lm_head_scale})

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

    def _report_context(self, results: dict) -> dict:
        return {"config": as_dict(self.cfg), "results": results, "stages": self.runner.stage_dicts(),
                "total_seconds": self.runner.elapsed(), "paths": self.paths}


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
    from veason_r1.io_utils import honour_umask

    honour_umask(tmp)  # safetensors writes 0600
    os.replace(tmp, path)




def demo_config(overrides: list[str] | tuple[str, ...] = (), *, rl_config: str | os.PathLike | None = None,
                **values: Any) -> DemoConfig:
    """`DemoConfig` from its defaults, then `rl_config` (a GRPO YAML replacing configs/grpo_demo.yaml), then keyword
    values (nested mappings: the CLI's flags), then `key=value` overrides (`sft.max_steps=300`), in the grammar
    every config here uses (`veason_r1.structured_config`: unknown keys refused, types strict, errors naming the
    override). Keys the demo fills in itself (`OWNED`) are refused."""
    from veason_r1.structured_config import load_structured, parse_overrides

    base = as_dict(DemoConfig())
    if rl_config is not None:
        from veason_r1.rl.config import load_config

        base["rl"] = as_dict(load_config(rl_config))
    for source, layer in [("config", values), *((f"override {t!r}", v) for t, v in parse_overrides(list(overrides)))]:
        owned = sorted(k for k in flatten(dict(layer)) if k in OWNED)
        if owned:
            raise DemoSetupError(source if source != "config" else owned[0],
                                 f"{owned[0]} is filled in by the demo (from out, seed, image_size, policy or propagator)",
                                 hint="set the demo's own field instead")
    return load_structured(DemoConfig, None, overrides, base=merge_layers(base, values))


def run_demo(cfg: DemoConfig) -> dict[str, Any]:
    """Run (or continue) the whole demo; returns the results (J/F/J&F per split before and after RL, reward terms
    first vs last RL steps, the held-out reward), the stage records, the total seconds, the printed table and the
    written files."""
    return Demo(cfg).run()


__all__ = ["OWNED", "STAGES", "DemoConfig", "DemoEval", "DemoSetupError", "Paths", "StageRecord", "demo_config",
           "run_demo", "scale_output_layer"]
