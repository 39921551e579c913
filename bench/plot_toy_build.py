"""Plot the toy checkpoints' build curves (bench/results/h200_toy_build.json) -> docs/img/toy_build_curves.png.

Usage: python bench/plot_toy_build.py [--json bench/results/h200_toy_build.json] [--out docs/img/toy_build_curves.png]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", default="bench/results/h200_toy_build.json")
    ap.add_argument("--out", default="docs/img/toy_build_curves.png")
    args = ap.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = json.loads(Path(args.json).read_text())
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for run in data["runs"]:
        for ax, key in zip(axes, ("sam2", "policy")):
            curve = run[key]["loss_curve"]
            held = run[key]["heldout"]
            score = (f"J {held['oracle_box_J']:.2f}" if key == "sam2"
                     else f"IoU {held['box_iou']:.2f}, kf {held['when']['exact']:.2f}")
            ax.plot([s for s, _ in curve], [v for _, v in curve], marker=".", label=f"run {run['run']} ({score})")
    axes[0].set_title("toy SAM2: training loss (SAM2's MultiStepMultiMasksAndIous)")
    axes[1].set_title("toy base policy: answer-token cross-entropy")
    for ax in axes:
        ax.set_xlabel("optimizer step")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle("toy checkpoint builds on one H200 (held-out scores in the legend)", fontsize=10)
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
