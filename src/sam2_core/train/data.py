"""Training clips: T consecutive frames at the model's input size and K objects' target masks.

Frames are normalised exactly as the predictors normalise them (robust percentiles over the
movie, replicated to RGB, ImageNet statistics), so the model trains on what it will see.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from sam2_core import transforms as T
from sam2_core.simulate_cells import SimulatedMovie, descendants, simulate_cells


@dataclass
class Clip:
    """frames (T, 3, S, S) model input; targets (K, T, S, S) float {0, 1}; ids (K,) object ids."""

    frames: torch.Tensor
    targets: torch.Tensor
    ids: list[int]


@dataclass
class LabelledMovie:
    """A (T, Y, X[, C]) movie with (T, Y, X) labels whose ids are consistent over time."""

    movie: np.ndarray
    labels: np.ndarray
    parents: dict[int, int]

    def family(self, cell_id: int) -> set[int]:
        """The id and its descendants (a tracked cell stays tracked through division)."""
        return descendants(self.parents, cell_id)


def from_simulation(sim: SimulatedMovie) -> LabelledMovie:
    return LabelledMovie(sim.movie, sim.labels, {int(t[0]): int(t[3]) for t in sim.tracks if t[3] > 0})


def read_labelled(image_path: str | Path, labels_path: str | Path) -> LabelledMovie:
    """A user's labelled stack from TIFF or zarr files (same T, Y, X), for fine-tuning."""
    from sam2_core.io.frames import open_stack

    movie = np.asarray(open_stack(str(image_path)))
    labels = np.asarray(open_stack(str(labels_path)))
    if labels.ndim != 3:
        raise ValueError(f"{labels_path}: labels must be (T, Y, X), got shape {labels.shape}")
    if movie.shape[:3] != labels.shape:
        raise ValueError(f"{image_path} has shape {movie.shape} but {labels_path} has {labels.shape}: "
                         "the labels must cover every frame and pixel of the movie")
    return LabelledMovie(movie, labels.astype(np.int64), {})


def _augment(movie: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    k = int(rng.integers(4))
    movie, labels = np.rot90(movie, k, axes=(1, 2)), np.rot90(labels, k, axes=(1, 2))
    if rng.uniform() < 0.5:
        movie, labels = movie[:, :, ::-1], labels[:, :, ::-1]
    return np.ascontiguousarray(movie), np.ascontiguousarray(labels)


def make_clip(
    item: LabelledMovie,
    image_size: int,
    clip_len: int,
    max_objects: int,
    rng: np.random.Generator,
    min_area: int = 12,
    augment: bool = True,
    stride: int = 1,
    limits: str = "clip",
) -> Clip | None:
    """A random clip of ``item`` with up to ``max_objects`` objects visible on its first frame.

    ``stride`` > 1 takes every stride-th frame (lowered to what the movie's length allows): the
    memory then spans more time, with larger motion between frames, than consecutive frames give.
    ``limits``: the intensity percentiles come from the clip's own frames ("clip") or from frames
    across the whole movie ("movie", what the predictors do with a stack, so photobleached late
    frames stay as dim as they will be in use).
    """
    n = item.movie.shape[0]
    if n < clip_len:
        return None
    stride = max(1, min(int(stride), (n - 1) // max(clip_len - 1, 1))) if clip_len > 1 else 1
    span = (clip_len - 1) * stride + 1
    t0 = int(rng.integers(n - span + 1))
    movie, labels = item.movie[t0 : t0 + span : stride], item.labels[t0 : t0 + span : stride]
    if augment:
        movie, labels = _augment(movie, labels, rng)
    if limits == "movie":  # as the predictors normalise a whole stack: a dimmer (bleached) clip stays dim
        sample = np.unique(np.linspace(0, n - 1, min(n, 16)).astype(int))
        lim = T.percentile_limits(item.movie[sample, ::2, ::2])
    elif limits == "clip":
        lim = T.percentile_limits(movie[:: max(1, clip_len // 4), ::2, ::2])
    else:
        raise ValueError(f"limits must be 'clip' or 'movie', not {limits!r}")
    frames = torch.cat([T.to_model_input(T.to_unit_rgb(f, contrast_limits=lim), image_size) for f in movie])
    lab = torch.from_numpy(labels.astype(np.int64))
    if lab.shape[-2:] != (image_size, image_size):
        lab = F.interpolate(lab[:, None].float(), size=(image_size, image_size), mode="nearest")[:, 0].long()
    ids, areas = np.unique(lab[0].numpy(), return_counts=True)
    ids = [int(i) for i, a in zip(ids, areas) if i > 0 and a >= min_area]
    if not ids:
        return None
    chosen = [ids[i] for i in rng.permutation(len(ids))[:max_objects]]
    targets = torch.stack([
        torch.isin(lab, torch.tensor(sorted(item.family(c)))).float() for c in chosen
    ])
    return Clip(frames, targets, chosen)


def draw_stride(rng: np.random.Generator, max_stride: int) -> int:
    """A clip's frame stride, uniform in 1..max_stride (no draw at 1: older runs resume unchanged)."""
    return int(rng.integers(1, max_stride + 1)) if max_stride > 1 else 1


class SimulatedPool:
    """A pool of simulated movies (and, with ``volumes`` > 0, that share of simulated volumes whose
    slices are the frames: nuclei end in place there), renewed one at a time as training draws clips.

    ``drift`` is the share of movies in which every cell also drifts by ``drift_speed`` pixels per
    frame (drawn from the range, in a random direction: a drifting stage or a flow), so that cells
    leave the field on one side and new ones enter on the other much more often than by their own
    motion, and the object-score head is supervised on many more exits.

    ``sized`` is the share of movies whose nuclei have a mean radius drawn from ``sized_radius``
    (pixels) instead of the simulator's wide range: the scale at which the predictors show cells
    to the model when the user gives a cell diameter (``track(cell_diameter=...)``).
    ``enlarged`` is the share of movies simulated with small nuclei (mean radius about 4-8 px)
    on a smaller field and then enlarged, frames bilinearly and labels by nearest pixel, until
    the nuclei reach a mean radius in ``sized_radius``: what ``track(cell_diameter=...)`` does to
    a recording, blur, noise and motion enlarged with the nuclei (``sized`` draws large nuclei
    directly, with sharp edges and pixel-fine noise).
    ``crowded`` is the share of movies drawn dense (35-50 % of the field covered) and fast (each
    frame a cell moves 0.15-0.3 of its radius): where tracked cells drift onto their neighbours.
    ``dividing`` is the share of movies whose cells divide at a rate drawn from
    ``division_rate`` per cell and frame (the simulator draws 0-0.02): the tracked cell's target
    is then the union of its daughters for more of the training frames.
    """

    def __init__(self, image_size: int, size: int = 64, movie_len: int = 12, seed: int = 0,
                 renew_every: int = 4, limits: str = "clip", volumes: float = 0.0, drift: float = 0.0,
                 drift_speed: tuple[float, float] = (1.0, 3.0), sized: float = 0.0,
                 sized_radius: tuple[float, float] = (11.0, 17.0), crowded: float = 0.0,
                 enlarged: float = 0.0, dividing: float = 0.0,
                 division_rate: tuple[float, float] = (0.03, 0.06)) -> None:
        self.image_size, self.movie_len, self.renew_every = image_size, movie_len, renew_every
        self.limits = limits  # see make_clip
        self.volumes = volumes  # share of the pool that are volumes (slices as frames), not movies
        self.drift, self.drift_speed = drift, drift_speed
        self.sized, self.sized_radius, self.crowded, self.enlarged = sized, sized_radius, crowded, enlarged
        self.rng = np.random.default_rng(seed)
        self._kind_rng = np.random.default_rng([seed, 7])  # its own stream: volumes=0 draws as before
        self._drift_rng = np.random.default_rng([seed, 11])  # likewise for drift=0
        self._sized_rng = np.random.default_rng([seed, 13])  # likewise for sized=0
        self._crowded_rng = np.random.default_rng([seed, 17])  # likewise for crowded=0
        self._enlarged_rng = np.random.default_rng([seed, 19])  # likewise for enlarged=0
        self.dividing, self.division_rate = dividing, division_rate
        self._dividing_rng = np.random.default_rng([seed, 23])  # likewise for dividing=0
        self._next_seed = 1_000_000 * (seed + 1)
        self.items = [self._new() for _ in range(size)]
        self.draws = 0

    def _new(self) -> LabelledMovie:
        self._next_seed += 1
        shape = (self.image_size, self.image_size)
        if self.volumes > 0 and self._kind_rng.uniform() < self.volumes:
            from sam2_core.simulate_volume import simulate_volume

            return from_simulation(simulate_volume(self.movie_len, shape, seed=self._next_seed))
        drift = None
        if self.drift > 0 and self._drift_rng.uniform() < self.drift:
            angle, speed = self._drift_rng.uniform(0, 2 * np.pi), self._drift_rng.uniform(*self.drift_speed)
            drift = (speed * np.sin(angle), speed * np.cos(angle))
        rate = None
        if self.dividing > 0 and self._dividing_rng.uniform() < self.dividing:
            rate = self._dividing_rng.uniform(*self.division_rate)
        if self.enlarged > 0 and self._enlarged_rng.uniform() < self.enlarged:
            return self._enlarged_movie(drift, rate)
        radius = None
        if self.sized > 0 and self._sized_rng.uniform() < self.sized:
            mean, spread = self._sized_rng.uniform(*self.sized_radius), self._sized_rng.uniform(1.2, 1.6)
            radius = (2 * mean / (1 + spread), 2 * mean * spread / (1 + spread))
        n_cells = speed = None
        if self.crowded > 0 and self._crowded_rng.uniform() < self.crowded:
            if radius is None:  # the simulator's own range
                r_lo = self._crowded_rng.uniform(4.0, 12.0)
                radius = (r_lo, r_lo * self._crowded_rng.uniform(1.2, 1.8))
            mean_r = 0.5 * (radius[0] + radius[1])
            n_cells = max(1, int(self._crowded_rng.uniform(0.35, 0.5) * shape[0] * shape[1] / (np.pi * mean_r**2)))
            speed = self._crowded_rng.uniform(0.15, 0.3) * mean_r
        return from_simulation(simulate_cells(self.movie_len, shape, seed=self._next_seed, drift=drift,
                                              radius=radius, n_cells=n_cells, speed=speed, division_rate=rate))

    def _enlarged_movie(self, drift: tuple[float, float] | None, rate: float | None = None) -> LabelledMovie:
        """A movie of small nuclei enlarged to the ``sized_radius`` scale (see the class)."""
        rng, size = self._enlarged_rng, self.image_size
        r_lo, spread = rng.uniform(4.0, 6.5), rng.uniform(1.2, 1.6)
        factor = rng.uniform(*self.sized_radius) / (0.5 * r_lo * (1 + spread))
        small = max(16, int(round(size / factor)))
        if drift is not None:  # drift_speed is pixels per frame of the enlarged movie
            drift = (drift[0] / factor, drift[1] / factor)
        sim = simulate_cells(self.movie_len, (small, small), seed=self._next_seed, drift=drift,
                             radius=(r_lo, r_lo * spread), division_rate=rate)
        x = torch.from_numpy(sim.movie.astype(np.float32))[:, None]
        movie = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)[:, 0].numpy()
        idx = np.minimum(((np.arange(size) + 0.5) * small / size).astype(int), small - 1)
        return from_simulation(replace(sim, movie=movie, labels=sim.labels[:, idx][:, :, idx]))

    def sample(self, clip_len: int, max_objects: int, max_stride: int = 1) -> Clip:
        """A clip of ``clip_len`` frames, taken every s-th frame with s drawn from 1..max_stride."""
        self.draws += 1
        if self.draws % self.renew_every == 0:
            self.items[int(self.rng.integers(len(self.items)))] = self._new()
        while True:
            item = self.items[int(self.rng.integers(len(self.items)))]
            clip = make_clip(item, self.image_size, clip_len, max_objects, self.rng,
                             stride=draw_stride(self.rng, max_stride), limits=self.limits)
            if clip is not None:
                return clip


class StackPool:
    """Clips from the user's labelled stacks (fine-tuning), normalised over each whole stack
    as the predictors will normalise it (``limits``, see :func:`make_clip`)."""

    def __init__(self, items: Sequence[LabelledMovie], image_size: int, seed: int = 0, limits: str = "movie") -> None:
        if not items:
            raise ValueError("no labelled stacks given")
        self.items, self.image_size, self.limits = list(items), image_size, limits
        self.rng = np.random.default_rng(seed)

    def sample(self, clip_len: int, max_objects: int, max_stride: int = 1) -> Clip:
        for _ in range(1000):
            item = self.items[int(self.rng.integers(len(self.items)))]
            clip = make_clip(item, self.image_size, min(clip_len, item.movie.shape[0]), max_objects, self.rng,
                             stride=draw_stride(self.rng, max_stride), limits=self.limits)
            if clip is not None:
                return clip
        raise ValueError("no clip with a labelled object found: are the labels empty?")
