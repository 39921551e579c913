"""The install sets of `make ENV=<env> venv` (issue 23 items 11, 12): each ENV resolves in one pip run so that
`pip check` speaks for it, the vLLM set does not carry the starlette < 1.0 pair (gradio, LLaMA-Factory), a venv is
never silently reinstalled with another ENV's torch, and the scripts find the checkout's .venv."""

from __future__ import annotations

import importlib.metadata
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs make")


def _make(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(["make", "--no-print-directory", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=60, check=False)


def _requirements(path: Path) -> list[Requirement]:
    out = []
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            out.append(Requirement(line))
    return out


def _closure_specs(roots: list[Requirement], target: str) -> dict[str, SpecifierSet]:
    """requirer -> specifier on `target`, over the installed dependency closure of `roots` (this venv's metadata)."""
    seen, todo, specs = set(), [(r, None) for r in roots], {}
    while todo:
        req, parent = todo.pop()
        name = canonicalize_name(req.name)
        if name == canonicalize_name(target):
            specs[parent or "(top level)"] = req.specifier
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = importlib.metadata.requires(req.name) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        extras = req.extras
        for text in requires:
            dep = Requirement(text)
            if dep.marker is not None and not any(dep.marker.evaluate({"extra": e}) for e in (extras or {""})):
                continue
            todo.append((dep, name))
    return specs


def test_each_env_installs_in_one_resolution_and_runs_pip_check(tmp_path):
    """Before: the documented two-step install (the pinned set, then vLLM) left `pip check` failing on gpu-vllm."""
    venv = tmp_path / "venv"
    for env, reqs in {"cpu": "-r requirements.txt -r requirements-app.txt",
                      "gpu": "-r requirements.txt -r requirements-app.txt",
                      "gpu-vllm": "-r requirements.txt vllm"}.items():
        r = _make("-n", "venv", f"ENV={env}", f"VENV={venv}")
        assert r.returncode == 0, r.stderr
        lines = r.stdout.replace("\\\n", " ").splitlines()
        install = [i for i, line in enumerate(lines) if f"-c constraints/{env}.txt {reqs}" in line]
        check = [i for i, line in enumerate(lines) if line.strip().endswith("pip check")]
        assert install and check and install[0] < check[0], r.stdout
        sam2 = next(line for line in lines if "sam2==1.1.0" in line)
        assert f"SAM2_BUILD_CUDA={0 if env == 'cpu' else 1}" in sam2 and "--no-cache-dir" in sam2  # item 9


def test_the_vllm_set_resolves_with_vllms_starlette():
    """vLLM 0.24.0 requires starlette >= 1.0.1 (its wheel's metadata, constraints/vllm-0.24.0-requires.txt); gradio
    5.50.0, which llamafactory 0.9.5 requires, needs starlette < 1.0. The gpu-vllm set (requirements.txt) must hold
    nothing that pins starlette below 1.0.1; the app set (requirements-app.txt) is where that pair lives."""
    vllm = {canonicalize_name(r.name): r for r in _requirements(ROOT / "constraints/vllm-0.24.0-requires.txt")}
    assert "1.0.1" in vllm["starlette"].specifier and "0.52.1" not in vllm["starlette"].specifier
    core = _requirements(ROOT / "requirements.txt")
    names = {canonicalize_name(r.name) for r in core}
    assert not names & {"gradio", "llamafactory"}
    blocking = {who: str(s) for who, s in _closure_specs(core, "starlette").items() if "1.0.1" not in s}
    assert blocking == {}, blocking
    app = _closure_specs(_requirements(ROOT / "requirements-app.txt"), "starlette")
    assert any("1.0.1" not in s for s in app.values())  # why the app set stays out of gpu-vllm
    for r in core:  # and the core pins themselves admit vLLM's own pins
        if canonicalize_name(r.name) in vllm and r.specifier and vllm[canonicalize_name(r.name)].specifier:
            pinned = [v for v in re.findall(r"==([\w.]+)", str(r.specifier))]
            for v in pinned:
                assert v in vllm[canonicalize_name(r.name)].specifier, (r, vllm[canonicalize_name(r.name)])


def _fake_venv(path: Path, env: str) -> None:
    (path / "bin").mkdir(parents=True)
    (path / f".installed-{env}").touch()


def test_make_test_keeps_the_env_a_venv_was_made_with(tmp_path):
    """Before: `make test` after `make ENV=gpu-vllm venv` reinstalled torch from constraints/cpu.txt into that venv."""
    venv = tmp_path / "venv"
    _fake_venv(venv, "gpu-vllm")
    os.utime(venv / ".installed-gpu-vllm", (4e9, 4e9))  # newer than every input: nothing to reinstall
    r = _make("-n", "test", f"VENV={venv}")
    assert r.returncode == 0, r.stderr
    assert "constraints/cpu.txt" not in r.stdout and f"{venv}/bin/python -m pytest -q" in r.stdout
    r = _make("test", "ENV=cpu", f"VENV={venv}")
    assert r.returncode == 2 and f"{venv} holds ENV=gpu-vllm; ENV=cpu would reinstall torch" in r.stderr
    r = _make("-n", "venv", "ENV=gpu-vlm", f"VENV={tmp_path / 'fresh'}")
    assert "ENV=gpu-vlm: unknown" in r.stderr or r.returncode != 0


STUB = '#!/usr/bin/env bash\necho "$0 $*" >> "$STUB_LOG"\ncase "$*" in *"launch run-dir"*) echo /tmp/run;; ' \
       '*"verl_config best"*) echo /tmp/run/global_step_25/actor;; esac\n'


def test_scripts_find_the_checkouts_venv(tmp_path):
    """Before: the scripts ran a bare `python` / `veason-r1`, which is not the project's env unless activated."""
    repo = tmp_path / "repo"
    for rel in ("training_scripts/run_grpo.sh", "training_scripts/run_sft.sh", "eval/multi_gpu_eval.sh"):
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / rel, repo / rel)
    for name in ("python", "veason-r1"):
        (repo / ".venv/bin").mkdir(parents=True, exist_ok=True)
        (repo / ".venv/bin" / name).write_text(STUB)
        (repo / ".venv/bin" / name).chmod(0o755)
    log = tmp_path / "calls.log"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHON", "VEASON", "VIRTUAL_ENV", "CUDA_VISIBLE_DEVICES")}
    env.update({"STUB_LOG": str(log), "SKIP_PREFLIGHT": "1", "NUM_GPUS": "1"})
    for script, args in (("training_scripts/run_grpo.sh", ["3b"]),
                         ("training_scripts/run_sft.sh", ["--data", "d", "--model", "m", "--out", "o"]),
                         ("eval/multi_gpu_eval.sh", ["revos", "d", "m", str(tmp_path / "pred")])):
        r = subprocess.run(["bash", str(repo / script), *args], env=env, capture_output=True, text=True, timeout=60,
                           check=False)
        assert r.returncode == 0, (script, r.stderr)
    callers = {line.split()[0] for line in log.read_text().splitlines()}
    assert callers == {str(repo / ".venv/bin/python"), str(repo / ".venv/bin/veason-r1")}, callers
