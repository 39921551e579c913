"""The local one-device GRPO trainer on the tiny Qwen2.5-VL and the tiny SAM2 (CPU): finite losses, weights move,
resume reproduces the next step exactly, validation keeps the best checkpoint; the config contract."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("verl")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    from veason_r1.models.tiny import make_tiny_qwen

    return make_tiny_qwen(tmp_path_factory.mktemp("tiny_qwen_rl"), seed=0)


@pytest.fixture(scope="module")
def sam2():
    from veason_r1.models.sam2 import load_sam2

    return load_sam2("tiny", device="cpu")


def make_cfg(synth_root, tiny_dir, out, *extra):
    from veason_r1.rl.config import load_config

    return load_config("configs/grpo_local_tiny.yaml", [
        f"data.train_root={synth_root}", f"model.path={tiny_dir}",
        f"trainer.default_local_dir={out}", "trainer.logger=[tensorboard]", *extra,
    ])


def weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_two_steps_then_resume_gives_the_same_next_step(synth_root, tiny_dir, sam2, tmp_path):
    from veason_r1.rl.local_trainer import LocalGRPOTrainer

    opts = ("trainer.total_training_steps=2", "trainer.save_freq=1", "trainer.test_freq=2")
    a = LocalGRPOTrainer(make_cfg(synth_root, tiny_dir, tmp_path / "a", *opts), propagator=sam2, verbose=False)
    before = weights(a.model)
    summary = a.fit()
    assert summary["step"] == 2
    after = weights(a.model)
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert any("visual" in k for k in changed) and any("language_model" in k for k in changed)
    assert (a.ref_model is not None) and all(torch.equal(v, before[k]) for k, v in a.ref_model.state_dict().items())
    log = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2]
    for r in log:
        for key in ("actor/loss", "actor/pg_loss", "actor/kl_loss", "actor/entropy_loss", "actor/grad_norm"):
            assert np.isfinite(r[key]), key
        assert 0 <= r["reward/overall"] <= 5 and r["response_length/mean"] > 0
    assert log[1]["actor/kl_loss"] > 0  # the policy moved away from the reference after step 1
    assert "val/reward" in log[1] and (tmp_path / "a" / "best_checkpoint.json").is_file()
    assert any((tmp_path / "a" / "tensorboard").iterdir())
    # the saved model folder is a loadable policy
    from veason_r1.models.policy import check_model_dir

    check_model_dir(tmp_path / "a" / "global_step_2" / "model")

    # b: one step, stop; a new trainer resumes and takes step 2
    b1 = LocalGRPOTrainer(make_cfg(synth_root, tiny_dir, tmp_path / "b", *opts), propagator=sam2, verbose=False)
    b1.fit(max_steps=1)
    b2 = LocalGRPOTrainer(make_cfg(synth_root, tiny_dir, tmp_path / "b", *opts), propagator=sam2, verbose=False)
    b2.fit()
    log_b = [json.loads(line) for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log_b] == [1, 2]
    for key in ("actor/loss", "actor/kl_loss", "reward/overall", "response_length/mean"):
        assert log_b[1][key] == pytest.approx(log[1][key], rel=1e-5, abs=1e-8), key
    resumed = weights(b2.model)
    assert all(torch.allclose(resumed[k], after[k], atol=1e-6) for k in after)


def test_policy_gradient_follows_the_advantage(synth_root, tiny_dir, tmp_path, monkeypatch):
    """With rewards that differ inside a group the clipped policy loss is non-zero and raises the log-prob of the
    better rollout (the tiny model's own rewards are all 0, so the score is replaced here)."""
    from veason_r1.rl.local_trainer import LocalGRPOTrainer

    cfg = make_cfg(synth_root, tiny_dir, tmp_path / "pg", "reward.use_consistency=false", "actor.lr=1e-3",
                   "actor.entropy_coeff=0", "actor.use_kl_loss=false", "data.train_batch_size=1",
                   "actor.ppo_mini_batch_size=1", "trainer.total_training_steps=1", "trainer.save_freq=-1",
                   "trainer.test_freq=-1")
    tr = LocalGRPOTrainer(cfg, verbose=False)
    scores = iter([[{"overall": r, "format": 0, "keyframe": 0, "spatial": 0, "consistency": 0, "failure": ""}
                    for r in (3.0, 0.0, 0.0, 0.0)]])
    monkeypatch.setattr(tr, "score", lambda ro: next(scores))
    metrics = tr.train_step()
    ro = tr.last_rollouts
    adv = tr.advantages(ro, [3.0, 0.0, 0.0, 0.0])
    assert adv[0, 0] > 0 > adv[1, 0]
    assert metrics["actor/pg_loss"] != 0 and np.isfinite(metrics["actor/loss"])
    new = tr.log_probs(tr.model, ro)
    # compare with the log-probs before the update: recompute from a fresh copy of the initial weights
    tr0 = LocalGRPOTrainer(cfg, verbose=False)
    old = tr0.log_probs(tr0.model, ro)
    m = ro.response_mask
    gain = ((new - old) * m).sum(-1) / m.sum(-1)
    assert gain[0] > gain[1:].mean()


def test_lora_step_updates_only_the_adapter(synth_root, tiny_dir, sam2, tmp_path):
    from veason_r1.rl.local_trainer import LocalGRPOTrainer

    cfg = make_cfg(synth_root, tiny_dir, tmp_path / "lora", "model.lora_rank=4", "trainer.total_training_steps=1",
                   "trainer.test_freq=-1")
    tr = LocalGRPOTrainer(cfg, propagator=sam2, verbose=False)
    assert tr.ref_model is None  # the reference is the base model with the adapter disabled
    before = weights(tr.model)
    tr.fit()
    after = weights(tr.model)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all("lora_" in k for k in changed)
    assert (tmp_path / "lora" / "global_step_1" / "model" / "adapter_model.safetensors").is_file()


def test_config_contract(tmp_path):
    from veason_r1.rl.config import GRPOConfig, load_config

    cfg = load_config("configs/grpo_local_tiny.yaml")
    assert cfg.data.image_size == 112 and cfg.rollout.n == 4 and cfg.trainer.device == "cpu"
    d = GRPOConfig()  # defaults are docs/method.md §8
    assert (d.data.train_batch_size, d.rollout.n, d.actor.lr, d.actor.kl_loss_coef, d.actor.entropy_coeff) == (
        16, 8, 1e-6, 5e-3, 1e-3)
    assert (d.data.max_prompt_length, d.data.max_response_length, d.data.num_frames) == (7100, 1024, 6)
    assert (d.trainer.save_freq, d.trainer.test_freq, d.trainer.max_ckpt_to_keep) == (25, 25, 2)  # issue 15 item 6
    bad = tmp_path / "bad.yaml"
    bad.write_text("actor:\n  kl_coef: 0.1\n")
    with pytest.raises(ValueError, match="kl_coef"):
        load_config(bad)
    with pytest.raises(FileNotFoundError, match="missing.yaml"):
        load_config(tmp_path / "missing.yaml")
    assert load_config(None, ["rollout.n=2", "trainer.logger=[console]"]).rollout.n == 2


def test_cli_local_runs_and_resumes(synth_root, tiny_dir, tmp_path):
    from veason_r1.cli import main

    out = tmp_path / "cli"
    args = ["rl", "--backend", "local", "--config", "configs/grpo_local_tiny.yaml",
            "--set", f"data.train_root={synth_root}",
            "--set", f"model.path={tiny_dir}", "--set", f"trainer.default_local_dir={out}",
            "--set", "reward.use_consistency=false", "--set", "trainer.total_training_steps=2",
            "--set", "trainer.logger=[console]"]
    assert main([*args, "--max-steps", "1"]) == 0
    assert (out / "latest_checkpointed_iteration.txt").read_text() == "1"
    assert main(args) == 0
    assert (out / "latest_checkpointed_iteration.txt").read_text() == "2"


def test_trainer_uses_verl_core_algos_and_the_port_matches_it():
    from verl.trainer.ppo import core_algos

    from veason_r1.rl import _algos_port as port
    from veason_r1.rl import algos

    assert algos.SOURCE == "verl" and algos.agg_loss is core_algos.agg_loss
    assert algos.compute_grpo_outcome_advantage is core_algos.compute_grpo_outcome_advantage
    g = torch.Generator().manual_seed(0)
    logp, old, ref = (-torch.rand(6, 5, generator=g) * 3 for _ in range(3))
    adv_in = torch.randn(6, 5, generator=g)
    mask = (torch.rand(6, 5, generator=g) > 0.2).float()
    mask[:, 0] = 1
    rewards = torch.zeros(6, 5)
    rewards[:, 0] = torch.tensor([1.0, 0.0, 2.0, 3.0, 3.0, 0.5])
    index = np.array([0, 0, 0, 1, 1, 1])
    a1, _ = algos.compute_grpo_outcome_advantage(rewards.clone(), mask, index)
    a2, _ = port.compute_grpo_outcome_advantage(rewards.clone(), mask, index)
    assert torch.allclose(a1, a2)
    assert torch.allclose(algos.kl_penalty(logp, ref, "low_var_kl"), port.kl_penalty(logp, ref, "low_var_kl"))
    for mode in ("token-mean", "seq-mean-token-mean"):
        c1 = algos.actor_config(rollout_n=3, ppo_micro_batch_size_per_gpu=2, clip_ratio=0.2)
        c2 = port.actor_config(rollout_n=3, ppo_micro_batch_size_per_gpu=2, clip_ratio=0.2)
        l1, m1 = algos.policy_loss_vanilla(old_log_prob=old, log_prob=logp, advantages=adv_in,
                                           response_mask=mask.bool(), loss_agg_mode=mode, config=c1)
        l2, m2 = port.policy_loss_vanilla(old_log_prob=old, log_prob=logp, advantages=adv_in,
                                          response_mask=mask.bool(), loss_agg_mode=mode, config=c2)
        assert torch.allclose(l1, l2) and m1 == pytest.approx(m2)
    logits = torch.randn(2, 3, 11, generator=g)
    assert torch.allclose(algos.entropy_from_logits(logits), port.entropy_from_logits(logits), atol=1e-6)


def test_non_finite_gradient_skips_the_optimizer_step(synth_root, tiny_dir, tmp_path, monkeypatch):
    """As verl's actor: a NaN gradient norm skips that optimizer step (weights untouched, counted), never crashes."""
    import torch

    from veason_r1.rl.local_trainer import LocalGRPOTrainer

    cfg = make_cfg(synth_root, tiny_dir, tmp_path / "nan", "reward.use_consistency=false", "data.train_batch_size=1",
                   "actor.ppo_mini_batch_size=1", "trainer.total_training_steps=1", "trainer.save_freq=-1",
                   "trainer.test_freq=-1")
    tr = LocalGRPOTrainer(cfg, verbose=False)
    before = weights(tr.model)
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", lambda params, max_norm, **kw: torch.tensor(float("nan")))
    metrics = tr.train_step()
    assert metrics["actor/skipped_steps"] == 1.0
    after = weights(tr.model)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_resume_cuts_the_logs_back_to_the_checkpoint(synth_root, tiny_dir, tmp_path):
    """A run killed after logging steps past its last checkpoint re-trains those steps on resume; metrics.jsonl then
    holds each step once (issue 16: repeated steps in rl/metrics.jsonl)."""
    import shutil

    from veason_r1.rl import checkpoint as ckpt
    from veason_r1.rl.local_trainer import LocalGRPOTrainer

    out = tmp_path / "resume"
    opts = ("reward.use_consistency=false", "trainer.total_training_steps=3", "trainer.save_freq=1",
            "trainer.test_freq=-1", "trainer.logger=[tensorboard]", "data.train_batch_size=1",
            "actor.ppo_mini_batch_size=1", "rollout.n=2")
    LocalGRPOTrainer(make_cfg(synth_root, tiny_dir, out, *opts), verbose=False).fit(max_steps=2)
    # the crash: step 2 was logged, its checkpoint never completed
    shutil.rmtree(ckpt.step_dir(out, 2))
    (out / ckpt.TRACKER).write_text("1")
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"step": 2, "torn')  # and a torn last line
    tr = LocalGRPOTrainer(make_cfg(synth_root, tiny_dir, out, *opts), verbose=False)
    tr.fit()
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("reward/overall")] == [1, 2, 3]


def test_log_probs_are_those_of_the_tempered_sampling_policy(synth_root, tiny_dir, tmp_path):
    """Rollouts sampled at temperature T are scored with log_softmax(logits / T), as verl's actor scores them, so
    the ratio and the KL refer to the policy that produced the samples (T = 1 leaves the logits alone)."""
    from veason_r1.rl.local_trainer import LocalGRPOTrainer

    opts = ("reward.use_consistency=false", "data.train_batch_size=1", "rollout.n=2", "rollout.batch_size=2",
            "actor.ppo_mini_batch_size=1", "data.max_response_length=6")
    hot = LocalGRPOTrainer(make_cfg(synth_root, tiny_dir, tmp_path / "t1", *opts), verbose=False)
    cool = LocalGRPOTrainer(make_cfg(synth_root, tiny_dir, tmp_path / "t05", *opts, "rollout.temperature=0.5"),
                            verbose=False)
    samples = [hot.train_pool.draw(0, seed="temperature-test")]
    ro = hot.generate(samples, 2, 1.0, 1.0, seed=0, max_new_tokens=6)
    batch = hot._micro_batch(ro, [0, 1])
    R = ro.responses.shape[1]
    with torch.no_grad():
        logits = hot.model(**batch, logits_to_keep=R + 1, use_cache=False).logits[:, :-1, :].float()
    labels = batch["input_ids"][:, -R:].unsqueeze(-1)
    for trainer, t in ((hot, 1.0), (cool, 0.5)):
        want = torch.log_softmax(logits / t, dim=-1).gather(-1, labels).squeeze(-1)
        got = trainer.log_probs(trainer.model, ro)
        m = ro.response_mask.bool()
        assert torch.allclose(got[m], want[m], atol=1e-5)


def test_rollouts_are_scored_with_the_positions_that_sampled_them(synth_root, tiny_dir, tmp_path):
    """The trainer's log-prob forward must see the model generation ran: the processor's inputs (with
    mm_token_type_ids, hence Qwen2.5-VL's 3D M-RoPE positions) followed by the response. Before the fix the
    Qwen2.5-VL forward dropped mm_token_type_ids and transformers fell back to 1D positions: GRPO optimised
    another model than the one that sampled."""
    from veason_r1.models.policy import GenerationRequest, build_inputs
    from veason_r1.rl.local_trainer import LocalGRPOTrainer

    opts = ("reward.use_consistency=false", "data.train_batch_size=1", "rollout.n=2", "rollout.batch_size=2",
            "actor.ppo_mini_batch_size=1", "data.max_response_length=6")
    trainer = LocalGRPOTrainer(make_cfg(synth_root, tiny_dir, tmp_path / "t", *opts), verbose=False)
    sample = trainer.train_pool.draw(0, seed="positions-test")
    ro = trainer.generate([sample], 2, 1.0, 1.0, seed=0, max_new_tokens=6)
    got = trainer.log_probs(trainer.model, ro)
    prompt = build_inputs(trainer.processor, [GenerationRequest(sample.expression, sample.frame_ids,
                                                                list(sample.frames))], trainer.cfg.data.image_size)
    R = ro.responses.shape[1]
    for i in range(2):
        ids = torch.cat([prompt["input_ids"][0], ro.responses[i]])[None]
        types = torch.cat([prompt["mm_token_type_ids"][0], torch.zeros(R, dtype=torch.long)])[None]
        att = torch.cat([prompt["attention_mask"][0], ro.response_mask[i].long()])[None]
        with torch.no_grad():
            logits = trainer.model(input_ids=ids, attention_mask=att, mm_token_type_ids=types,
                                   pixel_values=prompt["pixel_values"], image_grid_thw=prompt["image_grid_thw"],
                                   use_cache=False).logits[0, -R - 1:-1].float()
        want = torch.log_softmax(logits, -1).gather(-1, ro.responses[i][:, None]).squeeze(-1)
        m = ro.response_mask[i].bool()
        assert torch.allclose(got[i][m], want[m], atol=1e-4), (got[i][m], want[m])
