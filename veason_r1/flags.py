"""argparse value types that refuse what cannot be meant: `--limit -1`, `--batch-size 0`, `--image-size 100`.

Why: a flag that is out of range must stop the command at start-up with argparse's one-line usage error (exit 2),
not after hours of work or, worse, by silently doing something else (`--limit -1` used to predict 3 of 4).
"""

from __future__ import annotations

import argparse
import math


def _number(text: str, kind: type, what: str):
    try:
        value = kind(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """An integer >= 1 (counts, sizes, batch sizes)."""
    value = _number(text, int, "a positive integer")
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def nonnegative_int(text: str) -> int:
    """An integer >= 0 (seeds, "0 = off" limits)."""
    value = _number(text, int, "an integer >= 0")
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value


def positive_float(text: str) -> float:
    value = _number(text, float, "a positive number")
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def nonnegative_float(text: str) -> float:
    value = _number(text, float, "a number >= 0")
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return value


def policy_image_size(text: str) -> int:
    """The policy's square frame side: a positive multiple of some family's patch x merge (the family table; the
    loaded policy's own family checks it exactly)."""
    from veason_r1.models.families import FAMILIES

    value = positive_int(text)
    if all(row.image_size_problem(value) for row in FAMILIES.values()):
        factors = sorted({row.factor for row in FAMILIES.values()})
        raise argparse.ArgumentTypeError(
            f"expected a positive multiple of {' or '.join(map(str, factors))} (the policy family's patch x merge, "
            f"e.g. 560 or 112 for Qwen2.5-VL, 640 for Qwen3-VL), got {text!r}")
    return value


__all__ = ["nonnegative_float", "nonnegative_int", "policy_image_size", "positive_float", "positive_int"]
