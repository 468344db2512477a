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
