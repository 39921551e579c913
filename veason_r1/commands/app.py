"""An interactive web demo: upload a video (or pick an example), type a query, and watch the policy's reasoning,
keyframe and boxes, then SAM2's mask overlay arrive; download the masks (PNG zip, RLE JSON) and result.json.

Default models: the project's tiny offline models (random weights, built into --cache-dir at first run), so it
works on a fresh CPU machine; give --model PATH --sam2 NAME --sam2-checkpoint PATH for trained checkpoints on a GPU.
Listens on 127.0.0.1 only unless --host says otherwise; --share (a public Gradio link) is never on by default.

Example: veason-r1 app                                  (then open http://127.0.0.1:7860)
         veason-r1 app --model ckpt/veason-r1-3b --sam2 sam2.1_hiera_l --sam2-checkpoint sam2.1_hiera_large.pt
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from veason_r1.config import FRAMES, RESPONSE_BUDGET


def default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "veason-r1" / "app"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from veason_r1.app.inputs import Limits
    from veason_r1.app.models import DEFAULT_MODEL, DEFAULT_SAM2, NAMED_POLICIES
    from veason_r1.models.config import PolicyConfig, PropagatorConfig, add_policy_flags, add_propagator_flags

    lim = Limits()
    names = ", ".join(sorted(NAMED_POLICIES))
    m = parser.add_argument_group("models (loaded once per process)")
    add_policy_flags(m, PolicyConfig(model=DEFAULT_MODEL),
                     model_help=f"policy: a name ({names}: built offline in --cache-dir) or a local policy folder "
                                f"(default: {DEFAULT_MODEL})")
    add_propagator_flags(m, PropagatorConfig(name=DEFAULT_SAM2))
    m.add_argument("--image-size", type=int, default=None,
                   help="policy square frame side (default: 112 for the tiny policy, 560 otherwise)")
    m.add_argument("--max-new-tokens", type=int, default=RESPONSE_BUDGET,
                   help=f"response budget (default: {RESPONSE_BUDGET})")
    m.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    s = parser.add_argument_group("server")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    s.add_argument("--port", type=int, default=7860, help="port (default: 7860)")
    s.add_argument("--share", action="store_true", help="also open a public Gradio share link (off by default)")
    s.add_argument("--concurrency", type=int, default=1,
                   help="requests worked on at once (default: 1); the models still run one request at a time")
    s.add_argument("--queue-size", type=int, default=16, help="requests that may wait in the queue (default: 16)")
    s.add_argument("--cache-dir", default=None, help=f"models and examples (default: {default_cache_dir()})")
    s.add_argument("--prepare", action="store_true",
                   help="build the default models and the examples in --cache-dir, load them, and exit (set-up)")
    r = parser.add_argument_group("request limits")
    r.add_argument("--num-frames", type=int, default=FRAMES.eval_frames,
                   help=f"frames shown to the policy by default (default: {FRAMES.eval_frames})")
    r.add_argument("--max-frames", type=int, default=lim.max_frames,
                   help=f"frames used from a video, the first ones (default: {lim.max_frames})")
    r.add_argument("--max-side", type=int, default=lim.max_side,
                   help=f"larger frames are downscaled to this longer side (default: {lim.max_side})")
    r.add_argument("--max-upload-mb", type=float, default=lim.max_upload_mb,
                   help=f"largest upload in MB (default: {lim.max_upload_mb:g})")
    r.add_argument("--max-query-chars", type=int, default=lim.max_query_chars,
                   help=f"longest query (default: {lim.max_query_chars})")


def _check(args: argparse.Namespace) -> None:
    from veason_r1.app.inputs import Limits

    if not 1 <= args.port <= 65535:
        raise ValueError(f"--port must be 1-65535, got {args.port}")
    if args.concurrency < 1:
        raise ValueError(f"--concurrency must be >= 1, got {args.concurrency}")
    if args.queue_size < 1:
        raise ValueError(f"--queue-size must be >= 1, got {args.queue_size}")
    if args.max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    if not 1 <= args.num_frames <= Limits().max_shown_frames:
        raise ValueError(f"--num-frames must be 1-{Limits().max_shown_frames}, got {args.num_frames}")
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: idle threads sleep (see commands/demo.py)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        return _run(args)
    except (ValueError, OSError, ImportError) as e:  # bad flags, missing models, a busy port
        if getattr(args, "debug", False):  # `veason-r1 [--debug] app ... [--debug]` (cli.py)
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    import shutil
    import tempfile
    import time

    from veason_r1.app.examples import ensure_examples
    from veason_r1.app.handler import RequestHandler
    from veason_r1.app.inputs import Limits
    from veason_r1.app.models import resolve_models
    from veason_r1.models.config import policy_from_args, propagator_from_args

    _check(args)
    limits = Limits(max_frames=args.max_frames, max_side=args.max_side, max_upload_mb=args.max_upload_mb,
                    max_query_chars=args.max_query_chars)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    cache_dir = Path(args.cache_dir) if args.cache_dir else default_cache_dir()
    t0 = time.perf_counter()
    examples = ensure_examples(cache_dir)
    models = resolve_models(policy_from_args(args), propagator_from_args(args), cache_dir=cache_dir,
                            image_size=args.image_size, max_new_tokens=args.max_new_tokens,
                            max_shown_frames=limits.max_shown_frames)
    print(f"app: models loaded in {time.perf_counter() - t0:.1f} s ({models.description})", file=sys.stderr)
    if args.prepare:
        print(f"app: models and {len(examples)} examples ready in {cache_dir}")
        return 0

    # Everything a request writes (Gradio's uploads and served files, our per-request folders) lives here and is
    # removed when the server stops.
    prune_stale_temp(Path(tempfile.gettempdir()))
    server_tmp = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX))
    (server_tmp / PID_FILE).write_text(f"{os.getpid()}\n")
    try:
        os.environ["GRADIO_TEMP_DIR"] = str(server_tmp / "gradio")
        from veason_r1.app.ui import build_page, serve

        handler = RequestHandler(models, limits, server_tmp / "requests")
        page = build_page(handler, examples, default_num_frames=args.num_frames)
        serve(page, host=args.host, port=args.port, share=args.share, max_upload_mb=limits.max_upload_mb,
              concurrency=args.concurrency, queue_size=args.queue_size,
              allowed_paths=[server_tmp, cache_dir / "examples"],
              on_stop=lambda: shutil.rmtree(server_tmp, ignore_errors=True))
    finally:
        shutil.rmtree(server_tmp, ignore_errors=True)
    _exit_now()
    return 0


TEMP_PREFIX = "veason-r1-app-"
PID_FILE = "app.pid"
STALE_WITHOUT_PID_S = 24 * 3600


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def prune_stale_temp(tmp_root: Path) -> list[Path]:
    """Delete the temp folders of app servers that are gone (SIGKILL, a crash, a power cut skip the `finally`).

    A folder is ours if it is named `veason-r1-app-*`, is a real folder owned by this user, and either holds the
    pid file of a process that no longer runs, or has no pid file (an older version) and is a day old. A live
    server's folder is never touched. Returns what was removed."""
    import shutil
    import time

    removed = []
    for folder in tmp_root.glob(f"{TEMP_PREFIX}*"):
        try:
            st = folder.lstat()
            if folder.is_symlink() or not folder.is_dir() or st.st_uid != os.getuid():
                continue
            try:
                pid = int((folder / PID_FILE).read_text().strip())
                stale = pid != os.getpid() and not _alive(pid)
            except (OSError, ValueError):
                stale = time.time() - st.st_mtime > STALE_WITHOUT_PID_S
            if stale:
                shutil.rmtree(folder, ignore_errors=True)
                removed.append(folder)
        except OSError:
            continue
    return removed


def _exit_now() -> None:
    """Leave once the server is closed and its folder removed, without the interpreter's shutdown: Gradio's queue
    and anyio worker threads are not all daemons, and native thread pools (OpenMP, tokenizers) have hung or crashed
    that shutdown here (the app alive 20 s after SIGTERM; pytest once exited 139 after a passing run). Nothing is
    left to save at this point."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
