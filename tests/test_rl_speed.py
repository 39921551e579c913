"""The local trainer's GPU speed paths, checked on CPU: the bf16 copy leaves the master weights alone, bigger no-grad
micro-batches give the same log-probs, and the phase hook sees every phase in order (the attention fast paths are
tested in test_fast_qwen.py)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("verl")


@pytest.fixture(scope="module")
def tiny_model():
    from veason_r1.models.tiny import TinyQwenConfig, build_tiny_model

    return build_tiny_model(0, TinyQwenConfig(vision_depth=3, vision_fullatt_block_indexes=[2]))


def test_bf16_copy_is_a_frozen_cast_and_leaves_the_master_alone(tiny_model):
    from veason_r1.rl.local_trainer import _bf16_copy

    model, _ = tiny_model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    half = _bf16_copy(model, torch.bfloat16)
    for (k, p), (k2, q) in zip(model.named_parameters(), half.named_parameters()):
        assert k == k2 and q.dtype == torch.bfloat16 and not q.requires_grad
        assert torch.equal(q, p.detach().to(torch.bfloat16))
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_log_prob_micro_batch_and_phase_hook(synth_root, tmp_path):
    from veason_r1.models.tiny import make_tiny_qwen
    from veason_r1.rl.config import load_config
    from veason_r1.rl.local_trainer import LocalGRPOTrainer

    tiny = make_tiny_qwen(tmp_path / "tiny", seed=0)
    cfg = load_config("configs/grpo_local_tiny.yaml", [
        f"data.train_root={synth_root}", "data.val_max_samples=0", f"model.path={tiny}", "reward.use_consistency=false",
        f"trainer.default_local_dir={tmp_path / 'run'}", "trainer.logger=[]", "actor.ppo_micro_batch_size_per_gpu=1",
        "rollout.log_prob_micro_batch_size_per_gpu=8",  # a config field (was a constructor-only knob)
    ])
    events = []
    tr = LocalGRPOTrainer(cfg, verbose=False, phase_hook=lambda name, ev, s: events.append((name, ev)))
    tr.train_step()
    names = [n for n, ev in events if ev == "start"]
    assert names == ["data", "rollout", "rollout_chunk_1/1", "reward", "old_log_prob", "ref_log_prob", "update"]
    assert [n for n, ev in events if ev == "end"][-1] == "update"
    assert all(p.grad is None for p in tr.model.parameters())  # gradients freed after the update
    ro = tr.last_rollouts
    big = tr.log_probs(tr.model, ro)
    tr.log_prob_micro_batch = None  # the update's micro-batch of 1
    small = tr.log_probs(tr.model, ro)
    m = ro.response_mask.bool()
    assert torch.allclose(big[m], small[m], atol=1e-4)
    from veason_r1.structured_config import ConfigError

    with pytest.raises(ConfigError, match="trainer.vision_attention: expected one of 'auto', 'batched', 'hf', got 'flash'"):
        load_config("configs/grpo_local_tiny.yaml", ["trainer.vision_attention=flash"])
    assert load_config("configs/grpo_local_tiny.yaml", ["trainer.rollout_copy=false"]).trainer.rollout_copy is False
