"""Training-data construction (docs/method.md §3 and §6): the stratified expression pool and the seed CoT traces.

- `stratified`: the 10k pool, (referring|reasoning) x (single|multi) strata with marginal-ratio quotas.
- `cot_request`: what the teacher VLM sees (boxed frames, timestamps, instruction, one worked example).
- `teachers`: an OpenAI-compatible client with retries, and the offline synthetic teacher.
- `cot`: the resumable driver that writes the authors' record format.
"""
