"""Package data the code reads instead of holding it inline: the Qwen2.5-VL chat template and the tiny tokenizer's
word list (`veason_r1.models.tiny`). pyproject ships everything under veason_r1/assets/."""

from __future__ import annotations

from importlib import resources


def asset_text(name: str) -> str:
    """The text of veason_r1/assets/<name> (UTF-8), exactly as stored."""
    return resources.files(__name__).joinpath(name).read_text(encoding="utf-8")
