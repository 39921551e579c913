"""Rebuild a shipped toy checkpoint: `make-toy sam2` (toy SAM2) or `make-toy policy` (toy base policy).

Seeded; writes the checkpoint and `manifest.json` (sha256, data seed, steps, held-out metrics) into --out. To replace
the shipped ones: `--out veason_r1/assets/toy/sam2` / `--out veason_r1/assets/toy/policy`. Intermediate files
(exported videos, the resumable train state) live in --out/_work until the run finishes; re-run the same command
after a crash to resume. Times (docs/demo.md): minutes on one GPU; on 2 CPU cores hours (use --time-budget).
"""

from __future__ import annotations

import argparse

from veason_r1.flags import positive_float, positive_int


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("which", choices=["sam2", "policy"], help="which toy checkpoint to build")
    parser.add_argument("--out", required=True, help="output folder (created; the checkpoint files are replaced)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")
    parser.add_argument("--steps", type=positive_int, default=None, help="optimizer steps (default: the config's)")
    parser.add_argument("--time-budget", type=positive_float, default=None,
                        help="seconds: after 40 steps the step count is cut to what fits (recorded in the manifest)")
    parser.add_argument("--batch-size", type=positive_int, default=None)
    parser.add_argument("--workers", type=int, choices=range(65), default=None, metavar="N",
                        help="data-loading processes (0: in the main process)")
    parser.add_argument("--train-videos", type=positive_int, default=None,
                        help="sam2: synthetic training videos exported")
    parser.add_argument("--heldout", type=positive_int, default=None,
                        help="held-out videos (sam2) / samples per task (policy)")
    parser.add_argument("--seed", type=int, default=0, help="weights seed")
    parser.add_argument("--keep-work", action="store_true", help="keep --out/_work after success")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="any other field of the training config (ToySAM2TrainConfig / ToyPolicyTrainConfig), "
                             "e.g. --set coord_sigma=1.5 --set tasks.absent_keep=0.3 (typed; unknown keys refused)")


def run(args: argparse.Namespace) -> int:
    import os
    import re
    import shutil

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from veason_r1.errors import BadInput
    from veason_r1.io_utils import atomic_write_json
    from veason_r1.paths import check_output_folder, claim_output_dir, mark_owned, output_dir, remove_owned_tree

    if args.which == "policy" and args.train_videos is not None:
        raise BadInput("--train-videos", "only for `make-toy sam2`", hint="the policy draws fresh videos")
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    if not re.fullmatch(r"cpu|cuda(:\d+)?", device):
        raise BadInput("--device", f"{args.device!r} is not a device here", hint="auto, cpu, cuda or cuda:N")
    out = check_output_folder(args.out)
    overrides = {k: v for k, v in (("steps", args.steps), ("batch_size", args.batch_size),
                                   ("workers", args.workers), ("seed", args.seed)) if v is not None}
    if args.which == "sam2":
        from veason_r1.toy import sam2_train as toy

        extra = {k: v for k, v in (("train_videos", args.train_videos), ("heldout_videos", args.heldout)) if v}
        cfg = _config(toy.ToySAM2TrainConfig, {**overrides, **extra}, args.set)
    else:
        from veason_r1.toy import policy_train as toy

        extra = {"heldout_samples": args.heldout} if args.heldout else {}
        cfg = _config(toy.ToyPolicyTrainConfig, {**overrides, **extra}, args.set)
    # only once the settings are known to be good: the folder must be new, empty or an earlier make-toy's (its
    # marker); _work is make-toy's own, deleted only through the ownership rule
    claim_output_dir(out, "make-toy")
    work = output_dir(out, "_work")
    mark_owned(work, "make-toy")
    if args.which == "sam2":
        from veason_r1.models.sam2 import load_sam2

        summary = toy.train(work, cfg, device=device, time_budget_s=args.time_budget)
        shutil.copyfile(work / "sam2_toy.pt", out / "sam2_toy.pt")
        propagator = load_sam2("toy", checkpoint=str(out / "sam2_toy.pt"), device=device)
        metrics = toy.oracle_box_j(propagator, toy.heldout_videos(cfg), progress=True)
        toy.write_manifest(out, cfg, summary, metrics, device)
        print(f"toy SAM2: {summary['steps']} steps in {summary['seconds']:.0f} s, held-out oracle-box J "
              f"{metrics['oracle_box_J']:.3f} (static box {metrics['static_box_J']:.3f}) -> {out / 'sam2_toy.pt'}")
    else:
        summary = toy.train(work, cfg, device=device, time_budget_s=args.time_budget)
        toy.export_model_folder(work / "model", out)
        metrics = toy.evaluate(out, toy.heldout_samples(cfg), device=device, image_size=cfg.tasks.image_size,
                               progress=True)
        toy.write_manifest(out, cfg, summary, metrics, device)
        print(f"toy policy: {summary['steps']} steps in {summary['seconds']:.0f} s, held-out box IoU "
              f"{metrics['box_iou']:.3f}, parse rate {metrics['parse_rate']:.3f}, keyframe exact "
              f"{metrics['when']['exact']:.3f} -> {out}")
    # the learning curve (loss every 25 steps; the policy's held-out scores every `eval_every` steps), for plots
    atomic_write_json(out / "curve.json", summary["history"])
    if not args.keep_work:
        remove_owned_tree(work, out)
    return 0


def _config(cls, flags: dict, overrides: list[str]):
    """The training config: its defaults, then the flags, then `--set` overrides (the one config grammar)."""
    from veason_r1.structured_config import as_dict, load_structured, merge_layers

    return load_structured(cls, None, overrides, base=merge_layers(as_dict(cls()), flags))
