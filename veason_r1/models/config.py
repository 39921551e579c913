"""Which policy and which mask propagator a stage uses, in one spelling everywhere.

Every stage config that names a model nests these two: predict, infer, the app, the demo, preflight and GRPO's
reward (whose verl `reward_kwargs` carry `propagator` as one nested mapping). Their keys are the only spelling:

    policy:     {model, engine, device, dtype, fast_paths, tensor_parallel_size}
    propagator: {name, checkpoint, device, offload}

On the command line one flag group builds them (`add_policy_flags`, `add_propagator_flags`; the flag of each key is
in `POLICY_FLAGS` / `PROPAGATOR_FLAGS`, and error messages name it). Names (`toy`, `tiny`, SAM2/SAM2.1 configs,
transformers trackers) are turned into models by the one registry, `models/registry.py`.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal

DEFAULT_PROPAGATOR = "sam2.1_hiera_l"  # the evaluation SAM2 (docs/method.md §5); the reward's is in reward/config.py

# config key -> command-line flag (what an error about a value given on the command line names)
PROPAGATOR_FLAGS = {"name": "--sam2", "checkpoint": "--sam2-checkpoint", "device": "--sam2-device",
                    "offload": "--offload"}
POLICY_FLAGS = {"model": "--model", "engine": "--engine", "device": "--device", "dtype": "--dtype",
                "fast_paths": "--fast-paths", "tensor_parallel_size": "--tensor-parallel-size"}


@dataclass
class PropagatorConfig:
    """The mask propagator: a registered name (`toy`, `tiny`, `tiny-sam3`, ...), a SAM2/SAM2.1 config name
    (`sam2.1_hiera_l`), a SAM2 yaml, or a transformers tracker (`hf-sam2`, `sam3`, `edgetam`).

    `checkpoint`: the SAM2 `.pt` file or the tracker's weights folder (named propagators bring their own; a SAM2
    config without one has random weights, which only tests ask for). `device`: None = the stage's device."""

    name: str | None = DEFAULT_PROPAGATOR
    checkpoint: str | None = None
    device: str | None = None
    offload: bool = False  # keep frames and memories in CPU memory (long videos: bounded GPU memory)

    @property
    def needs_checkpoint(self) -> bool:
        """Only the named propagators may go without a checkpoint (`tiny` random weights, `toy` shipped)."""
        from veason_r1.models.registry import propagator_needs_checkpoint

        return propagator_needs_checkpoint(self.name)

    @property
    def random_weights(self) -> bool:
        from veason_r1.models.registry import propagator_random_weights

        return propagator_random_weights(self.name, self.checkpoint)

    @property
    def tracker(self) -> str | None:
        """The transformers tracker it runs on (`hf-sam2`, `sam3`, `edgetam`), or None (the sam2 package)."""
        from veason_r1.models.registry import tracker_of

        return tracker_of(self.name)

    def check(self, names: dict[str, str] | None = None) -> None:
        """Every check that needs no model load, before any expensive stage (a policy pass can take hours): a known
        name (a yaml must parse and name a model), a complete PyTorch checkpoint, a tracker's weights folder.
        Raises a `UserError` naming the flag or key (`names`: key -> how to call it; default the flags)."""
        from veason_r1.errors import BadInput, MissingInput
        from veason_r1.models.registry import propagator_name_problem
        from veason_r1.models.sam2 import sam2_config

        flag = {**PROPAGATOR_FLAGS, **(names or {})}
        if not self.name:
            raise BadInput(flag["name"], "no propagator named", hint="e.g. sam2.1_hiera_l with its checkpoint, or toy")
        if self.tracker is not None:  # its checkpoint is a weights folder
            if self.checkpoint is None and self.needs_checkpoint:
                raise BadInput(flag["checkpoint"], f"{flag['name']} {self.name} needs its weights folder",
                               hint=f"download it (docs/models.md), or use tiny-{self.name} for a random-weight "
                                    "test model")
            if self.checkpoint is not None and not Path(self.checkpoint).exists():
                raise MissingInput(self.checkpoint, f"{flag['checkpoint']}: checkpoint not found",
                                   hint="see docs/models.md for what to download")
            if self.checkpoint is not None and not (Path(self.checkpoint) / "config.json").is_file():
                raise MissingInput(self.checkpoint, f"{flag['checkpoint']}: {self.name} takes its weights folder "
                                   "(config.json + model.safetensors)", hint="see docs/models.md for what to download")
            return
        problem = propagator_name_problem(self.name)
        if problem:
            raise BadInput(flag["name"], problem[0], hint=problem[1])
        sam2_config(self.name)  # a yaml that parses and names a model
        if self.checkpoint is not None:
            check_torch_checkpoint(self.checkpoint, flag["checkpoint"])

    def load(self, device: str | None = None, **options: Any):
        """The ready `Propagator` (models/propagator.py) on `self.device`, else `device` (the stage's)."""
        from veason_r1.models.registry import load_propagator

        if self.offload:
            options["offload"] = True
        return load_propagator(self.name, self.checkpoint, self.device or device, **options)

    def describe(self) -> str:
        """One line for logs and pages: the name and where its weights come from."""
        from veason_r1.models.registry import PROPAGATORS

        named = PROPAGATORS.get(self.name) if self.checkpoint is None else None
        if named is not None:
            return named.label
        return f"{self.name}, " + (f"checkpoint {self.checkpoint}" if self.checkpoint else "random weights")


@dataclass
class PolicyConfig:
    """The policy: a registered name (`toy`, `tiny`, `tiny-qwen3-vl`, ...) or a local Hugging Face folder of any
    family in models/families.py, and how it is run."""

    model: str | None = None
    engine: Literal["hf", "vllm"] = "hf"
    device: str | None = None  # None: cuda when available
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"  # auto: bfloat16 on CUDA, float32 on CPU
    fast_paths: Literal["auto", "on", "off"] = "auto"  # exact HF speed-ups (models/fast_qwen.py); auto = on CUDA
    tensor_parallel_size: int = 1  # vLLM only

    def folder(self, cache_dir: str | Path | None = None) -> Path:
        """The model folder: a named policy built or found in the cache, else the local folder (checked)."""
        from veason_r1.models.policy import check_model_dir
        from veason_r1.models.registry import is_named_policy, resolve_policy

        if not self.model:
            from veason_r1.errors import BadInput

            raise BadInput(POLICY_FLAGS["model"], "no policy given", hint="a model folder, or toy / tiny")
        if is_named_policy(self.model):
            return resolve_policy(self.model, cache_dir)
        return check_model_dir(self.model)

    @property
    def random_weights(self) -> bool:
        from veason_r1.models.registry import policy_random_weights

        return bool(self.model) and policy_random_weights(self.model)


def check_torch_checkpoint(path: str | os.PathLike, flag: str) -> None:
    """A `torch.save` file that can be opened: it exists, and its zip central directory (at the end of the file)
    is there, so a truncated download is caught now, in a second, rather than after the first stage."""
    import zipfile

    from veason_r1.errors import BadInput, MissingInput

    p = Path(path)
    if not p.is_file():
        raise MissingInput(p, f"{flag}: checkpoint not found")
    if zipfile.is_zipfile(p):
        try:
            with zipfile.ZipFile(p) as z:
                if not any(n.endswith("data.pkl") for n in z.namelist()):
                    raise BadInput(p, f"{flag}: a zip file, but not a PyTorch checkpoint (no data.pkl)")
        except zipfile.BadZipFile as e:
            raise BadInput(p, f"{flag}: corrupt checkpoint ({e})", hint="download it again") from None
        return
    with open(p, "rb") as f:
        head = f.read(2)
    if head[:1] != b"\x80":  # neither the zip format nor the legacy pickle format
        raise BadInput(p, f"{flag}: not a PyTorch checkpoint (truncated or another format)",
                       hint="download it again (e.g. sam2.1_hiera_large.pt from the SAM2 release)")


# ---------------------------------------------------------------------------------------------------------------
# the one flag group


def config_keys(prefix: str) -> dict[str, str]:
    """How errors name a nested propagator's keys in a config file (`reward.propagator` -> `reward.propagator.name`,
    ...) instead of the command-line flags."""
    return {key: f"{prefix}.{key}" for key in PROPAGATOR_FLAGS}


def add_propagator_flags(parser: argparse.ArgumentParser | Any, default: PropagatorConfig | None = None,
                         choices: list[str] | None = None) -> None:
    """--sam2, --sam2-checkpoint, --sam2-device, --offload (defaults from `default`); `choices` limits the names."""
    from veason_r1.models.registry import HF_TRACKERS, PROPAGATORS

    d = default or PropagatorConfig()
    names = ", ".join(choices) if choices else (
        f"{', '.join(sorted(PROPAGATORS))}, sam2.1_hiera_{{t,s,b+,l}}, sam2_hiera_*, a yaml, or a transformers "
        f"tracker ({', '.join(HF_TRACKERS)}) with its weights folder")
    parser.add_argument(PROPAGATOR_FLAGS["name"], dest="propagator_name", default=d.name, choices=choices,
                        metavar=None if choices else "NAME",
                        help=f"mask propagator: {names} (default: {d.name})")
    parser.add_argument(PROPAGATOR_FLAGS["checkpoint"], "--sam2-ckpt", dest="propagator_checkpoint",
                        default=d.checkpoint, metavar="PATH", help="its checkpoint: a SAM2 .pt file, or a tracker's weights folder "
                        "(named propagators bring their own; a SAM2 config without one has random weights)")
    parser.add_argument(PROPAGATOR_FLAGS["device"], dest="propagator_device", default=d.device, metavar="DEVICE",
                        help="its device (default: the policy's --device, else cuda when available)")
    parser.add_argument(PROPAGATOR_FLAGS["offload"], dest="propagator_offload", action="store_true",
                        default=d.offload, help="keep frames and memories in CPU memory (long videos: bounded GPU "
                        "memory)")


def propagator_from_args(args: argparse.Namespace) -> PropagatorConfig:
    return PropagatorConfig(name=args.propagator_name, checkpoint=args.propagator_checkpoint,
                            device=args.propagator_device, offload=args.propagator_offload)


def add_policy_flags(parser: argparse.ArgumentParser | Any, default: PolicyConfig | None = None,
                     model_required: bool = False, model_help: str | None = None) -> None:
    """--model, --engine, --device, --dtype, --fast-paths, --tensor-parallel-size (defaults from `default`)."""
    from veason_r1.flags import positive_int
    from veason_r1.models.registry import POLICIES

    d = default or PolicyConfig()
    parser.add_argument(POLICY_FLAGS["model"], dest="policy_model", required=model_required, default=d.model,
                        metavar="MODEL",
                        help=model_help or f"policy: a model folder (any family in models/families.py) or a name "
                                           f"({', '.join(sorted(POLICIES))})")
    parser.add_argument(POLICY_FLAGS["engine"], dest="policy_engine", choices=("hf", "vllm"), default=d.engine)
    parser.add_argument(POLICY_FLAGS["device"], dest="policy_device", default=d.device, metavar="DEVICE",
                        help="cuda / cpu (default: cuda when available)")
    parser.add_argument(POLICY_FLAGS["dtype"], dest="policy_dtype", default=d.dtype,
                        choices=("auto", "bfloat16", "float16", "float32"),
                        help="policy dtype (default auto: bfloat16 on CUDA, float32 on CPU)")
    parser.add_argument(POLICY_FLAGS["fast_paths"], dest="policy_fast_paths", choices=("auto", "on", "off"),
                        default=d.fast_paths, help="exact HF speed-ups for Qwen2.5-VL (batched vision windows, "
                        "grouped decode attention); auto = on CUDA")
    parser.add_argument(POLICY_FLAGS["tensor_parallel_size"], dest="policy_tensor_parallel_size", type=positive_int, metavar="N",
                        default=d.tensor_parallel_size, help="vLLM only")


def policy_from_args(args: argparse.Namespace) -> PolicyConfig:
    return PolicyConfig(**{f.name: getattr(args, f"policy_{f.name}") for f in fields(PolicyConfig)})


__all__ = ["DEFAULT_PROPAGATOR", "POLICY_FLAGS", "PROPAGATOR_FLAGS", "PolicyConfig", "PropagatorConfig",
           "add_policy_flags", "add_propagator_flags", "check_torch_checkpoint", "config_keys", "policy_from_args",
           "propagator_from_args"]
