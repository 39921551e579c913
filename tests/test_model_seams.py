"""The model seams of issue 24: the family table, the name registry, the Propagator protocol."""

from __future__ import annotations

import json

import numpy as np
import pytest

from veason_r1.models.families import DEFAULT_FAMILY, FAMILIES, QWEN2_5_VL, QWEN3_5, QWEN3_VL, family
from veason_r1.models.propagator import Propagator, PropagatorBase
from veason_r1.models.registry import (
    POLICIES,
    PROPAGATORS,
    policy_random_weights,
    propagator_checkpoint,
    propagator_needs_checkpoint,
    propagator_random_weights,
    resolve_policy,
)


def test_family_rows_read_from_the_pinned_sources():
    """patch x merge from transformers 5.5.4's configuration_*.py, templates from LLaMA-Factory 0.9.5."""
    assert (QWEN2_5_VL.patch_size, QWEN2_5_VL.merge_size, QWEN2_5_VL.box_grid) == (14, 2, None)
    assert (QWEN3_VL.patch_size, QWEN3_VL.merge_size, QWEN3_VL.box_grid) == (16, 2, 1000)
    assert (QWEN3_5.patch_size, QWEN3_5.merge_size, QWEN3_5.box_grid) == (16, 2, 1000)
    assert {f.sft_template for f in FAMILIES.values()} == {"qwen2_vl", "qwen3_vl_nothink", "qwen3_5_nothink"}
    assert [FAMILIES[n].default_image_size for n in FAMILIES] == [560, 640, 640]
    assert family("qwen3_vl") is QWEN3_VL and DEFAULT_FAMILY is QWEN2_5_VL
    with pytest.raises(ValueError, match="unknown policy family 'llava'"):
        family("llava")
    assert QWEN3_VL.image_size_problem(560) and not QWEN3_VL.image_size_problem(640)
    transformers = pytest.importorskip("transformers")
    from transformers import Qwen3_5Config, Qwen3VLConfig

    for row, cfg in ((QWEN3_VL, Qwen3VLConfig()), (QWEN3_5, Qwen3_5Config())):
        assert (cfg.vision_config.patch_size, cfg.vision_config.spatial_merge_size) == (row.patch_size, row.merge_size)
        assert cfg.model_type == row.model_type and hasattr(transformers, row.hf_class)


def test_box_convention_round_trips_and_is_identity_for_qwen2_5_vl():
    boxes = [[0, 56, 320, 640]]
    assert QWEN2_5_VL.to_answer_boxes(boxes, 560) == boxes == QWEN2_5_VL.from_answer_boxes(boxes, 560)
    assert QWEN3_VL.to_answer_boxes(boxes, 640) == [[0, 87.5, 500, 1000]]  # rounded only when written
    assert QWEN3_VL.from_answer_boxes([[0, 88, 500, 1000]], 640) == [[0.0, 56.32, 320.0, 640.0]]


def test_registry_answers_for_every_name(tmp_path):
    assert {"toy", "tiny"} <= set(POLICIES) and {"toy", "tiny"} <= set(PROPAGATORS)
    assert policy_random_weights("tiny") and not policy_random_weights("toy")
    assert not policy_random_weights(str(tmp_path))
    assert resolve_policy(str(tmp_path)) == tmp_path
    assert (resolve_policy("toy") / "config.json").is_file()
    assert not propagator_needs_checkpoint("tiny") and not propagator_needs_checkpoint("toy")
    assert propagator_needs_checkpoint("sam2.1_hiera_l") and propagator_needs_checkpoint(None)
    assert propagator_random_weights("tiny", None) and not propagator_random_weights("toy", None)
    assert propagator_checkpoint("sam2.1_hiera_l", "x.pt").name == "x.pt"
    assert propagator_checkpoint("sam2.1_hiera_l", None) is None


def test_the_tiny_policy_is_built_once_into_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("VEASON_R1_CACHE", str(tmp_path))
    folder = resolve_policy("tiny")
    assert json.loads((folder / "config.json").read_text())["model_type"] == DEFAULT_FAMILY.model_type
    stamp = (folder / "config.json").stat().st_mtime_ns
    assert resolve_policy("tiny") == folder and (folder / "config.json").stat().st_mtime_ns == stamp


class OnlyPropagate(PropagatorBase):
    """A new propagator writes `propagate` only; the batched methods come from the base."""

    def propagate(self, frames, keyframe_index, boxes, *, progress=False):
        out = np.zeros((len(frames), 4, 4), bool)
        for x0, y0, x1, y1 in np.asarray(boxes, int).reshape(-1, 4):
            out[keyframe_index:, y0:y1 + 1, x0:x1 + 1] = True
        return out


def test_propagator_protocol_and_base_defaults():
    from veason_r1.data.masks import mask_iou
    from veason_r1.models.sam2 import SAM2Propagator

    p = OnlyPropagate()
    assert isinstance(p, Propagator) and issubclass(SAM2Propagator, PropagatorBase)
    frames = np.zeros((3, 4, 4, 3), np.uint8)
    prompts = [(1, np.array([[0, 0, 1, 1]], np.float32)), (0, np.array([[2, 2, 3, 3]], np.float32))]
    many = p.propagate_many(p.encode(frames), prompts)
    assert [m.sum() for m in many] == [8, 12]
    gt = np.zeros((3, 4, 4), bool)
    gt[1:, :2, :2] = True
    (ious,) = p.frame_ious_groups([(frames, prompts)], [gt])
    assert ious[0].tolist() == [1.0, 1.0, 1.0]
    assert ious[1].tolist() == [mask_iou(a, b) for a, b in zip(many[1], gt)]


def test_no_caller_probes_a_propagator():
    """`hasattr(propagator, ...)` and signature inspection are gone from the callers."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "veason_r1"
    for rel in ("reward/scoring.py", "inference/predict.py", "inference/pipeline.py", "app/models.py"):
        text = (root / rel).read_text()
        assert "hasattr(propagator" not in text and "_accepts(" not in text, rel


def test_qwen2_5_vl_ground_truth_is_written_as_before():
    from veason_r1.reward.verl_hook import make_ground_truth, parse_ground_truth

    masks = np.zeros((2, 4, 4), bool)
    gt = make_ground_truth([0, 5], {"0": [[0, 0, 0, 0]], "1": [[0, 0, 1, 1]]}, masks)
    assert set(gt) == {"frame_ids", "gt_boxes", "gt_masks_rle"}  # no new key for the paper's family
    assert parse_ground_truth(gt).family == "qwen2_5_vl"
    gt3 = make_ground_truth([0, 5], {"0": [[0, 0, 0, 0]], "1": [[0, 0, 250, 250]]}, masks, family="qwen3_vl")
    assert parse_ground_truth(gt3).family == "qwen3_vl"


@pytest.mark.slow
def test_toy_names_work_in_infer_and_predict(synth_root, tmp_path):
    """`--model toy` / `--sam2 toy` resolve in every command that takes a model (the registry)."""
    from veason_r1.cli import main

    video = synth_root / "JPEGImages" / "v00000"
    assert main(["infer", "--video", str(video), "--query", "the red ball", "--model", "toy", "--sam2", "toy",
                 "--image-size", "112", "--max-new-tokens", "16", "--device", "cpu", "--no-progress", "--no-overlay",
                 "--out", str(tmp_path / "infer")]) == 0
    assert json.loads((tmp_path / "infer" / "result.json").read_text())["keyframe_index"] >= 0
    assert main(["predict", "revos", "--data", str(synth_root), "--model", "toy", "--sam2", "toy", "--image-size",
                 "112", "--max-new-tokens", "16", "--device", "cpu", "--no-progress", "--limit", "2",
                 "--out", str(tmp_path / "pred")]) == 0
