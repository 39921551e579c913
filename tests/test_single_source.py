"""One home per number and per rule: the method's frame numbers live in `config.FrameConfig` only."""

from __future__ import annotations

import argparse
import ast
import re
from pathlib import Path

from veason_r1.config import FRAMES, IMAGE_SIZE

ROOT = Path(__file__).resolve().parents[1]
# Parameters, dataclass fields and argparse options that carry one of the method's frame numbers.
FRAME_NAMES = {"num_frames", "frames", "n_frames", "keyframe_top_k", "sft_frames", "rl_frames", "eval_frames",
               "cot_frames", "top_k"}
# Calls whose positional arguments include a frame count or the keyframe top-k.
FRAME_CALLS = {"InferenceConfig", "sample_frame_ids", "eval_frames", "training_frames", "anchored_grid",
               "pick_keyframe", "RLSampleBuilder", "prepare_sample"}
METHOD_NUMBERS = {FRAMES.sft_frames, FRAMES.rl_frames, FRAMES.eval_frames, FRAMES.keyframe_top_k}
KNOWN = {
    ("bench/bench_reward.py", "frames"),  # frames per prompt of the timed workload (a grid's K), not N
}


def _int_literal(node) -> bool:
    """An int literal equal to one of the method's numbers (a video length of 100 frames is not one)."""
    return isinstance(node, ast.Constant) and type(node.value) is int and node.value in METHOD_NUMBERS


def _call_name(node: ast.Call) -> str:
    return getattr(node.func, "id", getattr(node.func, "attr", ""))


def named_values(node) -> list[tuple[str, str, ast.AST, int]]:
    """(name, how a hit shows it, value, line) of every value `node` gives a name: function defaults, annotated
    fields, `add_argument("--flag", default=...)` (shown as --flag) and call keywords. Both scanners below read
    retyped numbers off these."""
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        args = node.args.posonlyargs + node.args.args
        pairs = list(zip(args[len(args) - len(node.args.defaults):], node.args.defaults))
        pairs += [(a, d) for a, d in zip(node.args.kwonlyargs, node.args.kw_defaults) if d is not None]
        return [(a.arg, a.arg, d, d.lineno) for a, d in pairs]
    if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
        return [(node.target.id, node.target.id, node.value, node.lineno)]
    if not isinstance(node, ast.Call):
        return []
    out = []
    if _call_name(node) == "add_argument":
        flags = [a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
        dest = flags[0].lstrip("-").replace("-", "_") if flags else ""
        out += [(dest, f"--{dest}", kw.value, kw.lineno) for kw in node.keywords if kw.arg == "default"]
    return out + [(kw.arg, kw.arg, kw.value, kw.lineno) for kw in node.keywords if kw.arg]


def retyped_frame_numbers(path: Path) -> list[str]:
    """`name = <int>` defaults of frame-number names in one file (function defaults, fields, add_argument)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        found += [f"{shown}={value.value} (line {line})" for name, shown, value, line in named_values(node)
                  if name in FRAME_NAMES and _int_literal(value)]
        if isinstance(node, ast.Call) and _call_name(node) in FRAME_CALLS:
            found += [f"{_call_name(node)}=(..., {a.value}, ...) (line {a.lineno})" for a in node.args
                      if _int_literal(a)]
    return found


def test_no_frame_number_is_retyped_outside_config():
    problems = []
    for path in sorted([*(ROOT / "veason_r1").rglob("*.py"), *(ROOT / "bench").glob("*.py")]):
        rel = path.relative_to(ROOT).as_posix()
        if rel == "veason_r1/config.py":
            continue
        for hit in retyped_frame_numbers(path):
            if (rel, hit.split("=")[0].lstrip("-")) not in KNOWN:
                problems.append(f"{rel}: {hit}")
    assert not problems, "read these from veason_r1.config.FRAMES: " + "; ".join(problems)


def test_the_scanner_sees_retyped_numbers(tmp_path):
    src = tmp_path / "x.py"
    src.write_text("def f(a, num_frames: int = 8, *, keyframe_top_k=5):\n    pass\n"
                   "class C:\n    rl_frames: int = 6\n"
                   "p.add_argument('--frames', type=int, default=8)\n"
                   "def g(num_frames=FRAMES.eval_frames):\n    pass\n"
                   "InferenceConfig(112, 8, 64)\nrows(x, num_frames=6)\neval_frames(100)\n")
    assert sorted(retyped_frame_numbers(src)) == ["--frames=8 (line 5)", "InferenceConfig=(..., 8, ...) (line 8)",
                                                  "keyframe_top_k=5 (line 1)", "num_frames=6 (line 9)",
                                                  "num_frames=8 (line 1)", "rl_frames=6 (line 4)"]


def test_readers_take_the_frame_config():
    from veason_r1.commands import cot, rl
    from veason_r1.datacon.cot import CotConfig
    from veason_r1.inference.pipeline import InferenceConfig, add_model_arguments
    from veason_r1.rl.config import DataConfig

    assert (FRAMES.sft_frames, FRAMES.rl_frames, FRAMES.eval_frames, FRAMES.keyframe_top_k) == (8, 6, 8, 5)
    assert FRAMES.image_size == IMAGE_SIZE == 560
    assert CotConfig().num_frames == FRAMES.sft_frames
    assert InferenceConfig().num_frames == FRAMES.eval_frames and InferenceConfig().image_size == IMAGE_SIZE
    data = DataConfig()
    assert (data.num_frames, data.keyframe_top_k, data.image_size) == (FRAMES.rl_frames, FRAMES.keyframe_top_k,
                                                                       IMAGE_SIZE)
    p = argparse.ArgumentParser()
    cot.add_arguments(p)
    args = p.parse_args(["--root", "r", "--out-dir", "o"])
    assert (args.frames, args.image_size) == (FRAMES.sft_frames, IMAGE_SIZE)
    p = argparse.ArgumentParser()
    add_model_arguments(p, model_required=False)
    args = p.parse_args([])
    assert (args.num_frames, args.image_size) == (FRAMES.eval_frames, IMAGE_SIZE)
    p = argparse.ArgumentParser()
    rl.add_arguments(p)  # `rl` takes no frame flags: they are GRPOConfig fields (DataConfig above), set by --set
    assert not {"image_size", "num_frames"} & set(vars(p.parse_args([])))


def test_one_benchmark_table_feeds_predict_eval_and_the_readers():
    import inspect

    import pytest

    from veason_r1.benchmarks import BENCHMARKS, DEFAULT_MISSING, DEFAULT_SPLITS, SPLIT_HELP
    from veason_r1.commands import eval as eval_cmd
    from veason_r1.commands import predict as predict_cmd
    from veason_r1.data.revos import MeViSDataset, ReVOSDataset
    from veason_r1.eval.vicas import evaluate_vicas
    from veason_r1.inference.predict import open_benchmark

    assert BENCHMARKS == ("revos", "mevis", "reasonvos", "vicas")
    assert DEFAULT_SPLITS == {"revos": "valid", "mevis": "valid_u", "reasonvos": None, "vicas": "val"}
    assert DEFAULT_MISSING == {"revos": "zero", "mevis": "zero", "reasonvos": "skip", "vicas": "zero"}
    assert SPLIT_HELP == "split (defaults: revos valid, mevis valid_u, vicas val; reasonvos has one)"
    for cmd in (eval_cmd, predict_cmd):
        p = argparse.ArgumentParser()
        cmd.add_arguments(p)
        (positional,) = [a for a in p._actions if a.dest == "benchmark"]
        assert tuple(positional.choices) == BENCHMARKS
    assert inspect.signature(ReVOSDataset).parameters["split"].default == DEFAULT_SPLITS["revos"]
    assert inspect.signature(MeViSDataset).parameters["split"].default == DEFAULT_SPLITS["mevis"]
    assert inspect.signature(evaluate_vicas).parameters["split"].default == DEFAULT_SPLITS["vicas"]
    with pytest.raises(ValueError, match="unknown benchmark 'davis'; choose one of revos, mevis, reasonvos, vicas"):
        open_benchmark("davis", "/nonexistent")


def test_no_two_public_classes_share_a_name():
    """Two `SamplingConfig`s or two `ParsedAnswer`s read alike at the call site and mean different things."""
    seen: dict[str, list[str]] = {}
    for path in sorted((ROOT / "veason_r1").rglob("*.py")):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
                seen.setdefault(node.name, []).append(path.relative_to(ROOT).as_posix())
    assert {name: where for name, where in seen.items() if len(where) > 1} == {}


# ----------------------------------------------------------------------------------------------------------------
# The patch rule and the response budget (issue 24): the family table and config.RESPONSE_BUDGET are their homes.

PATCH_NUMBERS = {14, 16, 28, 32}  # Qwen2.5-VL patch 14 x merge 2 = 28; Qwen3-VL / Qwen3.5 patch 16 x merge 2 = 32
BUDGET_NAMES = {"max_new_tokens", "max_response_length", "max_tokens", "response_length"}
SEAM_HOMES = {"veason_r1/models/families.py", "veason_r1/config.py"}
# The transformers trackers' own image encoders (SAM2 / SAM 3 / EdgeTAM patch embeddings), not the policy's patch
# rule: their sizes are part of the propagator architectures these files describe.
PROPAGATOR_ARCHITECTURES = {"veason_r1/models/hf_sam2_convert.py", "veason_r1/models/hf_tiny.py"}
SKIP_DIRS = ("veason_r1/toy/",)  # the toy world is rebuilt elsewhere (its trainer reads its own frozen numbers)


def _patch_and_budget_literals(path: Path) -> list[str]:
    """`x % 28`, `x // 14` (any patch number), `patch_size=14`/`"patch_size": 14`, and a 1024 default for a
    response-budget name (function defaults, fields, `setting(1024, ...)`, add_argument defaults, keywords)."""
    tree = ast.parse(path.read_text())
    found = []

    def patch_const(node) -> bool:
        return isinstance(node, ast.Constant) and type(node.value) is int and node.value in PATCH_NUMBERS

    def budget(node) -> bool:
        if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "setting" and node.args:
            node = node.args[0]
        return isinstance(node, ast.Constant) and type(node.value) is int and node.value == 1024

    for node in ast.walk(tree):
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Mod, ast.FloorDiv)) and patch_const(node.right):
            found.append(f"patch rule {ast.unparse(node)} (line {node.lineno})")
        elif isinstance(node, ast.keyword) and node.arg in ("patch_size", "merge_size", "spatial_merge_size") \
                and patch_const(node.value):
            found.append(f"patch rule {node.arg}={node.value.value} (line {node.value.lineno})")
        elif isinstance(node, ast.Dict):
            for k, v in zip(node.keys, node.values):
                if isinstance(k, ast.Constant) and k.value in ("patch_size", "merge_size") and patch_const(v):
                    found.append(f"patch rule {k.value!r}: {v.value} (line {v.lineno})")
        found += [f"budget {shown}=1024 (line {line})" for name, shown, value, line in named_values(node)
                  if name in BUDGET_NAMES and budget(value)]
    return found


def test_the_patch_rule_and_the_response_budget_have_one_home():
    problems = []
    for path in sorted([*(ROOT / "veason_r1").rglob("*.py"), *(ROOT / "bench").glob("*.py"),
                        *(ROOT / "grpo_reward").rglob("*.py")]):
        rel = path.relative_to(ROOT).as_posix()
        if rel in SEAM_HOMES | PROPAGATOR_ARCHITECTURES or rel.startswith(SKIP_DIRS) or rel.startswith("bench/toy_"):
            continue
        problems += [f"{rel}: {hit}" for hit in _patch_and_budget_literals(path)]
    assert not problems, ("read the patch rule from veason_r1.models.families and the response budget from "
                          "veason_r1.config.RESPONSE_BUDGET: " + "; ".join(problems))


def test_the_seam_scanner_sees_retyped_rules(tmp_path):
    src = tmp_path / "x.py"
    src.write_text("ok = size % 28\nside = size // 14\nd = {'patch_size': 16}\nf(patch_size=14)\n"
                   "def g(max_new_tokens=1024):\n    pass\nclass C:\n    max_response_length: int = setting(1024, ge=1)\n"
                   "p.add_argument('--max-new-tokens', type=int, default=1024)\nh(max_tokens=1024)\n"
                   "fine = size % 7\nalso_fine = 1024 * 1024\n")
    assert len(_patch_and_budget_literals(src)) == 8


def test_family_rows_are_the_rules():
    from veason_r1.config import RESPONSE_BUDGET
    from veason_r1.models.families import DEFAULT_FAMILY, FAMILIES
    from veason_r1.models.policy import SamplingConfig, pixel_bounds, visual_tokens_per_frame
    from veason_r1.rl.config import GRPOConfig

    assert DEFAULT_FAMILY.name == "qwen2_5_vl" and DEFAULT_FAMILY.default_image_size == IMAGE_SIZE
    assert (DEFAULT_FAMILY.patch_size, DEFAULT_FAMILY.merge_size, DEFAULT_FAMILY.factor) == (14, 2, 28)
    assert visual_tokens_per_frame(560) == 400 and visual_tokens_per_frame(112) == 16
    assert pixel_bounds(560) == {"min_pixels": 560 * 560, "max_pixels": 560 * 560}
    for row in FAMILIES.values():  # every family's recipe frame keeps the paper's ~400 visual tokens
        assert row.visual_tokens_per_frame(row.default_image_size) == 400
    assert RESPONSE_BUDGET == 1024 == SamplingConfig().max_new_tokens == GRPOConfig().data.max_response_length


# the propagator's options before the model seams (issue 24): four spellings of three settings
OLD_PROPAGATOR_SPELLINGS = re.compile(r"\b(sam2_ckpt|sam2_checkpoint|sam2_model|sam2_device|VEASON_SAM2_\w+)\b")


def old_propagator_spellings(root: Path) -> list[str]:
    """Lines of code, configs, scripts and docs that spell a propagator option another way than
    `propagator.{name, checkpoint, device, offload}` (models/config.py)."""
    files = [p for d in ("veason_r1", "grpo_reward", "configs", "training_scripts", "eval", "bench", "docs")
             for p in sorted((root / d).rglob("*")) if p.suffix in (".py", ".yaml", ".sh", ".md")]
    files += [root / "README.md"]
    return [f"{p.relative_to(root)}:{i}: {line.strip()}" for p in files if p.is_file()
            for i, line in enumerate(p.read_text().splitlines(), 1) if OLD_PROPAGATOR_SPELLINGS.search(line)]


def test_the_propagator_options_have_one_spelling(tmp_path):
    assert old_propagator_spellings(ROOT) == []
    (tmp_path / "configs").mkdir()
    (tmp_path / "README.md").write_text("reward.propagator.checkpoint\n")
    (tmp_path / "configs" / "x.yaml").write_text("reward:\n  sam2_checkpoint: a.pt\n")
    assert old_propagator_spellings(tmp_path) == ["configs/x.yaml:2: sam2_checkpoint: a.pt"]
