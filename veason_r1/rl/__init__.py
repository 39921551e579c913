"""Stage 2, GRPO: RL data (`data`), the one config (`config`), the verl back-end (`verl_config` generates and checks
verl's config, `launch` checks the inputs and starts it, `verl_callbacks` runs inside verl), the local one-device
trainer (`local_trainer`, `checkpoint`) and verl's GRPO maths (`algos`)."""
