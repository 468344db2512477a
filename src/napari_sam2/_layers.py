"""Pure functions between napari layer data and SAM 2 prompts / labels (no viewer, no Qt).

Conventions: napari data coordinates are (..., row, col) over the image layer's axes; SAM 2
wants (x, y) = (col, row) pixels of a 2-D frame. The conversion happens here and nowhere else.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

#: Feature columns carried by the prompt Points layer.
OBJECT_ID = "object_id"
POSITIVE = "positive"


@dataclass(frozen=True)
class StackView:
    """How an image layer becomes a stack of 2-D frames.

    Attributes:
        shape: the image layer's data shape (without the RGB axis).
        axis: the axis to propagate along (a non-spatial axis), or None for a single 2-D image.
        fixed: index of every other non-spatial axis (e.g. the current t when tracking z).
        rgb: the layer's last axis holds colour channels.
    """

    shape: tuple[int, ...]
    axis: int | None
    fixed: tuple[tuple[int, int], ...] = ()
    rgb: bool = False

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def num_frames(self) -> int:
        return 1 if self.axis is None else self.shape[self.axis]

    @property
    def frame_shape(self) -> tuple[int, int]:
        return self.shape[-2], self.shape[-1]

    def frame_index(self, point: Sequence[float]) -> int | None:
        """The frame a data-space point lies on, or None if it is off the fixed slices."""
        for ax, idx in self.fixed:
            if int(round(point[ax])) != idx:
                return None
        return 0 if self.axis is None else int(round(point[self.axis]))

    def stack_index(self, frame: int) -> tuple:
        """Index into the layer data selecting one frame (2-D, or 2-D + RGB)."""
        idx: list = [slice(None)] * self.ndim
        for ax, i in self.fixed:
            idx[ax] = i
        if self.axis is not None:
            idx[self.axis] = frame
        return tuple(idx)

    def stack_of(self, data):
        """A lazy (T, Y, X[, C]) view of layer data along the propagation axis."""
        return _AxisStack(data, self)


class _AxisStack:
    """Frames of layer data along StackView.axis, read one at a time (works with dask/zarr)."""

    def __init__(self, data, view: StackView) -> None:
        self.data, self.view = data, view
        extra = (data.shape[-1],) if view.rgb else ()
        self.shape = (view.num_frames, *view.frame_shape, *extra)
        self.dtype = data.dtype
        self.ndim = len(self.shape)

    def __getitem__(self, t: int) -> np.ndarray:
        return np.asarray(self.data[self.view.stack_index(int(t))])


def make_view(shape: Sequence[int], axis: int | None, current: Sequence[int], rgb: bool = False) -> StackView:
    """A StackView for a layer of ``shape`` propagating along ``axis`` at the current slice.

    Raises:
        ValueError: the axis is one of the two spatial (last) axes, or out of range.
    """
    shape = tuple(int(s) for s in (shape[:-1] if rgb else shape))
    nd = len(shape)
    if nd < 2:
        raise ValueError(f"an image needs at least 2 dimensions, got shape {shape}")
    if axis is not None and not 0 <= axis < nd - 2:
        raise ValueError(
            f"axis {axis} cannot be propagated along: the last two axes of a {nd}-D image are "
            "its rows and columns; choose one of the leading axes"
        )
    fixed = tuple((ax, int(current[ax])) for ax in range(nd - 2) if ax != axis)
    return StackView(shape, axis, fixed, rgb)


def default_axis(shape: Sequence[int], axis_labels: Sequence[str] = (), rgb: bool = False) -> int | None:
    """The first non-spatial axis (time if labelled 't', else the first), None for 2-D."""
    nd = len(shape) - (1 if rgb else 0)
    if nd <= 2:
        return None
    labels = [str(a).lower() for a in axis_labels][: nd - 2]
    for want in ("t", "time"):
        if want in labels:
            return labels.index(want)
    return 0


def points_to_prompts(
    data: np.ndarray, object_ids: Sequence[int], positive: Sequence[bool], view: StackView
) -> dict[tuple[int, int], tuple[np.ndarray, np.ndarray]]:
    """Points layer rows -> {(frame, object_id): (points_xy (N, 2), labels (N,))}.

    Points off the current fixed slices or outside the frame are skipped.
    """
    out: dict[tuple[int, int], tuple[list, list]] = {}
    h, w = view.frame_shape
    for row, oid, pos in zip(np.asarray(data, dtype=float), object_ids, positive):
        f = view.frame_index(row)
        if f is None or not 0 <= f < view.num_frames:
            continue
        y, x = row[-2], row[-1]
        if not (-0.5 <= y < h - 0.5 and -0.5 <= x < w - 0.5):
            continue
        pts, labs = out.setdefault((f, int(oid)), ([], []))
        pts.append([x, y])
        labs.append(1 if pos else 0)
    return {k: (np.asarray(p, np.float32), np.asarray(lab, np.int64)) for k, (p, lab) in out.items()}


def rectangles_to_boxes(
    shapes: Sequence[np.ndarray], object_ids: Sequence[int], view: StackView
) -> dict[tuple[int, int], np.ndarray]:
    """Shapes layer rectangles -> {(frame, object_id): box XYXY}; a later box replaces an earlier one."""
    out = {}
    for verts, oid in zip(shapes, object_ids):
        verts = np.asarray(verts, dtype=float)
        f = view.frame_index(verts[0])
        if f is None or not 0 <= f < view.num_frames:
            continue
        ys, xs = verts[:, -2], verts[:, -1]
        h, w = view.frame_shape
        box = np.array([max(xs.min(), 0), max(ys.min(), 0), min(xs.max(), w - 1), min(ys.max(), h - 1)], np.float32)
        if box[2] > box[0] and box[3] > box[1]:
            out[(f, int(oid))] = box
    return out


def merge_frame_labels(
    old: np.ndarray, new: np.ndarray, object_ids: Sequence[int]
) -> tuple[tuple[np.ndarray, ...], np.ndarray]:
    """Pixels to change so a frame shows ``new`` for the tracked objects and keeps everything else.

    Tracked objects' old pixels that the new result does not cover become 0; new pixels are
    written only where the frame is background or already one of the tracked objects, so
    labels of other ids are never erased.

    Returns:
        (indices, values) of the changed pixels (for ``Labels.data_setitem``).
    """
    tracked = np.isin(old, np.asarray(object_ids, dtype=old.dtype)) if len(object_ids) else np.zeros(old.shape, bool)
    writable = (old == 0) | tracked
    target = np.where(tracked, 0, old)
    target = np.where(writable & (new > 0), new, target).astype(old.dtype, copy=False)
    changed = target != old
    return np.nonzero(changed), target[changed]


def label_colors(object_ids: Sequence[int], labels_layer=None) -> dict[int, np.ndarray]:
    """RGBA colour of each object id, as the Labels layer shows it (or napari's default cycle)."""
    if labels_layer is not None:
        return {int(i): np.asarray(labels_layer.get_color(int(i)), dtype=float) for i in object_ids}
    from napari.utils.colormaps import label_colormap

    cmap = label_colormap()
    return {int(i): np.asarray(cmap.map(np.array([int(i)]))[0], dtype=float) for i in object_ids}
