"""Every policy family of models/families.py through the offline pipeline, on its tiny random-weight folder.

The tiny folders are built by the registry (`tiny`, `tiny-qwen3_vl`, `tiny-qwen3_5`) into a per-session cache. Their
outputs are random: these tests check that each stage runs and follows the family's conventions, not results.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from veason_r1.models.families import FAMILIES, QWEN2_5_VL, QWEN3_VL
from veason_r1.prompting import build_prompt, format_response, parse_prediction

NAMES = {"qwen2_5_vl": "tiny", "qwen3_vl": "tiny-qwen3_vl", "qwen3_5": "tiny-qwen3_5"}


@pytest.fixture(scope="session")
def family_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("family_cache")


@pytest.fixture
def cached(family_cache, monkeypatch):
    monkeypatch.setenv("VEASON_R1_CACHE", str(family_cache))
    return family_cache


def small_size(row) -> int:
    return 4 * row.factor  # 16 visual tokens per frame in every family


def test_every_family_has_a_tiny_name():
    from veason_r1.models.registry import POLICIES

    assert set(NAMES) == set(FAMILIES)
    assert all(name in POLICIES and POLICIES[name].random_weights for name in NAMES.values())


def test_the_paper_family_prompt_is_unchanged_and_others_state_their_grid():
    assert build_prompt("The dog.", [0, 5]) == build_prompt("The dog.", [0, 5], family=QWEN2_5_VL)
    assert "relative" not in build_prompt("The dog.", [0, 5])
    assert "0 to 1000" in build_prompt("The dog.", [0, 5], family=QWEN3_VL)


@pytest.mark.parametrize("name", list(NAMES))
def test_a_box_means_the_same_region_in_every_family(name):
    """SFT target (pixels of the frame -> the family's convention) then the parser (-> pixels): the same box."""
    row = FAMILIES[name]
    size = row.default_image_size
    box = [0.25 * size, 0.1 * size, 0.75 * size, size]
    text = format_response("r", 5, [box], row, size)
    answer = json.loads(text.split("<answer>")[1].split("</answer>")[0])
    assert answer["bbox_2d_list"] == ([[140, 56, 420, 560]] if row.box_grid is None else [[250, 100, 750, 1000]])
    parsed = parse_prediction(text, [0, 5], row, size)
    assert parsed.keyframe == 5 and np.allclose(parsed.boxes, [box], atol=size / 1000)


@pytest.mark.parametrize("name", list(NAMES))
def test_tiny_policy_generates_with_its_own_patch_rule(name, cached):
    from veason_r1.models.policy import GenerationRequest, HFEngine, SamplingConfig, build_inputs, load_policy
    from veason_r1.models.registry import resolve_policy

    row = FAMILIES[name]
    policy = load_policy(resolve_policy(NAMES[name]))
    assert policy.family is row
    size = small_size(row)
    images = [np.full((size, size, 3), 40 * i, np.uint8) for i in range(3)]
    batch = build_inputs(policy.processor, [GenerationRequest("the dog", [0, 4, 8], images)], size)
    side = size // row.patch_size
    assert batch["image_grid_thw"].tolist() == [[1, side, side]] * 3
    image_pad = policy.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert int((batch["input_ids"] == image_pad).sum()) == 3 * row.visual_tokens_per_frame(size)
    (texts,) = HFEngine(policy, image_size=size).generate([GenerationRequest("the dog", [0, 4, 8], images)],
                                                          SamplingConfig(max_new_tokens=6))
    assert len(texts) == 1 and isinstance(texts[0], str)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(NAMES))
def test_cli_predict_then_eval_by_name(name, cached, synth_root, tmp_path):
    from veason_r1.cli import main

    row = FAMILIES[name]
    pred = tmp_path / "pred"
    assert main(["predict", "revos", "--data", str(synth_root), "--model", NAMES[name], "--sam2", "tiny",
                 "--image-size", str(small_size(row)), "--max-new-tokens", "8", "--device", "cpu", "--no-progress",
                 "--limit", "3", "--out", str(pred), "--merge"]) == 0
    out = tmp_path / "results.json"
    assert main(["eval", "revos", "--data", str(synth_root), "--pred", str(pred), "--out", str(out), "--workers", "1",
                 "--no-progress"]) == 0
    assert 0 <= json.loads(out.read_text())["overall"]["JF"] <= 100
