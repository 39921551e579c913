"""The demo's report: `report.md`, two plots (matplotlib, Agg backend) and an overlay GIF of one valid video.

- `plot_reward_terms`: the four reward terms and the overall reward (mean over rollouts) per GRPO step.
- `plot_jf_before_after`: J&F per ReVOS split (referring / reasoning / overall) before and after RL.
- `make_overlay_gif`: one valid expression, side by side: before RL, after RL (masks tinted, the policy's boxes on
  its keyframe, the keyframe framed and labelled) and the ground truth.
- `write_report` / `format_results_table`: the markdown report and the table the demo prints.
Everything here reads files the demo wrote; nothing is recomputed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from veason_r1.config import FRAMES, IMAGE_SIZE
from veason_r1.io_utils import atomic_write_bytes, atomic_write_text
from veason_r1.reward.scoring import TERMS  # the reward's own term order

TERM_RANGES = {"format": "[0, 2]", "keyframe": "[0, 1]", "spatial": "[0, 1]", "consistency": "[0, 1]",
               "overall": "[0, 5]"}
SPLITS = ("referring", "reasoning", "overall")
DISCLAIMER = ("Tiny random-init models measure the pipeline, not the method: these numbers show that every stage "
              "runs and connects, not how well Veason-R1 segments videos.")
TOY_STATEMENT = ("This is a toy world: synthetic coloured shapes and toy models the project trained itself "
                 "(veason_r1/assets/toy). It shows whether the recipe and the code move a policy end to end; it "
                 "says nothing about the paper's numbers.")


def _named(cfg: dict, section: str, key: str) -> str | None:
    """The model a demo config names (`policy.model`, `propagator.name`: models/config.py)."""
    return (cfg.get(section) or {}).get(key)


def statement(cfg: dict) -> str:
    """What the numbers of a run can and cannot mean, by the models it started from."""
    return TOY_STATEMENT if _named(cfg, "policy", "model") == "toy" else DISCLAIMER


def models_line(cfg: dict) -> str:
    policy = ("the shipped toy base policy (5.6M-parameter Qwen2.5-VL trained on synthetic grounding tasks; "
              "docs/toy_reproduction.md)" if _named(cfg, "policy", "model") == "toy" else
              "a ~1.3M-parameter Qwen2.5-VL with random initial weights")
    sam2 = ("the shipped toy SAM2 (1.5M parameters trained with SAM2's own training code)" if _named(cfg, "propagator", "name") == "toy"
            else "a ~1M-parameter random-init SAM2.1")
    return f"The policy starts from {policy}; SAM2 is {sam2}; the data is the synthetic shapes benchmark."


def heldout_rows(results: dict) -> list[list[str]]:
    h = results.get("heldout_reward")
    if not h:
        return []
    rows = []
    for term in (*TERMS, "overall"):
        a, b = h["sft"][term], h["grpo"][term]
        rows.append([term, TERM_RANGES[term], f"{a:.3f}", f"{b:.3f}", f"{b - a:+.3f}"])
    return rows


def heldout_line(results: dict) -> str:
    h = results.get("heldout_reward")
    if not h:
        return ""
    d = h["diff"]
    verdict = ("the interval excludes 0: GRPO improved the held-out reward" if d["lo"] > 0 else
               "the interval includes 0: no held-out improvement shown" if d["hi"] >= 0 else
               "the interval is below 0: GRPO lowered the held-out reward")
    return (f"Held-out GRPO reward on {h['expressions']} target expressions of the valid split (fixed 6-frame RL "
            f"grids, greedy answers, the four-term reward): SFT {d['before']:.3f} -> GRPO {d['after']:.3f}, "
            f"difference {d['diff']:+.3f}, paired bootstrap {100 * d['level']:.0f}% interval "
            f"[{d['lo']:+.3f}, {d['hi']:+.3f}] ({verdict}).")
MASK_TINT = (0, 235, 255)  # cyan: no synthetic shape has this colour, so masks stand out on every object


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save_figure(fig, path: str | os.PathLike) -> Path:
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


def plot_reward_terms(per_step: Sequence[dict], path: str | os.PathLike) -> Path:
    """Reward terms (format/keyframe/spatial/consistency) and the overall reward vs GRPO step, as a PNG."""
    if not per_step:
        raise ValueError("plot_reward_terms: no GRPO steps to plot")
    plt = _pyplot()
    steps = [r["step"] for r in per_step]
    fig, (ax_terms, ax_all) = plt.subplots(1, 2, figsize=(10, 3.8))
    for term, marker in zip(TERMS, "osD^"):
        ax_terms.plot(steps, [r[term] for r in per_step], marker=marker, label=f"{term} {TERM_RANGES[term]}")
    ax_terms.set_xlabel("GRPO step")
    ax_terms.set_ylabel("mean over rollouts")
    ax_terms.set_title("reward terms")
    ax_terms.set_ylim(-0.05, 2.05)
    ax_terms.legend(fontsize=8, loc="upper left")
    ax_terms.grid(alpha=0.3)
    ax_all.plot(steps, [r["overall"] for r in per_step], marker="o", color="black", label="overall [0, 5]")
    ax_all.set_xlabel("GRPO step")
    ax_all.set_title("overall reward (sum of the four terms)")
    ax_all.set_ylim(-0.1, 5.1)
    ax_all.legend(fontsize=8, loc="upper left")
    ax_all.grid(alpha=0.3)
    for ax in (ax_terms, ax_all):
        ax.set_xticks(steps)
    fig.suptitle("GRPO on tiny random-init models (pipeline check, not method results)", fontsize=10)
    fig.tight_layout()
    try:
        return _save_figure(fig, path)
    finally:
        plt.close(fig)


def plot_jf_before_after(before: dict, after: dict, path: str | os.PathLike) -> Path:
    """Grouped bars: J&F (x100) per split, before RL (the SFT model) and after RL (the last GRPO step)."""
    plt = _pyplot()
    x = np.arange(len(SPLITS))
    vals_b = [before[s]["JF"] or 0.0 for s in SPLITS]
    vals_a = [after[s]["JF"] or 0.0 for s in SPLITS]
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    width = 0.38
    bars_b = ax.bar(x - width / 2, vals_b, width, label="before RL (SFT model)", color="#9aa5b1")
    bars_a = ax.bar(x + width / 2, vals_a, width, label="after RL (last GRPO step)", color="#2b6cb0")
    for bars in (bars_b, bars_a):
        for b in bars:
            ax.annotate(f"{b.get_height():.1f}", (b.get_x() + b.get_width() / 2, b.get_height()),
                        ha="center", va="bottom", fontsize=8, xytext=(0, 2), textcoords="offset points")
    ax.set_xticks(x, [f"{s}\n({n} expr.)" if n is not None else s
                      for s, n in zip(SPLITS, _split_counts(before))])
    ax.set_ylabel("J&F (x100)")
    ax.set_ylim(0, max(10.0, 1.3 * max(vals_b + vals_a)))
    ax.set_title("valid split J&F before vs after RL\n(tiny random-init models: pipeline check, not method results)",
                 fontsize=10)
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    try:
        return _save_figure(fig, path)
    finally:
        plt.close(fig)


def _split_counts(result: dict) -> list[int | None]:
    n = result.get("num_expressions") or {}
    ref, rea = n.get("referring"), n.get("reasoning")
    total = None if ref is None or rea is None else ref + rea
    return [ref, rea, total]


# ---------------------------------------------------------------------------------------------------------------
# Overlay GIF


def _records(pred: Path) -> dict[str, dict]:
    from veason_r1.io_utils import read_jsonl

    return {r["key"]: r for r in read_jsonl(pred / "predictions.jsonl")}


def choose_expression(dataset: Any, records: dict[str, dict]):
    """The first referring/reasoning expression whose answer has boxes (else the first referring/reasoning one)."""
    candidates = [e for e in dataset.expressions if e.type_id in (0, 1) and e.key in records] or \
        [e for e in dataset.expressions if e.key in records]
    if not candidates:
        raise ValueError("make_overlay_gif: no predicted expression to show")
    with_boxes = [e for e in candidates if records[e.key]["boxes"]]
    return (with_boxes or candidates)[0]


def _read_mask(path: Path, shape: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    if not path.is_file():
        return np.zeros(shape, dtype=bool)
    with Image.open(path) as im:
        return np.asarray(im) > 0


def _panel_title(panel: np.ndarray, title: str, height: int = 18) -> np.ndarray:
    from PIL import Image, ImageDraw

    strip = Image.new("RGB", (panel.shape[1], height), (20, 20, 20))
    ImageDraw.Draw(strip).text((4, 3), title, fill=(255, 255, 255))
    return np.concatenate([np.asarray(strip), panel], axis=0)


def _caption(width: int, text: str, height: int = 18) -> np.ndarray:
    from PIL import Image, ImageDraw

    strip = Image.new("RGB", (width, height), (20, 20, 20))
    ImageDraw.Draw(strip).text((4, 3), text, fill=(255, 215, 0))
    return np.asarray(strip)


def _upscale(frame: np.ndarray, mask: np.ndarray | None, scale: float):
    """Small synthetic frames are enlarged for the GIF (bilinear frame, nearest mask) so labels stay readable."""
    if scale == 1:
        return frame, mask
    from PIL import Image

    h, w = frame.shape[:2]
    size = (round(w * scale), round(h * scale))
    frame = np.asarray(Image.fromarray(frame).resize(size, Image.BILINEAR))
    if mask is not None:
        mask = np.asarray(Image.fromarray(np.asarray(mask, dtype=np.uint8) * 255).resize(size, Image.NEAREST)) > 0
    return frame, mask


def make_overlay_gif(root: str | os.PathLike, split: str, pred: str | os.PathLike, path: str | os.PathLike,
                     before_pred: str | os.PathLike | None = None, fps: float = 4.0, max_frames: int = 60) -> dict:
    """An animated GIF of one valid expression: [before RL |] after RL | ground truth, every frame of the video.

    Model panels tint the predicted mask cyan, outline the policy's boxes in green on its keyframe and frame the
    keyframe in gold ("KEYFRAME"); the ground-truth panel tints the GT union mask in the same cyan. Returns what
    was shown.
    """
    from veason_r1.data.revos import ReVOSDataset
    from veason_r1.inference.overlay import OverlayStyle, draw_overlay, write_gif

    pred = Path(pred)
    dataset = ReVOSDataset(root, split, load_foreground=False)
    after = _records(pred)
    expr = choose_expression(dataset, after)
    panels: list[tuple[str, Path, dict]] = []
    if before_pred is not None and (Path(before_pred) / "predictions.jsonl").is_file():
        before = _records(Path(before_pred))
        if expr.key in before:
            panels.append(("before RL (SFT)", Path(before_pred), before[expr.key]))
    panels.append(("after RL (GRPO)", pred, after[expr.key]))
    source = dataset.frames(expr.video)
    height, width = source.size
    scale = 1.5 if max(height, width) <= 320 else 1.0
    names = source.names
    model_style = gt_style = OverlayStyle(max_side=None, mask_color=MASK_TINT, alpha=0.6)
    frames = []
    for t in range(len(source)):
        frame = source.get(t)
        row = []
        for title, folder, rec in panels:
            mask = _read_mask(folder / expr.video / expr.exp_id / f"{names[t]}.png", (height, width))
            f, m = _upscale(frame, mask, scale)
            is_key = t == int(rec["keyframe"])
            boxes = [[v * scale for v in b] for b in rec["boxes"]] if is_key else None
            row.append(_panel_title(draw_overlay(f, m, boxes, is_key, f"t={t}", model_style), title))
        f, m = _upscale(frame, dataset.gt_mask(expr, t), scale)
        row.append(_panel_title(draw_overlay(f, m, None, False, f"t={t}", gt_style), "ground truth"))
        image = np.concatenate(row, axis=1)
        kind = {0: "referring", 1: "reasoning", 2: "no target"}.get(expr.type_id, "expression")
        caption = _caption(image.shape[1], f'{kind}: "{expr.text}"  ({expr.video}, exp {expr.exp_id})')
        frames.append(np.concatenate([image, caption], axis=0))
    count = write_gif(path, frames, fps=fps, max_frames=max_frames)
    last = panels[-1][2]
    return {"video": expr.video, "exp_id": expr.exp_id, "expression": expr.text, "type_id": expr.type_id,
            "frames": count, "keyframe": int(last["keyframe"]), "boxes": last["boxes"],
            "panels": [p[0] for p in panels] + ["ground truth"]}


# ---------------------------------------------------------------------------------------------------------------
# Tables and the markdown report


def _f(v: float | None, digits: int = 1) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def _delta(a: float | None, b: float | None, digits: int = 1) -> str:
    return "-" if a is None or b is None else f"{b - a:+.{digits}f}"


def results_rows(results: dict) -> list[list[str]]:
    """[split, metric, before, after, delta] for J, F, J&F of each split (x100)."""
    rows = []
    for split in SPLITS:
        for metric, label in (("J", "J"), ("F", "F"), ("JF", "J&F")):
            b, a = results["before_rl"][split][metric], results["after_rl"][split][metric]
            rows.append([split, label, _f(b), _f(a), _delta(b, a)])
    return rows


def reward_rows(results: dict) -> list[list[str]]:
    r = results["reward"]
    return [[term, TERM_RANGES[term], _f(r["first"][term], 3), _f(r["last"][term], 3),
             _delta(r["first"][term], r["last"][term], 3)] for term in (*TERMS, "overall")]


def _plain_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(str(c).rjust(w) if i else str(c).ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def format_results_table(results: dict) -> str:
    """The table the demo prints: J/F/J&F per split before/after RL, and the reward terms first vs last steps."""
    r = results["reward"]
    w = r["window"]
    return "\n".join([
        "Valid split (ReVOS protocol, x100), before RL = SFT model, after RL = last GRPO step:",
        _plain_table(["split", "metric", "before RL", "after RL", "delta"], results_rows(results)),
        "",
        f"GRPO reward (mean over rollouts; first {w} vs last {w} of {r['steps']} steps):",
        _plain_table(["term", "range", "first", "last", "delta"], reward_rows(results)),
        "",
        heldout_line(results),
        "",
        statement(results.get("config", {})),
    ])


def _answers_line(results: dict) -> str:
    parts = []
    for key, label in (("before_rl", "before RL"), ("after_rl", "after RL")):
        a = results[key].get("answers")
        if not a:
            continue
        parts.append(f"{label}: {a['format_ok']} of {a['answers']} answers in the exact think/answer format, "
                     f"{a['with_boxes']} with a usable box, {a['keyframe_not_shown']} naming a timestamp that was "
                     f"not shown, {a['no_keyframe']} without a keyframe")
    return "; ".join(parts) or "no predictions"


def _base_choice(cfg: dict) -> str:
    if _named(cfg, "policy", "model") == "toy":
        return (f"SFT trains `{cfg['sft']['additional_target']}` in full beside the LoRA adapter: the toy base only "
                "ever answered JSON, so its output layer pushes every English word of the CoT down (LoRA alone "
                "stalled at loss 6.9).")
    return (f"The tiny model's random `lm_head` is multiplied by {cfg['lm_head_scale']:g}: LoRA leaves `lm_head` and "
            "the final norm frozen, and at the stock random init even a perfectly aligned hidden state gets a "
            "softmax of only ~0.14 over the 3k vocabulary, so SFT would stall near loss 2.5.")


def demo_results(paths, config: dict) -> dict[str, Any]:
    """The demo's results from its files: J/F/J&F per split before and after RL (the evaluator's results.json),
    what the policy wrote, the GRPO reward terms (first vs last third of the steps, and per step) and the held-out
    reward block. `paths` is a `veason_r1.demo.Paths`; `config` the demo's settings as a mapping."""
    from veason_r1.io_utils import read_jsonl
    from veason_r1.stages import answer_shares

    out: dict[str, Any] = {}
    for key, pred in (("before_rl", paths.pred_sft), ("after_rl", paths.pred_rl)):
        summary = json.loads((pred / "results.json").read_text())
        out[key] = {split: {m: summary[split][m] for m in ("J", "F", "JF")}
                    for split in ("referring", "reasoning", "overall")}
        out[key]["num_expressions"] = summary["num_expressions"]
        out[key]["no_target"] = {m: summary["no_target"][m] for m in ("J", "F", "JF")}
        out[key]["answers"] = answer_shares(pred)
    per_step = [m for m in read_jsonl(paths.rl / "metrics.jsonl") if "reward/overall" in m]
    per_step = sorted({m["step"]: m for m in per_step}.values(), key=lambda m: m["step"])
    terms = (*TERMS, "overall")
    window = max(1, len(per_step) // 3)

    def mean_of(rows: list[dict]) -> dict[str, float]:
        return {t: sum(r[f"reward/{t}"] for r in rows) / len(rows) for t in terms}

    out["config"] = config
    held = json.loads(paths.heldout.read_text())
    out["heldout_reward"] = {"expressions": held["expressions"], "sft": held["sft"], "grpo": held["grpo"],
                             "diff": held["diffs"]["grpo"]}
    out["reward"] = {
        "steps": len(per_step), "window": window,
        "first": mean_of(per_step[:window]), "last": mean_of(per_step[-window:]),
        "per_step": [{"step": r["step"], **{t: r[f"reward/{t}"] for t in terms},
                      "response_length": r.get("response_length/mean")} for r in per_step],
    }
    return out


def write_report(path: str | os.PathLike, ctx: dict) -> Path:
    """report.md: what ran (stages and times), the results, the plots and GIF, and what the numbers mean."""
    path = Path(path)
    cfg, results, stages = ctx["config"], ctx["results"], ctx["stages"]
    sft, rl = cfg["sft"], cfg["rl"]
    r = results["reward"]
    w = r["window"]
    stage_rows = []
    for s in stages:
        if s["status"] == "ran":
            took, status = f"{s['seconds']:.1f}", "ran"
        elif s["status"] == "reused":
            took = "0.0" + (f" (took {s['first_seconds']:.1f} when computed)" if s.get("first_seconds") else "")
            status = "reused (done earlier)"
        else:
            took, status = "-", s["status"]
        stage_rows.append([f"`{s['name']}`", s["description"], status, took, s.get("summary", "")])
    ran_total = sum(s["seconds"] for s in stages)
    overlay = results.get("overlay") or {}
    n_before = results["before_rl"].get("num_expressions", {})
    text = f"""# Veason-R1 demo report

> **{statement(cfg)}** {models_line(cfg)} SFT runs {sft['max_steps']} LoRA steps and GRPO
> {rl['trainer']['total_training_steps']} steps on CPU. Never compare these numbers with the paper's (ReVOS J&F 59.9 for the 3B model); they are not Veason-R1
> results.

## What ran

The whole method, offline, in one process: synthetic benchmark -> stratified sampling -> seed CoT (synthetic
teacher) -> LoRA SFT of the base policy (LLaMA-Factory) -> GRPO (local trainer, four-term reward with SAM2) ->
prediction (policy, then SAM2 propagation) -> ReVOS evaluation, for the model before RL and after RL.

{_md_table(["stage", "what", "status", "seconds (this run)", "result"], stage_rows)}

Total wall time of this run: **{ctx['total_seconds']:.1f} s** (stages {ran_total:.1f} s, the rest is start-up and
imports); torch threads: {cfg['threads'] if cfg['threads'] is not None else 'unchanged'}. A rerun of
`veason-r1 demo --out {Path(cfg['out']).as_posix()}` reuses every finished stage.

## Results

Valid split of the synthetic benchmark ({n_before.get('referring', '?')} referring and
{n_before.get('reasoning', '?')} reasoning expressions), ReVOS protocol, x100. *Before RL* is the SFT model, *after
RL* the model after the last GRPO step; both are predicted and scored by the same code (`veason-r1 predict` +
`veason-r1 eval` functions, {cfg['image_size']} px frames, {FRAMES.eval_frames} linspace frames, greedy decoding,
the demo's SAM2).

{_md_table(["split", "metric", "before RL", "after RL", "delta"], results_rows(results))}

GRPO reward on the training pool (mean over the {rl['data']['train_batch_size']} x {rl['rollout']['n']} rollouts of a step;
first {w} vs last {w} of {r['steps']} steps):

{_md_table(["term", "range", "first steps", "last steps", "delta"], reward_rows(results))}

{heldout_line(results)}

{_md_table(["term", "range", "SFT", "GRPO", "delta"], heldout_rows(results)) if heldout_rows(results) else ""}

![reward terms over GRPO steps](reward_terms.png)

![J&F per split before and after RL](jf_before_after.png)

![overlay of one valid video](overlay.gif)

`overlay.gif`: {overlay.get('panels') and ' | '.join(overlay['panels']) or ''} for the
{ {0: 'referring', 1: 'reasoning', 2: 'no-target'}.get(overlay.get('type_id'), '') } expression
"{overlay.get('expression', '')}" ({overlay.get('video', '')}, exp {overlay.get('exp_id', '')}): predicted masks in
cyan, the policy's boxes in green on the keyframe it chose, that keyframe framed in gold and labelled KEYFRAME, the
ground-truth mask in the same cyan.

## What the numbers mean

- **J** (region similarity) is the mean IoU of predicted and ground-truth masks over every frame of a video; **F**
  (contour accuracy) the boundary F-measure; **J&F** their mean; all x100, averaged over expressions. Referring =
  type 0 expressions ("the red circle"), reasoning = type 1 ("the object that enters the frame last"), overall = the
  plain mean of the two (no-target expressions are scored apart, as in ReVOS). docs/metrics.md / docs/evaluation.md.
- **Reward terms** (docs/method.md §7): format in [0, 2] (the `<think>...</think><answer>...</answer>` layout plus
  a well-formed answer JSON), keyframe in [0, 1] (GT area at the chosen frame / the largest GT area among the shown
  frames), spatial in [0, 1] (Hungarian-matched box IoU on the keyframe), consistency in [0, 1] (SAM2 propagates
  the matched boxes over the shown frames; mask IoU with the GT); overall = their sum in [0, 5].
- The format term shows whether SFT taught the policy the answer layout (and whether it survives GRPO); keyframe
  and spatial whether its answers carry signal; consistency and J&F measure the policy's boxes through the
  demo's SAM2 (with a random-init SAM2 they measure mostly the random SAM2).
- What the policy wrote on the valid split ({_answers_line(results)}). Answers are parsed by the robust
  inference parser (docs/inference.md): a timestamp that was not shown snaps to the nearest shown frame, and an
  answer without a valid box gives empty masks. The training reward parses strictly (docs/method.md §7): there a
  timestamp that is not one of the shown frames scores 0 on keyframe, spatial and consistency.
- Why J&F is not zero even when the masks are noise: a frame where the target is absent and the prediction is
  empty scores J = F = 1, and an answer without a valid box gives empty masks on every frame. Expressions whose
  target leaves the frame (reasoning ones such as "the object that leaves the frame first") therefore collect
  points for saying nothing.
- The held-out reward compares the SFT and the GRPO model on the same expressions (paired): it is the number that
  says whether RL improved the policy; the training-reward curve also moves with the draw of each step's prompts.
  A few CPU steps on toy models are a small experiment: read the interval, not the point estimate. What the demo
  always proves: data, CoT, SFT, RL, prediction and evaluation run end to end, offline, and write the files the
  real pipeline writes (docs/demo.md lists them).

## Demo-only choices (not the method's recipe)

- Policy frames are {cfg['image_size']} px (16 visual tokens per frame) instead of {IMAGE_SIZE} px (400 tokens).
- {_base_choice(cfg)}
- The synthetic teacher writes its brief style ({'on' if cfg.get('cot_brief') else 'off'}): the same three steps about
  the targets only, ~280 characters instead of ~800, so a toy model learns the layout in a few CPU steps.
- SFT: {sft['max_steps']} LoRA steps, rank {sft['lora_rank']}, learning rate {sft['learning_rate']:g}, batch
  {sft['per_device_train_batch_size']} (the 3B recipe: one epoch of 10k samples, rank 16, 1e-4, batch 16). GRPO:
  {rl['trainer']['total_training_steps']} steps of {rl['data']['train_batch_size']} prompts x {rl['rollout']['n']}
  rollouts at temperature {rl['rollout']['temperature']:g}, learning rate {rl['actor']['lr']:g}, responses up to
  {rl['data']['max_response_length']} tokens, no periodic validation; "after RL" is the last step (the real run keeps
  the best validated checkpoint). The GRPO settings are `configs/grpo_demo.yaml` (`--set rl.<key>=...`).
- SAM2 is {'the toy checkpoint' if cfg.get('sam2') == 'toy' else 'random-init'} (the real reward and evaluation load
  SAM2 Hiera-L checkpoints).

## Settings

```json
{json.dumps(cfg, indent=1)}
```
"""
    atomic_write_text(path, text)
    return path


__all__ = [
    "DISCLAIMER",
    "TOY_STATEMENT",
    "choose_expression",
    "demo_results",
    "format_results_table",
    "make_overlay_gif",
    "plot_jf_before_after",
    "plot_reward_terms",
    "results_rows",
    "reward_rows",
    "write_report",
]
