"""The whole method on the synthetic benchmark with tiny models, offline, on CPU, in a few minutes.

synthetic benchmark -> stratified sampling -> seed CoT (synthetic teacher) -> LoRA SFT of the shipped toy base
Qwen2.5-VL -> local GRPO (four-term reward with the toy SAM2) -> prediction -> evaluation before and after RL ->
held-out reward of both models.
Writes OUT/report.md (stage times, results table, what the numbers mean), OUT/reward_terms.png,
OUT/jf_before_after.png, OUT/overlay.gif and OUT/results.json, and prints the results table.
Rerunning the same command continues where it stopped (finished stages are skipped); --force starts over.
Toy models measure the recipe and the code, not the method: no number here is a Veason-R1 result.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from veason_r1.demo import DEMO_POLICIES, DEMO_PROPAGATORS, DemoConfig
    from veason_r1.models.families import DEFAULT_FAMILY

    d = DemoConfig()  # every default below is read from it
    rl = d.rl
    parser.add_argument("--out", default=d.out, help=f"output folder (default: {d.out})")
    parser.add_argument("--videos", type=int, default=None,
                        help=f"synthetic videos (synth.num_videos, default: {d.synth.num_videos})")
    parser.add_argument("--seed", type=int, default=d.seed, help=f"seed of data, models and training ({d.seed})")
    parser.add_argument("--pool-size", type=int, default=None,
                        help=f"stratified training pool size, capped at what exists (default: {d.pool_size})")
    parser.add_argument("--image-size", type=int, default=None,
                        help=f"policy frame side, a multiple of {DEFAULT_FAMILY.factor} "
                             f"(default: {d.image_size} = {DEFAULT_FAMILY.visual_tokens_per_frame(d.image_size)} tokens/frame)")
    parser.add_argument("--max-frames", type=int, default=None,
                        help=f"longest synthetic video in frames (synth.max_frames, default: {d.synth.max_frames})")
    parser.add_argument("--sft-steps", type=int, default=None,
                        help=f"LoRA SFT steps (sft.max_steps, default: {d.sft.max_steps})")
    parser.add_argument("--rl-steps", type=int, default=None,
                        help=f"GRPO steps (rl.trainer.total_training_steps, default: {rl.trainer.total_training_steps})")
    parser.add_argument("--rl-batch-size", type=int, default=None,
                        help=f"GRPO prompts per step, also the PPO mini-batch (rl.data.train_batch_size, default: "
                             f"{rl.data.train_batch_size})")
    parser.add_argument("--rollout-n", type=int, default=None,
                        help=f"GRPO rollouts per prompt (rl.rollout.n, default: {rl.rollout.n})")
    parser.add_argument("--max-new-tokens", type=int, default=None,
                        help=f"response budget at prediction and in GRPO rollouts (eval.max_new_tokens and "
                             f"rl.data.max_response_length, default: {d.eval.max_new_tokens})")
    parser.add_argument("--policy", choices=DEMO_POLICIES, default=d.policy.model,
                        help=f"base policy (policy.model): the shipped toy base or a random-init tiny model "
                             f"(default: {d.policy.model})")
    parser.add_argument("--sam2", choices=DEMO_PROPAGATORS, default=d.propagator.name,
                        help=f"propagator (propagator.name): the shipped toy SAM2, the same through transformers "
                             f"(toy-hf-sam2) or a random-init tiny model (default: {d.propagator.name})")
    parser.add_argument("--rl-config", default=None, help="GRPO YAML replacing configs/grpo_demo.yaml")
    parser.add_argument("--threads", type=int, default=d.threads, help=f"torch threads (default: {d.threads})")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="any other DemoConfig value, nested keys dotted, e.g. --set sft.learning_rate=1e-3 "
                             "or --set rl.rollout.temperature=0.7 (repeatable; typed; unknown keys refused)")
    parser.add_argument("--force", action="store_true", help="delete OUT (a demo folder) and start over")
    parser.add_argument("--no-progress", action="store_true", help="no tqdm bars (stage lines only)")


# The kernel family every x86 CPU with AVX2 can run, for ATen's vectorised ops, oneDNN and MKL. Why: at toy scale the
# demo's SFT and GRPO amplify rounding differences, and the kernels a CPU picks by itself (AVX-512 where it has it)
# change the outcome, not only the last digits: on one machine, AVX-512 kernels gave held-out SFT 2.328 and J&F 36.3,
# AVX2 kernels 1.907 and 26.9 (docs/demo.md). Pinned, the numbers depend on the code, not on the CPU generation
# (threads do not matter: 1 and 2 gave bit-identical weights). Set any of these yourself to override.
CPU_KERNELS = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_CBWR": "AVX2"}


def pin_cpu_kernels() -> dict[str, str]:
    """Set `CPU_KERNELS` (unless already set) on x86 Linux CPUs that have AVX2, before torch is imported; returns
    what is in force."""
    import os
    import platform

    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        return {}
    try:
        with open("/proc/cpuinfo") as f:
            has_avx2 = " avx2" in f.read()
    except OSError:
        return {}
    if not has_avx2:
        return {}
    for key, value in CPU_KERNELS.items():
        os.environ.setdefault(key, value)
    return {key: os.environ[key] for key in CPU_KERNELS}


def run(args: argparse.Namespace) -> int:
    import os

    # Before torch is imported: OpenMP threads that sleep instead of spinning while they wait. Tiny models run
    # many small ops; with spinning threads a second busy process on the same cores makes them several times
    # slower (measured: 15 training steps 1.4 s passive vs 6-10 s spinning, 2 threads, one other busy process).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    pin_cpu_kernels()
    from veason_r1.demo import demo_config, run_demo

    flags = {  # only the flags given: the rest come from DemoConfig (and --rl-config)
        ("synth", "num_videos"): args.videos, ("pool_size",): args.pool_size, ("image_size",): args.image_size,
        ("synth", "max_frames"): args.max_frames, ("sft", "max_steps"): args.sft_steps,
        ("rl", "trainer", "total_training_steps"): args.rl_steps, ("rl", "data", "train_batch_size"): args.rl_batch_size,
        ("rl", "actor", "ppo_mini_batch_size"): args.rl_batch_size, ("rl", "rollout", "n"): args.rollout_n,
        ("eval", "max_new_tokens"): args.max_new_tokens, ("rl", "data", "max_response_length"): args.max_new_tokens,
    }
    values: dict = {"out": args.out, "seed": args.seed, "policy": {"model": args.policy},
                    "propagator": {"name": args.sam2},
                    "threads": args.threads, "force": args.force, "progress": not args.no_progress}
    for keys, value in flags.items():
        if value is not None:
            node = values
            for k in keys[:-1]:
                node = node.setdefault(k, {})
            node[keys[-1]] = value
    cfg = demo_config(args.set, rl_config=args.rl_config, **values)
    run_demo(cfg)  # DemoSetupError / ConfigError are user errors: one line, exit 2 (cli.py)
    return 0
