"""Command-line interface: ``napari-sam2 demo | track | segment | embed | batch | train | evaluate | models``.

Exit codes: 0 success, 1 failure, 2 usage error. Errors are one line (``--debug`` for a traceback).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path


def _cmd_demo(args: argparse.Namespace) -> int:
    from napari_sam2._demo import open_gui, run_demo

    if args.gui:
        open_gui(args.model)
        return 0
    run_demo(Path(args.out), model=args.model, device=args.device, frames=args.frames)
    return 0


def _build(model: str, device: str | None):
    from pathlib import Path as _P

    from napari_sam2._session import load_model

    if _P(model).suffix == ".pt" or _P(model).is_file():
        if not _P(model).is_file():
            raise FileNotFoundError(f"checkpoint file not found: {model}")
        return load_model(checkpoint=model, device=device)
    return load_model(model, device=device)


def _progress_bar(total: int, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="frame", file=sys.stderr, mininterval=0.5)


#: Help for the speed choice (here and in the widget), with fast mode's measured fidelity
#: (benchmarks/bench_fast.py; docs/engine.md has the details).
SPEED_HELP = ("exact: Meta's computation, every object attends over the whole image. fast: each object is "
              "tracked in a window around it, for dense fields of small cells. Measured on held-out "
              "simulated movies with the bundled model: median mask IoU 0.98 with exact; track IoU vs the "
              "truth 0.787 (exact: 0.805); 100 cells at 1024 cost 1.24x one cell in exact mode. "
              "Details in docs/engine.md")

CELL_DIAMETER_HELP = ("the cells' (nuclei's) typical diameter in pixels: frames are resized so that cells reach "
                      "the diameter the model tracks best (stored with its weights) and tracked in windows of "
                      "the model's input; masks come back at the movie's own size. 0 or 'off': the recorded scale "
                      "(frames larger than 1.25x the input are still tracked in windows)")


def _diameter_arg(value: str) -> float | str:
    """--cell-diameter: a number of pixels or 'auto' (``sam2_core.track.as_diameter``)."""
    from sam2_core.track import as_diameter

    try:
        return as_diameter(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a diameter in pixels or 'auto', got {value!r}") from None


def _auto_only(value: str) -> str:
    """evaluate --cell-diameter's optional value: only 'auto'."""
    if value.strip().lower() != "auto":
        raise argparse.ArgumentTypeError(f"give --cell-diameter alone (the true diameter) or 'auto', not {value!r}")
    return "auto"


def window_provenance(predictor, source, scale: float | None, cell_diameter: float | None,
                      windows: bool = True, decided: dict | None = None) -> dict:
    """The predictor's provenance plus the frame scale and whether frames were tracked in windows
    (``source``: what was tracked, a FrameSource or a steady canvas, with height and width;
    ``decided``: what ``track(info=...)`` reported, e.g. an estimated cell diameter)."""
    from sam2_core.tiled_track import uses_windows
    from sam2_core.track import resolve_scale

    info = dict(predictor.provenance())
    if decided and "scale" in decided:
        info["scale"] = float(decided["scale"])
        if decided.get("cell_diameter_estimated"):
            info["cell_diameter_estimated"] = round(float(decided["cell_diameter"]), 2)
    else:
        info["scale"] = resolve_scale(predictor.model, scale, cell_diameter)
    info["windows"] = uses_windows(source.height, source.width, predictor.model.image_size, info["scale"],
                                   None if windows else False)
    return info


def _drift(source, on: bool):
    """(drift or None, what is tracked): with ``on``, the stack's stage drift, measured once
    (:func:`sam2_core.stabilize.estimate_drift`), and the steady canvas tracked instead of the frames."""
    if not on:
        return None, source
    from sam2_core.stabilize import SteadyCanvas, estimate_drift

    bar = _progress_bar(max(source.num_frames - 1, 1), "measuring stage drift")
    try:
        drift = estimate_drift(source, progress=lambda done, total: bar.update(done - bar.n))
    finally:
        bar.close()
    return drift, SteadyCanvas(source, drift)


#: The choice of arithmetic precision (track, batch, the widget): sam2_core.precision.PRECISIONS,
#: spelled out so that importing the CLI does not import torch (a test checks that they agree).
PRECISIONS = ["fp32", "bf16", "fp16", "auto"]
PRECISION_HELP = ("arithmetic precision: fp32 (exact), bf16 (several times faster on CPUs with AMX or "
                  "AVX512-BF16 and on GPUs, masks about 0.998 IoU of fp32's; slow on other CPUs), fp16, "
                  "or auto (bf16 where it is fast); default: fp32 in exact mode, auto in fast mode")


def _speed_help() -> str:
    return SPEED_HELP.replace("%", "%%") + " (default: %(default)s)"


def _write_labels(out: Path, labels, info: dict | None = None) -> None:
    from napari_sam2.export import write_labels_tiff

    suffix = out.suffix.lower()
    if suffix in (".tif", ".tiff"):
        write_labels_tiff(out, labels, info=info)
    elif suffix == ".zarr" or out.name.endswith(".zarr"):
        import shutil
        import tempfile

        import zarr

        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
        try:
            z = zarr.open(str(tmp / "data.zarr"), mode="w", shape=labels.shape, dtype=labels.dtype,
                          chunks=(1, *labels.shape[1:]))
            z[:] = labels
            if info:
                z.attrs["napari_sam2"] = info
            if out.exists():
                shutil.rmtree(out)
            (tmp / "data.zarr").rename(out)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    else:
        raise ValueError(f"--out must end in .tif, .tiff or .zarr, got {out}")


def _cmd_track(args: argparse.Namespace) -> int:
    import numpy as np

    from napari_sam2.prompts_io import check_prompts, read_prompts
    from sam2_core.io import FrameSource
    from sam2_core.predictor.video import SAM2VideoPredictor
    from sam2_core.stabilize import provenance as stabilize_provenance
    from sam2_core.track import track

    out = Path(args.out)
    if not out.parent.exists() or not os_access_w(out.parent):
        raise PermissionError(f"cannot write to {out.parent}: the folder does not exist or is read-only")
    if out.suffix.lower() not in (".tif", ".tiff", ".zarr"):
        raise ValueError(f"--out must end in .tif, .tiff or .zarr, got {out}")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if not args.auto and not args.prompts:
        raise ValueError("give --prompts FILE or --auto")
    source = FrameSource(args.movie, channels=args.channels)
    prompts = None
    if not args.auto:
        prompts = read_prompts(args.prompts)
        check_prompts(prompts, source.num_frames, source.height, source.width)
    model = _build(args.model, args.device)
    predictor = SAM2VideoPredictor(model, speed=args.speed, compile=args.compile,
                                   refresh_every=args.refresh_every, precision=args.precision)
    drift, seen = _drift(source, args.stabilize)
    bar = _progress_bar(source.num_frames, "tracking")
    decided: dict = {}
    progress = lambda done, total: (setattr(bar, "total", total), bar.update(done - bar.n))  # noqa: E731
    try:
        if args.auto:
            from sam2_core.automatic import track_all

            labels = track_all(source, args.seed_frame, model=predictor, direction=args.direction,
                               max_frames=args.max_frames, fill_holes=args.fill_holes, min_size=args.min_size,
                               progress=progress, scale=args.scale, cell_diameter=args.cell_diameter,
                               windows=False if args.no_windows else None, stabilize=drift,
                               continuity=not args.no_continuity, info=decided)
        else:
            diameter = args.cell_diameter
            if diameter is None and args.scale is None and args.embedding_cache:
                diameter = 0.0  # the scale embed cached at by default (give both the same value otherwise)
            labels = track(source, prompts, model=predictor, direction=args.direction, max_frames=args.max_frames,
                           fill_holes=args.fill_holes, min_size=args.min_size,
                           embedding_cache=args.embedding_cache, progress=progress, scale=args.scale,
                           cell_diameter=diameter, windows=False if args.no_windows else None,
                           stabilize=drift, continuity=not args.no_continuity, info=decided)
    finally:
        bar.close()
    if decided.get("cell_diameter_estimated"):
        print(f"cell diameter estimated from the {'seeds' if args.auto else 'prompts'}: "
              f"{decided['cell_diameter']:.1f} px (frames resized {decided['scale']:.2f}x)")
    if decided.get("ended"):
        from sam2_core.continuity import describe_ended

        print(f"the continuity guard ended {len(decided['ended'])} track(s) where the mask jumped or swelled: "
              f"{describe_ended(decided['ended'])} (--no-continuity keeps them)")
    info = window_provenance(predictor, seen, args.scale, args.cell_diameter, not args.no_windows, decided)
    info.update(stabilize_provenance(drift), continuity=not args.no_continuity)
    _write_labels(out, labels, info)
    print(f"{out}: {len(np.unique(labels)) - 1} objects over {labels.shape[0]} frames ({args.speed} mode)")
    if args.ctc:
        from napari_sam2.export import write_ctc

        print(f"{write_ctc(args.ctc, labels, info)}: Cell Tracking Challenge result (mask*.tif, res_track.txt)")
    if args.csv:
        from napari_sam2.export import measurements_csv

        frames = type("Frames", (), {"__getitem__": lambda _, t: source.raw(t)})()  # read one frame at a time
        print(f"{measurements_csv(args.csv, labels, frames)}: per-object, per-frame measurements")
    return 0


def os_access_w(folder: Path) -> bool:
    import os

    return os.access(folder, os.W_OK)


def _segment_auto(gen, image, name: str, cell_diameter=None):
    """Automatic segmentation of one image, with a progress bar when it is cut into tiles; at the
    cell diameter's scale (``generate_labels``; measured by default, printed when it resizes)."""
    from tqdm import tqdm

    tiles = gen.tiling(*image.shape[:2])
    if tiles is not None:
        print(f"{name}: {image.shape[1]}x{image.shape[0]} px in tiles of {tiles[0]} px + {tiles[1]} px halo",
              file=sys.stderr)
    with tqdm(desc=name, unit="tile", disable=tiles is None, file=sys.stderr) as bar:
        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        decided: dict = {}
        labels, _ = gen.generate_labels(image, progress=progress, cell_diameter=cell_diameter, info=decided)
    if decided.get("scale", 1.0) != 1.0:
        print(f"{name}: cell diameter {decided['cell_diameter']:.1f} px"
              f"{' (measured)' if cell_diameter in (None, 'auto') else ''}: segmented with the image resized "
              f"{decided['scale']:.2f}x", file=sys.stderr)
    return labels


def _tile_arg(text: str):
    if text == "auto":
        return "auto"
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--tile takes 'auto', 0 or a size in pixels >= 16, not {text!r}") from None
    if value != 0 and value < 16:
        raise argparse.ArgumentTypeError(f"--tile takes 'auto', 0 or a size in pixels >= 16, not {value}")
    return value


def _cmd_segment(args: argparse.Namespace) -> int:
    import numpy as np

    from napari_sam2.export import write_labels_tiff
    from napari_sam2.prompts_io import read_prompts
    from sam2_core.automatic import SAM2AutomaticMaskGenerator
    from sam2_core.io.frames import IMAGE_SUFFIXES
    from sam2_core.predictor.video import SAM2VideoPredictor
    from sam2_core.track import Prompt, track

    src = Path(args.input)
    if not src.exists():
        raise FileNotFoundError(f"no such image or folder: {src}")
    files = sorted(p for p in src.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) if src.is_dir() else [src]
    if not files:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {src}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = _build(args.model, args.device)
    prompts = read_prompts(args.prompts) if args.prompts else None
    gen = SAM2AutomaticMaskGenerator(model, seeding=args.seeding, pred_iou_thresh=args.pred_iou_thresh,
                                     stability_score_thresh=args.stability_thresh, tile_size=args.tile,
                                     tile_halo=args.halo) if prompts is None else None
    predictor = SAM2VideoPredictor(model)
    size = args.cell_diameter
    if size is None and args.tile == 0:  # Meta's way asked for: the image as it is
        size = 0.0
    on_frame = None if prompts is None else [Prompt(0, p.object_id, p.points, p.labels, p.box, p.mask)
                                             for p in prompts]  # the frame column is ignored
    for path in files:
        image = _read_image(path)
        if gen is not None:
            labels = _segment_auto(gen, image, path.name, size)
        else:  # as the widget segments a clicked image: a one-frame stack, in windows at the cell
            # diameter's scale (measured from the prompts by default), overlaps resolved by score
            decided: dict = {}
            labels = track(image[None], on_frame, model=predictor, cell_diameter=size, info=decided,
                           windows=False if args.tile == 0 else None)[0]
            if decided.get("cell_diameter_estimated"):
                print(f"{path.name}: cell diameter measured from the prompts: {decided['cell_diameter']:.1f} px "
                      f"(image resized {decided['scale']:.2f}x)", file=sys.stderr)
        target = out / f"{path.stem}_labels.tif"
        write_labels_tiff(target, labels)
        print(f"{target}: {len(np.unique(labels)) - 1} objects")
    return 0


def _read_image(path: Path):
    if path.suffix.lower() in (".tif", ".tiff"):
        import tifffile

        return tifffile.imread(path)
    from skimage.io import imread

    return imread(path)


def _cmd_embed(args: argparse.Namespace) -> int:
    from sam2_core.io import FrameSource
    from sam2_core.predictor.video import SAM2VideoPredictor
    from sam2_core.tiled_track import TiledTracker, uses_windows
    from sam2_core.track import resolve_scale

    source = FrameSource(args.movie, channels=args.channels)
    if args.stabilize:  # the steady canvas track --stabilize tracks (the same frames, so the same keys)
        source = _drift(source, True)[1].frames()
    model = _build(args.model, args.device)
    # the caches track will open: the same predictor settings (precision), the same windows
    predictor = SAM2VideoPredictor(model, feature_cache_size=1)
    factor = resolve_scale(model, args.scale, args.cell_diameter)
    tracker = None
    if uses_windows(source.height, source.width, model.image_size, factor, False if args.no_windows else None):
        tracker = TiledTracker(predictor, source, scale=factor, embedding_cache=args.cache)
        caches = tracker.feature_caches()
    else:
        caches = [predictor.init_state(source, embedding_cache=args.cache).features]
    bar = _progress_bar(source.num_frames, "embedding")
    try:
        for i in range(source.num_frames):
            for cache in caches:
                cache.prefetch(range(i + 1, i + 3))
                cache.get(i)
            bar.update(1)
    finally:
        bar.close()
        for cache in caches:
            cache.close()
    done = sum(c.encoded for c in caches)
    where = f" in {len(caches)} window(s) at scale {factor:g}" if tracker is not None else ""
    print(f"{args.cache}: embeddings of {source.num_frames} frames{where} ({done} computed, "
          f"{source.num_frames * len(caches) - done} already cached)")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    import dataclasses

    import torch

    from sam2_core.train import TrainConfig, train
    from sam2_core.train.data import SimulatedPool, StackPool, read_labelled

    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    if not out.parent.exists() or not os_access_w(out.parent):
        raise PermissionError(f"cannot write to {out.parent}: the folder does not exist or is read-only")
    if args.simulated and args.model == "default" and not args.images:
        from sam2_core.train.recipe import train_bundled

        hist = train_bundled(out, steps=args.steps, seed=args.seed)
    else:
        if not args.simulated and not args.images:
            raise ValueError("give --images IMG.tif --labels LAB.tif (repeatable) or --simulated")
        if len(args.images or []) != len(args.labels or []):
            raise ValueError(f"--images and --labels must pair up: got {len(args.images or [])} images and "
                             f"{len(args.labels or [])} labels")
        model = _build(args.model, "cpu" if args.device is None else args.device)
        size = model.image_size
        if args.simulated:
            data = SimulatedPool(size, seed=args.seed)
        else:
            data = StackPool([read_labelled(i, l) for i, l in zip(args.images, args.labels)], size, seed=args.seed)
        cfg = dataclasses.replace(TrainConfig(), steps=args.steps or 1000, lr=args.lr, clip_len=args.clip_len,
                                  max_stride=args.max_stride, warm_frames=args.warm_frames,
                                  max_objects=args.objects, seed=args.seed,
                                  save_every=args.save_every, warmup=min(100, max(1, (args.steps or 1000) // 10)))
        hist = train(model, data, cfg, out, resume=not args.restart)
    if hist:
        last = hist[-min(50, len(hist)):]
        print(f"{out}: step {hist[-1]['step'] + 1}, mean loss {sum(r['total'] for r in last) / len(last):.3f}, "
              f"training IoU {sum(r['miou'] for r in last) / len(last):.3f} (last {len(last)} steps)")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    import json

    from sam2_core.train.evaluate import evaluate

    model = _build(args.model, args.device)
    m = evaluate(model, n_movies=args.movies, n_frames=args.frames, size=args.size, progress=not args.json,
                 cell_diameter=args.cell_diameter, n_leaving=args.leaving_movies, n_volumes=args.volumes,
                 continuity=args.continuity)
    if args.json:
        print(json.dumps(m.as_dict()))
    else:
        for k, v in m.as_dict().items():
            print(f"{k:>20}: {v:.4f}" if isinstance(v, float) else f"{k:>20}: {v}")
    return 0


def _cmd_batch(args: argparse.Namespace) -> int:
    from napari_sam2.batch import read_manifest, run_batch, write_report

    jobs = read_manifest(args.manifest)

    def report(r) -> None:
        extra = f", {r.objects} objects, {r.seconds:.1f} s" if r.status == "done" else ""
        print(f"{r.status:>7}  {r.movie} -> {r.out}{extra}{'  ' + r.error if r.error else ''}",
              file=sys.stderr if r.status == "failed" else sys.stdout, flush=True)

    results = run_batch(jobs, workers=args.workers, scheduler=args.scheduler, dask_workers=args.dask_workers,
                        model=args.model, device=args.device, threads=args.threads, force=args.force,
                        speed=args.speed, precision=args.precision, on_result=report)
    if args.report:
        write_report(args.report, results)
    counts = {s: sum(r.status == s for r in results) for s in ("done", "skipped", "failed")}
    print(f"batch: {counts['done']} done, {counts['skipped']} skipped (output exists), {counts['failed']} failed")
    return 1 if counts["failed"] else 0


def _cmd_models(args: argparse.Namespace) -> int:
    from sam2_core import weights
    from sam2_core.build import bundled_checkpoint

    if args.action == "list":
        bundled = bundled_checkpoint()
        print(f"{'default':26} {'bundled' if bundled else 'not installed':14} {bundled or ''}")
        for row in weights.list_weights():
            state = "cached" if row["cached"] else "not cached"
            print(f"{row['name']:26} {state:14} {row['path']}")
        return 0
    if args.action == "download":
        for name in args.names:
            path = weights.download(name, progress=True)
            print(f"{name}: {path}")
        return 0
    if args.action == "import":
        path = weights.import_checkpoint(args.file, name=args.name)
        print(f"imported {args.file} -> {path}")
        return 0
    return 2


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="napari-sam2", description="Segment and track cells with SAM 2.")
    p.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="run the bundled model on the shipped sample time-lapse")
    d.add_argument("--out", default="napari-sam2-demo", help="output folder (default: %(default)s)")
    d.add_argument("--model", default="default", help="model name or checkpoint file")
    d.add_argument("--device", default=None, help="cuda, mps or cpu (default: automatic)")
    d.add_argument("--frames", type=int, default=30, help="frames of the sample to process (default: %(default)s)")
    d.add_argument("--gui", action="store_true", help="open napari with the sample and the widget instead")
    d.set_defaults(func=_cmd_demo)

    t = sub.add_parser("track", help="track prompted (or automatically seeded) objects through a movie")
    t.add_argument("movie", help="TIFF/OME-TIFF, zarr, or a folder of frames; (T, Y, X) or (T, Y, X, C)")
    t.add_argument("--prompts", help="CSV (frame,object_id,x,y,label / x0,y0,x1,y1) or JSON")
    t.add_argument("--out", required=True, help="labels output: .tif/.tiff (ImageJ) or .zarr")
    t.add_argument("--model", default="default", help="model name or checkpoint file (default: %(default)s)")
    t.add_argument("--direction", choices=["forward", "backward", "both"], default="both")
    t.add_argument("--speed", choices=["exact", "fast"], default="exact", help=_speed_help())
    t.add_argument("--precision", choices=PRECISIONS, default=None, help=PRECISION_HELP)
    t.add_argument("--compile", action="store_true",
                   help="torch.compile the image encoder and memory attention (slow first frame; optional)")
    t.add_argument("--refresh-every", type=int, default=None,
                   help="keyframe refresh: every N frames a tracked object's mask becomes a keyframe of its "
                        "memory; 0 = off (Meta's tracking); default: the model's recommended value "
                        "(4 for the bundled model, off for Meta's)")
    t.add_argument("--max-frames", type=int, default=None, help="track at most N frames from the start frame")
    t.add_argument("--auto", action="store_true", help="seed every object automatically on --seed-frame")
    t.add_argument("--seed-frame", type=int, default=0)
    t.add_argument("--device", default=None, help="cuda, mps or cpu (default: automatic)")
    t.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    t.add_argument("--channels", type=int, nargs="+", default=None, help="up to 3 channel indices")
    t.add_argument("--fill-holes", type=int, default=0, help="fill holes up to N pixels per object")
    t.add_argument("--min-size", type=int, default=0, help="drop fragments smaller than N pixels")
    t.add_argument("--embedding-cache", default=None, help="folder of precomputed embeddings (see embed)")
    t.add_argument("--scale", type=float, default=None,
                   help="resize the frames by this factor before tracking (e.g. 2 for nuclei half the size "
                        "the model knows); masks are written at the movie's own size")
    t.add_argument("--cell-diameter", type=_diameter_arg, default=None,
                   help=CELL_DIAMETER_HELP + "; 'auto': measured from the prompts' masks (or the seeds' with "
                   "--auto) and printed. Default: 'auto' when the model stores the diameter it tracks best (the "
                   "bundled model does) and neither --scale nor --embedding-cache is given, else the recorded scale")
    t.add_argument("--no-windows", action="store_true",
                   help="resize whole frames to the model input (Meta's way) instead of tracking frames "
                        "larger than 1.25x the input in windows at their own scale")
    t.add_argument("--stabilize", action="store_true",
                   help="remove stage drift first: the frames are registered (whole-field translation, phase "
                        "correlation) and tracked on a steady canvas; labels are written at each frame's own "
                        "pixels")
    t.add_argument("--no-continuity", action="store_true",
                   help="keep SAM 2's masks as they come: by default an object's track ends where its mask jumps "
                        "away from its last mask or swells past 4x its first area (it left the field, ended in a "
                        "volume, or the tracker slid onto neighbours)")
    t.add_argument("--ctc", default=None, help="also write a Cell Tracking Challenge result folder here")
    t.add_argument("--csv", default=None, help="also write per-object, per-frame measurements (CSV) here")
    t.set_defaults(func=_cmd_track)

    sg = sub.add_parser("segment", help="segment single images (a file or a folder of images)")
    sg.add_argument("input", help="an image file or a folder of images")
    sg.add_argument("--out", required=True, help="output folder for *_labels.tif")
    sg.add_argument("--prompts", help="CSV/JSON prompts (frame ignored), segmented as the widget segments an "
                                      "image: in windows at the cell diameter's scale; default: automatic")
    sg.add_argument("--seeding", choices=["blobs", "grid"], default="blobs", help="automatic seeding mode")
    sg.add_argument("--pred-iou-thresh", type=float, default=None,
                    help="keep masks whose predicted IoU exceeds this (default: the value calibrated for the "
                         "model and stored in its checkpoint, else Meta's 0.7)")
    sg.add_argument("--stability-thresh", type=float, default=None,
                    help="keep masks at least this stable (default: calibrated for the model, else Meta's 0.9)")
    sg.add_argument("--tile", type=_tile_arg, default="auto",
                    help="'auto' (default): images larger than the model input are cut into tiles the model "
                         "sees at its own scale; N: tiles of N px; 0: never (the image is resized to the input)")
    sg.add_argument("--cell-diameter", type=_diameter_arg, default=None,
                    help="the cells' typical diameter in pixels; the image is resized so that cells reach the "
                         "diameter the model segments best. Default ('auto'): for a model that stores it (the "
                         "bundled one), measured from the prompts, or in automatic mode from the objects found "
                         "at the recorded scale (the image segmented again at that scale when it is more than "
                         "15 %% from 1); 0 or 'off': the recorded scale")
    sg.add_argument("--halo", type=int, default=None,
                    help="tile overlap in px, wider than half a cell (default: 1/8 of the tile, at least 16)")
    sg.add_argument("--model", default="default")
    sg.add_argument("--device", default=None)
    sg.set_defaults(func=_cmd_segment)

    e = sub.add_parser("embed", help="precompute the embedding cache of a movie (e.g. on a GPU machine)")
    e.add_argument("movie")
    e.add_argument("--cache", required=True, help="cache folder (pass it to track --embedding-cache)")
    e.add_argument("--model", default="default")
    e.add_argument("--device", default=None)
    e.add_argument("--channels", type=int, nargs="+", default=None)
    e.add_argument("--scale", type=float, default=None, help="as for track: give track the same value")
    e.add_argument("--cell-diameter", type=float, default=None,
                   help="as for track: give track the same value (track then uses these embeddings; without "
                        "--scale or --cell-diameter both use the recorded scale)")
    e.add_argument("--no-windows", action="store_true", help="as for track: give track the same option")
    e.add_argument("--stabilize", action="store_true", help="as for track: give track the same option")
    e.set_defaults(func=_cmd_embed)

    b = sub.add_parser("batch", help="track every movie of a manifest (CSV/YAML), locally or on Dask")
    b.add_argument("manifest", help="CSV or YAML: movie, out[, prompts, seed_frame, direction, max_frames, model, "
                                    "channels, cell_diameter, stabilize] per job; no prompts = automatic seeding")
    b.add_argument("--workers", type=int, default=1, help="local worker processes (default: %(default)s)")
    b.add_argument("--scheduler", default=None, help="address of a running Dask scheduler (tcp://host:8786)")
    b.add_argument("--dask-workers", type=int, default=None, help="start a local Dask cluster with N workers")
    b.add_argument("--model", default="default", help="model for jobs that name none")
    b.add_argument("--speed", choices=["exact", "fast"], default="exact", help=_speed_help())
    b.add_argument("--precision", choices=PRECISIONS, default=None, help=PRECISION_HELP)
    b.add_argument("--device", default=None)
    b.add_argument("--threads", type=int, default=None, help="torch CPU threads per worker")
    b.add_argument("--force", action="store_true", help="redo jobs whose output exists")
    b.add_argument("--report", default=None, help="write a CSV report of every job here")
    b.set_defaults(func=_cmd_batch)

    tr = sub.add_parser("train", help="fine-tune a model on labelled stacks, or train on simulated movies")
    tr.add_argument("--out", required=True, help="checkpoint to write (Meta's format); resumed if it exists")
    tr.add_argument("--model", default="default", help="starting model: name or checkpoint (default: %(default)s)")
    tr.add_argument("--images", nargs="+", help="movies (T, Y, X[, C]) as TIFF or zarr")
    tr.add_argument("--labels", nargs="+", help="their labels (T, Y, X), ids consistent over time")
    tr.add_argument("--simulated", action="store_true",
                    help="train on simulated nuclei movies (with the default model: the bundled model's recipe)")
    tr.add_argument("--steps", type=int, default=None,
                    help="optimiser steps (default: 1000; with --simulated and the default model: the recipe's "
                         "phases A-D, about 8,000 steps, scaled down when given)")
    tr.add_argument("--lr", type=float, default=1e-4)
    tr.add_argument("--clip-len", type=int, default=6, help="frames per training clip")
    tr.add_argument("--max-stride", type=int, default=1,
                    help="take clip frames every s-th frame, s drawn from 1..N per clip (N > 1: the memory "
                         "learns larger motion between frames; default: consecutive frames)")
    tr.add_argument("--warm-frames", type=int, default=0,
                    help="the first N tracked frames of each clip run without loss, so that the trained frames "
                         "read a memory of the model's own predictions (add N to --clip-len; default 0)")
    tr.add_argument("--objects", type=int, default=4, help="objects per clip")
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--save-every", type=int, default=100)
    tr.add_argument("--restart", action="store_true", help="ignore an existing --out instead of resuming it")
    tr.add_argument("--device", default=None)
    tr.add_argument("--threads", type=int, default=None)
    tr.set_defaults(func=_cmd_train)

    ev = sub.add_parser("evaluate", help="the model card's metrics on held-out simulated movies")
    ev.add_argument("--model", default="default")
    ev.add_argument("--movies", type=int, default=8)
    ev.add_argument("--frames", type=int, default=50)
    ev.add_argument("--size", type=int, default=256, help="frame side in pixels")
    ev.add_argument("--leaving-movies", type=int, default=2,
                    help="drifting movies for the leaving-cell figures (seeds 11,000 on)")
    ev.add_argument("--volumes", type=int, default=2, help="simulated volumes (seeds 12,000 on)")
    ev.add_argument("--device", default=None)
    ev.add_argument("--json", action="store_true", help="print one JSON line")
    ev.add_argument("--cell-diameter", nargs="?", const=True, default=False, metavar="auto",
                    type=_auto_only,
                    help="track each movie with its true nucleus diameter given (as --cell-diameter in track), "
                         "in windows at the model's preferred diameter; '--cell-diameter auto': with the "
                         "diameter estimated from the clicks, as track --cell-diameter auto does")
    ev.add_argument("--continuity", action="store_true",
                    help="pass every tracked mask through the continuity guard, as track, the widget and the "
                         "API do by default (without it: the model's masks as they come)")
    ev.set_defaults(func=_cmd_evaluate)

    m = sub.add_parser("models", help="list, download or import model weights")
    msub = m.add_subparsers(dest="action", required=True)
    msub.add_parser("list", help="models and where their weights are cached")
    dl = msub.add_parser("download", help="download official weights (SHA-256 checked)")
    dl.add_argument("names", nargs="+", help="official model names")
    im = msub.add_parser("import", help="copy a checkpoint file into the cache after checking it")
    im.add_argument("file", help="path of a downloaded .pt file")
    im.add_argument("--name", default=None, help="official name it must match (default: by hash)")
    m.set_defaults(func=_cmd_models)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse: 0 for --help, 2 for usage errors
        return int(e.code or 0)
    logging.basicConfig(level=logging.INFO if args.debug else logging.WARNING, format="%(message)s")
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 1
    except Exception as e:  # one line, unless --debug
        if args.debug:
            raise
        print(f"napari-sam2: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
