"""Held-out reward: the GRPO reward of a model's greedy answers on expressions it never trained on.

Why: the training reward curve mixes learning with the draw of each step's prompts; a fixed set of held-out
expressions, drawn once (fixed keyframe grids), scored by the same four-term reward, answers "did RL make the
policy better?" for two models on the same items (paired, `eval.bootstrap`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from veason_r1.config import FRAMES, IMAGE_SIZE, RESPONSE_BUDGET
from veason_r1.models.families import DEFAULT_FAMILY
from veason_r1.reward.scoring import TERMS


@dataclass(frozen=True)
class HeldoutConfig:
    split: str = "valid"
    num_frames: int = FRAMES.rl_frames  # the RL grid, so the numbers read like the training reward
    image_size: int = IMAGE_SIZE
    max_new_tokens: int = RESPONSE_BUDGET
    seed: int = 0  # keyframe draws of the grids
    batch_size: int = 8
    family: str = DEFAULT_FAMILY.name  # the compared models' policy family: the prompts' and GT boxes' convention


def heldout_samples(root: str | Path, cfg: HeldoutConfig):
    """The split's target expressions (no-target ones dropped, as RL drops them) as RL samples, drawn once."""
    from veason_r1.data.revos import ReVOSDataset
    from veason_r1.rl.data import RLPool, RLSampleBuilder, select_expressions

    dataset = ReVOSDataset(root, cfg.split)
    pool = RLPool(RLSampleBuilder(dataset, num_frames=cfg.num_frames, image_size=cfg.image_size, family=cfg.family),
                  select_expressions(dataset))
    return [pool.draw(i, seed=f"heldout-{cfg.seed}") for i in range(len(pool))]


def heldout_rewards(model_dir: str | Path, samples, propagator, cfg: HeldoutConfig, reward_config=None,
                    device: str = "cpu") -> list[dict]:
    """Per sample: key, the greedy response, the four terms and overall."""
    from veason_r1.models.policy import GenerationRequest, HFEngine, SamplingConfig, load_policy
    from veason_r1.reward import RewardConfig, score_groups

    policy = load_policy(model_dir, device=device, dtype="float32")
    if any(s.family != policy.family.name for s in samples):
        raise ValueError(f"{model_dir} is a {policy.family.name} policy; the samples were drawn for "
                         f"{samples[0].family} (HeldoutConfig.family)")
    engine = HFEngine(policy, cfg.image_size, cfg.batch_size)
    requests = [GenerationRequest(s.expression, list(s.frame_ids), list(s.frames)) for s in samples]
    texts = engine.generate(requests, SamplingConfig(max_new_tokens=cfg.max_new_tokens))
    config = reward_config or RewardConfig(image_size=cfg.image_size)
    scores = score_groups([(t[:1], s.reward_sample()) for t, s in zip(texts, samples)], propagator, config)
    return [{"key": s.key, "response": t[0], **{k: float(r[0][k]) for k in (*TERMS, "overall")}}
            for s, t, r in zip(samples, texts, scores)]


def summarize(rows: list[dict]) -> dict[str, float]:
    return {k: float(np.mean([r[k] for r in rows])) for k in (*TERMS, "overall")}
