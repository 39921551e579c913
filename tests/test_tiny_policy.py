"""Tiny Qwen2.5-VL folder, policy loader, inputs and generation engines (CPU, float32, single thread)."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from veason_r1.inference.pipeline import build_engine
from veason_r1.models.config import PolicyConfig
from veason_r1.models.policy import (
    GenerationRequest,
    HFEngine,
    SamplingConfig,
    build_inputs,
    build_vllm_requests,
    load_policy,
    prompt_text,
    visual_tokens_per_frame,
)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """Written through the CLI, as users do."""
    from veason_r1.cli import main

    out = tmp_path_factory.mktemp("tiny") / "qwen"
    assert main(["make-tiny", "--out", str(out), "--seed", "0"]) == 0
    return out


@pytest.fixture(scope="module")
def policy(tiny_dir):
    return load_policy(tiny_dir, device="cpu", dtype="float32")


def frames(n: int, size: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(n)]


def requests_112() -> list[GenerationRequest]:
    """Different frame counts and expression lengths, so left padding is really exercised."""
    return [
        GenerationRequest("The dog on the left.", [0, 5, 10], frames(3, 112, 1)),
        GenerationRequest("the person in the red shirt who throws the ball", [2, 4, 6, 8, 10], frames(5, 112, 2)),
        GenerationRequest("cat", [7], frames(1, 112, 3)),
    ]


# ---------------------------------------------------------------------------------------------------------------
# Folder


def test_folder_has_real_layout_and_consistent_ids(tiny_dir, policy):
    names = {p.name for p in tiny_dir.iterdir()}
    for required in (
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "vocab.json",
        "merges.txt",
        "preprocessor_config.json",
        "chat_template.json",
    ):
        assert required in names, required
    cfg = json.loads((tiny_dir / "config.json").read_text())
    assert cfg["architectures"] == ["Qwen2_5_VLForConditionalGeneration"] and cfg["model_type"] == "qwen2_5_vl"
    tok = policy.tokenizer
    ids = {
        t: tok.convert_tokens_to_ids(t)
        for t in (
            "<|endoftext|>",
            "<|im_start|>",
            "<|im_end|>",
            "<|vision_start|>",
            "<|vision_end|>",
            "<|image_pad|>",
            "<|video_pad|>",
            "<|box_start|>",
        )
    }
    assert ids["<|im_start|>"] == ids["<|endoftext|>"] + 1 and ids["<|box_start|>"] == ids["<|endoftext|>"] + 5
    mc = policy.model.config
    assert (mc.image_token_id, mc.video_token_id) == (ids["<|image_pad|>"], ids["<|video_pad|>"])
    assert (mc.vision_start_token_id, mc.vision_end_token_id) == (ids["<|vision_start|>"], ids["<|vision_end|>"])
    assert 2000 <= len(tok) <= mc.text_config.vocab_size <= 8192  # "a few thousand"
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    for special, token_id in ids.items():  # each special token is one token, never split by the BPE
        assert tok(special, add_special_tokens=False)["input_ids"] == [token_id]
    head_dim = mc.text_config.hidden_size // mc.text_config.num_attention_heads
    assert sum(mc.text_config.rope_parameters["mrope_section"]) * 2 == head_dim


def test_reload_gives_identical_logits_and_inputs(tiny_dir, policy):
    from transformers import AutoProcessor

    from veason_r1.models.tiny import build_tiny_model

    model, processor = build_tiny_model(seed=0)  # the in-memory model the folder was written from
    reloaded = AutoProcessor.from_pretrained(tiny_dir, local_files_only=True)
    reqs = requests_112()[:2]
    a = build_inputs(processor, reqs, 112)
    b = build_inputs(reloaded, reqs, 112)
    assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["pixel_values"], b["pixel_values"])
    with torch.inference_mode():
        ref = model(**a).logits
        got = policy.model(**b).logits
    assert ref.shape == (2, a["input_ids"].shape[1], policy.model.config.text_config.vocab_size)
    assert torch.equal(ref, got)
    other, _ = build_tiny_model(seed=1)
    assert not torch.equal(other.lm_head.weight, model.lm_head.weight)  # the seed matters


def test_text_roundtrip_keeps_reasoning_tags(policy):
    tok = policy.tokenizer
    text = (
        "<think>The dog runs at (12s).</think>\n"
        '<answer>{"keyframe_timestamp": 12, "bbox_2d_list": [[1, 2, 300, 560]]}</answer>'
    )
    ids = tok(text + "<|im_end|>", add_special_tokens=False)["input_ids"]
    assert tok.decode(ids, skip_special_tokens=True) == text
    assert len(ids) < len(text) / 1.5  # a trained BPE, not bytes


# ---------------------------------------------------------------------------------------------------------------
# Prompt and inputs


def test_chat_template_renders_qwen_format(policy):
    req = GenerationRequest("The Dog.", [0, 5], frames(2, 112, 0))
    text = prompt_text(policy.processor, req)
    vis = "<|vision_start|><|image_pad|><|vision_end|>"
    assert text.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n")
    assert text.startswith(
        f"<|im_start|>user\n(0s){vis}, (5s){vis}\nYou are given 2 frames", text.index("<|im_start|>user")
    )
    assert "expression: 'the dog'" in text
    assert text.endswith("<|im_end|>\n<|im_start|>assistant\n")
    assert text.count("<|image_pad|>") == 2
    conv = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "hi"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "<think>a</think>"}]},
    ]
    full = policy.processor.apply_chat_template(conv, tokenize=False)
    assert full == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"  # default system turn when none is given
        f"<|im_start|>user\n{vis}hi<|im_end|>\n<|im_start|>assistant\n<think>a</think><|im_end|>\n"
    )


@pytest.mark.parametrize("size,expected", [(560, 400), (112, 16)])
def test_visual_tokens_per_frame(policy, size, expected):
    assert visual_tokens_per_frame(size) == expected
    reqs = [GenerationRequest("a dog", [0, 3], frames(2, size, 0)), GenerationRequest("a cat", [1], frames(1, size, 1))]
    batch = build_inputs(policy.processor, reqs, size)
    image_tokens = (batch["input_ids"] == policy.model.config.image_token_id).sum(1).tolist()
    assert image_tokens == [2 * expected, expected]
    assert batch["image_grid_thw"].tolist() == [[1, size // 14, size // 14]] * 3
    assert batch["pixel_values"].shape[0] == 3 * (size // 14) ** 2
    # left padding: the shorter prompt is padded at the start, both end with the assistant header
    assert batch["attention_mask"][1, 0] == 0 and bool(batch["attention_mask"][:, -1].all())


def test_build_inputs_rejects_bad_frames_and_sizes(policy):
    with pytest.raises(ValueError, match="multiple of 28"):
        build_inputs(policy.processor, [GenerationRequest("x", [0], frames(1, 100, 0))], 100)
    with pytest.raises(ValueError, match=r"request 0 frame 0: expected a \(112, 112, 3\) uint8"):
        build_inputs(policy.processor, [GenerationRequest("x", [0], frames(1, 56, 0))], 112)
    with pytest.raises(ValueError, match="2 images for 1 frame ids"):
        build_inputs(policy.processor, [GenerationRequest("x", [0], frames(2, 112, 0))], 112)


def test_build_inputs_with_responses_marks_response_tokens(policy):
    reqs = requests_112()[:2]
    responses = [
        '<think>left dog</think>\n<answer>{"keyframe_timestamp": 5, "bbox_2d_list": [[1, 2, 3, 4]]}</answer><|im_end|>',
        "<think>x</think>",
    ]
    batch = build_inputs(policy.processor, reqs, 112, responses=responses)
    tok = policy.tokenizer
    for i, resp in enumerate(responses):
        picked = batch["input_ids"][i][batch["response_mask"][i].bool()]
        assert tok.decode(picked) == resp
    plain = build_inputs(policy.processor, reqs, 112)
    n_resp = batch["response_mask"].sum(1)
    assert ((batch["attention_mask"].sum(1) - n_resp) == plain["attention_mask"].sum(1)).all()


# ---------------------------------------------------------------------------------------------------------------
# Engines


def test_batched_greedy_equals_one_at_a_time(policy):
    reqs = requests_112()
    sampling = SamplingConfig(max_new_tokens=20, n=2)
    batched = HFEngine(policy, image_size=112, batch_size=8).generate(reqs, sampling)
    single = HFEngine(policy, image_size=112, batch_size=1).generate(reqs, sampling)
    assert batched == single
    assert [len(c) for c in batched] == [2, 2, 2] and all(c[0] == c[1] for c in batched)  # greedy: n equal copies
    assert len({c[0] for c in batched}) == 3 and all(c[0] for c in batched)  # different prompts, non-empty text
    # the first generated token's logits agree too (padding does not change the numbers beyond fp32 noise)
    b = build_inputs(policy.processor, reqs, 112)
    with torch.inference_mode():
        lb = policy.model(**b).logits[:, -1]
        for i, r in enumerate(reqs):
            li = policy.model(**build_inputs(policy.processor, [r], 112)).logits[:, -1]
            assert torch.allclose(lb[i], li[0], atol=1e-4)


def test_sampling_returns_n_reproducible_completions(policy):
    engine = HFEngine(policy, image_size=112, batch_size=4)
    reqs = requests_112()[:2]
    s = SamplingConfig(max_new_tokens=8, temperature=1.0, n=3, seed=7)
    a = engine.generate(reqs, s)
    assert [len(c) for c in a] == [3, 3]
    assert engine.generate(reqs, s) == a
    assert len(set(a[0])) > 1  # temperature 1 on a random model: the draws differ


def test_build_vllm_requests_structure(policy):
    from PIL import Image

    reqs = requests_112()
    out = build_vllm_requests(policy.processor, reqs, 112)
    assert len(out) == 3
    for item, req in zip(out, reqs):
        assert set(item) == {"prompt", "multi_modal_data", "mm_processor_kwargs"}
        assert item["prompt"] == prompt_text(policy.processor, req)
        assert item["prompt"].count("<|image_pad|>") == len(req.frame_ids)  # vLLM expands each pad itself
        imgs = item["multi_modal_data"]["image"]
        assert len(imgs) == len(req.frame_ids) and all(
            isinstance(im, Image.Image) and im.size == (112, 112) for im in imgs
        )
        assert np.array_equal(np.asarray(imgs[0]), req.images[0])
        assert item["mm_processor_kwargs"] == {"min_pixels": 112 * 112, "max_pixels": 112 * 112}


def test_vllm_engine_without_vllm_is_a_clear_error(tiny_dir):
    try:
        import vllm  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="vLLM"):
            build_engine(PolicyConfig(str(tiny_dir), engine="vllm"), image_size=112)
    else:  # pragma: no cover - GPU nodes
        pytest.skip("vllm installed")


def test_missing_or_incomplete_model_folder(tmp_path, tiny_dir):
    with pytest.raises(FileNotFoundError, match="policy folder not found"):
        load_policy(tmp_path / "nope")
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match=r"missing model weights.*tokenizer.*image processor"):
        load_policy(tmp_path)
    with pytest.raises(ValueError, match="unknown engine 'tgi': choose hf or vllm"):
        build_engine(PolicyConfig(str(tiny_dir), engine="tgi"))


@pytest.mark.gpu
def test_vllm_engine_generates_on_gpu(tiny_dir):  # pragma: no cover - needs CUDA + vLLM
    pytest.importorskip("vllm")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA")
    from veason_r1.models.policy import VLLMEngine

    engine = VLLMEngine(
        tiny_dir,
        image_size=112,
        gpu_memory_utilization=0.3,
        max_model_len=4096,
        dtype="bfloat16",
        llm_kwargs={"enforce_eager": True},
    )
    reqs = requests_112()
    greedy = engine.generate(reqs, SamplingConfig(max_new_tokens=16, n=2))
    assert [len(c) for c in greedy] == [2, 2, 2] and all(c[0] == c[1] and c[0] for c in greedy)
    sampled = engine.generate(reqs, SamplingConfig(max_new_tokens=16, temperature=1.0, n=4, seed=3))
    assert [len(c) for c in sampled] == [4, 4, 4]


@pytest.mark.gpu
def test_hf_engine_on_cuda_bf16(tiny_dir):  # pragma: no cover - needs CUDA
    if not torch.cuda.is_available():
        pytest.skip("no CUDA")
    engine = build_engine(PolicyConfig(str(tiny_dir), device="cuda"), image_size=112)
    assert next(engine.policy.model.parameters()).dtype == torch.bfloat16
    out = engine.generate(requests_112(), SamplingConfig(max_new_tokens=16, temperature=1.0, n=2))
    assert [len(c) for c in out] == [2, 2, 2]


def test_generation_never_emits_vision_tokens(tmp_path):
    """A policy that would emit <|image_pad|> (its LM head biased to it) produces none: such a token in a
    response breaks re-encoding prompt + response for RL log-probs (image tokens != image features)."""
    import torch

    from veason_r1.models.policy import GenerationRequest, HFEngine, SamplingConfig, load_policy, vision_token_ids
    from veason_r1.models.tiny import make_tiny_qwen

    folder = make_tiny_qwen(tmp_path / "tiny", seed=0)
    policy = load_policy(folder, "cpu", dtype="float32")
    tok = policy.processor.tokenizer
    pad_id = tok.convert_tokens_to_ids("<|image_pad|>")
    assert pad_id in vision_token_ids(tok)
    with torch.no_grad():
        policy.model.lm_head.weight[pad_id] *= 0
        policy.model.lm_head.weight[pad_id] += 5.0 * policy.model.lm_head.weight.abs().max()
    frames = [np.zeros((112, 112, 3), np.uint8)] * 2
    engine = HFEngine(policy, image_size=112, batch_size=2)
    captured = {}
    orig = policy.model.generate

    def spy(**kw):
        out = orig(**kw)
        captured["ids"] = out[:, kw["input_ids"].shape[1]:]
        return out

    policy.model.generate = spy
    engine.generate([GenerationRequest("the red circle", [0, 1], frames)], SamplingConfig(max_new_tokens=6))
    assert captured["ids"].numel() > 0 and not (captured["ids"] == pad_id).any()
