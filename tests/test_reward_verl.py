"""Our reward through verl 0.9.1's own reward loop (RewardLoopManager -> Ray RewardLoopWorker -> our
VeasonGroupRewardManager loaded by importlib as the GRPO YAMLs do -> compute_score_batch / score_groups) on CPU with
the tiny SAM2, the manager's batching in-process, and the per-process predictor / caches."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from veason_r1.models.config import PropagatorConfig

ROOT = Path(__file__).resolve().parents[1]
TINY_CPU = PropagatorConfig("tiny", device="cpu")  # the random-weight SAM2, asked for by name (no checkpoint)


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
    out = compute_score("revos", resp, json.dumps(gt), {}, propagator=TINY_CPU)
    prop = get_propagator(TINY_CPU)
    assert get_propagator(PropagatorConfig("tiny", device="cpu")) is prop  # one predictor per process
    direct = score_response(resp, fids, boxes, masks, frames, prop.propagate)
    assert out["score"] == pytest.approx(direct["overall"]) and out["consistency"] == pytest.approx(direct["consistency"])
    assert out["format"] == 2.0 and out["keyframe"] == 1.0 and out["spatial"] == 1.0
    assert set(out) == {"score", "format", "keyframe", "spatial", "consistency", "overall", "sam2_ok"}
    # JPEG-embedded frames decode to the right shape; bad ground truth names the field
    emb = parse_ground_truth(make_ground_truth(fids, boxes, masks, frames))
    assert emb.frames.shape == frames.shape
    with pytest.raises(ValueError, match="gt_masks_rle"):
        parse_ground_truth({"frame_ids": fids, "gt_boxes": boxes})
    assert compute_score("revos", "garbage", json.dumps(gt), {}, propagator={"name": "tiny", "checkpoint": None}
                         )["score"] == 0.0


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
                                       "reward_kwargs": {"propagator": {"name": "tiny", "checkpoint": None,
                                                                        "device": "cpu"},
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
    kwargs = {"propagator": TINY_CPU}
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
    expected = [compute_score("revos", r, gt, {}, propagator=TINY_CPU) for r, gt in zip(responses, gts)]
    scores = out.batch["rm_scores"].sum(dim=1).tolist()
    assert scores == pytest.approx([e["score"] for e in expected], abs=1e-5)
    assert list(out.non_tensor_batch["consistency"]) == pytest.approx([e["consistency"] for e in expected], abs=1e-5)
    assert scores[0] > 4.0 and expected[0]["consistency"] > 0 and scores[2] == 0.0
    assert out.meta_info["reward_extra_keys"] == ["score", "format", "keyframe", "spatial", "consistency", "overall",
                                                  "sam2_ok"]
    assert list(out.non_tensor_batch["sam2_ok"]) == [1.0] * len(responses)  # reaches verl's step metrics


# ------------------------------------------------------------------------------------------ explicit options


def test_reward_kwargs_typos_raise_and_real_sam2_needs_a_checkpoint(tmp_path):
    from grpo_reward.reward_score import compute_score, make_ground_truth
    from veason_r1.reward.config import reward_config

    fids, boxes, masks, frames = _sample(np.random.default_rng(0))
    gt = json.dumps(make_ground_truth(fids, boxes, masks, frames))
    with pytest.raises(TypeError, match="sam2_checkpoint"):  # the old flat keys are gone, not silently ignored
        compute_score("revos", "x", gt, {}, sam2_checkpoint="/ckpt.pt")
    with pytest.raises(ValueError, match=r"unknown key 'reward_kwargs.use_consistancy' \(known in reward_kwargs: "
                                         r"group_window_s, image_size, .*use_consistency, use_keyframe, variant\)"):
        reward_config(propagator=TINY_CPU, use_consistancy=False)
    with pytest.raises(ValueError, match=r"unknown key 'reward_kwargs.propagator.chekpoint' \(known in "
                                         r"reward_kwargs.propagator: checkpoint, device, name, offload\)"):
        compute_score("revos", "x", gt, {}, propagator={"name": "tiny", "chekpoint": "/ckpt.pt"})
    with pytest.raises(ValueError, match="reward_kwargs.propagator.checkpoint: reward_kwargs.propagator.name="
                                         "'sam2_hiera_l' needs its checkpoint"):
        reward_config(propagator={"name": "sam2_hiera_l", "checkpoint": None})
    with pytest.raises(ValueError, match="reward_kwargs.propagator.name: the SAM2 consistency term needs a propagator"):
        reward_config(propagator={"name": None})
    with pytest.raises(ValueError, match="reward_kwargs.use_consistency: expected bool, got 'no'"):
        reward_config(propagator=TINY_CPU, use_consistency="no")
    with pytest.raises(ValueError, match="reward_kwargs.variant: expected one of 'faithful', 'strict', got 'lenient'"):
        compute_score("revos", "x", gt, {}, propagator=TINY_CPU, variant="lenient")
    with pytest.raises(ValueError, match="reward_kwargs.max_sam2_load_failures = 0: must be >= 1"):
        reward_config(propagator=TINY_CPU, max_sam2_load_failures=0)
    assert reward_config(use_consistency=False, propagator={"name": None}).propagator.name is None  # no SAM2 term
    # a partial propagator mapping overrides the default (the release's SAM2) key by key, as a YAML layer does
    assert reward_config(propagator={"checkpoint": "/c.pt"}).propagator == PropagatorConfig("sam2_hiera_l", "/c.pt")


def test_compute_score_options_are_the_reward_config_fields():
    """The explicit keyword parameters of compute_score / compute_score_batch are the RewardConfig fields, with
    the same defaults: the one option set cannot drift from the verl signatures."""
    import dataclasses
    import inspect

    from veason_r1.reward import RewardConfig
    from veason_r1.reward.verl_hook import compute_score, compute_score_batch

    defaults = RewardConfig()
    fields = [f.name for f in dataclasses.fields(RewardConfig)]
    verl_only = {"reward_router_address", "reward_model_tokenizer"}  # what verl's naive manager may pass
    for fn in (compute_score, compute_score_batch):
        options = {n: p for n, p in inspect.signature(fn).parameters.items() if p.kind is p.KEYWORD_ONLY}
        assert [n for n in options if n not in verl_only] == fields, fn.__name__
        assert all(options[n].default == getattr(defaults, n) for n in fields), fn.__name__


def test_reward_kwargs_from_omegaconf_reach_the_reward_config(tmp_path):
    """verl hands reward_kwargs over from OmegaConf: the nested `propagator` arrives as a DictConfig."""
    from omegaconf import OmegaConf

    from veason_r1.reward.config import reward_config

    kwargs = dict(OmegaConf.create({"variant": "strict", "image_size": 112,
                                    "propagator": {"name": "tiny", "checkpoint": None, "device": "cpu"}}))
    assert OmegaConf.is_config(kwargs["propagator"])
    cfg = reward_config(**kwargs)
    assert (cfg.variant, cfg.frame_side, cfg.propagator) == ("strict", 112, TINY_CPU)


def test_group_manager_refuses_a_misspelt_reward_kwarg_at_start(tmp_path):
    from verl.trainer.ppo.reward import load_reward_manager

    tok = _byte_tokenizer(tmp_path / "tok")
    cfg = _config(tmp_path, GROUP_MANAGER, 1)
    cfg.reward.custom_reward_function.reward_kwargs["max_wait"] = 1.0
    with pytest.raises(ValueError, match="unknown key 'reward_kwargs.max_wait'"):
        load_reward_manager(cfg, tok)
    cfg = _config(tmp_path, GROUP_MANAGER, 1)
    cfg.reward.custom_reward_function.reward_kwargs.propagator["devise"] = "cpu"  # a misspelt nested key
    with pytest.raises(ValueError, match=r"unknown key 'reward_kwargs.propagator.devise' \(known in "
                                         r"reward_kwargs.propagator: checkpoint, device, name, offload\)"):
        load_reward_manager(cfg, tok)
    cfg = _config(tmp_path, GROUP_MANAGER, 1)
    cfg.reward.custom_reward_function.reward_kwargs.update({"group_window_s": 0.3, "max_wait_s": 1.5})
    manager = load_reward_manager(cfg, tok)  # the window knobs are read from the one RewardConfig
    assert (manager.window_s, manager.max_wait_s) == (0.3, 1.5) and manager.reward.propagator == TINY_CPU


def test_sam2_without_checkpoint_warns_every_time(caplog):
    from veason_r1.models.sam2 import load_sam2

    with caplog.at_level("WARNING", logger="veason_r1.models.sam2"):
        load_sam2("tiny", device="cpu")
        load_sam2("tiny", device="cpu", seed=1)
    hits = [r for r in caplog.records if "WITHOUT A CHECKPOINT" in r.getMessage()]
    assert len(hits) == 2 and "random weights" in hits[0].getMessage()


# ----------------------------------------------------------------------------------- SAM2 failures (item 4)


def _batch(tmp_path, seed):
    responses, gts, uids = _step(tmp_path, rng_seed=seed)
    return ["revos"] * len(responses), responses, gts, [{} for _ in responses], uids


def test_sam2_load_failure_costs_only_the_consistency_term(tmp_path, monkeypatch, caplog):
    """A SAM2 that cannot load (missing file, CUDA error) scores the batch's other three terms as usual, logs the
    failure, and is tried again on the next batch."""
    from veason_r1.models import sam2 as sam2_module
    from veason_r1.reward import verl_hook

    sources, responses, gts, extras, uids = _batch(tmp_path, 3)
    without = verl_hook.compute_score_batch(sources, responses, gts, extras, uids=uids, use_consistency=False)
    real = sam2_module.load_sam2
    monkeypatch.setattr(sam2_module, "load_sam2", lambda *a, **k: (_ for _ in ()).throw(
        RuntimeError("CUDA error: out of memory")))
    kwargs = {"propagator": TINY_CPU}
    monkeypatch.setattr(verl_hook, "_PROPAGATORS", {})  # nothing loaded yet in this "process"
    with caplog.at_level("ERROR", logger="veason_r1.reward.verl_hook"):
        failed = verl_hook.compute_score_batch(sources, responses, gts, extras, uids=uids, **kwargs)
    assert any("failed to load" in r.getMessage() and "out of memory" in r.getMessage() for r in caplog.records)
    for a, b in zip(failed, without):
        assert {k: a[k] for k in ("format", "keyframe", "spatial")} == {k: b[k] for k in ("format", "keyframe", "spatial")}
        assert a["consistency"] == 0.0 and a["score"] == pytest.approx(b["score"])
    assert failed[0]["spatial"] == 1.0  # the batch is not zeroed: only the SAM2 term is lost
    one = verl_hook.compute_score(sources[0], responses[0], gts[0], {}, **kwargs)
    assert one["consistency"] == 0.0 and one["format"] == 2.0
    monkeypatch.setattr(sam2_module, "load_sam2", real)  # the next batch loads it (failures are not cached)
    recovered = verl_hook.compute_score_batch(sources, responses, gts, extras, uids=uids, **kwargs)
    assert recovered[0]["consistency"] > 0


def test_sam2_error_mid_run_costs_that_batch_only(tmp_path, caplog):
    from veason_r1.reward import verl_hook

    midrun = PropagatorConfig("tiny", device="cpu-midrun")
    key = ("tiny", None, "cpu-midrun", False)
    real = verl_hook.get_propagator(TINY_CPU)

    class Flaky:
        calls = 0

        def frame_ious_groups(self, jobs, gts):
            Flaky.calls += 1
            if Flaky.calls == 1:
                raise RuntimeError("CUDA error: an illegal memory access was encountered")
            return real.frame_ious_groups(jobs, gts)

    verl_hook._PROPAGATORS[key] = Flaky()
    try:
        sources, responses, gts, extras, uids = _batch(tmp_path, 4)
        kwargs = {"propagator": midrun}
        with caplog.at_level("WARNING", logger="veason_r1.reward.scoring"):
            first = verl_hook.compute_score_batch(sources, responses, gts, extras, uids=uids, **kwargs)
        second = verl_hook.compute_score_batch(sources, responses, gts, extras, uids=uids, **kwargs)
    finally:
        verl_hook._PROPAGATORS.pop(key, None)
    assert all(r["consistency"] == 0.0 for r in first) and first[0]["spatial"] == 1.0
    assert any("illegal memory access" in r.getMessage() for r in caplog.records)
    assert second[0]["consistency"] > 0 and second[0]["score"] > first[0]["score"]


def test_sam2_ok_metric_and_the_run_stops_after_n_failed_loads_in_a_row(tmp_path, monkeypatch, caplog):
    """Issue 23 item 4. Before: a SAM2 that never loads in the Ray reward worker zeroed every consistency term and
    only that term's mean said so. Now each rollout carries `sam2_ok` (verl averages it into the step metrics) and
    the `max_sam2_load_failures`-th failed load in a row raises, which fails the step (the run stops)."""
    import asyncio

    from verl.trainer.ppo.reward import load_reward_manager

    from veason_r1.models import sam2 as sam2_module
    from veason_r1.reward import verl_hook

    sources, responses, gts, extras, uids = _batch(tmp_path, 5)
    kwargs = {"propagator": PropagatorConfig("tiny", device="cpu-fails"), "max_sam2_load_failures": 2}
    healthy = verl_hook.compute_score_batch(sources, responses, gts, extras, uids=uids,
                                            **{**kwargs, "propagator": TINY_CPU})
    assert [r["sam2_ok"] for r in healthy] == [1.0] * len(responses)
    real = sam2_module.load_sam2
    monkeypatch.setattr(sam2_module, "load_sam2", lambda *a, **k: (_ for _ in ()).throw(
        FileNotFoundError("/ckpt/sam2_hiera_large.pt")))
    monkeypatch.setattr(verl_hook, "_PROPAGATORS", {})
    monkeypatch.setitem(verl_hook._LOAD_FAILURES, "in_a_row", 0)
    with caplog.at_level("ERROR", logger="veason_r1.reward.verl_hook"):
        first = verl_hook.compute_score_batch(sources, responses, gts, extras, uids=uids, **kwargs)
    assert any("1 in a row, limit 2" in r.getMessage() for r in caplog.records)
    scored = [r for r, h in zip(first, healthy) if h["consistency"] > 0]  # rollouts that reach SAM2
    assert scored and all(r["sam2_ok"] == 0.0 and r["consistency"] == 0.0 for r in scored)
    with pytest.raises(verl_hook.SAM2LoadError, match=r"failed to load 2 times in a row .*reward.max_sam2_load_failures"):
        verl_hook.compute_score_batch(sources, responses, gts, extras, uids=uids, **kwargs)

    # through verl's reward manager: the error reaches every sample of the flush (the step fails, not hangs)
    tok = _byte_tokenizer(tmp_path / "tok")
    cfg = _config(tmp_path, GROUP_MANAGER, 1)
    cfg.reward.custom_reward_function.reward_kwargs.update({"max_sam2_load_failures": 1})
    cfg.reward.custom_reward_function.reward_kwargs.propagator.device = "cpu-fails"
    manager = load_reward_manager(cfg, tok)
    data = _dataproto(tok, responses[:2], gts[:2], uids[:2])

    async def step():
        return await asyncio.gather(*[manager.run_single(data[i : i + 1]) for i in range(len(data))],
                                    return_exceptions=True)

    outs = asyncio.run(step())
    assert all(isinstance(o, verl_hook.SAM2LoadError) for o in outs)

    monkeypatch.setattr(sam2_module, "load_sam2", real)  # a load that succeeds resets the count
    verl_hook.compute_score_batch(sources, responses, gts, extras, uids=uids, **{**kwargs, "propagator": TINY_CPU})
    assert verl_hook._LOAD_FAILURES["in_a_row"] == 0
    with pytest.raises(ValueError, match="reward_kwargs.max_sam2_load_failures = 0: must be >= 1"):
        verl_hook.compute_score_batch(sources, responses, gts, extras, uids=uids, propagator=TINY_CPU,
                                      max_sam2_load_failures=0)


def test_grpo_config_carries_the_sam2_failure_limit(synth_root):
    from veason_r1.rl.config import load_config, verl_overrides

    cfg = load_config(None, ["reward.max_sam2_load_failures=5"])
    assert verl_overrides(cfg)["reward.custom_reward_function.reward_kwargs.max_sam2_load_failures"] == 5


def test_each_reward_flush_releases_the_cuda_cache(tmp_path, monkeypatch, caplog):
    """Issue 23 item 5: SAM2's CUDA cache (27.8 GiB for a 128-rollout batch) must not stay reserved on GPU 0 through
    the actor update and vLLM's wake-up. CPU: torch.cuda is faked to check the order (peak read, cache emptied,
    peak reset, logged) and that the manager calls it after every flush, failed ones included."""
    import asyncio

    import torch
    from verl.trainer.ppo.reward import load_reward_manager

    from veason_r1.reward import verl_hook, verl_manager

    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "max_memory_reserved", lambda *a: calls.append("peak") or 27.8 * 2**30)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: calls.append("empty"))
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda *a: calls.append("reset"))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda *a: 0.0)
    with caplog.at_level("INFO", logger="veason_r1.reward.verl_hook"):
        assert verl_hook.release_cuda_cache() == pytest.approx(27.8)
    assert calls == ["peak", "empty", "reset"]
    assert any("peak reserved CUDA memory 27.80 GiB" in r.getMessage() for r in caplog.records)
    monkeypatch.undo()

    flushes = []
    monkeypatch.setattr(verl_manager, "release_cuda_cache", lambda: flushes.append(1) or 1.5)
    tok = _byte_tokenizer(tmp_path / "tok")
    responses, gts, uids = _step(tmp_path, rng_seed=6, groups=1)
    data = _dataproto(tok, responses, gts, uids)
    manager = load_reward_manager(_config(tmp_path, GROUP_MANAGER, 1), tok)

    async def step():
        return await asyncio.gather(*[manager.run_single(data[i : i + 1]) for i in range(len(data))])

    asyncio.run(step())
    assert len(flushes) == len(manager.batch_sizes) == 1 and manager.peak_reserved_gib == [1.5]


@pytest.mark.gpu
def test_reward_flush_returns_sam2_cuda_memory(tmp_path):  # pragma: no cover - needs CUDA
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA")
    from veason_r1.reward import verl_hook

    sources, responses, gts, extras, uids = _batch(tmp_path, 7)
    verl_hook.compute_score_batch(sources, responses, gts, extras, uids=uids,
                                  propagator=PropagatorConfig("tiny", device="cuda"))
    before = torch.cuda.memory_reserved()
    peak = verl_hook.release_cuda_cache()
    assert peak is not None and peak * 2**30 >= before >= torch.cuda.memory_reserved()


# ------------------------------------------------------------------------ streaming through Ray (item 9)


def _agent_loop_sample(tok, response, gt, uid):
    """One finished rollout as verl's agent loop sends it to a reward worker (AgentLoopWorker._compute_score):
    prompt + response ids, an all-ones attention mask, the dataset row's non-tensor fields."""
    import torch
    from tensordict import TensorDict
    from verl import DataProto

    prompt = torch.tensor(tok.encode("q"), dtype=torch.long)
    resp = torch.tensor(tok.encode(response), dtype=torch.long)
    ids = torch.cat([prompt, resp])
    batch = TensorDict({"prompts": prompt[None], "responses": resp[None], "input_ids": ids[None],
                        "attention_mask": torch.ones_like(ids)[None]}, batch_size=1)
    fields = {"data_source": "revos", "reward_model": {"ground_truth": gt, "style": "rule"}, "extra_info": {},
              "uid": uid}
    return DataProto(batch=batch, non_tensor_batch={k: np.array([v], dtype=object) for k, v in fields.items()})


def test_streaming_reward_path_through_ray_with_the_generated_config(tmp_path, monkeypatch):
    """The real run's path: the agent loop sends one `compute_score` per finished rollout to a Ray reward worker,
    configured by the verl config `veason-r1 rl --backend verl` generates (importlib manager, absolute reward-file
    path). The workers start in another directory, as on an existing Ray cluster; every score equals the per-sample
    `compute_score`."""
    ray = pytest.importorskip("ray")
    from verl.experimental.reward_loop.reward_loop import RewardLoopManager

    from grpo_reward.reward_score import compute_score
    from veason_r1.rl.config import load_config
    from veason_r1.rl.verl_config import compose, verl_values, write_verl_yaml

    tok = _byte_tokenizer(tmp_path / "tok")
    cfg = load_config(None, [f"model.path={tmp_path / 'tok'}", "reward.propagator.name=tiny",
                             "reward.propagator.checkpoint=null", "reward.propagator.device=cpu",
                             "reward.group_window_s=0.2", "data.image_size=112"])
    values, _ = verl_values(cfg, train_file="unused.parquet", val_file=None, has_flash_attn=False,
                            pythonpath=str(ROOT))
    path = values["reward.custom_reward_function.path"]
    assert Path(path).is_absolute() and Path(path).is_file()
    write_verl_yaml(values, tmp_path / "verl_config.yaml", "test")
    tree = compose("verl_config", [], tmp_path)
    responses, gts, uids = _step(tmp_path, rng_seed=5)
    elsewhere = tmp_path / "cluster_start_dir"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # relative paths would now point nowhere
    ray.init(num_cpus=2, include_dashboard=False, ignore_reinit_error=True, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}})
    try:
        manager = RewardLoopManager(tree)
        worker = manager.reward_loop_worker_handles[0]
        refs = [worker.compute_score.remote(_agent_loop_sample(tok, r, gt, uid))
                for r, gt, uid in zip(responses, gts, uids)]
        outs = ray.get(refs)
    finally:
        ray.shutdown()
    expected = [compute_score("revos", r, gt, {}, propagator=TINY_CPU) for r, gt in zip(responses, gts)]
    assert [o["reward_score"] for o in outs] == pytest.approx([e["score"] for e in expected], abs=1e-5)
    assert [o["reward_extra_info"]["consistency"] for o in outs] == pytest.approx(
        [e["consistency"] for e in expected], abs=1e-5)
    assert outs[0]["reward_score"] > 4.0 and outs[2]["reward_score"] == 0.0


def test_no_keyframe_ablation_zeroes_only_the_keyframe_term(tmp_path):
    """`use_keyframe=False` (reward.use_keyframe in a GRPO config, reward_kwargs.use_keyframe for verl) scores the
    keyframe term 0 and leaves format, spatial and the overall sum of the others as they were."""
    from veason_r1.reward import verl_hook
    from veason_r1.rl.config import load_config, verl_overrides

    sources, responses, gts, extras, uids = _batch(tmp_path, 5)
    full = verl_hook.compute_score_batch(sources, responses, gts, extras, uids=uids, use_consistency=False)
    ablated = verl_hook.compute_score_batch(sources, responses, gts, extras, uids=uids, use_consistency=False,
                                            use_keyframe=False)
    assert any(r["keyframe"] > 0 for r in full)  # the batch has keyframe credit to lose
    for a, b in zip(ablated, full):
        assert a["keyframe"] == 0.0 and a["format"] == b["format"] and a["spatial"] == b["spatial"]
        assert a["score"] == pytest.approx(b["score"] - b["keyframe"])
    with pytest.raises(ValueError, match="reward_kwargs.use_keyframe: expected bool"):
        verl_hook.compute_score_batch(sources, responses, gts, extras, uids=uids, use_consistency=False,
                                      use_keyframe="no")
    cfg = load_config(None, ["reward.use_keyframe=false", "reward.use_consistency=false",
                             "reward.propagator.name=null"])
    kwargs = verl_overrides(cfg)
    assert any(k.endswith("reward_kwargs.use_keyframe") and v is False for k, v in kwargs.items())
