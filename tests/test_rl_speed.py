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


def test_reference_copy_keeps_fp32_rotary_tables(tiny_model):
    """The bf16 reference model (CUDA runs) once had its rotary inv_freq tables cast to bf16 too: every position
    of a long sequence then sits at the wrong angle and the reference log-probs drift from the policy's (KL loss
    against a different model). Buffers keep their dtype now; the reference differs only by weight rounding."""
    import copy

    from veason_r1.rl.local_trainer import reference_copy

    model = copy.deepcopy(tiny_model[0])
    with torch.no_grad():  # sharper attention than the random init, as a trained model has: positions then matter
        for layer in model.model.language_model.layers:
            layer.self_attn.q_proj.weight.mul_(4)
            layer.self_attn.k_proj.weight.mul_(4)
    ref = reference_copy(model, torch.bfloat16)
    assert {n: b.dtype for n, b in ref.named_buffers()} == {n: b.dtype for n, b in model.named_buffers()}
    assert all(p.dtype == torch.bfloat16 and not p.requires_grad for p in ref.parameters())
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(10, model.config.text_config.vocab_size - 100, (1, 1200), generator=g)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        want = torch.log_softmax(model(input_ids=ids).logits.float(), -1)
        got = torch.log_softmax(ref(input_ids=ids).logits.float(), -1)
        stale = copy.deepcopy(ref).to(torch.bfloat16)  # what the trainer built before: tables rounded to bf16
        drift = torch.log_softmax(stale(input_ids=ids).logits.float(), -1)
    late = slice(1000, 1200)
    assert float((got - want)[0, late].abs().max()) < 0.5 * float((drift - want)[0, late].abs().max())


def test_non_finite_bf16_gradients_are_retried_in_fp32_not_skipped(synth_root, tmp_path):
    """A gradient that is non-finite only under low-precision autocast (the H100 toy run skipped 1 step in 4 this
    way) is recomputed in fp32 for that mini-batch: the optimizer step is taken, nothing is skipped, and the
    tensors that were non-finite are named. A gradient that is non-finite in fp32 too is still skipped."""
    from veason_r1.models.tiny import make_tiny_qwen
    from veason_r1.rl.config import load_config
    from veason_r1.rl.local_trainer import LocalGRPOTrainer

    tiny = make_tiny_qwen(tmp_path / "tiny", seed=0)
    cfg = load_config("configs/grpo_local_tiny.yaml", [
        f"data.train_root={synth_root}", "data.val_max_samples=0", f"model.path={tiny}", "reward.use_consistency=false",
        f"trainer.default_local_dir={tmp_path / 'run'}", "trainer.logger=[]", "data.train_batch_size=1",
        "actor.ppo_mini_batch_size=1", "rollout.n=2", "data.max_response_length=8"])
    tr = LocalGRPOTrainer(cfg, verbose=False)
    tr.autocast_dtype = torch.bfloat16  # CPU stand-in for the CUDA bf16 path
    tr._autocast = lambda: torch.autocast("cpu", dtype=torch.bfloat16)
    always = {"on": False}

    class PoisonUnderAutocast(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.poison = torch.is_autocast_enabled("cpu") or always["on"]
            return x.view_as(x)

        @staticmethod
        def backward(ctx, grad):
            return grad * float("nan") if ctx.poison else grad

    layer = tr.model.model.language_model.layers[0].mlp
    layer.register_forward_hook(lambda mod, args, out: PoisonUnderAutocast.apply(out))
    before = {k: v.clone() for k, v in tr.model.state_dict().items()}
    m = tr.train_step()
    assert (m["actor/fp32_retries"], m["actor/skipped_steps"]) == (1.0, 0.0) and m["actor/grad_norm"] > 0
    after = tr.model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)  # the step was taken
    always["on"] = True  # non-finite in fp32 as well: skipped, as verl's actor does
    m = tr.train_step()
    assert (m["actor/fp32_retries"], m["actor/skipped_steps"]) == (1.0, 1.0)
