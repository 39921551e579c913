"""How a policy's sampled answers score against its greedy ones on the demo's held-out expressions.

GRPO learns from sampled rollouts; when samples are much worse than greedy answers, its updates mostly teach "write
the layout at all" and can move the greedy answers the wrong way. For each temperature: the mean four-term reward of
`--n` samples per held-out expression (greedy: 1), the share of answers the reward could not fully parse, and the
share of prompts whose samples differ in reward (the groups GRPO gets a gradient from).

    python bench/sampling_probe.py --demo demo_out --temperatures 0,1,0.7,0.5
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--demo", required=True, help="a finished demo folder (its synth data and SFT model)")
    p.add_argument("--model", default=None, help="policy folder (default: DEMO/sft/merged)")
    p.add_argument("--temperatures", default="0,1,0.7,0.5")
    p.add_argument("--n", type=int, default=4)
    p.add_argument("--image-size", type=int, default=112)
    p.add_argument("--max-new-tokens", type=int, default=384)
    p.add_argument("--out", default=None, help="JSON file for the rows")
    args = p.parse_args(argv)

    import torch

    from veason_r1.models.policy import GenerationRequest, HFEngine, SamplingConfig, load_policy
    from veason_r1.models.sam2 import load_sam2
    from veason_r1.reward import RewardConfig, score_groups
    from veason_r1.reward.scoring import TERMS
    from veason_r1.rl.heldout import HeldoutConfig, heldout_samples

    torch.set_num_threads(2)
    demo = Path(args.demo)
    cfg = HeldoutConfig(image_size=args.image_size, max_new_tokens=args.max_new_tokens)
    samples = heldout_samples(demo / "data" / "synth", cfg)
    sam2 = load_sam2("toy", device="cpu", seed=0)
    engine = HFEngine(load_policy(args.model or demo / "sft" / "merged", device="cpu", dtype="float32"),
                      args.image_size, 8)
    requests = [GenerationRequest(s.expression, list(s.frame_ids), list(s.frames)) for s in samples]
    rows = []
    for t in (float(x) for x in args.temperatures.split(",")):
        t0 = time.perf_counter()
        sampling = (SamplingConfig(max_new_tokens=args.max_new_tokens) if t == 0 else
                    SamplingConfig(max_new_tokens=args.max_new_tokens, temperature=t, n=args.n, seed=1))
        texts = engine.generate(requests, sampling)
        groups = score_groups([(g, s.reward_sample()) for g, s in zip(texts, samples)], sam2,
                              RewardConfig(image_size=args.image_size))
        flat = [r for g in groups for r in g]
        row = {"temperature": t, "samples": len(flat),
               **{k: float(np.mean([r[k] for r in flat])) for k in (*TERMS, "overall")},
               "not_fully_parsed": float(np.mean([bool(r["failure"]) for r in flat])),
               "groups_with_signal": float(np.mean([np.std([r["overall"] for r in g]) > 1e-6 for g in groups])),
               "seconds": round(time.perf_counter() - t0, 1)}
        rows.append(row)
        print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
