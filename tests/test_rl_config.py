"""One config grammar (YAML + `section.key=value` dotlists onto a typed dataclass) for GRPO and SFT: unknown keys,
wrong types and out-of-range values stop before anything runs, naming the file or override, the key and the value
(issue 18 "one override grammar"; issue 16 section 3)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from veason_r1.structured_config import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def _yaml(tmp_path, text: str) -> Path:
    path = tmp_path / "grpo.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("text,message", [
    ('actor:\n  use_kl_loss: "no"\n', "actor.use_kl_loss: expected bool, got 'no'"),
    ("rollout:\n  n: four\n", "rollout.n: expected int, got 'four'"),
    ("rollout:\n  n: 2.5\n", "rollout.n: expected int, got 2.5"),
    ("rollout:\n  n: -1\n", "rollout.n = -1: must be >= 2"),
    ("actor:\n  lr: 0\n", "actor.lr = 0: must be > 0"),
    ("actor:\n  kl_coef: 0.1\n", "unknown key 'actor.kl_coef' (known in actor:"),
    ("reward:\n  variant: loose\n", "reward.variant: expected one of 'faithful', 'strict', got 'loose'"),
    ("trainer:\n  logger: [console, mlflow]\n", "trainer.logger = ['console', 'mlflow']: unknown logger(s)"),
    ("data: 3\n", "data: expected a mapping of DataConfig keys, got 3"),
])
def test_grpo_yaml_values_are_typed_and_named(tmp_path, text, message):
    from veason_r1.rl.config import load_config

    path = _yaml(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert str(e.value).startswith(str(path)) and message in str(e.value)


def test_yaml_booleans_and_numbers_follow_yaml(tmp_path):
    from veason_r1.rl.config import load_config

    cfg = load_config(_yaml(tmp_path, "actor:\n  use_kl_loss: no\n  entropy_coeff: 1e-3\n"))  # YAML false, a float
    assert cfg.actor.use_kl_loss is False and cfg.actor.entropy_coeff == 1e-3


def test_yaml_syntax_error_names_the_file_and_line(tmp_path):
    from veason_r1.rl.config import load_config

    path = _yaml(tmp_path, "actor:\n  lr: [1e-6\nrollout:\n  n: 8\n")
    with pytest.raises(ConfigError, match=rf"{path}: line \d+ column \d+: YAML syntax error"):
        load_config(path)


@pytest.mark.parametrize("override,message", [
    ('actor.use_kl_loss="no"', "override 'actor.use_kl_loss=\"no\"': actor.use_kl_loss: expected bool, got 'no'"),
    ("rollout.n=four", "override 'rollout.n=four': rollout.n: expected int, got 'four'"),
    ("rollout.n=2.5", "rollout.n: expected int, got 2.5"),
    ("rollout.n=-1", "rollout.n = -1: must be >= 2"),
    ("trainer.save_freq=0", "trainer.save_freq = 0: use -1 for never"),
    ("rollout", "override 'rollout': expected section.key=value"),
    ("verl.actor_rollout_ref.actor.optim.lr=1e-5", "owned by the GRPO field 'actor.lr'"),
])
def test_grpo_overrides_are_checked_like_the_file(override, message):
    from veason_r1.rl.config import load_config

    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert message in str(e.value)


def test_cli_reports_a_bad_value_in_one_line_with_exit_2(tmp_path, capsys):
    from veason_r1.cli import main

    path = _yaml(tmp_path, "rollout:\n  n: four\n")
    for backend in ("local", "verl"):
        assert main(["rl", "--backend", backend, "--config", str(path)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err == [f"error: {path}: rollout.n: expected int, got 'four'"]


def test_trainer_knobs_are_config_fields():
    from veason_r1.rl.config import load_config

    cfg = load_config(ROOT / "configs/grpo_local_tiny.yaml", [
        "trainer.rollout_copy=false", "trainer.vision_attention=hf", "rollout.log_prob_micro_batch_size_per_gpu=16"])
    assert (cfg.trainer.rollout_copy, cfg.trainer.vision_attention, cfg.rollout.log_prob_micro_batch_size_per_gpu) == (
        False, "hf", 16)
    import inspect

    from veason_r1.rl.local_trainer import LocalGRPOTrainer

    params = inspect.signature(LocalGRPOTrainer).parameters
    assert not {"rollout_copy", "vision_attention", "log_prob_micro_batch"} & set(params)


def test_one_home_per_grpo_hyper_parameter():
    """The method's numbers are typed once (GRPOConfig); the verl YAMLs set none of them, and the key map lives on
    the fields (no hand-written second table)."""
    import yaml

    from veason_r1.rl.config import flatten, verl_key_map

    owned = {k for keys in verl_key_map().values() for k in keys}
    for size in ("3b", "7b"):
        data = yaml.safe_load((ROOT / f"training_scripts/grpo_qwen2_5vl_{size}.yaml").read_text())
        assert not {"actor", "rollout"} - set(data) and "lr" not in data["actor"] and "n" not in data["rollout"]
        assert not set(flatten(data.get("verl", {}))) & owned
    src = (ROOT / "veason_r1/rl/config.py").read_text()
    assert "VERL_KEYS" not in src and "METHOD_HPARAMS" not in (ROOT / "veason_r1/rl/verl_config.py").read_text()


def test_real_sam2_needs_a_checkpoint_tiny_only_by_name():
    from veason_r1.models.config import PropagatorConfig
    from veason_r1.rl.config import GRPOConfig, load_config

    assert GRPOConfig().reward.propagator == PropagatorConfig(  # the release's reward SAM2, on a real path
        "sam2_hiera_l", "checkpoints/sam2_hiera_large.pt")
    with pytest.raises(ConfigError, match="reward.propagator.name='sam2.1_hiera_l' needs its checkpoint"):
        load_config(None, ["reward.propagator.name=sam2.1_hiera_l", "reward.propagator.checkpoint=null"])
    with pytest.raises(ConfigError, match="reward.propagator.name = None: the SAM2 consistency term needs a propagator"):
        load_config(None, ["reward.propagator.name=null"])
    cfg = load_config(None, ["reward.propagator.name=tiny", "reward.propagator.checkpoint=null"])
    assert cfg.reward.propagator.name == "tiny"
    assert load_config(None, ["reward.use_consistency=false", "reward.propagator.name=null"]).reward.propagator.name \
        is None


def test_reward_section_is_one_nested_reward_config(tmp_path):
    """`reward:` is the reward's one option set (reward/config.py), its propagator a nested mapping: a YAML layer and
    `--set reward.propagator.<key>` override it key by key, a misspelt nested key is refused naming it."""
    from veason_r1.models.config import PropagatorConfig
    from veason_r1.reward import RewardConfig
    from veason_r1.rl.config import GRPOConfig, load_config

    assert type(GRPOConfig().reward) is RewardConfig
    path = _yaml(tmp_path, "reward:\n  variant: strict\n  propagator:\n    device: cuda:1\n")
    cfg = load_config(path, ["reward.propagator.checkpoint=/ckpt/sam2.pt", "data.image_size=112"])
    # the keys the layers leave out keep the reward's default (the release's SAM2), not PropagatorConfig's own
    assert cfg.reward.propagator == PropagatorConfig("sam2_hiera_l", "/ckpt/sam2.pt", "cuda:1")
    assert cfg.reward.variant == "strict" and cfg.reward.image_size is None
    assert cfg.reward_config().image_size == 112  # the policy's frame side has one home: data.image_size
    for layer, message in [
        (["reward.propagator.chekpoint=/x.pt"], ("override 'reward.propagator.chekpoint=/x.pt': unknown key "
         "'reward.propagator.chekpoint' (known in reward.propagator: checkpoint, device, name, offload)")),
        (["reward.propagator.offload=maybe"], "reward.propagator.offload: expected bool, got 'maybe'"),
        (["reward.propagator=tiny"], "reward.propagator: expected a mapping of PropagatorConfig keys, got 'tiny'"),
        (["reward.sam2_checkpoint=/x.pt"], "unknown key 'reward.sam2_checkpoint' (known in reward:"),
        (["reward.max_sam2_load_failures=0"], "reward.max_sam2_load_failures = 0: must be >= 1"),
        (["reward.image_size=300"], "reward.image_size = 300: the policy's frame side is data.image_size (560)"),
    ]:
        with pytest.raises(ConfigError) as e:
            load_config(None, layer)
        assert message in str(e.value), (layer, str(e.value))
    with pytest.raises(ConfigError, match="unknown key 'reward.propagator.chekpoint'"):
        load_config(_yaml(tmp_path, "reward:\n  propagator:\n    chekpoint: /x.pt\n"))
    for name in ("3b", "7b"):  # the shipped YAMLs nest it too
        assert load_config(ROOT / f"training_scripts/grpo_qwen2_5vl_{name}.yaml").reward.propagator == \
            PropagatorConfig("sam2_hiera_l", "checkpoints/sam2_hiera_large.pt", "cuda")


def test_verl_section_cannot_set_a_reward_kwarg():
    """The reward's verl kwargs are written whole from `reward:`: a `verl:` key below them is refused, naming the
    field that owns it (or the section, for a key no field has)."""
    from veason_r1.rl.config import load_config

    kwargs = "verl.reward.custom_reward_function.reward_kwargs"
    for key, owner in [("variant=strict", "reward.variant"), ("propagator.checkpoint=/x.pt",
                                                               "reward.propagator.checkpoint"),
                       ("image_size=112", "reward.image_size"), ("sam2_model=tiny", "reward")]:
        with pytest.raises(ConfigError, match=f"verl.{kwargs[5:]}.{key.split('=')[0]}: owned by the GRPO field "
                                              f"'{owner}'"):
            load_config(None, [f"{kwargs}.{key}"])


@dataclasses.dataclass
class _Inner:
    name: str | None = "plain"
    size: int = 1


@dataclasses.dataclass
class _Outer:  # a nested field whose default differs from its class's own defaults
    inner: _Inner = dataclasses.field(default_factory=lambda: _Inner(name="special", size=5))
    flag: bool = False


def test_a_partial_nested_mapping_keeps_the_enclosing_default():
    """A layer that sets some keys of a nested dataclass overrides those; the rest keep the enclosing field's
    default (not the nested class's own)."""
    from veason_r1.structured_config import load_structured

    assert load_structured(_Outer, None, ["inner.size=7"]).inner == _Inner("special", 7)
    assert load_structured(_Outer, None, ["inner.name=x", "inner.size=2"]).inner == _Inner("x", 2)
    assert load_structured(_Outer, None, ["flag=true"]).inner == _Inner("special", 5)
    with pytest.raises(ConfigError, match="inner: expected a mapping of _Inner keys, got 3"):
        load_structured(_Outer, None, ["inner=3"])


# ------------------------------------------------------------------------------------------------- SFT


@pytest.mark.parametrize("override,message", [
    ('bf16="no"', "override 'bf16=\"no\"': bf16: expected true or false, got 'no'"),
    ("lora_rank=four", "override 'lora_rank=four': lora_rank: expected an integer, got 'four'"),
    ("lora_rank=2.5", "override 'lora_rank=2.5': lora_rank: expected an integer, got 2.5"),
    ("lora_rank=-1", "overrides ['lora_rank=-1']: lora_rank: must be positive, got -1"),
    ("lora_rnak=8", "unknown SFT key(s) ['lora_rnak']"),
])
def test_sft_shares_the_grammar(override, message):
    from veason_r1.sft.config import SFTConfig

    with pytest.raises(ValueError) as e:
        SFTConfig().with_overrides([override])
    assert message in str(e.value)
    assert SFTConfig().with_overrides(["learning_rate=5e-5", "bf16=false"]).learning_rate == 5e-5


def test_sft_yaml_errors_name_the_file(tmp_path):
    from veason_r1.sft.config import SFTConfig

    bad = tmp_path / "sft.yaml"
    bad.write_text("lora_rank: 16\nbf16: \"no\"\n")
    with pytest.raises(ValueError, match=rf"{bad}: bf16: expected true or false, got 'no'"):
        SFTConfig.from_yaml(bad)
    bad.write_text("lora_rank: [16\n")
    with pytest.raises(ConfigError, match=rf"{bad}: line \d+ column \d+: YAML syntax error"):
        SFTConfig.from_yaml(bad)
