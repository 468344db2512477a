"""Procedural fluorescence time-lapse: moving nuclei with exact labels (pure numpy).

Used for sample data, tests and demos. Each nucleus is an ellipse with a smooth radial
profile and texture, moving by a persistent random walk; the camera adds Poisson shot noise,
Gaussian read noise and an offset, and the output is 16-bit like a real sCMOS recording.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Cell:
    """Initial state of one nucleus (pixels, radians)."""

    y: float
    x: float
    ry: float
    rx: float
    angle: float
    brightness: float
    vy: float
    vx: float


def _random_cells(rng: np.random.Generator, shape: tuple[int, int], n: int, radius: tuple[float, float]) -> list[Cell]:
    h, w = shape
    cells: list[Cell] = []
    tries = 0
    while len(cells) < n and tries < 200 * n:
        tries += 1
        r = rng.uniform(*radius)
        ry, rx = r * rng.uniform(0.75, 1.0), r * rng.uniform(0.75, 1.0)
        y, x = rng.uniform(r + 2, h - r - 2), rng.uniform(r + 2, w - r - 2)
        if any(np.hypot(c.y - y, c.x - x) < (max(c.ry, c.rx) + max(ry, rx)) * 1.05 for c in cells):
            continue
        speed = rng.uniform(0.3, 1.5)
        theta = rng.uniform(0, 2 * np.pi)
        cells.append(Cell(y, x, ry, rx, rng.uniform(0, np.pi), rng.uniform(0.6, 1.0),
                          speed * np.sin(theta), speed * np.cos(theta)))
    return cells


def simulate_timelapse(
    n_frames: int = 12,
    shape: tuple[int, int] = (128, 128),
    n_cells: int = 6,
    *,
    radius: tuple[float, float] = (7.0, 12.0),
    seed: int = 0,
    offset: int = 100,
    photons: float = 400.0,
    read_noise: float = 3.0,
) -> tuple[np.ndarray, np.ndarray]:
    """A (T, Y, X) uint16 movie and its (T, Y, X) uint16 labels (id k+1 = cell k in every frame).

    Cells do not overlap at the start; when they later touch, the brighter-drawn (lower id)
    keeps the shared pixels in the labels.
    """
    rng = np.random.default_rng(seed)
    h, w = shape
    cells = _random_cells(rng, shape, n_cells, radius)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    texture = [rng.normal(0, 1, size=(8, 8)) for _ in cells]
    movie = np.zeros((n_frames, h, w), np.uint16)
    labels = np.zeros((n_frames, h, w), np.uint16)
    pos = np.array([[c.y, c.x] for c in cells], dtype=np.float64)
    vel = np.array([[c.vy, c.vx] for c in cells], dtype=np.float64)
    background = 0.08 + 0.04 * (xx / w) + 0.03 * np.sin(yy / h * np.pi)
    for t in range(n_frames):
        intensity = background.copy()
        lab = np.zeros((h, w), np.uint16)
        for k in range(len(cells) - 1, -1, -1):
            c = cells[k]
            cy, cx = pos[k]
            ca, sa = np.cos(c.angle + 0.02 * t), np.sin(c.angle + 0.02 * t)
            dy, dx = yy - cy, xx - cx
            u = (dx * ca + dy * sa) / c.rx
            v = (-dx * sa + dy * ca) / c.ry
            r2 = u * u + v * v
            inside = r2 <= 1.0
            tex = np.kron(texture[k], np.ones((4, 4)))[: h, : w]
            tex = np.resize(tex, (h, w))
            profile = np.clip(1.0 - r2, 0, 1) ** 0.35 * (1.0 + 0.12 * tex)
            intensity = np.where(inside, np.maximum(intensity, c.brightness * profile), intensity)
            lab[inside] = k + 1
        labels[t] = lab
        expected = np.clip(intensity, 0, None) * photons
        counts = rng.poisson(expected) + rng.normal(0, read_noise, size=(h, w)) + offset
        movie[t] = np.clip(counts, 0, 65535).astype(np.uint16)
        # persistent random walk, bouncing off the borders
        vel = 0.85 * vel + 0.15 * rng.normal(0, 1.0, size=vel.shape)
        pos += vel
        for k, c in enumerate(cells):
            r = max(c.ry, c.rx) + 1
            for ax, lim in ((0, h), (1, w)):
                if pos[k, ax] < r or pos[k, ax] > lim - r:
                    vel[k, ax] *= -1
                    pos[k, ax] = np.clip(pos[k, ax], r, lim - r)
    return movie, labels
