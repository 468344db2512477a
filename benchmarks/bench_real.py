"""A model on a real fluorescence recording: clicks, automatic segmentation and tracking.

Usage:
    python benchmarks/bench_real.py [--model default] [--threads 2] [--frames 30] [--objects 12]
                                    [--cache DIR]

The image is the 2-D nuclei test image that the ``stardist`` package ships (512 x 512, 125
hand-labelled nuclei, from the 2018 Data Science Bowl: Caicedo et al., Nature Methods 16, 2019;
BBBC038, CC0). This script takes it from the stardist wheel on PyPI (``pip download
stardist==0.9.2 --no-deps``, about 3 MB, cached) and reads the two TIFFs with tifffile; nothing
of stardist is imported or installed, and the image is not part of this repository.

Printed, for the model:
- single-click IoU (median over every nucleus, a click at its most interior pixel, the mask the
  predictor gives one click by default: the model's choice, ``SAM2Config.multimask_output_in_sam``),
  in native tiles (the widget with the cell diameter off) and with the whole image resized to the
  model input; in tiles the best-scored of three candidate masks whatever the config; and in
  windows with the cell diameter measured from the first 5 clicks (the widget's default);
- the same clicks on a 16-bit copy with a camera offset (x 40 + 3000): microscopy normalisation
  is affine-invariant, so the figures must not move;
- automatic segmentation (blob seeding, native tiles): detection F1 and mean IoU of matches
  at IoU > 0.5, at the recorded scale and with the diameter measured (``generate_labels``'
  default);
- propagation over a pseudo time-lapse: the real image drifting by a random walk (about 1.5 px
  per frame) with Poisson noise drawn anew on every frame, N nuclei clicked on frame 0 and
  tracked; median per-object IoU over the frames. Real appearance, simulated motion. Resized
  whole, in windows, with the drift removed, with the nuclei's true median diameter and with the
  diameter estimated from the clicks (``cell_diameter="auto"``);
- a real volume: the 3-D nuclei stack of the same wheel (31 x 61 x 57, 51 hand-labelled nuclei),
  Z as the frame axis as the plugin treats volumes. Each nucleus is clicked once on its largest
  slice and propagated both ways through z (``track(direction="both")``); printed: the median
  per-nucleus 3-D IoU, the IoU on the clicked slices, and how often a nucleus is correctly
  absent on slices beyond its end (the object-score head) and present within it. The slices are
  small (61 x 57): the figures are given for the model's own ``max_upscale`` (the bundled model
  enlarges small frames at most 2x and pads the rest), for Meta's way (resized to the input,
  here 4.2x) and for no enlargement at all (padded: native pixel scale), and for ``track()``'s
  default with and without the continuity guard (``sam2_core.continuity``; the other rows
  without it: the model's own object score).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np

WHEEL = "stardist==0.9.2"
MEMBERS = ("stardist/data/images/img2d.tif", "stardist/data/images/mask2d.tif")
MEMBERS_3D = ("stardist/data/images/img3d.tif", "stardist/data/images/mask3d.tif")


def fetch(cache: Path, members: tuple[str, str] = MEMBERS) -> tuple[np.ndarray, np.ndarray]:
    """(image, labels) from the stardist wheel, downloaded once: the 2-D image uint16 (512, 512)
    or, with ``MEMBERS_3D``, the volume (31, 61, 57)."""
    import tifffile

    img_path, lab_path = (cache / Path(m).name for m in members)
    if not (img_path.is_file() and lab_path.is_file()):
        cache.mkdir(parents=True, exist_ok=True)
        r = subprocess.run([sys.executable, "-m", "pip", "download", WHEEL, "--no-deps", "-q", "-d", str(cache)],
                           capture_output=True, text=True)
        wheels = sorted(cache.glob("stardist-*.whl"))
        if not wheels:
            raise SystemExit(f"could not download {WHEEL} from PyPI (pip said: {r.stderr.strip()[-300:]}); "
                             f"put img2d.tif and mask2d.tif from its stardist/data/images/ into {cache}")
        with zipfile.ZipFile(wheels[-1]) as z:
            for m, dest in zip(members, (img_path, lab_path)):
                dest.write_bytes(z.read(m))
    return tifffile.imread(img_path), tifffile.imread(lab_path)


def click_ious(predictor, image: np.ndarray, labels: np.ndarray, multimask_output: bool | None = None) -> list[float]:
    from sam2_core.train import prompts as P
    from sam2_core.train.evaluate import _iou

    predictor.set_image(image)
    out = []
    rng = np.random.default_rng(0)
    for cid in [i for i in np.unique(labels) if i]:
        truth = labels == cid
        masks, scores, _ = predictor.predict(point_coords=P.click_inside(truth, rng, central=True),
                                             point_labels=[1], multimask_output=multimask_output)
        out.append(_iou(masks[int(np.argmax(scores))], truth))
    return out


def drifting_movie(image: np.ndarray, labels: np.ndarray, n: int, seed: int = 0):
    """(movie (n, H, W) uint16, labels (n, H, W)): the image shifted along a random walk, Poisson noise."""
    from scipy import ndimage as ndi

    rng = np.random.default_rng(seed)
    steps = rng.normal(0, 1.5, (n, 2))
    steps[0] = 0
    path = np.cumsum(steps, axis=0)
    bg = float(np.percentile(image, 5))
    movie, labs = [], []
    for dy, dx in path:
        f = ndi.shift(image.astype(np.float32), (dy, dx), order=1, mode="constant", cval=bg)
        movie.append(rng.poisson(np.maximum(f, 0)).astype(np.uint16))
        labs.append(ndi.shift(labels, (round(dy), round(dx)), order=0, mode="constant", cval=0))
    return np.stack(movie), np.stack(labs)


def track_ious(model, movie: np.ndarray, labels: np.ndarray, n_objects: int, windows: bool = False,
               cell_diameter: float | str | None = None, stabilize: bool = False,
               continuity: bool = True) -> tuple[list[float], float]:
    """Per-nucleus mean IoU over frames 1.. and seconds per frame: the frames resized whole to the
    input (``windows=False``), or tracked in windows at the recorded scale, or with the frames
    resized by ``cell_diameter`` (``sam2_core.tiled_track``; "auto": estimated from the clicks,
    the estimate's time included, and printed), or (``stabilize``) as ``track()``
    does with the stage drift removed (``sam2_core.stabilize``; the drift estimate included;
    ``continuity`` as in ``track()``)."""
    from sam2_core.predictor.video import SAM2VideoPredictor
    from sam2_core.tiled_track import TiledTracker
    from sam2_core.track import resolve_scale
    from sam2_core.train import prompts as P
    from sam2_core.train.evaluate import _iou

    rng = np.random.default_rng(1)
    h, w = labels.shape[1:]
    ids = []
    for cid in rng.permutation([i for i in np.unique(labels[0]) if i]):
        ys, xs = np.nonzero(labels[0] == cid)
        if ys.min() > 40 and xs.min() > 40 and ys.max() < h - 40 and xs.max() < w - 40:  # stays in the field
            ids.append(int(cid))
        if len(ids) == n_objects:
            break
    pred = SAM2VideoPredictor(model)
    clicks = {cid: P.click_inside(labels[0] == cid, rng, central=True) for cid in ids}
    per = {c: [] for c in ids}
    t0 = time.perf_counter()
    if stabilize:
        from sam2_core.track import track

        out = track(movie, [dict(frame=0, object_id=c, points=pt, labels=[1]) for c, pt in clicks.items()],
                    model=pred, direction="forward", stabilize=True, cell_diameter=cell_diameter or 0,
                    continuity=continuity)
        for f in range(1, len(movie)):
            for c in ids:
                per[c].append(_iou(out[f] == c, labels[f] == c))
    elif windows or cell_diameter:
        prompts = [dict(frame=0, object_id=c, points=pt, labels=[1]) for c, pt in clicks.items()]
        if cell_diameter == "auto":
            from sam2_core.diameter import estimate_cell_diameter

            cell_diameter = estimate_cell_diameter(pred, movie, prompts).diameter
            print(f"  (estimated from the {len(prompts)} clicks: {cell_diameter:.1f} px)", flush=True)
        tracker = TiledTracker(pred, movie, scale=resolve_scale(model, None, cell_diameter))
        for f, results in tracker.run(prompts, 0):
            for r in results:
                if f > 0:
                    per[r.obj_id].append(_iou(r.full_mask(tracker.hw), labels[f] == r.obj_id))
        tracker.close()
    else:
        state = pred.init_state(movie)
        for cid, pt in clicks.items():
            pred.add_new_points_or_box(state, 0, cid, points=pt, labels=[1])
        for f, obj_ids, logits in pred.propagate_in_video(state):
            for cid, m in zip(obj_ids, logits[:, 0].numpy() > 0):
                if f > 0:
                    per[cid].append(_iou(m, labels[f] == cid))
    sec = (time.perf_counter() - t0) / len(movie)
    return [float(np.mean(v)) for v in per.values()], sec


def volume_scores(model, volume: np.ndarray, labels: np.ndarray, cell_diameter: float | None = 0.0,
                  continuity: bool = False) -> dict[str, float]:
    """Each nucleus clicked on its largest slice, tracked both ways through z: see the module doc.
    ``cell_diameter`` and ``continuity``: as for ``track()`` (0: the recorded scale; None: track()'s
    default; the guard off by default here: the model's own object score)."""
    from sam2_core.track import Prompt, track
    from sam2_core.train import prompts as P
    from sam2_core.train.evaluate import _iou

    rng = np.random.default_rng(2)
    prompts, key = [], {}
    for cid in [int(i) for i in np.unique(labels) if i]:
        z = int(np.argmax((labels == cid).sum((1, 2))))
        prompts.append(Prompt(frame=z, object_id=cid, points=P.click_inside(labels[z] == cid, rng, central=True),
                              labels=[1]))
        key[cid] = z
    t0 = time.perf_counter()
    out = np.asarray(track(volume, prompts, model=model, direction="both", cell_diameter=cell_diameter,
                           continuity=continuity))
    sec = (time.perf_counter() - t0) / len(volume)
    iou3d = [_iou(out == c, labels == c) for c in key]
    iou_slice = [_iou(out[z] == c, labels[z] == c) for c, z in key.items()]
    absent, present = [], []
    for c in key:
        inside = (labels == c).any((1, 2))
        found = (out == c).any((1, 2))
        zs = np.nonzero(inside)[0]
        beyond = np.ones_like(inside)
        beyond[max(zs.min() - 1, 0) : zs.max() + 2] = False  # one slice of slack at each end
        absent += list(~found[beyond])
        present += list(found[inside])
    return {"iou3d": float(np.median(iou3d)), "iou_clicked": float(np.median(iou_slice)),
            "absent": float(np.mean(absent)), "present": float(np.mean(present)), "n": len(key), "s_per_slice": sec}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="default", help="model name or checkpoint")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--frames", type=int, default=30)
    ap.add_argument("--objects", type=int, default=12)
    ap.add_argument("--cache", default=None, help="where the wheel and the TIFFs are kept "
                                                   "(default: the user cache folder of napari-sam2)")
    args = ap.parse_args()
    import platformdirs
    import torch

    torch.set_num_threads(args.threads)
    from sam2_core import build_sam2
    from sam2_core.automatic import SAM2AutomaticMaskGenerator
    from sam2_core.predictor.image import SAM2ImagePredictor
    from sam2_core.tiling import TiledImagePredictor
    from sam2_core.train.evaluate import match_score

    cache = Path(args.cache) if args.cache else Path(platformdirs.user_cache_dir("napari-sam2")) / "real-data"
    image, labels = fetch(cache)
    model = build_sam2(args.model, device="cpu") if not Path(args.model).is_file() else \
        build_sam2(checkpoint=args.model, device="cpu")
    print(f"model {args.model} (input {model.image_size}); image {image.shape} {image.dtype} "
          f"{image.min()}-{image.max()}, {len(np.unique(labels)) - 1} labelled nuclei, {args.threads} threads")
    med = lambda v: float(np.median(v))  # noqa: E731
    tiled = click_ious(TiledImagePredictor(model), image, labels)
    whole = click_ious(SAM2ImagePredictor(model), image, labels)
    offset = (image.astype(np.uint32) * 40 + 3000).astype(np.uint16)
    tiled16 = click_ious(TiledImagePredictor(model), offset, labels)
    three = click_ious(TiledImagePredictor(model), image, labels, multimask_output=True)
    print(f"single-click IoU, median: native tiles {med(tiled):.3f} (IoU > 0.5: {np.mean(np.array(tiled) > 0.5):.0%}), "
          f"whole image resized {med(whole):.3f}; 16-bit x40 + 3000, tiles {med(tiled16):.3f}; "
          f"best-scored of three, tiles {med(three):.3f}")
    from sam2_core.track import preferred_diameter

    if preferred_diameter(model):  # the widget's default: the diameter measured from the first 5 clicks
        from sam2_core.predictor.video import SAM2VideoPredictor
        from sam2_core.train import prompts as P
        from sam2_core.train.evaluate import _iou, clicks_at_diameter

        rng = np.random.default_rng(0)  # the same clicks as click_ious
        ids = [i for i in np.unique(labels) if i]
        points = [P.click_inside(labels == i, rng, central=True) for i in ids]
        video_pred = SAM2VideoPredictor(model)
        masks, d = clicks_at_diameter(video_pred, image, points)
        if masks is None:  # in windows at that scale all the same (a given diameter always scales)
            print(f"  the cell diameter measured from the first 5 clicks ({d:.1f} px; the widget's default) "
                  "keeps the recorded scale: the native tiles' figure")
            masks, _ = clicks_at_diameter(video_pred, image, points, d)
        scaled = [_iou(m, labels == i) for m, i in zip(masks, ids)]
        print(f"  in windows at the scale of the cell diameter measured from the first 5 clicks ({d:.1f} px): "
              f"{med(scaled):.3f} (IoU > 0.5: {np.mean(np.array(scaled) > 0.5):.0%})")
    for size, what in ((0.0, "native tiles, recorded scale"), (None, "the default: diameter measured")):
        t0 = time.perf_counter()
        decided: dict = {}
        auto, _ = SAM2AutomaticMaskGenerator(model).generate_labels(image, cell_diameter=size, info=decided)
        s = match_score(auto[None], labels[None])
        d = decided.get("cell_diameter")
        size_text = f", {d:.1f} px, scale {decided['scale']:.2f}" if d else ""
        print(f"automatic (blobs, {what}{size_text}): "
              f"F1 {s['f1']:.3f}, mean IoU {s['mean_iou']:.3f} (tp {s['tp']}, fp {s['fp']}, fn {s['fn']}), "
              f"{time.perf_counter() - t0:.1f} s")
    movie, mlabels = drifting_movie(image, labels, args.frames)
    ious, sec = track_ious(model, movie, mlabels, args.objects)
    print(f"pseudo time-lapse ({args.frames} frames, {len(ious)} nuclei), frames resized whole to the input: "
          f"propagated IoU median {med(ious):.3f} (min {min(ious):.3f}), {sec:.2f} s/frame")
    ious, sec = track_ious(model, movie, mlabels, args.objects, windows=True)
    print(f"  the same in windows at the recorded scale (track()'s default at this size): median {med(ious):.3f} "
          f"(min {min(ious):.3f}), {sec:.2f} s/frame")
    ious, sec = track_ious(model, movie, mlabels, args.objects, stabilize=True)
    print(f"  the same with the stage drift removed (track(stabilize=True), recorded scale): median {med(ious):.3f} "
          f"(min {min(ious):.3f}), {sec:.2f} s/frame")
    if preferred_diameter(model):
        areas = np.bincount(labels.ravel())[1:]
        diameter = float(np.median(2 * np.sqrt(areas[areas > 0] / np.pi)))  # what a user would measure
        ious, sec = track_ious(model, movie, mlabels, args.objects, cell_diameter=diameter)
        print(f"  with cell_diameter {diameter:.1f} px (the nuclei's median equivalent diameter): median "
              f"{med(ious):.3f} (min {min(ious):.3f}), {sec:.2f} s/frame")
        ious, sec = track_ious(model, movie, mlabels, args.objects, cell_diameter="auto")
        print(f"  with cell_diameter='auto' (estimated from the clicks): median {med(ious):.3f} "
              f"(min {min(ious):.3f}), {sec:.2f} s/frame")
        ious, sec = track_ious(model, movie, mlabels, args.objects, stabilize=True, cell_diameter="auto")
        print(f"  'auto' with the stage drift removed (track(stabilize=True)'s default): median {med(ious):.3f} "
              f"(min {min(ious):.3f}), {sec:.2f} s/frame")
        ious, sec = track_ious(model, movie, mlabels, args.objects, stabilize=True, cell_diameter="auto",
                               continuity=False)
        print(f"  the same without the continuity guard (continuity=False): median {med(ious):.3f} "
              f"(min {min(ious):.3f}), {sec:.2f} s/frame")
    volume, vlabels = fetch(cache, MEMBERS_3D)
    print(f"real volume {volume.shape} {volume.dtype}, {len(np.unique(vlabels)) - 1} nuclei, each clicked once on its "
          f"largest slice and tracked both ways through z:")
    own = model.config.max_upscale
    what = {0.0: "resized to the input", 1.0: "padded: native pixel scale"}
    for k in [own] + [k for k in what if k != own]:
        how = f"max_upscale {k:g} ({what.get(k, 'at most 2x enlarged, then padded' if k == 2 else 'padded')}"
        how += ", the model's setting)" if k == own else ")"
        model.config = model.config.replace(max_upscale=k)
        v = volume_scores(model, volume, vlabels)
        print(f"  {how}: 3-D IoU median {v['iou3d']:.3f}, clicked-slice IoU {v['iou_clicked']:.3f}, "
              f"absent beyond the nucleus {v['absent']:.0%} of slices, present within {v['present']:.0%}, "
              f"{v['s_per_slice']:.2f} s/slice")
    model.config = model.config.replace(max_upscale=own)
    for continuity in (False, True):
        v = volume_scores(model, volume, vlabels, cell_diameter=None, continuity=continuity)
        how = ("track()'s default (" + ("the cell diameter measured from the clicks, " if preferred_diameter(model)
                                        else "") + "the continuity guard)") if continuity else "the same without the guard"
        print(f"  {how}: 3-D IoU median {v['iou3d']:.3f}, "
              f"clicked-slice IoU {v['iou_clicked']:.3f}, absent beyond the nucleus {v['absent']:.0%} of slices, "
              f"present within {v['present']:.0%}, {v['s_per_slice']:.2f} s/slice")


if __name__ == "__main__":
    main()
