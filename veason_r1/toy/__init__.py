"""The toy world: small models the project trains itself, so the method can be seen to work offline.

The real recipe starts from pretrained models (Qwen2.5-VL-Instruct, which can already ground objects, and SAM2,
which can already track). The toy world does the same at toy scale, on the synthetic shapes benchmark:

- `sam2_train`: a small SAM2 trained from scratch with SAM2's own training code (`training.model.sam2.SAM2Train`,
  `training.loss_fns.MultiStepMultiMasksAndIous`, its VOS dataset classes) on synthetic videos exported in the VOS
  layout, with box prompts.
- `grounding` + `policy_train`: a small Qwen2.5-VL ("toy instruct") trained from scratch on synthetic grounding and
  frame-reading tasks in plain JSON (no `<think>`: that is what CoT SFT then teaches).

The shipped checkpoints live in `veason_r1/assets/toy/` and load by name (`--model toy`, `--sam2 toy`) through the
same loaders as real checkpoints (`veason_r1.models.toy`). `veason-r1 make-toy` rebuilds them. They know coloured
shapes on textured backgrounds and nothing else: numbers from them show that the recipe and the code improve a policy
end to end, never the paper's numbers.
"""
