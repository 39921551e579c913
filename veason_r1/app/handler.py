"""One request (upload + query + settings) as a stream of page updates, never an exception.

The order is the pipeline's (`veason_r1.inference.pipeline`): decode -> `answer_query` (the policy's reasoning,
keyframe and boxes, shown at once) -> `propagate` (SAM2) -> the files. Each step yields an `Update`, so the page
fills in as results arrive. A refused input ends the stream with its message; any other failure ends it with one
line naming the error (the traceback goes to the server log, never to the page). Each request works in its own
temp folder, deleted when the stream ends, and uses the models under `Models.lock`: one generation at a time.
"""

from __future__ import annotations

import itertools
import logging
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from veason_r1.app.inputs import Limits, UserInputError, check_query, decode_upload
from veason_r1.app.models import Models
from veason_r1.app.results import package_result, shown_frames_sheet
from veason_r1.config import FRAMES
from veason_r1.inference.pipeline import DIRECTIONS, InferenceConfig, VideoResult, answer_query, propagate

log = logging.getLogger("veason_r1.app")

DECODING_MODES = ("greedy", "sampled")
NO_MASK_MESSAGE = "The model's answer has no parsable box, so no mask was made (its raw answer is shown below)."


@dataclass(frozen=True)
class Settings:
    """The page's optional settings. Greedy decoding and both SAM2 directions are the evaluation protocol."""

    num_frames: int = FRAMES.eval_frames  # frames shown to the policy (linspace over the video)
    decoding: str = "greedy"
    temperature: float = 0.7  # sampled decoding only
    seed: int = 0  # sampled decoding only
    direction: str = "both"  # SAM2: both (the method), forward or backward from the keyframe

    def check(self, limits: Limits) -> None:
        if not 1 <= int(self.num_frames) <= limits.max_shown_frames:
            raise UserInputError(f"Frames shown to the policy must be 1 to {limits.max_shown_frames}, "
                                 f"got {self.num_frames}.")
        if self.decoding not in DECODING_MODES:
            raise UserInputError(f"Decoding must be one of {', '.join(DECODING_MODES)}, got {self.decoding!r}.")
        if self.decoding == "sampled" and not 0 < float(self.temperature) <= 2:
            raise UserInputError(f"Temperature must be in (0, 2] for sampled decoding, got {self.temperature}.")
        if self.direction not in DIRECTIONS:
            raise UserInputError(f"SAM2 direction must be one of {', '.join(DIRECTIONS)}, got {self.direction!r}.")


@dataclass
class Update:
    """What changes on the page. None = leave that output as it is; `clear` empties every output first."""

    status: str  # Markdown
    state: str = "working"  # working | done | error
    clear: bool = False
    reasoning: str | None = None
    response: str | None = None
    sheet: np.ndarray | None = None  # the shown frames, keyframe framed
    overlay: Path | None = None
    downloads: list[Path] | None = None
    timings: dict[str, float] | None = None


def escape_markdown(text: str) -> str:
    """User-derived text (file names, model output) shown literally inside inline Markdown: emphasis, code, links,
    tables and HTML tags are escaped."""
    return re.sub(r"([\\`*_\[\]<>|~])", r"\\\1", text)


@dataclass
class RequestHandler:
    """Serves requests with one set of loaded models; `work_root` holds the per-request temp folders."""

    models: Models
    limits: Limits
    work_root: Path
    progress_bars: bool = True  # tqdm bars for long videos (the page's progress indicator follows them)
    _numbers: Iterator[int] = field(default_factory=lambda: itertools.count(1), repr=False)

    def run(self, files: Any, query: str | None, settings: Settings = Settings(),
            progress: Callable[[float, str], None] | None = None) -> Iterator[Update]:
        """Yield the page updates of one request; the last one has state "done" or "error"."""
        self.work_root.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix="request-", dir=self.work_root))
        lines = [f"*Request {next(self._numbers)}*"]  # tells one finished request from the next on the page
        shown = False  # has this request put anything on the page yet? (if not, an error clears the last results)
        try:
            for update in self._run(files, query, settings, progress or (lambda *_: None), work, lines):
                shown = True
                yield update
        except UserInputError as e:
            yield Update(status="\n\n".join([*lines, f"**Error:** {escape_markdown(str(e))}"]), state="error",
                         clear=not shown)
        except Exception as e:  # the page gets one line; the server log gets the traceback
            log.exception("request failed")
            first = (str(e).strip().splitlines() or [""])[0][:300]
            yield Update(status="\n\n".join([*lines, (
                f"**Error:** the server could not finish this request ({type(e).__name__}: "
                f"{escape_markdown(first)}). It keeps serving; the details are in the server's log.")]),
                state="error", clear=not shown)
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def _run(self, files, query, settings: Settings, progress, work: Path, lines: list[str]) -> Iterator[Update]:
        t_start = time.perf_counter()
        text = check_query(query, self.limits)
        settings.check(self.limits)
        models = self.models

        progress(0.02, "decoding the video")
        t0 = time.perf_counter()
        decoded = decode_upload(files, work, self.limits)
        decode_s = time.perf_counter() - t0
        source = decoded.source
        h, w = source.size
        lines.append(f"**Video** {escape_markdown(decoded.name)}: {len(source):,} frames, {w}x{h}.")
        lines.extend(escape_markdown(n) for n in decoded.notes)
        yield Update(status="\n\n".join([*lines, "The policy is reading the shown frames..."]), clear=True)

        progress(0.2, "the policy is reasoning")
        config = InferenceConfig(image_size=models.image_size, num_frames=int(settings.num_frames),
                                 max_new_tokens=models.max_new_tokens)
        with models.lock:
            answer, timings = answer_query(source, text, models.engine, config, self._sampling(settings))
        timings = {"decode_upload_s": decode_s, **timings}
        if answer.boxes:
            lines.append(f"**Policy**: keyframe = frame {answer.keyframe}, {len(answer.boxes)} box(es) "
                         f"({timings['generate_s']:.1f} s).")
        else:
            lines.append(f"**Policy** ({timings['generate_s']:.1f} s): {NO_MASK_MESSAGE}")
        if answer.notes:
            lines.append("Parser notes: " + escape_markdown("; ".join(answer.notes)) + ".")
        next_step = "SAM2 is propagating the boxes..." if answer.boxes else "Writing the files..."
        sheet = shown_frames_sheet(source, answer)
        yield Update(
            status="\n\n".join([*lines, next_step]),
            reasoning=answer.reasoning or "(the answer has no <think> reasoning)",
            response=answer.response,
            sheet=sheet,
            timings=_rounded(timings),
        )

        progress(0.45, "SAM2 is propagating the masks")
        t0 = time.perf_counter()
        with models.lock:
            masks = propagate(models.propagator, source, answer.keyframe, answer.boxes,
                              progress=self.progress_bars, direction=settings.direction)
        timings["sam2_s"] = time.perf_counter() - t0
        if answer.boxes:
            lines.append(f"**SAM2** ({settings.direction}): masks on {int(masks.any(axis=(1, 2)).sum()):,} of "
                         f"{len(source):,} frames ({timings['sam2_s']:.1f} s).")

        progress(0.8, "writing the overlay and the masks")
        result = VideoResult(text, list(source.names), h, w, answer, masks, timings)
        files_out = package_result(result, source, work / "out", decoded.name, decoded.fps, decoded.notes,
                                   progress=self.progress_bars)
        result.timings["total_s"] = time.perf_counter() - t_start
        lines.append(f"**Done** in {result.timings['total_s']:.1f} s.")
        # the sheet again: when no mask is made this update follows the previous one within milliseconds, and the
        # page was seen to show only the last of the two (the browser test lost the sheet in about half its runs)
        yield Update(status="\n\n".join(lines), state="done", sheet=sheet, overlay=files_out.overlay,
                     downloads=files_out.downloads, timings=_rounded(result.timings))

    def _sampling(self, settings: Settings):
        if settings.decoding == "greedy":
            return None  # the pipeline's greedy default
        from veason_r1.models.policy import SamplingConfig

        return SamplingConfig(max_new_tokens=self.models.max_new_tokens, temperature=float(settings.temperature),
                              top_p=1.0, n=1, seed=int(settings.seed))


def _rounded(timings: dict[str, float]) -> dict[str, float]:
    return {k: round(float(v), 3) for k, v in timings.items()}
