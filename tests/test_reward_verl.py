"""Our reward through verl 0.9.1's own reward loop (RewardLoopManager -> Ray RewardLoopWorker -> our
VeasonGroupRewardManager loaded by importlib as the GRPO YAMLs do -> compute_score_batch / score_groups) on CPU with
the tiny SAM2, the manager's batching in-process, and the per-process predictor / caches."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _sample(rng, k=4, size=64):
    masks = np.zeros((k, size, size), bool)
    masks[1:, 10:30, 20:40] = True
    frames = rng.integers(0, 255, (k, size, size, 3), dtype=np.uint8)
    boxes = {str(i): [[20.0, 10.0, 39.0, 29.0]] for i in range(k)}
    boxes["0"] = [[0.0, 0.0, 0.0, 0.0]]
    return [0, 2, 4, 6][:k], boxes, masks, frames


def _byte_tokenizer(path: Path):
    """A tiny byte-level BPE tokenizer saved as a HF tokenizer folder (decode is lossless)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<eos>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(["<think>a</think><answer>{\"keyframe_timestamp\": 2}</answer>"] * 10, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<eos>")
    fast.save_pretrained(str(path))
    return fast


def test_compute_score_and_ground_truth_roundtrip(tmp_path):
    from grpo_reward.reward_score import compute_score, make_ground_truth
    from veason_r1.reward.scoring import score_response
    from veason_r1.reward.verl_hook import get_propagator, parse_ground_truth

    rng = np.random.default_rng(0)
    fids, boxes, masks, frames = _sample(rng)
    np.save(tmp_path / "frames.npy", frames)
    gt = make_ground_truth(fids, boxes, masks, tmp_path / "frames.npy")
    sample = parse_ground_truth(json.dumps(gt))
    assert (sample.gt_masks == masks).all() and (sample.frames == frames).all() and sample.frame_ids == fids
    resp = '<think>t</think><answer>{"keyframe_timestamp": 2, "bbox_2d_list": [[20,10,39,29]]}</answer>'
    out = compute_score("revos", resp, json.dumps(gt), {})
    prop = get_propagator()
    assert get_propagator() is prop  # one predictor per process
    direct = score_response(resp, fids, boxes, masks, frames, prop.propagate)
    assert out["score"] == pytest.approx(direct["overall"]) and out["consistency"] == pytest.approx(direct["consistency"])
    assert out["format"] == 2.0 and out["keyframe"] == 1.0 and out["spatial"] == 1.0
    assert set(out) == {"score", "format", "keyframe", "spatial", "consistency", "overall"}
    # JPEG-embedded frames decode to the right shape; bad ground truth names the field
    emb = parse_ground_truth(make_ground_truth(fids, boxes, masks, frames))
    assert emb.frames.shape == frames.shape
    with pytest.raises(ValueError, match="gt_masks_rle"):
        parse_ground_truth({"frame_ids": fids, "gt_boxes": boxes})
    assert compute_score("revos", "garbage", json.dumps(gt), {})["score"] == 0.0


def _dataproto(tok, responses, gts, uids):
    import torch
    from tensordict import TensorDict
    from verl import DataProto

    prompt_ids = [tok.encode("q")] * len(responses)
    resp_ids = [tok.encode(r) for r in responses]
    width = max(map(len, resp_ids))
    responses_t = torch.full((len(responses), width), tok.pad_token_id, dtype=torch.long)
    attn_resp = torch.zeros_like(responses_t)
    for i, ids in enumerate(resp_ids):
        responses_t[i, : len(ids)] = torch.tensor(ids)
        attn_resp[i, : len(ids)] = 1
    prompts_t = torch.tensor(prompt_ids, dtype=torch.long)
    return DataProto(
        batch=TensorDict({"prompts": prompts_t, "responses": responses_t,
                          "attention_mask": torch.cat([torch.ones_like(prompts_t), attn_resp], 1)},
                         batch_size=len(responses)),
        non_tensor_batch={
            "data_source": np.array(["revos"] * len(responses), dtype=object),
            "reward_model": np.array([{"ground_truth": g} for g in gts], dtype=object),
            "extra_info": np.array([{} for _ in responses], dtype=object),
            "uid": np.array(uids, dtype=object),
        },
    )


RESPONSES = [
    '<think>t</think><answer>{"keyframe_timestamp": 2, "bbox_2d_list": [[20,10,39,29]]}</answer>',
    '<think>t</think><answer>{"keyframe_timestamp": 0, "bbox_2d_list": [[0,0,0,0]]}</answer>',
    "no tags at all",
    '<think>t</think><answer>{"keyframe_timestamp": "4", "bbox_2d_list": [[20,10,30,29], "x"]}</answer>',
    '<think>t</think><answer>{"keyframe_timestamp": 1, "bbox_2d_list": [[18,12,41,30]]}</answer>',
    '<think>t</think><answer>{"keyframe_timestamp": 2, "bbox_2d_list": [[20,10,39,29]]}</answer>',  # repeat
]


def _step(tmp_path, rng_seed=1, groups=2):
    """A GRPO step: `groups` prompts (own frames) x len(RESPONSES) rollouts, rollouts of a prompt contiguous."""
    from grpo_reward.reward_score import make_ground_truth

    rng = np.random.default_rng(rng_seed)
    gts, responses, uids = [], [], []
    for g in range(groups):
        fids, boxes, masks, frames = _sample(rng)
        np.save(tmp_path / f"frames{g}.npy", frames)
        gt = json.dumps(make_ground_truth(fids, boxes, masks, tmp_path / f"frames{g}.npy"))
        gts += [gt] * len(RESPONSES)
        responses += RESPONSES
        uids += [f"uid-{g}"] * len(RESPONSES)
    return responses, gts, uids


def _config(tmp_path, manager: dict, workers: int):
    from omegaconf import OmegaConf

    return OmegaConf.create({
        "actor_rollout_ref": {"model": {"path": str(tmp_path / "tok"), "tokenizer_path": None}},
        "reward": {
            "num_workers": workers,
            "reward_model": {"enable": False, "enable_resource_pool": False},
            "reward_manager": manager,
            "custom_reward_function": {"path": str(ROOT / "grpo_reward" / "reward_score.py"), "name": "compute_score",
                                       "reward_kwargs": {"sam2_model": "tiny", "sam2_device": "cpu",
                                                         "group_window_s": 0.05}},
            "sandbox_fusion": None,
        },
    })


GROUP_MANAGER = {"source": "importlib", "name": "VeasonGroupRewardManager",
                 "module": {"path": "pkg://veason_r1.reward.verl_manager", "name": None}}


def test_group_manager_batches_a_step_in_one_call(tmp_path):
    """In-process (no Ray): verl's worker-side loop (one asyncio task per sample) -> one compute_score_batch call
    for the whole step, scores equal to per-sample compute_score."""
    import asyncio

    from verl.trainer.ppo.reward import load_reward_manager

    from grpo_reward.reward_score import compute_score
    from veason_r1.reward import verl_hook

    tok = _byte_tokenizer(tmp_path / "tok")
    responses, gts, uids = _step(tmp_path)
    data = _dataproto(tok, responses, gts, uids)
    manager = load_reward_manager(_config(tmp_path, GROUP_MANAGER, 1), tok)
    calls = []
    original = verl_hook.score_groups

    def counting(groups, *a, **k):
        calls.append([len(r) for r, _ in groups])
        return original(groups, *a, **k)

    verl_hook.score_groups = counting
    try:
        async def step():  # as RewardLoopWorker.compute_score_batch
            return await asyncio.gather(*[manager.run_single(data[i : i + 1]) for i in range(len(data))])

        outputs = asyncio.run(step())
    finally:
        verl_hook.score_groups = original
    assert manager.batch_sizes == [len(responses)] and calls == [[len(RESPONSES)] * 2]  # one call, grouped by uid
    kwargs = {"sam2_model": "tiny", "sam2_device": "cpu"}
    for out, r, gt in zip(outputs, responses, gts):
        expected = compute_score("revos", r, gt, {}, **kwargs)
        assert out["reward_score"] == pytest.approx(expected["score"], abs=1e-6)
        assert out["reward_extra_info"] == pytest.approx(expected, abs=1e-6)
    assert outputs[0]["reward_extra_info"]["consistency"] > 0 and outputs[2]["reward_score"] == 0.0


def test_verl_reward_loop_with_ray_on_cpu(tmp_path):
    """verl's RewardLoopManager (driver) -> Ray RewardLoopWorker -> VeasonGroupRewardManager, as the GRPO YAMLs
    configure it; rewards equal per-sample compute_score (the naive manager's path)."""
    ray = pytest.importorskip("ray")
    from verl.experimental.reward_loop.reward_loop import RewardLoopManager

    from grpo_reward.reward_score import compute_score

    tok = _byte_tokenizer(tmp_path / "tok")
    responses, gts, uids = _step(tmp_path, rng_seed=2)
    data = _dataproto(tok, responses, gts, uids)
    ray.init(num_cpus=2, include_dashboard=False, ignore_reinit_error=True, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}})
    try:
        manager = RewardLoopManager(_config(tmp_path, GROUP_MANAGER, 1))
        out = manager.compute_rm_score(data)
    finally:
        ray.shutdown()
    expected = [compute_score("revos", r, gt, {}, sam2_model="tiny", sam2_device="cpu") for r, gt in zip(responses, gts)]
    scores = out.batch["rm_scores"].sum(dim=1).tolist()
    assert scores == pytest.approx([e["score"] for e in expected], abs=1e-5)
    assert list(out.non_tensor_batch["consistency"]) == pytest.approx([e["consistency"] for e in expected], abs=1e-5)
    assert scores[0] > 4.0 and expected[0]["consistency"] > 0 and scores[2] == 0.0
    assert out.meta_info["reward_extra_keys"] == ["score", "format", "keyframe", "spatial", "consistency", "overall"]
