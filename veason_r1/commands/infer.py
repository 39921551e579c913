"""Segment one video from a text query: the policy picks a keyframe and boxes on 8 linspace frames, SAM2 propagates
them over every frame. Writes OUT/masks/<frame>.png (0/255, original size), OUT/result.json (query, reasoning,
keyframe, boxes in original pixels, timings) and OUT/overlay.mp4 (masks and boxes drawn, keyframe marked).

Example: veason-r1 infer --video clip.mp4 --query "the dog that jumps first" --model ckpt/veason-r1-3b
         --sam2 sam2.1_hiera_l --sam2-checkpoint sam2.1_hiera_large.pt --out out/clip
"""

from __future__ import annotations

import argparse

from veason_r1.flags import nonnegative_int, positive_float


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from veason_r1.inference.pipeline import add_model_arguments

    parser.add_argument("--video", required=True, help="an mp4 (any container PyAV reads) or a folder of JPEG frames")
    parser.add_argument("--query", required=True, help="the referring or reasoning expression")
    parser.add_argument("--out", required=True, help="output folder")
    add_model_arguments(parser)
    parser.add_argument("--no-overlay", action="store_true", help="skip overlay.mp4")
    parser.add_argument("--overlay-fps", type=positive_float, default=10.0)
    parser.add_argument("--overlay-max-side", type=nonnegative_int, default=640,
                        help="downsize the overlay (0: original size)")


def run(args: argparse.Namespace) -> int:
    """Flags, the video, the output folder, the policy folder and the SAM2 checkpoint are checked before any model
    loads; user errors are `UserError`s (one line, exit 2)."""
    import json
    import time
    from pathlib import Path

    from veason_r1.data.video import open_video
    from veason_r1.errors import BadInput
    from veason_r1.inference.pipeline import (
        InferenceConfig,
        build_engine,
        check_infer_out,
        segment_video,
        write_result,
    )
    from veason_r1.models.config import policy_from_args, propagator_from_args

    t0 = time.perf_counter()
    if not args.query.strip():
        raise BadInput("--query", "the query is empty", hint="give the expression to segment, e.g. 'the dog'")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise BadInput(f"--out {out}", "exists and is not a folder")
    source = open_video(args.video)
    check_infer_out(out, source.names)
    policy, propagator_config = policy_from_args(args), propagator_from_args(args)
    policy.model = str(policy.folder())  # `toy` -> its folder; an incomplete folder refused
    propagator_config.check()
    config = InferenceConfig(image_size=args.image_size, num_frames=args.num_frames,
                             max_new_tokens=args.max_new_tokens)
    engine = build_engine(policy, args.image_size, batch_size=1, num_frames=args.num_frames)
    propagator = propagator_config.load(policy.device)
    load_s = time.perf_counter() - t0
    progress = not args.no_progress
    result = segment_video(source, args.query, engine, propagator, config, progress=progress)
    result.timings = {"load_models_s": load_s, **result.timings}
    write_result(result, source, args.out, overlay=not args.no_overlay, overlay_fps=args.overlay_fps,
                 overlay_max_side=args.overlay_max_side or None, progress=progress)
    summary = result.to_json()
    print(json.dumps({k: summary[k] for k in ("query", "keyframe_index", "boxes", "parser_notes", "timings")}))
    print(f"wrote {args.out}/masks ({len(result.frame_names)} PNGs), result.json"
          + ("" if args.no_overlay else ", overlay.mp4"))
    return 0
