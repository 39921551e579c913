"""Stage 2, GRPO: RL data (`data`), configs (`config`, `verl_config`), the local one-device trainer
(`local_trainer`, `checkpoint`) and the verl maths it uses (`algos`). Heavy imports stay inside the modules."""
