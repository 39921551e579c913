"""`veason-r1 preflight`: the table of checks a user runs on a node before a GPU run, and the run scripts calling it
first. Runs on CPU here: the GPU checks FAIL with their reason, or SKIP with --cpu-ok. Also issue 15 item 7: SFT
keeps the recipe's effective batch whatever the GPU count."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("verl")

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    from veason_r1.models.tiny import make_tiny_qwen

    return make_tiny_qwen(tmp_path_factory.mktemp("tiny_qwen_preflight"), seed=0)


def _grpo(synth_root, tiny_dir, out, *extra):
    return ["preflight", "grpo", "--set", f"data.train_root={synth_root}", "--set", "data.train_pool=null",
            "--set", f"model.path={tiny_dir}", "--set", "reward.propagator.name=tiny", "--set", "reward.propagator.checkpoint=null",
            "--set", f"trainer.default_local_dir={out}", "--set", "data.val_max_samples=4",
            "--set", "data.image_size=112", *extra]


def _rows(text: str) -> dict[str, tuple[str, str]]:
    rows = {}
    for line in text.splitlines()[2:]:
        if not line.strip():
            break
        name, rest = line[:line.index("  ")].strip(), line[line.index("  "):].strip()
        status, _, detail = rest.partition("  ")
        rows.setdefault(name, (status.strip(), detail.strip()))
    return rows


def test_grpo_preflight_on_a_healthy_cpu_setup(synth_root, tiny_dir, tmp_path, capsys):
    from veason_r1.cli import main

    rc = main([*_grpo(synth_root, tiny_dir, tmp_path / "run"), "--cpu-ok"])
    text = capsys.readouterr().out
    rows = _rows(text)
    assert rc == 0 and text.rstrip().endswith("- ready"), text
    assert rows["gpus"][0] == "SKIP" and "no GPU" in rows["gpus"][1]
    for name in ("import torch", "import verl", "import ray", "inputs", "model folder", "sam2", "data train", "disk",
                 "/dev/shm"):
        assert rows[name][0] == "PASS", (name, rows[name])
    assert rows["verl config"][0] in ("PASS", "WARN") and "validate_config passed" in rows["verl config"][1]
    assert "qwen2_5_vl config and processor load" in rows["model folder"][1]
    assert rows["vllm bounds"] == ("PASS", rows["vllm bounds"][1])  # issue 23 item 1, as the config passes them
    assert rows["vllm bounds"][1].startswith("max_model_len 8124, 6 images of <= 12544 px a prompt, video 0")
    assert not (tmp_path / "run").exists()  # preflight writes nothing into the run folder


def test_grpo_preflight_fails_without_gpu_and_names_each_fix(synth_root, tiny_dir, tmp_path, capsys):
    from veason_r1.cli import main

    rc = main(_grpo(synth_root, tiny_dir, tmp_path / "run", "--set", f"reward.propagator.checkpoint={tmp_path / 'no.pt'}",
                    "--set", "reward.propagator.name=sam2_hiera_l"))
    text = capsys.readouterr().out
    rows = _rows(text)
    assert rc == 1 and "NOT READY" in text
    assert rows["gpus"] == ("FAIL", rows["gpus"][1]) and rows["gpus"][1].startswith("no GPU:")
    assert rows["inputs"][0] == "FAIL" and f"{tmp_path / 'no.pt'}: reward.propagator.checkpoint: checkpoint not found" in rows["inputs"][1]
    assert "FAIL gpus: fix: run on a node with 2 GPU(s) of >= 75 GiB" in text
    assert "FAIL import vllm: fix: make ENV=gpu-vllm venv (installs vllm==0.24.0 with the pinned set)" in text


def test_bad_config_is_exit_2(tmp_path, capsys):
    from veason_r1.cli import main

    assert main(["preflight", "grpo", "--set", "rollout.n=four"]) == 2
    assert "rollout.n: expected int, got 'four'" in capsys.readouterr().err


def test_driver_check_against_the_cuda_build():
    from veason_r1.preflight import FAIL, PASS, driver_check

    old = driver_check(cpu_ok=False, driver="575.57.08", cuda="13.0")
    assert old.status == FAIL and "575.57.08 < 580.65.06" in old.detail and "580.65.06" in old.fix
    assert driver_check(cpu_ok=False, driver="580.159.04", cuda="13.0").status == PASS
    assert driver_check(cpu_ok=False, driver="535.104.05", cuda="12.8").status == PASS
    missing = driver_check(cpu_ok=False, driver=None, cuda="13.0")
    assert missing.status == FAIL and "no NVIDIA driver" in missing.detail


def test_shm_check_follows_rays_object_store_rule():
    from veason_r1.preflight import FAIL, PASS, shm_check

    gib = 2**30
    small = shm_check(cpu_ok=False, shm_bytes=2 * gib, memory_bytes=256 * gib)  # docker's 64 MB-ish defaults
    assert small.status == FAIL and "--shm-size=" in small.fix
    assert shm_check(cpu_ok=False, shm_bytes=80 * gib, memory_bytes=256 * gib).status == PASS
    assert shm_check(cpu_ok=False, shm_bytes=3 * gib, memory_bytes=8 * gib).status == PASS  # store 2.4 GB fits


def test_pins_are_read_from_the_install_files():
    from veason_r1.preflight import pins

    gpu = pins("gpu-vllm")
    assert gpu["torch"] == "==2.11.0" and gpu["vllm"] == "==0.24.0" and gpu["verl"] == "==0.9.1"
    assert pins("cpu")["torch"] == "==2.14.1"
    assert pins("gpu")["llamafactory"] == "==0.9.5" and "llamafactory" not in gpu and "gradio" not in gpu


def test_eval_preflight(synth_root, tiny_dir, tmp_path, capsys):
    from veason_r1.cli import main

    rc = main(["preflight", "eval", "revos", "--data", str(synth_root), "--model", str(tiny_dir), "--sam2", "tiny",
               "--out", str(tmp_path / "pred"), "--cpu-ok"])
    rows = _rows(capsys.readouterr().out)
    assert rc == 0 and rows["data valid"][0] == "PASS" and rows["sam2"][0] == "PASS"


# ------------------------------------------------------------------------------ item 7: SFT effective batch


def test_sft_keeps_the_effective_batch_whatever_the_gpu_count():
    from veason_r1.sft.config import SFTConfig, launch_world_size

    recipe = SFTConfig.from_yaml(ROOT / "training_scripts/sft_qwen2_5vl_3b_lora.yaml")
    assert recipe.effective_batch_size == 16
    for gpus, accum in ((1, 8), (2, 4), (4, 2), (8, 1)):
        scaled, line = recipe.for_world_size(gpus)
        assert scaled.gradient_accumulation_steps == accum
        assert scaled.per_device_train_batch_size * scaled.gradient_accumulation_steps * gpus == 16
        assert line == f"effective batch 16 = 2 per device x {accum} accumulation x {gpus} GPU(s)"
    with pytest.raises(ValueError, match="not divisible by 2 x 3 GPUs"):
        recipe.for_world_size(3)
    two, notes = recipe.for_device(has_cuda=True, world_size=2)
    assert two.to_llamafactory()["gradient_accumulation_steps"] == 4 and notes
    assert launch_world_size("cli", device_count=2, environ={}) == 2  # LLaMA-Factory's launcher starts torchrun
    assert launch_world_size("cli", device_count=1, environ={}) == 1
    assert launch_world_size("cli", device_count=1, environ={"FORCE_TORCHRUN": "1", "NPROC_PER_NODE": "4"}) == 4
    assert launch_world_size("inprocess", device_count=4, environ={}) == 1


# ------------------------------------------------------------------------- the run scripts call it first


STUB = """#!/usr/bin/env bash
echo "$*" >> "$STUB_LOG"
case "$*" in *"launch run-dir"*) echo /tmp/run;; *"verl_config best"*) echo /tmp/run/global_step_25/actor;; esac
"""


def _run_script(tmp_path, script, *args, skip="0"):
    stub = tmp_path / "python"
    stub.write_text(STUB)
    stub.chmod(0o755)
    log = tmp_path / "calls.log"
    env = {**os.environ, "PYTHON": str(stub), "STUB_LOG": str(log), "SKIP_PREFLIGHT": skip, "TRAIN_ROOT": "/data/ReVOS"}
    r = subprocess.run(["bash", str(ROOT / "training_scripts" / script), *args], env=env, capture_output=True,
                       text=True, timeout=60, check=False)
    assert r.returncode == 0, r.stderr
    return [line.split()[:4] for line in log.read_text().splitlines()]


def test_run_scripts_run_preflight_first_unless_skipped(tmp_path):
    calls = _run_script(tmp_path, "run_qwen2_5_3b_grpo.sh", "rollout.n=4")
    assert calls[0][:3] == ["-m", "veason_r1", "preflight"] and calls[0][3] == "grpo"
    assert calls[1][:3] == ["-m", "veason_r1", "rl"]
    log = (tmp_path / "calls.log").read_text().splitlines()
    assert "--set data.train_root=/data/ReVOS" in log[1] and "--set rollout.n=4" in log[1]
    assert "verl.model_merger merge" in log[-1] and "/tmp/run/global_step_25/actor" in log[-1]
    (tmp_path / "calls.log").unlink()
    skipped = _run_script(tmp_path, "run_qwen2_5_3b_grpo.sh", skip="1")
    assert skipped[0][:3] == ["-m", "veason_r1", "rl"]
    (tmp_path / "calls.log").unlink()
    sft = _run_script(tmp_path, "run_sft.sh", "--data", "d", "--model", "m", "--out", "o")
    assert [c[:4] for c in sft] == [["-c", "import", "torch;", "print(torch.cuda.device_count())"],
                                    ["-m", "veason_r1", "preflight", "sft"], ["-m", "veason_r1", "sft", "--config"]]


# ------------------------------------------------------------------ issue 23 item 2: flash-attn that does not import


@pytest.fixture
def broken_flash_attn(tmp_path, monkeypatch):
    """A flash-attn that is installed (package + metadata) but fails to import, as a wheel built against another
    torch does (`undefined symbol`). On sys.path here and on PYTHONPATH for subprocesses."""
    site = tmp_path / "site"
    pkg = site / "flash_attn"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text('raise ImportError("flash_attn_2_cuda.so: undefined symbol: _ZN3c104cuda9SetDeviceEa")\n')
    dist = site / "flash_attn-2.8.3.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: flash-attn\nVersion: 2.8.3\n")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]))
    import importlib

    importlib.invalidate_caches()
    return site


def test_installed_but_broken_flash_attn_fails_preflight_and_the_launch(broken_flash_attn, synth_root, tiny_dir,
                                                                         tmp_path, capsys):
    """Before: find_spec said "installed", so the launcher kept flash_attention_2 (or preflight only warned) and
    every verl actor worker died importing it. Now a real import in a subprocess decides."""
    from veason_r1.cli import main
    from veason_r1.preflight import flash_attn_check
    from veason_r1.rl.verl_config import flash_attn_status

    state, error = flash_attn_status()
    assert state == "broken" and "undefined symbol" in error
    check = flash_attn_check((state, error))
    assert check.status == "FAIL" and "pip uninstall -y flash-attn" in check.fix and "--force-reinstall" in check.fix
    assert flash_attn_check(("absent", "")).status == "WARN"

    rc = main([*_grpo(synth_root, tiny_dir, tmp_path / "run"), "--cpu-ok"])
    text = capsys.readouterr().out
    rows = _rows(text)
    assert rc == 1 and rows["import flash_attn"][0] == "FAIL", text
    assert "FAIL import flash_attn: fix: pip uninstall -y flash-attn" in text

    rc = main(["rl", "--backend", "verl", "--config", str(ROOT / "training_scripts/grpo_qwen2_5vl_3b.yaml"),
               "--set", f"data.train_root={synth_root}", "--set", "data.train_pool=null", "--set", f"model.path={tiny_dir}",
               "--set", "reward.propagator.name=tiny", "--set", "reward.propagator.checkpoint=null",
               "--set", f"trainer.default_local_dir={tmp_path / 'launch'}", "--set", "data.image_size=112",
               "--set", "data.val_max_samples=4", "--dry-run"])
    err = capsys.readouterr().err
    assert rc == 2 and "flash-attn is installed but does not import" in err and "pip uninstall -y flash-attn" in err
    assert len(err.strip().splitlines()) == 1


# ------------------------------------------------------------------ issue 23 item 9: SAM2 hole filling on GPU nodes


def test_sam2_extension_row_says_when_hole_filling_is_off():
    from veason_r1.preflight import sam2_extension_check

    missing = sam2_extension_check(False, probe="raise ImportError(\"cannot import name '_C' from 'sam2'\")")
    assert missing.status == "WARN" and "without hole filling" in missing.detail and "SAM2_BUILD_CUDA=1" in missing.fix
    assert sam2_extension_check(True, probe="raise ImportError('x')").status == "SKIP"
    assert sam2_extension_check(False, probe="pass").status == "PASS"


@pytest.mark.gpu
def test_sam2_extension_fills_holes_on_gpu():  # pragma: no cover - needs CUDA and the built extension
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA")
    from sam2.utils.misc import fill_holes_in_mask_scores

    from veason_r1.preflight import sam2_extension_check

    assert sam2_extension_check(False).status == "PASS"
    scores = torch.full((1, 1, 32, 32), 5.0, device="cuda")
    scores[0, 0, 10:12, 10:12] = -5.0  # a 4-pixel hole (< fill_hole_area 8)
    filled = fill_holes_in_mask_scores(scores, 8)
    assert bool((filled > 0).all())


# ------------------------------------------------------------------------------ issue 26 item 6: one code path


def test_preflight_sft_refuses_the_optim_that_sft_would_crash_on(synth_root, tmp_path, capsys):
    from veason_r1.cli import main

    args = ["--config", str(ROOT / "training_scripts/sft_qwen2_5vl_3b_lora.yaml"), "--data", str(tmp_path / "d"),
            "--out", str(tmp_path / "o"), "--set", "optim=adamw_bogus"]
    assert main(["preflight", "sft", *args, "--cpu-ok"]) == 2
    err = capsys.readouterr().err
    assert "optim" in err and "adamw_bogus" in err and "Traceback" not in err
    assert main(["sft", *args]) == 2
    assert "adamw_bogus" in capsys.readouterr().err


def test_preflight_eval_checks_out_and_a_random_bytes_checkpoint(synth_root, tiny_dir, tmp_path, capsys):
    from veason_r1.cli import main

    (tmp_path / "pred").write_text("a file")
    ckpt = tmp_path / "sam2.pt"
    ckpt.write_bytes(b"\x80" + np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    rc = main(["preflight", "eval", "revos", "--data", str(synth_root), "--model", str(tiny_dir), "--sam2", "tiny",
               "--sam2-ckpt", str(ckpt), "--out", str(tmp_path / "pred"), "--cpu-ok"])
    text = capsys.readouterr().out
    rows = _rows(text)
    assert rc == 1 and rows["out"][0] == "FAIL" and "not a folder" in rows["out"][1]
    assert rows["sam2"][0] == "FAIL" and "does not load" in rows["sam2"][1]
    assert "Weights only load failed" not in text and "Traceback" not in text


def test_preflight_sft_and_sft_refuse_an_out_that_is_a_file(tmp_path, capsys):
    from veason_r1.cli import main

    (tmp_path / "o").write_text("a file")
    args = ["--config", str(ROOT / "training_scripts/sft_qwen2_5vl_3b_lora.yaml"), "--data", str(tmp_path / "d"),
            "--out", str(tmp_path / "o")]
    main(["preflight", "sft", *args, "--cpu-ok"])
    rows = _rows(capsys.readouterr().out)
    assert rows["out"][0] == "FAIL" and "not a folder" in rows["out"][1]
    assert main(["sft", *args]) == 2 and "exists and is not a folder" in capsys.readouterr().err


def test_sam2_check_takes_the_propagator_config_and_names_its_keys(tmp_path):
    """`sam2_check(PropagatorConfig, cpu_ok, names)` serves both callers: GRPO names `reward.propagator.<key>`,
    eval the flags. Without a GPU (--cpu-ok) it loads on the CPU even when the config says cuda (the GRPO YAMLs)."""
    from veason_r1.models.config import PropagatorConfig
    from veason_r1.preflight import FAIL, PASS, sam2_check

    names = {k: f"reward.propagator.{k}" for k in ("name", "checkpoint", "device", "offload")}
    check = sam2_check(PropagatorConfig("sam2.1_hiera_l", checkpoint=None), True, names)
    assert check.status == FAIL and "random weights" in check.detail and "reward.propagator.checkpoint" in check.fix
    assert "--sam2-checkpoint" in sam2_check(PropagatorConfig("sam2.1_hiera_l", checkpoint=None), True).fix
    check = sam2_check(PropagatorConfig(None), True, names)
    assert check.status == FAIL and "reward.propagator.name" in check.fix
    check = sam2_check(PropagatorConfig("sam2_hiera_xl", checkpoint=str(tmp_path)), True, names)
    assert check.status == FAIL and check.detail.startswith("reward.propagator.name: unknown SAM2 config")
    import torch

    if not torch.cuda.is_available():
        check = sam2_check(PropagatorConfig("tiny", device="cuda"), True, names)
        assert check.status == PASS and "cpu (--cpu-ok)" in check.detail
