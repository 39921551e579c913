"""Per-frame IoUs of propagated union masks with GT masks, counted where the masks are (the GRPO consistency term).

The masks of one GRPO step are (prompts x K x H x W) booleans on the GPU; copying them to the host costs more than
the tracking that made them. Intersection and union pixel counts are computed on the device (numpy on CPU, ~10x
faster than torch there), exactly, moved in one transfer, and turned into IoUs by the one rule of
`veason_r1.data.masks.iou_from_counts` (both empty = 1), so the values equal `masks.mask_iou` on the masks.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from veason_r1.data.masks import iou_from_counts


def frame_ious(unions: Sequence[Sequence], gt_masks: Sequence[np.ndarray], shapes: Sequence[tuple[int, int, int]],
               device) -> list[list[np.ndarray]]:
    """Per group, per prompt, the (K,) float64 IoUs of the prompt's union masks with the group's GT masks.

    `unions[g]`: the prompts' (K, H, W) bool torch tensors of group g (on `device`, or the CPU); `gt_masks[g]`: the
    group's (K, H, W) GT masks; `shapes[g]`: its video's (K, H, W), which the GT must match (a clear error if not).
    """
    import torch

    device = torch.device(device)
    counts = []
    for shape, group, gt in zip(shapes, unions, gt_masks):
        gt_arr = np.asarray(gt, dtype=bool)
        if gt_arr.shape != tuple(shape):
            raise ValueError(f"gt_masks: shape {gt_arr.shape} does not fit the frames {tuple(shape)}")
        if not group:
            continue
        k = shape[0]
        if device.type == "cpu":  # numpy counts bool pixels ~10x faster than torch on CPU
            pred_np = torch.stack(list(group)).numpy().reshape(len(group), k, -1)
            target_np = gt_arr.reshape(1, k, -1)
            inter = np.count_nonzero(pred_np & target_np, axis=-1)
            union = np.count_nonzero(pred_np | target_np, axis=-1)
            counts.append(torch.from_numpy(np.stack([inter, union], axis=-1).astype(np.int64)).reshape(-1))
            continue
        target = torch.from_numpy(gt_arr).to(device, non_blocking=True)
        pred = torch.stack(list(group))  # (P, K, H, W)
        inter = torch.count_nonzero((pred & target).flatten(2), dim=-1)
        union = torch.count_nonzero((pred | target).flatten(2), dim=-1)
        counts.append(torch.stack([inter, union], dim=-1).reshape(-1))  # (P, K, 2) flattened
    # groups may show different frame counts K: one flat transfer (one sync), split per group below
    host = torch.cat(counts).cpu().numpy() if counts else np.zeros(0, np.int64)
    out, i = [], 0
    for shape, group in zip(shapes, unions):
        size = len(group) * shape[0] * 2
        rows = host[i : i + size].reshape(len(group), shape[0], 2)
        i += size
        out.append([iou_from_counts(r[:, 0], r[:, 1]) for r in rows])
    return out
