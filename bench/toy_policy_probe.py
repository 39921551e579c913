"""What the toy base policy knows about where a target is, read from its coordinate-token distributions.

On held-out `ground` samples whose target is present (one box), the answer is teacher-forced and, at each of the four
coordinate positions, the model's next-token distribution is restricted to the integer tokens 0..S. Reported: the
mean absolute error of three read-outs against the true coordinate (argmax = what greedy decoding emits, the
distribution's median, its mean), the probability mass on "0" (the token every absent-target answer starts with),
the Pearson correlation of the median with the truth, and the box IoU of the argmax and the median boxes; a constant
box (the mean GT box) as the floor. It separates "the model does not know where the target is" from "it knows
roughly, but greedy decoding picks the absent-answer spike".

    python bench/toy_policy_probe.py [--model DIR] [--samples 200] [--out probe.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def box_iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=None, help="policy folder (default: the shipped toy base)")
    p.add_argument("--samples", type=int, default=200)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)

    import torch
    from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

    from veason_r1.models.toy import toy_policy_dir
    from veason_r1.toy.coord_loss import number_token_ids
    from veason_r1.toy.grounding import SampleStream
    from veason_r1.toy.policy_train import ToyPolicyTrainConfig, encode

    torch.set_num_threads(2)
    model_dir = Path(args.model) if args.model else toy_policy_dir()
    cfg = ToyPolicyTrainConfig()
    size = cfg.tasks.image_size
    processor = AutoProcessor.from_pretrained(model_dir)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32).eval()
    tok = processor.tokenizer
    # box corners run 0..S (an exclusive right/bottom edge can be S); each integer is one token
    number_ids = number_token_ids(tok, size)
    number_ids_t = torch.tensor(number_ids)
    values = torch.arange(size + 1, dtype=torch.float32)

    stream = SampleStream(cfg.tasks, seed=cfg.heldout_seed)
    rows = []
    while len(rows) < args.samples:
        s = next(stream)
        if s.task != "ground" or s.boxes is None or len(s.boxes) != 1 or s.boxes[0] == [0, 0, 0, 0]:
            continue
        item = encode(processor, s, size)
        labels = item["labels"]
        with torch.no_grad():
            logits = model(input_ids=item["input_ids"][None], pixel_values=item["pixel_values"],
                           mm_token_type_ids=item["mm_token_type_ids"][None],
                           image_grid_thw=item["image_grid_thw"]).logits[0]
        # the four coordinates: the last four integer tokens (the "2" of "bbox_2d_list" is an integer token too)
        positions = [i for i in range(len(labels)) if int(labels[i]) in number_ids][-4:]
        coords = []
        for pos in positions:  # logits at pos-1 predict the token at pos
            probs = torch.softmax(logits[pos - 1, number_ids_t], dim=-1)
            cdf = torch.cumsum(probs, 0)
            coords.append({"argmax": int(probs.argmax()), "median": int((cdf < 0.5).sum()),
                           "mean": float((probs * values).sum()), "p0": float(probs[0]),
                           "mass": float(torch.softmax(logits[pos - 1], -1)[number_ids_t].sum())})
        rows.append({"true": s.boxes[0], "coords": coords})
    true = np.array([r["true"] for r in rows], dtype=float)
    mean_box = true.mean(axis=0)
    out = {"model": str(model_dir), "samples": len(rows), "image_size": size}
    for read in ("argmax", "median", "mean"):
        pred = np.array([[c[read] for c in r["coords"]] for r in rows], dtype=float)
        out[read] = {"mae": float(np.abs(pred - true).mean()),
                     "box_iou": float(np.mean([box_iou(a, b) for a, b in zip(pred, true)]))}
    med = np.array([[c["median"] for c in r["coords"]] for r in rows], dtype=float)
    out["median"]["pearson_r"] = float(np.corrcoef(med.ravel(), true.ravel())[0, 1])
    out["constant_mean_box"] = {"mae": float(np.abs(mean_box - true).mean()),
                                "box_iou": float(np.mean([box_iou(mean_box, b) for b in true]))}
    out["p0_mean"] = float(np.mean([c["p0"] for r in rows for c in r["coords"]]))
    out["argmax_is_0"] = float(np.mean([c["argmax"] == 0 for r in rows for c in r["coords"]]))
    print(json.dumps(out, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
