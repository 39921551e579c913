"""Is this node ready for a run? Every check a GPU run needs, before it burns GPU hours (`veason-r1 preflight`).

One function per stage (`grpo_checks`, `sft_checks`, `eval_checks`) returns a list of `Check`s, each PASS, WARN,
SKIP or FAIL with what was found and, for a FAIL, the fix. GPU count and memory, the NVIDIA driver against the CUDA
build of torch, the packages at their pinned versions (read from requirements.txt and constraints/<env>.txt, the
files the install uses), every configured file (the model folder loads its config and processor, the SAM2 checkpoint
loads on the GPU, the data passes `doctor`), free disk against the checkpoint budget, /dev/shm against what Ray's
object store takes, and the verl config composed and validated by verl itself. On a machine without a GPU the GPU
checks FAIL ("no GPU") unless `cpu_ok`, which turns them into SKIP (tests, a CPU dry run).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from veason_r1.models.config import PropagatorConfig, config_keys

REPO_ROOT = Path(__file__).resolve().parents[1]
PASS, WARN, SKIP, FAIL = "PASS", "WARN", "SKIP", "FAIL"

# Minimum NVIDIA driver (Linux) per CUDA major version of the torch build (NVIDIA's CUDA toolkit release notes,
# "CUDA Toolkit and Corresponding Driver Versions"): the cu130 wheels of torch 2.11 (vLLM 0.24 / verl 0.9.1) need
# a 580 driver.
MIN_DRIVER = {13: "580.65.06", 12: "525.60.13"}
GPU_MEMORY_GIB = {"grpo": 75.0, "sft": 75.0, "eval": 16.0}  # the recipes' layouts are for 80 GB GPUs
BYTES_PER_PARAM_CHECKPOINT = 12  # verl FSDP checkpoint: fp32 weights (4) + AdamW exp_avg and exp_avg_sq (4 + 4)
BYTES_PER_PARAM_HF = 2  # a merged bf16 Hugging Face folder


@dataclass
class Check:
    name: str
    status: str
    detail: str
    fix: str = ""


def _safe(name: str, fn: Callable[[], Check | list[Check]]) -> list[Check]:
    """Run one check; an unexpected exception is a FAIL naming it (preflight itself never crashes)."""
    try:
        out = fn()
    except Exception as e:  # noqa: BLE001
        return [Check(name, FAIL, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300],
                      "see the message")]
    return out if isinstance(out, list) else [out]


# ---------------------------------------------------------------------------------------------------------------
# hardware


def gpu_check(stage: str, need: int, cpu_ok: bool) -> Check:
    import torch

    want = GPU_MEMORY_GIB[stage]
    if not torch.cuda.is_available():
        reason = ("torch is a CPU build" if torch.version.cuda is None else
                  f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees no device: no NVIDIA driver, "
                  "CUDA_VISIBLE_DEVICES empty, or the driver is too old")
        if cpu_ok:
            return Check("gpus", SKIP, f"no GPU ({reason}); --cpu-ok")
        return Check("gpus", FAIL, f"no GPU: {reason}", f"run on a node with {need} GPU(s) of >= {want:.0f} GiB")
    n = torch.cuda.device_count()
    mems = [torch.cuda.get_device_properties(i).total_memory / 2**30 for i in range(n)]
    names = sorted({torch.cuda.get_device_name(i) for i in range(n)})
    detail = f"{n} x {', '.join(names)} ({min(mems):.0f} GiB each)"
    if n < need:
        return Check("gpus", FAIL, f"{detail}; the config needs {need}",
                     "use a node with more GPUs, or change the GPU layout in the config's verl section")
    if min(mems) < want:
        return Check("gpus", FAIL, f"{detail}; the recipe needs >= {want:.0f} GiB per GPU",
                     "use 80 GB GPUs, or lower the micro-batches / enable offloading in the config")
    return Check("gpus", PASS, detail)


def _driver_version() -> str | None:
    try:
        import pynvml  # nvidia-ml-py, installed with torch's CUDA builds
    except ImportError:
        pynvml = None
    if pynvml is not None:
        try:
            pynvml.nvmlInit()
            v = pynvml.nvmlSystemGetDriverVersion()
            return v.decode() if isinstance(v, bytes) else str(v)
        except Exception:  # noqa: BLE001, S110 - no driver: nvidia-smi below, else None
            pass
    exe = shutil.which("nvidia-smi")
    if exe:
        import subprocess

        r = subprocess.run([exe, "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True,
                           text=True, timeout=30, check=False)
        if r.returncode == 0 and r.stdout.strip():
            return r.stdout.strip().splitlines()[0].strip()
    return None


def _version_tuple(v: str) -> tuple[int, ...]:
    return tuple(int(p) for p in v.split(".") if p.isdigit())


def driver_check(cpu_ok: bool, driver: str | None = None, cuda: str | None = None) -> Check:
    """The NVIDIA driver against the minimum of the CUDA version torch was built with."""
    import torch

    cuda = cuda if cuda is not None else torch.version.cuda
    driver = driver if driver is not None else _driver_version()
    if cuda is None:
        return Check("driver", SKIP if cpu_ok else FAIL, f"torch {torch.__version__} is a CPU build",
                     "" if cpu_ok else "install a CUDA build: make ENV=gpu-vllm venv (constraints/gpu-vllm.txt)")
    need = MIN_DRIVER.get(int(cuda.split(".")[0]))
    if driver is None:
        return Check("driver", SKIP if cpu_ok else FAIL, f"no NVIDIA driver found (torch built for CUDA {cuda})",
                     "" if cpu_ok else f"install NVIDIA driver >= {need} (CUDA {cuda})")
    if need and _version_tuple(driver) < _version_tuple(need):
        return Check("driver", FAIL, f"driver {driver} < {need}, the minimum for CUDA {cuda} (torch {torch.__version__})",
                     f"upgrade the NVIDIA driver to >= {need}")
    return Check("driver", PASS, f"driver {driver}, torch built for CUDA {cuda} (needs >= {need})")


# ---------------------------------------------------------------------------------------------------------------
# packages


def requirement_files(env: str) -> list[Path]:
    """The requirement files `make ENV=<env> venv` installs (Makefile REQS_<env>): gpu-vllm leaves out
    requirements-app.txt (LLaMA-Factory and gradio need starlette < 1.0, vLLM 0.24 >= 1.0.1)."""
    files = [REPO_ROOT / "requirements.txt"]
    return files if env == "gpu-vllm" else [*files, REPO_ROOT / "requirements-app.txt"]


def pins(env: str) -> dict[str, str]:
    """package -> version specifier from the requirement files and constraints/<env>.txt (what `make ENV=<env>`
    installs)."""
    from packaging.requirements import Requirement

    out: dict[str, str] = {}
    for path in (*requirement_files(env), REPO_ROOT / "constraints" / f"{env}.txt"):
        for line in path.read_text().splitlines():
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            req = Requirement(line)
            if str(req.specifier):
                out[req.name.lower()] = str(req.specifier)
    return out


def package_check(dist: str, module: str, spec: str | None, required: bool, why: str, fix: str) -> Check:
    """`module` imports and the installed `dist` satisfies `spec`."""
    from packaging.specifiers import SpecifierSet

    name = f"import {module}"
    try:
        version = importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return Check(name, FAIL if required else WARN, f"{dist} is not installed ({why})", fix)
    if spec and version not in SpecifierSet(spec):
        return Check(name, FAIL if required else WARN, f"{dist} {version} is not the pinned {spec}", fix)
    try:
        importlib.import_module(module)
    except Exception as e:  # noqa: BLE001 - a broken install (missing CUDA libraries, ABI mismatch)
        return Check(name, FAIL if required else WARN, f"{dist} {version} fails to import: "
                     f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:240], fix)
    return Check(name, PASS, f"{dist} {version}" + (f" ({spec})" if spec else ""))


def packages_checks(stage: str, env: str, cpu_ok: bool) -> list[Check]:
    pinned = pins(env)
    install = f"make ENV={env} venv (constraints/{env}.txt)"
    wanted = [("torch", "torch", True, "every stage"), ("transformers", "transformers", True, "the policy")]
    if stage == "grpo":
        wanted += [("verl", "verl", True, "the GRPO trainer"), ("ray", "ray", True, "verl's workers"),
                   ("sam2", "sam2", True, "the consistency reward")]
    if stage == "sft":
        wanted += [("llamafactory", "llamafactory", True, "the SFT trainer")]
    if stage == "eval":
        wanted += [("sam2", "sam2", True, "mask propagation")]
    out = [package_check(d, m, pinned.get(d), req, why, install) for d, m, req, why in wanted]
    if stage == "grpo":
        vllm_fix = f"make ENV=gpu-vllm venv (installs vllm=={_pinned_exact('vllm')} with the pinned set)"
        if cpu_ok:
            out.append(Check("import vllm", SKIP, "vLLM runs on GPU nodes only; --cpu-ok"))
        else:
            out.append(package_check("vllm", "vllm", pins("gpu-vllm").get("vllm"), True, "verl's rollouts",
                                     vllm_fix))
        out.append(flash_attn_check())  # CPU too: a broken install stops the launch wherever it is
    return out


def flash_attn_check(status: tuple[str, str] | None = None) -> Check:
    """flash-attn is optional, but installed-and-broken is fatal: verl's actor workers import it whenever its
    metadata exists (sdpa path too). The import is tried in a subprocess (a bad build can crash the process)."""
    from veason_r1.rl.verl_config import FLASH_ATTN_FIX, flash_attn_status

    state, error = status if status is not None else flash_attn_status()
    if state == "absent":
        return Check("import flash_attn", WARN, "flash-attn is not installed (optional: without it verl runs sdpa "
                     "without padding removal: slower, more memory)", "optional: docs/reproduce.md, 'flash-attn'")
    if state == "broken":
        return Check("import flash_attn", FAIL, f"flash-attn is installed but does not import ({error}); verl's "
                     "actor workers import it whenever it is installed and would all die", FLASH_ATTN_FIX)
    import importlib.metadata

    return Check("import flash_attn", PASS, f"flash-attn {importlib.metadata.version('flash-attn')} imports "
                 "(checked in a fresh process)")


def _pinned_exact(dist: str) -> str:
    spec = pins("gpu-vllm").get(dist, "")
    return spec.lstrip("=") if spec.startswith("==") else spec


# ---------------------------------------------------------------------------------------------------------------
# files, disk, shared memory


def model_check(path: str | Path) -> Check:
    """The folder is a complete folder of a policy family (models/families.py) whose config and processor load
    (weights are not read)."""
    from transformers import AutoConfig

    from veason_r1.models.families import FAMILIES
    from veason_r1.models.policy import check_model_dir, load_processor

    folder = check_model_dir(path)
    config = AutoConfig.from_pretrained(str(folder), local_files_only=True)
    model_type = getattr(config, "model_type", "")
    if model_type not in FAMILIES:
        return Check("model folder", FAIL,
                     f"{folder}: model_type {model_type!r}, expected one of {', '.join(FAMILIES)}",
                     "give a folder of a policy family in models/families.py")
    load_processor(folder)
    size = model_bytes(folder)
    return Check("model folder", PASS,
                 f"{folder}: {model_type} config and processor load ({size / 1e9:.1f} GB of weights)")


def model_bytes(folder: str | Path) -> int:
    files = list(Path(folder).glob("*.safetensors")) or list(Path(folder).glob("pytorch_model*.bin"))
    return sum(f.stat().st_size for f in files)


def model_params(folder: str | Path) -> float:
    """Parameter count from the weight files and the stored dtype (config torch_dtype / dtype)."""
    import json

    cfg = json.loads((Path(folder) / "config.json").read_text())
    dtype = str(cfg.get("torch_dtype") or cfg.get("dtype") or "bfloat16")
    per = 4 if "32" in dtype else 2
    return model_bytes(folder) / per


def sam2_check(propagator: PropagatorConfig, cpu_ok: bool, names: dict[str, str] | None = None) -> Check:
    """The run's own checks (`PropagatorConfig.check`, then `load`, as `predict` and the reward do), each failure
    one line. `names`: how the failures call the propagator's keys (default the command-line flags; GRPO passes
    `reward.propagator.<key>`)."""
    import torch

    from veason_r1.errors import UserError
    from veason_r1.models.config import PROPAGATOR_FLAGS

    flag = {**PROPAGATOR_FLAGS, **(names or {})}
    name, checkpoint = propagator.name, propagator.checkpoint
    if not name:
        return Check("sam2", FAIL, "no SAM2 configured", f"set {flag['name']} and its checkpoint")
    if checkpoint is None and propagator.needs_checkpoint:
        return Check("sam2", FAIL, f"SAM2 {name!r} without a checkpoint (random weights)",
                     f"give its checkpoint ({flag['checkpoint']})")
    if checkpoint is not None and not Path(checkpoint).exists():  # a file, or a transformers tracker's folder
        return Check("sam2", FAIL, f"checkpoint {checkpoint} not found", "download it (docs/reproduce.md, 'What to download')")
    device = "cuda" if torch.cuda.is_available() else None
    if device is None and not cpu_ok:
        return Check("sam2", FAIL, f"{name} ({checkpoint}): no GPU to load it on", "run on the GPU node")
    target = propagator if device else replace(propagator, device="cpu")  # no GPU (--cpu-ok): the CPU
    try:
        propagator.check(names)
        target.load(device)
    except UserError as e:
        return Check("sam2", FAIL, str(e), e.hint or f"fix {flag['name']} / {flag['checkpoint']}")
    where = (target.device or device) if device else "cpu (--cpu-ok)"
    return Check("sam2", PASS, f"{name} loads from {checkpoint or '(no checkpoint: random weights, asked by name)'} "
                                f"on {where}")


SAM2_EXT_PROBE = "import torch; from sam2 import _C"


def sam2_extension_check(cpu_ok: bool, probe: str = SAM2_EXT_PROBE) -> Check:
    """sam2's CUDA extension (`sam2._C`, connected components) fills small holes in SAM2's masks (fill_hole_area 8,
    as the release runs it); without it sam2 skips that step. Tried in a fresh process (a bad build can crash)."""
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300, check=False)
    if r.returncode == 0:
        return Check("sam2 extension", PASS, "sam2._C imports: SAM2 fills mask holes as the release does")
    lines = [line for line in r.stderr.strip().splitlines() if line.strip()]
    detail = (f"sam2._C does not import ({lines[-1][:160] if lines else 'exit ' + str(r.returncode)}): SAM2 runs "
              "without hole filling (a deviation from the release: docs/reproduce.md, deviations)")
    if cpu_ok:
        return Check("sam2 extension", SKIP, detail + "; --cpu-ok")
    return Check("sam2 extension", WARN, detail,
                 "rebuild on the GPU node with nvcc: SAM2_BUILD_CUDA=1 pip install --no-cache-dir --no-deps "
                 "--force-reinstall --no-build-isolation sam2==1.1.0")


def doctor_check(root: str, split: str | None) -> Check:
    from veason_r1.data.doctor import diagnose

    report = diagnose(root, splits=[split] if split else None)
    name = f"data {split or 'all splits'}"
    if not report.ok:
        first = report.errors[0]
        return Check(name, FAIL, f"{len(report.errors)} errors, first: {first}",
                     f"veason-r1 doctor {root}" + (f" --split {split}" if split else ""))
    return Check(name, PASS, report.summary())


def _existing_parent(path: Path) -> Path:
    path = path.resolve()
    while not path.exists():
        path = path.parent
    return path


def out_check(out_dir: str | Path, flag: str = "--out") -> Check:
    """The run's own check of its output folder (`paths.check_output_folder`)."""
    from veason_r1.errors import UserError
    from veason_r1.paths import check_output_folder

    try:
        check_output_folder(out_dir, flag)
    except UserError as e:
        return Check("out", FAIL, str(e), e.hint or "choose another output folder")
    return Check("out", PASS, f"{out_dir} can be created or continued")


def disk_check(out_dir: str | Path, need_bytes: float, what: str) -> Check:
    where = _existing_parent(Path(out_dir))
    free = shutil.disk_usage(where).free
    detail = f"{free / 1e9:.0f} GB free at {where}; {what} needs {need_bytes / 1e9:.0f} GB"
    if free < need_bytes:
        return Check("disk", FAIL, detail, f"free space or point the run folder elsewhere ({out_dir})")
    return Check("disk", PASS, detail)


def checkpoint_budget(params: float, keep: int | None, total_steps: int | None, save_freq: int) -> tuple[float, str]:
    """Peak bytes of a GRPO run folder: verl writes each new checkpoint before `KeepLastAndBest` prunes, so at that
    moment the last K, the best and the new one are all on disk (K + 2), and the merged best model comes on top."""
    per = BYTES_PER_PARAM_CHECKPOINT * params
    if keep is None:
        kept = (total_steps or 625) // max(save_freq, 1) if save_freq > 0 else 1
        how = f"all {kept} checkpoints"
    else:
        kept = keep + 2
        how = f"{keep} last + best + the one being written before pruning"
    total = kept * per + BYTES_PER_PARAM_HF * params
    return total, f"{how}: {kept} checkpoints at {per / 1e9:.0f} GB each + the merged model ({BYTES_PER_PARAM_HF * params / 1e9:.0f} GB)"


def tree_bytes(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += (Path(root) / name).lstat().st_size
            except OSError:
                continue
    return total


def run_folder_bytes(run_dir: str | Path) -> int:
    """What a resumed run already holds of its peak: the `global_step_N` checkpoints and the merged model."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return 0
    parts = [p for p in run_dir.glob("global_step_*") if p.is_dir()] + [p for p in [run_dir / "best_hf"] if p.is_dir()]
    return sum(tree_bytes(p) for p in parts)


def grpo_disk_check(run_dir: str | Path, params: float, keep: int | None, total_steps: int | None,
                    save_freq: int) -> Check:
    """Free space for the peak minus what is already in the run folder (re-running run_grpo.sh resumes: the
    checkpoints on disk are part of the peak, not on top of it). At least one new checkpoint + the merged model."""
    peak, how = checkpoint_budget(params, keep, total_steps, save_freq)
    have = run_folder_bytes(run_dir)
    floor = (BYTES_PER_PARAM_CHECKPOINT + BYTES_PER_PARAM_HF) * params
    need = max(peak - have, floor)
    what = f"the peak {peak / 1e9:.0f} GB ({how})"
    if have:
        what += f" less the {have / 1e9:.0f} GB of checkpoints already in {run_dir}"
    return disk_check(run_dir, need, what)


def vllm_bounds_check(values: dict) -> Check:
    """The bounds vLLM profiles its start-up memory for (issue 23 item 1), as the generated config passes them."""
    from veason_r1.rl.verl_config import ARR, VLLM_ARGS

    length = values.get(f"{ARR}.rollout.max_model_len")
    limits = values.get(f"{VLLM_ARGS}.limit_mm_per_prompt") or {}
    pixels = (values.get(f"{VLLM_ARGS}.mm_processor_kwargs") or {}).get("max_pixels")
    detail = (f"max_model_len {length}, {limits.get('image')} images of <= {pixels} px a prompt, video "
              f"{limits.get('video')}")
    if length is None or limits.get("video") != 0 or pixels is None:
        return Check("vllm bounds", FAIL, detail + ": vLLM would profile a 128k context with a video",
                     "regenerate the config with this checkout (veason_r1.rl.verl_config.rollout_bounds)")
    return Check("vllm bounds", PASS, detail + " (the KV cache they leave is logged by vLLM at start-up)")


def shm_check(cpu_ok: bool, shm_bytes: int | None = None, memory_bytes: int | None = None) -> Check:
    """/dev/shm against the object store Ray 2.60 sizes by default (30% of memory; it falls back to slow /tmp
    storage when /dev/shm is smaller than that and than 10 GB: ray._private.services / utils)."""
    from ray._private import ray_constants

    if shm_bytes is None:
        if not Path("/dev/shm").exists():
            return Check("/dev/shm", SKIP if cpu_ok else FAIL, "no /dev/shm", "run on Linux")
        st = os.statvfs("/dev/shm")
        shm_bytes = st.f_bsize * st.f_bavail
    if memory_bytes is None:
        memory_bytes = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    store = memory_bytes * ray_constants.DEFAULT_OBJECT_STORE_MEMORY_PROPORTION
    need = min(store, ray_constants.REQUIRE_SHM_SIZE_THRESHOLD)
    detail = (f"{shm_bytes / 1e9:.1f} GB free; Ray's object store wants {store / 1e9:.0f} GB "
              f"(needs >= {need / 1e9:.0f} GB to stay in shared memory)")
    if shm_bytes < need:
        return Check("/dev/shm", FAIL, detail, f"enlarge /dev/shm (docker run --shm-size={int(need / 1e9) + 1}g)")
    return Check("/dev/shm", PASS, detail)


# ---------------------------------------------------------------------------------------------------------------
# stages


def grpo_checks(cfg, source: str, cpu_ok: bool = False) -> list[Check]:
    """Everything `veason-r1 rl --backend verl` needs (cfg: a GRPOConfig)."""
    from veason_r1.rl.config import flatten
    from veason_r1.rl.launch import absolute, missing_inputs, write_data
    from veason_r1.rl.verl_config import build_tree

    cfg = absolute(cfg)
    layout = flatten(cfg.verl)
    need = int(layout.get("trainer.n_gpus_per_node", 1)) * int(layout.get("trainer.nnodes", 1))
    env = "cpu" if cpu_ok else "gpu-vllm"
    out = [gpu_check("grpo", need, cpu_ok), driver_check(cpu_ok), *packages_checks("grpo", env, cpu_ok)]
    problems = missing_inputs(cfg)
    out += [Check("inputs", FAIL, p, "fix the path in the config (or --set it)") for p in problems]
    if not problems:
        out.append(Check("inputs", PASS, "model folder, SAM2 checkpoint, reward file and data files exist"))
        out += _safe("model folder", lambda: model_check(cfg.model.path))
        if cfg.reward.use_consistency:
            out += _safe("sam2", lambda: sam2_check(cfg.reward.propagator, cpu_ok, config_keys("reward.propagator")))
            out += _safe("sam2 extension", lambda: sam2_extension_check(cpu_ok))
        out += _safe(f"data {cfg.data.train_split}", lambda: doctor_check(cfg.data.train_root, cfg.data.train_split))
        if cfg.data.val_split:
            out += _safe(f"data {cfg.data.val_split}",
                         lambda: doctor_check(cfg.data.val_root or cfg.data.train_root, cfg.data.val_split))

        def budget() -> Check:
            t = cfg.trainer
            return grpo_disk_check(t.default_local_dir, model_params(cfg.model.path), t.max_ckpt_to_keep,
                                   t.total_training_steps, t.save_freq)

        out += _safe("disk", budget)

        def verl_tree() -> Check:
            import contextlib
            import io
            import warnings

            with tempfile.TemporaryDirectory(prefix="veason_preflight_") as tmp, warnings.catch_warnings(), \
                    contextlib.redirect_stdout(io.StringIO()):  # verl's own "checks passed" lines
                warnings.simplefilter("ignore")
                data = write_data(cfg, Path(tmp) / "data")
                _tree, values, _p, notes = build_tree(cfg, tmp, train_file=data.train_file, val_file=data.val_file,
                                                      source=source)
            return [Check("verl config", WARN if notes else PASS,
                          "composed with verl 0.9.1's tree; validate_config passed" + (f"; {notes[0]}" if notes else "")),
                    vllm_bounds_check(values)]

        out += _safe("verl config", verl_tree)
    out.append(shm_check(cpu_ok))
    return out


def sft_checks(config, world_size: int, cpu_ok: bool = False, check_images: bool = True) -> list[Check]:
    """Everything `veason-r1 sft` needs (config: an SFTConfig with its paths)."""
    from veason_r1.sft.train import check_dataset

    env = "cpu" if cpu_ok else "gpu"
    out = [gpu_check("sft", max(1, world_size), cpu_ok), driver_check(cpu_ok), *packages_checks("sft", env, cpu_ok)]
    out += _safe("model folder", lambda: model_check(config.model_name_or_path))
    out += _safe("out", lambda: out_check(Path(config.output_dir).parent))

    def data() -> Check:
        s = check_dataset(config.dataset_dir, config.dataset, config.image_size, check_images=check_images)
        return Check("data", PASS, f"{s.num_samples} samples, {s.num_images} frames of {s.image_size}px ({s.data_file})")

    out += _safe("data", data)

    def batch() -> Check:
        _, note = config.for_world_size(world_size)
        return Check("effective batch", PASS, note)

    out += _safe("effective batch", batch)

    def budget() -> Check:
        params = model_params(config.model_name_or_path)
        return disk_check(config.output_dir, 2.5 * BYTES_PER_PARAM_HF * params,
                          "the merged model + LoRA checkpoints")

    out += _safe("disk", budget)
    return out


def eval_checks(model: str, data: str, split: str | None, propagator: PropagatorConfig, out_dir: str,
                cpu_ok: bool = False) -> list[Check]:
    """Everything `veason-r1 predict` / eval/multi_gpu_eval.sh needs."""
    env = "cpu" if cpu_ok else "gpu"
    out = [gpu_check("eval", 1, cpu_ok), driver_check(cpu_ok), *packages_checks("eval", env, cpu_ok)]
    out += _safe("model folder", lambda: model_check(model))
    out += _safe("sam2", lambda: sam2_check(propagator, cpu_ok))
    out += _safe("sam2 extension", lambda: sam2_extension_check(cpu_ok))
    out += _safe(f"data {split}", lambda: doctor_check(data, split))
    out += _safe("out", lambda: out_check(out_dir))
    out += _safe("disk", lambda: disk_check(out_dir, 5e9, "the predicted masks (a few GB per benchmark)"))
    return out


def render(checks: list[Check]) -> str:
    """The table of checks, then the fix of every FAIL."""
    width = max(len(c.name) for c in checks)
    lines = [f"{'check':<{width}}  status  detail", f"{'-' * width}  ------  ------"]
    lines += [f"{c.name:<{width}}  {c.status:<6}  {c.detail}" for c in checks]
    fails = [c for c in checks if c.status == FAIL]
    if fails:
        lines.append("")
        lines += [f"FAIL {c.name}: fix: {c.fix or 'see the detail'}" for c in fails]
    counts = {s: sum(c.status == s for c in checks) for s in (PASS, WARN, SKIP, FAIL)}
    lines.append("")
    lines.append("preflight: " + ", ".join(f"{v} {k}" for k, v in counts.items()) +
                 (" - NOT READY" if fails else " - ready"))
    return "\n".join(lines)


__all__ = ["FAIL", "PASS", "SKIP", "WARN", "Check", "checkpoint_budget", "driver_check", "eval_checks",
           "flash_attn_check", "gpu_check", "grpo_checks", "grpo_disk_check", "pins", "render", "requirement_files",
           "run_folder_bytes", "sam2_extension_check", "sft_checks", "shm_check", "vllm_bounds_check"]
