"""A richer procedural fluorescence time-lapse, for training and evaluating models (pure numpy).

What it simulates, per movie (every knob drawn from a range by the seed):

- nuclei of varied size, elongation and irregular outline (low-order harmonics of the radius),
  smooth texture and bright/dark speckles, in crowded fields where they touch and overlap;
- motion: persistent random walks, cells leaving the field and new cells entering from the border;
- division: a grown cell splits along its long axis into two daughters (new ids, parent link);
- optics and camera: Gaussian blur, uneven background, photobleaching, Poisson shot noise,
  Gaussian read noise and a camera offset, written as 16-bit.

Labels are exact: each pixel holds the id of the front-most cell covering it, ids are never
reused, and ``tracks`` lists (id, first frame, last frame, parent id or 0) as in the Cell Tracking
Challenge's res_track.txt.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi


@dataclass
class _Cell:
    id: int
    y: float
    x: float
    r: float  # mean radius, pixels
    elong: float  # ry / rx <= 1
    angle: float
    harm: np.ndarray  # (2, 2): amplitude, phase of the 2nd and 3rd harmonic
    bright: float
    depth: float  # larger = in front
    vy: float
    vx: float
    texture: np.ndarray  # (16, 16) smooth field in ~[-1, 1]
    parent: int = 0
    age: int = 0


@dataclass
class SimulatedMovie:
    """movie (T, Y, X) uint16, labels (T, Y, X) uint32, tracks (N, 4) int: id, begin, end, parent."""

    movie: np.ndarray
    labels: np.ndarray
    tracks: np.ndarray
    params: dict = field(default_factory=dict)

    def descendants(self, cell_id: int) -> set[int]:
        """``cell_id`` and every cell that descends from it."""
        return descendants({int(t[0]): int(t[3]) for t in self.tracks if t[3] > 0}, cell_id)


def descendants(parents: dict[int, int], cell_id: int) -> set[int]:
    """``cell_id`` and every cell descending from it, given {child id: parent id}."""
    out, todo = {int(cell_id)}, [int(cell_id)]
    while todo:
        p = todo.pop()
        kids = [c for c, q in parents.items() if q == p]
        out.update(kids)
        todo.extend(kids)
    return out


def _smooth_field(rng: np.random.Generator, n: int = 16, sigma: float = 2.0) -> np.ndarray:
    f = ndi.gaussian_filter(rng.normal(size=(n, n)), sigma, mode="wrap")
    return f / (np.abs(f).max() + 1e-6)


def _draw(cell: _Cell, shape: tuple[int, int], t: int) -> tuple[tuple[slice, slice], np.ndarray, np.ndarray] | None:
    """(bbox slices, inside mask, intensity profile) of one cell, or None if off-frame."""
    h, w = shape
    reach = cell.r * 1.6 + 2
    y0, y1 = int(max(0, np.floor(cell.y - reach))), int(min(h, np.ceil(cell.y + reach) + 1))
    x0, x1 = int(max(0, np.floor(cell.x - reach))), int(min(w, np.ceil(cell.x + reach) + 1))
    if y1 <= y0 or x1 <= x0:
        return None
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    dy, dx = yy - cell.y, xx - cell.x
    a = cell.angle + 0.01 * t
    ca, sa = np.cos(a), np.sin(a)
    u = dx * ca + dy * sa
    v = (-dx * sa + dy * ca) / cell.elong
    rho = np.hypot(u, v)
    theta = np.arctan2(v, u)
    edge = cell.r * (1 + cell.harm[0, 0] * np.cos(2 * theta + cell.harm[0, 1])
                     + cell.harm[1, 0] * np.cos(3 * theta + cell.harm[1, 1]))
    r2 = (rho / np.maximum(edge, 1e-3)) ** 2
    inside = r2 <= 1.0
    if not inside.any():
        return None
    n = cell.texture.shape[0]
    ty = np.clip(((u / (2.2 * cell.r)) + 0.5) * (n - 1), 0, n - 1).astype(int)
    tx = np.clip(((v / (2.2 * cell.r)) + 0.5) * (n - 1), 0, n - 1).astype(int)
    tex = cell.texture[ty, tx]
    profile = cell.bright * np.clip(1.0 - r2, 0, 1) ** 0.3 * (1.0 + 0.25 * tex)
    return (slice(y0, y1), slice(x0, x1)), inside, profile


def simulate_cells(
    n_frames: int = 20,
    shape: tuple[int, int] = (256, 256),
    n_cells: int | None = None,
    *,
    seed: int = 0,
    radius: tuple[float, float] | None = None,
    division_rate: float | None = None,
    speed: float | None = None,
    drift: tuple[float, float] | None = None,
) -> SimulatedMovie:
    """Simulate a nuclei time-lapse; unspecified knobs are drawn from wide ranges by ``seed``.

    ``drift`` (dy, dx) pixels per frame moves every cell alike (a flow or a drifting stage), so
    that cells leave the field on one side; None (the default) adds none and leaves the random
    draws of a seed unchanged.
    """
    rng = np.random.default_rng(seed)
    h, w = shape
    if radius is None:
        r_lo = rng.uniform(4.0, 12.0)
        radius = (r_lo, r_lo * rng.uniform(1.2, 1.8))
    mean_r = 0.5 * (radius[0] + radius[1])
    if n_cells is None:
        density = rng.uniform(0.08, 0.45)  # fraction of the field covered
        n_cells = max(1, int(density * h * w / (np.pi * mean_r**2)))
    division_rate = rng.uniform(0.0, 0.02) if division_rate is None else division_rate
    speed = rng.uniform(0.3, 0.25 * mean_r) if speed is None else speed
    next_id = [1]
    parent_of: dict[int, int] = {}

    def new_cell(y, x, r, t, parent=0, vy=None, vx=None):
        theta = rng.uniform(0, 2 * np.pi)
        s = speed * rng.uniform(0.3, 1.5)
        c = _Cell(
            id=next_id[0], y=y, x=x, r=r, elong=rng.uniform(0.6, 1.0), angle=rng.uniform(0, np.pi),
            harm=np.stack([rng.uniform(0, 0.12, 2), rng.uniform(0, 2 * np.pi, 2)], axis=1),
            bright=rng.uniform(0.35, 1.0), depth=rng.uniform(), texture=_smooth_field(rng),
            vy=s * np.sin(theta) if vy is None else vy, vx=s * np.cos(theta) if vx is None else vx,
            parent=parent,
        )
        parent_of[c.id] = parent
        next_id[0] += 1
        return c

    cells: list[_Cell] = []
    tries = 0
    while len(cells) < n_cells and tries < 50 * n_cells:
        tries += 1
        r = rng.uniform(*radius)
        y, x = rng.uniform(0, h), rng.uniform(0, w)
        if any(np.hypot(c.y - y, c.x - x) < 0.85 * (c.r + r) for c in cells):
            continue
        cells.append(new_cell(y, x, r, 0))

    params = dict(radius=radius, n_cells=n_cells, division_rate=division_rate, speed=speed,
                  blur=rng.uniform(0.3, 1.8), photons=rng.uniform(30, 1500), read_noise=rng.uniform(1, 8),
                  offset=int(rng.choice([0, 100, 500, 1000, 2000]) + rng.integers(0, 100)),
                  bleach=rng.uniform(0, 0.03), background=rng.uniform(0.0, 0.25))
    params["drift"] = drift
    bg = params["background"] * (0.5 + 0.5 * ndi.zoom(rng.uniform(size=(4, 4)), (h / 4, w / 4), order=3)[:h, :w])
    bg = np.clip(bg, 0, None).astype(np.float32)
    enter_rate = n_cells * speed / max(h, w) * 0.5

    movie = np.zeros((n_frames, h, w), np.uint16)
    labels = np.zeros((n_frames, h, w), np.uint32)
    spans: dict[int, list[int]] = {}
    for t in range(n_frames):
        intensity = bg.copy()
        lab = np.zeros((h, w), np.uint32)
        for c in sorted(cells, key=lambda c: c.depth):
            drawn = _draw(c, (h, w), t)
            if drawn is None:
                continue
            sl, inside, prof = drawn
            region = intensity[sl]
            intensity[sl] = np.where(inside, np.maximum(region * 0.3, prof), region)
            lab[sl][inside] = c.id
        present = np.unique(lab)
        for cid in present[present > 0]:
            spans.setdefault(int(cid), [t, t])[1] = t
        blurred = ndi.gaussian_filter(intensity, params["blur"])
        expected = blurred * params["photons"] * np.exp(-params["bleach"] * t)
        counts = rng.poisson(expected) + rng.normal(0, params["read_noise"], size=(h, w)) + params["offset"]
        movie[t] = np.clip(counts, 0, 65535).astype(np.uint16)
        labels[t] = lab
        # --- dynamics for the next frame ---
        born: list[_Cell] = []
        for c in cells:
            c.age += 1
            c.vy = 0.8 * c.vy + 0.2 * rng.normal(0, speed)
            c.vx = 0.8 * c.vx + 0.2 * rng.normal(0, speed)
            c.y += c.vy + (drift[0] if drift is not None else 0.0)
            c.x += c.vx + (drift[1] if drift is not None else 0.0)
            c.r = min(c.r * 1.01, radius[1] * 1.3)
            if c.age > 4 and rng.uniform() < division_rate:
                ca, sa = np.cos(c.angle), np.sin(c.angle)
                d = 0.55 * c.r
                for sgn in (-1, 1):
                    k = new_cell(c.y + sgn * d * sa, c.x + sgn * d * ca, c.r / np.sqrt(2), t + 1, parent=c.id,
                                 vy=c.vy + sgn * 0.5 * sa, vx=c.vx + sgn * 0.5 * ca)
                    born.append(k)
                c.r = -1.0  # mark as divided
        cells = [c for c in cells if c.r > 0] + born
        # leaving: drop cells far outside; entering: new cells at the border moving inwards
        cells = [c for c in cells if -2 * c.r < c.y < h + 2 * c.r and -2 * c.r < c.x < w + 2 * c.r]
        for _ in range(rng.poisson(enter_rate)):
            r = rng.uniform(*radius)
            side = rng.integers(4)
            y = rng.uniform(0, h) if side < 2 else (-r if side == 2 else h + r)
            x = rng.uniform(0, w) if side >= 2 else (-r if side == 0 else w + r)
            cy, cx = h / 2 - y, w / 2 - x
            n = np.hypot(cy, cx) + 1e-6
            s = max(speed, 0.5)
            cells.append(new_cell(y, x, r, t + 1, vy=s * cy / n, vx=s * cx / n))
    tracks = [(cid, b, e, parent_of[cid] if parent_of[cid] in spans else 0) for cid, (b, e) in sorted(spans.items())]
    tracks = np.array(tracks, dtype=np.int64).reshape(-1, 4)
    return SimulatedMovie(movie, labels, tracks, params)
