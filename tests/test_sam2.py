"""SAM2 propagator: exact agreement with the stock sam2 API, group reuse, batching across videos, inputs, loading."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from veason_r1.models.sam2 import _config_path, load_sam2
from veason_r1.models.sam2_reference import propagate_reference


@pytest.fixture(scope="module")
def prop():
    return load_sam2("tiny", device="cpu")


def video(seed, k=6, h=48, w=64):
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 255, (k, h, w, 3), dtype=np.uint8)
    frames[:, 10:30, 20:40] = 240
    return frames


def test_tiny_is_small_and_seeded(prop):
    n = sum(p.numel() for p in prop.model.parameters())
    assert 100_000 < n < 1_500_000 and prop.image_size == 128
    other = load_sam2("tiny", device="cpu")
    assert all(torch.equal(a, b) for a, b in zip(prop.model.parameters(), other.model.parameters()))


def test_matches_stock_predictor_exactly(prop):
    frames = video(0)
    boxes = np.array([[20, 10, 40, 30], [2, 2, 15, 40]], float)
    for kf in (0, 3, 5):
        ours = prop.propagate(frames, kf, boxes, per_object=True)
        ref = propagate_reference(prop, frames, kf, boxes, per_object=True)
        assert ours.shape == (2, 6, 48, 64) and ours.dtype == bool
        assert np.array_equal(ours, ref)
        assert np.array_equal(prop.propagate(frames, kf, boxes), ours.any(axis=0))
    assert ours.any()  # random weights still produce masks


def test_groups_batched_across_videos_and_keyframes(prop):
    small = load_sam2("tiny", device="cpu", max_batch_objects=3)
    groups = [
        (video(1), [(2, np.array([[20, 10, 40, 30]])), (0, np.array([[1, 1, 30, 30], [20, 10, 40, 30]]))]),
        (video(2), [(2, np.array([[5, 5, 20, 20]])), (2, np.array([[5, 5, 20, 20]]))]),  # duplicate prompt
    ]
    out = small.propagate_groups(groups)
    for (frames, prompts), masks in zip(groups, out):
        for (kf, boxes), m in zip(prompts, masks):
            assert np.array_equal(m, propagate_reference(prop, frames, kf, boxes))
    assert np.array_equal(out[1][0], out[1][1])
    many = prop.propagate_many(groups[0][0], groups[0][1])
    assert all(np.array_equal(a, b) for a, b in zip(many, out[0]))


def test_inputs_offload_progress_and_long_video(prop):
    from PIL import Image

    from veason_r1.data.video import ArraySource

    frames = video(3, k=40, h=40, w=40)
    boxes = np.array([[10, 10, 30, 30]])
    ref = propagate_reference(prop, frames, 17, boxes)  # pruning of stale memories keeps results exact
    assert np.array_equal(prop.propagate(frames, 17, boxes, offload=True, progress=True), ref)
    short = frames[:4]
    base = prop.propagate(short, 1, boxes)
    assert np.array_equal(prop.propagate([Image.fromarray(f) for f in short], 1, boxes), base)
    assert np.array_equal(prop.propagate(ArraySource(short), 1, boxes), base)
    assert np.array_equal(prop.propagate(torch.from_numpy(short), 1, boxes), base)
    assert np.array_equal(prop.propagate(prop.encode(short), 1, boxes), base)


def test_bad_inputs_raise_clear_errors(prop):
    frames = video(4, k=3)
    with pytest.raises(ValueError, match="keyframe_index"):
        prop.propagate(frames, 3, np.array([[0, 0, 5, 5]]))
    with pytest.raises(ValueError, match=r"\(N, 4\)"):
        prop.propagate(frames, 0, np.array([0, 0, 5]))
    with pytest.raises(ValueError, match="uint8"):
        prop.propagate(frames.astype(np.float32), 0, np.array([[0, 0, 5, 5]]))
    assert not prop.propagate(frames, 0, np.zeros((0, 4))).any()


def test_tiny_config_is_a_yaml_over_sam2_hiera_t(prop):
    """The tiny SAM2 is sam2.1_hiera_t with the keys of models/configs/sam2.1_tiny.yaml replaced (and nothing else)."""
    from omegaconf import OmegaConf

    from veason_r1.models.sam2 import SAM2_CONFIGS, TINY_CONFIG

    path, overrides = _config_path("tiny")
    assert TINY_CONFIG.is_file() and path.as_posix().endswith(SAM2_CONFIGS["sam2.1_hiera_t"])
    assert len(overrides) == 25 and overrides["model.image_size"] == 128
    assert overrides["model.image_encoder.trunk.stages"] == [1, 1, 2, 1]
    assert overrides["model.memory_attention.layer.cross_attention.kv_in_dim"] == 16
    base = OmegaConf.load(path)
    for key, value in overrides.items():  # an existing key keeps its type; a new one is a trunk/downsampler arg
        old = OmegaConf.select(base, key)
        assert old is None or type(OmegaConf.to_object(old) if OmegaConf.is_config(old) else old) is type(value)
    assert prop.model.image_encoder.trunk.blocks[0].dim == 8 and len(prop.model.memory_attention.layers) == 1


def test_config_names_and_checkpoint(tmp_path, prop):
    assert _config_path("sam2.1_hiera_l")[0].name == "sam2.1_hiera_l.yaml"
    assert _config_path("sam2_hiera_l")[0].parent.name == "sam2"
    assert _config_path("configs/sam2.1/sam2.1_hiera_l.yaml")[0].is_file()
    with pytest.raises(ValueError, match="unknown SAM2 config"):
        _config_path("sam3_huge")
    ckpt = tmp_path / "tiny.pt"
    torch.save({"model": load_sam2("tiny", device="cpu", seed=7).model.state_dict()}, ckpt)
    loaded = load_sam2("tiny", checkpoint=str(ckpt), device="cpu")
    assert not torch.equal(next(loaded.model.parameters()), next(prop.model.parameters()))
    torch.save({"model": {"bogus": torch.zeros(1)}}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="does not fit"):
        load_sam2("tiny", checkpoint=str(tmp_path / "bad.pt"), device="cpu")
    with pytest.raises(FileNotFoundError):
        load_sam2("tiny", checkpoint=str(tmp_path / "missing.pt"), device="cpu")


def test_frame_ious_groups_with_different_frame_counts(prop):
    """One GRPO step mixes prompts whose grids have different lengths K (short videos): IoUs per group must
    equal terms.mask_iou on stock propagation (regression: a single concatenation assumed one K)."""
    from veason_r1.reward.terms import mask_iou

    groups = [(video(3, k=4), [(1, np.array([[20, 10, 40, 30]]))]),
              (video(4, k=5), [(0, np.array([[5, 5, 30, 30]])), (4, np.array([[20, 10, 40, 30]]))])]
    rng = np.random.default_rng(0)
    gts = [rng.random((len(f), 48, 64)) > 0.7 for f, _ in groups]
    out = prop.frame_ious_groups(groups, gts)
    assert [len(g) for g in out] == [1, 2] and [len(g[0]) for g in out] == [4, 5]
    for (frames, prompts), gt, ious in zip(groups, gts, out):
        for (kf, boxes), got in zip(prompts, ious):
            ref = propagate_reference(prop, frames, kf, boxes)
            assert np.allclose(got, [mask_iou(p, g) for p, g in zip(ref, gt)])
