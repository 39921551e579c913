"""transformers trackers behind the propagator seam (issue 25): hf-sam2 equals the sam2 package on the same weights,
and every tiny tracker runs through the reward's consistency term and `predict` stage 2 on the synthetic benchmark."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from veason_r1.data.masks import mask_iou
from veason_r1.models.registry import (
    HF_TRACKERS,
    PROPAGATORS,
    load_propagator,
    propagator_needs_checkpoint,
    propagator_random_weights,
    tracker_of,
)

TINY_NAMES = [f"tiny-{n}" for n in HF_TRACKERS]


@pytest.fixture(scope="module", autouse=True)
def _cache(tmp_path_factory):
    """Tiny folders go to a private cache (built once for the module)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("VEASON_R1_CACHE", str(tmp_path_factory.mktemp("hf_cache")))
    yield
    mp.undo()


class _Props(dict):
    """Tiny propagators loaded on first use; `tiny-edgetam` skips where timm (its backbone) is not installed."""

    def __missing__(self, name):
        if name == "tiny-edgetam":
            pytest.importorskip("timm")
        self[name] = load_propagator(name, device="cpu")
        return self[name]


@pytest.fixture(scope="module")
def props():
    return _Props()


def _oracle_prompts(video, keyframe):
    boxes = []
    for vis in video.visible:
        if vis[keyframe].any():
            ys, xs = np.nonzero(vis[keyframe])
            boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
    return np.asarray(boxes, float).reshape(-1, 4)


def test_names_resolve_through_the_registry():
    assert all(tracker_of(n) == n for n in HF_TRACKERS) and tracker_of("sam2.1_hiera_l") is None
    assert all(propagator_needs_checkpoint(n) for n in HF_TRACKERS)  # real weights: the user's folder
    assert all(n in PROPAGATORS and not propagator_needs_checkpoint(n) for n in TINY_NAMES)
    assert all(propagator_random_weights(n, None) for n in TINY_NAMES)
    from veason_r1.errors import BadInput

    with pytest.raises(BadInput, match="weights folder"):
        load_propagator("sam3")


def test_hf_sam2_equals_the_sam2_package_on_the_same_weights(props):
    """`tiny-hf-sam2` is `--sam2 tiny` converted: per-frame IoU >= 0.99 (measured: every frame identical)."""
    from veason_r1.data.synthetic import SynthConfig, make_video
    from veason_r1.models.sam2 import load_sam2

    ref, hf = load_sam2("tiny", device="cpu"), props["tiny-hf-sam2"]
    cfg = SynthConfig(min_frames=6, max_frames=10)
    worst, frames_seen, identical = 1.0, 0, 0
    for i in range(3):
        v = make_video(i, cfg)
        frames = np.stack(v.frames)
        for keyframe in (0, v.num_frames // 2):
            boxes = _oracle_prompts(v, keyframe)
            a = ref.propagate(frames, keyframe, boxes, per_object=True)
            b = np.stack([hf.propagate(frames, keyframe, box[None]) for box in boxes])
            for pa, pb in zip(a, b):
                ious = [mask_iou(x, y) for x, y in zip(pa, pb)]
                worst = min(worst, min(ious))
                frames_seen += len(ious)
                identical += sum(np.array_equal(x, y) for x, y in zip(pa, pb))
            assert np.array_equal(hf.propagate_many(frames, [(keyframe, boxes)])[0], a.any(axis=0))
    assert worst >= 0.99, worst
    assert identical == frames_seen  # what we measured with transformers 5.5.4 / sam2 1.1.0 on CPU fp32


@pytest.mark.parametrize("name", TINY_NAMES)
def test_tiny_tracker_through_the_consistency_reward(props, name):
    from veason_r1.data.synthetic import SynthConfig, make_video
    from veason_r1.reward import RewardConfig, RewardSample, score_group

    prop = props[name]
    v = make_video(0, SynthConfig(min_frames=5, max_frames=6))
    frames, k = np.stack(v.frames), v.num_frames
    gt = np.stack([np.any([vis[t] for vis in v.visible[:1]], axis=0) for t in range(k)])
    box = _oracle_prompts(v, 0)[:1]
    groups = [(frames, [(0, box), (1, box), (0, box)])]
    ious = prop.frame_ious_groups(groups, [gt])[0]
    assert len(ious) == 3 and all(x.shape == (k,) and ((0 <= x) & (x <= 1)).all() for x in ious)
    assert np.array_equal(ious[0], ious[2])  # identical prompts, identical IoUs
    masks = prop.propagate(frames, 0, box)
    assert masks.shape == (k, *frames.shape[1:3]) and masks.dtype == bool
    assert np.allclose(ious[0], [mask_iou(m, g) for m, g in zip(masks, gt)])
    # the reward's consistency term runs on it (the reward scores from its own response format)
    fids = list(range(k))
    boxes = {str(t): [list(map(float, box[0]))] for t in range(k)}
    ans = {"keyframe_timestamp": 0, "bbox_2d_list": [list(map(float, box[0]))]}
    responses = [f"<think>x</think><answer>{json.dumps(ans)}</answer>"] * 2
    sample = RewardSample(fids, boxes, gt, frames)
    out = score_group(responses, sample, prop, RewardConfig())
    assert len(out) == 2 and out[0] == out[1]


@pytest.mark.parametrize("name", TINY_NAMES)
def test_tiny_tracker_through_predict_stage2_on_the_synthetic_benchmark(props, name, synth_root, tmp_path):
    from veason_r1.data.revos import ReVOSDataset
    from veason_r1.inference.pipeline import InferenceConfig
    from veason_r1.inference.predict import PredictConfig, load_stage1, run_stage1, run_stage2
    from veason_r1.models.config import PropagatorConfig

    ds = ReVOSDataset(synth_root, "valid")
    cfg = PredictConfig(benchmark="revos", split="valid", inference=InferenceConfig(112, 8, 64), batch_size=4,
                        oracle_keyframe=True, oracle_boxes=True, limit=3,
                        propagator=PropagatorConfig(name))
    run_stage1(ds, None, tmp_path, cfg, progress=False)
    stats = run_stage2(ds, props[name], tmp_path, cfg, progress=False)
    assert stats["written"] == 3
    rec_key, rec = next(iter(load_stage1(tmp_path).items()))
    video, exp_id = rec_key.rsplit("/", 1)
    names = ds.videos[video].frames
    saved = np.stack([np.asarray(Image.open(tmp_path / video / exp_id / f"{n}.png")) > 0 for n in names])
    direct = props[name].propagate(ds.frames(video), rec["keyframe"], np.asarray(rec["boxes"], np.float32))
    assert np.array_equal(direct, saved)


def test_the_toy_sam2_converts_for_hf_sam2_and_gives_the_same_masks():
    """The shipped toy (trained; 32-channel memory, which transformers hard-codes to 64 and we resize) loads as
    `toy-hf-sam2` and gives the toy's masks (issue 25 item 4)."""
    from veason_r1.data.synthetic import SynthConfig, make_video
    from veason_r1.models.registry import TOY_HF_SAM2
    from veason_r1.models.sam2 import load_sam2

    ref, hf = load_sam2("toy", device="cpu"), load_propagator(TOY_HF_SAM2, device="cpu")
    assert not propagator_random_weights(TOY_HF_SAM2, None)
    v = make_video(1, SynthConfig(min_frames=6, max_frames=8))
    frames, keyframe = np.stack(v.frames), 2
    boxes = _oracle_prompts(v, keyframe)
    a = ref.propagate(frames, keyframe, boxes, per_object=True)
    b = np.stack([hf.propagate(frames, keyframe, box[None]) for box in boxes])
    assert min(mask_iou(x, y) for pa, pb in zip(a, b) for x, y in zip(pa, pb)) >= 0.99
    assert np.array_equal(a, b)


def test_predict_flag_check_takes_a_weights_folder(tmp_path):
    from veason_r1.errors import BadInput, MissingInput
    from veason_r1.models.config import PropagatorConfig as P

    with pytest.raises(BadInput, match="--sam2-checkpoint: --sam2 sam3 needs its weights folder"):
        P("sam3").check()
    P("tiny-sam3").check()
    with pytest.raises(MissingInput, match="weights folder"):
        P("edgetam", str(tmp_path)).check()
    (tmp_path / "config.json").write_text("{}")
    P("hf-sam2", str(tmp_path)).check()
    with pytest.raises(BadInput, match="unknown SAM2 config"):
        P("sam4").check()
    with pytest.raises(BadInput, match="reward.propagator.checkpoint: "):  # a config key is named as such
        P("sam3").check({"checkpoint": "reward.propagator.checkpoint"})


def test_the_app_model_picker_serves_a_tiny_tracker(tmp_path):
    from veason_r1.app.models import NAMED_SAM2, resolve_models
    from veason_r1.models.hf_tracker import HFTrackerPropagator

    assert set(TINY_NAMES) | {"toy-hf-sam2"} <= set(NAMED_SAM2)
    from veason_r1.models.config import PolicyConfig, PropagatorConfig

    models = resolve_models(PolicyConfig("tiny", device="cpu"), PropagatorConfig("tiny-sam3"), cache_dir=tmp_path)
    assert isinstance(models.propagator, HFTrackerPropagator) and models.random_weights
    assert models.propagator.tracker.name == "sam3"


def test_cli_predict_names_a_tracker_with_oracle_boxes(synth_root, tmp_path, capsys):
    """`veason-r1 predict --sam2 tiny-sam3` end to end (no policy: both oracles), and `--sam2 sam3` without its folder
    is one line naming the flag."""
    from veason_r1.cli import main

    common = ["predict", "revos", "--data", str(synth_root), "--oracle-keyframe", "--oracle-boxes", "--limit", "2",
              "--image-size", "112"]
    assert main([*common, "--out", str(tmp_path / "p"), "--sam2", "tiny-sam3"]) == 0
    assert len([p for p in (tmp_path / "p").rglob("*.png")]) > 0
    assert main([*common, "--out", str(tmp_path / "q"), "--sam2", "sam3"]) == 2
    assert "--sam2-checkpoint: --sam2 sam3 needs its weights folder" in capsys.readouterr().err
    assert not (tmp_path / "q").exists()  # refused before stage 1
