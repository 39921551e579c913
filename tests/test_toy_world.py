"""The toy world: the shipped toy checkpoints load by name and still score what their manifests say, the training
pieces (VOS export for SAM2's own dataset classes, the instruct-task stream, the fast encoder, the step budget) do
what they claim, and `make-toy` rebuilds a checkpoint end to end (a few steps)."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

pytest.importorskip("sam2")
pytest.importorskip("training")


@pytest.fixture(autouse=True)
def _one_thread():
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_shipped_checkpoints_match_their_manifests_and_sizes():
    from veason_r1.models.toy import toy_policy_dir, toy_sam2_checkpoint

    ckpt = toy_sam2_checkpoint()
    manifest = json.loads((ckpt.parent / "manifest.json").read_text())
    assert manifest["sha256"] == _sha256(ckpt) and ckpt.stat().st_size <= 8 * 2**20
    policy = toy_policy_dir()
    manifest = json.loads((policy / "manifest.json").read_text())
    weights = sorted(policy.glob("*.safetensors"))
    assert {f.name: _sha256(f) for f in weights} == manifest["weights"]
    assert sum(f.stat().st_size for f in weights) <= 12 * 2**20
    config = json.loads((policy / "config.json").read_text())
    assert config["model_type"] == "qwen2_5_vl" and config["dtype"] == "float32"  # loaded in fp32
    from safetensors import safe_open

    with safe_open(str(weights[0]), framework="pt") as st:  # stored in bf16
        assert {str(st.get_slice(k).get_dtype()) for k in st.keys()} == {"BF16"}


def test_toy_sam2_loads_by_name_and_tracks_better_than_random_weights(tmp_path):
    """Held-out oracle-box J on 3 fixed videos: the shipped weights beat the same architecture at random init by a
    wide margin (a broken loader, config or file would not)."""
    import torch

    from veason_r1.models.sam2 import load_sam2
    from veason_r1.toy.sam2_train import ToySAM2TrainConfig, build_train_model, heldout_videos, oracle_box_j

    videos = heldout_videos(ToySAM2TrainConfig(heldout_videos=3))
    trained = oracle_box_j(load_sam2("toy", device="cpu"), videos)
    torch.save({"model": build_train_model(seed=1).state_dict()}, tmp_path / "random.pt")
    random = oracle_box_j(load_sam2("toy", checkpoint=str(tmp_path / "random.pt"), device="cpu"), videos)
    assert trained["objects"] == random["objects"] >= 3
    assert trained["oracle_box_J"] > 0.2 and trained["oracle_box_J"] > random["oracle_box_J"] + 0.15


def test_toy_policy_loads_by_name_and_answers_its_tasks_in_json():
    from veason_r1.models.toy import toy_policy_dir
    from veason_r1.toy.policy_train import ToyPolicyTrainConfig, evaluate, heldout_samples

    samples = heldout_samples(ToyPolicyTrainConfig(heldout_samples=6))
    metrics = evaluate(toy_policy_dir(), samples)
    assert metrics["parse_rate"] >= 0.9  # the manifest: 0.998 on 600 held-out samples
    assert metrics["when"]["n"] == metrics["ground"]["n"] == metrics["ground_at"]["n"] == 6


def test_vos_export_is_read_by_sam2s_own_dataset_classes(tmp_path):
    from training.dataset.vos_raw_dataset import PNGRawDataset

    from veason_r1.data.synthetic import make_video
    from veason_r1.toy.sam2_train import ToySAM2TrainConfig, _loader, export_vos

    cfg = ToySAM2TrainConfig(train_videos=3, batch_size=2, num_frames=4, workers=0)
    root = export_vos(tmp_path / "vos", cfg, progress=False)
    raw = PNGRawDataset(img_folder=str(root / "JPEGImages"), gt_folder=str(root / "Annotations"))
    video, segments = raw.get_video(0)
    truth = make_video(0, __import__("veason_r1.data.synthetic", fromlist=["SynthConfig"]).SynthConfig(
        **{**cfg.synth.__dict__, "seed": cfg.data_seed, "num_videos": 3}))
    assert len(video.frames) == truth.num_frames
    for t in (0, truth.num_frames - 1):
        masks = segments.load(t)
        for k, obj in enumerate(truth.objects):
            got = masks.get(k + 1)
            want = truth.visible[obj.obj_id][t]
            assert (got.numpy() if got is not None else np.zeros_like(want)).tolist() == want.tolist()
    batch = next(iter(_loader(root, cfg, 128)))
    assert tuple(batch.img_batch.shape[:2]) == (4, 2) and tuple(batch.img_batch.shape[-2:]) == (128, 128)
    again = export_vos(tmp_path / "vos", cfg, progress=False)  # finished videos are skipped, not rewritten
    assert again == root and len(list((root / "done").iterdir())) == 3


def test_instruct_stream_boxes_match_the_rendered_masks_and_is_deterministic():
    from veason_r1.toy.grounding import GroundingConfig, SampleStream

    def draw(seed):
        s = SampleStream(GroundingConfig(), seed=seed)
        return [next(s) for _ in range(40)]

    first, second, other = draw(7), draw(7), draw(8)
    assert [x.answer for x in first] == [x.answer for x in second]
    assert [x.answer for x in first] != [x.answer for x in other]
    tasks = {x.task for x in first}
    assert tasks == {"ground", "when", "ground_at"}
    for x in first:
        assert x.prompt.count("<image>") == len(x.images) and all(i.shape == (112, 112, 3) for i in x.images)
        obj = json.loads(x.answer)
        if x.task == "when":
            assert obj["keyframe_timestamp"] == x.keyframe and x.keyframe in x.frame_ids
            assert f"({x.keyframe}s)" in x.prompt
        else:
            assert obj["bbox_2d_list"] == x.boxes
            assert all(0 <= v <= 112 for b in x.boxes for v in b)
            assert all(b[0] <= b[2] and b[1] <= b[3] for b in x.boxes)


def test_fast_encoder_equals_the_qwen_processor(tmp_path):
    import torch

    from veason_r1.models.policy import load_processor
    from veason_r1.toy.grounding import GroundingConfig, SampleStream
    from veason_r1.toy.policy_train import encode, encode_with_processor

    processor = load_processor(__import__("veason_r1.models.toy", fromlist=["x"]).toy_policy_dir())
    stream = SampleStream(GroundingConfig(), seed=3)
    for _ in range(12):
        sample = next(stream)
        fast, ref = encode(processor, sample, 112), encode_with_processor(processor, sample, 112)
        for key in ("input_ids", "labels", "mm_token_type_ids", "image_grid_thw"):
            assert torch.equal(fast[key], ref[key]), key
        assert torch.allclose(fast["pixel_values"], ref["pixel_values"], atol=1e-5, rtol=0)
        assert int((fast["labels"] != -100).sum()) == len(processor.tokenizer(sample.answer + "<|im_end|>",
                                                                             add_special_tokens=False)["input_ids"])


def test_training_batch_gives_the_logits_of_the_processor_path(tmp_path):
    """The build trains the model every later stage runs: a collated training batch (uint8 frames patchified as on
    the GPU, right padding) gives the processor path's logits at every real token, i.e. the same 3D M-RoPE
    positions (without mm_token_type_ids transformers silently falls back to 1D positions)."""
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration

    from veason_r1.models.policy import load_processor
    from veason_r1.models.tiny import make_tiny_qwen
    from veason_r1.models.toy import TOY_POLICY_CONFIG
    from veason_r1.toy.grounding import GroundingConfig, SampleStream
    from veason_r1.toy.policy_train import collate, encode, encode_with_processor, to_model_inputs

    torch.set_num_threads(1)
    folder = make_tiny_qwen(tmp_path / "model", seed=0, config=TOY_POLICY_CONFIG)
    processor = load_processor(folder)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(folder, dtype=torch.float32).eval()
    stream = SampleStream(GroundingConfig(), seed=5)
    samples = [next(stream) for _ in range(4)]
    assert len({len(s.images) for s in samples}) > 1  # one-frame and multi-frame samples, so padding happens
    batch = to_model_inputs(collate([encode(processor, s, 112, pixels=False) for s in samples],
                                    processor.tokenizer.pad_token_id), processor.image_processor, "cpu")
    batch.pop("labels")
    with torch.no_grad():
        train_logits = model(**batch).logits
        for i, s in enumerate(samples):
            ref = encode_with_processor(processor, s, 112)
            ref.pop("labels")
            ref_logits = model(**{k: v[None] if k in ("input_ids", "mm_token_type_ids") else v
                                  for k, v in ref.items()}).logits[0]
            n = ref_logits.shape[0]
            assert torch.allclose(train_logits[i, :n], ref_logits, atol=2e-4, rtol=0), i
            # the check has teeth: without mm_token_type_ids (the old training path) the logits differ
            flat = model(**{k: v[None] if k == "input_ids" else v for k, v in ref.items()
                            if k != "mm_token_type_ids"}).logits[0]
            assert (flat - ref_logits).abs().max() > 1e-2


def test_number_tokens_make_coordinates_single_tokens():
    from veason_r1.models.policy import load_processor
    from veason_r1.models.toy import toy_policy_dir

    tok = load_processor(toy_policy_dir()).tokenizer
    ids = tok("[[112, 57, 3, 999]]", add_special_tokens=False)["input_ids"]
    pieces = [tok.decode([i]) for i in ids]
    assert {"112", "57", "3", "999"} <= set(pieces)
    assert tok.decode(ids) == "[[112, 57, 3, 999]]"


def test_step_budget_fixes_the_total_from_the_measured_speed(monkeypatch):
    from veason_r1.toy import schedule

    clock = [0.0]
    monkeypatch.setattr(schedule.time, "time", lambda: clock[0])
    budget = schedule.StepBudget(requested=10_000, seconds=100.0, warm=20, probe=80)
    clock[0] = 10.0  # data loaders warming up: the first 20 steps took 10 s and do not count
    total = None
    for step in range(0, 400):
        if step > 20:
            clock[0] += 0.1  # then 10 steps per second
        total = budget.update(step)
    assert 915 <= total <= 925  # 20 warm-up steps in 10 s, then the 90 s left at 10 steps/s
    assert schedule.StepBudget(500, 100.0).update(0) == 500
    capped = schedule.StepBudget(requested=300, seconds=1e6)
    clock[0] = 0.0
    for step in range(200):
        clock[0] += 0.01
        total = capped.update(step)
    assert total == 300
    assert schedule.cosine_lr(0, 100, 1.0, 10, 0.1) == pytest.approx(0.1)
    assert schedule.cosine_lr(100, 100, 1.0, 10, 0.1) == pytest.approx(0.1)
    assert schedule.cosine_lr(10, 100, 1.0, 10, 0.1) == pytest.approx(1.0)


@pytest.mark.slow
def test_make_toy_rebuilds_both_checkpoints_with_manifests(tmp_path):
    from veason_r1.cli import main

    assert main(["make-toy", "sam2", "--out", str(tmp_path / "s"), "--steps", "2", "--batch-size", "2",
                 "--workers", "1", "--device", "cpu", "--train-videos", "4", "--heldout", "1"]) == 0
    m = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert m["sha256"] == _sha256(tmp_path / "s" / "sam2_toy.pt") and m["train"]["steps"] == 2
    assert not (tmp_path / "s" / "_work").exists()
    assert main(["make-toy", "policy", "--out", str(tmp_path / "p"), "--steps", "2", "--batch-size", "2",
                 "--workers", "0", "--device", "cpu", "--heldout", "1", "--set", "coord_sigma=1.5",
                 "--set", "tasks.absent_keep=0.5"]) == 0
    m = json.loads((tmp_path / "p" / "manifest.json").read_text())
    assert m["train"]["steps"] == 2 and set(m["weights"]) == {"model.safetensors"}
    assert m["config"]["coord_sigma"] == 1.5 and m["config"]["tasks"]["absent_keep"] == 0.5  # the soft loss ran
    assert (tmp_path / "p" / "tokenizer.json").is_file() and (tmp_path / "p" / "config.json").is_file()


def test_make_toy_refuses_bad_flags(tmp_path, capsys):
    from veason_r1.cli import main

    with pytest.raises(SystemExit) as e:  # argparse: exit 2 with the flag named
        main(["make-toy", "policy", "--out", str(tmp_path), "--steps", "0"])
    assert e.value.code == 2 and "--steps" in capsys.readouterr().err
    assert main(["make-toy", "policy", "--out", str(tmp_path / "y"), "--set", "coord_sigmaa=1"]) == 2
    assert "unknown key 'coord_sigmaa'" in capsys.readouterr().err and not (tmp_path / "y").exists()
    assert main(["make-toy", "policy", "--out", str(tmp_path / "x"), "--train-videos", "3"]) == 2
    err = capsys.readouterr().err
    assert "--train-videos" in err and "Traceback" not in err and not (tmp_path / "x").exists()


def test_make_toy_owns_only_what_it_made(tmp_path, capsys):
    """Issue 26 items 3 and 7: a folder make-toy did not make is refused before any write (it used to delete any
    `_work` there and overwrite config.json), an --out that is a file or an unknown --device is one line; the
    shipped toy folders carry make-toy's marker, so rebuilding into them stays possible."""
    from veason_r1.cli import main
    from veason_r1.models.toy import TOY_POLICY_DIR, TOY_SAM2_CHECKPOINT
    from veason_r1.paths import OWNER_MARKER

    user = tmp_path / "mine"
    (user / "_work").mkdir(parents=True)
    (user / "_work" / "notes.txt").write_text("keep me")
    (user / "config.json").write_text("{}")
    assert main(["make-toy", "policy", "--out", str(user), "--steps", "1"]) == 2
    assert "was not made by veason-r1 make-toy" in capsys.readouterr().err
    assert (user / "_work" / "notes.txt").read_text() == "keep me" and (user / "config.json").read_text() == "{}"
    a_file = tmp_path / "file"
    a_file.write_text("x")
    assert main(["make-toy", "sam2", "--out", str(a_file)]) == 2
    assert "exists and is not a folder" in capsys.readouterr().err and a_file.read_text() == "x"
    assert main(["make-toy", "sam2", "--out", str(tmp_path / "t"), "--device", "tpu"]) == 2
    err = capsys.readouterr().err
    assert "--device" in err and "Traceback" not in err and not (tmp_path / "t").exists()
    for folder in (TOY_POLICY_DIR, TOY_SAM2_CHECKPOINT.parent):
        assert "make-toy" in (folder / OWNER_MARKER).read_text()


def test_toy_training_resumes_and_refuses_other_settings(tmp_path):
    """A stopped run continues from its train state (same steps, its loss history kept); a run with other settings
    in the same work folder is refused, naming the differing setting."""
    import dataclasses

    from veason_r1.errors import BadInput
    from veason_r1.toy.sam2_train import ToySAM2TrainConfig, train

    cfg = ToySAM2TrainConfig(train_videos=3, batch_size=2, num_frames=2, workers=0, steps=25, checkpoint_every=10,
                             warmup_steps=2)
    first = train(tmp_path, cfg, progress=False)
    assert first["steps"] == 25 and [h["step"] for h in first["history"]] == [25]
    again = train(tmp_path, cfg, progress=False)  # finished: nothing more to do, the history is kept
    assert again["steps"] == 25 and again["history"] == first["history"]
    with pytest.raises(BadInput, match=r"lr: 0.002 -> 0.01"):
        train(tmp_path, dataclasses.replace(cfg, lr=0.01), progress=False)


def _interrupted_then_resumed(monkeypatch, train, work, cfg, stop_at: int):
    """Run `train` until the checkpoint at `stop_at` is written, die there (as a SIGKILL after a save would), then
    re-run the same call: the resume."""
    from veason_r1.toy.schedule import TrainState

    save = TrainState.save

    def save_then_die(self, *args, **kwargs):
        save(self, *args, **kwargs)
        if self.step == stop_at:
            raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(TrainState, "save", save_then_die)
        with pytest.raises(KeyboardInterrupt):
            train(work, cfg, progress=False)
    return train(work, cfg, progress=False)


def _weights(work):
    import torch

    return torch.load(work / "train_state.pt", map_location="cpu", weights_only=False)["model"]


@pytest.mark.parametrize("which", ["sam2", "policy"])
def test_a_resumed_build_equals_an_uninterrupted_one_and_refuses_new_steps(tmp_path, monkeypatch, which):
    """Issue 26 item 5: each step's batch is a function of (seed, step), so a build killed after a checkpoint and
    re-run ends with exactly the weights of one that ran through, whatever the number of loader processes; a resume
    with another step count is refused, naming it."""
    import dataclasses

    import torch

    from veason_r1.errors import BadInput

    torch.set_num_threads(1)
    if which == "sam2":
        from veason_r1.toy.sam2_train import ToySAM2TrainConfig as Config
        from veason_r1.toy.sam2_train import train

        cfg = Config(train_videos=3, batch_size=2, num_frames=2, workers=0, steps=4, checkpoint_every=2,
                     warmup_steps=1)
    else:
        from veason_r1.toy.policy_train import ToyPolicyTrainConfig as Config
        from veason_r1.toy.policy_train import train

        cfg = Config(batch_size=2, workers=0, steps=4, checkpoint_every=2, warmup_steps=1)
    resumed = _interrupted_then_resumed(monkeypatch, train, tmp_path / "a", cfg, stop_at=2)
    through = train(tmp_path / "b", dataclasses.replace(cfg, workers=1), progress=False)
    assert resumed["steps"] == through["steps"] == 4
    a, b = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(BadInput, match=r"steps: 4 -> 6"):
        train(tmp_path / "a", dataclasses.replace(cfg, steps=6), progress=False)


def test_the_learning_curve_so_far_is_on_disk_at_every_logged_point(tmp_path):
    """A build stopped between checkpoints (a GPU call's deadline) still leaves its curve: every `log` rewrites
    `_work/curve.json`, which bench/make_toy_gpu.sh packs when the final one was not written."""
    import json

    from veason_r1.toy.schedule import TrainState

    state = TrainState(tmp_path / "_work" / "train_state.pt")
    state.history = []
    (tmp_path / "_work").mkdir()
    state.step = 25
    state.log(loss=3.5)
    state.step = 50
    state.log(loss=3.25, s=1.5)
    assert json.loads(state.curve_path.read_text()) == [{"step": 25, "loss": 3.5}, {"step": 50, "loss": 3.25, "s": 1.5}]


def test_the_gpu_build_script_packs_every_build_when_its_deadline_stops_them(tmp_path):
    """bench/make_toy_gpu.sh on the CPU at a tiny setting: DEADLINE stops the three builds mid-training (a GPU call
    that runs long must still return its logs), each is packed with its log, and none of its processes is left."""
    import os
    import subprocess
    import sys
    import tarfile
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    work, out = tmp_path / "work", tmp_path / "out"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": str(root), "SKIP_WHL": "1", "DEVICE": "cpu", "DEADLINE": "25", "SAM2_S": "5",
           "POLICY_S": "5", "SAM2_WORKERS": "0", "POLICY_WORKERS": "0", "POLICY_B_WORKERS": "0", "WORK": str(work),
           "SAM2_ARGS": "--train-videos 3 --heldout 1 --batch-size 2 --steps 100000",
           "POLICY_ARGS": "--set batch_size=2 --steps 100000", "POLICY_HELDOUT": "2", "POLICY_B_SET": "--set lr=1e-3",
           "OUT": str(out), "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    run = subprocess.run(["bash", str(root / "bench/make_toy_gpu.sh")], cwd=root, env=env, capture_output=True,
                         text=True, timeout=240)
    assert run.returncode == 0, run.stderr[-2000:]
    packed = (out / "packed.txt").read_text()
    assert "DEADLINE 25 s: stopping the builds still running" in packed
    for name in ("sam2", "policy", "policy_b"):
        assert f"{name} packed at" in packed
        with tarfile.open(out / f"{name}.tgz") as tar:
            log = tar.extractfile("./build.log").read().decode()
        assert f"{name} rc=143" in log  # stopped by the deadline's SIGTERM, not finished
    left = subprocess.run(["pgrep", "-f", f"make-toy [a-z0-9]+ --out {work}/"], capture_output=True, text=True)
    assert left.stdout == ""
