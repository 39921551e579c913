"""Train the toy SAM2 with SAM2's own training code, and measure it the way the pipeline uses it.

Why SAM2's code: the toy model should be a SAM2 in every respect but size, so the propagator, the reward and the
evaluation meet exactly the model class they meet at full scale. We use the pieces sam2's wheel installs as the
top-level package `training`: `SAM2Train` (prompt sampling, tracking with memory), `MultiStepMultiMasksAndIous` (its
focal + dice + IoU + object-score loss), and its VOS data path (`PNGRawDataset` -> `VOSDataset` with
`RandomUniformSampler` -> `collate_fn`) reading synthetic videos exported in the VOS layout
(`JPEGImages/<video>/<frame>.jpg`, palettised `Annotations/<video>/<frame>.png`). Only the outer loop is ours
(SAM2's `Trainer` needs torch.distributed and its Hydra launcher): AdamW, cosine schedule, gradient clipping,
bf16 autocast on CUDA, resumable checkpoints.

Prompts are boxes only (as the policy gives boxes), noised as SAM2's trainer noises them; clips run forward or
backward in time (the propagator tracks both ways from the keyframe).

Colour augmentation (`colour_aug`): the first toy SAM2 learned a colour shortcut (it segmented red, yellow and green
shapes and missed blue, purple and white ones: it keyed on a channel profile, not on "a shape unlike its
background"; docs/toy_reproduction.md). Each training clip therefore gets one random RGB-channel permutation, one
SAM2 `ColorJitter` with a full hue circle and strong saturation/brightness/contrast changes, and sometimes a
negative image, the same for all its frames: no colour identifies foreground any more, so the network has to
segment by contrast and shape.
"""

from __future__ import annotations

import dataclasses
import io
import itertools
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from veason_r1.data.synthetic import SynthConfig, make_video
from veason_r1.io_utils import atomic_write_bytes, atomic_write_json
from veason_r1.toy.schedule import StepBudget, TrainState, cosine_lr


@dataclass
class ToySAM2TrainConfig:
    """Everything that changes the trained weights (the manifest records it)."""

    train_videos: int = 4000
    data_seed: int = 1000  # training videos: SynthConfig(seed=data_seed); held-out videos use heldout_seed
    heldout_seed: int = 777
    heldout_videos: int = 48
    steps: int = 3000
    batch_size: int = 32
    num_frames: int = 4  # frames per training clip (short clips: more updates per second)
    max_objects: int = 3
    reverse_time_prob: float = 0.5
    lr: float = 2e-3
    min_lr_ratio: float = 0.05
    warmup_steps: int = 100
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    seed: int = 0
    workers: int = 8
    checkpoint_every: int = 500
    # start from these weights (a toy SAM2 `.pt`, e.g. the shipped one) instead of random init: continuing a build
    # with new settings (the CPU colour fine-tune) or from a checkpoint carried back from a GPU
    init_from: str | None = None
    colour_aug: bool = True  # per-clip channel permutation + hue/saturation jitter + negatives (module docstring)
    negative_prob: float = 0.15  # P(a clip is shown as its negative), with colour_aug
    synth: SynthConfig = field(default_factory=lambda: SynthConfig(min_frames=8, max_frames=24))


# ----------------------------------------------------------------------------------------------------------------
# data


def _palette_png(labels: np.ndarray) -> bytes:
    img = Image.fromarray(labels.astype(np.uint8), mode="P")
    palette = [0, 0, 0] + [c for i in range(1, 256) for c in ((i * 67) % 256, (i * 131) % 256, (i * 197) % 256)]
    img.putpalette(palette)
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def _write(path: Path, data: bytes) -> None:
    """Plain write for the many frame files: a torn file is rewritten because a video counts as done only once its
    last mask exists (`export_vos`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def export_vos_video(root: Path, name: str, video) -> None:
    """One synthetic video in SAM2's VOS layout; object k is palette index k + 1 (visible pixels only)."""
    for t, frame in enumerate(video.frames):
        labels = np.zeros(frame.shape[:2], dtype=np.uint8)
        for k in range(len(video.objects)):
            labels[video.visible[k][t]] = k + 1
        buf = io.BytesIO()
        Image.fromarray(frame).save(buf, "JPEG", quality=92)
        _write(root / "JPEGImages" / name / f"{t:05d}.jpg", buf.getvalue())
        _write(root / "Annotations" / name / f"{t:05d}.png", _palette_png(labels))


def _export_one(args) -> None:
    root, index, synth = args
    root = Path(root)
    export_vos_video(root, f"v{index:06d}", make_video(index, synth))
    _write(root / "done" / f"v{index:06d}", b"")  # written last: the video is complete


def export_vos(root: Path, cfg: ToySAM2TrainConfig, workers: int = 1, progress: bool = True) -> Path:
    """Write (or finish writing) the training videos; a video whose last mask exists is skipped."""
    from tqdm import tqdm

    root = Path(root)
    synth = SynthConfig(**{**asdict(cfg.synth), "seed": cfg.data_seed, "num_videos": cfg.train_videos})
    todo = []
    for i in range(cfg.train_videos):
        if not (root / "done" / f"v{i:06d}").exists():
            todo.append((str(root), i, synth))
    if workers > 1 and todo:
        from multiprocessing import get_context

        with get_context("spawn").Pool(workers) as pool:
            for _ in tqdm(pool.imap_unordered(_export_one, todo, chunksize=8), total=len(todo),
                          desc="export VOS videos", disable=not progress):
                pass
    else:
        for item in tqdm(todo, desc="export VOS videos", disable=not progress):
            _export_one(item)
    return root


# ----------------------------------------------------------------------------------------------------------------
# model


def _box_only_class():
    """`SAM2Train` that never adds correction clicks: the pipeline prompts with boxes alone, so the memory the model
    learns to track from must come from a box-only mask (SAM2Train always corrects its conditioning frames)."""
    from training.model.sam2 import SAM2Train

    class BoxOnlySAM2Train(SAM2Train):
        def prepare_prompt_inputs(self, backbone_out, input, start_frame_idx=0):
            out = super().prepare_prompt_inputs(backbone_out, input, start_frame_idx)
            out["frames_to_add_correction_pt"] = []
            return out

    return BoxOnlySAM2Train


TRAIN_ARGS: dict[str, Any] = {
    "model.prob_to_use_pt_input_for_train": 1.0,
    "model.prob_to_use_box_input_for_train": 1.0,  # P(box) = 1.0 * 1.0: box prompts only
    "model.num_frames_to_correct_for_train": 1,
    "model.num_init_cond_frames_for_train": 1,
    "model.rand_init_cond_frames_for_train": False,
}


def build_train_model(device: str = "cpu", seed: int = 0):
    """`SAM2Train` with the toy architecture (the same config the propagator loads as `toy`)."""
    import torch
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from veason_r1.models.sam2 import _config_path

    path, overrides = _config_path("toy")
    cfg = OmegaConf.load(path)
    for key, value in {**overrides, **TRAIN_ARGS}.items():
        OmegaConf.update(cfg, key, value, force_add=True)
    OmegaConf.resolve(cfg)
    kwargs = OmegaConf.to_container(cfg.model, resolve=True)
    kwargs.pop("_target_")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        parts = {k: instantiate(v, _recursive_=True) if isinstance(v, dict) and "_target_" in v else v
                 for k, v in kwargs.items()}
        model = _box_only_class()(**parts)
    return model.to(device)


def _loss_fn():
    from training.loss_fns import MultiStepMultiMasksAndIous

    return MultiStepMultiMasksAndIous(
        weight_dict={"loss_mask": 20, "loss_dice": 1, "loss_iou": 1, "loss_class": 1},
        supervise_all_iou=True, iou_use_l1_loss=True, pred_obj_scores=True,
        focal_gamma_obj_score=0.0, focal_alpha_obj_score=-1.0,
    )


class ChannelShuffle:
    """A SAM2 transform (after `ToTensorAPI`): one random RGB-channel permutation per clip, and with probability
    `negative_prob` the negative image, both the same on every frame of the clip."""

    PERMUTATIONS = ((0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0))

    def __init__(self, negative_prob: float = 0.0):
        self.negative_prob = negative_prob

    def __call__(self, datapoint, **kwargs):
        import random

        perm = list(random.choice(self.PERMUTATIONS))
        negative = random.random() < self.negative_prob
        for frame in datapoint.frames:
            x = frame.data[perm]
            frame.data = 1.0 - x if negative else x
        return datapoint


def colour_transforms(cfg: ToySAM2TrainConfig) -> list:
    """The clip-level colour augmentation (`colour_aug`), to run between `ToTensorAPI` and `NormalizeAPI`."""
    if not cfg.colour_aug:
        return []
    from training.dataset.transforms import ColorJitter

    # saturation is not pushed near 0: a grey-level green or blue shape has the background's luminance, which makes
    # a clip unlearnable rather than shortcut-free (a first CPU run with saturation down to 0.1 fell to J 0.13)
    return [ColorJitter(consistent_transform=True, brightness=0.2, contrast=0.2, saturation=[0.5, 1.3], hue=0.5),
            ChannelShuffle(cfg.negative_prob)]


def _loader(vos_root: Path, cfg: ToySAM2TrainConfig, image_size: int, start_step: int = 0):
    import functools

    import torch
    from training.dataset.transforms import ComposeAPI, NormalizeAPI, RandomHorizontalFlip, RandomResizeAPI, ToTensorAPI
    from training.dataset.vos_dataset import VOSDataset
    from training.dataset.vos_raw_dataset import PNGRawDataset
    from training.dataset.vos_sampler import RandomUniformSampler
    from training.utils.data_utils import collate_fn

    from veason_r1.models.sam2_frames import IMG_MEAN, IMG_STD

    transforms = [ComposeAPI([
        RandomHorizontalFlip(consistent_transform=True),
        RandomResizeAPI(sizes=image_size, square=True, consistent_transform=True),
        ToTensorAPI(),
        *colour_transforms(cfg),
        NormalizeAPI(mean=list(IMG_MEAN), std=list(IMG_STD)),
    ])]
    raw = PNGRawDataset(img_folder=str(vos_root / "JPEGImages"), gt_folder=str(vos_root / "Annotations"))
    sampler = RandomUniformSampler(num_frames=cfg.num_frames, max_num_objects=cfg.max_objects,
                                   reverse_time_prob=cfg.reverse_time_prob)
    dataset = VOSDataset(transforms=transforms, training=True, video_dataset=raw, sampler=sampler, multiplier=1)
    return torch.utils.data.DataLoader(
        SeededItems(dataset, cfg.seed), batch_sampler=StepBatches(len(dataset), cfg.batch_size, cfg.seed, start_step),
        num_workers=cfg.workers, collate_fn=functools.partial(collate_fn, dict_key="all"),
        persistent_workers=cfg.workers > 0,
    )


def seed_everything(*key: int) -> None:
    """Seed python's, numpy's and torch's global generators from `key` (SAM2's sampler, transforms and prompt
    noise draw from them)."""
    import random

    import torch

    seed = int(np.random.SeedSequence(list(key)).generate_state(1)[0])
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class StepBatches:
    """Batch sampler: step k's clips are positions k * B .. k * B + B - 1 of an endless sequence of seeded
    permutations of the videos (one per pass), as (step, slot, video) triples.

    Why: a resumed build must equal an uninterrupted one whatever the number of loader processes; with the batch a
    function of (seed, step) a resume starts at the step it reached."""

    def __init__(self, num_videos: int, batch_size: int, seed: int, start_step: int = 0):
        self.n, self.batch_size, self.seed, self.start_step = num_videos, batch_size, seed, start_step

    def _video(self, position: int) -> int:
        epoch, offset = divmod(position, self.n)
        return int(np.random.default_rng([self.seed, epoch]).permutation(self.n)[offset])

    def __iter__(self):
        step = self.start_step
        while True:
            yield [(step, i, self._video(step * self.batch_size + i)) for i in range(self.batch_size)]
            step += 1


class SeededItems:
    """Map-style wrapper: item (step, slot, video) is the dataset's clip of `video`, drawn with the global
    generators seeded from (seed, step, slot), so its frames, objects, flips and colours do not depend on which
    loader process made it or when."""

    def __init__(self, dataset, seed: int):
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        step, slot, video = key
        seed_everything(self.seed, step, slot)
        return self.dataset[video]




def train(work: Path, cfg: ToySAM2TrainConfig, device: str = "cpu", progress: bool = True,
          time_budget_s: float | None = None) -> dict[str, Any]:
    """Train (resuming from `work/train_state.pt`) and return a summary; the weights are in `work/sam2_toy.pt`."""
    import torch
    from tqdm import tqdm
    from training.trainer import CORE_LOSS_KEY

    from veason_r1.io_utils import file_identity

    work = Path(work)
    vos = export_vos(work / "vos", cfg, workers=max(1, cfg.workers), progress=progress)
    model = build_train_model(device, cfg.seed).train()  # every later random draw is seeded per step (StepBatches)
    init_sha256 = None
    if cfg.init_from:
        init_sha256 = file_identity(cfg.init_from)["sha256"]
        model.load_state_dict(torch.load(cfg.init_from, map_location=device, weights_only=True)["model"])
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    state = TrainState(work / "train_state.pt", config=json.loads(json.dumps(asdict(cfg))))
    if state.load(model, opt, device) and state.total:
        cfg = dataclasses.replace(cfg, steps=int(state.total))
    loss_fn = _loss_fn()
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device.startswith("cuda") else None
    loader = _loader(vos, cfg, int(model.image_size), start_step=state.step)
    t0 = time.time()
    budget = StepBudget(cfg.steps, time_budget_s, start_step=state.step)
    bar = tqdm(total=cfg.steps, initial=state.step, desc="toy SAM2", disable=not progress)
    # the loader is endless (one batch per step from the resumed step on); a finished run draws none
    for batch in itertools.islice(loader, max(0, budget.total - state.step)):
        if state.step >= budget.total:  # the budget may shorten the run as it measures the speed
            break
        seed_everything(cfg.seed, state.step, 1 << 20)  # SAM2Train's prompt sampling: a function of the step
        lr = cosine_lr(state.step, budget.update(state.step), cfg.lr, cfg.warmup_steps, cfg.min_lr_ratio)
        bar.total = budget.total
        for group in opt.param_groups:
            group["lr"] = lr
        batch = batch.to(device, non_blocking=True)
        with amp or torch.autocast("cpu", enabled=False):
            outputs = model(batch)
            losses = loss_fn(outputs, batch.masks)
        loss = losses[CORE_LOSS_KEY]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        state.step += 1
        bar.update(1)
        if state.step % 25 == 0:
            state.log(loss=float(loss.detach()), s=round(time.time() - t0, 1))
            bar.set_postfix(loss=f"{state.history[-1]['loss']:.3f}")
        if state.step % cfg.checkpoint_every == 0:
            state.save(model, opt, budget.total)
    bar.close()
    state.save(model, opt, budget.total)
    weights = {k: v.detach().float().cpu() for k, v in model.state_dict().items()}
    buf = io.BytesIO()
    torch.save({"model": weights}, buf)
    atomic_write_bytes(work / "sam2_toy.pt", buf.getvalue())
    return {"steps": state.step, "requested_steps": cfg.steps, "seconds": round(time.time() - t0, 1),
            "history": state.history, "init_sha256": init_sha256,
            "params": sum(v.numel() for v in weights.values())}


# ----------------------------------------------------------------------------------------------------------------
# measurement


def heldout_videos(cfg: ToySAM2TrainConfig):
    synth = SynthConfig(**{**asdict(cfg.synth), "seed": cfg.heldout_seed, "num_videos": cfg.heldout_videos})
    return [make_video(i, synth) for i in range(cfg.heldout_videos)]


def oracle_box_j(propagator, videos, progress: bool = False) -> dict[str, float]:
    """Mean J over objects of held-out videos: the GT box on the object's largest-area frame, propagated both ways
    through the whole video (the pipeline's use of SAM2), J per frame with "both empty = 1", mean over frames.
    Also the J of a static box (the GT box's rectangle on every frame) as the trivial baseline, and the mean J per
    object colour (a colour shortcut shows there)."""
    from tqdm import tqdm

    from veason_r1.data.masks import mask_iou, mask_to_box  # numpy J per frame: no compiled kernels on the GPU box

    js, static, colours = [], [], {}
    for video in tqdm(videos, desc="oracle-box J", disable=not progress):
        for k in range(len(video.objects)):
            masks = np.stack(video.visible[k])
            areas = masks.reshape(len(masks), -1).sum(1)
            t = int(np.argmax(areas))
            box = mask_to_box(masks[t])
            pred = propagator.propagate(video.frames, t, np.asarray([box], dtype=np.float32))
            js.append(float(np.mean([mask_iou(pred[i], masks[i]) for i in range(len(masks))])))
            colours.setdefault(video.objects[k].color, []).append(js[-1])
            rect = np.zeros_like(masks[t])
            x0, y0, x1, y1 = (int(v) for v in box)
            rect[y0:y1 + 1, x0:x1 + 1] = True
            static.append(float(np.mean([mask_iou(rect, masks[i]) for i in range(len(masks))])))
    return {"oracle_box_J": float(np.mean(js)), "static_box_J": float(np.mean(static)), "objects": len(js),
            "by_colour": {c: round(float(np.mean(v)), 4) for c, v in sorted(colours.items())}}


def write_manifest(out: Path, cfg: ToySAM2TrainConfig, summary: dict, metrics: dict, device: str) -> dict:
    import hashlib

    ckpt = out / "sam2_toy.pt"
    manifest = {
        "model": "toy SAM2 (SAM2.1 architecture, toy sizes: veason_r1/models/toy.py)",
        "checkpoint": ckpt.name, "sha256": hashlib.sha256(ckpt.read_bytes()).hexdigest(),
        "bytes": ckpt.stat().st_size, "device": device, "config": json.loads(json.dumps(asdict(cfg))),
        "train": {k: v for k, v in summary.items() if k != "history"}, "heldout": metrics,
        "rebuild": "veason-r1 make-toy sam2 --out DIR",
    }
    atomic_write_json(out / "manifest.json", manifest, indent=2)
    return manifest
