"""Seed CoT generation: the teacher request, reply validation, and the resumable driver against a real HTTP server.

The server is a ThreadingHTTPServer on 127.0.0.1 (port 0) speaking /v1/chat/completions. Each sample's expression
names a fault plan (429, 500/503, slow past the client timeout, malformed bodies, empty / truncated / red-box
replies, then success, or failure forever); the tests check that every sample ends up done exactly once or reported
failed, that a killed run resumes without redoing finished samples, and that the API key never reaches an output.
"""

from __future__ import annotations

import base64
import io
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from veason_r1.data.masks import box_to_square, encode_rle
from veason_r1.data.revos import ReVOSDataset
from veason_r1.data.sampling import anchored_grid
from veason_r1.datacon import cot as cot_mod
from veason_r1.datacon.cot import CotConfig, load_done, repair_jsonl_tail, run_cot
from veason_r1.datacon.cot_request import (
    WORKED_EXAMPLES,
    build_request,
    draw_boxes,
    prepare_sample,
    teacher_frame_size,
)
from veason_r1.datacon.teachers import (
    EndpointConfig,
    OpenAITeacher,
    RejectedReply,
    SyntheticTeacher,
    backoff_delay,
    clean_reply,
)

ROOT = Path(__file__).resolve().parents[1]
API_KEY = "sk-test-SECRET-4c1d9e7f0a"

# ---------------------------------------------------------------------------------------------------------------
# A hand-built ReVOS-format folder


def _rect(h, w, x1, y1, x2, y2):
    m = np.zeros((h, w), dtype=bool)
    m[y1:y2 + 1, x1:x2 + 1] = True
    return m


def build_revos(root: Path, expressions: dict[str, list[str]] | None = None) -> Path:
    """Two videos. vidA (48x64, 12 frames): object 1 moves right and grows, object 2 sits at the right, object 3 is
    only visible in frames 4..7. nested/vidB (60x40 portrait, 5 frames): object 4. Expression texts are given per
    video (default: a handful) so the fault server can key on them."""
    root.mkdir(parents=True, exist_ok=True)
    mask_dict: dict[str, list] = {}
    videos = {}
    specs = {"vidA": (48, 64, 12), "nested/vidB": (60, 40, 5)}
    for vname, (h, w, n) in specs.items():
        frames = [f"{t:05d}" for t in range(n)]
        d = root / "JPEGImages" / vname
        d.mkdir(parents=True, exist_ok=True)
        for t in range(n):
            img = np.full((h, w, 3), (30 + 10 * t) % 255, dtype=np.uint8)
            Image.fromarray(img).save(d / f"{frames[t]}.jpg", quality=95)
        videos[vname] = {"vid_id": len(videos), "height": h, "width": w, "frames": frames, "expressions": {}}
    h, w, n = specs["vidA"]
    mask_dict["1"] = [encode_rle(_rect(h, w, 2 + t, 10, 8 + t + (3 if t == 9 else 0), 20)) for t in range(n)]
    mask_dict["2"] = [encode_rle(_rect(h, w, 40, 30, 55, 44)) for _ in range(n)]
    mask_dict["3"] = [encode_rle(_rect(h, w, 20, 2, 30, 8)) if 4 <= t <= 7 else None for t in range(n)]
    h, w, n = specs["nested/vidB"]
    mask_dict["4"] = [encode_rle(_rect(h, w, 5, 20 + t, 30, 40 + t)) for t in range(n)]
    default = {
        "vidA": ["the small square moving right", "the two squares", "the box that appears for a while",
                 "nothing here"],
        "nested/vidB": ["the tall shape"],
    }
    objs = {"vidA": [(["1"], 0), (["1", "2"], 1), (["3"], 1), ([], 2)], "nested/vidB": [(["4"], 0)]}
    if expressions:  # custom texts: every expression has a target
        objs["vidA"] = objs["vidA"][:3]
    texts = expressions or default
    for vname, exps in texts.items():
        for i, text in enumerate(exps):
            annos, type_id = objs[vname][i % len(objs[vname])]
            videos[vname]["expressions"][str(i)] = {"exp": text, "obj_id": [int(a) for a in annos], "anno_id": annos,
                                                    "type_id": type_id}
    (root / "mask_dict.json").write_text(json.dumps(mask_dict))
    (root / "meta_expressions_train_.json").write_text(json.dumps({"videos": videos}))
    return root


@pytest.fixture()
def revos_root(tmp_path) -> Path:
    return build_revos(tmp_path / "revos")


# ---------------------------------------------------------------------------------------------------------------
# Request building


def test_teacher_frame_size_limits():
    assert teacher_frame_size(720, 1280) == (360, 640)
    assert teacher_frame_size(1280, 720) == (640, 360)
    assert teacher_frame_size(1000, 1000) == (480, 480)  # squares take the portrait limit, as the release
    assert teacher_frame_size(300, 400) == (300, 400)  # never upscaled
    assert teacher_frame_size(600, 640) == (480, 512)


def test_prepare_sample_boxes_come_from_each_objects_own_mask(revos_root):
    ds = ReVOSDataset(revos_root, "train")
    two = next(e for e in ds.expressions if e.text == "the two squares")
    s = prepare_sample(ds, two, num_frames=8, seed=0)
    assert s.keyframe in s.frame_ids and len(s.frame_ids) in (6, 7)
    i = s.frame_ids.index(s.keyframe)
    t = s.keyframe
    obj1 = [2.0 + t, 10.0, 8.0 + t + (3 if t == 9 else 0), 20.0]
    obj2 = [40.0, 30.0, 55.0, 44.0]
    assert s.object_boxes[i] == [obj1, obj2]  # the release's accumulation would make box 2 cover object 1 too
    assert s.keyframe_boxes_560 == [box_to_square(obj1, 48, 64), box_to_square(obj2, 48, 64)]
    # keyframe is among the top-5 union-area frames
    areas = ds.gt_areas(two)
    assert areas[s.keyframe] >= sorted(areas, reverse=True)[4]
    # deterministic in (seed, key), independent of call order
    assert prepare_sample(ds, two, 8, seed=0) == s
    draws = {prepare_sample(ds, two, 8, seed=k).keyframe for k in range(30)}
    assert len(draws) > 1


def test_absent_object_gets_none_and_empty_box(revos_root):
    ds = ReVOSDataset(revos_root, "train")
    appears = next(e for e in ds.expressions if e.text == "the box that appears for a while")
    s = prepare_sample(ds, appears, 8, 0)
    assert 4 <= s.keyframe <= 7
    for t, boxes in zip(s.frame_ids, s.object_boxes):
        assert (boxes[0] is None) == (not 4 <= t <= 7)


def test_build_request_frames_timestamps_boxes_and_instruction(revos_root):
    ds = ReVOSDataset(revos_root, "train")
    expr = next(e for e in ds.expressions if e.text == "the two squares")
    s = prepare_sample(ds, expr, 8, 3)
    req = build_request(ds, s)
    texts = [c["text"] for c in req.content[:-1:2]]
    assert texts == [f"[{t} second]" for t in s.frame_ids]
    assert all(c["type"] == "image_url" for c in req.content[1:-1:2])
    assert req.content[-1]["text"] == req.instruction
    assert f'"{expr.text}"' in req.instruction and f"timestamp **{s.keyframe}**" in req.instruction
    assert "do not choose a different one" in req.instruction and "red rectangles" in req.instruction
    assert WORKED_EXAMPLES[s.example_index] in req.instruction
    assert sum(ex in req.instruction for ex in WORKED_EXAMPLES) == 1
    # the keyframe image has red edges exactly on each object's own box
    k = s.frame_ids.index(s.keyframe)
    url = req.content[2 * k + 1]["image_url"]["url"]
    img = np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB")).astype(int)
    assert img.shape[:2] == (48, 64)  # small frames are not resized
    x1, y1, x2, y2 = (int(v) for v in s.object_boxes[k][1])
    red = img[..., 0] - np.maximum(img[..., 1], img[..., 2]) > 80  # JPEG blurs the 2 px line's colour
    assert red[y1, (x1 + x2) // 2] and red[(y1 + y2) // 2, x2]
    assert not red[(y1 + y2) // 2, (x1 + x2) // 2]  # outline only


def test_draw_boxes_thickness_two():
    out = draw_boxes(np.zeros((20, 20, 3), np.uint8), [[5, 5, 14, 12], None])
    red = out[..., 0] == 255
    assert red[5, 10] and red[4, 10] and not red[3, 10] and not red[6, 10]  # 2 px: edge-1 .. edge
    assert red[8, 14] and red[8, 13] and not red[8, 15] and not red[8, 12]
    assert not red[8, 9]


# ---------------------------------------------------------------------------------------------------------------
# Reply validation and backoff


def test_clean_reply_rejects_and_cleans():
    with pytest.raises(RejectedReply, match="empty"):
        clean_reply("   ", "stop")
    with pytest.raises(RejectedReply, match="empty"):
        clean_reply(None, "stop")
    with pytest.raises(RejectedReply, match="truncated"):
        clean_reply("Step 1: ...", "length")
    for bad in ("As the red box shows, ...", "the object inside the red rectangle", "the Red bounding box",
                "outlined in red, the dog"):
        with pytest.raises(RejectedReply, match="reference boxes"):
            clean_reply(bad, "stop")
    assert clean_reply("<think>Step 1: a red car.</think><answer>{}</answer>", "stop") == "Step 1: a red car."
    assert clean_reply("Step 1: the red box on the table moves.", "stop", expression="the red box on the table")


def test_backoff_doubles_with_jitter_and_cap():
    rng = random.Random(0)
    for attempt, full in ((1, 1.0), (2, 2.0), (3, 4.0), (6, 10.0)):
        for _ in range(20):
            d = backoff_delay(attempt, 1.0, 10.0, rng)
            assert 0.5 * full <= d <= full


# ---------------------------------------------------------------------------------------------------------------
# The fault-injection server


REPLY_USAGE = {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120}
EXPRESSION_RE = re.compile(r'object description: \*\*"(.*?)"\*\*', re.IGNORECASE)


def teacher_text(expression: str) -> str:
    return f"Step 1: frames about {expression}.\nStep 2: the keyframe is best.\nStep 3: it is on the left."


class LocalServer:
    """A threaded HTTP server on a free loopback port, serving `Handler` while used as a context manager."""

    def _serve(self, handler) -> None:
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


class FaultServer(LocalServer):
    """Chat-completions server whose behaviour per request follows a per-expression plan of faults."""

    def __init__(self, plans: dict[str, list[str]], default: str = "ok", slow_s: float = 1.2, delay_s: float = 0.0):
        self.plans = {k: list(v) for k, v in plans.items()}
        self.default = default
        self.slow_s = slow_s
        self.delay_s = delay_s
        self.log: list[tuple[str, str, str]] = []  # (expression, action, authorization)
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):  # keep test output clean
                pass

            def _send(self, code, body: bytes, ctype="application/json", headers=None):
                try:
                    self.send_response(code)
                    self.send_header("Content-Type", ctype)
                    self.send_header("Content-Length", str(len(body)))
                    for k, v in (headers or {}).items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length))
                if self.path.rstrip("/") != "/v1/chat/completions":
                    return self._send(404, b'{"error": {"message": "not found"}}')
                text = " ".join(c.get("text", "") for m in body["messages"] for c in m["content"]
                                if c.get("type") == "text")
                m = EXPRESSION_RE.search(text)
                expression = m.group(1) if m else "?"
                auth = self.headers.get("Authorization", "")
                with server.lock:
                    plan = server.plans.get(expression)
                    action = plan.pop(0) if plan else server.default
                    server.log.append((expression, action, auth))
                if auth != f"Bearer {API_KEY}":
                    return self._send(401, b'{"error": {"message": "invalid api key", "type": "auth"}}')
                if server.delay_s:
                    time.sleep(server.delay_s)
                content, finish = teacher_text(expression), "stop"
                if action == "429":
                    return self._send(429, b'{"error": {"message": "rate limited"}}', headers={"Retry-After": "0"})
                if action in ("500", "503"):
                    return self._send(int(action), b'{"error": {"message": "server error"}}')
                if action == "400":
                    return self._send(400, b'{"error": {"message": "bad request"}}')
                if action == "slow":
                    time.sleep(server.slow_s)
                elif action == "malformed":
                    return self._send(200, b'{"id": "x", "choices": [ {"message": ')
                elif action == "html":
                    return self._send(200, b"<html>gateway hiccup</html>", ctype="text/html")
                elif action == "nochoices":
                    return self._send(200, json.dumps({"id": "x", "object": "chat.completion", "created": 0,
                                                       "model": "m", "choices": []}).encode())
                elif action == "empty":
                    content = ""
                elif action == "length":
                    finish = "length"
                elif action == "redbox":
                    content = "Step 1: the person in the red box walks."
                resp = {"id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": body["model"],
                        "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                                     "finish_reason": finish}],
                        "usage": REPLY_USAGE}
                return self._send(200, json.dumps(resp).encode())

        self._serve(Handler)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def requests_for(self, expression: str) -> list[str]:
        with self.lock:
            return [a for e, a, _ in self.log if e == expression]


def endpoint(server: FaultServer, **kw) -> EndpointConfig:
    base = dict(base_url=server.base_url, model="teacher-vlm", timeout=0.5, max_attempts=4, backoff_base=0.01,
                backoff_max=0.05, max_tokens=256)
    base.update(kw)
    return EndpointConfig(**base)


def assert_no_key(out_dir: Path, *texts: str) -> None:
    for p in out_dir.rglob("*"):
        if p.is_file():
            assert API_KEY.encode() not in p.read_bytes(), f"API key found in {p}"
    for t in texts:
        assert API_KEY not in t


FAULT_PLANS = {
    "e429": ["429", "429", "ok"],
    "e5xx": ["500", "503", "ok"],
    "eslow": ["slow", "ok"],
    "emalformed": ["malformed", "ok"],
    "ehtml": ["html", "ok"],
    "enochoices": ["nochoices", "ok"],
    "eempty": ["empty", "ok"],
    "elength": ["length", "ok"],
    "eredbox": ["redbox", "ok"],
    "eok": ["ok"],
    "edead": ["500"] * 10,
    "edead_slow": ["slow"] * 10,
}


def test_fault_injection_every_sample_done_once_or_failed(tmp_path, capsys):
    names = list(FAULT_PLANS)
    root = build_revos(tmp_path / "revos", {"vidA": names[:9], "nested/vidB": names[9:]})
    key_of = {n: f"vidA/{i}" if i < 9 else f"nested/vidB/{i - 9}" for i, n in enumerate(names)}
    ds = ReVOSDataset(root, "train")
    out = tmp_path / "cot"
    reasons: list[str] = []
    with FaultServer(FAULT_PLANS) as server:
        teacher = OpenAITeacher(endpoint(server), API_KEY, on_retry=reasons.append, seed=0)
        summary = run_cot(ds, teacher, out, CotConfig(concurrency=4), progress=True)
        log = list(server.log)
    for expected in ("HTTP 429", "HTTP 500", "HTTP 503", "timeout", "malformed response", "empty reply",
                     "truncated reply", "reference boxes"):
        assert any(expected in r for r in reasons), expected
    done = load_done(out)
    lines = [json.loads(x) for x in (out / "cot_records.jsonl").read_text().splitlines()]
    assert len(lines) == len(done)  # no duplicates
    failed = {f["key"]: f for f in (json.loads(x) for x in (out / "cot_failures.jsonl").read_text().splitlines())}
    all_keys = {e.key for e in ds.expressions}
    # the type_id 2 expression of the default layout is not used here; every expression has a target
    assert set(done) | set(failed) == all_keys and not set(done) & set(failed)
    assert set(failed) == {key_of["edead"], key_of["edead_slow"]}
    assert "HTTP 500" in failed[key_of["edead"]]["reason"] and failed[key_of["edead"]]["attempts"] == 4
    assert "timeout" in failed[key_of["edead_slow"]]["reason"]
    for rec in done.values():
        assert rec["CoT"] == teacher_text(rec["exp"])
        assert rec["conversation"][1]["value"].startswith(f"<think>{rec['CoT']}</think>\n<answer>")
    # each plan was followed to its end: retries = faults before success, attempts capped at max_attempts
    expected_retries = 0
    for name, plan in FAULT_PLANS.items():
        sent = [a for e, a, _ in log if e == name]
        if name.startswith("edead"):
            assert len(sent) == 4
            expected_retries += 3
        else:
            assert sent == plan
            expected_retries += len(plan) - 1
    assert summary.retried == expected_retries
    assert summary.done == len(done) == len(FAULT_PLANS) - 2 and summary.failed == 2
    assert summary.prompt_tokens == 100 * summary.done and summary.completion_tokens == 20 * summary.done
    final = json.loads((out / "cot_records.json").read_text())
    assert [r["key"] for r in final] == [e.key for e in ds.expressions if e.key in done]
    saved = json.loads((out / "cot_summary.json").read_text())
    assert saved["retried"] == expected_retries and saved["failed"] == 2
    assert all(auth == f"Bearer {API_KEY}" for _, _, auth in log)
    captured = capsys.readouterr()
    assert "retried=" in captured.err and "failed=2" in captured.err  # the progress bar's counts
    assert_no_key(out, captured.out, captured.err)


def test_fatal_error_stops_sending(tmp_path):
    root = build_revos(tmp_path / "revos", {"vidA": ["a", "b", "c"], "nested/vidB": ["d", "e"]})
    ds = ReVOSDataset(root, "train")
    with FaultServer({}, default="400") as server:
        teacher = OpenAITeacher(endpoint(server), API_KEY)
        summary = run_cot(ds, teacher, tmp_path / "cot", CotConfig(concurrency=1), progress=False)
        sent = len(server.log)
    assert sent == 1 and summary.aborted and "HTTP 400" in summary.aborted
    assert summary.done == 0 and summary.failed == 1


def test_cancel_stops_retrying(revos_root):
    from veason_r1.datacon.teachers import TeacherError

    ds = ReVOSDataset(revos_root, "train")
    sample = prepare_sample(ds, ds.expressions[0], 8, 0)
    request = build_request(ds, sample)
    with FaultServer({}, default="500") as server:
        teacher = OpenAITeacher(endpoint(server, backoff_base=30.0, backoff_max=30.0), API_KEY)
        threading.Timer(0.3, teacher.cancel).start()
        start = time.monotonic()
        with pytest.raises(TeacherError, match="cancelled"):
            teacher.generate(sample, request)
        assert time.monotonic() - start < 5 and len(server.log) == 1


def test_wrong_key_is_fatal_and_not_logged(tmp_path, capsys):
    root = build_revos(tmp_path / "revos", {"vidA": ["a"], "nested/vidB": ["b"]})
    ds = ReVOSDataset(root, "train")
    with FaultServer({}) as server:
        teacher = OpenAITeacher(endpoint(server), "sk-wrong-key-XYZ")
        summary = run_cot(ds, teacher, tmp_path / "cot", CotConfig(concurrency=1), progress=False)
    assert summary.aborted and "HTTP 401" in summary.aborted
    text = "".join(p.read_text() for p in (tmp_path / "cot").glob("*.json*"))
    assert "sk-wrong-key-XYZ" not in text and "sk-wrong-key-XYZ" not in repr(teacher)


def test_resume_after_killed_run(tmp_path):
    names = [f"resume{i}" for i in range(10)]
    root = build_revos(tmp_path / "revos", {"vidA": names[:6], "nested/vidB": names[6:]})
    out = tmp_path / "cot"
    env = {**os.environ, "OPENAI_API_KEY": API_KEY, "PYTHONPATH": str(ROOT)}
    with FaultServer({}, delay_s=0.3) as server:
        cmd = [sys.executable, "-m", "veason_r1", "cot", "--root", str(root), "--out-dir", str(out),
               "--base-url", server.base_url, "--model", "teacher-vlm", "--concurrency", "2", "--timeout", "5",
               "--no-sft", "--no-progress"]
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            deadline = time.monotonic() + 40
            jsonl = out / "cot_records.jsonl"
            while time.monotonic() < deadline:
                if jsonl.exists() and len(jsonl.read_text().splitlines()) >= 3:
                    break
                assert proc.poll() is None, proc.stderr.read().decode()
                time.sleep(0.05)
            else:
                pytest.fail("the first run wrote no records in time")
            proc.send_signal(signal.SIGKILL)
        finally:
            if proc.poll() is None:
                proc.kill()
            stdout, stderr = proc.communicate(timeout=10)
        assert proc.returncode == -signal.SIGKILL
        before = load_done(out)
        assert 3 <= len(before) < len(names)
        with open(jsonl, "a") as f:  # and a torn line, as if killed mid-write
            f.write('{"key": "vidA/9", "video": "vi')
        n_first = len(server.log)
        server.delay_s = 0.0
        ds = ReVOSDataset(root, "train")
        summary = run_cot(ds, OpenAITeacher(endpoint(server, timeout=5), API_KEY), out, CotConfig(concurrency=2),
                          progress=False)
        second = [e for e, _, _ in server.log[n_first:]]
    assert summary.already_done == len(before) and summary.done == len(names) - len(before)
    assert not set(second) & {r["exp"] for r in before.values()}  # finished samples were not asked again
    keys = [json.loads(x)["key"] for x in jsonl.read_text().splitlines()]
    assert sorted(keys) == sorted(e.key for e in ds.expressions) and len(keys) == len(set(keys))
    assert_no_key(out, stdout.decode(), stderr.decode())


def test_repair_torn_tail(tmp_path):
    p = tmp_path / "x.jsonl"
    p.write_text('{"key": "a"}\n{"key": "b"}\n{"key": ')
    assert repair_jsonl_tail(p) and p.read_text() == '{"key": "a"}\n{"key": "b"}\n'
    assert not repair_jsonl_tail(p)


def test_rerun_with_another_seed_is_refused(tmp_path, revos_root):
    ds = ReVOSDataset(revos_root, "train")
    facts = {"videos": {v: {"objects": {}, "expressions": {}} for v in ds.videos}}
    teacher = SyntheticTeacher(facts)
    summary = run_cot(ds, teacher, tmp_path / "cot", CotConfig(seed=0), progress=False)
    assert summary.done == 4 and summary.skipped == 1  # the no-target expression gets no CoT
    with pytest.raises(ValueError, match="seed"):
        run_cot(ds, teacher, tmp_path / "cot", CotConfig(seed=1), progress=False)


def test_cli_key_from_environment_only(tmp_path, revos_root, monkeypatch, capsys):
    from veason_r1.cli import main

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    code = main(["cot", "--root", str(revos_root), "--out-dir", str(tmp_path / "o"), "--base-url",
                 "http://127.0.0.1:9/v1", "--model", "m", "--no-progress"])
    assert code == 2 and "OPENAI_API_KEY" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------------------
# Synthetic teacher on the synthetic benchmark


def test_synthetic_pipeline_from_cli(synth_root, tmp_path, capsys):
    from veason_r1.cli import main

    meta = tmp_path / "select.json"
    assert main(["sample", "--root", str(synth_root), "--out", str(meta), "--target-size", "20", "--seed", "1"]) == 0
    out = tmp_path / "cot"
    code = main(["cot", "--root", str(synth_root), "--meta", str(meta), "--out-dir", str(out), "--teacher",
                 "synthetic", "--no-progress", "--image-size", "112"])
    assert code == 0
    records = json.loads((out / "cot_records.json").read_text())
    assert len(records) == 20
    facts = json.loads((synth_root / "synthetic_facts.json").read_text())["videos"]
    for r in records:
        steps = r["CoT"].split("\n")
        assert [s[:7] for s in steps] == ["Step 1:", "Step 2:", "Step 3:"]
        assert f"timestamp {r['keyframe']}" in steps[1] and f"frame {r['keyframe']}" in steps[2]
        for oid in r["obj_id"]:
            o = facts[r["video"]]["objects"][str(oid)]
            assert f"{o['size']} {o['color']} {o['shape']}" in steps[1]
        assert r["frame_ids"] == anchored_grid(r["length"], r["keyframe"], 8)
        assert r["keyframe"] in r["frame_ids"]
        assert r["conversation"][0]["value"].count("<image>") == len(r["frame_ids"])
        payload = json.loads(r["solution"][len("<answer>"):-len("</answer>")])
        assert payload["keyframe_timestamp"] == r["keyframe"] and len(payload["bbox_2d_list"]) == len(r["obj_id"])
    rows = json.loads((out / "sft" / "veason_cot.json").read_text())
    assert len(rows) == 20
    # deterministic: a second folder gets the same records
    out2 = tmp_path / "cot2"
    assert main(["cot", "--root", str(synth_root), "--meta", str(meta), "--out-dir", str(out2), "--teacher",
                 "synthetic", "--no-progress", "--no-sft"]) == 0
    assert json.loads((out2 / "cot_records.json").read_text()) == records
    assert cot_mod.FINAL_JSON == "cot_records.json"


# ---------------------------------------------------------------------------------------------------------------
# Issue 26 item 1: no credential in any output, in any encoding


class EchoServer(LocalServer):
    """Answers every request with `code` and a body that quotes the request's headers (as some gateways do)."""

    def __init__(self, code: int):
        self.requests: list[dict] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                headers = dict(self.headers.items())
                server.requests.append(headers)
                auth = self.headers.get("Authorization", "")
                token = auth.split(" ")[-1]
                from urllib.parse import quote

                encoded = base64.b64encode(f"x:{token}".encode()).decode()
                body = json.dumps({"error": {"message": f"{quote(token, safe='')} {encoded} rejected: {auth}; "
                                                        f"headers {headers}"}}).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self._serve(Handler)

    def url(self, userinfo: str = "") -> str:
        return f"http://{userinfo}127.0.0.1:{self.httpd.server_address[1]}/v1"


ODD_KEY = "sk-odd/Key+with=Chars%and-0123456789abcdef"


def _forms(key: str, user: str = "user") -> list[str]:
    from urllib.parse import quote, quote_plus

    b64 = base64.b64encode(f"{user}:{key}".encode()).decode()
    return [key, quote(key, safe=""), quote_plus(key), b64, b64[4:30], base64.b64encode(key.encode()).decode()[:-4]]


def test_redact_removes_every_encoding_of_the_key():
    from veason_r1.redact import redact_urls

    user = "alice"
    for form in _forms(ODD_KEY, user):
        text = f"header was Authorization: Basic {form} and raw {form}!"
        assert form not in redact_urls(text, ODD_KEY), form
    b64 = base64.b64encode(f"{user}:{ODD_KEY}".encode()).decode()
    assert b64[8:40] not in redact_urls(f"echo: {b64}", ODD_KEY)  # the key's part, at any alignment


@pytest.mark.parametrize("code", [400, 401])
def test_echoed_credential_never_written_or_printed(tmp_path, monkeypatch, capsys, code):
    from veason_r1.cli import main

    root = build_revos(tmp_path / "revos", {"vidA": ["a"], "nested/vidB": ["b"]})
    monkeypatch.setenv("OPENAI_API_KEY", ODD_KEY)
    with EchoServer(code) as server:
        rc = main(["cot", "--root", str(root), "--out-dir", str(tmp_path / "cot"), "--base-url", server.url(),
                   "--model", "m", "--no-progress", "--max-attempts", "1", "--no-sft"])
    assert server.requests and rc != 0
    out = capsys.readouterr()
    texts = [out.out, out.err] + [p.read_text() for p in (tmp_path / "cot").rglob("*") if p.is_file()]
    for form in _forms(ODD_KEY, "x"):
        for t in texts:
            assert form not in t, (form, t[:300])


@pytest.mark.parametrize("where", ["flag", "env"])
def test_url_user_info_is_refused_and_never_sent(tmp_path, monkeypatch, capsys, where):
    from veason_r1.cli import main

    root = build_revos(tmp_path / "revos", {"vidA": ["a"], "nested/vidB": ["b"]})
    monkeypatch.setenv("OPENAI_API_KEY", "sk-other-0123456789")
    with EchoServer(401) as server:
        url = server.url(f"user:{ODD_KEY.replace('%', '%25').replace('/', '%2F')}@")
        args = ["cot", "--root", str(root), "--out-dir", str(tmp_path / "cot"), "--model", "m", "--no-progress"]
        if where == "flag":
            args += ["--base-url", url]
            monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
        else:
            monkeypatch.setenv("OPENAI_BASE_URL", url)
            from veason_r1.cli import build_parser  # the default is read when the parser is built
            assert build_parser().parse_args(args).base_url == url
        rc = main(args)
    assert rc == 2 and not server.requests
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 2 and "credentials" in err  # error + hint
    assert "sk-odd" not in err and "sk-other" not in err and "127.0.0.1" not in err


def test_symlinked_sft_folder_is_refused(synth_root, tmp_path, capsys):
    """Issue 26 item 4: a link inside --out-dir must not make cot write outside it."""
    from veason_r1.cli import main

    outside = tmp_path / "outside"
    outside.mkdir()
    out = tmp_path / "cot"
    out.mkdir()
    (out / "sft").symlink_to(outside, target_is_directory=True)
    code = main(["cot", "--root", str(synth_root), "--out-dir", str(out), "--teacher", "synthetic", "--limit", "2",
                 "--no-progress", "--image-size", "56"])
    err = capsys.readouterr().err
    assert code == 2 and "outside" in err and not any(outside.iterdir())
