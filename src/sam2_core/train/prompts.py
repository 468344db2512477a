"""Prompts simulated from ground-truth masks (numpy), as SAM 2's training samples them.

Coordinates are (x, y) in the pixels of the mask given. Labels: 1 positive click, 0 negative
click, 2 / 3 the top-left / bottom-right corners of a box.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi


def click_inside(mask: np.ndarray, rng: np.random.Generator, central: bool = False) -> np.ndarray:
    """(1, 2) a positive click: uniform over the mask, or (``central``) its most interior pixel.

    Uniform clicks avoid the outermost pixels when the object is thick enough, like a person
    clicking "on" a cell.
    """
    dist = ndi.distance_transform_edt(mask)
    if central:
        y, x = np.unravel_index(int(np.argmax(dist)), mask.shape)
    else:
        inner = dist >= min(2.0, float(dist.max()))
        ys, xs = np.nonzero(inner)
        i = rng.integers(len(ys))
        y, x = ys[i], xs[i]
    return np.array([[x + 0.5, y + 0.5]], np.float32)


def box_of(mask: np.ndarray, rng: np.random.Generator | None = None, jitter: float = 0.1) -> np.ndarray:
    """(2, 2) box corners (x0, y0), (x1, y1) around the mask, each side moved by up to ``jitter``
    of the box size (no jitter without ``rng``)."""
    ys, xs = np.nonzero(mask)
    x0, x1, y0, y1 = xs.min(), xs.max() + 1.0, ys.min(), ys.max() + 1.0
    if rng is not None and jitter > 0:
        w, h = x1 - x0, y1 - y0
        x0 += rng.uniform(-jitter, jitter) * w
        x1 += rng.uniform(-jitter, jitter) * w
        y0 += rng.uniform(-jitter, jitter) * h
        y1 += rng.uniform(-jitter, jitter) * h
    hgt, wid = mask.shape
    box = np.array([[x0, y0], [x1, y1]], np.float32)
    box[:, 0] = np.clip(box[:, 0], 0, wid)
    box[:, 1] = np.clip(box[:, 1], 0, hgt)
    return box


def corrective_click(pred: np.ndarray, truth: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, int] | None:
    """A click where the prediction is most wrong: ((1, 2) point, label) or None if it is right.

    Picks the larger of the false-negative and false-positive areas and clicks its most interior
    pixel (positive for a missed part, negative for a spill-over), as an annotator would.
    """
    fn = truth & ~pred
    fp = pred & ~truth
    if not fn.any() and not fp.any():
        return None
    err, label = (fn, 1) if fn.sum() >= fp.sum() else (fp, 0)
    dist = ndi.distance_transform_edt(np.pad(err, 1))[1:-1, 1:-1]
    best = np.flatnonzero(dist >= dist.max() - 1e-6)
    y, x = np.unravel_index(int(rng.choice(best)), err.shape)
    return np.array([[x + 0.5, y + 0.5]], np.float32), label
