"""verl 0.9.1 reward-loop manager that scores a step's rollouts together: `score_groups` once per flush.

Why: verl calls a `custom_reward_function` one sample at a time (`RewardLoopWorker.compute_score_batch` makes one
asyncio task per sample; the agent loop streams finished rollouts one by one), so the SAM2 consistency term of the
8 rollouts of a prompt, and of the step's 16 prompts, would be tracked one rollout at a time. This manager's
`run_single` only decodes the response and queues it; a debounced flush (`group_window_s` after the last arrival,
at most `max_wait_s` after the first) scores everything queued with one `compute_score_batch` call in a thread:
rollouts grouped by prompt (`uid`, else the ground truth), SAM2 tracking batched across all of them.

- `compute_rm_score` (colocated rewards) schedules a whole chunk's tasks in one event-loop turn, so each reward
  worker scores its chunk with one call: one call per step with `reward.num_workers: 1`.
- After each flush SAM2's CUDA cache is released and its peak reserved memory logged (`release_cuda_cache`).
- Streaming (the agent loop sends each finished rollout to a reward worker) batches whatever arrives within the
  window; scores do not depend on how samples are batched (same as per-sample `compute_score`).

Config (verl YAML; `veason-r1 rl --backend verl` writes this section from the GRPO config's `reward:`):
    reward:
      num_workers: 1
      reward_manager: {source: importlib, name: VeasonGroupRewardManager,
                       module: {path: pkg://veason_r1.reward.verl_manager}}
      custom_reward_function:
        path: /abs/checkout/grpo_reward/reward_score.py
        name: compute_score
        reward_kwargs: {variant: faithful, use_consistency: true, use_keyframe: true, image_size: 560,
                        propagator: {name: sam2_hiera_l, checkpoint: /abs/sam2_hiera_large.pt, device: cuda,
                                     offload: false},
                        max_sam2_load_failures: 3, group_window_s: 0.05, max_wait_s: 2.0}
The `reward_kwargs` are one `RewardConfig` (reward/config.py), the keyword options of `compute_score`; they are
checked by `reward_config` when the manager starts (a misspelt key, nested ones included, fails there rather than
mid-step), and the two timing knobs above are read from it.
"""

from __future__ import annotations

import asyncio
import logging
import time

from verl import DataProto
from verl.experimental.reward_loop.reward_manager.base import RewardManagerBase

from veason_r1.reward.config import FIELDS, reward_config
from veason_r1.reward.verl_hook import compute_score_batch, release_cuda_cache

logger = logging.getLogger(__name__)


class VeasonGroupRewardManager(RewardManagerBase):
    """Queues samples and scores them in batches with `compute_score_batch` (module docstring)."""

    def __init__(self, config, tokenizer, compute_score=None, reward_router_address=None, reward_model_tokenizer=None):
        super().__init__(config, tokenizer, compute_score)
        reward_cfg = config.reward.get("custom_reward_function", None) or {}
        # a misspelt key or a bad value fails here, when the worker starts, not mid-step
        self.reward = reward_config(**dict(reward_cfg.get("reward_kwargs", None) or {}))
        self.window_s = self.reward.group_window_s
        self.max_wait_s = self.reward.max_wait_s
        self.reward_kwargs = {name: getattr(self.reward, name) for name in FIELDS}  # compute_score_batch's options
        self._pending: list[tuple[dict, asyncio.Future]] = []
        self._first_arrival = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self.batch_sizes: list[int] = []  # samples per compute_score_batch call (tests, logging)
        self.peak_reserved_gib: list[float] = []  # SAM2's peak reserved CUDA memory per flush (GPU runs)

    async def run_single(self, data: DataProto) -> dict:
        item = data[-1:][0]  # multi-sequence outputs: the reward is computed on the last sequence (as naive)
        response_ids = item.batch["responses"]
        valid = int(item.batch["attention_mask"][-response_ids.shape[-1] :].sum())
        # decoded here, before the first await, so that every task of a batch is queued in the same loop turn
        text = self.tokenizer.decode(response_ids[:valid], skip_special_tokens=True)
        extra_info = item.non_tensor_batch.get("extra_info", None)
        sample = {
            "data_source": item.non_tensor_batch.get("data_source", None),
            "solution_str": text,
            "ground_truth": item.non_tensor_batch["reward_model"]["ground_truth"],
            "extra_info": dict(extra_info) if isinstance(extra_info, dict) else {},
            "uid": item.non_tensor_batch.get("uid", None),
        }
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        if not self._pending:
            self._first_arrival = loop.time()
        self._pending.append((sample, future))
        self._schedule(loop)
        result = await future
        return {"reward_score": result["score"], "reward_extra_info": result}

    def _schedule(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._timer is not None:
            self._timer.cancel()
        deadline = min(loop.time() + self.window_s, self._first_arrival + self.max_wait_s)
        self._timer = loop.call_at(deadline, lambda: loop.create_task(self._flush()))

    async def _flush(self) -> None:
        batch, self._pending, self._timer = self._pending, [], None
        if not batch:
            return
        samples = [s for s, _ in batch]
        self.batch_sizes.append(len(samples))
        start = time.perf_counter()

        def score() -> list[dict]:
            try:
                return compute_score_batch(
                    [s["data_source"] for s in samples], [s["solution_str"] for s in samples],
                    [s["ground_truth"] for s in samples], [s["extra_info"] for s in samples],
                    uids=[s["uid"] for s in samples], **self.reward_kwargs,
                )
            finally:  # SAM2's CUDA cache must not outlive the flush (the actor update and vLLM need the memory)
                peak = release_cuda_cache()
                if peak is not None:
                    self.peak_reserved_gib.append(peak)

        try:
            results = await asyncio.get_running_loop().run_in_executor(None, score)
        except Exception as e:  # noqa: BLE001 - a failing batch must not hang its samples
            for _, future in batch:
                if not future.done():
                    future.set_exception(e)
            return
        logger.info("scored %d samples in one batch in %.2fs", len(samples), time.perf_counter() - start)
        for (_, future), result in zip(batch, results):
            if not future.done():
                future.set_result(result)


__all__ = ["VeasonGroupRewardManager"]
