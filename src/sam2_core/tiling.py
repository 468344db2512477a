"""Images much larger than the model input (stage scans): tiles with a halo.

A 4096 x 4096 scan resized to the model's input would shrink every cell below a feature token,
so large images are cut into tiles (``tile`` pixels plus a ``halo`` on each side), each encoded
only when a prompt needs it, at most ``cache_tiles`` kept. Intensities are normalised once for the
whole image, so every tile sees the same contrast. Memory is bounded by the tile, not the image
(apart from the full-size masks the caller asks for).

Automatic segmentation runs per tile and keeps an object only in the tile whose *core* holds its
centroid, and only if it does not touch the tile's outer edge (inside the image): with a halo
wider than a cell, each cell is found whole in exactly one tile, never twice and never cut.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from sam2_core import transforms as T


@dataclass(frozen=True)
class Tile:
    """core: (y0, y1, x0, x1) the pixels this tile answers for; outer: core plus halo, clipped."""

    core: tuple[int, int, int, int]
    outer: tuple[int, int, int, int]

    def slices(self) -> tuple[slice, slice]:
        y0, y1, x0, x1 = self.outer
        return slice(y0, y1), slice(x0, x1)


def tile_grid(height: int, width: int, tile: int, halo: int) -> list[Tile]:
    """Tiles whose cores partition the image, each core at most ``tile`` pixels a side."""
    if tile < 16 or halo < 0:
        raise ValueError(f"tile must be >= 16 and halo >= 0, got tile={tile}, halo={halo}")

    def cuts(n: int) -> list[int]:
        k = max(1, -(-n // tile))
        return [round(i * n / k) for i in range(k + 1)]

    ys, xs = cuts(height), cuts(width)
    out = []
    for y0, y1 in zip(ys[:-1], ys[1:]):
        for x0, x1 in zip(xs[:-1], xs[1:]):
            outer = (max(0, y0 - halo), min(height, y1 + halo), max(0, x0 - halo), min(width, x1 + halo))
            out.append(Tile((y0, y1, x0, x1), outer))
    return out


def _limits(image: np.ndarray, contrast_limits: Any, channels: Sequence[int] | None) -> Any:
    """Contrast limits for the whole image (None: natural uint8 RGB, taken as is)."""
    if contrast_limits is not None or T.is_natural_rgb(image):
        return contrast_limits
    step = max(1, int(np.sqrt(image.shape[0] * image.shape[1] / 1e6)))  # ~1 Mpx sample
    sample = image[::step, ::step]
    if sample.ndim == 2:
        return T.percentile_limits(sample)
    chans = list(channels) if channels is not None else list(range(sample.shape[-1]))
    limits = [T.percentile_limits(sample[..., c]) for c in chans]
    return limits[0] if len(limits) == 1 else limits


class TiledImagePredictor:
    """:class:`~sam2_core.predictor.image.SAM2ImagePredictor` for large images, tile by tile.

    ``predict`` routes each prompt to the tile whose core holds its first point (or its box's
    centre) and returns masks (C, H, W) of the whole image, scores (C,), and the tile's low-res
    logits (C, L, L) with the tile's ``outer`` box in ``last_tile``.
    """

    def __init__(self, model: Any, *, tile: int = 1024, halo: int = 128, cache_tiles: int = 4) -> None:
        from sam2_core.predictor.image import SAM2ImagePredictor

        self.predictor = SAM2ImagePredictor(model, cache_size=cache_tiles)
        self.tile, self.halo = tile, halo
        self.image: np.ndarray | None = None
        self.last_tile: Tile | None = None

    def set_image(self, image: np.ndarray, *, contrast_limits: Any = None, channels: Sequence[int] | None = None) -> None:
        """Remember the image and its contrast; nothing is encoded until a prompt needs a tile."""
        image = T.check_image(image)
        self.image, self.channels = image, channels
        self.limits = _limits(image, contrast_limits, channels)
        self.tiles = tile_grid(image.shape[0], image.shape[1], self.tile, self.halo)

    def tile_of(self, x: float, y: float) -> Tile:
        for t in self.tiles:
            y0, y1, x0, x1 = t.core
            if y0 <= y < y1 and x0 <= x < x1:
                return t
        h, w = self.image.shape[:2]
        raise ValueError(f"point ({x}, {y}) is outside the {w}x{h} image")

    def _route(self, points: np.ndarray | None, box: np.ndarray | None) -> Tile:
        anchor = points[0] if points is not None and len(points) else (box[:2] + box[2:]) / 2
        t = self.tile_of(float(anchor[0]), float(anchor[1]))
        y0, y1, x0, x1 = t.outer
        xy = np.concatenate([a.reshape(-1, 2) for a in (points, box) if a is not None])
        if not ((xy[:, 0] >= x0) & (xy[:, 0] <= x1) & (xy[:, 1] >= y0) & (xy[:, 1] <= y1)).all():
            raise ValueError(f"the prompt spans more than one tile (tile {self.tile} px, halo {self.halo} px): "
                             "use a larger tile or halo, or prompt objects one at a time")
        return t

    def predict(self, point_coords=None, point_labels=None, box=None, multimask_output: bool = True, **kwargs):
        if self.image is None:
            raise RuntimeError("An image must be set with .set_image(...) before mask prediction.")
        pts = None if point_coords is None else np.asarray(point_coords, np.float32).reshape(-1, 2)
        bx = None if box is None else np.asarray(box, np.float32).reshape(4)
        t = self._route(pts, bx)
        y0, y1, x0, x1 = t.outer
        self.predictor.set_image(self.image[t.slices()], contrast_limits=self.limits, channels=self.channels)
        offset = np.array([x0, y0], np.float32)
        masks, scores, low = self.predictor.predict(
            point_coords=None if pts is None else pts - offset, point_labels=point_labels,
            box=None if bx is None else bx - np.tile(offset, 2), multimask_output=multimask_output, **kwargs)
        full = np.zeros((masks.shape[0], *self.image.shape[:2]), masks.dtype)
        full[:, y0:y1, x0:x1] = masks
        self.last_tile = t
        return full, scores, low


def segment_tiled(generator: Any, image: np.ndarray, *, tile: int = 1024, halo: int = 128,
                  contrast_limits: Any = None, channels: Sequence[int] | None = None) -> tuple[np.ndarray, list[dict]]:
    """Automatic segmentation of a large image, tile by tile, stitched without duplicates or cuts.

    Args:
        generator: anything with ``generate(image, contrast_limits=, channels=) -> records`` (e.g.
            :class:`~sam2_core.automatic.SAM2AutomaticMaskGenerator`).

    Returns:
        (labels (H, W) uint16/uint32 with ids 1..N, records without the full-size masks: area,
        bbox XYWH in image pixels, predicted_iou, stability_score, tile core).
    """
    from sam2_core.track import labels_dtype

    image = T.check_image(image)
    h, w = image.shape[:2]
    limits = _limits(image, contrast_limits, channels)
    kept: list[tuple[Tile, dict]] = []
    for t in tile_grid(h, w, tile, halo):
        crop = image[t.slices()]
        y0, y1, x0, x1 = t.outer
        cy0, cy1, cx0, cx1 = t.core
        for r in generator.generate(crop, contrast_limits=limits, channels=channels):
            m = r["segmentation"]
            ys, xs = np.nonzero(m)
            if len(ys) == 0:
                continue
            gy, gx = ys.mean() + y0, xs.mean() + x0
            if not (cy0 <= gy < cy1 and cx0 <= gx < cx1):
                continue  # another tile's core holds it
            cut = ((ys.min() == 0 and y0 > 0) or (ys.max() == m.shape[0] - 1 and y1 < h)
                   or (xs.min() == 0 and x0 > 0) or (xs.max() == m.shape[1] - 1 and x1 < w))
            if cut:
                continue  # touches the halo's outer edge inside the image: not whole here
            kept.append((t, r))
    labels = np.zeros((h, w), labels_dtype(len(kept)))
    records = []
    for k, (t, r) in enumerate(sorted(kept, key=lambda tr: -tr[1]["area"]), start=1):
        y0, y1, x0, x1 = t.outer
        region = labels[y0:y1, x0:x1]
        region[r["segmentation"]] = k  # smaller objects drawn later, on top
        bx, by, bw, bh = r["bbox"]
        records.append({"id": k, "area": int(r["area"]), "bbox": [bx + x0, by + y0, bw, bh],
                        "predicted_iou": float(r.get("predicted_iou", 1.0)),
                        "stability_score": float(r.get("stability_score", 1.0)), "tile": list(t.core)})
    return labels, records
