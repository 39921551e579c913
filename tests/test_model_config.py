"""The model seams' settings (models/config.py): one flag group builds `PolicyConfig` / `PropagatorConfig` for every
command that names a model, with one spelling of every option."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from veason_r1.errors import BadInput, MissingInput
from veason_r1.models.config import (
    POLICY_FLAGS,
    PROPAGATOR_FLAGS,
    PolicyConfig,
    PropagatorConfig,
    add_policy_flags,
    add_propagator_flags,
    policy_from_args,
    propagator_from_args,
)

MODEL_COMMANDS = ("predict", "infer", "app")


def _parser(**defaults) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser()
    add_policy_flags(p, defaults.get("policy"))
    add_propagator_flags(p, defaults.get("propagator"))
    return p


def test_flags_build_the_configs_and_every_field_has_its_flag():
    assert set(POLICY_FLAGS) == {f.name for f in dataclasses.fields(PolicyConfig)}
    assert set(PROPAGATOR_FLAGS) == {f.name for f in dataclasses.fields(PropagatorConfig)}
    args = _parser().parse_args(["--model", "toy", "--engine", "vllm", "--device", "cuda:1", "--dtype", "float32",
                                 "--fast-paths", "off", "--tensor-parallel-size", "2", "--sam2", "sam3",
                                 "--sam2-checkpoint", "w/sam3", "--sam2-device", "cuda:0", "--offload"])
    assert policy_from_args(args) == PolicyConfig("toy", "vllm", "cuda:1", "float32", "off", 2)
    assert propagator_from_args(args) == PropagatorConfig("sam3", "w/sam3", "cuda:0", True)
    # the paper-era flag is the same option, not a second setting
    args = _parser().parse_args(["--sam2-ckpt", "a.pt"])
    assert propagator_from_args(args).checkpoint == "a.pt"


def test_flag_defaults_come_from_the_config_given():
    args = _parser(policy=PolicyConfig(model="tiny", dtype="float32"),
                   propagator=PropagatorConfig(name="toy", device="cpu")).parse_args([])
    assert policy_from_args(args) == PolicyConfig(model="tiny", dtype="float32")
    assert propagator_from_args(args) == PropagatorConfig(name="toy", device="cpu")
    assert propagator_from_args(_parser().parse_args([])) == PropagatorConfig()


@pytest.mark.parametrize("command", MODEL_COMMANDS)
def test_every_command_that_names_a_model_has_the_one_flag_group(command):
    from veason_r1.cli import build_parser

    parser = build_parser(available_only=False)
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    options = {s for a in sub._actions for s in a.option_strings}
    assert set(POLICY_FLAGS.values()) | set(PROPAGATOR_FLAGS.values()) <= options
    dests = {a.dest for a in sub._actions}
    assert {f"policy_{k}" for k in POLICY_FLAGS} | {f"propagator_{k}" for k in PROPAGATOR_FLAGS} <= dests


def test_propagator_check_names_the_flag_or_the_config_key(tmp_path):
    with pytest.raises(BadInput, match=r"^--sam2: unknown SAM2 config 'sam2.1_hiera_lx'"):
        PropagatorConfig("sam2.1_hiera_lx").check()
    with pytest.raises(MissingInput, match="--sam2-checkpoint: checkpoint not found"):
        PropagatorConfig("sam2.1_hiera_t", str(tmp_path / "nope.pt")).check()
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(BadInput, match="reward.propagator.checkpoint: not a PyTorch checkpoint"):
        PropagatorConfig("sam2.1_hiera_t", str(bad)).check({"checkpoint": "reward.propagator.checkpoint"})
    with pytest.raises(MissingInput, match="--sam2-checkpoint: checkpoint not found"):  # a tracker's folder too
        PropagatorConfig("sam3", str(tmp_path / "no_folder")).check()
    PropagatorConfig("toy").check()  # named: brings its own checkpoint
    assert not PropagatorConfig("toy").needs_checkpoint and PropagatorConfig("sam2.1_hiera_t").needs_checkpoint
    assert PropagatorConfig("tiny").random_weights and not PropagatorConfig("toy").random_weights


def test_named_policy_resolves_and_a_missing_folder_is_one_line(tmp_path):
    folder = PolicyConfig("toy").folder()
    assert (folder / "config.json").is_file() and not PolicyConfig("toy").random_weights
    with pytest.raises(MissingInput, match="policy folder not found"):
        PolicyConfig(str(tmp_path / "nope")).folder()
    with pytest.raises(BadInput, match="--model: no policy given"):
        PolicyConfig().folder()
