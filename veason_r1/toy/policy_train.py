"""Train the toy base policy ("toy instruct") from scratch on the synthetic instruct tasks, and measure it.

The model is the Qwen2.5-VL architecture at toy sizes (`models.toy.TOY_POLICY_CONFIG`), written by the same
builder as the tiny test model (`models.tiny.make_tiny_qwen`), so it is an ordinary Qwen2.5-VL folder that
LLaMA-Factory, the local GRPO trainer and inference load as they load the real checkpoint. Training is plain
next-token cross-entropy on the answer tokens; every batch is drawn fresh from `grounding.SampleStream` (no sample
repeats), so held-out scores measure grounding, not memory.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from veason_r1.io_utils import atomic_write_json
from veason_r1.toy.grounding import TASKS, GroundingConfig, SampleStream, ToySample, messages
from veason_r1.toy.schedule import StepBudget, TrainState, cosine_lr


@dataclass
class ToyPolicyTrainConfig:
    """Everything that changes the trained weights (the manifest records it)."""

    steps: int = 20000
    batch_size: int = 128
    lr: float = 2e-3
    min_lr_ratio: float = 0.05
    warmup_steps: int = 300
    weight_decay: float = 0.05
    grad_clip: float = 1.0
    seed: int = 0  # weights
    data_seed: int = 3000  # training stream; worker w draws videos data_seed-stream indices w, w + workers, ...
    heldout_seed: int = 4000
    heldout_samples: int = 300  # per task
    workers: int = 8
    checkpoint_every: int = 1000
    # every N steps: greedy held-out scores on `eval_samples` per task (the build's learning curve); 0 = off
    eval_every: int = 0
    eval_samples: int = 48
    # > 0: box coordinates are trained against a Gaussian (this std, in pixels) over the integer tokens around
    # the true value instead of the exact token (veason_r1/toy/coord_loss.py); 0: the plain next-token loss
    coord_sigma: float = 1.0
    # the RoPE base of the model built (None: models.toy.TOY_POLICY_CONFIG's); for ablations of the position signal
    rope_theta: float | None = None
    # start from this toy policy folder's weights instead of random init (same shapes; the config, e.g. the RoPE
    # base, is this build's): continuing a build with new settings, or from weights carried back from a GPU
    init_from: str | None = None
    # fewer absent-target samples (their "0" token was where greedy coordinates collapsed) and more samples per
    # rendered video (rendering was two thirds of the loader's time)
    tasks: GroundingConfig = field(default_factory=lambda: GroundingConfig(absent_keep=0.35, samples_per_video=24))


# ----------------------------------------------------------------------------------------------------------------
# encoding


def prompt_text(processor, sample: ToySample) -> str:
    return processor.apply_chat_template(messages(sample), tokenize=False, add_generation_prompt=True)


def patchify(images, image_processor):
    """(N, S, S, 3) uint8 square frames -> Qwen2.5-VL `pixel_values` (N * (S/14)^2 rows of 3 * 2 * 14 * 14), on the
    frames' device, exactly as the image processor lays them out (square frames need no resize: the patches are a
    reshape). The build ships uint8 frames from its loader and runs this on the GPU: a quarter of the bytes and no
    per-sample float work in the loader processes."""
    import torch

    ip = image_processor
    patch, merge, temporal = ip.patch_size, ip.merge_size, ip.temporal_patch_size
    n, side = images.shape[0], images.shape[1] // patch
    mean = torch.tensor(ip.image_mean, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(ip.image_std, device=images.device).view(1, 3, 1, 1)
    x = images.permute(0, 3, 1, 2).float()
    x = (x * ip.rescale_factor - mean) / std
    x = x.unsqueeze(1).expand(n, temporal, 3, side * patch, side * patch)
    x = x.reshape(n, 1, temporal, 3, side // merge, merge, patch, side // merge, merge, patch)
    return x.permute(0, 1, 4, 7, 5, 8, 3, 2, 6, 9).reshape(n * side * side, 3 * temporal * patch * patch)


def encode(processor, sample: ToySample, image_size: int, pixels: bool = True) -> dict[str, Any]:
    """input_ids / labels (answer + <|im_end|> supervised) / mm_token_type_ids / pixel_values / image_grid_thw for
    one sample, exactly as the Qwen2.5-VL processor builds them (a test checks equality) but ~10x faster: each image
    slot expands to its (S/28)^2 pad tokens in the text, and the pixels are `patchify`'s reshape.

    `mm_token_type_ids` (1 on image tokens) is what lets the model build its 3D M-RoPE positions; without it
    transformers falls back to 1D positions, i.e. another model than the one every later stage runs.
    `pixels=False` returns the uint8 frames as `images` instead of `pixel_values` (patchified later, on the GPU)."""
    import torch

    ip, tok = processor.image_processor, processor.tokenizer
    patch, merge = ip.patch_size, ip.merge_size
    side = image_size // patch
    images = torch.from_numpy(np.stack(sample.images))
    n = images.shape[0]
    pad = processor.image_token
    text = prompt_text(processor, sample).replace(pad, pad * (side * side // (merge * merge)))
    prompt_ids = torch.tensor(tok(text, add_special_tokens=False)["input_ids"])
    answer = torch.tensor(tok(sample.answer + "<|im_end|>", add_special_tokens=False)["input_ids"])
    input_ids = torch.cat([prompt_ids, answer])
    out = {
        "input_ids": input_ids,
        "labels": torch.cat([torch.full_like(prompt_ids, -100), answer]),
        "mm_token_type_ids": (input_ids == processor.image_token_id).long(),
        "image_grid_thw": torch.tensor([[1, side, side]] * n),
    }
    if pixels:
        out["pixel_values"] = patchify(images, ip)
    else:
        out["images"] = images
    return out


def encode_with_processor(processor, sample: ToySample, image_size: int) -> dict[str, Any]:
    """The reference for `encode`: the processor's own call (used by the equality test)."""
    import torch
    from PIL import Image

    from veason_r1.models.policy import pixel_bounds

    batch = processor(text=[prompt_text(processor, sample)], images=[Image.fromarray(i) for i in sample.images],
                      return_tensors="pt", **pixel_bounds(image_size))
    answer = processor.tokenizer(sample.answer + "<|im_end|>", add_special_tokens=False,
                                 return_tensors="pt")["input_ids"][0]
    prompt_ids = batch["input_ids"][0]
    return {"input_ids": torch.cat([prompt_ids, answer]),
            "labels": torch.cat([torch.full_like(prompt_ids, -100), answer]),
            "mm_token_type_ids": torch.cat([batch["mm_token_type_ids"][0], torch.zeros_like(answer)]),
            "pixel_values": batch["pixel_values"], "image_grid_thw": batch["image_grid_thw"]}


def collate(items: list[dict], pad_id: int) -> dict[str, Any]:
    """Right-padded batch of `encode` outputs (pixels as `pixel_values` or as uint8 `images`)."""
    import torch

    n = max(len(x["input_ids"]) for x in items)
    ids = torch.full((len(items), n), pad_id, dtype=torch.long)
    labels = torch.full((len(items), n), -100, dtype=torch.long)
    mask = torch.zeros((len(items), n), dtype=torch.long)
    types = torch.zeros((len(items), n), dtype=torch.long)
    for i, x in enumerate(items):
        k = len(x["input_ids"])
        ids[i, :k], labels[i, :k], mask[i, :k] = x["input_ids"], x["labels"], 1
        types[i, :k] = x["mm_token_type_ids"]
    pixels = "pixel_values" if "pixel_values" in items[0] else "images"
    return {"input_ids": ids, "labels": labels, "attention_mask": mask, "mm_token_type_ids": types,
            pixels: torch.cat([x[pixels] for x in items]),
            "image_grid_thw": torch.cat([x["image_grid_thw"] for x in items])}


def to_model_inputs(batch: dict[str, Any], image_processor, device: str) -> dict[str, Any]:
    """A collated batch on `device`, uint8 `images` patchified there."""
    out = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
    if "images" in out:
        out["pixel_values"] = patchify(out.pop("images"), image_processor)
    return out


def _stream_class():
    import torch

    class Stream(_Stream, torch.utils.data.IterableDataset):
        pass

    return Stream


VIDEOS_PER_BATCH_SLOT = 64  # video indices reserved for one batch (a batch of 128 at 24 samples per video uses ~7)


def batch_samples(cfg: ToyPolicyTrainConfig, step: int) -> list[ToySample]:
    """The samples of optimizer step `step`: a function of (data_seed, step) alone.

    Why: the build must give the same weights whether it ran through, resumed after a crash, or used another number
    of loader processes. Step k's batch comes from its own seeded stream over its own slot of video indices, so a
    resumed run simply starts at the step it had reached."""
    stream = SampleStream(cfg.tasks, seed=cfg.data_seed, first_index=step * VIDEOS_PER_BATCH_SLOT)
    stream.rng.seed(cfg.data_seed * 10_000_019 + step)
    return [next(stream) for _ in range(cfg.batch_size)]


class _Stream:
    """torch IterableDataset of collated batches from `start_step` on: worker w of n builds batches start + w,
    start + w + n, ... and the DataLoader hands them out in step order."""

    def __init__(self, model_dir: str, cfg: ToyPolicyTrainConfig, start_step: int = 0):
        self.model_dir, self.cfg, self.start_step = model_dir, cfg, start_step

    def __iter__(self):
        import torch

        from veason_r1.models.policy import load_processor

        info = torch.utils.data.get_worker_info()
        wid, nw = (info.id, info.num_workers) if info else (0, 1)
        torch.set_num_threads(1)
        processor = load_processor(self.model_dir)
        pad_id = processor.tokenizer.pad_token_id
        step = self.start_step + wid
        while True:
            items = [encode(processor, s, self.cfg.tasks.image_size, pixels=False)
                     for s in batch_samples(self.cfg, step)]
            yield collate(items, pad_id)
            step += nw


# ----------------------------------------------------------------------------------------------------------------
# training


def init_model_dir(out: Path, seed: int, rope_theta: float | None = None) -> Path:
    """A fresh toy-size Qwen2.5-VL folder (random init, offline tokenizer) to train from."""
    from veason_r1.models.tiny import make_tiny_qwen
    from veason_r1.models.toy import TOY_POLICY_CONFIG

    config = TOY_POLICY_CONFIG if rope_theta is None else dataclasses.replace(TOY_POLICY_CONFIG, rope_theta=rope_theta)
    return make_tiny_qwen(out, seed=seed, config=config)


def train(work: Path, cfg: ToyPolicyTrainConfig, device: str = "cpu", progress: bool = True,
          time_budget_s: float | None = None) -> dict[str, Any]:
    """Train from `work/init` (made on first call), resuming from `work/train_state.pt`; returns a summary."""

    import torch
    from tqdm import tqdm
    from transformers import Qwen2_5_VLForConditionalGeneration

    from veason_r1.models.fast_qwen import fast_vision_attention
    from veason_r1.models.policy import load_processor

    work = Path(work)
    init = work / "init"
    if not (init / "config.json").is_file():
        init_model_dir(init, cfg.seed, cfg.rope_theta)
        if cfg.init_from:
            _take_weights(init, cfg.init_from)
    processor = load_processor(init)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(init, dtype=torch.float32,
                                                               attn_implementation="sdpa").to(device)
    init_weights = _weights_sha256(init) if cfg.init_from else None
    if device.startswith("cuda"):
        fast_vision_attention(model)
    model.train()
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.98))
    state = TrainState(work / "train_state.pt", config=json.loads(json.dumps(asdict(cfg))))
    if state.load(model, opt, device) and state.total:
        cfg = dataclasses.replace(cfg, steps=int(state.total))
    loader = torch.utils.data.DataLoader(
        _stream_class()(str(init), cfg, start_step=state.step), batch_size=None, num_workers=cfg.workers,
        persistent_workers=cfg.workers > 0, prefetch_factor=4 if cfg.workers > 0 else None,
    )
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device.startswith("cuda") else None
    loss_of = _loss_function(processor, cfg)

    curve_samples = heldout_samples(dataclasses.replace(cfg, heldout_samples=cfg.eval_samples)) if cfg.eval_every else {}
    budget = StepBudget(cfg.steps, time_budget_s, start_step=state.step)
    t0, running = time.time(), None
    bar = tqdm(total=cfg.steps, initial=state.step, desc="toy policy", disable=not progress)
    # the loader is endless (one batch per step from the resumed step on); a finished run draws none
    for batch in itertools.islice(loader, max(0, budget.total - state.step)):
        if state.step >= budget.total:  # the budget may shorten the run as it measures the speed
            break
        lr = cosine_lr(state.step, budget.update(state.step), cfg.lr, cfg.warmup_steps, cfg.min_lr_ratio)
        bar.total = budget.total
        for group in opt.param_groups:
            group["lr"] = lr
        batch = to_model_inputs(batch, processor.image_processor, device)
        with amp or torch.autocast("cpu", enabled=False):
            loss = loss_of(model, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        state.step += 1
        value = float(loss.detach())
        running = value if running is None else 0.98 * running + 0.02 * value
        bar.update(1)
        if state.step % 25 == 0:
            state.log(loss=round(running, 4), s=round(time.time() - t0, 1))
            bar.set_postfix(loss=f"{running:.3f}")
        if cfg.eval_every and state.step % cfg.eval_every == 0:
            state.log(**_curve_point(model, processor, curve_samples, device, cfg.tasks.image_size))
            model.train()
        if state.step % cfg.checkpoint_every == 0:
            state.save(model, opt, budget.total)
    bar.close()
    if cfg.eval_every and (not state.history or "ground_iou_present" not in state.history[-1]):
        state.log(**_curve_point(model, processor, curve_samples, device, cfg.tasks.image_size))
    state.save(model, opt, budget.total)
    out = work / "model"
    export_model(model, init, out)
    return {"steps": state.step, "requested_steps": cfg.steps, "seconds": round(time.time() - t0, 1),
            "history": state.history, "init_weights": init_weights,
            "params": sum(p.numel() for p in model.parameters())}


def _take_weights(init: Path, folder: str) -> None:
    """Replace the fresh folder's random weights by `folder`'s safetensors (same architecture; transformers maps the
    keys when the folder is loaded)."""
    files = sorted(Path(folder).glob("*.safetensors"))
    if not files:
        from veason_r1.errors import MissingInput

        raise MissingInput(f"init_from {folder}", "no *.safetensors weights in this folder")
    for f in init.glob("*.safetensors"):
        f.unlink()
    for f in files:
        shutil.copyfile(f, init / f.name)


def _weights_sha256(folder: Path) -> dict[str, str]:
    """sha256 of each safetensors file, as the manifest's `weights` records them."""
    from veason_r1.io_utils import file_identity

    return {f.name: file_identity(f)["sha256"] for f in sorted(Path(folder).glob("*.safetensors"))}


def _curve_point(model, processor, samples, device: str, image_size: int) -> dict[str, float]:
    """One point of the held-out learning curve (greedy, fp32 weights as trained; the first samples of the held-out
    set, so points are comparable along a run)."""
    model.eval()
    r = evaluate_model(model, processor, samples, device=device, image_size=image_size)
    return {"ground_iou_present": round(r["ground"]["box_iou_present"], 4),
            "ground_at_iou_present": round(r["ground_at"]["box_iou_present"], 4),
            "when_exact": round(r["when"]["exact"], 4), "parse_rate": round(r["parse_rate"], 4)}


def _loss_function(processor, cfg: ToyPolicyTrainConfig):
    """The model's own loss, or with `coord_sigma` > 0 the soft coordinate loss (same token mean)."""
    if cfg.coord_sigma <= 0:
        return lambda model, batch: model(**batch).loss
    from veason_r1.toy.coord_loss import number_token_ids, soft_coordinate_loss

    tok = processor.tokenizer
    numbers = number_token_ids(tok, cfg.tasks.image_size)
    (open_id,) = tok(" [[", add_special_tokens=False)["input_ids"]

    def loss(model, batch):
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
        return soft_coordinate_loss(logits, batch["labels"], numbers, open_id, cfg.coord_sigma)

    return loss


def export_model(model, init: Path, out: Path) -> Path:
    """`init`'s folder (processor, tokenizer, configs) with the trained weights saved in bf16."""
    import torch

    tmp = out.with_name(f".{out.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    shutil.copytree(init, tmp)
    for f in tmp.glob("*.safetensors"):
        f.unlink()
    weights = tmp / ".weights"
    model.to(torch.bfloat16).save_pretrained(weights)
    model.to(torch.float32)
    for f in weights.glob("*.safetensors"):
        f.replace(tmp / f.name)
    shutil.rmtree(weights)
    # the weights are stored in bf16 (small); config.json keeps float32, the dtype every stage loads it in (CPU
    # SFT with LLaMA-Factory mixes dtypes otherwise)
    config = json.loads((tmp / "config.json").read_text())
    config["torch_dtype"] = config["dtype"] = "float32"
    (tmp / "config.json").write_text(json.dumps(config, indent=2))
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return out


def export_model_folder(src: Path, out: Path) -> Path:
    """Copy a trained model folder's files into `out` (which may hold other files, e.g. the manifest)."""
    out.mkdir(parents=True, exist_ok=True)
    for f in Path(src).iterdir():
        if f.is_file():
            shutil.copyfile(f, out / f.name)
    return out


# ----------------------------------------------------------------------------------------------------------------
# measurement


def heldout_samples(cfg: ToyPolicyTrainConfig) -> dict[str, list[ToySample]]:
    """`heldout_samples` per task from videos of a seed the training stream never uses."""
    out: dict[str, list[ToySample]] = {t: [] for t in TASKS}
    stream = SampleStream(cfg.tasks, seed=cfg.heldout_seed)
    while any(len(v) < cfg.heldout_samples for v in out.values()):
        s = next(stream)
        if len(out[s.task]) < cfg.heldout_samples:
            out[s.task].append(s)
    return out


def _boxes(text: str):
    try:
        obj = json.loads(text.strip())
    except (ValueError, RecursionError):
        return None
    boxes = obj.get("bbox_2d_list") if isinstance(obj, dict) else None
    arr = np.asarray(boxes, dtype=object) if isinstance(boxes, list) else None
    if arr is None or arr.ndim != 2 or arr.shape[1] != 4 or not all(isinstance(v, (int, float)) for v in arr.flat):
        return None
    return arr.astype(np.float64)


def evaluate(model_dir: Path, samples: dict[str, list[ToySample]], device: str = "cpu", batch_size: int = 32,
             image_size: int = 112, progress: bool = False) -> dict[str, Any]:
    """Greedy answers on held-out samples: parse rate, box IoU (Hungarian, the spatial reward's rule) on the
    grounding tasks, exact keyframe and keyframe-reward on `when`, and the constant-mean-box baseline."""
    from veason_r1.models.policy import load_policy

    policy = load_policy(model_dir, device=device, dtype="float32")
    return evaluate_model(policy.model, policy.processor, samples, device, batch_size, image_size, progress)


def evaluate_model(model, processor, samples: dict[str, list[ToySample]], device: str = "cpu", batch_size: int = 32,
                   image_size: int = 112, progress: bool = False) -> dict[str, Any]:
    """`evaluate` on a model in memory (the build's periodic held-out curve uses it between optimizer steps)."""
    import torch
    from tqdm import tqdm

    from veason_r1.models.policy import pixel_bounds
    from veason_r1.reward.terms import spatial_reward

    tok = processor.tokenizer
    stop = [tok.convert_tokens_to_ids("<|im_end|>"), tok.convert_tokens_to_ids("<|endoftext|>")]
    result: dict[str, Any] = {}
    for task, items in samples.items():
        answers = []
        for i in tqdm(range(0, len(items), batch_size), desc=f"held-out {task}", disable=not progress):
            chunk = items[i:i + batch_size]
            from PIL import Image

            batch = processor(text=[prompt_text(processor, s) for s in chunk],
                              images=[Image.fromarray(im) for s in chunk for im in s.images], padding=True,
                              padding_side="left", return_tensors="pt", **pixel_bounds(image_size)).to(device)
            with torch.inference_mode():
                seqs = model.generate(**batch, max_new_tokens=64, do_sample=False, eos_token_id=stop,
                                      pad_token_id=tok.pad_token_id, temperature=None, top_p=None, top_k=None)
            answers += tok.batch_decode(seqs[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
        if task == "when":
            picks = []
            for s, a in zip(items, answers):
                try:
                    obj = json.loads(a.strip())
                    picks.append(int(obj["keyframe_timestamp"]) if isinstance(obj, dict) else None)
                except (ValueError, KeyError, TypeError):
                    picks.append(None)
            result[task] = {"parse_rate": float(np.mean([p is not None for p in picks])),
                            "exact": float(np.mean([p == s.keyframe for p, s in zip(picks, items)])),
                            "n": len(items)}
        else:
            ious, present, parsed = [], [], []
            for s, a in zip(items, answers):
                pred = _boxes(a)
                parsed.append(pred is not None)
                gt = np.asarray(s.boxes, dtype=np.float64)
                iou = spatial_reward(pred, gt).reward if pred is not None else 0.0
                ious.append(iou)
                if s.boxes != [[0, 0, 0, 0]]:
                    present.append(iou)
            gts = [b for s in items for b in s.boxes if b != [0, 0, 0, 0]]
            mean_box = np.mean(np.asarray(gts, dtype=np.float64), axis=0, keepdims=True)
            const = [spatial_reward(mean_box, np.asarray(s.boxes, dtype=np.float64)).reward
                     for s in items if s.boxes != [[0, 0, 0, 0]]]
            result[task] = {"parse_rate": float(np.mean(parsed)), "box_iou": float(np.mean(ious)),
                            "box_iou_present": float(np.mean(present)), "mean_box_iou_present": float(np.mean(const)),
                            "n": len(items)}
        result[task]["examples"] = [{"prompt": s.prompt[-120:], "answer": s.answer, "model": a}
                                    for s, a in list(zip(items, answers))[:3]]
    grounded = [result[t] for t in ("ground", "ground_at")]
    result["box_iou"] = float(np.mean([r["box_iou"] for r in grounded]))
    result["parse_rate"] = float(np.mean([result[t]["parse_rate"] for t in TASKS]))
    return result


def write_manifest(out: Path, cfg: ToyPolicyTrainConfig, summary: dict, metrics: dict, device: str) -> dict:
    import hashlib

    files = sorted(out.glob("*.safetensors"))
    manifest = {
        "model": "toy base policy (Qwen2.5-VL architecture, toy sizes: veason_r1/models/toy.py)",
        "weights": {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in files},
        "bytes": sum(f.stat().st_size for f in files), "device": device,
        "config": json.loads(json.dumps(asdict(cfg))),
        "train": {k: v for k, v in summary.items() if k != "history"}, "heldout": metrics,
        "rebuild": "veason-r1 make-toy policy --out DIR",
    }
    atomic_write_json(out / "manifest.json", manifest, indent=2)
    return manifest
