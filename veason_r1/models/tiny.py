"""A tiny random-weight Qwen2.5-VL folder, built offline, laid out like Qwen/Qwen2.5-VL-3B-Instruct.

Why: every pipeline stage (SFT with LLaMA-Factory, GRPO with verl, inference, evaluation) must be testable without
the hub or a GPU. The folder uses the real architecture (`Qwen2_5_VLForConditionalGeneration`), the real processor
classes, the real chat template and the Qwen2.5-VL special tokens, only smaller: 2 text layers (hidden 128, GQA
4/2 heads, head_dim 32, mrope sections [4, 6, 6]), a depth-2 vision tower (hidden 64) with the real patch 14 /
merge 2 / temporal patch 2 (a 560x560 frame is still 400 visual tokens), and a byte-level BPE of ~3k tokens trained
on an in-code corpus. Its outputs are random: it exists for pipeline tests, never for method results.

Head sizes are multiples of 32 so vLLM's attention backends accept the folder on a GPU box too.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

from veason_r1.assets import asset_text
from veason_r1.models.families import QWEN2_5_VL

# Qwen2.5-VL added tokens in their real order (ids 151643.. in the real vocab; here right after the BPE vocab).
# (token, special): the real tokenizer marks <tool_call>, fim and repo tokens as non-special.
QWEN_ADDED_TOKENS: list[tuple[str, bool]] = [
    ("<|endoftext|>", True),
    ("<|im_start|>", True),
    ("<|im_end|>", True),
    ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True),
    ("<|box_start|>", True),
    ("<|box_end|>", True),
    ("<|quad_start|>", True),
    ("<|quad_end|>", True),
    ("<|vision_start|>", True),
    ("<|vision_end|>", True),
    ("<|vision_pad|>", True),
    ("<|image_pad|>", True),
    ("<|video_pad|>", True),
    ("<tool_call>", False),
    ("</tool_call>", False),
    ("<|fim_prefix|>", False),
    ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False),
    ("<|fim_pad|>", False),
    ("<|repo_name|>", False),
    ("<|file_sep|>", False),
]
# The extra special tokens listed by the real tokenizer_config.json.
QWEN_EXTRA_SPECIAL_TOKENS = [t for t, special in QWEN_ADDED_TOKENS[1:14] if special]

# The chat template shipped with Qwen2.5-VL-*-Instruct (chat_template.json), verbatim, kept as package data.
QWEN2_5_VL_CHAT_TEMPLATE = asset_text("qwen2_5_vl_chat_template.jinja")

# Qwen2's pre-tokenizer split (transformers.models.qwen2.tokenization_qwen2.PRETOKENIZE_REGEX).
PRETOKENIZE_REGEX = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""

# The real Qwen2.5-VL image normalisation (OpenAI CLIP mean/std).
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


@dataclass
class TinyQwenConfig:
    """Sizes of the tiny model. Defaults keep CPU generation fast and vLLM-compatible head sizes."""

    bpe_vocab_size: int = 3000  # BPE tokens before the 22 Qwen added tokens
    hidden_size: int = 128
    intermediate_size: int = 256
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    mrope_section: list[int] = field(default_factory=lambda: [4, 6, 6])  # sums to head_dim / 2
    vision_depth: int = 2
    vision_hidden_size: int = 64
    vision_intermediate_size: int = 128
    vision_num_heads: int = 2
    vision_fullatt_block_indexes: list[int] = field(default_factory=lambda: [1])
    initializer_range: float = 0.05  # wider than 0.02 so greedy argmaxes are well separated (stable tests)
    tie_word_embeddings: bool = False  # as Qwen2.5-VL-7B; tied input/output embeddings make random greedy text repeat
    max_position_embeddings: int = 32768
    # RoPE base. Qwen2.5-VL's 1e6 leaves M-RoPE's width section (always the slowest frequencies) turning by ~1e-4 rad
    # per image column at toy head sizes; the toy policy uses a small base (models/toy.py)
    rope_theta: float = 1000000.0
    # Coordinate-friendly tokenisation: the integers 0..number_tokens-1 as added tokens, so "57" is one token (the
    # stock Qwen split makes it "5", "7"). 0 = off (the tiny test model); the toy policy uses it (models/toy.py).
    number_tokens: int = 0

    def __post_init__(self) -> None:
        head_dim, rem = divmod(self.hidden_size, self.num_attention_heads)
        if rem:
            raise ValueError(f"hidden_size {self.hidden_size} not divisible by heads {self.num_attention_heads}")
        if sum(self.mrope_section) * 2 != head_dim:
            raise ValueError(f"mrope_section {self.mrope_section} must sum to head_dim/2 = {head_dim // 2}")


# --------------------------------------------------------------------------------------------------------------
# Tokenizer

# ~650 everyday English words (package data) that the BPE corpus's free sentences are drawn from.
COMMON_WORDS = asset_text("tiny_qwen/common_words.txt").split()


def _corpus(seed: int) -> list[str]:
    """English, digits, JSON punctuation, the prompt text and well-formed answers: what the tokenizer must cover."""
    from veason_r1.config import FRAMES, IMAGE_SIZE
    from veason_r1.prompting import SCHEMA_EXAMPLE, build_prompt, format_response, question_text

    rng = random.Random(seed)
    english = (
        "The quick brown fox jumps over the lazy dog. A person is walking a dog in the park while a child rides "
        "a bicycle. The man in the red shirt picks up the ball and throws it to the woman on the left. Two cats "
        "sit on the sofa; one of them jumps down and runs out of the room. Which animal is the fastest in the "
        "video? The object that moves first is the target. First, the car drives along the road, then it turns "
        "right near the building. Step 1: describe what happens across the frames. Step 2: explain why the "
        "keyframe best shows the target. Step 3: describe what the target does and where it is in the keyframe. "
        "In frame 12 the target is clearly visible in the center of the image, partially occluded by a tree. "
        "The horse on the right side eats grass, the bird flies away, and the boat floats on the water. "
        "Who is holding the umbrella? What could be used to cut the paper? Something that people sit on. "
        "left right top bottom center middle front back behind near far large small big little first last "
        "red green blue yellow black white orange purple brown gray pink dark light bright "
        "person man woman boy girl child people player dog cat horse cow sheep bird fish elephant zebra giraffe "
        "bear monkey car truck bus bicycle motorcycle train airplane boat ball frisbee kite skateboard surfboard "
        "table chair sofa bed door window cup bottle knife phone laptop book bag umbrella hat shirt tree grass "
        "is are was were be been being has have had do does did can could will would should may might must "
        "the a an of to in on at by for with from into over under between through during before after and or "
        "not no yes this that these those it its they them their he she his her we you I my your our "
        "walking running jumping sitting standing holding moving turning eating playing riding flying swimming "
        "Hello, world! It's a test: (a) 1+1=2; (b) x*y/z - 3.5% [ok] {json} \"quoted\" 'single' <tag> </tag> #@$&|~^`"
    )
    texts = [english, english.upper(), english.lower(), SCHEMA_EXAMPLE, question_text("the dog", FRAMES.eval_frames)]
    texts += ["system\nYou are a helpful assistant.\nuser\n", "assistant\n<think>", "</think>\n<answer>"] * 20
    texts += [" ".join(str(i) for i in range(1001)), "0123456789 " * 20, "{}[]():;,.\"'<>=+-*/\\|!?_ \n\t" * 10]
    words = english.replace(".", " ").replace(",", " ").split() + COMMON_WORDS
    for _ in range(400):  # free sentences over the word list, in the three casings a prompt can use
        sentence = " ".join(rng.choice(words) for _ in range(rng.randint(6, 16)))
        texts += [sentence.capitalize() + ".", sentence.upper(), sentence + ","]
    for _ in range(300):
        n = rng.randint(2, FRAMES.eval_frames)
        frames = sorted(rng.sample(range(200), n))
        expr = " ".join(rng.choice(words) for _ in range(rng.randint(2, 10)))
        texts.append(build_prompt(expr, frames))
        boxes = []
        for _ in range(rng.randint(1, 3)):
            x1, y1 = rng.randint(0, 500), rng.randint(0, 500)
            boxes.append([x1, y1, rng.randint(x1, IMAGE_SIZE), rng.randint(y1, IMAGE_SIZE)])
        reasoning = " ".join(rng.choice(words) for _ in range(rng.randint(10, 40)))
        texts.append(format_response(reasoning, rng.choice(frames), boxes))
    return texts


def build_tokenizer(bpe_vocab_size: int = 3000, seed: int = 0, number_tokens: int = 0):
    """A Qwen2Tokenizer (transformers) over a byte-level BPE trained here, plus the Qwen2.5-VL added tokens (and,
    with `number_tokens`, the integers below it as added tokens, matched longest-first).

    The BPE uses Qwen2's exact normalizer / pre-tokenizer / decoder, so the saved folder reloads identically both
    from tokenizer.json and from vocab.json + merges.txt.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import AddedToken
    from transformers.models.qwen2.tokenization_qwen2 import Qwen2Tokenizer

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=bpe_vocab_size,
        min_frequency=2,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
    )
    tok.train_from_iterator(_corpus(seed), trainer=trainer)
    model_json = json.loads(tok.to_str())["model"]
    vocab: dict[str, int] = dict(model_json["vocab"])
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model_json["merges"]]
    base = len(vocab)
    for i, (token, _special) in enumerate(QWEN_ADDED_TOKENS):
        vocab[token] = base + i
    tokenizer = Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,
        unk_token=None,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        errors="replace",
        model_max_length=131072,
        split_special_tokens=False,
        clean_up_tokenization_spaces=False,
    )
    tokenizer.add_tokens([AddedToken(t, special=s, normalized=False) for t, s in QWEN_ADDED_TOKENS])
    tokenizer.add_special_tokens({"additional_special_tokens": QWEN_EXTRA_SPECIAL_TOKENS})
    tokenizer.chat_template = QWEN2_5_VL_CHAT_TEMPLATE
    for i, (token, _special) in enumerate(QWEN_ADDED_TOKENS):
        got = tokenizer.convert_tokens_to_ids(token)
        if got != base + i:  # pragma: no cover - a tokenizers/transformers change would break the id layout
            raise RuntimeError(f"tiny tokenizer: {token} got id {got}, expected {base + i}")
    if number_tokens:
        tokenizer.add_tokens([AddedToken(str(i), special=False, normalized=False) for i in range(number_tokens)])
    return tokenizer


# --------------------------------------------------------------------------------------------------------------
# Processor and model


def build_processor(tokenizer, min_pixels: int = 3136, max_pixels: int = 12845056):
    """Qwen2_5_VLProcessor with the real image processor settings of Qwen2.5-VL-3B-Instruct."""
    from transformers import Qwen2_5_VLProcessor
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    common = {
        "patch_size": QWEN2_5_VL.patch_size,
        "temporal_patch_size": 2,
        "merge_size": QWEN2_5_VL.merge_size,
        "image_mean": CLIP_MEAN,
        "image_std": CLIP_STD,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "do_convert_rgb": True,
    }
    image_processor = Qwen2VLImageProcessor(min_pixels=min_pixels, max_pixels=max_pixels, **common)
    video_processor = Qwen2VLVideoProcessor(**common)
    return Qwen2_5_VLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        chat_template=QWEN2_5_VL_CHAT_TEMPLATE,
    )


def build_config(tokenizer, cfg: TinyQwenConfig):
    """Qwen2_5_VLConfig whose special token ids match `tokenizer` (vocab padded to a multiple of 64)."""
    from transformers import Qwen2_5_VLConfig

    ids = {t: tokenizer.convert_tokens_to_ids(t) for t, _ in QWEN_ADDED_TOKENS}
    n_tokens = len(tokenizer)
    vocab_size = ((n_tokens + 63) // 64) * 64
    text_config = {
        "vocab_size": vocab_size,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_hidden_layers,
        "num_attention_heads": cfg.num_attention_heads,
        "num_key_value_heads": cfg.num_key_value_heads,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.max_position_embeddings,
        "max_window_layers": cfg.num_hidden_layers,
        "rms_norm_eps": 1e-6,
        "use_sliding_window": False,
        "sliding_window": 32768,
        "initializer_range": cfg.initializer_range,
        "attention_dropout": 0.0,
        "rope_parameters": {"rope_type": "default", "mrope_section": list(cfg.mrope_section), "rope_theta": cfg.rope_theta},
        "bos_token_id": ids["<|endoftext|>"],
        "eos_token_id": ids["<|im_end|>"],
        "pad_token_id": ids["<|endoftext|>"],
        "tie_word_embeddings": cfg.tie_word_embeddings,
    }
    vision_config = {
        "depth": cfg.vision_depth,
        "hidden_size": cfg.vision_hidden_size,
        "intermediate_size": cfg.vision_intermediate_size,
        "num_heads": cfg.vision_num_heads,
        "hidden_act": "silu",
        "in_channels": 3,
        "patch_size": QWEN2_5_VL.patch_size,
        "spatial_merge_size": QWEN2_5_VL.merge_size,
        "temporal_patch_size": 2,
        "tokens_per_second": 2,
        "window_size": 112,
        "out_hidden_size": cfg.hidden_size,
        "fullatt_block_indexes": list(cfg.vision_fullatt_block_indexes),
        "initializer_range": cfg.initializer_range,
    }
    return Qwen2_5_VLConfig(
        text_config=text_config,
        vision_config=vision_config,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=cfg.tie_word_embeddings,
        # top-level copies: older readers (vLLM, verl, LLaMA-Factory) look for these on the root config
        vocab_size=vocab_size,
        hidden_size=cfg.hidden_size,
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
    )


def _write_legacy_files(folder: Path, tokenizer, processor, model_config) -> None:
    """Add the files a real Qwen2.5-VL-3B-Instruct folder has, in its (transformers 4.x) layout.

    transformers 5 saves tokenizer.json + processor_config.json and a nested config; older readers (vLLM nodes
    pinned to transformers 4.5x, LLaMA-Factory exports) expect vocab.json/merges.txt, preprocessor_config.json,
    chat_template.json, a tokenizer_config.json with `additional_special_tokens`/`added_tokens_decoder`, and the
    text settings at the top level of config.json. Both layouts hold the same values; transformers 5 reads either.
    """
    from veason_r1.io_utils import atomic_write_json, atomic_write_text

    backend = json.loads(tokenizer.backend_tokenizer.to_str())
    bpe_vocab = backend["model"]["vocab"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in backend["model"]["merges"]]
    atomic_write_json(folder / "vocab.json", bpe_vocab)
    atomic_write_text(folder / "merges.txt", "#version: 0.2\n" + "\n".join(merges) + "\n")
    added = {
        str(tokenizer.convert_tokens_to_ids(t)): {
            "content": t,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": s,
        }
        for t, s in QWEN_ADDED_TOKENS
    }
    for token, info in tokenizer.backend_tokenizer.get_added_tokens_decoder().items():  # e.g. number tokens
        added.setdefault(str(token), {"content": info.content, "lstrip": False, "normalized": False,
                                      "rstrip": False, "single_word": False, "special": info.special})
    atomic_write_json(
        folder / "tokenizer_config.json",
        {
            "add_bos_token": False,
            "add_prefix_space": False,
            "added_tokens_decoder": added,
            "additional_special_tokens": QWEN_EXTRA_SPECIAL_TOKENS,
            "bos_token": None,
            "chat_template": QWEN2_5_VL_CHAT_TEMPLATE,
            "clean_up_tokenization_spaces": False,
            "eos_token": "<|im_end|>",
            "errors": "replace",
            "model_max_length": 131072,
            "pad_token": "<|endoftext|>",
            "processor_class": "Qwen2_5_VLProcessor",
            "split_special_tokens": False,
            "tokenizer_class": "Qwen2Tokenizer",
            "unk_token": None,
        },
        indent=2,
    )
    ip = processor.image_processor
    pre = json.loads(ip.to_json_string())
    pre.update(
        min_pixels=ip.size["shortest_edge"], max_pixels=ip.size["longest_edge"], processor_class="Qwen2_5_VLProcessor"
    )
    atomic_write_json(folder / "preprocessor_config.json", pre, indent=2)
    vp = json.loads(processor.video_processor.to_json_string())
    vp["processor_class"] = "Qwen2_5_VLProcessor"
    atomic_write_json(folder / "video_preprocessor_config.json", vp, indent=2)
    atomic_write_json(folder / "chat_template.json", {"chat_template": QWEN2_5_VL_CHAT_TEMPLATE}, indent=2)
    config = json.loads((folder / "config.json").read_text())
    text = model_config.text_config
    flat = {
        "vocab_size": text.vocab_size,
        "hidden_size": text.hidden_size,
        "intermediate_size": text.intermediate_size,
        "num_hidden_layers": text.num_hidden_layers,
        "num_attention_heads": text.num_attention_heads,
        "num_key_value_heads": text.num_key_value_heads,
        "hidden_act": text.hidden_act,
        "max_position_embeddings": text.max_position_embeddings,
        "max_window_layers": text.max_window_layers,
        "rms_norm_eps": text.rms_norm_eps,
        "rope_theta": text.rope_parameters["rope_theta"],
        "rope_scaling": {"type": "mrope", "mrope_section": list(text.rope_parameters["mrope_section"])},
        "sliding_window": 32768,
        "use_sliding_window": False,
        "attention_dropout": 0.0,
        "initializer_range": text.initializer_range,
        "use_cache": True,
        "bos_token_id": text.bos_token_id,
        "eos_token_id": text.eos_token_id,
        "torch_dtype": config.get("dtype", "float32"),
    }
    atomic_write_json(folder / "config.json", {**flat, **config}, indent=2)


def build_tiny_model(seed: int = 0, config: TinyQwenConfig | None = None, dtype: str = "float32"):
    """(model, processor) of the tiny Qwen2.5-VL in memory; deterministic in `seed` (corpus and weights)."""
    import torch
    from transformers import GenerationConfig, Qwen2_5_VLForConditionalGeneration

    cfg = config or TinyQwenConfig()
    tokenizer = build_tokenizer(cfg.bpe_vocab_size, seed=seed, number_tokens=cfg.number_tokens)
    processor = build_processor(tokenizer)
    model_config = build_config(tokenizer, cfg)
    with torch.random.fork_rng(devices=[]):  # leave the caller's RNG stream alone
        torch.manual_seed(seed)
        model = Qwen2_5_VLForConditionalGeneration(model_config).eval()
    model = model.to(getattr(torch, dtype))
    stop = [tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.convert_tokens_to_ids("<|endoftext|>")]
    model.generation_config = GenerationConfig(
        bos_token_id=stop[1], pad_token_id=stop[1], eos_token_id=stop, do_sample=False
    )
    return model, processor


def make_tiny_qwen(out_dir, seed: int = 0, config: TinyQwenConfig | None = None, dtype: str = "float32") -> Path:
    """Write the tiny Qwen2.5-VL folder (model, processor, tokenizer, generation config) and return its path.

    Deterministic in `seed`. `dtype` is the saved weight dtype. Written aside then moved in, so a crash never
    leaves half a model under `out_dir`.
    """
    import shutil

    cfg = config or TinyQwenConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model, processor = build_tiny_model(seed, cfg, dtype)
    tmp = out.with_name(f".{out.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save_pretrained(tmp)
    processor.save_pretrained(tmp)
    _write_legacy_files(tmp, processor.tokenizer, processor, model.config)
    (tmp / "tiny_config.json").write_text(json.dumps({"seed": seed, "dtype": dtype, **asdict(cfg)}, indent=2))
    from veason_r1.io_utils import honour_umask

    honour_umask(tmp)  # safetensors writes 0600
    for f in tmp.iterdir():
        f.replace(out / f.name)
    tmp.rmdir()
    return out


__all__ = [
    "QWEN2_5_VL_CHAT_TEMPLATE",
    "QWEN_ADDED_TOKENS",
    "TinyQwenConfig",
    "build_config",
    "build_processor",
    "build_tiny_model",
    "build_tokenizer",
    "make_tiny_qwen",
]
