"""`veason-r1 <stage>`: argument parsing only. Each stage lives in `veason_r1/commands/<name>.py` exposing
`add_arguments(parser)` and `run(args) -> int`; those modules import heavy libraries only inside `run`.

User errors (`veason_r1.errors.UserError`) print `error: <file or flag>: <what is wrong>` and a hint on stderr and
exit 2; `--debug` shows their traceback. So does an output the system cannot store (a read-only or full file
system, no permission, a name too long: `errors.storage_error`). Any other exception is a bug and keeps its
traceback."""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, one-line help). Order is the pipeline's order.
COMMANDS: dict[str, tuple[str, str]] = {
    "synth": ("veason_r1.commands.synth", "write the synthetic ReVOS-format benchmark"),
    "doctor": ("veason_r1.commands.doctor", "validate a ReVOS/MeViS-format dataset"),
    "make-tiny": ("veason_r1.commands.make_tiny", "write a tiny random-weight Qwen2.5-VL with an offline tokenizer"),
    "make-toy": ("veason_r1.commands.make_toy", "rebuild a shipped toy checkpoint (toy SAM2 or toy base policy)"),
    "sample": ("veason_r1.commands.sample", "stratified sampling of the training expression pool"),
    "cot": ("veason_r1.commands.cot", "seed CoT generation (OpenAI-compatible endpoint or synthetic teacher)"),
    "sft": ("veason_r1.commands.sft", "CoT SFT with LLaMA-Factory (LoRA) and merge"),
    "rl": ("veason_r1.commands.rl", "GRPO: verl launcher or the local one-device trainer"),
    "infer": ("veason_r1.commands.infer", "segment one video from a text query"),
    "predict": ("veason_r1.commands.predict", "predict masks for a benchmark (cached, sharded, resumable)"),
    "eval": ("veason_r1.commands.eval", "score predictions: ReVOS, MeViS, ReasonVOS, ViCaS"),
    "demo": ("veason_r1.commands.demo", "the whole pipeline on the synthetic benchmark with tiny models (CPU)"),
    "app": ("veason_r1.commands.app", "interactive web demo (Gradio): video + query -> reasoning, keyframe, masks"),
    "preflight": ("veason_r1.commands.preflight", "check a node before a GPU run (GPUs, driver, packages, files, disk)"),
}


def build_parser(available_only: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="veason-r1", description=__doc__.split("\n")[0])
    parser.add_argument("--debug", action="store_true", help="show the traceback of a user error")
    sub = parser.add_subparsers(dest="command", metavar="<stage>")
    for name, (module, help_text) in COMMANDS.items():
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as e:
            if available_only and e.name == module:
                continue  # a stage not built yet
            raise
        p = sub.add_parser(name, help=help_text, description=(mod.__doc__ or help_text).strip())
        mod.add_arguments(p)
        # SUPPRESS: the sub-command's default must not overwrite `veason-r1 --debug <stage>`
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help="show the traceback of a user error")
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    from veason_r1.errors import UserError, format_user_error, storage_error

    try:
        return int(args._run(args) or 0)
    except (UserError, OSError) as e:
        err = e if isinstance(e, UserError) else storage_error(e)
        if err is None or getattr(args, "debug", False):
            raise
        print(format_user_error(err), file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
