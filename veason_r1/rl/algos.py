"""The GRPO maths the local trainer uses: verl 0.9.1's `core_algos` whenever verl imports.

verl needs Ray, tensordict and TransferQueue at import time. Where it cannot be installed (the GPU benchmark box),
`SOURCE == "port"` and the functions below are line-for-line ports of verl's (same clamps, same aggregation), kept
only so the benchmark can time a step there; tests/test_rl_local.py checks the port against verl value by value.
"""

from __future__ import annotations

try:  # the real thing
    from verl.trainer.ppo.core_algos import agg_loss, compute_grpo_outcome_advantage, get_policy_loss_fn, kl_penalty
    from verl.utils.torch_functional import entropy_from_logits
    from verl.workers.config import ActorConfig as _VerlActorConfig

    SOURCE = "verl"

    def policy_loss_vanilla(**kw):
        return get_policy_loss_fn("vanilla")(**kw)

    def actor_config(**kw):
        return _VerlActorConfig(strategy="fsdp", **kw)

except ImportError:  # pragma: no cover - exercised on machines without verl
    SOURCE = "port"
    from veason_r1.rl._algos_port import (
        actor_config,
        agg_loss,
        compute_grpo_outcome_advantage,
        entropy_from_logits,
        kl_penalty,
        policy_loss_vanilla,
    )

__all__ = ["SOURCE", "actor_config", "agg_loss", "compute_grpo_outcome_advantage", "entropy_from_logits",
           "kl_penalty", "policy_loss_vanilla"]
