"""Tracking at a chosen pixel scale, in windows of the model's input.

A model tracks cells best at the pixel scale it learned (the bundled model: nuclei of radius
about 10-15 px at its 256-px input). Resizing a large frame down to the input shrinks every cell
(a 1024 x 1024 movie becomes 4x smaller), and a frame of small nuclei would do better enlarged.
:class:`TiledTracker` resizes each frame by ``scale`` (lazily, one frame at a time; ``scale`` 1
keeps the recorded pixels) and tracks in windows of the model's input size:

- the scaled frame is cut into a lattice of windows: *cores* of ``image_size - 2 * halo`` pixels
  partition it, and each window is the input-sized square around its core (moved inside the
  frame at the edges), so the model sees every window 1:1;
- each object lives in one window: one that already holds other objects if its centre lies at
  least a halo inside it (objects share windows, so fewer windows are encoded), else the one whose
  core holds its centre; each window is an ordinary
  :class:`~sam2_core.predictor.video.SAM2VideoPredictor` state over that window's crops, and on
  each frame all windows go through the model as one batch (``SAM2VideoPredictor.track_step_many``);
- when an object's centre leaves its window's core by more than ``halo / 2`` and comes closer
  than ``3/4 halo`` to the window's inner edge (hysteresis), it moves to a window chosen the same
  way: its current mask becomes a mask prompt there (a keyframe) and its memory restarts from it;
- a window is encoded only while it holds objects; intensities are normalised once for the whole
  stack, so every window sees the same contrast; memory is bounded per window, as in the
  predictor.

Prompts are applied when tracking reaches their frame (an object is tracked from its first prompt
in the direction of travel, or from the start with its latest prompts behind the start); in both
directions, objects first prompted later are also tracked back from their first prompt. Outputs
are each object's logits at the frame's own resolution, merged into labels as
:func:`sam2_core.track.track` does.
"""

from __future__ import annotations

import threading
from collections import OrderedDict, defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from sam2_core import transforms as T
from sam2_core.io.frames import FrameSource
from sam2_core.tiling import Tile, default_halo, larger_than_input


@dataclass
class ObjectLogits:
    """One object's result on one frame: logits (h, w) for the frame's pixels [y0:y0+h, x0:x0+w]."""

    obj_id: int
    y0: int
    x0: int
    logits: torch.Tensor

    def full_mask(self, hw: tuple[int, int]) -> np.ndarray:
        """The (H, W) bool mask on the whole frame."""
        out = np.zeros(hw, bool)
        h, w = self.logits.shape
        out[self.y0 : self.y0 + h, self.x0 : self.x0 + w] = (self.logits > 0).cpu().numpy()
        return out


def uses_windows(height: int, width: int, image_size: int, scale: float = 1.0, windows: bool | None = None) -> bool:
    """Whether (height, width) frames are tracked in windows: ``windows`` if given, else when a
    scale other than 1 is asked for or the frames are larger than 1.25x the input (as automatic
    segmentation tiles: :func:`sam2_core.tiling.native_tiling`). A scale needs windows."""
    if windows is not None:
        if not windows and scale != 1.0:
            raise ValueError("scale / cell_diameter need windows=True or None (frames are tracked in windows)")
        return bool(windows)
    return scale != 1.0 or larger_than_input(image_size, height, width)


class ScaledFrames:
    """A :class:`FrameSource`'s frames as unit RGB, resized by ``scale``; the last few are kept
    (thread-safe: the predictors' read-ahead threads may ask too)."""

    def __init__(self, source: FrameSource, scale: float = 1.0, keep: int = 2) -> None:
        if not np.isfinite(scale) or scale <= 0:
            raise ValueError(f"scale must be a positive number, got {scale}")
        self.source = source
        self.height = max(1, round(source.height * scale))
        self.width = max(1, round(source.width * scale))
        self.num_frames = source.num_frames
        self.keep = keep
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def sy(self) -> float:
        return self.height / self.source.height

    @property
    def sx(self) -> float:
        return self.width / self.source.width

    def frame(self, t: int) -> np.ndarray:
        """(H', W', 3) float32 in [0, 1]."""
        with self._lock:
            if t in self._cache:
                self._cache.move_to_end(t)
                return self._cache[t]
        rgb = self.source.unit_rgb(t)
        if (self.height, self.width) != rgb.shape[:2]:
            x = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None]
            x = F.interpolate(x, size=(self.height, self.width), mode="bilinear", align_corners=False,
                              antialias=self.height < rgb.shape[0])
            rgb = x[0].permute(1, 2, 0).contiguous().numpy()
        with self._lock:
            self._cache[t] = rgb
            while len(self._cache) > self.keep:
                self._cache.popitem(last=False)
        return rgb

    def to_scaled(self, xy: np.ndarray) -> np.ndarray:
        """(N, 2) (x, y) pixels of the recorded frame -> of the scaled frame (pixel centres)."""
        xy = np.asarray(xy, np.float64).reshape(-1, 2)
        return np.stack([(xy[:, 0] + 0.5) * self.sx - 0.5, (xy[:, 1] + 0.5) * self.sy - 0.5], axis=1)

    def mask_to_scaled(self, mask: np.ndarray) -> np.ndarray:
        """(H, W) bool mask of the recorded frame -> (H', W') of the scaled frame."""
        mask = np.asarray(mask, bool)
        if mask.shape != (self.source.height, self.source.width):
            raise ValueError(f"a mask prompt must be ({self.source.height}, {self.source.width}), got {mask.shape}")
        if mask.shape == (self.height, self.width):
            return mask
        m = torch.from_numpy(mask.astype(np.float32))[None, None]
        m = F.interpolate(m, size=(self.height, self.width), mode="bilinear", align_corners=False,
                          antialias=self.height < mask.shape[0])
        return (m[0, 0] >= 0.5).numpy()


class _WindowView:
    """Lazy (T, h, w, 3) float32 view of one window of the scaled frames."""

    def __init__(self, frames: ScaledFrames, box: tuple[int, int, int, int]) -> None:
        self.frames, self.box = frames, box
        y0, y1, x0, x1 = box
        self.shape = (frames.num_frames, y1 - y0, x1 - x0, 3)
        self.dtype = np.dtype(np.float32)
        self.ndim = 4

    def __getitem__(self, t: int) -> np.ndarray:
        y0, y1, x0, x1 = self.box
        return self.frames.frame(int(t))[y0:y1, x0:x1]


def window_lattice(height: int, width: int, size: int, halo: int) -> list[Tile]:
    """Windows of ``size`` px (or the frame's side, if smaller) whose cores partition the frame:
    each ``outer`` is the ``size`` square centred on its core, moved inside the frame."""
    core = size - 2 * halo
    if core < 16:
        raise ValueError(f"a halo of {halo} px leaves no core in {size}-px windows: use a halo below {size // 2 - 8}")

    def place(c0: int, c1: int, n: int) -> tuple[int, int]:
        if n <= size:
            return 0, n
        start = min(max((c0 + c1) // 2 - size // 2, 0), n - size)
        return start, start + size

    def cuts(n: int) -> list[int]:  # a side that fits one window is one core
        k = 1 if n <= size else -(-n // core)
        return [round(i * n / k) for i in range(k + 1)]

    ys, xs = cuts(height), cuts(width)
    return [Tile((y0, y1, x0, x1), (*place(y0, y1, height), *place(x0, x1, width)))
            for y0, y1 in zip(ys[:-1], ys[1:]) for x0, x1 in zip(xs[:-1], xs[1:])]


def check_in_frame(prompts: Sequence[Any], h: int, w: int) -> None:
    """Clicks and boxes of ``prompts`` must be finite and lie in an (h, w) frame (as the predictor
    requires); a clear ValueError otherwise."""
    for p in prompts:
        pts = [np.asarray(p.points, np.float64).reshape(-1, 2)] if p.points is not None else []
        if p.box is not None:
            pts.append(np.asarray(p.box, np.float64).reshape(-1, 2))
        for xy in pts:
            if not np.isfinite(xy).all():
                raise ValueError(f"object {p.object_id}, frame {p.frame}: points contain NaN or infinite values")
            if (xy < -0.5).any() or (xy[:, 0] > w - 0.5).any() or (xy[:, 1] > h - 0.5).any():
                raise ValueError(f"object {p.object_id}, frame {p.frame}: points {xy.tolist()} fall outside "
                                 f"the {w}x{h} (x by y) frame")


def _location(prompts: Sequence[Any], frames: ScaledFrames) -> tuple[float, float]:
    """Where an object's prompts on one frame are, (y, x) in scaled pixels: its positive clicks,
    else its box's centre, else its mask's centroid."""
    for p in prompts:
        if p.mask is not None:
            ys, xs = np.nonzero(np.asarray(p.mask, bool))
            if ys.size:
                (x, y), = frames.to_scaled([[xs.mean(), ys.mean()]])
                return y, x
    pos = [p.points[np.asarray(p.labels) > 0] for p in prompts if p.points is not None]
    pos = np.concatenate(pos) if pos else np.zeros((0, 2))
    if len(pos):
        x, y = frames.to_scaled(pos).mean(0)
        return y, x
    boxes = [np.asarray(p.box, np.float64).reshape(2, 2) for p in prompts if p.box is not None]
    if boxes:
        x, y = frames.to_scaled(boxes[-1]).mean(0)
        return y, x
    neg = [p.points for p in prompts if p.points is not None and len(p.points)]
    if neg:  # negative clicks only: where they are
        x, y = frames.to_scaled(np.concatenate(neg)).mean(0)
        return y, x
    raise ValueError(f"the prompts for object {prompts[0].object_id} on frame {prompts[0].frame} have no "
                     "click, box or non-empty mask to place them")


def _negative_only(prompts: Sequence[Any]) -> bool:
    return all(p.mask is None and p.box is None and (p.points is None or not (np.asarray(p.labels) > 0).any())
               for p in prompts)


class TiledTracker:
    """Track objects through a stack at ``scale`` in windows of the model's input (module doc).

    Args:
        predictor: a :class:`~sam2_core.predictor.video.SAM2VideoPredictor` (its speed, precision
            and memory settings apply inside every window).
        frames: a stack or path (see :class:`FrameSource`) or a FrameSource.
        scale: resize factor for the frames before tracking (e.g. from a cell diameter:
            :func:`sam2_core.track.resolve_scale`); 1 = the recorded pixels.
        halo: window margin around each core in scaled pixels (default 1/8 of the input, >= 16);
            wider than a cell's radius so that an object is whole in its window.
        contrast_limits / channels / channel_axis: as for ``FrameSource``.
        embedding_cache: folder for the windows' image features on disk.
    """

    def __init__(self, predictor, frames: Any, *, scale: float = 1.0, halo: int | None = None,
                 contrast_limits: Any = None, channels: Sequence[int] | None = None,
                 channel_axis: int | None = None, embedding_cache: Any = None) -> None:
        self.predictor = predictor
        self.source = frames if isinstance(frames, FrameSource) else FrameSource(
            frames, contrast_limits=contrast_limits, channels=channels, channel_axis=channel_axis)
        self.frames = ScaledFrames(self.source, scale)
        self.scale = float(scale)
        size = predictor.image_size
        self.halo = default_halo(size) if halo is None else int(halo)
        self.windows = window_lattice(self.frames.height, self.frames.width, size, self.halo)
        self._ys = sorted({w.core[0] for w in self.windows})
        self._xs = sorted({w.core[2] for w in self.windows})
        self._zone_cache: dict[float, np.ndarray] = {}  # margin -> _zones
        outer = np.array([w.outer for w in self.windows], np.float64)
        self._centres = np.stack([(outer[:, 0] + outer[:, 1]) / 2, (outer[:, 2] + outer[:, 3]) / 2], axis=1)
        self.embedding_cache = embedding_cache
        self.states: dict[int, Any] = {}
        self.home: dict[int, int] = {}  # object id -> window index
        self.handovers = 0  # objects moved to another window (for tests and benchmarks)
        self._user: set[tuple[int, int]] = set()  # (object id, frame) of the user's prompts

    # --- geometry ----------------------------------------------------------------------------

    @property
    def num_frames(self) -> int:
        return self.source.num_frames

    @property
    def hw(self) -> tuple[int, int]:
        """The recorded frame's (height, width)."""
        return self.source.height, self.source.width

    def window_of(self, y: float, x: float) -> int:
        """Index of the window whose core holds scaled pixel (y, x) (clamped into the frame)."""
        i = max(0, np.searchsorted(self._ys, y, side="right") - 1)
        j = max(0, np.searchsorted(self._xs, x, side="right") - 1)
        return i * len(self._xs) + j

    def _targets(self, groups: dict[int, list]) -> dict[int, int]:
        """The window for each object's prompts on one frame: its own window if they lie near its
        core or are negative clicks only (corrections keep the object's memory), else one chosen
        by :meth:`_cover` for where they are."""
        out, todo = {}, {}
        for obj, prompts in groups.items():
            home = self.home.get(obj)
            if home is not None and _negative_only(prompts):
                out[obj] = home
                continue
            y, x = _location(prompts, self.frames)
            if home is not None and self._inside_core(home, y, x):
                out[obj] = home
            else:
                todo[obj] = (y, x)
        return {**out, **self._cover(todo)}

    def _cover(self, where: dict[int, tuple[float, float]]) -> dict[int, int]:
        """Windows for objects centred at scaled (y, x): windows already encoded for other objects
        that fit them a halo inside (:meth:`_fits`) first, then, greedily, the windows that fit
        the most of them (ties: the window whose centre is nearest theirs), so that fewer windows
        are encoded; else the window whose core holds them. Vectorised over windows x objects."""
        if not where:
            return {}
        objs = list(where)
        pts = np.array([where[o] for o in objs], np.float64)  # (N, 2) y, x
        zone = self._zones(self.halo)  # (W, 4)
        fit = ((zone[:, 0:1] <= pts[None, :, 0]) & (pts[None, :, 0] < zone[:, 1:2])
               & (zone[:, 2:3] <= pts[None, :, 1]) & (pts[None, :, 1] < zone[:, 3:4]))  # (W, N)
        busy = np.zeros(len(self.windows), bool)
        busy[[w for o, w in self.home.items() if o not in where]] = True
        left = np.ones(len(objs), bool)
        out: dict[int, int] = {}
        while left.any():
            f = fit & left[None, :]
            counts = f.sum(axis=1)
            if counts.max() == 0:
                out.update({objs[i]: self.window_of(*pts[i]) for i in np.nonzero(left)[0]})
                break
            mean = (f.astype(np.float64) @ pts) / np.maximum(counts, 1)[:, None]
            off = ((mean - self._centres) ** 2).sum(axis=1)
            best = int(np.lexsort((off, -counts, -(busy & (counts > 0)).astype(np.int64)))[0])
            for i in np.nonzero(f[best])[0]:
                out[objs[i]] = best
            left &= ~f[best]
            busy[best] = True
        return out

    def _zones(self, margin: float) -> np.ndarray:
        """(W, 4) y_lo, y_hi, x_lo, x_hi: where a centre lies ``margin`` inside each window (edges
        on the frame's border need no margin)."""
        if margin not in self._zone_cache:
            H, W = self.frames.height, self.frames.width
            self._zone_cache[margin] = np.array(
                [[y0 + margin if y0 > 0 else 0, y1 - margin if y1 < H else H,
                  x0 + margin if x0 > 0 else 0, x1 - margin if x1 < W else W]
                 for y0, y1, x0, x1 in (w.outer for w in self.windows)], np.float64)
        return self._zone_cache[margin]

    def _inside_core(self, w: int, y: float, x: float) -> bool:
        """Still at home: within halo/2 of the core, or 3/4 of a halo inside the window (objects
        placed in a shared window off its core; hysteresis against :meth:`_cover`'s full halo)."""
        y0, y1, x0, x1 = self.windows[w].core
        m = self.halo / 2
        return (y0 - m <= y < y1 + m and x0 - m <= x < x1 + m) or self._fits(w, y, x, 0.75 * self.halo)

    def _fits(self, w: int, y: float, x: float, margin: float) -> bool:
        """(y, x) lies in window w at least ``margin`` from each of its edges inside the frame."""
        y_lo, y_hi, x_lo, x_hi = self._zones(margin)[w]
        return y_lo <= y < y_hi and x_lo <= x < x_hi

    # --- window states -----------------------------------------------------------------------

    def _state(self, w: int):
        if w not in self.states:
            view = _WindowView(self.frames, self.windows[w].outer)
            # with a scale the frames already show cells at the size the model wants: a window
            # smaller than the input (a small scaled frame) is padded, not enlarged again
            self.states[w] = self.predictor.init_state(view, contrast_limits=(0.0, 1.0),
                                                       embedding_cache=self.embedding_cache,
                                                       max_upscale=1.0 if self.scale != 1.0 else None)
        return self.states[w]

    def _drop(self, obj_id: int) -> None:
        """Take an object out of its window (closing a window left empty)."""
        w = self.home.pop(obj_id, None)
        if w is None:
            return
        state = self.states[w]
        self.predictor.remove_object(state, obj_id, need_output=False)
        if not state.objects:
            self.predictor.close_state(self.states.pop(w))

    def feature_caches(self) -> list:
        """Every window's image-feature cache (opening a state per window): to fill an on-disk
        embedding cache ahead of tracking (``napari-sam2 embed``)."""
        return [self._state(w).features for w in range(len(self.windows))]

    def close(self) -> None:
        """Release every window's caches."""
        for state in self.states.values():
            self.predictor.close_state(state)
        self.states.clear()
        self.home.clear()

    def reset(self) -> None:
        """Forget every object and prompt; the windows' image features stay cached."""
        for state in self.states.values():
            self.predictor.reset_state(state)
        self.home.clear()
        self._user = set()

    def _check(self, prompts: Sequence[Any]) -> None:
        """Clicks and boxes must lie in the recorded frame (as the predictor requires)."""
        check_in_frame(prompts, *self.hw)

    def _apply(self, w: int, frame: int, prompts: Sequence[Any]) -> None:
        """An object's (checked) prompts on one frame, in window ``w`` (which becomes its home)."""
        obj = int(prompts[0].object_id)
        if self.home.get(obj, w) != w:
            self._drop(obj)
        state = self._state(w)
        y0, y1, x0, x1 = self.windows[w].outer
        masks = [p.mask for p in prompts if p.mask is not None]
        if masks:
            m = self.frames.mask_to_scaled(np.any(np.stack([np.asarray(m, bool) for m in masks]), axis=0))
            self.predictor.add_new_mask(state, frame, obj, m[y0:y1, x0:x1])
        else:
            pts = [p.points for p in prompts if p.points is not None]
            labs = [p.labels for p in prompts if p.points is not None]
            boxes = [p.box for p in prompts if p.box is not None]
            shift = np.array([x0, y0], np.float64)
            local = (self.frames.to_scaled(np.concatenate(pts)) - shift) if pts else None
            box = (self.frames.to_scaled(np.asarray(boxes[-1]).reshape(2, 2)) - shift).reshape(-1) if boxes else None
            if local is not None:  # clicks near a window edge stay inside it
                local = np.clip(local, -0.5, np.array([x1 - x0, y1 - y0]) - 0.5)
            if box is not None:
                box = np.clip(box, -0.5, np.array([x1 - x0, y1 - y0] * 2) - 0.5)
            self.predictor.add_new_points_or_box(state, frame, obj, points=local,
                                                 labels=np.concatenate(labs) if labs else None, box=box)
        self.home[obj] = w

    # --- tracking ----------------------------------------------------------------------------

    def step(self, frame: int, reverse: bool = False) -> list[tuple[int, int, torch.Tensor]]:
        """Track every window that holds objects on one frame; returns (object id, window,
        logits (h, w) on the window's scaled pixels) per object."""
        busy = [(w, st) for w, st in self.states.items() if st.objects]
        out = []  # the windows' objects go through the model as one batch (exact mode)
        for (w, st), (ids, low) in zip(busy, self.predictor.track_step_many([st for _, st in busy], frame, reverse)):
            out += self._window_logits(w, st, ids, low)
        return out

    def _window_logits(self, w: int, state, ids: Sequence[int], low: torch.Tensor) -> list[tuple[int, int, torch.Tensor]]:
        y0, y1, x0, x1 = self.windows[w].outer
        up = T.masks_to_original(low, (y1 - y0, x1 - x0), self.predictor.canvas_hw(state))[:, 0]
        return [(int(i), w, up[k]) for k, i in enumerate(ids)]

    def preview(self, frame: int, prompts: Sequence[Any]) -> list[ObjectLogits]:
        """Each object's mask on ``frame`` from its prompts there (clicks shown at once in a GUI):
        the prompts are applied in their windows as tracking would apply them; the windows'
        image features stay cached between calls."""
        from sam2_core.track import as_prompts

        self.reset()
        groups: dict[int, list] = defaultdict(list)
        for p in as_prompts(prompts):
            if int(p.frame) == frame:
                groups[int(p.object_id)].append(p)
        for group in groups.values():
            self._check(group)
        targets = self._targets(groups)
        for obj, group in sorted(groups.items()):
            self._apply(targets[obj], frame, group)
            self._user.add((obj, frame))
        out = []
        for w, state in self.states.items():
            if state.objects:
                low = self.predictor.current_low_res(state, frame)
                out += [self.to_native(w, o, lg) for o, _, lg in self._window_logits(w, state, state.obj_ids, low)]
        return out

    def to_native(self, w: int, obj_id: int, logits: torch.Tensor) -> ObjectLogits:
        """Window logits on scaled pixels -> the object's logits on the recorded frame's pixels."""
        y0, y1, x0, x1 = self.windows[w].outer
        if self.frames.sy == 1.0 and self.frames.sx == 1.0:
            return ObjectLogits(obj_id, y0, x0, logits)
        H, W = self.hw
        ny0, nx0 = int(np.floor(y0 / self.frames.sy)), int(np.floor(x0 / self.frames.sx))
        ny1, nx1 = min(H, int(np.ceil(y1 / self.frames.sy))), min(W, int(np.ceil(x1 / self.frames.sx)))
        # the scaled window spans recorded pixels [y0 / sy, y1 / sy): resample onto whole pixels
        ys = (torch.arange(ny0, ny1, dtype=torch.float32) + 0.5) * self.frames.sy - 0.5 - y0
        xs = (torch.arange(nx0, nx1, dtype=torch.float32) + 0.5) * self.frames.sx - 0.5 - x0
        gy = (2 * ys + 1) / (y1 - y0) - 1
        gx = (2 * xs + 1) / (x1 - x0) - 1
        grid = torch.stack(torch.meshgrid(gx, gy, indexing="xy"), dim=-1)[None].to(logits.device)
        res = F.grid_sample(logits[None, None].float(), grid, mode="bilinear", padding_mode="border",
                            align_corners=False)[0, 0]
        return ObjectLogits(obj_id, ny0, nx0, res)

    def _handover(self, results: list[tuple[int, int, torch.Tensor]], frame: int) -> None:
        """Move objects whose centre left their window's core to the window that holds it."""
        for obj, w, logits in results:
            m = (logits > 0).cpu().numpy()
            if not m.any() or self.home.get(obj) != w:
                continue
            ys, xs = np.nonzero(m)
            wy0, _, wx0, _ = self.windows[w].outer
            cy, cx = ys.mean() + wy0, xs.mean() + wx0
            if self._inside_core(w, cy, cx):
                continue
            target = self._cover({obj: (cy, cx)})[obj]
            if target == w:
                continue
            ty0, ty1, tx0, tx1 = self.windows[target].outer
            moved = np.zeros((ty1 - ty0, tx1 - tx0), bool)  # the mask, seen from the target window
            y0, y1 = max(wy0, ty0), min(wy0 + m.shape[0], ty1)
            x0, x1 = max(wx0, tx0), min(wx0 + m.shape[1], tx1)
            moved[y0 - ty0 : y1 - ty0, x0 - tx0 : x1 - tx0] = m[y0 - wy0 : y1 - wy0, x0 - wx0 : x1 - wx0]
            self._drop(obj)
            self.predictor.add_new_mask(self._state(target), frame, obj, moved)
            self.home[obj] = target
            self.handovers += 1

    def run(self, prompts: Sequence[Any], start: int, reverse: bool = False,
            max_frames: int | None = None) -> Iterator[tuple[int, list[ObjectLogits]]]:
        """One pass from ``start``: yields (frame, results) per frame. Prompts join when the pass
        reaches their frame; an object prompted only behind the start joins at the start with its
        latest prompts behind it as keyframes."""
        from sam2_core.track import as_prompts

        pending: dict[int, dict[int, list]] = defaultdict(lambda: defaultdict(list))
        for p in as_prompts(prompts):
            pending[int(p.frame)][int(p.object_id)].append(p)
        bad = [f for f in pending if not 0 <= f < self.num_frames]
        if bad:
            raise IndexError(f"prompts on frames {sorted(bad)} are outside the stack (0 .. {self.num_frames - 1})")
        for by_obj in pending.values():
            for group in by_obj.values():
                self._check(group)
        if not 0 <= start < self.num_frames:
            raise IndexError(f"start frame {start} is outside the stack (0 .. {self.num_frames - 1})")
        self.reset()
        self._user = {(o, f) for f, by_obj in pending.items() for o in by_obj}
        # objects prompted only before the start join with their latest prompts there (keyframes)
        behind = sorted((f for f in pending if (f > start if reverse else f < start)), key=lambda f: abs(f - start))
        for f in behind:
            joining = {obj: group for obj, group in pending[f].items() if obj not in self.home}
            targets = self._targets(joining)
            for obj, group in sorted(joining.items()):
                self._apply(targets[obj], f, group)
        n = self.num_frames if max_frames is None else int(max_frames)
        order = range(start, max(start - n, 0) - 1, -1) if reverse else range(start, min(start + n, self.num_frames - 1) + 1)
        for f in order:
            targets = self._targets(pending.get(f, {}))
            for obj, group in sorted(pending.get(f, {}).items()):
                self._apply(targets[obj], f, group)
            results = self.step(f, reverse)
            yield f, [self.to_native(w, obj, lg) for obj, w, lg in results]
            self._handover(results, f)

    def prompted(self, frame: int) -> set[int]:
        """Objects the user prompted on ``frame`` (handover keyframes do not count)."""
        return {o for o, f in self._user if f == frame}


def merge_labels(results: Sequence[ObjectLogits], hw: tuple[int, int], dtype: np.dtype,
                 prompted: set[int] | None = None) -> np.ndarray:
    """Objects' logits -> (H, W) labels: each pixel to the highest positive logit, objects the user
    prompted on the frame first (as :func:`sam2_core.track.logits_to_labels`)."""
    from sam2_core.track import PROMPTED_FIRST

    best = torch.zeros(hw)
    ids = torch.zeros(hw, dtype=torch.int64)
    for r in results:
        h, w = r.logits.shape
        up = r.logits.float().cpu()
        if prompted and r.obj_id in prompted:
            up = torch.where(up > 0, up + PROMPTED_FIRST, up)
        region = best[r.y0 : r.y0 + h, r.x0 : r.x0 + w]
        better = up > region
        region[better] = up[better]
        ids[r.y0 : r.y0 + h, r.x0 : r.x0 + w][better] = r.obj_id
    return ids.numpy().astype(dtype)


def iter_results(tracker: TiledTracker, prompts: Sequence[Any], *, direction: str = "forward",
                 max_frames: int | None = None, start: int | None = None, continuity: Any = True
                 ) -> Iterator[tuple[int, list[ObjectLogits], bool]]:
    """Run the passes of a propagation; yield (frame, results, again) with each object at most once
    per frame (``again``: the frame was yielded before, with other objects).

    Passes as :func:`sam2_core.track.passes` (or both ways from ``start``). With "both", objects
    first prompted after the earliest prompted frame (or after ``start``) are also tracked backward
    from their first prompt to it, so that every object goes both ways from its own prompts.
    ``continuity``: an object whose mask jumps or swells ends there for the rest of the pass (its
    logits come at :data:`sam2_core.continuity.ENDED`; :mod:`sam2_core.continuity`; or a
    ``ContinuityGuard`` to use, whose ``ended`` lists the tracks it ended).
    """
    from sam2_core.continuity import ENDED, as_guard
    from sam2_core.track import as_prompts, passes

    prompts = as_prompts(prompts)
    plan = passes(prompts, direction)
    if start is not None:
        plan = [(start, reverse) for _, reverse in plan]
    runs = [(s, r, prompts, max_frames) for s, r in plan]
    if direction == "both":
        first: dict[int, int] = {}
        for p in prompts:
            first[int(p.object_id)] = min(first.get(int(p.object_id), int(p.frame)), int(p.frame))
        lo = plan[0][0]
        late = {o for o, g in first.items() if g > lo}
        if late:
            top = max(first[o] for o in late)
            reach = top - lo - 1 if max_frames is None else min(max_frames, top - lo - 1)
            runs.append((top, True, [p for p in prompts if int(p.object_id) in late], reach))
    done: dict[int, set[int]] = {}
    guard = as_guard(continuity)
    for s, reverse, ps, reach in runs:
        if guard is not None:
            guard.reset()
        stopped: set[int] = set()  # ended by the guard in this run: no longer tracked
        for f, results in tracker.run(ps, s, reverse, reach):
            if guard is not None:
                results = guarded(guard, f, results, tracker.prompted(f))
                stopped -= {r.obj_id for r in results}  # tracked again: prompted on this frame
                placeholders = [ObjectLogits(o, 0, 0, torch.full((1, 1), ENDED)) for o in sorted(stopped)]
                for r in results:
                    if guard.has_ended(r.obj_id):  # its memory attention and decoding stop (and an empty window)
                        tracker._drop(r.obj_id)
                        stopped.add(r.obj_id)
                results = results + placeholders  # reported, so that their labels are cleared
            again = f in done
            new = [r for r in results if r.obj_id not in done.get(f, ())]
            if again and not new:
                continue
            done.setdefault(f, set()).update(r.obj_id for r in new)
            yield f, new, again


def guarded(guard, frame: int, results: Sequence[ObjectLogits], prompted: set[int]) -> list[ObjectLogits]:
    """``results`` with the objects whose track the continuity guard ends given ended logits."""
    from sam2_core.continuity import ENDED

    out = []
    for r in results:
        keep = guard.check(r.obj_id, (r.logits > 0).cpu().numpy(), frame, y0=r.y0, x0=r.x0,
                           prompted=r.obj_id in prompted)
        out.append(r if keep else ObjectLogits(r.obj_id, r.y0, r.x0, torch.full_like(r.logits, ENDED)))
    return out


def iter_labels(tracker: TiledTracker, prompts: Sequence[Any], *, direction: str = "forward",
                max_frames: int | None = None, fill_holes: int = 0, min_size: int = 0,
                continuity: Any = True) -> Iterator[tuple[int, np.ndarray, bool]]:
    """Yield (frame, (H, W) labels, again) as ``tracker`` goes (:func:`iter_results`; ``again``:
    the labels hold only objects not yet given on that frame, to be merged under the earlier
    ones; ``fill_holes`` / ``min_size`` in recorded pixels)."""
    from sam2_core.track import as_prompts, clean_labels, labels_dtype

    prompts = as_prompts(prompts)
    dtype = labels_dtype(max(int(p.object_id) for p in prompts))
    for f, results, again in iter_results(tracker, prompts, direction=direction, max_frames=max_frames,
                                          continuity=continuity):
        lab = merge_labels(results, tracker.hw, dtype, tracker.prompted(f))
        yield f, clean_labels(lab, fill_holes, min_size), again
