"""The policy (a local Qwen2.5-VL folder) and the generation engines that inference and RL rollouts share.

One request = one expression + the frames shown to the policy (already `image_size` squares). `build_inputs` is the
single place that turns requests into model inputs (chat template + processor, left padded), so HF generation,
the local RL trainer and the vLLM prompts can never disagree on the prompt or on the number of visual tokens.

Engines:
- `HFEngine`: transformers `generate`, batched with left padding; works on CPU (tiny models) and GPU.
- `VLLMEngine`: vLLM 0.24-0.26 on GPU nodes (imported lazily; not installed on CPU machines). Its prompt building,
  `build_vllm_requests`, is plain Python and tested on CPU; the vLLM run itself is a GPU test.

Never touches the hub: folders are local, loaded with `local_files_only=True`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from veason_r1.config import IMAGE_SIZE, RESPONSE_BUDGET
from veason_r1.models.families import DEFAULT_FAMILY, FAMILIES, PolicyFamily, family, family_of_processor
from veason_r1.prompting import build_messages

STOP_TOKENS = ("<|im_end|>", "<|endoftext|>")


@dataclass
class Policy:
    """A loaded policy: the model, its processor (left padding) and the device it sits on."""

    model: Any
    processor: Any
    device: str = "cpu"
    model_dir: Path | None = None
    family: PolicyFamily = DEFAULT_FAMILY

    @property
    def tokenizer(self):
        return self.processor.tokenizer


@dataclass
class GenerationRequest:
    """One prompt: the expression, the shown frame indices, and those frames as (S, S, 3) uint8 arrays."""

    expression: str
    frame_ids: list[int]
    images: list[np.ndarray]


@dataclass
class SamplingConfig:
    """Decoding settings. temperature 0 means greedy (then the n completions are identical copies)."""

    max_new_tokens: int = RESPONSE_BUDGET
    temperature: float = 0.0
    top_p: float = 1.0
    n: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"SamplingConfig.max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"SamplingConfig.temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"SamplingConfig.top_p must be in (0, 1], got {self.top_p}")
        if self.n < 1:
            raise ValueError(f"SamplingConfig.n must be >= 1, got {self.n}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


# ----------------------------------------------------------------------------------------------------------------
# Loading


EXPECTED_MODEL_TYPE = DEFAULT_FAMILY.model_type  # the paper's; every row of models/families.py is accepted


def check_model_dir(model_dir: str | Path) -> Path:
    """The folder as a Path (the name `toy` gives the shipped toy policy), or a clear `UserError` naming what is
    missing or wrong: config, weights (a truncated safetensors file is caught from its header, in milliseconds),
    tokenizer, processor, and the model type (the policy is a Qwen2.5-VL: `model_type: qwen2_5_vl`)."""
    from veason_r1.errors import BadInput, MissingInput
    from veason_r1.models.registry import resolve_policy

    path = resolve_policy(model_dir if isinstance(model_dir, str) else Path(model_dir))  # names -> their folders
    if not path.is_dir():
        raise MissingInput(path, "policy folder not found",
                           hint="give a local Qwen2.5-VL folder, e.g. a downloaded Qwen/Qwen2.5-VL-3B-Instruct, a "
                                "merged SFT model, or `veason-r1 make-tiny --out DIR`; the hub is never used")
    missing = []
    if not (path / "config.json").is_file():
        missing.append("config.json")
    weights = sorted(path.glob("*.safetensors"))
    if not (weights or any(path.glob("pytorch_model*.bin"))):
        missing.append("model weights (*.safetensors or pytorch_model*.bin)")
    if not ((path / "tokenizer.json").is_file() or (path / "vocab.json").is_file()):
        missing.append("tokenizer (tokenizer.json or vocab.json + merges.txt)")
    if not ((path / "preprocessor_config.json").is_file() or (path / "processor_config.json").is_file()):
        missing.append("image processor (preprocessor_config.json or processor_config.json)")
    if missing:
        raise MissingInput(path, f"policy folder is incomplete: missing {', '.join(missing)}")
    try:
        config = json.loads((path / "config.json").read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise BadInput(path / "config.json", f"not valid JSON ({e})") from None
    model_type = config.get("model_type") if isinstance(config, dict) else None
    if model_type not in FAMILIES:
        raise BadInput(path / "config.json", f"model_type is {model_type!r}, expected one of "
                       f"{', '.join(repr(t) for t in FAMILIES)}",
                       hint="--model must be a folder of a policy family in models/families.py (base Instruct, "
                            "merged SFT or RL checkpoint)")
    for w in weights:
        problem = safetensors_problem(w)
        if problem:
            raise BadInput(w, problem, hint="the file is damaged or was not fully copied; copy or download it again")
    return path


def safetensors_problem(path: Path) -> str | None:
    """Why a .safetensors file cannot be loaded (truncated, bad header), from its header alone; None when sound."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            return f"truncated safetensors file ({size} bytes, no header)"
        n = int.from_bytes(head, "little")
        if n <= 0 or 8 + n > size:
            return f"truncated safetensors file (header of {n} bytes, file of {size})"
        try:
            header = json.loads(f.read(n))
        except (ValueError, UnicodeDecodeError):
            return "not a safetensors file (its header is not JSON)"
    if not isinstance(header, dict):
        return "not a safetensors file (its header is not a JSON object)"
    end = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            end = max(end, int(info["data_offsets"][1]))
        except (KeyError, TypeError, ValueError, IndexError):
            return f"bad safetensors header entry {name!r}"
    if 8 + n + end != size:
        return f"truncated safetensors file ({size} bytes, its header says {8 + n + end})" if 8 + n + end > size \
            else f"safetensors file has {size - 8 - n - end} bytes after its last tensor (damaged?)"
    return None


def resolve_dtype(dtype: str, device: str):
    """'auto' = bfloat16 on a CUDA device that supports it, else float32 (CPU bf16 is slow and not bit-stable)."""
    import torch

    if dtype == "auto":
        if str(device).startswith("cuda") and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    if dtype not in ("bfloat16", "float32", "float16"):
        raise ValueError(f"dtype must be 'auto', 'bfloat16', 'float16' or 'float32', got {dtype!r}")
    return getattr(torch, dtype)


def load_processor(model_dir: str | Path):
    """AutoProcessor of a local folder, set to left padding (generation and batched scoring both need it)."""
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(str(model_dir), local_files_only=True)
    processor.tokenizer.padding_side = "left"
    return processor


FAST_PATHS = ("auto", "on", "off")


def load_policy(model_dir: str | Path, device: str = "cpu", dtype: str = "auto", attn: str = "sdpa",
                fast_paths: str = "auto") -> Policy:
    """Load a local Qwen2.5-VL folder (base Instruct model, merged SFT model, RL checkpoint or tiny model).

    `attn`: "sdpa" (default, works everywhere), "eager", or "flash_attention_2" (GPU with flash-attn installed).
    `fast_paths`: the exact rewrites of `veason_r1.models.fast_qwen` (batched vision windows, grouped decode
    attention): "auto" = on CUDA, "on", "off" (transformers' own code, e.g. to rule them out when debugging).
    """
    import importlib

    if fast_paths not in FAST_PATHS:
        raise ValueError(f"fast_paths must be one of {FAST_PATHS}, got {fast_paths!r}")
    path = check_model_dir(model_dir)
    row = family(json.loads((path / "config.json").read_text())["model_type"])
    model_class = getattr(importlib.import_module("transformers"), row.hf_class)
    torch_dtype = resolve_dtype(dtype, device)
    model = model_class.from_pretrained(str(path), dtype=torch_dtype, attn_implementation=attn, local_files_only=True)
    model.to(device).eval()
    # the exact rewrites exist for Qwen2.5-VL only (the family row's notes say which families have fast paths)
    if row is DEFAULT_FAMILY and (fast_paths == "on" or (fast_paths == "auto" and str(device).startswith("cuda"))):
        from veason_r1.models.fast_qwen import apply_fast_paths

        apply_fast_paths(model)
    return Policy(model=model, processor=load_processor(path), device=str(device), model_dir=path, family=row)


# ----------------------------------------------------------------------------------------------------------------
# Inputs


def pixel_bounds(image_size: int, row: PolicyFamily = DEFAULT_FAMILY) -> dict[str, int]:
    """min_pixels = max_pixels = S*S: the processor's smart_resize then keeps an S x S frame exactly as it is."""
    return row.pixel_bounds(image_size)


def visual_tokens_per_frame(image_size: int, row: PolicyFamily = DEFAULT_FAMILY) -> int:
    """Tokens one S x S frame becomes after merging (Qwen2.5-VL: 560 -> 400, 112 -> 16): the family row's rule."""
    return row.visual_tokens_per_frame(image_size)


def _to_pil(image: np.ndarray, image_size: int, where: str):
    from PIL import Image

    arr = np.asarray(image)
    if arr.dtype != np.uint8 or arr.shape != (image_size, image_size, 3):
        raise ValueError(
            f"{where}: expected a ({image_size}, {image_size}, 3) uint8 frame "
            "(resize frames to the policy size first), "
            f"got shape {arr.shape} dtype {arr.dtype}"
        )
    return Image.fromarray(arr)


def prompt_text(processor, request: GenerationRequest) -> str:
    """The chat-templated prompt (system + user turn with one vision block per frame + the assistant header), in the
    processor's family's box convention."""
    messages = build_messages(request.expression, request.frame_ids, family=family_of_processor(processor))
    return processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def _check_request(request: GenerationRequest, i: int, image_size: int) -> list:
    if len(request.images) != len(request.frame_ids):
        raise ValueError(f"request {i}: {len(request.images)} images for {len(request.frame_ids)} frame ids")
    if not request.images:
        raise ValueError(f"request {i}: no frames")
    return [_to_pil(img, image_size, f"request {i} frame {j}") for j, img in enumerate(request.images)]


def build_inputs(processor, requests: Sequence[GenerationRequest], image_size: int = IMAGE_SIZE, responses=None):
    """Processor batch (torch tensors, left padded) for `requests`; every frame stays image_size x image_size.

    With `responses` (one string per request) the text after the assistant header is appended and the batch also
    holds `response_mask` (1 on the response tokens), for scoring/SFT-style losses; the RL trainer usually appends
    sampled token ids itself instead. Raises when the processor did not keep the frames at the requested size.
    """
    import torch

    row = family_of_processor(processor)
    bounds = pixel_bounds(image_size, row)
    if not requests:
        raise ValueError("build_inputs: no requests")
    if responses is not None and len(responses) != len(requests):
        raise ValueError(f"build_inputs: {len(responses)} responses for {len(requests)} requests")
    texts, images = [], []
    for i, req in enumerate(requests):
        images.extend(_check_request(req, i, image_size))
        text = prompt_text(processor, req)
        texts.append(text if responses is None else text + responses[i])
    batch = processor(text=texts, images=images, padding=True, padding_side="left", return_tensors="pt", **bounds)
    side = row.grid_side(image_size)
    grid = batch["image_grid_thw"]
    if grid.shape[0] != len(images) or not bool((grid == torch.tensor([1, side, side])).all()):
        raise RuntimeError(
            f"processor resized frames: image_grid_thw {grid.tolist()[:3]}... != [1, {side}, {side}] per frame "
            f"(image_size {image_size}); check the folder's preprocessor settings"
        )
    if responses is not None:
        tok = processor.tokenizer
        mask = torch.zeros_like(batch["input_ids"])
        for i, resp in enumerate(responses):
            ids = tok(resp, add_special_tokens=False)["input_ids"]
            n = len(ids)
            if n and batch["input_ids"][i, -n:].tolist() != ids:
                raise RuntimeError(f"response {i} does not tokenize on its own the same way as after the prompt")
            if n:
                mask[i, -n:] = 1
        batch["response_mask"] = mask
    return batch


# ----------------------------------------------------------------------------------------------------------------
# Engines


# Tokens a response must never contain: re-encoding prompt + response (RL log-probs) would count one more image
# slot than there are image features. A random or early policy does sample them; generation suppresses them.
VISION_TOKENS = ("<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>")


def vision_token_ids(tokenizer) -> list[int]:
    ids = [tokenizer.convert_tokens_to_ids(t) for t in VISION_TOKENS]
    return sorted({i for i in ids if isinstance(i, int) and i >= 0 and i != tokenizer.unk_token_id})


def _stop_ids(tokenizer) -> list[int]:
    ids = [tokenizer.convert_tokens_to_ids(t) for t in STOP_TOKENS]
    return [i for i in ids if isinstance(i, int) and i >= 0 and i != tokenizer.unk_token_id]


def generate_kwargs(tokenizer, sampling: SamplingConfig) -> dict:
    """The keyword arguments HF `model.generate` gets besides the inputs, for inference and the local RL rollouts
    alike: explicit (never the folder's generation_config defaults), no repetition penalty, vision tokens
    suppressed, one sequence per request when greedy (the caller copies it n times)."""
    stop = _stop_ids(tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop[-1]
    decode = {"max_new_tokens": sampling.max_new_tokens, "eos_token_id": stop, "pad_token_id": pad_id}
    decode.update(repetition_penalty=1.0, num_return_sequences=1 if sampling.greedy else sampling.n,
                  suppress_tokens=vision_token_ids(tokenizer))
    if sampling.greedy:
        decode.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    else:  # top_k=0: no top-k cut (transformers' default is 50, Qwen's generation_config says 1)
        decode.update(do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p, top_k=0)
    return decode


class HFEngine:
    """transformers `generate` over left-padded batches. Returns n completions per request, special tokens dropped.

    Decoding is explicit (no repetition penalty, no top-k) so it does not inherit the sampling defaults shipped in
    Qwen2.5-VL's generation_config.json; sampling is seeded with `sampling.seed` (torch RNG forked, then restored).
    """

    def __init__(self, policy: Policy, image_size: int = IMAGE_SIZE, batch_size: int = 16):
        pixel_bounds(image_size, policy.family)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.policy = policy
        self.family = policy.family
        self.image_size = image_size
        self.batch_size = batch_size
        self.batch_stats: list[dict] = []  # one entry per generate batch: where its time went

    def generate_kwargs(self, sampling: SamplingConfig) -> dict:
        return generate_kwargs(self.policy.processor.tokenizer, sampling)

    def generate(
        self, requests: Sequence[GenerationRequest], sampling: SamplingConfig | None = None
    ) -> list[list[str]]:
        import torch
        from transformers import LogitsProcessorList

        sampling = sampling or SamplingConfig()
        model, processor = self.policy.model, self.policy.processor
        tok = processor.tokenizer
        copies = 1 if sampling.greedy else sampling.n
        decode = self.generate_kwargs(sampling)
        outputs: list[list[str]] = []
        dtype = next(model.parameters()).dtype
        device = torch.device(self.policy.device)
        rng_devices = [device.index or 0] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=rng_devices):  # seeded draws that leave the caller's RNG alone
            torch.manual_seed(sampling.seed)
            for start in range(0, len(requests), self.batch_size):
                chunk = list(requests[start : start + self.batch_size])
                t0 = time.perf_counter()
                batch = build_inputs(processor, chunk, self.image_size).to(device)
                batch["pixel_values"] = batch["pixel_values"].to(dtype)
                prompt_len = batch["input_ids"].shape[1]
                clock = StepClock(device)
                t1 = time.perf_counter()
                with torch.inference_mode():
                    seqs = model.generate(**batch, **decode, logits_processor=LogitsProcessorList([clock]))
                texts = tok.batch_decode(seqs[:, prompt_len:], skip_special_tokens=True)
                t2 = time.perf_counter()
                steps = int(seqs.shape[1] - prompt_len)
                first = (clock.first or t2) - t1
                self.batch_stats.append({
                    "rows": len(chunk), "prompt_tokens": int(prompt_len), "inputs_s": t1 - t0,
                    "prefill_s": first, "decode_steps": steps,
                    "decode_ms_per_step": 1000 * (t2 - t1 - first) / max(steps - 1, 1),
                })
                for i in range(len(chunk)):
                    group = texts[i * copies : (i + 1) * copies]
                    outputs.append(group * sampling.n if copies == 1 else group)
        return outputs


class StepClock:
    """A logits processor that leaves scores alone and stamps decoding steps, so a batch's time splits into prefill
    and per-step decode. By default it stamps only the first step (end of the prefill: one device sync, nothing
    slowed); `every_step=True` (the profiler) stamps every step and measures decode as the median gap."""

    def __init__(self, device, every_step: bool = False):
        import torch

        self.device, self.every_step, self.stamps = torch.device(device), every_step, []

    @property
    def first(self) -> float | None:
        return self.stamps[0] if self.stamps else None

    def __call__(self, input_ids, scores):
        if self.every_step or not self.stamps:
            if self.device.type == "cuda":
                import torch

                torch.cuda.synchronize(self.device)
            self.stamps.append(time.perf_counter())
        return scores

    def decode_ms_per_step(self) -> float | None:
        """Median gap between stamped steps in ms (None with fewer than two stamps)."""
        gaps = sorted(b - a for a, b in zip(self.stamps, self.stamps[1:]))
        return round(1000 * gaps[len(gaps) // 2], 2) if gaps else None


def build_vllm_requests(processor, requests: Sequence[GenerationRequest], image_size: int = IMAGE_SIZE) -> list[dict]:
    """vLLM prompt dicts: {"prompt": chat-templated text, "multi_modal_data": {"image": [PIL...]},
    "mm_processor_kwargs": {min_pixels, max_pixels}} with one `<|image_pad|>` per frame (vLLM expands it)."""
    bounds = pixel_bounds(image_size, family_of_processor(processor))
    out = []
    for i, req in enumerate(requests):
        images = _check_request(req, i, image_size)
        out.append(
            {
                "prompt": prompt_text(processor, req),
                "multi_modal_data": {"image": images},
                "mm_processor_kwargs": dict(bounds),
            }
        )
    return out


def _import_vllm():
    try:
        import vllm
    except ImportError as e:  # CPU machines and CI never have it
        raise ImportError(
            "VLLMEngine needs vLLM (GPU nodes only): pip install 'veason-r1[rollout]' (vllm>=0.24,<0.27); "
            "use engine 'hf' on machines without it"
        ) from e
    return vllm


@dataclass
class VLLMEngine:
    """vLLM offline engine over a local folder (vLLM 0.24-0.26). Not runnable on CPU machines: see the GPU test.

    `max_images` bounds images per prompt (limit_mm_per_prompt); videos are disabled. Extra `llm_kwargs` go to
    `vllm.LLM` unchanged (e.g. enforce_eager=True for fast start-up in tests).
    """

    model_dir: str | Path
    image_size: int = IMAGE_SIZE
    tensor_parallel_size: int = 1
    gpu_memory_utilization: float = 0.5
    max_model_len: int = 8192
    max_images: int = 8
    dtype: str = "bfloat16"
    seed: int = 0
    llm_kwargs: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.model_dir = check_model_dir(self.model_dir)
        self.family = family(json.loads((Path(self.model_dir) / "config.json").read_text())["model_type"])
        bounds = pixel_bounds(self.image_size, self.family)
        vllm = _import_vllm()
        self._vllm = vllm
        self.processor = load_processor(self.model_dir)
        self.llm = vllm.LLM(
            model=str(self.model_dir),
            tensor_parallel_size=self.tensor_parallel_size,
            gpu_memory_utilization=self.gpu_memory_utilization,
            max_model_len=self.max_model_len,
            dtype=self.dtype,
            seed=self.seed,
            limit_mm_per_prompt={"image": self.max_images, "video": 0},
            mm_processor_kwargs=bounds,
            **self.llm_kwargs,
        )

    def sampling_params(self, sampling: SamplingConfig):
        stop = _stop_ids(self.processor.tokenizer)
        return self._vllm.SamplingParams(
            n=1 if sampling.greedy else sampling.n,
            temperature=sampling.temperature,
            top_p=1.0 if sampling.greedy else sampling.top_p,
            max_tokens=sampling.max_new_tokens,
            seed=sampling.seed,
            stop_token_ids=stop,
            repetition_penalty=1.0,
            skip_special_tokens=True,
        )

    def generate(
        self, requests: Sequence[GenerationRequest], sampling: SamplingConfig | None = None
    ) -> list[list[str]]:
        sampling = sampling or SamplingConfig()
        prompts = build_vllm_requests(self.processor, requests, self.image_size)
        results = self.llm.generate(prompts, self.sampling_params(sampling), use_tqdm=len(prompts) > 1)
        outputs = []
        for res in results:
            texts = [c.text for c in res.outputs]
            outputs.append(texts * sampling.n if sampling.greedy else texts)
        return outputs


__all__ = [
    "GenerationRequest",
    "HFEngine",
    "Policy",
    "SamplingConfig",
    "VLLMEngine",
    "build_inputs",
    "build_vllm_requests",
    "check_model_dir",
    "generate_kwargs",
    "load_policy",
    "load_processor",
    "pixel_bounds",
    "prompt_text",
    "visual_tokens_per_frame",
]
