"""Teachers that write the 3-step chain of thought for one sample.

- `OpenAITeacher`: any OpenAI-compatible chat-completions endpoint through the `openai` package. The client's own
  retries are off; ours retry timeouts, connection errors, 408/409/429 and 5xx, malformed bodies, and replies that
  are empty, truncated (finish_reason "length") or mention the red reference boxes, with exponential backoff and
  jitter (a 429's Retry-After is honoured, capped), up to `max_attempts`. Other 4xx (bad key, unknown model, bad
  request) are fatal: retrying cannot help. The API key lives only in the client object; it is not part of the
  config dataclass, and any error text that is kept has it redacted.
- `SyntheticTeacher`: for the synthetic benchmark only. It writes the same three steps from the generator's ground
  truth (`synthetic_facts.json`: what moves where, why the keyframe shows the target best, where it is), so the
  whole pipeline runs offline. Its text is a template, not a model's reasoning: useful to test the plumbing and to
  teach a tiny model the output format, not as real CoT data.
"""

from __future__ import annotations

import json
import random
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from veason_r1.config import RESPONSE_BUDGET
from veason_r1.datacon.cot_request import CotSample, TeacherRequest

RED_BOX_PATTERN = re.compile(
    r"\bred\s+(?:[a-z-]+\s+)?(?:box(?:es)?|rectangles?|bounding|outlines?|markings?|borders?|frames? around|"
    r"annotations?|marks?|markers?|highlights?)\b|\b(?:boxed|outlined|highlighted|marked)\s+in\s+red\b|"
    r"\bbounding\s+box(?:es)?\b",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class EndpointConfig:
    """Where and how to ask. The API key is deliberately not a field (a config may be printed or saved)."""

    base_url: str | None
    model: str
    timeout: float = 120.0  # seconds per attempt
    max_attempts: int = 6
    backoff_base: float = 2.0  # seconds before the 2nd attempt; doubles each attempt
    backoff_max: float = 60.0
    max_tokens: int | None = RESPONSE_BUDGET
    temperature: float | None = None


@dataclass
class TeacherReply:
    text: str
    attempts: int = 1
    prompt_tokens: int = 0
    completion_tokens: int = 0
    model: str = ""


class TeacherError(RuntimeError):
    """The teacher gave up on one sample. `fatal`: no other sample can succeed either (e.g. 401)."""

    def __init__(self, reason: str, attempts: int = 0, fatal: bool = False):
        super().__init__(reason)
        self.reason = reason
        self.attempts = attempts
        self.fatal = fatal


class RejectedReply(Exception):
    """A reply that arrived but cannot be used (empty, truncated, mentions the boxes, malformed)."""


class Teacher(Protocol):
    needs_images: bool

    def generate(self, sample: CotSample, request: TeacherRequest | None) -> TeacherReply: ...


def redact(text: str, secret: str | None) -> str:
    """`text` without `secret` in any encoding an echo may carry (`veason_r1.redact`)."""
    from veason_r1.redact import redact_urls

    return redact_urls(text, secret)


def backoff_delay(attempt: int, base: float, cap: float, rng: random.Random) -> float:
    """Delay after failed attempt `attempt` (1-based): min(cap, base * 2^(attempt-1)) scaled by a jitter in [0.5, 1]."""
    return min(cap, base * (2 ** (attempt - 1))) * rng.uniform(0.5, 1.0)


def clean_reply(text: Any, finish_reason: Any, expression: str = "") -> str:
    """The CoT text to keep, or RejectedReply with the reason. Stray <think> tags are removed; an <answer> cut off.

    A mention of the red boxes is rejected unless the expression itself says the same words ("the red box").
    """
    if finish_reason == "length":
        raise RejectedReply("truncated reply (finish_reason=length)")
    if not isinstance(text, str) or not text.strip():
        raise RejectedReply("empty reply")
    text = re.sub(r"</?think>", "", text)
    cut = text.find("<answer>")
    if cut >= 0:
        text = text[:cut]
    text = text.strip()
    if not text:
        raise RejectedReply("empty reply")
    allowed = {m.group(0).lower() for m in RED_BOX_PATTERN.finditer(expression)}
    m = next((m for m in RED_BOX_PATTERN.finditer(text) if m.group(0).lower() not in allowed), None)
    if m:
        raise RejectedReply(f"reply mentions the reference boxes ({m.group(0)!r})")
    return text


class OpenAITeacher:
    """Chat completions with our own bounded retries. Thread-safe: one client is shared by the worker threads."""

    needs_images = True

    def __init__(self, config: EndpointConfig, api_key: str, on_retry: Callable[[str], None] | None = None,
                 seed: int | None = None):
        import os

        import openai

        from veason_r1.errors import BadInput
        from veason_r1.redact import register_secret, url_has_credentials

        if not api_key:
            raise ValueError("no API key: set the environment variable named by --api-key-env or pass --api-key")
        if config.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {config.max_attempts}")
        register_secret(api_key)  # from now on every redact_urls removes it, in every encoding
        base_url = config.base_url or os.environ.get("OPENAI_BASE_URL")  # the openai client reads the variable too
        if url_has_credentials(base_url):
            raise BadInput("--base-url" if config.base_url else "$OPENAI_BASE_URL",
                           "holds credentials (user:password@host), which would be sent as HTTP Basic auth and may "
                           "be echoed back; the URL is not shown",
                           hint="remove user:password@ from the URL and pass the key in $OPENAI_API_KEY")
        self.config = config
        self._key = api_key
        self._openai = openai
        self._client = openai.OpenAI(api_key=api_key, base_url=config.base_url, timeout=config.timeout, max_retries=0)
        self._on_retry = on_retry
        self._stop = threading.Event()
        self._rng = random.Random(seed)
        self._rng_lock = threading.Lock()

    def cancel(self) -> None:
        """Stop retrying: waiting samples give up at once (a request already sent still runs to its timeout)."""
        self._stop.set()

    def __repr__(self) -> str:  # never shows the key, nor credentials inside the URL
        from veason_r1.redact import redact_urls

        return redact_urls(f"OpenAITeacher(base_url={self.config.base_url!r}, model={self.config.model!r})", self._key)

    def _classify(self, exc: BaseException) -> tuple[str, bool, float | None]:
        """(reason, retryable, server-requested delay) for an exception from one attempt."""
        o = self._openai
        if isinstance(exc, RejectedReply):
            return str(exc), True, None
        if isinstance(exc, o.APITimeoutError):
            return "timeout", True, None
        if isinstance(exc, o.APIConnectionError):
            return f"connection error ({type(exc).__name__})", True, None
        if isinstance(exc, o.APIStatusError):
            status = exc.status_code
            retry_after = None
            try:
                ra = exc.response.headers.get("retry-after")
                retry_after = float(ra) if ra is not None else None
            except (TypeError, ValueError, AttributeError):
                retry_after = None
            body = redact(str(exc), self._key)[:200]
            if status in (408, 409, 429) or status >= 500:
                return f"HTTP {status}", True, retry_after
            return f"HTTP {status}: {body}", False, None
        # anything else while sending or parsing: a malformed body, a schema mismatch, a broken stream
        return f"malformed response ({type(exc).__name__}: {redact(str(exc), self._key)[:120]})", True, None

    def _attempt(self, request: TeacherRequest, expression: str) -> TeacherReply:
        kwargs: dict[str, Any] = {"model": self.config.model, "messages": request.messages()}
        if self.config.max_tokens is not None:
            kwargs["max_tokens"] = self.config.max_tokens
        if self.config.temperature is not None:
            kwargs["temperature"] = self.config.temperature
        resp = self._client.chat.completions.create(**kwargs)
        choices = getattr(resp, "choices", None)
        if not choices:
            raise RejectedReply("malformed response (no choices)")
        choice = choices[0]
        message = getattr(choice, "message", None)
        text = clean_reply(getattr(message, "content", None), getattr(choice, "finish_reason", None),
                           expression)
        usage = getattr(resp, "usage", None)
        return TeacherReply(text=text, prompt_tokens=int(getattr(usage, "prompt_tokens", 0) or 0),
                            completion_tokens=int(getattr(usage, "completion_tokens", 0) or 0),
                            model=str(getattr(resp, "model", "") or self.config.model))

    def generate(self, sample: CotSample, request: TeacherRequest | None) -> TeacherReply:
        if request is None:
            raise ValueError("OpenAITeacher needs the request with the boxed frames")
        cfg = self.config
        reason = "no attempt made"
        for attempt in range(1, cfg.max_attempts + 1):
            if self._stop.is_set():
                raise TeacherError("cancelled", attempt - 1)
            try:
                reply = self._attempt(request, sample.expression)
                reply.attempts = attempt
                return reply
            except Exception as exc:  # noqa: BLE001 - classified below; nothing escapes unclassified
                reason, retryable, server_delay = self._classify(exc)
            if not retryable:
                raise TeacherError(reason, attempt, fatal=True)
            if attempt == cfg.max_attempts:
                break
            if self._on_retry is not None:
                self._on_retry(reason)
            with self._rng_lock:
                delay = backoff_delay(attempt, cfg.backoff_base, cfg.backoff_max, self._rng)
            if server_delay is not None:
                delay = min(max(delay, server_delay), cfg.backoff_max)
            self._stop.wait(delay)
        raise TeacherError(f"gave up after {cfg.max_attempts} attempts; last: {reason}", cfg.max_attempts)


# ------------------------------------------------------------------------------------------------------------------
# Synthetic teacher


def _region(fx: float, fy: float) -> str:
    """'upper left', 'center', 'lower right', ... from a position as fractions of the frame."""
    col = "left" if fx < 1 / 3 else "right" if fx > 2 / 3 else ""
    row = "upper" if fy < 1 / 3 else "lower" if fy > 2 / 3 else ""
    if not col and not row:
        return "center"
    if not row:
        return f"{col} side" if col else "center"
    if not col:
        return f"{row} middle" if row == "upper" else "lower middle"
    return f"{row} {col}"


def _direction(dx: float, dy: float) -> str:
    parts = []
    if abs(dy) >= 0.08:
        parts.append("down" if dy > 0 else "up")
    if abs(dx) >= 0.08:
        parts.append("right" if dx > 0 else "left")
    return " and ".join(parts)


OBJECT_REF = re.compile(r"\s*\(objects? [\d, and]+\)")  # "(object 1)" in the generator's rationales


class SyntheticTeacher:
    """Template reasoning from the synthetic generator's ground truth. Offline and deterministic.

    `brief`: the same three steps about the targets only, one short clause each (~150 characters instead of ~800),
    for toy models that must learn the format in a few CPU steps (the demo); the full style describes every object.
    """

    needs_images = False

    def __repr__(self) -> str:
        return f"SyntheticTeacher({self.source!r}{', brief' if self.brief else ''})"

    def __init__(self, facts: dict, source: str = "synthetic_facts.json", brief: bool = False):
        if not isinstance(facts, dict) or not isinstance(facts.get("videos"), dict):
            raise ValueError(f"{source}: expected {{'videos': {{...}}}} at top level")
        self.facts = facts
        self.source = source
        self.brief = brief

    @classmethod
    def from_root(cls, root: str | Path, brief: bool = False) -> SyntheticTeacher:
        path = Path(root) / "synthetic_facts.json"
        if not path.is_file():
            raise FileNotFoundError(f"--teacher synthetic needs {path} (written by `veason-r1 synth`); "
                                    "it only works on the synthetic benchmark")
        with open(path) as f:
            return cls(json.load(f), str(path), brief=brief)

    # -- per object ----------------------------------------------------------------------------------------------
    def _objects(self, video: str) -> dict[str, dict]:
        v = self.facts["videos"].get(video)
        if v is None:
            raise TeacherError(f"{self.source}: no facts for video {video!r}", fatal=False)
        return v.get("objects", {}) or {}

    @staticmethod
    def _name(obj: dict) -> str:
        words = [str(obj[k]) for k in ("size", "color", "shape") if obj.get(k)]
        return "the " + " ".join(words) if words else "the object"

    @staticmethod
    def _fraction(pos: list[float], sample: CotSample) -> tuple[float, float]:
        """A position in pixels of the original frame as fractions of its width and height."""
        return float(pos[0]) / sample.width, float(pos[1]) / sample.height

    def _target_facts(self, sample: CotSample) -> list[tuple[dict, int]]:
        """(facts, column in sample.object_boxes) for every target, matched by obj_id then anno_id."""
        objects = self._objects(sample.video)
        by_anno = {str(o.get("anno_id")): o for o in objects.values()}
        out = []
        for j, (oid, aid) in enumerate(zip(sample.obj_ids, sample.anno_ids)):
            obj = objects.get(str(oid)) or by_anno.get(str(aid)) or {}
            out.append((obj, j))
        return out

    def _motion(self, obj: dict, sample: CotSample) -> str:
        positions = obj.get("positions") or []
        shown = [(t, positions[t]) for t in sample.frame_ids if t < len(positions) and positions[t] is not None]
        name = self._name(obj)
        if not shown:
            return f"{name} does not appear in the sampled frames"
        (t0, p0), (t1, p1) = shown[0], shown[-1]
        f0, f1 = self._fraction(p0, sample), self._fraction(p1, sample)
        where0, where1 = _region(*f0), _region(*f1)
        way = _direction(f1[0] - f0[0], f1[1] - f0[1])
        if t0 == t1:
            text = f"{name} is visible only at {t0} s, in the {where0}"
        elif not way:
            text = f"{name} stays in the {where0} from {t0} s to {t1} s"
        else:
            text = f"{name} moves {way} from the {where0} at {t0} s to the {where1} at {t1} s"
        if t0 > sample.frame_ids[0]:
            text += f" (it enters at {t0} s)"
        if t1 < sample.frame_ids[-1]:
            text += f" (it is gone after {t1} s)"
        return text

    def generate(self, sample: CotSample, request: TeacherRequest | None = None) -> TeacherReply:
        objects = self._objects(sample.video)
        exp_facts = (self.facts["videos"][sample.video].get("expressions") or {}).get(str(sample.exp_id), {})
        k = sample.keyframe
        ts = ", ".join(str(t) for t in sample.frame_ids)
        motions = [self._motion(o, sample) for _, o in sorted(objects.items(), key=lambda kv: str(kv[0]))]
        scene = "; ".join(motions)
        step1 = f"Step 1: The video is shown at timestamps {ts}. " + (
            (scene[0].upper() + scene[1:] + ".") if scene else "The scene is static.")

        targets = self._target_facts(sample)
        names = [self._name(o) if o else "the target" for o, _ in targets]
        plural = len(targets) > 1
        kf_index = sample.frame_ids.index(k)
        best = max(sample.areas) if sample.areas else 0
        area = sample.areas[kf_index]
        subject = "the targets are" if plural else "the target is"
        visibility = (f"{subject} fully in view and at {'their' if plural else 'its'} largest among the sampled frames"
                      if area >= best and area > 0 else
                      f"{subject} clearly visible there" if area > 0 else f"{subject} hardly visible")
        rationale = OBJECT_REF.sub("", str(exp_facts.get("rationale", ""))).strip().rstrip(".")
        step2 = (f"Step 2: Given the expression '{sample.expression.strip().rstrip('.')}', which refers to "
                 f"{' and '.join(names)}, the frame at timestamp {k} best represents the "
                 f"{'targets' if plural else 'target'}: {visibility}" + (f"; {rationale}" if rationale else "") + ".")

        where = []
        for (obj, j), name in zip(targets, names):
            box = sample.keyframe_object_boxes[j]
            if box is None:
                where.append(f"{name} is not visible")
                continue
            positions = obj.get("positions") or []
            if k < len(positions) and positions[k] is not None:
                fx, fy = self._fraction(positions[k], sample)
            else:
                fx, fy = (box[0] + box[2]) / 2 / sample.width, (box[1] + box[3]) / 2 / sample.height
            motion = ""
            prev = [t for t in sample.frame_ids if t < k and t < len(positions) and positions[t] is not None]
            if prev:
                px, py = self._fraction(positions[prev[-1]], sample)
                way = _direction(fx - px, fy - py)
                motion = f" moving {way}" if way else " standing still"
            wide = 100 * (box[2] - box[0] + 1) / sample.width
            high = 100 * (box[3] - box[1] + 1) / sample.height
            where.append(f"{name} is{motion} in the {_region(fx, fy)} of the image, about {wide:.0f}% of the frame "
                         f"wide and {high:.0f}% high")
        step3 = f"Step 3: In frame {k}, " + "; ".join(where) + "."
        if self.brief:
            step1 = "Step 1: " + "; ".join(self._motion(o, sample) for o, _ in targets if o) + "."
            step2 = f"Step 2: {' and '.join(names)} {'are' if plural else 'is'} clearest at {k} s."
            step3 = f"Step 3: In frame {k}, " + "; ".join(w.split(", about")[0] for w in where) + "."
        return TeacherReply(text="\n".join([step1, step2, step3]), attempts=1, model="synthetic")
