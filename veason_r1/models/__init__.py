"""Policy models: the Qwen2.5-VL loader and generation engines (`policy`), tiny test models (`tiny`).

Submodules import torch/transformers lazily, so importing this package is cheap.
"""
