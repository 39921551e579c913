"""Untrusted datasets, configs and resumes (issue 16): each probe class is rebuilt here and run through the CLI.

Path escapes: names from a dataset (video names, expression ids, frame names) that point outside --data / --out
stop the run before any write, and a sentinel folder outside --out survives byte for byte. No silently wrong
result: short mask lists, frames of another size, duplicate frames, empty queries, corrupt finished PNGs, a resume
with another SAM2 checkpoint. Start-up validation of flags and models. One clear line (exit 2) for user errors,
library errors mapped to the file, anno_id and frame. Files keep the umask; URL credentials never reach a file.
Everything runs on CPU in seconds: the oracles replace the policy and SAM2 is the tiny random-weight config.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import stat
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from veason_r1.cli import main
from veason_r1.data.masks import encode_rle
from veason_r1.errors import BadInput, MissingInput, UserError

H, W = 32, 48


# ----------------------------------------------------------------------------------------------------------------
# A tiny ReVOS-format dataset built per test (2 videos x 4 frames, one moving square per object)


def _meta(root: Path) -> dict:
    return json.loads((root / "meta_expressions_valid_.json").read_text())


def _save(path: Path, obj) -> None:
    path.write_text(json.dumps(obj))


def make_dataset(root: Path, n_frames: int = 4) -> Path:
    rng = np.random.default_rng(0)
    videos, mask_dict, fg = {}, {}, {}
    for v, name in enumerate(("v0", "v1")):
        frames = [f"{i:05d}" for i in range(n_frames)]
        folder = root / "JPEGImages" / name
        folder.mkdir(parents=True)
        rles = []
        for t, f in enumerate(frames):
            Image.fromarray(rng.integers(0, 255, (H, W, 3), dtype=np.uint8)).save(folder / f"{f}.jpg")
            m = np.zeros((H, W), bool)
            m[4 + t : 16 + t, 6 + 3 * t : 20 + 3 * t] = True
            rles.append(encode_rle(m))
        mask_dict[str(v)] = rles
        fg[name] = {"masks_rle": rles}
        exps = {"0": {"exp": f"the square in {name}", "obj_id": [0], "anno_id": [str(v)], "type_id": 0},
                "1": {"exp": "what moves right?", "obj_id": [0], "anno_id": [str(v)], "type_id": 1}}
        videos[name] = {"vid_id": name, "height": H, "width": W, "frames": frames, "expressions": exps}
    _save(root / "meta_expressions_valid_.json", {"videos": videos})
    _save(root / "mask_dict.json", mask_dict)
    _save(root / "mask_dict_foreground.json", fg)
    return root


@pytest.fixture()
def data(tmp_path) -> Path:
    return make_dataset(tmp_path / "data")


def tree_digest(folder: Path) -> dict[str, str]:
    """Every file under `folder` (relative path -> sha256): a folder that "survives untouched" keeps this."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def oracle_predict(data: Path, out: Path, *extra: str) -> list[str]:
    return ["predict", "revos", "--data", str(data), "--out", str(out), "--oracle-keyframe", "--oracle-boxes",
            "--sam2", "tiny", "--device", "cpu", "--no-progress", "--batch-size", "2", *extra]


@pytest.fixture()
def sentinel(tmp_path) -> Path:
    """A folder outside every --out, with a file, that must survive every test untouched."""
    folder = tmp_path / "keep"
    folder.mkdir()
    (folder / "precious.txt").write_text("do not delete")
    return folder


def run_cli(argv, capsys) -> tuple[int, str]:
    code = main(argv)
    return code, capsys.readouterr().err


# ----------------------------------------------------------------------------------------------------------------
# 1. Names from a dataset are untrusted paths


def test_expression_id_dotdot_with_merge_deletes_nothing(data, tmp_path, capsys):
    """Probe: an expression id `..` beside `0` and `1` made `predict --merge` delete the whole prediction folder."""
    out = tmp_path / "pred"
    assert main(oracle_predict(data, out, "--merge")) == 0
    before = tree_digest(out)
    meta = _meta(data)
    meta["videos"]["v0"]["expressions"][".."] = dict(meta["videos"]["v0"]["expressions"]["0"])
    _save(data / "meta_expressions_valid_.json", meta)
    code, err = run_cli(oracle_predict(data, out, "--merge"), capsys)
    assert code == 2
    assert err.startswith("error: ") and "expressions['..']: expression id: unsafe name" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 2  # error line + hint line
    assert tree_digest(out) == before  # stage-1 cache and finished masks all there, unchanged


def test_expression_id_escaping_out_never_touches_a_folder_outside(data, tmp_path, sentinel, capsys):
    """Probe: `../../keep` made the second (resuming) run delete a folder outside --out and fill it with PNGs."""
    out = tmp_path / "runs" / "pred"
    meta = _meta(data)
    meta["videos"]["v0"]["expressions"]["../../keep"] = dict(meta["videos"]["v0"]["expressions"]["0"])
    _save(data / "meta_expressions_valid_.json", meta)
    before = tree_digest(sentinel)
    for _ in range(2):  # the first run and the usual "re-run to resume"
        code, err = run_cli(oracle_predict(data, out), capsys)
        assert code == 2 and "'../../keep'" in err and "escapes the root" in err
    assert tree_digest(sentinel) == before and not list(sentinel.glob("*.png"))
    assert not out.exists()  # stopped before any write


@pytest.mark.parametrize("bad", ["/abs/video", "../../escaped", "v0/../../x"])
def test_video_name_escaping_data_or_out_is_refused_before_any_write(data, tmp_path, bad, capsys):
    """Probe: an absolute video name or one starting with ../.. read frames outside --data and wrote masks outside
    --out (an absolute name wrote into the source dataset's JPEGImages/)."""
    meta = _meta(data)
    meta["videos"][bad] = meta["videos"].pop("v1")
    _save(data / "meta_expressions_valid_.json", meta)
    source_before = tree_digest(data)
    outside_before = sorted(p.name for p in tmp_path.iterdir())
    out = tmp_path / "pred"
    code, err = run_cli(oracle_predict(data, out), capsys)
    assert code == 2 and f"videos[{bad!r}]: video name: unsafe name" in err
    assert tree_digest(data) == source_before and not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == outside_before


def test_frame_name_with_a_path_is_refused(data, tmp_path, capsys):
    meta = _meta(data)
    meta["videos"]["v0"]["frames"][1] = "../00001"
    _save(data / "meta_expressions_valid_.json", meta)
    code, err = run_cli(oracle_predict(data, tmp_path / "pred"), capsys)
    assert code == 2 and "frames[1]: frame name: unsafe name" in err and not (tmp_path / "pred").exists()


def test_symlink_inside_out_pointing_outside_is_refused(data, tmp_path, sentinel, capsys):
    out = tmp_path / "pred"
    out.mkdir()
    (out / "v0").symlink_to(sentinel, target_is_directory=True)
    before = tree_digest(sentinel)
    code, err = run_cli(oracle_predict(data, out), capsys)
    assert code == 2 and "outside" in err and "symbolic link" in err
    assert tree_digest(sentinel) == before


@pytest.mark.parametrize("link", [".stage1", ".partial"])
def test_symlinked_cache_folder_is_refused(data, tmp_path, sentinel, capsys, link):
    """Probe (issue 26 item 4): a symlinked PRED/.stage1 made predict write its cache outside --out."""
    out = tmp_path / "pred"
    out.mkdir()
    (out / link).symlink_to(sentinel, target_is_directory=True)
    before = tree_digest(sentinel)
    code, err = run_cli(oracle_predict(data, out), capsys)
    assert code == 2 and "outside" in err and "symbolic link" in err and "Traceback" not in err
    assert tree_digest(sentinel) == before


def test_a_folder_predict_did_not_create_is_never_replaced(data, tmp_path, capsys):
    out = tmp_path / "pred"
    mine = out / "v0" / "0"
    mine.mkdir(parents=True)
    (mine / "notes.txt").write_text("the user's own file")
    code, err = run_cli(oracle_predict(data, out), capsys)
    assert code == 2 and "refusing to delete or replace a folder veason-r1 did not create" in err
    assert (mine / "notes.txt").read_text() == "the user's own file"


def test_doctor_checks_expression_ids_and_frame_names_with_the_same_rule(data, capsys):
    meta = _meta(data)
    meta["videos"]["v0"]["expressions"][".."] = dict(meta["videos"]["v0"]["expressions"]["0"])
    meta["videos"]["v1"]["frames"][2] = "sub/00002"
    _save(data / "meta_expressions_valid_.json", meta)
    assert main(["doctor", str(data), "--no-progress"]) == 1
    out = capsys.readouterr().out
    assert "videos['v0'].expressions['..']]: expression id: '..' contains '..' and escapes the root" in out
    assert "videos['v1'].frames[2]]: 'sub/00002' contains a path separator" in out


def test_safe_join_and_owned_folders(tmp_path):
    from veason_r1.paths import mark_owned, remove_owned_tree, safe_join

    assert safe_join(tmp_path, "cat/v1", "3", key="k") == tmp_path / "cat" / "v1" / "3"
    for parts in (("..",), ("/etc",), ("v", ".."), ("v", "a/b"), ("C:\\x",), ("",)):
        with pytest.raises(BadInput, match="k: "):
            safe_join(tmp_path, *parts, key="k")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    with pytest.raises(UserError, match="did not create"):
        remove_owned_tree(foreign, tmp_path)
    with pytest.raises(UserError, match="not a folder inside"):
        remove_owned_tree(tmp_path, tmp_path)
    mark_owned(tmp_path / "mine", "test")
    remove_owned_tree(tmp_path / "mine", tmp_path)
    assert foreign.is_dir() and not (tmp_path / "mine").exists()


# ----------------------------------------------------------------------------------------------------------------
# 2. No silently wrong result


def test_short_mask_list_is_an_error_naming_anno_id_and_lengths(data, tmp_path, capsys):
    """Probe: a mask list shorter than the video was scored as empty GT in the missing frames (J 77.8 vs 11.1)."""
    masks = json.loads((data / "mask_dict.json").read_text())
    masks["1"] = masks["1"][:2]
    _save(data / "mask_dict.json", masks)
    (tmp_path / "pred").mkdir()
    code, err = run_cli(["eval", "revos", "--data", str(data), "--pred", str(tmp_path / "pred"), "--workers", "1",
                         "--no-progress"], capsys)
    assert code == 2
    assert "mask_dict.json: anno_id '1' (video 'v1', expression '0') has 2 masks for the video's 4 frames" in err


def test_short_foreground_list_is_an_error(data, capsys):
    from veason_r1.data.revos import ReVOSDataset

    fg = json.loads((data / "mask_dict_foreground.json").read_text())
    fg["v0"]["masks_rle"] = fg["v0"]["masks_rle"][:3]
    _save(data / "mask_dict_foreground.json", fg)
    with pytest.raises(BadInput, match="video 'v0': 3 foreground masks for 4 frames"):
        ReVOSDataset(data, "valid")


def test_frame_of_another_size_names_the_video_and_frame(data, tmp_path, capsys):
    Image.fromarray(np.zeros((H + 8, W, 3), np.uint8)).save(data / "JPEGImages" / "v1" / "00002.jpg")
    code, err = run_cli(oracle_predict(data, tmp_path / "pred"), capsys)
    assert code == 2
    assert "v1/00002.jpg: frame is 40x48, but 'v1' is 32x48 (video 'v1', frame 2 ('00002'))" in err
    assert not (tmp_path / "pred" / "v1").exists()  # no mask folder at the wrong size


def test_duplicate_frame_names_are_refused(data, tmp_path, capsys):
    meta = _meta(data)
    meta["videos"]["v0"]["frames"][3] = "00001"
    _save(data / "meta_expressions_valid_.json", meta)
    code, err = run_cli(oracle_predict(data, tmp_path / "pred"), capsys)
    assert code == 2 and "frames[3]: duplicate frame name '00001' (also at index 1)" in err


def fake_policy(folder: Path, model_type: str = "qwen2_5_vl") -> Path:
    """A folder that passes the start-up checks (config, weights, tokenizer, processor) but is no real model."""
    import torch
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    _save(folder / "config.json", {"model_type": model_type})
    save_file({"w": torch.zeros(64)}, str(folder / "model.safetensors"))
    (folder / "tokenizer.json").write_text("{}")
    (folder / "preprocessor_config.json").write_text("{}")
    return folder


def test_empty_query_is_refused_before_the_policy_loads(data, tmp_path, capsys):
    meta = _meta(data)
    meta["videos"]["v1"]["expressions"]["1"]["exp"] = "   "
    _save(data / "meta_expressions_valid_.json", meta)
    model = fake_policy(tmp_path / "model")  # would fail to load: the check must come first
    code, err = run_cli(["predict", "revos", "--data", str(data), "--out", str(tmp_path / "pred"), "--model",
                         str(model), "--sam2", "tiny", "--no-progress"], capsys)
    assert code == 2 and "1 expression(s) with an empty query: 'v1/1'" in err


def test_limit_minus_one_is_refused(data, tmp_path, capsys):
    """Probe: `--limit -1` predicted 3 of 4 expressions (a Python slice)."""
    with pytest.raises(SystemExit) as e:
        main(oracle_predict(data, tmp_path / "pred", "--limit", "-1"))
    assert e.value.code == 2 and "--limit: expected a positive integer, got '-1'" in capsys.readouterr().err


def test_doctor_fails_without_the_foreground_file(data, capsys):
    (data / "mask_dict_foreground.json").unlink()
    assert main(["doctor", str(data), "--no-progress"]) == 1
    assert "no mask_dict_foreground.json" in capsys.readouterr().out


def test_reused_infer_out_keeps_no_stale_masks_and_refuses_foreign_folders(tmp_path):
    from veason_r1.data.video import ArraySource
    from veason_r1.inference.pipeline import Answer, VideoResult, write_result

    def result(names):
        masks = np.zeros((len(names), 8, 8), bool)
        answer = Answer("", [0], "", 0, [], [], [])
        return VideoResult("q", names, 8, 8, answer, masks, {}), ArraySource(np.zeros((len(names), 8, 8, 3), np.uint8))

    out = tmp_path / "infer"
    write_result(*result([f"a{i}" for i in range(5)]), out, overlay=False, progress=False)
    write_result(*result(["b0", "b1", "b2"]), out, overlay=False, progress=False)
    assert sorted(p.stem for p in (out / "masks").glob("*.png")) == ["b0", "b1", "b2"]
    assert json.loads((out / "result.json").read_text())["num_frames"] == 3
    other = tmp_path / "other"
    (other / "masks").mkdir(parents=True)
    (other / "masks" / "mine.png").write_bytes(b"x")
    with pytest.raises(UserError, match="not written by `veason-r1 infer`"):
        write_result(*result(["b0"]), other, overlay=False, progress=False)
    assert (other / "masks" / "mine.png").read_bytes() == b"x"


def test_infer_no_overlay_into_a_reused_out_removes_the_previous_overlay(tmp_path):
    """Issue 26 item 8: `infer --no-overlay` into a reused --out left the previous video's overlay.mp4."""
    from veason_r1.data.video import ArraySource
    from veason_r1.inference.pipeline import Answer, VideoResult, write_result

    names = [f"f{i}" for i in range(4)]
    masks = np.zeros((4, 16, 16), bool)
    res = VideoResult("q", names, 16, 16, Answer("", [0], "", 0, [], [], []), masks, {})
    src = ArraySource(np.zeros((4, 16, 16, 3), np.uint8))
    out = tmp_path / "infer"
    write_result(res, src, out, overlay=True, progress=False)
    assert (out / "overlay.mp4").is_file()
    write_result(res, src, out, overlay=False, progress=False)
    assert not (out / "overlay.mp4").exists()
    mine = tmp_path / "mine"  # a folder infer did not write before: nothing of the user's is removed
    mine.mkdir()
    (mine / "overlay.mp4").write_bytes(b"the user's video")
    write_result(res, src, mine, overlay=False, progress=False)
    assert (mine / "overlay.mp4").read_bytes() == b"the user's video"


def test_corrupt_finished_png_is_not_complete_and_is_redone(data, tmp_path, capsys):
    """Probe: a corrupt finished PNG counted as complete on merge."""
    out = tmp_path / "pred"
    assert main(oracle_predict(data, out, "--merge")) == 0
    png = out / "v1" / "0" / "00002.png"
    good = png.read_bytes()
    png.write_bytes(b"\x89PNG" + bytes(len(good) - 4))  # same size, garbage
    capsys.readouterr()
    assert main(oracle_predict(data, out, "--merge-only")) == 1
    assert json.loads((out / "merge_report.json").read_text())["missing_masks"] == ["v1/0"]
    assert main(oracle_predict(data, out, "--merge")) == 0  # the rerun rewrites that folder only
    assert png.read_bytes() == good


def _sam2_checkpoint(path: Path, seed: int) -> Path:
    import torch

    from veason_r1.models.sam2 import build_sam2_model

    torch.save(build_sam2_model("tiny", seed=seed).state_dict(), str(path))
    return path


def test_resume_with_another_sam2_checkpoint_is_refused_naming_the_keys(data, tmp_path, capsys):
    """Probe: a predict killed and resumed with another SAM2 checkpoint mixed old and new masks, merge said complete."""
    a, b = _sam2_checkpoint(tmp_path / "a.pt", 0), _sam2_checkpoint(tmp_path / "b.pt", 1)
    out = tmp_path / "pred"
    assert main(oracle_predict(data, out, "--sam2-ckpt", str(a), "--merge")) == 0
    import shutil

    shutil.rmtree(out / "v1" / "1")  # as if the run had been killed before this folder was written
    before = tree_digest(out)
    capsys.readouterr()
    code, err = run_cli(oracle_predict(data, out, "--sam2-ckpt", str(b), "--merge"), capsys)
    assert code == 2 and "stage2.propagator.checkpoint: cached" in err and "stage2.propagator.checkpoint_files" in err
    assert tree_digest(out) == before  # nothing of the old run was touched, nothing new was mixed in
    code, err = run_cli(oracle_predict(data, out, "--image-size", "56", "--merge"), capsys)
    assert code == 2 and "stage1.inference.image_size: cached 560, now 56" in err


def test_masks_made_with_other_settings_are_not_complete(tmp_path):
    from veason_r1.inference.predict import is_complete, write_expression_masks

    names = ["00000", "00001"]
    write_expression_masks(tmp_path, "v0", "0", names, np.zeros((2, 4, 4), bool), tmp_path / ".partial", "aaaa")
    assert is_complete(tmp_path, "v0", "0", names, "aaaa")
    assert not is_complete(tmp_path, "v0", "0", names, "bbbb")
    assert not is_complete(tmp_path, "v0", "0", names + ["00002"], "aaaa")


def test_sft_trainer_log_is_cut_back_to_the_resumed_checkpoint(tmp_path):
    """Probe: interrupted SFT runs logged 45-51 loss entries for 40 steps."""
    from veason_r1.sft.train import read_losses, truncate_trainer_log

    out = tmp_path / "adapter"
    for step in (20, 40):
        (out / f"checkpoint-{step}").mkdir(parents=True)
    lines = [{"current_steps": s, "loss": float(s)} for s in range(5, 51, 5)]  # killed at step 50
    (out / "trainer_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines) + '{"current_st')
    assert truncate_trainer_log(out) == 40
    assert read_losses(out) == [float(s) for s in range(5, 41, 5)]
    for step in (20, 40):
        (out / f"checkpoint-{step}").rmdir()
    assert truncate_trainer_log(out) == 0 and read_losses(out) == []  # no checkpoint: training starts over


# ----------------------------------------------------------------------------------------------------------------
# 3. Flags and configs validated at start-up


@pytest.mark.parametrize("flags, message", [
    (["--batch-size", "0"], "--batch-size: expected a positive integer"),
    (["--num-frames", "0"], "--num-frames: expected a positive integer"),
    (["--image-size", "100"], "--image-size: expected a positive multiple of 28"),
    (["--max-new-tokens", "ten"], "--max-new-tokens: expected a positive integer, got 'ten'"),
    (["--shard", "3/2"], "--shard: 3/2: need 0 <= i < n"),
    (["--dtype", "fp8"], "--dtype: invalid choice"),
])
def test_predict_flags_are_validated(data, tmp_path, flags, message, capsys):
    with pytest.raises(SystemExit) as e:
        main(oracle_predict(data, tmp_path / "pred", *flags))
    assert e.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["cot", "--root", "R", "--out-dir", "O", "--concurrency", "0"], "--concurrency: expected a positive integer"),
    (["cot", "--root", "R", "--out-dir", "O", "--timeout", "-1"], "--timeout: expected a positive number"),
    (["eval", "revos", "--data", "D", "--pred", "P", "--workers", "0"], "--workers: expected a positive integer"),
    (["infer", "--video", "v", "--query", "q", "--out", "o", "--model", "m", "--image-size", "0"], "--image-size"),
    (["sft", "--out", "o", "--lora-rank", "2.5"], "--lora-rank: expected an integer, got '2.5'"),
])
def test_other_stages_validate_flags(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_mistyped_sam2_or_missing_checkpoint_fail_before_stage_1(data, tmp_path, capsys):
    """Probe: a mistyped --sam2 or a missing --sam2-ckpt was caught only after the whole policy pass."""
    out = tmp_path / "pred"
    argv = oracle_predict(data, out)
    argv[argv.index("tiny")] = "sam2.1_hiera_lx"
    code, err = run_cli(argv, capsys)
    assert code == 2 and "--sam2: unknown SAM2 config 'sam2.1_hiera_lx'" in err and "hint: use tiny" in err
    code, err = run_cli(oracle_predict(data, out, "--sam2-ckpt", str(tmp_path / "nope.pt")), capsys)
    assert code == 2 and "nope.pt: --sam2-checkpoint: checkpoint not found" in err
    assert not out.exists()


def test_sft_config_types_ranges_and_yaml_errors(tmp_path, capsys):
    from veason_r1.sft.config import SFTConfig

    path = tmp_path / "sft.yaml"
    path.write_text("lora_rank: 8\nlearning_rate: [1e-4\n")
    with pytest.raises(BadInput, match=r"sft.yaml: line 3 column 1: YAML syntax error: expected ','"):
        SFTConfig.from_yaml(path)
    for text, message in (('use_cpu: "no"\n', "use_cpu: expected true or false, got 'no'"),
                          ("lora_rank: true\n", "lora_rank: expected an integer, got True"),
                          ("save_steps: 0\n", "save_steps: must be positive, got 0"),
                          ("lr_scheduler_type: cosin\n", "lr_scheduler_type: must be one of"),
                          ("max_steps: 0\nnum_train_epochs: 0\n", "num_train_epochs")):
        path.write_text(text)
        with pytest.raises(BadInput, match=f"sft.yaml: {message}"):
            SFTConfig.from_yaml(path)
    code, err = run_cli(["sft", "--out", str(tmp_path / "o"), "--config", str(path)], capsys)
    assert code == 2 and err.startswith(f"error: {path}: num_train_epochs")
    code, err = run_cli(["sft", "--out", str(tmp_path / "o"), "--data", str(tmp_path), "--save-steps", "0"], capsys)
    assert code == 2 and "error: --save-steps: must be positive, got 0" in err
    assert not (tmp_path / "o").exists()


def test_sft_lr_schedulers_mirror_transformers():
    from transformers.trainer_utils import SchedulerType

    from veason_r1.sft.config import LR_SCHEDULERS

    assert set(LR_SCHEDULERS) == {s.value for s in SchedulerType}


# ----------------------------------------------------------------------------------------------------------------
# 4. One clear line for a user error; library errors name the file


def _break_rle(data: Path, anno: str, t: int, rle: dict) -> None:
    masks = json.loads((data / "mask_dict.json").read_text())
    masks[anno][t] = rle
    _save(data / "mask_dict.json", masks)


@pytest.mark.parametrize("rle, message", [
    ({"size": [H, W], "counts": "garbage!!"}, "anno_id '1', frame 2: invalid RLE (Invalid RLE mask representation)"),
    (encode_rle(np.ones((10, 10), bool)), "anno_id '1', frame 2: RLE is 10x10, the video's frames are 32x48"),
])
def test_invalid_rle_names_anno_id_and_frame(data, tmp_path, rle, message, capsys):
    _break_rle(data, "1", 2, rle)
    code, err = run_cli(oracle_predict(data, tmp_path / "pred"), capsys)
    assert code == 2 and message in err and "mask_dict.json" in err and "Traceback" not in err


def test_truncated_frame_names_the_frame(data, tmp_path, capsys):
    frame = data / "JPEGImages" / "v0" / "00003.jpg"
    frame.write_bytes(frame.read_bytes()[:200])
    code, err = run_cli(oracle_predict(data, tmp_path / "pred"), capsys)
    assert code == 2 and "v0/00003.jpg: unreadable frame (video 'v0', frame 3 ('00003'))" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 2


def _predict_with_model(data, tmp_path, model) -> list[str]:
    return ["predict", "revos", "--data", str(data), "--out", str(tmp_path / "pred"), "--model", str(model),
            "--sam2", "tiny", "--no-progress"]


def test_truncated_safetensors_and_wrong_model_type_name_the_file(data, tmp_path, capsys):
    model = fake_policy(tmp_path / "m")
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-40])
    code, err = run_cli(_predict_with_model(data, tmp_path, model), capsys)
    assert code == 2 and f"error: {weights}: truncated safetensors file" in err
    bert = fake_policy(tmp_path / "bert", model_type="bert")
    code, err = run_cli(_predict_with_model(data, tmp_path, bert), capsys)
    assert code == 2 and "config.json: model_type is 'bert', expected one of 'qwen2_5_vl', 'qwen3_vl', 'qwen3_5'" in err
    assert not (tmp_path / "pred").exists()


def test_truncated_sam2_checkpoint_names_the_file(data, tmp_path, capsys):
    from veason_r1.models.sam2 import build_sam2_model

    ckpt = _sam2_checkpoint(tmp_path / "sam2.pt", 0)
    ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    code, err = run_cli(oracle_predict(data, tmp_path / "pred", "--sam2-ckpt", str(ckpt)), capsys)
    assert code == 2 and f"error: {ckpt}: --sam2-checkpoint: not a PyTorch checkpoint (truncated" in err
    with pytest.raises(BadInput, match=r"sam2.pt: SAM2 checkpoint does not load"):
        build_sam2_model("tiny", checkpoint=str(ckpt))  # the loader itself names the file too


def test_debug_shows_the_traceback_and_bugs_keep_theirs(data, tmp_path, monkeypatch):
    meta = _meta(data)
    meta["videos"]["v0"]["expressions"][".."] = meta["videos"]["v0"]["expressions"]["0"]
    _save(data / "meta_expressions_valid_.json", meta)
    with pytest.raises(BadInput, match="expression id"):
        main(["--debug", *oracle_predict(data, tmp_path / "pred")])
    with pytest.raises(BadInput):
        main([*oracle_predict(data, tmp_path / "pred"), "--debug"])
    from veason_r1.commands import doctor

    def bug(args):
        raise RuntimeError("a bug")

    monkeypatch.setattr(doctor, "run", bug)
    with pytest.raises(RuntimeError, match="a bug"):  # not a user error: the traceback stays
        main(["doctor", str(data)])


def test_user_errors_survive_pickling_and_are_builtin_types():
    e = pickle.loads(pickle.dumps(BadInput("f.json", "bad", hint="fix it")))
    assert (e.where, e.what, e.hint, str(e)) == ("f.json", "bad", "fix it", "f.json: bad")
    assert isinstance(e, ValueError) and isinstance(MissingInput("x", "y"), FileNotFoundError)


# ----------------------------------------------------------------------------------------------------------------
# 5. Files and secrets


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_atomic_writes_honour_the_umask(tmp_path, umask, mode):
    from veason_r1.io_utils import atomic_write_text

    old = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "r.json", "{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "r.json").stat().st_mode) == mode
    os.chmod(tmp_path / "r.json", 0o640)
    atomic_write_text(tmp_path / "r.json", "{}")  # a replaced file keeps its mode
    assert stat.S_IMODE((tmp_path / "r.json").stat().st_mode) == 0o640


def test_url_credentials_are_never_written_or_printed(data, tmp_path, capsys):
    """Probe: an API key embedded in --base-url was written to cot_run.json and printed."""
    from veason_r1.redact import redact_urls

    assert redact_urls("http://u:SECRET@h/v1?api_key=K2&x=1") == "http://***@h/v1?api_key=***&x=1"
    out = tmp_path / "cot"
    assert main(["cot", "--root", str(data), "--split", "valid", "--out-dir", str(out), "--base-url",
                 "http://alice:URLSECRET@127.0.0.1:9/v1", "--model", "m", "--api-key", "FLAGSECRET"]) == 2
    assert "URLSECRET" not in capsys.readouterr().err  # user info is refused (issue 26: sent as Basic auth)
    base = "http://127.0.0.1:9/v1?api_key=QUERYSECRET"
    code = main(["cot", "--root", str(data), "--split", "valid", "--out-dir", str(out), "--base-url", base,
                 "--model", "m", "--api-key", "FLAGSECRET", "--max-attempts", "1", "--limit", "1", "--timeout", "2",
                 "--no-sft", "--no-progress"])
    printed = capsys.readouterr()
    assert code in (1, 3)  # nothing listens on port 9: the sample fails
    written = "".join(p.read_text() for p in out.iterdir() if p.is_file())
    assert "127.0.0.1:9" in json.loads((out / "cot_run.json").read_text())["teacher"]
    for secret in ("URLSECRET", "QUERYSECRET", "FLAGSECRET"):
        assert secret not in written and secret not in printed.out + printed.err


def test_unknown_anno_id_is_one_line(data, tmp_path, capsys):
    meta = _meta(data)
    meta["videos"]["v0"]["expressions"]["0"]["anno_id"] = ["99"]
    _save(data / "meta_expressions_valid_.json", meta)
    code, err = run_cli(oracle_predict(data, tmp_path / "pred"), capsys)
    assert code == 2 and "mask_dict.json: unknown anno_id '99'" in err and "Traceback" not in err


# ----------------------------------------------------------------------------------------------------------------
# Issue 26 item 7: one line, not a traceback


@pytest.mark.parametrize("code, words", [(28, "No space left"), (30, "Read-only file system")])
def test_full_or_read_only_output_is_one_line(tmp_path, monkeypatch, capsys, code, words):
    import tempfile

    def refuse(*a, dir=None, **k):
        raise OSError(code, os.strerror(code), str(dir))

    monkeypatch.setattr(tempfile, "mkstemp", refuse)  # every atomic write goes through it
    rc, err = run_cli(["synth", "--out", str(tmp_path / "s"), "--videos", "4", "--max-frames", "8", "--no-progress"],
                      capsys)
    assert rc == 2 and words in err and "Traceback" not in err and len(err.strip().splitlines()) == 2
    with pytest.raises(OSError):
        main(["--debug", "synth", "--out", str(tmp_path / "t"), "--videos", "4", "--max-frames", "8",
              "--no-progress"])


def test_sam2_checkpoint_of_another_size_is_one_line(data, tmp_path, capsys):
    import torch

    from veason_r1.models.sam2 import build_sam2_model

    state = build_sam2_model("tiny").state_dict()
    key = next(k for k, v in state.items() if v.ndim >= 1 and v.shape[0] > 1)
    state[key] = torch.zeros(state[key].shape[0] + 1, *state[key].shape[1:])
    ckpt = tmp_path / "other.pt"
    torch.save({"model": state}, ckpt)
    code, err = run_cli(oracle_predict(data, tmp_path / "pred", "--sam2-ckpt", str(ckpt)), capsys)
    assert code == 2 and "does not fit SAM2 config 'tiny'" in err and key in err
    assert len(err.strip().splitlines()) == 2


@pytest.mark.parametrize("content, message", [
    (None, "unknown SAM2 config"),  # a missing yaml
    ("model: [unclosed", "not a readable YAML file"),
    ("foo: 1\n", "not a SAM2 config (no model._target_)"),
    ("model:\n  _target_: no.such.Module\n", "does not build a SAM2 model"),
])
def test_sam2_yaml_missing_broken_or_wrong_is_one_line(data, tmp_path, capsys, content, message):
    yaml_file = tmp_path / "my_sam2.yaml"
    if content is not None:
        yaml_file.write_text(content)
    argv = [a if a != "tiny" else str(yaml_file) for a in oracle_predict(data, tmp_path / "pred")]
    code, err = run_cli(argv, capsys)
    assert code == 2 and message in err and "Traceback" not in err and len(err.strip().splitlines()) <= 2
    if content is not None and "_target_: no" not in content:
        assert not (tmp_path / "pred").exists()  # refused before stage 1


def test_empty_or_missing_rl_yaml_is_one_line(tmp_path, capsys):
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    for argv, message in [(["rl", "--config", str(empty), "--backend", "local"], "is empty"),
                          (["demo", "--out", str(tmp_path / "d"), "--rl-config", str(empty)], "is empty"),
                          (["demo", "--out", str(tmp_path / "d"), "--rl-config", str(tmp_path / "no.yaml")],
                           "config file not found")]:
        code, err = run_cli(argv, capsys)
        assert code == 2 and message in err and "Traceback" not in err, (argv, err)
    assert not (tmp_path / "d").exists()


def test_a_300_character_video_name_is_a_doctor_finding_not_a_crash(data, tmp_path, capsys):
    long = "v" * 300
    meta = _meta(data)
    meta["videos"][long] = meta["videos"].pop("v1")
    _save(data / "meta_expressions_valid_.json", meta)
    fg = json.loads((data / "mask_dict_foreground.json").read_text())
    fg[long] = fg.pop("v1")
    _save(data / "mask_dict_foreground.json", fg)
    code = main(["doctor", str(data), "--no-progress"])
    out = capsys.readouterr()
    assert code == 1 and "longer than file systems allow" in out.out + out.err and "Traceback" not in out.err
    code, err = run_cli(oracle_predict(data, tmp_path / "pred"), capsys)
    assert code == 2 and "longer than file systems allow" in err and not (tmp_path / "pred").exists()


@pytest.mark.parametrize("rle, message", [
    (dict(encode_rle(np.ones((H, W), bool)), size=[10, 10]), "anno_id '1', frame 2: RLE is 10x10, the video's frames"),
    (dict(encode_rle(np.ones((10, 10), bool)), size=[H, W]), f"anno_id '1', frame 2: RLE runs cover 100 pixels, the "
                                                             f"frame has {H * W}"),
])
def test_oracle_path_says_the_rle_size_is_wrong_as_eval_does(data, tmp_path, rle, message, capsys):
    """Issue 26 item 7: predict's oracle path said "invalid RLE" (or nothing at all) where eval names the size."""
    _break_rle(data, "1", 2, rle)
    code, err = run_cli(oracle_predict(data, tmp_path / "pred"), capsys)
    assert code == 2 and message in err and "Traceback" not in err


def test_rle_counts_match_pycocotools():
    from veason_r1.data.masks import rle_counts

    rng = np.random.default_rng(1)
    for _ in range(100):
        m = rng.random((int(rng.integers(1, 40)), int(rng.integers(1, 40)))) < rng.random()
        counts = rle_counts(encode_rle(m))
        flat = m.T.reshape(-1)  # column-major, runs start with zeros
        runs, value, n = [], False, 0
        for v in flat:
            if v != value:
                runs.append(n)
                value, n = v, 0
            n += 1
        runs.append(n)
        assert counts == runs


def test_a_video_without_frames_is_one_line_on_predict(data, tmp_path, capsys):
    meta = _meta(data)
    meta["videos"]["v1"]["frames"] = []
    _save(data / "meta_expressions_valid_.json", meta)
    masks = json.loads((data / "mask_dict.json").read_text())
    masks["1"] = []
    _save(data / "mask_dict.json", masks)
    fg = json.loads((data / "mask_dict_foreground.json").read_text())
    fg["v1"]["masks_rle"] = []
    _save(data / "mask_dict_foreground.json", fg)
    code, err = run_cli(oracle_predict(data, tmp_path / "pred"), capsys)
    assert code == 2 and "video 'v1' has no frames" in err and "Traceback" not in err
    assert not (tmp_path / "pred").exists()


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o002, 0o664)])
def test_model_weights_honour_the_umask(tmp_path, umask, mode):
    """Issue 26 item 8: weights were written 0600 (safetensors' default) while results were 0644."""
    from veason_r1.models.tiny import make_tiny_qwen

    old = os.umask(umask)
    try:
        out = make_tiny_qwen(tmp_path / "tiny", seed=0)
    finally:
        os.umask(old)
    weights = list(out.glob("*.safetensors"))
    assert weights and all(stat.S_IMODE(w.stat().st_mode) == mode for w in weights)
