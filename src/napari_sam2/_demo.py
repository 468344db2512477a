"""The README's demo: track every nucleus of the sample time-lapse automatically and write results.

Runs the bundled default model (or any other), seeds every object on frame 0 automatically (one
click per bright blob, so that it works with any weights), tracks them through the movie, and writes a labels TIFF, a Cell Tracking Challenge result folder, a CSV of
per-object measurements and a PNG overview. The sample is simulated, so the demo also scores the
result against the true labels.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from sam2_core.train.evaluate import match_score as score


def _model(model: str, device: str | None):
    from napari_sam2._session import load_model

    if Path(model).is_file():
        return load_model(checkpoint=model, device=device), f"checkpoint {model}"
    from sam2_core.build import bundled_checkpoint

    note = model
    if model == "default":
        note = ("bundled default" if bundled_checkpoint() else
                "RANDOM WEIGHTS (no bundled model in this installation): masks are not meaningful")
    return load_model(model, device=device), note




def run_demo(out: Path, *, model: str = "default", device: str | None = None, frames: int = 30) -> Path:
    """Automatically seed and track the sample movie; write labels, CTC, CSV and PNG into ``out``."""
    import tifffile

    from napari_sam2._sample_data import sample_movie
    from napari_sam2.export import measurements_csv, write_ctc, write_labels_tiff
    from sam2_core import transforms as T
    from sam2_core.automatic import blob_points
    from sam2_core.track import Prompt, track

    out.mkdir(parents=True, exist_ok=True)
    movie, truth = sample_movie(frames)
    net, note = _model(model, device)
    print(f"napari-sam2 demo: model {note}, device {net.device}; {len(movie)} frames of "
          f"{movie.shape[1]}x{movie.shape[2]}", file=sys.stderr)
    t0 = time.perf_counter()
    # automatic seeding: one click per bright blob of frame 0 (scale-space LoG), then tracking
    seeds = blob_points(T.to_unit_rgb(movie[0]), min_sigma=3.0, max_sigma=10.0, threshold=0.1)
    prompts = [Prompt(0, k + 1, points=[xy], labels=[1]) for k, xy in enumerate(seeds)]
    decided: dict = {}  # the bundled model measures the cells' diameter from the seeds first
    labels = track(movie, prompts, model=net, direction="forward", min_size=10, fill_holes=16, info=decided)
    seconds = time.perf_counter() - t0
    tifffile.imwrite(out / "movie.tif", movie, imagej=True, metadata={"axes": "TYX"})
    tif = write_labels_tiff(out / "labels.tif", labels, axes="TYX")
    ctc = write_ctc(out / "ctc_RES", labels)
    csv = measurements_csv(out / "measurements.csv", labels, movie)
    png = out / "overview.png"
    _overview(movie, labels, png)
    s = score(labels, truth)
    n_obj = len(np.unique(labels[0])) - 1
    print(f"seeded {len(prompts)} blobs ({n_obj} objects kept) on frame 0 and tracked them through {len(movie)} frames in {seconds:.1f} s "
          f"({len(movie) / max(seconds, 1e-9):.1f} frames/s)")
    if decided.get("cell_diameter_estimated"):
        print(f"cell diameter measured from the seeds: {decided['cell_diameter']:.1f} px "
              f"(frames resized {decided['scale']:.2f}x for the model)")
    print(f"against the true labels: detection F1 {s['f1']:.3f}, mean IoU of matched cells {s['mean_iou']:.3f}")
    print(f"labels:       {tif}")
    print(f"CTC result:   {ctc}")
    print(f"measurements: {csv}")
    print(f"overview:     {png}")
    print(f"movie:        {out / 'movie.tif'}")
    if "RANDOM" in note:
        print("note: random weights were used, so the labels are not a real segmentation.")
    return tif


def open_gui(model: str = "default") -> None:  # pragma: no cover - interactive
    """Open napari with the sample movie and the SAM 2 widget docked."""
    import napari

    from napari_sam2._sample_data import make_sample_data

    viewer = napari.Viewer()
    for data, kwargs, kind in make_sample_data():
        getattr(viewer, f"add_{kind}")(data, **kwargs)
    viewer.window.add_plugin_dock_widget("napari-sam2", "SAM 2 Segment & Track")
    napari.run()


def _overview(movie: np.ndarray, labels: np.ndarray, path: Path, n: int = 4) -> None:
    """A row of frames with coloured label outlines, as PNG."""
    from skimage.io import imsave
    from skimage.segmentation import find_boundaries

    idx = np.linspace(0, len(movie) - 1, min(n, len(movie))).astype(int)
    tiles = []
    rng = np.random.default_rng(1)
    colours = rng.integers(80, 256, size=(int(labels.max()) + 1, 3)).astype(np.uint8)
    for t in idx:
        f = movie[t].astype(np.float32)
        lo, hi = np.percentile(f, (0.5, 99.8))
        g = (np.clip((f - lo) / max(hi - lo, 1e-6), 0, 1) * 255).astype(np.uint8)
        rgb = np.repeat(g[..., None], 3, axis=-1)
        edge = find_boundaries(labels[t], mode="inner")
        rgb[edge] = colours[labels[t][edge]]
        tiles.append(rgb)
        tiles.append(np.zeros((rgb.shape[0], 4, 3), np.uint8))
    imsave(path, np.concatenate(tiles[:-1], axis=1), check_contrast=False)
