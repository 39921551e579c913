"""Plot toy-build learning curves from make-toy output folders (their curve.json + manifest.json).

Usage: python bench/plot_toy_curves.py --sam2 DIR [DIR ...] --policy DIR [DIR ...] --out docs/img/toy_curves.png

Panels: the toy SAM2's training loss, the toy policy's training loss, and the policy's held-out curve (greedy
present-target box IoU on `ground` / `ground_at` and exact keyframe on `when`, written every `eval_every` steps).
The legend carries each build's final held-out scores from its manifest.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def _read(folder: str) -> tuple[list[dict], dict]:
    folder = Path(folder)
    curve = json.loads((folder / "curve.json").read_text()) if (folder / "curve.json").is_file() else []
    manifest = json.loads((folder / "manifest.json").read_text()) if (folder / "manifest.json").is_file() else {}
    return curve, manifest


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sam2", nargs="*", default=[], help="make-toy sam2 output folders")
    ap.add_argument("--policy", nargs="*", default=[], help="make-toy policy output folders")
    ap.add_argument("--label", nargs="*", default=None, help="one label per folder, sam2 folders first")
    ap.add_argument("--out", default="docs/img/toy_curves.png")
    args = ap.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = iter(args.label or [])
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for folder in args.sam2:
        curve, m = _read(folder)
        held = m.get("heldout", {})
        name = next(labels, Path(folder).name)
        pts = [(p["step"], p["loss"]) for p in curve if "loss" in p]
        axes[0].plot(*zip(*pts), marker=".", ms=3,
                     label=f"{name} (J {held.get('oracle_box_J', float('nan')):.3f})" if pts else name)
    for folder in args.policy:
        curve, m = _read(folder)
        held = m.get("heldout", {})
        name = next(labels, Path(folder).name)
        pts = [(p["step"], p["loss"]) for p in curve if "loss" in p]
        if pts:
            axes[1].plot(*zip(*pts), marker=".", ms=3, label=name)
        evals = [p for p in curve if "ground_iou_present" in p]
        for key, style in (("ground_iou_present", "-"), ("ground_at_iou_present", "--"), ("when_exact", ":")):
            if evals:
                axes[2].plot([p["step"] for p in evals], [p[key] for p in evals], style, marker=".",
                             label=f"{name}: {key}")
        if held:
            axes[2].set_title(f"held-out (final, {held.get('ground', {}).get('n', '?')}/task): ground IoU "
                              f"{held.get('ground', {}).get('box_iou_present', float('nan')):.3f}", fontsize=9)
    axes[0].set_title("toy SAM2: training loss (SAM2's MultiStepMultiMasksAndIous)", fontsize=9)
    axes[1].set_title("toy policy: answer-token loss (running mean)", fontsize=9)
    axes[2].set_ylabel("greedy held-out score")
    for ax in axes:
        ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
