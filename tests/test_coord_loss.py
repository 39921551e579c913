"""The toy policy's soft coordinate loss and the absent-sample thinning (veason_r1/toy/coord_loss.py, grounding.py)."""

from __future__ import annotations

import math

import pytest
import torch

from veason_r1.toy.coord_loss import coordinate_mask, soft_coordinate_loss

OPEN, TWO = 90, 2  # "[[" and the "2" of "bbox_2d_list" in a made-up vocabulary where token k is the integer k < 20
NUMBERS = list(range(20))


def _batch():
    # labels: -100 (prompt), "2" (bbox_2d), "[[", 5, 7, 9, 11, then a non-number (95), as one answer row
    labels = torch.tensor([[-100, -100, TWO, OPEN, 5, 7, 9, 11, 95]])
    torch.manual_seed(0)
    logits = torch.randn(1, labels.shape[1], 100)
    return logits, labels


def test_mask_marks_only_the_coordinates_after_the_opening_brackets():
    _, labels = _batch()
    mask = coordinate_mask(labels, NUMBERS, OPEN)
    assert mask.tolist() == [[False, False, False, False, True, True, True, True, False]]


def test_sigma_zero_is_the_plain_token_mean_cross_entropy():
    logits, labels = _batch()
    want = torch.nn.functional.cross_entropy(logits[0, :-1], labels[0, 1:], ignore_index=-100)
    assert soft_coordinate_loss(logits, labels, NUMBERS, OPEN, 0.0).item() == pytest.approx(want.item(), rel=1e-6)


def test_soft_targets_credit_mass_next_to_the_true_value():
    """Two models that put their coordinate mass one integer off, or far off: the plain loss cannot tell them apart,
    the soft loss prefers the near one; at every non-coordinate token both losses agree."""
    labels = torch.tensor([[-100, OPEN, 10, 95]])

    def model_putting_mass_on(v):
        logits = torch.full((1, 4, 100), -20.0)
        logits[0, 0, OPEN] = 20.0  # predicts "[[" exactly
        logits[0, 1, v] = 20.0  # the coordinate position (predicts labels[2])
        logits[0, 2, 95] = 20.0
        return logits

    near, far = model_putting_mass_on(11), model_putting_mass_on(19)
    plain = [soft_coordinate_loss(m, labels, NUMBERS, OPEN, 0.0).item() for m in (near, far)]
    soft = [soft_coordinate_loss(m, labels, NUMBERS, OPEN, 2.0).item() for m in (near, far)]
    assert plain[0] == pytest.approx(plain[1])
    assert soft[0] < soft[1]
    # the soft target for the coordinate is a normalised Gaussian: its loss is -sum q log p over the integers
    grid = torch.arange(20, dtype=torch.float32)
    q = torch.softmax(-((grid - 10) ** 2) / (2 * 2.0**2), dim=0)
    logp = torch.log_softmax(near[0, 1], dim=-1)[:20]
    others = -torch.log_softmax(near[0, 0], -1)[OPEN] - torch.log_softmax(near[0, 2], -1)[95]
    assert soft[0] == pytest.approx(((-(q * logp).sum()) + others).item() / 3, rel=1e-5)
    assert math.isfinite(soft[1])


def test_absent_keep_thins_absent_target_samples_and_one_keeps_the_stream():
    from veason_r1.toy.grounding import GroundingConfig, SampleStream

    def draw(keep, n=300):
        stream = SampleStream(GroundingConfig(absent_keep=keep), seed=7)
        return [next(stream) for _ in range(n)]

    default, same = draw(1.0), SampleStream(GroundingConfig(), seed=7)
    assert [s.answer for s in default] == [next(same).answer for _ in range(300)]  # 1: the stream as it was

    def absent_share(samples):
        grounding = [s for s in samples if s.task in ("ground", "ground_at")]
        return sum(s.boxes == [[0, 0, 0, 0]] for s in grounding) / len(grounding)

    assert absent_share(default) > 0.1
    assert absent_share(draw(0.0)) == 0.0
    assert 0 < absent_share(draw(0.3)) < absent_share(default)
