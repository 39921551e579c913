"""The Gradio page and the server: inputs and settings on the left, the streamed results on the right.

Gradio is imported here only. The page makes no request outside the server it came from, so it works offline: system
fonts instead of the default theme's web font, analytics off, client-side rendering, and `OfflinePage` strips the
two third-party references Gradio's HTML template hard-codes (an iframe-resizer script from a CDN, only used when
the page is embedded in another site, and a web-font preconnect). Requests go through
Gradio's queue with `concurrency` workers; the models themselves are used one request at a time (`Models.lock`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from veason_r1.app.examples import Example
from veason_r1.app.handler import DECODING_MODES, RequestHandler, Settings, Update
from veason_r1.inference.pipeline import DIRECTIONS

TITLE = "veason-r1: video reasoning segmentation"
RANDOM_WEIGHTS_NOTE = (
    "**These models have random weights** (the project's tiny offline test models): the reasoning is noise and the "
    "answer rarely holds a box, so masks are usually empty. The page shows the pipeline at work, not the method. "
    "Start it with `--model PATH --sam2 NAME --sam2-checkpoint PATH` for trained checkpoints (docs/app.md)."
)
OUTPUT_NAMES = ("status", "reasoning", "sheet", "overlay", "downloads", "response", "timings")


# Third-party tags in Gradio 5's index.html that this page does not need (it is never embedded, uses system fonts).
EXTERNAL_TAGS = re.compile(
    rb'<script[^>]*src="https://cdnjs\.cloudflare\.com/[^"]*"[^>]*>\s*</script>'
    rb'|<link[^>]*rel="preconnect"[^>]*href="https://fonts\.(?:googleapis|gstatic)\.com"[^>]*/?>'
)


class OfflinePage:
    """ASGI middleware: HTML responses lose `EXTERNAL_TAGS` (Content-Length fixed); everything else passes."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start: dict = {}
        body = bytearray()

        async def capture(message):
            if message["type"] == "http.response.start":
                headers = dict(message.get("headers") or [])
                if headers.get(b"content-type", b"").startswith(b"text/html"):
                    start.update(message)  # hold it until the whole body is known
                    return
                return await send(message)
            if message["type"] == "http.response.body" and start:
                body.extend(message.get("body", b""))
                if message.get("more_body"):
                    return
                data = EXTERNAL_TAGS.sub(b"", bytes(body))
                headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
                await send({**start, "headers": headers + [(b"content-length", str(len(data)).encode())]})
                return await send({"type": "http.response.body", "body": data})
            return await send(message)

        return await self.app(scope, receive, capture)


def _import_gradio():
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before the import: no calls home
    try:
        import gradio as gr
    except ImportError as e:
        raise ImportError("veason-r1 app needs Gradio: pip install 'veason-r1[app]'") from e
    return gr


def outputs_of(update: Update, gr: Any) -> tuple:
    """The values of OUTPUT_NAMES for one update: set fields, cleared ones (update.clear), or left as they are."""
    cleared = {"reasoning": "", "sheet": None, "overlay": None, "downloads": None, "response": "", "timings": None}
    values = {
        "status": update.status,
        "reasoning": update.reasoning,
        "sheet": update.sheet,
        "overlay": None if update.overlay is None else str(update.overlay),
        "downloads": None if update.downloads is None else [str(p) for p in update.downloads],
        "response": update.response,
        "timings": update.timings,
    }
    out = []
    for name in OUTPUT_NAMES:
        value = values[name]
        if value is None:
            value = cleared[name] if update.clear else gr.skip()
        out.append(value)
    return tuple(out)


def build_page(handler: RequestHandler, examples: Sequence[Example], default_num_frames: int = 8):
    """The gr.Blocks page (not launched)."""
    gr = _import_gradio()
    models, limits = handler.models, handler.limits
    theme = gr.themes.Default(font=("ui-sans-serif", "system-ui", "sans-serif"),
                              font_mono=("ui-monospace", "Consolas", "monospace"))
    # delete_cache: Gradio's copies of uploads and served files older than an hour go every half hour
    with gr.Blocks(title="veason-r1", theme=theme, analytics_enabled=False, delete_cache=(1800, 3600)) as page:
        gr.Markdown(f"# {TITLE}\nUpload a video, say what to segment: the policy reasons over a few frames, picks a "
                    f"keyframe and boxes, and SAM2 propagates masks through the video.\n\n"
                    f"Models: {models.description}.", elem_id="model-note")
        if models.random_weights:
            gr.Markdown(RANDOM_WEIGHTS_NOTE, elem_id="random-weights")
        with gr.Row():
            with gr.Column(scale=2):
                upload = gr.File(label="Video (mp4, webm, mov), a zip of frames, or frame images",
                                 file_count="multiple", type="filepath", elem_id="upload")
                query = gr.Textbox(label="Query", lines=2, elem_id="query",
                                   placeholder="e.g. the cyclist wearing a helmet")
                with gr.Accordion("Settings", open=False):
                    num_frames = gr.Slider(1, limits.max_shown_frames, value=default_num_frames, step=1,
                                           label="Frames shown to the policy (linspace)")
                    decoding = gr.Radio(list(DECODING_MODES), value="greedy", label="Decoding")
                    temperature = gr.Slider(0.05, 2.0, value=0.7, step=0.05, label="Temperature (sampled only)")
                    seed = gr.Number(0, precision=0, label="Seed (sampled only)")
                    direction = gr.Radio(list(DIRECTIONS), value="both",
                                         label="SAM2 direction from the keyframe (both = the method)")
                run = gr.Button("Segment", variant="primary", elem_id="run")
                gr.Examples([[[str(e.video)], e.query] for e in examples], inputs=[upload, query],
                            example_labels=[e.label for e in examples], label="Examples")
                gr.Markdown(
                    f"Limits: the first {limits.max_frames:,} frames of a video are used (`--max-frames`), frames are "
                    f"downscaled to at most {limits.max_side} px (`--max-side`), uploads up to "
                    f"{limits.max_upload_mb:g} MB (`--max-upload-mb`), queries up to {limits.max_query_chars:,} "
                    "characters.", elem_id="limits")
            with gr.Column(scale=3):
                status = gr.Markdown("Upload a video and type a query, or pick an example.", elem_id="status")
                reasoning = gr.Textbox(label="Reasoning (the policy's <think>)", lines=4, interactive=False,
                                       elem_id="reasoning")
                sheet = gr.Image(label="Shown frames (keyframe framed in gold, its boxes in green)", type="numpy",
                                 format="png", interactive=False, elem_id="frames")
                overlay = gr.Video(label="Mask overlay", interactive=False, height=420, elem_id="overlay")
                downloads = gr.File(label="Downloads: masks (PNG zip, RLE JSON), result.json", file_count="multiple",
                                    interactive=False, elem_id="downloads")
                response = gr.Textbox(label="Raw answer", lines=3, interactive=False, elem_id="raw-answer")
                timings = gr.JSON(label="Timings (seconds)", elem_id="timings")

        progress_tracker = gr.Progress(track_tqdm=True)  # Gradio injects the live one through this default

        def respond(files, text, n, mode, temp, sd, direc, progress=progress_tracker):
            settings = Settings(int(n), mode, float(temp), int(sd or 0), direc)
            for update in handler.run(files, text, settings, progress=lambda f, d: progress(f, desc=d)):
                yield outputs_of(update, gr)

        run.click(respond, inputs=[upload, query, num_frames, decoding, temperature, seed, direction],
                  outputs=[status, reasoning, sheet, overlay, downloads, response, timings], api_name="segment")
    return page


def serve(page, *, host: str, port: int, share: bool, max_upload_mb: float, concurrency: int, queue_size: int,
          allowed_paths: Sequence[Path], on_stop: Callable[[], None] | None = None, stop_grace_s: float = 8.0) -> None:
    """Launch the page and block until the server stops (Ctrl-C or SIGTERM: then the caller's cleanup runs).

    A stop request also arms a watchdog: if the process is still alive `stop_grace_s` later (Gradio's close waits
    on uvicorn and its worker threads; the test suite once saw the app alive 20 s after SIGTERM), `on_stop` runs and
    the process exits. Nothing is lost: a request in flight has no result worth keeping once the server stops."""
    import signal
    import threading

    from starlette.middleware import Middleware

    def interrupt(signum, frame):
        if on_stop is not None:
            def hard_stop() -> None:
                on_stop()
                os._exit(0)

            timer = threading.Timer(stop_grace_s, hard_stop)
            timer.daemon = True
            timer.start()
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():  # SIGTERM ends the server like Ctrl-C does
        signal.signal(signal.SIGTERM, interrupt)
        signal.signal(signal.SIGINT, interrupt)

    page.queue(default_concurrency_limit=concurrency, max_size=queue_size)
    page.launch(server_name=host, server_port=port, share=share, max_file_size=int(max_upload_mb * 1e6),
                allowed_paths=[str(p) for p in allowed_paths], ssr_mode=False, show_api=False, inbrowser=False,
                show_error=False, app_kwargs={"middleware": [Middleware(OfflinePage)]})
