"""Hooks that run inside verl's trainer process (named by the generated verl config, imported there).

`KeepLastAndBest` is verl 0.9.1's `trainer.checkpoint_callback_class`: after every save it keeps the last K
`global_step_N` folders plus the one with the best validation reward so far (read from verl's validation dumps) and
deletes the others. verl's own `max_actor_ckpt_to_keep` would delete the best checkpoint as well, so the generated
config leaves it null. K is `trainer.keep_last_checkpoints` (from GRPOConfig `trainer.max_ckpt_to_keep`).
"""

from __future__ import annotations

import logging

from verl.trainer.ppo.checkpoint_callback import CheckpointCallback

logger = logging.getLogger(__name__)


class KeepLastAndBest(CheckpointCallback):
    """Prunes verl checkpoints to the last K plus the best (module docstring)."""

    def on_save(self, trainer=None, global_step: int = 0, checkpoint_dir: str = "", async_save: bool = False,
                **kwargs) -> None:
        if async_save:  # the save may still be in flight: prune at the next synchronous save
            return
        prune_verl_run(self.config.trainer.default_local_dir, self.config.trainer.get("validation_data_dir"),
                       self.config.trainer.get("keep_last_checkpoints", None), global_step)


def prune_verl_run(root, validation_dir, keep, current_step: int) -> list[int]:
    """Delete the checkpoints of a verl run that are neither among the last `keep` nor the best validated one."""
    from veason_r1.rl.checkpoint import prune, saved_steps
    from veason_r1.rl.verl_config import best_saved_step, validation_scores

    if keep is None:
        return []
    scores = validation_scores(validation_dir) if validation_dir else {}
    best = best_saved_step(scores, saved_steps(root))
    protect = {int(current_step)} | ({best} if best is not None else set())
    removed = prune(root, int(keep), protect)
    if removed:
        logger.warning("checkpoints: removed steps %s (keeping the last %d and the best, step %s)", removed, keep, best)
    return removed
