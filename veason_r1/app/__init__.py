"""`veason-r1 app`: an interactive web demo (Gradio) of the one-video pipeline. See docs/app.md.

Modules, one idea each:
- `models`: the ONE place that turns `--model/--sam2/--sam2-checkpoint` into a loaded engine and propagator.
- `inputs`: query checks and upload decoding (video file, zip of frames, image files) under the request limits.
- `handler`: one request as a stream of page updates (answer first, then masks), errors as readable messages.
- `results`: the files a request returns (overlay video, PNG zip, RLE JSON, result.json) and the shown-frames sheet.
- `examples`: the bundled example videos, written into the cache folder at first run (never downloaded).
- `ui`: the Gradio page and the server launch.

The page runs the library's own pipeline (`veason_r1.inference.pipeline`): no second prompt, parser or propagation.
Gradio is imported only in `ui`, so everything else is testable without a browser.
"""
