"""Local windows of the feature grid for fast tracking of many small objects.

A window is ``(y0, x0, h, w)`` in feature-grid tokens (the grid is S/16 on a side; the decoder's
low-res masks are 4 and the model input 16 pixels per token). ``None`` stands for the whole
grid (the exact path). Pure functions over tensors and tuples, tested on their own; the video
predictor decides when to use them.

Rules:
- the window of an object on the next frame is centred on its mask's centre on the previous
  frame, moved by its last measured step (constant velocity), and grows by that step;
- its side is the object's box plus ``margin`` tokens on each side, rounded up to a multiple of
  ``QUANTUM`` (objects with equal sides share a batch); it follows the object's size, growing at
  once and shrinking by one quantum per frame (so a window enlarged to re-acquire an object does
  not snap back and lose it again);
- a window that would not fit in the grid is ``None`` (the exact path).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

Window = tuple[int, int, int, int]

#: Low-res mask pixels per feature token and model-input pixels per token.
LOW_RES_PER_TOKEN = 4
INPUT_PER_TOKEN = 16
#: Window sides are multiples of this many tokens.
QUANTUM = 4


def auto_margin(grid: int) -> int:
    """Default margin in tokens: grid/16 (4 at the 64-token grid of a 1024 input), and 5 on
    small grids (<= 32 tokens), where a window needs more context.

    Measured on the bundled model's 16-token grid (benchmarks/bench_fast.py fidelity, 2 movies x
    30 frames, 24 objects): margin 3 gave a median mask IoU with the exact path of 0.859 and a
    track IoU 0.062 below exact's; margin 5 gave 0.988 and +0.018.
    """
    return max(grid // 16, 5 if grid <= 32 else 3)


def mask_stats(low_res: torch.Tensor, window: Window | None) -> tuple[tuple[float, float] | None, float]:
    """Centre (y, x) in tokens and box side in tokens of the positive pixels of (L, L) logits.

    Only the window's part of the map is read (the mask is empty outside it). Returns
    (None, 0.0) for an empty mask.
    """
    r = LOW_RES_PER_TOKEN
    if window is None:
        y0 = x0 = 0
        sub = low_res
    else:
        y0, x0, h, w = window
        sub = low_res[y0 * r : (y0 + h) * r, x0 * r : (x0 + w) * r]
    pos = sub > 0
    if not bool(pos.any()):
        return None, 0.0
    ys = torch.nonzero(pos.any(1)).flatten()
    xs = torch.nonzero(pos.any(0)).flatten()
    cy = (float(ys[0] + ys[-1]) + 1) / 2 / r + y0
    cx = (float(xs[0] + xs[-1]) + 1) / 2 / r + x0
    side = (max(float(ys[-1] - ys[0]), float(xs[-1] - xs[0])) + 1) / r
    return (cy, cx), side


def window_side(box_side: float, margin: int, quantum: int = QUANTUM) -> int:
    """Square window side (tokens) for an object box side: box + 2 * margin, rounded up."""
    side = math.ceil(box_side) + 2 * margin
    return max(quantum, -(-side // quantum) * quantum)


def place(center: tuple[float, float], side: int, grid: tuple[int, int]) -> Window | None:
    """A side x side window centred (as near as the grid allows) on ``center`` (y, x tokens).

    None if the window does not fit in the grid: then the whole grid is used.
    """
    gh, gw = grid
    if side >= gh or side >= gw:
        return None
    y0 = min(max(int(round(center[0] - side / 2)), 0), gh - side)
    x0 = min(max(int(round(center[1] - side / 2)), 0), gw - side)
    return (y0, x0, side, side)


def predict_center(
    last: tuple[float, float] | None, before: tuple[float, float] | None
) -> tuple[tuple[float, float] | None, float]:
    """Constant-velocity guess of the next centre and the step length (tokens)."""
    if last is None:
        return None, 0.0
    if before is None:
        return last, 0.0
    dy, dx = last[0] - before[0], last[1] - before[1]
    return (last[0] + dy, last[1] + dx), math.hypot(dy, dx)


def full(grid: tuple[int, int]) -> Window:
    """The whole grid as a window."""
    return (0, 0, grid[0], grid[1])


def crop(x: torch.Tensor, window: Window | None, scale: int = 1) -> torch.Tensor:
    """(B, C, H, W) -> the window's part (B, C, h * scale, w * scale) for a map ``scale`` x the grid."""
    if window is None:
        return x
    y0, x0, h, w = window
    return x[..., y0 * scale : (y0 + h) * scale, x0 * scale : (x0 + w) * scale]


def crop_each(x: torch.Tensor, windows: list[Window | None], scale: int = 1) -> torch.Tensor:
    """A shared (1, C, H, W) map cropped at each window (same sizes) -> (B, C, h*scale, w*scale)."""
    return torch.cat([crop(x, win, scale) for win in windows])


def paste(window_logits: torch.Tensor, window: Window | None, size: int, fill: float) -> torch.Tensor:
    """(1, 1, 4h, 4w) window logits -> (1, 1, size, size) low-res map, ``fill`` outside the window."""
    if window is None:
        return window_logits
    out = window_logits.new_full((*window_logits.shape[:2], size, size), fill)
    crop(out, window, LOW_RES_PER_TOKEN).copy_(window_logits)
    return out


def touches_border(window_logits: torch.Tensor, window: Window | None, grid: tuple[int, int]) -> bool:
    """Whether a (.., 4h, 4w) window mask reaches a window edge that is not an edge of the grid."""
    if window is None:
        return False
    y0, x0, h, w = window
    m = window_logits.reshape(window_logits.shape[-2:]) > 0
    edges = []
    if y0 > 0:
        edges.append(m[0])
    if y0 + h < grid[0]:
        edges.append(m[-1])
    if x0 > 0:
        edges.append(m[:, 0])
    if x0 + w < grid[1]:
        edges.append(m[:, -1])
    return any(bool(e.any()) for e in edges)


def pad_for_holes(window_logits: torch.Tensor, fill: float) -> torch.Tensor:
    """Pad (B, 1, h, w) logits by one pixel of ``fill`` (background joined around the window)."""
    return F.pad(window_logits, (1, 1, 1, 1), value=fill)
