"""Mask post-processing on the CPU with scikit-image (no CUDA extension needed)."""

from __future__ import annotations

import functools

import numpy as np
import torch


def fill_holes_in_logits(logits: torch.Tensor, max_area: int, fill_value: float = 0.1) -> torch.Tensor:
    """Turn background components (logit <= 0, 8-connected) of area <= max_area into foreground.

    logits: (B, 1, h, w) -> same shape; filled pixels get ``fill_value``. Absent objects
    (all logits <= 0 in one component) are left alone unless the whole map is tiny.
    """
    if max_area <= 0:
        return logits
    from skimage.measure import label

    out = logits.clone()
    bg_all = (logits <= 0).cpu().numpy()
    for b in range(logits.shape[0]):
        bg = bg_all[b, 0]
        if bg.all() or not bg.any():
            continue
        lab = label(bg, connectivity=2)
        areas = np.bincount(lab.ravel())
        hole = (lab > 0) & (areas[lab] <= max_area)
        if hole.any():
            out[b, 0][torch.from_numpy(hole).to(out.device)] = fill_value
    return out


def remove_small_fragments(mask: np.ndarray, min_size: int) -> np.ndarray:
    """Drop 8-connected foreground pieces smaller than ``min_size`` pixels from a 2-D bool mask."""
    if min_size <= 0 or not mask.any():
        return mask
    from skimage.morphology import remove_small_objects

    return remove_small_objects(mask, max_size=min_size - 1, connectivity=2) if _has_max_size() else \
        remove_small_objects(mask, min_size=min_size, connectivity=2)


def fill_small_holes(mask: np.ndarray, max_area: int) -> np.ndarray:
    """Fill holes (background enclosed by the mask) of at most ``max_area`` pixels."""
    if max_area <= 0 or not mask.any():
        return mask
    from skimage.morphology import remove_small_holes

    return remove_small_holes(mask, max_size=max_area, connectivity=1) if _has_max_size() else \
        remove_small_holes(mask, area_threshold=max_area + 1, connectivity=1)


@functools.lru_cache(maxsize=1)
def _has_max_size() -> bool:
    """scikit-image >= 0.26 names the size limits ``max_size`` (inclusive)."""
    import inspect

    from skimage.morphology import remove_small_objects

    return "max_size" in inspect.signature(remove_small_objects).parameters


def non_overlapping(logits: torch.Tensor) -> torch.Tensor:
    """Across objects (B, 1, H, W), keep each pixel's logit only for the arg-max object.

    The others are clamped to at most -10 there (Meta's rule).
    """
    if logits.shape[0] <= 1:
        return logits
    best = torch.argmax(logits, dim=0, keepdim=True)
    keep = best == torch.arange(logits.shape[0], device=logits.device)[:, None, None, None]
    return torch.where(keep, logits, torch.clamp(logits, max=-10.0))


def paint_instances(shape: tuple[int, int], masks, *, min_visible: float = 0.5) -> tuple[np.ndarray, list[int]]:
    """One instance labels image from masks painted in order, each on top of the earlier ones.

    Args:
        shape: (H, W) of the labels image.
        masks: sequence of (mask (h, w) bool, (y0, x0)) placed at that offset; paint the largest
            first so that smaller objects stay whole.
        min_visible: a mask of which less than this fraction stays visible is dropped: it is
            covered by others (typically one mask spanning several cells that were also found
            one by one), and its few remaining pixels would be a stray label.

    Returns:
        (labels (H, W) with ids 1..N, uint16 or uint32; for each id the index of its mask).
    """
    from sam2_core.track import labels_dtype

    labels = np.zeros(shape, np.int64 if len(masks) > np.iinfo(np.int32).max else np.int32)
    areas = np.zeros(len(masks) + 1, np.int64)
    for k, (m, (y0, x0)) in enumerate(masks, start=1):
        h, w = m.shape
        labels[y0:y0 + h, x0:x0 + w][m] = k
        areas[k] = int(m.sum())
    visible = np.bincount(labels.ravel(), minlength=len(areas))
    keep = [k for k in range(1, len(areas)) if areas[k] and visible[k] >= min_visible * areas[k]]
    lut = np.zeros(len(areas), labels_dtype(len(keep)))
    lut[keep] = np.arange(1, len(keep) + 1)
    return lut[labels], [k - 1 for k in keep]
