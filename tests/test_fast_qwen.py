"""The exact fast paths of `veason_r1.models.fast_qwen` against transformers' own Qwen2.5-VL code (tiny model, CPU,
fp32): batched vision windows give the same values and gradients, grouped decode attention gives the same attention
output and the same greedy tokens, and both can be switched off again."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from veason_r1.models.fast_qwen import (
    GROUPED_DECODE_SDPA,
    apply_fast_paths,
    fast_vision_attention,
    grouped_decode_sdpa,
    patch_text_attention,
    remove_fast_paths,
)
from veason_r1.models.policy import GenerationRequest, HFEngine, Policy, SamplingConfig, build_inputs


@pytest.fixture(scope="module")
def tiny_model():
    from veason_r1.models.tiny import TinyQwenConfig, build_tiny_model

    torch.set_num_threads(1)
    model, processor = build_tiny_model(0, TinyQwenConfig(vision_depth=3, vision_fullatt_block_indexes=[2]))
    processor.tokenizer.padding_side = "left"
    return model, processor


def _requests(size: int, texts=("the red circle",) * 2):
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 255, (size, size, 3), dtype=np.uint8) for _ in range(3)]
    return [GenerationRequest(t, [0, 4, 9], frames) for t in texts]


@pytest.mark.parametrize("size", [140, 224])  # 140: windows of unequal length (5x5 merged tokens, windows of 4)
def test_batched_vision_attention_matches_transformers(tiny_model, size):
    model, processor = tiny_model
    ref = copy.deepcopy(model)
    fast = copy.deepcopy(model)
    assert fast_vision_attention(fast) == 3
    assert fast_vision_attention(fast) == 0  # already patched
    batch = build_inputs(processor, _requests(size), size)
    out_ref = ref(**batch).logits
    out_fast = fast(**batch).logits
    assert torch.allclose(out_ref, out_fast, atol=1e-5)
    out_ref.float().pow(2).mean().backward()
    out_fast.float().pow(2).mean().backward()
    g_ref = ref.model.visual.blocks[0].attn.qkv.weight.grad
    g_fast = fast.model.visual.blocks[0].attn.qkv.weight.grad
    assert g_ref.abs().sum() > 0 and torch.allclose(g_ref, g_fast, atol=1e-6)
    clone = copy.deepcopy(fast)  # copies keep the patch, bound to themselves
    attn = clone.model.visual.blocks[0].attn
    assert attn.forward.__self__ is attn


class _Module(torch.nn.Module):
    num_key_value_groups = 4
    is_causal = True


def test_grouped_decode_equals_repeated_kv_sdpa():
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    g = torch.Generator().manual_seed(0)
    batch, heads, kv_heads, length, dim = 3, 8, 2, 11, 16
    q = torch.randn(batch, heads, 1, dim, generator=g)
    k, v = (torch.randn(batch, kv_heads, length, dim, generator=g) for _ in range(2))
    mask = torch.ones(batch, 1, 1, length, dtype=torch.bool)
    mask[0, ..., :4] = False  # left padding of row 0
    mask[2, ..., :1] = False
    module = _Module().eval()
    ref, _ = sdpa_attention_forward(module, q, k, v, mask, scaling=dim**-0.5)
    new, _ = grouped_decode_sdpa(module, q, k, v, mask, scaling=dim**-0.5)
    assert new.shape == ref.shape == (batch, 1, heads, dim)
    assert torch.allclose(new, ref, atol=1e-6)
    # masked keys really are ignored: changing them changes nothing
    k2 = k.clone()
    k2[0, :, :4] = 100.0
    assert torch.allclose(grouped_decode_sdpa(module, q, k2, v, mask, scaling=dim**-0.5)[0], new, atol=1e-6)
    # prefill (several query tokens) is the stock function, unchanged
    qp = torch.randn(batch, heads, 5, dim, generator=g)
    causal = torch.ones(batch, 1, 5, length, dtype=torch.bool).tril(diagonal=length - 5)
    assert torch.equal(grouped_decode_sdpa(module, qp, k, v, causal)[0], sdpa_attention_forward(module, qp, k, v,
                                                                                                causal)[0])


def test_fast_paths_keep_greedy_tokens_and_are_used(tiny_model, monkeypatch):
    from veason_r1.models import fast_qwen

    model, processor = copy.deepcopy(tiny_model[0]), tiny_model[1]
    texts = ("a", "the red circle that moves left and then right", "two squares")  # left padding differs per row
    batch = build_inputs(processor, _requests(112, texts), 112)
    kw = HFEngine(Policy(model, processor, "cpu"), 112).generate_kwargs(SamplingConfig(max_new_tokens=24))
    with torch.inference_mode():
        ref = model.generate(**batch, **kw, output_logits=True, return_dict_in_generate=True)
    calls = []
    real = fast_qwen.grouped_decode_sdpa
    monkeypatch.setattr(fast_qwen, "grouped_decode_sdpa", lambda *a, **k: calls.append(a[1].shape) or real(*a, **k))
    assert apply_fast_paths(model) == {"vision_attention_modules": 3, "grouped_decode_attention": True}
    assert model.model.language_model.config._attn_implementation == GROUPED_DECODE_SDPA
    assert model.config.vision_config._attn_implementation == "sdpa"  # the vision tower keeps its own setting
    with torch.inference_mode():
        new = model.generate(**batch, **kw, output_logits=True, return_dict_in_generate=True)
    assert torch.equal(ref.sequences, new.sequences)
    assert max(float((a - b).abs().max()) for a, b in zip(ref.logits, new.logits)) < 1e-4
    layers = model.config.text_config.num_hidden_layers
    assert sum(1 for s in calls if s[2] == 1) == layers * 23  # every decode step of every layer went through it
    remove_fast_paths(model)
    assert model.config.text_config._attn_implementation == "sdpa"
    assert "forward" not in vars(model.model.visual.blocks[0].attn)


def test_eager_models_and_load_policy_switch(tiny_model, tmp_path):
    from veason_r1.models.policy import load_policy
    from veason_r1.models.tiny import make_tiny_qwen

    eager = copy.deepcopy(tiny_model[0])
    eager.config.text_config._attn_implementation = "eager"
    assert patch_text_attention(eager) is False  # only sdpa models are switched
    folder = make_tiny_qwen(tmp_path / "tiny", seed=0)
    on = load_policy(folder, "cpu", fast_paths="on").model
    auto = load_policy(folder, "cpu").model  # auto = CUDA only
    assert on.config.text_config._attn_implementation == GROUPED_DECODE_SDPA
    assert auto.config.text_config._attn_implementation == "sdpa"
    with pytest.raises(ValueError, match="fast_paths"):
        load_policy(folder, "cpu", fast_paths="yes")


def test_profile_generation_smoke_on_cpu(tmp_path):
    """bench/profile_generation.py end to end on a 1-layer real-width model: the JSON it writes for the GPU box."""
    import json
    import runpy
    import sys

    out = tmp_path / "profile.json"
    argv = sys.argv
    sys.argv = ["profile_generation.py", "--out", str(out), "--device", "cpu", "--dtype", "float32",
                "--text-layers", "1", "--vision-depth", "2", "--image-size", "112", "--new-tokens", "3",
                "--variants", "b1,b2vg", "--profile-steps", "1"]
    try:
        with pytest.raises(SystemExit) as done:
            runpy.run_path("bench/profile_generation.py", run_name="__main__")
        assert done.value.code == 0
    finally:
        sys.argv = argv
    result = json.loads(out.read_text())
    assert result["vision_identity"]["bit_identical"] is True
    rows = list(result["variants"].values())
    assert [(r["batch"], r["batched_vision_attention"], r["grouped_decode_attention"]) for r in rows] == [
        (1, False, False), (2, True, True)]
    assert all(r["new_tokens"] == 3 and r["decode_ms_per_step"] > 0 and "error" not in r for r in rows)
    assert "aten::" in result["profile_by_cpu"]


def test_step_clock_stamps_first_step_by_default_and_every_step_for_the_profiler(monkeypatch):
    """HFEngine's clock syncs once (prefill end); the profiler's stamps each step and takes the median gap."""
    from veason_r1.models import policy

    ticks = iter([1.0, 1.5, 1.7, 2.6, 10.0, 11.0, 11.2])
    monkeypatch.setattr(policy.time, "perf_counter", lambda: next(ticks))
    once, every = policy.StepClock("cpu"), policy.StepClock("cpu", every_step=True)
    for _ in range(3):
        once(None, "scores")
    assert once.stamps == [1.0] and once.first == 1.0 and once.decode_ms_per_step() is None
    assert [every(None, s) for s in "abcd"] == list("abcd")  # scores pass through untouched
    assert every.stamps == [1.5, 1.7, 2.6, 10.0]
    assert every.decode_ms_per_step() == 900.0  # gaps 0.2, 0.9, 7.4 -> median 0.9 s
