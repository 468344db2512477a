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

from collections.abc import Callable, Iterator, Sequence
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

    Tiles default to the model's own scale: ``tile`` + 2 ``halo`` = the model input (256 + 2 x 32
    for the bundled model, 768 + 2 x 128 for Meta's), so cells are not shrunk; an image up to
    1.25x the input is one tile. ``predict`` routes each prompt to the tile whose core holds its
    first point (or its box's centre) and returns masks (C, H, W) of the whole image, scores (C,), and the tile's low-res
    logits (C, L, L) with the tile's ``outer`` box in ``last_tile``.
    """

    def __init__(self, model: Any, *, tile: int | None = None, halo: int | None = None, cache_tiles: int = 4) -> None:
        from sam2_core.predictor.image import SAM2ImagePredictor

        self.predictor = SAM2ImagePredictor(model, cache_size=cache_tiles)
        self.native = tile is None  # the model's own scale: core + 2 halo = the model input
        if self.native:
            tile, halo = native_tile(self.predictor.model.image_size, halo)
        self.tile, self.halo = int(tile), (default_halo(tile) if halo is None else int(halo))
        self.image: np.ndarray | None = None
        self.last_tile: Tile | None = None

    def set_image(self, image: np.ndarray, *, contrast_limits: Any = None, channels: Sequence[int] | None = None) -> None:
        """Remember the image and its contrast; nothing is encoded until a prompt needs a tile."""
        image = T.check_image(image)
        self.image, self.channels = image, channels
        self.limits = _limits(image, contrast_limits, channels)
        h, w = image.shape[:2]
        whole = self.native and native_tiling(self.predictor.model.image_size, h, w) is None
        self.tiles = [Tile((0, h, 0, w), (0, h, 0, w))] if whole else tile_grid(h, w, self.tile, self.halo)

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

    def predict(self, point_coords=None, point_labels=None, box=None, multimask_output: bool | None = None, **kwargs):
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


def default_halo(tile: int) -> int:
    """Halo of a ``tile``-pixel tile when none is given: 1/8 of it, at least 16 px."""
    return max(16, int(tile) // 8)


def native_tile(image_size: int, halo: int | None = None) -> tuple[int, int]:
    """(core, halo) of tiles seen at the model's own scale: core + 2 halo = ``image_size``."""
    halo = default_halo(image_size) if halo is None else int(halo)
    core = image_size - 2 * halo
    if core < 16:
        raise ValueError(f"halo {halo} px leaves no core in {image_size}-px tiles: use a halo below {image_size // 2 - 8}")
    return core, halo


#: images (and frames) whose longer side exceeds this many model inputs are seen at the model's
#: own scale, in tiles or windows, instead of being resized to the input
TILE_ABOVE = 1.25


def larger_than_input(image_size: int, height: float, width: float) -> bool:
    """Whether an image of this size is cut into tiles or windows rather than resized."""
    return max(height, width) > TILE_ABOVE * image_size


def native_tiling(image_size: int, height: int, width: int, halo: int | None = None) -> tuple[int, int] | None:
    """(core, halo) of tiles the model sees at its own scale, or None when the image is small enough.

    A model trained at ``image_size`` (the bundled one at 256) knows cells at the pixel scale of
    its training images; resizing a larger image down to its input shrinks every cell below what
    it has seen (nuclei 7-11 px in radius become 2-5 px at 256 from 1024). Images up to 1.25x
    the input are resized as usual; larger ones are cut into tiles of ``image_size`` pixels with
    their halo (``image_size // 8`` by default, at least 16), so each tile is encoded at 1:1.
    """
    if not larger_than_input(image_size, height, width):
        return None
    return native_tile(image_size, halo)


def tiled_records(generate: Callable[..., list[dict]], image: np.ndarray, *, tile: int, halo: int,
                  contrast_limits: Any = None, channels: Sequence[int] | None = None,
                  progress: Callable[[int, int], None] | None = None) -> Iterator[tuple[Tile, dict]]:
    """Run ``generate(crop, contrast_limits=, channels=)`` tile by tile; yield (tile, record) for each
    object found whole in its own tile (centroid in the tile's core, not touching the tile's outer
    edge inside the image). Records keep the crop-local segmentation; the tile says where it is.
    ``progress(done, total)`` is called after each tile."""
    image = T.check_image(image)
    h, w = image.shape[:2]
    limits = _limits(image, contrast_limits, channels)
    tiles = tile_grid(h, w, tile, halo)
    for n, t in enumerate(tiles, start=1):
        y0, y1, x0, x1 = t.outer
        cy0, cy1, cx0, cx1 = t.core
        for r in generate(image[t.slices()], contrast_limits=limits, channels=channels):
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
            yield t, r
        if progress is not None:
            progress(n, len(tiles))


def placed(t: Tile, r: dict) -> tuple[np.ndarray, tuple[int, int], dict]:
    """A tile's record as (mask cropped to its box, (y0, x0) of that box in the image, record in
    image coordinates without the mask): a few hundred bytes per cell instead of a tile-sized mask."""
    ys, xs = np.nonzero(r["segmentation"])
    y0, x0 = t.outer[0], t.outer[2]
    a, b, c, d = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    rec = {"area": int(r["area"]), "bbox": [int(c + x0), int(a + y0), int(d - c), int(b - a)],
           "predicted_iou": float(r.get("predicted_iou", 1.0)),
           "stability_score": float(r.get("stability_score", 1.0)), "tile": list(t.core)}
    if "point_coords" in r:
        rec["point_coords"] = [[float(px + x0), float(py + y0)] for px, py in r["point_coords"]]
    return r["segmentation"][a:b, c:d].copy(), (int(a + y0), int(c + x0)), rec


def stitch(kept: Sequence[tuple[np.ndarray, tuple[int, int], dict]], shape: tuple[int, int],
           min_visible: float = 0.5) -> tuple[np.ndarray, list[dict]]:
    """Labels (H, W) with ids 1..N from (mask, (y0, x0), record) triples: largest painted first,
    smaller on top, masks less than ``min_visible`` visible dropped (see
    :func:`sam2_core.masks.paint_instances`); and the records (id, area, bbox XYWH in image
    pixels, predicted_iou, stability_score, point_coords, tile core) in id order."""
    from sam2_core.masks import paint_instances

    order = sorted(kept, key=lambda item: -item[2]["area"])
    labels, kept_idx = paint_instances(shape, [(m, off) for m, off, _ in order], min_visible=min_visible)
    return labels, [{"id": k, **order[i][2]} for k, i in enumerate(kept_idx, start=1)]


def segment_tiled(generator: Any, image: np.ndarray, *, tile: int = 1024, halo: int = 128,
                  contrast_limits: Any = None, channels: Sequence[int] | None = None,
                  progress: Callable[[int, int], None] | None = None) -> tuple[np.ndarray, list[dict]]:
    """Automatic segmentation of a large image, tile by tile, stitched without duplicates or cuts.

    Args:
        generator: anything with ``generate(image, contrast_limits=, channels=) -> records`` (e.g.
            :class:`~sam2_core.automatic.SAM2AutomaticMaskGenerator`, whose own automatic
            tiling is bypassed here: ``tile`` and ``halo`` decide).
        tile: core size of each tile in pixels; halo: overlap on each side, wider than half a cell.

    Returns:
        (labels (H, W) uint16/uint32 with ids 1..N, records without the full-size masks: see
        :func:`stitch`).
    """
    image = T.check_image(image)
    generate = getattr(generator, "generate_untiled", generator.generate)
    kept = [placed(t, r) for t, r in tiled_records(generate, image, tile=tile, halo=halo,
                                                     contrast_limits=contrast_limits, channels=channels,
                                                     progress=progress)]
    return stitch(kept, image.shape[:2])
