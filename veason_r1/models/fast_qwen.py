"""Two exact fast paths for transformers' Qwen2.5-VL on the sdpa backend (no flash-attn needed).

1. Vision attention without the per-window Python loop. Without flash-attn, `Qwen2_5_VLVisionAttention` splits the
   packed patch sequence at `cu_seqlens` and calls attention once per chunk: per 560x560 frame that is 25 windows of
   8x8 patches in the 28 window-attention blocks, so a batch of 16 prompts x 8 frames launches ~90,000 tiny
   attention calls per forward. All chunks of one length are one batched call instead: the same arithmetic per
   (chunk, head), one launch (H100, batch 16: vision tower 5.1 s -> 1.9 s, bit-identical features).
2. Grouped-query decode attention without `repeat_kv`. With a padding mask (any batch of prompts of different
   lengths) transformers' sdpa path copies K and V from 2 to 16 heads (Qwen2.5-VL-3B) in every layer at every
   decode step: at batch 16 and 3.4k tokens that is ~0.5 GB written per layer per step, most of the GPU time of a
   decode step. For one query token the 8 query heads that share a KV head can instead be laid out as 8 query rows
   of that head: one attention call on the un-repeated K/V, same result. Prefill (more than one query token) keeps
   the stock path. Decode attention also avoids the cuDNN backend, whose per-shape plan building is paid again at
   every step (the key length grows by one each step).

`apply_fast_paths(model)` patches a loaded model (instances and its text config only; nothing global changes for
other models). Both are exact rewrites; the tests compare them with the stock path.
"""

from __future__ import annotations

import contextlib
import sys

GROUPED_DECODE_SDPA = "veason_grouped_decode_sdpa"  # attention implementation name registered with transformers


# ----------------------------------------------------------------------------------------------------------------
# Batched vision window attention


def _grouped_vision_attention(self, hidden_states, cu_seqlens, rotary_pos_emb=None, position_embeddings=None,
                              **kwargs):
    """Qwen2.5-VL vision attention with chunks of equal length batched into one SDPA call (same values as the
    per-chunk loop transformers runs when flash-attention is not installed)."""
    import torch
    import torch.nn.functional as F

    modeling = sys.modules[type(self).__module__]
    seq = hidden_states.shape[0]
    q, k, v = self.qkv(hidden_states).reshape(seq, 3, self.num_heads, -1).permute(1, 0, 2, 3).unbind(0)
    if position_embeddings is None:
        emb = torch.cat((rotary_pos_emb, rotary_pos_emb), dim=-1)
        position_embeddings = (emb.cos(), emb.sin())
    cos, sin = position_embeddings
    q, k = modeling.apply_rotary_pos_emb_vision(q, k, cos, sin)
    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).tolist()
    starts = cu_seqlens[:-1].tolist()
    by_length: dict[int, list[int]] = {}
    for st, ln in zip(starts, lengths):
        if ln > 0:
            by_length.setdefault(int(ln), []).append(int(st))
    dropout = 0.0 if not self.training else float(getattr(self, "attention_dropout", 0.0))
    outs, order = [], []
    for ln, sts in by_length.items():
        contiguous = sts == list(range(sts[0], sts[0] + ln * len(sts), ln))
        if contiguous:
            sl = slice(sts[0], sts[0] + ln * len(sts))
            qg, kg, vg = (t[sl].reshape(len(sts), ln, *t.shape[1:]) for t in (q, k, v))
            order.append(torch.arange(sts[0], sts[0] + ln * len(sts), device=q.device))
        else:
            idx = (torch.tensor(sts)[:, None] + torch.arange(ln)[None]).to(q.device)
            qg, kg, vg = (t[idx] for t in (q, k, v))
            order.append(idx.flatten())
        o = F.scaled_dot_product_attention(qg.transpose(1, 2), kg.transpose(1, 2), vg.transpose(1, 2),
                                           dropout_p=dropout, scale=self.scaling)
        outs.append(o.transpose(1, 2).reshape(-1, *q.shape[1:]))
    out = torch.cat(outs) if len(outs) > 1 else outs[0]
    pos = torch.cat(order) if len(order) > 1 else order[0]
    if not bool((pos == torch.arange(seq, device=pos.device)).all()):
        out = out[torch.argsort(pos)]
    return self.proj(out.reshape(seq, -1).contiguous())


def fast_vision_attention(model, check: bool = True) -> int:
    """Patch every Qwen2.5-VL vision attention module of `model` (instances only) with the batched version.

    Returns how many modules were patched: 0 when the model uses flash-attention (already varlen), when the
    modules do not look like transformers' `Qwen2_5_VLVisionAttention`, or when the self-check (the original
    forward vs the batched one on random chunks of unequal length) disagrees, so a transformers change can never
    silently change the model.
    """
    import types

    import torch

    mods = [m for m in model.modules() if type(m).__name__ == "Qwen2_5_VLVisionAttention"]
    if not mods or not all(hasattr(m, a) for m in mods for a in ("qkv", "proj", "num_heads", "scaling")):
        return 0
    impl = str(getattr(mods[0].config, "_attn_implementation", "") or "")
    if "flash" in impl or getattr(mods[0], "_veason_batched", False):
        return 0
    if check:
        m = mods[0]
        p = next(m.parameters())
        dim, heads = m.qkv.in_features, m.num_heads
        g = torch.Generator(device="cpu").manual_seed(0)
        lengths = [16, 16, 8, 16, 4]
        seq = sum(lengths)
        x = torch.randn(seq, dim, generator=g).to(p.device, p.dtype)
        ang = torch.randn(seq, dim // heads, generator=g).to(p.device)
        cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32, device=p.device)
        try:
            with torch.no_grad():
                ref = m.forward(x, cu, position_embeddings=(ang.cos(), ang.sin()))
                new = _grouped_vision_attention(m, x, cu, position_embeddings=(ang.cos(), ang.sin()))
        except Exception:  # noqa: BLE001 - an unknown signature: keep transformers' own code
            return 0
        tol = 1e-4 if p.dtype == torch.float32 else 3e-2
        if ref.shape != new.shape or not torch.allclose(ref.float(), new.float(), atol=tol, rtol=tol):
            return 0
    for m in mods:
        m.forward = types.MethodType(_grouped_vision_attention, m)
        m._veason_batched = True
    return len(mods)


def unpatch_vision_attention(model) -> int:
    """Undo `fast_vision_attention` (back to the class forward); returns how many modules were restored."""
    restored = 0
    for m in model.modules():
        if type(m).__name__ == "Qwen2_5_VLVisionAttention" and "forward" in vars(m):
            del m.forward
            m._veason_batched = False
            restored += 1
    return restored


# ----------------------------------------------------------------------------------------------------------------
# Grouped-query decode attention


def grouped_decode_sdpa(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None,
                        **kwargs):
    """transformers attention function: sdpa, but one decode token attends to un-repeated grouped K/V.

    query (B, H, 1, D), key/value (B, KVH, L, D), mask (B, 1, 1, L) or None; returns (B, 1, H, D) like the stock
    `sdpa_attention_forward`, which handles every other case (prefill, no grouping, dropout).
    """
    import torch

    batch, heads, q_len, dim = query.shape
    kv_heads = key.shape[1]
    if q_len != 1 or heads == kv_heads or heads % kv_heads or (dropout and module.training):
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    group = heads // kv_heads
    q = query.reshape(batch, kv_heads, group, dim)  # head h = kv head h // group (the repeat_kv layout)
    mask = attention_mask
    if mask is not None and mask.dim() == 4:
        mask = mask[:, :, -1:, :]  # (B, 1, 1, L): broadcast over the grouped query rows
    with _decode_backends(query.device):
        out = torch.nn.functional.scaled_dot_product_attention(q, key, value, attn_mask=mask, scale=scaling,
                                                               is_causal=False)
    return out.reshape(batch, heads, 1, dim).transpose(1, 2).contiguous(), None


def _decode_backends(device):
    """On CUDA, every SDPA backend but cuDNN. cuDNN attention builds an execution plan per input shape, and a decode
    step's key length is new at every step (and per batch, as prompt lengths vary): on an H100 that plan building
    made HF decoding of a 3B model at batch 16 cost ~105-138 ms per step instead of ~43 ms."""
    if device.type != "cuda":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])


def _register_grouped_decode() -> None:
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
    from transformers.modeling_utils import AttentionInterface

    AttentionInterface.register(GROUPED_DECODE_SDPA, grouped_decode_sdpa)
    AttentionMaskInterface.register(GROUPED_DECODE_SDPA, sdpa_mask)


def patch_text_attention(model) -> bool:
    """Switch the language model of a Qwen2.5-VL loaded with sdpa to the grouped decode attention.

    Returns False (nothing changed) when the text model does not use sdpa (eager, flash-attn: left as chosen).
    """
    text_config = getattr(model.config, "text_config", None)
    if text_config is None or text_config._attn_implementation != "sdpa":
        return False
    _register_grouped_decode()
    text_config._attn_implementation = GROUPED_DECODE_SDPA
    return True


def unpatch_text_attention(model) -> bool:
    text_config = getattr(model.config, "text_config", None)
    if text_config is None or text_config._attn_implementation != GROUPED_DECODE_SDPA:
        return False
    text_config._attn_implementation = "sdpa"
    return True


def apply_fast_paths(model) -> dict:
    """Both fast paths on a loaded Qwen2.5-VL; returns what was patched (for logs and result files)."""
    return {"vision_attention_modules": fast_vision_attention(model),
            "grouped_decode_attention": patch_text_attention(model)}


def remove_fast_paths(model) -> None:
    unpatch_vision_attention(model)
    unpatch_text_attention(model)
