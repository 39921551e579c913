"""CoT SFT: the LLaMA-Factory dataset export (`veason_r1.sft.dataset`) and the training launcher."""
