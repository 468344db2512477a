"""Automatic segmentation: seed prompts everywhere (grid) or on every blob, decode, filter, dedupe.

``SAM2AutomaticMaskGenerator`` follows Meta's parameters and output records; its defaults are
tuned for fluorescence microscopy (many small, touching objects), and ``seeding="blobs"`` puts one
prompt on each candidate cell found by a Laplacian-of-Gaussian / local-maximum detector instead of
a regular grid, so sparse nuclei need far fewer decoder calls. Pure torch + numpy + scikit-image.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from sam2_core import transforms as T
from sam2_core.masks import remove_small_fragments
from sam2_core.modeling.mask_decoder import stability_scores


def grid_points(n_per_side: int) -> np.ndarray:
    """(n*n, 2) cell-centre points in [0, 1]^2 (x, y)."""
    offset = 1 / (2 * n_per_side)
    side = np.linspace(offset, 1 - offset, n_per_side)
    xs, ys = np.meshgrid(side, side)
    return np.stack([xs.ravel(), ys.ravel()], axis=-1)


def blob_points(image: np.ndarray, *, min_sigma: float = 2.0, max_sigma: float = 12.0,
                threshold: float = 0.05, max_points: int = 2000) -> np.ndarray:
    """(N, 2) (x, y) pixel seeds, one per bright blob of a (H, W[, 3]) image in [0, 1].

    Scale-space Laplacian of Gaussian (scikit-image ``blob_log``) on the mean channel.
    """
    from skimage.feature import blob_log

    gray = image.mean(axis=-1) if image.ndim == 3 else image
    blobs = blob_log(gray.astype(np.float32), min_sigma=min_sigma, max_sigma=max_sigma, num_sigma=6,
                     threshold=threshold, overlap=0.5)
    if len(blobs) > max_points:
        strength = gray[blobs[:, 0].astype(int), blobs[:, 1].astype(int)]
        blobs = blobs[np.argsort(-strength)[:max_points]]
    return blobs[:, [1, 0]].astype(np.float32)


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU matrix of XYXY boxes (N, 4) x (M, 4)."""
    area_a = (a[:, 2] - a[:, 0]).clamp(min=0) * (a[:, 3] - a[:, 1]).clamp(min=0)
    area_b = (b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)
    lt = torch.max(a[:, None, :2], b[None, :, :2])
    rb = torch.min(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    return inter / (area_a[:, None] + area_b[None, :] - inter).clamp(min=1e-6)


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_thresh: float) -> torch.Tensor:
    """Greedy non-maximum suppression; indices kept, best score first."""
    order = torch.argsort(scores, descending=True)
    boxes = boxes[order]
    iou = box_iou(boxes, boxes)
    keep = torch.ones(len(order), dtype=torch.bool)
    for i in range(len(order)):
        if keep[i]:
            keep[i + 1 :] &= iou[i, i + 1 :] <= iou_thresh
    return order[keep]


def mask_to_box(masks: torch.Tensor) -> torch.Tensor:
    """(N, H, W) bool -> (N, 4) XYXY inclusive pixel boxes (zeros for empty masks)."""
    n, h, w = masks.shape
    if n == 0:
        return torch.zeros((0, 4))
    rows, cols = masks.any(2), masks.any(1)
    ar_h, ar_w = torch.arange(h, device=masks.device), torch.arange(w, device=masks.device)
    y0 = torch.where(rows, ar_h, h).min(1).values
    y1 = torch.where(rows, ar_h, -1).max(1).values
    x0 = torch.where(cols, ar_w, w).min(1).values
    x1 = torch.where(cols, ar_w, -1).max(1).values
    box = torch.stack([x0, y0, x1, y1], 1).float()
    return torch.where((y1 >= 0)[:, None], box, torch.zeros_like(box))


def crop_boxes(h: int, w: int, n_layers: int, overlap_ratio: float) -> list[tuple[list[int], int]]:
    """Meta's crops: layer 0 is the image, layer i has (2^i)^2 overlapping crops. [(XYXY, layer)]."""
    boxes = [([0, 0, w, h], 0)]
    short = min(h, w)
    for layer in range(1, n_layers + 1):
        n = 2**layer
        overlap = int(overlap_ratio * short * (2 / n))
        cw = int(np.ceil((overlap * (n - 1) + w) / n))
        ch = int(np.ceil((overlap * (n - 1) + h) / n))
        for y0 in [int((ch - overlap) * i) for i in range(n)]:
            for x0 in [int((cw - overlap) * i) for i in range(n)]:
                boxes.append(([x0, y0, min(x0 + cw, w), min(y0 + ch, h)], layer))
    return boxes


@dataclass
class _Batch:
    masks: torch.Tensor  # (N, H, W) bool, crop-local
    ious: torch.Tensor
    stability: torch.Tensor
    points: torch.Tensor  # (N, 2) x, y in image pixels
    low_res: torch.Tensor


class SAM2AutomaticMaskGenerator:
    """Find every object in an image.

    Args (Meta's, with microscopy defaults): points_per_side, points_per_batch, pred_iou_thresh,
        stability_score_thresh, stability_score_offset, mask_threshold, box_nms_thresh,
        crop_n_layers, crop_nms_thresh, crop_overlap_ratio, crop_n_points_downscale_factor,
        point_grids, min_mask_region_area, output_mode ("binary_mask" only), multimask_output.
        Ours: ``seeding`` "blobs" (one prompt per candidate cell), "grid" (Meta's regular grid of
        ``points_per_side`` squared points, 32 when not given) or "auto" (the default: a grid when
        ``points_per_side`` or ``point_grids`` is given, as in scripts written for Meta's
        generator, else blobs, which find sparse and dense nuclei with far fewer decoder calls);
        ``blob_kwargs`` for :func:`blob_points`;
        ``max_mask_fraction`` drops masks covering more of the crop (background).
        ``tile_size``: images larger than the model input are cut into tiles the model sees at its
        own scale ("auto": tiles of ``model.image_size`` with a halo, see
        :func:`sam2_core.tiling.native_tiling`), or into tiles of this many pixels (an int: the
        tile's core), or never (None / 0: the whole image is resized to the input, Meta's way);
        ``tile_halo`` overrides the halo (pixels, wider than half a cell). Tiles are stitched
        without duplicated or cut cells. For large images prefer :meth:`generate_labels`, which
        returns one labels image instead of a full-size mask per object.

    ``pred_iou_thresh`` and ``stability_score_thresh`` left at None take the values calibrated for
    the model's weights (``model.recommended``, stored in its checkpoint; see
    :func:`sam2_core.train.evaluate.calibrate_generator`), else Meta's 0.7 / 0.9. A model's IoU
    head is only as calibrated as its training: the bundled model's predicted IoUs run lower than
    Meta's, and fixed thresholds would reject every mask.
    """

    def __init__(
        self,
        model: Any,
        points_per_side: int | None = None,
        points_per_batch: int = 64,
        pred_iou_thresh: float | None = None,
        stability_score_thresh: float | None = None,
        stability_score_offset: float = 0.7,
        mask_threshold: float = 0.0,
        box_nms_thresh: float = 0.5,
        crop_n_layers: int = 0,
        crop_nms_thresh: float = 0.7,
        crop_overlap_ratio: float = 512 / 1500,
        crop_n_points_downscale_factor: int = 1,
        point_grids: list[np.ndarray] | None = None,
        min_mask_region_area: int = 10,
        output_mode: str = "binary_mask",
        multimask_output: bool = True,
        *,
        seeding: str = "auto",
        blob_kwargs: dict | None = None,
        max_mask_fraction: float = 0.5,
        tile_size: int | str | None = "auto",
        tile_halo: int | None = None,
    ) -> None:
        from sam2_core.predictor.image import SAM2ImagePredictor

        if output_mode != "binary_mask":
            raise ValueError("only output_mode='binary_mask' is supported")
        if seeding not in ("auto", "grid", "blobs"):
            raise ValueError(f"seeding must be 'auto', 'grid' or 'blobs', got {seeding!r}")
        if seeding == "auto":
            seeding = "grid" if points_per_side is not None or point_grids is not None else "blobs"
        if points_per_side is None:
            points_per_side = 32
        self.predictor = model if isinstance(model, SAM2ImagePredictor) else SAM2ImagePredictor(model)
        self.points_per_side, self.points_per_batch = points_per_side, points_per_batch
        rec = getattr(self.predictor.model, "recommended", None) or {}
        self.pred_iou_thresh = float(rec.get("pred_iou_thresh", 0.7) if pred_iou_thresh is None else pred_iou_thresh)
        self.stability_score_thresh = float(rec.get("stability_score_thresh", 0.9) if stability_score_thresh is None
                                            else stability_score_thresh)
        self.stability_score_offset, self.mask_threshold = stability_score_offset, mask_threshold
        self.box_nms_thresh, self.crop_nms_thresh = box_nms_thresh, crop_nms_thresh
        self.crop_n_layers, self.crop_overlap_ratio = crop_n_layers, crop_overlap_ratio
        self.crop_n_points_downscale_factor = crop_n_points_downscale_factor
        self.point_grids = point_grids
        self.min_mask_region_area = min_mask_region_area
        self.multimask_output = multimask_output
        self.seeding, self.blob_kwargs = seeding, dict(blob_kwargs or {})
        self.max_mask_fraction = max_mask_fraction
        if not (tile_size in (None, 0, "auto") or (isinstance(tile_size, int) and tile_size >= 16)):
            raise ValueError(f"tile_size must be 'auto', None or an int >= 16 (pixels), got {tile_size!r}")
        self.tile_size, self.tile_halo = tile_size, tile_halo

    def tiling(self, height: int, width: int) -> tuple[int, int] | None:
        """(tile core, halo) in pixels for an image of this size, or None to take it whole."""
        from sam2_core.tiling import default_halo, native_tiling

        if not self.tile_size:
            return None
        if self.tile_size == "auto":
            return native_tiling(self.predictor.model.image_size, height, width, self.tile_halo)
        if max(height, width) <= self.tile_size:
            return None
        return self.tile_size, (default_halo(self.tile_size) if self.tile_halo is None else self.tile_halo)

    def generate(self, image: np.ndarray, *, contrast_limits: Any = None, channels: Any = None,
                 progress: Any = None) -> list[dict]:
        """Records with segmentation (H, W) bool, area, bbox XYWH, predicted_iou, point_coords,
        stability_score and crop_box XYWH (for tiled images: the tile), largest first."""
        image = np.asarray(image)
        tiles = self.tiling(*image.shape[:2]) if image.ndim >= 2 else None
        if tiles is None:
            return self.generate_untiled(image, contrast_limits=contrast_limits, channels=channels)
        from sam2_core.tiling import placed, tiled_records

        out = []
        for t, r in tiled_records(self.generate_untiled, image, tile=tiles[0], halo=tiles[1],
                                  contrast_limits=contrast_limits, channels=channels, progress=progress):
            mask, (y, x), rec = placed(t, r)  # image coordinates
            full = np.zeros(image.shape[:2], bool)
            full[y:y + mask.shape[0], x:x + mask.shape[1]] = mask
            y0, y1, x0, x1 = t.outer
            out.append({**r, "segmentation": full, "bbox": rec["bbox"], "point_coords": rec["point_coords"],
                        "crop_box": [x0, y0, x1 - x0, y1 - y0]})
        return sorted(out, key=lambda r: -r["area"])

    def generate_labels(self, image: np.ndarray, *, contrast_limits: Any = None, channels: Any = None,
                        progress: Any = None, cell_diameter: float | str | None = None,
                        scale: float | None = None, info: dict | None = None) -> tuple[np.ndarray, list[dict]]:
        """One instance labels image (H, W) with ids 1..N (smaller objects on top) and records
        without masks (id, area, bbox, predicted_iou, stability_score, point_coords, tile).

        Memory is bounded by a tile, not by the number of objects: the way to segment stage
        scans. ``progress(done, total)`` is called per tile (a second pass at a measured scale
        counts on from the first pass's tiles).

        ``cell_diameter`` / ``scale`` as in :func:`sam2_core.track.track`: the image is resized
        (after normalisation) so that cells of that diameter reach the one the model segments
        best, segmented, and the labels brought back to the image's pixels. None (default):
        for a model that stores its preferred diameter, the image is segmented as it is, the
        found objects' median equivalent diameter measured, and the image segmented again at the
        scale that implies when it is more than ``AUTO_TOLERANCE`` from 1 ("auto" the same);
        0 / "off": as it is. ``info`` receives ``scale`` and ``cell_diameter`` (measured or
        given; None without)."""
        from sam2_core.diameter import close_scales
        from sam2_core.track import MAX_SCALE, as_diameter, preferred_diameter, resolve_scale

        cell_diameter = as_diameter(cell_diameter)
        pref = preferred_diameter(self.predictor.model)
        measure = scale is None and cell_diameter in (None, "auto") and pref is not None
        if cell_diameter == "auto" and scale is not None:
            raise ValueError("give scale or cell_diameter, not both")
        if cell_diameter == "auto" and pref is None:
            raise ValueError("this model stores no preferred cell diameter (recommended['cell_diameter']): give "
                             "scale= instead, or cell_diameter=0")
        factor = 1.0 if measure else resolve_scale(self.predictor.model, scale, cell_diameter or None)
        if info is not None:
            info.update(scale=factor, cell_diameter=cell_diameter or None)
        if factor != 1.0:
            return self._labels_at_scale(image, factor, contrast_limits, channels, progress)
        first: list[int] = [0]  # tiles of the first pass: a second pass counts on from there

        def counted(done: int, total: int) -> None:
            first[0] = total
            progress(done, total)

        labels, records = self._labels(image, contrast_limits, channels, counted if progress else None)
        areas = np.bincount(labels.ravel())[1:]  # one pass over the labels, however many objects
        if not measure or not areas.any():
            return labels, records
        d = float(np.median(2 * np.sqrt(areas[areas > 0] / np.pi)))  # equivalent diameters
        factor = float(np.clip(pref / d, 1 / MAX_SCALE, MAX_SCALE))
        if info is not None:
            info.update(cell_diameter=d, scale=1.0 if close_scales(factor) else factor)
        if close_scales(factor):
            return labels, records
        again = (lambda done, total: progress(first[0] + done, first[0] + total)) if progress else None
        return self._labels_at_scale(image, factor, contrast_limits, channels, again)

    def _labels_at_scale(self, image: np.ndarray, factor: float, contrast_limits: Any, channels: Any,
                         progress: Any) -> tuple[np.ndarray, list[dict]]:
        """:meth:`generate_labels` of the normalised image resized by ``factor``, labels and
        records brought back to the image's pixels (objects lost in the resizing are dropped)."""
        from scipy import ndimage as ndi
        from skimage.transform import resize

        unit = T.to_unit_rgb(np.asarray(image), contrast_limits, channels)
        h, w = unit.shape[:2]
        big = resize(unit, (max(1, round(h * factor)), max(1, round(w * factor)), unit.shape[2]), order=1,
                     anti_aliasing=factor < 1, preserve_range=True).astype(np.float32)
        labels, records = self._labels(big, (0.0, 1.0), None, progress)
        labels = resize(labels, (h, w), order=0, anti_aliasing=False, preserve_range=True).astype(labels.dtype)
        boxes = ndi.find_objects(labels)
        areas = np.bincount(labels.ravel(), minlength=len(boxes) + 1)
        sy, sx = h / big.shape[0], w / big.shape[1]
        out = []
        for r in records:
            i = int(r["id"])
            if i > len(boxes) or boxes[i - 1] is None:
                continue
            ys, xs = boxes[i - 1]
            r = dict(r, area=int(areas[i]), bbox=[xs.start, ys.start, xs.stop - xs.start, ys.stop - ys.start],
                     point_coords=[[x * sx, y * sy] for x, y in r["point_coords"]])
            if r.get("tile") is not None:
                r["tile"] = [int(round(v / factor)) for v in r["tile"]]
            out.append(r)
        if len(out) < len(records):  # ids 1..N again
            lut = np.zeros(int(labels.max()) + 1, labels.dtype)
            lut[[r["id"] for r in out]] = np.arange(1, len(out) + 1)
            labels = lut[labels]
            out = [dict(r, id=k) for k, r in enumerate(out, start=1)]
        return labels, out

    def _labels(self, image: np.ndarray, contrast_limits: Any, channels: Any,
                progress: Any) -> tuple[np.ndarray, list[dict]]:
        """:meth:`generate_labels` at the image's own scale."""
        from sam2_core.tiling import Tile, placed, segment_tiled, stitch

        image = np.asarray(image)
        tiles = self.tiling(*image.shape[:2]) if image.ndim >= 2 else None
        if tiles is not None:
            return segment_tiled(self, image, tile=tiles[0], halo=tiles[1], contrast_limits=contrast_limits,
                                 channels=channels, progress=progress)
        records = self.generate_untiled(image, contrast_limits=contrast_limits, channels=channels)
        h, w = image.shape[:2]
        whole = Tile((0, h, 0, w), (0, h, 0, w))
        labels, out = stitch([placed(whole, r) for r in records], (h, w))
        if progress is not None:
            progress(1, 1)
        return labels, out

    @torch.inference_mode()
    def generate_untiled(self, image: np.ndarray, *, contrast_limits: Any = None, channels: Any = None) -> list[dict]:
        """:meth:`generate` on the whole image resized to the model input (Meta's way)."""
        image = np.asarray(image)
        unit = T.to_unit_rgb(image, contrast_limits, channels)
        h, w = unit.shape[:2]
        crops = crop_boxes(h, w, self.crop_n_layers, self.crop_overlap_ratio)
        all_masks, all_boxes, all_scores, records = [], [], [], []
        for box, layer in crops:
            x0, y0, x1, y1 = box
            kept = self._process_crop(unit[y0:y1, x0:x1], layer, box, (h, w))
            for i in range(len(kept.ious)):
                full = torch.zeros((h, w), dtype=torch.bool)
                full[y0:y1, x0:x1] = kept.masks[i]
                all_masks.append(full)
                records.append({
                    "predicted_iou": float(kept.ious[i]), "stability_score": float(kept.stability[i]),
                    "point_coords": [[float(kept.points[i, 0] + x0), float(kept.points[i, 1] + y0)]],
                    "crop_box": [x0, y0, x1 - x0, y1 - y0], "_layer": layer,
                })
        if not records:
            return []
        masks = torch.stack(all_masks)
        boxes = mask_to_box(masks)
        if len(crops) > 1:  # across crops prefer masks from smaller crops (deeper layers)
            scores = torch.tensor([1.0 / (1 + r["_layer"]) for r in records])
            keep = nms(boxes, -scores + 1e-3 * torch.tensor([r["predicted_iou"] for r in records]), self.crop_nms_thresh)
            masks, boxes, records = masks[keep], boxes[keep], [records[i] for i in keep.tolist()]
        out = []
        for m, b, r in zip(masks, boxes, records):
            m_np = m.numpy()
            if self.min_mask_region_area > 0:
                from sam2_core.masks import fill_small_holes

                m_np = fill_small_holes(remove_small_fragments(m_np, self.min_mask_region_area), self.min_mask_region_area)
                if not m_np.any():
                    continue
                b = mask_to_box(torch.from_numpy(m_np)[None])[0]  # the box of the cleaned mask
            r = {k: v for k, v in r.items() if k != "_layer"}
            x0, y0, x1, y1 = b.tolist()
            out.append({"segmentation": m_np, "area": int(m_np.sum()), "bbox": [x0, y0, x1 - x0 + 1, y1 - y0 + 1], **r})
        return sorted(out, key=lambda r: -r["area"])

    def _seeds(self, crop: np.ndarray, layer: int) -> np.ndarray:
        h, w = crop.shape[:2]
        if self.seeding == "blobs":
            return blob_points(crop, **self.blob_kwargs)
        if self.point_grids is not None:
            grid = self.point_grids[layer]
        else:
            grid = grid_points(max(1, int(self.points_per_side / self.crop_n_points_downscale_factor**layer)))
        return (grid * np.array([w, h])).astype(np.float32)

    def _process_crop(self, crop: np.ndarray, layer: int, box: list[int], image_hw: tuple[int, int]) -> _Batch:
        pred = self.predictor
        h, w = crop.shape[:2]
        pred.set_image(crop.astype(np.float32), contrast_limits=(0.0, 1.0))
        seeds = self._seeds(crop, layer)
        parts = []
        for s in range(0, len(seeds), self.points_per_batch):
            pts = seeds[s : s + self.points_per_batch]
            parts.append(self._decode(pts, (h, w)))
        if not parts:
            return _Batch(torch.zeros((0, h, w), dtype=torch.bool), torch.zeros(0), torch.zeros(0),
                          torch.zeros((0, 2)), torch.zeros(0))
        batch = _Batch(*(torch.cat([getattr(p, f) for p in parts]) for f in ("masks", "ious", "stability", "points", "low_res")))
        if len(batch.ious) == 0:
            return batch
        boxes = mask_to_box(batch.masks)
        # drop masks near a crop edge that is not an image edge (they continue in another crop)
        x0, y0, x1, y1 = box
        near = torch.zeros(len(boxes), dtype=torch.bool)
        for k, (edge, is_image_edge) in enumerate(
            ((0, x0 == 0), (0, y0 == 0), (x1 - x0 - 1, x1 == image_hw[1]), (y1 - y0 - 1, y1 == image_hw[0]))
        ):
            if not is_image_edge:
                near |= (boxes[:, k] - edge).abs() <= 20
        keep = nms(boxes[~near], batch.ious[~near], self.box_nms_thresh)
        keep = torch.nonzero(~near)[:, 0][keep]
        return _Batch(batch.masks[keep], batch.ious[keep], batch.stability[keep], batch.points[keep], batch.low_res[keep])

    def _decode(self, pts: np.ndarray, hw: tuple[int, int]) -> _Batch:
        pred = self.predictor
        canvas = pred.canvas_hw(0)
        coords = T.points_to_model(pts[:, None, :], canvas, pred.model.image_size).to(pred.device)
        labels = torch.ones(coords.shape[:2], dtype=torch.int32, device=pred.device)
        low, iou = pred._predict(coords, labels, None, None, self.multimask_output, 0)
        n, m = iou.shape
        low, iou = low.flatten(0, 1), iou.flatten()
        points = torch.from_numpy(np.repeat(pts, m, axis=0))
        keep = iou > self.pred_iou_thresh
        stab = stability_scores(low, self.stability_score_offset) if self.mask_threshold == 0 else \
            stability_scores(low - self.mask_threshold, self.stability_score_offset)
        keep &= stab >= self.stability_score_thresh
        low, iou, stab, points = low[keep], iou[keep], stab[keep], points[keep]
        if len(iou) == 0:
            return _Batch(torch.zeros((0, *hw), dtype=torch.bool), iou.cpu(), stab.cpu(), points, low.cpu())
        full = T.masks_to_original(low[:, None], hw, canvas)[:, 0] > self.mask_threshold
        frac = full.flatten(1).float().mean(1)
        ok = (frac > 0) & (frac <= self.max_mask_fraction)
        return _Batch(full[ok].cpu(), iou[ok].cpu(), stab[ok].cpu(), points[ok.cpu()], low[ok].cpu())


def records_to_labels(records: list[dict], shape: tuple[int, int] | None = None, min_visible: float = 0.5) -> np.ndarray:
    """Instance labels image from generator records, ids 1..N: smaller objects drawn on top, and a
    mask less than ``min_visible`` visible dropped (one mask spanning cells also found one by one;
    see :func:`sam2_core.masks.paint_instances`)."""
    from sam2_core.masks import paint_instances

    if not records:
        if shape is None:
            raise ValueError("no records and no shape given")
        return np.zeros(shape, np.uint16)
    shape = shape or records[0]["segmentation"].shape
    order = sorted(records, key=lambda r: -r["area"])
    return paint_instances(shape, [(r["segmentation"], (0, 0)) for r in order], min_visible=min_visible)[0]


def track_all(frames: Any, seed_frame: int = 0, *, model: Any = "default", generator_kwargs: dict | None = None,
              direction: str = "both", max_frames: int | None = None, **track_kwargs: Any) -> np.ndarray:
    """Seed every object on one frame automatically, then track them all through the stack.

    The seeds are found at the cell diameter's scale when one is given or measured (``scale`` /
    ``cell_diameter`` of ``track_kwargs``: :meth:`SAM2AutomaticMaskGenerator.generate_labels`),
    then tracked by :func:`sam2_core.track.track`. Returns the (T, Y, X) labels; correct them
    afterwards with clicks.
    """
    from sam2_core.io.frames import FrameSource
    from sam2_core.track import Prompt, _as_predictor, track

    predictor = _as_predictor(model, track_kwargs.pop("device", None), track_kwargs.pop("speed", None),
                              track_kwargs.pop("precision", None))
    source = frames if isinstance(frames, FrameSource) else FrameSource(
        frames, contrast_limits=track_kwargs.pop("contrast_limits", None), channels=track_kwargs.pop("channels", None))
    gen = SAM2AutomaticMaskGenerator(predictor.model, **(generator_kwargs or {"seeding": "blobs"}))
    unit = source.unit_rgb(seed_frame)
    size = dict(cell_diameter=track_kwargs.get("cell_diameter"), scale=track_kwargs.get("scale"))
    if track_kwargs.get("windows") is False and size["cell_diameter"] is None and size["scale"] is None:
        size["cell_diameter"] = 0.0  # as track: no diameter measured when frames are resized whole
    labels, _ = gen.generate_labels(unit.astype(np.float32), contrast_limits=(0.0, 1.0), **size)
    prompts = [Prompt(seed_frame, int(i), mask=labels == i) for i in np.unique(labels) if i]
    if not prompts:
        raise ValueError(f"no objects found on frame {seed_frame}; try seeding='grid' or lower thresholds")
    return track(source, prompts, model=predictor, direction=direction, max_frames=max_frames, **track_kwargs)
