"""A training loss for the toy base policy's box coordinates that rewards being close, not only being exact.

Why: the toy tokenizer has one token per integer (0-999), so the plain next-token loss treats "31" and "32" as
unrelated classes. Measured on the shipped toy policy (bench/toy_policy_probe.py): the median of its distribution
over a coordinate tracks the truth (r = 0.70), but the distribution is broad and its argmax falls on "0" (the
absent-box token) for a quarter of the coordinates. With `sigma` > 0 each box coordinate's target is a Gaussian over
the integer tokens around the true value (sigma in pixels), so probability mass near the truth is credited and the
mode moves onto it; every other token keeps the one-hot target. `sigma` = 0 is exactly the model's own loss.
"""

from __future__ import annotations


def number_token_ids(tokenizer, max_value: int) -> list[int]:
    """Token id of each integer 0..max_value (each must be a single token, as in the toy tokenizer)."""
    ids = []
    for n in range(max_value + 1):
        tok = tokenizer(str(n), add_special_tokens=False)["input_ids"]
        if len(tok) != 1:
            raise ValueError(f"{n} is not a single token ({tok}): the soft coordinate loss needs integer tokens")
        ids.append(tok[0])
    return ids


def coordinate_mask(labels, number_ids, open_id: int):
    """(B, T) bool: the label positions holding a box coordinate, i.e. integer tokens after the first "[[" token
    of the row (the "2" of "bbox_2d_list" and the keyframe timestamp are not coordinates)."""
    import torch

    is_number = torch.isin(labels, torch.as_tensor(number_ids, device=labels.device))
    opened = torch.cumsum((labels == open_id).int(), dim=1) > 0
    return is_number & opened


def soft_coordinate_loss(logits, labels, number_ids, open_id: int, sigma: float):
    """Token-mean loss over the shifted labels (as Hugging Face's causal-LM loss): the usual negative log-likelihood,
    except at box coordinates, where the target is a Gaussian (std `sigma`) over the integer tokens."""
    import torch

    logits, labels = logits[:, :-1, :].float(), labels[:, 1:]
    valid = labels != -100
    logp = torch.log_softmax(logits, dim=-1)
    nll = -logp.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    if sigma > 0:
        ids = torch.as_tensor(number_ids, device=labels.device)
        coord = coordinate_mask(labels, ids, open_id) & valid
        if coord.any():
            value_of = torch.full((logits.shape[-1],), -1.0, device=labels.device)
            value_of[ids] = torch.arange(len(ids), dtype=torch.float32, device=labels.device)
            true = value_of[labels[coord]]  # (K,)
            grid = torch.arange(len(ids), dtype=torch.float32, device=labels.device)
            q = torch.softmax(-((grid[None, :] - true[:, None]) ** 2) / (2 * sigma**2), dim=-1)  # (K, V)
            nll = nll.masked_scatter(coord, -(q * logp[coord][:, ids]).sum(-1))
    return (nll * valid).sum() / valid.sum().clamp(min=1)


__all__ = ["coordinate_mask", "number_token_ids", "soft_coordinate_loss"]
