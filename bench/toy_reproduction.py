"""Toy-scale reproduction on CPU: SFT only against GRPO arms, from the shipped toy base and toy SAM2 (one seed).

The demo's data and SFT (veason_r1.demo.DemoConfig, the same stage functions of veason_r1.stages), then one GRPO run
per arm from the same SFT model, with the same seed, data order and number of steps:
  sft               the SFT model, no RL
  grpo_all          all four reward terms
  grpo_no_sam2      without the SAM2 consistency term (reward.use_consistency=false: the authors' no-SAM ablation)
  grpo_no_keyframe  without the keyframe term (reward.use_keyframe=false)
Every model is scored on the valid split: the held-out GRPO reward (all four terms, greedy answers, fixed RL grids;
paired bootstrap interval of each arm minus SFT) and J&F (two-stage prediction, ReVOS protocol).

Writes OUT/toy_reproduction.json and OUT/toy_reproduction.md (the table docs/toy_reproduction.md quotes);
resumable (OUT/state.json: a rerun skips finished stages; other settings are refused). Toy models: the numbers
test the recipe and the code on synthetic shapes, never the paper's claims.

    python bench/toy_reproduction.py --out /tmp/toy_repro                       # ~12 min on 2 CPU cores
    python bench/toy_reproduction.py --out /tmp/toy_repro --set demo.rl.trainer.total_training_steps=32
The multi-seed GPU version is a separate piece of work (the from-scratch H100 run: toy_reproduction_scratch.py).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from veason_r1.demo import DemoConfig, Paths

ARMS: dict[str, tuple[str, ...]] = {  # GRPO overrides per arm, in the GRPOConfig grammar
    "grpo_all": (),
    "grpo_no_sam2": ("reward.use_consistency=false",),
    "grpo_no_keyframe": ("reward.use_keyframe=false",),
}


@dataclass
class ReproConfig:
    out: str = "toy_repro"
    demo: DemoConfig = field(default_factory=DemoConfig)  # data, SFT and the GRPO settings every arm shares
    arms: list[str] = field(default_factory=lambda: list(ARMS))

    def validate(self, source: str = "config") -> None:
        unknown = [a for a in self.arms if a not in ARMS]
        if unknown:
            from veason_r1.errors import BadInput

            raise BadInput(source, f"arms: unknown arm(s) {unknown}; known: {', '.join(ARMS)}")
        self.demo.validate(source)


def arm_config(cfg: ReproConfig, paths: Paths, arm: str):
    """The demo's GRPO config with the arm's overrides, in its own folder."""
    from veason_r1.rl.config import GRPOConfig
    from veason_r1.structured_config import as_dict, load_structured

    rl = cfg.demo.rl_config(paths)
    base = as_dict(rl)
    base["trainer"]["default_local_dir"] = str(Path(cfg.out) / "rl" / arm)
    return load_structured(GRPOConfig, None, list(ARMS[arm]), base=base)


def main(argv=None) -> int:
    from veason_r1.io_utils import atomic_write_json, atomic_write_text
    from veason_r1.structured_config import as_dict, load_structured

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="ReproConfig values, e.g. demo.rl.trainer.total_training_steps=32 or arms=[grpo_all]")
    p.add_argument("--seeds", default=None, metavar="S,S,...",
                   help="run every seed (demo.seed: data, SFT and GRPO) in OUT/seed_<S> and write the table across "
                        "seeds to OUT (default: one run in OUT with demo.seed)")
    p.add_argument("--force", action="store_true")
    args = p.parse_args(argv)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from veason_r1.commands.demo import pin_cpu_kernels

    pin_cpu_kernels()  # the demo's kernels: numbers that depend on the code, not the CPU generation (docs/demo.md)
    seeds = [int(x) for x in args.seeds.split(",")] if args.seeds else [None]
    results = {}
    for seed in seeds:
        out = Path(args.out) if seed is None else Path(args.out) / f"seed_{seed}"
        extra = [] if seed is None else [f"demo.seed={seed}"]
        base = {"out": str(out), "demo": as_dict(DemoConfig(out=str(out / "shared"), progress=False))}
        cfg = load_structured(ReproConfig, None, [*args.set, *extra], base=base)
        if cfg.demo.policy.model != "toy" or cfg.demo.propagator.name != "toy":
            print("toy_reproduction: starts from the shipped toy models (demo.policy.model=toy, "
                  "demo.propagator.name=toy)",
                  file=sys.stderr)
            return 2
        result = run_one(cfg, force=args.force)
        atomic_write_json(out / "toy_reproduction.json", result, indent=2)
        atomic_write_text(out / "toy_reproduction.md", table(result) + "\n")
        print(table(result))
        results[cfg.demo.seed] = result
    if len(seeds) > 1:
        across = across_seeds(results)
        atomic_write_json(Path(args.out) / "toy_reproduction_seeds.json", across, indent=2)
        atomic_write_text(Path(args.out) / "toy_reproduction_seeds.md", seeds_table(across) + "\n")
        print(seeds_table(across))
    return 0


def run_one(cfg: ReproConfig, force: bool = False) -> dict:
    """One seed: the shared stages, every arm, every evaluation (resumable in cfg.out); the summary."""
    from veason_r1 import stages
    from veason_r1.models.toy import toy_policy_dir
    from veason_r1.rl.heldout import HeldoutConfig
    from veason_r1.runner import StageRunner
    from veason_r1.structured_config import as_dict, flatten

    demo, out = cfg.demo, Path(cfg.out)
    paths = Paths(out / "shared")
    names = [("synth", "synthetic benchmark"), ("sample", "stratified pool"), ("cot", "seed CoT + SFT dataset"),
             ("sft", "LoRA CoT SFT from the toy base"),
             *((f"rl_{a}", f"GRPO arm {a}") for a in cfg.arms),
             *((f"eval_{m}", f"J&F of {m}") for m in ("sft", *cfg.arms)),
             ("heldout", "held-out reward of every model, paired bootstrap against SFT")]
    fingerprint = {k: v for k, v in flatten(as_dict(cfg)).items() if k not in ("out", "demo.out")}
    runner = StageRunner(out, names, fingerprint, what="toy reproduction", force=force).open()
    restore = stages.offline_runtime(demo.threads)
    try:
        sam2 = demo.propagator.load(seed=demo.seed)
        sft = demo.sft_config(paths, toy_policy_dir())
        arms = {a: arm_config(cfg, paths, a) for a in cfg.arms}
        models = {"sft": paths.sft_merged, **{a: stages.final_model(c) for a, c in arms.items()}}
        run = runner.run
        run("synth", lambda: stages.build_synthetic(paths.synth, demo.synth_config(), out / "doctor.txt", False),
            lambda: (paths.synth / "synthetic_facts.json").is_file())
        run("sample", lambda: stages.sample_pool(paths.synth, paths.select_meta, paths.pool, demo.pool_size, demo.seed,
                                                 out / "sampling.txt"),
            lambda: paths.pool.is_file())
        run("cot", lambda: stages.build_cot(paths.synth, paths.select_meta, paths.cot, paths.sft_data,
                                            demo.cot_config(), demo.image_size, demo.cot_brief, False),
            lambda: (paths.sft_data / "dataset_info.json").is_file())
        run("sft", lambda: stages.train_sft(sft, paths.sft / "llamafactory.log"),
            lambda: (paths.sft_merged / "merge_done.json").is_file())
        for a, c in arms.items():
            run(f"rl_{a}", lambda c=c: stages.train_grpo(c, sam2, progress=False),
                lambda m=models[a]: (m / "config.json").is_file())
        for m, folder in models.items():
            pred = out / "pred" / m
            run(f"eval_{m}", lambda f=folder, d=pred: stages.predict_and_evaluate(
                paths.synth, f, d, sam2, demo.image_size, demo.eval.max_new_tokens, demo.eval.batch_size, False),
                lambda d=pred: (d / "results.json").is_file())
        held = HeldoutConfig(image_size=demo.image_size, max_new_tokens=demo.rl.data.max_response_length,
                             seed=demo.seed, batch_size=demo.eval.batch_size)
        run("heldout", lambda: stages.heldout_comparison(paths.synth, models, sam2, held, out / "heldout.json",
                                                         seed=demo.seed),
            lambda: (out / "heldout.json").is_file())
    finally:
        restore()
    return summarize(out, models, runner)


def summarize(out: Path, models: dict[str, Path], runner) -> dict:
    from veason_r1.io_utils import read_jsonl
    from veason_r1.reward.scoring import TERMS

    held = json.loads((out / "heldout.json").read_text())
    rows = {}
    for m in models:
        ev = json.loads((out / "pred" / m / "results.json").read_text())
        rows[m] = {"heldout": held[m], "diff_vs_sft": held["diffs"].get(m), "JF": ev["overall"]["JF"],
                   "JF_referring": ev["referring"]["JF"], "JF_reasoning": ev["reasoning"]["JF"]}
        log = out / "rl" / m / "metrics.jsonl"
        if log.is_file():  # the GRPO arms: training reward first -> last step, optimizer steps skipped
            steps = [r for r in read_jsonl(log) if "reward/overall" in r]
            rows[m]["train_reward"] = [steps[0]["reward/overall"], steps[-1]["reward/overall"]]
            rows[m]["skipped_steps"] = int(sum(r.get("actor/skipped_steps", 0) for r in steps))
            rows[m]["fp32_retries"] = int(sum(r.get("actor/fp32_retries", 0) for r in steps))
    return {"what": "toy reproduction on CPU (shipped toy base + toy SAM2, one seed): SFT only vs GRPO arms",
            "terms": list(TERMS), "expressions": held["expressions"], "models": rows,
            "stages": runner.stage_dicts(),
            "seconds": sum(s["first_seconds"] or 0 for s in runner.stage_dicts())}  # compute time, reruns excluded


def table(result: dict) -> str:
    terms = result["terms"]
    head = ["model", "held-out reward", "vs SFT (95% CI)", *terms, "J&F", "skipped steps"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m, r in result["models"].items():
        d = r["diff_vs_sft"]
        vs = "-" if d is None else f"{d['diff']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}]"
        lines.append(f"| {m} | {r['heldout']['overall']:.3f} | {vs} | "
                     + " | ".join(f"{r['heldout'][t]:.3f}" for t in terms)
                     + f" | {r['JF']:.1f} | {r.get('skipped_steps', '-')} |")
    return "\n".join(lines) + (f"\n\n{result['expressions']} held-out expressions; stages computed in "
                               f"{result['seconds']:.0f} s.")


def across_seeds(results: dict) -> dict:
    """Per model: the held-out reward and J&F of each seed, their mean and spread (min, max), and per arm the seeds
    whose paired interval against SFT lies above 0 / below 0."""
    import numpy as np

    seeds = sorted(results)
    models = list(results[seeds[0]]["models"])
    terms = results[seeds[0]]["terms"]
    out = {"seeds": seeds, "terms": terms, "models": {}}
    for m in models:
        rows = [results[s]["models"][m] for s in seeds]
        reward = [r["heldout"]["overall"] for r in rows]
        jf = [r["JF"] for r in rows]
        entry = {"heldout_reward": reward, "JF": jf, "heldout_reward_mean": float(np.mean(reward)),
                 "JF_mean": float(np.mean(jf)), "heldout_reward_range": [min(reward), max(reward)],
                 "JF_range": [min(jf), max(jf)],
                 "terms_mean": {t: float(np.mean([r["heldout"][t] for r in rows])) for t in terms}}
        diffs = [r["diff_vs_sft"] for r in rows if r.get("diff_vs_sft")]
        if diffs:
            entry["diff_mean"] = float(np.mean([d["diff"] for d in diffs]))
            entry["seeds_above_sft"] = sum(d["lo"] > 0 for d in diffs)
            entry["seeds_below_sft"] = sum(d["hi"] < 0 for d in diffs)
            entry["skipped_steps"] = sum(r.get("skipped_steps", 0) for r in rows)
        out["models"][m] = entry
    return out


def seeds_table(across: dict) -> str:
    n = len(across["seeds"])
    head = ["model", "held-out reward, mean [min, max]", "vs SFT: mean diff", "seeds CI > 0 / < 0",
            *across["terms"], "J&F mean [min, max]", "skipped steps"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m, e in across["models"].items():
        lo, hi = e["heldout_reward_range"]
        jlo, jhi = e["JF_range"]
        vs = f"{e['diff_mean']:+.3f}" if "diff_mean" in e else "-"
        ci = f"{e['seeds_above_sft']} / {e['seeds_below_sft']} of {n}" if "diff_mean" in e else "-"
        lines.append(f"| {m} | {e['heldout_reward_mean']:.3f} [{lo:.3f}, {hi:.3f}] | {vs} | {ci} | "
                     + " | ".join(f"{e['terms_mean'][t]:.3f}" for t in across["terms"])
                     + f" | {e['JF_mean']:.1f} [{jlo:.1f}, {jhi:.1f}] | {e.get('skipped_steps', '-')} |")
    return "\n".join(lines) + f"\n\nseeds {', '.join(map(str, across['seeds']))}."


if __name__ == "__main__":
    from veason_r1.errors import UserError, format_user_error

    try:
        sys.exit(main())
    except UserError as e:  # a bad --set or output folder: one line, as the CLI prints it
        print(format_user_error(e), file=sys.stderr)
        sys.exit(2)
