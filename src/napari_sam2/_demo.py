"""The README's demo: segment the sample time-lapse and write the results.

Until the bundled model ships, the demo runs on random weights and says so: the pipeline (reading,
normalising, prompting, decoding, writing) is real, the masks are not meaningful.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np


def _seeds(frame: np.ndarray, min_distance: int = 6) -> np.ndarray:
    """(N, 2) (x, y) seed points: local maxima of the smoothed frame (one per bright blob)."""
    from skimage.feature import peak_local_max
    from skimage.filters import gaussian, threshold_otsu

    smooth = gaussian(frame.astype(np.float32), sigma=2)
    peaks = peak_local_max(smooth, min_distance=min_distance, threshold_abs=threshold_otsu(smooth))
    return peaks[:, ::-1].astype(np.float32)  # (row, col) -> (x, y)


def run_demo(out: Path, *, model: str = "default", device: str | None = None, frames: int = 8) -> Path:
    """Segment ``frames`` frames of the sample movie; write labels TIFF and a PNG overview."""
    import tifffile
    import torch

    from sam2_core import build_sam2
    from sam2_core.build import bundled_checkpoint
    from sam2_core.predictor.image import SAM2ImagePredictor
    from sam2_core.simulate import simulate_timelapse

    out.mkdir(parents=True, exist_ok=True)
    movie, truth = simulate_timelapse(n_frames=frames, shape=(128, 128), n_cells=6, seed=0)
    if Path(model).is_file():
        net = build_sam2(checkpoint=model, device=device)
        note = f"checkpoint {model}"
    elif model == "default" and bundled_checkpoint() is None:
        torch.manual_seed(0)
        net = build_sam2("default", pretrained=False, image_size=256, device=device)
        note = "RANDOM WEIGHTS (no bundled model in this installation yet): masks are not meaningful"
    else:
        net = build_sam2(model, device=device)
        note = model
    print(f"napari-sam2 demo: model {note}, device {net.device}", file=sys.stderr)
    predictor = SAM2ImagePredictor(net)
    labels = np.zeros_like(truth)
    t0 = time.perf_counter()
    for t in range(frames):
        predictor.set_image(movie[t])
        seeds = _seeds(movie[t])
        if len(seeds) == 0:
            continue
        masks, scores, _ = predictor.predict(
            point_coords=seeds[:, None, :], point_labels=np.ones((len(seeds), 1)), multimask_output=False
        )
        masks = masks.reshape(len(seeds), *movie.shape[1:])
        for k in np.argsort(scores.ravel()):  # best-scoring masks drawn last, on top
            labels[t][masks[k]] = k + 1
        print(f"  frame {t + 1}/{frames}: {len(seeds)} objects", file=sys.stderr)
    seconds = time.perf_counter() - t0
    tif = out / "labels.tif"
    tifffile.imwrite(tif, labels, imagej=True, metadata={"axes": "TYX"})
    tifffile.imwrite(out / "movie.tif", movie, imagej=True, metadata={"axes": "TYX"})
    png = out / "overview.png"
    _overview(movie, labels, png)
    print(f"segmented {frames} frames in {seconds:.1f} s")
    print(f"labels:   {tif}")
    print(f"movie:    {out / 'movie.tif'}")
    print(f"overview: {png}")
    if "RANDOM" in note:
        print("note: random weights were used, so the labels are not a real segmentation.")
    return tif


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
