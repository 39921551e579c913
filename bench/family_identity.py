"""The paper family's outputs as hashes, to show a change leaves the Qwen2.5-VL path byte-identical (issue 24).

Prompts and parsing, tiny-model token ids, pixel values and sampled generations, RL samples, verl ground truth and
rows, rewards (faithful with the tiny SAM2, strict) and SFT rows, on the tiny Qwen2.5-VL and a synthetic root. Run it
on two trees and diff the output, e.g. against the commit before a change:

    git archive BASE veason_r1 | tar -x -C /tmp/base
    PYTHONPATH=/tmp/base python bench/family_identity.py > base.json
    PYTHONPATH=.         python bench/family_identity.py > new.json && diff base.json new.json

Issue 24 (the family table, Qwen3-VL, Qwen3.5) was checked this way against 55cb1ff: identical.
"""
import hashlib
import json
import random
import tempfile
from pathlib import Path

import numpy as np

from veason_r1.config import FRAMES


def h(x):
    if isinstance(x, np.ndarray):
        return hashlib.sha256(x.tobytes() + str(x.shape).encode() + str(x.dtype).encode()).hexdigest()[:16]
    return hashlib.sha256(json.dumps(x, sort_keys=True, default=str).encode()).hexdigest()[:16]


def main() -> None:
    out = {}
    from veason_r1.prompting import build_messages, build_prompt, format_response, parse_prediction
    answer = '<answer>{"keyframe_timestamp": 7, "bbox_2d_list": [[1,2,900,4]]}</answer>'
    out["prompt"] = h([build_prompt("The dog that jumps.", [0, 5, 9]), build_messages("a cat", [1, 2]),
                       format_response("r", 5, [[10.4, 20, 300, 559.6]]),
                       parse_prediction(answer, [0, 5, 9]).__dict__])
    from veason_r1.models.policy import GenerationRequest, HFEngine, SamplingConfig, build_inputs, load_policy
    from veason_r1.models.tiny import make_tiny_qwen
    d = make_tiny_qwen(Path(tempfile.mkdtemp()) / "t", seed=0)
    pol = load_policy(d)
    imgs = [np.random.default_rng(i).integers(0, 255, (112, 112, 3)).astype(np.uint8) for i in range(3)]
    reqs = [GenerationRequest("x", [0, 3, 6], imgs), GenerationRequest("the red one on the left", [0, 3, 6], imgs)]
    b = build_inputs(pol.processor, reqs, 112, responses=["<think>a</think>", "<answer>{}</answer>"])
    out["inputs"] = {k: h(v.numpy()) for k, v in b.items()}
    sampling = SamplingConfig(max_new_tokens=12, temperature=1.0, n=2, seed=3)
    out["generate"] = h(HFEngine(pol, 112).generate(reqs, sampling))
    from veason_r1.data.revos import ReVOSDataset
    from veason_r1.data.synthetic import SynthConfig, write_benchmark
    from veason_r1.rl.data import RLSampleBuilder, ground_truth_for, reference_rows, select_expressions
    root = Path(tempfile.mkdtemp()) / "s"
    write_benchmark(root, SynthConfig(num_videos=6, seed=0))
    ds = ReVOSDataset(root, "train")
    builder = RLSampleBuilder(ds, FRAMES.rl_frames, 112)
    exprs = select_expressions(ds, builder=builder)[:4]
    samples = [builder.build(e, random.Random(i)) for i, e in enumerate(exprs)]
    out["rl_samples"] = h([[s.prompt, s.gt_boxes, h(s.frames), h(s.gt_masks), s.frame_ids, s.keyframe]
                           for s in samples])
    out["ground_truth"] = h([ground_truth_for(s) for s in samples])
    rows = reference_rows(exprs, root, "train", redraw=True, num_frames=FRAMES.rl_frames, image_size=112)
    out["rows"] = h([{**r, "extra_info": {k: v for k, v in r["extra_info"].items() if k != "root"}} for r in rows])
    from veason_r1.models.sam2 import load_sam2
    from veason_r1.reward.scoring import RewardConfig, score_groups
    sam = load_sam2("tiny", device="cpu")
    odd = '<think>x</think><answer>{"keyframe_timestamp": "3", "bbox_2d_list": [[0,0,111,111]]}</answer>'
    resp = [format_response("r", s.frame_ids[1], [[5, 5, 60, 60], [0, 0, 10, 10]]) for s in samples] + ["junk", odd]
    groups = [(resp, s.reward_sample()) for s in samples]
    out["reward"] = h(score_groups(groups, sam, RewardConfig(image_size=112)))
    out["reward_strict"] = h(score_groups(groups, None, RewardConfig(variant="strict", image_size=112)))
    from PIL import Image

    from veason_r1.sft.dataset import export_llamafactory_dataset
    src = Path(tempfile.mkdtemp())
    recs = []
    for s, e in zip(samples, exprs):
        paths = []
        for t in s.frame_ids:
            p = src / e.video / f"{t:05d}.jpg"; p.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((64, 96, 3), t * 9 % 255, np.uint8)).save(p); paths.append(str(p))
        recs.append({"key": e.key, "video": e.video, "exp": e.text, "CoT": "c", "frame_ids": s.frame_ids,
                     "keyframe": s.keyframe, "sampled_video_frames": paths, "height": 64, "width": 96,
                     "keyframe_boxes": [[3, 4, 50, 60]]})
    o = Path(tempfile.mkdtemp())
    export_llamafactory_dataset(recs, o, image_size=112)
    out["sft"] = h(json.loads((o / "veason_cot.json").read_text()))
    print(json.dumps(out, indent=1, sort_keys=True))


if __name__ == "__main__":
    main()
