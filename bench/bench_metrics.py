"""Time the per-frame metrics against the real reference code, in one run, on the same frames, and check that every
per-frame value is identical.

    taskset -c 0 python bench/bench_metrics.py --reference-repo refs/davis2017-evaluation --reference-repo refs/VISA \
        --out bench_metrics.json

`--reference-repo PATH` is a clone (or git worktree) of davis2017-evaluation (its `davis2017/metrics.py`: J and F)
or of VISA (`tools/metrics.py`: J, F, A, R; `tools/eval_revos.py`: the ReVOS evaluation loop). The code is imported
from there as it is (it needs opencv-python and scikit-image); nothing of it is copied into this project.

Sections (one core: run under `taskset -c 0`; OpenCV is set to one thread, numba kernels are single-threaded):
- metrics: `--frames` (100) frames of `--height`x`--width` (720x1280), tolerance radius 12. Each GT is 1-3 ellipses
  or rectangles (some touching the border, every 10th frame empty); each prediction is the GT shifted, grown or
  shrunk, with stray blobs, as 0/255 uint8. Reference: `db_eval_iou` + `db_eval_boundary` (+ VISA's
  `get_r2vos_accuracy` / `get_r2vos_robustness`) per frame; ours: `veason_r1.eval.metrics.frame_scores`. Best of
  `--repeats` for both; values compared frame by frame.
- end_to_end (VISA): a ReVOS-format folder (one video, the same frames; an expression of two objects that overlap
  in most frames, predictions as 0/255 PNGs, and the same expression with 0/1 PNGs) scored by VISA's `eval_queue`
  (cv2.imread of each PNG, pycocotools decode of each RLE, the stacked metrics) and by ours (`score_task`: PNG
  decode, RLE decode, metrics, with `--r-mode literal`). Per-expression J, F, A, R compared; the union-GT A and R of
  the same expressions show what the overlap changes.
- breakdown: per-frame time of PNG decoding (cv2.imread vs ours), RLE decoding (pycocotools vs ours) and the
  metrics, so it is visible where the time goes.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import queue
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def make_frames(n: int, h: int, w: int, seed: int = 0):
    """(gt 0/1 uint8, pred 0/255 uint8, foreground area, foreground 0/1 uint8) per frame."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    frames = []
    for t in range(n):
        gt = np.zeros((h, w), bool)
        if t % 10 != 9:  # every 10th frame: object absent
            for _ in range(rng.integers(1, 4)):
                cy, cx = rng.uniform(0, h), rng.uniform(0, w)
                ry, rx = rng.uniform(0.04, 0.3) * h, rng.uniform(0.04, 0.3) * w
                if rng.random() < 0.6:
                    gt |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
                else:
                    gt[int(max(cy - ry, 0)):int(cy + ry), int(max(cx - rx, 0)):int(cx + rx)] = True
        pred = np.roll(gt, (int(rng.integers(-6, 7)), int(rng.integers(-6, 7))), axis=(0, 1))
        if rng.random() < 0.5:  # grow or shrink by a few pixels
            k = int(rng.integers(1, 4))
            pred = ndimage.binary_dilation(pred, iterations=k) if rng.random() < 0.5 else \
                ndimage.binary_erosion(pred, iterations=k)
        for _ in range(rng.integers(0, 3)):  # stray false-positive blobs
            cy, cx = int(rng.integers(0, h - 20)), int(rng.integers(0, w - 20))
            pred[cy:cy + int(rng.integers(3, 20)), cx:cx + int(rng.integers(3, 20))] = True
        fg = gt.copy()
        fg[: h // 8, : w // 8] |= True  # another annotated object of the video
        frames.append((gt.astype(np.uint8), pred.astype(np.uint8) * 255, int(fg.sum()), fg.astype(np.uint8)))
    return frames


# ---------------------------------------------------------------------------------------------------------------
# The reference, imported from the user's clone


def _load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _commit(repo: Path) -> str:
    try:
        out = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"


def load_reference(path: Path) -> dict:
    """{'kind': 'davis' | 'visa', 'metrics': module, 'commit', 'path'} (+ 'eval_revos' for VISA)."""
    path = path.resolve()
    if (path / "davis2017" / "metrics.py").is_file():
        return {"kind": "davis", "path": str(path), "commit": _commit(path),
                "metrics": _load(path / "davis2017" / "metrics.py", "reference_davis_metrics")}
    if (path / "tools" / "metrics.py").is_file():
        tools = str(path / "tools")
        sys.path.insert(0, tools)  # eval_revos.py does `from metrics import ...`
        try:
            metrics = _load(path / "tools" / "metrics.py", "metrics")
            eval_revos = _load(path / "tools" / "eval_revos.py", "reference_visa_eval_revos")
        finally:
            sys.path.remove(tools)
        return {"kind": "visa", "path": str(path), "commit": _commit(path), "metrics": metrics,
                "eval_revos": eval_revos}
    raise SystemExit(f"error: {path} is neither a davis2017-evaluation clone (davis2017/metrics.py) nor a VISA clone "
                     f"(tools/metrics.py)")


def reference_frame(ref: dict, gt, pred, fg):
    m = ref["metrics"]
    j = float(m.db_eval_iou(gt, pred))
    f = float(m.db_eval_boundary(gt, pred))
    if ref["kind"] == "davis":
        return j, f
    a = float(m.get_r2vos_accuracy([gt], [pred])[0])
    r = float(m.get_r2vos_robustness([gt], [pred], [fg])[0])
    return j, f, a, r


def _best(fn, repeats: int):
    best, out = float("inf"), None
    for _ in range(max(repeats, 1)):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def bench_metrics(refs: list[dict], frames, repeats: int) -> dict:
    from veason_r1.eval.metrics import frame_scores

    frame_scores(frames[0][0], frames[0][1], frames[0][2])  # compile / load the kernels
    t_ours, ours = _best(lambda: [frame_scores(g, p, fa) for g, p, fa, _ in frames], repeats)
    out = {"ours_s": t_ours, "ours_ms_per_frame": 1e3 * t_ours / len(frames)}
    for ref in refs:
        t_ref, vals = _best(lambda ref=ref: [reference_frame(ref, g, p, fg) for g, p, _, fg in frames], repeats)
        keys = ("J", "F") if ref["kind"] == "davis" else ("J", "F", "A", "R")
        bad = [t for t, (s, v) in enumerate(zip(ours, vals)) if tuple(getattr(s, k) for k in keys) != v]
        out[ref["kind"]] = {"metrics": list(keys), "reference_s": t_ref,
                            "reference_ms_per_frame": 1e3 * t_ref / len(frames), "speedup": t_ref / t_ours,
                            "identical": not bad, "mismatched_frames": bad}
    return out


# ---------------------------------------------------------------------------------------------------------------
# End to end against VISA's evaluation loop


def write_revos_case(root: Path, frames) -> dict:
    """One video: object 1 = the frame's GT, object 2 = a band overlapping its right part; expression 0 with 0/255
    PNGs of the perturbed union, expression 1 with the same as 0/1 PNGs."""
    from veason_r1.data.masks import encode_rle
    from veason_r1.inference.pipeline import mask_png_bytes

    h, w = frames[0][0].shape
    names = [f"{t:05d}" for t in range(len(frames))]
    o1, o2, fgs = [], [], []
    overlap_px = 0
    for gt, pred, _, fg in frames:
        band = np.zeros_like(gt)
        cols = np.flatnonzero(gt.any(axis=0))
        if cols.size:
            c0 = int(cols[0] + 0.6 * (cols[-1] - cols[0]))
            band[:, c0:min(c0 + w // 5, w)] = 1
            band &= np.roll(gt, -h // 20, axis=0) | np.roll(gt, h // 20, axis=0)
        o1.append(encode_rle(gt))
        o2.append(encode_rle(band) if band.any() else None)
        overlap_px += int((gt & band).sum())
        fgs.append(encode_rle(((fg | band) > 0).astype(np.uint8)))
    meta = {"videos": {"vid": {"vid_id": 0, "height": h, "width": w, "frames": names, "expressions": {
        "0": {"exp": "both objects (0/255 PNGs)", "obj_id": [1, 2], "anno_id": ["1", "2"], "type_id": 0},
        "1": {"exp": "both objects (0/1 PNGs)", "obj_id": [1, 2], "anno_id": ["1", "2"], "type_id": 1}}}}}
    root.mkdir(parents=True, exist_ok=True)
    (root / "mask_dict.json").write_text(json.dumps({"1": o1, "2": o2}))
    (root / "mask_dict_foreground.json").write_text(json.dumps({"vid": {"masks_rle": fgs}}))
    (root / "meta_expressions_valid_.json").write_text(json.dumps(meta))
    import cv2

    for exp in ("0", "1"):
        folder = root / "pred" / "vid" / exp
        folder.mkdir(parents=True, exist_ok=True)
        for t, (gt, pred, _, _) in enumerate(frames):
            if exp == "0":  # what `veason-r1 predict` writes (PIL, 0/255)
                data = mask_png_bytes(pred > 0)
            else:  # 0/1, saved by OpenCV (libpng picks other row filters)
                data = cv2.imencode(".png", (pred > 0).astype(np.uint8))[1].tobytes()
            (folder / f"{names[t]}.png").write_bytes(data)
    return {"overlap_pixels": overlap_px, "frames": len(frames)}


def bench_end_to_end(ref: dict, frames, repeats: int) -> dict:
    from veason_r1.data.revos import ReVOSDataset
    from veason_r1.eval.evaluators import Scoring, _revos_tasks, score_task

    ev = ref["eval_revos"]
    with tempfile.TemporaryDirectory(prefix="bench_metrics_") as tmp:
        root = Path(tmp) / "revos"
        case = write_revos_case(root, frames)
        ev.exp_dict = json.loads((root / "meta_expressions_valid_.json").read_text())["videos"]
        ev.mask_dict = json.loads((root / "mask_dict.json").read_text())
        ev.mask_dict_foreground = json.loads((root / "mask_dict_foreground.json").read_text())

        def visa():
            q: queue.Queue = queue.Queue()
            for exp in ("0", "1"):
                q.put(["vid", exp])
            out: dict = {}
            ev.eval_queue(q, 0, out, str(root / "pred"))
            return out

        ds = ReVOSDataset(root, "valid")
        tasks = _revos_tasks(ds, root / "pred", ds.expressions)

        def ours(literal: bool = True):
            return [score_task(ds, t, Scoring("revos", revos_terms=True, literal=literal)) for t in tasks]

        ours()  # compile / load the kernels
        t_ref, vals = _best(visa, repeats)
        t_ours, res = _best(ours, repeats)
        union = ours(literal=False)
    per_exp = {}
    identical = True
    for r, u in zip(res, union):
        want = [float(x) for x in vals[f"vid_{r.exp_id}"]]
        got = [r.scores[k] for k in ("J", "F", "A", "R")]
        identical &= got == want
        per_exp[r.exp_id] = {"visa_JFAR": want, "ours_JFAR": got, "union_A": u.scores["A"], "union_R": u.scores["R"],
                             "A_scale_free": r.scores["A_scale_free"], "R_scale_free": r.scores["R_scale_free"]}
    n = 2 * len(frames)
    return {**case, "expressions": 2, "reference_s": t_ref, "ours_s": t_ours,
            "reference_ms_per_frame": 1e3 * t_ref / n, "ours_ms_per_frame": 1e3 * t_ours / n,
            "speedup": t_ref / t_ours, "identical": identical, "per_expression": per_exp}


def bench_breakdown(frames, repeats: int) -> dict:
    """Per-frame milliseconds of each step, reference libraries vs ours, on the same files."""
    import cv2
    from pycocotools import mask as cocomask

    from veason_r1.data.masks import coco_rle, encode_rle
    from veason_r1.eval.metrics import frame_scores, score_masks
    from veason_r1.eval.packed import mask_from_png, mask_from_rles, pack_mask
    from veason_r1.inference.pipeline import mask_png_bytes

    n = len(frames)
    with tempfile.TemporaryDirectory(prefix="bench_breakdown_") as tmp:
        paths = []
        for t, (_, pred, _, _) in enumerate(frames):
            paths.append(Path(tmp) / f"{t:05d}.png")
            paths[-1].write_bytes(mask_png_bytes(pred > 0))
        rles = [encode_rle(g) for g, _, _, _ in frames]
        shape = frames[0][0].shape
        steps = {
            "png_decode": (lambda: [cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) for p in paths],
                           lambda: [mask_from_png(p) for p in paths]),
            "rle_decode": (lambda: [cocomask.decode(coco_rle(r)) for r in rles],
                           lambda: [mask_from_rles([r], shape) for r in rles]),
        }
        mask_from_png(paths[0])
        out = {}
        for name, (ref_fn, ours_fn) in steps.items():
            t_ref, _ = _best(ref_fn, repeats)
            t_ours, _ = _best(ours_fn, repeats)
            out[name] = {"reference_ms_per_frame": 1e3 * t_ref / n, "ours_ms_per_frame": 1e3 * t_ours / n}
        packed = [(pack_mask(g), pack_mask(p), fa) for g, p, fa, _ in frames]
        t_pack, _ = _best(lambda: [(pack_mask(g), pack_mask(p)) for g, p, _, _ in frames], repeats)
        t_scores, _ = _best(lambda: [score_masks(g, p, fa) for g, p, fa in packed], repeats)
        t_all, _ = _best(lambda: [frame_scores(g, p, fa) for g, p, fa, _ in frames], repeats)
        out["ours_metrics_split"] = {"pack_arrays_ms_per_frame": 1e3 * t_pack / n,
                                     "score_packed_ms_per_frame": 1e3 * t_scores / n,
                                     "frame_scores_ms_per_frame": 1e3 * t_all / n}
    return out


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import cv2
    import numba

    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover
        affinity = os.cpu_count()
    return (f"{cpu}; {affinity} of {os.cpu_count()} cpus usable by this process; python {platform.python_version()}, "
            f"numpy {np.__version__}, opencv {cv2.__version__}, numba {numba.__version__}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reference-repo", action="append", type=Path, default=[],
                    help="clone of davis2017-evaluation or VISA (repeatable); required")
    ap.add_argument("--frames", type=int, default=100)
    ap.add_argument("--height", type=int, default=720)
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--repeats", type=int, default=3, help="best of N, for ours and the reference")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    if not args.reference_repo:
        print("error: pass --reference-repo PATH (a clone of davis2017-evaluation or of VISA); speed is only "
              "reported against the real reference code")
        return 2
    import cv2

    cv2.setNumThreads(1)
    refs = [load_reference(p) for p in args.reference_repo]
    frames = make_frames(args.frames, args.height, args.width)
    from veason_r1.eval.metrics import boundary_radius

    result = {
        "command": "python bench/bench_metrics.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "frames": len(frames), "height": args.height, "width": args.width,
        "radius": boundary_radius((args.height, args.width)),
        "references": {r["kind"]: {"path": r["path"], "commit": r["commit"]} for r in refs},
        "machine": machine(),
        "metrics": bench_metrics(refs, frames, args.repeats),
    }
    visa = [r for r in refs if r["kind"] == "visa"]
    if visa:
        result["end_to_end"] = bench_end_to_end(visa[0], frames, args.repeats)
    result["breakdown"] = bench_breakdown(frames, args.repeats)
    checks = [v["identical"] for k, v in result["metrics"].items() if isinstance(v, dict)]
    if "end_to_end" in result:
        checks.append(result["end_to_end"]["identical"])
    result["identical"] = all(checks)
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0 if result["identical"] else 1


if __name__ == "__main__":
    sys.exit(main())
