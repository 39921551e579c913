"""Ports of verl 0.9.1 `core_algos` functions for machines where verl cannot be imported (see `algos`).
Each mirrors the verl function of the same name; tests compare them with verl on CPU."""

from __future__ import annotations

from collections import defaultdict
from types import SimpleNamespace

import torch


def _masked_sum(x, mask):
    return (x * mask).sum()


def _masked_mean(x, mask):
    return (x * mask).sum() / (mask.sum() + 1e-8)


def compute_grpo_outcome_advantage(token_level_rewards, response_mask, index, epsilon=1e-6,
                                   norm_adv_by_std_in_grpo=True, config=None):
    scores = token_level_rewards.sum(dim=-1)
    id2score, id2mean, id2std = defaultdict(list), {}, {}
    with torch.no_grad():
        for i in range(scores.shape[0]):
            id2score[index[i]].append(scores[i])
        for idx, vals in id2score.items():
            if len(vals) == 1:
                id2mean[idx], id2std[idx] = torch.tensor(0.0), torch.tensor(1.0)
            else:
                t = torch.stack(vals)
                id2mean[idx], id2std[idx] = torch.mean(t), torch.std(t)
        for i in range(scores.shape[0]):
            if norm_adv_by_std_in_grpo:
                scores[i] = (scores[i] - id2mean[index[i]]) / (id2std[index[i]] + epsilon)
            else:
                scores[i] = scores[i] - id2mean[index[i]]
        scores = scores.unsqueeze(-1) * response_mask
    return scores, scores


def agg_loss(loss_mat, loss_mask, loss_agg_mode, dp_size=1, batch_num_tokens=None, global_batch_size=None,
             loss_scale_factor=None):
    if loss_agg_mode == "token-mean":
        if batch_num_tokens is None:
            batch_num_tokens = loss_mask.sum()
        return _masked_sum(loss_mat, loss_mask) / batch_num_tokens * dp_size
    if loss_agg_mode == "seq-mean-token-mean":
        seq = torch.sum(loss_mask, dim=-1)
        seq_losses = torch.sum(loss_mat * loss_mask, dim=-1) / (seq + 1e-8)
        seq_mask = (seq > 0).float()
        if global_batch_size is None:
            global_batch_size = seq_mask.sum()
        return _masked_sum(seq_losses, seq_mask) / global_batch_size * dp_size
    raise ValueError(f"port supports token-mean and seq-mean-token-mean, not {loss_agg_mode}")


def kl_penalty(logprob, ref_logprob, kl_penalty):
    if kl_penalty in ("low_var_kl", "k3"):
        kl = torch.clamp(ref_logprob - logprob, min=-20, max=20)
        return torch.clamp((torch.exp(kl) - kl - 1).contiguous(), min=-10, max=10)
    if kl_penalty in ("kl", "k1"):
        return logprob - ref_logprob
    raise NotImplementedError(kl_penalty)


def entropy_from_logits(logits):
    pd = torch.nn.functional.softmax(logits, dim=-1)
    return torch.logsumexp(logits, dim=-1) - torch.sum(pd * logits, dim=-1)


def actor_config(**kw):
    cfg = SimpleNamespace(clip_ratio=0.2, clip_ratio_low=None, clip_ratio_high=None, clip_ratio_c=3.0,
                          global_batch_info={})
    for k, v in kw.items():
        setattr(cfg, k, v)
    return cfg


def policy_loss_vanilla(old_log_prob, log_prob, advantages, response_mask, loss_agg_mode="token-mean", config=None,
                        rollout_is_weights=None):
    low = config.clip_ratio_low if config.clip_ratio_low is not None else config.clip_ratio
    high = config.clip_ratio_high if config.clip_ratio_high is not None else config.clip_ratio
    c = getattr(config, "clip_ratio_c", 3.0)
    neg_kl = torch.clamp(log_prob - old_log_prob, min=-20.0, max=20.0)
    ratio = torch.exp(neg_kl)
    ppo_kl = _masked_mean(-neg_kl, response_mask)
    l1 = -advantages * ratio
    l2 = -advantages * torch.clamp(ratio, 1 - low, 1 + high)
    clip1 = torch.maximum(l1, l2)
    clipfrac = _masked_mean(torch.gt(l2, l1).float(), response_mask)
    l3 = -advantages * c
    clip2 = torch.min(l3, clip1)
    clipfrac_lower = _masked_mean(torch.gt(clip1, l3) * (advantages < 0).float(), response_mask)
    losses = torch.where(advantages < 0, clip2, clip1)
    if rollout_is_weights is not None:
        losses = losses * rollout_is_weights
    loss = agg_loss(losses, response_mask, loss_agg_mode, **config.global_batch_info)
    return loss, {"actor/pg_clipfrac": clipfrac.detach().item(), "actor/ppo_kl": ppo_kl.detach().item(),
                  "actor/pg_clipfrac_lower": clipfrac_lower.detach().item()}
