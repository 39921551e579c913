"""GRPO on one device (CPU or one GPU) with verl's own algorithms: `veason-r1 rl --backend local`.

One step, as verl's GRPO with `use_kl_loss` does it:
1. draw `train_batch_size` prompts (a fresh keyframe per access, docs/method.md §4);
2. sample `rollout.n` responses per prompt with Hugging Face `generate` (token ids kept, no re-tokenisation);
3. score each group with `score_groups` (format + keyframe + spatial + SAM2 consistency);
4. advantages with `core_algos.compute_grpo_outcome_advantage` ((R - mean) / (std + 1e-6), unbiased std, broadcast
   over response tokens);
5. old log-probs (current policy, no grad) and reference log-probs (frozen initial model, or the LoRA model with its
   adapter disabled);
6. per mini-batch: clipped policy loss (`compute_policy_loss_vanilla`), entropy bonus and `low_var_kl` KL loss
   (`kl_penalty`), all aggregated with `agg_loss` over the whole mini-batch exactly as verl's `ppo_loss`; AdamW
   step with gradient clipping.
Periodic greedy validation on a held-out subset keeps `best_checkpoint.json`; checkpoints resume bit-for-bit on CPU
(the data draw and the sampling seeds derive from (seed, step)). This is not the distributed engine: it has no vLLM,
no FSDP and no sequence packing; verl is (training_scripts/, docs/rl.md).

Speed on one GPU (none of it changes the maths):
- rollouts run on a transient bf16 copy of the fp32 master weights (`rollout_copy`, CUDA + bf16 only), as verl's
  vLLM rollout holds bf16 weights synced from the FSDP actor; old/ref log-probs and the update still use the fp32
  master model under autocast, so the PPO ratio is measured on the trained model;
- the vision tower's window attention runs as one batched SDPA call per chunk length instead of one call per
  window, and decoding attends to un-repeated grouped K/V (`veason_r1.models.fast_qwen`, exact rewrites);
- gradients are freed after each update so rollouts and log-probs do not carry a full fp32 gradient copy;
- `log_prob_micro_batch` lets the no-grad old/ref forwards use bigger micro-batches than the update;
- `phase_hook(phase, event, seconds)` reports each phase (and rollout chunk) as it starts and ends.
"""

from __future__ import annotations

import copy
import json
import random
import time
from collections.abc import Callable
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from veason_r1.models.fast_qwen import fast_vision_attention, patch_text_attention
from veason_r1.rl import checkpoint as ckpt
from veason_r1.rl.config import GRPOConfig, get_field, validation_enabled
from veason_r1.rl.data import RLPool, RLSample, RLSampleBuilder, training_pools


@dataclass
class Rollouts:
    """One step's sequences: prompt inputs per prompt, sampled response ids per sequence."""

    samples: list[RLSample]
    prompt_inputs: list[dict]  # per prompt: input_ids (1, P), attention_mask, pixel_values, image_grid_thw
    group: np.ndarray  # (B,) prompt index of each sequence
    responses: Any  # (B, R) long, padded with pad id after the stop token
    response_mask: Any  # (B, R) float, 1 up to and including the stop token
    texts: list[str]


def resolve_device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def _bf16_copy(model, dtype):
    """A frozen copy of `model` with its parameters in `dtype`, built without a transient fp32 copy. Buffers keep
    their dtype: the rotary `inv_freq` tables rounded to bf16 put every position of a long sequence at the wrong
    angle (the reference log-probs then drift from the policy's by up to ~5 nats at positions ~1,200 on the tiny
    model, against ~0.4 with fp32 tables; tests/test_rl_speed.py)."""
    import torch

    memo = {}
    for p in model.parameters():
        if id(p) not in memo:
            memo[id(p)] = torch.nn.Parameter(p.detach().to(dtype), requires_grad=False)
    clone = copy.deepcopy(model, memo)
    return clone.eval()


def reference_copy(model, dtype=None):
    """The frozen reference policy: a bf16/fp16 copy under autocast (parameters cast, buffers kept: `_bf16_copy`),
    else an fp32 deep copy."""
    if dtype is not None:
        return _bf16_copy(model, dtype)
    return copy.deepcopy(model).eval()


class LocalGRPOTrainer:
    """One-process GRPO. `fit()` runs to `total_steps`, resuming from the latest checkpoint when asked."""

    def __init__(self, cfg: GRPOConfig, propagator=None, policy=None, verbose: bool = True, *,
                 phase_hook: Callable[[str, str, float], None] | None = None):
        """`propagator`/`policy`: already loaded models to use instead of the config's (tests, the demo, benches);
        `phase_hook(phase, "start"|"end", seconds)` is called around every phase of a step. The speed knobs are
        config fields: `trainer.rollout_copy`, `trainer.vision_attention`,
        `rollout.log_prob_micro_batch_size_per_gpu`."""
        import torch

        unsupported = [(cfg.actor.lr_scheduler_type != "constant", "actor.lr_scheduler_type", "'constant'"),
                       (cfg.actor.lr_warmup_steps_ratio != 0, "actor.lr_warmup_steps_ratio", "0"),
                       (cfg.algorithm.use_kl_in_reward, "algorithm.use_kl_in_reward", "false")]
        for bad, key, supported in unsupported:
            if bad:
                raise ValueError(f"{key} = {get_field(cfg, key)!r}: the local trainer supports only {supported} "
                                 "(the verl back-end supports the rest)")
        self.cfg = cfg
        self.phase_hook = phase_hook
        self.log_prob_micro_batch = cfg.rollout.log_prob_micro_batch_size_per_gpu
        self.verbose = verbose
        self.device = resolve_device(cfg.trainer.device)
        self.out_dir = Path(cfg.trainer.default_local_dir)
        self.lora = cfg.model.lora_rank > 0
        torch.manual_seed(cfg.trainer.seed)

        from veason_r1.data.revos import ReVOSDataset
        from veason_r1.models.families import family as policy_family
        from veason_r1.models.policy import load_policy

        policy_family(cfg.data.family).check_image_size(cfg.data.image_size)
        if not cfg.data.train_root:
            from veason_r1.errors import BadInput

            raise BadInput("data.train_root", "is empty", hint="give a ReVOS-format root (--set data.train_root=DIR)")
        d = cfg.data
        train = ReVOSDataset(d.train_root, d.train_split, load_foreground=False)
        builder = RLSampleBuilder(train, d.num_frames, d.image_size, d.keyframe_top_k, family=d.family)
        val_ds = None
        if d.val_split is not None:
            val_ds = ReVOSDataset(d.val_root or d.train_root, d.val_split, load_foreground=False)
        self.pools = training_pools(train, d.train_pool, val_size=d.val_max_samples if validation_enabled(cfg) else 0,
                                    seed=d.seed, skip_no_target=d.skip_no_target, val_dataset=val_ds, builder=builder)
        self.train_pool = RLPool(builder, self.pools.train)
        self.val_pool = None
        if self.pools.val:
            vb = builder if val_ds is None else RLSampleBuilder(val_ds, d.num_frames, d.image_size, d.keyframe_top_k,
                                                                family=d.family)
            self.val_pool = RLPool(vb, self.pools.val)

        attn = "sdpa" if cfg.model.attn_implementation == "auto" else cfg.model.attn_implementation
        self.policy = policy or load_policy(cfg.model.path, self.device, dtype="float32", attn=attn)  # fp32 master
        self.model = self.policy.model
        self.processor = self.policy.processor
        self.tokenizer = self.processor.tokenizer
        self.autocast_dtype = None
        if self.device.startswith("cuda") and cfg.trainer.dtype in ("bfloat16", "float16"):
            self.autocast_dtype = getattr(torch, cfg.trainer.dtype)  # bf16 compute, fp32 master weights
        self.rollout_copy = bool(cfg.trainer.rollout_copy and self.autocast_dtype is not None and not self.lora)
        vision_attention = cfg.trainer.vision_attention
        self.vision_attention_patched = 0
        if vision_attention == "batched" or (vision_attention == "auto" and self.device.startswith("cuda")):
            self.vision_attention_patched = fast_vision_attention(self.model)
            patch_text_attention(self.model)  # rollouts: grouped decode attention (exact; training forwards untouched)
        self.ref_model = None
        if cfg.actor.use_kl_loss and not self.lora:
            self.ref_model = reference_copy(self.model, self.autocast_dtype)
            for p in self.ref_model.parameters():
                p.requires_grad_(False)
        if self.lora:
            self._wrap_lora()
        if cfg.actor.freeze_vision_tower:
            for name, p in self.model.named_parameters():
                if "visual" in name.split("."):
                    p.requires_grad_(False)
        if cfg.model.enable_gradient_checkpointing:
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            if hasattr(self.model, "enable_input_require_grads"):
                self.model.enable_input_require_grads()
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.trainable, lr=cfg.actor.lr, betas=tuple(cfg.actor.betas),
                                           weight_decay=cfg.actor.weight_decay)

        from veason_r1.rl.algos import actor_config

        self.verl_actor = actor_config(
            rollout_n=cfg.rollout.n, ppo_micro_batch_size_per_gpu=cfg.actor.ppo_micro_batch_size_per_gpu,
            ppo_mini_batch_size=cfg.actor.ppo_mini_batch_size, clip_ratio=cfg.actor.clip_ratio,
            clip_ratio_low=cfg.actor.clip_ratio, clip_ratio_high=cfg.actor.clip_ratio, clip_ratio_c=cfg.actor.clip_ratio_c,
            loss_agg_mode=cfg.actor.loss_agg_mode, entropy_coeff=cfg.actor.entropy_coeff,
            use_kl_loss=cfg.actor.use_kl_loss, kl_loss_coef=cfg.actor.kl_loss_coef, kl_loss_type=cfg.actor.kl_loss_type,
            ppo_epochs=cfg.actor.ppo_epochs,
        )
        self.reward_config = cfg.reward_config()  # image_size: data.image_size
        self.propagator = propagator
        if self.propagator is None and cfg.reward.use_consistency:
            self.propagator = cfg.reward.propagator.load(self.device)  # its own device, else the trainer's
        bs = cfg.data.train_batch_size
        self.steps_per_epoch = max(1, len(self.train_pool) // bs)
        self.total_steps = cfg.trainer.total_training_steps or self.steps_per_epoch * cfg.trainer.total_epochs
        self.step = 0
        self.best: dict[str, Any] = {"step": None, "score": None}
        self.loggers = []
        self.timings: dict[str, float] = {}

    # --------------------------------------------------------------------------------------------------- setup
    def _wrap_lora(self) -> None:
        from peft import LoraConfig, get_peft_model

        target = self.cfg.model.target_modules
        if target == "all-linear":  # language model projections (the vision tower stays as loaded)
            target = r".*model\.language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
        lcfg = LoraConfig(r=self.cfg.model.lora_rank, lora_alpha=self.cfg.model.lora_alpha, target_modules=target,
                          exclude_modules=self.cfg.model.exclude_modules, lora_dropout=0.0, bias="none")
        self.model = get_peft_model(self.model, lcfg)

    @contextmanager
    def _phase(self, name: str):
        """Calls `phase_hook(name, "start", 0)` then `(name, "end", seconds)`."""
        t0 = time.perf_counter()
        if self.phase_hook is not None:
            self.phase_hook(name, "start", 0.0)
        yield
        if self.phase_hook is not None:
            if self.device.startswith("cuda"):
                import torch

                torch.cuda.synchronize()
            self.phase_hook(name, "end", time.perf_counter() - t0)

    def _autocast(self):
        import torch

        if self.autocast_dtype is None:
            return nullcontext()
        return torch.autocast(device_type="cuda", dtype=self.autocast_dtype)

    # ---------------------------------------------------------------------------------------------------- data
    def step_indices(self, step: int) -> list[int]:
        """Prompt indices of step `step` (0-based): a seeded permutation per epoch, drop_last like verl."""
        bs = self.cfg.data.train_batch_size
        epoch, pos = divmod(step, self.steps_per_epoch)
        order = list(range(len(self.train_pool)))
        if self.cfg.data.shuffle:
            random.Random(f"{self.cfg.data.seed}:epoch{epoch}").shuffle(order)
        chunk = order[pos * bs:(pos + 1) * bs]
        while len(chunk) < bs:  # pools smaller than one batch (demo) repeat
            chunk += order[: bs - len(chunk)]
        return chunk

    def draw_step(self, step: int) -> list[RLSample]:
        return [self.train_pool.draw(i, seed=f"{self.cfg.data.seed}:step{step}") for i in self.step_indices(step)]

    # ------------------------------------------------------------------------------------------------- rollout
    def _prompt_inputs(self, sample: RLSample) -> dict:
        from veason_r1.models.policy import GenerationRequest, build_inputs

        req = GenerationRequest(sample.expression, sample.frame_ids, list(sample.frames))
        batch = build_inputs(self.processor, [req], self.cfg.data.image_size)
        # mm_token_type_ids (which tokens are image slots, for M-RoPE): per the family row (families.py)
        keys = ("input_ids", "attention_mask", "pixel_values", "image_grid_thw")
        keys += ("mm_token_type_ids",) if self.policy.family.forward_token_types else ()
        return {k: batch[k] for k in keys}

    def _stop_ids(self) -> list[int]:
        from veason_r1.models.policy import _stop_ids

        return _stop_ids(self.tokenizer)

    def generate(self, samples: list[RLSample], n: int, temperature: float, top_p: float, seed: int,
                 max_new_tokens: int | None = None) -> Rollouts:
        """n sampled responses per prompt (greedy when temperature == 0), keeping the token ids."""
        import torch

        from veason_r1.models.policy import GenerationRequest, SamplingConfig, build_inputs, generate_kwargs

        max_new = max_new_tokens or self.cfg.data.max_response_length
        stop = self._stop_ids()
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else stop[-1]
        greedy = temperature == 0
        copies = 1 if greedy else n
        decode = generate_kwargs(self.tokenizer, SamplingConfig(max_new_tokens=max_new, temperature=temperature,
                                                                top_p=top_p, n=n))
        torch.manual_seed(seed)
        prompt_inputs = [self._prompt_inputs(s) for s in samples]
        rows: list[torch.Tensor] = []
        chunk = max(1, self.cfg.rollout.batch_size // max(1, copies))
        was_training = self.model.training
        self.model.eval()
        gen_model, ctx = self.model, self._autocast
        if self.rollout_copy:  # bf16 weights for decoding (what verl's vLLM rollout holds), freed afterwards
            gen_model, ctx = _bf16_copy(self.model, self.autocast_dtype), nullcontext
        n_chunks = (len(samples) + chunk - 1) // chunk
        for c, start in enumerate(range(0, len(samples), chunk)):
            part = samples[start:start + chunk]
            with self._phase(f"rollout_chunk_{c + 1}/{n_chunks}"):
                reqs = [GenerationRequest(s.expression, s.frame_ids, list(s.frames)) for s in part]
                batch = build_inputs(self.processor, reqs, self.cfg.data.image_size).to(self.device)
                if self.rollout_copy:
                    batch["pixel_values"] = batch["pixel_values"].to(self.autocast_dtype)
                plen = batch["input_ids"].shape[1]
                with torch.inference_mode(), ctx():
                    seqs = gen_model.generate(**batch, **decode)
                for r in seqs[:, plen:].cpu():
                    rows.append(r)
                if greedy and n > 1:
                    rows[-len(part):] = [r for r in rows[-len(part):] for _ in range(n)]
        if gen_model is not self.model:
            del gen_model
            if self.device.startswith("cuda"):
                torch.cuda.empty_cache()
        if was_training:
            self.model.train()
        width = max(1, max(len(r) for r in rows))
        responses = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.float32)
        stop_t = torch.tensor(stop)
        for i, r in enumerate(rows):
            hits = torch.nonzero(torch.isin(r, stop_t)).flatten()
            length = int(hits[0]) + 1 if len(hits) else len(r)
            responses[i, :length] = r[:length]
            mask[i, :length] = 1
        texts = self.tokenizer.batch_decode([r[: int(m.sum())] for r, m in zip(responses, mask)],
                                            skip_special_tokens=True)
        group = np.repeat(np.arange(len(samples)), n)
        return Rollouts(samples, prompt_inputs, group, responses, mask, texts)

    # ------------------------------------------------------------------------------------------------- scoring
    def score(self, ro: Rollouts) -> list[dict]:
        from veason_r1.reward import score_groups

        n = len(ro.texts) // len(ro.samples)
        groups = [(ro.texts[g * n:(g + 1) * n], s.reward_sample()) for g, s in enumerate(ro.samples)]
        results = score_groups(groups, self.propagator, self.reward_config)
        return [r for group in results for r in group]

    def advantages(self, ro: Rollouts, rewards: list[float]):
        """verl's GRPO outcome advantage: the scalar reward sits on the last response token."""
        import torch

        from veason_r1.rl.algos import compute_grpo_outcome_advantage

        token_rewards = torch.zeros_like(ro.response_mask)
        last = (ro.response_mask.sum(-1).long() - 1).clamp(min=0)
        token_rewards[torch.arange(len(rewards)), last] = torch.tensor(rewards, dtype=torch.float32)
        adv, _ = compute_grpo_outcome_advantage(
            token_level_rewards=token_rewards, response_mask=ro.response_mask, index=ro.group,
            epsilon=self.cfg.algorithm.epsilon, norm_adv_by_std_in_grpo=self.cfg.algorithm.norm_adv_by_std_in_grpo,
        )
        return adv

    # ------------------------------------------------------------------------------------------------- forward
    def _micro_batch(self, ro: Rollouts, idx: list[int]) -> dict:
        """Left-padded prompt + response inputs for sequences `idx` (their prompts' images concatenated)."""
        import torch

        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        prompts = [ro.prompt_inputs[int(ro.group[i])] for i in idx]
        plen = max(p["input_ids"].shape[1] for p in prompts)
        ids, att, types = [], [], []
        for i, p in zip(idx, prompts):
            pid, pm = p["input_ids"][0], p["attention_mask"][0]
            lpad = plen - len(pid)
            ids.append(torch.cat([torch.full((lpad,), pad, dtype=torch.long), pid, ro.responses[i]]))
            att.append(torch.cat([torch.zeros(lpad, dtype=pm.dtype), pm, ro.response_mask[i].to(pm.dtype)]))
            if "mm_token_type_ids" in p:  # the response and the padding are text (type 0)
                pt = p["mm_token_type_ids"][0]
                types.append(torch.cat([torch.zeros(lpad, dtype=pt.dtype), pt,
                                        torch.zeros(len(ro.responses[i]), dtype=pt.dtype)]))
        batch = {
            "input_ids": torch.stack(ids).to(self.device),
            "attention_mask": torch.stack(att).to(self.device),
            "pixel_values": torch.cat([p["pixel_values"] for p in prompts]).to(self.device),
            "image_grid_thw": torch.cat([p["image_grid_thw"] for p in prompts]).to(self.device),
        }
        if types:
            batch["mm_token_type_ids"] = torch.stack(types).to(self.device)
        return batch

    def _forward(self, model, batch: dict, response_len: int, with_entropy: bool, autocast: bool = True):
        """Per-token log-probs (and entropy) of the response positions, in fp32 (`autocast` False: the whole forward
        in fp32, the retry path of `update`). The logits are divided by the rollout temperature first, as verl's
        actor does: the policy being optimised is the one the rollouts were sampled from."""
        import torch

        from veason_r1.rl.algos import entropy_from_logits

        with self._autocast() if autocast else nullcontext():
            out = model(**batch, logits_to_keep=response_len + 1, use_cache=False)
        logits = out.logits[:, :-1, :].float()
        temperature = self.cfg.rollout.temperature
        if temperature not in (0, 1):  # 0: greedy rollouts (no sampling policy); 1: nothing to scale
            logits = logits / temperature
        labels = batch["input_ids"][:, -response_len:]
        logp = torch.log_softmax(logits, dim=-1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
        ent = entropy_from_logits(logits) if with_entropy else None
        return logp, ent

    def log_probs(self, model, ro: Rollouts, adapter_off: bool = False):
        import torch

        R = ro.responses.shape[1]
        out = []
        mb = self.log_prob_micro_batch or self.cfg.actor.ppo_micro_batch_size_per_gpu
        ctx = model.disable_adapter() if adapter_off else nullcontext()
        with torch.no_grad(), ctx:
            for s in range(0, len(ro.texts), mb):
                idx = list(range(s, min(s + mb, len(ro.texts))))
                logp, _ = self._forward(model, self._micro_batch(ro, idx), R, with_entropy=False)
                out.append(logp.cpu())
        return torch.cat(out)

    # ---------------------------------------------------------------------------------------------------- step
    def _accumulate(self, ro: Rollouts, mini_idx: list[int], adv, old_logp, ref_logp, autocast: bool) -> dict:
        """Forward/backward of one mini-batch, micro-batch by micro-batch (gradients accumulate); its metrics."""
        from veason_r1.rl.algos import agg_loss, kl_penalty, policy_loss_vanilla

        cfg = self.cfg
        R = ro.responses.shape[1]
        info = self.verl_actor.global_batch_info
        info.update(dp_size=1, batch_num_tokens=int(ro.response_mask[mini_idx].sum().item()),
                    global_batch_size=len(mini_idx), loss_scale_factor=None)
        sums: dict[str, float] = {}
        micro = cfg.actor.ppo_micro_batch_size_per_gpu
        for s in range(0, len(mini_idx), micro):
            idx = mini_idx[s:s + micro]
            batch = self._micro_batch(ro, idx)
            logp, ent = self._forward(self.model, batch, R, with_entropy=cfg.actor.entropy_coeff != 0,
                                      autocast=autocast)
            mask = ro.response_mask[idx].to(self.device)
            pg_loss, pg_metrics = policy_loss_vanilla(
                old_log_prob=old_logp[idx].to(self.device), log_prob=logp, advantages=adv[idx].to(self.device),
                response_mask=mask.bool(), loss_agg_mode=cfg.actor.loss_agg_mode, config=self.verl_actor,
            )
            loss = pg_loss
            metrics = {"actor/pg_loss": pg_loss.item(), **pg_metrics}
            if ent is not None:
                ent_loss = agg_loss(loss_mat=ent, loss_mask=mask, loss_agg_mode=cfg.actor.loss_agg_mode, **info)
                loss = loss - cfg.actor.entropy_coeff * ent_loss
                metrics["actor/entropy_loss"] = ent_loss.item()
            if cfg.actor.use_kl_loss:
                kld = kl_penalty(logprob=logp, ref_logprob=ref_logp[idx].to(self.device),
                                 kl_penalty=cfg.actor.kl_loss_type)
                kl_loss = agg_loss(loss_mat=kld, loss_mask=mask, loss_agg_mode=cfg.actor.loss_agg_mode, **info)
                loss = loss + cfg.actor.kl_loss_coef * kl_loss
                metrics["actor/kl_loss"] = kl_loss.item()
            loss.backward()
            metrics["actor/loss"] = loss.item()
            for k, v in metrics.items():  # token-mean parts already carry their share of the mini-batch
                share = 1.0 if k in ("actor/pg_loss", "actor/entropy_loss", "actor/kl_loss", "actor/loss") \
                    else len(idx) / len(mini_idx)
                sums[k] = sums.get(k, 0.0) + float(v) * share
        return sums

    def _nonfinite_grads(self) -> list[str]:
        return [n for n, p in self.model.named_parameters()
                if p.grad is not None and not bool(p.grad.isfinite().all())]

    def update(self, ro: Rollouts, adv, old_logp, ref_logp) -> dict[str, float]:
        """verl's actor update: ppo_epochs x mini-batches x micro-batches, loss aggregated over the mini-batch.

        A non-finite gradient norm under bf16/fp16 autocast is not skipped at once: the mini-batch is run again with
        the whole forward in fp32 (`actor/fp32_retries`, and the parameters whose gradients were non-finite are
        named on the console). Only a mini-batch whose fp32 gradients are non-finite too skips its optimizer step,
        as verl's actor does (`actor/skipped_steps`)."""
        import torch
        from tqdm import tqdm

        cfg = self.cfg
        mini = cfg.actor.ppo_mini_batch_size * cfg.rollout.n
        self.model.train()
        sums: dict[str, float] = {}
        count = skipped = retries = 0
        B = len(ro.texts)
        for _ in range(cfg.actor.ppo_epochs):
            for m0 in range(0, B, mini):
                mini_idx = list(range(m0, min(m0 + mini, B)))
                self.optimizer.zero_grad(set_to_none=True)
                part = self._accumulate(ro, mini_idx, adv, old_logp, ref_logp, autocast=True)
                grad_norm = torch.nn.utils.clip_grad_norm_(self.trainable, cfg.actor.grad_clip)
                if not torch.isfinite(grad_norm) and self.autocast_dtype is not None:
                    bad = self._nonfinite_grads()
                    tqdm.write(f"step {self.step}: non-finite gradient norm {float(grad_norm)} under "
                               f"{self.cfg.trainer.dtype} autocast ({len(bad)} tensors, e.g. {bad[:3]}); "
                               "retrying the mini-batch in fp32")
                    retries += 1
                    self.optimizer.zero_grad(set_to_none=True)
                    part = self._accumulate(ro, mini_idx, adv, old_logp, ref_logp, autocast=False)
                    grad_norm = torch.nn.utils.clip_grad_norm_(self.trainable, cfg.actor.grad_clip)
                for k, v in part.items():
                    sums[k] = sums.get(k, 0.0) + v
                count += 1
                if not torch.isfinite(grad_norm):  # as verl's actor: skip this optimizer step, keep training
                    skipped += 1
                    bad = self._nonfinite_grads()
                    tqdm.write(f"step {self.step}: non-finite gradient norm {float(grad_norm)} ({len(bad)} tensors, "
                               f"e.g. {bad[:3]}); optimizer step skipped")
                    continue
                self.optimizer.step()
                sums["actor/grad_norm"] = sums.get("actor/grad_norm", 0.0) + float(grad_norm)
        self.optimizer.zero_grad(set_to_none=True)  # no fp32 gradient copy held through the next rollout
        out = {k: v / count for k, v in sums.items()}
        if "actor/grad_norm" in out:  # mean over the optimizer steps actually taken
            out["actor/grad_norm"] = sums["actor/grad_norm"] / (count - skipped)
        out["actor/skipped_steps"] = float(skipped)
        out["actor/fp32_retries"] = float(retries)
        return out

    def train_step(self) -> dict[str, float]:
        """One GRPO step (rollout, reward, advantage, old/ref log-probs, update); returns its metrics."""
        import torch

        cfg = self.cfg
        t = {}
        t0 = time.perf_counter()
        with self._phase("data"):
            samples = self.draw_step(self.step)
        t["timing/data"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        with self._phase("rollout"):
            ro = self.generate(samples, cfg.rollout.n, cfg.rollout.temperature, cfg.rollout.top_p,
                               seed=cfg.trainer.seed * 100003 + self.step)
        t["timing/rollout"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        with self._phase("reward"):
            results = self.score(ro)
            rewards = [float(r["overall"]) for r in results]
        t["timing/reward"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        adv = self.advantages(ro, rewards)
        with self._phase("old_log_prob"):
            old_logp = self.log_probs(self.model, ro)
        with self._phase("ref_log_prob"):
            if cfg.actor.use_kl_loss:
                ref_logp = (self.log_probs(self.model, ro, adapter_off=True) if self.lora
                            else self.log_probs(self.ref_model, ro))
            else:
                ref_logp = None
        t["timing/old_ref_log_prob"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        with self._phase("update"):
            metrics = self.update(ro, adv, old_logp, ref_logp)
        t["timing/update"] = time.perf_counter() - t0
        metrics.update(t)
        metrics["reward/overall"] = float(np.mean(rewards))
        for term in ("format", "keyframe", "spatial", "consistency"):
            metrics[f"reward/{term}"] = float(np.mean([r[term] for r in results]))
        metrics["reward/failures"] = float(sum(1 for r in results if r.get("failure")))
        metrics["response_length/mean"] = float(ro.response_mask.sum(-1).mean())
        metrics["advantage/abs_mean"] = float((adv.abs().sum() / ro.response_mask.sum().clamp(min=1)).item())
        if torch.cuda.is_available() and self.device.startswith("cuda"):
            metrics["memory/peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
        self.last_rollouts = ro
        return metrics

    # ---------------------------------------------------------------------------------------------- validation
    def validate(self) -> dict[str, float]:
        """Greedy responses on the held-out subset (fixed draws), mean reward and terms."""
        if self.val_pool is None:
            return {}
        samples = [self.val_pool.draw(i, seed="val") for i in range(len(self.val_pool))]
        ro = self.generate(samples, self.cfg.rollout.val_n, self.cfg.rollout.val_temperature, self.cfg.rollout.top_p,
                           seed=self.cfg.trainer.seed)
        results = self.score(ro)
        out = {"val/reward": float(np.mean([r["overall"] for r in results]))}
        for term in ("format", "keyframe", "spatial", "consistency"):
            out[f"val/{term}"] = float(np.mean([r[term] for r in results]))
        return out

    # -------------------------------------------------------------------------------------------- checkpoints
    def save_checkpoint(self) -> Path:
        state = {"step": self.step, "best": self.best, "config": self.cfg.to_dict(),
                 "total_steps": self.total_steps}
        path = ckpt.save(self.out_dir, self.step, self.model, self.processor if not self.lora else None,
                         self.optimizer, state)
        protect = {self.step} | ({self.best["step"]} if self.best["step"] is not None else set())
        ckpt.prune(self.out_dir, self.cfg.trainer.max_ckpt_to_keep, protect)
        return path

    def load_checkpoint(self, step: int) -> None:
        import torch

        folder = ckpt.step_dir(self.out_dir, step)
        ckpt.load_model_weights(self.model, folder / "model", self.lora)
        self.optimizer.load_state_dict(torch.load(folder / "optimizer.pt", map_location=self.device))
        state = json.loads((folder / "trainer_state.json").read_text())
        self.step = int(state["step"])
        self.best = state.get("best", self.best)

    def maybe_resume(self) -> int | None:
        """Load the latest checkpoint (resume_mode auto) and cut the logs back to it: the steps after it are
        trained again, and must not appear twice in metrics.jsonl / tensorboard."""
        step = None if self.cfg.trainer.resume_mode == "disable" else ckpt.latest_step(self.out_dir)
        if step is not None:
            self.load_checkpoint(step)
            self._log_console(f"resumed from {ckpt.step_dir(self.out_dir, step)} (step {step})")
        dropped = ckpt.truncate_log(self.out_dir / "metrics.jsonl", step or 0)
        if dropped:
            self._log_console(f"metrics.jsonl: dropped {dropped} entries after step {step or 0} (re-trained now)")
        return step

    def _track_best(self, val: dict[str, float]) -> bool:
        score = val.get("val/reward")
        if score is None or (self.best["score"] is not None and score <= self.best["score"]):
            return False
        self.best = {"step": self.step, "score": score}
        if not (ckpt.step_dir(self.out_dir, self.step) / "trainer_state.json").is_file():
            self.save_checkpoint()
        from veason_r1.io_utils import atomic_write_json

        atomic_write_json(self.out_dir / ckpt.BEST, {**self.best, "checkpoint_dir":
                          str(ckpt.step_dir(self.out_dir, self.step))}, indent=2)
        return True

    # ------------------------------------------------------------------------------------------------ logging
    def _open_loggers(self) -> None:
        names = self.cfg.trainer.logger
        names = [names] if isinstance(names, str) else list(names)
        unknown = set(names) - {"console", "tensorboard", "wandb"}
        if unknown:
            raise ValueError(f"trainer.logger: unknown {sorted(unknown)} (console, tensorboard, wandb)")
        if "tensorboard" in names:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step: events after the resume point (written by the interrupted run) are discarded
            self.loggers.append(("tensorboard", SummaryWriter(str(self.out_dir / "tensorboard"),
                                                              purge_step=self.step + 1 if self.step else None)))
        if "wandb" in names:
            import os

            import wandb

            os.environ.setdefault("WANDB_MODE", "offline")
            run = wandb.init(project=self.cfg.trainer.project_name, name=self.cfg.trainer.experiment_name,
                             dir=str(self.out_dir), config=self.cfg.to_dict(), mode=os.environ["WANDB_MODE"])
            self.loggers.append(("wandb", run))

    def _log(self, metrics: dict[str, float], step: int) -> None:
        from veason_r1.io_utils import append_jsonl

        append_jsonl(self.out_dir / "metrics.jsonl", {"step": step, **metrics})
        for kind, logger in self.loggers:
            if kind == "tensorboard":
                for k, v in metrics.items():
                    logger.add_scalar(k, v, step)
                logger.flush()
            else:
                logger.log(metrics, step=step)

    def _log_console(self, text: str) -> None:
        if self.verbose and "console" in self.cfg.trainer.logger:
            from tqdm import tqdm

            tqdm.write(text)

    def _close_loggers(self) -> None:
        for kind, logger in self.loggers:
            if kind == "tensorboard":
                logger.close()
            else:
                logger.finish()
        self.loggers = []

    # ---------------------------------------------------------------------------------------------------- fit
    def fit(self, max_steps: int | None = None) -> dict[str, Any]:
        """Train until `total_steps` (or `max_steps` more steps); returns the last metrics and the best step."""
        from tqdm import tqdm

        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.maybe_resume()
        self._open_loggers()
        cfg = self.cfg.trainer
        end = self.total_steps if max_steps is None else min(self.total_steps, self.step + max_steps)
        last: dict[str, float] = {}
        try:
            if cfg.val_before_train and self.step == 0 and self.val_pool is not None:
                val = self.validate()
                self._track_best(val)
                self._log(val, 0)
            bar = tqdm(total=end, initial=self.step, desc="grpo", disable=not self.verbose, dynamic_ncols=True)
            while self.step < end:
                metrics = self.train_step()
                self.step += 1
                last_step = self.step >= self.total_steps
                if cfg.save_freq > 0 and (self.step % cfg.save_freq == 0 or last_step):
                    self.save_checkpoint()
                if self.val_pool is not None and cfg.test_freq > 0 and (self.step % cfg.test_freq == 0 or last_step):
                    val = self.validate()
                    metrics.update(val)
                    metrics["val/is_best"] = float(self._track_best(val))
                if self.step == end and not (ckpt.step_dir(self.out_dir, self.step) / "trainer_state.json").is_file():
                    self.save_checkpoint()  # stopping early (max_steps) keeps a resume point
                self._log(metrics, self.step)
                bar.update(1)
                bar.set_postfix(reward=f"{metrics['reward/overall']:.3f}", loss=f"{metrics['actor/loss']:.4f}")
                last = metrics
            bar.close()
        finally:
            self._close_loggers()
        return {"step": self.step, "total_steps": self.total_steps, "last": last, "best": self.best}
